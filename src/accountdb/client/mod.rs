//! The account-db client: [`RemoteStore`], the [`Accounts`] that login-server uses, over one
//! or more account-dbs, pooled or (as the seed did) one connection per request. Its parts:
//! [`connection`], one persistent connection ([`DbConn`]) and how a call fails ([`DbError`]);
//! [`manager`], the r2d2 `ManageConnection` that makes and checks them.

pub mod connection;
pub mod manager;

pub use connection::{DbConn, DbError};
pub use manager::DbManager;
use manager::LogErrors;

use crate::accountdb::accounts::Accounts;
use crate::accountdb::store::StoreError;
use crate::auth::secret::Secret;
use crate::config::{DbDeadlines, Endpoint, POOL_IDLE};
use crate::logging::RateLimited;
use crate::metrics::Metrics;
use crate::protocol::accountdb::{DbRequest, DbResponse};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How login-server reaches its account-dbs; made by
/// [`LoginServerConfig::db_client`](crate::login::LoginServerConfig::db_client).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// One or more account-dbs serving the same accounts.
    pub addrs: Vec<Endpoint>,
    /// The secret account-db asks every connection to prove.
    pub secret: Secret,
    /// Pooled connections per account-db; 0 opens a new connection for every request, as the
    /// seed did.
    pub pool_size: u32,
    /// Deadline of a whole request, retries on other account-dbs included.
    pub timeout: Duration,
}

impl ClientConfig {
    /// The deadlines its `timeout` makes.
    pub fn deadlines(&self) -> DbDeadlines {
        DbDeadlines::new(self.timeout, self.addrs.len())
    }
}

enum Connections {
    Pooled(r2d2::Pool<DbManager>),
    /// A new connection for every request, made by the instance's manager.
    PerRequest,
}

/// Down instances are probed this often, and marked up once they answer.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// One account-db, its connections, and what login-server knows of its health.
struct Instance {
    addr: Endpoint,
    connections: Connections,
    /// Makes the connections: the pool's, each request's when not pooled, and the probes'.
    manager: DbManager,
    /// Cleared when a request to it fails for want of a connection or an answer; set again
    /// when it answers (a request or a probe).
    up: AtomicBool,
    /// Requests, failures and retries elsewhere, for the metrics.
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
}

/// An account-db as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// As `--db` gives it.
    pub addr: String,
    pub up: bool,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    /// Pooled (open, idle) connections; `None` when not pooled.
    pub pool: Option<(u32, u32)>,
}

impl Instance {
    fn new(addr: Endpoint, config: &ClientConfig) -> Instance {
        let timeout = config.deadlines().attempt;
        let manager = DbManager::new(addr.clone(), timeout, config.secret.clone());
        let connections = match config.pool_size {
            0 => Connections::PerRequest,
            size => Connections::Pooled(
                r2d2::Pool::builder()
                    .max_size(size)
                    .connection_timeout(timeout)
                    // has_broken catches failed connections; a ping per checkout would double
                    // the round trips.
                    .test_on_check_out(false)
                    // No churn while idle: connections are made when needed, kept while used,
                    // and an idle one is retired (before account-db's idle timeout drops it)
                    // without being replaced.
                    .min_idle(Some(0))
                    .max_lifetime(None)
                    .idle_timeout(Some(POOL_IDLE))
                    .error_handler(Box::new(LogErrors(RateLimited::new(Duration::from_secs(
                        10,
                    )))))
                    .build_unchecked(manager.clone()),
            ),
        };
        Instance {
            addr,
            connections,
            manager,
            up: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// One attempt on one connection of this instance.
    fn attempt(&self, request: &DbRequest, metrics: &Metrics) -> Result<DbResponse, Attempt> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut conn = match &self.connections {
            Connections::PerRequest => {
                let conn = r2d2::ManageConnection::connect(&self.manager);
                Lent::Own(conn.map_err(Attempt::NotSent)?)
            }
            Connections::Pooled(pool) => {
                let waiting = Instant::now();
                let conn = pool.get();
                metrics.pool_wait.observe(waiting.elapsed());
                Lent::Pooled(conn.map_err(|e| Attempt::NotSent(e.into()))?)
            }
        };
        conn.call(request).map_err(Attempt::Failed)
    }

    /// Every request down one pooled connection at once: the replies read, and what stopped
    /// the rest; `None` when not pooled.
    fn attempt_all(
        &self,
        requests: &[&DbRequest],
        metrics: &Metrics,
    ) -> Option<(Vec<DbResponse>, Option<DbError>)> {
        let Connections::Pooled(pool) = &self.connections else {
            return None;
        };
        let n = u64::try_from(requests.len()).unwrap_or(u64::MAX);
        self.requests.fetch_add(n, Ordering::Relaxed);
        let waiting = Instant::now();
        let conn = pool.get();
        metrics.pool_wait.observe(waiting.elapsed());
        Some(match conn {
            Ok(mut conn) => conn.call_all(requests),
            Err(e) => (Vec::new(), Some(e.into())),
        })
    }

    /// A request to it failed (`why`): count it, and mark it down until it answers again.
    fn failed(&self, why: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(db = %self.addr, error = %why, "account-db marked down");
        }
    }

