//! `gateway-sim stress`: a bounded load run against a login-server.
//!
//! One thread per connection (two in the stream form: a writer and a reader, so requests can
//! be pipelined). Requests draw tickets from a shared counter, which bounds the run by count;
//! the clock bounds it by time. With `rate`, ticket `i` is due at `start + i / rate` and its
//! latency is measured from then, not from when it was sent, so a stalled server cannot hide
//! its queueing (no coordinated omission).

use crate::report::{Params, Recorder, Report};
use crate::run::{Kind, Live, GRACE};
use crate::secure::{self, Tls};
use crossbeam_channel::{bounded, unbounded};
use login_server::protocol::gateway::Form;
use login_server::tls::Stream;
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens from the run's logins, for its `verify` requests: at most [`TokenPool::SIZE`], the
/// oldest replaced.
#[derive(Default)]
pub struct TokenPool {
    tokens: Mutex<Vec<String>>,
    next: AtomicUsize,
}

impl TokenPool {
    const SIZE: usize = 1024;

    fn add(&self, token: String) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() < Self::SIZE {
            tokens.push(token);
        } else {
            let at = self.next.fetch_add(1, Ordering::Relaxed) % Self::SIZE;
            tokens[at] = token;
        }
    }

    fn pick(&self, rng: &mut Rng) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match tokens.len() {
            0 => None,
            n => Some(tokens[(rng.next() % n as u64) as usize].clone()),
        }
    }
}

/// Weights of each kind, as `login=90,register=5,badpass=5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(Vec<(Kind, u32)>);

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in s.split(',') {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KIND=WEIGHT"))?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!("unknown kind {name:?}; kinds are {}", names.join(", "))
                })?;
            let weight = weight
                .trim()
                .parse()
                .map_err(|e| format!("{part:?}: {e}"))?;
            weights.push((kind, weight));
        }
        if weights.iter().all(|&(_, w)| w == 0) {
            return Err("the weights add up to 0".into());
        }
        Ok(Mix(weights))
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(kind, weight)| format!("{}={weight}", kind.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    fn pick(&self, rng: &mut Rng) -> Kind {
        let total: u32 = self.0.iter().map(|&(_, w)| w).sum();
        let mut roll = (rng.next() % u64::from(total)) as u32;
        for &(kind, weight) in &self.0 {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        self.0[0].0
    }

    fn weight(&self, kind: Kind) -> u32 {
        self.0
            .iter()
            .filter(|&&(k, _)| k == kind)
            .map(|&(_, w)| w)
            .sum()
    }

    /// The accounts the run needs made first, each as what names it and the request that
    /// makes it (or finds it made): logins' and decoys' registrations, devices' first logins.
    fn accounts(&self, users: usize, prefix: &str) -> Vec<(String, Value)> {
        let register = |(username, password): (String, String)| {
            let body = json!({"OP": "register", "username": username, "password": password});
            (username, body)
        };
        let mut accounts = Vec::new();
        for i in 0..users as u64 {
            if self.weight(Kind::Login) > 0 || self.weight(Kind::Verify) > 0 {
                accounts.push(register(user(prefix, i)));
            }
            if self.weight(Kind::BadPass) > 0 {
                accounts.push(register(decoy(prefix, i)));
            }
            if self.weight(Kind::Device) > 0 {
                let body = device(prefix, i);
                accounts.push((format!("the device of gwsim-{prefix}-{i}"), body));
            }
        }
        accounts
    }
}

/// xorshift64*: plenty for picking users and kinds.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// login-servers: connection `i` begins on target `i` (modulo their number) and, when its
    /// target refuses or closes it, goes on with the next. With several, a request whose
    /// connection ended without a reply is sent again, once, on the next.
    pub targets: Vec<SocketAddr>,
    pub connections: usize,
    /// Stop after this long (at most).
    pub duration: Duration,
    /// Stop after this many requests (at most).
    pub requests: Option<u64>,
    pub form: Form,
    /// Requests in flight on each stream-form connection.
    pub pipeline: usize,
    pub mix: Mix,
    /// Accounts that logins pick from; registered first unless 0.
    pub users: usize,
    /// Names the run's accounts (see [`check_prefix`]): `gwsim-PREFIX-N` for the users,
    /// `gwsim-PREFIX-dN` for the decoys, `gwsim-PREFIX-` and a run-unique part for the mix's
    /// registrations. A later run with the same prefix reuses the users and decoys, and
    /// `account-db admin list --prefix gwsim-` finds them all.
    pub prefix: String,
    /// How long registering the accounts may take, before the measured run begins.
    pub setup_timeout: Duration,
    /// Open-loop arrivals per second, all connections together.
    pub rate: Option<f64>,
    /// How long one request may take before it counts as a timeout.
    pub timeout: Duration,
    /// TLS toward the target (`--tls-ca`); `None`: plaintext.
    pub tls: Option<Arc<Tls>>,
}

