//! [`Accounts`]: the account tier as login-server uses it. Its vocabulary is the account-db
//! protocol's ([`DbRequest`], [`DbResponse`]): an implementation only sends requests
//! ([`Accounts::call`], and many at once, [`Accounts::call_all`]: a worker's round); the typed
//! calls (`login`, `create`, ...) are written once, here, over them.
//!
//! [`RemoteStore`](super::client::RemoteStore) sends them to account-db over the wire; every
//! [`Store`] answers them in-process through [`execute`], which is how account-db's server
//! answers them too.

use super::execute::execute;
use super::store::{Account, Created, Revocation, SessionState, Store, StoreError};
use crate::clock::Millis;
use crate::protocol::accountdb::{DbRequest, DbResponse, Login, Registering};
use crate::throttle::{Origin, RegisterLimit, Thresholds, Unknown};
use std::time::Duration;

/// A response that does not fit its request, as the error it is.
pub fn unexpected(response: DbResponse) -> StoreError {
    match response {
        DbResponse::Error { message } => StoreError::Remote(message),
        other => StoreError::Remote(format!("unexpected reply {other:?}")),
    }
}

/// The account tier as login-server uses it. Shared between threads.
pub trait Accounts: Send + Sync {
    /// Send one request: its response, or why the tier could not answer.
    fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError>;

    /// Send every request, the responses in order. Defaults to one after another;
    /// [`RemoteStore`](super::client::RemoteStore) sends them down one connection at once.
    fn call_all(&self, requests: &[&DbRequest]) -> Vec<Result<DbResponse, StoreError>> {
        requests.iter().map(|r| self.call(r)).collect()
    }

    /// A login's lookup: the account, unless the account or `origin` is locked
    /// ([`throttling::login`](super::throttling::login)).
    fn login(
        &self,
        username: &str,
        origin: Option<Origin>,
        failures: &Thresholds,
        unknown: Unknown,
    ) -> Result<Login, StoreError> {
        let request = DbRequest::Login {
            username: username.to_string(),
            origin,
            failures: *failures,
            unknown,
        };
        self.call(&request)?.into_login().map_err(unexpected)
    }

    /// A login failed ([`throttling::failed`](super::throttling::failed)): `Some` with the
    /// longest lock met, if a key was locked already.
    fn failed(
        &self,
        username: Option<&str>,
        origin: Option<Origin>,
        failures: &Thresholds,
    ) -> Result<Option<Duration>, StoreError> {
        let request = DbRequest::Failed {
            username: username.map(str::to_string),
            origin,
            failures: *failures,
        };
        self.call(&request)?.into_counted().map_err(unexpected)
    }

    /// A login succeeded ([`throttling::succeeded`](super::throttling::succeeded)).
    fn succeeded(
        &self,
        username: &str,
        origin: Option<Origin>,
        keep_failures: bool,
    ) -> Result<(), StoreError> {
        let request = DbRequest::Succeeded {
            username: username.to_string(),
            origin,
            keep_failures,
        };
        self.call(&request)?.into_done().map_err(unexpected)
    }

    /// A registration's lookup ([`throttling::register`](super::throttling::register)).
    fn register(
        &self,
        username: &str,
        origin: Option<Origin>,
        limit: &RegisterLimit,
    ) -> Result<Registering, StoreError> {
        let request = DbRequest::Register {
            username: username.to_string(),
            origin,
            limit: *limit,
        };
        self.call(&request)?.into_registering().map_err(unexpected)
    }

    /// [`Store::find`].
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let request = DbRequest::Find {
            username: username.to_string(),
        };
        self.call(&request)?.into_found().map_err(unexpected)
    }

    /// [`Store::create`].
    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError> {
        let request = DbRequest::Create {
            account: account.clone(),
            request_id: request_id.to_string(),
        };
        self.call(&request)?.into_created().map_err(unexpected)
    }

    /// [`Store::update_hash`].
    fn update_hash(&self, username: &str, old: &str, hash: &str) -> Result<bool, StoreError> {
        let request = DbRequest::UpdateHash {
            username: username.to_string(),
            old: old.to_string(),
            hash: hash.to_string(),
        };
        self.call(&request)?.into_updated().map_err(unexpected)
    }

    /// [`Store::ping`].
    fn ping(&self) -> Result<(), StoreError> {
        self.call(&DbRequest::Ping)?.into_done().map_err(unexpected)
    }

    /// [`Store::session`].
    fn session(&self, account_id: u64, sid: &str) -> Result<Option<SessionState>, StoreError> {
        let request = DbRequest::Session {
            account_id,
            sid: sid.to_string(),
            link: None,
        };
        self.call(&request)?.into_session().map_err(unexpected)
    }

    /// [`Store::revoke_session`].
    fn revoke_session(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let request = DbRequest::Revoke {
            revocation: revocation.clone(),
        };
        self.call(&request)?.into_done().map_err(unexpected)
    }

    /// [`Store::void_sessions`].
    fn void_sessions(
        &self,
        account_id: u64,
        before_ms: Millis,
        hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        let request = DbRequest::VoidSessions {
            account_id,
            before_ms,
            hash: hash.map(str::to_string),
        };
        self.call(&request)?.into_updated().map_err(unexpected)
    }
}

/// A store used in-process, its throttle records judged by the system's clock.
impl<S: Store> Accounts for S {
    fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError> {
        execute(self, request, crate::clock::now_ms())
    }
}
