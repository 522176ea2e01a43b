//! Brute-force throttling: failed logins per account and per player address, registrations per
//! player address, and the addresses an account is known to log in from. The records live in
//! the account store, so every login-server behind it sees the same counts and locks.
//!
//! After `max_failures` failures within `window`, the key is locked for `lockout`, doubling
//! with each further lockout up to `max_lockout`. A successful login clears the account's
//! record; a window that passes without failures forgets the count and the lockouts. Locks are
//! always finite: keeping an account locked takes ever more failed attempts, each of which the
//! per-address throttle slows down. A request refused because a key is locked is not counted.
//!
//! The player's address is the optional `"ip"` field that the gateway forwards (an IPv6
//! address counts by its /64, which one subscriber usually holds whole). The TCP peer is the
//! gateway itself and is never throttled: that would lock out every player at once.
//!
//! Lockout must not become a way to lock a player out: failures from any address count toward
//! an account's lock, but a locked account stays open to the addresses it logged in from
//! successfully before (the last [`FAMILIAR`] of them, for [`FAMILIAR_DAYS`] days). A request
//! without an address is never familiar. The account's record also tells when it last logged
//! in (to within [`LAST_LOGIN_RESOLUTION_MS`]: a success writes it only when older than that).
//!
//! [`Record`] is the pure logic, in wall-clock milliseconds (account-db's clock);
//! [`crate::accountdb::throttling`] runs it over any store, which reads and changes records
//! atomically. Records are not durable (a crash may
//! forget them) and the store bounds how many it keeps: see
//! [`crate::accountdb::store::Store::prune_records`] for the order in which they are evicted.

use crate::auth::names::fold;
use crate::clock::{millis, Millis};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Addresses remembered per account as familiar: those of its most recent successful logins.
pub const FAMILIAR: usize = 4;

/// Days an account's familiar addresses are kept after its last successful login.
pub const FAMILIAR_DAYS: i64 = 30;

/// How stale the recorded time of an account's last login may be: a success that finds it
/// older writes it again (one write per account per minute at most when nothing else changes).
pub const LAST_LOGIN_RESOLUTION_MS: Millis = 60_000;

pub(crate) const FAMILIAR_MS: Millis = FAMILIAR_DAYS * 86_400_000;

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
    /// Guests (first logins of new devices) per player address (IPv6: per /64) within
    /// --guest-window; more are answered "too many attempts" (8). Requests without an address
    /// are bounded by --guest-rate only. Defaults to 10.
    #[arg(
        long,
        value_name = "N",
        env = "LOGIN_SERVER_GUEST_LIMIT",
        default_value_t = 10
    )]
    pub guest_limit: u32,
    /// Seconds over which --guest-limit counts. Defaults to 3600.
    #[arg(
        long,
        value_name = "SECS",
        env = "LOGIN_SERVER_GUEST_WINDOW",
        default_value = "3600",
        value_parser = crate::config::seconds
    )]
    pub guest_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        crate::config::defaults()
    }
}

impl Policy {
    /// The thresholds for failed logins, as account-db's requests carry them.
    pub fn failures(&self) -> Thresholds {
        Thresholds {
            max_failures: self.max_failures,
            window_ms: millis(self.window),
            lockout_ms: millis(self.lockout),
            max_lockout_ms: millis(self.max_lockout),
        }
    }

    /// The limit on registrations, as account-db's requests carry it.
    pub fn registrations(&self) -> RegisterLimit {
        RegisterLimit {
            limit: self.register_limit,
            window_ms: millis(self.register_window),
            legacy_gate: false,
        }
    }

    /// The limit on guests created per address, as account-db's requests carry it.
    pub fn guests(&self) -> RegisterLimit {
        RegisterLimit {
            limit: self.guest_limit,
            window_ms: millis(self.guest_window),
            legacy_gate: false,
        }
    }
}

/// When failed logins lock a key: [`Policy`] on the wire, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub max_failures: u32,
    pub window_ms: Millis,
    pub lockout_ms: Millis,
    pub max_lockout_ms: Millis,
}

/// Registrations allowed per address and window, in milliseconds; and whether they wait for
/// the old server's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterLimit {
    pub limit: u32,
    pub window_ms: Millis,
    /// Refuse every registration ([`Registering::Closed`](crate::protocol::accountdb::Registering::Closed)) until the store records that the
    /// old server's names were imported ([`Store::legacy_names_imported`](crate::accountdb::store::Store::legacy_names_imported)): login-server sets
    /// it under `--legacy-db`, so that no new player takes a variant of an old player's name.
    /// Absent from older login-servers' requests: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_gate: bool,
}

