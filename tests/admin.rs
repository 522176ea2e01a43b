//! `account-db admin` against both stores: every subcommand through the library, and the
//! binary's own command line on SQLite.

mod common;

use login_server::accountdb::admin::{run, Admin, AdminError, Reply};
use login_server::accountdb::store::{schema, Account, PostgresStore, SqliteStore, Store};
use login_server::accountdb::throttling;
use login_server::auth::password::{HashParams, Hasher, Memory};
use login_server::protocol::accountdb::Login;
use login_server::throttle::{Policy, Unknown};
use std::process::Command;
use std::time::Duration;

/// Run `action`, which must change something: what it prints.
fn admin(store: &dyn Store, action: Admin) -> Result<String, AdminError> {
    run(store, &action, || None).map(|reply| match reply {
        Reply::Done(out) => out,
        Reply::Already(note) => panic!("{action:?} changed nothing: {note}"),
    })
}

fn name(name: &str) -> String {
    name.to_string()
}

/// What every store must let an operator do.
fn admin_conformance(store: &dyn Store) {
    let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
    let memory = &mut Memory::default();
    for (user, password) in [
        ("Admin-Alice", "alice-pass"),
        ("Admin-Bob", "bob-pass1"),
        ("Zed", "zed-pass1"),
    ] {
        let hash = hasher.hash(password, memory).unwrap();
        store.create(&Account::new(user, &hash), user).unwrap();
    }
    assert_eq!(admin(store, Admin::Count).unwrap(), "3\n");
    let listed = admin(
        store,
        Admin::List {
            prefix: name("ADMIN-"),
            limit: 10,
            costly: false,
            conflicts: false,
            hash_params: HashParams::default(),
        },
    )
    .unwrap();
    assert!(
        listed.contains("\tAdmin-Alice\n") && listed.contains("\tAdmin-Bob\n"),
        "{listed}"
    );
    assert!(!listed.contains("Zed"), "{listed}");
    let one = admin(
        store,
        Admin::List {
            prefix: name(""),
            limit: 1,
            costly: false,
            conflicts: false,
            hash_params: HashParams::default(),
        },
    )
    .unwrap();
    assert_eq!(one.lines().count(), 1, "{one}");
    // Costly at the cheapest parameters: a hash asking 8 times their memory, and bcrypt 13.
    let costly_hash = Hasher::new("64,1,1".parse().unwrap())
        .unwrap()
        .hash("carl-pass1", memory)
        .unwrap();
    store
        .create(&Account::new("Costly-Carl", &costly_hash), "carl")
        .unwrap();
    let bcrypt = bcrypt::hash("bea-pass1", 13).unwrap();
    store
        .create(&Account::new("Bcrypt-Bea", &bcrypt), "bea")
        .unwrap();
    let costly = |limit| {
        admin(
            store,
            Admin::List {
                prefix: name(""),
                limit,
                costly: true,
                conflicts: false,
                hash_params: HashParams::CHEAPEST,
            },
        )
        .unwrap()
    };
    let listed = costly(10);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains("\tCostly-Carl\t$argon2id$v=19$m=64,t=1,p=1"),
        "{listed}"
    );
    assert!(listed.contains("\tBcrypt-Bea\t$2b$13\n"), "{listed}");
    assert_eq!(costly(1).lines().count(), 1);
    assert!(store.delete("costly-carl").unwrap() && store.delete("bcrypt-bea").unwrap());
    let conflicts = Admin::List {
        prefix: name(""),
        limit: 10,
        costly: false,
        conflicts: true,
        hash_params: HashParams::default(),
    };
    assert_eq!(admin(store, conflicts).unwrap(), "", "no look-alikes here");

    // Locked by failures, shown so, and unlocked for every login-server.
    let t = Policy::default().failures();
    for _ in 0..5 {
        throttling::failed(
            store,
            Some("admin-alice"),
            None,
            &t,
            login_server::clock::now_ms(),
        )
        .unwrap();
    }
    let locked = admin(
        store,
        Admin::Show {
            name: name("ADMIN-ALICE"),
        },
    )
    .unwrap();
    assert!(locked.contains("name\tAdmin-Alice"), "{locked}");
    assert!(locked.contains("locked\tfor "), "{locked}");
    assert!(locked.contains("m=8,t=1,p=1"), "{locked}");
    // Times in UTC, and a state never reached said as such, not as the epoch.
    let year = |text: &str| text.contains("\tcreated") || text.contains(" UTC");
    assert!(
        year(&locked) && locked.contains("sessions\tnever voided"),
        "{locked}"
    );
    assert!(!locked.contains("unix"), "{locked}");
    assert!(matches!(
        throttling::login(
            store,
            "admin-alice",
            None,
            &t,
            Unknown::Address,
            login_server::clock::now_ms()
        )
        .unwrap(),
        Login::Locked(_)
    ));
    assert_eq!(
        admin(
            store,
            Admin::Unlock {
                name: name("admin-alice")
            }
        )
        .unwrap(),
        "unlocked Admin-Alice\n"
    );
    assert!(matches!(
        throttling::login(
            store,
            "admin-alice",
            None,
            &t,
            Unknown::Address,
            login_server::clock::now_ms()
        )
        .unwrap(),
        Login::Open { .. }
    ));
    let shown = admin(
        store,
        Admin::Show {
            name: name("admin-alice"),
        },
    )
    .unwrap();
    assert!(shown.contains("locked\tno"), "{shown}");
    assert!(
        shown.contains("last login\tnone known"),
        "an unlock is no login: {shown}"
    );
    throttling::succeeded(
        store,
        "admin-alice",
        None,
        false,
        login_server::clock::now_ms(),
    )
    .unwrap();
    let shown = admin(
        store,
        Admin::Show {
            name: name("admin-alice"),
        },
    )
    .unwrap();
    assert!(
        shown.contains("last login\t20") && shown.contains(" UTC (to the minute)"),
        "{shown}"
    );

    // A new password, and every session before it void.
    let id = store.find("admin-bob").unwrap().unwrap().id;
    let set = Admin::SetPassword {
        name: name("admin-bob"),
        password: Some(name("brand-new-pass")),
        hash_params: HashParams::CHEAPEST,
    };
    admin(store, set).unwrap();
    let bob = store.find("admin-bob").unwrap().unwrap();
    assert!(hasher.verify("brand-new-pass", &bob.hash, memory).unwrap());
    assert!(!hasher.verify("bob-pass1", &bob.hash, memory).unwrap());
    assert!(
        store
            .session(id, "any", None)
            .unwrap()
            .unwrap()
            .sessions_after
            > 0
    );
    // Without a password and without a terminal: an error that says so; nothing changed.
    let asked = run(
        store,
        &Admin::SetPassword {
            name: name("zed"),
            password: None,
            hash_params: HashParams::CHEAPEST,
        },
        || None,
    );
    assert!(matches!(asked, Err(AdminError::NoPassword)), "{asked:?}");

    // Banned: the store says so (sessions void), and lifted again.
    let ban = Admin::Ban {
        name: name("admin-alice"),
        duration: Some(Duration::from_secs(3600)),
        reason: name("cheating"),
    };
    assert!(admin(store, ban)
        .unwrap()
        .starts_with("banned Admin-Alice until"));
    let alice = store.find("admin-alice").unwrap().unwrap();
    let until = alice.ban.as_ref().unwrap().until_ms;
    assert_eq!(alice.ban.unwrap().reason, "cheating");
    assert!(
        until > login_server::clock::now_ms() + 3_500_000
            && until <= login_server::clock::now_ms() + 3_600_000
    );
    let shown = admin(
        store,
        Admin::Show {
            name: name("admin-alice"),
        },
    )
    .unwrap();
    assert!(
        shown.contains("banned\tuntil") && shown.contains("cheating"),
        "{shown}"
    );
    let long = Admin::Ban {
        name: name("admin-alice"),
        duration: None,
        reason: "x".repeat(201),
    };
    assert!(matches!(
        admin(store, long),
        Err(AdminError::ReasonTooLong(201))
    ));
    admin(
        store,
        Admin::Unban {
            name: name("ADMIN-ALICE"),
        },
    )
    .unwrap();
    assert!(store.find("admin-alice").unwrap().unwrap().ban.is_none());
    // Deleted: gone, sessions void, the name free again.
    assert!(admin(store, Admin::Delete { name: name("ZED") })
        .unwrap()
        .starts_with("deleted Zed"));
    assert!(store.find("zed").unwrap().is_none());
    assert_eq!(admin(store, Admin::Count).unwrap(), "2\n");
    store.create(&Account::new("zed", "h"), "again").unwrap();
    assert!(matches!(
        admin(
            store,
            Admin::Show {
                name: name("nobody")
            }
        ),
        Err(AdminError::NoSuchAccount(_))
    ));
    rename_conformance(store);
}

