//! Login and registration: validate, look up, verify or hash, create. No sockets.
//!
//! A request runs in two steps so that the expensive one can be kept off the workers:
//! [`Service::begin`] does everything cheap (validation, the store lookup) and either answers
//! or hands back a [`HashTask`]; [`Service::finish`] does the argon2 work the task needs, and
//! for a registration the store write after it. The server runs `finish` on its hash threads.

use crate::accountdb::accounts::Accounts;
use crate::accountdb::store::{Account, Created};
use crate::auth::names::{normalize_password, Rules};
use crate::auth::password::{HashError, Hasher, Memory};
use crate::auth::secret::random_token;
use crate::metrics::Metrics;
use crate::protocol::gateway::{Op, RegisterFailure, Reply, Request};
use crate::throttle::{Login, Origin, Policy, Registering};
use std::sync::Arc;
use std::time::Duration;

/// What [`Service::begin`] decided.
pub enum Step {
    /// The answer, reached without hashing.
    Done(Reply),
    /// The answer needs argon2: run [`Service::finish`] on it.
    Hash(HashTask),
}

/// Argon2 work still to do for one request. Holds a password: it has no `Debug`.
pub struct HashTask(Task);

enum Task {
    Verify {
        account: Account,
        password: String,
        origin: Option<Origin>,
        /// A success changes nothing the store keeps: it need not be reported.
        settled: bool,
    },
    /// An unknown user under `--hide-user-existence` (its failure counted already): verify
    /// against a dummy hash, answer "wrong password".
    Pretend {
        password: String,
    },
    Create {
        username: String,
        password: String,
    },
}

