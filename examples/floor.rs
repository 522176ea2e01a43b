//! The floor: a trivial responder that answers every gateway message with a canned
//! "success!" and does nothing else. One thread, non-blocking, no thread per connection:
//! what this machine can do at all with the protocol, against which login-server's figures
//! are read as ratios (see BENCHMARKS.md).
//!
//! `cargo run --release --example floor -- 127.0.0.1:7999`

use login_server::protocol::gateway::{Form, Scan, Scanner};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};

const LISTENER: Token = Token(usize::MAX);
const SEED_REPLY: &[u8] = br#"[{"code":3,"info":"success!"}]"#;
const STREAM_REPLY: &[u8] = b"{\"code\":3,\"info\":\"success!\"}\n";

struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    scanner: Scanner,
}

/// Answer every whole message; `Ok(false)` once the connection should close.
fn serve(client: &mut Client, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        match client.stream.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => client.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let mut out = Vec::new();
    let mut keep = true;
    while let Scan::Complete { form, end, .. } = client.scanner.scan(&client.input) {
        client.input.drain(..end);
        client.scanner.reset();
        if form == Form::Seed {
            out.extend_from_slice(SEED_REPLY);
            keep = false;
            break;
        }
        out.extend_from_slice(STREAM_REPLY);
    }
    client.stream.write_all(&out)?; // replies are tiny: the socket buffer takes them
    Ok(keep)
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7999".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("floor listening addr={}", listener.local_addr()?);
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut next = 0;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0; 16 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let token = Token(next);
                    next += 1;
                    stream.set_nodelay(true)?;
                    poll.registry()
                        .register(&mut stream, token, Interest::READABLE)?;
                    let scanner = Scanner::new(64 * 1024);
                    let input = Vec::new();
                    clients.insert(
                        token,
                        Client {
                            stream,
                            input,
                            scanner,
                        },
                    );
                }
                continue;
            }
            let Some(client) = clients.get_mut(&event.token()) else {
                continue;
            };
            if !matches!(serve(client, &mut buf), Ok(true)) {
                clients.remove(&event.token());
            }
        }
    }
}
