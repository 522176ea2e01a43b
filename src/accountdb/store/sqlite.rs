//! [`SqliteStore`]: accounts in one SQLite file, WAL mode, every commit synced to disk.
//!
//! One connection writes and one reads, each behind its own lock: in WAL mode a registration
//! being synced never holds up a login's lookup. All SQL lives in this file.
//!
//! Opening checks the file (`PRAGMA quick_check`, unless told not to) and that it can be
//! written, then brings the schema up to date: [`MIGRATIONS`], recorded in `schema_version`.
//!
//! Throttle records live in a side file, [`RECORDS_FILE`], never synced (`synchronous = OFF`):
//! counting a failed login is not a durable write, and a crash may forget recent counts. A side
//! file from another layout is started afresh.

use super::contract::{
    familiar_list, familiar_text, unix_now, Details, Renamed, Store, StoreError,
    LEGACY_NAMES_IMPORTED, REVOKED_PER_ACCOUNT,
};
use super::contract::{
    Claimed, DeviceRead, Linked, Peer, SchemaState, Unlinked, DEVICES_PER_ACCOUNT,
};
use super::schema::{self, CONTRACTIONS};
use crate::auth::names::{fold, skeleton, SKELETON_DATA};
use crate::clock::Millis;
use crate::protocol::accountdb::{Account, Ban, Created, Device, Revocation, SessionState};
use crate::throttle::Record;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The database file's name inside the data directory.
pub const FILE_NAME: &str = "accounts.sqlite3";

/// Rust that fills in what a schema step's SQL added.
type Fill = fn(&Connection) -> Result<(), StoreError>;

/// One step of the schema: SQL, then (if any) Rust that fills in what the SQL added.
struct Migration {
    sql: &'static str,
    fill: Option<Fill>,
}

/// The schema, one step per version; step N brings version N-1 to N.
const MIGRATIONS: [Migration; 5] = [
    // 1: accounts keyed by the lower-cased name.
    Migration {
        sql: "CREATE TABLE IF NOT EXISTS accounts (
            key        TEXT PRIMARY KEY,   -- unique; the folded name for accounts made since v2
            username   TEXT NOT NULL,      -- the spelling it registered with
            hash       TEXT NOT NULL,      -- PHC string
            created_at INTEGER NOT NULL,   -- unix seconds
            request_id TEXT NOT NULL       -- the create that stored it: makes creates idempotent
        ) WITHOUT ROWID;",
        fill: None,
    },
    // 2: names folded by NFKC and full case folding, and confusable skeletons, each indexed.
    // Not unique: accounts from before may share a folded name, and each keeps logging in by
    // its own spelling.
    Migration {
        sql: "ALTER TABLE accounts ADD COLUMN folded TEXT NOT NULL DEFAULT '';
            ALTER TABLE accounts ADD COLUMN skeleton TEXT NOT NULL DEFAULT '';
            CREATE INDEX accounts_folded ON accounts (folded);
            CREATE INDEX accounts_skeleton ON accounts (skeleton);",
        fill: Some(fill_folded),
    },
    // 3: a stable id per account, never reused: the last one given out is kept in `meta`.
    Migration {
        sql: "ALTER TABLE accounts ADD COLUMN id INTEGER NOT NULL DEFAULT 0;",
        fill: Some(fill_ids),
    },
    // 4: sessions: per account, when the sessions that still stand began (milliseconds);
    // per session, a revocation kept until the session could no longer be used.
    Migration {
        sql: "ALTER TABLE accounts ADD COLUMN sessions_after INTEGER NOT NULL DEFAULT 0;
            CREATE TABLE revoked_sessions (
                sid        TEXT PRIMARY KEY,
                account_id INTEGER NOT NULL,
                until_ms   INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE INDEX revoked_sessions_until ON revoked_sessions (until_ms);
            CREATE INDEX revoked_sessions_account ON revoked_sessions (account_id);",
        fill: None,
    },
    // 5: bans: until when (milliseconds; 0: none) and why.
    Migration {
        sql: "ALTER TABLE accounts ADD COLUMN banned_until INTEGER NOT NULL DEFAULT 0;
            ALTER TABLE accounts ADD COLUMN ban_reason TEXT NOT NULL DEFAULT '';",
        fill: None,
    },
];

