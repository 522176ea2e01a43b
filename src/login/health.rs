//! [`Health`]: whether login-server's threads are alive, for `/healthz`. The I/O thread beats
//! on every turn of its loop (at least every 100 ms); each worker and hash thread holds a
//! [`Running`] for as long as it runs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the I/O thread may go without a beat before it counts as stalled.
pub const STALL: Duration = Duration::from_secs(2);

/// The heartbeat of the I/O thread, and the worker and hash threads still running.
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the I/O thread's last beat.
    io_beat: AtomicU64,
    running: AtomicUsize,
    expected: usize,
}

/// One running worker or hash thread; counted until dropped.
pub struct Running(Arc<Health>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Health {
    /// Health of a server that runs `threads` worker and hash threads.
    pub fn new(threads: usize) -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            io_beat: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            expected: threads,
        })
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The I/O thread is turning.
    pub fn beat(&self) {
        self.io_beat.store(self.millis(), Ordering::Relaxed);
    }

    /// Count a worker or hash thread as running until the returned guard drops.
    pub fn running(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(self.clone())
    }

    /// Whether the I/O thread beat within [`STALL`] and every worker and hash thread runs.
    pub fn alive(&self) -> bool {
        let quiet = self
            .millis()
            .saturating_sub(self.io_beat.load(Ordering::Relaxed));
        Duration::from_millis(quiet) < STALL && self.running.load(Ordering::SeqCst) == self.expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_only_while_the_io_thread_beats_and_every_thread_runs() {
        let health = Health::new(2);
        health.beat();
        let (a, b) = (health.running(), health.running());
        assert!(health.alive());
        drop(b);
        assert!(!health.alive(), "a thread has ended");
        let _b = health.running();
        assert!(health.alive());
        health.io_beat.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let stale = Health {
            started: Instant::now() - STALL - Duration::from_millis(1),
            io_beat: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            expected: 0,
        };
        assert!(!stale.alive(), "the I/O thread stalled");
        drop(a);
    }
}
