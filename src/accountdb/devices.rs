//! Devices run over a [`Store`]: account-db's side of a device's login (its throttle, and the
//! secret's hash compared in constant time), of a guest's creation (limited per address), and
//! of what a session asks of its own account (`claim`, `link_device`, `unlink_device`,
//! `devices`), each done only while the session stands.

use crate::accountdb::store::{Claimed, DeviceRead, Linked, Store, StoreError, Unlinked};
use crate::auth::secret::random_token;
use crate::clock::Millis;
use crate::protocol::accountdb::{Acted, Device, DeviceLogin, SessionRef, LAST_USED_RESOLUTION_MS};
use crate::protocol::gateway::RegisterFailure;
use crate::throttle::{address_key, device_key, guests_key, Origin, RegisterLimit, Thresholds};
use subtle::ConstantTimeEq;

/// A device's login: locked while the device (unless `origin` is familiar to it) or `origin`
/// is; else the device's account if `secret_hash` is the device's (a wrong one counted against
/// both, as a wrong password is). Writes nothing on a success that changes nothing: the
/// device's record is written when `origin` is new to it, its last use once an hour.
pub fn login(
    store: &dyn Store,
    lookup: &DeviceLookup,
    now: Millis,
) -> Result<DeviceLogin, StoreError> {
    let keys = lookup.keys();
    let read = store.find_device(lookup.device_id, &keys)?;
    lookup.decide(store, read, now)
}

/// [`login`] for many lookups, read in one go ([`Store::find_devices`]): the answers in order,
/// or the error of that read (for them all). A lookup whose records an earlier one of the run
/// counted a failure on reads afresh, so that a lock the run set holds for the rest of it.
pub fn login_all(
    store: &dyn Store,
    lookups: &[DeviceLookup],
    now: Millis,
) -> Result<Vec<Result<DeviceLogin, StoreError>>, StoreError> {
    let keys: Vec<Vec<String>> = lookups.iter().map(DeviceLookup::keys).collect();
    let reads: Vec<(&str, &[String])> = lookups
        .iter()
        .zip(&keys)
        .map(|(lookup, keys)| (lookup.device_id, keys.as_slice()))
        .collect();
    let found = store.find_devices(&reads)?;
    let mut counted: Vec<&String> = Vec::new();
    let mut answers = Vec::with_capacity(lookups.len());
    for ((lookup, keys), read) in lookups.iter().zip(&keys).zip(found) {
        let answer = match keys.iter().any(|key| counted.contains(&key)) {
            true => login(store, lookup, now),
            false => lookup.decide(store, read, now),
        };
        if let Ok(DeviceLogin::Wrong) = answer {
            counted.extend(keys);
        }
        answers.push(answer);
    }
    Ok(answers)
}

/// One device's login: [`login`]'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLookup<'a> {
    pub device_id: &'a str,
    /// SHA-256 of the secret the player sent, hex.
    pub secret_hash: &'a str,
    pub origin: Option<Origin>,
    pub t: &'a Thresholds,
}

impl DeviceLookup<'_> {
    /// The records it reads: the device's, and the address's if there is one.
    fn keys(&self) -> Vec<String> {
        let mut keys = vec![device_key(self.device_id)];
        keys.extend(self.origin.map(address_key));
        keys
    }

    /// The answer, given what the store holds.
    fn decide(
        &self,
        store: &dyn Store,
        (found, records): DeviceRead,
        now: Millis,
    ) -> Result<DeviceLogin, StoreError> {
        let DeviceLookup {
            device_id,
            secret_hash,
            origin,
            t,
        } = *self;
        let keys = self.keys();
        let [by_device, by_address] = [records.first(), records.get(1)];
        let familiar = by_device.is_some_and(|r| origin.is_some_and(|o| r.familiar.contains(&o)));
        let locked = by_device
            .filter(|_| !familiar)
            .and_then(|r| r.locked(now))
            .max(by_address.and_then(|r| r.locked(now)));
        if let Some(wait) = locked {
            return Ok(DeviceLogin::Locked(wait));
        }
        let Some((device, account)) = found else {
            return Ok(DeviceLogin::Unknown);
        };
        if !bool::from(device.secret_hash.as_bytes().ct_eq(secret_hash.as_bytes())) {
            store.update_records(&keys, now, &mut |records| {
                for record in records.iter_mut() {
                    if record.locked(now).is_none() {
                        record.fail(t, now);
                    }
                }
            })?;
            return Ok(DeviceLogin::Wrong);
        }
        if !by_device.is_some_and(|r| r.settled_for(origin, now)) {
            store.update_records(&keys[..1], now, &mut |records| {
                for record in records.iter_mut() {
                    record.succeed(origin, now, false);
                }
            })?;
        }
        if now - device.last_used_ms >= LAST_USED_RESOLUTION_MS {
            store.touch_device(device_id, now)?;
        }
        Ok(DeviceLogin::In {
            account,
            link: device.link,
            created: false,
        })
    }
}

