//! The two thread pools behind the I/O thread, and the way connections come back from them.
//!
//! - **Workers** take a connection holding at least one whole message off the job channel and
//!   answer its messages in order, doing the cheap part of each ([`Service::begin`]).
//! - **Hash threads** do the argon2 part ([`Service::finish`]). A worker that meets a request
//!   needing a hash passes the whole connection on, so its later messages wait their turn and
//!   replies never overtake each other, and a flood of logins cannot hold up requests that need
//!   no hash. [`Permits`] caps the hashes computed at once; while a permit is free and nothing
//!   is queued, a worker hashes itself instead of handing over.
//!
//! Every connection goes back to the I/O thread (or is reported gone) through [`Returns`].
//! A panic in the service answers that request 7; a panic anywhere else loses only that
//! connection. Either way the thread lives on, so the pools never shrink.

use super::conn::{Conn, Incoming};
use crate::auth::password::Memory;
use crate::metrics::Metrics;
use crate::protocol::gateway::{Form, Id, Op, Reply};
use crate::service::{HashTask, Service, Step};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Most messages one worker answers on one connection before giving others a turn.
const BATCH: usize = 64;

/// A connection for a worker: it holds a whole message.
pub struct Job(pub Box<Conn>);

/// A connection for a hash thread, with the request it stopped at.
pub struct HashJob {
    conn: Box<Conn>,
    form: Form,
    id: Option<Id>,
    task: HashTask,
}

/// What comes back to the I/O thread.
pub enum Back {
    /// The connection, to watch again.
    Conn(Box<Conn>),
    /// The connection in this slot was closed, or lost to a panic.
    Gone(usize),
}

/// The way back to the I/O thread: a channel, and a wake-up that is sent only when the I/O
/// thread may be asleep, not once per connection.
pub struct Returns {
    tx: Sender<Back>,
    waker: mio::Waker,
    asleep: AtomicBool,
}

impl Returns {
    pub fn new(tx: Sender<Back>, waker: mio::Waker) -> Self {
        Returns {
            tx,
            waker,
            asleep: AtomicBool::new(true),
        }
    }

    /// Called by the I/O thread before it drains the channel.
    pub fn woken(&self) {
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// Called by the I/O thread when the channel is empty and it is about to poll.
    pub fn sleeping(&self) {
        self.asleep.store(true, Ordering::SeqCst);
    }

    /// Wake the I/O thread so it looks at its flags.
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake the I/O thread");
        }
    }

    fn send(&self, back: Back) {
        // A send fails only once the I/O thread has gone (shutdown): the connection closes.
        if self.tx.send(back).is_ok() && self.asleep.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Write what can be written now and hand the connection back, or report it gone.
    fn give_back(&self, mut conn: Box<Conn>) {
        let token = conn.token;
        match conn.flush() {
            Ok(_) if !conn.done() => self.send(Back::Conn(conn)),
            _ => self.send(Back::Gone(token)),
        }
    }
}

/// Run the service's part of a request; if it panics, log it and answer 7 instead.
fn guarded<T>(op: Op, f: impl FnOnce() -> T, on_panic: impl FnOnce(Reply) -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!(
            op = op.as_str(),
            "panic while handling a request; answered 7"
        );
        on_panic(Reply::unavailable("internal error, retry later"))
    })
}

/// Run one job; if anything outside the service panics, the connection is lost, not the
/// thread.
fn contained(returns: &Returns, token: usize, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(token, "panic while handling a connection; closed it");
        returns.send(Back::Gone(token));
    }
}

/// Caps the hashes computed at once, and holds argon2's scratch memory: one [`Memory`] per
/// permit, so memory stays at (permits) x (memory cost) however many threads hash. Hash threads
/// wait for a permit; a worker takes one only if it is free at once and no hash job is queued,
/// and then hashes itself, saving the hand-off to a hash thread when capacity sits idle.
pub struct Permits {
    metrics: Arc<Metrics>,
    free: Mutex<Vec<Memory>>,
    freed: Condvar,
    /// The hash queue, to see whether jobs are waiting (never to take them).
    queue: Receiver<HashJob>,
}

