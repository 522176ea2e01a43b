//! Faults survived: account-db killed under load and restarted, a panic in a request, and
//! graceful shutdown of both binaries on SIGTERM.

mod common;

use common::{code, seed, DbProcess, StreamClient, PATIENCE};
use login_server::accountdb::accounts::Accounts;
use login_server::accountdb::client::RemoteStore;
use login_server::accountdb::store::StoreError;
use login_server::metrics::Metrics;
use login_server::protocol::accountdb::{DbRequest, DbResponse};
use login_server::LoginServer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn account_db_killed_under_load_answers_7_then_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let db_addr = db.addr;
    let mut config = db.config();
    config.workers = Some(4);
    config.db_pool = Some(4);
    config.db_timeout = Duration::from_millis(500);
    let server = LoginServer::spawn(config).unwrap();
    let addr = server.local_addr();
    assert_eq!(code(addr, "register", "steady", "password1"), 4);

    let stop = Arc::new(AtomicBool::new(false));
    let registered = Arc::new(Mutex::new(Vec::new()));
    // (register code, login code, login sent, login answered)
    let seen = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (stop, registered, seen) = (stop.clone(), registered.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let name = format!("load{t}x{i}");
                    let registering = code(addr, "register", &name, "password1");
                    if registering == 4 {
                        registered.lock().unwrap().push(name);
                    }
                    let sent = Instant::now();
                    let login = code(addr, "login", "steady", "password1");
                    let answered = Instant::now();
                    seen.lock()
                        .unwrap()
                        .push((registering, login, sent, answered));
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    db.kill();
    let killed = Instant::now();
    // Down long enough for whole requests (each waits up to the 500 ms deadline) to fall inside.
    std::thread::sleep(Duration::from_millis(2500));
    let restarting = Instant::now(); // nothing can be served from before this
    let db = DbProcess::start(dir.path(), &db_addr.to_string());
    let back = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for thread in load {
        thread.join().unwrap();
    }

    let seen = seen.lock().unwrap();
    for &(registering, login, _, _) in seen.iter() {
        assert!(
            matches!(registering, 4 | 7),
            "register answered {registering}"
        );
        assert!(
            matches!(login, 3 | 7),
            "login answered {login}: never 1 or 2 for a missing store"
        );
    }
    let down: Vec<_> = seen
        .iter()
        .filter(|s| s.2 > killed && s.3 < restarting)
        .collect();
    assert!(
        !down.is_empty(),
        "requests were made while account-db was down"
    );
    assert!(down.iter().all(|s| s.1 == 7), "answered 7 while down");
    let resumed = seen.iter().any(|s| s.2 > back && s.1 == 3);
    assert!(
        resumed,
        "service resumed by itself after account-db came back"
    );

    // Every acknowledged registration is in the store.
    let registered = registered.lock().unwrap();
    assert!(!registered.is_empty());
    let store = RemoteStore::new(&db.client_config(), Metrics::default());
    for name in registered.iter() {
        assert!(
            store.find(name).unwrap().is_some(),
            "{name} was answered 4 but is missing"
        );
    }
}

/// The real remote store, with a fault injected: a request naming "panic-button" panics.
struct PanicButton(RemoteStore);

impl Accounts for PanicButton {
    fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError> {
        if let DbRequest::Login { username, .. } = request {
            assert_ne!(username, "panic-button", "injected fault");
        }
        self.0.call(request)
    }
}

#[test]
fn a_panic_answers_7_and_the_worker_pool_keeps_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let secret = login_server::auth::secret::Secret::generate();
    let db = common::start_db(dir.path(), &secret);
    let mut config = common::config(db.local_addr(), &secret);
    config.workers = Some(1); // a lost worker would leave none
    let metrics = Metrics::default();
    let store = Arc::new(PanicButton(RemoteStore::new(
        &config
            .db_client(vec![db.local_addr().into()], secret.clone())
            .expect("no TLS files to load"),
        metrics.clone(),
    )));
    let server = LoginServer::spawn_with_store(config, store, Arc::new(Vec::new), metrics).unwrap();
    for _ in 0..3 {
        let reply = seed(server.local_addr(), "login", "panic-button", "password1");
        assert_eq!(reply["code"], 7, "{reply}");
        assert!(reply["info"].as_str().unwrap().contains("internal error"));
    }
    // In the stream form the connection survives the panic too.
    let mut client = StreamClient::new(server.local_addr());
    client.send(b"{\"OP\":\"login\",\"username\":\"panic-button\",\"password\":\"password1\"}\n{\"OP\":\"register\",\"username\":\"calm\",\"password\":\"password1\"}\n");
    assert_eq!(client.recv()["code"], 7);
    assert_eq!(client.recv()["code"], 4);
    assert_eq!(code(server.local_addr(), "login", "calm", "password1"), 3);
}

