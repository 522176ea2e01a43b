//! What a stress run measured: [`Recorder`] collects on each load thread, [`Report`] sums up
//! and prints as a table, as JSON, or as an SVG plot over time.

use crate::run::{Kind, Live, GRACE};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A histogram of latencies in microseconds, from 1 to `max` (at least 2).
fn histogram(max: u64, sigfig: u8) -> Histogram<u64> {
    // Valid bounds (low 1, high at least twice it); `new_with_bounds` fails only for invalid
    // ones, and then an auto-resizing one does.
    Histogram::new_with_bounds(1, max.max(2), sigfig)
        .or_else(|_| Histogram::new(sigfig))
        .unwrap_or_else(|_| unreachable!())
}

/// Transport errors by kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Transport {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub other: u64,
}

impl Transport {
    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.other
    }
}

/// One load thread's measurements.
pub struct Recorder {
    start: Instant,
    /// When the run's `--duration` ends: a timeout after it is an unfinished request.
    end: Instant,
    /// The longest latency recorded, in microseconds: `--timeout` (and the grace after the
    /// end); a longer one is recorded as this and counted in `capped`.
    max_micros: u64,
    capped: u64,
    unfinished: u64,
    /// Requests sent again on another target after their connection ended unanswered.
    retried: u64,
    latency: BTreeMap<Kind, Histogram<u64>>,
    per_second: Vec<Histogram<u64>>,
    codes: BTreeMap<u64, u64>,
    unexpected: BTreeMap<Kind, u64>,
    transport: Transport,
}

impl Recorder {
    /// A recorder for a run that started at `start`, ends at `end`, and waits `timeout` at
    /// most for one reply.
    pub fn new(start: Instant, end: Instant, timeout: Duration) -> Recorder {
        let max = timeout + GRACE;
        Recorder {
            start,
            end,
            max_micros: u64::try_from(max.as_micros()).unwrap_or(u64::MAX),
            capped: 0,
            unfinished: 0,
            retried: 0,
            latency: BTreeMap::new(),
            per_second: Vec::new(),
            codes: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            transport: Transport::default(),
        }
    }

    /// A reply arrived for a request of `kind` that was due at `due`.
    pub fn reply(&mut self, kind: Kind, due: Instant, code: Option<u64>, live: &Live) {
        self.reply_at(kind, due, Instant::now(), code, live);
    }