/// A permit to hash, with its memory; given back on drop.
struct Permit<'a> {
    permits: &'a Permits,
    memory: Memory,
}

impl Permit<'_> {
    /// The argon2 part of a request, in this permit's memory, counted as a hash in progress.
    fn finish(&mut self, service: &Service, task: HashTask) -> Reply {
        let hashing = &self.permits.metrics.hashing;
        hashing.fetch_add(1, Ordering::Relaxed);
        let op = task.op();
        let reply = guarded(op, || service.finish(task, &mut self.memory), |r| r);
        hashing.fetch_sub(1, Ordering::Relaxed);
        reply
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.permits.free.lock().push(memory);
        self.permits.freed.notify_one();
    }
}

impl Permits {
    /// `permits` hashes at once; `queue` is the hash threads' channel.
    pub fn new(permits: usize, queue: Receiver<HashJob>, metrics: Arc<Metrics>) -> Permits {
        Permits {
            metrics,
            free: Mutex::new((0..permits).map(|_| Memory::default()).collect()),
            freed: Condvar::new(),
            queue,
        }
    }

    fn try_permit(&self) -> Option<Permit<'_>> {
        let mut free = self.free.lock();
        if !self.queue.is_empty() {
            return None;
        }
        let memory = free.pop()?;
        Some(Permit {
            permits: self,
            memory,
        })
    }

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

/// What a worker thread holds.
pub struct Worker {
    pub jobs: Receiver<Job>,
    pub hash_jobs: Sender<HashJob>,
    pub permits: Arc<Permits>,
    pub service: Arc<Service>,
    pub returns: Arc<Returns>,
    /// Read buffer, for taking pipelined requests that arrived while answering.
    pub scratch: Vec<u8>,
    pub max_message: usize,
}

impl Worker {
    /// The worker loop: until the job channel closes.
    pub fn run(mut self) {
        // Held apart from `self`, which `answer` borrows mutably.
        let (returns, metrics) = (self.returns.clone(), self.permits.metrics.clone());
        while let Ok(Job(conn)) = self.jobs.recv() {
            let token = conn.token;
            metrics.busy_workers.fetch_add(1, Ordering::Relaxed);
            contained(&returns, token, || self.answer(conn));
            metrics.busy_workers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Answer the connection's whole messages in order, until one needs a hash thread.
    fn answer(&mut self, mut conn: Box<Conn>) {
        let service = &*self.service;
        for _ in 0..BATCH {
            if conn.closing {
                break;
            }
            let incoming = match conn.next_message() {
                Some(incoming) => incoming,
                // A pipelining client may have sent more meanwhile: take it without a detour
                // through the I/O thread.
                None if !conn.eof && conn.fill(&mut self.scratch, self.max_message).is_ok() => {
                    conn.ready_at = std::time::Instant::now();
                    match conn.next_message() {
                        Some(incoming) => incoming,
                        None => break,
                    }
                }
                None => break,
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
                tracing::debug!(peer = %conn.peer, error = %e, "write failed");
                self.returns.send(Back::Gone(conn.token));
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

/// The hash thread loop: until the hash channel closes.
pub fn run_hasher(
    hash_jobs: Receiver<HashJob>,
    permits: Arc<Permits>,
    service: Arc<Service>,
    returns: Arc<Returns>,
) {
    for HashJob {
        mut conn,
        form,
        id,
        task,
    } in hash_jobs
    {
        let token = conn.token;
        contained(&returns, token, || {
            let op = task.op();
            let reply = permits.permit().finish(&service, task);
            conn.answer(form, Some(op), &reply, id.as_ref());
            returns.give_back(conn);
        });
    }
}
