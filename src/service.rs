//! Login, registration and sessions: validate, look up, verify or hash, create; issue, check
//! and revoke session tokens. No sockets.
//!
//! A request runs in steps, so that a worker can ask the store for many requests at once and
//! keep the expensive step off the workers: [`Service::begin`] does what comes before the
//! request's first store question (parsing a token, validation) and either answers (a name no
//! account can have, counted against the address; a logout, revoked) or says what to ask the
//! store (a [`DbRequest`]); [`Service::resume`] takes the response and either answers or hands
//! back a [`HashTask`]; [`Service::finish`] does the argon2 work the task needs, and for a
//! registration the store write after it. The server runs `finish` on its hash threads unless
//! the task is quick ([`Service::is_quick`]): then the worker runs [`Service::finish_quick`],
//! which leaves a registration's store write to ask like a lookup, with others.

use crate::accountdb::accounts::{unexpected, Accounts};
use crate::accountdb::store::{Account, Created, Revocation, SessionState, StoreError};
use crate::auth::names::{self, fold, normalize_password, Rules};
use crate::auth::password::{self, HashError, Hasher, Memory};
use crate::auth::secret::random_token;
use crate::legacy::{self, Known, LegacyDb, SpellingAsks, RESERVED_HASH};
use crate::metrics::LegacyOutcome;
use crate::metrics::Metrics;
use crate::protocol::accountdb::{DbRequest, DbResponse, Login, Registering};
use crate::protocol::gateway::{Op, RegisterFailure, Reply, Request, SupportReason};
use crate::throttle::{millis, now_ms, Millis, Origin, Policy, RegisterLimit, Unknown};
use crate::tokens::{Claims, Invalid, Session, Tokens};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The account's ban, if it is in force now. Told only to whoever proved the password: to
/// anyone else a banned account is like any other.
fn banned(account: &Account) -> Option<&crate::accountdb::store::Ban> {
    account.ban.as_ref().filter(|ban| ban.until_ms > now_ms())
}

/// What [`Service::begin`] decided.
pub enum Begun {
    /// Decided without the store.
    Step(Step),
    /// It needs the store's answer to a question: ask it (with others, see
    /// [`Accounts::call_all`]), then [`Service::resume`].
    Asking(Asking),
}

/// A gateway request waiting for the response to its account-db request. Holds a password:
/// it has no `Debug`.
pub struct Asking {
    /// What to ask the account tier.
    pub request: DbRequest,
    /// What to do with the response.
    then: Then,
}

/// What a request does with its answer.
enum Then {
    /// A login's (or password change's) lookup.
    Lookup(Pending),
    /// A registration's check.
    Register { username: String, password: String },
    /// A registration's create.
    Create { username: String },
    /// `verify`, `refresh` or `logout_all`: the session's state.
    Session {
        op: Op,
        claims: Claims,
        account_id: u64,
    },
}

/// A login (or password change) waiting for its lookup.
struct Pending {
    username: String,
    password: String,
    origin: Option<Origin>,
    /// `change_password`'s new password.
    new_password: Option<String>,
    turn: NameTurn,
}

/// What [`Service::resume`] decided.
pub enum Step {
    /// The answer, reached without hashing.
    Done(Reply),
    /// The answer needs argon2: run [`Service::finish`] on it.
    Hash(HashTask),
}

/// What [`Service::finish_quick`] decided.
pub enum Finished {
    /// The answer.
    Done(Reply),
    /// A registration, hashed: its create is to be asked (with others, see
    /// [`Accounts::call_all`]), then [`Service::resume`].
    Asking(Asking),
    /// A wrong password to ask the old server about (see [`Finish::AskOld`]).
    AskOld(HashTask),
}

/// What [`Service::finish`] came to.
pub enum Finish {
    /// The reply.
    Reply(Reply),
    /// A wrong password typed in another case than its account's, under `--legacy-db`: the
    /// old server is to be asked about the spelling typed, on the old-server stage, before the
    /// failure is counted ([`Service::asks_legacy`] says so of this task).
    AskOld(HashTask),
}

/// Why a password check did not let a login on.
enum Refused {
    /// The reply: a wrong password (counted), a name conflict, an error.
    Reply(Box<Reply>),
    /// Not counted yet: ask the old server first (see [`Finish::AskOld`]).
    AskOld,
}

impl Refused {
    /// What `found`'s `op` (a login or a password change) finishes with.
    fn finish(self, found: Verification, op: Op) -> Finish {
        match self {
            Refused::Reply(reply) => Finish::Reply(*reply),
            Refused::AskOld => Finish::AskOld(HashTask(Task::Conflict { found, op })),
        }
    }
}

/// Argon2 work still to do for one request. Holds a password: it has no `Debug`.
pub struct HashTask(Task);

/// A login's account, found, and what it takes to verify the password.
struct Verification {
    account: Account,
    /// The name as the player typed it: the account's spelling, or another case of it.
    typed: String,
    password: String,
    origin: Option<Origin>,
    /// A success changes nothing the store keeps: it need not be reported.
    settled: bool,
    /// When the account was read: a session it leads to begins then.
    looked_up: Millis,
    /// This name's turn on this login-server, until the password is verified.
    _turn: NameTurn,
}

/// Logins (or password changes) of one name checked at once on one login-server, at most. A
/// burst of concurrent guesses at an account thus gets at most this many past the lookup
/// before its first failures are counted: at most `--throttle-failures` + 15 guesses before
/// the lock, where it would be the whole burst (up to the hash queue, 1024). Legitimate logins
/// of one account rarely overlap; a load test's (a few hundred in flight over a hundred
/// accounts) stays well under it.
pub const TURNS_PER_NAME: u8 = 16;

/// Names with logins (or password changes) being checked on this login-server, and how many
/// each. Bounded by the requests in progress (workers, hash queue, hash threads).
#[derive(Default)]
struct Verifying(Mutex<HashMap<String, u8>>);

impl Verifying {
    /// A turn of `username` (in any case), unless [`TURNS_PER_NAME`] are taken.
    fn take(self: &Arc<Self>, username: &str) -> Option<NameTurn> {
        let name = fold(username);
        let mut names = self.0.lock();
        let taken = names.entry(name.clone()).or_insert(0);
        if *taken >= TURNS_PER_NAME {
            return None;
        }
        *taken += 1;
        Some(NameTurn {
            verifying: self.clone(),
            name,
        })
    }
}

/// A turn of one name; given back when dropped, however its request ends (a panic included).
struct NameTurn {
    verifying: Arc<Verifying>,
    name: String,
}

