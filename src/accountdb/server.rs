//! The account-db server: a blocking accept thread, and one handler per persistent
//! connection on a bounded `threadpool`, each serving [`DbRequest`] lines from a [`Store`]
//! once the peer has proved the shared secret.
//!
//! Shutdown (as in tiny-http): set a flag, wake the blocked `accept()` by connecting to
//! ourselves, then shut down the read half of every open connection so idle handlers see end
//! of stream. A handler in the middle of a request finishes it and writes its reply first.

use crate::accountdb::store::{Created, Store};
use crate::auth::secret::{self, Secret};
use crate::http::{HttpEndpoint, Routes};
use crate::protocol::accountdb::{
    decode_line, encode_line, DbRequest, DbResponse, Greeting, MAX_LINE,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use threadpool::ThreadPool;

/// How long a new connection has to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How the server listens, whom it lets in, and how much it takes on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Every connection must prove it knows this before any other request.
    pub secret: Secret,
    /// Connections served at once; each holds one handler thread. Further ones are refused.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Longer than the client pool's
    /// idle timeout, so the pool retires idle connections before the server drops them.
    pub idle_timeout: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// The defaults, on `listen`, admitting those who know `secret`.
    pub fn new(listen: SocketAddr, secret: Secret) -> Self {
        Config {
            listen,
            secret,
            max_connections: 256,
            idle_timeout: Duration::from_secs(15 * 60),
            metrics_listen: None,
        }
    }
}

/// Open connections, so shutdown can wake their handlers; and what the metrics count.
#[derive(Default)]
struct Registry {
    stopping: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
    /// Requests served, by [`op_index`].
    requests: [AtomicU64; OPS.len()],
    errors: AtomicU64,
    refused: AtomicU64,
}

const OPS: [&str; 6] = [
    "auth",
    "ping",
    "find",
    "create",
    "update_hash",
    "unreadable",
];

fn op_index(request: Option<&DbRequest>) -> usize {
    match request {
        Some(DbRequest::Auth { .. }) => 0,
        Some(DbRequest::Ping) => 1,
        Some(DbRequest::Find { .. }) => 2,
        Some(DbRequest::Create { .. }) => 3,
        Some(DbRequest::UpdateHash { .. }) => 4,
        None => 5,
    }
}

impl Registry {
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP accountdb_requests_total Requests served, by op.\n\
             # TYPE accountdb_requests_total counter\n",
        );
        for (op, n) in OPS.iter().zip(&self.requests) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "accountdb_requests_total{{op=\"{op}\"}} {n}");
        }
        let open = self.open.lock().len();
        let errors = self.errors.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP accountdb_errors_total Requests answered with an error.\n\
             # TYPE accountdb_errors_total counter\naccountdb_errors_total {errors}\n\
             # HELP accountdb_refused_total Connections refused: bad secret or too many.\n\
             # TYPE accountdb_refused_total counter\naccountdb_refused_total {refused}\n\
             # HELP accountdb_open_connections Open connections.\n\
             # TYPE accountdb_open_connections gauge\naccountdb_open_connections {open}\n"
        );
        out
    }
}

/// Removes a connection from the registry when its handler ends, however it ends.
struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.open.lock().remove(&self.id);
    }
}

/// A running account-db server.
pub struct AccountDb {
    local_addr: SocketAddr,
    metrics_endpoint: Option<HttpEndpoint>,
    registry: Arc<Registry>,
    accept_thread: Option<JoinHandle<()>>,
}

impl AccountDb {
    /// Bind `config.listen` and start serving `store`.
    pub fn spawn(config: Config, store: Arc<dyn Store>) -> io::Result<AccountDb> {
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::default());
        let metrics_endpoint = match config.metrics_listen {
            Some(addr) => {
                let (metrics, ready) = (registry.clone(), store.clone());
                let routes = Routes {
                    metrics: Box::new(move || metrics.render()),
                    ready: Box::new(move || ready.ping().is_ok()),
                };
                Some(HttpEndpoint::spawn(addr, routes)?)
            }
            None => None,
        };
        let accept_thread = std::thread::Builder::new()
            .name("account-db-accept".into())
            .spawn({
                let registry = registry.clone();
                move || accept_loop(listener, config, store, &registry)
            })?;
        Ok(AccountDb {
            local_addr,
            metrics_endpoint,
            registry,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the metrics endpoint, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(HttpEndpoint::local_addr)
    }

    /// Stop accepting, let requests in flight finish, close every connection, and wait.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.accept_thread.take() else {
            return;
        };
        self.registry.stopping.store(true, Ordering::SeqCst);
        self.metrics_endpoint.take();
        // Wake the blocked accept(); if this fails the listener is already gone.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        let _ = thread.join();
    }
}

