//! Security: account-db admits only peers that prove the secret; failed logins are throttled
//! per account and per player address; unknown users can be made indistinguishable.

mod common;

use common::{code, seed, start, start_with, DbProcess, StreamClient};
use login_server::accountdb::client::DbConn;
use login_server::auth::secret::Secret;
use login_server::clock::Clock;
use login_server::LoginServer;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn account_db_refuses_a_wrong_or_missing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let timeout = Duration::from_secs(5);
    assert!(DbConn::connect(db.addr, timeout, &db.secret, None).is_ok());
    let err = DbConn::connect(db.addr, timeout, &Secret::generate(), None)
        .err()
        .expect("a wrong secret is refused");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(
        err.to_string().contains("--db-secret-file"),
        "names where our secret came from: {err}"
    );

    // A peer that skips the handshake gets nothing but a refusal, then the connection closes.
    let stream = TcpStream::connect(db.addr).unwrap();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert!(greeting.contains("\"nonce\""), "{greeting}");
    (&stream)
        .write_all(b"{\"op\":\"find\",\"username\":\"anyone\"}\n")
        .unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert_eq!(
        reply,
        "{\"status\":\"error\",\"message\":\"authentication failed\"}\n"
    );
    let mut rest = String::new();
    assert_eq!(
        reader.read_line(&mut rest).unwrap(),
        0,
        "closed after refusing"
    );
}

/// Connect to account-db, read its greeting, then feed it `trickle` one byte at a time every
/// `every`; the refusal it answers and how long after connecting it came.
fn handshake_refusal(
    addr: std::net::SocketAddr,
    trickle: &[u8],
    every: Duration,
) -> (String, Duration) {
    let started = std::time::Instant::now();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    let writer = std::thread::spawn({
        let (mut stream, trickle) = (stream, trickle.to_vec());
        move || {
            for byte in trickle {
                if stream.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(every);
            }
        }
    });
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    let waited = started.elapsed();
    writer.join().unwrap();
    (reply, waited)
}

#[test]
fn the_handshake_has_one_deadline_for_silent_and_trickling_peers() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(login_server::accountdb::store::SqliteStore::open(dir.path()).unwrap());
    let mut config =
        login_server::AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), Secret::generate());
    config.auth_timeout = Duration::from_millis(500);
    let db = login_server::AccountDb::spawn(config, store).unwrap();
    let refusal = "{\"status\":\"error\",\"message\":\"authentication failed\"}\n";
    // Silence is refused the same way as a wrong proof, at the deadline.
    let (reply, waited) = handshake_refusal(db.local_addr(), b"", Duration::ZERO);
    assert_eq!(reply, refusal);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    // A byte every 100 ms never completes a line: each read is quick, the handshake is not.
    let proof = format!("{{\"op\":\"auth\",\"proof\":\"{}\"}}\n", "0".repeat(64));
    let (reply, waited) = handshake_refusal(
        db.local_addr(),
        proof.as_bytes(),
        Duration::from_millis(100),
    );
    assert_eq!(reply, refusal);
    assert!(waited < Duration::from_millis(1500), "held for {waited:?}");
}

#[test]
fn account_db_creates_a_private_secret_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let _db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let meta = std::fs::metadata(dir.path().join("account-db.secret")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_lost_secret_stops_the_start_of_a_store_with_accounts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = DbProcess::start(dir.path(), "127.0.0.1:0");
        let server = LoginServer::spawn(db.config()).unwrap();
        assert_eq!(
            code(server.local_addr(), "register", "keeper", "password1"),
            4
        );
    }
    let path = dir.path().join("account-db.secret");
    std::fs::remove_file(&path).unwrap();
    let (status, log) = common::account_db_start_failure(dir.path(), &[]);
    assert!(!status.success());
    assert!(
        log.contains("--new-secret") && log.contains("account-db.secret"),
        "{log}"
    );
    assert!(!path.exists(), "no new secret was written");
    // Told to, it makes a new one, and says where.
    let mut child = Command::new(env!("CARGO_BIN_EXE_account-db"))
        .args(["--listen", "127.0.0.1:0", "--new-secret", "--data"])
        .arg(dir.path())
        .env_remove("ACCOUNT_DB_SECRET")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let created = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("created the secret")))
        .unwrap()
        .unwrap();
    assert!(created.contains("account-db.secret"), "{created}");
    assert!(path.exists());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn gen_secret_writes_a_private_secret_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("next.secret");
    let gen = || {
        Command::new(env!("CARGO_BIN_EXE_account-db"))
            .arg("gen-secret")
            .arg(&path)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(gen());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret = Secret::read(&path).unwrap();
    assert!(!gen(), "never over an existing secret");
    assert_eq!(Secret::read(&path).unwrap(), secret);
}

