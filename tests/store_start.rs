//! account-db against a PostgreSQL that is down, missing or refusing, and a data directory it
//! cannot write: it waits for what may pass, fails at once on what will not, and says which in
//! PostgreSQL's or the operating system's own words.

mod common;

use common::{code, free_port, Logged, Relay, TestDatabase, PATIENCE};
use login_server::auth::secret::Secret;
use login_server::LoginServer;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The machine's PostgreSQL, as `TestDatabase`'s URL names it.
fn postgres_addr(db: &TestDatabase) -> SocketAddr {
    let hostport = db
        .url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(hostport, _)| hostport)
        .expect("postgres://user@host:port/db");
    hostport.parse().expect("host:port")
}

/// `db`'s URL with its host and port replaced by `addr`.
fn url_at(db: &TestDatabase, addr: SocketAddr) -> String {
    let name = db.url.rsplit('/').next().expect("a database name");
    format!("postgres://postgres@{addr}/{name}")
}

fn account_db(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_account-db"));
    command
        .arg("--data")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("ACCOUNT_DB_SECRET");
    command
}

#[test]
fn account_db_waits_for_a_postgresql_that_comes_up_later() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (down, listen, metrics) = (free_port(), free_port(), free_port());
    let store = url_at(&pg, down);
    let mut db = Logged::spawn(account_db(
        dir.path(),
        &[
            "--store",
            &store,
            "--listen",
            &listen.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
        ],
    ));
    // Waiting: not ready, and login-servers are refused at once rather than left hanging.
    db.wait_for("waiting for the account store");
    let waiting = db.wait_for("waiting for the account store");
    assert!(
        waiting.contains("Connection refused"),
        "the OS error: {waiting}"
    );
    assert_eq!(common::http_get(metrics, "/readyz").0, 503);
    assert_eq!(common::http_get(metrics, "/healthz").0, 200);
    // A login-server is turned away at once, without a greeting.
    let mut early = TcpStream::connect(listen).expect("the port is held");
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut greeting = Vec::new();
    use std::io::Read;
    let read = early.read_to_end(&mut greeting);
    // Closed (end of stream, or reset), not held open (a timeout), and nothing said.
    let closed = match &read {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed && greeting.is_empty(), "{read:?}");
    // The port is this process's: a second account-db on it does not start.
    let other = tempfile::tempdir().unwrap();
    let (_, log) = failed_start_on(other.path(), &listen.to_string(), &[]);
    assert!(log.contains(&listen.to_string()), "{log}");

    std::thread::sleep(Duration::from_secs(3));
    let _up = Relay::start_on(down, postgres_addr(&pg));
    db.wait_for("account-db listening");
    let secret = Secret::read(&dir.path().join("account-db.secret")).unwrap();
    let server = LoginServer::spawn(common::config(listen, &secret)).unwrap();
    assert_eq!(
        code(server.local_addr(), "register", "Patient", "password1"),
        4
    );
    assert_eq!(
        code(server.local_addr(), "login", "patient", "password1"),
        3
    );
    assert_eq!(common::http_get(metrics, "/readyz").0, 200);
}

/// Run account-db with `args` until it exits (it must, well within the patience): how long it
/// took, and its log.
fn failed_start(data: &Path, args: &[&str]) -> (Duration, String) {
    failed_start_on(data, "127.0.0.1:0", args)
}

/// [`failed_start`] listening on `listen`.
fn failed_start_on(data: &Path, listen: &str, args: &[&str]) -> (Duration, String) {
    let started = Instant::now();
    let mut command = account_db(data, args);
    command.args(["--listen", listen]);
    let mut db = Logged::spawn(command);
    let deadline = started + PATIENCE;
    let status = loop {
        if let Some(status) = db.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "it did not give up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    // The log is read by a thread of its own: let it catch up.
    std::thread::sleep(Duration::from_millis(200));
    (started.elapsed(), db.lines().join("\n"))
}

/// [`failed_start`] on `data` while `immutable` (the directory or a file in it) carries the
/// immutable attribute, which binds root too: the log. `None`, skipped visibly, where chattr
/// is refused (not root, or a file system without it).
fn failed_start_with_immutable(data: &Path, immutable: &Path) -> Option<String> {
    let set = Command::new("chattr").arg("+i").arg(immutable).status();
    if !set.is_ok_and(|s| s.success()) {
        return common::missing("REQUIRE_READ_ONLY", "chattr +i is refused here");
    }
    let (_, log) = failed_start(data, &[]);
    let _ = Command::new("chattr").arg("-i").arg(immutable).status();
    Some(log)
}

#[test]
fn a_missing_database_fails_at_once_with_postgresqls_words() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("{}_missing", pg.url);
    let (took, log) = failed_start(dir.path(), &["--store", &missing]);
    assert!(took < Duration::from_secs(10), "no waiting: {took:?}");
    assert!(log.contains("3D000"), "the SQLSTATE: {log}");
    assert!(log.contains("_missing"), "the database's name: {log}");
    // A role that does not exist: 28000, at once too.
    let nobody = pg.url.replace("postgres@", "no_such_role@");
    let (took, log) = failed_start(dir.path(), &["--store", &nobody]);
    assert!(took < Duration::from_secs(10), "no waiting: {took:?}");
    assert!(log.contains("no_such_role"), "{log}");
    assert!(!dir.path().join("account-db.secret").exists(), "{log}");
}

#[test]
fn a_closed_port_is_waited_for_then_named_with_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("postgres://postgres@{}/test", free_port());
    let args = ["--store", &store, "--store-start-timeout", "1"];
    let (took, log) = failed_start(dir.path(), &args);
    assert!(took >= Duration::from_secs(1), "it waited: {took:?}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(log.contains("--store-start-timeout"), "{log}");
}

