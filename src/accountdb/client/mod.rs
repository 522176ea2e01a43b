//! The account-db client: [`RemoteStore`], the [`Accounts`] that login-server uses, over one
//! or more account-dbs, pooled or (as the seed did) one connection per request. Its parts:
//! [`connection`], one persistent connection ([`DbConn`]) and how a call fails ([`DbError`]);
//! [`manager`], the r2d2 `ManageConnection` that makes and checks them; `failover`, which
//! account-db a request goes to and what is done when it fails.

pub mod connection;
mod failover;
pub mod manager;

pub use connection::{DbConn, DbError, DbTls};
pub use manager::DbManager;
use manager::LogErrors;

use crate::accountdb::accounts::Accounts;
use crate::accountdb::store::StoreError;
use crate::auth::secret::Secret;
use crate::config::{DbDeadlines, Endpoint, POOL_IDLE};
use crate::logging::RateLimited;
use crate::metrics::Metrics;
use crate::protocol::accountdb::{DbRequest, DbResponse};
use crate::tls::{ClientFiles, Material};
use failover::{Attempt, Failover, Health, Target};
use rustls::pki_types::ServerName;
use std::sync::atomic::Ordering;
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
    /// How long a pooled connection lives at most (jittered, see [`jittered`]); zero: for ever.
    pub max_lifetime: Duration,
    /// TLS to every account-db; `None`: plaintext.
    pub tls: Option<DbTrust>,
}

/// `lifetime` made 90% to 110% as long, at random, so that pools made together do not
/// reconnect together; `None` (for ever) for zero.
pub fn jittered(lifetime: Duration) -> Option<Duration> {
    use ring::rand::SecureRandom;
    if lifetime.is_zero() {
        return None;
    }
    let mut bytes = [0u8; 2];
    // No randomness to be had: no jitter, the lifetime as given.
    let spread = match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX),
        Err(_) => 0.5,
    };
    Some(
        lifetime
            .mul_f64(0.9 + 0.2 * spread)
            .max(Duration::from_millis(1)),
    )
}

/// How login-server checks the account-dbs it reaches over TLS.
#[derive(Clone)]
pub struct DbTrust {
    /// The CA, and the client certificate, in force (`--db-tls-*`, re-read on SIGHUP).
    pub material: Arc<Material<ClientFiles>>,
    /// The name every account-db's certificate must hold (`--db-tls-name`); `None`: the host
    /// of its `--db` address.
    pub name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for DbTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTrust").field("name", &self.name).finish()
    }
}

impl DbTrust {
    /// What a connection to `addr` checks: this material, and the name (`--db-tls-name`, or
    /// the host of `addr`; a host that is no DNS name, which resolving it at start makes
    /// unlikely, is checked as the IP address it resolves to).
    fn for_endpoint(&self, addr: &Endpoint) -> DbTls {
        let name = self.name.clone().unwrap_or_else(|| {
            crate::tls::server_name(addr.host())
                .unwrap_or_else(|_| ServerName::IpAddress(addr.resolve().ip().into()))
        });
        DbTls {
            material: self.material.clone(),
            name,
        }
    }
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

/// One account-db: its connections, and what login-server knows of its health.
struct Instance {
    addr: Endpoint,
    connections: Connections,
    /// Makes the connections: the pool's, each request's when not pooled, and the probes'.
    manager: DbManager,
    /// Up or down, and the counters.
    health: Health,
    /// Where the time spent waiting for a pooled connection is recorded.
    metrics: Metrics,
}

/// An account-db as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// As `--db` gives it.
    pub addr: String,
    /// Whether it answered last time it was asked.
    pub up: bool,
    /// Requests sent (or tried).
    pub requests: u64,
    /// Requests it failed.
    pub errors: u64,
    /// Requests tried on it after a failure.
    pub retries: u64,
    /// Pooled (open, idle) connections; `None` when not pooled.
    pub pool: Option<(u32, u32)>,
}

impl Instance {
    fn new(addr: Endpoint, config: &ClientConfig, metrics: Metrics) -> Instance {
        let timeout = config.deadlines().attempt;
        let tls = config.tls.as_ref().map(|trust| trust.for_endpoint(&addr));
        let manager = DbManager::new(addr.clone(), timeout, config.secret.clone(), tls);
        let connections = match config.pool_size {
            0 => Connections::PerRequest,
            size => Connections::Pooled(
                r2d2::Pool::builder()
                    .max_size(size)
                    .connection_timeout(timeout)
                    // has_broken catches failed connections; a ping per checkout would double
                    // the round trips.
                    .test_on_check_out(false)
                    // No churn while idle: connections are made when needed, kept while used
                    // (up to their lifetime), and an idle one is retired (before account-db's
                    // idle timeout drops it) without being replaced.
                    .min_idle(Some(0))
                    .max_lifetime(jittered(config.max_lifetime))
                    .idle_timeout(Some(POOL_IDLE))
                    .error_handler(Box::new(LogErrors(RateLimited::new(Duration::from_secs(
                        10,
                    )))))
                    .build_unchecked(manager.clone()),
            ),
        };
        Instance {
            health: Health::new(addr.to_string()),
            addr,
            connections,
            manager,
            metrics,
        }
    }

    /// A pooled connection, the wait recorded.
    fn pooled(
        &self,
        pool: &r2d2::Pool<DbManager>,
    ) -> Result<r2d2::PooledConnection<DbManager>, r2d2::Error> {
        let waiting = Instant::now();
        let conn = pool.get();
        self.metrics.pool_wait.observe(waiting.elapsed());
        conn
    }

