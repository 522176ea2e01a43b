//! The costly stage: logins whose stored hash costs more than
//! [`COST_FACTOR`](crate::auth::password::COST_FACTOR) times the
//! configured parameters ([`Hasher::is_costly`](crate::auth::password::Hasher::is_costly):
//! imported before imports were capped, or made before `--hash-params` were lowered).
//!
//! They are verified one at a time, on a thread of their own, never on a hash thread: however
//! many arrive, the hash threads keep serving everyone else. Each verification gets fresh
//! scratch memory, given back to the system when it ends, so a 1 GiB hash does not leave 1 GiB
//! behind. A login waits for its turn at most `--db-timeout` (and at most [`QUEUE`] wait),
//! then is answered "unavailable" (7); a successful one re-hashes the password at the
//! configured parameters, so its cost is paid once.
//!
//! Two threads: the dispatcher holds the waiting logins and answers those whose wait is over,
//! even while the verifier is busy; the verifier takes one login at a time from it.

use super::hashing::{counted, HashJob};
use super::returns::Returns;
use crate::auth::password::Memory;
use crate::metrics::Metrics;
use crate::protocol::gateway::Reply;
use crate::service::{Finish, Service};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Costly logins that may wait at once; one more is answered "unavailable" at once.
pub const QUEUE: usize = 16;

/// How often the dispatcher looks for waits that are over, at the least.
const TICK: Duration = Duration::from_millis(50);

/// A login for the costly stage, and when it was handed on.
pub struct CostlyJob {
    pub job: HashJob,
    pub queued: Instant,
}

/// What the costly stage's threads share.
pub struct CostlyStage {
    pub service: Arc<Service>,
    pub returns: Arc<Returns>,
    pub metrics: Metrics,
    /// How long a login may wait for its turn: `--db-timeout`.
    pub wait: Duration,
}

impl CostlyStage {
    /// Answer `job` "unavailable" and give its connection back.
    fn refuse(&self, CostlyJob { job, .. }: CostlyJob) {
        job.answer_with(&self.returns, |_| {
            Reply::unavailable("server busy, retry later")
        });
    }

    /// The dispatcher: until `jobs` closes, keep the waiting logins in order, hand the oldest
    /// to the verifier when it is free, and answer those that waited too long.
    pub fn dispatch(&self, jobs: Receiver<CostlyJob>, verifier: Sender<CostlyJob>) {
        let mut waiting: VecDeque<CostlyJob> = VecDeque::new();
        loop {
            while waiting
                .front()
                .is_some_and(|j| j.queued.elapsed() >= self.wait)
            {
                if let Some(job) = waiting.pop_front() {
                    self.refuse(job);
                }
            }
            if let Some(job) = waiting.pop_front() {
                // A rendezvous: taken only if the verifier is waiting for one.
                match verifier.try_send(job) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(job)) => waiting.push_front(job),
                    Err(TrySendError::Disconnected(job)) => {
                        self.refuse(job);
                        continue;
                    }
                }
            }
            let until_oldest_is_over = waiting
                .front()
                .map_or(TICK, |j| self.wait.saturating_sub(j.queued.elapsed()));
            match jobs.recv_timeout(until_oldest_is_over.min(TICK)) {
                Ok(job) if waiting.len() >= QUEUE => self.refuse(job),
                Ok(job) => waiting.push_back(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for job in waiting {
            self.refuse(job);
        }
    }

    /// The verifier: one costly login at a time, each in fresh memory, freed after.
    pub fn verify(&self, jobs: Receiver<CostlyJob>) {
        for CostlyJob { job, .. } in jobs {
            job.answer_with(&self.returns, |task| {
                let op = task.op();
                // Fresh scratch, dropped with this closure: a costly hash's memory goes back
                // to the system at once.
                let mut memory = Memory::default();
                // The old server is not asked from here (this stage holds no sender to its
                // stage, so that a long verification cannot hold up a shutdown there): a
                // costly account's wrong password typed in another case is answered as any.
                let finish = || match self.service.finish(task, &mut memory) {
                    Finish::Reply(reply) => reply,
                    Finish::AskOld(task) => self.service.not_asked(task),
                };
                counted(op, &self.metrics, finish, |r| r)
            });
        }
    }
}
