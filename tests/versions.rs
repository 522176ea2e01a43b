//! Version negotiation on the account-db link, over real sockets: an account-db of this build
//! greets with its range and takes a client from before negotiation (no version named) as
//! one speaking 3; a client of this build speaks 3, without naming it, to an account-db from
//! before negotiation, and is refused, both ranges named, by one it shares no version with.

mod common;

use common::PATIENCE;
use login_server::accountdb::client::DbConn;
use login_server::auth::secret::Secret;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// A plaintext connection to account-db at `addr`: the reader and the greeting.
fn greeted(addr: SocketAddr) -> (BufReader<TcpStream>, Value) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (reader, serde_json::from_str(&line).unwrap())
}

/// Send `request` as one line and read the answer.
fn ask(reader: &mut BufReader<TcpStream>, request: &Value) -> Value {
    writeln!(reader.get_mut(), "{request}").unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or(Value::Null)
}

#[test]
fn an_account_db_announces_its_range_and_serves_clients_from_before_negotiation() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate();
    let db = common::start_db(dir.path(), &secret);
    let (mut reader, greeting) = greeted(db.local_addr());
    assert_eq!(
        greeting["version"], 3,
        "what clients before negotiation check"
    );
    assert_eq!(greeting["versions"], json!([3, 4]));
    assert!(greeting["store_timeout_ms"].as_u64().unwrap() > 0);
    // The auth line of a 0.2.0 login-server: no version.
    let proof = secret.proof(greeting["nonce"].as_str().unwrap(), None);
    assert_eq!(
        ask(&mut reader, &json!({"op":"auth","proof":proof})),
        json!({"status":"ok"})
    );
    assert_eq!(
        ask(&mut reader, &json!({"op":"ping"})),
        json!({"status":"pong"})
    );
    // This build's: the version it chose.
    let (mut reader, greeting) = greeted(db.local_addr());
    let proof = secret.proof(greeting["nonce"].as_str().unwrap(), None);
    let auth = json!({"op":"auth","proof":proof,"version":4});
    assert_eq!(ask(&mut reader, &auth), json!({"status":"ok"}));
    // A version it does not speak: refused, saying which it does.
    let (mut reader, greeting) = greeted(db.local_addr());
    let proof = secret.proof(greeting["nonce"].as_str().unwrap(), None);
    let refused = ask(&mut reader, &json!({"op":"auth","proof":proof,"version":9}));
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("version 9") && message.contains("3 to 4"),
        "{refused}"
    );
    // And a client of this build agrees on 4.
    let conn = DbConn::connect(db.local_addr(), PATIENCE, &secret, None).unwrap();
    assert_eq!(conn.version(), 4);
}

/// An account-db that greets every connection as `greeting` says and answers its auth line
/// `ok`, then closes; the auth lines it received come back on the channel.
fn fake_account_db(greeting: Value) -> (SocketAddr, std::sync::mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let mut reader = BufReader::new(tcp);
            let _ = writeln!(reader.get_mut(), "{greeting}");
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
                let _ = writeln!(reader.get_mut(), "{}", json!({"status":"ok"}));
            }
        }
    });
    (addr, rx)
}

#[test]
fn a_client_speaks_3_unnamed_to_an_account_db_from_before_negotiation_and_refuses_a_stranger() {
    let secret = Secret::generate();
    // A 0.2.0 account-db: version 3, no range.
    let (addr, auth) = fake_account_db(json!({"service":"account-db","version":3,"nonce":"ab"}));
    let conn = DbConn::connect(addr, PATIENCE, &secret, None).unwrap();
    assert_eq!(conn.version(), 3);
    let line = auth.recv().unwrap();
    assert_eq!(line["op"], "auth");
    assert!(
        line.get("version").is_none(),
        "today's auth line unchanged: {line}"
    );
    // A far newer one, sharing no version: refused before any proof is sent.
    let greeting = json!({"service":"account-db","version":6,"versions":[6,7],"nonce":"ab"});
    let (addr, auth) = fake_account_db(greeting);
    let error = DbConn::connect(addr, PATIENCE, &secret, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("6 to 7") && error.contains("3 to 4"),
        "{error}"
    );
    assert!(
        auth.try_recv().is_err(),
        "no proof sent to a peer we cannot speak with"
    );
}

