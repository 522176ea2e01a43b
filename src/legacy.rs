//! The old database server that login-server replaces, asked about players who have not moved
//! yet: [`LegacyDb::lookup`].
//!
//! Its protocol: one request per TCP connection. On connect the server sends `Welcome!`; the
//! client sends one JSON message, no newline (`[{"OP":"login","username":"U"}]`); the server
//! answers `[{"password":"P"}]` with the stored plaintext, or `[{"password":"None"}]` when there
//! is no such user; the client sends `exit`, the server answers `Close!` and closes. Nothing is
//! framed: `Welcome!` and the reply may come in one read or split over several, so they are
//! parsed from a stream ([`parse_reply`], no IO), never one `recv` per message.
//!
//! It cannot be pooled: at most [`LegacyDb::new`]'s `connections` requests run at once; one
//! more waits for a turn within its deadline, then is answered [`LegacyError::Busy`]. Only the
//! old-server stage asks it (`login::legacy_stage`), so a slow old server holds neither the
//! workers nor the hash threads. One deadline bounds each request whole: a turn, connect,
//! greeting, reply.

use crate::clock::Millis;
use parking_lot::{Condvar, Mutex};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The hash of an account reserved for its old owner (`account-db import` of a name alone):
/// no password verifies against it; a login under it asks the old server.
pub const RESERVED_HASH: &str = "!legacy-reserved";

/// The spellings of `name` to ask the old server about before a registration takes it: as
/// typed, then its NFC and NFKC forms where they differ (a decomposed accent, a fullwidth
/// letter, a Kelvin sign for `K`). The old server compares names exactly, so case variants
/// (`oldbob` for `OldBob`) and confusables from other scripts (a Cyrillic `о` for `o`) cannot
/// be caught by asking: only importing the old names closes them (see
/// `RegisterLimit::legacy_gate`).
pub fn spellings(name: &str) -> Vec<String> {
    use unicode_normalization::UnicodeNormalization;
    let mut spellings = vec![name.to_string()];
    for form in [name.nfc().collect::<String>(), name.nfkc().collect()] {
        if !spellings.contains(&form) {
            spellings.push(form);
        }
    }
    spellings
}

/// Names [`SpellingAsks`] holds spellings of at most (each spelling at most 255 bytes, at
/// most [`SPELLINGS_PER_NAME`] a name: about 10 MiB in all). A name more, while every one was
/// asked about within the window, is not asked about: its login is answered as before the
/// check existed (wrong password, counted).
pub const MAX_SPELLING_NAMES: usize = 10_000;

/// Spellings of one name (its case variants) asked about within a window, at most: real
/// conflicts are two or three old players; more are guesses, answered as wrong passwords.
pub const SPELLINGS_PER_NAME: usize = 4;

/// Spellings the old server was asked about because an account here holds the name in another
/// case (two old players, `Dan` and `dan`, after `Dan` moved): each at most once per window
/// (`--throttle-window`), at most [`SPELLINGS_PER_NAME`] per name, so that failed logins cannot
/// be multiplied into old-server requests or fill the table through one account. Where the
/// old server knows the spelling, a digest of its password keyed by this process's own random
/// key is kept for the window, so that the player's later logins are answered without asking
/// again, and a stranger's wrong guess cannot hide the conflict from the player.
pub struct SpellingAsks {
    /// How long a spelling stays asked, in milliseconds.
    window_ms: Millis,
    /// Keys the password digests: random per process, never stored.
    key: String,
    /// The spellings asked about, by name.
    table: Mutex<AskTable>,
}

/// [`SpellingAsks`]' table.
#[derive(Default)]
struct AskTable {
    /// Folded name → its spellings asked about.
    names: HashMap<String, Vec<Asked>>,
    /// When the oldest ask's window passes, set when a claim finds the table full (0 before):
    /// no name can be pruned before then, so a full table is not scanned again until then,
    /// and a table with room has it already (only a prune makes room).
    room_at: Millis,
}

/// One spelling's ask.
struct Asked {
    /// Exactly as typed.
    spelling: String,
    /// When the old server was asked.
    at: Millis,
    /// The keyed digest of the password the old server holds for it, if it knows it.
    confirmed: Option<[u8; 32]>,
    /// The conflict was reported (a log line, a metric).
    reported: bool,
}

