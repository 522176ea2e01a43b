//! The account-db server: a blocking accept thread, and one handler per persistent
//! connection on a bounded `threadpool`, each serving [`DbRequest`] lines from a [`Store`]
//! once the peer has proved the shared secret.
//!
//! Shutdown (as in tiny-http): set a flag, wake the blocked `accept()` by connecting to
//! ourselves, then shut down the read half of every open connection so idle handlers see end
//! of stream. A handler in the middle of a request finishes it and writes its reply first.

use crate::accountdb::config::AccountDbConfig;
use crate::accountdb::execute;
use crate::accountdb::secrets::{AcceptedSecrets, Proved};
use crate::accountdb::store::{schema, Store, StoreError};
use crate::auth::secret::{self, SecretError};
use crate::clock::{Clock, Millis};
use crate::http::{HttpEndpoint, Routes};
use crate::logging::RateLimited;
use crate::metrics::{LabeledCounters, LiveFamily, LiveGauge};
use crate::protocol::accountdb::{
    decode_line, encode_line, range, DbRequest, DbResponse, Greeting, MAX_LINE, VERSION, VERSIONS,
};
use crate::tls::{Material, Reloadable, ServerFiles, Stream, TlsError};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use threadpool::ThreadPool;

/// Why an account-db could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccountDbStartError {
    /// `--listen` cannot be bound: in use, or not an address of this host.
    #[error("cannot listen on {addr} (--listen): {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// `--metrics-listen` cannot be bound.
    #[error("cannot serve metrics on {addr} (--metrics-listen): {source}")]
    Metrics { addr: SocketAddr, source: io::Error },
    /// The secret cannot be read, parsed or created.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store (`--store`, or `--data`) cannot be opened, checked or migrated.
    #[error("cannot open the account store {store}: {source}")]
    Store { store: String, source: StoreError },
    /// PostgreSQL did not come up within `--store-start-timeout`.
    #[error(
        "the account store {store} did not come up within {} s (--store-start-timeout): {source}",
        waited.as_secs()
    )]
    StoreWait {
        store: String,
        waited: Duration,
        source: StoreError,
    },
    /// A stop signal came while it waited for the store: nothing to serve, nothing wrong.
    #[error("stopped before the account store came up")]
    Stopped,
    /// `--strict-limits`, and the open-files limit (raised as far as the hard limit allows)
    /// cannot hold `--max-connections` and `--max-handshakes` beside what the process needs.
    #[error(
        "--max-connections {wanted} needs {needed} open files with --max-handshakes and what \
         the process holds besides, and the limit reaches {limit} (hard limit {hard}): raise \
         LimitNOFILE or ulimit -n, or lower --max-connections (without --strict-limits it is \
         lowered to {fits})"
    )]
    Descriptors {
        wanted: usize,
        needed: u64,
        limit: u64,
        hard: u64,
        fits: usize,
    },
    /// The OS refuses a thread (resource limits).
    #[error("cannot start the accept thread: {0}")]
    Thread(#[from] io::Error),
    /// `--tls-cert`, `--tls-key` or `--tls-client-ca` cannot be loaded.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
}

/// What the handlers share: the settings they need, open connections (so shutdown can wake
/// their handlers), and what the metrics count.
struct Shared {
    /// Any of these may be proved (more than one during a rotation).
    secrets: AcceptedSecrets,
    max_connections: usize,
    max_handshakes: usize,
    /// Connections in their handshake, oldest first; capped apart from the authenticated ones.
    handshaking: Mutex<VecDeque<Handshake>>,
    authenticated: AtomicUsize,
    /// Refusals are logged as a summary at most once per 10 s.
    refusal_log: RateLimited,
    /// Handshakes cut off at `--max-handshakes` likewise, apart.
    cutoff_log: RateLimited,
    /// Failed accepts (out of descriptors, say) likewise.
    accept_log: RateLimited,
    idle_timeout: Duration,
    auth_timeout: Duration,
    /// `--store-timeout`, told to clients in the greeting.
    store_timeout: Duration,
    /// TLS on --listen, if served.
    tls: Option<ServedTls>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
    /// Requests served, by [`op_index`].
    requests: LabeledCounters,
    errors: Counter,
    refused: Counter,
    /// Accepts that failed because the process or system ran out of open files.
    accept_out_of_files: Counter,
    /// What throttle records and their pruning are judged by.
    clock: Clock,
}

/// Requests counted in `accountdb_requests_total{op}`: by [`DbRequest::NAMES`], and
/// `unreadable` for lines that are no request.
fn op_index(request: Option<&DbRequest>) -> usize {
    request.map_or(DbRequest::NAMES.len(), DbRequest::index)
}

