//! One conformance suite for every `Store` backend: SQLite, and PostgreSQL on a database of
//! its own (skipped, with a line saying so, where no PostgreSQL answers and REQUIRE_POSTGRES is
//! not set).

mod common;

use login_server::accountdb::store::{
    Account, Created, PostgresStore, SqliteStore, Store, StoreUrl,
};
use std::collections::HashSet;
use std::sync::Arc;
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
    assert!(store.update_hash("ALICE", "new-hash").unwrap());
    assert_eq!(store.find("alice").unwrap().unwrap().hash, "new-hash");
    assert!(!store.update_hash("nobody", "x").unwrap());
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
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(SqliteStore::open(dir.path()).unwrap()));
}

#[test]
fn postgres_store_conforms() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let store = PostgresStore::open(&db.url, 8, Duration::from_secs(5)).unwrap();
    conformance(Arc::new(store));
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