/// A guest for a device's first login, counted against `origin` by `limit` (no address: not
/// counted here; login-server's `--guest-rate` bounds those). A create repeated by its
/// `request_id` is answered as the first was, and not counted again.
pub fn create_guest(
    store: &dyn Store,
    device_id: &str,
    secret_hash: &str,
    origin: Option<Origin>,
    limit: &RegisterLimit,
    request_id: &str,
    now: Millis,
) -> Result<DeviceLogin, StoreError> {
    let device = Device {
        device_id: device_id.to_string(),
        account_id: 0,
        secret_hash: secret_hash.to_string(),
        link: random_token(),
        linked_ms: now,
        last_used_ms: now,
    };
    let (known, _) = store.find_device(device_id, &[])?;
    if let (None, Some(origin)) = (&known, origin) {
        let mut verdict = Ok(());
        store.update_records(&[guests_key(origin)], now, &mut |records| {
            for record in records.iter_mut() {
                verdict = record.register(limit, now);
            }
        })?;
        if let Err(wait) = verdict {
            return Ok(DeviceLogin::Locked(wait));
        }
    }
    let Some((account, stored)) = store.create_guest(&device, request_id)? else {
        return Ok(DeviceLogin::Taken);
    };
    // The address that made the guest is its first familiar one, as a first successful login
    // makes it: a stranger's wrong secrets cannot lock the player out from there.
    if let (None, Some(_)) = (&known, origin) {
        store.update_records(&[device_key(device_id)], now, &mut |records| {
            for record in records.iter_mut() {
                record.succeed(origin, now, false);
            }
        })?;
    }
    Ok(DeviceLogin::In {
        account,
        link: stored.link,
        created: true,
    })
}

/// Whether `session` still stands: its account exists, and neither it nor its device link was
/// revoked, nor its account's sessions voided since it began.
fn stands(store: &dyn Store, session: &SessionRef) -> Result<bool, StoreError> {
    let state = store.session(session.account_id, &session.sid, session.link.as_deref())?;
    Ok(state.is_some_and(|state| state.stands(session.auth_ms)))
}

/// `claim`: the session's guest takes `username` and the password `hash`.
pub fn claim(
    store: &dyn Store,
    session: &SessionRef,
    username: &str,
    hash: &str,
    request_id: &str,
) -> Result<Acted, StoreError> {
    if !stands(store, session)? {
        return Ok(Acted::Revoked);
    }
    Ok(
        match store.claim(session.account_id, username, hash, request_id)? {
            Claimed::Done => Acted::Done,
            Claimed::Taken => Acted::Refused(RegisterFailure::UsernameTaken),
            Claimed::AlreadyClaimed => Acted::Refused(RegisterFailure::AlreadyClaimed),
            Claimed::NoAccount => Acted::Revoked,
        },
    )
}

/// `link_device`: the device joins the session's account.
pub fn link(
    store: &dyn Store,
    session: &SessionRef,
    device_id: &str,
    secret_hash: &str,
    now: Millis,
) -> Result<Acted, StoreError> {
    if !stands(store, session)? {
        return Ok(Acted::Revoked);
    }
    let device = Device {
        device_id: device_id.to_string(),
        account_id: session.account_id,
        secret_hash: secret_hash.to_string(),
        link: random_token(),
        linked_ms: now,
        last_used_ms: now,
    };
    Ok(match store.link_device(&device)? {
        Linked::Done => Acted::Done,
        Linked::Taken => Acted::Refused(RegisterFailure::DeviceTaken),
        Linked::TooMany => Acted::Refused(RegisterFailure::TooManyDevices),
    })
}

/// `unlink_device` at `now`: the device leaves the session's account; the sessions it began are
/// revoked until `until_ms`.
pub fn unlink(
    store: &dyn Store,
    session: &SessionRef,
    device_id: &str,
    now: Millis,
    until_ms: Millis,
) -> Result<Acted, StoreError> {
    if !stands(store, session)? {
        return Ok(Acted::Revoked);
    }
    Ok(
        match store.unlink_device(session.account_id, device_id, now, until_ms)? {
            Unlinked::Done => Acted::Done,
            Unlinked::NotLinked => Acted::Refused(RegisterFailure::UnknownDevice),
            Unlinked::LastCredential => Acted::Refused(RegisterFailure::LastCredential),
        },
    )
}

/// `devices`: the session's account's devices; `None` when the session no longer stands.
pub fn list(store: &dyn Store, session: &SessionRef) -> Result<Option<Vec<Device>>, StoreError> {
    if !stands(store, session)? {
        return Ok(None);
    }
    store.devices(session.account_id).map(Some)
}
