//! [`Accounts`]: what login-server asks of the account tier, one method per account-db request,
//! and [`Question`]s, the first request of most gateway requests (and a cheap registration's
//! second, its create), which a worker asks many at once ([`Accounts::ask_all`]).
//!
//! [`RemoteStore`](super::client::RemoteStore) asks account-db over the wire; every [`Store`]
//! answers the same questions in-process, through the [`throttling`] requests,
//! which is how account-db's server executes them.

use super::store::{Account, Created, Revocation, SessionState, Store, StoreError};
use super::throttling;
use crate::protocol::accountdb::{Login, Registering};
use crate::throttle::{Millis, Origin, RegisterLimit, Thresholds, Unknown};
use std::time::Duration;

/// A gateway request's first question to the account tier: asked for many requests at once by
/// [`Accounts::ask_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// [`Accounts::login`].
    Login {
        username: String,
        origin: Option<Origin>,
        failures: Thresholds,
        unknown: Unknown,
    },
    /// [`Accounts::register`].
    Register {
        username: String,
        origin: Option<Origin>,
        limit: RegisterLimit,
    },
    /// [`Accounts::session`].
    Session { account_id: u64, sid: String },
    /// [`Accounts::create`]: a registration's durable write, its outcome always resolved.
    Create {
        account: Account,
        request_id: String,
    },
}

/// The answer to a [`Question`], of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Login(Login),
    Register(Registering),
    Session(Option<SessionState>),
    Create(Created),
}

/// The account tier as login-server uses it. Shared between threads.
pub trait Accounts: Send + Sync {
    /// Answer one question through the method of its kind.
    fn ask(&self, question: &Question) -> Result<Answer, StoreError> {
        match question {
            Question::Login {
                username,
                origin,
                failures,
                unknown,
            } => self
                .login(username, *origin, failures, *unknown)
                .map(Answer::Login),
            Question::Register {
                username,
                origin,
                limit,
            } => self
                .register(username, *origin, limit)
                .map(Answer::Register),
            Question::Session { account_id, sid } => {
                self.session(*account_id, sid).map(Answer::Session)
            }
            Question::Create {
                account,
                request_id,
            } => self.create(account, request_id).map(Answer::Create),
        }
    }
    /// Answer every question, in order. Defaults to one after another;
    /// [`RemoteStore`](super::client::RemoteStore) sends them down one connection at once.
    fn ask_all(&self, questions: &[&Question]) -> Vec<Result<Answer, StoreError>> {
        questions.iter().map(|q| self.ask(q)).collect()
    }

    /// A login's lookup: the account, unless the account or `origin` is locked
    /// ([`throttling::login`]).
    fn login(
        &self,
        username: &str,
        origin: Option<Origin>,
        failures: &Thresholds,
        unknown: Unknown,
    ) -> Result<Login, StoreError>;
    /// A login failed ([`throttling::failed`]).
    fn failed(
        &self,
        username: Option<&str>,
        origin: Option<Origin>,
        failures: &Thresholds,
    ) -> Result<Option<Duration>, StoreError>;
    /// A login succeeded ([`throttling::succeeded`]).
    fn succeeded(
        &self,
        username: &str,
        origin: Option<Origin>,
        keep_failures: bool,
    ) -> Result<(), StoreError>;
    /// A registration's lookup ([`throttling::register`]).
    fn register(
        &self,
        username: &str,
        origin: Option<Origin>,
        limit: &RegisterLimit,
    ) -> Result<Registering, StoreError>;
    /// [`Store::find`].
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError>;
    /// [`Store::create`].
    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError>;
    /// [`Store::update_hash`].
    fn update_hash(&self, username: &str, old: &str, hash: &str) -> Result<bool, StoreError>;
    /// [`Store::ping`].
    fn ping(&self) -> Result<(), StoreError>;
    /// [`Store::session`].
    fn session(&self, account_id: u64, sid: &str) -> Result<Option<SessionState>, StoreError>;
    /// [`Store::revoke_session`].
    fn revoke_session(&self, revocation: &Revocation) -> Result<(), StoreError>;
    /// [`Store::void_sessions`].
    fn void_sessions(
        &self,
        account_id: u64,
        before_ms: Millis,
        hash: Option<&str>,
    ) -> Result<bool, StoreError>;
}

impl<S: Store> Accounts for S {
    fn login(
        &self,
        username: &str,
        origin: Option<Origin>,
        failures: &Thresholds,
        unknown: Unknown,
    ) -> Result<Login, StoreError> {
        throttling::login(self, username, origin, failures, unknown)
    }

    fn failed(
        &self,
        username: Option<&str>,
        origin: Option<Origin>,
        failures: &Thresholds,
    ) -> Result<Option<Duration>, StoreError> {
        throttling::failed(self, username, origin, failures)
    }

    fn succeeded(
        &self,
        username: &str,
        origin: Option<Origin>,
        keep_failures: bool,
    ) -> Result<(), StoreError> {
        throttling::succeeded(self, username, origin, keep_failures)
    }

    fn register(
        &self,
        username: &str,
        origin: Option<Origin>,
        limit: &RegisterLimit,
    ) -> Result<Registering, StoreError> {
        throttling::register(self, username, origin, limit)
    }

    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        Store::find(self, username)
    }

    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError> {
        Store::create(self, account, request_id)
    }

    fn update_hash(&self, username: &str, old: &str, hash: &str) -> Result<bool, StoreError> {
        Store::update_hash(self, username, old, hash)
    }

    fn ping(&self) -> Result<(), StoreError> {
        Store::ping(self)
    }

    fn session(&self, account_id: u64, sid: &str) -> Result<Option<SessionState>, StoreError> {
        Store::session(self, account_id, sid)
    }

    fn revoke_session(&self, revocation: &Revocation) -> Result<(), StoreError> {
        Store::revoke_session(self, revocation)
    }

    fn void_sessions(
        &self,
        account_id: u64,
        before_ms: Millis,
        hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        Store::void_sessions(self, account_id, before_ms, hash)
    }
}
