//! [`Conn`]: one gateway connection, its socket, its buffers, and its lifecycle. Whoever holds
//! a `Conn` (the I/O thread, a worker or a hash thread) owns it; nobody else touches the socket
//! meanwhile.
//!
//! Reads and writes never block: the socket is non-blocking, and what cannot be written now
//! waits in the output buffer until the I/O thread sees the socket writable.
//!
//! A connection is in one [`Phase`]: open, closing (its last reply queued), or lingering
//! (half-closed after a refusal, draining the peer's input so that closing cannot reset our
//! reply away). [`Conn::on_event`] and [`Conn::on_tick`] decide what happens next, as a
//! [`Verdict`] for the I/O thread; every change of phase is a method here.
//!
//! Its [`Wire`] is plaintext or TLS (`--gateway-tls`). While a TLS handshake runs, the input
//! buffer holds the raw records received; a worker processes them ([`Conn::handshake`]), since
//! that is where the key exchange and the signature are computed. Once the handshake is done,
//! whoever reads the socket decrypts what it reads into the input buffer, and whoever flushes
//! encrypts the output: the rest of the server sees plaintext messages either way.

use super::gateway_tls::{self, GatewayTls, Mode, Records, HANDSHAKE_VISITS};
use crate::metrics::Metrics;
use crate::protocol::gateway::{self, BadRequest, Form, Id, Op, Reply, Request, Scan, Scanner};
use rustls::ServerConnection;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a refused connection is drained before it is closed regardless.
const LINGER: Duration = Duration::from_secs(2);
/// Unsent replies past which no more messages are taken from a connection until the peer
/// reads: backpressure, not buffering.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// One message taken off a connection.
pub enum Incoming {
    /// A valid request.
    Request {
        form: Form,
        request: Request,
        id: Option<Id>,
    },
    /// A well-framed message that is not a valid request.
    Bad { form: Form, bad: BadRequest },
    /// Bytes that cannot be framed: the connection must be closed after answering.
    Broken(gateway::FrameError),
}

/// What the I/O thread should do with a connection after looking at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching it.
    Keep,
    /// It holds a whole message: hand it to a worker.
    Dispatch,
    /// It holds a whole TLS handshake record: hand it to a worker ([`Conn::handshake`]).
    Handshake,
    /// Close it: call [`Conn::close`], which may half-close and linger first.
    Close,
    /// Drop it now.
    Drop,
}

/// The deadlines the I/O thread enforces on a connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// A message must arrive whole within this time of its first byte; a peer that does not
    /// read its replies gets as long.
    pub message: Duration,
    /// A connection with nothing to say for this long is closed.
    pub idle: Duration,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading messages and answering them.
    Open,
    /// The last reply is queued (after a seed-form reply, or a refusal): close once it is
    /// written. `refused`: unread input may follow, so close gently (see [`Conn::close`]).
    Closing { refused: bool },
    /// Half-closed after a refusal: the peer's input is read and dropped until it closes too,
    /// or [`LINGER`] passes.
    Lingering { since: Instant },
}

/// How a connection's bytes are spoken.
enum Wire {
    /// Plaintext.
    Plain,
    /// `--gateway-tls optional` or `required`, before the first byte: a TLS handshake record
    /// makes it TLS; anything else plaintext (optional) or refused (required).
    Undecided(Arc<GatewayTls>),
    /// Plaintext where TLS is required: it is answered why, and closed.
    NotTls,
    /// TLS; `visits`: the worker visits its handshake has taken.
    Tls {
        tls: Box<ServerConnection>,
        gateway: Arc<GatewayTls>,
        visits: u8,
    },
}

/// Reads a connection dates its buffered input by; past it, the two oldest are merged (their
/// messages dated evenly over both): coarser, never bunched.
const ARRIVALS: usize = 64;

