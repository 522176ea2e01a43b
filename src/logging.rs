//! Log setup for the binaries: text or JSON lines on stderr, written by a background thread.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use tracing_appender::non_blocking::NonBlocking;
pub use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::MakeWriter;

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
/// falls more than 4,096 pieces (`QUEUED`) behind (a piece: one line, or the lines a thread inside
/// [`held`] hands over together, at most 8 KiB: `MAX_HELD`), lines are dropped rather than
/// requests delayed: at most 32 MiB wait. Keep the returned guard alive until exit: dropping it
/// flushes what is queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED)
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Holding(writer.clone()));
    // Only the first log setup of a process counts: tracing's global subscriber is set once.
    let _ = WRITER.set(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// `error` and its causes on one line, `a: b: c`, each cause said once: a cause whose text the
/// message before it already holds (an error that prints its source itself) is skipped.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !said.contains(&text) {
            said = format!("{said}: {text}");
        }
        next = cause.source();
    }
    said
}

/// Say on stderr why a binary stops, as one line in `format`: `Error: ...` as text, or a JSON
/// object shaped as the log's own (`timestamp`, `level` `ERROR`, `fields.message`, `target`),
/// so that a log collector reading JSON lines reads this one too. `message` is the error with
/// its causes ([`causes`]): never a backtrace, which is for panics.
pub fn fatal(format: LogFormat, target: &str, message: &str) {
    let line = match format {
        LogFormat::Text => format!("Error: {message}"),
        LogFormat::Json => {
            let timestamp = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            serde_json::json!({
                "timestamp": timestamp,
                "level": "ERROR",
                "fields": {"message": message},
                "target": target,
            })
            .to_string()
        }
    };
    let _ = writeln!(std::io::stderr(), "{line}");
}

thread_local! {
    /// This thread's lines held by [`held`], if it is inside it.
    static HELD: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Run `f` holding this thread's log lines, and hand them to the log writer as one piece after
/// it (a panic included): a worker answering a batch of requests wakes the writer once, not
/// once per request's line.
pub fn held<T>(f: impl FnOnce() -> T) -> T {
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            let lines = HELD.with(|held| held.borrow_mut().take());
            if let (Some(lines), Some(writer)) = (lines, WRITER.get()) {
                if !lines.is_empty() {
                    let _ = writer.clone().write_all(&lines);
                }
            }
        }
    }
    let outer = HELD.with(|held| held.borrow().is_some());
    if outer {
        return f();
    }
    HELD.with(|held| *held.borrow_mut() = Some(Vec::new()));
    let _release = Release;
    f()
}

/// The log writer, once [`init`] has made it: where [`held`] lines go.
static WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// The log's writer: a held line goes to its thread's buffer, any other to the log writer.
struct Holding(NonBlocking);

impl<'a> MakeWriter<'a> for Holding {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(self.0.clone())
    }
}

/// One log line being written.
struct Line(NonBlocking);

/// Most bytes of lines [`held`] keeps before handing them over anyway: a worker answering
/// thousands of tiny bad requests in one turn holds 8 KiB of log, not megabytes.
const MAX_HELD: usize = 8 * 1024;

/// Pieces the log writer may fall behind by before lines are dropped.
const QUEUED: usize = 4096;

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (held, full) = HELD.with(|held| match held.borrow_mut().as_mut() {
            Some(lines) => {
                lines.extend_from_slice(buf);
                let full = (lines.len() >= MAX_HELD).then(|| std::mem::take(lines));
                (true, full)
            }
            None => (false, None),
        });
        if let Some(lines) = full {
            self.0.write_all(&lines)?;
        }
        if held {
            Ok(buf.len())
        } else {
            self.0.write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Log lines about an event that may repeat many times a second (refused connections, failed
/// connection attempts) at most once per `every`: the first at once, then one line with how
/// many happened since, so a flood of them cannot flood the log.
#[derive(Debug)]
pub struct RateLimited {
    every: std::time::Duration,
    state: parking_lot::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimited {
    pub const fn new(every: std::time::Duration) -> Self {
        RateLimited {
            every,
            state: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// Count one event. `Some(n)` when a line is due now, for `n` events (this one included)
    /// since the last line; `None` while the last line is more recent than `every`.
    pub fn hit(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        state.1 += 1;
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => None,
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// What the log writer wrote.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Said(String, #[source] Option<Box<Said>>);

    #[test]
    fn each_cause_is_said_once() {
        let io = || Some(Box::new(Said("in use".into(), None)));
        // A message that prints its source itself, and one that leaves it to the chain.
        let repeats = Said(
            "cannot start".into(),
            Some(Box::new(Said("bind: in use".into(), io()))),
        );
        assert_eq!(causes(&repeats), "cannot start: bind: in use");
        let apart = Said(
            "cannot start".into(),
            Some(Box::new(Said("bind".into(), io()))),
        );
        assert_eq!(causes(&apart), "cannot start: bind: in use");
    }

    fn held_bytes() -> usize {
        HELD.with(|held| held.borrow().as_ref().map_or(0, Vec::len))
    }

    #[test]
    fn held_lines_go_out_together_and_never_pile_up() {
        let sink = Sink::default();
        let (writer, guard) = tracing_appender::non_blocking(sink.clone());
        assert!(
            WRITER.set(writer.clone()).is_ok(),
            "only this test sets the writer"
        );
        let line = vec![b'x'; 99]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        held(|| {
            for _ in 0..10 {
                Line(writer.clone()).write_all(&line).unwrap();
            }
            assert_eq!(held_bytes(), 1000, "held, not written");
            // Thousands of lines in one turn: handed over each time MAX_HELD is reached.
            for _ in 0..2000 {
                Line(writer.clone()).write_all(&line).unwrap();
                assert!(held_bytes() < MAX_HELD);
            }
        });
        assert_eq!(held_bytes(), 0, "released");
        Line(writer.clone()).write_all(&line).unwrap();
        assert_eq!(held_bytes(), 0, "outside held: written at once");
        drop((writer, guard)); // flushes the log writer
        let written = sink.0.lock().unwrap();
        assert_eq!(written.len(), 2011 * 100, "every line, once");
    }

    #[test]
    fn rate_limited_lines_summarise_what_they_skipped() {
        let limit = RateLimited::new(Duration::from_millis(50));
        assert_eq!(limit.hit(), Some(1));
        for _ in 0..9 {
            assert_eq!(limit.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.hit(), Some(10));
    }
}