/// `admin rename`: the account keeps its id, hash and sessions, its lock moves with it, the old
/// name is free; a held name, a look-alike, a name against the rules and a missing account are
/// refused with nothing changed.
fn rename_conformance(store: &dyn Store) {
    let rename = |old: &str, new: &str| Admin::Rename {
        old: name(old),
        new: name(new),
        rules: Default::default(),
    };
    store
        .create(&Account::new("Dan", "dan-hash"), "dan")
        .unwrap();
    let before = store.find("dan").unwrap().unwrap();
    store.void_sessions(before.id, 1234, None).unwrap();
    // Locked under its old name.
    let failures = Policy::default().failures();
    for _ in 0..failures.max_failures {
        throttling::failed(
            store,
            Some("Dan"),
            None,
            &failures,
            login_server::clock::now_ms(),
        )
        .unwrap();
    }
    assert!(throttling::record(store, "Dan")
        .unwrap()
        .locked(login_server::clock::now_ms())
        .is_some());
    let refused = |new: &str| run(store, &rename("DAN", new), || None);
    assert!(
        matches!(refused("Admin-Bob"), Err(AdminError::NameTaken(n, h)) if n == "Admin-Bob" && h == "Admin-Bob")
    );
    assert!(matches!(
        refused("ADMIN-BOB"),
        Err(AdminError::NameTaken(..))
    ));
    // A look-alike (`rn` for `m`) of a held name.
    assert!(matches!(
        refused("Adrnin-Bob"),
        Err(AdminError::NameTaken(..))
    ));
    assert!(matches!(refused("a"), Err(AdminError::InvalidName(_))));
    assert!(matches!(refused("dan\nx"), Err(AdminError::InvalidName(_))));
    let missing = run(store, &rename("nobody", "someone"), || None);
    assert!(
        matches!(missing, Err(AdminError::NoSuchAccount(_))),
        "{missing:?}"
    );
    assert_eq!(store.find("dan").unwrap().unwrap(), before);

    let done = admin(store, rename("dan", "Dan_old")).unwrap();
    assert_eq!(done, "renamed Dan to Dan_old; the name Dan is free\n");
    let after = store.find("dan_old").unwrap().unwrap();
    assert_eq!((after.id, &after.hash), (before.id, &before.hash));
    assert_eq!(after.username, "Dan_old");
    let session = store.session(before.id, "any", None).unwrap().unwrap();
    assert_eq!(
        (session.username.as_str(), session.sessions_after),
        ("Dan_old", 1234)
    );
    // The lock went with the account; the old name starts afresh, and is free.
    let now = login_server::clock::now_ms();
    assert!(throttling::record(store, "Dan_old")
        .unwrap()
        .locked(now)
        .is_some());
    assert_eq!(
        throttling::record(store, "dan").unwrap(),
        Default::default()
    );
    assert!(store.find("dan").unwrap().is_none());
    let created = store
        .create(&Account::new("dan", "other-hash"), "dan-2")
        .unwrap();
    assert_eq!(created, login_server::accountdb::store::Created::New);
    // Another case of its own name: allowed; the same spelling: nothing to do.
    admin(store, rename("dan_old", "DAN_OLD")).unwrap();
    assert_eq!(store.find("dan_old").unwrap().unwrap().username, "DAN_OLD");
    let same = run(store, &rename("dan_old", "DAN_OLD"), || None).unwrap();
    assert!(matches!(same, Reply::Already(_)), "{same:?}");
}