/// The expansions, one per step, each recorded in `meta` (see [`schema`]): only what older
/// builds ignore.
const EXPANSIONS: [&str; schema::EXPANSIONS] = [
    // 1 (0.3.0): the account-dbs that run on the store, and their code versions.
    "CREATE TABLE IF NOT EXISTS peers (
        instance     TEXT PRIMARY KEY,
        code_version TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2 (0.3.0): guests and devices. A guest has no name: `username`, `folded` and `skeleton`
    // become nullable (SQLite changes a column's constraints only by copying the table), a
    // guest's `key` is `#` and its id (no name folds to `#`); devices, keyed by the id the
    // client chose.
    "CREATE TABLE accounts_v2 (
        key            TEXT PRIMARY KEY,
        username       TEXT,
        hash           TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        request_id     TEXT NOT NULL,
        folded         TEXT,
        skeleton       TEXT,
        id             INTEGER NOT NULL DEFAULT 0,
        sessions_after INTEGER NOT NULL DEFAULT 0,
        banned_until   INTEGER NOT NULL DEFAULT 0,
        ban_reason     TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID;
    INSERT INTO accounts_v2 (key, username, hash, created_at, request_id, folded, skeleton, id,
                             sessions_after, banned_until, ban_reason)
        SELECT key, username, hash, created_at, request_id, folded, skeleton, id,
               sessions_after, banned_until, ban_reason FROM accounts;
    DROP TABLE accounts;
    ALTER TABLE accounts_v2 RENAME TO accounts;
    CREATE INDEX accounts_folded ON accounts (folded);
    CREATE INDEX accounts_skeleton ON accounts (skeleton);
    CREATE UNIQUE INDEX accounts_id ON accounts (id);
    CREATE TABLE devices (
        device_id    TEXT PRIMARY KEY,
        account_id   INTEGER NOT NULL,
        secret_hash  TEXT NOT NULL,
        link         TEXT NOT NULL,
        linked_ms    INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX devices_account ON devices (account_id);",
];

/// The side file of throttle records, beside [`FILE_NAME`].
pub const RECORDS_FILE: &str = "throttle.sqlite3";

/// The layout of [`RECORDS_FILE`], as its `user_version`.
const RECORDS_LAYOUT: i64 = 1;

const RECORDS_SCHEMA: &str = "CREATE TABLE records (
        key            TEXT PRIMARY KEY,
        count          INTEGER NOT NULL,
        window_start   INTEGER NOT NULL,
        lockouts       INTEGER NOT NULL,
        locked_until   INTEGER NOT NULL,
        familiar       TEXT NOT NULL,
        familiar_until INTEGER NOT NULL,
        expires        INTEGER NOT NULL,
        rank           INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX records_expires ON records (expires);
    CREATE INDEX records_rank ON records (rank);";

/// Settings of the store kept in the store: the confusables data the skeletons were made with.
const META: &str = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);";

/// Accounts in a SQLite database file.
pub struct SqliteStore {
    reader: Mutex<Connection>,
    writer: Mutex<Connection>,
    /// The throttle records' side file.
    records: Mutex<Connection>,
    /// The old server's names were found imported: never read again (it is kept for good).
    legacy_names: AtomicBool,
}

/// Open the side file of throttle records at `path`, unsynced, with the current layout.
fn open_records(path: &Path) -> Result<Connection, StoreError> {
    private_file(path)?;
    let conn = open_file(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = OFF;
         PRAGMA busy_timeout = 5000;",
    )?;
    let layout: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // A write at open, so a file that cannot be written stops the start (by name) rather than
    // every failed login later.
    conn.execute_batch(&format!("PRAGMA user_version = {layout}"))?;
    if layout != RECORDS_LAYOUT {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; DROP TABLE IF EXISTS records; {RECORDS_SCHEMA}
             PRAGMA user_version = {RECORDS_LAYOUT}; COMMIT;"
        ))?;
    }
    Ok(conn)
}

const RECORD_COLUMNS: &str =
    "count, window_start, lockouts, locked_until, familiar, familiar_until, expires";

fn read_record(conn: &Connection, key: &str) -> Result<Record, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE key = ?1"
        ))?
        .query_row(params![key], |r| {
            Ok(Record {
                count: r.get(0)?,
                window_start: r.get(1)?,
                lockouts: r.get(2)?,
                locked_until: r.get(3)?,
                familiar: familiar_list(&r.get::<_, String>(4)?),
                familiar_until: r.get(5)?,
                expires: r.get(6)?,
            })
        })
        .optional()?;
    Ok(found.unwrap_or_default())
}

/// Make the file at `path` readable by its owner only, creating it (empty: SQLite makes a new
/// database of it) if it is missing, before SQLite opens it: its `-wal` and `-shm` files then
/// take the same mode. Password hashes are no one else's business.
fn private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.exists() {
        // Tightened where it was made looser (by path: opening and closing the file here would
        // drop the SQLite locks this process holds on it, and another process would then take
        // itself for the last user and delete the WAL). A file that cannot be written is left
        // for SQLite to report ("attempt to write a readonly database").
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| StoreError::DataFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Why `path` (the data directory or a file in it) cannot be written: [`StoreError::ReadOnly`]
/// where the system said permission or a read-only file system, else [`StoreError::DataFile`].
fn read_only(path: &Path, source: std::io::Error) -> StoreError {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    let path = path.to_path_buf();
    match source.kind() {
        PermissionDenied | ReadOnlyFilesystem => StoreError::ReadOnly { path, source },
        _ => StoreError::DataFile { path, source },
    }
}

/// `e`, a failure to write the database file at `path` at open: SQLite's "attempt to write a
/// readonly database" becomes [`StoreError::ReadOnly`], naming the file.
fn named(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
            if failure.code == rusqlite::ErrorCode::ReadOnly =>
        {
            let source = std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "attempt to write a readonly database",
            );
            StoreError::ReadOnly {
                path: path.to_path_buf(),
                source,
            }
        }
        e => e,
    }
}

/// Check that files can be made in `dir`: SQLite makes its `-wal` and `-shm` files there, and
/// where it cannot it says only "unable to open database file".
fn writable_dir(dir: &Path) -> Result<(), StoreError> {
    let probe = dir.join(format!(
        ".write-check-{}",
        crate::auth::secret::random_token()
    ));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    made.map(drop).map_err(|source| read_only(dir, source))
}

/// Open the database file at `path`. SQLite says only "unable to open database file": the
/// operating system's reason (permission denied, say) is told instead when there is one.
fn open_file(path: &Path) -> Result<Connection, StoreError> {
    Connection::open(path).map_err(|e| {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Err(source) => StoreError::DataFile {
                path: path.to_path_buf(),
                source,
            },
            Ok(_) => StoreError::from(e),
        }
    })
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    private_file(path)?;
    let conn = open_file(path)?;
    // FULL: a commit is on disk before `create` returns, so an acknowledged registration
    // survives a crash of the process and of the machine.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

