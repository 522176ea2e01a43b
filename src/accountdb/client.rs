//! The account-db client: [`DbConn`], one persistent connection; [`DbManager`], the r2d2
//! `ManageConnection` that makes and checks them; and [`RemoteStore`], the [`Store`] that
//! login-server uses, pooled or (as the seed did) one connection per request.
//!
//! As in r2d2-postgres and r2d2-redis: `is_valid` is a real round trip (a ping), and
//! `has_broken` never blocks: it reads a flag that any IO error, timeout or bad reply sets.

use crate::accountdb::store::{Account, Created, Store, StoreError};
use crate::protocol::accountdb::{
    decode_line, encode_line, DbRequest, DbResponse, Greeting, MAX_LINE, SERVICE, VERSION,
};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a call to account-db failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// TCP connect failed or timed out.
    #[error("cannot connect to account-db at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The peer is not an account-db speaking our protocol version, or refused us.
    #[error("account-db at {addr} did not greet as expected: {detail}")]
    Handshake { addr: SocketAddr, detail: String },
    /// Reading or writing failed or timed out mid-request; the connection is broken.
    #[error("account-db request failed: {0}")]
    Io(#[from] io::Error),
    /// The reply was not a line we understand; the connection is broken.
    #[error("account-db sent an unreadable reply: {0}")]
    BadReply(String),
}

impl DbError {
    /// Whether this is a connection found dead (reset, closed), rather than a slow peer: only
    /// then is trying another connection quick and useful.
    fn is_dead_connection(&self) -> bool {
        matches!(self, DbError::Io(e)
            if !matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
    }
}

/// One persistent connection, its greeting checked, to account-db.
pub struct DbConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
    broken: bool,
}

