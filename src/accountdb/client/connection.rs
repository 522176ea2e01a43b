//! One persistent connection to account-db ([`DbConn`]), its greeting checked, and why a call
//! over it fails ([`DbError`]).

use crate::auth::secret::Secret;
use crate::protocol::accountdb::{
    decode_line, encode_line, DbRequest, DbResponse, Greeting, MAX_LINE, SERVICE,
};
use crate::tls::{ClientFiles, Material, Stream};
use rustls::pki_types::ServerName;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether an account-db's `--store-timeout` not below our deadline was warned of (once a
/// process: every connection would say the same).
static WARNED_STORE_TIMEOUT: AtomicBool = AtomicBool::new(false);

/// What a peer sent, for a log line or `/readyz`: at most 160 bytes of it, quoted, with control
/// characters escaped, so that a peer cannot forge log lines or flood the log.
fn quoted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]);
    let more = if bytes.len() > 160 { "..." } else { "" };
    format!("{:?}{more}", text.trim_end())
}

/// Why a call to account-db failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// TCP connect failed or timed out.
    #[error("cannot connect to account-db at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The TLS handshake failed: the certificate is not trusted, not for the name checked or
    /// expired, account-db wants a client certificate we lack, or it does not speak TLS.
    #[error("TLS with account-db at {addr} failed: {detail}")]
    Tls { addr: SocketAddr, detail: String },
    /// The peer is not an account-db, speaks no protocol version we speak (both ranges named),
    /// or refused us.
    #[error("account-db at {addr} did not greet as expected: {detail}")]
    Handshake { addr: SocketAddr, detail: String },
    /// Reading or writing failed or timed out mid-request; the connection is broken.
    #[error("account-db request failed: {0}")]
    Io(#[from] io::Error),
    /// The reply was not a line we understand; the connection is broken.
    #[error("account-db sent an unreadable reply: {0}")]
    BadReply(String),
    /// No pooled connection could be had within `--db-timeout`: every one is busy, or none
    /// can be made (account-db down or refusing us; the pool's log says which).
    #[error("no account-db connection within the deadline: {0}")]
    Pool(#[from] r2d2::Error),
}

impl DbError {
    /// The same failure again, for each of the requests it failed together.
    pub(super) fn again(&self) -> DbError {
        let kind = match self {
            DbError::Io(e) => e.kind(),
            _ => io::ErrorKind::Other,
        };
        DbError::Io(io::Error::new(kind, self.to_string()))
    }

    /// Whether this is a connection found dead (reset, closed), rather than a slow peer: only
    /// then is trying another connection quick and useful.
    pub(super) fn is_dead_connection(&self) -> bool {
        matches!(self, DbError::Io(e)
            if !matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
    }
}

/// How a connection to account-db is secured: the client configuration, and the name the
/// account-db's certificate must hold.
#[derive(Clone)]
pub struct DbTls {
    /// Trust anchors, and the client certificate if account-db asks for one: the material
    /// in force when the connection is made.
    pub material: Arc<Material<ClientFiles>>,
    /// The host of `--db` (or `--db-tls-name`).
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for DbTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTls").field("name", &self.name).finish()
    }
}

/// One persistent connection, its greeting checked, to account-db.
pub struct DbConn {
    /// The stream, buffered for reading (replies are lines); requests are written to it whole.
    reader: BufReader<Stream>,
    /// The reply line being read.
    line: Vec<u8>,
    /// An IO error, a timeout or a bad reply happened: the pool drops it.
    pub(super) broken: bool,
    /// The protocol version agreed at connect.
    version: u32,
}

impl DbConn {
    /// Connect (over TLS with `tls`: the handshake and the greeting within `timeout`), check
    /// the greeting, prove `secret` (bound to the TLS session), and set `timeout` as the
    /// deadline of every read and write.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        secret: &Secret,
        tls: Option<&DbTls>,
    ) -> Result<DbConn, DbError> {
        let mut tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| DbError::Connect { addr, source })?;
        let handshake = |detail: String| DbError::Handshake { addr, detail };
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let mut conn =
                    rustls::ClientConnection::new(tls.material.current(), tls.name.clone())
                        .map_err(|e| DbError::Tls {
                            addr,
                            detail: e.to_string(),
                        })?;
                crate::tls::handshake(&mut conn, &mut tcp, Instant::now() + timeout).map_err(
                    |e| DbError::Tls {
                        addr,
                        detail: e.to_string(),
                    },
                )?;
                Stream::Client(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        stream.tcp().set_read_timeout(Some(timeout))?;
        stream.tcp().set_write_timeout(Some(timeout))?;
        let binding = stream.binding();
        let mut conn = DbConn {
            reader: BufReader::new(stream),
            line: Vec::with_capacity(256),
            broken: false,
            version: 0,
        };
        // Silence (PostgreSQL's port, say, waits for its client to speak first) or a close
        // is no greeting: said so, not as the socket's error.
        match conn.read_line() {
            Ok(()) => {}
            Err(DbError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(handshake(format!(
                    "no greeting within {} ms: it is not an account-db, or it is stuck",
                    timeout.as_millis()
                )));
            }
            Err(e) => return Err(e),
        }
        let greeting = match decode_line::<Greeting>(&conn.line) {
            Ok(g) if g.service == SERVICE => g,
            Ok(g) => {
                let service = quoted(g.service.as_bytes());
                return Err(handshake(format!("it is {service}, not {SERVICE}")));
            }
            Err(_) => return Err(handshake(format!("it said {}", quoted(&conn.line)))),
        };
        let agreed = greeting.negotiate().map_err(handshake)?;
        conn.version = agreed.version;
        let store_timeout = greeting.store_timeout_ms.map(Duration::from_millis);
        if store_timeout.is_some_and(|t| t >= timeout)
            && !WARNED_STORE_TIMEOUT.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                %addr,
                store_timeout_ms = greeting.store_timeout_ms,
                db_timeout_ms = timeout.as_millis(),
                "account-db's --store-timeout is not below this login-server's per-attempt deadline (from --db-timeout): a slow store \
                 answers after we gave up, and a retry may find the first attempt's write done"
            );
        }
        let proof = secret.proof(&greeting.nonce, binding.as_ref().map(|b| &b[..]));
        let version = agreed.named.then_some(agreed.version);
        match conn.call(&DbRequest::Auth { proof, version })? {
            DbResponse::Ok => Ok(conn),
            // The server says nothing more, on purpose; the likely cause is ours to name.
            DbResponse::Error { message } if message == "authentication failed" => {
                Err(handshake(format!(
                    "refused us: {message} (the secret this login-server holds, from \
                     --db-secret-file or ACCOUNT_DB_SECRET, is not one that account-db accepts: \
                     compare it with account-db's secret file)"
                )))
            }
            DbResponse::Error { message } => Err(handshake(format!("refused us: {message}"))),
            other => Err(handshake(format!("answered authentication with {other:?}"))),
        }
    }

    /// The protocol version agreed with this account-db at connect.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Send one request and read its reply. Any failure marks the connection broken.
    pub fn call(&mut self, request: &DbRequest) -> Result<DbResponse, DbError> {
        let result = self.round_trip(request);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Send every request in one write, then read their replies, in order: one round trip
    /// for all. The replies read, and the failure that stopped the rest, if any (it marks the
    /// connection broken).
    pub fn call_all(&mut self, requests: &[&DbRequest]) -> (Vec<DbResponse>, Option<DbError>) {
        let mut responses = Vec::with_capacity(requests.len());
        let result = self.pipeline(requests, &mut responses);
        if result.is_err() {
            self.broken = true;
        }
        (responses, result.err())
    }

    fn pipeline(
        &mut self,
        requests: &[&DbRequest],
        responses: &mut Vec<DbResponse>,
    ) -> Result<(), DbError> {
        let lines: Vec<u8> = requests.iter().flat_map(encode_line).collect();
        self.send(&lines)?;
        for _ in requests {
            self.read_line()?;
            let response = decode_line(&self.line).map_err(|e| DbError::BadReply(e.to_string()))?;
            responses.push(response);
        }
        Ok(())
    }

    fn round_trip(&mut self, request: &DbRequest) -> Result<DbResponse, DbError> {
        self.send(&encode_line(request))?;
        self.read_line()?;
        decode_line(&self.line).map_err(|e| DbError::BadReply(e.to_string()))
    }

    /// Write `bytes` whole (over TLS, as few records) and flush them.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    fn read_line(&mut self) -> Result<(), DbError> {
        self.line.clear();
        (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)?;
        if self.line.last() == Some(&b'\n') {
            Ok(())
        } else if self.line.len() >= MAX_LINE {
            Err(DbError::BadReply("reply line too long".into()))
        } else {
            Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())
        }
    }
}