/// Check the file's integrity: a damaged page must stop the start, not make accounts vanish.
fn quick_check(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    match problems.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(StoreError::Damaged(problems.join("; "))),
    }
}

/// Bring the schema to the latest version, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(META)?;
    let recorded: Option<i64> = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()?;
    let has_accounts: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'accounts'",
        [],
        |r| r.get(0),
    )?;
    // A store from before versions were recorded is at version 1.
    let version = recorded.unwrap_or(if has_accounts { 1 } else { 0 });
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        Ok(tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    };
    schema::may_run(
        version,
        MIGRATIONS.len() + CONTRACTIONS.len(),
        meta(schema::MIN_CODE_VERSION)?.as_deref(),
    )?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(step.sql)?;
        if let Some(fill) = step.fill {
            fill(&tx)?;
        }
        tracing::info!(version = i + 1, "account store migrated");
    }
    if version < MIGRATIONS.len() {
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![MIGRATIONS.len() as i64],
        )?;
    }
    let expanded = meta(schema::EXPANDED)?.and_then(|n| n.parse::<usize>().ok());
    let expanded = expanded.unwrap_or(0);
    for (i, sql) in EXPANSIONS.iter().enumerate().skip(expanded) {
        tx.execute_batch(sql)?;
        tracing::info!(expansion = i + 1, "account store expanded");
    }
    if expanded < EXPANSIONS.len() {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![schema::EXPANDED, EXPANSIONS.len().to_string()],
        )?;
    }
    let data = format!("{SKELETON_DATA:?}");
    let made_with: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'skeleton_data'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if made_with.as_deref() != Some(data.as_str()) {
        backfill_names(&tx, false)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('skeleton_data', ?1)",
            params![data],
        )?;
    }
    // The write check: a store that cannot be written must stop the start, not answer every
    // registration "unavailable".
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?1)",
        params![unix_now().to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

fn fill_folded(conn: &Connection) -> Result<(), StoreError> {
    backfill_names(conn, true)
}

/// Number the accounts there are, oldest first, and index the ids.
fn fill_ids(conn: &Connection) -> Result<(), StoreError> {
    let keys: Vec<String> = conn
        .prepare("SELECT key FROM accounts ORDER BY created_at, key")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (i, key) in keys.iter().enumerate() {
        conn.prepare_cached("UPDATE accounts SET id = ?2 WHERE key = ?1")?
            .execute(params![key, i as i64 + 1])?;
    }
    conn.execute_batch("CREATE UNIQUE INDEX accounts_id ON accounts (id);")?;
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_id', ?1)",
        params![keys.len() as i64],
    )?;
    Ok(())
}

/// Compute the skeleton (and with `folded`, the folded name) of every account; log each folded
/// name that more than one account now shares, once.
fn backfill_names(conn: &Connection, folded: bool) -> Result<(), StoreError> {
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT key, username FROM accounts WHERE username IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (key, username) in &rows {
        if folded {
            conn.prepare_cached("UPDATE accounts SET folded = ?2, skeleton = ?3 WHERE key = ?1")?
                .execute(params![key, fold(username), skeleton(username)])?;
        } else {
            conn.prepare_cached("UPDATE accounts SET skeleton = ?2 WHERE key = ?1")?
                .execute(params![key, skeleton(username)])?;
        }
    }
    if folded {
        let mut shared = conn.prepare(
            "SELECT folded, group_concat(username, ', ') FROM accounts WHERE folded IS NOT NULL
             GROUP BY folded HAVING count(*) > 1",
        )?;
        let collisions =
            shared.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for collision in collisions {
            let (folded, names) = collision?;
            tracing::warn!(
                %folded, accounts = %names,
                "accounts that were distinct now fold to one name; each keeps logging in by its own spelling"
            );
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Open (creating if needed) the store in directory `dir`, checking its integrity.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        SqliteStore::open_with(dir, true)
    }

    /// Open the store in `dir`; `integrity_check`: run `PRAGMA quick_check` first (it reads
    /// the whole file: skip it only for huge stores).
    pub fn open_with(dir: &Path, integrity_check: bool) -> Result<Self, StoreError> {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::DataDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        writable_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let mut writer = open_connection(&path)?;
        if integrity_check {
            quick_check(&writer)?;
        }
        migrate(&mut writer).map_err(|e| named(e, &path))?;
        let reader = open_connection(&path)?;
        let records_path = dir.join(RECORDS_FILE);
        let records = open_records(&records_path).map_err(|e| named(e, &records_path))?;
        Ok(SqliteStore {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            records: Mutex::new(records),
            legacy_names: AtomicBool::new(false),
        })
    }
}

/// An account as an operator's listing reads it: the columns id, username and hash from
/// column `at` on (no ban).
fn listed(row: &rusqlite::Row, at: usize) -> rusqlite::Result<Account> {
    Ok(Account {
        id: u64::try_from(row.get::<_, i64>(at)?).unwrap_or(0),
        username: row.get(at + 1)?,
        hash: row.get(at + 2)?,
        ban: None,
    })
}

/// The account a name means: the one that folds the same, and among accounts from before v2
/// that share a folded name, the one spelled exactly so (else the oldest).
const CHOOSE: &str = "SELECT key, username, hash, id, banned_until, ban_reason FROM accounts
     WHERE folded = ?1
     ORDER BY (username = ?2) DESC, created_at, key LIMIT 1";

/// What an operator sees of an account, from the columns id, username, hash, created_at,
/// sessions_after, banned_until and ban_reason.
fn details_row(row: &rusqlite::Row) -> rusqlite::Result<Details> {
    Ok(Details {
        account: Account {
            id: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
            username: row.get(1)?,
            hash: row.get(2)?,
            ban: Ban::from_columns(row.get(5)?, row.get(6)?),
        },
        created_at: row.get(3)?,
        sessions_after: row.get(4)?,
    })
}

/// Revoke session `sid` of account `id` until `until_ms` inside `tx`; past
/// [`REVOKED_PER_ACCOUNT`] revocations of the account, void its sessions begun before
/// `void_before` instead.
fn revoke_in(
    tx: &rusqlite::Transaction,
    id: i64,
    sid: &str,
    until_ms: Millis,
    void_before: Millis,
) -> Result<(), StoreError> {
    let held: i64 = tx
        .prepare_cached("SELECT count(*) FROM revoked_sessions WHERE account_id = ?1")?
        .query_row(params![id], |row| row.get(0))?;
    if held >= REVOKED_PER_ACCOUNT {
        tx.prepare_cached(
            "UPDATE accounts SET sessions_after = max(sessions_after, ?2) WHERE id = ?1",
        )?
        .execute(params![id, void_before])?;
    } else {
        tx.prepare_cached(
            "INSERT INTO revoked_sessions (sid, account_id, until_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (sid) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
        )?
        .execute(params![sid, id, until_ms])?;
    }
    Ok(())
}

/// A device's columns, as [`device_row`] reads them (the table named `d`).
const DEVICE_COLUMNS: &str =
    "d.device_id, d.account_id, d.secret_hash, d.link, d.linked_ms, d.last_used_ms";

/// A device, from the columns [`DEVICE_COLUMNS`] names, from column 0 on.
fn device_row(row: &rusqlite::Row) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: row.get(0)?,
        account_id: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        secret_hash: row.get(2)?,
        link: row.get(3)?,
        linked_ms: row.get(4)?,
        last_used_ms: row.get(5)?,
    })
}

