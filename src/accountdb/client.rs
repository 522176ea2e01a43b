//! The account-db client: [`DbConn`], one persistent connection; [`DbManager`], the r2d2
//! `ManageConnection` that makes and checks them; and [`RemoteStore`], the [`Store`] that
//! login-server uses, pooled or (as the seed did) one connection per request.
//!
//! As in r2d2-postgres and r2d2-redis: `is_valid` is a real round trip (a ping), and
//! `has_broken` never blocks: it reads a flag that any IO error, timeout or bad reply sets.

use crate::accountdb::store::{Account, Created, Store, StoreError};
use crate::auth::secret::Secret;
use crate::logging::RateLimited;
use crate::metrics::Metrics;
use crate::protocol::accountdb::{
    decode_line, encode_line, DbRequest, DbResponse, Greeting, MAX_LINE, SERVICE, VERSION,
};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    /// No pooled connection could be had within `--db-timeout`: every one is busy, or none
    /// can be made (account-db down or refusing us; the pool's log says which).
    #[error("no account-db connection within the deadline: {0}")]
    Pool(#[from] r2d2::Error),
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
    /// Connect, check the greeting, prove `secret`, and set `timeout` as the deadline of every
    /// read and write.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        secret: &Secret,
    ) -> Result<DbConn, DbError> {
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
        let nonce = match decode_line::<Greeting>(&conn.line) {
            Ok(g) if g.service == SERVICE && g.version == VERSION => g.nonce,
            Ok(g) => {
                return Err(handshake(format!(
                    "it speaks {} version {}, we speak {SERVICE} version {VERSION}",
                    g.service, g.version
                )))
            }
            Err(_) => return Err(handshake(String::from_utf8_lossy(&conn.line).trim().into())),
        };
        let proof = secret.proof(&nonce);
        match conn.call(&DbRequest::Auth { proof })? {
            DbResponse::Ok => Ok(conn),
            DbResponse::Error { message } => Err(handshake(format!("refused us: {message}"))),
            other => Err(handshake(format!("answered authentication with {other:?}"))),
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
    secret: Secret,
}

impl DbManager {
    /// Connections to `addr`, with `timeout` as the connect and per-request deadline.
    pub fn new(addr: SocketAddr, timeout: Duration, secret: Secret) -> Self {
        DbManager {
            addr,
            timeout,
            secret,
        }
    }
}

impl r2d2::ManageConnection for DbManager {
    type Connection = DbConn;
    type Error = DbError;

    fn connect(&self) -> Result<DbConn, DbError> {
        DbConn::connect(self.addr, self.timeout, &self.secret)
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

/// Reports the pool's failed connection attempts through `tracing`, at most one line per
/// 10 s with how many failed since: a wrong secret fails every attempt, many a second.
struct LogErrors(RateLimited);

impl std::fmt::Debug for LogErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogErrors")
    }
}

impl r2d2::HandleError<DbError> for LogErrors {
    fn handle_error(&self, error: DbError) {
        if let Some(failed) = self.0.hit() {
            tracing::warn!(%error, failed, "account-db connection attempts failed");
        }
    }
}

/// How login-server reaches account-db; made by
/// [`LoginServerConfig::db_client`](crate::login::LoginServerConfig::db_client).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub addr: SocketAddr,
    /// The secret account-db asks every connection to prove.
    pub secret: Secret,
    /// Pooled connections; 0 opens a new connection for every request, as the seed did.
    pub pool_size: u32,
    /// Deadline of connecting, of each request, and of getting a pooled connection.
    pub timeout: Duration,
}

enum Connections {
    Pooled(r2d2::Pool<DbManager>),
    PerRequest(DbManager),
}

/// The account store as login-server sees it: account-db over TCP.
pub struct RemoteStore {
    connections: Connections,
    /// How long a create whose outcome is unknown keeps being repeated to learn it.
    resolve_window: Duration,
    metrics: Metrics,
}

impl RemoteStore {
    /// A store reaching `config.addr`. It does not wait for account-db to be up: until it is,
    /// requests fail with [`StoreError::Unreachable`] and the pool keeps trying.
    pub fn new(config: &ClientConfig, metrics: Metrics) -> RemoteStore {
        let manager = DbManager::new(config.addr, config.timeout, config.secret.clone());
        let connections = match config.pool_size {
            0 => Connections::PerRequest(manager),
            size => Connections::Pooled(
                r2d2::Pool::builder()
                    .max_size(size)
                    .connection_timeout(config.timeout)
                    // has_broken catches failed connections; a ping per checkout would double
                    // the round trips. Idle ones are retired before account-db drops them.
                    .test_on_check_out(false)
                    // No churn while idle: connections are made when needed, kept while used,
                    // and an idle one is retired after 5 minutes (before account-db's idle
                    // timeout drops it) without being replaced.
                    .min_idle(Some(0))
                    .max_lifetime(None)
                    .idle_timeout(Some(Duration::from_secs(5 * 60)))
                    .error_handler(Box::new(LogErrors(RateLimited::new(Duration::from_secs(
                        10,
                    )))))
                    .build_unchecked(manager),
            ),
        };
        RemoteStore {
            connections,
            resolve_window: 2 * config.timeout,
            metrics,
        }
    }

