//! Counters and gauges, rendered as Prometheus text. Everything is an atomic: recording costs
//! one relaxed add, and nothing is locked on the request path.

use crate::protocol::gateway::{Code, Op};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram of durations.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const CODES: usize = 9; // codes 1..=8; index 0 unused

/// login-server's metrics.
#[derive(Default)]
pub struct Metrics {
    /// Replies by op (login, register, none for unparseable) and code.
    replies: [[AtomicU64; CODES]; 3],
    pub latency: Histogram,
    pub open_connections: AtomicI64,
    pub busy_workers: AtomicI64,
    pub hashing: AtomicI64,
    pub db_errors: AtomicU64,
    pub throttled: AtomicU64,
    pub refused_connections: AtomicU64,
    pub pool_wait: Histogram,
}

/// Values read at scrape time from the parts that own them.
pub struct Gauges {
    pub queue_depth: usize,
    pub hash_queue_depth: usize,
    /// Pooled account-db connections (open, idle), if pooled.
    pub pool: Option<(u32, u32)>,
}

fn op_index(op: Option<Op>) -> usize {
    match op {
        Some(Op::Login) => 0,
        Some(Op::Register) => 1,
        None => 2,
    }
}

impl Metrics {
    /// One reply sent, `latency` after its message was whole.
    pub fn reply(&self, op: Option<Op>, code: Code, latency: Duration) {
        self.replies[op_index(op)][code as usize].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }

    /// Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP login_requests_total Replies sent, by op and code.\n");
        out.push_str("# TYPE login_requests_total counter\n");
        for (i, op) in ["login", "register", "none"].iter().enumerate() {
            for code in 1..CODES {
                let n = self.replies[i][code].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "login_requests_total{{op=\"{op}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        self.latency.render(
            &mut out,
            "login_request_duration_seconds",
            "Time from a whole message to its reply.",
        );
        self.pool_wait.render(
            &mut out,
            "login_db_pool_wait_seconds",
            "Time spent getting an account-db connection.",
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let load = |a: &AtomicI64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "login_open_connections",
            "Open gateway connections.",
            load(&self.open_connections),
        );
        gauge(
            &mut out,
            "login_busy_workers",
            "Workers handling a connection.",
            load(&self.busy_workers),
        );
        gauge(
            &mut out,
            "login_hashes_in_progress",
            "argon2 computations running.",
            load(&self.hashing),
        );
        gauge(
            &mut out,
            "login_queue_depth",
            "Connections waiting for a worker.",
            gauges.queue_depth as i64,
        );
        gauge(
            &mut out,
            "login_hash_queue_depth",
            "Requests waiting for a hash thread.",
            gauges.hash_queue_depth as i64,
        );
        if let Some((open, idle)) = gauges.pool {
            gauge(
                &mut out,
                "login_db_pool_connections",
                "Pooled account-db connections.",
                i64::from(open),
            );
            gauge(
                &mut out,
                "login_db_pool_idle",
                "Idle pooled account-db connections.",
                i64::from(idle),
            );
        }
        counter(
            &mut out,
            "login_db_errors_total",
            "Requests answered 7 because account-db failed.",
            self.db_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "login_throttled_total",
            "Logins refused with code 8.",
            self.throttled.load(Ordering::Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.reply(Some(Op::Login), Code::LoggedIn, Duration::from_millis(3));
        m.reply(Some(Op::Login), Code::LoggedIn, Duration::from_secs(20));
        m.reply(None, Code::BadRequest, Duration::from_micros(10));
        let text = m.render(&Gauges {
            queue_depth: 4,
            hash_queue_depth: 0,
            pool: Some((8, 6)),
        });
        assert!(
            text.contains("login_requests_total{op=\"login\",code=\"3\"} 2"),
            "{text}"
        );
        assert!(text.contains("login_requests_total{op=\"none\",code=\"6\"} 1"));
        assert!(text.contains("login_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("login_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("login_queue_depth 4"));
        assert!(text.contains("login_db_pool_idle 6"));
    }
}