/// Delete the device `device_id` if its account is gone (deleted by a release that did not
/// know devices, during a rollback): the id is free again, not held for good.
fn drop_orphan(tx: &rusqlite::Transaction, device_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM devices WHERE device_id = ?1
             AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = devices.account_id)",
    )?
    .execute(params![device_id])?;
    Ok(())
}

/// Store `device` as it is.
fn insert_device(tx: &rusqlite::Transaction, device: &Device) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO devices (device_id, account_id, secret_hash, link, linked_ms, last_used_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        device.device_id,
        i64::try_from(device.account_id).unwrap_or(-1),
        device.secret_hash,
        device.link,
        device.linked_ms,
        device.last_used_ms
    ])?;
    Ok(())
}

/// [`Store::create`]'s work inside `tx`: the account, unless its name or a look-alike is held.
fn create_in(
    tx: &rusqlite::Transaction,
    account: &Account,
    request_id: &str,
) -> Result<Created, StoreError> {
    let folded = fold(&account.username);
    let skeleton = skeleton(&account.username);
    // Taken (by this very request, repeated after a lost reply, or by another), or a
    // look-alike of an existing name.
    let holder: Option<String> = tx
        .prepare_cached(
            "SELECT request_id FROM accounts WHERE folded = ?1 OR skeleton = ?2
             ORDER BY (folded = ?1) DESC LIMIT 1",
        )?
        .query_row(params![folded, skeleton], |row| row.get(0))
        .optional()?;
    if let Some(stored_by) = holder {
        return Ok(Created::held_by(&stored_by, request_id));
    }
    let id: i64 = tx
        .prepare_cached(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'last_id'
             RETURNING CAST(value AS INTEGER)",
        )?
        .query_row([], |row| row.get(0))?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO accounts (key, username, hash, created_at, request_id, folded, skeleton, id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?1, ?6, ?7) ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![
            folded,
            account.username,
            account.hash,
            unix_now(),
            request_id,
            skeleton,
            id
        ])?;
    Ok(Created::inserted(inserted as u64))
}

