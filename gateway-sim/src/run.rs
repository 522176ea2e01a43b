//! What a run's threads share: the kinds of request it mixes with the code each must get, its
//! live counters, and the grace after its end. A leaf: [`crate::stress`] runs, and
//! [`crate::report`] records, in these terms.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

/// The kinds of request a run mixes, each with the code it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A registered user, right password: 3.
    Login,
    /// A fresh name: 4.
    Register,
    /// A wrong password for a registered decoy account: 2, or 8 once failures have locked
    /// it. Decoys are never the accounts that logins use, so those are never locked.
    BadPass,
    /// A valid name nobody registered: 1.
    Unknown,
    /// A name that breaks the rules: 1.
    Invalid,
    /// An unknown OP: 6.
    Malformed,
    /// `verify` of a token from an earlier login of the run: 9 (a login, 3, until the run has
    /// a token).
    Verify,
    /// A device's login, of a guest made before the run: 3.
    Device,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Login,
        Kind::Register,
        Kind::BadPass,
        Kind::Unknown,
        Kind::Invalid,
        Kind::Malformed,
        Kind::Verify,
        Kind::Device,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Register => "register",
            Kind::BadPass => "badpass",
            Kind::Unknown => "unknown",
            Kind::Invalid => "invalid",
            Kind::Malformed => "malformed",
            Kind::Verify => "verify",
            Kind::Device => "device",
        }
    }

    /// Whether a correct server may answer this kind with `code`.
    pub fn accepts(self, code: u64) -> bool {
        match self {
            Kind::Login | Kind::Device => code == 3,
            Kind::Register => code == 4,
            Kind::BadPass => code == 2 || code == 8,
            Kind::Unknown | Kind::Invalid => code == 1,
            Kind::Malformed => code == 6,
            Kind::Verify => code == 9 || code == 3,
        }
    }
}

/// How long requests still in flight when `--duration` ends may take to be answered; past it
/// they are reported as unfinished.
pub const GRACE: Duration = Duration::from_secs(2);

/// Shared between the threads of a run.
#[derive(Default)]
pub struct Live {
    /// Requests answered.
    pub completed: AtomicU64,
    /// Requests that met a transport error.
    pub errors: AtomicU64,
    /// Tickets drawn: the next request's number.
    pub(crate) tickets: AtomicU64,
    /// Set when the run must end early.
    pub(crate) stop: AtomicBool,
    /// Open loop: arrivals due within the run that were never sent (it could not keep up).
    pub unsent: AtomicU64,
}