/// Wait for a child with a deadline; its exit status.
fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_answers_what_was_accepted_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // Hashes costly enough that work is still queued when the signal comes.
    let command = common::login_server_command([
        "--hash-threads".as_ref(),
        "1".as_ref(),
        "--hash-params".as_ref(),
        "4096,1,1".as_ref(),
        "--shutdown-timeout".as_ref(),
        "60".as_ref(),
        "--data".as_ref(),
        dir.path().as_os_str(),
    ]);
    let (mut child, addr) = common::spawn_listening(command);
    assert_eq!(code(addr, "register", "patient", "password1"), 4);
    // Queue up work: 3 connections with 10 pipelined logins each.
    let mut clients: Vec<StreamClient> = (0..3).map(|_| StreamClient::new(addr)).collect();
    let batch =
        b"{\"OP\":\"login\",\"username\":\"patient\",\"password\":\"password1\"}\n".repeat(10);
    for client in &mut clients {
        client.send(&batch);
    }
    std::thread::sleep(Duration::from_millis(50));
    // The signal must find work not yet answered, or the test proves nothing.
    let unanswered = clients
        .iter_mut()
        .map(|c| c.nothing_yet())
        .filter(|&idle| idle)
        .count();
    assert!(
        unanswered > 0,
        "every connection was answered before the signal"
    );
    common::signal(child.id(), "TERM");
    for client in &mut clients {
        for _ in 0..10 {
            assert_eq!(client.recv()["code"], 3);
        }
    }
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn account_db_exits_0_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DbProcess::start(dir.path(), "127.0.0.1:0");
        let server = LoginServer::spawn(db.config()).unwrap();
        assert_eq!(
            code(server.local_addr(), "register", "before", "password1"),
            4
        );
        common::signal(db.child.id(), sig);
        let status = wait_exit(&mut db.child);
        assert!(status.success(), "{sig}: {status:?}");
    }
}

/// A TCP relay between login-server and account-db that, once, lets a `create` through to
/// account-db and then cuts the connection instead of relaying the reply: the outcome of that
/// registration is unknown to login-server.
fn lossy_relay(db: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(db) else {
                return;
            };
            let cut = Arc::new(AtomicBool::new(false));
            let (armed, cut_up) = (armed.clone(), cut.clone());
            let (mut to_server, from_client) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                for line in BufReader::new(from_client).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("\"op\":\"create\"") && armed.swap(false, Ordering::SeqCst) {
                        cut_up.store(true, Ordering::SeqCst);
                    }
                    if writeln!(to_server, "{line}").is_err() {
                        break;
                    }
                }
            });
            let mut to_client = client;
            std::thread::spawn(move || {
                for line in BufReader::new(server.try_clone().unwrap()).lines() {
                    let Ok(line) = line else { break };
                    if cut.load(Ordering::SeqCst) {
                        let _ = to_client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                    if writeln!(to_client, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_registration_whose_reply_was_lost_is_resolved_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = login_server::auth::secret::Secret::generate();
    let db = common::start_db(dir.path(), &secret);
    let server = LoginServer::spawn(common::config(lossy_relay(db.local_addr()), &secret)).unwrap();
    // account-db stored it, its reply was lost; the repeated create (same request id) learns
    // that, so the player is told 4, not 5 for their own account, and not 7.
    assert_eq!(
        code(server.local_addr(), "register", "Unlucky", "password1"),
        4
    );
    assert_eq!(
        code(server.local_addr(), "login", "unlucky", "password1"),
        3
    );
    // One account: another registration of the name is refused.
    assert_eq!(
        code(server.local_addr(), "register", "UNLUCKY", "password2"),
        5
    );
}