#[test]
fn a_rotation_accepts_the_old_and_the_next_secret_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // The old one where DbProcess looks for it.
    let old = dir.path().join("account-db.secret");
    let next = dir.path().join("next.secret");
    let (old_secret, next_secret) = (
        Secret::read_or_create(&old).unwrap(),
        Secret::read_or_create(&next).unwrap(),
    );
    let files = format!("{},{}", old.display(), next.display());
    let db = DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--secret-file", &files]);
    for secret in [&old_secret, &next_secret] {
        assert!(DbConn::connect(db.addr, common::PATIENCE, secret, None).is_ok());
    }
    assert!(DbConn::connect(db.addr, common::PATIENCE, &Secret::generate(), None).is_err());
    drop(db);
    // The rotation done: the old one is refused.
    let only_next = next.display().to_string();
    let db = DbProcess::start_with(dir.path(), "127.0.0.1:0", &["--secret-file", &only_next]);
    assert!(DbConn::connect(db.addr, common::PATIENCE, &next_secret, None).is_ok());
    assert!(DbConn::connect(db.addr, common::PATIENCE, &old_secret, None).is_err());
}

#[test]
fn login_server_with_db_but_no_secret_says_what_is_missing() {
    let output = Command::new(env!("CARGO_BIN_EXE_login-server"))
        .args(["--listen", "127.0.0.1:0", "--db", "127.0.0.1:9"])
        .env_remove("ACCOUNT_DB_SECRET")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--db-secret-file"), "{stderr}");
}

#[test]
fn gen_token_key_writes_a_private_key_and_its_public_half_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let kid = common::gen_token_key(&path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(dir.path().join("token.pub")).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    let key = login_server::auth::token_key::SigningKey::read(&path).unwrap();
    assert_eq!(key.verify_key().kid, kid);
    // Never over an existing key.
    let again = Command::new(env!("CARGO_BIN_EXE_login-server"))
        .arg("gen-token-key")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(
        login_server::auth::token_key::SigningKey::read(&path)
            .unwrap()
            .verify_key()
            .kid,
        kid
    );
}

#[test]
fn login_server_with_db_but_no_token_key_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let output = Command::new(env!("CARGO_BIN_EXE_login-server"))
        .args(["--listen", "127.0.0.1:0", "--db", &db.addr.to_string()])
        .arg("--db-secret-file")
        .arg(dir.path().join("account-db.secret"))
        .env_remove("ACCOUNT_DB_SECRET")
        .env_remove("LOGIN_SERVER_TOKEN_KEY_FILE")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gen-token-key"), "{stderr}");
    assert!(stderr.contains("--token-key-file"), "{stderr}");
}

#[test]
fn login_server_reaches_a_separate_account_db_with_its_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let secret_file = dir.path().join("account-db.secret");
    let key_file = dir.path().join("token.key");
    common::gen_token_key(&key_file);
    let mut command = common::login_server_command([
        "--hash-params".as_ref(),
        "8,1,1".as_ref(),
        "--db".as_ref(),
        db.addr.to_string().as_ref(),
        "--db-secret-file".as_ref(),
        secret_file.as_os_str(),
        "--token-key-file".as_ref(),
        key_file.as_os_str(),
    ]);
    command.env_remove("ACCOUNT_DB_SECRET");
    let (mut child, addr) = common::spawn_listening(command);
    assert_eq!(code(addr, "register", "separate", "password1"), 4);
    assert_eq!(code(addr, "login", "separate", "password1"), 3);
    child.kill().unwrap();
    child.wait().unwrap();
}

fn login(client: &mut StreamClient, user: &str, password: &str, ip: &str) -> serde_json::Value {
    let msg = json!({"OP": "login", "username": user, "password": password, "ip": ip});
    client.send(format!("{msg}\n").as_bytes());
    client.recv()
}

