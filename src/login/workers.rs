//! The workers. A worker takes every connection waiting on the job channel (each holds at
//! least one whole message; at most [`MAX_CONNS`] at once) and answers their messages in
//! order, in rounds: a round takes one request from each connection, asks account-db the
//! account-db requests of all of them at once ([`Service::call_all`]: one round trip, one wake-up of the
//! worker), then finishes each. Under load one wake serves many requests; when idle a round is
//! the single request it always was. A login whose verification is cheap (a fraction of a
//! millisecond) is verified here, in the worker's own argon2 memory, and so is a registration
//! whose hash is cheap: its create is asked once the round's other replies are out, with the
//! round's other creates. Every other request that needs argon2 (and then perhaps a durable
//! write or the old server) travels on with its connection to a hash thread (see
//! [`super::hashing`]), so that nothing slow holds up the rest of the round. A connection with
//! nothing more to answer goes back to the I/O thread at once.
//!
//! A worker also runs the TLS handshakes of gateway connections (their key exchange and
//! signature): a connection whose handshake leaves a whole message behind it (a seed-form
//! gateway sends its request with its Finished) is answered in the same turn.
//!
//! A panic in the service answers that request "unavailable" (7); a panic anywhere else loses
//! the connections the worker holds. Either way the thread lives on, so the pool never shrinks.

