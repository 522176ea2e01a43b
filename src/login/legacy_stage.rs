//! The old-server stage: requests that ask the old account server (`--legacy-db`): a login of
//! a name account-db does not know (or reserved for its old owner), a registration, which
//! asks whether the old server holds the name, and a login typed in another case than its
//! account's, whose wrong password asks whether the old server holds the spelling typed.
//!
//! They run on threads of their own, as many as `--legacy-db-connections` (the old server's
//! requests at once), never on a hash thread: an old server that answers slowly holds these
//! threads only, and local accounts' logins keep their hash threads. A full queue ([`QUEUE`]
//! waiting) is answered "unavailable" (7) at once. A moved account's argon2 hash is computed
//! here too, in each thread's own memory: at most `--legacy-db-connections` hashes beside the
//! hash threads' permits.

use super::hashing::{counted, HashJob};
use super::returns::Returns;
use crate::auth::password::Memory;
use crate::metrics::Metrics;
use crate::service::{Finish, Service};
use crossbeam_channel::Receiver;
use std::sync::Arc;

/// Requests that may wait for the old-server stage; one more is answered "unavailable".
pub const QUEUE: usize = 64;

/// One old-server stage thread: until the channel closes.
pub fn run(
    jobs: Receiver<HashJob>,
    service: Arc<Service>,
    returns: Arc<Returns>,
    metrics: Metrics,
) {
    let mut memory = Memory::default();
    for job in jobs {
        job.answer_with(&returns, |task| {
            let op = task.op();
            let finish = || match service.finish(task, &mut memory) {
                Finish::Reply(reply) => reply,
                // Here the old server is asked at once: a task asks only once.
                Finish::AskOld(task) => service.not_asked(task),
            };
            counted(op, &metrics, finish, |r| r)
        });
    }
}