impl Shared {
    /// The metrics registry, named as docs/operations.md lists them, with what `store` exports.
    fn registry(self: &Arc<Self>, store: &dyn Store) -> prometheus_client::registry::Registry {
        let mut r = prometheus_client::registry::Registry::with_prefix("accountdb");
        store.register_metrics(&mut r);
        r.register("requests", "Requests served, by op", self.requests.clone());
        r.register(
            "errors",
            "Requests answered with an error",
            self.errors.clone(),
        );
        r.register(
            "refused",
            "Connections refused, each once: bad secret, too many, TLS required or failed, handshake not done",
            self.refused.clone(),
        );
        let cap = i64::try_from(self.max_connections).unwrap_or(i64::MAX);
        r.register(
            "max_connections",
            "Authenticated connections served at once: --max-connections, or fewer where the open-files limit cannot hold them",
            LiveGauge::new(move || cap),
        );
        r.register(
            "accept_out_of_files",
            "Accepts that failed because the process or the system ran out of open files",
            self.accept_out_of_files.clone(),
        );
        let shared = self.clone();
        let open =
            LiveGauge::new(move || i64::try_from(shared.open.lock().len()).unwrap_or(i64::MAX));
        r.register("open_connections", "Open connections", open);
        let shared = self.clone();
        let proofs = LiveFamily::counters("secret", move || shared.secrets.proofs());
        r.register(
            "auth",
            "Handshakes that proved a secret, by the secret's fingerprint",
            proofs,
        );
        let shared = self.clone();
        let by_secret = LiveFamily::gauges("secret", move || shared.connections_by_secret());
        r.register(
            "connections",
            "Authenticated connections open, by the fingerprint of the secret they proved",
            by_secret,
        );
        if self.tls.is_some() {
            let shared = self.clone();
            let expiry = LiveGauge::new(move || {
                let tls = shared.tls.as_ref();
                tls.and_then(|tls| tls.material.expiry()).unwrap_or(0)
            });
            r.register(
                "tls_cert_expiry_seconds",
                "When the first certificate of --tls-cert and --tls-client-ca expires, in seconds since the epoch",
                expiry,
            );
        }
        crate::metrics::register_process(&mut r);
        r
    }
}

/// An open connection, as shutdown and a secret's retirement find it.
struct Open {
    /// A handle on the handler's socket, to shut it down from outside.
    stream: TcpStream,
    /// The fingerprint of the secret it proved; `None` during its handshake.
    secret: Option<String>,
}

impl Shared {
    /// Authenticated connections open, by the fingerprint of the secret they proved; every
    /// secret accepted now is listed, at 0 if it has none.
    fn connections_by_secret(&self) -> Vec<(String, i64)> {
        let mut counts: Vec<(String, i64)> = self
            .secrets
            .fingerprints()
            .into_iter()
            .map(|f| (f, 0))
            .collect();
        for open in self.open.lock().values() {
            let Some(secret) = &open.secret else { continue };
            match counts.iter_mut().find(|(f, _)| f == secret) {
                Some((_, n)) => *n += 1,
                None => counts.push((secret.clone(), 1)),
            }
        }
        counts
    }

    /// Read the secret files again, and close the connections that proved a secret no longer
    /// accepted.
    fn reload_secrets(&self, log: &RateLimited) {
        let dropped = self.secrets.reload(log);
        if dropped.is_empty() {
            return;
        }
        let mut closed = 0;
        for open in self.open.lock().values() {
            if open.secret.as_ref().is_some_and(|s| dropped.contains(s)) {
                let _ = open.stream.shutdown(Shutdown::Both);
                closed += 1;
            }
        }
        tracing::info!(
            closed,
            "closed the connections made with a secret no longer accepted"
        );
    }
}

/// A connection in its handshake, until dropped, however the handler ends.
struct Handshaking<'a>(&'a Shared, u64);

/// A connection in its handshake.
struct Handshake {
    /// Its id in `open`.
    id: u64,
    /// When it was accepted.
    began: Instant,
    /// The peer's address, if the OS told it.
    from: Option<IpAddr>,
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.handshaking.lock().retain(|h| h.id != self.1);
    }
}