impl Drop for NameTurn {
    fn drop(&mut self) {
        let mut names = self.verifying.0.lock();
        if let Some(taken) = names.get_mut(&self.name) {
            *taken -= 1;
            if *taken == 0 {
                names.remove(&self.name);
            }
        }
    }
}

/// A name account-db does not know, to ask the old account server about (`--legacy-db`), or an
/// account reserved for its old owner by `account-db import`.
struct Migrate {
    /// Spelled as the player typed it, or as the reservation stored it: the old server
    /// compares names exactly.
    username: String,
    /// The name as the player typed it (another case of a reservation's, perhaps).
    typed: String,
    password: String,
    origin: Option<Origin>,
    /// `change_password`'s new password: the account moves with it.
    new_password: Option<String>,
    /// The reservation to replace, else a new account is made.
    reserved: Option<Account>,
    looked_up: Millis,
    _turn: NameTurn,
}

enum Task {
    Verify(Verification),
    /// A login's (or `op`: a password change's) password failed against an account that holds
    /// the name in another case than typed: ask the old server about the spelling typed, then
    /// answer 13 or count the failure (see [`Service::name_conflict`]).
    Conflict {
        found: Verification,
        op: Op,
    },
    /// Ask the old account server, and move the account here if the password is right.
    Migrate(Migrate),
    /// `change_password`: verify the old password as a login does, then hash the new one.
    ChangePassword {
        found: Verification,
        new_password: String,
    },
    /// An unknown user under `--hide-user-existence`: verify against a dummy hash, count the
    /// failure as a wrong password for an account is counted, answer "wrong password".
    Pretend {
        /// A login, or a `change_password`: it goes where a known name's would.
        op: Op,
        password: String,
        /// The name and address to count the failure against; `None` for a name no account
        /// can have, whose address was counted already.
        failure: Option<(String, Option<Origin>)>,
        /// Held as a real account's would be.
        _turn: Option<NameTurn>,
    },
    Create {
        username: String,
        password: String,
        /// Ask the old account server first whether the name is taken there.
        ask_legacy: bool,
    },
}

impl HashTask {
    /// The operation this task finishes, for logs and metrics.
    pub fn op(&self) -> Op {
        match self.0 {
            Task::Migrate(Migrate {
                new_password: Some(_),
                ..
            }) => Op::ChangePassword,
            Task::Pretend { op, .. } | Task::Conflict { op, .. } => op,
            Task::Verify { .. } | Task::Migrate(_) => Op::Login,
            Task::ChangePassword { .. } => Op::ChangePassword,
            Task::Create { .. } => Op::Register,
        }
    }
}

/// Behaviour switches of the service: name and password rules, throttling, and whether an
/// unknown user is told apart from a wrong password.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub rules: Rules,
    #[command(flatten)]
    pub throttle: Policy,
    /// Answer an unknown user "wrong password" (2) after a real verification, and count and
    /// lock unknown names as known ones, so neither the code nor the time tells whether the
    /// account exists (its limits: docs/protocol.md). With --legacy-db it is weaker: while the
    /// old server is down, a name unknown here is answered 7 and a known one's wrong password
    /// 2. Defaults to off: the seed's gateway expects "no such user" (1).
    #[arg(long, env = "LOGIN_SERVER_HIDE_USER_EXISTENCE")]
    pub hide_user_existence: bool,
    /// With --legacy-db, let players register before the store records that the old server's
    /// names were imported (`account-db import --complete`, or `account-db admin
    /// legacy-names-imported`). Risky: a new player may then take a case variant or a
    /// look-alike of an old player's name (`oldbob` for `OldBob`), and that old player can
    /// never move. Defaults to off: registrations are answered 5 `registration_closed` until
    /// then.
    #[arg(long, env = "LOGIN_SERVER_LEGACY_OPEN_REGISTRATION")]
    pub legacy_open_registration: bool,
    /// Seconds a session token is valid; `refresh` gives a new one. Defaults to 3600.
    #[arg(
        long,
        value_name = "SECS",
        env = "LOGIN_SERVER_SESSION_TTL",
        default_value = "3600",
        value_parser = crate::config::seconds
    )]
    pub session_ttl: Duration,
    /// Seconds after its login that a session can no longer be refreshed: the player logs in
    /// again. Defaults to 2592000 (30 days).
    #[arg(
        long,
        value_name = "SECS",
        env = "LOGIN_SERVER_SESSION_MAX_AGE",
        default_value = "2592000",
        value_parser = crate::config::seconds
    )]
    pub session_max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// The login, registration and session logic over the account tier.
pub struct Service {
    accounts: Arc<dyn Accounts>,
    hasher: Hasher,
    options: Options,
    tokens: Tokens,
    /// The old account server (`--legacy-db`), if there is one.
    legacy: Option<LegacyDb>,
    /// Spellings asked about because an account here holds the name in another case.
    spelling_asks: SpellingAsks,
    verifying: Arc<Verifying>,
    /// Verified against for unknown users under `hide_user_existence`.
    dummy_hash: String,
    metrics: Metrics,
}

fn store_unavailable(e: &dyn std::fmt::Display, metrics: &Metrics) -> Reply {
    tracing::warn!(error = %e, "account store unavailable");
    metrics.db_errors.inc();
    Reply::unavailable("account store unavailable, retry later")
}

/// A lookup's operation: a login, or with a new password a `change_password`.
fn op_of(new_password: &Option<String>) -> Op {
    match new_password {
        Some(_) => Op::ChangePassword,
        None => Op::Login,
    }
}

/// A registration's reply, once its create is done.
fn registered(username: String, created: Created) -> Reply {
    match created {
        Created::New => Reply::registered(username),
        Created::Exists => Reply::register_failed(RegisterFailure::UsernameTaken),
    }
}

fn internal_error(e: &dyn std::fmt::Display) -> Reply {
    tracing::error!(error = %e, "cannot hash or verify");
    Reply::unavailable("internal error, retry later")
}

impl Service {
    pub fn new(
        accounts: Arc<dyn Accounts>,
        hasher: Hasher,
        options: Options,
        tokens: Tokens,
        legacy: Option<LegacyDb>,
        metrics: Metrics,
    ) -> Result<Self, HashError> {
        let dummy_hash = hasher.hash(&random_token(), &mut Memory::default())?;
        let spelling_asks = SpellingAsks::new(options.throttle.window);
        Ok(Service {
            spelling_asks,
            accounts,
            hasher,
            options,
            tokens,
            legacy,
            verifying: Arc::default(),
            dummy_hash,
            metrics,
        })
    }