/// A gateway connection and what is buffered on it.
pub struct Conn {
    /// Where the I/O thread keeps it; travels with it so it can find its way back.
    token: usize,
    peer: SocketAddr,
    metrics: Metrics,
    stream: TcpStream,
    /// Plaintext or TLS.
    wire: Wire,
    phase: Phase,
    /// The peer has closed its sending side.
    eof: bool,
    /// Plaintext received and not yet taken (while a TLS handshake runs: the raw records).
    input: Vec<u8>,
    /// Bytes of `input` already taken as messages.
    consumed: usize,
    scanner: Scanner,
    /// Replies not yet written (with TLS: not yet encrypted).
    output: Vec<u8>,
    /// When the message being received began: it must end within the message deadline. A
    /// new connection's first message counts from the accept, and whitespace counts too.
    message_started: Option<Instant>,
    /// The last time bytes moved either way.
    last_activity: Instant,
    /// When its current batch of whole messages was found: replies' latency counts from here.
    ready_at: Instant,
    /// Bytes of messages taken since it was last handed to a worker: a worker's turn on one
    /// connection is bounded by bytes as well as by messages.
    turn_bytes: usize,
    /// Messages taken since it was last handed to a worker.
    turn_messages: usize,
    /// The length of the last message taken: what the input left behind it is counted in.
    last_len: usize,
    /// When a worker last found a backlog behind a message of it while it waited for hashes
    /// (see [`Conn::backlogged`]).
    backlogged_at: Option<Instant>,
    /// When one of its requests last went to a hash thread (or the costly or old-server stage).
    hashed_at: Option<Instant>,
    /// Bytes of input received so far, and taken as messages so far (counted from the start
    /// of the connection: the buffer is compacted, these are not).
    received: u64,
    taken: u64,
    /// When input arrived: (bytes received by then, when), one per read of the socket until it
    /// was empty, oldest first, at most [`ARRIVALS`]; and the one before the oldest (at first,
    /// or when nothing was buffered: the read itself). A message is dated within the read that
    /// brought its last byte, by where its end falls in it, evenly between that read and the
    /// one before: what a connection with a backlog delivers at once was sent while its
    /// backlog was served, not all at its end; what an idle one delivers was sent together.
    arrivals: std::collections::VecDeque<(u64, Instant)>,
    before_arrivals: (u64, Instant),
    /// When the last message taken arrived (see [`Conn::arrived`]).
    arrived: Instant,
    /// The last read found the socket empty (it stopped at WouldBlock, not at the input cap):
    /// only then does more input bring an event.
    drained: bool,
    /// Set by the I/O thread when the socket had an event while a worker held it (see
    /// [`Returns::give_back`](super::returns::Returns::give_back)).
    wanted: Arc<AtomicBool>,
}

impl Conn {
    /// A connection just accepted; `tls`: the listener's TLS, with `--gateway-tls` on.
    pub fn new(
        token: usize,
        stream: TcpStream,
        peer: SocketAddr,
        max_message: usize,
        metrics: Metrics,
        tls: Option<Arc<GatewayTls>>,
    ) -> Conn {
        let now = Instant::now();
        Conn {
            token,
            peer,
            metrics,
            stream,
            wire: tls.map_or(Wire::Plain, Wire::Undecided),
            phase: Phase::Open,
            eof: false,
            input: Vec::new(),
            consumed: 0,
            scanner: Scanner::new(max_message),
            output: Vec::new(),
            message_started: Some(now),
            last_activity: now,
            ready_at: now,
            turn_bytes: 0,
            turn_messages: 0,
            last_len: 0,
            backlogged_at: None,
            hashed_at: None,
            received: 0,
            taken: 0,
            arrivals: std::collections::VecDeque::new(),
            before_arrivals: (0, now),
            arrived: now,
            drained: false,
            wanted: Arc::default(),
        }
    }

    /// The flag the I/O thread sets when the socket has an event while a worker holds it.
    pub fn wanted(&self) -> Arc<AtomicBool> {
        self.wanted.clone()
    }

    /// Whether, back with the I/O thread, it needs nothing until its socket has an event: it
    /// is open, its socket was read empty, every message read is answered (what is left is
    /// whitespace, such as the newline after a stream-form request), and every reply written.
    pub fn quiet(&self) -> bool {
        let rest = &self.input[self.consumed..];
        self.phase == Phase::Open
            && self.drained
            && !self.eof
            && rest.iter().all(u8::is_ascii_whitespace)
            && self.all_sent()
    }

    /// Whether every reply is written to the socket (with TLS: encrypted and written).
    fn all_sent(&self) -> bool {
        self.output.is_empty() && !matches!(&self.wire, Wire::Tls { tls, .. } if tls.wants_write())
    }