/// Holds one count of authenticated connections until dropped, however the handler ends.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Count connection `id`, from `from`, as in its handshake. Past `max_handshakes`, one is
    /// cut off instead: the oldest of the address that holds the most (it has had the longest
    /// to finish, and a login-server's handshake takes a round trip or two), so that peers that
    /// never authenticate, from however few addresses, cannot cut off a login-server's.
    fn begin_handshake(&self, id: u64, from: Option<IpAddr>, peer: &str) {
        let cut = {
            let mut handshaking = self.handshaking.lock();
            handshaking.push_back(Handshake {
                id,
                began: Instant::now(),
                from,
            });
            (handshaking.len() > self.max_handshakes)
                .then(|| {
                    let at = busiest_oldest(&handshaking);
                    handshaking.remove(at)
                })
                .flatten()
        };
        if let Some(Handshake { id: oldest, .. }) = cut {
            if let Some(open) = self.open.lock().get(&oldest) {
                let _ = open.stream.shutdown(Shutdown::Both);
            }
            // Counted once, by its handler, which sees its connection end.
            if let Some(n) = self.cutoff_log.hit() {
                tracing::warn!(
                    last_peer = %peer,
                    refused = n,
                    "account-db cut off handshakes: at --max-handshakes"
                );
            }
        }
    }

    /// Cut off every handshake begun more than `--auth-timeout` ago. Each read of a handshake
    /// waits at most what is left of its deadline, but a TLS record trickled in a byte at a
    /// time is read whole by rustls, one wait per byte: this catches those, within a second
    /// of the deadline. Returns how many were cut off.
    fn cut_late_handshakes(&self) -> usize {
        let late: Vec<u64> = self
            .handshaking
            .lock()
            .iter()
            .take_while(|h| h.began.elapsed() > self.auth_timeout)
            .map(|h| h.id)
            .collect();
        let open = self.open.lock();
        for id in &late {
            if let Some(open) = open.get(id) {
                let _ = open.stream.shutdown(Shutdown::Both);
            }
        }
        late.len()
    }

    /// Refuse a connection: answer why, count it, and log it (rate-limited).
    fn refuse(&self, stream: &mut Stream, peer: &str, why: &str) {
        self.refused(peer, why);
        let refusal = DbResponse::Error {
            message: why.into(),
        };
        let _ = stream.write_all(&encode_line(&refusal));
        let _ = stream.flush();
    }

    /// Count a refused connection and log it (rate-limited: one line per 10 s, with how many
    /// and the last peer and reason).
    fn refused(&self, peer: &str, why: &str) {
        self.refused.inc();
        if let Some(n) = self.refusal_log.hit() {
            tracing::warn!(last_peer = %peer, last_reason = why, refused = n, "account-db refused connections");
        }
    }
}

/// Where in `handshaking` (oldest first) the handshake to cut off is: the oldest of the address
/// with the most handshakes in progress (the oldest of all when they tie).
fn busiest_oldest(handshaking: &VecDeque<Handshake>) -> usize {
    let mut counts: HashMap<Option<IpAddr>, usize> = HashMap::new();
    for h in handshaking {
        *counts.entry(h.from).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    handshaking
        .iter()
        .position(|h| counts.get(&h.from) == Some(&most))
        .unwrap_or(0)
}

/// Removes a connection from the registry when its handler ends, however it ends.
struct Registered<'a> {
    registry: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.open.lock().remove(&self.id);
    }
}

/// account-db's TLS on --listen.
struct ServedTls {
    /// The certificate, key and client CA in force.
    material: Material<ServerFiles>,
    /// Plaintext peers are served too (`--tls-optional`, for a rollout).
    optional: bool,
}

/// The TLS `config` asks for, loaded (before anything is written to disk); a warning when
/// plaintext is accepted too.
fn served_tls(config: &AccountDbConfig) -> Result<Option<ServedTls>, TlsError> {
    let Some(files) = config.tls_files() else {
        return Ok(None);
    };
    let tls = ServedTls {
        material: Material::load(files)?,
        optional: config.tls_optional,
    };
    if tls.optional {
        tracing::warn!(
            "--tls-optional: plaintext login-servers are served too, and their link can be read \
             and rewritten; drop it once every login-server has --db-tls-ca"
        );
    }
    Ok(Some(tls))
}

/// account-db's sockets, bound before anything is written to disk.
struct Listeners {
    /// `--listen`, for login-servers: listening from the start, so no other process can take
    /// the port; served once the store is open ([`Refuser`] until then).
    listener: TcpListener,
    /// `--metrics-listen`, if given.
    metrics: Option<TcpListener>,
    /// Its TLS material (`--metrics-tls-cert`), if served over TLS.
    metrics_tls: Option<Arc<Material<ServerFiles>>>,
}

impl Listeners {
    fn bind(config: &AccountDbConfig) -> Result<Listeners, AccountDbStartError> {
        let addr = config.listen;
        // Port 0 twice is two ports the system picks.
        if addr.port() != 0 && config.metrics_listen == Some(addr) {
            let source = io::Error::new(
                io::ErrorKind::AddrInUse,
                "--metrics-listen is the same address",
            );
            return Err(AccountDbStartError::Listen { addr, source });
        }
        let listener = TcpListener::bind(addr)
            .map_err(|source| AccountDbStartError::Listen { addr, source })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .map_err(|source| AccountDbStartError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let metrics_tls = crate::tls::served(
            config.metrics_tls_cert.as_deref(),
            config.metrics_tls_key.as_deref(),
        )?;
        Ok(Listeners {
            listener,
            metrics,
            metrics_tls,
        })
    }
}

/// Connections to `--listen` while the store is not up yet: accepted and closed at once, so
/// login-servers see this account-db down without waiting for a greeting (and use the
/// others), while the port stays this process's.
struct Refuser {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl Refuser {
    fn start(listener: &TcpListener) -> io::Result<Refuser> {
        let (clone, addr) = (listener.try_clone()?, listener.local_addr()?);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("account-db-refuse".into())
            .spawn(move || {
                for stream in clone.incoming() {
                    drop(stream);
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                }
            })?;
        Ok(Refuser { stop, addr, thread })
    }