    /// Whether it answers a ping on a fresh connection now.
    fn probe(&self) -> bool {
        let manager = &self.manager;
        r2d2::ManageConnection::connect(manager)
            .and_then(|mut conn| r2d2::ManageConnection::is_valid(manager, &mut conn))
            .is_ok()
    }

    fn state(&self) -> InstanceState {
        let health = &self.health;
        InstanceState {
            addr: self.addr.to_string(),
            up: health.is_up(),
            requests: health.requests.load(Ordering::Relaxed),
            errors: health.errors.load(Ordering::Relaxed),
            retries: health.retries.load(Ordering::Relaxed),
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

impl Target for Instance {
    fn attempt(&self, request: &DbRequest) -> Result<DbResponse, Attempt> {
        let mut conn = match &self.connections {
            Connections::PerRequest => {
                let conn = r2d2::ManageConnection::connect(&self.manager);
                Lent::Own(conn.map_err(Attempt::NotSent)?)
            }
            Connections::Pooled(pool) => {
                Lent::Pooled(self.pooled(pool).map_err(|e| Attempt::NotSent(e.into()))?)
            }
        };
        // An account-db of an older release (during an upgrade) does not know the request.
        let needs = request.min_version();
        if conn.version() < needs {
            return Err(Attempt::Unsupported(needs));
        }
        conn.call(request).map_err(Attempt::Failed)
    }

    fn attempt_all(&self, requests: &[&DbRequest]) -> Option<(Vec<DbResponse>, Option<DbError>)> {
        let Connections::Pooled(pool) = &self.connections else {
            return None;
        };
        Some(match self.pooled(pool) {
            // Only as far as the first request it does not speak: the rest are asked one by
            // one, where they can be.
            Ok(mut conn) => {
                let version = conn.version();
                let spoken = requests
                    .iter()
                    .position(|r| r.min_version() > version)
                    .unwrap_or(requests.len());
                conn.call_all(&requests[..spoken])
            }
            Err(e) => (Vec::new(), Some(e.into())),
        })
    }

    fn dead_retries(&self) -> u32 {
        match &self.connections {
            Connections::Pooled(pool) => pool.max_size() + 1,
            Connections::PerRequest => 2,
        }
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

/// The account store as login-server sees it: one or more account-dbs over TCP. Requests go to
/// the instances that are up, in turn; one that fails is marked down, the request is retried on
/// another within its deadline (`failover`), and a background thread probes it until it
/// answers again.
pub struct RemoteStore {
    /// The account-dbs and the rules for spreading requests over them; the prober holds a
    /// weak reference.
    instances: Arc<Failover<Instance>>,
}

impl RemoteStore {
    /// A store reaching `config.addrs`. It does not wait for them to be up: until one is,
    /// requests fail with [`StoreError::Unreachable`] and the pools keep trying.
    pub fn new(config: &ClientConfig, metrics: Metrics) -> RemoteStore {
        let list = config
            .addrs
            .iter()
            .map(|addr| Instance::new(addr.clone(), config, metrics.clone()))
            .collect();
        let instances = Arc::new(Failover::new(list, config.deadlines()));
        let weak = Arc::downgrade(&instances);
        let prober = std::thread::Builder::new()
            .name("account-db-probe".into())
            .spawn(move || probe_down_instances(&weak));
        if let Err(e) = prober {
            tracing::error!(error = %e, "cannot start the account-db prober; down instances are retried by requests only");
        }
        RemoteStore { instances }
    }

    /// Each account-db's state, in `--db` order.
    pub fn instances(&self) -> Vec<InstanceState> {
        self.instances
            .targets()
            .iter()
            .map(Instance::state)
            .collect()
    }
}

/// Until the store is dropped: probe every instance marked down, and mark it up once it
/// answers.
fn probe_down_instances(instances: &std::sync::Weak<Failover<Instance>>) {
    loop {
        std::thread::sleep(PROBE_EVERY);
        let Some(instances) = instances.upgrade() else {
            return;
        };
        for instance in instances.targets() {
            if !instance.health.is_up() && instance.probe() {
                let _ = instance.health.answered();
            }
        }
    }
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
    /// Retried where that is safe and useful, within the request's deadline; a create until
    /// its outcome is known (`failover`).
    fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError> {
        self.instances.call(request)
    }

    /// Pipelined on one pooled connection of the next instance up, what that leaves
    /// unanswered asked again one by one (`failover`).
    fn call_all(&self, requests: &[&DbRequest]) -> Vec<Result<DbResponse, StoreError>> {
        self.instances.call_all(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_jittered_by_up_to_a_tenth() {
        assert_eq!(jittered(Duration::ZERO), None);
        let hour = Duration::from_secs(3600);
        let seen: Vec<Duration> = (0..200).filter_map(|_| jittered(hour)).collect();
        assert_eq!(seen.len(), 200);
        assert!(seen
            .iter()
            .all(|d| (hour.mul_f64(0.9)..=hour.mul_f64(1.1)).contains(d)));
        // Spread, not one value: some below 97% and some above 103%.
        assert!(seen.iter().any(|d| *d < hour.mul_f64(0.97)));
        assert!(seen.iter().any(|d| *d > hour.mul_f64(1.03)));
    }
}
