//! account-db on PostgreSQL with a streaming standby: it follows the writable node through a
//! failover (`pg_ctl promote`), never acknowledges a registration a synchronous standby does
//! not have, and is not held up by a host that swallows connections. Its own test binary, run
//! by .ci/run after the main suite: `cargo test --test pg_failover`. Every cluster here runs as
//! the `postgres` OS user (needs root); without it each test is skipped visibly, or fails with
//! `REQUIRE_POSTGRES=1`.

mod common;

use common::load::{ask, missing_from, registered, Load};
use common::pg::OwnPostgres;
use login_server::accountdb::store::StoreUrl;
use login_server::auth::secret::Secret;
use login_server::{AccountDb, AccountDbConfig, LoginServer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// account-db's `--store-timeout` here (its default).
const STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// A primary that streams to standbys from loopback, its `accounts` database made.
fn primary() -> Option<OwnPostgres> {
    let pg = OwnPostgres::init(
        "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nwal_keep_size = '64MB'",
        "local all all trust\nhost all all 127.0.0.1/32 trust\n\
         host replication all 127.0.0.1/32 trust\n",
        &[],
    )?;
    pg.start();
    pg.admin("postgres")
        .batch_execute("CREATE DATABASE accounts")
        .expect("create the database");
    Some(pg)
}

/// A primary and its standby, the primary's commits waiting for the standby
/// (`synchronous_standby_names = '*'`, set after the copy: the standby, once promoted, has no
/// standby of its own to wait for).
fn pair() -> Option<(OwnPostgres, OwnPostgres)> {
    let primary = primary()?;
    let standby = OwnPostgres::standby_of(&primary);
    primary.reconfigure("synchronous_standby_names = '*'");
    common::eventually(
        common::PATIENCE,
        "the standby streams synchronously",
        || {
            let row = primary
                .admin("postgres")
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
                    &[],
                )
                .expect("pg_stat_replication");
            row.is_some()
        },
    );
    Some((primary, standby))
}

/// The multi-host `--store` URL over `ports`, in order.
fn store_url(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "postgres://postgres@{}/accounts?target_session_attrs=read-write&sslmode=disable",
        hosts.join(",")
    )
}

/// An account-db on `url` (with its metrics served) and a login-server in front of it.
struct Tiers {
    server: LoginServer,
    db: AccountDb,
}

fn tiers(url: &str) -> Tiers {
    let url: StoreUrl = url.parse().expect("a store URL");
    let store = url
        .open(8, STORE_TIMEOUT, false, None)
        .expect("open the store");
    let secret = Secret::generate();
    let mut config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    config.store_timeout = STORE_TIMEOUT;
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let db = AccountDb::spawn(config, store).expect("start account-db");
    let mut config = common::config(db.local_addr(), &secret);
    config.db_pool = Some(4);
    config.workers = Some(4);
    let server = LoginServer::spawn(config).expect("start login-server");
    Tiers { server, db }
}