    /// The public keys that verify its tokens, as a JWKS.
    pub fn jwks(&self) -> String {
        self.tokens.jwks()
    }

    /// The first part of a request: answers it, or says what to ask the store.
    pub fn begin(&self, request: Request) -> Begun {
        let Request {
            op,
            username,
            password,
            new_password,
            token,
            ip,
        } = request;
        let origin = ip.map(Origin::from);
        match op {
            Op::Login => self.begin_lookup(username, password, origin, None),
            Op::Register => self.begin_register(username, password, origin),
            Op::ChangePassword if !self.options.rules.password_ok(&new_password) => Begun::Step(
                Step::Done(Reply::register_failed(RegisterFailure::InvalidPassword)),
            ),
            Op::ChangePassword => self.begin_lookup(username, password, origin, Some(new_password)),
            Op::Verify | Op::Refresh | Op::Logout | Op::LogoutAll => self.begin_session(op, &token),
        }
    }

    /// The rest of a request's cheap part, given the account tier's `response` to its
    /// request: answers it, or says what hashing it needs.
    pub fn resume(&self, asking: Asking, response: Result<DbResponse, StoreError>) -> Step {
        match self.resumed(asking.then, response) {
            Ok(step) => step,
            Err(e) => Step::Done(store_unavailable(&e, &self.metrics)),
        }
    }

    fn resumed(
        &self,
        then: Then,
        response: Result<DbResponse, StoreError>,
    ) -> Result<Step, StoreError> {
        let response = response?;
        Ok(match then {
            Then::Lookup(pending) => {
                let login = response.into_login().map_err(unexpected)?;
                self.looked_up(pending, login)
            }
            Then::Register { username, password } => {
                match response.into_registering().map_err(unexpected)? {
                    Registering::Locked(wait) => self.throttled(wait),
                    Registering::Taken => {
                        Step::Done(Reply::register_failed(RegisterFailure::UsernameTaken))
                    }
                    Registering::Closed => {
                        Step::Done(Reply::register_failed(RegisterFailure::RegistrationClosed))
                    }
                    Registering::Free => Step::Hash(HashTask(Task::Create {
                        username,
                        password,
                        ask_legacy: self.legacy.is_some(),
                    })),
                }
            }
            Then::Session {
                op,
                claims,
                account_id,
            } => {
                let state = response.into_session().map_err(unexpected)?;
                Step::Done(self.session_read(op, claims, account_id, state))
            }
            Then::Create { username } => {
                let created = response.into_created().map_err(unexpected)?;
                Step::Done(registered(username, created))
            }
        })
    }

    /// A login's lookup (also of a password change's old password): what to ask the store, or
    /// the answer reached without it.
    fn begin_lookup(
        &self,
        username: String,
        password: String,
        origin: Option<Origin>,
        new_password: Option<String>,
    ) -> Begun {
        let failures = self.options.throttle.failures();
        // Today's name and password rules bind registrations only: accounts from the old
        // system (imported, or moved on their first login) may break them and still log in.
        // So only a name no account can have (longer than any, or with control characters) is
        // answered without a lookup; it costs the address, never an account: one round trip
        // with an address, none without.
        if !names::could_name_an_account(&username) {
            if origin.is_some() {
                match self.accounts.failed(None, origin, &failures) {
                    Ok(Some(wait)) => return Begun::Step(self.throttled(wait)),
                    Ok(None) => {}
                    Err(e) => return Begun::Step(Step::Done(store_unavailable(&e, &self.metrics))),
                }
            }
            return Begun::Step(match self.options.hide_user_existence {
                true => Step::Hash(HashTask(Task::Pretend {
                    op: op_of(&new_password),
                    password,
                    failure: None,
                    _turn: None,
                })),
                false => Step::Done(Reply::no_such_user()),
            });
        }
        // A few attempts at a time per name on this login-server, so that a burst of
        // concurrent guesses meets the lock its first failures set instead of all passing the
        // lookup before any is counted.
        let Some(turn) = self.verifying.take(&username) else {
            return Begun::Step(self.throttled(Duration::from_secs(1)));
        };
        let unknown = match (&self.legacy, self.options.hide_user_existence) {
            // Counted once the old server has answered; or, hidden, after the verification,
            // as a wrong password is: the same round trips, and the same rule for which
            // guesses count against the name.
            (Some(_), _) | (None, true) => Unknown::Nothing,
            (None, false) => Unknown::Address,
        };
        Begun::Asking(Asking {
            request: DbRequest::Login {
                username: username.clone(),
                origin,
                failures,
                unknown,
            },
            then: Then::Lookup(Pending {
                username,
                password,
                origin,
                new_password,
                turn,
            }),
        })
    }

    /// What a login's lookup came to: the password to verify, or the answer without it.
    fn looked_up(&self, pending: Pending, login: Login) -> Step {
        let migrate = |pending: Pending, reserved: Option<Account>| {
            Step::Hash(HashTask(Task::Migrate(Migrate {
                username: reserved
                    .as_ref()
                    .map_or_else(|| pending.username.clone(), |a| a.username.clone()),
                typed: pending.username,
                password: pending.password,
                origin: pending.origin,
                new_password: pending.new_password,
                reserved,
                looked_up: now_ms(),
                _turn: pending.turn,
            })))
        };
        match login {
            Login::Locked(wait) => self.throttled(wait),
            Login::Open { account: None, .. } if self.legacy.is_some() => migrate(pending, None),
            Login::Open {
                account: Some(account),
                ..
            } if account.hash == RESERVED_HASH => migrate(pending, Some(account)),
            // The turn is held as for a real account, so that neither the time nor a
            // concurrent attempt tells them apart.
            Login::Open { account: None, .. } if self.options.hide_user_existence => {
                Step::Hash(HashTask(Task::Pretend {
                    op: op_of(&pending.new_password),
                    password: pending.password,
                    failure: Some((pending.username, pending.origin)),
                    _turn: Some(pending.turn),
                }))
            }
            Login::Open { account: None, .. } => Step::Done(Reply::no_such_user()),
            Login::Open {
                account: Some(account),
                settled,
            } => {
                let found = Verification {
                    account,
                    typed: pending.username,
                    password: pending.password,
                    origin: pending.origin,
                    settled,
                    looked_up: now_ms(),
                    _turn: pending.turn,
                };
                Step::Hash(HashTask(match pending.new_password {
                    None => Task::Verify(found),
                    Some(new_password) => Task::ChangePassword {
                        found,
                        new_password,
                    },
                }))
            }
        }
    }