use super::conn::{Conn, Incoming};
use super::costly::CostlyJob;
use super::fairness::{Fairness, Key, Load, Shed, BACKLOG, BACKLOG_MEMORY};
use super::hashing::{self, HashJob};
use super::returns::{guarded, Back, Returns};
use crate::auth::password::Memory;
use crate::logging;
use crate::metrics::Metrics;
use crate::protocol::gateway::{Form, Id, Op, Reply};
use crate::service::{Asking, Begun, Finished, HashTask, Service, Step};
use crossbeam_channel::{Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Connections the I/O thread sends in one batch; a worker takes the batches waiting while it
/// holds fewer (so at most twice as many, less one): the most account-db requests in one round trip.
pub const MAX_CONNS: usize = 8;

/// Connections per batch: [`MAX_CONNS`], or 1 when every request opens its own account-db
/// connection (`--db-pool 0`, the seed's design): there is no round trip to share, and
/// connections are better opened by several workers at once than by one in turn.
pub fn batch_size(pooled: bool) -> usize {
    if pooled {
        MAX_CONNS
    } else {
        1
    }
}
/// Most rounds in one turn of a worker.
const ROUNDS: usize = 64;
/// Most messages one worker takes from one connection in a turn (whether or not they ask the
/// store) before giving others a turn.
const TURN_MESSAGES: usize = 64;
/// Most bytes of messages one worker takes from one connection in a turn: a client of big
/// messages gets a turn as long as a client of small ones, not 64 times its share.
const TURN_BYTES: usize = 64 * 1024;

/// Handshakes with the workers at most, per worker: enough to keep every worker busy with
/// them (a batch each, and one more waiting), never enough to fill the job channel, whose
/// room for them comes on top of `--queue`.
pub fn handshake_limit(workers: usize, batch: usize) -> usize {
    workers * batch * 2
}

/// Connections for a worker.
pub enum Job {
    /// Each holds a whole message; counted in `queued`.
    Messages(Vec<Box<Conn>>),
    /// Each holds whole TLS handshake records; counted in `handshaking`.
    Handshakes(Vec<Box<Conn>>),
}

/// What a worker thread holds.
pub struct Worker {
    /// Batches of connections from the I/O thread: those pipelining several messages, and
    /// handshakes.
    pub jobs: Receiver<Job>,
    /// Batches of connections holding one message: taken before `jobs`.
    pub first: Receiver<Job>,
    /// Connections sent to the workers and not yet taken by one.
    pub queued: Arc<AtomicUsize>,
    /// Connections sent to the workers for their handshake and not yet processed.
    pub handshaking: Arc<AtomicUsize>,
    /// `handshaking` at most ([`handshake_limit`]): at it, the I/O thread waits for a wake-up.
    pub handshake_limit: usize,
    /// Requests that need a hash that is not quick: for the hash threads.
    pub hash_jobs: Sender<HashJob>,
    /// Logins against a costly stored hash: for the costly stage, never a hash thread.
    pub costly_jobs: Sender<CostlyJob>,
    /// Requests that ask the old account server: for the old-server stage.
    pub legacy_jobs: Sender<HashJob>,
    /// What requests are answered with.
    pub service: Arc<Service>,
    /// Where connections go back to the I/O thread.
    pub returns: Arc<Returns>,
    /// Replies and latencies counted.
    pub metrics: Metrics,
    /// Read buffer, for taking pipelined requests that arrived while answering.
    pub scratch: Vec<u8>,
    /// The longest message a connection may send (`--max-message`).
    pub max_message: usize,
    /// Most connections it takes at once: [`batch_size`].
    pub batch: usize,
    /// argon2's scratch memory for the quick hashes it computes itself: at most
    /// [`CHEAP_WORK`](crate::auth::password::CHEAP_WORK) KiB, reused.
    pub memory: Memory,
    /// Who is shed first under overload.
    pub fairness: Arc<Fairness>,
    /// `--queue`: connections waiting for a worker at most.
    pub queue: usize,
    /// Hash threads (the hash queue's overload is counted per thread).
    pub hash_threads: usize,
}

/// A request of this round, waiting for the store's answer.
struct Waiting {
    form: Form,
    op: Op,
    id: Option<Id>,
    asking: Asking,
}

/// What is left of a request once a step of it is done.
enum Remains {
    /// Nothing: its reply is written.
    Answered,
    /// A hash that is not quick: for a hash thread.
    Hash(HashTask),
    /// A request to the account tier (a cheap registration's create).
    Ask(Asking),
}

/// A connection leaving the worker this round for a hash thread, by its index in the batch.
type Leaving = (usize, Form, Option<Id>, HashTask);

/// What a connection has for this round.
enum RoundPart {
    /// A request waiting for the store.
    Asking(Waiting),
    /// A request to hash that is not quick: the connection goes to a hash thread.
    Hash(Form, Option<Id>, HashTask),
    /// Nothing more now: the connection goes back to the I/O thread.
    Over,
}

impl Worker {
    /// The worker loop: until the job channel closes.
    pub fn run(mut self) {
        let mut conns: Vec<Box<Conn>> = Vec::with_capacity(self.batch);
        while let Some(job) = self.next_job(true) {
            self.take(job, &mut conns);
            while conns.len() < self.batch {
                let Some(job) = self.next_job(false) else {
                    break;
                };
                self.take(job, &mut conns);
            }
            if conns.is_empty() {
                continue;
            }
            self.metrics.busy_workers.inc();
            // The batch's log lines go to the log writer together.
            let served =
                logging::held(|| catch_unwind(AssertUnwindSafe(|| self.serve(&mut conns))));
            if served.is_err() {
                tracing::error!(
                    lost = conns.len(),
                    "panic while handling connections; closed them"
                );
                for conn in conns.drain(..) {
                    self.returns.send(Back::Gone(conn.token()));
                }
            }
            self.metrics.busy_workers.dec();
        }
    }

    /// The next job, from `first` before `jobs`; `wait`: block until one comes. `None` once
    /// both channels are closed (shutdown), or, without `wait`, when neither has one.
    fn next_job(&self, wait: bool) -> Option<Job> {
        if let Ok(job) = self.first.try_recv() {
            return Some(job);
        }
        if let Ok(job) = self.jobs.try_recv() {
            return Some(job);
        }
        if !wait {
            return None;
        }
        crossbeam_channel::select! {
            recv(self.first) -> job => job.ok().or_else(|| self.jobs.recv().ok()),
            recv(self.jobs) -> job => job.ok().or_else(|| self.first.recv().ok()),
        }
    }

    /// Add a job's connections with messages to `conns`; run a job of handshakes first.
    fn take(&mut self, job: Job, conns: &mut Vec<Box<Conn>>) {
        match job {
            Job::Messages(batch) => {
                self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                conns.extend(batch);
            }
            Job::Handshakes(batch) => {
                let n = batch.len();
                for conn in batch {
                    self.handshake(conn, conns);
                }
                // At the limit, the I/O thread holds handshakes back until woken.
                if self.handshaking.fetch_sub(n, Ordering::Relaxed) >= self.handshake_limit {
                    self.returns.wake();
                }
            }
        }
    }

    /// Run a connection's part of its TLS handshake; it joins `conns` when a whole message
    /// follows it, and goes back to the I/O thread otherwise (or is dropped, if it failed).
    fn handshake(&self, mut conn: Box<Conn>, conns: &mut Vec<Box<Conn>>) {
        let token = conn.token();
        self.returns.contained(token, || {
            if !conn.handshake() {
                self.returns.send(Back::Gone(token));
            } else if conn.has_message() {
                conn.begin_turn();
                conns.push(conn);
            } else {
                self.returns.give_back(conn);
            }
        });
    }

    /// Answer the connections' messages in rounds, until each has gone back to the I/O thread
    /// or on to a hash thread. `conns` holds exactly those not yet gone.
    fn serve(&mut self, conns: &mut Vec<Box<Conn>>) {
        let mut waiting: Vec<(usize, Waiting)> = Vec::with_capacity(self.batch);
        let mut leaving: Vec<Leaving> = Vec::new();
        for _ in 0..ROUNDS {
            let mut i = 0;
            while i < conns.len() {
                match self.next_turn(&mut conns[i]) {
                    RoundPart::Asking(w) => {
                        waiting.push((i, w));
                        i += 1;
                    }
                    RoundPart::Hash(form, id, task) => {
                        let conn = conns.swap_remove(i);
                        conns.extend(self.hand_on(conn, form, id, task));
                    }
                    RoundPart::Over => self.returns.give_back(conns.swap_remove(i)),
                }
            }
            if waiting.is_empty() {
                break;
            }
            // A second pass asks the creates of the registrations the first one hashed: a
            // create's answer always ends its request, so there is never a third.
            while !waiting.is_empty() {
                waiting = self.ask(conns, waiting, &mut leaving);
            }
            // Highest first, so that each removal leaves the lower indices in place.
            leaving.sort_unstable_by_key(|l| std::cmp::Reverse(l.0));
            for (i, form, id, task) in leaving.drain(..) {
                let conn = conns.swap_remove(i);
                conns.extend(self.hand_on(conn, form, id, task));
            }
        }
        for conn in conns.drain(..) {
            self.returns.give_back(conn);
        }
    }

    /// Send the account tier the requests of `waiting` at once (one round trip), then finish
    /// each of their gateway requests: its reply written, or its connection added to `leaving`.
    /// Returns those that have a request again (a registration's create), to send next.
    fn ask(
        &mut self,
        conns: &mut [Box<Conn>],
        waiting: Vec<(usize, Waiting)>,
        leaving: &mut Vec<Leaving>,
    ) -> Vec<(usize, Waiting)> {
        let service = self.service.clone();
        let requests: Vec<_> = waiting.iter().map(|(_, w)| &w.asking.request).collect();
        let asked = catch_unwind(AssertUnwindSafe(|| service.call_all(&requests)));
        drop(requests);
        // After a panic, each request is sent again alone: only the gateway request whose
        // account-db request panics is answered "unavailable".
        let mut answers = asked.ok().map(Vec::into_iter);
        let mut again = Vec::new();
        for (i, w) in waiting {
            let resume = || {
                let answer = match answers.as_mut().and_then(Iterator::next) {
                    Some(answer) => answer,
                    None => service.call(&w.asking.request),
                };
                service.resume(w.asking, answer)
            };
            let step = guarded(w.op, resume, Step::Done);
            let conn = &mut conns[i];
            match self.step(conn, w.form, w.op, w.id.as_ref(), step) {
                // Out now, not at the end of the round: the client's next request may then be
                // here for the next round, and the connection need not go back to the I/O
                // thread in between. A write that fails is seen when it is given back.
                Remains::Answered => drop(conn.flush()),
                Remains::Hash(task) => leaving.push((i, w.form, w.id, task)),
                Remains::Ask(asking) => again.push((
                    i,
                    Waiting {
                        form: w.form,
                        op: w.op,
                        id: w.id,
                        asking,
                    },
                )),
            }
        }
        again
    }

    /// Answer the connection's messages that need no store, up to the next that does.
    fn next_turn(&mut self, conn: &mut Conn) -> RoundPart {
        let service = self.service.clone();
        loop {
            // A peer that does not read its replies gets no more until it does.
            if !conn.is_open() || (conn.output_full() && !matches!(conn.flush(), Ok(true))) {
                return RoundPart::Over;
            }
            if conn.turn_bytes() >= TURN_BYTES || conn.turn_messages() >= TURN_MESSAGES {
                return RoundPart::Over;
            }
            let Some(incoming) = conn.next_message_reading(&mut self.scratch, self.max_message)
            else {
                return RoundPart::Over;
            };
            let (form, request, id) = match incoming {
                Incoming::Broken(error) => {
                    conn.refuse(error);
                    return RoundPart::Over;
                }
                Incoming::Bad { form, bad } => {
                    conn.answer_bad(form, bad);
                    continue;
                }
                Incoming::Request { form, request, id } => (form, request, id),
            };
            let op = request.op;
            if let Err(why) = self.admit(conn, &request) {
                self.metrics.shed(why);
                let busy = Reply::unavailable("server busy, retry later");
                conn.answer(form, Some(op), &busy, id.as_ref());
                continue;
            }
            let on_panic = |reply| Begun::Step(Step::Done(reply));
            let step = match guarded(op, || service.begin(request), on_panic) {
                Begun::Asking(asking) => {
                    return RoundPart::Asking(Waiting {
                        form,
                        op,
                        id,
                        asking,
                    })
                }
                Begun::Step(step) => step,
            };
            match self.step(conn, form, op, id.as_ref(), step) {
                Remains::Answered => {}
                Remains::Hash(task) => return RoundPart::Hash(form, id, task),
                Remains::Ask(asking) => {
                    let w = Waiting {
                        form,
                        op,
                        id,
                        asking,
                    };
                    return RoundPart::Asking(w);
                }
            }
        }
    }

    /// Whether `request`, just taken from `conn`, may be served now (see [`Fairness`]).
    fn admit(
        &self,
        conn: &mut Conn,
        request: &crate::protocol::gateway::Request,
    ) -> Result<(), Shed> {
        let behind = conn.messages_behind(BACKLOG);
        let load = Load {
            queued: (self.queued.load(Ordering::Relaxed), self.queue),
            hashing: (self.hash_jobs.len(), self.hash_threads),
            behind,
            backlogged: conn.backlogged(behind, BACKLOG, BACKLOG_MEMORY),
            turn: conn.turn_messages(),
        };
        self.fairness
            .admit(Key::of(request, conn.peer()), load, conn.arrived())
    }

    /// Answer `step`, hashing here if the task is quick (see [`Service::is_quick`]).
    fn step(
        &mut self,
        conn: &mut Conn,
        form: Form,
        op: Op,
        id: Option<&Id>,
        step: Step,
    ) -> Remains {
        let reply = match step {
            Step::Done(reply) => reply,
            Step::Hash(task) if !self.service.is_quick(&task) => return Remains::Hash(task),
            Step::Hash(task) => {
                match hashing::finish_quick(&self.service, task, &mut self.memory, &self.metrics) {
                    Finished::Done(reply) => reply,
                    Finished::Asking(asking) => return Remains::Ask(asking),
                    // On to the old-server stage, as a hash job is handed on.
                    Finished::AskOld(task) => return Remains::Hash(task),
                }
            }
        };
        conn.answer(form, Some(op), &reply, id);
        Remains::Answered
    }

    /// Send the connection with its task to the stage that finishes it, its replies so far
    /// written first: the costly stage for a costly stored hash, the old-server stage for a
    /// request that asks the old server, else a hash thread. If that stage's queue is full the
    /// request is answered "busy" and the connection is given back to the caller, to go on
    /// with its next message.
    fn hand_on(
        &self,
        mut conn: Box<Conn>,
        form: Form,
        id: Option<Id>,
        task: HashTask,
    ) -> Option<Box<Conn>> {
        if let Err(e) = conn.flush() {
            tracing::debug!(peer = %conn.peer(), error = %e, "write failed");
            self.returns.send(Back::Gone(conn.token()));
            return None;
        }
        conn.hashing();
        let op = task.op();
        let (costly, legacy) = (
            self.service.is_costly(&task),
            self.service.asks_legacy(&task),
        );
        let job = HashJob {
            conn,
            form,
            id,
            task,
        };
        let refused = if costly {
            let queued = Instant::now();
            let costly = CostlyJob { job, queued };
            self.costly_jobs
                .try_send(costly)
                .err()
                .map(|e| e.into_inner().job)
        } else if legacy {
            self.legacy_jobs.try_send(job).err().map(|e| e.into_inner())
        } else {
            self.hash_jobs.try_send(job).err().map(|e| e.into_inner())
        };
        let job = refused?;
        self.metrics.shed(Shed::QueueFull);
        let mut conn = job.conn;
        let busy = Reply::unavailable("server busy, retry later");
        conn.answer(job.form, Some(op), &busy, job.id.as_ref());
        Some(conn)
    }
}