/// Where a request came from, as throttling sees it: an IPv4 address, or an IPv6 /64. Written
/// `192.0.2.7` or `2001:db8:0:1::/64`.
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

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Origin::V4(v4) => write!(f, "{}", Ipv4Addr::from(v4)),
            Origin::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(prefix) << 64)),
        }
    }
}

impl std::str::FromStr for Origin {
    type Err = String;

    /// An address as [`Display`](std::fmt::Display) writes it; any IP address too.
    fn from_str(s: &str) -> Result<Origin, String> {
        let ip = match s.strip_suffix("/64") {
            Some(prefix) => prefix.parse::<Ipv6Addr>().map(IpAddr::V6),
            None => s.parse::<IpAddr>(),
        };
        ip.map(Origin::from)
            .map_err(|_| format!("{s:?} is not an address"))
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Origin, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The record key of the account named `username` (in any case).
pub fn account_key(username: &str) -> String {
    format!("name:{}", fold(username))
}

/// The record key of failed logins from `origin`.
pub fn address_key(origin: Origin) -> String {
    format!("addr:{origin}")
}

/// The record key of registrations from `origin`.
pub fn registrations_key(origin: Origin) -> String {
    format!("reg:{origin}")
}

/// The record key of the device `device_id` (its failed logins and familiar addresses).
pub fn device_key(device_id: &str) -> String {
    format!("dev:{device_id}")
}

/// The record key of guests created from `origin`.
pub fn guests_key(origin: Origin) -> String {
    format!("guest:{origin}")
}

/// What the store keeps per key: a count in a window and the locks it led to; for an account,
/// also its familiar addresses. The default is the empty record: nothing known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Failed logins (or registrations) counted in the current window.
    pub count: u32,
    pub window_start: Millis,
    /// Lockouts in a row, which double the next one.
    pub lockouts: u32,
    /// When the lock ends; at or before now (0 included): not locked.
    pub locked_until: Millis,
    /// The addresses of the account's last successful logins, newest first.
    pub familiar: Vec<Origin>,
    /// When the familiar addresses are forgotten: [`FAMILIAR_DAYS`] after the last successful
    /// login (0: none known).
    pub familiar_until: Millis,
    /// When the whole record is worth nothing and may be dropped; at or before now: drop it.
    pub expires: Millis,
}

/// The rank tiers of [`Record::rank`]: each is above every time a record holds.
const TIER: Millis = 1 << 44;

impl Record {
    /// When the account last logged in successfully, if known (see [`LAST_LOGIN_RESOLUTION_MS`]).
    pub fn last_login(&self) -> Option<Millis> {
        (self.familiar_until > 0).then(|| self.familiar_until - FAMILIAR_MS)
    }

    /// How long the key stays locked, as of `now`.
    pub fn locked(&self, now: Millis) -> Option<Duration> {
        let left = self.locked_until.saturating_sub(now);
        (left > 0).then(|| Duration::from_millis(left.unsigned_abs()))
    }

    /// Its eviction rank, written as of `now`: a full store drops the lowest first. Records
    /// that do not lock and know no familiar address rank by when they changed; above them,
    /// locks, by when they end; above all, familiar addresses, by when they are forgotten:
    /// only a successful login makes those, so no flood of failures (which makes locks) can
    /// push out what keeps a locked account open to its player.
    pub fn rank(&self, now: Millis) -> Millis {
        if !self.familiar.is_empty() {
            2 * TIER + self.familiar_until
        } else if self.locked_until > now {
            TIER + self.locked_until
        } else {
            now
        }
    }

    fn set_expiry(&mut self, window: Millis) {
        self.expires = (self.window_start.saturating_add(window))
            .max(self.locked_until)
            .max(self.familiar_until);
    }

    /// Count a failed login at `now`.
    pub fn fail(&mut self, t: &Thresholds, now: Millis) {
        if now - self.window_start > t.window_ms {
            if self.locked(now).is_none() {
                self.lockouts = 0;
            }
            self.count = 0;
            self.window_start = now;
        }
        self.count += 1;
        if self.count >= t.max_failures {
            let doubling = 2i64.saturating_pow(self.lockouts.min(16));
            let lock = t.lockout_ms.saturating_mul(doubling).min(t.max_lockout_ms);
            self.lockouts += 1;
            self.locked_until = now.saturating_add(lock);
            self.count = 0;
            self.window_start = now;
        }
        self.set_expiry(t.window_ms);
    }