    /// A reply arrived at `now` for a request of `kind` that was due at `due`.
    fn reply_at(&mut self, kind: Kind, due: Instant, now: Instant, code: Option<u64>, live: &Live) {
        let max = self.max_micros;
        let waited = now.saturating_duration_since(due).as_micros() as u64;
        if waited > max {
            self.capped += 1;
        }
        let micros = waited.clamp(1, max);
        let _ = self
            .latency
            .entry(kind)
            .or_insert_with(|| histogram(max, 3))
            .record(micros);
        let second = now.saturating_duration_since(self.start).as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second
                .resize_with(second + 1, || histogram(max, 2));
        }
        let _ = self.per_second[second].record(micros);
        // A reply without a code is counted as code 0.
        let code = code.unwrap_or(0);
        *self.codes.entry(code).or_default() += 1;
        live.completed.fetch_add(1, Ordering::Relaxed);
        if !kind.accepts(code) {
            *self.unexpected.entry(kind).or_default() += 1;
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request failed in transport. A timeout once the run has ended is the grace running
    /// out: the request is unfinished, not an error.
    pub fn error(&mut self, e: &io::Error, live: &Live) {
        let timed_out = matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        );
        if timed_out && Instant::now() >= self.end {
            self.unfinished += 1;
            return;
        }
        classify(e, &mut self.transport);
        live.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A request whose connection ended unanswered is sent again on another target.
    pub fn retried(&mut self) {
        self.retried += 1;
    }

    pub fn merge(&mut self, other: Recorder) {
        let max = self.max_micros.max(other.max_micros);
        self.capped += other.capped;
        self.unfinished += other.unfinished;
        self.retried += other.retried;
        for (kind, h) in other.latency {
            let _ = self
                .latency
                .entry(kind)
                .or_insert_with(|| histogram(max, 3))
                .add(&h);
        }
        if self.per_second.len() < other.per_second.len() {
            self.per_second
                .resize_with(other.per_second.len(), || histogram(max, 2));
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(&other.per_second) {
            let _ = mine.add(theirs);
        }
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        for (kind, n) in other.unexpected {
            *self.unexpected.entry(kind).or_default() += n;
        }
        let t = other.transport;
        self.transport.refused += t.refused;
        self.transport.reset += t.reset;
        self.transport.timeout += t.timeout;
        self.transport.other += t.other;
    }

    pub fn report(self, elapsed: Duration) -> Report {
        let mut all = histogram(self.max_micros, 3);
        let mut by_kind = BTreeMap::new();
        for (kind, h) in &self.latency {
            let _ = all.add(h);
            by_kind.insert(
                kind.name().to_string(),
                KindReport {
                    requests: h.len(),
                    unexpected: self.unexpected.get(kind).copied().unwrap_or(0),
                    latency_ms: Latency::of(h),
                },
            );
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per_second = self
            .per_second
            .iter()
            .enumerate()
            .map(|(second, h)| Second {
                second: second as u64,
                requests: h.len(),
                rate: h.len() as f64 / covered(second, secs),
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect();
        Report {
            elapsed_s: secs,
            requests: all.len(),
            throughput: all.len() as f64 / secs,
            latency_ms: Latency::of(&all),
            by_kind,
            codes: self
                .codes
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
                .collect(),
            unexpected: self.unexpected.values().sum(),
            transport: self.transport,
            capped: self.capped,
            unfinished: self.unfinished,
            retried: self.retried,
            unsent: 0,
            planned: 0,
            per_second,
            params: Params::default(),
            setup_s: 0.0,
        }
    }
}

/// How much of second `second` (counted from 0) a run of `elapsed` seconds covers: 1 for a
/// whole second, less for the last one. A reply recorded after `elapsed` (it cannot be, but
/// clocks are read apart) still counts over at least a millisecond, not over nothing.
fn covered(second: usize, elapsed: f64) -> f64 {
    (elapsed - second as f64).clamp(1e-3, 1.0)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub requests: u64,
    pub unexpected: u64,
    pub latency_ms: Latency,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    /// Requests answered during this second, or the part of it the run covered.
    pub requests: u64,
    /// Answered requests per second over the time this bucket really covers: the last second
    /// of a run is usually partial, and counting it as whole would draw a dip.
    pub rate: f64,
    pub p99_ms: f64,
}

/// What a run was asked: its report carries them, so a result read later says what made it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Params {
    /// The login-servers, `HOST:PORT` as resolved.
    pub targets: Vec<String>,
    /// `seed` or `stream`.
    pub form: &'static str,
    pub connections: usize,
    /// Requests in flight on each stream-form connection.
    pub pipeline: usize,
    pub duration_s: f64,
    /// The cap on requests, if any.
    pub requests: Option<u64>,
    /// Open-loop arrivals per second; `None`: closed loop, as fast as answered.
    pub rate: Option<f64>,
    /// The weights of request kinds, `login=90,register=5,badpass=5`.
    pub mix: String,
    pub users: usize,
    /// The accounts' names begin `gwsim-PREFIX-`.
    pub prefix: String,
    pub timeout_s: f64,
    /// How long the accounts' setup might take.
    pub setup_timeout_s: f64,
    pub tls: bool,
}

impl Params {
    /// Open loop: the arrivals planned within the run (`rate` x `duration`, at most
    /// `requests`); 0 for a closed loop.
    pub fn planned(&self) -> u64 {
        let Some(rate) = self.rate else { return 0 };
        let planned = (rate * self.duration_s).ceil() as u64;
        self.requests.map_or(planned, |max| planned.min(max))
    }

    /// One line for a plot's title.
    fn title(&self) -> String {
        let rate = self
            .rate
            .map_or("closed loop".into(), |r| format!("{r} req/s offered"));
        let pipeline = match self.form {
            "stream" => format!(" x{}", self.pipeline),
            _ => String::new(),
        };
        format!(
            "{} {}{pipeline}, {} connections, {rate}, {} s, {}",
            self.targets.join(","),
            self.form,
            self.connections,
            self.duration_s,
            self.mix
        )
    }
}

/// The result of a stress run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the run was asked.
    pub params: Params,
    /// Seconds registering the run's accounts took, before the measured run (not in
    /// `elapsed_s`).
    pub setup_s: f64,
    /// Seconds from the first request to the last reply (the measured run).
    pub elapsed_s: f64,
    /// Requests answered (with any code).
    pub requests: u64,
    /// Answered requests per second.
    pub throughput: f64,
    pub latency_ms: Latency,
    pub by_kind: BTreeMap<String, KindReport>,
    /// Replies per code; `0` counts replies without a readable code.
    pub codes: BTreeMap<String, u64>,
    /// Replies whose code was not one their kind may get.
    pub unexpected: u64,
    pub transport: Transport,
    /// Replies that took longer than `--timeout` plus the grace: recorded as that, so the
    /// percentiles they reach are lower bounds.
    pub capped: u64,
    /// Requests still unanswered when the grace after `--duration` ran out.
    pub unfinished: u64,
    /// With several targets: requests sent again, once, on another target after their
    /// connection ended without a reply (a login-server stopping); each also answered is in
    /// `requests`, each lost again is a transport error.
    pub retried: u64,
    /// Open loop: arrivals planned within the run (see [`Params::planned`]); 0 for a closed
    /// loop.
    pub planned: u64,
    /// Open loop: arrivals due within the run that were never sent (it could not keep up).
    pub unsent: u64,
    pub per_second: Vec<Second>,
}

impl Report {
    /// Whether every request got the code it should, without transport errors, and at least
    /// one was answered (a target that never answers is no clean run).
    pub fn clean(&self) -> bool {
        self.unexpected == 0 && self.transport.total() == 0 && self.requests > 0
    }

    /// Open loop: the share of the planned arrivals never sent, in percent (0 for a closed
    /// loop).
    pub fn unsent_percent(&self) -> f64 {
        match self.planned {
            0 => 0.0,
            planned => self.unsent as f64 * 100.0 / planned as f64,
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "requests {}  in {:.2} s  = {:.0} req/s  (accounts set up in {:.2} s before)",
            self.requests, self.elapsed_s, self.throughput, self.setup_s
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "latency ms", "requests", "p50", "p90", "p99", "p99.9", "max", "unexpected"
        );
        let row = |out: &mut String, name: &str, n: u64, l: &Latency, bad: u64| {
            let _ = writeln!(
                out,
                "{name:<10} {n:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {bad:>10}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        };
        row(&mut out, "all", self.requests, l, self.unexpected);
        for (name, k) in &self.by_kind {
            row(&mut out, name, k.requests, &k.latency_ms, k.unexpected);
        }
        let codes: Vec<String> = self
            .codes
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(out, "codes      {}", codes.join("  "));
        let t = &self.transport;
        let _ = writeln!(
            out,
            "transport  refused: {}  reset: {}  timeout: {}  other: {}",
            t.refused, t.reset, t.timeout, t.other
        );
        let _ = writeln!(
            out,
            "cut off    unfinished at the end: {}  never sent: {} ({:.1}% of {} planned)  latencies capped at the timeout: {}",
            self.unfinished, self.unsent, self.unsent_percent(), self.planned, self.capped
        );
        if self.retried > 0 {
            let _ = writeln!(
                out,
                "retried    on another target after no reply: {}",
                self.retried
            );
        }
        out
    }

    /// Throughput (with the offered rate of an open loop) and p99 latency, second by second,
    /// as an SVG file: titled with the run's parameters, the end of `--duration` marked, and
    /// the arrivals never sent said beside the throughput.
    pub fn plot(&self, path: &std::path::Path) -> Result<(), String> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(&self.params.title(), ("sans-serif", 15))
            .map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(300);
        let per_second = |value: fn(&Second) -> f64| -> Vec<(f64, f64)> {
            self.per_second
                .iter()
                .map(|s| (s.second as f64 + 0.5, value(s)))
                .collect()
        };
        let end = self.params.duration_s;
        let mut throughput = vec![Line {
            label: "answered".into(),
            points: per_second(|s| s.rate),
            color: BLUE,
        }];
        if let Some(rate) = self.params.rate {
            throughput.push(Line {
                label: format!("offered; never sent: {} of {}", self.unsent, self.planned),
                points: vec![(0.0, rate), (end, rate)],
                color: GREEN,
            });
        }
        line_chart(&top, "throughput (requests/s)", &throughput, end)?;
        let p99 = [Line {
            label: "p99".into(),
            points: per_second(|s| s.p99_ms),
            color: RED,
        }];
        line_chart(&bottom, "p99 latency (ms)", &p99, end)?;
        root.present().map_err(|e| e.to_string())
    }
}

/// One named line of a chart.
struct Line {
    label: String,
    /// (second, value)
    points: Vec<(f64, f64)>,
    color: plotters::style::RGBColor,
}

/// Lines over seconds, the y axis from 0 to a little above the highest point, and a dashed
/// mark where `--duration` ended (`end`, in seconds).
fn line_chart<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    lines: &[Line],
    end: f64,
) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let points = lines.iter().flat_map(|l| &l.points);
    let right = points.clone().map(|p| p.0).fold(end, f64::max).max(1.0) + 0.5;
    let top = points.map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, 0.0..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("second")
        .draw()
        .map_err(|e| err(&e))?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color))
            .map_err(|e| err(&e))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    let dashes = (0..20).map(|i| {
        let (from, to) = (top * f64::from(i) / 20.0, top * (f64::from(i) + 0.5) / 20.0);
        PathElement::new(vec![(end, from), (end, to)], BLACK)
    });
    chart
        .draw_series(dashes)
        .map_err(|e| err(&e))?
        .label(format!("end of --duration ({end} s)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Classify a transport error for the report.
pub(crate) fn classify(e: &io::Error, transport: &mut Transport) {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => transport.refused += 1,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => transport.reset += 1,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => transport.timeout += 1,
        _ => transport.other += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_second_is_rated_over_the_time_it_covers() {
        let start = Instant::now();
        let mut recorder = Recorder::new(
            start,
            start + Duration::from_secs(10),
            Duration::from_secs(10),
        );
        let live = Live::default();
        // 100 replies in the first second, 25 in the quarter second that follows it.
        for i in 0..125u64 {
            let at = if i < 100 { 0.5 } else { 1.1 };
            let due = start + Duration::from_secs_f64(at) - Duration::from_millis(1);
            recorder.reply_at(
                Kind::Login,
                due,
                start + Duration::from_secs_f64(at),
                Some(3),
                &live,
            );
        }
        let report = recorder.report(Duration::from_secs_f64(1.25));
        let rates: Vec<f64> = report.per_second.iter().map(|s| s.rate).collect();
        assert_eq!(rates.len(), 2);
        assert!((rates[0] - 100.0).abs() < 1e-6, "{rates:?}");
        assert!((rates[1] - 100.0).abs() < 1e-6, "no dip: {rates:?}");
        assert_eq!(report.per_second[1].requests, 25);
    }
}
