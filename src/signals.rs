//! The signals a server acts on, shared by the binaries.
//!
//! SIGINT and SIGTERM ask for a graceful stop. SIGHUP never stops anything (a server started
//! under `nohup` or from a terminal that closes keeps serving): it asks the server to read its
//! TLS files again, and a reload that fails keeps what was in force. (Logs go to stderr, which
//! the service manager owns, so there is nothing to reopen.)

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The stop signals, caught from [`StopSignals::install`] on: install before starting a server,
/// so that a signal that arrives while it starts is not lost (or fatal).
pub struct StopSignals {
    /// What [`StopSignals::wait`] reads.
    signals: Signals,
    /// Set by SIGINT or SIGTERM, for a start that waits to give up early.
    stopped: Arc<AtomicBool>,
}

impl StopSignals {
    /// Catch SIGINT, SIGTERM and SIGHUP from now on.
    pub fn install() -> std::io::Result<StopSignals> {
        let stopped = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register(signal, stopped.clone())?;
        }
        let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        Ok(StopSignals { signals, stopped })
    }

    /// Whether SIGINT or SIGTERM has arrived, without waiting.
    pub fn received(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Block until SIGINT or SIGTERM arrives; on each SIGHUP, run `reload` and go on waiting.
    pub fn wait(mut self, mut reload: impl FnMut()) {
        for signal in self.signals.forever() {
            if signal == SIGHUP {
                tracing::info!("SIGHUP received: reloading (SIGTERM or SIGINT stops the server)");
                reload();
                continue;
            }
            return;
        }
    }
}
