//! `account-db import`: the old system's players in bulk, through the binary, then logging in
//! through a real login-server on the same store.

mod common;

use common::code;
use login_server::accountdb::store::{SqliteStore, Store};
use login_server::auth::password::{HashParams, Hasher, Memory};
use login_server::{LoginServer, LoginServerConfig};
use std::process::Command;

/// Run `account-db import --create FILE --data DIR`, which rejects some lines (exit 3): its
/// stdout.
fn import(dir: &std::path::Path, file: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_account-db"))
        .arg("--data")
        .arg(dir)
        .args(["import", "--create"])
        .arg(file)
        .args(["--hash-params", "8,1,1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn plaintext_bcrypt_and_argon2_accounts_import_once_and_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let argon2 = Hasher::new(HashParams::CHEAPEST)
        .unwrap()
        .hash("argo-pass-1", &mut Memory::default())
        .unwrap();
    let bcrypt = bcrypt::hash("bee-pass-1", 4).unwrap();
    let lines = [
        r#"{"username":"Plain","password":"pw-plain-1"}"#.to_string(),
        format!(r#"{{"username":"Bee","hash":"{bcrypt}"}}"#),
        format!(r#"{{"username":"Argo","hash":"{argon2}"}}"#),
        r#"{"username":"Reserved"}"#.to_string(),
        r#"{"username":"x","password":"123"}"#.to_string(), // today's rules would refuse it
        "not json".to_string(),
        r#"{"username":"PLAIN","password":"other"}"#.to_string(),
    ];
    let file = dir.path().join("players.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let data = dir.path().join("data");
    let first = import(&data, &file);
    assert!(
        first.contains("line 6: rejected: not an account"),
        "{first}"
    );
    assert!(
        first.contains("line 7: the same name as line 1, in some case: not imported"),
        "{first}"
    );
    assert!(
        first.contains("imported 5, already present 0, held here 0, duplicates 1, rejected 1"),
        "{first}"
    );
    let again = import(&data, &file);
    assert!(
        again.contains("imported 0, already present 5, held here 0, duplicates 1, rejected 1"),
        "{again}"
    );
    {
        let store = SqliteStore::open(&data).unwrap();
        let plain = store.find("plain").unwrap().unwrap();
        assert!(plain.hash.starts_with("$argon2id$") && !plain.hash.contains("pw-plain-1"));
    }

    let server = LoginServer::spawn(LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: data.clone(),
        hash_params: HashParams::CHEAPEST,
        ..LoginServerConfig::default()
    })
    .unwrap();
    let addr = server.local_addr();
    assert_eq!(code(addr, "login", "plain", "pw-plain-1"), 3);
    assert_eq!(code(addr, "login", "Argo", "argo-pass-1"), 3);
    assert_eq!(code(addr, "login", "Bee", "bee-pass-2"), 2);
    assert_eq!(code(addr, "login", "bee", "bee-pass-1"), 3);
    assert_eq!(code(addr, "login", "x", "123"), 3, "old rules, old account");
    // A reserved name is taken; without --legacy-db nobody can log in under it.
    assert_eq!(code(addr, "register", "reserved", "password1"), 5);
    assert_eq!(code(addr, "login", "Reserved", "password1"), 1);
    server.shutdown();
    // The bcrypt hash was replaced by argon2id on its first login.
    let store = SqliteStore::open(&data).unwrap();
    let bee = store.find("bee").unwrap().unwrap();
    assert!(bee.hash.starts_with("$argon2id$"), "{}", bee.hash);
}

#[test]
fn registrations_are_served_while_an_import_writes() {
    // An import writes in transactions of at most 100 ms: a registration through account-db
    // meanwhile waits for one at most, well within its deadline, and is never answered 7.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = common::DbProcess::start(&data, "127.0.0.1:0");
    let server = LoginServer::spawn(db.config()).unwrap();
    let addr = server.local_addr();
    let file = dir.path().join("names.jsonl");
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("{{\"username\":\"imported{i}\"}}"))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut import = Command::new(env!("CARGO_BIN_EXE_account-db"))
        .arg("--data")
        .arg(&data)
        .arg("import")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut registered = 0;
    while import.try_wait().unwrap().is_none() {
        let name = format!("player{registered}");
        assert_eq!(code(addr, "register", &name, "password1"), 4, "{name}");
        registered += 1;
    }
    let output = import.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("imported 20000,"), "{out}");
    assert!(registered > 0, "the import ended before any registration");
    drop(server);
    db.kill();
    let store = SqliteStore::open(&data).unwrap();
    assert_eq!(store.count().unwrap(), 20_000 + registered);
}
