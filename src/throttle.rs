//! Brute-force throttling: failed logins per account and per player address, and
//! registrations per player address.
//!
//! After `max_failures` failures within `window`, the key is locked for `lockout`, doubling
//! with each further lockout up to `max_lockout`. A successful login clears the account's
//! record; a window that passes without failures forgets the count and the lockouts. Locks are
//! always finite: keeping an account locked takes ever more failed attempts, each of which the
//! per-address throttle slows down.
//!
//! The player's address is the optional `"ip"` field that the gateway forwards (an IPv6
//! address counts by its /64, which one subscriber usually holds whole). The TCP peer is the
//! gateway itself and is never throttled: that would lock out every player at once.
//!
//! Lockout must not become a way to lock a player out: failures from any address count toward
//! an account's lock, but a locked account stays open to the addresses it logged in from
//! successfully before (the last [`FAMILIAR`] of them). A request without an address is never
//! familiar.
//!
//! Every table is bounded by `max_tracked` keys, whatever arrives. A new key evicts the least
//! valuable entry in O(log n): a record whose lock has ended, else the least recently failed
//! unlocked one, and only when every entry is locked, the lock that ends soonest. Keys are
//! fixed-size (a keyed hash of the folded name; the address prefix), so an entry costs the same
//! whatever a request carries: at most about [`ENTRY_BYTES`] bytes, so at most
//! 4 × `max_tracked` × [`ENTRY_BYTES`] for the four tables (76 MiB at the default; 62 MiB
//! measured with all four full).

use crate::auth::names::fold;
use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses remembered per account as familiar: those of its most recent successful logins.
pub const FAMILIAR: usize = 4;

/// An upper bound of the memory one tracked key costs, in bytes: the map entry with its share
/// of empty buckets, and the eviction index entry with its share of tree nodes (162 measured,
/// averaged over the four tables filled to 100,000 keys each).
pub const ENTRY_BYTES: usize = 200;

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
    /// Registrations per player address (IPv6: per /64) within --register-window; more are
    /// answered "too many attempts" (8). Requests without an address are not limited.
    /// Defaults to 5.
    #[arg(
        long,
        value_name = "N",
        env = "LOGIN_SERVER_REGISTER_LIMIT",
        default_value_t = 5
    )]
    pub register_limit: u32,
    /// Seconds over which --register-limit counts. Defaults to 3600.
    #[arg(
        long,
        value_name = "SECS",
        env = "LOGIN_SERVER_REGISTER_WINDOW",
        default_value = "3600",
        value_parser = crate::config::seconds
    )]
    pub register_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// Where a request came from, as throttling sees it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Origin {
    fn from(ip: IpAddr) -> Origin {
        match ip {
            IpAddr::V4(v4) => Origin::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Origin::V4(u32::from(v4)),
                None => Origin::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// The order in which entries are evicted: lower first. Locked entries rank above unlocked
/// ones, by when their lock ends; unlocked ones by when they last changed.
type Rank = (bool, Instant);

/// A map of at most `capacity` keys; a new key evicts the least valuable entry.
struct Bounded<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, Rank)>,
    /// Unlocked entries by when they last changed, then locked ones by when their lock ends.
    unlocked: BTreeSet<(Instant, K)>,
    locked: BTreeSet<(Instant, K)>,
}

