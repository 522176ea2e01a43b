//! [`LoginServer`]: the gateway-facing server. How its threads are started, and the handle
//! that stops them. Without `--db` it also runs an account-db embedded in the process.
//!
//! ```text
//! gateway ── io_loop (1 thread, mio) ──job channel──▶ workers (--workers)
//!                ▲                                      │ cheap part: validate, look up,
//!                │                                      │ cheap hashes; then either
//!                ├──────────── returns ◀────────────────┤ (answered: straight back)
//!                │                ▲                     ▼ (a hash or an old-server ask)
//!                │                ├──── hash threads (hashing: a cap on hashes at once)
//!                │                ├──── costly (one stored hash far costlier, at a time)
//!                │                └──── legacy_stage (--legacy-db: the old server's asks)
//!                └─ returns wake the I/O thread (mio Waker) when it may be asleep
//! ```
//!
//! These loops are long-lived threads of their own, not a `threadpool`: each owns state for
//! its whole life (a worker its argon2 memory and batch, a hash thread its channel end), none
//! ever finishes a job and goes back to a shared queue the way a pool's tasks do, and a panic
//! is caught inside the loop so the thread lives on. account-db's per-connection handlers,
//! which do come and go, run on a bounded `threadpool`.

// A connection is boxed once, at accept, and the box travels between the threads (job batches,
// hash jobs, returns) without the connection's buffers being copied: lists of them are lists
// of boxes.
#![allow(clippy::vec_box)]

mod config;
mod conn;
mod costly;
mod fairness;
mod gateway_tls;
mod hashing;
mod health;
mod io_loop;
mod legacy_stage;
mod returns;
mod workers;

pub use config::{Command, GatewayTlsError, GatewayTlsMode, LoginServerConfig, TokenKeyError};

use crate::accountdb::accounts::Accounts;
use crate::accountdb::client::{InstanceState, RemoteStore};
use crate::accountdb::server::{AccountDb, AccountDbStartError};
use crate::accountdb::AccountDbConfig;
use crate::auth::password::{HashError, Hasher, Memory};
use crate::auth::secret::{Secret, SecretError};
use crate::http::{HttpEndpoint, Routes};
use crate::metrics::{Gauges, LiveFamily, LiveGauge, Metrics};
use crate::service::Service;
use crate::tls::{ClientFiles, Material, Reloadable, ServerFiles};
use conn::Deadlines;
use gateway_tls::{GatewayFiles, GatewayTls};
use hashing::Permits;
use health::Health;
use io_loop::{IoLoop, Limits, WAKER};
use returns::Returns;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use workers::Worker;

/// Reads the state of each account-db (up, requests, pooled connections), for the metrics.
pub type DbState = Arc<dyn Fn() -> Vec<InstanceState> + Send + Sync>;