    /// `verify`, `refresh`, `logout` and `logout_all`: no argon2, at most two store round
    /// trips (the session's state, then a revocation). A logout is answered here.
    fn begin_session(&self, op: Op, token: &str) -> Begun {
        let claims = match self.tokens.check(token) {
            Ok(claims) => claims,
            Err(reason) => return Begun::Step(Step::Done(Reply::invalid_token(reason))),
        };
        let Some(account_id) = claims.account_id() else {
            return Begun::Step(Step::Done(Reply::invalid_token(Invalid::Malformed)));
        };
        if op == Op::Logout {
            return Begun::Step(Step::Done(self.logout(claims, account_id)));
        }
        Begun::Asking(Asking {
            request: DbRequest::Session {
                account_id,
                sid: claims.sid.clone(),
            },
            then: Then::Session {
                op,
                claims,
                account_id,
            },
        })
    }

    /// Revoke the session of `claims`. Idempotent: no need to ask first.
    fn logout(&self, claims: Claims, account_id: u64) -> Reply {
        // Kept until no token of the session could be valid any more: the last refresh is
        // before its max age, and the token that gives lasts a ttl more (and its last second,
        // as `exp` is checked in whole seconds).
        let max_age = millis(self.options.session_max_age);
        let ttl = millis(self.options.session_ttl);
        let until = claims
            .auth_ms
            .saturating_add(max_age)
            .saturating_add(ttl)
            .max(claims.exp.saturating_mul(1000))
            .saturating_add(1000);
        let revocation = Revocation {
            account_id,
            sid: claims.sid,
            began_ms: claims.auth_ms,
            until_ms: until,
        };
        match self.accounts.revoke_session(&revocation) {
            Ok(()) => Reply::done(),
            Err(e) => store_unavailable(&e, &self.metrics),
        }
    }

    /// `verify`, `refresh` or `logout_all`, given the session's `state` in the store.
    fn session_read(
        &self,
        op: Op,
        claims: Claims,
        account_id: u64,
        state: Option<SessionState>,
    ) -> Reply {
        let state = match state {
            Some(state) if state.stands(claims.auth_ms) => state,
            _ => return Reply::invalid_token(Invalid::Revoked),
        };
        let max_age = millis(self.options.session_max_age);
        let now = now_ms();
        match op {
            Op::Refresh if now.saturating_sub(claims.auth_ms) >= max_age => {
                Reply::invalid_token(Invalid::Expired)
            }
            Op::Refresh => {
                let session = Session {
                    account_id,
                    name: state.username.clone(),
                    sid: claims.sid,
                    auth_ms: claims.auth_ms,
                };
                let (token, exp) = self.tokens.issue(&session, now);
                Reply::valid(state.username, account_id, exp).with_token(token, exp)
            }
            Op::LogoutAll => match self.accounts.void_sessions(account_id, now, None) {
                Ok(_) => Reply::done(),
                Err(e) => store_unavailable(&e, &self.metrics),
            },
            _ => Reply::valid(state.username, account_id, claims.exp),
        }
    }

    /// A new session for `account`, begun at `began`, its token issued at `now`: the token and
    /// its `exp`.
    fn new_session(&self, account: &Account, began: Millis, now: Millis) -> (String, i64) {
        let session = Session {
            account_id: account.id,
            name: account.username.clone(),
            sid: random_token(),
            auth_ms: began,
        };
        self.tokens.issue(&session, now)
    }

    fn begin_register(&self, username: String, password: String, origin: Option<Origin>) -> Begun {
        let rules = &self.options.rules;
        if !rules.username_ok(&username) {
            let reply = Reply::register_failed(RegisterFailure::InvalidUsername);
            return Begun::Step(Step::Done(reply));
        }
        if !rules.password_ok(&password) {
            let reply = Reply::register_failed(RegisterFailure::InvalidPassword);
            return Begun::Step(Step::Done(reply));
        }
        Begun::Asking(Asking {
            request: DbRequest::Register {
                username: username.clone(),
                origin,
                limit: RegisterLimit {
                    legacy_gate: self.legacy.is_some() && !self.options.legacy_open_registration,
                    ..self.options.throttle.registrations()
                },
            },
            then: Then::Register { username, password },
        })
    }

    fn throttled(&self, wait: Duration) -> Step {
        self.metrics.throttled.inc();
        Step::Done(Reply::too_many_attempts(wait))
    }

    /// The argon2 part of a request, and for a registration the store write. `memory` is
    /// argon2's scratch space.
    pub fn finish(&self, task: HashTask, memory: &mut Memory) -> Finish {
        Finish::Reply(match task.0 {
            Task::Verify(found) => return self.log_in(found, memory),
            Task::ChangePassword {
                found,
                new_password,
            } => return self.change_password(found, &new_password, memory),
            Task::Conflict { found, .. } => self.conflict(found),
            Task::Pretend {
                password, failure, ..
            } => self.pretend(&password, failure, memory),
            Task::Migrate(migrate) => self.migrate(migrate, memory),
            Task::Create {
                username,
                password,
                ask_legacy,
            } => self.create(username, &password, ask_legacy, memory),
        })
    }

    /// A login's verification, and the session it leads to.
    fn log_in(&self, found: Verification, memory: &mut Memory) -> Finish {
        let rehash = match self.check_password(&found, memory) {
            Ok(rehash) => rehash,
            Err(refused) => return refused.finish(found, Op::Login),
        };
        if let Some(ban) = banned(&found.account) {
            return Finish::Reply(Reply::banned(ban.until_ms, &ban.reason));
        }
        if rehash {
            self.upgrade(&found.account, &found.password, memory);
        }
        // The session began when the password was looked up: a password change
        // committed while it was being verified voids it.
        let (token, exp) = self.new_session(&found.account, found.looked_up, now_ms());
        let Verification { account, .. } = found;
        Finish::Reply(Reply::logged_in(account.username, account.id).with_token(token, exp))
    }

    /// A password change: the old password verified as a login's, then the new one hashed and
    /// stored with every older session voided.
    fn change_password(
        &self,
        found: Verification,
        new_password: &str,
        memory: &mut Memory,
    ) -> Finish {
        if let Err(refused) = self.check_password(&found, memory) {
            return refused.finish(found, Op::ChangePassword);
        }
        Finish::Reply(self.set_password(&found, new_password, memory))
    }

