//! One conformance suite for every `Store` backend: SQLite, and PostgreSQL on a database of
//! its own (skipped, with a line saying so, where no PostgreSQL answers and REQUIRE_POSTGRES is
//! not set).

mod common;

use login_server::accountdb::store::{
    schema, Account, Created, PostgresStore, Revocation, SessionState, SqliteStore, Store,
    StoreError, StoreUrl, REVOKED_PER_ACCOUNT,
};
use login_server::auth::names;
use login_server::clock::{now_ms, Millis};
use login_server::throttle::Record;
use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

fn account(name: &str) -> Account {
    Account::new(name, &format!("hash-of-{name}"))
}

/// What every store must do.
fn conformance(store: Arc<dyn Store>) {
    store.ping().unwrap();
    assert!(store.find("alice").unwrap().is_none());
    assert_eq!(store.create(&account("Alice"), "r1").unwrap(), Created::New);
    // Taken in any case, and by look-alikes.
    for taken in ["ALICE", "alice", "ＡＬＩＣＥ", "\u{0430}lice"] {
        assert_eq!(
            store.create(&account(taken), "r2").unwrap(),
            Created::Exists,
            "{taken}"
        );
    }
    let alice = store.find("aLiCe").unwrap().unwrap();
    assert_eq!(
        (alice.username.as_str(), alice.hash.as_str()),
        ("Alice", "hash-of-Alice")
    );
    assert!(alice.id > 0);
    // Idempotent by request id.
    assert_eq!(store.create(&account("Alice"), "r1").unwrap(), Created::New);
    // update_hash, in any case.
    assert!(store
        .update_hash("ALICE", "hash-of-Alice", "new-hash")
        .unwrap());
    assert!(
        !store
            .update_hash("alice", "hash-of-Alice", "stale")
            .unwrap(),
        "only over the hash it replaces"
    );
    assert_eq!(store.find("alice").unwrap().unwrap().hash, "new-hash");
    assert!(!store.update_hash("nobody", "x", "y").unwrap());
    // Sixteen threads creating one name: exactly one wins.
    let winners: usize = (0..16)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || store.create(&account("Contended"), &format!("c{i}")))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .filter(|created| *created == Created::New)
        .count();
    assert_eq!(winners, 1);
    // Sixteen threads creating sixteen different look-alikes of one name at once (no unique key
    // holds them apart, only the look-alike check): exactly one wins. Four rounds, four names.
    for round in 0..4 {
        let lookalikes: Vec<String> = (0..16u32)
            .map(|i| {
                // Latin or Cyrillic in each of four places: o/о, e/е, a/а, c/с.
                let pick = |bit: u32, latin: char, cyrillic: char| {
                    if i & (1 << bit) == 0 {
                        latin
                    } else {
                        cyrillic
                    }
                };
                let (o, e) = (pick(0, 'o', 'о'), pick(1, 'e', 'е'));
                let (a, c) = (pick(2, 'a', 'а'), pick(3, 'c', 'с'));
                format!("R{o}s{e}r{a}h{c}{round}")
            })
            .collect();
        let folded: HashSet<String> = lookalikes.iter().map(|n| names::fold(n)).collect();
        let skeletons: HashSet<String> = lookalikes.iter().map(|n| names::skeleton(n)).collect();
        assert_eq!((folded.len(), skeletons.len()), (16, 1), "{lookalikes:?}");
        let start = Arc::new(Barrier::new(lookalikes.len()));
        let winners: usize = lookalikes
            .into_iter()
            .map(|name| {
                let (store, start) = (store.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    store.create(&account(&name), &name)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .filter(|created| *created == Created::New)
            .count();
        assert_eq!(winners, 1, "round {round}");
    }
    // Ids: distinct, and stable across lookups.
    let names: Vec<String> = (0..10).map(|i| format!("player{i}")).collect();
    for name in &names {
        assert_eq!(store.create(&account(name), name).unwrap(), Created::New);
    }
    let ids: Vec<u64> = names
        .iter()
        .map(|n| store.find(n).unwrap().unwrap().id)
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "{ids:?}"
    );
    assert!(!ids.contains(&alice.id));
    let again: Vec<u64> = names
        .iter()
        .map(|n| store.find(n).unwrap().unwrap().id)
        .collect();
    assert_eq!(ids, again);
    assert_eq!(store.find("alice").unwrap().unwrap().id, alice.id);
    // The old server's names: not recorded as imported until marked, then for good.
    assert!(!store.legacy_names_imported().unwrap());
    assert!(store.mark_legacy_names_imported("a test").unwrap());
    assert!(store.legacy_names_imported().unwrap());
    assert!(!store.mark_legacy_names_imported("again").unwrap(), "once");
    assert!(store.legacy_names_imported().unwrap());
}

/// What every store must do with throttle records.
fn records_conformance(store: Arc<dyn Store>) {
    let now = now_ms();
    let keys = ["name:r1".to_string(), "addr:192.0.2.1".to_string()];
    // Absent records read as empty, in the order asked, beside the account.
    assert_eq!(
        store.create(&account("Ruth"), "ruth").unwrap(),
        Created::New
    );
    let (found, records) = store.find_for_login("RUTH", &keys).unwrap();
    assert_eq!(found.unwrap().username, "Ruth");
    assert_eq!(records, vec![Record::default(); 2]);
    let (found, records) = store.find_for_login("nobody", &keys[1..]).unwrap();
    assert!(found.is_none());
    assert_eq!(records, vec![Record::default()]);
    // What a change leaves is what is read back, every field.
    let written = Record {
        count: 3,
        window_start: now - 5,
        lockouts: 2,
        locked_until: now + 60_000,
        familiar: vec![
            "192.0.2.9".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ],
        familiar_until: now + 90_000,
        expires: now + 90_000,
    };
    store
        .update_records(&keys, now, &mut |records| {
            assert_eq!(records.len(), 2);
            records[1] = written.clone();
        })
        .unwrap();
    let (_, records) = store.find_for_login("ruth", &keys).unwrap();
    assert_eq!(records, vec![Record::default(), written.clone()]);
    // Many logins read at once are read as each alone, in order, names repeated or unknown.
    let logins: Vec<(&str, &[String])> = vec![
        ("nobody", &keys[1..]),
        ("RUTH", &keys),
        ("ruth", &keys[..1]),
        ("Ruth", &keys[1..]),
        ("nobody", &keys[..0]),
    ];
    let together = store.find_for_logins(&logins).unwrap();
    let alone: Vec<_> = logins
        .iter()
        .map(|(name, keys)| store.find_for_login(name, keys).unwrap())
        .collect();
    assert_eq!(together, alone);
    assert_eq!(together[1].1, vec![Record::default(), written.clone()]);
    assert!(together[0].0.is_none() && together[3].0.is_some());
    assert!(store.find_for_logins(&[]).unwrap().is_empty());
    // A record that expires by now is dropped, at once or by the next prune.
    store
        .update_records(&keys[1..], now, &mut |records| records[0].expires = now)
        .unwrap();
    store.prune_records(now, u64::MAX).unwrap();
    let (_, records) = store.find_for_login("ruth", &keys[1..]).unwrap();
    assert_eq!(records, vec![Record::default()]);
    // Concurrent changes of one key take turns: none is lost.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    store
                        .update_records(&["name:contended".into()], now, &mut |records| {
                            records[0].count += 1;
                            records[0].expires = now + 60_000;
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let (_, records) = store
        .find_for_login("x", &["name:contended".into()])
        .unwrap();
    assert_eq!(records[0].count, 80);
    // Beyond the cap, plain records go first, oldest first; then locks; familiar ones last.
    let later = now + 1000;
    let set = |key: &str, at: Millis, record: Record| {
        store
            .update_records(&[key.to_string()], at, &mut |records| {
                records[0] = record.clone()
            })
            .unwrap();
    };
    let plain = Record {
        count: 1,
        expires: now + 60_000,
        ..Record::default()
    };
    let familiar = Record {
        familiar: vec!["192.0.2.1".parse().unwrap()],
        familiar_until: now + 60_000,
        ..plain.clone()
    };
    let locked = Record {
        locked_until: now + 30_000,
        ..plain.clone()
    };
    set("name:locked", now, locked.clone());
    set("name:familiar", now, familiar.clone());
    set("name:old", now, plain.clone());
    set("name:new", later, plain.clone());
    // Now: "name:contended", locked, familiar, old, new.
    assert_eq!(store.prune_records(later, 3).unwrap(), 2);
    let kept = |key: &str| {
        store.find_for_login("x", &[key.to_string()]).unwrap().1[0] != Record::default()
    };
    assert!(!kept("name:old") && !kept("name:contended"));
    assert!(kept("name:new") && kept("name:familiar") && kept("name:locked"));
    assert_eq!(store.prune_records(later, 1).unwrap(), 2);
    assert!(kept("name:familiar") && !kept("name:locked"));
    assert_eq!(
        store.prune_records(now + 30_000, u64::MAX).unwrap(),
        0,
        "not expired yet"
    );
    assert_eq!(store.prune_records(now + 60_000, u64::MAX).unwrap(), 1);
}

/// What every store must do with sessions.
fn sessions_conformance(store: Arc<dyn Store>) {
    assert_eq!(
        store.create(&account("Sess"), "sess").unwrap(),
        Created::New
    );
    let id = store.find("sess").unwrap().unwrap().id;
    let state = store.session(id, "s1", None).unwrap().unwrap();
    assert_eq!(
        state,
        SessionState {
            username: "Sess".into(),
            sessions_after: 0,
            revoked: false
        }
    );
    assert!(
        store.session(id + 1000, "s1", None).unwrap().is_none(),
        "no such account"
    );
    // Revoked until a time; the revocation is pruned only after it.
    let revoke = |sid: &str, began_ms: i64, until_ms: i64| {
        let revocation = Revocation {
            account_id: id,
            sid: sid.into(),
            began_ms,
            until_ms,
        };
        store.revoke_session(&revocation).unwrap();
    };
    revoke("s1", 100, 5_000);
    revoke("s1", 100, 4_000); // never shortened
    assert!(store.session(id, "s1", None).unwrap().unwrap().revoked);
    assert!(!store.session(id, "s2", None).unwrap().unwrap().revoked);
    assert_eq!(store.prune_revoked(4_999).unwrap(), 0);
    assert!(store.session(id, "s1", None).unwrap().unwrap().revoked);
    assert_eq!(store.prune_revoked(5_000).unwrap(), 1);
    assert!(!store.session(id, "s1", None).unwrap().unwrap().revoked);
    // Void: never moved back; with a hash, the password changes in the same write.
    assert!(store.void_sessions(id, 2_000, None).unwrap());
    assert!(store.void_sessions(id, 1_000, None).unwrap());
    let state = store.session(id, "s2", None).unwrap().unwrap();
    assert_eq!(state.sessions_after, 2_000);
    assert!(state.stands(2_000) && !state.stands(1_999));
    assert!(store.void_sessions(id, 3_000, Some("new-hash")).unwrap());
    assert_eq!(store.find("SESS").unwrap().unwrap().hash, "new-hash");
    assert_eq!(
        store
            .session(id, "s2", None)
            .unwrap()
            .unwrap()
            .sessions_after,
        3_000
    );
    assert!(!store.void_sessions(id + 1000, 3_000, Some("x")).unwrap());
    // An account holds at most REVOKED_PER_ACCOUNT revocations; one more voids every session
    // that began no later than it instead.
    for i in 0..REVOKED_PER_ACCOUNT {
        revoke(&format!("many-{i}"), 10_000 + i, 99_000);
        assert!(
            store
                .session(id, &format!("many-{i}"), None)
                .unwrap()
                .unwrap()
                .revoked
        );
    }
    revoke("one-more", 20_000, 99_000);
    let state = store.session(id, "one-more", None).unwrap().unwrap();
    assert!(!state.revoked);
    assert_eq!(state.sessions_after, 20_001);
    assert!(!state.stands(20_000) && state.stands(20_001));
}

/// The schema's two steps on a store `open` opens, with `sql` run on its database directly
/// (standing in for a newer build's steps): expansions at start, a contraction only when asked,
/// a newer schema started on only where its floor allows, and the peers table.
fn schema_conformance(open: impl Fn() -> Result<Arc<dyn Store>, StoreError>, sql: impl Fn(&str)) {
    let store = open().unwrap();
    let state = store.schema_state().unwrap();
    assert_eq!(
        (state.contracted, state.expanded, state.min_code_version),
        (0, schema::EXPANSIONS, None),
        "a new store is expanded, never contracted by itself"
    );
    let now = now_ms();
    let week = 8 * 24 * 3600 * 1000;
    store.record_peer("gone:1", now - week).unwrap();
    store.record_peer("here:2", now - 5).unwrap();
    store.record_peer("here:2", now).unwrap();
    let peers = store.peers().unwrap();
    assert_eq!(
        peers.len(),
        1,
        "one row per instance, the week-old one pruned: {peers:?}"
    );
    assert_eq!(
        (
            peers[0].instance.as_str(),
            peers[0].code_version.as_str(),
            peers[0].last_seen_ms
        ),
        ("here:2", schema::CODE_VERSION, now)
    );
    assert!(!store.contract(1).unwrap(), "not before the one it needs");
    assert!(store.contract(0).unwrap());
    assert!(!store.contract(0).unwrap(), "done once");
    let state = store.schema_state().unwrap();
    assert_eq!(
        (state.contracted, state.min_code_version.as_deref()),
        (1, Some("0.3.0"))
    );
    drop(store);
    // A newer build's contraction and expansions, whose floor this build meets: it starts, and
    // leaves what the newer build recorded.
    sql("UPDATE schema_version SET version = version + 1;
         UPDATE meta SET value = '9' WHERE key = 'expanded';");
    let state = open().unwrap().schema_state().unwrap();
    assert_eq!((state.contracted, state.expanded), (2, 9));
    // One whose floor is above this build: refused, saying what it needs.
    sql("UPDATE meta SET value = '99.0.0' WHERE key = 'min_code_version'");
    let refused = open().err().expect("refused").to_string();
    assert!(
        refused.contains("needs code version 99.0.0") && refused.contains(schema::CODE_VERSION),
        "{refused}"
    );
}

#[test]
fn sqlite_schema_changes_in_two_steps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    schema_conformance(
        || Ok(Arc::new(SqliteStore::open(&path)?) as Arc<dyn Store>),
        |sql| {
            rusqlite::Connection::open(dir.path().join("accounts.sqlite3"))
                .unwrap()
                .execute_batch(sql)
                .unwrap()
        },
    );
}

#[test]
fn postgres_schema_changes_in_two_steps() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    schema_conformance(
        || Ok(Arc::new(PostgresStore::open(&db.url, 2, Duration::from_secs(5))?) as Arc<dyn Store>),
        |sql| {
            postgres::Client::connect(&db.url, postgres::NoTls)
                .unwrap()
                .batch_execute(sql)
                .unwrap()
        },
    );
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    records_conformance(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    sessions_conformance(Arc::new(SqliteStore::open(dir.path()).unwrap()));
}

#[test]
fn postgres_store_conforms() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let store = Arc::new(PostgresStore::open(&db.url, 8, Duration::from_secs(5)).unwrap());
    conformance(store.clone());
    records_conformance(store.clone());
    sessions_conformance(store.clone());
    // `account-db import` works on it too, and twice changes nothing.
    let hasher = login_server::auth::password::Hasher::new(
        login_server::auth::password::HashParams::CHEAPEST,
    )
    .unwrap();
    let lines = "{\"username\":\"Imported\",\"password\":\"pw\"}\n{\"username\":\"Kept\"}\n";
    let import = || {
        login_server::accountdb::import::import(&*store, lines.as_bytes(), &hasher, 2, |_| {})
            .unwrap()
    };
    assert_eq!((import().imported, import().present), (2, 2));
    assert!(store
        .find("imported")
        .unwrap()
        .unwrap()
        .hash
        .starts_with("$argon2id$"));
    // A second store on the same database (another account-db) sees the same accounts, and
    // opening migrates nothing twice.
    let other = PostgresStore::open(&db.url, 2, Duration::from_secs(5)).unwrap();
    assert_eq!(other.find("ALICE").unwrap().unwrap().username, "Alice");
    // Skeletons made with other confusables data are made again at start.
    let mut client = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "UPDATE accounts SET skeleton = 'stale';
             UPDATE meta SET value = 'older data' WHERE key = 'skeleton_data';",
        )
        .unwrap();
    drop(other);
    let reopened = PostgresStore::open(&db.url, 2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        reopened.create(&account("\u{0430}lice"), "late").unwrap(),
        Created::Exists,
        "the look-alike is refused again"
    );
}

#[test]
fn store_urls_parse_and_hide_passwords() {
    let url: StoreUrl = "postgres://app:s3cret@db.internal:5432/accounts"
        .parse()
        .unwrap();
    assert_eq!(url.to_string(), "postgres://app@db.internal:5432/accounts");
    assert_eq!(
        "sqlite:/var/lib/x".parse::<StoreUrl>().unwrap(),
        StoreUrl::Sqlite("/var/lib/x".into())
    );
    assert!("mysql://x".parse::<StoreUrl>().is_err());
    // A password given as a parameter is hidden too, and a mistyped URL is not quoted back.
    let url: StoreUrl = "postgres://127.0.0.1:1/test?user=postgres&password=s3cret&sslmode=disable"
        .parse()
        .unwrap();
    assert_eq!(
        url.to_string(),
        "postgres://127.0.0.1:1/test?user=postgres&password=…&sslmode=disable"
    );
    let typo = "postgress://app:s3cret@db/x"
        .parse::<StoreUrl>()
        .unwrap_err();
    assert!(!typo.contains("s3cret"), "{typo}");
    // A `?` in the password, and a percent-encoded parameter name: hidden all the same.
    for (given, shown) in [
        (
            "postgres://app:s3?cret@db/x?sslmode=require",
            "postgres://app@db/x?sslmode=require",
        ),
        (
            "postgres://app@db/x?pass%77ord=s3cret",
            "postgres://app@db/x?password=…",
        ),
    ] {
        assert_eq!(given.parse::<StoreUrl>().unwrap().to_string(), shown);
    }
    // Nor does the command line quote a mistyped one back (clap would, by default).
    for flag in [
        "--store=postgress://app:s3cret@db/x",
        "--store=postgresql:/app:s3cret@db",
    ] {
        let error =
            <login_server::AccountDbConfig as clap::Parser>::try_parse_from(["account-db", flag])
                .unwrap_err()
                .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("sqlite:DIR or postgres://"), "{error}");
    }
}

