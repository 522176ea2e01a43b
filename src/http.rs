//! The operations endpoint (`--metrics-listen`): `GET /metrics` (Prometheus text),
//! `/healthz` (the process is up) and `/readyz` (the account store answers).
//!
//! A minimal HTTP/1.x server on one thread: one request per connection, small bounded reads
//! with a short timeout, so a slow or hostile scraper costs little and holds nothing else up.

use crate::metrics::{encode, CONTENT_TYPE};
use prometheus_client::registry::Registry;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the endpoint serves.
pub struct Routes {
    /// The metrics `/metrics` shows.
    pub registry: Registry,
    /// Whether `/readyz` says ready.
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A running operations endpoint; dropping it stops it.
pub struct HttpEndpoint {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpEndpoint {
    pub fn spawn(listen: SocketAddr, routes: Routes) -> io::Result<HttpEndpoint> {
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        if let Err(e) = serve(stream, &routes) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
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

fn serve(mut stream: TcpStream, routes: &Routes) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", CONTENT_TYPE, encode(&routes.registry)),
        (Some(b"GET"), Some(b"/healthz")) => ("200 OK", "text/plain", "ok\n".into()),
        (Some(b"GET"), Some(b"/readyz")) if (routes.ready)() => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        (Some(b"GET"), Some(b"/readyz")) => (
            "503 Service Unavailable",
            "text/plain",
            "account store not answering\n".into(),
        ),
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}
