//! Requests sent together (a worker's round: one pooled connection, one write) are answered
//! as each would be alone, in order, also when the pooled connections died with a restart of
//! account-db, and a create among them is resolved even when the round times out; and
//! pipelined gateway requests from many connections keep their order.

mod common;

use common::DbProcess;
use login_server::accountdb::accounts::Accounts;
use login_server::accountdb::client::RemoteStore;
use login_server::accountdb::store::{Account, StoreError};
use login_server::metrics::Metrics;
use login_server::protocol::accountdb::{DbRequest, DbResponse};
use login_server::throttle::{Policy, Unknown};
use std::time::Duration;

fn requests(alice: u64) -> Vec<DbRequest> {
    let policy = Policy::default();
    let register = |name: &str| DbRequest::Register {
        username: name.to_string(),
        origin: None,
        limit: policy.registrations(),
    };
    vec![
        login("ALICE"),
        login("nobody"),
        register("alice"),
        register("someone-new"),
        DbRequest::Session {
            account_id: alice,
            sid: "some-session".into(),
            link: None,
        },
        DbRequest::Session {
            account_id: alice + 1000,
            sid: "some-session".into(),
            link: None,
        },
        login("alice"),
        create("Carol", "create-carol"),
        create("ALICE", "create-another-alice"),
    ]
}

fn create(name: &str, request_id: &str) -> DbRequest {
    DbRequest::Create {
        account: Account::new(name, "some-hash"),
        request_id: request_id.into(),
    }
}

fn ask_together(store: &RemoteStore, requests: &[DbRequest]) -> Vec<DbResponse> {
    let asked: Vec<&DbRequest> = requests.iter().collect();
    let answers = store.call_all(&asked);
    assert_eq!(answers.len(), requests.len());
    answers.into_iter().map(|a| a.expect("answered")).collect()
}

#[test]
fn requests_sent_together_are_answered_as_alone_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let store = RemoteStore::new(&db.client_config(), Metrics::default());
    let created = store.create(&Account::new("Alice", "some-hash"), "create-alice");
    assert!(created.is_ok());
    let alice = store.find("alice").unwrap().unwrap().id;
    let requests = requests(alice);

    let alone: Vec<DbResponse> = requests.iter().map(|r| store.call(r).unwrap()).collect();
    let together = ask_together(&store, &requests);
    assert_eq!(together, alone);
    // What they are, so that "the same" is not "the same nonsense".
    assert!(
        matches!(&alone[0], DbResponse::Open { account: Some(a), .. } if a.username == "Alice")
    );
    assert!(matches!(&alone[1], DbResponse::Open { account: None, .. }));
    assert_eq!(alone[2], DbResponse::Exists, "register: taken");
    assert_eq!(alone[3], DbResponse::NotFound, "register: free");
    assert!(matches!(&alone[4], DbResponse::Session { username, .. } if username == "Alice"));
    assert_eq!(alone[5], DbResponse::NotFound, "no such session");
    // Asked again, a create learns that its own request stored the account.
    assert_eq!(alone[7], DbResponse::Created);
    assert_eq!(alone[8], DbResponse::Exists);

    // account-db restarts on the same address: every pooled connection is dead. The batch
    // is asked again, and answered the same.
    let addr = db.addr;
    db.kill();
    let db = DbProcess::start(dir.path(), &addr.to_string());
    assert_eq!(ask_together(&store, &requests), alone);
    db.kill();
}