impl SpellingAsks {
    /// Each spelling asked about at most once per `window`.
    pub fn new(window: Duration) -> SpellingAsks {
        SpellingAsks {
            window_ms: crate::clock::millis(window),
            key: crate::auth::secret::random_token(),
            table: Mutex::default(),
        }
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let password = crate::auth::names::normalize_password(password);
        let mut h = Sha256::new();
        h.update(self.key.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `spelling` may be asked about at `now`: not asked within the window, fewer than
    /// [`SPELLINGS_PER_NAME`] spellings of its name asked, and room to record it. Records
    /// nothing: see [`SpellingAsks::claim`].
    pub fn may_ask(&self, spelling: &str, now: Millis) -> bool {
        self.may_ask_in(&self.table.lock(), spelling, now)
    }

    fn may_ask_in(&self, table: &AskTable, spelling: &str, now: Millis) -> bool {
        let fresh = |a: &&Asked| now.saturating_sub(a.at) < self.window_ms;
        match table.names.get(&crate::auth::names::fold(spelling)) {
            Some(asked) => {
                let recent: Vec<&Asked> = asked.iter().filter(fresh).collect();
                !recent.iter().any(|a| a.spelling == spelling) && recent.len() < SPELLINGS_PER_NAME
            }
            None => now >= table.room_at,
        }
    }

    /// Record that `spelling` is asked about at `now`, if it may be ([`SpellingAsks::may_ask`]):
    /// `true` then, and the caller asks.
    pub fn claim(&self, spelling: &str, now: Millis) -> bool {
        let mut table = self.table.lock();
        if !self.may_ask_in(&table, spelling, now) {
            return false;
        }
        let window = self.window_ms;
        let name = crate::auth::names::fold(spelling);
        if table.names.len() >= MAX_SPELLING_NAMES && !table.names.contains_key(&name) {
            table.names.retain(|_, asked| {
                asked.retain(|a| now.saturating_sub(a.at) < window);
                !asked.is_empty()
            });
            if table.names.len() >= MAX_SPELLING_NAMES {
                let oldest = table.names.values().flatten().map(|a| a.at).min();
                table.room_at = oldest.unwrap_or(now).saturating_add(window);
                return false;
            }
        }
        let asked = table.names.entry(name).or_default();
        asked.retain(|a| now.saturating_sub(a.at) < window);
        asked.push(Asked {
            spelling: spelling.to_string(),
            at: now,
            confirmed: None,
            reported: false,
        });
        true
    }

    /// The ask of `spelling` within the window, if there is one.
    fn find<'a>(
        &self,
        table: &'a mut AskTable,
        spelling: &str,
        now: Millis,
    ) -> Option<&'a mut Asked> {
        let window = self.window_ms;
        table
            .names
            .get_mut(&crate::auth::names::fold(spelling))?
            .iter_mut()
            .find(|a| a.spelling == spelling && now.saturating_sub(a.at) < window)
    }

    /// Record the password the old server holds for `spelling` (claimed before).
    pub fn confirm(&self, spelling: &str, password: &str, now: Millis) {
        let digest = self.digest(password);
        if let Some(a) = self.find(&mut self.table.lock(), spelling, now) {
            a.confirmed = Some(digest);
        }
    }

    /// Whether `spelling` is a conflict not reported yet in its window: `true` once.
    pub fn first_report(&self, spelling: &str, now: Millis) -> bool {
        match self.find(&mut self.table.lock(), spelling, now) {
            Some(a) if !a.reported => {
                a.reported = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `password` is what the old server holds for `spelling`, asked within the
    /// window.
    pub fn confirmed(&self, spelling: &str, password: &str, now: Millis) -> bool {
        let confirmed = self
            .find(&mut self.table.lock(), spelling, now)
            .and_then(|a| a.confirmed);
        confirmed.is_some_and(|digest| {
            use subtle::ConstantTimeEq;
            bool::from(digest.ct_eq(&self.digest(password)))
        })
    }
}

/// What the old server greets with.
pub const WELCOME: &[u8] = b"Welcome!";

/// The longest greeting and reply read, in bytes: an old server saying more is answering
/// garbage.
pub const MAX_REPLY: usize = 64 * 1024;

/// Why the old server could not say whether it knows a player.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// `--legacy-db-connections` requests to it were in progress for the whole deadline.
    #[error("the old account server is busy: every allowed connection to it is in use")]
    Busy,
    /// Connecting, writing or reading failed, or the deadline passed.
    #[error("the old account server at {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    /// It did not speak its protocol: no `Welcome!`, a reply that is not its JSON, too long.
    #[error("the old account server at {addr} answered garbage: {detail}")]
    Garbage { addr: SocketAddr, detail: String },
}

/// What the old server says of one name.
#[derive(Clone, PartialEq, Eq)]
pub enum Known {
    /// It has no such user.
    Unknown,
    /// It has, with this plaintext password. Holds a password: no `Debug`.
    Password(String),
}

/// The old server's reply, parsed from the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not all there yet: read more.
    Partial,
    /// The password it stored, or `None`: no such user.
    Password(Option<String>),
    /// Not its protocol.
    Garbage(String),
}

/// Parse what the old server sent so far: `Welcome!` then the reply `[{"password":P}]`.
pub fn parse_reply(bytes: &[u8]) -> Parsed {
    let Some(rest) = bytes.strip_prefix(WELCOME) else {
        return match WELCOME.starts_with(bytes) {
            true => Parsed::Partial,
            false => Parsed::Garbage("no Welcome! greeting".into()),
        };
    };
    let rest = rest.trim_ascii_start();
    if rest.is_empty() {
        return Parsed::Partial;
    }
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
    match values.next() {
        None => Parsed::Partial,
        Some(Err(e)) if e.is_eof() => Parsed::Partial,
        Some(Err(e)) => Parsed::Garbage(format!("not JSON: {e}")),
        Some(Ok(value)) => match value.pointer("/0/password").and_then(Value::as_str) {
            Some("None") => Parsed::Password(None),
            Some(password) => Parsed::Password(Some(password.to_string())),
            None => Parsed::Garbage("a reply without a password".into()),
        },
    }
}

/// The old database server, asked one request per connection.
pub struct LegacyDb {
    addr: SocketAddr,
    timeout: Duration,
    connections: usize,
    in_use: Mutex<usize>,
    freed: Condvar,
}

/// One connection's turn, given back when dropped.
struct Slot<'a>(&'a LegacyDb);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.in_use.lock() -= 1;
        self.0.freed.notify_one();
    }
}