    /// A password change's new password, once the old one is verified: hashed and stored, every
    /// older session voided, a new one begun.
    fn set_password(&self, found: &Verification, new_password: &str, memory: &mut Memory) -> Reply {
        if let Some(ban) = banned(&found.account) {
            return Reply::banned(ban.until_ms, &ban.reason);
        }
        let hash = match self.hash_password(new_password, memory) {
            Ok(hash) => hash,
            Err(e) => return internal_error(&e),
        };
        // Every session begun before now is void, this one's begins now: one instant,
        // so the new session stands and every older one falls.
        let now = now_ms();
        match self
            .accounts
            .void_sessions(found.account.id, now, Some(&hash))
        {
            Ok(true) => {
                let (token, exp) = self.new_session(&found.account, now, now);
                Reply::done().with_token(token, exp)
            }
            // Deleted, or banned, since it was looked up: the next attempt is told.
            Ok(false) => Reply::unavailable("the account changed meanwhile, retry"),
            Err(e) => store_unavailable(&e, &self.metrics),
        }
    }

    /// An unknown user under `--hide-user-existence`: a real verification against the dummy
    /// hash, the failure counted, "wrong password".
    fn pretend(
        &self,
        password: &str,
        failure: Option<(String, Option<Origin>)>,
        memory: &mut Memory,
    ) -> Reply {
        // The result is always "no"; the work is what makes it indistinguishable (the
        // same verifications and store requests as a wrong password for a real
        // account).
        let _ = self.verify(password, &self.dummy_hash, memory);
        if let Some((username, origin)) = failure {
            self.count_failure(&username, origin, password, false);
        }
        Reply::wrong_password()
    }

    /// A registration: its hash, then its create.
    fn create(
        &self,
        username: String,
        password: &str,
        ask_legacy: bool,
        memory: &mut Memory,
    ) -> Reply {
        match self.new_account(&username, password, ask_legacy, memory) {
            Ok((account, request_id)) => match self.accounts.create(&account, &request_id) {
                Ok(created) => registered(username, created),
                Err(e) => store_unavailable(&e, &self.metrics),
            },
            Err(reply) => *reply,
        }
    }

    /// [`Service::finish`] of a quick task (see [`Service::is_quick`]), but a registration's
    /// create is left to ask, with the questions of other requests.
    pub fn finish_quick(&self, task: HashTask, memory: &mut Memory) -> Finished {
        let Task::Create {
            username,
            password,
            ask_legacy,
        } = task.0
        else {
            return match self.finish(task, memory) {
                Finish::Reply(reply) => Finished::Done(reply),
                Finish::AskOld(task) => Finished::AskOld(task),
            };
        };
        match self.new_account(&username, &password, ask_legacy, memory) {
            Ok((account, request_id)) => Finished::Asking(Asking {
                request: DbRequest::Create {
                    account,
                    request_id,
                },
                then: Then::Create { username },
            }),
            Err(reply) => Finished::Done(*reply),
        }
    }

    /// A registration's account, its password hashed (the old server, if asked, not knowing
    /// the name), and the id of the create that stores it; or the reply that ends the
    /// registration.
    fn new_account(
        &self,
        username: &str,
        password: &str,
        ask_legacy: bool,
        memory: &mut Memory,
    ) -> Result<(Account, String), Box<Reply>> {
        // A name the old server knows is its player's, moved or not: as typed, composed, or
        // in its compatible form.
        if ask_legacy {
            for spelling in legacy::spellings(username) {
                if let Known::Password(_) = self.ask_legacy(&spelling)? {
                    let taken = Reply::register_failed(RegisterFailure::UsernameTaken);
                    return Err(Box::new(taken));
                }
            }
        }
        let hash = self
            .hash_password(password, memory)
            .map_err(|e| Box::new(internal_error(&e)))?;
        // One id per registration: if the store's reply is lost, repeating the create with it
        // tells whether this registration was stored.
        Ok((Account::new(username, &hash), random_token()))
    }

    /// What the old account server knows of `username`, counted in the metrics; its failure
    /// as the reply "unavailable" (7): the player may exist there, so never "no such user".
    fn ask_legacy(&self, username: &str) -> Result<Known, Box<Reply>> {
        let Some(legacy) = &self.legacy else {
            return Ok(Known::Unknown);
        };
        match legacy.lookup(username) {
            Ok(known) => {
                self.metrics.legacy_lookup(match known {
                    Known::Unknown => LegacyOutcome::Unknown,
                    Known::Password(_) => LegacyOutcome::Known,
                });
                Ok(known)
            }
            Err(e) => {
                self.metrics.legacy_lookup(LegacyOutcome::Failed);
                tracing::warn!(error = %e, "old account server unavailable");
                Err(Box::new(Reply::unavailable(
                    "old account store unavailable, retry later",
                )))
            }
        }
    }

    /// A login (or password change) of a name the old account server may know: if it does
    /// and the password is its, the account moves here (argon2id; the old server is never
    /// asked about it again) and the player is logged in.
    fn migrate(&self, m: Migrate, memory: &mut Memory) -> Reply {
        let hide = self.options.hide_user_existence;
        let plain = match self.ask_legacy(&m.username) {
            Err(reply) => return *reply,
            // Unknown in both: hidden, a wrong password for a name with no account.
            Ok(Known::Unknown) if hide => {
                let _ = self.verify(&m.password, &self.dummy_hash, memory);
                self.count_failure(&m.username, m.origin, &m.password, false);
                return Reply::wrong_password();
            }
            Ok(Known::Unknown) => {
                // Counted as account-db would have counted it: the address only.
                let failures = self.options.throttle.failures();
                if let Err(e) = self.accounts.failed(None, m.origin, &failures) {
                    tracing::warn!(error = %e, "cannot count a failed login");
                }
                return Reply::no_such_user();
            }
            Ok(Known::Password(plain)) => plain,
        };
        if !legacy::matches(&m.password, &plain) {
            if let Some(reply) = self.name_conflict(&m.typed, &m.username, &m.password, true) {
                return reply;
            }
            if hide {
                // As long as an unknown name's answer takes.
                let _ = self.verify(&m.password, &self.dummy_hash, memory);
            }
            let weak = !self.options.rules.password_ok(&plain);
            self.count_failure(&m.username, m.origin, &m.password, weak);
            return Reply::wrong_password();
        }
        let new = m.new_password.as_deref().unwrap_or(&m.password);
        let hash = match self.hash_password(new, memory) {
            Ok(hash) => hash,
            Err(e) => return internal_error(&e),
        };
        let moved = match &m.reserved {
            Some(reserved) => self
                .accounts
                .update_hash(&reserved.username, RESERVED_HASH, &hash)
                .map(|updated| match updated {
                    true => Created::New,
                    false => Created::Exists,
                }),
            None => self
                .accounts
                .create(&Account::new(&m.username, &hash), &random_token()),
        };
        let account = match moved.and_then(|moved| Ok((moved, self.accounts.find(&m.username)?))) {
            Err(e) => return store_unavailable(&e, &self.metrics),
            Ok((_, None)) => return Reply::unavailable("account store changed, retry later"),
            Ok((Created::New, Some(account))) => {
                self.metrics.legacy_migrated.inc();
                tracing::info!(user = %account.username, id = account.id, "account moved from the old account server");
                account
            }
            // Moved meanwhile by a concurrent login of the same player: log in against it.
            Ok((Created::Exists, Some(account))) => {
                match self.verify(&m.password, &account.hash, memory) {
                    Ok(Some(_)) => account,
                    Ok(None) => return Reply::wrong_password(),
                    Err(e) => return internal_error(&e),
                }
            }
        };
        if let Err(e) = self.accounts.succeeded(
            &account.username,
            m.origin,
            self.options.hide_user_existence,
        ) {
            tracing::warn!(user = %account.username, error = %e, "cannot record a successful login");
        }
        if let Some(ban) = banned(&account) {
            return Reply::banned(ban.until_ms, &ban.reason);
        }
        let (token, exp) = self.new_session(&account, m.looked_up, now_ms());
        match m.new_password {
            Some(_) => Reply::done().with_token(token, exp),
            None => Reply::logged_in(account.username, account.id).with_token(token, exp),
        }
    }

