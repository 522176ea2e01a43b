//! The I/O thread: accepts gateway connections and watches every one that is not with a
//! worker, with `mio`. It reads without blocking, frames, enforces the message and idle
//! deadlines, and puts a connection on the bounded job channel only once it holds a whole
//! message, so an idle, silent or trickling client costs no worker. The connections one poll
//! finds ready go to the workers together, a batch per send, so one wake-up of one worker
//! serves them all. Beyond `--queue` connections waiting, the request is answered
//! "unavailable" (7) at once: load is shed, never queued without bound.
//!
//! With gateway TLS, a connection whose handshake has a whole record to process goes to the
//! workers on the same channel, as a job of its own kind that takes none of `--queue`'s
//! slots: at most [`Limits::handshakes`] are with the workers at once (the channel has room
//! for them besides `--queue`), and the rest wait here for room, within their deadline.

use super::conn::{Conn, Deadlines, Incoming, Verdict};
use super::gateway_tls::GatewayTls;
use super::health::Health;
use super::returns::{Back, Returns};
use super::workers::Job;
use crate::cidr::Cidr;
use crate::logging::RateLimited;
use crate::metrics::{Metrics, Shed};
use crate::protocol::gateway::Reply;
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The token of the waker that workers use to hand connections back.
pub const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// The I/O thread's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Peers allowed to connect; empty: everyone.
    pub allow_from: Vec<Cidr>,
    /// Connections open at most (`--max-connections`); one more is closed at accept.
    pub max_connections: usize,
    /// The longest message, in bytes (`--max-message`).
    pub max_message: usize,
    /// Connections waiting for a worker at most (`--queue`).
    pub queue: usize,
    /// Connections per batch handed to a worker ([`batch_size`](super::workers::batch_size)).
    pub batch: usize,
    /// Connections with a handshake to process that are with the workers at most
    /// ([`handshake_limit`](super::workers::handshake_limit)).
    pub handshakes: usize,
    /// How long a message, a client that does not read, and an idle connection may take.
    pub deadlines: Deadlines,
    /// How long a shutdown waits for requests in progress.
    pub shutdown_timeout: Duration,
}

enum Place {
    /// Watched by the I/O thread.
    Here(Box<Conn>),
    /// With a worker or a hash thread; it comes back through [`Returns`]. The flag is its
    /// [`Conn::wanted`]: set when its socket has an event meanwhile.
    Away(Arc<AtomicBool>),
}

/// The I/O thread's state. [`IoLoop::run`] consumes it.
pub struct IoLoop {
    /// The readiness events of the listener, the connections and the waker.
    pub poll: Poll,
    /// The gateway listener (`--listen`).
    pub listener: TcpListener,
    /// Batches of connections with whole messages, for the workers: those pipelining several,
    /// and handshakes.
    pub jobs: Sender<Job>,
    /// Batches of connections holding one whole message, which the workers take first.
    pub first: Sender<Job>,
    /// Connections sent to the workers and not yet taken by one.
    pub queued: Arc<AtomicUsize>,
    /// Connections sent to the workers for their handshake and not yet processed.
    pub handshaking: Arc<AtomicUsize>,
    /// The listener's TLS (`--gateway-tls` on).
    pub tls: Option<Arc<GatewayTls>>,
    /// Connections coming back from the other threads (or reported gone).
    pub back: Receiver<Back>,
    /// The other end of `back`, with the waker that rouses this thread.
    pub returns: Arc<Returns>,
    /// Set by a shutdown: stop accepting, drain, return.
    pub stopping: Arc<AtomicBool>,
    /// Its heartbeat, beaten each turn, for `/healthz`.
    pub health: Arc<Health>,
    /// The limits it enforces.
    pub limits: Limits,
    /// Connections counted and refused.
    pub metrics: Metrics,
}

/// How long accepting pauses after it failed for want of descriptors: 100 ms.
const OUT_OF_FILES_PAUSE: Duration = Duration::from_millis(100);

struct State {
    slots: Slab<Place>,
    /// Found holding a whole message in this poll: they go to the workers at its end.
    ready: Vec<Box<Conn>>,
    /// Holding a whole handshake record: they go to the workers when there is room.
    handshakes: Vec<Box<Conn>>,
    scratch: Vec<u8>,
    listening: bool,
    /// Out of descriptors at the last accept: none is tried before this.
    accept_after: Option<Instant>,
    /// The log of accepts that failed for want of descriptors: a line per 10 s at most.
    out_of_files_log: RateLimited,
}