#[test]
fn a_login_server_says_why_an_account_db_it_shares_no_version_with_is_not_ready() {
    let secret = Secret::generate();
    let greeting = json!({"service":"account-db","version":6,"versions":[6,7],"nonce":"ab"});
    let (addr, _auth) = fake_account_db(greeting);
    let mut config = common::config(addr, &secret);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = login_server::LoginServer::spawn(config).unwrap();
    let (status, body) = common::http_get(server.metrics_addr().unwrap(), "/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("6 to 7") && body.contains("3 to 4"), "{body}");
}

/// `value` with every time in it (an integer past 10^12: milliseconds since the epoch) moved
/// by `shift`, and `wait_ms` masked: a transcript recorded once replays today.
fn replayable(value: &Value, shift: i64) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, v)| match key.as_str() {
                    "wait_ms" => (key.clone(), json!("<masked>")),
                    _ => (key.clone(), replayable(v, shift)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| replayable(v, shift)).collect()),
        Value::Number(n) => match n.as_i64() {
            Some(t) if t > 1_000_000_000_000 => json!(t + shift),
            _ => value.clone(),
        },
        other => other.clone(),
    }
}

/// The first time in `value`, if any.
fn first_time(value: &Value) -> Option<i64> {
    match value {
        Value::Object(fields) => fields.values().find_map(first_time),
        Value::Array(items) => items.iter().find_map(first_time),
        Value::Number(n) => n.as_i64().filter(|&t| t > 1_000_000_000_000),
        _ => None,
    }
}

/// Replay the previous release's transcript (tests/fixtures/protocol-v3.jsonl) after a live
/// handshake as that release makes it (no version named) against this build's account-db on
/// a fresh store: the same replies, times moved to today and waits masked.
fn replay_transcript(db: std::net::SocketAddr, secret: &Secret) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(common::TRANSCRIPT);
    let pairs: Vec<Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(pairs.len() > 20, "a transcript worth replaying");
    let base = pairs.iter().find_map(first_time).expect("a time in it");
    let shift = login_server::clock::now_ms() - base;
    let (mut reader, greeting) = greeted(db);
    let proof = secret.proof(greeting["nonce"].as_str().unwrap(), None);
    assert_eq!(
        ask(&mut reader, &json!({"op":"auth","proof":proof})),
        json!({"status":"ok"})
    );
    for pair in &pairs {
        let request = replayable(&pair["request"], shift);
        let reply = ask(&mut reader, &request);
        assert_eq!(
            replayable(&reply, 0),
            replayable(&pair["reply"], shift),
            "to {request}"
        );
    }
}

#[test]
fn the_previous_release_s_transcript_replays_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate();
    let db = common::start_db(dir.path(), &secret);
    replay_transcript(db.local_addr(), &secret);
}

#[test]
fn the_previous_release_s_transcript_replays_on_postgres() {
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = common::DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--store", &pg.url]);
    replay_transcript(db.addr, &db.secret);
}

#[test]
fn a_peer_that_never_greets_is_said_to_be_no_account_db() {
    // PostgreSQL's port, say: it waits for its client to speak first.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(tcp, _)| tcp));
    let error = DbConn::connect(
        addr,
        std::time::Duration::from_millis(300),
        &Secret::generate(),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.contains(&addr.to_string()) && error.contains("no greeting within 300 ms"),
        "{error}"
    );
    assert!(!error.contains("os error"), "{error}");
    drop(held.join());
}

#[test]
fn what_a_stranger_greets_with_is_quoted_short_and_on_one_line() {
    let secret = Secret::generate();
    let forged = "x\n2026-12-04T20:00:00Z ERROR login_server: FORGED \u{1b}[31m".to_string()
        + &"y".repeat(60_000);
    for greeting in [
        json!({"service": forged, "version": 3, "nonce": "n"}),
        json!(forged),
    ] {
        let (addr, _auth) = fake_account_db(greeting);
        let error = DbConn::connect(addr, PATIENCE, &secret, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            !error.contains('\n') && !error.contains('\u{1b}'),
            "{error:?}"
        );
        assert!(error.len() < 400, "{} bytes", error.len());
    }
}