/// The failover test, with the primary stopped by `kill`.
fn failover_under_load(how: &str, kill: impl FnOnce(&OwnPostgres)) {
    let Some((primary, standby)) = pair() else {
        return;
    };
    let t = tiers(&store_url(&[primary.port, standby.port]));
    let addr = t.server.local_addr();
    let players: Vec<String> = (0..20).map(|i| format!("player{i}")).collect();
    for player in &players {
        assert_eq!(common::code(addr, "register", player, "password1"), 4);
    }
    let metrics = t.db.metrics_addr().expect("metrics");
    let primary_info = |port: u16| {
        let (_, body) = common::http_get(metrics, "/metrics");
        let line = format!("accountdb_store_primary_info{{host=\"127.0.0.1:{port}\"}} 1");
        body.lines().any(|l| l == line)
    };
    assert!(
        primary_info(primary.port),
        "{how}: the first host is the primary"
    );
    // A lockout (five wrong passwords), to hold across the failover.
    assert_eq!(common::code(addr, "register", "locked", "password1"), 4);
    for _ in 0..5 {
        let code = common::code_from(addr, "login", "locked", "wrong-password", "10.1.1.1");
        assert!(code == 2 || code == 8, "{how}: {code}");
    }
    let lockout = || common::code_from(addr, "login", "locked", "password1", "10.2.2.2");
    assert_eq!(lockout(), 8, "{how}: locked before");
    let load = Load::start(&[addr], &players, 4, "new");
    std::thread::sleep(Duration::from_millis(1000));
    let killed = Instant::now();
    kill(&primary);
    // A gap: nobody is writable.
    std::thread::sleep(Duration::from_millis(700));
    standby.promote();
    let promoted = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    let outcomes = load.stop();
    let gaps = outcomes.iter().filter(|o| o.code == 7).count();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("{how}: {} requests, {gaps} answered 7\n", outcomes.len()).as_bytes(),
    );
    // Only the expected codes: no existing player told he does not exist, no registration
    // refused; 7 only in the gap.
    let resumed = promoted + STORE_TIMEOUT + Duration::from_secs(1);
    for o in &outcomes {
        assert!(o.succeeded() || o.code == 7, "{how}: {o:?}");
        if o.code == 7 {
            assert!(
                o.answered >= killed && o.sent <= resumed,
                "{how}: 7 outside the gap (killed {:?} before, resumed by {:?} after): {o:?}",
                o.sent.checked_duration_since(killed),
                o.sent.checked_duration_since(resumed)
            );
        }
    }
    assert!(
        outcomes.iter().any(|o| o.code != 7 && o.sent > resumed),
        "{how}: success resumed"
    );
    assert!(
        outcomes.iter().any(|o| o.code != 7 && o.sent < killed),
        "{how}: success before"
    );
    // Every registration answered 4 is on the new primary.
    let registered = registered(&outcomes);
    assert!(!registered.is_empty());
    let lost = missing_from(&mut standby.admin("accounts"), &registered);
    assert!(lost.is_empty(), "{how}: acknowledged but lost: {lost:?}");
    // The throttle's records are on the new primary: the lockout holds.
    assert_eq!(lockout(), 8, "{how}: still locked after the failover");
    // The change is seen, counted and logged once.
    assert!(
        primary_info(standby.port),
        "{how}: the standby is the primary"
    );
    assert_eq!(
        common::metric(metrics, "accountdb_store_primary_changes_total"),
        Some(1.0),
        "{how}"
    );
}

#[test]
fn a_primary_stopped_immediately_is_followed_to_the_promoted_standby() {
    failover_under_load("immediate", |pg| pg.stop("immediate"));
}

#[test]
fn a_primary_killed_is_followed_to_the_promoted_standby() {
    failover_under_load("kill -9", OwnPostgres::kill9);
}

#[test]
fn a_commit_no_standby_confirms_is_answered_7_and_logins_go_on() {
    let Some((primary, standby)) = pair() else {
        return;
    };
    let t = tiers(&store_url(&[primary.port]));
    let addr = t.server.local_addr();
    let players: Vec<String> = (0..10).map(|i| format!("player{i}")).collect();
    for player in &players {
        assert_eq!(common::code(addr, "register", player, "password1"), 4);
    }
    standby.stop("fast");
    // An account-db started now (its schema current) comes up: a start writes nothing a
    // standby must confirm.
    let (done, started) = std::sync::mpsc::channel();
    let url: StoreUrl = store_url(&[primary.port]).parse().unwrap();
    std::thread::spawn(move || {
        let _ = done.send(url.open(2, STORE_TIMEOUT, false, None).map(drop));
    });
    let opened = started.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(opened, Ok(Ok(()))),
        "a start with the standby down: {opened:?}"
    );
    // 50 registrations from 10 connections: each answered 7 within --db-timeout, none 4.
    let db_timeout = login_server::LoginServerConfig::default().db_timeout;
    let answers = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let answers = answers.clone();
            std::thread::spawn(move || {
                let mut client = common::StreamClient::new(addr);
                for i in 0..5 {
                    let started = Instant::now();
                    let code = ask(
                        &mut client,
                        "register",
                        &format!("late{t}x{i}"),
                        "password1",
                    );
                    answers.lock().unwrap().push((code, started.elapsed()));
                }
            })
        })
        .collect();
    // Meanwhile, and after: existing players log in.
    for player in &players {
        let mut client = common::StreamClient::new(addr);
        assert_eq!(
            ask(&mut client, "login", player, "password1"),
            3,
            "{player}"
        );
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 50);
    for (code, took) in answers.iter() {
        assert_eq!(*code, 7, "a registration no standby has");
        assert!(*took <= db_timeout, "answered after {took:?}");
    }
    for player in &players {
        assert_eq!(common::code(addr, "login", player, "password1"), 3);
    }
    // The standby back: the same registration asked again is answered (a new request: the
    // name is taken by the one committed locally).
    standby.start();
    common::eventually(common::PATIENCE, "registrations acknowledged again", || {
        common::code(addr, "register", "after", "password1") == 4
    });
}