    /// Verify a login's password, and tell throttling how it went: `Ok(rehash)` when it
    /// matches (`rehash`: its hash should be made again), else the reply.
    fn check_password(&self, found: &Verification, memory: &mut Memory) -> Result<bool, Refused> {
        let Verification {
            account,
            typed,
            password,
            origin,
            settled,
            ..
        } = found;
        match self.verify(password, &account.hash, memory) {
            Ok(Some(rehash)) => {
                if !settled {
                    if let Err(e) = self.accounts.succeeded(
                        &account.username,
                        *origin,
                        self.options.hide_user_existence,
                    ) {
                        tracing::warn!(user = %account.username, error = %e, "cannot record a successful login");
                    }
                }
                // A costly hash too is replaced: its cost is paid once.
                let stored = &account.hash;
                Ok(rehash || self.hasher.is_weaker(stored) || self.hasher.is_costly(stored))
            }
            Ok(None) => {
                if let Some(reply) = self.name_conflict(typed, &account.username, password, false) {
                    return Err(Refused::Reply(Box::new(reply)));
                }
                // Typed in another case than the account's, under --legacy-db: the old server
                // may hold the spelling typed. It is asked on its own stage, before the
                // failure is counted: the task goes on there.
                let other_case = self.legacy.is_some() && *typed != account.username;
                if other_case && self.spelling_asks.may_ask(typed, now_ms()) {
                    return Err(Refused::AskOld);
                }
                if self.options.hide_user_existence && self.hasher.is_weaker(&account.hash) {
                    // A cheaper old hash verifies faster than an unknown name's dummy: make
                    // up the difference, so the time does not tell the account exists.
                    let _ = self.hasher.verify(password, &self.dummy_hash, memory);
                }
                self.count_wrong(found);
                Err(Refused::Reply(Box::new(Reply::wrong_password())))
            }
            Err(e) => Err(Refused::Reply(Box::new(internal_error(&e)))),
        }
    }

    /// Count a wrong password for the account `found` names.
    fn count_wrong(&self, found: &Verification) {
        let Verification {
            account,
            password,
            origin,
            ..
        } = found;
        let weak = password::is_marked_weak(&account.hash);
        self.count_failure(&account.username, *origin, password, weak);
    }

    /// A login (or password change) whose password failed against an account holding the name
    /// in another case than typed: "contact support" if the old server holds the spelling
    /// typed with this password, else a wrong password, counted as it would have been.
    fn conflict(&self, found: Verification) -> Reply {
        let holder = &found.account.username;
        match self.name_conflict(&found.typed, holder, &found.password, true) {
            Some(reply) => reply,
            None => {
                self.count_wrong(&found);
                Reply::wrong_password()
            }
        }
    }

    /// A login that failed against the account spelled `holder`, typed as `typed`: "contact
    /// support" (13) if the old server holds `typed` exactly, with this `password`: two old
    /// players whose names differ only in case, one of whom moved here first. Neither the
    /// failure is counted against the holder nor the player told "wrong password" forever;
    /// the operator is told (a log line, a metric) and resolves it with `account-db admin
    /// rename`. The old server is asked only where `may_ask` (on the old-server stage), at
    /// most once per spelling per `--throttle-window` ([`SpellingAsks`]); within the window a
    /// password it confirmed is answered alike without asking. `None`: the failure stands.
    fn name_conflict(
        &self,
        typed: &str,
        holder: &str,
        password: &str,
        may_ask: bool,
    ) -> Option<Reply> {
        if self.legacy.is_none() || typed == holder {
            return None;
        }
        let (asks, now) = (&self.spelling_asks, now_ms());
        let confirmed = asks.confirmed(typed, password, now)
            || (may_ask
                && asks.claim(typed, now)
                && match self.ask_legacy(typed) {
                    Ok(Known::Password(plain)) if legacy::matches(password, &plain) => {
                        asks.confirm(typed, password, now);
                        self.metrics.legacy_name_conflicts.inc();
                        tracing::warn!(
                            typed = ?typed,
                            holder = ?holder,
                            "name conflict: the old account server holds this spelling with the \
                             password given, an account here holds the name in another case; \
                             the player is told to contact support (resolve with `account-db \
                             admin rename`)"
                        );
                        true
                    }
                    _ => false,
                });
        confirmed.then(|| Reply::contact_support(SupportReason::NameConflict))
    }

    /// Count a wrong `password` for `username` from `origin`. A guess that breaks today's rules
    /// cannot be the password of an account made under them: it costs the address only, so
    /// short guesses cannot lock a victim out. An account from the old system (`weak`: its hash
    /// is bcrypt or marked weak, or the old server's password breaks the rules itself) may
    /// have such a password: there every guess counts against it. Under `--hide-user-existence` every
    /// guess counts against every name: a rule that depends on the account would tell that
    /// it exists.
    fn count_failure(&self, username: &str, origin: Option<Origin>, password: &str, weak: bool) {
        let failures = self.options.throttle.failures();
        let counts =
            self.options.hide_user_existence || weak || self.options.rules.password_ok(password);
        let name = counts.then_some(username);
        if let Err(e) = self.accounts.failed(name, origin, &failures) {
            tracing::warn!(user = %username, error = %e, "cannot count a failed login");
        }
    }