#[test]
fn a_create_stuck_behind_a_hung_account_db_fails_within_the_store_timeout() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let timeout = Duration::from_millis(500);
    let store = PostgresStore::open(&db.url, 4, timeout).unwrap();
    assert_eq!(store.create(&account("Held"), "r1").unwrap(), Created::New);
    // Another account-db, hung in the middle of creating a look-alike: its transaction holds
    // the skeleton's lock and never ends.
    let mut hung = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let mut tx = hung.transaction().unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&login_server::auth::names::skeleton("Other")],
    )
    .unwrap();
    let started = std::time::Instant::now();
    assert!(
        store.create(&account("Other"), "r2").is_err(),
        "answered, as an error"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Lookups and other names are not held up.
    assert_eq!(store.find("held").unwrap().unwrap().username, "Held");
    assert_eq!(store.create(&account("Third"), "r3").unwrap(), Created::New);
    drop(tx);
}

#[test]
fn a_pooled_connection_that_postgresql_ended_is_replaced_before_use() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let store = PostgresStore::open(&db.url, 2, Duration::from_secs(2)).unwrap();
    assert_eq!(store.create(&account("Kept"), "r1").unwrap(), Created::New);
    // Every backend of the store's database ends, as in a PostgreSQL restart or failover.
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let ended: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ended >= 1, "the store's connections were ended");
    // Past the window in which a connection just returned is trusted, the checkout's check
    // finds the dead connection and the pool makes a new one: no request sees it.
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..4 {
        assert_eq!(store.find("kept").unwrap().unwrap().username, "Kept");
    }
}

