//! The steps a request runs in, and what passes between them: what [`Service::begin`](super::Service::begin)
//! decided, what waits for the account tier's response, what is left to hash, and what
//! finishing came to. Plain data; the service's files fill them in.

use super::turns::NameTurn;
use crate::accountdb::store::Account;
use crate::clock::Millis;
use crate::protocol::accountdb::{DbRequest, SessionRef};
use crate::protocol::gateway::{Op, Reply};
use crate::throttle::Origin;
use crate::tokens::Claims;

/// What [`Service::begin`](super::Service::begin) decided.
pub enum Begun {
    /// Decided without the store.
    Step(Step),
    /// It needs the store's answer to a question: ask it (with others, see
    /// [`Accounts::call_all`](crate::accountdb::accounts::Accounts::call_all)), then [`Service::resume`](super::Service::resume).
    Asking(Asking),
}

/// A gateway request waiting for the response to its account-db request. Holds a password:
/// it has no `Debug`.
pub struct Asking {
    /// What to ask the account tier.
    pub request: DbRequest,
    /// What to do with the response.
    pub(super) then: Then,
}

/// What a request does with its answer.
pub(super) enum Then {
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
    /// A device's login (its lookup, or its guest's create).
    Device(DevicePending),
    /// A claim's check of the name, as a registration's.
    Claim(ClaimPending),
    /// A claim's write: its session, for the new token, and the name taken.
    Claimed {
        session: SessionRef,
        username: String,
    },
    /// `link_device` or `unlink_device`.
    Acted,
    /// `devices`.
    Devices,
}

/// A device's login waiting for the store.
pub(super) struct DevicePending {
    pub(super) device_id: String,
    /// SHA-256 of the secret, hex.
    pub(super) secret_hash: String,
    pub(super) origin: Option<Origin>,
    /// When the device was looked up: a session it leads to begins then.
    pub(super) looked_up: Millis,
}

/// A claim waiting for its name's check, then its hash. Holds a password.
pub(super) struct ClaimPending {
    pub(super) session: SessionRef,
    pub(super) username: String,
    pub(super) password: String,
}

/// A login (or password change) waiting for its lookup.
pub(super) struct Pending {
    pub(super) username: String,
    pub(super) password: String,
    pub(super) origin: Option<Origin>,
    /// `change_password`'s new password.
    pub(super) new_password: Option<String>,
    pub(super) turn: NameTurn,
}

/// What [`Service::resume`](super::Service::resume) decided.
pub enum Step {
    /// The answer, reached without hashing.
    Done(Reply),
    /// The answer needs argon2: run [`Service::finish`](super::Service::finish) on it.
    Hash(HashTask),
}

/// What [`Service::finish_quick`](super::Service::finish_quick) decided.
pub enum Finished {
    /// The answer.
    Done(Reply),
    /// A registration, hashed: its create is to be asked (with others, see
    /// [`Accounts::call_all`](crate::accountdb::accounts::Accounts::call_all)), then [`Service::resume`](super::Service::resume).
    Asking(Asking),
    /// A wrong password to ask the old server about (see [`Finish::AskOld`]).
    AskOld(HashTask),
}

/// What [`Service::finish`](super::Service::finish) came to.
pub enum Finish {
    /// The reply.
    Reply(Reply),
    /// A wrong password typed in another case than its account's, under `--legacy-db`: the
    /// old server is to be asked about the spelling typed, on the old-server stage, before the
    /// failure is counted ([`Service::asks_legacy`](super::Service::asks_legacy) says so of this task).
    AskOld(HashTask),
}

/// Why a password check did not let a login on.
pub(super) enum Refused {
    /// The reply: a wrong password (counted), a name conflict, an error.
    Reply(Box<Reply>),
    /// Not counted yet: ask the old server first (see [`Finish::AskOld`]).
    AskOld,
}

impl Refused {
    /// What `found`'s `op` (a login or a password change) finishes with.
    pub(super) fn finish(self, found: Verification, op: Op) -> Finish {
        match self {
            Refused::Reply(reply) => Finish::Reply(*reply),
            Refused::AskOld => Finish::AskOld(HashTask(Task::Conflict { found, op })),
        }
    }
}

/// Argon2 work still to do for one request. Holds a password: it has no `Debug`.
pub struct HashTask(pub(super) Task);

/// A login's account, found, and what it takes to verify the password.
pub(super) struct Verification {
    pub(super) account: Account,
    /// The name as the player typed it: the account's spelling, or another case of it.
    pub(super) typed: String,
    pub(super) password: String,
    pub(super) origin: Option<Origin>,
    /// A success changes nothing the store keeps: it need not be reported.
    pub(super) settled: bool,
    /// When the account was read: a session it leads to begins then.
    pub(super) looked_up: Millis,
    /// This name's turn on this login-server, until the password is verified.
    pub(super) _turn: NameTurn,
}

/// A name account-db does not know, to ask the old account server about (`--legacy-db`), or an
/// account reserved for its old owner by `account-db import`.
pub(super) struct Migrate {
    /// Spelled as the player typed it, or as the reservation stored it: the old server
    /// compares names exactly.
    pub(super) username: String,
    /// The name as the player typed it (another case of a reservation's, perhaps).
    pub(super) typed: String,
    pub(super) password: String,
    pub(super) origin: Option<Origin>,
    /// `change_password`'s new password: the account moves with it.
    pub(super) new_password: Option<String>,
    /// The reservation to replace, else a new account is made.
    pub(super) reserved: Option<Account>,
    pub(super) looked_up: Millis,
    pub(super) _turn: NameTurn,
}

pub(super) enum Task {
    Verify(Verification),
    /// A login's (or `op`: a password change's) password failed against an account that holds
    /// the name in another case than typed: ask the old server about the spelling typed, then
    /// answer 13 or count the failure (see [`Service::name_conflict`](super::Service::name_conflict)).
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
    /// A guest takes a name and a password: hashed as a registration's, then written.
    Claim {
        claim: ClaimPending,
        ask_legacy: bool,
    },
    /// A device's first login: its guest to create (no hashing; quick).
    CreateGuest(DevicePending),
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
            Task::Claim { .. } => Op::Claim,
            Task::CreateGuest(_) => Op::Device,
        }
    }
}