    /// A successful login from `origin` at `now`: the failures and locks are forgotten (unless
    /// `keep_failures`), `now` is the last login, and `origin` becomes familiar (already
    /// familiar: it moves to the front). Kept, as under `--hide-user-existence`, a lock on the
    /// name lasts its time as it would on a name with no account (the owner's familiar
    /// addresses pass it either way), so its owner's login does not tell a watcher the name
    /// exists.
    pub fn succeed(&mut self, origin: Option<Origin>, now: Millis, keep_failures: bool) {
        if !keep_failures {
            self.unlock();
        }
        if let Some(origin) = origin {
            self.familiar.retain(|&known| known != origin);
            self.familiar.insert(0, origin);
            self.familiar.truncate(FAMILIAR);
        }
        self.familiar_until = now.saturating_add(FAMILIAR_MS);
        self.set_expiry(0);
    }

    /// An operator's unlock: the failures and locks are forgotten; the familiar addresses and
    /// the last login are kept.
    pub fn unlock(&mut self) {
        *self = Record {
            familiar: std::mem::take(&mut self.familiar),
            familiar_until: self.familiar_until,
            ..Record::default()
        };
        self.set_expiry(0);
    }

    /// Count a registration at `now`; `Err` with how long until another is allowed when the
    /// limit is used up in this window (then nothing is counted).
    pub fn register(&mut self, limit: &RegisterLimit, now: Millis) -> Result<(), Duration> {
        if now - self.window_start >= limit.window_ms {
            *self = Record {
                window_start: now,
                ..Record::default()
            };
        }
        if self.count >= limit.limit {
            let end = self.window_start.saturating_add(limit.window_ms);
            return Err(Duration::from_millis(
                end.saturating_sub(now).unsigned_abs(),
            ));
        }
        self.count += 1;
        if self.count >= limit.limit {
            // Used up: ranked as a lock until the window ends.
            self.locked_until = self.window_start.saturating_add(limit.window_ms);
        }
        self.set_expiry(limit.window_ms);
        Ok(())
    }

    /// Whether a successful login from `origin` at `now` need not be written to this (account)
    /// record: it would change nothing but a last login still recent enough.
    pub fn settled_for(&self, origin: Option<Origin>, now: Millis) -> bool {
        self.count == 0
            && self.lockouts == 0
            && self.locked_until == 0
            && origin.map_or(true, |origin| self.familiar.contains(&origin))
            && self
                .last_login()
                .is_some_and(|at| now - at < LAST_LOGIN_RESOLUTION_MS)
    }
}

/// What a login's lookup counts when the name is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// A failed login against the address.
    Address,
    /// A failed login against the address and the name. Sent by login-servers before
    /// 2026-11-27 under `--hide-user-existence` (account-db still answers them, so that
    /// login-servers can be upgraded one at a time); a login-server now counts an unknown name
    /// after its verification, as a wrong password is counted (see `Service::finish`).
    AddressAndName,
    /// Nothing yet: the old account server may know the name (`--legacy-db`), or
    /// (`--hide-user-existence`) the failure is counted after the verification.
    Nothing,
}

