//! The workers: each takes a connection holding at least one whole message off the job channel
//! and answers its messages in order, doing the cheap part of each ([`Service::begin`]). A
//! request that needs argon2 is hashed here when a permit is free and nothing waits, else the
//! connection travels on to a hash thread (see [`super::hashing`]).
//!
//! A panic in the service answers that request "unavailable" (7); a panic anywhere else loses
//! only that connection. Either way the thread lives on, so the pool never shrinks.

use super::conn::{Conn, Incoming};
use super::hashing::{HashJob, Permits};
use super::returns::{Back, Returns};
use crate::metrics::Metrics;
use crate::protocol::gateway::{Op, Reply};
use crate::service::{Service, Step};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Most messages one worker answers on one connection before giving others a turn.
const BATCH: usize = 64;
/// Most bytes of messages one worker takes from one connection in a turn: a client of big
/// messages gets a turn as long as a client of small ones, not 64 times its share.
const TURN_BYTES: usize = 64 * 1024;

/// A connection for a worker: it holds a whole message.
pub struct Job(pub Box<Conn>);

/// Run the service's part of a request; if it panics, log it and answer "unavailable".
pub fn guarded<T>(op: Op, f: impl FnOnce() -> T, on_panic: impl FnOnce(Reply) -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!(
            op = op.as_str(),
            "panic while handling a request; answered unavailable"
        );
        on_panic(Reply::unavailable("internal error, retry later"))
    })
}

/// What a worker thread holds.
pub struct Worker {
    pub jobs: Receiver<Job>,
    pub hash_jobs: Sender<HashJob>,
    pub permits: Arc<Permits>,
    pub service: Arc<Service>,
    pub returns: Arc<Returns>,
    pub metrics: Metrics,
    /// Read buffer, for taking pipelined requests that arrived while answering.
    pub scratch: Vec<u8>,
    pub max_message: usize,
}

impl Worker {
    /// The worker loop: until the job channel closes.
    pub fn run(mut self) {
        // Held apart from `self`, which `answer` borrows mutably.
        let returns = self.returns.clone();
        while let Ok(Job(conn)) = self.jobs.recv() {
            self.metrics.busy_workers.inc();
            returns.contained(conn.token(), || self.answer(conn));
            self.metrics.busy_workers.dec();
        }
    }

    /// Answer the connection's whole messages in order, until one needs a hash thread.
    fn answer(&mut self, mut conn: Box<Conn>) {
        let service = &*self.service;
        for _ in 0..BATCH {
            // A peer that does not read its replies gets no more until it does.
            if !conn.is_open() || (conn.output_full() && !matches!(conn.flush(), Ok(true))) {
                break;
            }
            if conn.turn_bytes() >= TURN_BYTES {
                break;
            }
            let Some(incoming) = conn.next_message_reading(&mut self.scratch, self.max_message)
            else {
                break;
            };
            let (form, request, id) = match incoming {
                Incoming::Broken(error) => {
                    conn.refuse(error);
                    break;
                }
                Incoming::Bad { form, bad } => {
                    conn.answer_bad(form, bad);
                    continue;
                }
                Incoming::Request { form, request, id } => (form, request, id),
            };
            let op = request.op;
            let task = match guarded(op, || service.begin(request), Step::Done) {
                Step::Done(reply) => {
                    conn.answer(form, Some(op), &reply, id.as_ref());
                    continue;
                }
                Step::Hash(task) => task,
            };
            if let Some(mut permit) = self.permits.try_permit() {
                let reply = permit.finish(service, task);
                conn.answer(form, Some(op), &reply, id.as_ref());
                continue;
            }
            // Replies so far go out now; the connection travels on to a hash thread.
            if let Err(e) = conn.flush() {
                tracing::debug!(peer = %conn.peer(), error = %e, "write failed");
                self.returns.send(Back::Gone(conn.token()));
                return;
            }
            let job = HashJob {
                conn,
                form,
                id,
                task,
            };
            match self.hash_jobs.try_send(job) {
                Ok(()) => return,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    conn = job.conn;
                    let busy = Reply::unavailable("server busy, retry later");
                    conn.answer(job.form, Some(op), &busy, job.id.as_ref());
                }
            }
        }
        self.returns.give_back(conn);
    }
}
