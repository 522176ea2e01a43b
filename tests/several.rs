//! Several account-dbs over one PostgreSQL database, behind several login-servers: no single
//! account-db whose death stops logins. Real processes, real sockets, a real PostgreSQL
//! (skipped, with a line saying so, where none answers and REQUIRE_POSTGRES is not set).

mod common;

use common::{code, seed, DbProcess, Relay, TestDatabase};
use login_server::{LoginServer, LoginServerConfig};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Two account-dbs on one fresh PostgreSQL database, sharing one secret.
fn two_account_dbs() -> Option<(TestDatabase, tempfile::TempDir, DbProcess, DbProcess)> {
    let db = common::postgres_database()?;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--store", db.url.as_str()];
    let first = DbProcess::start_with(dir.path(), "127.0.0.1:0", &flags);
    let second = DbProcess::start_with(dir.path(), "127.0.0.1:0", &flags);
    Some((db, dir, first, second))
}

/// A login-server reaching `dbs` in this order.
fn login_server(dbs: &[&DbProcess]) -> LoginServer {
    let config = LoginServerConfig {
        db: dbs.iter().map(|d| d.addr.into()).collect(),
        ..dbs[0].config()
    };
    LoginServer::spawn(config).unwrap()
}

#[test]
fn any_login_server_reaches_any_account() {
    let Some((_pg, _dir, first, second)) = two_account_dbs() else {
        return;
    };
    let a = login_server(&[&first, &second]);
    let b = login_server(&[&second, &first]);
    assert_eq!(code(a.local_addr(), "register", "Wanderer", "password1"), 4);
    assert_eq!(code(b.local_addr(), "login", "wanderer", "password1"), 3);
    assert_eq!(code(b.local_addr(), "register", "WANDERER", "password1"), 5);
}

#[test]
fn throttling_holds_across_login_servers_and_account_dbs() {
    let Some((_pg, _dir, first, second)) = two_account_dbs() else {
        return;
    };
    let a = login_server(&[&first]);
    let b = login_server(&[&second]);
    common::throttling_holds_across(a.local_addr(), b.local_addr());
}

#[test]
fn sessions_hold_across_login_servers_and_account_dbs() {
    let Some((_pg, _dir, first, second)) = two_account_dbs() else {
        return;
    };
    let (a, b) = (login_server(&[&first]), login_server(&[&second]));
    let ask = |addr, request: serde_json::Value| {
        let mut client = common::StreamClient::new(addr);
        client.send(format!("{request}\n").as_bytes());
        client.recv()
    };
    assert_eq!(code(a.local_addr(), "register", "Roamer", "password1"), 4);
    let login = json!({"OP": "login", "username": "roamer", "password": "password1"});
    let token = ask(a.local_addr(), login.clone())["token"].clone();
    let other = ask(b.local_addr(), login)["token"].clone();
    let verify =
        |addr, token: &serde_json::Value| ask(addr, json!({"OP": "verify", "token": token}));
    assert_eq!(verify(b.local_addr(), &token)["username"], "Roamer");
    assert_eq!(
        ask(b.local_addr(), json!({"OP": "logout", "token": token}))["code"],
        11
    );
    assert_eq!(verify(a.local_addr(), &token)["reason"], "revoked");
    assert_eq!(verify(a.local_addr(), &other)["code"], 9);
    assert_eq!(
        ask(a.local_addr(), json!({"OP": "logout_all", "token": other}))["code"],
        11
    );
    assert_eq!(verify(b.local_addr(), &other)["reason"], "revoked");
}

/// Each request asked ("register NAME") and its reply.
type Replies = Vec<(String, Value)>;