#[test]
fn sqlite_store_can_be_administered() {
    let dir = tempfile::tempdir().unwrap();
    admin_conformance(&SqliteStore::open(dir.path()).unwrap());
}

#[test]
fn postgres_store_can_be_administered() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    admin_conformance(&PostgresStore::open(&db.url, 4, Duration::from_secs(5)).unwrap());
}

/// `account-db --data DIR admin ARGS`: whether it succeeded, its stdout and its stderr.
fn admin_cli(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_account-db"))
        .arg("--data")
        .arg(dir)
        .arg("admin")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_admin_command_line_works_on_a_running_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::DbProcess::start(dir.path(), "127.0.0.1:0");
    let server = login_server::LoginServer::spawn(db.config()).unwrap();
    assert_eq!(
        common::code(server.local_addr(), "register", "Cli-User", "password1"),
        4
    );
    let admin = |args: &[&str]| admin_cli(dir.path(), args);
    assert_eq!(admin(&["count"]).1, "1\n");
    let (ok, shown, _) = admin(&["show", "cli-user"]);
    assert!(ok && shown.contains("name\tCli-User"), "{shown}");
    let (ok, said, log) = admin(&[
        "set-password",
        "cli-user",
        "--password",
        "changed-pass",
        "--hash-params",
        "8,1,1",
    ]);
    assert!(ok, "{said} {log}");
    assert!(
        log.contains("admin: password set"),
        "each change is logged: {log}"
    );
    assert_eq!(
        common::code(server.local_addr(), "login", "cli-user", "changed-pass"),
        3
    );
    let (ok, _, log) = admin(&["show", "nobody"]);
    assert!(!ok && log.contains("no account named"), "{log}");
}