impl Default for Options {
    /// `gateway-sim stress`'s defaults.
    fn default() -> Options {
        Options {
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 6999))],
            connections: 32,
            duration: Duration::from_secs(10),
            requests: None,
            form: Form::Seed,
            pipeline: 1,
            mix: Mix(vec![
                (Kind::Login, 90),
                (Kind::Register, 5),
                (Kind::BadPass, 5),
            ]),
            users: 100,
            prefix: "load".into(),
            setup_timeout: Duration::from_secs(60),
            rate: None,
            timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Whether `prefix` may name a run's accounts: 1 to 8 of `a-z0-9`, so that every name the
/// run makes fits login-server's default 32 characters.
pub fn check_prefix(prefix: &str) -> Result<String, String> {
    let fits = (1..=8).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    match fits {
        true => Ok(prefix.to_string()),
        false => Err(format!("{prefix:?}: 1 to 8 of a-z and 0-9")),
    }
}

/// The name and password of the run's account `i`.
fn user(prefix: &str, i: u64) -> (String, String) {
    (
        format!("gwsim-{prefix}-{i}"),
        format!("stress-password-{i}"),
    )
}

/// The name and password of decoy account `i`, which only wrong passwords are tried on.
fn decoy(prefix: &str, i: u64) -> (String, String) {
    (
        format!("gwsim-{prefix}-d{i}"),
        format!("stress-password-{i}"),
    )
}

/// The login of device `i`: a guest of the run's, made by its first login. Its id and secret
/// follow from the prefix and `i`, so a later run with the prefix logs into the same guest.
fn device(prefix: &str, i: u64) -> Value {
    json!({"OP": "device", "device_id": format!("gwsim-{prefix}-device-{i:08}"),
           "device_secret": format!("gwsim-stress-device-secret-{prefix}-{i}")})
}

/// Builds request messages for one thread.
struct Requests {
    rng: Rng,
    users: u64,
    /// The run's prefix, for the accounts logins and wrong passwords pick.
    accounts: String,
    /// Makes registered names unique across threads and runs: `gwsim-PREFIX-`, 24 bits of
    /// the run, the thread, then `x` and the serial, all in hex (32 characters at most).
    prefix: String,
    serial: u64,
}

impl Requests {
    fn new(thread: usize, plan: &Plan) -> Requests {
        let (run, accounts) = (plan.run, plan.options.prefix.clone());
        Requests {
            rng: Rng::new(run ^ (thread as u64 + 1) << 32),
            users: plan.options.users.max(1) as u64,
            prefix: format!("gwsim-{accounts}-{:06x}{thread:x}x", run & 0xff_ffff),
            accounts,
            serial: 0,
        }
    }

    /// The message for a request of `kind`, and the kind it really is (a `verify` is a login
    /// while `tokens` is empty).
    fn message(&mut self, kind: Kind, form: Form, tokens: &TokenPool) -> (Kind, Vec<u8>) {
        self.serial += 1;
        let pick = self.rng.next() % self.users;
        let (name, password) = user(&self.accounts, pick);
        let token = match kind {
            Kind::Verify => tokens.pick(&mut self.rng),
            _ => None,
        };
        let kind = match (kind, &token) {
            (Kind::Verify, None) => Kind::Login,
            _ => kind,
        };
        let body = match kind {
            Kind::Login => json!({"OP": "login", "username": name, "password": password}),
            Kind::Verify => json!({"OP": "verify", "token": token}),
            Kind::BadPass => {
                let (decoy, _) = decoy(&self.accounts, pick);
                json!({"OP": "login", "username": decoy, "password": "not-the-password"})
            }
            Kind::Register => json!({"OP": "register",
                "username": format!("{}{:x}", self.prefix, self.serial), "password": password}),
            Kind::Unknown => json!({"OP": "login",
                "username": format!("nobody-{}", self.rng.next() % 1_000_000), "password": password}),
            Kind::Invalid => {
                json!({"OP": "login", "username": "no spaces allowed!", "password": password})
            }
            Kind::Malformed => json!({"OP": "fly", "username": name, "password": password}),
            Kind::Device => device(&self.accounts, pick),
        };
        let bytes = match form {
            Form::Seed => json!([body]).to_string().into_bytes(),
            Form::Stream => {
                let mut line = body.to_string().into_bytes();
                line.push(b'\n');
                line
            }
        };
        (kind, bytes)
    }
}

