//! Throttling run over a [`Store`]: account-db's side of a login's lookup, a failure, a
//! success, a registration's lookup, and an operator's unlock. The pure record logic, and
//! what it means, is [`crate::throttle`].

use crate::accountdb::store::{Account, Store, StoreError};
use crate::clock::{now_ms, Millis};
use crate::protocol::accountdb::{Login, Registering};
use crate::throttle::{
    account_key, address_key, registrations_key, Origin, Record, RegisterLimit, Thresholds, Unknown,
};
use std::time::Duration;

/// A login's lookup, in one read: the account named `username` with the lock state of the
/// account and of `origin`. An unknown name is counted as a failed login at once, as `unknown`
/// says, unless locked.
pub fn login(
    store: &dyn Store,
    username: &str,
    origin: Option<Origin>,
    t: &Thresholds,
    unknown: Unknown,
    now: Millis,
) -> Result<Login, StoreError> {
    let lookup = Lookup {
        username,
        origin,
        t,
        unknown,
    };
    let keys = lookup.keys();
    let found = store.find_for_login(username, &keys)?;
    lookup.decide(store, found, now)
}

/// [`login`] for many lookups, read in one go ([`Store::find_for_logins`]): the answers in
/// order, or the error of that read (for them all: a store that cannot read one would make
/// each of them wait for its own failure).
pub fn login_all(
    store: &dyn Store,
    lookups: &[Lookup],
    now: Millis,
) -> Result<Vec<Result<Login, StoreError>>, StoreError> {
    let keys: Vec<Vec<String>> = lookups.iter().map(Lookup::keys).collect();
    let reads: Vec<(&str, &[String])> = lookups
        .iter()
        .zip(&keys)
        .map(|(lookup, keys)| (lookup.username, keys.as_slice()))
        .collect();
    let found = store.find_for_logins(&reads)?;
    // An unknown name's lookup counts a failure against its address (and name): a later
    // lookup of the run from that address (or of that name) reads afresh, so that a lock the
    // run itself set holds for the rest of it.
    let mut counted: Vec<String> = Vec::new();
    let mut answers = Vec::with_capacity(lookups.len());
    for (lookup, found) in lookups.iter().zip(found) {
        let keys = lookup.keys();
        let stale = keys.iter().any(|key| counted.contains(key));
        let unknown = found.0.is_none() && lookup.unknown != Unknown::Nothing;
        answers.push(match stale {
            true => login(
                store,
                lookup.username,
                lookup.origin,
                lookup.t,
                lookup.unknown,
                now,
            ),
            false => lookup.decide(store, found, now),
        });
        if unknown {
            counted.extend(keys);
        }
    }
    Ok(answers)
}

/// One login's lookup: [`login`]'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub username: &'a str,
    pub origin: Option<Origin>,
    pub t: &'a Thresholds,
    pub unknown: Unknown,
}

impl Lookup<'_> {
    /// The records it reads: the account's, and the address's if there is one.
    fn keys(&self) -> Vec<String> {
        let mut keys = vec![account_key(self.username)];
        keys.extend(self.origin.map(address_key));
        keys
    }

    /// The answer, given what the store holds.
    fn decide(
        &self,
        store: &dyn Store,
        (account, records): (Option<Account>, Vec<Record>),
        now: Millis,
    ) -> Result<Login, StoreError> {
        let Lookup {
            username,
            origin,
            t,
            unknown,
        } = *self;
        let [by_name, by_address] = [records.first(), records.get(1)];
        let by_name = by_name.filter(|r| !origin.is_some_and(|o| r.familiar.contains(&o)));
        let locked = by_name
            .and_then(|r| r.locked(now))
            .max(by_address.and_then(|r| r.locked(now)));
        if let Some(wait) = locked {
            return Ok(Login::Locked(wait));
        }
        if account.is_none() {
            let counted = match unknown {
                Unknown::Nothing => None,
                Unknown::Address => Some(failed(store, None, origin, t, now)?),
                Unknown::AddressAndName => Some(failed(store, Some(username), origin, t, now)?),
            };
            if let Some(Some(wait)) = counted {
                return Ok(Login::Locked(wait));
            }
        }
        let settled = records.first().is_some_and(|r| r.settled_for(origin, now));
        Ok(Login::Open { account, settled })
    }
}