#[test]
fn pipelined_requests_on_many_connections_are_answered_in_order() {
    let tiers = common::start();
    let addr = tiers.addr();
    assert_eq!(common::code(addr, "register", "Ordered", "password1"), 4);
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let registered = common::seed(addr, "register", &format!("Chg{i}"), "pass-a-1");
            assert_eq!(registered["code"], 4, "{registered}");
            std::thread::spawn(move || {
                let mut client = common::StreamClient::new(addr);
                // Answers that need the store, none, a registration (hashed and created on a
                // worker, in a second round trip), and password changes (on a hash thread)
                // alternate, each tagged.
                let mut batch = Vec::new();
                let mut passwords = ["pass-a-1", "pass-b-1"];
                for n in 0..25 {
                    let line = match n % 5 {
                        0 => format!(r#"{{"OP":"login","username":"Ordered","password":"password1","id":{n}}}"#),
                        1 => format!(r#"{{"OP":"login","username":"nobody-{i}","password":"password1","id":{n}}}"#),
                        2 => format!(r#"{{"OP":"bogus","id":{n}}}"#),
                        3 => format!(r#"{{"OP":"register","username":"Reg{i}x{n}","password":"password1","id":{n}}}"#),
                        _ => {
                            let [old, new] = passwords;
                            passwords = [new, old];
                            format!(r#"{{"OP":"change_password","username":"Chg{i}","password":"{old}","new_password":"{new}","id":{n}}}"#)
                        }
                    };
                    batch.extend_from_slice(line.as_bytes());
                    batch.push(b'\n');
                }
                client.send(&batch);
                (0..25)
                    .map(|n| {
                        let reply = client.recv();
                        assert_eq!(reply["id"], n, "in order: {reply}");
                        reply["code"].as_u64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for client in clients {
        let codes = client.join().unwrap();
        for (n, code) in codes.into_iter().enumerate() {
            let expected = match n % 5 {
                0 => 3,
                1 => 1,
                2 => 6,
                3 => 4,
                _ => 11,
            };
            assert_eq!(code, expected, "request {n}");
        }
    }
    // Every registration answered 4 is stored.
    for i in 0..16 {
        for n in (3..25).step_by(5) {
            assert_eq!(
                common::code(addr, "login", &format!("Reg{i}x{n}"), "password1"),
                3
            );
        }
    }
}

fn login(name: &str) -> DbRequest {
    DbRequest::Login {
        username: name.into(),
        origin: None,
        failures: Policy::default().failures(),
        unknown: Unknown::Nothing,
    }
}

#[test]
fn a_create_asked_with_others_is_resolved_though_the_round_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let addr = db.addr;
    let mut config = db.client_config();
    config.timeout = Duration::from_secs(3);
    let store = RemoteStore::new(&config, Metrics::default());
    assert!(store.ping().is_ok());
    let requests = [login("someone"), create("Frozen", "create-frozen")];
    // account-db stops answering: the round's write times out (3 s) and its login is given
    // up. Then it dies, and a new one starts on its address: every attempt meanwhile is
    // refused at once, but a create's outcome must be known, so it is asked again until the
    // new account-db answers (within twice the deadline of the round's start).
    db.signal("STOP");
    let asking = std::thread::spawn(move || {
        let asked: Vec<&DbRequest> = requests.iter().collect();
        let answers = store.call_all(&asked);
        (store, answers)
    });
    std::thread::sleep(Duration::from_millis(3500));
    db.kill();
    let _db = DbProcess::start(dir.path(), &addr.to_string());
    let (store, answers) = asking.join().unwrap();
    assert!(
        matches!(answers[0], Err(StoreError::Unreachable(_))),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[1].as_ref().ok(), Some(&DbResponse::Created));
    let frozen = store.find("frozen").unwrap().expect("stored");
    assert_eq!(frozen.username, "Frozen");
}

#[test]
fn a_round_of_unknown_creates_ends_within_one_resolve_window() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let mut config = db.client_config();
    config.timeout = Duration::from_secs(1);
    let store = RemoteStore::new(&config, Metrics::default());
    assert!(store.ping().is_ok());
    let mut requests = vec![login("someone")];
    requests.extend((0..8).map(|i| create(&format!("Stuck{i}"), &format!("create-stuck-{i}"))));
    // account-db never answers again. Each create is unknown, but the round gives up on them
    // together when its window (2 s) closes, not one window after another (17 s).
    db.signal("STOP");
    let started = std::time::Instant::now();
    let asked: Vec<&DbRequest> = requests.iter().collect();
    let answers = store.call_all(&asked);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(answers.len(), 9);
    for answer in &answers {
        assert!(
            matches!(answer, Err(StoreError::Unreachable(_))),
            "{answer:?}"
        );
    }
}

/// A device's login, as login-server asks it.
fn device(id: &str, secret_hash: &str, ip: &str) -> DbRequest {
    DbRequest::Device {
        device_id: id.to_string(),
        secret_hash: secret_hash.to_string(),
        origin: Some(ip.parse().unwrap()),
        failures: Policy::default().failures(),
    }
}

/// Device logins sent together are read in one go (one statement on PostgreSQL), and a lock
/// one of them sets holds for the rest of the run, as it would one by one.
fn device_logins_together(db: &DbProcess) {
    let store = RemoteStore::new(&db.client_config(), Metrics::default());
    let guest = |id: &str| DbRequest::CreateGuest {
        device_id: id.to_string(),
        secret_hash: "right".into(),
        origin: None,
        limit: Policy::default().guests(),
        request_id: format!("create-{id}"),
    };
    let (a, b) = ("device-a-0123456789", "device-b-0123456789");
    for id in [a, b] {
        let created = store.call(&guest(id)).unwrap();
        assert!(
            matches!(created, DbResponse::Device { created: true, .. }),
            "{created:?}"
        );
    }
    let mut run = vec![device(a, "right", "192.0.2.1")];
    run.extend((0..6).map(|_| device(b, "wrong", "192.0.2.2")));
    run.push(device(b, "right", "192.0.2.3"));
    run.push(device("device-unknown-0123", "right", "192.0.2.4"));
    run.push(device(a, "right", "192.0.2.1"));
    let answers = ask_together(&store, &run);
    assert!(
        matches!(&answers[0], DbResponse::Device { created: false, .. }),
        "{answers:?}"
    );
    assert!(
        answers[1..6].iter().all(|r| *r == DbResponse::Counted),
        "{answers:?}"
    );
    // The fifth wrong secret locked the device: the sixth, and the right one from a stranger's
    // address, are locked within the same run.
    assert!(
        matches!(answers[6], DbResponse::Locked { .. }),
        "{answers:?}"
    );
    assert!(
        matches!(answers[7], DbResponse::Locked { .. }),
        "{answers:?}"
    );
    assert_eq!(answers[8], DbResponse::NotFound);
    assert!(
        matches!(&answers[9], DbResponse::Device { .. }),
        "{answers:?}"
    );
}

#[test]
fn device_logins_sent_together_are_read_at_once_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    device_logins_together(&db);
    db.kill();
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--store", &pg.url]);
    device_logins_together(&db);
    db.kill();
}