struct Plan {
    options: Options,
    start: Instant,
    end: Instant,
    live: Arc<Live>,
    run: u64,
    tokens: TokenPool,
}

impl Plan {
    /// A recorder for one of the run's threads.
    fn recorder(&self) -> Recorder {
        Recorder::new(self.start, self.end, self.options.timeout)
    }

    /// Take in a reply to a request of `kind`: its code, and its token for later `verify`s
    /// when the mix has them.
    fn reply(&self, kind: Kind, reply: &[u8]) -> Option<u64> {
        let answer = Answer::parse(reply)?;
        if kind == Kind::Login && self.options.mix.weight(Kind::Verify) > 0 {
            if let Some(token) = answer.token {
                self.tokens.add(token.into_owned());
            }
        }
        Some(answer.code)
    }
}

impl Plan {
    /// The next request's due time, or `None` once the run is over: `--duration` is a hard
    /// limit, nothing starts after it. An open-loop arrival that is due within the run but
    /// could not be sent before its end is counted in [`Live::unsent`].
    fn ticket(&self) -> Option<Instant> {
        if self.live.stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.live.tickets.fetch_add(1, Ordering::Relaxed);
        if self.options.requests.is_some_and(|max| n >= max) {
            return None;
        }
        let due = match self.options.rate {
            Some(rate) => self.start + Duration::from_secs_f64(n as f64 / rate),
            None => Instant::now(),
        };
        if due >= self.end {
            return None;
        }
        if Instant::now() >= self.end {
            if let Some(rate) = self.options.rate {
                let planned = (rate * self.options.duration.as_secs_f64()).ceil() as u64;
                let planned = self
                    .options
                    .requests
                    .map_or(planned, |max| planned.min(max));
                self.live
                    .unsent
                    .fetch_max(planned.saturating_sub(n), Ordering::Relaxed);
            }
            return None;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Some(due)
    }
}

impl Plan {
    /// How long a request sent now may wait: `--timeout`, but never past the run's end and
    /// its grace.
    fn patience(&self) -> Duration {
        let cut = (self.end + GRACE).saturating_duration_since(Instant::now());
        self.options.timeout.min(cut).max(Duration::from_millis(1))
    }
}

fn connect(plan: &Plan, at: &mut usize) -> io::Result<Stream> {
    connect_within(&plan.options, at, plan.patience())
}

/// A connection to the run's target `at` (over TLS if the run says so), each step of it, and
/// of what follows, within `patience`; where it fails, to the next target, and so on once
/// round: `at` is left on the one reached (or the last tried).
fn connect_within(options: &Options, at: &mut usize, patience: Duration) -> io::Result<Stream> {
    let targets = options.targets.len().max(1);
    let mut failed = None;
    for _ in 0..targets {
        let target = options.targets[*at % targets];
        match secure::connect(target, options.tls.as_deref(), patience) {
            Ok(stream) => return Ok(stream),
            Err(e) => failed = Some(e),
        }
        *at += 1;
    }
    Err(failed.unwrap_or_else(|| io::Error::other("no target")))
}

/// A request sent and not yet answered: its kind, when it was due, and (with several targets,
/// to send it again) its bytes and whether it was sent again already.
struct Sent {
    kind: Kind,
    due: Instant,
    again: Option<(Vec<u8>, bool)>,
}

impl Sent {
    fn new(plan: &Plan, kind: Kind, due: Instant, message: &[u8]) -> Sent {
        let again = (plan.options.targets.len() > 1).then(|| (message.to_vec(), false));
        Sent { kind, due, again }
    }

    /// Its bytes, to send again.
    fn message(&self) -> Vec<u8> {
        self.again.as_ref().map(|a| a.0.clone()).unwrap_or_default()
    }
}

/// The run's next stream-form request, its ticket drawn: its bytes and what is kept of it
/// until its reply; `None` once the run is out of tickets.
fn next_request(plan: &Plan, requests: &mut Requests) -> Option<(Vec<u8>, Sent)> {
    let due = plan.ticket()?;
    let kind = plan.options.mix.pick(&mut requests.rng);
    let (kind, message) = requests.message(kind, Form::Stream, &plan.tokens);
    let sent = Sent::new(plan, kind, due, &message);
    Some((message, sent))
}

/// The requests a connection that ended with `error` left unanswered: those that may go
/// once more to the next target are returned marked so (and counted); the rest are
/// transport errors, one per request (one for the connection when it left none to resend).
fn unanswered(
    recorder: &mut Recorder,
    live: &Live,
    error: &io::Error,
    lost: impl IntoIterator<Item = Sent>,
) -> Vec<Sent> {
    let timed_out = matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    );
    let mut again = Vec::new();
    let mut errors = 0;
    for sent in lost {
        match sent.again {
            Some((bytes, false)) if !timed_out => {
                recorder.retried();
                again.push(Sent {
                    again: Some((bytes, true)),
                    ..sent
                });
            }
            Some(_) => errors += 1,
            None => {}
        }
    }
    for _ in 0..errors.max(usize::from(again.is_empty())) {
        recorder.error(error, live);
    }
    again
}

