//! Accounts: case-insensitive uniqueness, concurrent registration of one name, and
//! registrations surviving `kill -9` of either tier.

mod common;

use common::{code, seed, start, DbProcess};
use login_server::LoginServer;
use std::sync::{Arc, Barrier};

#[test]
fn names_are_unique_without_regard_to_case_and_keep_their_spelling() {
    let tiers = start();
    let addr = tiers.addr();
    assert_eq!(code(addr, "register", "MixedCase", "password1"), 4);
    for other in ["mixedcase", "MIXEDCASE", "mIxEdCaSe"] {
        assert_eq!(code(addr, "register", other, "password2"), 5, "{other}");
        let reply = seed(addr, "login", other, "password1");
        assert_eq!(reply["code"], 3);
        assert_eq!(reply["username"], "MixedCase");
    }
}

#[test]
fn sixteen_threads_registering_one_name_get_exactly_one_success() {
    let tiers = start();
    let addr = tiers.addr();
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let name = if i % 2 == 0 { "Contested" } else { "contested" };
                barrier.wait();
                code(addr, "register", name, &format!("password-{i}"))
            })
        })
        .collect();
    let mut codes: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, [vec![4], vec![5; 15]].concat());
}

#[test]
fn registrations_survive_kill_9_of_account_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let server = LoginServer::spawn(db.config()).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("durable{i}")).collect();
    for name in &names {
        assert_eq!(code(server.local_addr(), "register", name, "password1"), 4);
    }
    db.kill();
    server.shutdown();

    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let server = LoginServer::spawn(db.config()).unwrap();
    for name in &names {
        let shouted = name.to_uppercase();
        assert_eq!(code(server.local_addr(), "login", &shouted, "password1"), 3);
    }
}

#[test]
fn registrations_survive_kill_9_of_login_server_with_embedded_account_db() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().as_os_str();
    let start = || {
        common::spawn_listening(common::login_server_command([
            "--hash-params".as_ref(),
            "8,1,1".as_ref(),
            "--data".as_ref(),
            data,
        ]))
    };
    let (mut child, addr) = start();
    assert_eq!(code(addr, "register", "Phoenix", "password1"), 4);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, addr) = start();
    assert_eq!(code(addr, "login", "phoenix", "password1"), 3);
    child.kill().unwrap();
    child.wait().unwrap();
}