    /// Verify `password` (in NFC) against `stored`. `Some(rehash)` when it matches; `rehash`:
    /// it matched only as typed, not normalized (a hash made before passwords were
    /// normalized), so it should be hashed again.
    fn verify(
        &self,
        password: &str,
        stored: &str,
        memory: &mut Memory,
    ) -> Result<Option<bool>, HashError> {
        let normalized = normalize_password(password);
        if self.hasher.verify(&normalized, stored, memory)? {
            return Ok(Some(false));
        }
        if normalized != password && self.hasher.verify(password, stored, memory)? {
            return Ok(Some(true));
        }
        Ok(None)
    }

    /// `password`'s hash (of its NFC form), marked weak when it breaks today's rules (an old
    /// account's password, moved or re-hashed: see [`password::is_marked_weak`]).
    fn hash_password(&self, password: &str, memory: &mut Memory) -> Result<String, HashError> {
        let normalized = normalize_password(password);
        match self.options.rules.password_ok(password) {
            true => self.hasher.hash(&normalized, memory),
            false => self.hasher.hash_weak(&normalized, memory),
        }
    }

    /// Re-hash a password (normalized) whose stored hash is weaker than the current parameters
    /// or was made from the password as typed. A failure only means the upgrade waits for the
    /// next login.
    /// Only over the hash the login verified: a password change that came in between wins.
    fn upgrade(&self, account: &Account, password: &str, memory: &mut Memory) {
        let username = &account.username;
        let result = self
            .hash_password(password, memory)
            .map_err(|e| e.to_string())
            .and_then(|hash| {
                self.accounts
                    .update_hash(username, &account.hash, &hash)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(true) => tracing::info!(user = %username, "upgraded a weak password hash"),
            Ok(false) => tracing::info!(user = %username, "not upgraded: the password changed"),
            Err(error) => tracing::warn!(user = %username, %error, "cannot upgrade a weak hash"),
        }
    }

    /// Every step on the calling thread, the question asked alone.
    pub fn handle(&self, request: Request) -> Reply {
        let step = match self.begin(request) {
            Begun::Step(step) => step,
            Begun::Asking(asking) => {
                let response = self.call(&asking.request);
                self.resume(asking, response)
            }
        };
        match step {
            Step::Done(reply) => reply,
            Step::Hash(mut task) => loop {
                match self.finish(task, &mut Memory::default()) {
                    Finish::Reply(reply) => return reply,
                    Finish::AskOld(next) => task = next,
                }
            },
        }
    }

    /// The reply to a task that was to ask the old server ([`Finish::AskOld`]) when it cannot
    /// be asked (its stage's queue is full): a wrong password, counted as if the old server
    /// had not confirmed the spelling, so that a full queue gives no uncounted guesses.
    pub fn not_asked(&self, task: HashTask) -> Reply {
        match task.0 {
            Task::Conflict { found, .. } => {
                self.count_wrong(&found);
                Reply::wrong_password()
            }
            _ => Reply::unavailable("server busy, retry later"),
        }
    }

    /// Whether `task` asks the old account server (`--legacy-db` is set): for the old-server
    /// stage, not a hash thread. That is a moved or reserved name's login, a registration, and
    /// a login typed in another case than its account's that may ask about the spelling typed
    /// (see `Service::name_conflict`). Without it, a reserved name's login is a hash task as
    /// any.
    pub fn asks_legacy(&self, task: &HashTask) -> bool {
        self.legacy.is_some()
            && match &task.0 {
                Task::Migrate(_) => true,
                Task::Create { ask_legacy, .. } => *ask_legacy,
                Task::Conflict { .. } => true,
                Task::Verify(_) | Task::ChangePassword { .. } => false,
                Task::Pretend { .. } => false,
            }
    }

    /// Whether `task` verifies against a stored hash that is costly (see
    /// [`Hasher::is_costly`]): for the costly stage, not a hash thread.
    pub fn is_costly(&self, task: &HashTask) -> bool {
        match &task.0 {
            Task::Verify(found) | Task::ChangePassword { found, .. } => {
                self.hasher.is_costly(&found.account.hash)
            }
            _ => false,
        }
    }

    /// Whether finishing `task` is quick enough for a worker to do inside its round: a login's
    /// verification against a cheap argon2 hash (see [`password::is_cheap`]) that will not be
    /// made again, or a registration's cheap hash (its create is then asked like a lookup,
    /// see [`Service::finish_quick`]). Never bcrypt or the old server; at most a throttle
    /// write (a failure counted, a success recorded), one account-db round trip as a lookup
    /// is.
    pub fn is_quick(&self, task: &HashTask) -> bool {
        match &task.0 {
            Task::Verify(found) => {
                let stored = &found.account.hash;
                password::is_cheap(stored) && !self.hasher.is_weaker(stored)
            }
            Task::Pretend { op, .. } => *op == Op::Login && password::is_cheap(&self.dummy_hash),
            Task::Create { ask_legacy, .. } => !ask_legacy && self.hasher.is_cheap(),
            _ => false,
        }
    }

    /// Send the account tier one request.
    pub fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError> {
        self.accounts.call(request)
    }

    /// Send the account tier every request, at once where it can (see
    /// [`Accounts::call_all`]).
    pub fn call_all(&self, requests: &[&DbRequest]) -> Vec<Result<DbResponse, StoreError>> {
        self.accounts.call_all(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountdb::store::SqliteStore;
    use crate::auth::password::HashParams;
    use crate::protocol::gateway::{Code, Reason};

    fn service_with(dir: &std::path::Path, options: Options) -> Service {
        built(dir, options, HashParams::CHEAPEST, None)
    }

    fn built(
        dir: &std::path::Path,
        options: Options,
        params: HashParams,
        legacy: Option<LegacyDb>,
    ) -> Service {
        let store = Arc::new(SqliteStore::open(dir).unwrap());
        let hasher = Hasher::new(params).unwrap();
        let key = crate::auth::token_key::SigningKey::generate().unwrap();
        let tokens = Tokens::new(&key, Vec::new(), options.session_ttl);
        Service::new(store, hasher, options, tokens, legacy, Metrics::default()).unwrap()
    }

    fn service(dir: &std::path::Path) -> Service {
        service_with(dir, Options::default())
    }

    fn request(op: Op, username: &str, password: &str) -> Request {
        Request {
            op,
            username: username.into(),
            password: password.into(),
            ..Request::default()
        }
    }

    #[test]
    fn every_outcome_of_login_and_register() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let code = |op, u, p| svc.handle(request(op, u, p)).code;
        assert_eq!(code(Op::Login, "Alice", "password1"), Code::NoSuchUser);
        assert_eq!(code(Op::Register, "Alice", "password1"), Code::Registered);
        assert_eq!(
            code(Op::Register, "aLIce", "password2"),
            Code::RegisterFailed
        );
        assert_eq!(code(Op::Login, "alice", "password1"), Code::LoggedIn);
        assert_eq!(code(Op::Login, "alice", "password2"), Code::WrongPassword);
        assert_eq!(code(Op::Login, "no", "password1"), Code::NoSuchUser);
        assert_eq!(code(Op::Login, "alice", "short"), Code::WrongPassword);
        let reply = svc.handle(request(Op::Login, "ALICE", "password1"));
        assert_eq!(reply.username.as_deref(), Some("Alice"));
        let reason = |u, p| svc.handle(request(Op::Register, u, p)).reason;
        assert_eq!(
            reason("a b", "password1"),
            Some(Reason::Register(RegisterFailure::InvalidUsername))
        );
        assert_eq!(
            reason("bob", "short"),
            Some(Reason::Register(RegisterFailure::InvalidPassword))
        );
        assert_eq!(
            reason("ALICE", "password1"),
            Some(Reason::Register(RegisterFailure::UsernameTaken))
        );
    }

    #[test]
    fn passwords_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        svc.handle(request(Op::Register, "carol", "hunter2hunter2"));
        let stored = SqliteStore::open(dir.path())
            .unwrap()
            .find("carol")
            .unwrap()
            .unwrap();
        assert!(stored.hash.starts_with("$argon2id$"));
        assert!(!stored.hash.contains("hunter2"));
    }

    /// `request` as far as its hash task: begun, its question asked and answered.
    fn to_task(svc: &Service, request: Request) -> HashTask {
        let Begun::Asking(asking) = svc.begin(request) else {
            panic!("it asks the store first");
        };
        let answer = svc.call(&asking.request);
        let Step::Hash(task) = svc.resume(asking, answer) else {
            panic!("it is hashed or verified");
        };
        task
    }

    /// A registration as far as its hash task.
    fn to_hash(svc: &Service, username: &str, password: &str) -> HashTask {
        to_task(svc, request(Op::Register, username, password))
    }

    #[test]
    fn a_cheap_registration_is_hashed_quickly_then_its_create_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let task = to_hash(&svc, "Dora", "dora-pw-1");
        assert!(svc.is_quick(&task));
        let Finished::Asking(asking) = svc.finish_quick(task, &mut Memory::default()) else {
            panic!("the create is left to ask");
        };
        let DbRequest::Create { account, .. } = &asking.request else {
            panic!("a create: {:?}", asking.request);
        };
        assert_eq!(account.username, "Dora");
        assert!(account.hash.starts_with("$argon2id$") && !account.hash.contains("dora-pw-1"));
        // Nothing is stored until the create is asked.
        assert_eq!(
            svc.handle(request(Op::Login, "dora", "dora-pw-1")).code,
            Code::NoSuchUser
        );
        let answer = svc.call(&asking.request);
        let Step::Done(reply) = svc.resume(asking, answer) else {
            panic!("a create's answer ends the registration");
        };
        assert_eq!(reply.code, Code::Registered);
        assert_eq!(reply.username.as_deref(), Some("Dora"));
        assert_eq!(
            svc.handle(request(Op::Login, "dora", "dora-pw-1")).code,
            Code::LoggedIn
        );
        // A create that finds the name taken answers so.
        let task = to_hash(&svc, "Doris", "doris-pw-1");
        let Finished::Asking(asking) = svc.finish_quick(task, &mut Memory::default()) else {
            panic!("the create is left to ask");
        };
        assert_eq!(
            svc.handle(request(Op::Register, "DORIS", "pw-doris-2"))
                .code,
            Code::Registered
        );
        let answer = svc.call(&asking.request);
        let Step::Done(reply) = svc.resume(asking, answer) else {
            panic!("a create's answer ends the registration");
        };
        assert_eq!(
            reply.reason,
            Some(Reason::Register(RegisterFailure::UsernameTaken))
        );
    }