#[test]
fn the_schema_is_contracted_only_on_request_and_once_no_older_account_db_was_seen() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::DbProcess::start(dir.path(), "127.0.0.1:0");
    let admin = |args: &[&str]| admin_cli(dir.path(), &[&["schema"], args].concat());
    // The running account-db records itself at start.
    let me = format!(":{} {}", db.addr.port(), schema::CODE_VERSION);
    common::eventually(common::PATIENCE, "the account-db in peers", || {
        admin(&["show"]).1.contains(&me)
    });
    let (ok, shown, _) = admin(&["show"]);
    assert!(ok && shown.contains("contractions done 0 of 1"), "{shown}");
    assert!(
        shown.contains("pending contraction 1 (needs 0.3.0)"),
        "{shown}"
    );
    // An older account-db seen 59 s ago holds the contraction back.
    let file = rusqlite::Connection::open(dir.path().join("accounts.sqlite3")).unwrap();
    let seen = |ago_ms: i64| {
        file.execute(
            "INSERT OR REPLACE INTO peers VALUES ('old-host:7000', '0.2.9', ?1)",
            [login_server::clock::now_ms() - ago_ms],
        )
        .unwrap();
    };
    seen(59_000);
    let (ok, _, said) = admin(&["contract"]);
    assert!(!ok, "refused: {said}");
    assert!(
        said.contains("old-host:7000 (0.2.9)") && said.contains("at 0.3.0 or later"),
        "{said}"
    );
    assert!(admin(&["show"]).1.contains("contractions done 0 of 1"));
    // Not seen for 61 s: gone.
    seen(61_000);
    // And with no account-db of this release seen either (only releases too old to record
    // themselves may be serving): refused too.
    file.execute(
        "UPDATE peers SET last_seen_ms = 0 WHERE instance != 'old-host:7000'",
        [],
    )
    .unwrap();
    drop(db);
    let (ok, _, said) = admin(&["contract"]);
    assert!(!ok && said.contains("none recorded itself"), "{said}");
    let db = common::DbProcess::start(dir.path(), "127.0.0.1:0");
    common::eventually(common::PATIENCE, "the account-db in peers again", || {
        admin(&["show"])
            .1
            .contains(&format!(":{} {}", db.addr.port(), schema::CODE_VERSION))
    });
    let (ok, done, said) = admin(&["contract"]);
    assert!(ok && done.contains("contraction 1 done"), "{done} {said}");
    let (ok, _, said) = admin(&["contract"]);
    assert!(!ok && said.contains("no contraction is pending"), "{said}");
    let (_, shown, _) = admin(&["show"]);
    assert!(
        shown.contains("contractions done 1 of 1") && shown.contains("min code version 0.3.0"),
        "{shown}"
    );
}

#[test]
fn turkish_dotted_and_dotless_i_look_alike_and_old_pairs_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    use login_server::accountdb::store::Created;
    assert_eq!(
        store.create(&Account::new("istanbul", "h"), "a").unwrap(),
        Created::New
    );
    // Folded apart (İ folds to i and a combining dot), but refused as a look-alike.
    assert_eq!(
        store
            .create(&Account::new("\u{130}stanbul", "h"), "b")
            .unwrap(),
        Created::Exists
    );
    assert_eq!(
        store.create(&Account::new("admin", "h"), "c").unwrap(),
        Created::New
    );
    assert_eq!(
        store
            .create(&Account::new("adm\u{131}n", "h"), "d")
            .unwrap(),
        Created::Exists,
        "a dotless ı looks like i"
    );
    // A pair registered before the rule: made here by hand, as an older build left it.
    assert_eq!(
        store.create(&Account::new("Ankara", "h"), "e").unwrap(),
        Created::New
    );
    let db = rusqlite::Connection::open(dir.path().join("accounts.sqlite3")).unwrap();
    db.execute(
        "UPDATE accounts SET skeleton = (SELECT skeleton FROM accounts WHERE username = 'istanbul')
         WHERE username = 'Ankara'",
        [],
    )
    .unwrap();
    let listed = admin(
        &store,
        Admin::List {
            prefix: name(""),
            limit: 100,
            costly: false,
            conflicts: true,
            hash_params: HashParams::default(),
        },
    )
    .unwrap();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .collect();
    assert_eq!(names, ["istanbul", "Ankara"], "{listed}");
    // Both keep logging in: each is found by its own name.
    assert_eq!(store.find("ankara").unwrap().unwrap().username, "Ankara");
    assert_eq!(
        store.find("ISTANBUL").unwrap().unwrap().username,
        "istanbul"
    );
}
