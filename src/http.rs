//! The operations endpoint (`--metrics-listen`): `GET /metrics` (OpenMetrics text),
//! `/healthz` (the server's threads are alive), `/readyz` (the account store answers), and on
//! login-server `/keys` (the JWKS that verifies its session tokens).
//!
//! A minimal HTTP/1.x server: one request per connection, each on a thread of its own, at most
//! [`MAX_CONCURRENT`] at once, each with one deadline for its TLS handshake (when served over
//! TLS: `--metrics-tls-cert`) and reading the request ([`DEADLINE`]), however slowly its bytes
//! come. At the limit, a new connection cuts off the oldest one still
//! in flight: a probe takes a millisecond, so slow or hostile clients cannot hold up a probe
//! by holding every slot.

use crate::metrics::{encode, CONTENT_TYPE};
use crate::tls::{Material, ServerFiles, Stream};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Requests served at once.
pub const MAX_CONCURRENT: usize = 16;
/// The request must arrive whole within this; the response then has as long to be written.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// What the endpoint serves.
pub struct Routes {
    /// The metrics `/metrics` shows.
    pub registry: Registry,
    /// Whether `/healthz` says alive: the server's threads are running.
    pub alive: Box<dyn Fn() -> bool + Send + Sync>,
    /// Whether `/readyz` says ready (the account store answers), or why not.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// What `/keys` shows: the JWKS of the session tokens (login-server only).
    pub keys: Option<String>,
}

impl Routes {
    /// What a server serves while it waits for its store at start: alive, not ready, no
    /// metrics yet.
    pub fn waiting() -> Routes {
        Routes {
            registry: Registry::default(),
            alive: Box::new(|| true),
            ready: Box::new(|| Err("starting: the account store is not open yet".into())),
            keys: None,
        }
    }
}

/// A running operations endpoint; dropping it stops it.
pub struct HttpEndpoint {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Requests in flight, oldest first, so that the oldest can be cut off at the limit.
type InFlight = Arc<Mutex<VecDeque<(u64, TcpStream)>>>;

/// Gives back a slot of [`MAX_CONCURRENT`] when a request's thread ends.
struct Slot(InFlight, u64);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lock().retain(|(id, _)| *id != self.1);
    }
}

impl HttpEndpoint {
    /// Bind `listen` and serve `routes` on it, in plaintext.
    pub fn spawn(listen: SocketAddr, routes: Routes) -> io::Result<HttpEndpoint> {
        HttpEndpoint::serve(TcpListener::bind(listen)?, routes, None)
    }

    /// Serve `routes` on a listener bound already, over TLS with `tls`'s material in force at
    /// each connection (it reloads on SIGHUP), or in plaintext.
    pub fn serve(
        listener: TcpListener,
        routes: Routes,
        tls: Option<Arc<Material<ServerFiles>>>,
    ) -> io::Result<HttpEndpoint> {
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let routes = Arc::new(routes);
        let in_flight: InFlight = Arc::default();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for (id, stream) in (0u64..).zip(listener.incoming()) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    {
                        let mut in_flight = in_flight.lock();
                        if in_flight.len() >= MAX_CONCURRENT {
                            if let Some((_, oldest)) = in_flight.pop_front() {
                                let _ = oldest.shutdown(std::net::Shutdown::Both);
                            }
                        }
                        in_flight.push_back((id, handle));
                    }
                    let (slot, routes) = (Slot(in_flight.clone(), id), routes.clone());
                    let tls = tls.clone();
                    let spawned = std::thread::Builder::new()
                        .name("metrics-http-request".into())
                        .spawn(move || {
                            let _slot = slot;
                            let deadline = Instant::now() + DEADLINE;
                            let served = accept(stream, tls.as_deref(), deadline)
                                .and_then(|stream| serve(stream, &routes, deadline));
                            if let Err(e) = served {
                                tracing::debug!(error = %e, "metrics request failed");
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start a metrics request thread");
                    }
                }
            })?;
        Ok(HttpEndpoint {
            local_addr,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept() by connecting to ourselves.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The time left until `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The connection as the request is read from it: over TLS (the handshake done by
/// `deadline`), or as it is.
fn accept(
    tcp: TcpStream,
    tls: Option<&Material<ServerFiles>>,
    deadline: Instant,
) -> io::Result<Stream> {
    let Some(material) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let mut conn = rustls::ServerConnection::new(material.current()).map_err(io::Error::other)?;
    let mut tcp = tcp;
    crate::tls::handshake(&mut conn, &mut tcp, deadline)?;
    Ok(Stream::Server(Box::new(rustls::StreamOwned::new(
        conn, tcp,
    ))))
}

fn serve(mut stream: Stream, routes: &Routes, deadline: Instant) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        stream.tcp().set_read_timeout(Some(left(deadline)?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let text = "text/plain";
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", CONTENT_TYPE, encode(&routes.registry)),
        (Some(b"GET"), Some(b"/healthz")) if (routes.alive)() => ("200 OK", text, "ok\n".into()),
        (Some(b"GET"), Some(b"/healthz")) => (
            "503 Service Unavailable",
            text,
            "a server thread has stopped or stalled\n".into(),
        ),
        (Some(b"GET"), Some(b"/readyz")) => match (routes.ready)() {
            Ok(()) => ("200 OK", text, "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                text,
                format!("account store not answering: {why}\n"),
            ),
        },
        (Some(b"GET"), Some(b"/keys")) if routes.keys.is_some() => (
            "200 OK",
            "application/jwk-set+json",
            routes.keys.clone().unwrap_or_default(),
        ),
        (Some(b"GET"), _) => ("404 Not Found", text, "not found\n".into()),
        _ => ("405 Method Not Allowed", text, "GET only\n".into()),
    };
    // Answering may have taken a while (/readyz waits for the store): the response gets its
    // own deadline.
    stream.tcp().set_write_timeout(Some(DEADLINE))?;
    stream.write_all(&response(status, content_type, &body))?;
    if let Stream::Server(tls) = &mut stream {
        tls.conn.send_close_notify();
    }
    stream.flush()
}