impl Store for SqliteStore {
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(CHOOSE)?;
        stmt.query_row(params![fold(username), username], |row| {
            Ok(Account {
                id: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                username: row.get(1)?,
                hash: row.get(2)?,
                ban: Ban::from_columns(row.get(4)?, row.get(5)?),
            })
        })
        .optional()
        .map_err(StoreError::from)
    }

    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let created = create_in(&tx, account, request_id)?;
        tx.commit()?;
        Ok(created)
    }

    /// One transaction (one fsync) for as many creates as fit in half of [`BATCH_TIME`](super::contract::BATCH_TIME), then
    /// the next: SQLite has one write lock, so there is no lock order to keep.
    fn create_many(&self, accounts: &[(Account, String)]) -> Result<Vec<Created>, StoreError> {
        let mut created = Vec::with_capacity(accounts.len());
        let mut conn = self.writer.lock();
        while created.len() < accounts.len() {
            let started = std::time::Instant::now();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (account, request_id) in &accounts[created.len()..] {
                created.push(create_in(&tx, account, request_id)?);
                if started.elapsed() >= super::contract::BATCH_TIME / 2 {
                    break;
                }
            }
            tx.commit()?;
        }
        Ok(created)
    }

    fn update_hash(&self, username: &str, old: &str, hash: &str) -> Result<bool, StoreError> {
        let conn = self.writer.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE accounts SET hash = ?3 WHERE key = (SELECT key FROM ({CHOOSE})) AND hash = ?4"
        ))?;
        let updated = stmt.execute(params![fold(username), username, hash, old])?;
        Ok(updated == 1)
    }

    fn ping(&self) -> Result<(), StoreError> {
        let conn = self.reader.lock();
        Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?)
    }

    fn details(&self, username: &str) -> Result<Option<Details>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, username, hash, created_at, sessions_after, banned_until, ban_reason
                 FROM accounts WHERE key = (SELECT key FROM ({CHOOSE}))"
        ))?;
        stmt.query_row(params![fold(username), username], details_row)
            .optional()
            .map_err(StoreError::from)
    }

    fn delete(&self, username: &str) -> Result<bool, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key = username.strip_prefix('#');
        let id: Option<i64> = match key.and_then(|id| id.parse::<i64>().ok()) {
            Some(id) => tx
                .prepare_cached("SELECT id FROM accounts WHERE id = ?1")?
                .query_row(params![id], |row| row.get(0))
                .optional()?,
            None => tx
                .prepare_cached(&format!("SELECT id FROM ({CHOOSE})"))?
                .query_row(params![fold(username), username], |row| row.get(0))
                .optional()?,
        };
        let Some(id) = id else {
            return Ok(false);
        };
        tx.prepare_cached("DELETE FROM devices WHERE account_id = ?1")?
            .execute(params![id])?;
        tx.prepare_cached("DELETE FROM accounts WHERE id = ?1")?
            .execute(params![id])?;
        tx.commit()?;
        Ok(true)
    }

    fn rename(&self, old: &str, new: &str) -> Result<Renamed, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<(String, String)> = tx
            .prepare_cached(&format!("SELECT key, username FROM ({CHOOSE})"))?
            .query_row(params![fold(old), old], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let Some((key, from)) = found else {
            return Ok(Renamed::NoSuchAccount);
        };
        let (folded, skeleton) = (fold(new), skeleton(new));
        let holder: Option<String> = tx
            .prepare_cached(
                "SELECT username FROM accounts
                 WHERE key <> ?3 AND (folded = ?1 OR skeleton = ?2 OR key = ?1) LIMIT 1",
            )?
            .query_row(params![folded, skeleton, key], |row| row.get(0))
            .optional()?;
        if let Some(holder) = holder {
            return Ok(Renamed::Taken(holder));
        }
        tx.prepare_cached(
            "UPDATE accounts SET key = ?1, folded = ?1, skeleton = ?2, username = ?3
             WHERE key = ?4",
        )?
        .execute(params![folded, skeleton, new, key])?;
        tx.commit()?;
        Ok(Renamed::From(from))
    }

    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<Account>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, username, hash FROM accounts
             WHERE folded >= ?1 AND folded < ?1 || char(1114111)
             ORDER BY folded, created_at LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![fold(prefix), limit], |row| listed(row, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn look_alikes(&self, limit: u32) -> Result<Vec<(String, Account)>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare(
            "SELECT skeleton, id, username, hash FROM accounts WHERE skeleton IN
                 (SELECT skeleton FROM accounts WHERE skeleton IS NOT NULL
                  GROUP BY skeleton HAVING count(*) > 1)
             ORDER BY skeleton, id LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], |row| Ok((row.get(0)?, listed(row, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn accounts_after(&self, after: u64, limit: u32) -> Result<Vec<Account>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, coalesce(username, ''), hash FROM accounts WHERE id > ?1
             ORDER BY id LIMIT ?2",
        )?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, limit], |row| listed(row, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_ban(&self, username: &str, ban: Option<&Ban>) -> Result<bool, StoreError> {
        let conn = self.writer.lock();
        let (until, reason) = ban.map_or((0, ""), |b| (b.until_ms, b.reason.as_str()));
        // A ban voids every session begun before it; lifting one leaves sessions as they are.
        let void = if ban.is_some() {
            crate::clock::now_ms()
        } else {
            0
        };
        // `#ID`: a guest, whose key it is.
        let key_of = match username.starts_with('#') {
            true => "?2",
            false => "(SELECT key FROM (CHOOSE))",
        };
        let updated = conn
            .prepare_cached(&format!(
                "UPDATE accounts SET banned_until = ?3, ban_reason = ?4,
                     sessions_after = max(sessions_after, ?5)
                 WHERE key = {}",
                key_of.replace("CHOOSE", CHOOSE)
            ))?
            .execute(params![fold(username), username, until, reason, void])?;
        Ok(updated == 1)
    }

    fn count(&self) -> Result<u64, StoreError> {
        let conn = self.reader.lock();
        let n: i64 = conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn session(
        &self,
        account_id: u64,
        sid: &str,
        link: Option<&str>,
    ) -> Result<Option<SessionState>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT coalesce(username, ''), sessions_after,
                 EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = ?2 OR sid = 'link:' || ?3)
             FROM accounts WHERE id = ?1",
        )?;
        let id = i64::try_from(account_id).unwrap_or(-1);
        stmt.query_row(params![id, sid, link], |row| {
            Ok(SessionState {
                username: row.get(0)?,
                sessions_after: row.get(1)?,
                revoked: row.get(2)?,
            })
        })
        .optional()
        .map_err(StoreError::from)
    }

    fn revoke_session(&self, r: &Revocation) -> Result<(), StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = i64::try_from(r.account_id).unwrap_or(-1);
        revoke_in(&tx, id, &r.sid, r.until_ms, r.began_ms.saturating_add(1))?;
        tx.commit()?;
        Ok(())
    }

    fn void_sessions(
        &self,
        account_id: u64,
        before_ms: Millis,
        hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        let conn = self.writer.lock();
        let id = i64::try_from(account_id).unwrap_or(-1);
        let updated = conn
            .prepare_cached(
                "UPDATE accounts SET sessions_after = max(sessions_after, ?2),
                     hash = coalesce(?3, hash)
                 WHERE id = ?1 AND (?3 IS NULL OR banned_until <= ?2)",
            )?
            .execute(params![id, before_ms, hash])?;
        Ok(updated == 1)
    }

    fn prune_revoked(&self, now: Millis) -> Result<u64, StoreError> {
        let conn = self.writer.lock();
        let pruned = conn.execute(
            "DELETE FROM revoked_sessions WHERE until_ms <= ?1",
            params![now],
        )?;
        Ok(pruned as u64)
    }

    fn find_for_login(
        &self,
        username: &str,
        keys: &[String],
    ) -> Result<(Option<Account>, Vec<Record>), StoreError> {
        let account = self.find(username)?;
        let conn = self.records.lock();
        let records = keys
            .iter()
            .map(|key| read_record(&conn, key))
            .collect::<Result<_, _>>()?;
        Ok((account, records))
    }

    fn update_records(
        &self,
        keys: &[String],
        now: Millis,
        change: &mut dyn FnMut(&mut [Record]),
    ) -> Result<(), StoreError> {
        let mut conn = self.records.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut records: Vec<Record> = keys
            .iter()
            .map(|key| read_record(&tx, key))
            .collect::<Result<_, _>>()?;
        change(&mut records);
        for (key, r) in keys.iter().zip(&records) {
            if r.expires <= now {
                tx.prepare_cached("DELETE FROM records WHERE key = ?1")?
                    .execute(params![key])?;
                continue;
            }
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO records (key, {RECORD_COLUMNS}, rank)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                key,
                r.count,
                r.window_start,
                r.lockouts,
                r.locked_until,
                familiar_text(r),
                r.familiar_until,
                r.expires,
                r.rank(now)
            ])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn find_device(&self, device_id: &str, keys: &[String]) -> Result<DeviceRead, StoreError> {
        let found = {
            let conn = self.reader.lock();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS}, coalesce(a.username, ''), a.hash, a.banned_until,
                        a.ban_reason
                 FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.device_id = ?1"
            ))?;
            stmt.query_row(params![device_id], |row| {
                let device = device_row(row)?;
                let account = Account {
                    id: device.account_id,
                    username: row.get(6)?,
                    hash: row.get(7)?,
                    ban: Ban::from_columns(row.get(8)?, row.get(9)?),
                };
                Ok((device, account))
            })
            .optional()?
        };
        let conn = self.records.lock();
        let records = keys
            .iter()
            .map(|key| read_record(&conn, key))
            .collect::<Result<_, _>>()?;
        Ok((found, records))
    }

    fn create_guest(
        &self,
        device: &Device,
        request_id: &str,
    ) -> Result<Option<(Account, Device)>, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        drop_orphan(&tx, &device.device_id)?;
        let held: Option<(Device, Option<String>, String)> = tx
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS}, a.username, a.request_id
                 FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.device_id = ?1"
            ))?
            .query_row(params![device.device_id], |row| {
                Ok((device_row(row)?, row.get(6)?, row.get(7)?))
            })
            .optional()?;
        if let Some((stored, name, stored_by)) = held {
            // This very create, repeated: its guest again.
            return Ok((name.is_none() && stored_by == request_id).then(|| {
                let account = Account {
                    id: stored.account_id,
                    username: String::new(),
                    hash: String::new(),
                    ban: None,
                };
                (account, stored)
            }));
        }
        let id: i64 = tx
            .prepare_cached(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'last_id'
                 RETURNING CAST(value AS INTEGER)",
            )?
            .query_row([], |row| row.get(0))?;
        tx.prepare_cached(
            "INSERT INTO accounts (key, username, hash, created_at, request_id, folded, skeleton, id)
             VALUES ('#' || ?1, NULL, '', ?2, ?3, NULL, NULL, ?1)",
        )?
        .execute(params![id, unix_now(), request_id])?;
        let stored = Device {
            account_id: u64::try_from(id).unwrap_or(0),
            ..device.clone()
        };
        insert_device(&tx, &stored)?;
        tx.commit()?;
        let account = Account {
            id: stored.account_id,
            username: String::new(),
            hash: String::new(),
            ban: None,
        };
        Ok(Some((account, stored)))
    }

    fn touch_device(&self, device_id: &str, now: Millis) -> Result<(), StoreError> {
        let conn = self.writer.lock();
        conn.prepare_cached("UPDATE devices SET last_used_ms = ?2 WHERE device_id = ?1")?
            .execute(params![device_id, now])?;
        Ok(())
    }

    fn claim(
        &self,
        account_id: u64,
        username: &str,
        hash: &str,
        request_id: &str,
    ) -> Result<Claimed, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = i64::try_from(account_id).unwrap_or(-1);
        let found: Option<(Option<String>, String)> = tx
            .prepare_cached("SELECT username, request_id FROM accounts WHERE id = ?1")?
            .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        match found {
            None => return Ok(Claimed::NoAccount),
            Some((Some(_), stored_by)) if stored_by == request_id => return Ok(Claimed::Done),
            Some((Some(_), _)) => return Ok(Claimed::AlreadyClaimed),
            Some((None, _)) => {}
        }
        let (folded, skeleton) = (fold(username), skeleton(username));
        let taken = tx
            .prepare_cached(
                "SELECT 1 FROM accounts WHERE folded = ?1 OR skeleton = ?2 OR key = ?1",
            )?
            .exists(params![folded, skeleton])?;
        if taken {
            return Ok(Claimed::Taken);
        }
        tx.prepare_cached(
            "UPDATE accounts SET key = ?2, folded = ?2, skeleton = ?3, username = ?4, hash = ?5,
                 request_id = ?6
             WHERE id = ?1 AND username IS NULL",
        )?
        .execute(params![id, folded, skeleton, username, hash, request_id])?;
        tx.commit()?;
        Ok(Claimed::Done)
    }

    fn link_device(&self, device: &Device) -> Result<Linked, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        drop_orphan(&tx, &device.device_id)?;
        let holder: Option<i64> = tx
            .prepare_cached("SELECT account_id FROM devices WHERE device_id = ?1")?
            .query_row(params![device.device_id], |row| row.get(0))
            .optional()?;
        let id = i64::try_from(device.account_id).unwrap_or(-1);
        match holder {
            Some(other) if other != id => return Ok(Linked::Taken),
            Some(_) => {
                tx.prepare_cached("UPDATE devices SET secret_hash = ?2 WHERE device_id = ?1")?
                    .execute(params![device.device_id, device.secret_hash])?;
            }
            None => {
                let held: i64 = tx
                    .prepare_cached("SELECT count(*) FROM devices WHERE account_id = ?1")?
                    .query_row(params![id], |row| row.get(0))?;
                if held >= DEVICES_PER_ACCOUNT {
                    return Ok(Linked::TooMany);
                }
                insert_device(&tx, device)?;
            }
        }
        tx.commit()?;
        Ok(Linked::Done)
    }

    fn unlink_device(
        &self,
        account_id: u64,
        device_id: &str,
        now: Millis,
        until_ms: Millis,
    ) -> Result<Unlinked, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = i64::try_from(account_id).unwrap_or(-1);
        let link: Option<String> = tx
            .prepare_cached("SELECT link FROM devices WHERE device_id = ?1 AND account_id = ?2")?
            .query_row(params![device_id, id], |row| row.get(0))
            .optional()?;
        let Some(link) = link else {
            return Ok(Unlinked::NotLinked);
        };
        let last: bool = tx
            .prepare_cached(
                "SELECT (SELECT username IS NULL FROM accounts WHERE id = ?1)
                    AND (SELECT count(*) FROM devices WHERE account_id = ?1) <= 1",
            )?
            .query_row(params![id], |row| row.get(0))?;
        if last {
            return Ok(Unlinked::LastCredential);
        }
        tx.prepare_cached("DELETE FROM devices WHERE device_id = ?1")?
            .execute(params![device_id])?;
        revoke_in(&tx, id, &format!("link:{link}"), until_ms, now)?;
        tx.commit()?;
        Ok(Unlinked::Done)
    }

    fn devices(&self, account_id: u64) -> Result<Vec<Device>, StoreError> {
        let conn = self.reader.lock();
        let id = i64::try_from(account_id).unwrap_or(-1);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.account_id = ?1
             ORDER BY d.linked_ms DESC, d.device_id"
        ))?;
        let rows = stmt.query_map(params![id], device_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn details_by_id(&self, id: u64) -> Result<Option<Details>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, coalesce(username, ''), hash, created_at, sessions_after, banned_until,
                    ban_reason
             FROM accounts WHERE id = ?1",
        )?;
        let id = i64::try_from(id).unwrap_or(-1);
        stmt.query_row(params![id], details_row)
            .optional()
            .map_err(StoreError::from)
    }

    fn prune_guests(&self, idle_before_ms: Millis, dry_run: bool) -> Result<u64, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let idle: Vec<i64> = tx
            .prepare_cached(
                "SELECT id FROM accounts a WHERE a.username IS NULL AND NOT EXISTS
                     (SELECT 1 FROM devices d WHERE d.account_id = a.id AND d.last_used_ms >= ?1)",
            )?
            .query_map(params![idle_before_ms], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        if !dry_run {
            for id in &idle {
                tx.prepare_cached("DELETE FROM devices WHERE account_id = ?1")?
                    .execute(params![id])?;
                tx.prepare_cached("DELETE FROM accounts WHERE id = ?1 AND username IS NULL")?
                    .execute(params![id])?;
            }
            tx.commit()?;
        }
        Ok(idle.len() as u64)
    }

    fn legacy_names_imported(&self) -> Result<bool, StoreError> {
        if self.legacy_names.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let conn = self.reader.lock();
        let found = conn
            .prepare_cached("SELECT 1 FROM meta WHERE key = ?1")?
            .exists(params![LEGACY_NAMES_IMPORTED])?;
        self.legacy_names.store(found, Ordering::Relaxed);
        Ok(found)
    }

    fn mark_legacy_names_imported(&self, how: &str) -> Result<bool, StoreError> {
        let conn = self.writer.lock();
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
            params![LEGACY_NAMES_IMPORTED, how],
        )?;
        Ok(inserted == 1)
    }

    fn schema_state(&self) -> Result<SchemaState, StoreError> {
        let conn = self.reader.lock();
        let version: i64 =
            conn.query_row("SELECT version FROM schema_version", [], |r| r.get(0))?;
        let meta = |key: &str| -> Result<Option<String>, StoreError> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        Ok(SchemaState {
            contracted: usize::try_from(version)
                .unwrap_or(0)
                .saturating_sub(MIGRATIONS.len()),
            expanded: meta(schema::EXPANDED)?
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            min_code_version: meta(schema::MIN_CODE_VERSION)?,
        })
    }

    fn contract(&self, step: usize) -> Result<bool, StoreError> {
        let Some(contraction) = CONTRACTIONS.get(step) else {
            return Ok(false);
        };
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("SELECT version FROM schema_version", [], |r| r.get(0))?;
        let done = usize::try_from(version)
            .unwrap_or(0)
            .saturating_sub(MIGRATIONS.len());
        if done != step {
            return Ok(false);
        }
        tx.execute_batch(contraction.sqlite)?;
        tx.execute(
            "UPDATE schema_version SET version = ?1",
            params![(MIGRATIONS.len() + step + 1) as i64],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![schema::MIN_CODE_VERSION, contraction.min_code_version],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn record_peer(&self, instance: &str, now: Millis) -> Result<(), StoreError> {
        let kept = Millis::try_from(schema::PEER_KEPT.as_millis()).unwrap_or(Millis::MAX);
        let conn = self.writer.lock();
        conn.prepare_cached(
            "INSERT OR REPLACE INTO peers (instance, code_version, last_seen_ms)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![instance, schema::CODE_VERSION, now])?;
        conn.prepare_cached("DELETE FROM peers WHERE last_seen_ms < ?1")?
            .execute(params![now.saturating_sub(kept)])?;
        Ok(())
    }

    fn peers(&self) -> Result<Vec<Peer>, StoreError> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare(
            "SELECT instance, code_version, last_seen_ms FROM peers ORDER BY last_seen_ms DESC",
        )?;
        let peers = stmt
            .query_map([], |r| {
                Ok(Peer {
                    instance: r.get(0)?,
                    code_version: r.get(1)?,
                    last_seen_ms: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(peers)
    }

    fn prune_records(&self, now: Millis, cap: u64) -> Result<u64, StoreError> {
        let mut conn = self.records.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let expired = tx.execute("DELETE FROM records WHERE expires <= ?1", params![now])?;
        let left: i64 = tx.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
        let excess = left.saturating_sub(i64::try_from(cap).unwrap_or(i64::MAX));
        let evicted = match excess > 0 {
            true => tx.execute(
                "DELETE FROM records WHERE key IN
                 (SELECT key FROM records ORDER BY rank LIMIT ?1)",
                params![excess],
            )?,
            false => 0,
        };
        tx.commit()?;
        Ok((expired + evicted) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> Account {
        Account::new(name, &format!("hash-of-{name}"))
    }

    /// What a lookup returns: the account with the id the store gave it.
    fn stored(store: &SqliteStore, name: &str) -> Account {
        store.find(name).unwrap().unwrap()
    }

    #[test]
    fn names_are_unique_without_regard_to_case() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(store.find("alice").unwrap().is_none());
        assert_eq!(store.create(&account("Alice"), "r1").unwrap(), Created::New);
        assert_eq!(
            store.create(&account("ALICE"), "r2").unwrap(),
            Created::Exists
        );
        assert_eq!(stored(&store, "aLiCe").username, "Alice");
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
        assert!(store.update_hash("DUP", "hash-of-Dup", "new-hash").unwrap());
        assert_eq!(store.find("dup").unwrap().unwrap().hash, "new-hash");
        assert!(!store.update_hash("nobody", "x", "y").unwrap());
    }

    #[test]
    fn data_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let store = SqliteStore::open(&dir).unwrap();
        store.create(&account("Private"), "r").unwrap();
        let mode = |name: &str| {
            let path = dir.join(name);
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(""), 0o700, "the directory");
        for file in [FILE_NAME, RECORDS_FILE] {
            assert_eq!(mode(file), 0o600, "{file}");
            assert_eq!(mode(&format!("{file}-wal")), 0o600, "{file}-wal");
            assert_eq!(mode(&format!("{file}-shm")), 0o600, "{file}-shm");
        }
    }

    #[test]
    fn accounts_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStore::open(dir.path())
            .unwrap()
            .create(&account("Bob"), "r")
            .unwrap();
        let reopened = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(stored(&reopened, "bob").username, "Bob");
    }

    #[test]
    fn look_alike_names_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.create(&account("admin"), "r1").unwrap(), Created::New);
        for twin in ["ＡＤＭＩＮ", "\u{0430}dmin", "𝐚𝐝𝐦𝐢𝐧"] {
            assert_eq!(
                store.create(&account(twin), "r2").unwrap(),
                Created::Exists,
                "{twin}"
            );
        }
        assert_eq!(stored(&store, "ＡＤＭＩＮ").username, "admin");
        assert_eq!(
            store.create(&account("straße"), "r3").unwrap(),
            Created::New
        );
        assert_eq!(
            store.create(&account("STRASSE"), "r4").unwrap(),
            Created::Exists
        );
    }

    #[test]
    fn a_store_from_before_versions_is_migrated_and_colliding_names_keep_logging_in() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            conn.execute_batch(MIGRATIONS[0].sql).unwrap();
            // Two accounts the old lower-casing told apart, which now fold to one name.
            for (key, name, hash) in [("straße", "straße", "h1"), ("strasse", "STRASSE", "h2")] {
                conn.execute(
                    "INSERT INTO accounts VALUES (?1, ?2, ?3, 0, ?1)",
                    params![key, name, hash],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.find("straße").unwrap().unwrap().hash, "h1");
        assert_eq!(store.find("STRASSE").unwrap().unwrap().hash, "h2");
        assert!(store.update_hash("STRASSE", "h2", "h3").unwrap());
        assert_eq!(store.find("straße").unwrap().unwrap().hash, "h1");
        assert_eq!(store.find("STRASSE").unwrap().unwrap().hash, "h3");
        assert_eq!(
            store.create(&account("Strasse"), "r").unwrap(),
            Created::Exists
        );
        drop(store);
        let version: i64 = Connection::open(dir.path().join(FILE_NAME))
            .unwrap()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        SqliteStore::open(dir.path()).unwrap(); // and opening again changes nothing
    }
}
