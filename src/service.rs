//! Login and registration: validate, look up, verify or hash, create. No sockets.
//!
//! A request runs in two steps so that the expensive one can be kept off the workers:
//! [`Service::begin`] does everything cheap (validation, the store lookup) and either answers
//! or hands back a [`HashTask`]; [`Service::finish`] does the argon2 work the task needs, and
//! for a registration the store write after it. The server runs `finish` on its hash threads.

use crate::accountdb::store::{Account, Created, Store};
use crate::auth::names::{normalize_password, Rules};
use crate::auth::password::{HashError, Hasher, Memory};
use crate::auth::secret::random_token;
use crate::metrics::Metrics;
use crate::protocol::gateway::{Op, RegisterFailure, Reply, Request};
use crate::throttle::{Origin, Policy, Throttle};
use std::sync::Arc;

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
    },
    /// An unknown user under `--hide-user-existence`: verify against a dummy hash, count the
    /// failure against the name as for a real account, answer "wrong password".
    Pretend {
        username: String,
        password: String,
        origin: Option<Origin>,
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

/// The login and registration logic over some [`Store`].
pub struct Service {
    store: Arc<dyn Store>,
    hasher: Hasher,
    options: Options,
    throttle: Throttle,
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
        store: Arc<dyn Store>,
        hasher: Hasher,
        options: Options,
        metrics: Metrics,
    ) -> Result<Self, HashError> {
        let dummy_hash = hasher.hash(&random_token(), &mut Memory::default())?;
        Ok(Service {
            store,
            hasher,
            throttle: Throttle::new(options.throttle),
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
        let rules = &self.options.rules;
        let hide = self.options.hide_user_existence;
        if op == Op::Login {
            if let Some(wait) = self.throttle.locked(&username, origin) {
                self.metrics.throttled.inc();
                return Step::Done(Reply::too_many_attempts(wait));
            }
        }
        let found = match op {
            // A name that could never have registered names no account.
            Op::Login if !rules.could_exist(&username) => Ok(None),
            // A password that could never have registered is wrong whoever's it is; it costs
            // the address, never the account, so short guesses cannot lock a victim out.
            Op::Login if !rules.password_ok(&password) => {
                self.throttle.failed(None, origin);
                return Step::Done(Reply::wrong_password());
            }
            Op::Register if !rules.username_ok(&username) => {
                return Step::Done(Reply::register_failed(RegisterFailure::InvalidUsername))
            }
            Op::Register if !rules.password_ok(&password) => {
                return Step::Done(Reply::register_failed(RegisterFailure::InvalidPassword))
            }
            Op::Register => match self.throttle.register(origin) {
                Err(wait) => {
                    self.metrics.throttled.inc();
                    return Step::Done(Reply::too_many_attempts(wait));
                }
                Ok(()) => self.store.find(&username),
            },
            Op::Login => self.store.find(&username),
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => return Step::Done(store_unavailable(&e, &self.metrics)),
        };
        match (op, found) {
            (Op::Login, None) if hide => Step::Hash(HashTask(Task::Pretend {
                username,
                password,
                origin,
            })),
            (Op::Login, None) => {
                self.throttle.failed(None, origin);
                Step::Done(Reply::no_such_user())
            }
            (Op::Login, Some(account)) => Step::Hash(HashTask(Task::Verify {
                account,
                password,
                origin,
            })),
            (Op::Register, Some(_)) => {
                Step::Done(Reply::register_failed(RegisterFailure::UsernameTaken))
            }
            (Op::Register, None) => Step::Hash(HashTask(Task::Create { username, password })),
        }
    }

    /// The argon2 part of a request, and for a registration the store write. `memory` is
    /// argon2's scratch space.
    pub fn finish(&self, task: HashTask, memory: &mut Memory) -> Reply {
        match task.0 {
            Task::Verify {
                account,
                password,
                origin,
            } => match self.verify(&password, &account.hash, memory) {
                Ok(Some(rehash)) => {
                    self.throttle.succeeded(&account.username, origin);
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
                    self.throttle.failed(Some(&account.username), origin);
                    Reply::wrong_password()
                }
                Err(e) => internal_error(&e),
            },
            Task::Pretend {
                username,
                password,
                origin,
            } => {
                // The result is always "no"; the work is what makes it indistinguishable (the
                // same verifications as a wrong password for a real account), and the name is
                // counted so that it locks like a real account.
                let _ = self.verify(&password, &self.dummy_hash, memory);
                self.throttle.failed(Some(&username), origin);
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
                match self.store.create(&account, &random_token()) {
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
                self.store
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
