//! [`LoginServer`]: the gateway-facing server. Its configuration, how its threads are started,
//! and the handle that stops them.
//!
//! ```text
//! gateway ── io_loop (1 thread, mio) ──job channel──▶ workers (--workers)
//!                ▲                                      │ cheap part: validate, look up
//!                │                                      ▼
//!                └──────── returns ◀──── hash threads (cap on hashes at once)
//! ```

mod conn;
mod io_loop;
mod worker;

use crate::accountdb::client::{ClientConfig, RemoteStore};
use crate::accountdb::store::Store;
use crate::auth::password::{HashError, HashParams, Hasher};
use crate::auth::secret::Secret;
use crate::http::{HttpEndpoint, Routes};
use crate::metrics::{Gauges, Metrics};
use crate::service::{Options as ServiceOptions, Service};
use io_loop::{IoLoop, Limits, WAKER};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use worker::{Permits, Returns, Worker};

/// Reads the account-db pool's (open, idle) connections, for the metrics.
pub type PoolState = Box<dyn Fn() -> Option<(u32, u32)> + Send + Sync>;

/// Everything a login-server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Worker threads: the cheap part of each request, including the account-db lookup.
    pub workers: usize,
    /// Whole messages waiting for a worker (and, separately, for a hash thread) before new
    /// ones are answered 7.
    pub queue: usize,
    pub max_connections: usize,
    /// Hashes computed at once: the number of hash threads.
    pub hash_threads: usize,
    pub hash_params: HashParams,
    /// Name rules, throttling, hiding whether users exist.
    pub service: ServiceOptions,
    /// Largest gateway message, in bytes.
    pub max_message: usize,
    /// A message must arrive whole within this time of its first byte.
    pub message_timeout: Duration,
    /// A connection with nothing to say for this long is closed.
    pub idle_timeout: Duration,
    /// How long shutdown waits for accepted requests to be answered.
    pub shutdown_timeout: Duration,
    pub db: ClientConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// The number of CPU cores, or 1 if it cannot be told.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// The defaults, listening on `listen` and reaching account-db at `db` with `secret`.
    pub fn new(listen: SocketAddr, db: SocketAddr, secret: Secret) -> Config {
        let workers = 4 * cores();
        Config {
            listen,
            workers,
            queue: 1024,
            max_connections: 10_000,
            hash_threads: cores(),
            hash_params: HashParams::default(),
            service: ServiceOptions::default(),
            max_message: 64 * 1024,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5 * 60),
            shutdown_timeout: Duration::from_secs(10),
            db: ClientConfig::new(db, secret, workers as u32),
            metrics_listen: None,
        }
    }
}

/// Why a login-server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    HashParams(#[from] HashError),
    #[error("cannot start the I/O thread or workers: {0}")]
    Threads(#[from] std::io::Error),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running login-server. Dropping it shuts it down.
pub struct LoginServer {
    local_addr: SocketAddr,
    metrics_endpoint: Option<HttpEndpoint>,
    stopping: Arc<AtomicBool>,
    returns: Arc<Returns>,
    threads: Vec<JoinHandle<()>>,
}

/// A non-blocking listener with a deep accept backlog (std's is 128; the seed's was 5), so a
/// burst of connections waits in the kernel instead of being dropped and retried a second later.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(f)
}

impl LoginServer {
    /// Bind `config.listen` and start the I/O thread, workers and hash threads, reaching
    /// account-db as `config.db` says.
    pub fn spawn(config: Config) -> Result<LoginServer, StartError> {
        let metrics = Arc::new(Metrics::default());
        let remote = Arc::new(RemoteStore::new(&config.db, metrics.clone()));
        let pool = remote.clone();
        let pool_state: PoolState = Box::new(move || pool.pool_state());
        LoginServer::spawn_with_store(config, remote, pool_state, metrics)
    }

    /// [`LoginServer::spawn`] over any store: for tests that inject faults around the real one.
    pub fn spawn_with_store(
        config: Config,
        store: Arc<dyn Store>,
        pool_state: PoolState,
        metrics: Arc<Metrics>,
    ) -> Result<LoginServer, StartError> {
        let hasher = Hasher::new(config.hash_params)?;
        let listener = listen(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr()?;
        let service = Service::new(
            store.clone(),
            hasher,
            config.service.clone(),
            metrics.clone(),
        )?;
        let service = Arc::new(service);

        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let (back_tx, back_rx) = crossbeam_channel::unbounded();
        let returns = Arc::new(Returns::new(back_tx, waker));
        let (job_tx, job_rx) = crossbeam_channel::bounded(config.queue);
        let (hash_tx, hash_rx) = crossbeam_channel::bounded(config.queue);
        let stopping = Arc::new(AtomicBool::new(false));

        let permits = Arc::new(Permits::new(
            config.hash_threads.max(1),
            hash_rx.clone(),
            metrics.clone(),
        ));
        let metrics_endpoint = match config.metrics_listen {
            None => None,
            Some(addr) => {
                let (jobs, hash_jobs, m) = (job_rx.clone(), hash_rx.clone(), metrics.clone());
                let routes = Routes {
                    metrics: Box::new(move || {
                        m.render(&Gauges {
                            queue_depth: jobs.len(),
                            hash_queue_depth: hash_jobs.len(),
                            pool: pool_state(),
                        })
                    }),
                    ready: Box::new(move || store.ping().is_ok()),
                };
                let endpoint = HttpEndpoint::spawn(addr, routes)
                    .map_err(|source| StartError::Metrics { addr, source })?;
                Some(endpoint)
            }
        };

        let mut threads = Vec::new();
        for i in 0..config.workers.max(1) {
            let worker = Worker {
                jobs: job_rx.clone(),
                hash_jobs: hash_tx.clone(),
                permits: permits.clone(),
                service: service.clone(),
                returns: returns.clone(),
                scratch: vec![0; 16 * 1024],
                max_message: config.max_message,
            };
            threads.push(spawn_named(format!("worker-{i}"), move || worker.run())?);
        }
        for i in 0..config.hash_threads.max(1) {
            let (hash_jobs, permits) = (hash_rx.clone(), permits.clone());
            let (service, returns) = (service.clone(), returns.clone());
            threads.push(spawn_named(format!("hash-{i}"), move || {
                worker::run_hasher(hash_jobs, permits, service, returns)
            })?);
        }
        let io_loop = IoLoop {
            poll,
            listener,
            jobs: job_tx,
            back: back_rx,
            returns: returns.clone(),
            stopping: stopping.clone(),
            limits: Limits {
                max_connections: config.max_connections,
                max_message: config.max_message,
                message_timeout: config.message_timeout,
                idle_timeout: config.idle_timeout,
                shutdown_timeout: config.shutdown_timeout,
            },
            metrics,
        };
        threads.push(spawn_named("io".into(), move || io_loop.run())?);
        Ok(LoginServer {
            local_addr,
            metrics_endpoint,
            stopping,
            returns,
            threads,
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

    /// Stop accepting, answer every request already accepted, and wait for all threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.returns.wake();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.metrics_endpoint.take();
    }
}

impl Drop for LoginServer {
    fn drop(&mut self) {
        self.stop();
    }
}
