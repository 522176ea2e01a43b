//! Login and registration: validate, look up, verify or hash, create. No sockets.
//!
//! A request runs in two steps so that the expensive one can be kept off the workers:
//! [`Service::begin`] does everything cheap (validation, the store lookup) and either answers
//! or hands back a [`HashTask`]; [`Service::finish`] does the argon2 work the task needs, and
//! for a registration the store write after it. The server runs `finish` on its hash threads.

use crate::accountdb::store::{Account, Created, Store};
use crate::auth::names::Rules;
use crate::auth::password::{Hasher, Memory};
use crate::protocol::gateway::{Op, RegisterFailure, Reply, Request};
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
    Verify { account: Account, password: String },
    Create { username: String, password: String },
}

impl HashTask {
    /// The operation this task finishes, for logs and metrics.
    pub fn op(&self) -> Op {
        match self.0 {
            Task::Verify { .. } => Op::Login,
            Task::Create { .. } => Op::Register,
        }
    }
}

/// The login and registration logic over some [`Store`].
pub struct Service {
    store: Arc<dyn Store>,
    hasher: Hasher,
    rules: Rules,
}

fn store_unavailable(e: &dyn std::fmt::Display) -> Reply {
    tracing::warn!(error = %e, "account store unavailable");
    Reply::unavailable("account store unavailable, retry later")
}

impl Service {
    pub fn new(store: Arc<dyn Store>, hasher: Hasher, rules: Rules) -> Self {
        Service {
            store,
            hasher,
            rules,
        }
    }

    /// The cheap part of a request: answers it, or says what hashing it needs.
    pub fn begin(&self, request: Request) -> Step {
        let Request {
            op,
            username,
            password,
        } = request;
        let found = match op {
            // A name or password that could never have registered names no account.
            Op::Login if !self.rules.username_ok(&username) => {
                return Step::Done(Reply::no_such_user())
            }
            Op::Login if !self.rules.password_ok(&password) => {
                return Step::Done(Reply::wrong_password())
            }
            Op::Register if !self.rules.username_ok(&username) => {
                return Step::Done(Reply::register_failed(RegisterFailure::InvalidUsername))
            }
            Op::Register if !self.rules.password_ok(&password) => {
                return Step::Done(Reply::register_failed(RegisterFailure::InvalidPassword))
            }
            _ => match self.store.find(&username) {
                Ok(found) => found,
                Err(e) => return Step::Done(store_unavailable(&e)),
            },
        };
        match (op, found) {
            (Op::Login, None) => Step::Done(Reply::no_such_user()),
            (Op::Login, Some(account)) => Step::Hash(HashTask(Task::Verify { account, password })),
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
            Task::Verify { account, password } => {
                match self.hasher.verify(&password, &account.hash, memory) {
                    Ok(true) => Reply::logged_in(account.username),
                    Ok(false) => Reply::wrong_password(),
                    Err(e) => {
                        tracing::error!(error = %e, user = %account.username, "cannot verify");
                        Reply::unavailable("internal error, retry later")
                    }
                }
            }
            Task::Create { username, password } => {
                let hash = match self.hasher.hash(&password, memory) {
                    Ok(hash) => hash,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot hash a password");
                        return Reply::unavailable("internal error, retry later");
                    }
                };
                let account = Account { username, hash };
                match self.store.create(&account) {
                    Ok(Created::New) => Reply::registered(account.username),
                    Ok(Created::Exists) => Reply::register_failed(RegisterFailure::UsernameTaken),
                    Err(e) => store_unavailable(&e),
                }
            }
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

    fn service(dir: &std::path::Path) -> Service {
        let store = Arc::new(SqliteStore::open(dir).unwrap());
        Service::new(
            store,
            Hasher::new(HashParams::CHEAPEST).unwrap(),
            Rules::default(),
        )
    }

    fn request(op: Op, username: &str, password: &str) -> Request {
        Request {
            op,
            username: username.into(),
            password: password.into(),
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
