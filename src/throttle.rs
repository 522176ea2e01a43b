//! Brute-force throttling of failed logins, per account and per player address.
//!
//! After `max_failures` failures within `window`, the key is locked for `lockout`, doubling
//! with each further lockout up to `max_lockout`. A successful login clears the account's
//! record; a window that passes without failures forgets the count and the lockouts. Locks are
//! always finite: keeping an account locked takes ever more failed attempts, each of which the
//! per-address throttle slows down.
//!
//! The player's address is the optional `"ip"` field that the gateway forwards. The TCP peer
//! is the gateway itself and is never throttled: that would lock out every player at once.
//! Tables are bounded: past `max_tracked` keys, expired records are dropped, and if none are,
//! new keys go untracked rather than letting memory grow.

use crate::auth::names::fold;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The throttling thresholds: login-server's `--throttle-*` flags. The defaults are OWASP- and
/// Keycloak-like: 5 failures in 15 minutes lock for 1 minute, doubling up to 15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Policy {
    /// Failed logins, per account or per player address, that lock it. Defaults to 5.
    #[arg(
        id = "throttle_failures",
        long = "throttle-failures",
        value_name = "N",
        env = "LOGIN_SERVER_THROTTLE_FAILURES",
        default_value_t = 5
    )]
    pub max_failures: u32,
    /// Seconds within which those failures count. Defaults to 900.
    #[arg(
        id = "throttle_window",
        long = "throttle-window", value_name = "SECS",
        env = "LOGIN_SERVER_THROTTLE_WINDOW",
        default_value = "900",
        value_parser = crate::config::seconds
    )]
    pub window: Duration,
    /// Seconds of the first lockout; each further one doubles it. Defaults to 60.
    #[arg(
        id = "throttle_lockout",
        long = "throttle-lockout", value_name = "SECS",
        env = "LOGIN_SERVER_THROTTLE_LOCKOUT",
        default_value = "60",
        value_parser = crate::config::seconds
    )]
    pub lockout: Duration,
    /// Seconds a lockout lasts at most. Defaults to 900.
    #[arg(
        id = "throttle_max_lockout",
        long = "throttle-max-lockout", value_name = "SECS",
        env = "LOGIN_SERVER_THROTTLE_MAX_LOCKOUT",
        default_value = "900",
        value_parser = crate::config::seconds
    )]
    pub max_lockout: Duration,
    /// Keys (accounts, addresses) each throttle table tracks at most. Defaults to 100000.
    #[arg(
        id = "throttle_table_size",
        long = "throttle-table-size",
        value_name = "N",
        env = "LOGIN_SERVER_THROTTLE_TABLE_SIZE",
        default_value_t = 100_000
    )]
    pub max_tracked: usize,
}

impl Default for Policy {
    fn default() -> Self {
        crate::config::defaults()
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    window_start: Instant,
    lockouts: u32,
    locked_until: Option<Instant>,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            window_start: now,
            lockouts: 0,
            locked_until: None,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Whether nothing about this record matters any more.
    fn expired(&self, policy: &Policy, now: Instant) -> bool {
        self.locked(now).is_none() && now.duration_since(self.window_start) > policy.window
    }

    fn fail(&mut self, policy: &Policy, now: Instant) {
        if now.duration_since(self.window_start) > policy.window {
            let lockouts = if self.locked(now).is_some() {
                self.lockouts
            } else {
                0
            };
            *self = Record {
                lockouts,
                ..Record::new(now)
            };
        }
        self.failures += 1;
        if self.failures >= policy.max_failures {
            let doubling = 2u32.saturating_pow(self.lockouts.min(16));
            let lock = policy
                .lockout
                .saturating_mul(doubling)
                .min(policy.max_lockout);
            self.lockouts += 1;
            self.locked_until = Some(now + lock);
            self.failures = 0;
            self.window_start = now;
        }
    }
}

struct Table {
    records: Mutex<HashMap<String, Record>>,
}

impl Table {
    fn new() -> Table {
        Table {
            records: Mutex::new(HashMap::new()),
        }
    }