    /// Stop refusing: the listener is the accept loop's from now on.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        wake_accept(self.addr);
        let _ = self.thread.join();
    }
}

/// Wake a thread blocked in `accept()` on `addr`, by connecting to it, so that it sees its stop
/// flag; if this fails the listener is already gone.
fn wake_accept(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
}

/// The longest pause between two attempts to open a store that is not up yet.
const MAX_START_PAUSE: Duration = Duration::from_secs(2);

/// Open the store, retrying (100 ms, doubling to [`MAX_START_PAUSE`]) while it fails in a way
/// that may pass ([`StoreError::is_transient`]), for up to `--store-start-timeout` (0: for
/// ever), or until `stop`.
fn open_store(
    config: &AccountDbConfig,
    stop: &dyn Fn() -> bool,
) -> Result<Arc<dyn Store>, AccountDbStartError> {
    let url = config.store_url();
    let started = Instant::now();
    let limit = config.store_start_timeout;
    let log = RateLimited::new(Duration::from_secs(10));
    let mut pause = Duration::from_millis(100);
    loop {
        let open = url.open(
            config.store_pool,
            config.store_timeout,
            !config.skip_integrity_check,
            config.store_password_file.as_deref(),
        );
        let error = match open {
            Ok(store) => return Ok(store),
            Err(e) if !e.is_transient() => {
                return Err(AccountDbStartError::Store {
                    store: url.to_string(),
                    source: e,
                })
            }
            Err(e) => e,
        };
        let left = match limit.is_zero() {
            true => pause,
            false => limit.saturating_sub(started.elapsed()),
        };
        if stop() {
            return Err(AccountDbStartError::Stopped);
        }
        if left.is_zero() {
            return Err(AccountDbStartError::StoreWait {
                store: url.to_string(),
                waited: started.elapsed(),
                source: error,
            });
        }
        if let Some(attempts) = log.hit() {
            tracing::warn!(store = %url, attempts, error = %error, "waiting for the account store to come up");
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_START_PAUSE);
    }
}

/// A running account-db server.
pub struct AccountDb {
    local_addr: SocketAddr,
    metrics_endpoint: Option<HttpEndpoint>,
    /// The metrics endpoint's TLS material, reloaded with the rest.
    metrics_tls: Option<Arc<Material<ServerFiles>>>,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    /// Dropped to stop the pruner.
    pruner: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
}

impl AccountDb {
    /// Open the store `--store` names (or the SQLite one in `--data`) and serve it as
    /// `config` says. The addresses are bound first: one that cannot be creates nothing.
    pub fn open(config: AccountDbConfig) -> Result<AccountDb, AccountDbStartError> {
        AccountDb::open_until(config, &|| false)
    }

    /// [`AccountDb::open`], waiting up to `--store-start-timeout` for a PostgreSQL that is not
    /// up yet, unless `stop` says to give up. Meanwhile a connection to `--listen` is closed
    /// at once (login-servers see it down and use the others), and `--metrics-listen` answers
    /// `/readyz` with 503.
    pub fn open_until(
        config: AccountDbConfig,
        stop: &dyn Fn() -> bool,
    ) -> Result<AccountDb, AccountDbStartError> {
        let listeners = Listeners::bind(&config)?;
        let tls = served_tls(&config)?;
        let waiting = match &listeners.metrics {
            Some(http) => Some(HttpEndpoint::serve(
                http.try_clone()?,
                Routes::waiting(),
                listeners.metrics_tls.clone(),
            )?),
            None => None,
        };
        let refuser = Refuser::start(&listeners.listener)?;
        let store = open_store(&config, stop);
        refuser.stop();
        drop(waiting);
        AccountDb::serve(config, listeners, store?, tls)
    }

    /// Bind `config.listen` and start serving `store`.
    pub fn spawn(
        config: AccountDbConfig,
        store: Arc<dyn Store>,
    ) -> Result<AccountDb, AccountDbStartError> {
        let listeners = Listeners::bind(&config)?;
        let tls = served_tls(&config)?;
        AccountDb::serve(config, listeners, store, tls)
    }