/// What the load tool reads of a reply: its code, and a login's token. Read without building
/// the whole JSON value: the load tool shares the machine with the server it measures, so what
/// it spends on a 400-byte reply with a token is taken from the server.
#[derive(serde::Deserialize)]
struct Answer<'a> {
    code: u64,
    #[serde(borrow, default)]
    token: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> Answer<'a> {
    /// A reply in either form (the seed's is an array of one answer).
    fn parse(reply: &'a [u8]) -> Option<Answer<'a>> {
        let first = reply.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first == b'[' {
            let answers: Vec<Answer> = serde_json::from_slice(reply).ok()?;
            answers.into_iter().next()
        } else {
            serde_json::from_slice(reply).ok()
        }
    }
}

/// The code in a reply (seed or stream form), if it has one.
fn reply_code(reply: &[u8]) -> Option<u64> {
    Answer::parse(reply).map(|answer| answer.code)
}

/// Seed form: a new connection per request, one write, read until the server closes.
fn seed_connection(plan: &Plan, thread: usize) -> Recorder {
    let mut recorder = plan.recorder();
    let mut requests = Requests::new(thread, plan);
    let mut reply = Vec::with_capacity(128);
    let mut at = thread;
    while let Some(due) = plan.ticket() {
        let kind = plan.options.mix.pick(&mut requests.rng);
        let (kind, message) = requests.message(kind, Form::Seed, &plan.tokens);
        let mut sent = vec![Sent::new(plan, kind, due, &message)];
        while let Some(request) = sent.pop() {
            reply.clear();
            // No target took the connection (each was tried): nothing was sent, nothing to
            // send again.
            let mut stream = match connect(plan, &mut at) {
                Ok(stream) => stream,
                Err(e) => {
                    recorder.error(&e, &plan.live);
                    break;
                }
            };
            let result = stream
                .write_all(&message)
                .and_then(|()| stream.read_to_end(&mut reply));
            match result {
                // A close without a reply is no reply (a login-server stopping).
                Ok(0) if request.again.is_some() => {
                    at += 1;
                    let eof = io::ErrorKind::UnexpectedEof.into();
                    sent = unanswered(&mut recorder, &plan.live, &eof, [request]);
                }
                Ok(_) => recorder.reply(kind, due, plan.reply(kind, &reply), &plan.live),
                Err(e) => {
                    at += 1;
                    sent = unanswered(&mut recorder, &plan.live, &e, [request]);
                }
            }
        }
    }
    recorder
}