impl<K: Copy + Eq + Hash + Ord, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            capacity,
            entries: HashMap::new(),
            unlocked: BTreeSet::new(),
            locked: BTreeSet::new(),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    fn index(&mut self, (locked, _): Rank) -> &mut BTreeSet<(Instant, K)> {
        if locked {
            &mut self.locked
        } else {
            &mut self.unlocked
        }
    }

    /// Change the entry at `key` with `change` (made with `new` if absent) and rank it anew
    /// with `rank`. Making room evicts the least valuable entry (see the module docs).
    fn update(
        &mut self,
        key: K,
        now: Instant,
        new: impl FnOnce() -> V,
        change: impl FnOnce(&mut V),
        rank: impl FnOnce(&V) -> Rank,
    ) {
        if self.capacity == 0 {
            return;
        }
        let old = match self.entries.get(&key) {
            Some((_, old)) => Some(*old),
            None if self.entries.len() >= self.capacity => {
                self.evict(now);
                None
            }
            None => None,
        };
        if let Some(old) = old {
            self.index(old).remove(&(old.1, key));
        }
        let (value, slot) = self
            .entries
            .entry(key)
            .or_insert_with(|| (new(), (false, now)));
        change(value);
        *slot = rank(value);
        let rank = *slot;
        self.index(rank).insert((rank.1, key));
    }

    fn remove(&mut self, key: &K) {
        if let Some((_, rank)) = self.entries.remove(key) {
            self.index(rank).remove(&(rank.1, *key));
        }
    }

    /// Drop one entry: a lock that has ended, else the least recently changed unlocked one,
    /// else the lock that ends soonest.
    fn evict(&mut self, now: Instant) {
        let first_locked = self.locked.first().copied();
        let victim = match first_locked {
            Some((until, key)) if until <= now => Some(key),
            _ => self
                .unlocked
                .first()
                .map(|e| e.1)
                .or(first_locked.map(|e| e.1)),
        };
        if let Some(key) = victim {
            self.remove(&key);
        }
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

    /// Its eviction rank as of `now`.
    fn rank(&self, now: Instant) -> Rank {
        match self.locked_until {
            Some(until) if until > now => (true, until),
            _ => (false, now),
        }
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

/// Failure records by key, bounded.
struct Table<K> {
    records: Mutex<Bounded<K, Record>>,
}

impl<K: Copy + Eq + Hash + Ord> Table<K> {
    fn new(capacity: usize) -> Self {
        Table {
            records: Mutex::new(Bounded::new(capacity)),
        }
    }

    fn locked(&self, key: &K, now: Instant) -> Option<Duration> {
        self.records.lock().get(key).and_then(|r| r.locked(now))
    }

    fn fail(&self, key: K, policy: &Policy, now: Instant) {
        self.records.lock().update(
            key,
            now,
            || Record::new(now),
            |r| r.fail(policy, now),
            |r| r.rank(now),
        );
    }

    fn clear(&self, key: &K) {
        self.records.lock().remove(key);
    }
}

/// Registrations counted in a fixed window per address.
#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    window_start: Instant,
}

/// Failed-login records, the locks they lead to, familiar addresses, and registration counts.
pub struct Throttle {
    policy: Policy,
    /// Hashes folded names into fixed-size keys, with a key of its own so that nobody can pick
    /// names that collide.
    hasher: RandomState,
    accounts: Table<u64>,
    addresses: Table<Origin>,
    familiar: Mutex<Bounded<u64, [Option<Origin>; FAMILIAR]>>,
    registrations: Mutex<Bounded<Origin, Count>>,
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            hasher: RandomState::new(),
            accounts: Table::new(policy.max_tracked),
            addresses: Table::new(policy.max_tracked),
            familiar: Mutex::new(Bounded::new(policy.max_tracked)),
            registrations: Mutex::new(Bounded::new(policy.max_tracked)),
        }
    }

    fn account_key(&self, username: &str) -> u64 {
        self.hasher.hash_one(fold(username))
    }

    /// Whether `origin` is one the account `key` logged in from successfully.
    fn is_familiar(&self, key: u64, origin: Option<Origin>) -> bool {
        origin.is_some_and(|origin| {
            self.familiar
                .lock()
                .get(&key)
                .is_some_and(|known| known.contains(&Some(origin)))
        })
    }

    /// How long until a login for `username` (in any case) from `origin` may be tried, if it
    /// is locked now. An account's lock does not hold against its familiar addresses.
    pub fn locked(&self, username: &str, origin: Option<Origin>) -> Option<Duration> {
        let now = Instant::now();
        let key = self.account_key(username);
        let by_account = self
            .accounts
            .locked(&key, now)
            .filter(|_| !self.is_familiar(key, origin));
        let by_address = origin.and_then(|origin| self.addresses.locked(&origin, now));
        by_account.max(by_address)
    }

    /// A login for `username` failed (`None`: count it against the address only).
    pub fn failed(&self, username: Option<&str>, origin: Option<Origin>) {
        let now = Instant::now();
        if let Some(username) = username {
            let key = self.account_key(username);
            self.accounts.fail(key, &self.policy, now);
        }
        if let Some(origin) = origin {
            self.addresses.fail(origin, &self.policy, now);
        }
    }

    /// A login for `username` from `origin` succeeded: the account's count starts again, and
    /// `origin` becomes familiar to it (already familiar: nothing changes but its recency).
    pub fn succeeded(&self, username: &str, origin: Option<Origin>) {
        let now = Instant::now();
        let key = self.account_key(username);
        self.accounts.clear(&key);
        let Some(origin) = origin else { return };
        self.familiar.lock().update(
            key,
            now,
            || [None; FAMILIAR],
            |known| {
                if !known.contains(&Some(origin)) {
                    known.rotate_right(1);
                    known[0] = Some(origin);
                }
            },
            |_| (false, now),
        );
    }

    /// Count a registration from `origin`; `Err` with how long until another is allowed when
    /// the address has used up `register_limit` in this window. No address: no limit.
    pub fn register(&self, origin: Option<Origin>) -> Result<(), Duration> {
        let Some(origin) = origin else { return Ok(()) };
        let now = Instant::now();
        let (limit, window) = (self.policy.register_limit, self.policy.register_window);
        let mut verdict = Ok(());
        self.registrations.lock().update(
            origin,
            now,
            || Count {
                n: 0,
                window_start: now,
            },
            |count| {
                if now.duration_since(count.window_start) >= window {
                    *count = Count {
                        n: 0,
                        window_start: now,
                    };
                }
                if count.n >= limit {
                    verdict = Err((count.window_start + window).saturating_duration_since(now));
                } else {
                    count.n += 1;
                }
            },
            |count| (count.n >= limit, count.window_start + window),
        );
        verdict
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
            register_limit: 2,
            register_window: Duration::from_secs(60),
        }
    }

    fn ip(text: &str) -> Option<Origin> {
        Some(text.parse::<IpAddr>().unwrap().into())
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
        record.fail(&policy, much_later);
        assert_eq!((record.failures, record.lockouts), (1, 0));
    }

    #[test]
    fn a_lock_that_outlives_its_window_keeps_counting_lockouts() {
        let policy = Policy {
            lockout: Duration::from_secs(100),
            max_lockout: Duration::from_secs(1000),
            ..policy()
        };
        let start = Instant::now();
        let mut record = Record::new(start);
        for _ in 0..3 {
            record.fail(&policy, start);
        }
        // Still locked past the window: a failure now starts a new window but keeps the count
        // of lockouts, so the next lock doubles.
        let later = start + Duration::from_secs(61);
        record.fail(&policy, later);
        assert_eq!((record.failures, record.lockouts), (1, 1));
        record.fail(&policy, later);
        record.fail(&policy, later);
        assert_eq!(record.locked(later), Some(Duration::from_secs(200)));
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new(policy());
        for _ in 0..3 {
            throttle.failed(Some("alice"), ip("10.0.0.1"));
        }
        assert!(throttle.locked("alice", None).is_some());
        assert!(throttle.locked("bob", ip("10.0.0.1")).is_some());
        assert!(throttle.locked("bob", ip("10.0.0.2")).is_none());
        assert!(
            throttle.locked("ALICE", None).is_some(),
            "accounts are keyed without case"
        );
        throttle.succeeded("Alice", None);
        assert!(throttle.locked("alice", None).is_none());
        assert!(throttle.locked("bob", ip("10.0.0.1")).is_some());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let throttle = Throttle::new(policy());
        for host in ["::1", "::2", "::3"] {
            throttle.failed(None, ip(&format!("2001:db8:0:1{host}")));
        }
        assert!(throttle.locked("x", ip("2001:db8:0:1::ffff")).is_some());
        assert!(throttle.locked("x", ip("2001:db8:0:2::1")).is_none());
        for _ in 0..3 {
            throttle.failed(None, ip("::ffff:192.0.2.7"));
        }
        assert!(throttle.locked("x", ip("192.0.2.7")).is_some());
    }

    #[test]
    fn a_locked_account_stays_open_to_its_familiar_addresses() {
        let throttle = Throttle::new(Policy {
            max_tracked: 100,
            ..policy()
        });
        throttle.succeeded("carol", ip("198.51.100.1"));
        for _ in 0..3 {
            throttle.failed(Some("carol"), ip("203.0.113.9"));
        }
        assert!(throttle.locked("carol", ip("203.0.113.10")).is_some());
        assert!(
            throttle.locked("carol", None).is_some(),
            "no address is never familiar"
        );
        assert!(throttle.locked("carol", ip("198.51.100.1")).is_none());
        // Only the last FAMILIAR successes are remembered.
        for i in 0..FAMILIAR {
            throttle.succeeded("carol", ip(&format!("198.51.100.{}", 10 + i)));
        }
        for _ in 0..3 {
            throttle.failed(Some("carol"), ip("203.0.113.9"));
        }
        assert!(throttle.locked("carol", ip("198.51.100.1")).is_some());
        assert!(throttle.locked("carol", ip("198.51.100.10")).is_none());
    }

    #[test]
    fn full_tables_evict_unlocked_entries_before_locked_ones() {
        let throttle = Throttle::new(policy()); // 4 keys per table
        for _ in 0..3 {
            throttle.failed(Some("victim"), None);
        }
        assert!(throttle.locked("victim", None).is_some());
        for i in 0..1000 {
            throttle.failed(Some(&format!("spray{i}")), None);
            throttle.failed(Some(&format!("spray{i}")), None);
        }
        assert!(
            throttle.locked("victim", None).is_some(),
            "the lock survived"
        );
        assert!(throttle.accounts.records.lock().entries.len() <= 4);
        // A new key still gets tracked and locked when the table is full.
        for _ in 0..3 {
            throttle.failed(Some("late"), None);
        }
        assert!(throttle.locked("late", None).is_some());
        let records = throttle.accounts.records.lock();
        assert_eq!(
            records.entries.len(),
            records.unlocked.len() + records.locked.len()
        );
    }

    #[test]
    fn when_every_entry_is_locked_the_soonest_to_end_goes() {
        let mut table: Bounded<u32, ()> = Bounded::new(2);
        let now = Instant::now();
        let (soon, late) = (now + Duration::from_secs(5), now + Duration::from_secs(50));
        table.update(1, now, || (), |_| {}, |_| (true, late));
        table.update(2, now, || (), |_| {}, |_| (true, soon));
        table.update(3, now, || (), |_| {}, |_| (false, now));
        assert!(table.get(&1).is_some() && table.get(&2).is_none());
        // A lock that has already ended goes before any unlocked entry.
        let mut table: Bounded<u32, ()> = Bounded::new(2);
        table.update(1, now, || (), |_| {}, |_| (false, now));
        table.update(2, now, || (), |_| {}, |_| (true, now));
        table.update(3, now, || (), |_| {}, |_| (false, now));
        assert!(table.get(&1).is_some() && table.get(&2).is_none());
    }

    #[test]
    fn a_failure_exactly_one_window_later_still_counts() {
        let policy = policy(); // 3 failures in 60 s
        let start = Instant::now();
        let mut record = Record::new(start);
        record.fail(&policy, start);
        record.fail(&policy, start);
        record.fail(&policy, start + policy.window);
        assert!(record.locked(start + policy.window).is_some());
    }

    #[test]
    fn a_record_whose_lock_has_ended_ranks_as_unlocked_when_it_fails_again() {
        let policy = Policy {
            max_tracked: 2,
            ..policy()
        };
        // Key 2 fails again once its lock has ended (at the very instant it ends, too): it is
        // an unlocked record that failed just now, worth more than key 1, which failed at t0.
        for after in [policy.lockout, policy.lockout + Duration::from_secs(1)] {
            let table = Table::new(policy.max_tracked);
            let t0 = Instant::now();
            table.fail(1, &policy, t0);
            for _ in 0..3 {
                table.fail(2, &policy, t0); // locked until t0 + lockout
            }
            let now = t0 + after;
            table.fail(2, &policy, now);
            table.fail(3, &policy, now);
            let records = table.records.lock();
            assert!(records.get(&2).is_some(), "{after:?}: key 2 evicted");
            assert!(records.get(&1).is_none(), "{after:?}: key 1 kept");
        }
    }

    #[test]
    fn addresses_that_used_up_their_registrations_are_kept_over_others() {
        let throttle = Throttle::new(Policy {
            max_tracked: 2,
            ..policy()
        });
        for _ in 0..2 {
            assert!(throttle.register(ip("192.0.2.1")).is_ok());
        }
        assert!(throttle.register(ip("192.0.2.2")).is_ok());
        assert!(throttle.register(ip("192.0.2.3")).is_ok()); // evicts .2, not .1
        assert!(
            throttle.register(ip("192.0.2.1")).is_err(),
            "the limit survived"
        );
    }

    #[test]
    fn registrations_are_limited_per_address_and_window() {
        let throttle = Throttle::new(policy());
        assert!(throttle.register(ip("192.0.2.1")).is_ok());
        assert!(throttle.register(ip("192.0.2.1")).is_ok());
        let wait = throttle.register(ip("192.0.2.1")).unwrap_err();
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        assert!(throttle.register(ip("192.0.2.2")).is_ok());
        for _ in 0..10 {
            assert!(throttle.register(None).is_ok(), "no address, no limit");
        }
    }
}
