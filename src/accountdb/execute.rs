//! One function runs any account-db request against any [`Store`]: account-db's server runs
//! what it reads off the wire through it, and every `Store` used in-process as
//! [`Accounts`](super::accounts::Accounts) (login-server's `--data`) runs its requests through
//! it too, so both answer alike. Adding an operation touches the vocabulary
//! ([`crate::protocol::accountdb`]), this file, and the [`Store`] backends.

use super::store::{Store, StoreError};
use super::{devices, throttling};
use crate::clock::Millis;
use crate::protocol::accountdb::{Acted, DbRequest, DbResponse};

/// Run `request` against `store` at `now` (the time its throttle records are judged by): the
/// response, or why the store could not answer. A [repeatable](DbRequest::repeatable) request
/// whose call lost its connection or node ([`StoreError::lost_node`]: PostgreSQL failed over,
/// say) is run once more, on a fresh connection; any other is answered with the error.
pub fn execute(
    store: &dyn Store,
    request: &DbRequest,
    now: Millis,
) -> Result<DbResponse, StoreError> {
    match run(store, request, now) {
        Err(e) if request.repeatable() && e.lost_node() => run(store, request, now),
        done => done,
    }
}

/// [`execute`], once.
fn run(store: &dyn Store, request: &DbRequest, now: Millis) -> Result<DbResponse, StoreError> {
    Ok(match request {
        DbRequest::Ping => {
            store.ping()?;
            DbResponse::Pong
        }
        DbRequest::Find { username } => match store.find(username)? {
            Some(account) => DbResponse::Found { account },
            None => DbResponse::NotFound,
        },
        DbRequest::Create {
            account,
            request_id,
        } => store.create(account, request_id)?.into(),
        DbRequest::UpdateHash {
            username,
            old,
            hash,
        } => DbResponse::updated(store.update_hash(username, old, hash)?),
        DbRequest::Login {
            username,
            origin,
            failures,
            unknown,
        } => throttling::login(store, username, *origin, failures, *unknown, now)?.into(),
        DbRequest::Failed {
            username,
            origin,
            failures,
        } => throttling::failed(store, username.as_deref(), *origin, failures, now)?
            .map_or(DbResponse::Counted, DbResponse::locked),
        DbRequest::Succeeded {
            username,
            origin,
            keep_failures,
        } => {
            throttling::succeeded(store, username, *origin, *keep_failures, now)?;
            DbResponse::Updated
        }
        DbRequest::Register {
            username,
            origin,
            limit,
        } => throttling::register(store, username, *origin, limit, now)?.into(),
        DbRequest::Session {
            account_id,
            sid,
            link,
        } => store.session(*account_id, sid, link.as_deref())?.into(),
        DbRequest::Device {
            device_id,
            secret_hash,
            origin,
            failures,
        } => {
            let lookup = devices::DeviceLookup {
                device_id,
                secret_hash,
                origin: *origin,
                t: failures,
            };
            devices::login(store, &lookup, now)?.into()
        }
        DbRequest::CreateGuest {
            device_id,
            secret_hash,
            origin,
            limit,
            request_id,
        } => devices::create_guest(
            store,
            device_id,
            secret_hash,
            *origin,
            limit,
            request_id,
            now,
        )?
        .into(),
        DbRequest::Claim {
            session,
            username,
            hash,
            request_id,
        } => match devices::claim(store, session, username, hash, request_id)? {
            Acted::Done => DbResponse::Created,
            acted => acted.into(),
        },
        DbRequest::LinkDevice {
            session,
            device_id,
            secret_hash,
        } => devices::link(store, session, device_id, secret_hash, now)?.into(),
        DbRequest::UnlinkDevice {
            session,
            device_id,
            until_ms,
        } => devices::unlink(store, session, device_id, now, *until_ms)?.into(),
        DbRequest::Devices { session } => match devices::list(store, session)? {
            Some(devices) => DbResponse::Devices { devices },
            None => DbResponse::Revoked,
        },
        DbRequest::Revoke { revocation } => {
            store.revoke_session(revocation)?;
            DbResponse::Updated
        }
        DbRequest::VoidSessions {
            account_id,
            before_ms,
            hash,
        } => DbResponse::updated(store.void_sessions(*account_id, *before_ms, hash.as_deref())?),
        DbRequest::Auth { .. } => DbResponse::Error {
            message: "already authenticated".into(),
        },
    })
}

/// [`execute`] for a run of `device` requests, with one read of the store
/// ([`devices::login_all`]): their responses in order, or the error of that read, for them all
/// (run once more if it lost its node). Requests of other kinds in `requests` are skipped.
pub fn execute_devices(
    store: &dyn Store,
    requests: &[DbRequest],
    now: Millis,
) -> Result<Vec<Result<DbResponse, StoreError>>, StoreError> {
    let lookups: Vec<devices::DeviceLookup> = requests
        .iter()
        .filter_map(|request| match request {
            DbRequest::Device {
                device_id,
                secret_hash,
                origin,
                failures,
            } => Some(devices::DeviceLookup {
                device_id,
                secret_hash,
                origin: *origin,
                t: failures,
            }),
            _ => None,
        })
        .collect();
    let found = match devices::login_all(store, &lookups, now) {
        Err(e) if e.lost_node() => devices::login_all(store, &lookups, now)?,
        done => done?,
    };
    Ok(found
        .into_iter()
        .map(|login| login.map(DbResponse::from))
        .collect())
}

/// [`execute`] for a run of `login` requests, with one read of the store
/// ([`throttling::login_all`]): their responses in order, or the error of that read, for
/// them all (run once more if it lost its node). Requests of other kinds in `requests` are
/// skipped.
pub fn execute_logins(
    store: &dyn Store,
    requests: &[DbRequest],
    now: Millis,
) -> Result<Vec<Result<DbResponse, StoreError>>, StoreError> {
    let lookups: Vec<throttling::Lookup> = requests
        .iter()
        .filter_map(|request| match request {
            DbRequest::Login {
                username,
                origin,
                failures,
                unknown,
            } => Some(throttling::Lookup {
                username,
                origin: *origin,
                t: failures,
                unknown: *unknown,
            }),
            _ => None,
        })
        .collect();
    // Reads: run once more when the first lost its node, as `execute` does.
    let logins = match throttling::login_all(store, &lookups, now) {
        Err(e) if e.lost_node() => throttling::login_all(store, &lookups, now)?,
        done => done?,
    };
    Ok(logins
        .into_iter()
        .map(|login| login.map(DbResponse::from))
        .collect())
}