    fn serve(
        config: AccountDbConfig,
        listeners: Listeners,
        store: Arc<dyn Store>,
        tls: Option<ServedTls>,
    ) -> Result<AccountDb, AccountDbStartError> {
        let secrets = AcceptedSecrets::resolve(&config, || store.count().map_or(true, |n| n > 0))?;
        let Listeners {
            listener,
            metrics,
            metrics_tls,
        } = listeners;
        let local_addr = listener.local_addr()?;
        let max_connections = fit_connections(&config)?;
        let shared = Arc::new(Shared {
            secrets,
            max_connections,
            max_handshakes: config.max_handshakes,
            handshaking: Mutex::new(VecDeque::new()),
            authenticated: AtomicUsize::new(0),
            refusal_log: RateLimited::new(Duration::from_secs(10)),
            cutoff_log: RateLimited::new(Duration::from_secs(10)),
            accept_log: RateLimited::new(Duration::from_secs(10)),
            idle_timeout: config.idle_timeout,
            auth_timeout: config.auth_timeout,
            store_timeout: config.store_timeout,
            tls,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            requests: LabeledCounters::new(
                DbRequest::NAMES
                    .iter()
                    .chain(&["unreadable"])
                    .map(|&op| vec![("op", op)]),
            ),
            errors: Counter::default(),
            refused: Counter::default(),
            accept_out_of_files: Counter::default(),
            clock: config.clock.clone(),
        });
        let metrics_endpoint = match metrics {
            Some(listener) => {
                let (ready, alive) = (store.clone(), shared.clone());
                let routes = Routes {
                    registry: shared.registry(store.as_ref()),
                    alive: Box::new(move || !alive.stopping.load(Ordering::SeqCst)),
                    ready: Box::new(move || ready.ping().map_err(|e| e.to_string())),
                    keys: None,
                };
                Some(HttpEndpoint::serve(listener, routes, metrics_tls.clone())?)
            }
            None => None,
        };
        let (stop_pruner, stopped) = crossbeam_channel::bounded(0);
        let pruner = std::thread::Builder::new()
            .name("account-db-prune".into())
            .spawn({
                let (store, cap) = (store.clone(), config.throttle_table_size);
                let shared = shared.clone();
                let instance = schema::instance_name(local_addr.port());
                let idle = config.guest_idle_days;
                move || every_second(&*store, cap, idle, &instance, &shared, &stopped)
            })?;
        let accept_thread = std::thread::Builder::new()
            .name("account-db-accept".into())
            .spawn({
                let shared = shared.clone();
                move || accept_loop(listener, store, &shared)
            })?;
        Ok(AccountDb {
            local_addr,
            metrics_endpoint,
            metrics_tls,
            shared,
            accept_thread: Some(accept_thread),
            pruner: Some((stop_pruner, pruner)),
        })
    }

