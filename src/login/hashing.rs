//! The hash threads and their permits: the argon2 part of a request ([`Service::finish`]).
//!
//! A worker that meets a request needing a hash passes the whole connection on as a
//! [`HashJob`], so its later messages wait their turn and replies never overtake each other,
//! and a flood of logins cannot hold up requests that need no hash. [`Permits`] caps the
//! hashes the hash threads compute at once. A quick hash (see [`Service::is_quick`]) is no
//! hash job: a worker computes it itself, with [`finish_quick`] in its own memory.

use super::conn::Conn;
use super::returns::{guarded, Returns};
use crate::auth::password::Memory;
use crate::metrics::Metrics;
use crate::protocol::gateway::{Form, Id, Op, Reply};
use crate::service::{Finish, Finished, HashTask, Service};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

/// A connection for a hash thread, with the request it stopped at.
pub struct HashJob {
    pub conn: Box<Conn>,
    pub form: Form,
    pub id: Option<Id>,
    pub task: HashTask,
}

impl HashJob {
    /// Finish the job's request with `finish`: answer it and give the connection back to the
    /// I/O thread, or, where it must ask the old server ([`Finish::AskOld`]), send it on to
    /// `old_server` (the old-server stage). When that stage's queue is full the service
    /// answers the task without asking ([`Service::not_asked`]). A panic closes the
    /// connection.
    pub fn finish_with(
        self,
        returns: &Returns,
        old_server: &Sender<HashJob>,
        service: &Service,
        finish: impl FnOnce(HashTask) -> Finish,
    ) {
        let HashJob {
            conn,
            form,
            id,
            task,
        } = self;
        returns.contained(conn.token(), || {
            let op = task.op();
            let (mut conn, form, id, reply) = match finish(task) {
                Finish::Reply(reply) => (conn, form, id, reply),
                Finish::AskOld(task) => {
                    match old_server.try_send(HashJob {
                        conn,
                        form,
                        id,
                        task,
                    }) {
                        Ok(()) => return,
                        Err(full) => {
                            let job = full.into_inner();
                            let reply = service.not_asked(job.task);
                            (job.conn, job.form, job.id, reply)
                        }
                    }
                }
            };
            conn.answer(form, Some(op), &reply, id.as_ref());
            returns.give_back(conn);
        });
    }

    /// Answer the job's request with what `reply` makes of its task, and give the connection
    /// back to the I/O thread; a panic closes the connection instead.
    pub fn answer_with(self, returns: &Returns, reply: impl FnOnce(HashTask) -> Reply) {
        let HashJob {
            mut conn,
            form,
            id,
            task,
        } = self;
        returns.contained(conn.token(), || {
            let op = task.op();
            let reply = reply(task);
            conn.answer(form, Some(op), &reply, id.as_ref());
            returns.give_back(conn);
        });
    }
}

/// Caps the hashes the hash threads compute at once, and holds argon2's scratch memory: one
/// [`Memory`] per permit, so memory stays at (permits) x (memory cost) however many threads
/// hash. Hash threads wait for a permit.
pub struct Permits {
    metrics: Metrics,
    free: Mutex<Vec<Memory>>,
    freed: Condvar,
}

/// A permit to hash, with its memory; given back on drop.
pub struct Permit<'a> {
    permits: &'a Permits,
    memory: Memory,
}

impl Permit<'_> {
    /// The argon2 part of a request, in this permit's memory.
    pub fn finish(&mut self, service: &Service, task: HashTask) -> Finish {
        let memory = &mut self.memory;
        let op = task.op();
        counted(
            op,
            &self.permits.metrics,
            || service.finish(task, memory),
            Finish::Reply,
        )
    }
}

/// [`Service::finish_quick`], in `memory` (a worker's).
pub fn finish_quick(
    service: &Service,
    task: HashTask,
    memory: &mut Memory,
    metrics: &Metrics,
) -> Finished {
    let op = task.op();
    counted(
        op,
        metrics,
        || service.finish_quick(task, memory),
        Finished::Done,
    )
}

/// `hash`, the argon2 part of an `op` request, counted as a hash in progress; a panic in it
/// is answered "unavailable".
pub(super) fn counted<T>(
    op: Op,
    metrics: &Metrics,
    hash: impl FnOnce() -> T,
    on_panic: impl FnOnce(Reply) -> T,
) -> T {
    metrics.hashing.inc();
    let done = guarded(op, hash, on_panic);
    metrics.hashing.dec();
    done
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.permits.free.lock().push(memory);
        self.permits.freed.notify_one();
    }
}

impl Permits {
    /// `permits` hashes at once.
    pub fn new(permits: usize, metrics: Metrics) -> Permits {
        Permits {
            metrics,
            free: Mutex::new((0..permits).map(|_| Memory::default()).collect()),
            freed: Condvar::new(),
        }
    }

    /// A permit, waiting for one to be freed.
    fn permit(&self) -> Permit<'_> {
        let mut free = self.free.lock();
        loop {
            if let Some(memory) = free.pop() {
                return Permit {
                    permits: self,
                    memory,
                };
            }
            self.freed.wait(&mut free);
        }
    }
}

/// The hash thread loop: until the hash channel closes.
pub fn run_hasher(
    hash_jobs: Receiver<HashJob>,
    old_server: Sender<HashJob>,
    permits: Arc<Permits>,
    service: Arc<Service>,
    returns: Arc<Returns>,
) {
    for job in hash_jobs {
        job.finish_with(&returns, &old_server, &service, |task| {
            permits.permit().finish(&service, task)
        });
    }
}
