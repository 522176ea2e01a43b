//! Metrics of both servers, exported through one `prometheus-client` registry per server.
//!
//! Recording costs one relaxed atomic add and locks nothing: counters and gauges are
//! `prometheus-client`'s own; the latency histograms and the labelled reply counters are
//! arrays of atomics of ours that encode themselves ([`Histogram`], [`LabeledCounters`]);
//! values owned elsewhere (queue depths, pool state) are read at scrape time ([`LiveGauge`]).
//! Every metric is listed in docs/operations.md, and a test holds the two to each other.

use crate::protocol::gateway::{Code, Op};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Content-Type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations on atomics; clones share the counts.
#[derive(Debug, Default, Clone)]
pub struct Histogram(Arc<HistogramCounts>);

#[derive(Debug, Default)]
struct HistogramCounts {
    /// One per bound in [`BUCKETS`], then one for larger values.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.0.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Counters of one metric told apart by a fixed set of label values, chosen by index; clones
/// share the counts. Only non-zero counters are exported.
#[derive(Debug, Clone)]
pub struct LabeledCounters(Arc<[(Labels, AtomicU64)]>);

/// A label set: (name, value) pairs.
pub type Labels = Vec<(&'static str, &'static str)>;

impl LabeledCounters {
    /// One counter per label set, in this order.
    pub fn new(label_sets: impl IntoIterator<Item = Labels>) -> Self {
        LabeledCounters(
            label_sets
                .into_iter()
                .map(|l| (l, AtomicU64::new(0)))
                .collect(),
        )
    }

    /// Count one for the `i`th label set.
    pub fn inc(&self, i: usize) {
        if let Some((_, n)) = self.0.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl EncodeMetric for LabeledCounters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, n) in self.0.iter() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                encoder
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A gauge whose value is read at scrape time from whatever owns it.
pub struct LiveGauge(Box<dyn Fn() -> i64 + Send + Sync>);

impl LiveGauge {
    pub fn new(read: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        LiveGauge(Box::new(read))
    }
}

impl std::fmt::Debug for LiveGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveGauge")
    }
}

impl EncodeMetric for LiveGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0)())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A labelled family whose values are read at scrape time: one label, `label`, whose values
/// and the numbers under them come from `read`.
pub struct LiveFamily {
    kind: MetricType,
    label: &'static str,
    read: Box<dyn Fn() -> Vec<(String, i64)> + Send + Sync>,
}

impl LiveFamily {
    /// A gauge family.
    pub fn gauges(
        label: &'static str,
        read: impl Fn() -> Vec<(String, i64)> + Send + Sync + 'static,
    ) -> Self {
        LiveFamily {
            kind: MetricType::Gauge,
            label,
            read: Box::new(read),
        }
    }

    /// A counter family: `read` must only ever grow.
    pub fn counters(
        label: &'static str,
        read: impl Fn() -> Vec<(String, i64)> + Send + Sync + 'static,
    ) -> Self {
        LiveFamily {
            kind: MetricType::Counter,
            label,
            read: Box::new(read),
        }
    }
}

impl std::fmt::Debug for LiveFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveFamily")
    }
}

impl EncodeMetric for LiveFamily {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, n) in (self.read)() {
            let labels = [(self.label, value.as_str())];
            let mut member = encoder.encode_family(&labels)?;
            match self.kind {
                MetricType::Counter => {
                    let n = u64::try_from(n).unwrap_or(0);
                    member.encode_counter::<NoLabelSet, _, u64>(&n, None)?
                }
                _ => member.encode_gauge(&n)?,
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// The ops a reply is counted under; `none` for a message that is not a request.
/// The `op` label values: every op, then "none" (a message that is not a request).
const OPS: [&str; Op::ALL.len() + 1] = [
    "login",
    "register",
    "verify",
    "refresh",
    "logout",
    "logout_all",
    "change_password",
    "device",
    "claim",
    "link_device",
    "unlink_device",
    "devices",
    "none",
];
/// Codes 1..=13, as label values.
const CODES: [&str; 13] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13",
];

/// login-server's metrics that the request path records.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Replies by op and code.
    replies: LabeledCounters,
    pub latency: Histogram,
    pub pool_wait: Histogram,
    pub open_connections: Gauge,
    pub busy_workers: Gauge,
    pub hashing: Gauge,
    pub db_errors: Counter,
    pub throttled: Counter,
    pub refused_connections: Counter,
    pub disallowed_connections: Counter,
    /// The connection cap in force: `--max-connections`, or lower where the open-files limit
    /// cannot hold it.
    pub max_connections: Gauge,
    /// Accepts that failed for want of descriptors (EMFILE, ENFILE); accepting then pauses
    /// for 100 ms.
    pub accept_out_of_files: Counter,
    /// Questions to the old account server, by [`LegacyOutcome`].
    legacy_lookups: LabeledCounters,
    /// Accounts moved from the old account server on their first login.
    pub legacy_migrated: Counter,
    /// Logins the old account server confirmed for a spelling an account here holds in
    /// another case (answered "contact support", 13): each wants an operator's rename.
    pub legacy_name_conflicts: Counter,
    /// Gateway TLS handshakes, by [`TlsOutcome`].
    tls_handshakes: LabeledCounters,
    /// Requests shed (answered "unavailable" at once), by [`Shed`].
    shed: LabeledCounters,
    /// Gateway connections that spoke plaintext on a `--gateway-tls optional` port: what a
    /// migration to TLS watches fall to zero.
    pub plaintext_gateways: Counter,
}