/// Stream form: one connection with up to `pipeline` requests in flight; reconnects after a
/// transport error while the run lasts (to the next target), sending first what the lost
/// connection left unanswered when that may be sent again.
fn stream_connection(plan: &Plan, thread: usize) -> Recorder {
    let mut recorder = plan.recorder();
    let mut requests = Requests::new(thread, plan);
    let mut at = thread;
    // What goes first on the next connection.
    let mut again: Vec<Sent> = Vec::new();
    loop {
        let running = Instant::now() < plan.end && !plan.live.stop.load(Ordering::Relaxed);
        let stream = match connect(plan, &mut at) {
            Ok(Stream::Plain(stream)) => stream,
            Ok(tls) => {
                let resend = std::mem::take(&mut again);
                let (part, error, lost) = tls_stream_connection(plan, &mut requests, tls, resend);
                recorder.merge(part);
                let Some(e) = error else {
                    return recorder;
                };
                at += 1;
                again = unanswered(&mut recorder, &plan.live, &e, lost);
                if again.is_empty() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            Err(e) => {
                let lost = std::mem::take(&mut again).into_iter().map(|sent| Sent {
                    again: sent.again.map(|(bytes, _)| (bytes, true)),
                    ..sent
                });
                unanswered(&mut recorder, &plan.live, &e, lost);
                if !running {
                    return recorder;
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(mut writer) = stream.try_clone() else {
            return recorder;
        };
        // `free` holds one token per request that may still be sent: the writer takes one
        // before it draws a ticket, the reader gives it back when the reply is in. So the
        // pipeline depth is exact, and in closed loop a request's clock starts only once it can
        // really be sent.
        let depth = plan.options.pipeline.max(1);
        let (free_tx, free_rx) = bounded::<()>(depth);
        for _ in 0..depth {
            let _ = free_tx.send(());
        }
        let (in_flight, replies) = unbounded::<Sent>();
        // What the reader left in the channel when the connection ended.
        let left = replies.clone();
        let resend = std::mem::take(&mut again);
        let (finished, error, lost) = std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = Vec::with_capacity(128);
                let mut recorder = plan.recorder();
                for sent in replies {
                    line.clear();
                    let _ = reader.get_ref().set_read_timeout(Some(plan.patience()));
                    match reader.read_until(b'\n', &mut line) {
                        Ok(n) if n > 0 && line.ends_with(b"\n") => {
                            let code = plan.reply(sent.kind, &line);
                            recorder.reply(sent.kind, sent.due, code, &plan.live);
                            let _ = free_tx.send(());
                        }
                        Ok(_) => {
                            let eof = io::ErrorKind::UnexpectedEof.into();
                            return (recorder, Some(eof), Some(sent));
                        }
                        Err(e) => return (recorder, Some(e), Some(sent)),
                    }
                }
                (recorder, None, None)
            });
            let mut out_of_tickets = false;
            let mut resend = resend.into_iter();
            // Taking a token fails once the reader has ended: the connection is dead.
            while free_rx.recv().is_ok() {
                let next = match resend.next() {
                    Some(sent) => Some((sent.message(), sent)),
                    None => next_request(plan, &mut requests),
                };
                let Some((message, sent)) = next else {
                    out_of_tickets = true;
                    break;
                };
                if in_flight.send(sent).is_err() || writer.write_all(&message).is_err() {
                    break;
                }
            }
            let unsent: Vec<Sent> = resend.collect();
            drop(in_flight);
            let (part, error, current) = reader.join().unwrap_or_else(|_| {
                (
                    plan.recorder(),
                    Some(io::Error::other("reader panicked")),
                    None,
                )
            });
            recorder.merge(part);
            let lost: Vec<Sent> = current
                .into_iter()
                .chain(left.try_iter())
                .chain(unsent)
                .collect();
            (out_of_tickets, error, lost)
        });
        if let Some(e) = error {
            at += 1;
            again = unanswered(&mut recorder, &plan.live, &e, lost);
            if again.is_empty() && !finished {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if finished && again.is_empty() {
            return recorder;
        }
    }
}

/// The stream form over TLS: one thread writes and reads (a TLS connection has one state for
/// both directions), keeping up to `pipeline` requests in flight: it sends `resend` first,
/// then while it may, then reads one reply. Returns with the error that ended the connection
/// and what it left unanswered, or `None` once the run is out of tickets.
fn tls_stream_connection(
    plan: &Plan,
    requests: &mut Requests,
    stream: Stream,
    resend: Vec<Sent>,
) -> (Recorder, Option<io::Error>, Vec<Sent>) {
    let mut recorder = plan.recorder();
    let mut reader = BufReader::new(stream);
    let mut in_flight = std::collections::VecDeque::new();
    let mut resend = std::collections::VecDeque::from(resend);
    let mut line = Vec::with_capacity(128);
    let depth = plan.options.pipeline.max(1);
    let mut out_of_tickets = false;
    let lost = |in_flight: std::collections::VecDeque<Sent>, resend| {
        in_flight.into_iter().chain(resend).collect::<Vec<Sent>>()
    };
    loop {
        while in_flight.len() < depth {
            let (message, sent) = match resend.pop_front() {
                Some(sent) => (sent.message(), sent),
                None if out_of_tickets => break,
                None => match next_request(plan, requests) {
                    Some(next) => next,
                    None => {
                        out_of_tickets = true;
                        break;
                    }
                },
            };
            in_flight.push_back(sent);
            if let Err(e) = reader.get_mut().write_all(&message) {
                return (recorder, Some(e), lost(in_flight, resend));
            }
        }
        let Some(sent) = in_flight.pop_front() else {
            return (recorder, None, Vec::new());
        };
        line.clear();
        let _ = reader
            .get_ref()
            .tcp()
            .set_read_timeout(Some(plan.patience()));
        let error = match reader.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {
                recorder.reply(
                    sent.kind,
                    sent.due,
                    plan.reply(sent.kind, &line),
                    &plan.live,
                );
                continue;
            }
            Ok(_) => io::ErrorKind::UnexpectedEof.into(),
            Err(e) => e,
        };
        in_flight.push_front(sent);
        return (recorder, Some(error), lost(in_flight, resend));
    }
}

/// Tries per account at registering the run's accounts while the server answers "busy" (7),
/// 100 ms apart.
const REGISTER_ATTEMPTS: usize = 50;

/// How many accounts [`Run::start`] registers before the run: its users and decoys.
pub fn setup_accounts(options: &Options) -> u64 {
    options.mix.accounts(options.users, &options.prefix).len() as u64
}

/// Register the accounts the run uses, in the run's form, by `deadline`, counting each in
/// `done`; ones that exist already are fine. Past the deadline it stops, and says
/// [`SetupError::Late`].
fn register_users(
    options: &Options,
    done: &AtomicU64,
    deadline: Instant,
) -> Result<(), SetupError> {
    let accounts = options.mix.accounts(options.users, &options.prefix);
    let threads = 8.min(accounts.len());
    if threads == 0 {
        return Ok(());
    }
    let late = || Instant::now() >= deadline;
    let patience = || {
        let left = deadline.saturating_duration_since(Instant::now());
        options.timeout.min(left).max(Duration::from_millis(1))
    };
    let per_thread = accounts.len().div_ceil(threads);
    let accounts = &accounts;
    let check = |username: &str, body: &Value, reply: &[u8]| match reply_code(reply) {
        Some(4 | 5) if body["OP"] == "register" => Ok(()),
        Some(3) if body["OP"] == "device" => Ok(()),
        // What a stranger answered: 200 bytes at most, escaped, on one line.
        _ => Err(io::Error::other(format!(
            "registering {username}: the reply was {:?}{}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)]),
            if reply.len() > 200 { "..." } else { "" }
        ))),
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> Result<(), SetupError> {
                    let mine = accounts.iter().skip(t * per_thread).take(per_thread);
                    let mut reply = Vec::new();
                    let mut stream = None;
                    let mut at = 0;
                    for (username, body) in mine {
                        // "Busy, retry later" (7) is retried, as a gateway would: a server
                        // shedding load under an attack still gets the run's accounts.
                        // A target that fails (closes, resets, stays silent) hands the
                        // account to the next, once round the targets.
                        let mut failures = 0;
                        for attempt in 1..=REGISTER_ATTEMPTS {
                            if late() {
                                return Err(SetupError::Late);
                            }
                            reply.clear();
                            let mut ask = || -> io::Result<()> {
                                if options.form == Form::Seed {
                                    let mut conn = connect_within(options, &mut at, patience())?;
                                    conn.write_all(json!([body]).to_string().as_bytes())?;
                                    conn.read_to_end(&mut reply)?;
                                } else {
                                    if stream.is_none() {
                                        let conn = connect_within(options, &mut at, patience())?;
                                        stream = Some(BufReader::new(conn));
                                    }
                                    if let Some(reader) = stream.as_mut() {
                                        let line = format!("{body}\n");
                                        reader.get_mut().write_all(line.as_bytes())?;
                                        reader.read_until(b'\n', &mut reply)?;
                                    }
                                }
                                Ok(())
                            };
                            if let Err(e) = ask() {
                                if late() {
                                    return Err(SetupError::Late);
                                }
                                failures += 1;
                                if failures >= options.targets.len() {
                                    return Err(SetupError::Failed(e));
                                }
                                stream = None;
                                at += 1;
                                continue;
                            }
                            if reply.is_empty() && options.targets.len() > failures + 1 {
                                failures += 1;
                                stream = None;
                                at += 1;
                                continue;
                            }
                            // 8: too many guests this second (--guest-rate): wait as for 7.
                            let again = matches!(reply_code(&reply), Some(7 | 8));
                            if !again || attempt == REGISTER_ATTEMPTS {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        check(username, body, &reply).map_err(SetupError::Failed)?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(SetupError::Failed(io::Error::other("panicked"))))
        })
    })
}

/// Why registering a run's accounts stopped.
#[derive(Debug)]
enum SetupError {
    /// The target failed or refused a registration.
    Failed(io::Error),
    /// `setup_timeout` ran out.
    Late,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StressError {
    /// Registering the accounts that logins pick from failed: the target is not listening,
    /// or does not answer as a login-server.
    #[error("cannot register the stress accounts on {}: {source}", .target.map_or("no target".into(), |t| t.to_string()))]
    Setup {
        target: Option<SocketAddr>,
        source: io::Error,
    },
    /// Registering the accounts took longer than `setup_timeout` (`--setup-timeout`): nothing
    /// was measured.
    #[error(
        "registered {done} of the {total} stress accounts within {} s (--setup-timeout): \
         nothing measured",
        waited.as_secs_f64()
    )]
    SetupTimeout {
        done: u64,
        total: u64,
        waited: Duration,
    },
    /// The OS refused a client thread (resource limits).
    #[error("cannot start a load thread: {0}")]
    Threads(io::Error),
}

