//! A registration: the name and password rules, the lookup (throttled per address, closed
//! under `--legacy-db` until the old names are imported), the hash, the create.

use super::steps::*;
use super::*;
use crate::accountdb::store::Account;
use crate::auth::password::Memory;
use crate::auth::secret::random_token;
use crate::legacy::{self, Known};
use crate::protocol::accountdb::DbRequest;
use crate::protocol::gateway::{RegisterFailure, Reply};
use crate::throttle::{Origin, RegisterLimit};

impl Service {
    pub(super) fn begin_register(
        &self,
        username: String,
        password: String,
        origin: Option<Origin>,
    ) -> Begun {
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

    /// A registration: its hash, then its create.
    pub(super) fn create(
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
        let (username, password, ask_legacy) = match task.0 {
            Task::Create {
                username,
                password,
                ask_legacy,
            } => (username, password, ask_legacy),
            Task::Claim { claim, ask_legacy } => {
                return match self.claim_asking(claim, ask_legacy, memory) {
                    Ok(asking) => Finished::Asking(asking),
                    Err(reply) => Finished::Done(*reply),
                }
            }
            Task::CreateGuest(pending) => return Finished::Asking(self.guest_asking(pending)),
            task => {
                return match self.finish(HashTask(task), memory) {
                    Finish::Reply(reply) => Finished::Done(reply),
                    Finish::AskOld(task) => Finished::AskOld(task),
                }
            }
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
    pub(super) fn new_account(
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
}