impl HashTask {
    /// The operation this task finishes, for logs and metrics.
    pub fn op(&self) -> Op {
        match self.0 {
            Task::Verify { .. } | Task::Pretend { .. } => Op::Login,
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
    /// Answer an unknown user "wrong password" (2) after a real verification, so neither the
    /// code nor the time tells whether the account exists. Defaults to off: the seed's gateway
    /// expects "no such user" (1).
    #[arg(long, env = "LOGIN_SERVER_HIDE_USER_EXISTENCE")]
    pub hide_user_existence: bool,
}

impl Default for Options {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// The login and registration logic over the account tier.
pub struct Service {
    accounts: Arc<dyn Accounts>,
    hasher: Hasher,
    options: Options,
    /// Verified against for unknown users under `hide_user_existence`.
    dummy_hash: String,
    metrics: Metrics,
}

fn store_unavailable(e: &dyn std::fmt::Display, metrics: &Metrics) -> Reply {
    tracing::warn!(error = %e, "account store unavailable");
    metrics.db_errors.inc();
    Reply::unavailable("account store unavailable, retry later")
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
        metrics: Metrics,
    ) -> Result<Self, HashError> {
        let dummy_hash = hasher.hash(&random_token(), &mut Memory::default())?;
        Ok(Service {
            accounts,
            hasher,
            options,
            dummy_hash,
            metrics,
        })
    }

    /// The cheap part of a request: answers it, or says what hashing it needs.
    pub fn begin(&self, request: Request) -> Step {
        let Request {
            op,
            username,
            password,
            ip,
        } = request;
        let origin = ip.map(Origin::from);
        match op {
            Op::Login => self.begin_login(username, password, origin),
            Op::Register => self.begin_register(username, password, origin),
        }
    }

    fn begin_login(&self, username: String, password: String, origin: Option<Origin>) -> Step {
        let rules = &self.options.rules;
        let hide = self.options.hide_user_existence;
        let failures = self.options.throttle.failures();
        // A name that could never have registered names no account; a password that could
        // never have registered is wrong whoever's it is. Either costs the address, never an
        // account, so that short guesses cannot lock a victim out: one round trip with an
        // address, none without.
        let could_exist = rules.could_exist(&username);
        if !could_exist || !rules.password_ok(&password) {
            if origin.is_some() {
                match self.accounts.failed(None, origin, &failures) {
                    Ok(Some(wait)) => return self.throttled(wait),
                    Ok(None) => {}
                    Err(e) => return Step::Done(store_unavailable(&e, &self.metrics)),
                }
            }
            return match (could_exist, hide) {
                (false, true) => Step::Hash(HashTask(Task::Pretend { password })),
                (false, false) => Step::Done(Reply::no_such_user()),
                (true, _) => Step::Done(Reply::wrong_password()),
            };
        }
        match self.accounts.login(&username, origin, &failures, hide) {
            Err(e) => Step::Done(store_unavailable(&e, &self.metrics)),
            Ok(Login::Locked(wait)) => self.throttled(wait),
            // Counted as a failure by the lookup already.
            Ok(Login::Open { account: None, .. }) if hide => {
                Step::Hash(HashTask(Task::Pretend { password }))
            }
            Ok(Login::Open { account: None, .. }) => Step::Done(Reply::no_such_user()),
            Ok(Login::Open {
                account: Some(account),
                settled,
            }) => Step::Hash(HashTask(Task::Verify {
                account,
                password,
                origin,
                settled,
            })),
        }
    }

    fn begin_register(&self, username: String, password: String, origin: Option<Origin>) -> Step {
        let rules = &self.options.rules;
        if !rules.username_ok(&username) {
            return Step::Done(Reply::register_failed(RegisterFailure::InvalidUsername));
        }
        if !rules.password_ok(&password) {
            return Step::Done(Reply::register_failed(RegisterFailure::InvalidPassword));
        }
        let limit = self.options.throttle.registrations();
        match self.accounts.register(&username, origin, &limit) {
            Err(e) => Step::Done(store_unavailable(&e, &self.metrics)),
            Ok(Registering::Locked(wait)) => self.throttled(wait),
            Ok(Registering::Taken) => {
                Step::Done(Reply::register_failed(RegisterFailure::UsernameTaken))
            }
            Ok(Registering::Free) => Step::Hash(HashTask(Task::Create { username, password })),
        }
    }

    fn throttled(&self, wait: Duration) -> Step {
        self.metrics.throttled.inc();
        Step::Done(Reply::too_many_attempts(wait))
    }

    /// The argon2 part of a request, and for a registration the store write. `memory` is
    /// argon2's scratch space.
    pub fn finish(&self, task: HashTask, memory: &mut Memory) -> Reply {
        match task.0 {
            Task::Verify {
                account,
                password,
                origin,
                settled,
            } => match self.verify(&password, &account.hash, memory) {
                Ok(Some(rehash)) => {
                    if !settled {
                        if let Err(e) = self.accounts.succeeded(&account.username, origin) {
                            tracing::warn!(user = %account.username, error = %e, "cannot clear the failed logins of an account");
                        }
                    }
                    if rehash || self.hasher.is_weaker(&account.hash) {
                        self.upgrade(&account.username, &password, memory);
                    }
                    Reply::logged_in(account.username)
                }
                Ok(None) => {
                    if self.options.hide_user_existence && self.hasher.is_weaker(&account.hash) {
                        // A cheaper old hash verifies faster than an unknown name's dummy: make
                        // up the difference, so the time does not tell the account exists.
                        let _ = self.hasher.verify(&password, &self.dummy_hash, memory);
                    }
                    let failures = self.options.throttle.failures();
                    if let Err(e) = self
                        .accounts
                        .failed(Some(&account.username), origin, &failures)
                    {
                        tracing::warn!(user = %account.username, error = %e, "cannot count a failed login");
                    }
                    Reply::wrong_password()
                }
                Err(e) => internal_error(&e),
            },
            Task::Pretend { password } => {
                // The result is always "no"; the work is what makes it indistinguishable (the
                // same verifications as a wrong password for a real account).
                let _ = self.verify(&password, &self.dummy_hash, memory);
                Reply::wrong_password()
            }
            Task::Create { username, password } => {
                let hash = match self.hasher.hash(&normalize_password(&password), memory) {
                    Ok(hash) => hash,
                    Err(e) => return internal_error(&e),
                };
                let account = Account::new(&username, &hash);
                // One id per registration: if the store's reply is lost, repeating the create
                // with it tells whether this registration was stored.
                match self.accounts.create(&account, &random_token()) {
                    Ok(Created::New) => Reply::registered(account.username),
                    Ok(Created::Exists) => Reply::register_failed(RegisterFailure::UsernameTaken),
                    Err(e) => store_unavailable(&e, &self.metrics),
                }
            }
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

    /// Re-hash a password (normalized) whose stored hash is weaker than the current parameters
    /// or was made from the password as typed. A failure only means the upgrade waits for the
    /// next login.
    fn upgrade(&self, username: &str, password: &str, memory: &mut Memory) {
        let result = self
            .hasher
            .hash(&normalize_password(password), memory)
            .map_err(|e| e.to_string())
            .and_then(|hash| {
                self.accounts
                    .update_hash(username, &hash)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(_) => tracing::info!(user = %username, "upgraded a weak password hash"),
            Err(error) => tracing::warn!(user = %username, %error, "cannot upgrade a weak hash"),
        }
    }

    /// Both steps on the calling thread.
    pub fn handle(&self, request: Request) -> Reply {
        match self.begin(request) {
            Step::Done(reply) => reply,
            Step::Hash(task) => self.finish(task, &mut Memory::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountdb::store::SqliteStore;
    use crate::auth::password::HashParams;
    use crate::protocol::gateway::Code;

    fn service_with(dir: &std::path::Path, options: Options) -> Service {
        let store = Arc::new(SqliteStore::open(dir).unwrap());
        let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
        Service::new(store, hasher, options, Metrics::default()).unwrap()
    }

    fn service(dir: &std::path::Path) -> Service {
        service_with(dir, Options::default())
    }

    fn request(op: Op, username: &str, password: &str) -> Request {
        Request {
            op,
            username: username.into(),
            password: password.into(),
            ip: None,
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
            Some(RegisterFailure::InvalidUsername)
        );
        assert_eq!(
            reason("bob", "short"),
            Some(RegisterFailure::InvalidPassword)
        );
        assert_eq!(
            reason("ALICE", "password1"),
            Some(RegisterFailure::UsernameTaken)
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
}
