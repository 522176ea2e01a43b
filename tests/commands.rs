//! account-db's commands, through the binary: each one that did not do what it was asked exits
//! non-zero and says why on stderr; none creates a store or a secret by accident.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `account-db ARGS` with no terminal: its output.
fn account_db(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_account-db"))
        .args(args)
        .env_remove("ACCOUNT_DB_SECRET")
        .stdin(Stdio::null())
        .output()
        .expect("run account-db")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `account-db --data DATA import --create FILE`, hashing at the cheapest parameters.
fn import_creating(data: &Path, file: &Path) -> Output {
    account_db(&[
        "--data",
        path(data),
        "import",
        "--create",
        "--hash-params",
        "8,1,1",
        path(file),
    ])
}

/// A store with one account, `Owner`, made by `import --create`.
fn store_with_owner(dir: &Path) {
    let file = dir.join("owner.jsonl");
    std::fs::write(
        &file,
        "{\"username\":\"Owner\",\"password\":\"password1\"}\n",
    )
    .unwrap();
    let made = import_creating(&dir.join("data"), &file);
    assert!(made.status.success(), "{made:?}");
}

#[test]
fn admin_and_import_refuse_a_store_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("dta");
    let count = account_db(&["--data", path(&typo), "admin", "count"]);
    assert!(!count.status.success(), "{count:?}");
    assert!(
        text(&count.stderr).contains("no account store"),
        "{count:?}"
    );
    assert!(text(&count.stdout).is_empty(), "prints no count: {count:?}");
    let file = dir.path().join("players.jsonl");
    std::fs::write(
        &file,
        "{\"username\":\"Anna\",\"password\":\"pw-anna-1\"}\n",
    )
    .unwrap();
    let imported = account_db(&["--data", path(&typo), "import", path(&file)]);
    assert!(!imported.status.success(), "{imported:?}");
    assert!(text(&imported.stderr).contains("--create"), "{imported:?}");
    assert!(!typo.join("accounts.sqlite3").exists(), "no store was made");
    // Told to create one, but the file cannot be read: still no store.
    let missing = dir.path().join("no-such.jsonl");
    let failed = account_db(&["--data", path(&typo), "import", "--create", path(&missing)]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(!typo.join("accounts.sqlite3").exists(), "no store was made");

    // Told to, they create it; the store flags may come after the subcommand.
    store_with_owner(dir.path());
    let data = dir.path().join("data");
    let count = account_db(&["admin", "count", "--data", path(&data)]);
    assert!(count.status.success(), "{count:?}");
    assert_eq!(text(&count.stdout), "1\n");
    let created = account_db(&["admin", "--create", "count", "--data", path(&typo)]);
    assert_eq!(text(&created.stdout), "0\n", "{created:?}");
}

#[test]
fn admin_and_import_refuse_a_postgres_database_without_a_store() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let count = account_db(&["admin", "count", "--store", &db.url]);
    assert!(!count.status.success(), "{count:?}");
    assert!(
        text(&count.stderr).contains("no account store"),
        "{count:?}"
    );
    let created = account_db(&["admin", "count", "--create", "--store", &db.url]);
    assert!(created.status.success(), "{created:?}");
    assert_eq!(text(&created.stdout), "0\n");
    // No NOTICE about a relation that exists already, at creation or after.
    let again = account_db(&["admin", "count", "--store", &db.url]);
    assert_eq!(text(&again.stdout), "0\n", "{again:?}");
    for output in [&created, &again] {
        assert!(!text(&output.stderr).contains("NOTICE"), "{output:?}");
    }
}

#[test]
fn admin_commands_that_change_nothing_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    store_with_owner(dir.path());
    let data = dir.path().join("data");
    let admin = |args: &[&str]| {
        let mut all = vec!["--data", path(&data), "admin"];
        all.extend_from_slice(args);
        account_db(&all)
    };
    let refused = |output: &Output, why: &str| {
        assert!(!output.status.success(), "{output:?}");
        assert!(text(&output.stderr).contains(why), "{why}: {output:?}");
    };
    refused(&admin(&["set-password", "owner"]), "no password");
    let long = "x".repeat(300);
    refused(
        &admin(&["ban", "owner", "--reason", &long]),
        "at most 200 bytes",
    );
    refused(
        &admin(&["ban", "owner", "--reason", "cheating\nunbanned by admin"]),
        "control characters",
    );
    refused(&admin(&["delete", "nobody-here"]), "no account named");
    refused(
        &admin(&["ban", "owner", "--reason", "fair \u{202e}gnitaehc"]),
        "direction marks",
    );
    // Shown as nothing to the player: a zero-width space, a BOM, a word joiner, a tag.
    for hidden in [
        "\u{200b}",
        "\u{feff}",
        "\u{2060}",
        "\u{e0041}",
        "\u{fff9}",
        "\u{e000}",
    ] {
        let reason = format!("spam{hidden}ming");
        refused(&admin(&["ban", "owner", "--reason", &reason]), "invisible");
    }
    refused(&admin(&["ban", "owner", "--for", "0"]), "more than 0 s");
    let shown = admin(&["show", "owner"]);
    assert!(text(&shown.stdout).contains("banned\tno"), "{shown:?}");

    // Asking for a state that holds already succeeds, and says so.
    for (args, said) in [
        (&["unban", "owner"][..], "not banned"),
        (&["unlock", "owner"][..], "not locked"),
    ] {
        let output = admin(args);
        assert!(output.status.success(), "{output:?}");
        assert!(text(&output.stderr).contains(said), "{output:?}");
    }
    let banned = admin(&["ban", "owner", "--reason", "cheating"]);
    assert!(banned.status.success(), "{banned:?}");
    // A banned account's password is still the operator's to set (it once said so and kept
    // the old one).
    let stored_hash = || {
        login_server::accountdb::store::SqliteStore::open(&data)
            .and_then(|s| login_server::accountdb::store::Store::find(&s, "owner"))
            .unwrap()
            .unwrap()
            .hash
    };
    let before = stored_hash();
    let set = admin(&[
        "set-password",
        "owner",
        "--password",
        "new-pass-9",
        "--hash-params",
        "8,1,1",
    ]);
    assert!(set.status.success(), "{set:?}");
    let after = stored_hash();
    assert_ne!(before, after, "the hash changed");
    assert!(after.starts_with("$argon2id$v=19$m=8,t=1"), "{after}");
    let unbanned = admin(&["unban", "owner"]);
    assert!(
        text(&unbanned.stdout).contains("unbanned Owner"),
        "{unbanned:?}"
    );
}