/// A run in progress: poll [`Run::live`] for progress, then [`Run::finish`].
pub struct Run {
    live: Arc<Live>,
    /// What the run was asked, for its report.
    params: Params,
    /// How long registering its accounts took, before `start`.
    setup: Duration,
    start: Instant,
    end: Instant,
    timeout: Duration,
    handles: Vec<std::thread::JoinHandle<Recorder>>,
}

impl Run {
    /// Register the accounts (within `setup_timeout`), then start the load threads.
    pub fn start(options: Options) -> Result<Run, StressError> {
        Run::start_counting(options, &AtomicU64::new(0))
    }

    /// [`Run::start`], counting the accounts registered in `registered` as it goes (of
    /// [`setup_accounts`]), for a progress bar.
    pub fn start_counting(options: Options, registered: &AtomicU64) -> Result<Run, StressError> {
        let began = Instant::now();
        let deadline = began + options.setup_timeout;
        match register_users(&options, registered, deadline) {
            Ok(()) => {}
            Err(SetupError::Failed(source)) => {
                return Err(StressError::Setup {
                    target: options.targets.first().copied(),
                    source,
                })
            }
            Err(SetupError::Late) => {
                return Err(StressError::SetupTimeout {
                    done: registered.load(Ordering::Relaxed),
                    total: setup_accounts(&options),
                    waited: options.setup_timeout,
                })
            }
        }
        let setup = began.elapsed();
        let params = Params {
            targets: options.targets.iter().map(ToString::to_string).collect(),
            form: match options.form {
                Form::Seed => "seed",
                Form::Stream => "stream",
            },
            connections: options.connections,
            pipeline: options.pipeline,
            duration_s: options.duration.as_secs_f64(),
            requests: options.requests,
            rate: options.rate,
            mix: options.mix.to_string(),
            users: options.users,
            prefix: options.prefix.clone(),
            timeout_s: options.timeout.as_secs_f64(),
            setup_timeout_s: options.setup_timeout.as_secs_f64(),
            tls: options.tls.is_some(),
        };
        let live = Arc::new(Live::default());
        let timeout = options.timeout;
        let start = Instant::now();
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let plan = Arc::new(Plan {
            end: start + options.duration,
            options,
            start,
            live: live.clone(),
            run,
            tokens: TokenPool::default(),
        });
        let mut handles = Vec::new();
        for thread in 0..plan.options.connections.max(1) {
            let plan = plan.clone();
            let handle = std::thread::Builder::new()
                .name(format!("load-{thread}"))
                .spawn(move || match plan.options.form {
                    Form::Seed => seed_connection(&plan, thread),
                    Form::Stream => stream_connection(&plan, thread),
                })
                .map_err(|e| {
                    live.stop.store(true, Ordering::SeqCst);
                    StressError::Threads(e)
                })?;
            handles.push(handle);
        }
        let end = plan.end;
        Ok(Run {
            live,
            params,
            setup,
            start,
            end,
            timeout,
            handles,
        })
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether every load thread is done.
    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Wait for the load threads and summarise.
    pub fn finish(self) -> Report {
        let mut total = Recorder::new(self.start, self.end, self.timeout);
        for handle in self.handles {
            if let Ok(recorder) = handle.join() {
                total.merge(recorder);
            }
        }
        let mut report = total.report(self.start.elapsed());
        report.unsent = self.live.unsent.load(Ordering::Relaxed);
        report.planned = self.params.planned();
        report.setup_s = self.setup.as_secs_f64();
        report.params = self.params;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_retries_a_busy_server() {
        // A server that answers "busy" (7) to the first three registrations, then registers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let served = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut writer = conn;
            let mut line = String::new();
            let mut answered = 0;
            while reader.read_line(&mut line).unwrap() > 0 {
                let code = if answered < 3 { 7 } else { 4 };
                writeln!(writer, r#"{{"code":{code},"info":"x"}}"#).unwrap();
                answered += 1;
                line.clear();
            }
            answered
        });
        let options = Options {
            targets: vec![target],
            form: Form::Stream,
            mix: "login=1".parse().unwrap(),
            users: 1,
            timeout: Duration::from_secs(5),
            ..Options::default()
        };
        let done = AtomicU64::new(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        register_users(&options, &done, deadline).unwrap();
        assert_eq!(
            served.join().unwrap(),
            4,
            "three busy answers, then registered"
        );
        assert_eq!(done.load(Ordering::Relaxed), 1);
    }

    /// A plan of `options` for run `run`, started and ended now.
    fn plan(options: Options, run: u64) -> Plan {
        Plan {
            options,
            start: Instant::now(),
            end: Instant::now(),
            live: Arc::new(Live::default()),
            run,
            tokens: TokenPool::default(),
        }
    }

    #[test]
    fn setup_stops_at_its_timeout_and_nothing_is_measured() {
        // A server that is busy (7) for ever, and one that never answers.
        for busy in [true, false] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let target = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(conn.try_clone().unwrap());
                        let mut writer = conn;
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                            if busy {
                                let _ = writeln!(writer, r#"{{"code":7,"info":"x"}}"#);
                            }
                            line.clear();
                        }
                    });
                }
            });
            let options = Options {
                targets: vec![target],
                form: Form::Stream,
                users: 3,
                setup_timeout: Duration::from_millis(500),
                ..Options::default()
            };
            let began = Instant::now();
            let error = Run::start(options).err().expect("a late setup is an error");
            assert!(
                began.elapsed() < Duration::from_secs(3),
                "{:?}",
                began.elapsed()
            );
            assert!(
                matches!(
                    error,
                    StressError::SetupTimeout {
                        done: 0,
                        total: 6,
                        ..
                    }
                ),
                "{error}"
            );
            assert!(error.to_string().contains("--setup-timeout"), "{error}");
        }
    }

    #[test]
    fn every_name_a_run_makes_fits_32_characters_and_begins_gwsim() {
        assert!(check_prefix("").is_err() && check_prefix("abcdefghi").is_err());
        assert!(check_prefix("Load").is_err() && check_prefix("a-b").is_err());
        let options = Options {
            prefix: check_prefix("abcdefgh").unwrap(),
            ..Options::default()
        };
        let plan = plan(options, u64::MAX);
        let mut requests = Requests::new(0xffff, &plan);
        requests.serial = 0xff_fffe;
        let (_, message) = requests.message(Kind::Register, Form::Stream, &plan.tokens);
        let body: serde_json::Value = serde_json::from_slice(&message).unwrap();
        let name = body["username"].as_str().unwrap();
        assert!(
            name.starts_with("gwsim-abcdefgh-") && name.len() <= 32,
            "{name}"
        );
        let (user, _) = user("abcdefgh", 99_999_999);
        let (decoy, _) = decoy("abcdefgh", 99_999_999);
        assert!(user.len() <= 32 && decoy.len() <= 32, "{user} {decoy}");
    }

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix: Mix = "login=90,register=5,badpass=5".parse().unwrap();
        let mut rng = Rng::new(1);
        let logins = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Kind::Login)
            .count();
        assert!((8_500..9_500).contains(&logins), "{logins}");
        assert!("login=0".parse::<Mix>().is_err());
        assert!("fly=1".parse::<Mix>().unwrap_err().contains("kinds are"));
        assert_eq!(mix.accounts(3, "t").len(), 6, "3 users and 3 decoys");
        assert!("unknown=1"
            .parse::<Mix>()
            .unwrap()
            .accounts(3, "t")
            .is_empty());
        assert!(Kind::BadPass.accepts(8) && !Kind::Login.accepts(8));
    }

    #[test]
    fn messages_have_the_wire_forms() {
        let plan = plan(Options::default(), 0xabc);
        let mut requests = Requests::new(3, &plan);
        let tokens = TokenPool::default();
        let (_, seed) = requests.message(Kind::Register, Form::Seed, &tokens);
        assert!(seed.starts_with(b"[{") && seed.ends_with(b"}]"));
        let (_, stream) = requests.message(Kind::Malformed, Form::Stream, &tokens);
        assert!(stream.starts_with(b"{") && stream.ends_with(b"}\n"));
        // A verify is a login until the run has a token, then verifies one of them.
        let (kind, first) = requests.message(Kind::Verify, Form::Stream, &tokens);
        assert_eq!(kind, Kind::Login);
        assert!(first.starts_with(br#"{"OP":"login""#), "{first:?}");
        tokens.add("tok".into());
        let (kind, verify) = requests.message(Kind::Verify, Form::Stream, &tokens);
        assert_eq!(kind, Kind::Verify);
        assert_eq!(verify, b"{\"OP\":\"verify\",\"token\":\"tok\"}\n");
        assert_eq!(reply_code(br#"[{"code":4,"info":"success"}]"#), Some(4));
        assert_eq!(reply_code(b"{\"code\":6}\n"), Some(6));
        assert_eq!(reply_code(b"garbage"), None);
    }
}