    fn locked(&self, key: &str, now: Instant) -> Option<Duration> {
        self.records.lock().get(key).and_then(|r| r.locked(now))
    }

    fn fail(&self, key: &str, policy: &Policy, now: Instant) {
        let mut records = self.records.lock();
        if !records.contains_key(key) && records.len() >= policy.max_tracked {
            records.retain(|_, r| !r.expired(policy, now));
            if records.len() >= policy.max_tracked {
                return;
            }
        }
        records
            .entry(key.to_string())
            .or_insert_with(|| Record::new(now))
            .fail(policy, now);
    }

    fn clear(&self, key: &str) {
        self.records.lock().remove(key);
    }
}

/// Failed-login records and the locks they lead to.
pub struct Throttle {
    policy: Policy,
    accounts: Table,
    addresses: Table,
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            accounts: Table::new(),
            addresses: Table::new(),
        }
    }

    /// How long until a login for `username` (in any case) from `ip` may be tried, if it is
    /// locked now.
    pub fn locked(&self, username: &str, ip: Option<&str>) -> Option<Duration> {
        let now = Instant::now();
        let by_account = self.accounts.locked(&fold(username), now);
        let by_address = ip.and_then(|ip| self.addresses.locked(ip, now));
        by_account.max(by_address)
    }

    /// A login for `username` failed (a wrong password; `None` for a name that does not
    /// exist).
    pub fn failed(&self, username: Option<&str>, ip: Option<&str>) {
        let now = Instant::now();
        if let Some(username) = username {
            self.accounts.fail(&fold(username), &self.policy, now);
        }
        if let Some(ip) = ip {
            self.addresses.fail(ip, &self.policy, now);
        }
    }

    /// A login for `username` succeeded: the account's count starts again.
    pub fn succeeded(&self, username: &str) {
        self.accounts.clear(&fold(username));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(10),
            max_lockout: Duration::from_secs(25),
            max_tracked: 4,
        }
    }

    #[test]
    fn locks_after_the_threshold_and_doubles_up_to_the_cap() {
        let policy = policy();
        let start = Instant::now();
        let mut record = Record::new(start);
        for _ in 0..2 {
            record.fail(&policy, start);
        }
        assert_eq!(record.locked(start), None);
        record.fail(&policy, start);
        assert_eq!(record.locked(start), Some(Duration::from_secs(10)));
        let later = start + Duration::from_secs(11);
        for _ in 0..3 {
            record.fail(&policy, later);
        }
        assert_eq!(record.locked(later), Some(Duration::from_secs(20)));
        let even_later = later + Duration::from_secs(21);
        for _ in 0..3 {
            record.fail(&policy, even_later);
        }
        assert_eq!(
            record.locked(even_later),
            Some(Duration::from_secs(25)),
            "capped"
        );
        // A quiet window forgets everything.
        let much_later = even_later + Duration::from_secs(200);
        assert!(record.expired(&policy, much_later));
        record.fail(&policy, much_later);
        assert_eq!((record.failures, record.lockouts), (1, 0));
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new(policy());
        for _ in 0..3 {
            throttle.failed(Some("alice"), Some("10.0.0.1"));
        }
        assert!(throttle.locked("alice", None).is_some());
        assert!(throttle.locked("bob", Some("10.0.0.1")).is_some());
        assert!(throttle.locked("bob", Some("10.0.0.2")).is_none());
        assert!(
            throttle.locked("ALICE", None).is_some(),
            "accounts are keyed without case"
        );
        throttle.succeeded("Alice");
        assert!(throttle.locked("alice", None).is_none());
    }

    #[test]
    fn tables_stay_bounded() {
        let throttle = Throttle::new(policy());
        for i in 0..100 {
            throttle.failed(Some(&format!("user{i}")), None);
        }
        assert!(throttle.accounts.records.lock().len() <= 4);
    }
}
