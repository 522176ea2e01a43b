//! Per-name turns: at most a few logins of one name checked at once on one login-server.

use crate::auth::names::fold;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

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
pub(super) struct Verifying(Mutex<HashMap<String, u8>>);

impl Verifying {
    /// A turn of `username` (in any case), unless [`TURNS_PER_NAME`] are taken.
    pub(super) fn take(self: &Arc<Self>, username: &str) -> Option<NameTurn> {
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
pub(super) struct NameTurn {
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