/// What the tests of throttling, here and over a store, share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub const S: Millis = 1000;

    pub fn thresholds() -> Thresholds {
        Thresholds {
            max_failures: 3,
            window_ms: 60 * S,
            lockout_ms: 10 * S,
            max_lockout_ms: 25 * S,
        }
    }

    pub fn ip(text: &str) -> Option<Origin> {
        Some(text.parse().unwrap())
    }

    pub fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn locks_after_the_threshold_and_doubles_up_to_the_cap() {
        let t = thresholds();
        let start = 1_000_000 * S;
        let mut record = Record::default();
        for _ in 0..2 {
            record.fail(&t, start);
        }
        assert_eq!(record.locked(start), None);
        assert_eq!(record.expires, start + 60 * S);
        record.fail(&t, start);
        assert_eq!(record.locked(start), secs(10));
        let later = start + 11 * S;
        for _ in 0..3 {
            record.fail(&t, later);
        }
        assert_eq!(record.locked(later), secs(20));
        let even_later = later + 21 * S;
        for _ in 0..3 {
            record.fail(&t, even_later);
        }
        assert_eq!(record.locked(even_later), secs(25), "capped");
        assert_eq!(record.expires, even_later + 60 * S);
        // A quiet window forgets everything.
        let much_later = even_later + 200 * S;
        record.fail(&t, much_later);
        assert_eq!((record.count, record.lockouts), (1, 0));
    }

    #[test]
    fn the_policy_goes_on_the_wire_in_milliseconds() {
        let policy = Policy::default();
        assert_eq!(
            policy.failures(),
            Thresholds {
                max_failures: 5,
                window_ms: 900_000,
                lockout_ms: 60_000,
                max_lockout_ms: 900_000,
            }
        );
        assert_eq!(
            policy.registrations(),
            RegisterLimit {
                limit: 5,
                window_ms: 3_600_000,
                legacy_gate: false,
            }
        );
    }

    #[test]
    fn a_lock_ends_at_its_last_millisecond() {
        let t = thresholds();
        let now = 1_000_000 * S;
        let mut record = Record::default();
        for _ in 0..3 {
            record.fail(&t, now);
        }
        let end = now + 10 * S;
        assert_eq!(record.locked(end - 1), Some(Duration::from_millis(1)));
        assert_eq!(record.locked(end), None);
        // Ranked as a lock until then, as an unlocked record from then on.
        assert_eq!(record.rank(end - 1), TIER + end);
        assert_eq!(record.rank(end), end);
    }

    #[test]
    fn a_lock_that_outlives_its_window_keeps_counting_lockouts() {
        let t = Thresholds {
            lockout_ms: 100 * S,
            max_lockout_ms: 1000 * S,
            ..thresholds()
        };
        let start = 1_000_000 * S;
        let mut record = Record::default();
        for _ in 0..3 {
            record.fail(&t, start);
        }
        assert_eq!(
            record.expires,
            start + 100 * S,
            "the lock outlasts the window"
        );
        // Still locked past the window: a failure now starts a new window but keeps the lock
        // and the count of lockouts, so the next lock doubles.
        let later = start + 61 * S;
        record.fail(&t, later);
        assert_eq!((record.count, record.lockouts), (1, 1));
        assert_eq!(record.locked(later), secs(39));
        record.fail(&t, later);
        record.fail(&t, later);
        assert_eq!(record.locked(later), secs(200));
    }

    #[test]
    fn a_failure_exactly_one_window_later_still_counts() {
        let t = thresholds();
        let start = 1_000_000 * S;
        let mut record = Record::default();
        record.fail(&t, start);
        record.fail(&t, start);
        record.fail(&t, start + t.window_ms);
        assert!(record.locked(start + t.window_ms).is_some());
    }

    #[test]
    fn a_success_that_keeps_failures_leaves_the_lock_and_remembers_the_address() {
        let t = thresholds();
        let now = 1_000_000 * S;
        let mut record = Record::default();
        for _ in 0..3 {
            record.fail(&t, now);
        }
        let lock = record.locked(now);
        assert!(lock.is_some());
        let before = record.clone();
        record.succeed(ip("198.51.100.1"), now, true);
        assert_eq!(record.locked(now), lock);
        assert_eq!(
            (record.count, record.lockouts, record.window_start),
            (before.count, before.lockouts, before.window_start)
        );
        assert_eq!(record.familiar, vec![ip("198.51.100.1").unwrap()]);
        assert_eq!(record.last_login(), Some(now));
        assert!(record.expires >= now + FAMILIAR_MS);
    }

    #[test]
    fn success_forgets_failures_and_remembers_the_last_addresses() {
        let t = thresholds();
        let now = 1_000_000 * S;
        let mut record = Record::default();
        for _ in 0..3 {
            record.fail(&t, now);
        }
        record.succeed(ip("198.51.100.1"), now, false);
        assert_eq!(record.locked(now), None);
        assert_eq!((record.count, record.lockouts), (0, 0));
        assert_eq!(record.familiar, vec![ip("198.51.100.1").unwrap()]);
        assert_eq!(record.expires, now + FAMILIAR_DAYS * 86_400 * S);
        for i in 0..FAMILIAR {
            record.succeed(ip(&format!("198.51.100.{}", 10 + i)), now, false);
        }
        assert_eq!(record.familiar.len(), FAMILIAR);
        assert!(!record.familiar.contains(&ip("198.51.100.1").unwrap()));
        // Already familiar: moved to the front, not added twice.
        record.succeed(ip("198.51.100.11"), now + S, false);
        assert_eq!(record.familiar.len(), FAMILIAR);
        assert_eq!(Some(record.familiar[0]), ip("198.51.100.11"));
        let later = now + S + LAST_LOGIN_RESOLUTION_MS - 1;
        assert!(record.settled_for(ip("198.51.100.12"), later));
        assert!(!record.settled_for(ip("203.0.113.1"), later));
        assert!(record.settled_for(None, later));
        // Once the last login is a minute old, a success is written again, for its time.
        assert!(!record.settled_for(None, later + 1));
        // Without an address a success forgets the failures and is the last login; the
        // familiar addresses are kept, and for as long after it.
        record.fail(&t, now + 2 * S);
        record.succeed(None, now + 3 * S, false);
        assert_eq!(record.familiar.len(), FAMILIAR);
        assert_eq!(record.last_login(), Some(now + 3 * S));
        assert_eq!(
            (record.count, record.expires),
            (0, now + 3 * S + FAMILIAR_MS)
        );
        let mut plain = Record::default();
        assert_eq!(plain.last_login(), None);
        assert!(!plain.settled_for(None, now), "a first login is written");
        plain.fail(&t, now);
        assert!(!plain.settled_for(None, now));
        plain.succeed(None, now, false);
        let expected = Record {
            familiar_until: now + FAMILIAR_MS,
            expires: now + FAMILIAR_MS,
            ..Record::default()
        };
        assert_eq!(plain, expected, "nothing left but when it logged in");
    }

    #[test]
    fn registrations_are_limited_per_window() {
        let limit = RegisterLimit {
            limit: 2,
            window_ms: 60 * S,
            legacy_gate: false,
        };
        let now = 1_000_000 * S;
        let mut record = Record::default();
        assert_eq!(record.register(&limit, now), Ok(()));
        assert_eq!(record.locked(now), None);
        assert_eq!(record.register(&limit, now + S), Ok(()));
        assert_eq!(
            record.register(&limit, now + 2 * S),
            Err(Duration::from_secs(58))
        );
        assert_eq!(record.count, 2, "a refused registration is not counted");
        assert_eq!(record.expires, now + 60 * S);
        assert_eq!(
            record.register(&limit, now + 60 * S),
            Ok(()),
            "a new window"
        );
        assert_eq!(record.count, 1);
    }

    #[test]
    fn familiar_addresses_outrank_locks_which_outrank_the_rest() {
        let t = thresholds();
        let now = 1_000_000 * S;
        let mut plain = Record::default();
        plain.fail(&t, now);
        let mut familiar = Record::default();
        familiar.succeed(ip("192.0.2.1"), now - 1000 * S, false);
        let mut locked = Record::default();
        for _ in 0..3 {
            locked.fail(&t, now - 9 * S); // ends in 1 s
        }
        assert_eq!(plain.rank(now), now);
        assert!(plain.rank(now) < locked.rank(now));
        assert!(locked.rank(now) < familiar.rank(now));
        // Tiers, whatever the times: a plain record changed later still goes before a lock
        // ending sooner, and a lock ending later still goes before familiar addresses.
        assert!(plain.rank(now + 10 * S) < locked.rank(now));
        let mut long_lock = locked.clone();
        long_lock.locked_until = familiar.familiar_until + 1000 * S;
        assert!(long_lock.rank(now) < familiar.rank(now));
        let mut fresher = familiar.clone();
        fresher.succeed(ip("192.0.2.2"), now, false);
        assert!(
            familiar.rank(now) < fresher.rank(now),
            "older familiar ones go first"
        );
        let mut later_lock = locked.clone();
        later_lock.locked_until += S;
        assert!(
            locked.rank(now) < later_lock.rank(now),
            "the soonest to end goes first"
        );
        // Once its lock has ended, a rewritten record ranks by when it changed.
        assert_eq!(locked.rank(now + 10 * S), now + 10 * S);
    }

    #[test]
    fn origins_are_written_and_read_back() {
        for (text, written) in [
            ("192.0.2.7", "192.0.2.7"),
            ("2001:db8:0:1:aa::7", "2001:db8:0:1::/64"),
            ("2001:db8:0:1::/64", "2001:db8:0:1::/64"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
        ] {
            let origin: Origin = text.parse().unwrap();
            assert_eq!(origin.to_string(), written);
            assert_eq!(written.parse::<Origin>(), Ok(origin));
            let json = serde_json::to_string(&origin).unwrap();
            assert_eq!(serde_json::from_str::<Origin>(&json).unwrap(), origin);
        }
        assert!("192.0.2.7/64".parse::<Origin>().is_err());
        assert!("name".parse::<Origin>().is_err());
        assert!(serde_json::from_str::<Origin>("\"999.1.1.1\"").is_err());
    }
}