    /// Whether it answers a ping on a fresh connection now.
    fn probe(&self) -> bool {
        let manager = &self.manager;
        r2d2::ManageConnection::connect(manager)
            .and_then(|mut conn| r2d2::ManageConnection::is_valid(manager, &mut conn))
            .is_ok()
    }

    fn state(&self) -> InstanceState {
        InstanceState {
            addr: self.addr.to_string(),
            up: self.up.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            pool: match &self.connections {
                Connections::Pooled(pool) => {
                    let state = pool.state();
                    Some((state.connections, state.idle_connections))
                }
                Connections::PerRequest => None,
            },
        }
    }
}

/// The account store as login-server sees it: one or more account-dbs over TCP. Requests go to
/// the instances that are up, in turn; one that fails is marked down, the request is retried on
/// another within its deadline, and a background thread probes it until it answers again.
pub struct RemoteStore {
    shared: Arc<Instances>,
    /// How long a create whose outcome is unknown keeps being repeated to learn it.
    resolve_window: Duration,
    /// The deadline of a whole request.
    timeout: Duration,
    metrics: Metrics,
}

struct Instances {
    list: Vec<Instance>,
    /// Where the next request starts looking, so that load is spread.
    next: AtomicUsize,
}

impl RemoteStore {
    /// A store reaching `config.addrs`. It does not wait for them to be up: until one is,
    /// requests fail with [`StoreError::Unreachable`] and the pools keep trying.
    pub fn new(config: &ClientConfig, metrics: Metrics) -> RemoteStore {
        let list = config
            .addrs
            .iter()
            .map(|addr| Instance::new(addr.clone(), config))
            .collect();
        let shared = Arc::new(Instances {
            list,
            next: AtomicUsize::new(0),
        });
        let weak = Arc::downgrade(&shared);
        let prober = std::thread::Builder::new()
            .name("account-db-probe".into())
            .spawn(move || probe_down_instances(&weak));
        if let Err(e) = prober {
            tracing::error!(error = %e, "cannot start the account-db prober; down instances are retried by requests only");
        }
        RemoteStore {
            shared,
            resolve_window: config.deadlines().resolve_window,
            timeout: config.deadlines().request,
            metrics,
        }
    }

    /// Each account-db's state, in `--db` order.
    pub fn instances(&self) -> Vec<InstanceState> {
        self.shared.list.iter().map(Instance::state).collect()
    }

    /// The instances to try for one request: those up, starting at the next in turn, then
    /// those down (one may have come back since it was marked).
    fn order(&self) -> Vec<&Instance> {
        let list = &self.shared.list;
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let turn = (0..list.len()).map(|i| &list[(start + i) % list.len()]);
        let (up, down): (Vec<&Instance>, Vec<&Instance>) =
            turn.partition(|i| i.up.load(Ordering::Relaxed));
        up.into_iter().chain(down).collect()
    }