#[test]
fn failed_logins_lock_the_account_then_the_lock_ends() {
    let clock = Clock::adjustable();
    let tiers = common::start_on_clock(&clock, |c| {
        c.service.throttle.max_failures = 3;
        c.service.throttle.lockout = Duration::from_secs(60);
    });
    assert_eq!(code(tiers.addr(), "register", "target", "password1"), 4);
    let mut client = StreamClient::new(tiers.addr());
    for i in 0..3 {
        assert_eq!(
            login(&mut client, "target", "wrong-pass", &format!("10.0.0.{i}"))["code"],
            2
        );
    }
    // Locked: even the right password, from anywhere, gets 8 and when to retry.
    let locked = login(&mut client, "TARGET", "password1", "10.9.9.9");
    assert_eq!(locked["code"], 8, "{locked}");
    assert_eq!(locked["info"], "too many attempts");
    let retry_after = locked["retry_after"].as_u64().unwrap();
    assert!((59..=60).contains(&retry_after), "{locked}");
    // The seed form gets the same.
    assert_eq!(
        seed(tiers.addr(), "login", "target", "password1")["code"],
        8
    );
    // Other accounts are not affected.
    assert_eq!(code(tiers.addr(), "register", "bystander", "password1"), 4);
    assert_eq!(code(tiers.addr(), "login", "bystander", "password1"), 3);
    // Not a second before the lock ends; after it, success resets the count.
    clock.advance(Duration::from_secs(58));
    assert_eq!(
        login(&mut client, "target", "password1", "10.9.9.9")["code"],
        8
    );
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        login(&mut client, "target", "password1", "10.9.9.9")["code"],
        3
    );
    assert_eq!(
        login(&mut client, "target", "wrong-pass", "10.9.9.9")["code"],
        2
    );
}

#[test]
fn throttling_holds_across_two_login_servers_on_one_account_db() {
    let tiers = start();
    let other = LoginServer::spawn(common::config(tiers.db.local_addr(), &tiers.secret)).unwrap();
    common::throttling_holds_across(tiers.addr(), other.local_addr());
}

#[test]
fn failures_from_one_player_address_lock_that_address_only() {
    let tiers = start_with(|c| c.service.throttle.max_failures = 3);
    for name in ["alpha", "bravo"] {
        assert_eq!(code(tiers.addr(), "register", name, "password1"), 4);
    }
    let mut client = StreamClient::new(tiers.addr());
    // Guessing across accounts (and unknown names) from one address.
    login(&mut client, "alpha", "nope-nope", "203.0.113.7");
    login(&mut client, "bravo", "nope-nope", "203.0.113.7");
    login(&mut client, "charlie", "nope-nope", "203.0.113.7");
    assert_eq!(
        login(&mut client, "bravo", "password1", "203.0.113.7")["code"],
        8
    );
    // Another player (and the gateway's own connection, which carries no ip) still gets in.
    assert_eq!(
        login(&mut client, "bravo", "password1", "198.51.100.1")["code"],
        3
    );
    assert_eq!(code(tiers.addr(), "login", "alpha", "password1"), 3);
}

#[test]
fn hidden_user_existence_answers_unknown_users_2() {
    let tiers = start_with(|c| c.service.hide_user_existence = true);
    assert_eq!(code(tiers.addr(), "register", "known", "password1"), 4);
    assert_eq!(code(tiers.addr(), "login", "known", "password2"), 2);
    assert_eq!(code(tiers.addr(), "login", "unknown", "password2"), 2);
    assert_eq!(code(tiers.addr(), "login", "known", "password1"), 3);
}

#[test]
fn host_names_are_taken_wherever_an_address_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start_with(dir.path(), "localhost:0", &[]);
    assert!(db.addr.ip().is_loopback());
    let key = dir.path().join("token.key");
    common::gen_token_key(&key);
    let port = db.addr.port().to_string();
    let mut command = common::login_server_command([
        "--hash-params".as_ref(),
        "8,1,1".as_ref(),
        "--db".as_ref(),
        format!("localhost:{port}").as_ref(),
        "--db-secret-file".as_ref(),
        dir.path().join("account-db.secret").as_os_str(),
        "--token-key-file".as_ref(),
        key.as_os_str(),
        "--metrics-listen".as_ref(),
        "localhost:0".as_ref(),
    ]);
    command.env_remove("ACCOUNT_DB_SECRET");
    let (mut child, addr) = common::spawn_listening(command);
    assert_eq!(code(addr, "register", "named", "password1"), 4);
    child.kill().unwrap();
    child.wait().unwrap();
    // A name that does not resolve is refused at start, saying so.
    let output = Command::new(env!("CARGO_BIN_EXE_login-server"))
        .args(["--db", "no-such-host.invalid:9999"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("does not resolve"), "{said}");
}