/// The two numbers `sql` reads from PostgreSQL's statistics, read again (each time afresh)
/// until `arrived` says they are in, for at most 10 s: a backend reports its counts within
/// about a second of going idle, and at once when it ends.
fn statistics(
    admin: &mut postgres::Client,
    sql: &str,
    arrived: impl Fn((i64, i64)) -> bool,
) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        admin
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .unwrap();
        let row = admin.query_one(sql, &[]).unwrap();
        let read = (row.get(0), row.get(1));
        if arrived(read) || std::time::Instant::now() >= deadline {
            return read;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rows in the throttle table, counted.
fn throttle_rows(admin: &mut postgres::Client) -> i64 {
    admin
        .query_one("SELECT count(*) FROM throttle", &[])
        .unwrap()
        .get(0)
}

/// A hundred throttle records, `name:k0` to `name:k99`, expiring an hour after `now`.
fn hundred_records(store: &PostgresStore, now: Millis) {
    let keys: Vec<String> = (0..100).map(|i| format!("name:k{i}")).collect();
    store
        .update_records(&keys, now, &mut |records| {
            for record in records.iter_mut() {
                record.count = 1;
                record.expires = now + 3_600_000;
            }
        })
        .unwrap();
}

#[test]
fn login_lookups_stay_index_probes_as_a_new_table_grows() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    // One pooled connection, so every lookup runs the statement it planned while the table
    // held one account.
    let store = PostgresStore::open(&db.url, 1, Duration::from_secs(2)).unwrap();
    assert_eq!(store.create(&account("First"), "r1").unwrap(), Created::New);
    let keys = vec!["name:first".to_string()];
    let logins = [("first", keys.as_slice()), ("nobody", keys.as_slice())];
    for _ in 0..10 {
        assert!(store.find_for_logins(&logins).unwrap()[0].0.is_some());
        assert!(store.find("first").unwrap().is_some());
    }
    // The table grows by 20,000 accounts, with no ANALYZE since.
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "INSERT INTO accounts (folded, skeleton, username, hash, created_at, request_id)
             SELECT 'p' || i, 'p' || i, 'p' || i, 'h', 0, 'r' FROM generate_series(1, 20000) i",
        )
        .unwrap();
    let lookups = 200;
    for _ in 0..lookups {
        assert!(store.find_for_logins(&logins).unwrap()[0].0.is_some());
        assert!(store.find("p77").unwrap().is_some());
    }
    // Its backend reports its statistics as it ends.
    drop(store);
    // Two names and one name per round: 3 reads of the table each, by index or by scan.
    let scans = statistics(
        &mut admin,
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables
         WHERE relname = 'accounts'",
        |(seq, idx)| seq + idx >= 3 * lookups,
    );
    assert!(
        scans.0 + scans.1 >= 3 * lookups,
        "not all counted: {scans:?}"
    );
    assert!(scans.0 < 10, "lookups scanned the whole table: {scans:?}");
}