    /// The address it listens on (useful after binding port 0).
    /// Read the TLS files again (SIGHUP), of --listen and of the metrics endpoint: new
    /// connections get the new material, connections made already keep theirs. A file that fails to load keeps the material in force, and
    /// the log says why. Returns whether new material is in force.
    pub fn reload(&self) -> bool {
        let listen = self.shared.tls.as_ref().map(|tls| &tls.material);
        crate::tls::reload_all(&[
            ("--tls-cert", listen.map(|m| m as &dyn Reloadable)),
            (
                "--metrics-tls-cert",
                self.metrics_tls.as_deref().map(|m| m as &dyn Reloadable),
            ),
        ])
    }

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
        if let Some((stop, pruner)) = self.pruner.take() {
            drop(stop);
            let _ = pruner.join();
        }
        let Some(thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.metrics_endpoint.take();
        wake_accept(self.local_addr);
        let _ = thread.join();
    }
}

impl Drop for AccountDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often `--guest-idle-days` deletes idle guests: an hour.
const GUEST_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Once a second until `stop` is dropped: drop expired throttle records (and the lowest ranked
/// beyond `cap`) and revocations of sessions that expired, and read the secret files again;
/// at once and every [`PEER_INTERVAL`](schema::PEER_INTERVAL), record this account-db as
/// `instance` in the store's peers; with `guest_idle_days`, at once and every
/// [`GUEST_PRUNE_INTERVAL`], delete the guests idle that long.
fn every_second(
    store: &dyn Store,
    cap: u64,
    guest_idle_days: u32,
    instance: &str,
    shared: &Shared,
    stop: &crossbeam_channel::Receiver<()>,
) {
    let log = RateLimited::new(Duration::from_secs(60));
    let secrets_log = RateLimited::new(Duration::from_secs(60));
    let peer_log = RateLimited::new(Duration::from_secs(60));
    let mut recorded: Option<Instant> = None;
    let mut guests_pruned: Option<Instant> = None;
    loop {
        let due = guests_pruned.map_or(true, |at| at.elapsed() >= GUEST_PRUNE_INTERVAL);
        if guest_idle_days > 0 && due {
            guests_pruned = Some(Instant::now());
            let idle_ms = i64::from(guest_idle_days) * 86_400_000;
            match store.prune_guests(shared.clock.now_ms().saturating_sub(idle_ms), false) {
                Ok(0) => {}
                Ok(guests) => tracing::info!(guests, guest_idle_days, "idle guests deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete idle guests"),
            }
        }
        if recorded.map_or(true, |at| at.elapsed() >= schema::PEER_INTERVAL) {
            recorded = Some(Instant::now());
            if let Err(e) = store.record_peer(instance, crate::clock::now_ms()) {
                if let Some(times) = peer_log.hit() {
                    tracing::warn!(error = %e, times, "cannot record this account-db in peers");
                }
            }
        }
        if !matches!(
            stop.recv_timeout(Duration::from_secs(1)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        ) {
            break;
        }
        shared.reload_secrets(&secrets_log);
        let late = shared.cut_late_handshakes();
        if late > 0 {
            tracing::debug!(late, "handshakes past --auth-timeout cut off");
        }
        let now = shared.clock.now_ms();
        // Each on its own: one failing does not stop the other.
        for pruned in [store.prune_records(now, cap), store.prune_revoked(now)] {
            match pruned {
                Ok(0) => {}
                Ok(dropped) => tracing::debug!(dropped, "expired records pruned"),
                Err(e) => {
                    if let Some(times) = log.hit() {
                        tracing::warn!(error = %e, times, "cannot prune expired records");
                    }
                }
            }
        }
    }
}

/// `--max-connections`, or fewer where the open-files limit (raised as far as needed, never
/// past the hard limit) cannot hold them: each connection holds two descriptors (its socket
/// and the clone kept to close it at shutdown), and so does each of `--max-handshakes`; the
/// store's (`--store-pool`, or SQLite's files), the listeners, the metrics endpoint's 16
/// connections and stdio are counted beside them, with the reserve. A lowered cap is said once
/// at start, with the numbers.
fn fit_connections(config: &AccountDbConfig) -> Result<usize, AccountDbStartError> {
    let per_connection = 2;
    let wanted = config.max_connections + config.max_handshakes;
    let store = u64::from(config.store_pool).max(8);
    let needed = 3 + 2 + 17 + store;
    let fit = crate::limits::fit(wanted * per_connection, needed)?;
    let effective = (fit.effective / per_connection)
        .saturating_sub(config.max_handshakes)
        .max(1)
        .min(config.max_connections);
    if effective < config.max_connections {
        if config.strict_limits {
            return Err(AccountDbStartError::Descriptors {
                wanted: config.max_connections,
                needed: fit.fixed + fit.wanted as u64,
                limit: fit.limit,
                hard: fit.hard,
                fits: effective,
            });
        }
        tracing::warn!(
            wanted = config.max_connections,
            effective,
            limit = fit.limit,
            hard = fit.hard,
            "the open-files limit cannot hold --max-connections and --max-handshakes: \
             connections capped at the effective number (raise LimitNOFILE or ulimit -n; \
             --strict-limits refuses instead)"
        );
    }
    Ok(effective)
}

fn accept_loop(listener: TcpListener, store: Arc<dyn Store>, shared: &Arc<Shared>) {
    let threads = shared.max_connections + shared.max_handshakes;
    let pool = ThreadPool::with_name("account-db-conn".into(), threads.max(1));
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say so once per 10 s.
                if crate::limits::out_of_descriptors(&e) {
                    shared.accept_out_of_files.inc();
                }
                if let Some(times) = shared.accept_log.hit() {
                    tracing::warn!(error = %e, times, "account-db accept failed");
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => {
                let open = Open {
                    stream: clone,
                    secret: None,
                };
                shared.open.lock().insert(id, open)
            }
            Err(e) => {
                tracing::warn!(error = %e, "account-db could not track a connection");
                continue;
            }
        };
        let from = stream.peer_addr().ok().map(|a| a.ip());
        shared.begin_handshake(id, from, &peer);
        let (store, shared) = (store.clone(), shared.clone());
        pool.execute(move || {
            let _registered = Registered {
                registry: &shared,
                id,
            };
            if let Err(e) = serve(stream, id, &*store, &shared) {
                tracing::debug!(%peer, error = %e, "account-db connection ended");
            }
        });
    }
    // Wake every idle handler: its next read sees end of stream.
    for open in shared.open.lock().values() {
        let _ = open.stream.shutdown(Shutdown::Read);
    }
    pool.join();
}

/// Serve one connection until the peer closes it, it idles out, or IO fails.
fn serve(tcp: TcpStream, id: u64, store: &dyn Store, shared: &Shared) -> io::Result<()> {
    // Counted by the accept loop before this handler started; given back however it ends.
    let handshaking = Handshaking(shared, id);
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    tcp.set_nodelay(true)?;
    // The whole handshake, TLS's included, has one deadline, however the bytes trickle in.
    let deadline = Instant::now() + shared.auth_timeout;
    let Some(mut stream) = secure(tcp, &peer, deadline, shared)? else {
        return Ok(());
    };
    stream
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(10)))?;
    let nonce = secret::random_token();
    let greeting = Greeting::current(nonce.clone(), shared.store_timeout);
    stream.write_all(&encode_line(&greeting))?;
    let binding = stream.binding();
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    let (proof, version) = match read_line_by(&mut reader, &mut line, deadline) {
        Ok(true) => match decode_line::<DbRequest>(&line) {
            // A client from before negotiation names no version: it speaks 3.
            Ok(DbRequest::Auth { proof, version }) => (proof, version.unwrap_or(VERSION)),
            _ => (String::new(), VERSION),
        },
        // Silent, too slow, or gone: refused like a wrong proof.
        Ok(false) | Err(_) => (String::new(), VERSION),
    };
    drop(handshaking);
    shared.requests.inc(0);
    let binding = binding.as_ref().map(|b| &b[..]);
    let Some(Proved { fingerprint, .. }) = shared.secrets.verify(&nonce, binding, &proof) else {
        shared.refuse(reader.get_mut(), &peer, "authentication failed");
        return Ok(());
    };
    if !VERSIONS.contains(&version) {
        let why = format!(
            "version {version} asked for, this account-db speaks versions {}",
            range(&VERSIONS)
        );
        shared.refuse(reader.get_mut(), &peer, &why);
        return Ok(());
    }
    if shared.authenticated.fetch_add(1, Ordering::SeqCst) >= shared.max_connections {
        shared.authenticated.fetch_sub(1, Ordering::SeqCst);
        shared.refuse(reader.get_mut(), &peer, "too many connections");
        return Ok(());
    }
    let _authenticated = Held(&shared.authenticated);
    if let Some(open) = shared.open.lock().get_mut(&id) {
        open.secret = Some(fingerprint.clone());
    }
    // A reload between the proof and the line above would have missed this connection.
    if !shared.secrets.fingerprints().contains(&fingerprint) {
        shared.refuse(reader.get_mut(), &peer, "authentication failed");
        return Ok(());
    }
    reader.get_mut().write_all(&encode_line(&DbResponse::Ok))?;
    reader
        .get_ref()
        .tcp()
        .set_read_timeout(Some(shared.idle_timeout))?;
    // Replies not sent yet.
    let mut out = Vec::with_capacity(4096);
    // A request read ahead while gathering a run of logins.
    let mut next = None;
    loop {
        // The replies to lines that came together go out together: one write once no whole
        // line is left to read without waiting (or once they fill a buffer).
        let ready = |reader: &BufReader<Stream>| reader.buffer().contains(&b'\n');
        if (next.is_none() && !ready(&reader)) || out.len() >= SEND_AT {
            send(&mut reader, &mut out)?;
        }
        let request = match next.take() {
            Some(request) => request,
            None => match read_request(&mut reader, &mut line)? {
                None => return Ok(()),
                Some(request) => request,
            },
        };
        shared.requests.inc(op_index(request.as_ref().ok()));
        // Logins (and device logins) that came together are looked up in one read of the
        // store (one statement on PostgreSQL). A line already buffered is whole and short:
        // reading it cannot block, nor be overlong.
        let kind = request.as_ref().ok().and_then(Run::of);
        if let Some(kind) = kind {
            let mut run = vec![request];
            while run.len() < MAX_RUN && ready(&reader) {
                match read_request(&mut reader, &mut line)? {
                    Some(Ok(more)) if Run::of(&more) == Some(kind) => {
                        shared.requests.inc(op_index(Some(&more)));
                        run.push(Ok(more));
                    }
                    other => {
                        next = other;
                        break;
                    }
                }
            }
            for response in execute_run(store, kind, run, shared.clock.now_ms()) {
                write_response(&mut out, &response, shared)?;
            }
            continue;
        }
        let response = match request {
            Ok(request) => answered(execute::execute(store, &request, shared.clock.now_ms())),
            Err(message) => DbResponse::Error { message },
        };
        write_response(&mut out, &response, shared)?;
        if line.len() >= MAX_LINE {
            return Ok(()); // an overlong line cannot be resynchronised
        }
    }
}

