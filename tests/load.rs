//! Load and slowness: idle connections cost no worker, a full queue is shed with code 7, and
//! a stalled account-db is answered 7 within the deadline.

mod common;

use common::{code, seed, start_with, DbProcess, StreamClient};
use login_server::LoginServer;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn two_hundred_silent_connections_do_not_hold_up_a_normal_client() {
    let tiers = start_with(|c| c.workers = Some(1));
    let mut silent = Vec::new();
    for i in 0..200 {
        let mut stream = common::connect(tiers.addr());
        if i % 2 == 0 {
            // Half of them start a message and stop.
            stream.write_all(br#"[{"OP":"login","#).unwrap();
        }
        silent.push(stream);
    }
    assert_eq!(code(tiers.addr(), "register", "busybee", "password1"), 4);
    assert_eq!(code(tiers.addr(), "login", "busybee", "password1"), 3);
    let mut client = StreamClient::new(tiers.addr());
    client.send(br#"{"OP":"login","username":"busybee","password":"password1"}"#);
    assert_eq!(client.recv()["code"], 3);
    drop(silent);
}

/// An account-db process, stopped with SIGSTOP after the pool has connected: requests are
/// sent but never answered.
fn stalled_db(dir: &std::path::Path) -> DbProcess {
    let db = DbProcess::start(dir, "127.0.0.1:0");
    db.signal("STOP");
    db
}

#[test]
fn a_stalled_account_db_is_answered_7_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let mut config = db.config();
    config.db_timeout = Duration::from_millis(300);
    let server = LoginServer::spawn(config).unwrap();
    assert_eq!(
        code(server.local_addr(), "register", "patient", "password1"),
        4
    );
    db.signal("STOP");
    let started = Instant::now();
    let reply = seed(server.local_addr(), "login", "patient", "password1");
    assert_eq!(reply["code"], 7, "{reply}");
    // After the 300 ms deadline, not long after it.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    // Back: the broken connection was thrown away and service resumes.
    db.signal("CONT");
    common::eventually(common::PATIENCE, "service resumed", || {
        code(server.local_addr(), "login", "patient", "password1") == 3
    });
}

#[test]
fn a_full_queue_is_shed_with_code_7_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = stalled_db(dir.path());
    let mut config = db.config();
    config.workers = Some(1);
    config.queue = 1;
    config.db_pool = Some(1);
    config.db_timeout = Duration::from_secs(1);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = LoginServer::spawn(config).unwrap();
    let metrics = server.metrics_addr().unwrap();
    // The worker takes the first request and waits on account-db; the second fills the queue.
    let mut held = Vec::new();
    for (i, (gauge, what)) in [
        ("login_busy_workers", "the worker holds the first request"),
        ("login_queue_depth", "the second fills the queue"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = StreamClient::new(server.local_addr());
        client.send(
            format!(r#"{{"OP":"login","username":"held{i}","password":"password1"}}"#).as_bytes(),
        );
        held.push(client);
        common::eventually(Duration::from_millis(900), what, || {
            common::metric(metrics, gauge) == Some(1.0)
        });
    }
    // Every further request is answered busy at once: before the held ones, which wait for
    // account-db's deadline, have been answered at all.
    let reply = seed(server.local_addr(), "login", "third", "password1");
    assert_eq!(reply["code"], 7, "{reply}");
    assert!(reply["info"].as_str().unwrap().contains("busy"), "{reply}");
    assert!(
        held[0].nothing_yet(),
        "shed at once, not queued behind the held requests"
    );
    // The held ones are answered 7 too once the deadline passes: nothing hangs.
    for mut client in held {
        assert_eq!(client.recv()["code"], 7);
    }
}