/// Run 4 threads of registrations and logins through `servers` until `stop`; every reply
/// (what was asked, and the reply's JSON), and the names whose registration was acknowledged.
fn load(
    servers: Vec<std::net::SocketAddr>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Replies, Vec<String>)> {
    std::thread::spawn(move || {
        let replies = Arc::new(Mutex::new(Vec::new()));
        let registered = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (servers, stop) = (servers.clone(), stop.clone());
                let (replies, registered) = (replies.clone(), registered.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let server = servers[i % servers.len()];
                        let name = format!("load{t}x{i}");
                        for op in ["register", "login"] {
                            let reply = seed(server, op, &name, "password1");
                            let acknowledged = reply["code"] == 4;
                            replies
                                .lock()
                                .unwrap()
                                .push((format!("{op} {name}"), reply));
                            if op == "register" && !acknowledged {
                                break;
                            }
                            if acknowledged {
                                registered.lock().unwrap().push(name.clone());
                            }
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let replies = replies.lock().unwrap().clone();
        let registered = registered.lock().unwrap().clone();
        (replies, registered)
    })
}

#[test]
fn killing_one_account_db_under_load_costs_no_player_anything() {
    let Some((_pg, _dir, first, second)) = two_account_dbs() else {
        return;
    };
    let a = login_server(&[&first, &second]);
    let b = login_server(&[&second, &first]);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(vec![a.local_addr(), b.local_addr()], stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    first.kill();
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    let (replies, registered) = running.join().unwrap();
    assert!(replies.len() > 20, "too little load: {}", replies.len());
    let others: Vec<_> = replies
        .iter()
        .filter(|(_, reply)| !matches!(reply["code"].as_u64(), Some(3 | 4)))
        .collect();
    assert!(others.is_empty(), "codes other than 3 and 4: {others:?}");
    for name in &registered {
        assert_eq!(
            code(b.local_addr(), "login", name, "password1"),
            3,
            "{name} lost"
        );
    }
}

#[test]
fn a_stopped_account_db_costs_only_a_short_wait() {
    let Some((_pg, _dir, first, second)) = two_account_dbs() else {
        return;
    };
    let server = login_server(&[&first, &second]);
    assert_eq!(
        code(server.local_addr(), "register", "patient", "password1"),
        4
    );
    first.signal("STOP");
    let started = Instant::now();
    let codes: Vec<u64> = (0..20)
        .map(|_| code(server.local_addr(), "login", "patient", "password1"))
        .collect();
    let took = started.elapsed();
    first.signal("CONT");
    assert!(codes.iter().all(|&c| c == 3), "{codes:?}");
    // Only the first request waits for the stopped one (a third of --db-timeout); the rest
    // go to the other at once.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn postgresql_cut_away_is_unavailable_never_unknown_and_recovers_by_itself() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let url = pg.url.clone();
    let (hostport, rest) = url
        .split_once("@")
        .and_then(|(_, r)| r.split_once('/'))
        .expect("postgres://user@host:port/db");
    let target: std::net::SocketAddr = hostport.parse().expect("host:port as an address");
    let relay = Relay::start(target);
    let relayed = format!("postgres://postgres@{}/{rest}", relay.addr);
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--store", &relayed]);
    let server = login_server(&[&db]);
    let addr = server.local_addr();
    assert_eq!(code(addr, "register", "steadfast", "password1"), 4);

    relay.cut();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(code(addr, "login", "steadfast", "password1"), 7);
        // --db-timeout is 2 s: answered within it, and a little.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        code(addr, "login", "nobody-at-all", "password1"),
        7,
        "never 1 while cut"
    );

    relay.heal();
    let healed = Instant::now();
    common::eventually(Duration::from_secs(10), "recovery", || {
        code(addr, "login", "steadfast", "password1") == 3
    });
    // Within 2 s of healing, give or take one request still waiting on the cut.
    assert!(
        healed.elapsed() < Duration::from_secs(4),
        "{:?}",
        healed.elapsed()
    );
}

#[test]
fn an_account_db_that_lost_its_postgresql_is_failed_over() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let (hostport, rest) = pg
        .url
        .split_once('@')
        .and_then(|(_, r)| r.split_once('/'))
        .expect("postgres://user@host:port/db");
    let relay = Relay::start(hostport.parse().expect("host:port"));
    let relayed = format!("postgres://postgres@{}/{rest}", relay.addr);
    let dir = tempfile::tempdir().unwrap();
    let cut_off = DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--store", &relayed]);
    let healthy = DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--store", &pg.url]);
    let server = login_server(&[&cut_off, &healthy]);
    let addr = server.local_addr();
    assert_eq!(code(addr, "register", "resilient", "password1"), 4);
    relay.cut();
    // The cut-off account-db answers errors; every request is served by the other.
    let codes: Vec<u64> = (0..10)
        .map(|_| code(addr, "login", "resilient", "password1"))
        .collect();
    assert!(codes.iter().all(|&c| c == 3), "{codes:?}");
}