/// Most logins (or device logins) looked up in one read.
const MAX_RUN: usize = 64;

/// The requests that are read for many in one go when they come together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Logins,
    Devices,
}

impl Run {
    /// The run `request` may join, if any.
    fn of(request: &DbRequest) -> Option<Run> {
        match request {
            DbRequest::Login { .. } => Some(Run::Logins),
            DbRequest::Device { .. } => Some(Run::Devices),
            _ => None,
        }
    }
}

/// Replies held back to go out together are sent once they reach this many bytes.
const SEND_AT: usize = 8192;

/// Send the replies in `out` in one write (over TLS, as few records), and empty it.
fn send(reader: &mut BufReader<Stream>, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        let stream = reader.get_mut();
        stream.write_all(out)?;
        stream.flush()?;
        out.clear();
    }
    Ok(())
}

/// How long a TLS-only account-db waits for a client's first byte (a TLS client sends its
/// ClientHello as soon as it connects) before it answers "TLS required" in plaintext: long
/// enough for a ClientHello whose first segment was lost and sent again, short enough that a
/// plaintext login-server (which waits for the greeting) hears why at once.
pub const TLS_SNIFF: Duration = Duration::from_secs(1);

/// The same wait under `--tls-optional`, after which the peer is greeted in plaintext: every
/// plaintext connection waits this long, so it is short.
pub const TLS_SNIFF_OPTIONAL: Duration = Duration::from_millis(250);