/// A login failed: count it against `username` (if given) and `origin`. Keys locked already
/// are not counted; `Some` with the longest such lock.
pub fn failed(
    store: &dyn Store,
    username: Option<&str>,
    origin: Option<Origin>,
    t: &Thresholds,
    now: Millis,
) -> Result<Option<Duration>, StoreError> {
    let keys: Vec<String> = username
        .map(account_key)
        .into_iter()
        .chain(origin.map(address_key))
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let mut locked = None;
    store.update_records(&keys, now, &mut |records| {
        for record in records.iter_mut() {
            match record.locked(now) {
                Some(wait) => locked = locked.max(Some(wait)),
                None => record.fail(t, now),
            }
        }
    })?;
    Ok(locked)
}

/// A login for `username` from `origin` succeeded: the account's failures are forgotten and
/// `origin` becomes familiar.
pub fn succeeded(
    store: &dyn Store,
    username: &str,
    origin: Option<Origin>,
    keep_failures: bool,
    now: Millis,
) -> Result<(), StoreError> {
    store.update_records(&[account_key(username)], now, &mut |records| {
        for record in records.iter_mut() {
            record.succeed(origin, now, keep_failures);
        }
    })
}

/// An operator's unlock: the account's failures and locks are forgotten (its familiar
/// addresses are kept), for every login-server at once.
pub fn unlock(store: &dyn Store, username: &str) -> Result<(), StoreError> {
    let now = now_ms();
    store.update_records(&[account_key(username)], now, &mut |records| {
        for record in records.iter_mut() {
            record.unlock();
        }
    })
}

/// The account's throttle record as it stands (the empty one if there is none).
pub fn record(store: &dyn Store, username: &str) -> Result<Record, StoreError> {
    let (_, records) = store.find_for_login(username, &[account_key(username)])?;
    Ok(records.into_iter().next().unwrap_or_default())
}

