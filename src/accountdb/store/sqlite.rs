//! [`SqliteStore`]: accounts in one SQLite file, WAL mode, every commit synced to disk.
//!
//! One connection writes and one reads, each behind its own lock: in WAL mode a registration
//! being synced never holds up a login's lookup. All SQL lives in this file.

use super::{Account, Created, Store, StoreError};
use crate::auth::names::fold;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The database file's name inside the data directory.
pub const FILE_NAME: &str = "accounts.sqlite3";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS accounts (
    key        TEXT PRIMARY KEY,   -- the folded name: what makes names unique
    username   TEXT NOT NULL,      -- the spelling it registered with
    hash       TEXT NOT NULL,      -- argon2id PHC string
    created_at INTEGER NOT NULL,   -- unix seconds
    request_id TEXT NOT NULL       -- the create that stored it: makes creates idempotent
) WITHOUT ROWID";

/// Accounts in a SQLite database file.
pub struct SqliteStore {
    reader: Mutex<Connection>,
    writer: Mutex<Connection>,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // FULL: a commit is on disk before `create` returns, so an acknowledged registration
    // survives a crash of the process and of the machine.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (creating if needed) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let writer = open_connection(&path)?;
        writer.execute_batch(SCHEMA)?;
        let reader = open_connection(&path)?;
        Ok(SqliteStore {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
        })
    }
}

impl Store for SqliteStore {
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached("SELECT username, hash FROM accounts WHERE key = ?1")?;
        stmt.query_row(params![fold(username)], |row| {
            Ok(Account {
                username: row.get(0)?,
                hash: row.get(1)?,
            })
        })
        .optional()
        .map_err(StoreError::from)
    }

    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let conn = self.writer.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO accounts (key, username, hash, created_at, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key) DO NOTHING",
        )?;
        let key = fold(&account.username);
        let inserted = stmt.execute(params![
            key,
            account.username,
            account.hash,
            now,
            request_id
        ])?;
        if inserted == 1 {
            return Ok(Created::New);
        }
        // Taken: by this very request (a repeat after a lost reply), or by another.
        let stored_by: String = conn
            .prepare_cached("SELECT request_id FROM accounts WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row(params![key], |row| row.get(0)))?;
        Ok(if stored_by == request_id {
            Created::New
        } else {
            Created::Exists
        })
    }

    fn update_hash(&self, username: &str, hash: &str) -> Result<bool, StoreError> {
        let conn = self.writer.lock();
        let mut stmt = conn.prepare_cached("UPDATE accounts SET hash = ?2 WHERE key = ?1")?;
        let updated = stmt.execute(params![fold(username), hash])?;
        Ok(updated == 1)
    }

    fn ping(&self) -> Result<(), StoreError> {
        let conn = self.reader.lock();
        Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> Account {
        Account {
            username: name.into(),
            hash: format!("hash-of-{name}"),
        }
    }

    #[test]
    fn names_are_unique_without_regard_to_case() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.find("alice").unwrap(), None);
        assert_eq!(store.create(&account("Alice"), "r1").unwrap(), Created::New);
        assert_eq!(
            store.create(&account("ALICE"), "r2").unwrap(),
            Created::Exists
        );
        assert_eq!(store.find("aLiCe").unwrap(), Some(account("Alice")));
        store.ping().unwrap();
    }

    #[test]
    fn a_repeated_create_is_answered_as_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.create(&account("Dup"), "same").unwrap(), Created::New);
        assert_eq!(store.create(&account("Dup"), "same").unwrap(), Created::New);
        assert_eq!(
            store.create(&account("dup"), "other").unwrap(),
            Created::Exists
        );
        assert!(store.update_hash("DUP", "new-hash").unwrap());
        assert_eq!(store.find("dup").unwrap().unwrap().hash, "new-hash");
        assert!(!store.update_hash("nobody", "x").unwrap());
    }

    #[test]
    fn accounts_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStore::open(dir.path())
            .unwrap()
            .create(&account("Bob"), "r")
            .unwrap();
        let reopened = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(reopened.find("bob").unwrap(), Some(account("Bob")));
    }
}
