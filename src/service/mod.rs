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

mod devices;
mod login;
mod migration;
mod register;
mod sessions;
mod steps;
mod turns;

use crate::accountdb::accounts::{unexpected, Accounts};
use crate::accountdb::store::{Account, Created, StoreError};
use crate::auth::names::Rules;
use crate::auth::password::{self, HashError, Hasher, Memory};
use crate::auth::secret::random_token;
use crate::clock::{Clock, Millis};
use crate::legacy::{LegacyDb, SpellingAsks};
use crate::metrics::Metrics;
use crate::protocol::accountdb::{DbRequest, DbResponse, Registering};
use crate::protocol::gateway::{Op, RegisterFailure, Reply, Request};
use crate::throttle::{Origin, Policy};
use crate::tokens::Tokens;
use std::sync::Arc;
use std::time::Duration;
use steps::*;
pub use steps::{Asking, Begun, Finish, Finished, HashTask, Step};
pub use turns::TURNS_PER_NAME;
use turns::*;

/// The account's ban, if it is in force now. Told only to whoever proved the password: to
/// anyone else a banned account is like any other.
fn banned(account: &Account, now: Millis) -> Option<&crate::accountdb::store::Ban> {
    account.ban.as_ref().filter(|ban| ban.until_ms > now)
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
    /// Guests this login-server creates per second at most, whatever their address (a
    /// burst of as many is allowed); more are answered "too many attempts" (8). Defaults to 50.
    #[arg(
        long,
        value_name = "N",
        env = "LOGIN_SERVER_GUEST_RATE",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub guest_rate: u32,
    /// What the service reads the time from: the system's clock, which tests replace with one
    /// they move forward ([`Clock::adjustable`]).
    #[arg(skip)]
    pub clock: Clock,
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
    /// `--guest-rate`'s budget.
    guest_budget: parking_lot::Mutex<devices::Budget>,
    metrics: Metrics,
}

fn store_unavailable(e: &StoreError, metrics: &Metrics) -> Reply {
    if let StoreError::Unsupported { .. } = e {
        return Reply::unavailable(
            "this operation is not available during an upgrade (no account-db of this release is \
             reachable yet): retry later",
        );
    }
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
        let guest_budget = parking_lot::Mutex::new(devices::Budget::new(options.guest_rate));
        Ok(Service {
            guest_budget,
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
            device_id,
            device_secret,
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
            Op::Device => self.begin_device(device_id, &device_secret, origin),
            Op::Claim => self.begin_claim(&token, username, password, origin),
            Op::LinkDevice | Op::UnlinkDevice | Op::Devices => {
                self.begin_device_op(op, &token, device_id, &device_secret)
            }
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
            Then::Device(pending) => {
                let login = response.into_device_login().map_err(unexpected)?;
                self.device_answered(pending, login)
            }
            Then::Claim(pending) => match response.into_registering().map_err(unexpected)? {
                Registering::Locked(wait) => self.throttled(wait),
                Registering::Taken => {
                    Step::Done(Reply::register_failed(RegisterFailure::UsernameTaken))
                }
                Registering::Closed => {
                    Step::Done(Reply::register_failed(RegisterFailure::RegistrationClosed))
                }
                Registering::Free => Step::Hash(HashTask(Task::Claim {
                    ask_legacy: self.legacy.is_some(),
                    claim: pending,
                })),
            },
            Then::Claimed { session, username } => {
                let acted = response.into_acted().map_err(unexpected)?;
                Step::Done(self.claimed(session, username, acted))
            }
            Then::Acted => Step::Done(devices::acted(response.into_acted().map_err(unexpected)?)),
            Then::Devices => Step::Done(devices::listed(
                response.into_devices().map_err(unexpected)?,
            )),
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
            Task::Claim { claim, ask_legacy } => self.claim(claim, ask_legacy, memory),
            Task::CreateGuest(pending) => {
                let asking = self.guest_asking(pending);
                let response = self.call(&asking.request);
                match self.resume(asking, response) {
                    Step::Done(reply) => reply,
                    // A guest's create answers without hashing.
                    Step::Hash(_) => Reply::unavailable("internal error, retry later"),
                }
            }
        })
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
            Task::Conflict { found, .. } => self.count_wrong(&found),
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
                Task::Create { ask_legacy, .. } | Task::Claim { ask_legacy, .. } => *ask_legacy,
                Task::Conflict { .. } => true,
                Task::CreateGuest(_) => false,
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
            Task::Create { ask_legacy, .. } | Task::Claim { ask_legacy, .. } => {
                !ask_legacy && self.hasher.is_cheap()
            }
            Task::CreateGuest(_) => true,
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