#[test]
fn an_outage_is_logged_as_one_summary_not_a_line_per_attempt() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let relay = Relay::start(postgres_addr(&pg));
    let dir = tempfile::tempdir().unwrap();
    let store = url_at(&pg, relay.addr);
    let mut command = account_db(dir.path(), &["--store", &store, "--listen", "127.0.0.1:0"]);
    command.args(["--store-pool", "4"]);
    let mut db = Logged::spawn(command);
    let listen: SocketAddr = db.field("account-db listening", "addr").parse().unwrap();
    let secret = Secret::read(&dir.path().join("account-db.secret")).unwrap();
    let server = LoginServer::spawn(common::config(listen, &secret)).unwrap();
    assert_eq!(
        code(server.local_addr(), "register", "Outage", "password1"),
        4
    );
    relay.cut();
    let until = Instant::now() + Duration::from_secs(4);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        assert_eq!(code(server.local_addr(), "login", "outage", "password1"), 7);
        let newcomer = format!("newcomer{n}");
        assert_eq!(
            code(server.local_addr(), "register", &newcomer, "password1"),
            7
        );
    }
    let lines = db.lines();
    // Every warning and error of the outage: the pool's summary, the failed requests' summary,
    // the pruner's (about 60 lines a second before).
    let loud: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(loud.len() <= 4, "{loud:#?}");
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("cannot connect to PostgreSQL") || l.contains("r2d2"))
        .collect();
    assert!(
        (1..=2).contains(&failures.len()),
        "one summary per 10 s: {failures:#?}"
    );
    let summary = failures[0];
    assert!(summary.contains("failures="), "{summary}");
    assert!(summary.contains("last_error="), "the cause: {summary}");
    relay.heal();
}

#[test]
fn a_read_only_data_directory_is_named_as_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A store, then a directory where no new file can be made (SQLite's -wal and -shm files).
    drop(login_server::accountdb::store::SqliteStore::open(&data).unwrap());
    for name in ["accounts.sqlite3-wal", "accounts.sqlite3-shm"] {
        let _ = std::fs::remove_file(data.join(name));
    }
    let Some(log) = failed_start_with_immutable(&data, &data) else {
        return;
    };
    assert!(log.contains("read-only"), "{log}");
    assert!(log.contains(data.to_str().unwrap()), "names it: {log}");
}

#[test]
fn a_silent_postgresql_is_given_up_on_and_a_stop_signal_is_heard() {
    // Something on PostgreSQL's port that accepts and never answers once held the start for
    // ever, deaf to SIGTERM: connect_timeout bounds only the TCP connect.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().map_while(Result::ok) {
            held.push(stream); // accepted, kept open, never answered
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = format!("postgres://postgres@{addr}/test");
    let args = ["--store", &store, "--store-start-timeout", "3"];
    let (took, log) = failed_start(dir.path(), &args);
    assert!(took < Duration::from_secs(10), "gave up: {took:?}");
    assert!(log.contains("did not answer"), "{log}");
    // Waiting for ever, it still stops on SIGTERM.
    let mut command = account_db(
        dir.path(),
        &["--store", &store, "--store-start-timeout", "0"],
    );
    command.args(["--listen", "127.0.0.1:0"]);
    let mut db = Logged::spawn(command);
    db.wait_for("waiting for the account store");
    let asked = Instant::now();
    common::signal(db.child.id(), "TERM");
    let deadline = asked + Duration::from_secs(8);
    let status = loop {
        if let Some(status) = db.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM not heard while waiting");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "a stop asked for is no failure: {status:?}"
    );
    assert!(!dir.path().join("account-db.secret").exists());
}

#[test]
fn an_unwritable_database_file_stops_the_start_by_name() {
    // An immutable throttle.sqlite3 once let account-db start and then fail every failed login;
    // an unwritable accounts.sqlite3 said "attempt to write a readonly database", no path.
    for file in ["throttle.sqlite3", "accounts.sqlite3"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        drop(login_server::accountdb::store::SqliteStore::open(&data).unwrap());
        let path = data.join(file);
        let Some(log) = failed_start_with_immutable(&data, &path) else {
            return;
        };
        assert!(log.contains("read-only"), "{file}: {log}");
        assert!(log.contains(path.to_str().unwrap()), "{file} named: {log}");
    }
}

#[test]
fn a_migration_lock_held_elsewhere_is_waited_for_within_the_start_timeout() {
    // Another account-db's migration lock, held for ever, once held this start for ever too,
    // deaf to --store-start-timeout and SIGTERM.
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let mut holder = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x6c6f_6769_6e5f_6462_i64])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--store", pg.url.as_str(), "--store-start-timeout", "3"];
    let (took, log) = failed_start(dir.path(), &args);
    assert!(took < Duration::from_secs(12), "gave up: {took:?}");
    assert!(log.contains("55P03"), "{log}");
    drop(holder);
}

#[test]
fn on_postgresql_a_missing_data_directory_is_made_for_the_secret() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not/yet");
    let mut config = login_server::AccountDbConfig::embedded(
        "127.0.0.1:0".parse().unwrap(),
        login_server::auth::secret::Secret::generate(),
    );
    config.secret = None;
    config.data = data.clone();
    config.store = Some(pg.url.parse().unwrap());
    let db = login_server::AccountDb::open(config).expect("a start with --data missing");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(data.join("account-db.secret").exists());
    db.shutdown();
}