impl LegacyDb {
    /// The old server at `addr`, with at most `connections` requests at once, each done within
    /// `timeout`.
    pub fn new(addr: SocketAddr, connections: usize, timeout: Duration) -> LegacyDb {
        LegacyDb {
            addr,
            timeout,
            connections: connections.max(1),
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// A turn to connect, waiting until `deadline` at most.
    fn slot(&self, deadline: Instant) -> Option<Slot<'_>> {
        let mut in_use = self.in_use.lock();
        while *in_use >= self.connections {
            if self.freed.wait_until(&mut in_use, deadline).timed_out() {
                return None;
            }
        }
        *in_use += 1;
        Some(Slot(self))
    }

    /// What the old server knows of `username`, spelled exactly so (it compares names
    /// exactly).
    pub fn lookup(&self, username: &str) -> Result<Known, LegacyError> {
        let deadline = Instant::now() + self.timeout;
        let _slot = self.slot(deadline).ok_or(LegacyError::Busy)?;
        let io = |source| LegacyError::Io {
            addr: self.addr,
            source,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let mut stream = TcpStream::connect_timeout(&self.addr, left.max(Duration::from_millis(1)))
            .map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        // The request goes out at once: `Welcome!` and the reply are parsed from the stream,
        // however they come (a server may send its greeting late, glued to the reply).
        let request = serde_json::json!([{ "OP": "login", "username": username }]);
        stream
            .write_all(request.to_string().as_bytes())
            .map_err(io)?;
        let mut received = Vec::with_capacity(64);
        let known = loop {
            match parse_reply(&received) {
                Parsed::Password(Some(password)) => break Known::Password(password),
                Parsed::Password(None) => break Known::Unknown,
                Parsed::Garbage(detail) => return Err(self.garbage(&detail)),
                Parsed::Partial if received.len() >= MAX_REPLY => {
                    return Err(self.garbage("a reply longer than 64 KiB"))
                }
                Parsed::Partial => {
                    if !read_some(&mut stream, &mut received, deadline).map_err(io)? {
                        return Err(self.garbage("closed before its reply"));
                    }
                }
            }
        };
        // Good manners: say goodbye. Whether `Close!` comes changes nothing.
        let _ = stream.write_all(b"exit");
        Ok(known)
    }

    fn garbage(&self, detail: &str) -> LegacyError {
        LegacyError::Garbage {
            addr: self.addr,
            detail: detail.to_string(),
        }
    }
}

/// Read what has arrived into `into`, waiting until `deadline` at most. `false` at end of
/// stream.
fn read_some(stream: &mut TcpStream, into: &mut Vec<u8>, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf)?;
    into.extend_from_slice(&buf[..n]);
    Ok(n > 0)
}

/// Whether `typed` is the stored plaintext `stored`, in time that does not depend on where
/// they differ; a password typed in another Unicode normalization matches too.
pub fn matches(typed: &str, stored: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    // Digests first: equal lengths, so not even the length of the stored password shows.
    let same = |a: &str, b: &str| {
        let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
        bool::from(a.as_slice().ct_eq(b.as_slice()))
    };
    let nfc = crate::auth::names::normalize_password;
    same(typed, stored) | same(&nfc(typed), &nfc(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spelling_is_asked_about_once_per_window_and_a_full_table_asks_nothing_new() {
        let asks = SpellingAsks::new(Duration::from_millis(1000));
        assert!(asks.may_ask("dan", 0));
        assert!(asks.claim("dan", 0));
        assert!(!asks.may_ask("dan", 999) && !asks.claim("dan", 999));
        assert!(asks.may_ask("DAN", 999), "each spelling is its own");
        assert!(asks.may_ask("dan", 1000) && asks.claim("dan", 1000));
        assert_eq!(
            asks.table.lock().names["dan"].len(),
            1,
            "the ask of 0 is gone at 1000"
        );
        // Confirmed: that password (in any normalization) within the window, no other.
        asks.confirm("dan", "caf\u{e9}-pass", 1000);
        assert!(asks.confirmed("dan", "cafe\u{301}-pass", 1999));
        assert!(!asks.confirmed("dan", "other-pass", 1999));
        assert!(!asks.confirmed("DAN", "caf\u{e9}-pass", 1999));
        assert!(!asks.confirmed("dan", "caf\u{e9}-pass", 2000));
        // A conflict is reported once per window.
        assert!(asks.first_report("dan", 1500) && !asks.first_report("dan", 1600));
        assert!(!asks.first_report("never-asked", 1500));
        // At most four spellings of one name in a window: a fifth is a guess.
        for spelling in ["Dan", "DAN", "dAn"] {
            assert!(asks.claim(spelling, 1500), "{spelling}");
        }
        assert!(!asks.may_ask("daN", 1500) && !asks.claim("daN", 1500));
        assert!(asks.claim("daN", 2000), "dan's window passed");
        // Full: no new name is asked about until a name's window passes.
        for i in 1..MAX_SPELLING_NAMES {
            assert!(asks.claim(&format!("n{i}"), 1500));
        }
        assert!(!asks.claim("new", 1999) && !asks.may_ask("new", 1999));
        // A full table still takes another spelling of a name it holds.
        assert!(asks.claim("N1", 1999));
        assert!(asks.may_ask("new", 2500) && asks.claim("new", 2500));
        // Room was made by the windows that passed: only dan (its daN), n1 (its N1) and new
        // are left.
        assert_eq!(asks.table.lock().names.len(), 3);
    }

    #[test]
    fn a_registration_asks_about_the_composed_and_compatible_spellings() {
        assert_eq!(spellings("OldBob"), ["OldBob"]);
        // A decomposed accent: its composed form too (NFC and NFKC agree).
        assert_eq!(spellings("Cafe\u{301}Jo"), ["Cafe\u{301}Jo", "Caf\u{e9}Jo"]);
        // A fullwidth letter: NFC keeps it, NFKC folds it.
        assert_eq!(spellings("\u{ff2f}ldFay"), ["\u{ff2f}ldFay", "OldFay"]);
        // Case and a Kelvin sign: NFKC maps the sign to K, case stays.
        assert_eq!(spellings("oldbob"), ["oldbob"]);
        assert_eq!(spellings("\u{212a}elvin"), ["\u{212a}elvin", "Kelvin"]);
    }

    #[test]
    fn the_reply_is_parsed_from_a_stream_however_it_is_split() {
        let whole = br#"Welcome![{"password":"hunter2"}]"#;
        for cut in 0..whole.len() {
            let parsed = parse_reply(&whole[..cut]);
            assert_eq!(parsed, Parsed::Partial, "cut at {cut}");
        }
        assert_eq!(parse_reply(whole), Parsed::Password(Some("hunter2".into())));
        assert_eq!(
            parse_reply(br#"Welcome! [{"password":"None"}]"#),
            Parsed::Password(None)
        );
        assert!(matches!(parse_reply(b"Hello![]"), Parsed::Garbage(_)));
        assert!(matches!(parse_reply(b"Welcome!{{{"), Parsed::Garbage(_)));
        assert!(matches!(
            parse_reply(br#"Welcome![{"msg":"x"}]"#),
            Parsed::Garbage(_)
        ));
        assert!(matches!(
            parse_reply(br#"Welcome![{"password":7}]"#),
            Parsed::Garbage(_)
        ));
    }

    #[test]
    fn passwords_match_exactly_or_in_another_normalization() {
        assert!(matches("hunter2", "hunter2"));
        assert!(!matches("hunter2", "hunter3"));
        assert!(!matches("hunter2", "Hunter2"));
        assert!(!matches("", "x"));
        assert!(matches("caf\u{e9}", "cafe\u{301}"));
    }
}
