//! Which PostgreSQL node account-db writes to: `--store`'s hosts (libpq's multi-host form) are
//! tried in turn for a writable one, a new connection's whole attempt over them all bounded by
//! one budget, hosts that failed in the last [`FAILED_LAST_FOR`] tried last; the node new
//! connections last reached is exported, and a change of it logged once.

use super::contract::StoreError;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a host that failed is tried after the others (10 s): a dead primary costs the
/// connections made in the next seconds nothing once it has cost one.
pub const FAILED_LAST_FOR: Duration = Duration::from_secs(10);

/// Connections to one host still waiting on a thread of their own after their caller gave up
/// (4): a host that accepts and then says nothing would otherwise gather a thread per attempt.
/// Past this many, that host is skipped as silent until one ends.
const MAX_WAITING: usize = 4;

/// The hosts of `--store`, and which of them is the writable node.
pub struct Nodes {
    /// In `--store`'s order.
    hosts: Vec<Node>,
    /// Makes each connection's TLS.
    tls: MakeRustlsConnect,
    /// The host new connections last reached, by its place in `hosts`.
    primary: Mutex<Option<usize>>,
    /// Changes of `primary` after the first.
    changes: Counter,
}

/// One host.
struct Node {
    /// `host:port`, as logs and metrics name it.
    name: String,
    /// Its own configuration, asking for a writable node.
    config: postgres::Config,
    /// When a connection to it last failed.
    failed_at: Mutex<Option<Instant>>,
    /// Connections to it left waiting by their callers ([`MAX_WAITING`]).
    waiting: Arc<AtomicUsize>,
}

impl Nodes {
    /// The hosts `hosts` (named, each a configuration of its own), reached over `tls`.
    pub fn new(hosts: Vec<(String, postgres::Config)>, tls: MakeRustlsConnect) -> Nodes {
        let hosts = hosts
            .into_iter()
            .map(|(name, config)| Node {
                name,
                config,
                failed_at: Mutex::new(None),
                waiting: Arc::default(),
            })
            .collect();
        Nodes {
            hosts,
            tls,
            primary: Mutex::new(None),
            changes: Counter::default(),
        }
    }