    /// Whether its TLS handshake is still running: its input is raw records, not messages.
    pub fn handshaking(&self) -> bool {
        matches!(&self.wire, Wire::Tls { tls, .. } if tls.is_handshaking())
    }

    /// Whether only TLS can come next: its handshake runs, or nothing has arrived yet on a
    /// `--gateway-tls required` port.
    fn awaiting_tls(&self) -> bool {
        self.handshaking()
            || matches!(&self.wire, Wire::Undecided(gateway) if gateway.mode == Mode::Required)
    }

    /// Its slot in the I/O thread.
    pub fn token(&self) -> usize {
        self.token
    }

    /// The gateway's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether messages are still taken from it (it is not closing).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Read what the socket has, using `scratch` as the read buffer. Unprocessed input is
    /// capped at one whole message plus one read: a client flooding faster than it is answered
    /// is held back by TCP, not by our memory.
    pub fn fill(&mut self, scratch: &mut [u8], max_message: usize) -> io::Result<()> {
        if self.consumed > 0 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
            // A connection that sent one big message does not keep its buffer while idle.
            if self.input.is_empty() && self.input.capacity() > scratch.len() {
                self.input = Vec::new();
            }
        }
        let cap = max_message + scratch.len();
        self.drained = false;
        let received = self.received;
        if self.input.is_empty() {
            // Nothing was waiting: what comes now was sent now (the I/O thread reads an idle
            // connection as soon as it has input), however long ago the last read was.
            self.arrivals.clear();
            self.before_arrivals = (self.received, Instant::now());
        }
        while !self.eof && self.input.len() < cap {
            match self.stream.read(scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    // Read on until WouldBlock even after a short read: edge-triggered polling
                    // would not report an end of stream that arrived with the data.
                    let before = self.input.len();
                    self.receive(&scratch[..n], cap)?;
                    self.last_activity = Instant::now();
                    self.received += self.input.len().saturating_sub(before) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.received > received {
            // Full: the oldest read is merged into the next (the messages it brought are then
            // dated evenly over both), never dropped.
            if self.arrivals.len() == ARRIVALS {
                self.arrivals.pop_front();
            }
            self.arrivals.push_back((self.received, self.last_activity));
        }
        Ok(())
    }

    /// Take `bytes` read from the socket: plaintext (or a handshake's raw records) into the
    /// input buffer, TLS records after the handshake decrypted into it. The first byte decides
    /// an undecided wire.
    fn receive(&mut self, bytes: &[u8], cap: usize) -> io::Result<()> {
        if let Wire::Undecided(gateway) = &self.wire {
            self.wire = if bytes.first() == Some(&crate::tls::TLS_HANDSHAKE) {
                let tls = gateway.accept().map_err(io::Error::other)?;
                Wire::Tls {
                    tls: Box::new(tls),
                    gateway: gateway.clone(),
                    visits: 0,
                }
            } else if gateway.mode == Mode::Optional {
                gateway.metrics.plaintext_gateways.inc();
                Wire::Plain
            } else {
                gateway.failed();
                Wire::NotTls
            };
        }
        match &mut self.wire {
            Wire::Tls { tls, .. } if !tls.is_handshaking() => {
                self.eof |= decrypt(tls, bytes, &mut self.input)?;
            }
            _ => append(&mut self.input, bytes, cap),
        }
        Ok(())
    }

    /// A worker's part of a TLS handshake: process the records received (the key exchange, the
    /// signature, the client's certificate), and write the reply flight. What follows the
    /// handshake in them is decrypted into the input. `false`: the handshake failed or took
    /// too many visits (the alert sent if the socket takes it): drop the connection.
    pub fn handshake(&mut self) -> bool {
        let Wire::Tls {
            tls,
            gateway,
            visits,
        } = &mut self.wire
        else {
            return true;
        };
        *visits = visits.saturating_add(1);
        let raw = std::mem::take(&mut self.input);
        self.consumed = 0;
        // Whole records only: the I/O thread frames what follows by its headers, so a record
        // begun must stay here until its rest arrives.
        let whole = match gateway_tls::records(&raw) {
            Records::Whole { len } => len,
            Records::Partial | Records::Invalid => 0,
        };
        let processed = decrypt(tls, &raw[..whole], &mut self.input);
        let ok = match processed {
            Ok(eof) => {
                self.eof |= eof;
                !(tls.is_handshaking() && *visits >= HANDSHAKE_VISITS)
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "gateway TLS handshake failed");
                false
            }
        };
        if !ok {
            gateway.failed();
            // The alert rustls queued, if the socket takes it now.
            let _ = tls.write_tls(&mut self.stream);
            return false;
        }
        let rest = &raw[whole..];
        if tls.is_handshaking() {
            self.input.extend_from_slice(rest);
        } else {
            gateway.completed(tls.handshake_kind());
            // The first message's deadline counts from here, as a plaintext one's from the accept.
            self.message_started = Some(Instant::now());
            // After the handshake rustls takes records in any pieces.
            match decrypt(tls, rest, &mut self.input) {
                Ok(eof) => self.eof |= eof,
                Err(_) => return false,
            }
        }
        self.flush().is_ok()
    }

