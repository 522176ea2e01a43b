//! The signals that stop a server, shared by the binaries.
//!
//! SIGINT and SIGTERM ask for a graceful stop. SIGHUP does not stop anything: a server started
//! under `nohup` or from a terminal that closes keeps serving, and the hang-up is logged.
//! (Logs go to stderr, which the service manager owns, so there is nothing to reopen.)

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The stop signals, caught from [`StopSignals::install`] on: install before starting a server,
/// so that a signal that arrives while it starts is not lost (or fatal).
pub struct StopSignals(Signals);

impl StopSignals {
    /// Catch SIGINT, SIGTERM and SIGHUP from now on.
    pub fn install() -> std::io::Result<StopSignals> {
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map(StopSignals)
    }

    /// Block until SIGINT or SIGTERM arrives; SIGHUP is logged and ignored.
    pub fn wait(mut self) {
        for signal in self.0.forever() {
            if signal == SIGHUP {
                tracing::info!("SIGHUP received: ignored (SIGTERM or SIGINT stops the server)");
                continue;
            }
            return;
        }
    }
}