#[test]
fn an_analyzed_throttle_table_over_its_cap_is_pruned_to_it() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let store = PostgresStore::open(&db.url, 2, Duration::from_secs(2)).unwrap();
    let now = now_ms();
    hundred_records(&store, now);
    // With statistics the prune goes by PostgreSQL's estimate of the table's size first.
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    admin.batch_execute("ANALYZE throttle").unwrap();
    assert_eq!(store.prune_records(now, 1_000).unwrap(), 0, "far below");
    assert_eq!(store.prune_records(now, 60).unwrap(), 40, "just over");
    assert_eq!(store.prune_records(now, 10).unwrap(), 50, "down to the cap");
    let left = throttle_rows(&mut admin);
    assert_eq!(left, 10);
}

#[test]
fn a_throttle_table_refilled_after_its_statistics_is_pruned_to_its_cap() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let now = now_ms();
    {
        let store = PostgresStore::open(&db.url, 1, Duration::from_secs(2)).unwrap();
        hundred_records(&store, now);
    } // its backend reports its statistics as it ends
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let live = statistics(
        &mut admin,
        "SELECT coalesce(n_live_tup, 0), 0::bigint FROM pg_stat_user_tables
         WHERE relname = 'throttle'",
        |(live, _)| live >= 100,
    );
    assert_eq!(live.0, 100);
    // Statistics from when the table was large and nearly empty: a row per thousand pages.
    admin
        .batch_execute(
            "UPDATE pg_class SET reltuples = 1, relpages = 1000
             WHERE oid = 'throttle'::regclass",
        )
        .unwrap();
    let store = PostgresStore::open(&db.url, 1, Duration::from_secs(2)).unwrap();
    let pruned = store.prune_records(now, 10).unwrap();
    let left = throttle_rows(&mut admin);
    assert_eq!((pruned, left), (90, 10));
}
