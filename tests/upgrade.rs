//! Releases side by side: the previous release's binaries (`PREVIOUS_RELEASE_BIN`, built by
//! .ci/run from `compat/previous-release`) against this build's, as real processes over real
//! sockets. Old login-server with new account-db and the reverse, on both stores, with tokens
//! crossing releases; and on PostgreSQL a rolling upgrade under load, a rollback, and the
//! contract step. Skipped visibly without the previous release unless `REQUIRE_UPGRADE=1`.
//!
//! Version 4 adds no request to version 3 yet, so "operations only the newer version has" are
//! none: every operation is checked across every pairing.
//!
//! Its own binary (`test = false`), run by .ci/run after the main suite, one test at a time.

mod common;

use common::{Logged, TestDatabase, PATIENCE};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One release's two binaries.
#[derive(Clone)]
struct Release {
    /// Its name in messages.
    name: &'static str,
    account_db: PathBuf,
    login_server: PathBuf,
}

/// This build.
fn this_build() -> Release {
    Release {
        name: "this build",
        account_db: env!("CARGO_BIN_EXE_account-db").into(),
        login_server: env!("CARGO_BIN_EXE_login-server").into(),
    }
}

/// The previous release, from `PREVIOUS_RELEASE_BIN` (a directory holding its binaries).
fn previous_release() -> Option<Release> {
    let Some(dir) = std::env::var_os("PREVIOUS_RELEASE_BIN") else {
        return common::missing(
            "REQUIRE_UPGRADE",
            "PREVIOUS_RELEASE_BIN is not set (.ci/run builds compat/previous-release)",
        );
    };
    let dir = PathBuf::from(dir);
    let release = Release {
        name: "previous release",
        account_db: dir.join("account-db"),
        login_server: dir.join("login-server"),
    };
    if !release.account_db.exists() || !release.login_server.exists() {
        return common::missing(
            "REQUIRE_UPGRADE",
            format!("no account-db and login-server in {}", dir.display()),
        );
    }
    Some(release)
}

/// Where the tiers keep what they share: the secret (made by the first account-db), the token
/// key, and the SQLite data.
struct Site {
    dir: tempfile::TempDir,
    /// `--store`, for PostgreSQL.
    store: Option<String>,
}