/// How a gateway's TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    /// A full handshake: a key exchange and a signature by the server's key.
    Full = 0,
    /// Resumed from a session ticket this process issued: no signature.
    Resumed = 1,
    /// Refused or abandoned: a bad or missing client certificate, broken or too slow, not TLS
    /// where TLS is required.
    Failed = 2,
}

/// Why a request was shed: answered "unavailable" (7) at once, without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// A queue was full (the worker queue, or a hash or old-server stage's): whoever came
    /// next was shed.
    QueueFull = 0,
    /// Under overload, its player (or connection) already had a request waiting, or asked more
    /// than `--fair-share` (see `login/fairness.rs`).
    Share = 1,
}

/// What the old account server answered (`--legacy-db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyOutcome {
    /// It knows the name.
    Known = 0,
    /// It does not.
    Unknown = 1,
    /// It was down, slow, busy or answered garbage.
    Failed = 2,
}

impl Default for Metrics {
    fn default() -> Self {
        let label_sets = OPS.iter().flat_map(|&op| {
            CODES
                .iter()
                .map(move |&code| vec![("op", op), ("code", code)])
        });
        Metrics {
            replies: LabeledCounters::new(label_sets),
            latency: Histogram::default(),
            pool_wait: Histogram::default(),
            open_connections: Gauge::default(),
            busy_workers: Gauge::default(),
            hashing: Gauge::default(),
            db_errors: Counter::default(),
            throttled: Counter::default(),
            refused_connections: Counter::default(),
            disallowed_connections: Counter::default(),
            max_connections: Gauge::default(),
            accept_out_of_files: Counter::default(),
            legacy_lookups: LabeledCounters::new(
                ["known", "unknown", "failed"].map(|outcome| vec![("outcome", outcome)]),
            ),
            legacy_migrated: Counter::default(),
            legacy_name_conflicts: Counter::default(),
            tls_handshakes: LabeledCounters::new(
                ["full", "resumed", "failed"].map(|outcome| vec![("outcome", outcome)]),
            ),
            plaintext_gateways: Counter::default(),
            shed: LabeledCounters::new(
                ["queue_full", "share"].map(|reason| vec![("reason", reason)]),
            ),
        }
    }
}

/// Register what every server exports about itself: `build_info{version}` (always 1), and
/// its process's resident memory, open files and CPU time, read at scrape time from /proc
/// (absent where it cannot be read).
pub fn register_process(r: &mut Registry) {
    r.register(
        "build_info",
        "This build: its version as a label",
        LiveFamily::gauges("version", || {
            vec![(env!("CARGO_PKG_VERSION").to_string(), 1)]
        }),
    );
    r.register_with_unit(
        "process_resident_memory",
        "Resident memory of the process",
        Unit::Bytes,
        LiveGauge::new(|| {
            // statm: sizes in pages; the second is resident.
            let pages = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
                .unwrap_or(0);
            pages.saturating_mul(system().page_bytes)
        }),
    );
    r.register(
        "process_open_fds",
        "Open file descriptors of the process",
        LiveGauge::new(|| {
            std::fs::read_dir("/proc/self/fd")
                .map_or(0, |dir| i64::try_from(dir.count()).unwrap_or(i64::MAX))
        }),
    );
    r.register_with_unit(
        "process_cpu",
        "CPU time of the process, user and system, in whole seconds",
        Unit::Seconds,
        LiveGauge::new(|| {
            // stat: fields 14 and 15 are user and system time in clock ticks.
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let after_name = stat.rsplit(')').next().unwrap_or_default();
            let ticks: i64 = after_name
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<i64>().ok())
                .sum();
            ticks / system().ticks_per_second
        }),
    );
}

