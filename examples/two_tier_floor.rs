//! The two-tier floor: what no three-tier design can beat on this machine. Two processes:
//!
//! - `respond ADDR`: a trivial line responder (the account-db's place). One thread; every
//!   request line is answered with a canned line, all lines read at once with one write.
//! - `relay ADDR BACKEND [K]`: one event thread (the login-server's place) that frames gateway
//!   messages and forwards each, as one line, over K (default 4) pipelined persistent
//!   connections to the responder, relaying each answer as "success!" to its client in order.
//!
//! No validation, no store, no hashing, no thread hand-off: the cost of two tiers and of the
//! protocol alone. Read login-server's figures as a share of it (see BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example two_tier_floor -- respond 127.0.0.1:7998 &
//! cargo run --release --example two_tier_floor -- relay 127.0.0.1:7999 127.0.0.1:7998
//! ```

use login_server::protocol::gateway::{Form, Scan, Scanner};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX);
/// Backend connections are tokens from here down.
const BACKENDS: usize = usize::MAX / 2;
const SEED_REPLY: &[u8] = br#"[{"code":3,"info":"success!"}]"#;
const STREAM_REPLY: &[u8] = b"{\"code\":3,\"info\":\"success!\"}\n";
const LINE_REPLY: &[u8] = b"{\"status\":\"open\",\"settled\":true}\n";

/// One socket and its unsent output.
struct Peer {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Peer {
    fn new(stream: TcpStream) -> io::Result<Peer> {
        stream.set_nodelay(true)?;
        Ok(Peer {
            stream,
            input: Vec::new(),
            output: Vec::new(),
        })
    }

    /// Read all there is; `Ok(false)` at end of stream.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Take the whole lines read so far: how many there were.
    fn take_lines(&mut self) -> usize {
        let lines = self.input.iter().filter(|&&b| b == b'\n').count();
        let end = self
            .input
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        self.input.drain(..end);
        lines
    }

    /// Write what the socket takes; the rest waits for a writable event.
    fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => drop(self.output.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn listen(poll: &Poll, addr: &str, role: &str) -> io::Result<TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("{role} listening addr={}", listener.local_addr()?);
    Ok(listener)
}

/// Accept every waiting connection into `peers`, tokens counted by `next`.
fn accept(
    poll: &Poll,
    listener: &TcpListener,
    peers: &mut HashMap<Token, Peer>,
    next: &mut usize,
) -> io::Result<()> {
    while let Ok((mut stream, _)) = listener.accept() {
        let token = Token(*next);
        *next += 1;
        poll.registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        peers.insert(token, Peer::new(stream)?);
    }
    Ok(())
}

/// The line responder: one canned line per request line.
fn respond(addr: &str) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let listener = listen(&poll, addr, "respond")?;
    let mut peers = HashMap::new();
    let (mut next, mut buf) = (0, vec![0; 64 * 1024]);
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                accept(&poll, &listener, &mut peers, &mut next)?;
                continue;
            }
            let Some(peer) = peers.get_mut(&event.token()) else {
                continue;
            };
            let open = peer.fill(&mut buf).unwrap_or(false);
            for _ in 0..peer.take_lines() {
                peer.output.extend_from_slice(LINE_REPLY);
            }
            if !open || peer.flush().is_err() {
                peers.remove(&event.token());
            }
        }
    }
}

/// A gateway client of the relay.
struct Client {
    peer: Peer,
    scanner: Scanner,
    /// Answered in the seed form: close once the reply is out.
    closing: bool,
}

/// The relay: gateway messages in, one line each to the backends, answers back in order.
fn relay(addr: &str, backend: &str, k: usize) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let backend: SocketAddr = backend
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Backend i is token BACKENDS + i; each remembers whom its pending lines are for.
    let mut backends = Vec::new();
    for i in 0..k {
        let stream = std::net::TcpStream::connect(backend)?;
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry().register(
            &mut stream,
            Token(BACKENDS + i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        backends.push((Peer::new(stream)?, VecDeque::<Token>::new()));
    }
    let listener = listen(&poll, addr, "relay")?;
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut accepted = HashMap::new();
    let (mut next, mut turn, mut buf) = (0, 0, vec![0; 64 * 1024]);
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        let mut dirty = Vec::new();
        for event in events.iter() {
            let token = event.token();
            if token == LISTENER {
                accept(&poll, &listener, &mut accepted, &mut next)?;
                for (token, peer) in accepted.drain() {
                    let scanner = Scanner::new(64 * 1024);
                    let closing = false;
                    clients.insert(
                        token,
                        Client {
                            peer,
                            scanner,
                            closing,
                        },
                    );
                }
            } else if token.0 >= BACKENDS {
                let (peer, pending) = &mut backends[token.0 - BACKENDS];
                if !peer.fill(&mut buf)? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                for _ in 0..peer.take_lines() {
                    let Some(to) = pending.pop_front() else {
                        continue;
                    };
                    let Some(client) = clients.get_mut(&to) else {
                        continue;
                    };
                    let reply = if client.closing {
                        SEED_REPLY
                    } else {
                        STREAM_REPLY
                    };
                    client.peer.output.extend_from_slice(reply);
                    dirty.push(to);
                }
                peer.flush()?;
            } else if let Some(client) = clients.get_mut(&token) {
                let open = client.peer.fill(&mut buf).unwrap_or(false);
                while let Scan::Complete { form, start, end } =
                    client.scanner.scan(&client.peer.input)
                {
                    let (backend, pending) = &mut backends[turn % k];
                    turn += 1;
                    let message = &client.peer.input[start..end];
                    backend
                        .output
                        .extend(message.iter().filter(|&&b| b != b'\n'));
                    backend.output.push(b'\n');
                    pending.push_back(token);
                    client.peer.input.drain(..end);
                    client.scanner.reset();
                    if form == Form::Seed {
                        client.closing = true;
                        break;
                    }
                }
                dirty.push(token);
                if !open {
                    clients.remove(&token);
                }
            }
        }
        // Every message of this round to each backend in one write.
        for (backend, _) in &mut backends {
            backend.flush()?;
        }
        for token in dirty {
            let Some(client) = clients.get_mut(&token) else {
                continue;
            };
            let sent = client.peer.flush().is_ok();
            let answered = client.closing && client.peer.output.is_empty();
            if !sent || answered && owes_nothing(&backends, token) {
                clients.remove(&token);
            }
        }
    }
}

/// Whether no backend still owes `token` an answer.
fn owes_nothing(backends: &[(Peer, VecDeque<Token>)], token: Token) -> bool {
    backends
        .iter()
        .all(|(_, pending)| !pending.contains(&token))
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["respond", addr] => respond(addr),
        ["relay", addr, backend] => relay(addr, backend, 4),
        ["relay", addr, backend, k] => {
            let k = k
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            relay(addr, backend, k)
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: two_tier_floor respond ADDR | relay ADDR BACKEND [K]",
        )),
    }
}
