//! Log setup for the binaries: text or JSON lines on stderr, written by a background thread.

use std::io::IsTerminal;
pub use tracing_appender::non_blocking::WorkerGuard;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log to stderr in `format`; the level comes from `RUST_LOG` (default `info`). One line per
/// request goes to the target `request`: `RUST_LOG=info,request=off` silences those alone.
///
/// Lines are written by a background thread, so a slow stderr never stalls a worker; if it
/// falls more than 128k lines behind, lines are dropped rather than requests delayed. Keep
/// the returned guard alive until exit: dropping it flushes what is queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