    /// Look at the unprocessed input without taking anything. A message that has begun starts
    /// the message deadline. Whitespace after a message (the `\n` that ends a stream-form
    /// request, say) does not: it is bounded ([`gateway::MAX_GAP`]), and the connection is then
    /// idle. A new connection's deadline runs from the accept until its first message.
    fn scan(&mut self) -> Scan {
        let scan = self.scanner.scan(&self.input[self.consumed..]);
        if scan == Scan::Partial && self.message_started.is_none() {
            self.message_started = Some(Instant::now());
        }
        scan
    }

    /// Whether a whole message (or input that cannot be framed) waits to be taken.
    pub fn has_message(&mut self) -> bool {
        !self.handshaking() && matches!(self.scan(), Scan::Complete { .. } | Scan::Invalid(_))
    }

    /// Whether more than one whole message's worth of input waits: the client pipelines (its
    /// first message whole, and more bytes than whitespace behind it).
    pub fn pipelining(&mut self) -> bool {
        match self.scan() {
            Scan::Complete { end, .. } => self.input[self.consumed + end..]
                .iter()
                .any(|b| !b.is_ascii_whitespace()),
            _ => false,
        }
    }

    /// Start a worker's turn on it: its whole messages were found now.
    pub fn begin_turn(&mut self) {
        self.ready_at = Instant::now();
        self.turn_bytes = 0;
        self.turn_messages = 0;
    }

    /// Bytes of messages taken in this worker's turn.
    pub fn turn_bytes(&self) -> usize {
        self.turn_bytes
    }

    /// Messages taken in this worker's turn.
    pub fn turn_messages(&self) -> usize {
        self.turn_messages
    }

    /// About how many messages wait in the input behind the last one taken, up to `most`:
    /// the bytes left over counted in messages as long as the last (0 when less than one is
    /// left). Cheap: it frames nothing.
    pub fn messages_behind(&self, most: usize) -> usize {
        let left = self.input.len().saturating_sub(self.consumed);
        (left / self.last_len.max(1)).min(most)
    }

    /// Whether the connection counts as backlogged behind its hashes: `behind` messages wait
    /// (at least `most`) while one of its requests went to a hash thread within `memory`, now
    /// or within `memory` before.
    pub fn backlogged(&mut self, behind: usize, most: usize, memory: Duration) -> bool {
        let hashing = self.hashed_at.is_some_and(|at| at.elapsed() < memory);
        if behind >= most && hashing {
            self.backlogged_at = Some(Instant::now());
            return true;
        }
        self.backlogged_at.is_some_and(|at| at.elapsed() < memory)
    }

    /// One of its requests goes to a hash thread (or another slow stage) now.
    pub fn hashing(&mut self) {
        self.hashed_at = Some(Instant::now());
    }

    /// Date the message just taken (ending at `taken`): see [`Conn::arrivals`].
    fn date_taken(&mut self) {
        while self.arrivals.len() > 1 && self.arrivals[0].0 < self.taken {
            if let Some(read) = self.arrivals.pop_front() {
                self.before_arrivals = read;
            }
        }
        let Some(&(end, at)) = self.arrivals.front() else {
            return;
        };
        let (start, since) = self.before_arrivals;
        let span = end.saturating_sub(start).max(1);
        let into = self.taken.saturating_sub(start).min(span);
        let stall = at.saturating_duration_since(since);
        self.arrived = since + stall.mul_f64(into as f64 / span as f64);
    }