    /// The pool's (open, idle) connections; `None` when not pooled.
    pub fn pool_state(&self) -> Option<(u32, u32)> {
        match &self.connections {
            Connections::Pooled(pool) => {
                let state = pool.state();
                Some((state.connections, state.idle_connections))
            }
            Connections::PerRequest(_) => None,
        }
    }

    /// One attempt on one connection.
    fn attempt(&self, request: &DbRequest) -> Result<DbResponse, Attempt> {
        let mut conn = match &self.connections {
            Connections::PerRequest(manager) => {
                let conn = r2d2::ManageConnection::connect(manager);
                Lent::Own(conn.map_err(Attempt::NotSent)?)
            }
            Connections::Pooled(pool) => {
                let waiting = Instant::now();
                let conn = pool.get();
                self.metrics.pool_wait.observe(waiting.elapsed());
                Lent::Pooled(conn.map_err(|e| Attempt::NotSent(e.into()))?)
            }
        };
        conn.call(request).map_err(Attempt::Failed)
    }

    /// One request, retried where that is safe and useful. Every request is idempotent (a
    /// create by its request id), so:
    /// - a connection found dead (after account-db restarts, every idle pooled one is) is
    ///   followed by another at once;
    /// - a request whose outcome must be known (`resolve`: a create) is repeated after any
    ///   failure, timeouts included, for up to the resolve window.
    fn call(&self, request: &DbRequest, resolve: bool) -> Result<DbResponse, StoreError> {
        let started = Instant::now();
        let mut attempts = match &self.connections {
            Connections::Pooled(pool) => pool.max_size() + 2,
            Connections::PerRequest(_) => 3,
        };
        loop {
            attempts -= 1;
            match self.attempt(request) {
                Ok(DbResponse::Error { message }) => return Err(StoreError::Remote(message)),
                Ok(response) => return Ok(response),
                Err(Attempt::NotSent(e)) => return Err(StoreError::Unreachable(e)),
                Err(Attempt::Failed(e)) => {
                    let again = e.is_dead_connection()
                        || (resolve && started.elapsed() < self.resolve_window);
                    if attempts == 0 || !again {
                        return Err(StoreError::Unreachable(e));
                    }
                    tracing::debug!(error = %e, "account-db request failed; trying again");
                }
            }
        }
    }
}

/// How one attempt failed.
enum Attempt {
    /// No connection could be had, so nothing was sent.
    NotSent(DbError),
    /// The request may or may not have reached account-db.
    Failed(DbError),
}

/// A connection for one attempt: pooled, or made for it alone.
enum Lent {
    Pooled(r2d2::PooledConnection<DbManager>),
    Own(DbConn),
}

impl std::ops::Deref for Lent {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        match self {
            Lent::Pooled(conn) => conn,
            Lent::Own(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut DbConn {
        match self {
            Lent::Pooled(conn) => conn,
            Lent::Own(conn) => conn,
        }
    }
}

fn unexpected(response: DbResponse) -> StoreError {
    StoreError::Remote(format!("unexpected reply {response:?}"))
}

impl Store for RemoteStore {
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let request = DbRequest::Find {
            username: username.to_string(),
        };
        match self.call(&request, false)? {
            DbResponse::Found { account } => Ok(Some(account)),
            DbResponse::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError> {
        let request = DbRequest::Create {
            account: account.clone(),
            request_id: request_id.to_string(),
        };
        match self.call(&request, true)? {
            DbResponse::Created => Ok(Created::New),
            DbResponse::Exists => Ok(Created::Exists),
            other => Err(unexpected(other)),
        }
    }

    fn update_hash(&self, username: &str, hash: &str) -> Result<bool, StoreError> {
        let request = DbRequest::UpdateHash {
            username: username.to_string(),
            hash: hash.to_string(),
        };
        match self.call(&request, false)? {
            DbResponse::Updated => Ok(true),
            DbResponse::NotFound => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    fn ping(&self) -> Result<(), StoreError> {
        match self.call(&DbRequest::Ping, false)? {
            DbResponse::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
