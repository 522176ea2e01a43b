//! Hostile load, for measuring what the service holds while it is attacked (BENCHMARKS.md,
//! "hostile load"). Each [`Kind`] is one attack a hardening fix is about. Every attack is
//! bounded in time and stops by itself; the caller keeps it on loopback.

use crate::secure::Tls;
use serde_json::json;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to attack with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Fill the throttle tables: logins with fresh names, fresh addresses and one-byte
    /// passwords, pipelined on one connection as fast as it goes.
    ThrottleFill,
    /// Logins whose `ip` is 60 KB of junk, pipelined on one connection.
    IpBloat,
    /// Connections that send 60 KB messages with an unknown `OP` and never read the replies.
    NoRead,
    /// Connections that send 80 KiB of spaces and keep the connection open.
    Whitespace,
    /// Connections to account-db that trickle their handshake a byte every 4 s.
    Handshake,
    /// Connections to a TLS login-server that send half a ClientHello and stall.
    TlsHalfHello,
    /// Connections to a TLS login-server that complete the handshake (with --tls-ca) and then
    /// never send.
    TlsSilent,
    /// One gateway connection carrying a bot's logins (right password: a hash each, never
    /// throttled) from --addresses rotating addresses, pipelined, beside a player logging in
    /// at --player-rate a second: prints what the player got and how late (see `shared.rs`).
    SharedGateway,
}

/// What an attack did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    /// Connections opened.
    pub connected: u64,
    /// Connections the server closed (or reset) while the attack went on.
    pub closed_by_server: u64,
    /// Requests (or payloads) sent.
    pub sent: u64,
}

/// Run `kind` against `target` with `connections` connections (the pipelining kinds use one)
/// for `duration`; `tls`: how to complete a handshake (`tls-silent`).
pub fn run(
    target: SocketAddr,
    kind: Kind,
    connections: usize,
    duration: Duration,
    tls: Option<&Tls>,
) -> io::Result<Outcome> {
    let end = Instant::now() + duration;
    match kind {
        Kind::ThrottleFill | Kind::IpBloat => pipeline(target, kind, end),
        Kind::TlsSilent if tls.is_none() => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "tls-silent completes handshakes: pass --tls-ca",
        )),
        Kind::SharedGateway => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "shared-gateway is run by shared::run",
        )),
        _ => hold(target, kind, connections, end, tls),
    }
}

/// The first half of a TLS 1.3 ClientHello, as a real client would begin it.
fn half_hello() -> io::Result<Vec<u8>> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(io::Error::other)?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from("login.invalid").map_err(io::Error::other)?;
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let mut hello = Vec::new();
    client.write_tls(&mut hello)?;
    hello.truncate(hello.len() / 2);
    Ok(hello)
}

/// One connection, requests written as fast as the server takes them and replies drained by a
/// second thread.
fn pipeline(target: SocketAddr, kind: Kind, end: Instant) -> io::Result<Outcome> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let reader = stream.try_clone()?;
    reader.set_read_timeout(Some(Duration::from_secs(2)))?;
    let drain = std::thread::spawn(move || {
        let mut lines = BufReader::new(reader);
        let mut line = Vec::new();
        while Instant::now() < end + Duration::from_secs(2) {
            line.clear();
            match lines.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    let junk = "x".repeat(60_000);
    let mut outcome = Outcome {
        connected: 1,
        ..Outcome::default()
    };
    let mut writer = stream;
    let mut i: u64 = 0;
    while Instant::now() < end {
        let mut batch = Vec::with_capacity(64 * 1024);
        for _ in 0..64 {
            i += 1;
            let request = match kind {
                Kind::ThrottleFill => json!({
                    "OP": "login", "username": format!("spray{i}"), "password": "x",
                    "ip": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                }),
                // Each value different, as distinct throttle keys would be.
                _ => json!({
                    "OP": "login", "username": "victim", "password": "password1",
                    "ip": format!("{i}{junk}"),
                }),
            };
            batch.extend_from_slice(request.to_string().as_bytes());
            batch.push(b'\n');
        }
        match writer.write_all(&batch) {
            Ok(()) => outcome.sent += 64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                outcome.closed_by_server += 1;
                break;
            }
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let _ = drain.join();
    Ok(outcome)
}

/// Many connections, each given its payload without blocking and held open until the end.
/// The TLS kinds say their part once, at connect: half a ClientHello, or a whole handshake.
fn hold(
    target: SocketAddr,
    kind: Kind,
    connections: usize,
    end: Instant,
    tls: Option<&Tls>,
) -> io::Result<Outcome> {
    let payload: Vec<u8> = match kind {
        Kind::NoRead => {
            let op = "A".repeat(60_000);
            format!("{{\"OP\":\"{op}\",\"username\":\"u\",\"password\":\"p\"}}\n").into_bytes()
        }
        Kind::Whitespace => vec![b' '; 80 * 1024],
        Kind::TlsHalfHello | Kind::TlsSilent => Vec::new(),
        _ => b"{".to_vec(), // a handshake that never ends: one byte per round
    };
    let hello = match kind {
        Kind::TlsHalfHello => half_hello()?,
        _ => Vec::new(),
    };
    let round = if kind == Kind::Handshake {
        Duration::from_secs(4)
    } else {
        Duration::from_millis(200)
    };
    let mut outcome = Outcome::default();
    let mut open: Vec<Option<TcpStream>> = Vec::with_capacity(connections);
    for _ in 0..connections {
        if Instant::now() >= end {
            break;
        }
        let stream =
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).and_then(|mut stream| {
                match (kind, tls) {
                    (Kind::TlsHalfHello, _) => stream.write_all(&hello)?,
                    (Kind::TlsSilent, Some(tls)) => {
                        let mut client = tls.client()?;
                        let deadline = Instant::now() + Duration::from_secs(5);
                        login_server::tls::handshake(&mut client, &mut stream, deadline)?;
                        // Its session is kept in `client`, dropped here: the peer only sees silence.
                    }
                    _ => {}
                }
                stream.set_nonblocking(true)?;
                Ok(stream)
            });
        match stream {
            Ok(stream) => {
                outcome.connected += 1;
                open.push(Some(stream));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let mut scratch = [0u8; 4096];
    while Instant::now() < end {
        for slot in &mut open {
            let Some(stream) = slot else { continue };
            // Replies are never read for no-read; the others only look for the server's close.
            let closed = match kind {
                Kind::NoRead => false,
                _ => match io::Read::read(stream, &mut scratch) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                },
            };
            let written = match stream.write(&payload) {
                Ok(_) if payload.is_empty() => false,
                Ok(_) => true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => {
                    *slot = None;
                    outcome.closed_by_server += 1;
                    continue;
                }
            };
            if closed {
                *slot = None;
                outcome.closed_by_server += 1;
            } else if written {
                outcome.sent += 1;
            }
        }
        std::thread::sleep(round.min(end.saturating_duration_since(Instant::now())));
    }
    Ok(outcome)
}