impl Drop for AccountDb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    registry: &Arc<Registry>,
) {
    let pool = ThreadPool::with_name("account-db-conn".into(), config.max_connections.max(1));
    for stream in listener.incoming() {
        if registry.stopping.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "account-db accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if registry.open.lock().len() >= config.max_connections {
            registry.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?peer, "account-db refused a connection: at max connections");
            let refusal = DbResponse::Error {
                message: "too many connections".into(),
            };
            let _ = stream.write_all(&encode_line(&refusal));
            continue;
        }
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => registry.open.lock().insert(id, clone),
            Err(e) => {
                tracing::warn!(error = %e, "account-db could not track a connection");
                continue;
            }
        };
        let (store, registry, config) = (store.clone(), registry.clone(), config.clone());
        pool.execute(move || {
            let _registered = Registered {
                registry: &registry,
                id,
            };
            if let Err(e) = serve(stream, &*store, &config, &registry) {
                tracing::debug!(?peer, error = %e, "account-db connection ended");
            }
        });
    }
    // Wake every idle handler: its next read sees end of stream.
    for stream in registry.open.lock().values() {
        let _ = stream.shutdown(Shutdown::Read);
    }
    pool.join();
}

/// Serve one connection until the peer closes it, it idles out, or IO fails.
fn serve(
    stream: TcpStream,
    store: &dyn Store,
    config: &Config,
    registry: &Registry,
) -> io::Result<()> {
    let peer = stream.peer_addr().ok();
    stream.set_nodelay(true)?;
    // Until it has authenticated, a peer gets a short leash.
    stream.set_read_timeout(Some(AUTH_TIMEOUT))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let nonce = secret::random_token();
    writer.write_all(&encode_line(&Greeting::current(nonce.clone())))?;
    let mut line = Vec::with_capacity(256);
    let proof = match read_request(&mut reader, &mut line)? {
        Some(Ok(DbRequest::Auth { proof })) => proof,
        _ => String::new(),
    };
    registry.requests[0].fetch_add(1, Ordering::Relaxed);
    if !config.secret.verify(&nonce, &proof) {
        registry.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            ?peer,
            "account-db refused a connection: authentication failed"
        );
        let refusal = DbResponse::Error {
            message: "authentication failed".into(),
        };
        return writer.write_all(&encode_line(&refusal));
    }
    writer.write_all(&encode_line(&DbResponse::Ok))?;
    reader
        .get_ref()
        .set_read_timeout(Some(config.idle_timeout))?;
    loop {
        let request = match read_request(&mut reader, &mut line)? {
            None => return Ok(()),
            Some(request) => request,
        };
        registry.requests[op_index(request.as_ref().ok())].fetch_add(1, Ordering::Relaxed);
        let response = match request {
            Ok(request) => execute(store, request),
            Err(message) => DbResponse::Error { message },
        };
        if matches!(response, DbResponse::Error { .. }) {
            registry.errors.fetch_add(1, Ordering::Relaxed);
        }
        writer.write_all(&encode_line(&response))?;
        if line.len() >= MAX_LINE {
            return Ok(()); // an overlong line cannot be resynchronised
        }
    }
}

/// Read one request line. `None` at end of stream (or a line cut off by it); `Err` with what to
/// answer when the line is not a request.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
) -> io::Result<Option<Result<DbRequest, String>>> {
    line.clear();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', line)?;
    if line.last() != Some(&b'\n') {
        return Ok(if n < MAX_LINE {
            None
        } else {
            Some(Err(format!("request line longer than {MAX_LINE} bytes")))
        });
    }
    Ok(Some(
        decode_line::<DbRequest>(line).map_err(|e| format!("bad request: {e}")),
    ))
}

/// Run one request against the store.
fn execute(store: &dyn Store, request: DbRequest) -> DbResponse {
    let result = match request {
        DbRequest::Ping => store.ping().map(|()| DbResponse::Pong),
        DbRequest::Find { username } => store.find(&username).map(|found| match found {
            Some(account) => DbResponse::Found { account },
            None => DbResponse::NotFound,
        }),
        DbRequest::Create {
            account,
            request_id,
        } => store
            .create(&account, &request_id)
            .map(|created| match created {
                Created::New => DbResponse::Created,
                Created::Exists => DbResponse::Exists,
            }),
        DbRequest::UpdateHash { username, hash } => {
            store
                .update_hash(&username, &hash)
                .map(|updated| match updated {
                    true => DbResponse::Updated,
                    false => DbResponse::NotFound,
                })
        }
        DbRequest::Auth { .. } => Ok(DbResponse::Error {
            message: "already authenticated".into(),
        }),
    };
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "account store request failed");
        DbResponse::Error {
            message: e.to_string(),
        }
    })
}