/// A listening socket whose queue is full: connections to it are neither accepted nor
/// refused (their SYNs are dropped), as a blackholed host's are.
struct Blackhole {
    port: u16,
    listener: i32,
    _queued: Vec<std::net::TcpStream>,
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns, once.
        unsafe { libc::close(self.listener) };
    }
}

impl Blackhole {
    fn new() -> Blackhole {
        // SAFETY: plain socket calls on a descriptor this function owns; the address is a
        // valid sockaddr_in on the stack.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0
            );
            assert_eq!(libc::listen(fd, 0), 0);
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut len = len;
            libc::getsockname(fd, &mut bound as *mut _ as *mut libc::sockaddr, &mut len);
            let port = u16::from_be(bound.sin_port);
            let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let queued = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200))
                .into_iter()
                .collect();
            Blackhole {
                port,
                listener: fd,
                _queued: queued,
            }
        }
    }
}

#[test]
fn a_blackholed_host_first_in_the_url_costs_new_connections_less_than_the_store_timeout() {
    let Some(pg) = primary() else {
        return;
    };
    let hole = Blackhole::new();
    let target: SocketAddr = format!("127.0.0.1:{}", hole.port).parse().unwrap();
    let connect = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200));
    assert!(connect.is_err(), "the blackhole accepts nothing");
    let t = tiers(&store_url(&[hole.port, pg.port]));
    let addr = t.server.local_addr();
    assert_eq!(common::code(addr, "register", "first", "password1"), 4);
    // Ten seconds on, the blackhole is tried first again by a new connection: every pooled
    // connection is ended, and the next requests need new ones.
    std::thread::sleep(Duration::from_secs(10));
    pg.admin("postgres")
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = 'accounts' AND pid <> pg_backend_pid()",
        )
        .expect("end the pooled connections");
    for i in 0..5 {
        let started = Instant::now();
        assert_eq!(common::code(addr, "login", "first", "password1"), 3, "{i}");
        let took = started.elapsed();
        // The new connection's whole attempt, blackhole first, within the store timeout; the
        // login's own work on top (a few ms, given 300 on a busy machine).
        assert!(
            took < STORE_TIMEOUT + Duration::from_millis(300),
            "login {i} took {took:?}"
        );
    }
}

#[test]
fn a_wrong_password_whose_count_fails_is_answered_7_not_2() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let t = tiers(&format!("{}?sslmode=disable", db.url));
    let addr = t.server.local_addr();
    assert_eq!(common::code(addr, "register", "counted", "password1"), 4);
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    // Every throttle write fails from now on (a trigger binds superusers too); reads work.
    admin
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'throttle writes refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON throttle
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .unwrap();
    let login = |password: &str| common::code_from(addr, "login", "counted", password, "10.3.3.3");
    // A verdict the throttle did not count would be a free guess.
    assert_eq!(login("wrong-password"), 7);
    // The right password still logs in: the success it could not record costs nothing.
    assert_eq!(login("password1"), 3);
    // A registration whose count (the per-address limit) cannot be written is not made.
    assert_eq!(
        common::code_from(addr, "register", "uncounted", "password1", "10.3.3.3"),
        7
    );
    admin
        .batch_execute("DROP TRIGGER refuse ON throttle; DROP FUNCTION refuse();")
        .unwrap();
    assert_eq!(login("wrong-password"), 2);
}