    /// One request, retried where that is safe and useful, within the request's deadline
    /// (its window opened at `started`; `last`: it failed already, asked with others: once the
    /// window has closed, it is not tried again). Every request is idempotent (a create by its
    /// request id), so:
    /// - a connection found dead (after account-db restarts, every idle pooled one is) is
    ///   followed by another to the same instance at once;
    /// - an instance that cannot be reached or does not answer in time is marked down, and the
    ///   request goes to the next;
    /// - a request whose outcome must be known (`resolve`: a create) is repeated after any
    ///   failure, timeouts included, for up to the resolve window.
    fn call_since(
        &self,
        request: &DbRequest,
        resolve: bool,
        started: Instant,
        mut last: Option<DbError>,
    ) -> Result<DbResponse, StoreError> {
        let window = if resolve {
            self.resolve_window
        } else {
            self.timeout
        };
        let mut failed_remote = None;
        loop {
            for instance in self.order() {
                let mut dead = match &instance.connections {
                    Connections::Pooled(pool) => pool.max_size() + 1,
                    Connections::PerRequest => 2,
                };
                loop {
                    if started.elapsed() >= window {
                        if let Some(e) = last.take() {
                            return Err(StoreError::Unreachable(e));
                        }
                    }
                    if last.is_some() {
                        instance.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    match instance.attempt(request, &self.metrics) {
                        // Its store failed (PostgreSQL unreachable from it, say): as good as
                        // down for this request; another account-db may reach its store.
                        Ok(DbResponse::Error { message }) => {
                            if self.shared.list.len() == 1 {
                                instance.errors.fetch_add(1, Ordering::Relaxed);
                                return Err(StoreError::Remote(message));
                            }
                            instance.failed(&message);
                            failed_remote = Some(message);
                            break;
                        }
                        Ok(response) => {
                            instance.up.store(true, Ordering::Relaxed);
                            return Ok(response);
                        }
                        Err(Attempt::Failed(e)) if e.is_dead_connection() && dead > 0 => {
                            dead -= 1;
                            tracing::debug!(db = %instance.addr, error = %e, "dead account-db connection; trying another");
                            last = Some(e);
                        }
                        Err(Attempt::NotSent(e) | Attempt::Failed(e)) => {
                            instance.failed(&e);
                            last = Some(e);
                            break;
                        }
                    }
                }
            }
            // Every instance failed once: only a create whose outcome is unknown goes round
            // again, until its window closes.
            if !resolve || started.elapsed() >= window {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(match (last, failed_remote) {
            (Some(e), _) => StoreError::Unreachable(e),
            (None, Some(message)) => StoreError::Remote(message),
            (None, None) => StoreError::Remote("no account-db configured".into()),
        })
    }
}

/// Until the store is dropped: probe every instance marked down, and mark it up once it
/// answers.
fn probe_down_instances(instances: &std::sync::Weak<Instances>) {
    loop {
        std::thread::sleep(PROBE_EVERY);
        let Some(instances) = instances.upgrade() else {
            return;
        };
        for instance in &instances.list {
            if !instance.up.load(Ordering::Relaxed) && instance.probe() {
                instance.up.store(true, Ordering::Relaxed);
                tracing::info!(db = %instance.addr, "account-db answers again: marked up");
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

impl Accounts for RemoteStore {
    /// See `RemoteStore::call_since`: retried where that is safe and useful, within the
    /// request's deadline; a create until its outcome is known.
    fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError> {
        self.call_since(request, request.resolves(), Instant::now(), None)
    }

    /// Pipelined on one pooled connection of the next instance up: one round trip for all.
    /// What that leaves unanswered (no pool, a connection that died or timed out midway, a
    /// store error where another account-db may answer) is asked again one by one, with the
    /// usual retries and failover; the replies already read are kept. The round shares one
    /// deadline: once a question is unreachable (a lone account-db that did not answer in
    /// time, or every account-db failed it), the rest are answered so at once, except the
    /// creates, which are asked again until their outcome is known, as [`Accounts::call`]
    /// does, within one resolve window for the round: however many creates are unknown, the
    /// round ends by then (and one attempt after it).
    fn call_all(&self, requests: &[&DbRequest]) -> Vec<Result<DbResponse, StoreError>> {
        let started = Instant::now();
        let single = self.shared.list.len() == 1;
        let first = self.order().first().copied();
        let (responses, failure) = match first {
            Some(instance) if requests.len() > 1 => {
                match instance.attempt_all(requests, &self.metrics) {
                    Some((responses, None)) => {
                        instance.up.store(true, Ordering::Relaxed);
                        (responses, None)
                    }
                    Some((responses, Some(e))) => {
                        if !e.is_dead_connection() {
                            instance.failed(&e);
                        }
                        (responses, Some(e))
                    }
                    None => (Vec::new(), None),
                }
            }
            _ => (Vec::new(), None),
        };
        // What last failed a create of this round (or the round itself).
        let mut create_failed = failure.as_ref().map(DbError::again);
        let mut unreachable = failure.filter(|e| single && !e.is_dead_connection());
        let mut responses = responses.into_iter();
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let answer = match (responses.next(), &unreachable) {
                // As `call` answers it: with one account-db, its store's error is the answer.
                (Some(DbResponse::Error { message }), _) if single => {
                    if let Some(instance) = first {
                        instance.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(StoreError::Remote(message))
                }
                // A create not answered, or failed by this account-db (another may answer).
                (Some(DbResponse::Error { .. }) | None, _) if request.resolves() => {
                    let last = create_failed.as_ref().map(DbError::again);
                    let answer = self.call_since(request, true, started, last);
                    if let Err(StoreError::Unreachable(e)) = &answer {
                        create_failed = Some(e.again());
                    }
                    answer
                }
                (Some(DbResponse::Error { .. }), _) => self.call(request),
                (Some(response), _) => Ok(response),
                (None, Some(e)) => Err(StoreError::Unreachable(e.again())),
                (None, None) => self.call(request),
            };
            if let Err(StoreError::Unreachable(e)) = &answer {
                unreachable = Some(e.again());
            }
            answers.push(answer);
        }
        answers
    }
}
