//! The way connections come back to the I/O thread from workers and hash threads: a channel,
//! and a wake-up that is sent only when the I/O thread may be asleep and the connection needs
//! it before its socket's next event, not once per connection.

use super::conn::Conn;
use crate::protocol::gateway::{Op, Reply};
use crossbeam_channel::Sender;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

/// What comes back to the I/O thread.
pub enum Back {
    /// The connection, to watch again.
    Conn(Box<Conn>),
    /// The connection in this slot was closed, or lost to a panic.
    Gone(usize),
}

/// The channel back to the I/O thread, and its waker.
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

    /// Hand something back. A send fails only once the I/O thread has gone (shutdown): the
    /// connection then closes.
    pub fn send(&self, back: Back) {
        if self.tx.send(back).is_ok() && self.asleep.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Write what can be written now and hand the connection back, or report it gone (its slot
    /// is freed at the I/O thread's next wake-up).
    ///
    /// A quiet connection (see [`Conn::quiet`]) wakes nobody: the I/O thread looks at it when
    /// its socket next has an event. An event that came while the worker held it has set its
    /// `wanted` flag, which is read after the connection is in the channel; the I/O thread sets
    /// the flag before it empties the channel. So either the flag is seen here and the I/O
    /// thread woken, or the I/O thread finds the connection in the channel after the event.
    pub fn give_back(&self, mut conn: Box<Conn>) {
        let token = conn.token();
        match conn.flush() {
            Ok(_) if !conn.done() => {
                let urgent = !conn.quiet();
                let wanted = conn.wanted();
                if self.tx.send(Back::Conn(conn)).is_ok()
                    && (urgent || wanted.load(Ordering::SeqCst))
                    && self.asleep.swap(false, Ordering::SeqCst)
                {
                    self.wake();
                }
            }
            _ => {
                let _ = self.tx.send(Back::Gone(token));
            }
        }
    }

    /// Run one job on connection `token`; if anything outside the service panics, the
    /// connection is reported gone and the thread lives on.
    pub fn contained(&self, token: usize, f: impl FnOnce()) {
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            tracing::error!(token, "panic while handling a connection; closed it");
            self.send(Back::Gone(token));
        }
    }
}

/// Run the service's part of a request; if it panics, log it and answer "unavailable" (the
/// request's counterpart of [`Returns::contained`], which closes a connection that panicked).
pub fn guarded<T>(op: Op, f: impl FnOnce() -> T, on_panic: impl FnOnce(Reply) -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!(
            op = op.as_str(),
            "panic while handling a request; answered unavailable"
        );
        on_panic(Reply::unavailable("internal error, retry later"))
    })
}