impl IoLoop {
    /// Serve until shutdown is asked for and every accepted request is answered (or the
    /// shutdown timeout passes). Returning drops the job channel, which stops the workers.
    pub fn run(mut self) {
        let mut state = State {
            slots: Slab::new(),
            ready: Vec::new(),
            handshakes: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            listening: true,
            accept_after: None,
            out_of_files_log: RateLimited::new(Duration::from_secs(10)),
        };
        let listener_fd = self.listener.as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&listener_fd), LISTENER, Interest::READABLE)
        {
            tracing::error!(error = %e, "cannot watch the listening socket");
            return;
        }
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        let mut stop_deadline = None;
        loop {
            self.returns.sleeping();
            let timeout = if self.back.is_empty() {
                TICK
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed; I/O thread stops");
                    return;
                }
            }
            self.returns.woken();
            self.health.beat();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(&mut state),
                    WAKER => {}
                    Token(token) => self.drive(&mut state, token),
                }
            }
            while let Ok(back) = self.back.try_recv() {
                match back {
                    Back::Conn(conn) => {
                        let token = conn.token();
                        conn.wanted().store(false, Ordering::SeqCst);
                        state.slots[token] = Place::Here(conn);
                        self.drive(&mut state, token);
                    }
                    Back::Gone(token) => {
                        state.slots.try_remove(token);
                    }
                }
            }
            self.dispatch(&mut state);
            let now = Instant::now();
            if self.stopping.load(Ordering::SeqCst) && state.listening {
                state.listening = false;
                let _ = self.poll.registry().deregister(&mut SourceFd(&listener_fd));
                stop_deadline = Some(now + self.limits.shutdown_timeout);
                tracing::info!(
                    open = state.slots.len(),
                    "shutting down: no longer accepting"
                );
            }
            if now - last_sweep >= TICK {
                last_sweep = now;
                self.sweep(&mut state, now);
            }
            let open = i64::try_from(state.slots.len()).unwrap_or(i64::MAX);
            self.metrics.open_connections.set(open);
            if let Some(deadline) = stop_deadline {
                if state.slots.is_empty() || now >= deadline {
                    if !state.slots.is_empty() {
                        tracing::warn!(open = state.slots.len(), "shutdown timeout: closing");
                    }
                    return;
                }
            }
        }
    }

    fn accept(&self, state: &mut State) {
        if let Some(after) = state.accept_after {
            if Instant::now() < after {
                return;
            }
            state.accept_after = None;
        }
        while state.listening {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if crate::limits::out_of_descriptors(&e) => {
                    // Counted, logged once per 10 s, and not tried again for 100 ms (the
                    // connection waits in the backlog; the sweep tries again).
                    self.metrics.accept_out_of_files.inc();
                    state.accept_after = Some(Instant::now() + OUT_OF_FILES_PAUSE);
                    if let Some(times) = state.out_of_files_log.hit() {
                        tracing::warn!(error = %e, times, "accept failed: out of file descriptors");
                    }
                    return;
                }
                Err(e) => {
                    // The sweep tries again next tick.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            let allow = &self.limits.allow_from;
            if !allow.is_empty() && !allow.iter().any(|block| block.contains(peer.ip())) {
                self.metrics.disallowed_connections.inc();
                continue;
            }
            if state.slots.len() >= self.limits.max_connections {
                tracing::debug!(%peer, "refused a connection: at --max-connections");
                self.metrics.refused_connections.inc();
                continue;
            }
            let entry = state.slots.vacant_entry();
            let token = entry.key();
            let registered = stream.set_nonblocking(true).and_then(|()| {
                stream.set_nodelay(true)?;
                self.poll.registry().register(
                    &mut SourceFd(&stream.as_raw_fd()),
                    Token(token),
                    Interest::READABLE | Interest::WRITABLE,
                )
            });
            match registered {
                Ok(()) => {
                    let metrics = self.metrics.clone();
                    let max_message = self.limits.max_message;
                    let tls = self.tls.clone();
                    let conn = Conn::new(token, stream, peer, max_message, metrics, tls);
                    entry.insert(Place::Here(Box::new(conn)));
                }
                Err(e) => tracing::warn!(%peer, error = %e, "cannot watch a connection"),
            }
        }
    }

    /// Move a connection on after an event: write, read, and dispatch or close it.
    fn drive(&self, state: &mut State, token: usize) {
        let conn = match state.slots.get_mut(token) {
            Some(Place::Here(conn)) => conn,
            Some(Place::Away(wanted)) => {
                // Looked at when it is back; its worker wakes us if it is back too late.
                wanted.store(true, Ordering::SeqCst);
                return;
            }
            None => return, // already closed
        };
        match conn.on_event(&mut state.scratch, self.limits.max_message) {
            Verdict::Keep => {}
            Verdict::Close => close(state, token),
            Verdict::Drop => {
                state.slots.remove(token);
            }
            verdict @ (Verdict::Dispatch | Verdict::Handshake) => {
                let away = Place::Away(conn.wanted());
                if let Place::Here(conn) = std::mem::replace(&mut state.slots[token], away) {
                    match verdict {
                        Verdict::Dispatch => state.ready.push(conn),
                        _ => state.handshakes.push(conn),
                    }
                }
            }
        }
    }

    /// Hand the connections found ready to the workers: handshakes while fewer than
    /// `limits.handshakes` are there (the rest wait for the next turn; a worker that frees room
    /// at the limit wakes this thread); connections holding one message (on `first`, which the
    /// workers take first) while fewer than `--queue` wait; connections pipelining several
    /// while fewer than half of `--queue` wait: past that, a client that already has requests
    /// waiting is shed before one that has none. What is refused is answered "unavailable"
    /// here.
    fn dispatch(&self, state: &mut State) {
        let handshakes = &mut state.handshakes;
        let (counter, limit) = (&self.handshaking, self.limits.handshakes);
        if let Some(refused) = self.send(&self.jobs, handshakes, counter, limit, Job::Handshakes) {
            for conn in refused {
                state.slots.remove(conn.token());
            }
        }
        let (mut single, mut several) = (Vec::new(), Vec::new());
        for mut conn in std::mem::take(&mut state.ready) {
            match conn.pipelining() {
                false => single.push(conn),
                true => several.push(conn),
            }
        }
        let (counter, limit) = (&self.queued, self.limits.queue);
        if let Some(refused) = self.send(&self.first, &mut single, counter, limit, Job::Messages) {
            single.extend(refused);
        }
        let half = (limit / 2).max(1);
        if let Some(refused) = self.send(&self.jobs, &mut several, counter, half, Job::Messages) {
            several.extend(refused);
        }
        let refused = single.into_iter().map(|c| (c, Shed::QueueFull));
        for (mut conn, reason) in refused.chain(several.into_iter().map(|c| (c, Shed::Share))) {
            let token = conn.token();
            let next = shed(&mut conn, reason);
            state.slots[token] = Place::Here(conn);
            if next == Verdict::Close {
                close(state, token);
            }
        }
    }

    /// Send `pending` to the workers in batches of at most `limits.batch`, while `counter`
    /// (connections of this kind away) stays within `limit`. The channel has room for both
    /// kinds' limits, so only a disconnected channel (shutdown) refuses a batch: it is returned.
    fn send(
        &self,
        channel: &Sender<Job>,
        pending: &mut Vec<Box<Conn>>,
        counter: &AtomicUsize,
        limit: usize,
        job: fn(Vec<Box<Conn>>) -> Job,
    ) -> Option<Vec<Box<Conn>>> {
        loop {
            let room = limit.saturating_sub(counter.load(Ordering::Relaxed));
            let n = pending.len().min(self.limits.batch).min(room);
            if n == 0 {
                return None;
            }
            let batch: Vec<Box<Conn>> = pending.drain(..n).collect();
            counter.fetch_add(n, Ordering::Relaxed);
            if let Err(e) = channel.try_send(job(batch)) {
                counter.fetch_sub(n, Ordering::Relaxed);
                let (Job::Messages(batch) | Job::Handshakes(batch)) = e.into_inner();
                return Some(batch);
            }
        }
    }

    /// Enforce deadlines, retry accepting, and at shutdown close what is idle.
    fn sweep(&self, state: &mut State, now: Instant) {
        if state.listening {
            self.accept(state);
        }
        let stopping = !state.listening;
        // Handshakes waiting for room are held to their deadline too.
        let deadlines = self.limits.deadlines;
        let mut waiting = std::mem::take(&mut state.handshakes);
        waiting.retain_mut(|conn| {
            let keep = conn.on_tick(now, deadlines, stopping) == Verdict::Keep;
            if !keep {
                state.slots.remove(conn.token());
            }
            keep
        });
        state.handshakes = waiting;
        let (mut close, mut drop) = (Vec::new(), Vec::new());
        for (token, slot) in state.slots.iter_mut() {
            let Place::Here(conn) = slot else { continue };
            match conn.on_tick(now, self.limits.deadlines, stopping) {
                Verdict::Close => close.push(token),
                Verdict::Drop => drop.push(token),
                Verdict::Keep | Verdict::Dispatch | Verdict::Handshake => {}
            }
        }
        for token in close {
            self::close(state, token);
        }
        for token in drop {
            state.slots.remove(token);
        }
    }
}

/// Close a connection, or let it linger if it must (see [`Conn::close`]).
fn close(state: &mut State, token: usize) {
    if let Some(Place::Here(conn)) = state.slots.get_mut(token) {
        if !conn.close() {
            return;
        }
    }
    state.slots.remove(token);
}

/// No room with the workers: answer the connection's whole messages "unavailable" right here,
/// counted for `reason`, until its unsent replies reach their bound (the rest wait until the
/// peer reads).
fn shed(conn: &mut Conn, reason: Shed) -> Verdict {
    let busy = Reply::unavailable("server busy, retry later");
    while conn.is_open() && !conn.output_full() {
        match conn.next_message() {
            None => break,
            Some(Incoming::Request { form, id, request }) => {
                conn.metrics().shed(reason);
                conn.answer(form, Some(request.op), &busy, id.as_ref())
            }
            Some(Incoming::Bad { form, bad }) => conn.answer_bad(form, bad),
            Some(Incoming::Broken(error)) => conn.refuse(error),
        }
    }
    conn.settle()
}