    /// A connection to a writable node within `budget`: the hosts in `--store`'s order, those
    /// that failed within [`FAILED_LAST_FOR`] after the others (the least recent failure
    /// first), each given an equal share of the time left, so that a host that swallows
    /// connections cannot use up the attempt. The last host's error when none answers.
    pub fn connect(&self, budget: Duration) -> Result<postgres::Client, StoreError> {
        let started = Instant::now();
        let order = self.order(started);
        let mut last = None;
        for (tried, &i) in order.iter().enumerate() {
            let left = budget.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(order.len() - tried).unwrap_or(1);
            let node = &self.hosts[i];
            match node.connect(&self.tls, share) {
                Ok(client) => {
                    self.reached(i);
                    return Ok(client);
                }
                Err(e) => {
                    *node.failed_at.lock() = Some(Instant::now());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(StoreError::Silent { waited: budget }))
    }

    /// The places of the hosts in the order they are tried at `now`.
    fn order(&self, now: Instant) -> Vec<usize> {
        let recent = |i: usize| {
            let failed = *self.hosts[i].failed_at.lock();
            failed.filter(|at| now.saturating_duration_since(*at) < FAILED_LAST_FOR)
        };
        let mut order: Vec<usize> = (0..self.hosts.len()).collect();
        // Stable: hosts that did not fail lately keep their order, ahead of the others.
        order.sort_by_key(|&i| recent(i));
        order
    }

    /// A new connection reached host `i`: it is the primary now.
    fn reached(&self, i: usize) {
        let mut primary = self.primary.lock();
        match *primary {
            Some(was) if was == i => return,
            Some(was) => {
                self.changes.inc();
                tracing::warn!(
                    from = %self.hosts[was].name,
                    to = %self.hosts[i].name,
                    "the writable PostgreSQL node changed"
                );
            }
            None if self.hosts.len() > 1 => {
                tracing::info!(host = %self.hosts[i].name, "the writable PostgreSQL node");
            }
            None => {}
        }
        *primary = Some(i);
    }

    /// The host new connections last reached, as `host:port`.
    pub fn primary(&self) -> Option<String> {
        let primary = *self.primary.lock();
        primary.map(|i| self.hosts[i].name.clone())
    }

    /// `store_primary_info{host}` (1 for the host new connections last reached, 0 for the
    /// others) and `store_primary_changes_total`.
    pub fn register_metrics(self: &Arc<Self>, r: &mut Registry) {
        let nodes = self.clone();
        let info = crate::metrics::LiveFamily::gauges("host", move || {
            let primary = *nodes.primary.lock();
            let hosts = nodes.hosts.iter().enumerate();
            hosts
                .map(|(i, node)| (node.name.clone(), i64::from(primary == Some(i))))
                .collect()
        });
        r.register(
            "store_primary_info",
            "1 for the PostgreSQL host new store connections last reached (the writable node), 0 for the other hosts of --store",
            info,
        );
        r.register(
            "store_primary_changes",
            "Times new store connections reached another host than the last",
            self.changes.clone(),
        );
    }
}

impl Node {
    /// One connection, within `patience`, on a thread of its own: `connect_timeout` bounds
    /// only each TCP connect, and a server that accepts and says nothing would hold the caller
    /// for ever. A late connection is left to end by itself (dropped when it does).
    fn connect(
        &self,
        tls: &MakeRustlsConnect,
        patience: Duration,
    ) -> Result<postgres::Client, StoreError> {
        let silent = StoreError::Silent { waited: patience };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(silent);
        }
        let (done, outcome) = crossbeam_channel::bounded(1);
        let mut config = self.config.clone();
        config.connect_timeout(patience);
        let (tls, waiting) = (tls.clone(), self.waiting.clone());
        let spawned = std::thread::Builder::new()
            .name("postgres-connect".into())
            .spawn(move || {
                let connected = config.connect(tls);
                waiting.fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(connected);
            });
        if let Err(e) = spawned {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Thread(e));
        }
        match outcome.recv_timeout(patience) {
            Ok(connected) => connected.map_err(StoreError::Postgres),
            Err(_) => Err(silent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Nodes {
        let hosts = (0..n)
            .map(|i| {
                let config: postgres::Config = format!("host=h{i} user=u").parse().unwrap();
                (format!("h{i}:5432"), config)
            })
            .collect();
        let tls =
            super::super::pg_link::client_config(super::super::pg_link::SslMode::Prefer, None);
        Nodes::new(hosts, MakeRustlsConnect::new(tls.unwrap()))
    }

    #[test]
    fn hosts_that_failed_lately_are_tried_last_least_recent_first() {
        let nodes = nodes(4);
        let now = Instant::now();
        assert_eq!(nodes.order(now), [0, 1, 2, 3]);
        *nodes.hosts[2].failed_at.lock() = Some(now);
        *nodes.hosts[0].failed_at.lock() = Some(now - Duration::from_secs(1));
        assert_eq!(nodes.order(now), [1, 3, 0, 2]);
        // Ten seconds on, a failure no longer counts.
        let later = now + FAILED_LAST_FOR + Duration::from_millis(1) - Duration::from_secs(1);
        assert_eq!(nodes.order(later), [0, 1, 3, 2]);
        assert_eq!(nodes.order(now + FAILED_LAST_FOR), [0, 1, 2, 3]);
    }

    #[test]
    fn a_change_of_primary_is_counted_after_the_first() {
        let nodes = nodes(2);
        assert_eq!(nodes.primary(), None);
        nodes.reached(0);
        nodes.reached(0);
        assert_eq!(
            (nodes.primary().as_deref(), nodes.changes.get()),
            (Some("h0:5432"), 0)
        );
        nodes.reached(1);
        assert_eq!(
            (nodes.primary().as_deref(), nodes.changes.get()),
            (Some("h1:5432"), 1)
        );
        nodes.reached(1);
        nodes.reached(0);
        assert_eq!(nodes.changes.get(), 2);
    }
}