impl Site {
    fn new(store: Option<&TestDatabase>) -> Site {
        let dir = tempfile::tempdir().unwrap();
        common::gen_token_key(&dir.path().join("token.key"));
        Site {
            dir,
            store: store.map(|db| db.url.clone()),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An account-db of `release` listening on `listen`, once it says so.
    fn account_db(&self, release: &Release, listen: SocketAddr) -> Logged {
        let mut command = Command::new(&release.account_db);
        command
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data")
            .arg(self.path());
        if let Some(url) = &self.store {
            command.args(["--store", url]);
        }
        let mut db = Logged::spawn(command);
        db.wait_for("account-db listening");
        db
    }

    /// A login-server of `release` on `listen`, reaching `dbs`, once it listens.
    fn login_server(&self, release: &Release, listen: SocketAddr, dbs: &[SocketAddr]) -> Logged {
        let dbs: Vec<String> = dbs.iter().map(SocketAddr::to_string).collect();
        let mut command = Command::new(&release.login_server);
        command
            .arg("--listen")
            .arg(listen.to_string())
            .args(["--db", &dbs.join(","), "--hash-params", "8,1,1"])
            .arg("--db-secret-file")
            .arg(self.path().join("account-db.secret"))
            .arg("--token-key-file")
            .arg(self.path().join("token.key"));
        let mut server = Logged::spawn(command);
        server.wait_for("login-server listening");
        server
    }
}

/// Stop a server as systemd does (SIGTERM), and wait for it to drain and exit 0.
fn stop(mut server: Logged) {
    common::signal(server.child.id(), "TERM");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status}: {:#?}", server.lines());
            return;
        }
        assert!(Instant::now() < deadline, "no exit: {:#?}", server.lines());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One stream-form request to `addr` on a connection of its own: the reply.
fn ask(addr: SocketAddr, request: Value) -> Value {
    let mut client = common::StreamClient::new(addr);
    client.send(format!("{request}\n").as_bytes());
    client.recv()
}

/// Every operation of protocol version 3, through `a` and `b` (login-servers of either
/// release on one store) for player `name`: a session begun on one is verified, refreshed and
/// ended on the other. Codes and fields as docs/protocol.md gives them.
fn every_operation(a: SocketAddr, b: SocketAddr, name: &str) {
    let user = |password: &str| json!({"username": name, "password": password});
    let op = |addr, op: &str, mut body: Value| {
        body["OP"] = op.into();
        ask(addr, body)
    };
    let registered = op(a, "register", user("password1"));
    assert_eq!(
        (registered["code"].as_u64(), registered["username"].as_str()),
        (Some(4), Some(name)),
        "{registered}"
    );
    let taken = op(b, "register", user("password1"));
    assert_eq!(taken["reason"], "username_taken", "{taken}");
    assert_eq!(op(b, "login", user("wrong-password"))["code"], 2);
    let stranger = json!({"username": format!("{name}-x"), "password": "password1"});
    assert_eq!(op(a, "login", stranger)["code"], 1);
    assert_eq!(common::code(b, "login", name, "password1"), 3, "seed form");
    let login = op(a, "login", user("password1"));
    assert_eq!(login["code"], 3, "{login}");
    let token = login["token"].clone();
    let verified = op(b, "verify", json!({"token": token}));
    assert_eq!(
        (verified["code"].as_u64(), verified["username"].as_str()),
        (Some(9), Some(name))
    );
    assert_eq!(verified["account_id"], login["account_id"]);
    let refreshed = op(b, "refresh", json!({"token": token}));
    assert_eq!(refreshed["code"], 9, "{refreshed}");
    let changed = op(
        b,
        "change_password",
        json!({"username": name, "password": "password1", "new_password": "password2"}),
    );
    assert_eq!(changed["code"], 11, "{changed}");
    for (addr, old) in [(a, &token), (b, &refreshed["token"])] {
        let refused = op(addr, "verify", json!({"token": old}));
        assert_eq!(
            refused["reason"], "revoked",
            "voided by the change: {refused}"
        );
    }
    let session = op(a, "login", user("password2"));
    assert_eq!(session["code"], 3);
    assert_eq!(
        op(b, "logout", json!({"token": session["token"]}))["code"],
        11
    );
    assert_eq!(
        op(a, "verify", json!({"token": session["token"]}))["reason"],
        "revoked"
    );
    let changed_token = changed["token"].clone();
    assert_eq!(op(a, "verify", json!({"token": changed_token}))["code"], 9);
    assert_eq!(
        op(a, "logout_all", json!({"token": changed_token}))["code"],
        11
    );
    assert_eq!(
        op(b, "verify", json!({"token": changed_token}))["reason"],
        "revoked"
    );
}

/// The device ops of protocol version 4 through the previous release's login-server `old_ls`
/// (it does not know them: 6) and this build's `new_ls`: served where the account-db is this
/// build's (`new_db`), answered 7 "not available during an upgrade" where it is the previous
/// release's. The guests earlier rounds made log in again once a new account-db serves.
fn devices_across_releases(old_ls: SocketAddr, new_ls: SocketAddr, new_db: bool, round: u32) {
    let device = |n: u32| {
        json!({"OP": "device", "device_id": format!("upgrade-device-{n:04}"),
               "device_secret": "upgrade-secret-0123456789abcdef"})
    };
    let unknown = ask(old_ls, device(round));
    assert_eq!(
        unknown["code"], 6,
        "the previous release knows no device op: {unknown}"
    );
    let reply = ask(new_ls, device(round));
    if new_db {
        assert_eq!(
            (&reply["code"], &reply["created"]),
            (&json!(3), &json!(true)),
            "{reply}"
        );
        for earlier in (1..round).filter(|r| r % 2 == 1) {
            assert_eq!(
                ask(new_ls, device(earlier))["code"],
                3,
                "the guest of round {earlier}"
            );
        }
    } else {
        assert_eq!(reply["code"], 7, "{reply}");
        let info = reply["info"].as_str().unwrap_or_default();
        assert!(info.contains("during an upgrade"), "{info}");
    }
}

/// Both pairings on one store: an account-db of each release in turn, each with a
/// login-server of each release in front; then the older account-db again on what the newer
/// one left (the rollback of a store).
fn releases_talk_both_ways(site: &Site, old: &Release) {
    let new = this_build();
    for (round, db_release) in [(1, &new), (2, old), (3, &new), (4, old)] {
        let db = site.account_db(db_release, common::free_port());
        let addr = listening(&db);
        let ls_old = site.login_server(old, common::free_port(), &[addr]);
        let ls_new = site.login_server(&new, common::free_port(), &[addr]);
        let (a, b) = (listening(&ls_old), listening(&ls_new));
        println!("round {round}: account-db of {}", db_release.name);
        every_operation(a, b, &format!("Old-first-{round}"));
        every_operation(b, a, &format!("New-first-{round}"));
        devices_across_releases(a, b, db_release.name == new.name, round);
        // Accounts every earlier round made still log in.
        for earlier in 1..round {
            for who in ["Old-first", "New-first"] {
                let name = format!("{who}-{earlier}");
                assert_eq!(common::code(a, "login", &name, "password2"), 3, "{name}");
            }
        }
        stop(ls_old);
        stop(ls_new);
        stop(db);
    }
}

/// Where a server of either release said it listens.
fn listening(server: &Logged) -> SocketAddr {
    server
        .lines()
        .iter()
        .find(|l| l.contains(" listening"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .and_then(|a| a.parse().ok())
        .expect("its address")
}

#[test]
fn releases_talk_both_ways_on_sqlite() {
    let Some(old) = previous_release() else {
        return;
    };
    releases_talk_both_ways(&Site::new(None), &old);
}

#[test]
fn releases_talk_both_ways_on_postgres() {
    let Some(old) = previous_release() else {
        return;
    };
    let Some(db) = common::postgres_database() else {
        return;
    };
    releases_talk_both_ways(&Site::new(Some(&db)), &old);
}

/// What a player thread of [`load`] saw.
#[derive(Default, Debug)]
struct Tally {
    /// Requests that got a reply.
    answered: u64,
    /// Of those, answered 7.
    unavailable: u64,
    /// Requests asked again on another login-server after no reply.
    retried: u64,
    /// Requests left without a reply after their one retry.
    unanswered: u64,
    /// Replies that were wrong (an acknowledged account answered 1, say).
    wrong: Vec<String>,
    /// Names whose registration was acknowledged.
    registered: Vec<String>,
    /// Tokens of sessions left standing, to verify after the upgrade.
    tokens: Vec<Value>,
}

/// A player's connection to whichever login-server of `targets` answers, in the stream form.
struct Player {
    targets: Vec<SocketAddr>,
    /// Which target it is on (taken modulo their number).
    at: usize,
    conn: Option<BufReader<TcpStream>>,
    tally: Tally,
}

impl Player {
    /// `body` asked, and asked once more on the next login-server if no reply came (a
    /// login-server stopping closes idle connections): the reply, if any.
    fn ask(&mut self, body: &Value) -> Option<Value> {
        for attempt in 0..2 {
            if attempt == 1 {
                self.tally.retried += 1;
                self.at += 1;
            }
            if let Some(reply) = self.try_once(body) {
                self.tally.answered += 1;
                if reply["code"] == 7 {
                    self.tally.unavailable += 1;
                }
                return Some(reply);
            }
            self.conn = None;
        }
        self.tally.unanswered += 1;
        None
    }

    fn try_once(&mut self, body: &Value) -> Option<Value> {
        if self.conn.is_none() {
            // A target restarting refuses connections for a moment: the next is tried.
            let deadline = Instant::now() + PATIENCE;
            while self.conn.is_none() && Instant::now() < deadline {
                let target = self.targets[self.at % self.targets.len()];
                match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                    Ok(tcp) => {
                        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                        self.conn = Some(BufReader::new(tcp));
                    }
                    Err(_) => {
                        self.at += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        let conn = self.conn.as_mut()?;
        conn.get_mut()
            .write_all(format!("{body}\n").as_bytes())
            .ok()?;
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }

    /// Register, log in, refresh and (every other time) log out, until `stop`.
    fn play(mut self, id: usize, stop: &AtomicBool) -> Tally {
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let name = format!("P{id}-{round}");
            let user = json!({"username": name, "password": "password1"});
            let mut register = user.clone();
            register["OP"] = "register".into();
            let retried = self.tally.retried;
            match self.ask(&register) {
                Some(r) if r["code"] == 4 => self.tally.registered.push(name.clone()),
                // Its first try was done, unheard: it is the player's.
                Some(r) if r["reason"] == "username_taken" && self.tally.retried > retried => {
                    self.tally.registered.push(name.clone())
                }
                Some(r) if r["code"] == 7 => continue,
                Some(r) => self.tally.wrong.push(format!("register {name}: {r}")),
                None => continue,
            }
            let mut login = user;
            login["OP"] = "login".into();
            let token = match self.ask(&login) {
                Some(r) if r["code"] == 3 => r["token"].clone(),
                Some(r) if r["code"] == 7 => continue,
                Some(r) => {
                    self.tally.wrong.push(format!("login {name}: {r}"));
                    continue;
                }
                None => continue,
            };
            let token = match self.ask(&json!({"OP": "refresh", "token": token})) {
                Some(r) if r["code"] == 9 => r["token"].clone(),
                Some(r) if r["code"] == 7 => continue,
                Some(r) => {
                    self.tally.wrong.push(format!("refresh {name}: {r}"));
                    continue;
                }
                None => continue,
            };
            if round % 2 == 0 {
                match self.ask(&json!({"OP": "logout", "token": token})) {
                    Some(r) if r["code"] == 11 || r["code"] == 7 => {}
                    Some(r) => self.tally.wrong.push(format!("logout {name}: {r}")),
                    None => {}
                }
            } else {
                self.tally.tokens.push(token);
            }
        }
        self.tally
    }
}

/// Players on `threads` threads over `targets` until the returned flag is set; join the
/// handles for their tallies.
fn load(
    targets: &[SocketAddr],
    threads: usize,
) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<Tally>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|id| {
            let player = Player {
                targets: targets.to_vec(),
                at: id,
                conn: None,
                tally: Tally::default(),
            };
            let stop = stop.clone();
            std::thread::spawn(move || player.play(id, &stop))
        })
        .collect();
    (stop, handles)
}

/// Replace `server` (stopped with SIGTERM, drained) by `start()` on the same address.
fn replace(server: &mut Logged, start: impl FnOnce() -> Logged) {
    let old = std::mem::replace(server, start_placeholder());
    stop(old);
    *server = start();
}

/// A process that is no server, to hold a place while the real one is replaced.
fn start_placeholder() -> Logged {
    let mut command = Command::new("true");
    command.stdin(std::process::Stdio::null());
    Logged::spawn(command)
}

#[test]
fn a_fleet_on_postgres_is_upgraded_rolled_back_and_contracted_under_load() {
    let Some(old) = previous_release() else {
        return;
    };
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let new = this_build();
    let site = Site::new(Some(&pg));
    let (a, b) = (common::free_port(), common::free_port());
    let (x, y) = (common::free_port(), common::free_port());
    let mut db_a = site.account_db(&old, a);
    let mut db_b = site.account_db(&old, b);
    let mut ls_x = site.login_server(&old, x, &[a, b]);
    let mut ls_y = site.login_server(&old, y, &[b, a]);
    let (stop_load, players) = load(&[x, y], 4);
    let settle = || std::thread::sleep(Duration::from_secs(2));
    settle();
    // Upgrade: each account-db, then each login-server, one at a time.
    println!("upgrading");
    replace(&mut db_a, || site.account_db(&new, a));
    settle();
    replace(&mut db_b, || site.account_db(&new, b));
    settle();
    replace(&mut ls_x, || site.login_server(&new, x, &[a, b]));
    settle();
    replace(&mut ls_y, || site.login_server(&new, y, &[b, a]));
    settle();
    // Roll one login-server, then one account-db, back, and forward again.
    println!("rolling back");
    replace(&mut ls_x, || site.login_server(&old, x, &[a, b]));
    settle();
    replace(&mut db_a, || site.account_db(&old, a));
    settle();
    println!("forward again");
    replace(&mut db_a, || site.account_db(&new, a));
    settle();
    replace(&mut ls_x, || site.login_server(&new, x, &[a, b]));
    settle();
    stop_load.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = players.into_iter().map(|p| p.join().unwrap()).collect();
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (answered, unavailable) = (sum(|t| t.answered), sum(|t| t.unavailable));
    let (retried, unanswered) = (sum(|t| t.retried), sum(|t| t.unanswered));
    let wrong: Vec<&String> = tallies.iter().flat_map(|t| &t.wrong).collect();
    println!(
        "answered {answered}, of them 7: {unavailable}; retried {retried}, unanswered {unanswered}"
    );
    assert!(answered > 500, "a load worth the name: {answered}");
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(unanswered, 0, "every request answered after its one retry");
    assert!(
        unavailable * 1000 <= answered,
        "at most 0.1% answered 7: {unavailable} of {answered}"
    );
    // Nothing acknowledged was lost, and every session left standing still stands.
    for name in tallies.iter().flat_map(|t| &t.registered) {
        assert_eq!(common::code(y, "login", name, "password1"), 3, "{name}");
    }
    for token in tallies.iter().flat_map(|t| &t.tokens) {
        let verified = ask(x, json!({"OP": "verify", "token": token}));
        assert_eq!(verified["code"], 9, "{verified}");
    }
    // The contract step, once no previous-release account-db runs; after it the previous
    // release refuses the store, naming the code version it needs.
    let admin = |release: &Release, args: &[&str]| {
        Command::new(&release.account_db)
            .arg("--store")
            .arg(site.store.as_deref().unwrap())
            .arg("--data")
            .arg(site.path())
            .arg("admin")
            .args(args)
            .output()
            .unwrap()
    };
    let contracted = admin(&new, &["schema", "contract"]);
    assert!(contracted.status.success(), "{contracted:?}");
    let refused = Command::new(&old.account_db)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--store",
            site.store.as_deref().unwrap(),
        ])
        .arg("--data")
        .arg(site.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("newer than this build"),
        "{said}"
    );
    // This build serves on through all of it.
    assert_eq!(common::code(x, "login", "P0-1", "password1"), 3);
    for server in [ls_x, ls_y, db_a, db_b] {
        stop(server);
    }
}

/// A line a [`Recorder`] relayed: (sequence, connection, from the login-server, the line).
type Relayed = (u64, u64, bool, String);

/// Every line after each connection's handshake between login-servers and one account-db, as
/// (request, reply) pairs in the order the requests were sent: a relay that keeps them.
struct Recorder {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<Relayed>>>,
}

impl Recorder {
    fn start(target: SocketAddr) -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let lines: Arc<Mutex<Vec<Relayed>>> = Arc::default();
        let seq = Arc::new(AtomicU64::new(0));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for (conn, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    return;
                };
                for (from, to, upward) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let (kept, seq) = (kept.clone(), seq.clone());
                    std::thread::spawn(move || {
                        let mut to = to;
                        for line in BufReader::new(from).lines().map_while(Result::ok) {
                            let n = seq.fetch_add(1, Ordering::SeqCst);
                            kept.lock()
                                .unwrap()
                                .push((n, conn as u64, upward, line.clone()));
                            if writeln!(to, "{line}").is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Recorder { addr, lines }
    }

    /// The (request, reply) pairs after each connection's greeting, auth line and its answer.
    fn transcript(&self) -> Vec<(Value, Value)> {
        let lines = self.lines.lock().unwrap().clone();
        let mut pairs = Vec::new();
        let connections: std::collections::BTreeSet<u64> = lines.iter().map(|l| l.1).collect();
        for conn in connections {
            let side = |upward: bool, skip: usize| -> Vec<(u64, Value)> {
                let mut mine: Vec<&Relayed> = lines
                    .iter()
                    .filter(|l| l.1 == conn && l.2 == upward)
                    .collect();
                mine.sort_by_key(|l| l.0);
                mine.iter()
                    .skip(skip)
                    .map(|l| (l.0, serde_json::from_str(&l.3).unwrap()))
                    .collect()
            };
            // Up: the auth line first; down: the greeting and the auth's answer.
            let (requests, replies) = (side(true, 1), side(false, 2));
            for (request, reply) in requests.into_iter().zip(replies) {
                pairs.push((request.0, request.1, reply.1));
            }
        }
        pairs.sort_by_key(|p| p.0);
        pairs.into_iter().map(|(_, q, a)| (q, a)).collect()
    }
}

/// What the transcript holds: every operation, then a player who locks their account.
fn transcript_exercise(ls: SocketAddr) {
    every_operation(ls, ls, "Recorded");
    assert_eq!(common::code(ls, "register", "Locked", "password1"), 4);
    let codes: Vec<u64> = (0..6)
        .map(|_| common::code(ls, "login", "Locked", "wrong-password"))
        .collect();
    assert_eq!(codes, [2, 2, 2, 2, 2, 8]);
}

/// The transcript of [`transcript_exercise`] between a previous-release login-server and
/// account-db on a fresh SQLite store, as the fixture file holds it: a header line, then one
/// `{"request":..,"reply":..}` a line.
fn record_transcript(old: &Release) -> Vec<Value> {
    let site = Site::new(None);
    let db = site.account_db(old, common::free_port());
    let recorder = Recorder::start(listening(&db));
    let ls = site.login_server(old, common::free_port(), &[recorder.addr]);
    transcript_exercise(listening(&ls));
    stop(ls);
    stop(db);
    recorder
        .transcript()
        .into_iter()
        .map(|(request, reply)| json!({"request": request, "reply": reply}))
        .collect()
}

/// `value` with what differs from one run to the next masked: random ids, salts and nonces,
/// times (integers past 10^12: milliseconds since the epoch) and waits.
fn masked(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, v)| {
                    let random = ["request_id", "hash", "sid", "nonce", "wait_ms"];
                    match random.contains(&key.as_str()) && !v.is_null() {
                        true => (key.clone(), json!("<masked>")),
                        false => (key.clone(), masked(v)),
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(masked).collect()),
        Value::Number(n) if n.as_i64().is_some_and(|n| n > 1_000_000_000_000) => json!("<time>"),
        other => other.clone(),
    }
}

#[test]
fn the_stored_transcript_is_what_the_previous_release_says() {
    let Some(old) = previous_release() else {
        return;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(common::TRANSCRIPT);
    let live = record_transcript(&old);
    if std::env::var("RECORD_TRANSCRIPT").as_deref() == Ok("1") {
        let commit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("compat/previous-release"),
        )
        .unwrap();
        let header = json!({
            "transcript": "account-db protocol version 3, post-auth lines",
            "recorded_from": commit.trim(),
        });
        let lines: Vec<String> = std::iter::once(&header)
            .chain(&live)
            .map(Value::to_string)
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
    let stored: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        live.len(),
        stored.len(),
        "as many lines (RECORD_TRANSCRIPT=1 records it)"
    );
    for (live, stored) in live.iter().zip(&stored) {
        assert_eq!(
            masked(live),
            masked(stored),
            "RECORD_TRANSCRIPT=1 records it anew"
        );
    }
}