#[test]
fn import_exit_status_says_whether_every_line_went_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("players.jsonl");
    let lines = [
        r#"{"username":"Anna","password":"pw-anna-1"}"#,
        r#"{"username":"Empty","password":""}"#,
        r#"{"username":"Blank","password":"  \t "}"#,
        r#"{"username":"Short","password":"1"}"#,
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let import = |file: &Path| import_creating(&data, file);
    let some_rejected = import(&file);
    assert_eq!(some_rejected.status.code(), Some(3), "{some_rejected:?}");
    let out = text(&some_rejected.stdout);
    assert!(out.contains("line 2: rejected: an empty"), "{out}");
    assert!(out.contains("line 3: rejected: an empty"), "{out}");
    assert!(
        out.contains("imported 2, already present 0, held here 0, duplicates 0, rejected 2"),
        "{out}"
    );
    // Every line in or present: 0.
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, format!("{}\n", lines[0])).unwrap();
    let present = import(&good);
    assert_eq!(present.status.code(), Some(0), "{present:?}");
    assert!(text(&present.stdout).contains("already present 1"));
    // It could not run: 1.
    let missing = import(&dir.path().join("no-such-file.jsonl"));
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
}

#[test]
fn an_address_that_cannot_be_bound_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    // One address for both: refused before anything is made.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let free = common::free_port().to_string();
    let both = account_db(&[
        "--data",
        path(&data),
        "--listen",
        &free,
        "--metrics-listen",
        &free,
    ]);
    assert!(!both.status.success(), "{both:?}");
    assert!(!data.exists(), "account-db created {}", data.display());
    for flag in ["--listen", "--metrics-listen"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args = vec!["--data", path(&data), flag, &taken];
        if flag == "--metrics-listen" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let output = account_db(&args);
        assert!(!output.status.success(), "{output:?}");
        assert!(text(&output.stderr).contains(&taken), "{flag}: {output:?}");
        assert!(
            !data.exists(),
            "{flag}: account-db created {}",
            data.display()
        );
        // login-server's embedded account-db likewise.
        let output = Command::new(env!("CARGO_BIN_EXE_login-server"))
            .args(["--data", path(&data), "--listen", "127.0.0.1:0"])
            .args([flag, &taken])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{output:?}");
        assert!(
            !data.exists(),
            "{flag}: login-server created {}",
            data.display()
        );
    }
}

#[test]
fn admin_and_import_beside_a_running_account_db_leave_its_store_whole() {
    // A check at open that opened and closed the database file dropped the running
    // account-db's SQLite locks: the next admin command then took itself for the last user,
    // checkpointed and deleted the live WAL, and later writes corrupted the store.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let db = common::DbProcess::start(data, "127.0.0.1:0");
    let server = login_server::LoginServer::spawn(db.config()).unwrap();
    let login = server.local_addr();
    assert_eq!(common::code(login, "register", "Live1", "password1"), 4);
    let wal = data.join("accounts.sqlite3-wal");
    assert!(wal.exists());
    let count = || text(&account_db(&["--data", path(data), "admin", "count"]).stdout);
    assert_eq!(count(), "1\n");
    assert!(wal.exists(), "the running account-db's WAL was deleted");
    let file = dir.path().join("more.jsonl");
    std::fs::write(&file, "{\"username\":\"Imported1\"}\n").unwrap();
    let imported = account_db(&["--data", path(data), "import", path(&file)]);
    assert!(imported.status.success(), "{imported:?}");
    assert!(wal.exists(), "the running account-db's WAL was deleted");
    for n in 2..6 {
        let name = format!("Live{n}");
        assert_eq!(common::code(login, "register", &name, "password1"), 4);
        assert_eq!(
            count(),
            format!("{}\n", n + 1),
            "every acknowledged account counted"
        );
    }
    drop(server);
    db.kill();
    // The integrity check at open passes.
    let store = login_server::accountdb::store::SqliteStore::open(data);
    assert!(store.is_ok(), "{:?}", store.err());
}