    /// When the last message taken arrived: read from the socket (its last byte), not found
    /// by the I/O thread or a worker, which may be much later.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// The metrics its replies are counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether enough replies wait unsent that no more messages should be taken for now.
    pub fn output_full(&self) -> bool {
        self.output.len() >= MAX_OUTPUT
    }

    /// Take the next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Option<Incoming> {
        if self.handshaking() {
            return None;
        }
        match self.scan() {
            Scan::Empty | Scan::Partial => None,
            Scan::Invalid(e) => Some(Incoming::Broken(e)),
            Scan::Complete { form, start, end } => {
                let bytes = &self.input[self.consumed + start..self.consumed + end];
                let parsed = gateway::parse(form, bytes);
                self.consumed += end;
                self.turn_bytes += end;
                self.turn_messages += 1;
                self.last_len = end;
                self.taken += end as u64;
                self.date_taken();
                self.scanner.reset();
                self.message_started = None;
                Some(match parsed {
                    Ok((request, id)) => Incoming::Request { form, request, id },
                    Err(bad) => Incoming::Bad { form, bad },
                })
            }
        }
    }

    /// Read more of a pipelining client's input while answering it, and take the next whole
    /// message, without a detour through the I/O thread.
    pub fn next_message_reading(
        &mut self,
        scratch: &mut [u8],
        max_message: usize,
    ) -> Option<Incoming> {
        if let Some(incoming) = self.next_message() {
            return Some(incoming);
        }
        if self.eof || self.fill(scratch, max_message).is_err() {
            return None;
        }
        self.ready_at = Instant::now();
        self.next_message()
    }

    /// Queue `reply` to a request for `op` (`None`: not a request) in `form`, and account for
    /// it: the metrics, and one log line per request. A seed-form reply is the last thing said
    /// on a connection.
    pub fn answer(&mut self, form: Form, op: Option<Op>, reply: &Reply, id: Option<&Id>) {
        gateway::encode(&mut self.output, form, reply, id);
        if form == Form::Seed && self.phase == Phase::Open {
            self.phase = Phase::Closing { refused: false };
        }
        let latency = self.ready_at.elapsed();
        self.metrics.reply(op, reply.code, latency);
        tracing::info!(
            target: "request",
            op = op.map_or("-", Op::as_str),
            code = reply.code as u8,
            latency_us = latency.as_micros() as u64,
            peer = %self.peer,
        );
    }

    /// Answer a well-framed message that is not a valid request as a bad request.
    pub fn answer_bad(&mut self, form: Form, bad: BadRequest) {
        let reply = Reply::bad_request(bad.info);
        self.answer(form, None, &reply, bad.id.as_ref());
    }

    /// Answer a connection whose input cannot be taken further (unframeable, truncated, too
    /// slow) as a bad request saying `what` is wrong, and close it gently.
    pub fn refuse(&mut self, what: impl std::fmt::Display) {
        let reply = Reply::bad_request(format!("bad request: {what}"));
        self.answer(Form::Stream, None, &reply, None);
        self.phase = Phase::Closing { refused: true };
        self.message_started = None;
    }

    /// Write as much output as the socket takes now (with TLS: encrypted, and followed by a
    /// close_notify once the last reply is in). `Ok(true)` when all is written.
    pub fn flush(&mut self) -> io::Result<bool> {
        if let Wire::Tls { tls, .. } = &mut self.wire {
            let closing = self.phase != Phase::Open;
            let moved = send(tls, &mut self.output, closing, &mut self.stream)?;
            if moved {
                self.last_activity = Instant::now();
            }
            return Ok(self.output.is_empty() && !tls.wants_write());
        }
        let mut written = 0;
        while written < self.output.len() {
            match self.stream.write(&self.output[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if written > 0 {
            self.output.drain(..written);
            self.last_activity = Instant::now();
        }
        Ok(self.output.is_empty())
    }

    /// Whether it can be dropped now: its last reply is written, and closing cannot reset it.
    pub fn done(&self) -> bool {
        self.phase == Phase::Closing { refused: false } && self.all_sent()
    }

    /// Begin closing: `true` if it can be dropped at once. Closing a socket with unread input
    /// sends RST, which discards what the peer has not read yet; so a refused connection whose
    /// peer may still be sending is half-closed (our replies are followed by FIN) and lingers,
    /// reading and dropping input, until the peer closes or [`LINGER`] passes. A TLS peer is
    /// sent close_notify before the close, if the socket takes it.
    pub fn close(&mut self) -> bool {
        match self.phase {
            Phase::Closing { refused: true } if !self.eof => {
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                self.phase = Phase::Lingering {
                    since: Instant::now(),
                };
                false
            }
            _ => {
                // A TLS peer hears close_notify first (sent once: rustls ignores a second).
                if let Wire::Tls { tls, .. } = &mut self.wire {
                    if !tls.is_handshaking() {
                        tls.send_close_notify();
                        let _ = tls.write_tls(&mut self.stream);
                    }
                }
                true
            }
        }
    }

    /// Write what can be written; close if that was the last thing to say.
    pub fn settle(&mut self) -> Verdict {
        match self.flush() {
            Ok(true) if !self.is_open() => Verdict::Close,
            Ok(_) => Verdict::Keep,
            Err(_) => Verdict::Drop,
        }
    }

    /// The socket is ready (or the connection came back from a worker): write, read, and say
    /// whether it holds a whole message or should be closed.
    pub fn on_event(&mut self, scratch: &mut [u8], max_message: usize) -> Verdict {
        if let Phase::Lingering { .. } = self.phase {
            return if self.drain(scratch) {
                Verdict::Drop
            } else {
                Verdict::Keep
            };
        }
        match self.flush() {
            Err(_) => return Verdict::Drop,
            Ok(false) => return Verdict::Keep, // produce no more replies until these are taken
            Ok(true) => {}
        }
        if !self.is_open() {
            return Verdict::Close;
        }
        if let Err(e) = self.fill(scratch, max_message) {
            tracing::debug!(peer = %self.peer, error = %e, "read failed");
            return Verdict::Close;
        }
        if self.handshaking() {
            // The worker counts the visits ([`Conn::handshake`]).
            return match gateway_tls::records(&self.input) {
                Records::Whole { .. } => Verdict::Handshake,
                Records::Partial if !self.eof => Verdict::Keep,
                _ => {
                    self.handshake_failed();
                    Verdict::Drop
                }
            };
        }
        if matches!(self.wire, Wire::NotTls) {
            self.refuse("this port speaks TLS only (--gateway-tls required)");
            return self.settle();
        }
        match self.scan() {
            Scan::Complete { .. } => {
                self.begin_turn();
                Verdict::Dispatch
            }
            Scan::Invalid(error) => {
                self.refuse(error);
                self.settle()
            }
            Scan::Partial if self.eof => {
                self.refuse("connection closed in the middle of a message");
                self.settle()
            }
            Scan::Empty if self.eof => Verdict::Close,
            Scan::Partial | Scan::Empty => Verdict::Keep,
        }
    }

    /// The periodic check of the deadlines; `stopping`: the server is shutting down, and an
    /// idle connection is closed.
    pub fn on_tick(&mut self, now: Instant, deadlines: Deadlines, stopping: bool) -> Verdict {
        let since = |t: Instant| now.saturating_duration_since(t);
        if let Phase::Lingering { since: began } = self.phase {
            return if since(began) > LINGER {
                Verdict::Drop
            } else {
                Verdict::Keep
            };
        }
        let quiet = since(self.last_activity);
        let has_output = !self.all_sent();
        match self.message_started {
            // A handshake too slow has nobody to tell in plaintext; nor has a silent peer on a
            // TLS-only port.
            Some(started) if self.awaiting_tls() && since(started) > deadlines.message => {
                self.handshake_failed();
                Verdict::Drop
            }
            Some(started) if self.is_open() && since(started) > deadlines.message => {
                self.refuse(format!(
                    "message not completed within {} s",
                    deadlines.message.as_secs_f32()
                ));
                self.settle()
            }
            // A peer that does not read its replies is dropped like a silent one.
            _ if has_output && quiet > deadlines.message => Verdict::Close,
            _ if quiet > deadlines.idle => Verdict::Close,
            _ if stopping && !has_output => Verdict::Close,
            _ => Verdict::Keep,
        }
    }

    /// Count a handshake abandoned (broken, too slow, or the peer gone).
    fn handshake_failed(&self) {
        if let Wire::Tls { gateway, .. } | Wire::Undecided(gateway) = &self.wire {
            gateway.failed();
        }
    }

    /// While lingering: read and drop input. `true` once the peer has closed too.
    fn drain(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() != io::ErrorKind::WouldBlock,
            }
        }
    }
}