impl DbConn {
    /// Connect, check the greeting, and set `timeout` as the deadline of every read and write.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<DbConn, DbError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| DbError::Connect { addr, source })?;
        let handshake = |detail: String| DbError::Handshake { addr, detail };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut conn = DbConn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            line: Vec::with_capacity(256),
            broken: false,
        };
        conn.read_line()?;
        match decode_line::<Greeting>(&conn.line) {
            Ok(g) if g.service == SERVICE && g.version == VERSION => Ok(conn),
            Ok(g) => Err(handshake(format!(
                "it speaks {} version {}, we speak {SERVICE} version {VERSION}",
                g.service, g.version
            ))),
            Err(_) => Err(handshake(String::from_utf8_lossy(&conn.line).trim().into())),
        }
    }

    /// Send one request and read its reply. Any failure marks the connection broken.
    pub fn call(&mut self, request: &DbRequest) -> Result<DbResponse, DbError> {
        let result = self.round_trip(request);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Whether an earlier call failed, so the connection must not be reused.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether the peer has closed the connection (or reset it) while it sat idle. Never
    /// blocks; any doubt counts as closed.
    pub fn peer_closed(&self) -> bool {
        let stream = self.reader.get_ref();
        if !self.reader.buffer().is_empty() || stream.set_nonblocking(true).is_err() {
            return true;
        }
        let closed =
            !matches!(stream.peek(&mut [0u8]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        closed || stream.set_nonblocking(false).is_err()
    }

    fn round_trip(&mut self, request: &DbRequest) -> Result<DbResponse, DbError> {
        self.writer.write_all(&encode_line(request))?;
        self.read_line()?;
        decode_line(&self.line).map_err(|e| DbError::BadReply(e.to_string()))
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

/// Makes and checks [`DbConn`]s for an r2d2 pool.
#[derive(Debug, Clone)]
pub struct DbManager {
    addr: SocketAddr,
    timeout: Duration,
}

impl DbManager {
    /// Connections to `addr`, with `timeout` as the connect and per-request deadline.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        DbManager { addr, timeout }
    }
}

impl r2d2::ManageConnection for DbManager {
    type Connection = DbConn;
    type Error = DbError;

    fn connect(&self) -> Result<DbConn, DbError> {
        DbConn::connect(self.addr, self.timeout)
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), DbError> {
        match conn.call(&DbRequest::Ping)? {
            DbResponse::Pong => Ok(()),
            other => {
                conn.broken = true;
                Err(DbError::BadReply(format!("ping answered {other:?}")))
            }
        }
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        std::thread::panicking() || conn.broken
    }
}

/// Reports the pool's failed connection attempts through `tracing`.
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<DbError> for LogErrors {
    fn handle_error(&self, error: DbError) {
        tracing::warn!(%error, "account-db connection attempt failed");
    }
}

/// How login-server reaches account-db.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub addr: SocketAddr,
    /// Pooled connections; 0 opens a new connection for every request, as the seed did.
    pub pool_size: u32,
    /// Deadline of connecting and of each request.
    pub request_timeout: Duration,
    /// How long a request waits for a pooled connection before it is answered "unavailable".
    pub checkout_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for reaching `addr`: 2 s deadlines, `pool_size` connections.
    pub fn new(addr: SocketAddr, pool_size: u32) -> Self {
        ClientConfig {
            addr,
            pool_size,
            request_timeout: Duration::from_secs(2),
            checkout_timeout: Duration::from_secs(2),
        }
    }
}

enum Connections {
    Pooled(r2d2::Pool<DbManager>),
    PerRequest(DbManager),
}

/// The account store as login-server sees it: account-db over TCP.
pub struct RemoteStore {
    connections: Connections,
}

impl RemoteStore {
    /// A store reaching `config.addr`. It does not wait for account-db to be up: until it is,
    /// requests fail with [`StoreError::Unreachable`] and the pool keeps trying.
    pub fn new(config: &ClientConfig) -> RemoteStore {
        let manager = DbManager::new(config.addr, config.request_timeout);
        let connections = match config.pool_size {
            0 => Connections::PerRequest(manager),
            size => Connections::Pooled(
                r2d2::Pool::builder()
                    .max_size(size)
                    .connection_timeout(config.checkout_timeout)
                    // has_broken catches failed connections; a ping per checkout would double
                    // the round trips. Idle ones are retired before account-db drops them.
                    .test_on_check_out(false)
                    .idle_timeout(Some(Duration::from_secs(5 * 60)))
                    .error_handler(Box::new(LogErrors))
                    .build_unchecked(manager),
            ),
        };
        RemoteStore { connections }
    }

    /// One request on one connection. After account-db restarts, every idle pooled connection
    /// is dead; a request that may safely run twice (`retry`) moves on to the next connection
    /// when one turns out dead, and one that may not first checks that its peer is still there.
    fn call(&self, request: &DbRequest, retry: bool) -> Result<DbResponse, StoreError> {
        let unreachable = |e: &dyn std::fmt::Display| StoreError::Unreachable(e.to_string());
        let response = match &self.connections {
            Connections::PerRequest(manager) => {
                let mut conn =
                    r2d2::ManageConnection::connect(manager).map_err(|e| unreachable(&e))?;
                conn.call(request).map_err(|e| unreachable(&e))?
            }
            Connections::Pooled(pool) => {
                let mut attempts = pool.max_size() + 1;
                loop {
                    attempts -= 1;
                    let mut conn = pool.get().map_err(|e| unreachable(&e))?;
                    if !retry && attempts > 0 && conn.peer_closed() {
                        conn.broken = true;
                        continue;
                    }
                    match conn.call(request) {
                        Ok(response) => break response,
                        Err(e) if retry && attempts > 0 && e.is_dead_connection() => continue,
                        Err(e) => return Err(unreachable(&e)),
                    }
                }
            }
        };
        match response {
            DbResponse::Error { message } => Err(StoreError::Failed(message)),
            response => Ok(response),
        }
    }
}

fn unexpected(response: DbResponse) -> StoreError {
    StoreError::Failed(format!("unexpected reply {response:?}"))
}

impl Store for RemoteStore {
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let request = DbRequest::Find {
            username: username.to_string(),
        };
        match self.call(&request, true)? {
            DbResponse::Found { account } => Ok(Some(account)),
            DbResponse::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    fn create(&self, account: &Account) -> Result<Created, StoreError> {
        let request = DbRequest::Create {
            account: account.clone(),
        };
        // Not retried: if the first attempt was stored, a second would answer "exists".
        match self.call(&request, false)? {
            DbResponse::Created => Ok(Created::New),
            DbResponse::Exists => Ok(Created::Exists),
            other => Err(unexpected(other)),
        }
    }

    fn ping(&self) -> Result<(), StoreError> {
        match self.call(&DbRequest::Ping, true)? {
            DbResponse::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