/// Why a login-server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--listen` cannot be bound: in use, or not an address of this host.
    #[error("cannot listen on {addr} (--listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `--hash-params` are outside argon2's limits.
    #[error(transparent)]
    HashParams(#[from] HashError),
    /// `--db` is set but its secret cannot be had.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The embedded account-db cannot start: its store in `--data` cannot be opened, checked
    /// or migrated, say.
    #[error("cannot start the embedded account-db: {0}")]
    Embedded(#[from] AccountDbStartError),
    /// The OS refuses a thread or a poller (resource limits).
    #[error("cannot start the I/O thread or workers: {0}")]
    Threads(#[from] std::io::Error),
    /// `--metrics-listen` cannot be bound.
    #[error("cannot serve metrics on {addr} (--metrics-listen): {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `--strict-limits`, and the open-files limit (raised as far as the hard limit allows)
    /// cannot hold `--max-connections` beside what the process needs.
    #[error(
        "--max-connections {wanted} needs {needed} open files with what the process holds \
         besides, and the limit reaches {limit} (hard limit {hard}): raise LimitNOFILE or \
         ulimit -n, or lower --max-connections (without --strict-limits it is lowered to {fits})"
    )]
    Descriptors {
        wanted: usize,
        needed: u64,
        limit: u64,
        hard: u64,
        fits: usize,
    },
    /// `--hash-params` memory times `--hash-threads` is more than the machine has.
    #[error(
        "--hash-params memory ({memory_kib} KiB) times --hash-threads ({threads}) is more than \
         this machine's {total_kib} KiB: lower either"
    )]
    HashMemory {
        memory_kib: u64,
        threads: u64,
        total_kib: u64,
    },
    /// The token signing key (or a verify key) cannot be had.
    #[error(transparent)]
    TokenKey(#[from] TokenKeyError),
    /// `--db-tls-ca`, `--db-tls-cert` or `--db-tls-key` cannot be loaded.
    #[error("cannot set up TLS to account-db: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `--gateway-tls` and its files do not make a TLS listener.
    #[error("cannot set up TLS for gateways: {0}")]
    GatewayTls(#[from] GatewayTlsError),
}

/// A running login-server. Dropping it shuts it down.
pub struct LoginServer {
    local_addr: SocketAddr,
    metrics_endpoint: Option<HttpEndpoint>,
    stopping: Arc<AtomicBool>,
    returns: Arc<Returns>,
    threads: Vec<JoinHandle<()>>,
    /// The account-db it runs in-process, without `--db`; stopped after the login-server.
    embedded: Option<AccountDb>,
    /// The TLS material of its account-db connections (`--db-tls-*`), reloaded on SIGHUP.
    db_tls: Option<Arc<Material<ClientFiles>>>,
    /// The metrics endpoint's TLS material, reloaded with the rest.
    metrics_tls: Option<Arc<Material<ServerFiles>>>,
    /// The gateway listener's TLS material (`--tls-cert`), reloaded with the rest.
    gateway_tls: Option<Arc<Material<GatewayFiles>>>,
}

/// Pooled connections (open, idle) over every account-db, if pooled.
fn pool_gauges(db_state: &DbState) -> Option<(LiveGauge, LiveGauge)> {
    let pooled = db_state().iter().any(|i| i.pool.is_some());
    let sum = |state: DbState, pick: fn((u32, u32)) -> u32| {
        LiveGauge::new(move || {
            state()
                .iter()
                .filter_map(|i| i.pool)
                .map(|p| i64::from(pick(p)))
                .sum()
        })
    };
    pooled.then(|| {
        (
            sum(db_state.clone(), |p| p.0),
            sum(db_state.clone(), |p| p.1),
        )
    })
}

/// A count as a metric value (saturating: a counter past i64::MAX is not a concern).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Up, requests, failures and retries of each account-db, labelled by its address.
fn instance_families(db_state: &DbState) -> [LiveFamily; 4] {
    let family = |state: DbState, pick: fn(&InstanceState) -> i64| {
        move || {
            state()
                .iter()
                .map(|i| (i.addr.to_string(), pick(i)))
                .collect::<Vec<_>>()
        }
    };
    [
        LiveFamily::gauges("db", family(db_state.clone(), |i| i64::from(i.up))),
        LiveFamily::counters("db", family(db_state.clone(), |i| count(i.requests))),
        LiveFamily::counters("db", family(db_state.clone(), |i| count(i.errors))),
        LiveFamily::counters("db", family(db_state.clone(), |i| count(i.retries))),
    ]
}

/// login-server's sockets, bound before anything else starts.
struct Listeners {
    /// `--listen`, for gateways.
    gateway: TcpListener,
    /// `--metrics-listen`, if given.
    metrics: Option<std::net::TcpListener>,
    /// Its TLS material (`--metrics-tls-cert`), if served over TLS.
    metrics_tls: Option<Arc<Material<ServerFiles>>>,
    /// `--listen`'s TLS material (`--tls-cert`), with `--gateway-tls` on.
    gateway_tls: Option<Arc<Material<GatewayFiles>>>,
}

impl Listeners {
    fn bind(config: &LoginServerConfig) -> Result<Listeners, StartError> {
        let addr = config.listen;
        let gateway = listen(addr).map_err(|source| StartError::Listen { addr, source })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .map_err(|source| StartError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let metrics_tls = crate::tls::served(
            config.metrics_tls_cert.as_deref(),
            config.metrics_tls_key.as_deref(),
        )?;
        let gateway_tls = config.gateway_tls_files()?.map(Arc::new);
        Ok(Listeners {
            gateway,
            metrics,
            metrics_tls,
            gateway_tls,
        })
    }
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

/// The machine's memory in KiB (physical pages times the page size), if it can be told.
fn machine_memory_kib() -> Option<u64> {
    // sysconf, not /proc/meminfo: the shipped units' sandbox (ProcSubset=pid) hides the latter.
    // SAFETY: sysconf only reads the name it is given.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (pages, size) = (u64::try_from(pages).ok()?, u64::try_from(size).ok()?);
    Some(pages.checked_mul(size)? / 1024).filter(|&kib| kib > 0)
}

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(f)
}

impl LoginServer {
    /// Start as `config` says: bind `--listen`, start the I/O thread, workers and hash threads,
    /// and reach account-db at `--db`, or start one embedded on an ephemeral loopback port,
    /// storing under `--data`, with a fresh secret that never leaves memory.
    pub fn spawn(config: LoginServerConfig) -> Result<LoginServer, StartError> {
        // Bound before an embedded account-db writes its store: a bad address creates nothing.
        let listeners = Listeners::bind(&config)?;
        let (addrs, secret, embedded) = match config.db.as_slice() {
            [_, ..] => (config.db.clone(), config.resolve_db_secret()?, None),
            [] => {
                let secret = Secret::generate();
                let listen = SocketAddr::from(([127, 0, 0, 1], 0));
                let db = AccountDb::open(AccountDbConfig {
                    data: config.data.clone(),
                    clock: config.service.clock.clone(),
                    ..AccountDbConfig::embedded(listen, secret.clone())
                })?;
                tracing::info!(addr = %db.local_addr(), data = %config.data.display(), "embedded account-db started");
                (vec![db.local_addr().into()], secret, Some(db))
            }
        };
        let metrics = Metrics::default();
        let mut client = config.db_client(addrs, secret)?;
        if embedded.is_some() {
            // In-process, on loopback: the --db-tls-* flags are for --db.
            client.tls = None;
        }
        let db_tls = client.tls.as_ref().map(|t| t.material.clone());
        let remote = Arc::new(RemoteStore::new(&client, metrics.clone()));
        let instances = remote.clone();
        let db_state: DbState = Arc::new(move || instances.instances());
        let mut server = LoginServer::start(config, listeners, remote, db_state, metrics, db_tls)?;
        server.embedded = embedded;
        Ok(server)
    }

    /// [`LoginServer::spawn`] over any account tier: for tests that inject faults around the
    /// real one.
    pub fn spawn_with_store(
        config: LoginServerConfig,
        store: Arc<dyn Accounts>,
        db_state: DbState,
        metrics: Metrics,
    ) -> Result<LoginServer, StartError> {
        let listeners = Listeners::bind(&config)?;
        LoginServer::start(config, listeners, store, db_state, metrics, None)
    }

    fn start(
        config: LoginServerConfig,
        listeners: Listeners,
        store: Arc<dyn Accounts>,
        db_state: DbState,
        metrics: Metrics,
        db_tls: Option<Arc<Material<ClientFiles>>>,
    ) -> Result<LoginServer, StartError> {
        let hasher = Hasher::new(config.hash_params)?;
        let (memory_kib, threads) = (
            u64::from(config.hash_params.memory_kib),
            config.hash_threads() as u64,
        );
        if let Some(total_kib) = machine_memory_kib() {
            if memory_kib.saturating_mul(threads) > total_kib {
                return Err(StartError::HashMemory {
                    memory_kib,
                    threads,
                    total_kib,
                });
            }
        }
        let Listeners {
            gateway: listener,
            metrics: metrics_listener,
            metrics_tls,
            gateway_tls,
        } = listeners;
        if config.gateway_tls == GatewayTlsMode::Optional {
            tracing::warn!(
                "--gateway-tls optional: plaintext gateways are still served, and their players' \
                 passwords cross the network readable; require TLS once every gateway speaks it"
            );
        }
        let fit = crate::limits::fit(config.max_connections, config.descriptors_needed())?;
        if fit.lowered() {
            let needed = fit.fixed + fit.wanted as u64;
            if config.strict_limits {
                return Err(StartError::Descriptors {
                    wanted: fit.wanted,
                    needed,
                    limit: fit.limit,
                    hard: fit.hard,
                    fits: fit.effective,
                });
            }
            tracing::warn!(
                wanted = fit.wanted,
                effective = fit.effective,
                needed,
                limit = fit.limit,
                hard = fit.hard,
                "the open-files limit cannot hold --max-connections: connections capped at the \
                 effective number (raise LimitNOFILE or ulimit -n; --strict-limits refuses instead)"
            );
        }
        metrics.max_connections.set(fit.effective as i64);
        let local_addr = listener.local_addr()?;
        if config.allow_from.is_empty() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %local_addr,
                "listening on a non-loopback address without --allow-from: anyone who can reach \
                 the port can connect; pass the gateways' addresses"
            );
        }
        if let Some(legacy) = config.legacy_db.filter(|addr| !addr.ip().is_loopback()) {
            tracing::warn!(
                legacy_db = %legacy,
                "--legacy-db is not a loopback address: the old server's protocol carries \
                 passwords in plaintext and cannot speak TLS; keep it on this host or tunnel it"
            );
        }
        let tokens = config.tokens()?;
        let kids = tokens.kids();
        let allowed: Vec<String> = config.allow_from.iter().map(|c| c.to_string()).collect();
        tracing::info!(
            signing_kid = %kids.first().copied().unwrap_or_default(),
            verify_kids = %match kids.len() {
                0 | 1 => "none".to_string(),
                _ => kids[1..].join(","),
            },
            allow_from = %match allowed.is_empty() {
                true => "anyone".to_string(),
                false => allowed.join(","),
            },
            "token keys and gateways allowed"
        );
        let service = Service::new(
            store.clone(),
            hasher,
            config.service.clone(),
            tokens,
            config.legacy(),
            metrics.clone(),
        )?;
        let service = Arc::new(service);

        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let (back_tx, back_rx) = crossbeam_channel::unbounded();
        let returns = Arc::new(Returns::new(back_tx, waker));
        let batch = workers::batch_size(config.db_pool() > 0);
        let handshake_limit = workers::handshake_limit(config.workers(), batch);
        // Room for --queue connections with messages, and for the handshakes besides them.
        let (job_tx, job_rx) = crossbeam_channel::bounded(config.queue + handshake_limit);
        // Connections holding one message, which the workers take first (fairness.rs).
        let (first_tx, first_rx) = crossbeam_channel::bounded(config.queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let handshaking = Arc::new(AtomicUsize::new(0));
        let (hash_tx, hash_rx) = crossbeam_channel::bounded(config.queue);
        let fairness = Arc::new(fairness::Fairness::new(config.fair_share));
        let (costly_tx, costly_rx) = crossbeam_channel::bounded(costly::QUEUE);
        let (legacy_tx, legacy_rx) = crossbeam_channel::bounded(legacy_stage::QUEUE);
        let stopping = Arc::new(AtomicBool::new(false));
        let health = Health::new(config.workers() + config.hash_threads());

        let permits = Arc::new(Permits::new(config.hash_threads(), metrics.clone()));
        let metrics_endpoint = match metrics_listener {
            None => None,
            Some(http) => {
                let depth = |len: usize| i64::try_from(len).unwrap_or(i64::MAX);
                let (queued, hash_jobs) = (queued.clone(), hash_rx.clone());
                let legacy_jobs = legacy_rx.clone();
                let registry = metrics.registry(Gauges {
                    queue_depth: LiveGauge::new(move || depth(queued.load(Ordering::Relaxed))),
                    hash_queue_depth: LiveGauge::new(move || depth(hash_jobs.len())),
                    legacy_queue_depth: LiveGauge::new(move || depth(legacy_jobs.len())),
                    pool: pool_gauges(&db_state),
                    instances: instance_families(&db_state),
                    db_tls_expiry: db_tls
                        .clone()
                        .map(|material| LiveGauge::new(move || material.expiry().unwrap_or(0))),
                    gateway_tls_expiry: gateway_tls
                        .clone()
                        .map(|material| LiveGauge::new(move || material.expiry().unwrap_or(0))),
                });
                let alive = health.clone();
                let routes = Routes {
                    registry,
                    alive: Box::new(move || alive.alive()),
                    ready: Box::new(move || store.ping().map_err(|e| e.to_string())),
                    keys: Some(service.jwks()),
                };
                Some(HttpEndpoint::serve(http, routes, metrics_tls.clone())?)
            }
        };

        let mut threads = Vec::new();
        for i in 0..config.workers() {
            let worker = Worker {
                jobs: job_rx.clone(),
                first: first_rx.clone(),
                queued: queued.clone(),
                handshaking: handshaking.clone(),
                handshake_limit,
                hash_jobs: hash_tx.clone(),
                costly_jobs: costly_tx.clone(),
                legacy_jobs: legacy_tx.clone(),
                service: service.clone(),
                returns: returns.clone(),
                metrics: metrics.clone(),
                scratch: vec![0; 16 * 1024],
                max_message: config.max_message,
                batch,
                memory: Memory::default(),
                fairness: fairness.clone(),
                queue: config.queue,
                hash_threads: config.hash_threads(),
            };
            let running = health.running();
            threads.push(spawn_named(format!("worker-{i}"), move || {
                let _running = running;
                worker.run()
            })?);
        }
        for i in 0..config.hash_threads() {
            let (hash_jobs, permits) = (hash_rx.clone(), permits.clone());
            let (service, returns) = (service.clone(), returns.clone());
            let old_server = legacy_tx.clone();
            let running = health.running();
            threads.push(spawn_named(format!("hash-{i}"), move || {
                let _running = running;
                hashing::run_hasher(hash_jobs, old_server, permits, service, returns)
            })?);
        }
        if config.legacy_db.is_some() {
            for i in 0..config.legacy_db_connections {
                let (jobs, service) = (legacy_rx.clone(), service.clone());
                let (returns, metrics) = (returns.clone(), metrics.clone());
                threads.push(spawn_named(format!("legacy-{i}"), move || {
                    legacy_stage::run(jobs, service, returns, metrics)
                })?);
            }
        }
        // The costly stage is not joined at shutdown: a verification in it may take far longer
        // than --shutdown-timeout, and its reply could not be written after the I/O thread
        // ends anyway. Its threads end when the workers' senders are gone.
        let stage = Arc::new(costly::CostlyStage {
            service: service.clone(),
            returns: returns.clone(),
            metrics: metrics.clone(),
            wait: config.db_deadlines().costly_wait,
        });
        let (verifier_tx, verifier_rx) = crossbeam_channel::bounded(0);
        let dispatcher = stage.clone();
        spawn_named("costly-dispatch".into(), move || {
            dispatcher.dispatch(costly_rx, verifier_tx)
        })?;
        spawn_named("costly-verify".into(), move || stage.verify(verifier_rx))?;
        let io_loop = IoLoop {
            poll,
            listener,
            jobs: job_tx,
            first: first_tx,
            queued,
            handshaking,
            tls: gateway_tls.clone().map(|material| {
                Arc::new(GatewayTls {
                    mode: config.gateway_tls,
                    material,
                    metrics: metrics.clone(),
                })
            }),
            back: back_rx,
            returns: returns.clone(),
            stopping: stopping.clone(),
            health,
            limits: Limits {
                allow_from: config.allow_from.clone(),
                max_connections: fit.effective,
                max_message: config.max_message,
                queue: config.queue,
                batch,
                handshakes: handshake_limit,
                deadlines: Deadlines {
                    message: config.message_timeout,
                    idle: config.idle_timeout,
                },
                shutdown_timeout: config.shutdown_timeout,
            },
            metrics,
        };
        threads.push(spawn_named("io".into(), move || io_loop.run())?);
        tracing::info!(
            addr = %local_addr,
            metrics = metrics_endpoint
                .as_ref()
                .map(|e| tracing::field::display(e.local_addr())),
            workers = config.workers(),
            hash_threads = config.hash_threads(),
            hash_params = %config.hash_params,
            "login-server listening"
        );
        Ok(LoginServer {
            local_addr,
            metrics_endpoint,
            stopping,
            returns,
            threads,
            embedded: None,
            db_tls,
            metrics_tls,
            gateway_tls,
        })
    }

    /// Read the TLS files again (SIGHUP), of its gateway listener, of its account-db
    /// connections and of the metrics endpoint: connections made from now on use them, pooled ones finish their lifetime
    /// (`--db-max-lifetime`). A file that
    /// fails to load keeps the material in force, and the log says why. Returns whether new
    /// material is in force.
    pub fn reload(&self) -> bool {
        crate::tls::reload_all(&[
            (
                "--tls-cert",
                self.gateway_tls.as_deref().map(|m| m as &dyn Reloadable),
            ),
            (
                "--db-tls-ca",
                self.db_tls.as_deref().map(|m| m as &dyn Reloadable),
            ),
            (
                "--metrics-tls-cert",
                self.metrics_tls.as_deref().map(|m| m as &dyn Reloadable),
            ),
        ])
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
        if let Some(db) = self.embedded.take() {
            db.shutdown();
        }
    }
}

impl Drop for LoginServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_machines_memory_is_what_meminfo_says() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        let told = super::machine_memory_kib().unwrap();
        assert!(told.abs_diff(total) * 100 < total, "{told} vs {total}");
    }
}