/// Append `bytes` to `input`, growing it by doubling but never past `cap`: a buffer holds at
/// most one message and one read, not the next power of two above that.
fn append(input: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let (len, n) = (input.len(), bytes.len());
    if len + n > input.capacity() {
        let want = (len + n).next_power_of_two().min(cap.max(len + n));
        input.reserve_exact(want - len);
    }
    input.extend_from_slice(bytes);
}

/// Feed TLS records to `tls` and move the plaintext they carry into `input`. `Ok(true)`: the
/// peer sent close_notify. Records received whole are processed; the rest waits in `tls`.
fn decrypt(tls: &mut ServerConnection, mut bytes: &[u8], input: &mut Vec<u8>) -> io::Result<bool> {
    let mut closed = false;
    while !bytes.is_empty() {
        // 0: nothing more is read after a close_notify.
        if tls.read_tls(&mut bytes)? == 0 {
            break;
        }
        let state = tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, crate::tls::describe(&e)))?;
        let start = input.len();
        input.resize(start + state.plaintext_bytes_to_read(), 0);
        tls.reader().read_exact(&mut input[start..])?;
        closed |= state.peer_has_closed();
    }
    Ok(closed)
}

/// Encrypt what `output` holds (as much as rustls takes) and write what the socket takes,
/// until the socket would block or all is written; a close_notify follows the last reply when
/// `closing`. Whether any bytes were written.
fn send(
    tls: &mut ServerConnection,
    output: &mut Vec<u8>,
    closing: bool,
    stream: &mut TcpStream,
) -> io::Result<bool> {
    let mut moved = false;
    loop {
        // (During a handshake there is no output: replies follow requests, which follow it.)
        if !output.is_empty() {
            let n = tls.writer().write(output)?;
            output.drain(..n);
        }
        if output.is_empty() && closing {
            tls.send_close_notify();
        }
        if !tls.wants_write() {
            return Ok(moved);
        }
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => moved = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input buffer doubles as it grows, never past its cap.
    #[test]
    fn the_input_grows_by_doubling_up_to_its_cap() {
        let mut input = Vec::new();
        append(&mut input, &[1; 100], 1000);
        assert_eq!(input.capacity(), 128);
        append(&mut input, &[2; 100], 1000);
        assert_eq!(input.capacity(), 256);
        append(&mut input, &[3; 600], 1000);
        assert_eq!(input.capacity(), 1000, "the cap, not 1024");
        assert_eq!(input.len(), 800);
        assert_eq!(input[150], 2);
    }

    /// A connection whose reads stopped at the input cap is not quiet though every message it
    /// read is answered: the rest waits in the socket, and no new event will say so.
    #[test]
    fn only_a_connection_read_empty_is_quiet() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let (max_message, mut scratch) = (1024, vec![0; 1024]);
        let mut conn = Conn::new(0, server, peer, max_message, Metrics::default(), None);
        // Messages of 64 bytes: the cap (a message and a read, 2048) ends on a boundary.
        let line = br#"{"OP":"login","username":"user-0123456789abcd","password":"pw"}"#;
        let line = [&line[..], b"\n"].concat();
        assert_eq!(line.len(), 64);
        client.write_all(&line.repeat(64)).unwrap(); // 4096 bytes: twice the cap
        let read_all = |conn: &mut Conn, scratch: &mut [u8], want: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut taken = 0;
            while taken < want {
                assert!(Instant::now() < deadline, "only {taken} messages arrived");
                conn.fill(scratch, max_message).unwrap();
                while let Some(incoming) = conn.next_message() {
                    assert!(matches!(incoming, Incoming::Request { .. }));
                    taken += 1;
                }
                if taken < want {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        read_all(&mut conn, &mut scratch, 32);
        assert!(
            !conn.drained && !conn.quiet(),
            "stopped at the cap: more is waiting"
        );
        read_all(&mut conn, &mut scratch, 32);
        conn.fill(&mut scratch, max_message).unwrap();
        assert!(
            conn.quiet(),
            "read empty, all answered (the last newline is whitespace)"
        );
        client.write_all(&line[..10]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        conn.fill(&mut scratch, max_message).unwrap();
        assert!(!conn.quiet(), "part of a message is unanswered input");
    }
}