/// A registration's lookup: closed while `limit` waits for the old server's names and the
/// store has not recorded them; else count it against `origin` (no address: no limit), then
/// say whether the name is free.
pub fn register(
    store: &dyn Store,
    username: &str,
    origin: Option<Origin>,
    limit: &RegisterLimit,
    now: Millis,
) -> Result<Registering, StoreError> {
    if limit.legacy_gate && !store.legacy_names_imported()? {
        return Ok(Registering::Closed);
    }
    if let Some(origin) = origin {
        let mut verdict = Ok(());
        store.update_records(&[registrations_key(origin)], now, &mut |records| {
            for record in records.iter_mut() {
                verdict = record.register(limit, now);
            }
        })?;
        if let Err(wait) = verdict {
            return Ok(Registering::Locked(wait));
        }
    }
    Ok(match store.find(username)? {
        Some(_) => Registering::Taken,
        None => Registering::Free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountdb::store::SqliteStore;
    use crate::throttle::test_support::*;
    use crate::throttle::FAMILIAR_MS;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn create(store: &SqliteStore, name: &str) {
        let account = Account::new(name, "hash");
        Store::create(store, &account, name).unwrap();
    }

    #[test]
    fn an_unlock_forgets_failures_and_keeps_the_last_login_and_addresses() {
        let t = thresholds();
        let now = 1_000_000 * S;
        let mut record = Record::default();
        record.succeed(ip("198.51.100.1"), now, false);
        for _ in 0..3 {
            record.fail(&t, now + S);
        }
        assert!(record.locked(now + S).is_some());
        record.unlock();
        assert_eq!(record.locked(now + S), None);
        assert_eq!((record.count, record.lockouts), (0, 0));
        assert_eq!(record.last_login(), Some(now), "an unlock is no login");
        assert_eq!(record.familiar, vec![ip("198.51.100.1").unwrap()]);
        assert_eq!(record.expires, now + FAMILIAR_MS);
    }

    #[test]
    fn lookups_read_together_are_answered_as_alone() {
        let (_dir, store) = store();
        let t = thresholds();
        create(&store, "dora");
        for _ in 0..3 {
            failed(&store, Some("locked-out"), None, &t, now_ms()).unwrap();
        }
        let lookup = |username, origin| Lookup {
            username,
            origin,
            t: &t,
            unknown: Unknown::Nothing,
        };
        let lookups = [
            lookup("DORA", None),
            lookup("nobody", ip("192.0.2.1")),
            lookup("locked-out", None),
            lookup("dora", ip("192.0.2.2")),
        ];
        let together: Vec<Login> = login_all(&store, &lookups, now_ms())
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let alone: Vec<Login> = lookups
            .iter()
            .map(|l| login(&store, l.username, l.origin, l.t, l.unknown, now_ms()).unwrap())
            .collect();
        // Lock times count down between the two reads: compared whole seconds up.
        let seconds = |logins: Vec<Login>| -> Vec<Login> {
            let up = |wait: Duration| Duration::from_secs(wait.as_millis().div_ceil(1000) as u64);
            logins
                .into_iter()
                .map(|login| match login {
                    Login::Locked(wait) => Login::Locked(up(wait)),
                    open => open,
                })
                .collect()
        };
        let (together, alone) = (seconds(together), seconds(alone));
        assert_eq!(together, alone);
        assert_eq!(together.len(), 4);
        assert!(
            matches!(&together[0], Login::Open { account: Some(a), .. } if a.username == "dora")
        );
        assert!(matches!(together[1], Login::Open { account: None, .. }));
        assert!(matches!(together[2], Login::Locked(_)));
        // Unknown names from one address, read in one run, lock the address for the rest of
        // the run: a real account's lookup after them is refused, not let through on the
        // records read before the failures were counted.
        let guess = |username| Lookup {
            username,
            origin: ip("203.0.113.9"),
            t: &t,
            unknown: Unknown::Address,
        };
        let run = [guess("no-1"), guess("no-2"), guess("no-3"), guess("dora")];
        let answers = login_all(&store, &run, now_ms()).unwrap();
        assert!(
            matches!(answers[3], Ok(Login::Locked(_))),
            "{:?}",
            answers[3]
        );
        // An operator's unlock opens it for every lookup.
        unlock(&store, "LOCKED-OUT").unwrap();
        let open = login(&store, "locked-out", None, &t, Unknown::Nothing, now_ms()).unwrap();
        assert!(matches!(open, Login::Open { account: None, .. }));
    }

    fn open(login: Login) -> (Option<Account>, bool) {
        match login {
            Login::Open { account, settled } => (account, settled),
            Login::Locked(wait) => panic!("locked for {wait:?}"),
        }
    }

    #[test]
    fn failures_lock_the_account_in_any_case_and_the_address() {
        let (_dir, store) = store();
        let t = thresholds();
        create(&store, "alice");
        for _ in 0..3 {
            assert_eq!(
                failed(&store, Some("alice"), ip("10.0.0.1"), &t, now_ms()).unwrap(),
                None
            );
        }
        assert!(matches!(
            login(&store, "ALICE", None, &t, Unknown::Address, now_ms()).unwrap(),
            Login::Locked(_)
        ));
        assert!(matches!(
            login(
                &store,
                "bob",
                ip("10.0.0.1"),
                &t,
                Unknown::Address,
                now_ms()
            )
            .unwrap(),
            Login::Locked(_)
        ));
        assert_eq!(
            open(
                login(
                    &store,
                    "bob",
                    ip("10.0.0.2"),
                    &t,
                    Unknown::Address,
                    now_ms()
                )
                .unwrap()
            )
            .0,
            None
        );
        // Refused while locked, and not counted: the address's record is as it was.
        let before = store
            .find_for_login("x", &[address_key(ip("10.0.0.1").unwrap())])
            .unwrap()
            .1;
        let wait = failed(&store, None, ip("10.0.0.1"), &t, now_ms())
            .unwrap()
            .unwrap();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        let after = store
            .find_for_login("x", &[address_key(ip("10.0.0.1").unwrap())])
            .unwrap()
            .1;
        assert_eq!(before, after);
        // On the wall clock: the lock began just now.
        let started = before[0].window_start;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((wall - started).abs() < 60_000, "{started}");
        // Success clears the account, not the address.
        succeeded(&store, "Alice", None, false, now_ms()).unwrap();
        let (account, settled) =
            open(login(&store, "alice", None, &t, Unknown::Address, now_ms()).unwrap());
        assert_eq!(account.map(|a| a.username).as_deref(), Some("alice"));
        assert!(settled);
        assert!(matches!(
            login(
                &store,
                "alice",
                ip("10.0.0.1"),
                &t,
                Unknown::Address,
                now_ms()
            )
            .unwrap(),
            Login::Locked(_)
        ));
    }

    #[test]
    fn a_locked_account_stays_open_to_its_familiar_addresses() {
        let (_dir, store) = store();
        let t = thresholds();
        create(&store, "carol");
        let (_, settled) = open(
            login(
                &store,
                "carol",
                ip("198.51.100.1"),
                &t,
                Unknown::Address,
                now_ms(),
            )
            .unwrap(),
        );
        assert!(!settled, "a new address is news");
        succeeded(&store, "carol", ip("198.51.100.1"), false, now_ms()).unwrap();
        assert!(
            open(
                login(
                    &store,
                    "carol",
                    ip("198.51.100.1"),
                    &t,
                    Unknown::Address,
                    now_ms()
                )
                .unwrap()
            )
            .1
        );
        for i in 0..3 {
            failed(
                &store,
                Some("carol"),
                ip(&format!("203.0.113.{i}")),
                &t,
                now_ms(),
            )
            .unwrap();
        }
        assert!(matches!(
            login(
                &store,
                "carol",
                ip("203.0.113.10"),
                &t,
                Unknown::Address,
                now_ms()
            )
            .unwrap(),
            Login::Locked(_)
        ));
        assert!(
            matches!(
                login(&store, "carol", None, &t, Unknown::Address, now_ms()).unwrap(),
                Login::Locked(_)
            ),
            "no address is never familiar"
        );
        let (account, settled) = open(
            login(
                &store,
                "carol",
                ip("198.51.100.1"),
                &t,
                Unknown::Address,
                now_ms(),
            )
            .unwrap(),
        );
        assert!(account.is_some());
        assert!(!settled, "its success must clear the lock");
    }

    #[test]
    fn an_unknown_name_counts_against_the_address_and_with_hiding_the_name() {
        let (_dir, store) = store();
        let t = thresholds();
        for _ in 0..3 {
            assert_eq!(
                open(
                    login(
                        &store,
                        "ghost",
                        ip("10.0.0.9"),
                        &t,
                        Unknown::Address,
                        now_ms()
                    )
                    .unwrap()
                )
                .0,
                None
            );
        }
        assert!(matches!(
            login(
                &store,
                "other",
                ip("10.0.0.9"),
                &t,
                Unknown::Address,
                now_ms()
            )
            .unwrap(),
            Login::Locked(_)
        ));
        for i in 0..3 {
            open(
                login(
                    &store,
                    "phantom",
                    ip(&format!("10.1.0.{i}")),
                    &t,
                    Unknown::AddressAndName,
                    now_ms(),
                )
                .unwrap(),
            );
        }
        assert!(matches!(
            login(
                &store,
                "PHANTOM",
                ip("10.2.0.1"),
                &t,
                Unknown::AddressAndName,
                now_ms()
            )
            .unwrap(),
            Login::Locked(_)
        ));
        // Without an address and without hiding, nothing is written.
        for _ in 0..5 {
            open(login(&store, "nobody", None, &t, Unknown::Address, now_ms()).unwrap());
        }
        assert_eq!(store.prune_records(now_ms(), u64::MAX).unwrap(), 0);
        let keys = [account_key("nobody")];
        assert_eq!(
            store.find_for_login("x", &keys).unwrap().1,
            vec![Record::default()]
        );
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let (_dir, store) = store();
        let limit = RegisterLimit {
            limit: 2,
            window_ms: 60 * S,
            legacy_gate: false,
        };
        create(&store, "taken");
        assert_eq!(
            register(&store, "Taken", ip("192.0.2.1"), &limit, now_ms()).unwrap(),
            Registering::Taken
        );
        assert_eq!(
            register(&store, "free", ip("192.0.2.1"), &limit, now_ms()).unwrap(),
            Registering::Free
        );
        let Registering::Locked(wait) =
            register(&store, "free", ip("192.0.2.1"), &limit, now_ms()).unwrap()
        else {
            panic!("not limited");
        };
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        assert_eq!(
            register(&store, "free", ip("192.0.2.2"), &limit, now_ms()).unwrap(),
            Registering::Free
        );
        for _ in 0..5 {
            assert_eq!(
                register(&store, "free", None, &limit, now_ms()).unwrap(),
                Registering::Free,
                "no address, no limit"
            );
        }
    }
}