/// What the process metrics read `/proc` in: the page size and the clock's ticks per second,
/// as the OS says (`sysconf`), not assumed (pages are 16 or 64 KiB on some arm64 kernels).
struct System {
    /// Bytes in a memory page.
    page_bytes: i64,
    /// Clock ticks in a second (`/proc/self/stat`'s CPU times).
    ticks_per_second: i64,
}

/// [`System`], asked of the OS once.
fn system() -> &'static System {
    static SYSTEM: std::sync::OnceLock<System> = std::sync::OnceLock::new();
    SYSTEM.get_or_init(|| {
        // SAFETY: sysconf takes a constant and touches no memory of ours; -1 means unknown.
        let (page, ticks) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
            )
        };
        System {
            page_bytes: if page > 0 { page } else { 4096 },
            ticks_per_second: if ticks > 0 { ticks } else { 100 },
        }
    })
}

/// Values read at scrape time from the parts of login-server that own them.
pub struct Gauges {
    pub queue_depth: LiveGauge,
    pub hash_queue_depth: LiveGauge,
    /// Requests waiting for the old-server stage (`--legacy-db`).
    pub legacy_queue_depth: LiveGauge,
    /// Pooled account-db connections (open, idle), over all account-dbs, if pooled.
    pub pool: Option<(LiveGauge, LiveGauge)>,
    /// Per account-db (label `db`): whether it is up, its requests, its failed requests, and
    /// requests retried on it after a failure.
    pub instances: [LiveFamily; 4],
    /// When the first certificate of `--db-tls-ca` and `--db-tls-cert` expires (seconds since
    /// the epoch), with TLS to account-db.
    pub db_tls_expiry: Option<LiveGauge>,
    /// When the first certificate of `--tls-cert` and `--gateway-tls-client-ca` expires
    /// (seconds since the epoch), with gateway TLS.
    pub gateway_tls_expiry: Option<LiveGauge>,
}

impl Metrics {
    /// One question to the old account server, answered so.
    pub fn legacy_lookup(&self, outcome: LegacyOutcome) {
        self.legacy_lookups.inc(outcome as usize);
    }

    /// One gateway TLS handshake ended so.
    pub fn tls_handshake(&self, outcome: TlsOutcome) {
        self.tls_handshakes.inc(outcome as usize);
    }

    /// A request shed, for `reason`.
    pub fn shed(&self, reason: Shed) {
        self.shed.inc(reason as usize);
    }

    /// One reply sent, `latency` after its message was whole.
    pub fn reply(&self, op: Option<Op>, code: Code, latency: Duration) {
        let op = op.map_or(OPS.len() - 1, Op::index);
        self.replies.inc(op * CODES.len() + (code as usize - 1));
        self.latency.observe(latency);
    }

