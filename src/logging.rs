//! Process plumbing shared by the binaries: log setup and waiting for a stop signal.

use std::io::IsTerminal;

/// Log to stderr, level from `RUST_LOG` (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Block until SIGINT or SIGTERM.
pub fn wait_for_signal() -> Result<(), ctrlc::Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })?;
    let _ = rx.recv();
    Ok(())
}