/// The connection as it will be spoken: TLS when account-db serves it (the handshake done
/// within `deadline`), plaintext otherwise. `None` when it was refused (counted, logged, and a
/// plaintext peer told why): a plaintext peer where TLS is required, a failed TLS handshake, or
/// a peer that closed.
fn secure(
    tcp: TcpStream,
    peer: &str,
    deadline: Instant,
    shared: &Shared,
) -> io::Result<Option<Stream>> {
    let Some(tls) = &shared.tls else {
        return Ok(Some(Stream::Plain(tcp)));
    };
    let wait = if tls.optional {
        TLS_SNIFF_OPTIONAL
    } else {
        TLS_SNIFF
    };
    let sniff = (Instant::now() + wait).min(deadline);
    tcp.set_read_timeout(Some(
        sniff
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let mut first = [0u8; 1];
    let speaks_tls = match tcp.peek(&mut first) {
        Ok(0) => {
            shared.refused(
                peer,
                "closed before it spoke (or cut off at --max-handshakes)",
            );
            return Ok(None);
        }
        Ok(_) => first[0] == crate::tls::TLS_HANDSHAKE,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => return Err(e),
    };
    if !speaks_tls {
        if tls.optional {
            return Ok(Some(Stream::Plain(tcp)));
        }
        shared.refuse(
            &mut Stream::Plain(tcp),
            peer,
            "TLS required: this account-db accepts TLS only (login-server --db-tls-ca)",
        );
        return Ok(None);
    }
    let mut conn = match rustls::ServerConnection::new(tls.material.current()) {
        Ok(conn) => conn,
        Err(e) => return Err(io::Error::other(e)),
    };
    let mut tcp = tcp;
    match crate::tls::handshake(&mut conn, &mut tcp, deadline) {
        Ok(()) => Ok(Some(Stream::Server(Box::new(rustls::StreamOwned::new(
            conn, tcp,
        ))))),
        Err(e) => {
            let why = match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    "TLS handshake not done within --auth-timeout".to_string()
                }
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::NotConnected
                | io::ErrorKind::BrokenPipe => {
                    "closed during the TLS handshake (or cut off at --max-handshakes)".to_string()
                }
                _ => format!("TLS: {e}"),
            };
            shared.refused(peer, &why);
            Ok(None)
        }
    }
}

fn write_response(
    writer: &mut impl Write,
    response: &DbResponse,
    shared: &Shared,
) -> io::Result<()> {
    if matches!(response, DbResponse::Error { .. }) {
        shared.errors.inc();
    }
    writer.write_all(&encode_line(response))
}

/// Run a run of requests of one `kind` (nothing else) with one read of the store.
fn execute_run(
    store: &dyn Store,
    kind: Run,
    run: Vec<Result<DbRequest, String>>,
    now: Millis,
) -> Vec<DbResponse> {
    let requests: Vec<DbRequest> = run.into_iter().flatten().collect();
    let results = match kind {
        Run::Logins => execute::execute_logins(store, &requests, now),
        Run::Devices => execute::execute_devices(store, &requests, now),
    };
    match results {
        Ok(results) => results.into_iter().map(answered).collect(),
        Err(e) => {
            let failed = answered(Err(e));
            vec![failed; requests.len()]
        }
    }
}

/// Read one line (at most [`MAX_LINE`] bytes) into `line` by `deadline`. `Ok(false)` if the
/// peer closed first or the line is too long; `Err` (timed out) if the deadline passes.
fn read_line_by(
    reader: &mut BufReader<Stream>,
    line: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<bool> {
    line.clear();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        reader.get_ref().tcp().set_read_timeout(Some(left))?;
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(false);
        }
        let (taken, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if done {
            return Ok(true);
        }
        if line.len() >= MAX_LINE {
            return Ok(false);
        }
    }
}

/// Read one request line. `None` at end of stream (or a line cut off by it); `Err` with what to
/// answer when the line is not a request.
fn read_request(
    reader: &mut BufReader<Stream>,
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

/// Requests the store failed are logged as one line per 10 s, with how many and the last
/// error: an outage fails every request.
static REQUEST_FAILURES: RateLimited = RateLimited::new(Duration::from_secs(10));

/// What to send for a request's outcome: the response, or the store's failure as an error
/// response (logged, at most one line per 10 s).
fn answered(result: Result<DbResponse, StoreError>) -> DbResponse {
    result.unwrap_or_else(|e| {
        if let Some(failures) = REQUEST_FAILURES.hit() {
            tracing::error!(failures, last_error = %e, "account store requests failed");
        }
        DbResponse::Error {
            message: e.to_string(),
        }
    })
}
