//! [`Conn`]: one gateway connection, its socket and its buffers. Whoever holds a `Conn` (the
//! I/O thread, a worker or a hash thread) owns it; nobody else touches the socket meanwhile.
//!
//! Reads and writes never block: the socket is non-blocking, and what cannot be written now
//! waits in the output buffer until the I/O thread sees the socket writable.

use crate::metrics::Metrics;
use crate::protocol::gateway::{self, BadRequest, Form, Id, Op, Reply, Request, Scan, Scanner};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

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

/// A gateway connection and what is buffered on it.
pub struct Conn {
    /// Where the I/O thread keeps it; travels with it so it can find its way back.
    pub token: usize,
    pub peer: SocketAddr,
    metrics: Arc<Metrics>,
    stream: TcpStream,
    input: Vec<u8>,
    /// Bytes of `input` already taken as messages.
    consumed: usize,
    scanner: Scanner,
    output: Vec<u8>,
    /// When the message being received began: it must end within the message timeout.
    pub message_started: Option<Instant>,
    /// The last time bytes moved either way.
    pub last_activity: Instant,
    /// When its current batch of whole messages was found: replies' latency counts from here.
    pub ready_at: Instant,
    /// The peer has closed its sending side.
    pub eof: bool,
    /// Close once the output is written: after a seed-form reply or an unframeable message.
    pub closing: bool,
    /// Refused mid-stream: unread input may follow, so close gently (see [`Conn::linger`]).
    refused: bool,
    /// When the gentle close began.
    pub lingering_since: Option<Instant>,
}

impl Conn {
    pub fn new(
        token: usize,
        stream: TcpStream,
        peer: SocketAddr,
        max_message: usize,
        metrics: Arc<Metrics>,
    ) -> Conn {
        Conn {
            token,
            peer,
            metrics,
            stream,
            input: Vec::new(),
            consumed: 0,
            scanner: Scanner::new(max_message),
            output: Vec::new(),
            message_started: None,
            last_activity: Instant::now(),
            ready_at: Instant::now(),
            eof: false,
            closing: false,
            refused: false,
            lingering_since: None,
        }
    }

    /// Read what the socket has, using `scratch` as the read buffer. Unprocessed input is
    /// capped at one whole message plus one read: a client flooding faster than it is answered
    /// is held back by TCP, not by our memory.
    pub fn fill(&mut self, scratch: &mut [u8], max_message: usize) -> io::Result<()> {
        if self.consumed > 0 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
        let cap = max_message + scratch.len();
        while !self.eof && self.input.len() < cap {
            match self.stream.read(scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    // Read on until WouldBlock even after a short read: edge-triggered polling
                    // would not report an end of stream that arrived with the data.
                    self.input.extend_from_slice(&scratch[..n]);
                    self.last_activity = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Look at the unprocessed input without taking anything.
    pub fn scan(&mut self) -> Scan {
        let scan = self.scanner.scan(&self.input[self.consumed..]);
        match scan {
            Scan::Partial if self.message_started.is_none() => {
                self.message_started = Some(Instant::now())
            }
            Scan::Empty => self.message_started = None,
            _ => {}
        }
        scan
    }

    /// Take the next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Option<Incoming> {
        match self.scan() {
            Scan::Empty | Scan::Partial => None,
            Scan::Invalid(e) => Some(Incoming::Broken(e)),
            Scan::Complete { form, start, end } => {
                let bytes = &self.input[self.consumed + start..self.consumed + end];
                let parsed = gateway::parse(form, bytes);
                self.consumed += end;
                self.scanner.reset();
                self.message_started = None;
                Some(match parsed {
                    Ok((request, id)) => Incoming::Request { form, request, id },
                    Err(bad) => Incoming::Bad { form, bad },
                })
            }
        }
    }

    /// Queue `reply` to a request for `op` (`None`: not a request) in `form`, and account for
    /// it: the metrics, and one log line per request. A seed-form reply is the last thing said
    /// on a connection.
    pub fn answer(&mut self, form: Form, op: Option<Op>, reply: &Reply, id: Option<&Id>) {
        gateway::encode(&mut self.output, form, reply, id);
        if form == Form::Seed {
            self.closing = true;
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

    /// Answer a well-framed message that is not a valid request with code 6.
    pub fn answer_bad(&mut self, form: Form, bad: BadRequest) {
        let reply = Reply::bad_request(bad.info);
        self.answer(form, None, &reply, bad.id.as_ref());
    }

    /// Answer a connection whose input cannot be taken further (unframeable, truncated, too
    /// slow) with code 6 saying `what` is wrong, and close it.
    pub fn refuse(&mut self, what: impl std::fmt::Display) {
        let reply = Reply::bad_request(format!("bad request: {what}"));
        self.answer(Form::Stream, None, &reply, None);
        self.closing = true;
        self.refused = true;
    }

    /// Whether closing now could reset the connection before the peer reads our last reply:
    /// closing a socket with unread input sends RST, which discards what the peer has not
    /// read yet. Such a connection is half-closed first and its input drained for a while.
    pub fn needs_linger(&self) -> bool {
        self.refused && !self.eof && self.lingering_since.is_none()
    }

    /// Half-close: our replies are followed by FIN; the peer's bytes are read and dropped.
    pub fn linger(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.lingering_since = Some(Instant::now());
    }

    /// While lingering: read and drop input. `true` once the peer has closed too.
    pub fn drain(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() != io::ErrorKind::WouldBlock,
            }
        }
    }

    /// Write as much output as the socket takes now. `Ok(true)` when all is written.
    pub fn flush(&mut self) -> io::Result<bool> {
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

    /// Whether replies are waiting for the socket to take them.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Closing, nothing left to write, and safe to close at once.
    pub fn done(&self) -> bool {
        self.closing && self.output.is_empty() && !self.refused
    }
}