    #[test]
    fn a_registration_is_not_quick_when_its_hash_is_costly_or_the_old_server_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let costly = built(dir.path(), Options::default(), HashParams::default(), None);
        assert!(!costly.is_quick(&to_hash(&costly, "Eve", "eve-pw-1")));
        let dir = tempfile::tempdir().unwrap();
        let unused = "127.0.0.1:9".parse().unwrap();
        let legacy = LegacyDb::new(unused, 1, Duration::from_millis(100));
        let open = Options {
            legacy_open_registration: true,
            ..Options::default()
        };
        let asks_old = built(dir.path(), open, HashParams::CHEAPEST, Some(legacy));
        assert!(!asks_old.is_quick(&to_hash(&asks_old, "Eve", "eve-pw-1")));
    }

    /// A login as far as its hash task.
    fn to_verify(svc: &Service, username: &str, password: &str) -> HashTask {
        to_task(svc, request(Op::Login, username, password))
    }

    #[test]
    fn a_login_is_quick_against_a_cheap_hash_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        assert_eq!(
            svc.handle(request(Op::Register, "Gus", "gus-pw-1")).code,
            Code::Registered
        );
        assert!(svc.is_quick(&to_verify(&svc, "gus", "gus-pw-1")));
        // Stronger parameters, still cheap: the stored hash is weaker, so the login re-hashes it
        // (and writes it): not quick.
        let params = HashParams {
            memory_kib: 16,
            ..HashParams::CHEAPEST
        };
        let stronger = built(dir.path(), Options::default(), params, None);
        assert!(!stronger.is_quick(&to_verify(&stronger, "gus", "gus-pw-1")));
        // An unknown name, hidden: a verification against a dummy hash, as cheap as any.
        let dir = tempfile::tempdir().unwrap();
        let hiding = Options {
            hide_user_existence: true,
            ..Options::default()
        };
        let hidden = service_with(dir.path(), hiding);
        assert!(hidden.is_quick(&to_verify(&hidden, "nobody", "nobody-pw-1")));
        // Its password change goes where a known name's does (never quick), as one.
        let change = Request {
            new_password: "nobody-pw-2".into(),
            ..request(Op::ChangePassword, "nobody", "nobody-pw-1")
        };
        let task = to_task(&hidden, change);
        assert!(!hidden.is_quick(&task));
        assert_eq!(task.op(), Op::ChangePassword);
    }
}