    /// A registry holding these metrics and `gauges`, named as docs/operations.md lists them.
    pub fn registry(&self, gauges: Gauges) -> Registry {
        let mut r = Registry::with_prefix("login");
        r.register(
            "requests",
            "Replies sent, by op and code",
            self.replies.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a whole message to its reply",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register_with_unit(
            "db_pool_wait",
            "Time spent getting an account-db connection",
            Unit::Seconds,
            self.pool_wait.clone(),
        );
        r.register(
            "open_connections",
            "Open gateway connections",
            self.open_connections.clone(),
        );
        r.register(
            "busy_workers",
            "Workers handling a connection",
            self.busy_workers.clone(),
        );
        r.register(
            "hashes_in_progress",
            "argon2 computations running",
            self.hashing.clone(),
        );
        r.register(
            "queue_depth",
            "Connections waiting for a worker",
            gauges.queue_depth,
        );
        r.register(
            "hash_queue_depth",
            "Requests waiting for a hash thread",
            gauges.hash_queue_depth,
        );
        r.register(
            "legacy_queue_depth",
            "Requests waiting for the old-server stage",
            gauges.legacy_queue_depth,
        );
        if let Some((open, idle)) = gauges.pool {
            r.register("db_pool_connections", "Pooled account-db connections", open);
            r.register("db_pool_idle", "Idle pooled account-db connections", idle);
        }
        if let Some(expiry) = gauges.db_tls_expiry {
            r.register(
                "db_tls_cert_expiry_seconds",
                "When the first certificate of --db-tls-ca and --db-tls-cert expires, in seconds since the epoch",
                expiry,
            );
        }
        let [up, requests, errors, retries] = gauges.instances;
        r.register(
            "db_up",
            "Whether each account-db answers (1) or is marked down (0)",
            up,
        );
        r.register("db_requests", "Requests sent to each account-db", requests);
        r.register(
            "db_failures",
            "Requests to each account-db that failed",
            errors,
        );
        r.register(
            "db_retries",
            "Requests retried on each account-db after a failure",
            retries,
        );
        r.register(
            "db_errors",
            "Requests answered unavailable because account-db failed",
            self.db_errors.clone(),
        );
        r.register(
            "throttled",
            "Logins refused as too many attempts",
            self.throttled.clone(),
        );
        r.register(
            "refused_connections",
            "Connections closed at accept at --max-connections",
            self.refused_connections.clone(),
        );
        r.register(
            "disallowed_connections",
            "Connections closed at accept: the peer is not in --allow-from",
            self.disallowed_connections.clone(),
        );
        r.register(
            "max_connections",
            "The connection cap in force: --max-connections, or lower where the open-files limit cannot hold it",
            self.max_connections.clone(),
        );
        r.register(
            "accept_out_of_files",
            "Accepts that failed for want of file descriptors (EMFILE, ENFILE); accepting pauses 100 ms",
            self.accept_out_of_files.clone(),
        );
        r.register(
            "legacy_lookups",
            "Questions to the old account server, by outcome",
            self.legacy_lookups.clone(),
        );
        r.register(
            "legacy_migrated",
            "Accounts moved from the old account server on their first login",
            self.legacy_migrated.clone(),
        );
        r.register(
            "legacy_name_conflicts",
            "Logins the old account server confirmed for a name held here in another case",
            self.legacy_name_conflicts.clone(),
        );
        r.register(
            "tls_handshakes",
            "Gateway TLS handshakes, by outcome (full, resumed from a ticket, failed)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "shed",
            "Requests answered unavailable (7) at once, by reason: a queue was full, or under overload the player (or connection) already had a request waiting or asked more than --fair-share",
            self.shed.clone(),
        );
        r.register(
            "plaintext_gateway_connections",
            "Gateway connections that spoke plaintext on a --gateway-tls optional port",
            self.plaintext_gateways.clone(),
        );
        if let Some(expiry) = gauges.gateway_tls_expiry {
            r.register(
                "tls_cert_expiry_seconds",
                "When the first certificate of --tls-cert and --gateway-tls-client-ca expires, in seconds since the epoch",
                expiry,
            );
        }
        register_process(&mut r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_in_the_os_page_size() {
        let sys = system();
        assert!(sys.page_bytes >= 4096 && sys.page_bytes.count_ones() == 1);
        assert!(sys.ticks_per_second > 0);
        // statm's resident pages times the page size is VmRSS, give or take the pages that
        // came and went between the two reads.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_rss_kib: i64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: i64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let bytes = pages * sys.page_bytes;
        assert!(
            (bytes / 1024 - vm_rss_kib).abs() < 4096,
            "{bytes} B vs {vm_rss_kib} KiB"
        );
    }

    #[test]
    fn encodes_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.reply(Some(Op::Login), Code::LoggedIn, Duration::from_millis(3));
        m.reply(Some(Op::Login), Code::LoggedIn, Duration::from_secs(20));
        m.reply(None, Code::BadRequest, Duration::from_micros(10));
        m.refused_connections.inc();
        let one = || vec![("127.0.0.1:9999".to_string(), 1)];
        let gauges = Gauges {
            queue_depth: LiveGauge::new(|| 4),
            hash_queue_depth: LiveGauge::new(|| 0),
            legacy_queue_depth: LiveGauge::new(|| 0),
            pool: Some((LiveGauge::new(|| 8), LiveGauge::new(|| 6))),
            instances: [
                LiveFamily::gauges("db", one),
                LiveFamily::counters("db", one),
                LiveFamily::counters("db", one),
                LiveFamily::counters("db", one),
            ],
            db_tls_expiry: Some(LiveGauge::new(|| 1_800_000_000)),
            gateway_tls_expiry: None,
        };
        let text = encode(&m.registry(gauges));
        for line in [
            "login_requests_total{op=\"login\",code=\"3\"} 2",
            "login_requests_total{op=\"none\",code=\"6\"} 1",
            "login_db_tls_cert_expiry_seconds 1800000000",
            "login_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "login_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "login_request_duration_seconds_count 3",
            "login_queue_depth 4",
            "login_db_pool_idle 6",
            "login_refused_connections_total 1",
            "login_db_up{db=\"127.0.0.1:9999\"} 1",
            "login_db_retries_total{db=\"127.0.0.1:9999\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("code=\"4\""), "zero counters are left out");
    }
}
