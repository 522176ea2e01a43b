//! [`PostgresStore`]: accounts in PostgreSQL, over an `r2d2_postgres` pool. Several account-dbs
//! may serve one database. All SQL for PostgreSQL lives in this file.
//!
//! The schema is brought up to date at start under an advisory lock, so account-dbs that start
//! together do not race; each step is recorded in `schema_version`, as in the SQLite store.
//! Names are unique by a unique index on the folded name; look-alike names are refused by a
//! check on the skeleton, serialised per skeleton by a transaction-scoped advisory lock. Every
//! commit is synchronous (`synchronous_commit = on` on every connection): `create` answers
//! only once the account is durable.
//!
//! Throttle records are written with `synchronous_commit = off` (no wait for the disk or a
//! standby: counting a failed login is no acknowledged write) to a logged table, so standbys
//! have them within a fraction of a second and lockouts survive a failover. It was `UNLOGGED`
//! until schema 7; BENCHMARKS.md has what the WAL costs (within the runs' spread).

use super::contract::{
    familiar_list, familiar_text, unix_now, Details, LoginRead, Renamed, Store, StoreError,
    LEGACY_NAMES_IMPORTED, REVOKED_PER_ACCOUNT,
};
use super::contract::{
    Claimed, DeviceRead, Linked, Peer, SchemaState, Unlinked, DEVICES_PER_ACCOUNT,
};
use super::pg_link::{self, SslMode};
use super::pg_nodes::Nodes;
use super::pg_watchdog::{self, Cancel, Watchdog};
use super::schema::{self, CONTRACTIONS};
use crate::auth::names::{fold, skeleton, SKELETON_DATA};
use crate::clock::Millis;
use crate::protocol::accountdb::{Account, Ban, Created, Device, Revocation, SessionState};
use crate::throttle::Record;
use postgres::types::Type;
use postgres::Statement;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The schema, one step per version; step N brings version N-1 to N.
const MIGRATIONS: [&str; 7] = [
    // 1: accounts with stable ids, folded names (unique) and skeletons (indexed).
    "CREATE TABLE accounts (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        folded     TEXT NOT NULL UNIQUE,
        skeleton   TEXT NOT NULL,
        username   TEXT NOT NULL,
        hash       TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        request_id TEXT NOT NULL
    );
    CREATE INDEX accounts_skeleton ON accounts (skeleton);",
    // 2: settings kept in the store: the confusables data the skeletons were made with.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 3: throttle records, not durable.
    "CREATE UNLOGGED TABLE throttle (
        key            TEXT PRIMARY KEY,
        count          INT NOT NULL DEFAULT 0,
        window_start   BIGINT NOT NULL DEFAULT 0,
        lockouts       INT NOT NULL DEFAULT 0,
        locked_until   BIGINT NOT NULL DEFAULT 0,
        familiar       TEXT NOT NULL DEFAULT '',
        familiar_until BIGINT NOT NULL DEFAULT 0,
        expires        BIGINT NOT NULL DEFAULT 0,
        rank           BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX throttle_expires ON throttle (expires);
    CREATE INDEX throttle_rank ON throttle (rank);",
    // 4: sessions: per account, when the sessions that still stand began (milliseconds);
    // per session, a revocation kept until the session could no longer be used.
    "ALTER TABLE accounts ADD COLUMN sessions_after BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE revoked_sessions (
        sid        TEXT PRIMARY KEY,
        account_id BIGINT NOT NULL,
        until_ms   BIGINT NOT NULL
    );
    CREATE INDEX revoked_sessions_until ON revoked_sessions (until_ms);
    CREATE INDEX revoked_sessions_account ON revoked_sessions (account_id);",
    // 5: bans: until when (milliseconds; 0: none) and why.
    "ALTER TABLE accounts ADD COLUMN banned_until BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN ban_reason TEXT NOT NULL DEFAULT '';",
    // 6: a create in one statement, one round trip instead of five. Creates of look-alike
    // names wait for each other on the skeleton's lock, across every account-db; the function
    // is VOLATILE, so each statement in it reads a snapshot taken after the lock was granted and
    // sees a look-alike committed meanwhile. Answers (rows inserted, request id of the account
    // that holds the name or a look-alike of it). It finds its tables by the search_path it was
    // made with, not its caller's. Like the tables, it runs with its caller's rights (anyone
    // who may insert into accounts may call it; several roles need no extra grant).
    "CREATE FUNCTION create_account(p_folded TEXT, p_skeleton TEXT, p_username TEXT,
                                    p_hash TEXT, p_created_at BIGINT, p_request_id TEXT,
                                    OUT inserted INT, OUT held_by TEXT)
     LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
     BEGIN
         PERFORM pg_advisory_xact_lock(hashtext(p_skeleton));
         SELECT request_id INTO held_by FROM accounts
          WHERE folded = p_folded OR skeleton = p_skeleton
          ORDER BY (folded = p_folded) DESC LIMIT 1;
         IF FOUND THEN
             inserted := 0;
             RETURN;
         END IF;
         INSERT INTO accounts (folded, skeleton, username, hash, created_at, request_id)
         VALUES (p_folded, p_skeleton, p_username, p_hash, p_created_at, p_request_id)
         ON CONFLICT (folded) DO NOTHING;
         GET DIAGNOSTICS inserted = ROW_COUNT;
     END $$;",
    // 7: throttle records logged, so that streaming standbys have them and lockouts survive a
    // failover; written unsynced (see UPSERT_RECORDS), so no login waits for the WAL.
    "ALTER TABLE throttle SET LOGGED;",
];

/// The expansions, one per step, each recorded in `meta` (see [`schema`]): only what older
/// builds ignore; an index on a big table is built `CONCURRENTLY`, outside the migration's
/// transaction.
const EXPANSIONS: [&str; schema::EXPANSIONS] = [
    // 1 (0.3.0): the account-dbs that run on the store, and their code versions.
    "CREATE TABLE peers (
        instance     TEXT PRIMARY KEY,
        code_version TEXT NOT NULL,
        last_seen_ms BIGINT NOT NULL
    );",
    // 2 (0.3.0): guests and devices. A guest has no name: `username`, `folded` and
    // `skeleton` become nullable (a catalog change: no rewrite; `folded` stays unique, and
    // NULLs are distinct); devices, keyed by the id the client chose.
    "ALTER TABLE accounts ALTER COLUMN username DROP NOT NULL,
                         ALTER COLUMN folded DROP NOT NULL,
                         ALTER COLUMN skeleton DROP NOT NULL;
    CREATE TABLE devices (
        device_id    TEXT PRIMARY KEY,
        account_id   BIGINT NOT NULL,
        secret_hash  TEXT NOT NULL,
        link         TEXT NOT NULL,
        linked_ms    BIGINT NOT NULL,
        last_used_ms BIGINT NOT NULL
    );
    CREATE INDEX devices_account ON devices (account_id);",
];

/// An account as an operator's listing reads it: the columns id, username and hash from
/// column `at` on (no ban).
fn listed(row: &postgres::Row, at: usize) -> Account {
    Account {
        id: id(row.get(at)),
        username: row.get(at + 1),
        hash: row.get(at + 2),
        ban: None,
    }
}

/// The advisory lock key under which migrations run (any constant the application owns).
const MIGRATION_LOCK: i64 = 0x6c6f_6769_6e5f_6462; // "login_db"

/// The advisory lock key held by the account-db pruning throttle records.
const PRUNE_LOCK: i64 = 0x7072_756e_655f_7468; // "prune_th"

/// Make each key's throttle row (the empty record where there was none), lock it, and read it.
/// Its transaction commits without waiting for the disk or a standby (`synchronous_commit` off
/// for it alone, set in the same statement: no extra round trip): a throttle record is no
/// acknowledged write.
static UPSERT_RECORDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO throttle (key) SELECT k FROM unnest($1::text[]) AS k
         WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL ORDER BY k
         ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
         RETURNING key, {RECORD_COLUMNS}"
    )
});

/// Accounts in a PostgreSQL database.
pub struct PostgresStore {
    pool: r2d2::Pool<PgManager>,
    /// The old server's names were found imported: never read again (it is kept for good).
    legacy_names: AtomicBool,
    /// `--store`'s hosts, and which is the writable node.
    nodes: Arc<Nodes>,
    /// Cancels calls still running at their deadline.
    watchdog: Watchdog,
    /// `--store-timeout`: what one request may take.
    timeout: Duration,
    /// Until when durable writes are refused without being tried: a commit went unconfirmed
    /// by the synchronous standby ([`PostgresStore::durably`]).
    unconfirmed: parking_lot::Mutex<Option<Instant>>,
}

/// How long durable writes are refused at once after a commit went unconfirmed (1 s), before
/// one is tried again.
const UNCONFIRMED_HOLD: Duration = Duration::from_secs(1);

/// A pooled connection, and the statements prepared on it: the hot ones are parsed and planned
/// once per connection, not once per request.
pub struct PgConn {
    client: postgres::Client,
    prepared: HashMap<&'static str, Statement>,
    /// When it last came back to the pool still open, or was last checked.
    known_good: Instant,
    /// The pool's [`PgManager::lost`] then: a connection found broken since makes every older
    /// one prove itself with a round trip before its next use.
    checked_in: u64,
    /// How a call running on it is cancelled.
    cancel: Arc<Cancel>,
}

impl PgConn {
    /// A transaction for a statement that reads a whole table, with [`MAINTENANCE`] settings.
    fn maintenance(&mut self) -> Result<postgres::Transaction<'_>, StoreError> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute(MAINTENANCE)?;
        Ok(tx)
    }

    /// `sql` prepared on this connection, the first time it is asked for.
    fn prepared(&mut self, sql: &'static str, types: &[Type]) -> Result<Statement, StoreError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare_typed(sql, types)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for PgConn {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// Settings for the statements that read whole tables (the prune, an operator's `list` and
/// `count`), within their transaction: the connection's own are for the hot path's index probes
/// (plans made once, no sequential scans, the store timeout). Ten seconds is what an operator
/// waits for a list of millions of accounts, and a full count of the throttle table at its cap.
/// Their writes (prunes of what expired) need no standby's confirmation: lost in a failover,
/// they are made again by the next prune.
const MAINTENANCE: &str = "SET LOCAL plan_cache_mode = auto; SET LOCAL enable_seqscan = on;
     SET LOCAL statement_timeout = '10s'; SET LOCAL synchronous_commit = off";

/// What a call with [`MAINTENANCE`] settings may take before it is cancelled (11 s: their
/// statement timeout, and a second for the rest).
const MAINTENANCE_TIME: Duration = Duration::from_secs(11);

/// What one chunk of an import's creates may take before it is cancelled (10 s; each aims at
/// [`BATCH_TIME`](super::contract::BATCH_TIME)).
const CHUNK_TIME: Duration = Duration::from_secs(10);

/// How long a pooled connection that came back open is taken as good without a round trip.
const TRUSTED_FOR: Duration = Duration::from_millis(500);

/// Logs the pool's failures to connect as one line per [`ERROR_SUMMARY_EVERY`], with how many
/// and the last cause: an outage would otherwise log several lines a second.
#[derive(Debug)]
struct ErrorSummary(crate::logging::RateLimited);

/// How often an outage's connection failures are summed up in the log (10 s).
const ERROR_SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl r2d2::HandleError<StoreError> for ErrorSummary {
    fn handle_error(&self, error: StoreError) {
        if let Some(failures) = self.0.hit() {
            tracing::warn!(failures, last_error = %error, "cannot connect to PostgreSQL");
        }
    }
}

/// The least time a first connection may take to be answered (2 s): the store timeout is for
/// requests on a connection, not for PostgreSQL's start-up exchange.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `host` names this machine: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Makes the pool's connections (to the writable node, within the store timeout) and checks
/// them.
pub struct PgManager {
    nodes: Arc<Nodes>,
    watchdog: Watchdog,
    timeout: Duration,
    /// Connections found broken so far (their node died, restarted or was demoted, or a call on
    /// them was cancelled).
    lost: AtomicU64,
}

impl std::fmt::Debug for PgManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgManager")
    }
}

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = StoreError;

    fn connect(&self) -> Result<PgConn, StoreError> {
        let client = self.nodes.connect(self.timeout)?;
        Ok(PgConn {
            cancel: Cancel::of(&client),
            client,
            prepared: HashMap::new(),
            known_good: Instant::now(),
            checked_in: self.lost.load(Ordering::Relaxed),
        })
    }

    /// A round trip to the server, unless the connection came back to the pool open within
    /// [`TRUSTED_FOR`] and none was found broken since: under load a checkout then costs no
    /// extra trip (HikariCP's `aliveBypassWindowMs`), and once one connection is found dead
    /// (its node died, or failed over) every other proves itself before it is used again.
    fn is_valid(&self, conn: &mut PgConn) -> Result<(), StoreError> {
        let lost = self.lost.load(Ordering::Relaxed);
        if conn.checked_in == lost && conn.known_good.elapsed() < TRUSTED_FOR {
            return Ok(());
        }
        let _watch = self.watchdog.watch(&conn.cancel, self.timeout);
        conn.client.simple_query("")?;
        conn.known_good = Instant::now();
        conn.checked_in = lost;
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        let broken = conn.client.is_closed() || conn.cancel.was_sent();
        if broken {
            self.lost.fetch_add(1, Ordering::Relaxed);
        } else {
            conn.known_good = Instant::now();
        }
        broken
    }
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user@host:port/dbname`, or several hosts
    /// `h1:5432,h2:5433`: the writable one is used) with a pool of `pool_size` connections, and
    /// bring the schema up to date. `timeout` bounds everything one request may wait for:
    /// connecting (over every host), a connection from the pool, a statement, a lock (a
    /// look-alike create held by a hung account-db), a commit waiting for a synchronous
    /// standby (cancelled), a transaction left idle (by one), and a link that went silent (TCP
    /// user timeout, keepalives). Keep it below login-server's per-attempt deadline, so that a
    /// stuck store is answered as an error and not waited out.
    pub fn open(url: &str, pool_size: u32, timeout: Duration) -> Result<Self, StoreError> {
        let store = PostgresStore::connect(url, pool_size, timeout, None)?;
        store.migrate()?;
        Ok(store)
    }

    /// [`PostgresStore::open`] without touching the schema (call [`PostgresStore::migrate`]),
    /// with the password in `password_file` when the URL has none ([`pg_link::link`]).
    pub(super) fn connect(
        url: &str,
        pool_size: u32,
        timeout: Duration,
        password_file: Option<&std::path::Path>,
    ) -> Result<Self, StoreError> {
        let pg_link::PgLink {
            config,
            hosts,
            tls,
            mode,
        } = pg_link::link(url, password_file)?;
        let remote = config.get_hosts().iter().any(|host| match host {
            postgres::config::Host::Tcp(name) => !is_loopback(name),
            _ => false,
        });
        if remote && mode < SslMode::VerifyFull {
            tracing::warn!(
                ?mode,
                "PostgreSQL is not on this host and sslmode is below verify-full: whoever is on \
                 the path can read or pose as it; add sslmode=verify-full&sslrootcert=CA to --store"
            );
        }
        let ms = timeout.as_millis().max(1);
        // A prepared statement is planned once, not at every execution: PostgreSQL's default
        // planned the batched login lookup afresh each time (its custom plans looked cheaper
        // than the generic one), which cost more than running it. Every statement here reads by
        // an index, and keeps doing so: a plan made while a table was small (a new deployment)
        // would otherwise scan it whole at every lookup as it grows, until ANALYZE replans it.
        let options = format!(
            "-c synchronous_commit=on -c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
             -c statement_timeout={ms} -c lock_timeout={ms} \
             -c idle_in_transaction_session_timeout={}",
            ms * 2
        );
        let hosts = hosts
            .into_iter()
            .map(|(name, mut config)| {
                config
                    .tcp_user_timeout(timeout * 2)
                    .keepalives(true)
                    .keepalives_idle(Duration::from_secs(5))
                    .keepalives_interval(Duration::from_secs(1))
                    .keepalives_retries(3)
                    .options(&options)
                    .notice_callback(pg_watchdog::notice);
                (name, config)
            })
            .collect();
        let nodes = Arc::new(Nodes::new(hosts, tls.clone()));
        let watchdog = Watchdog::start(tls).map_err(StoreError::Thread)?;
        // One connection first, for its error as PostgreSQL or the OS gave it (the pool keeps
        // only the text): whether to wait for the server, and what to tell the operator.
        drop(nodes.connect((timeout * 4).max(PROBE_TIMEOUT))?);
        let manager = PgManager {
            nodes: nodes.clone(),
            watchdog: watchdog.clone(),
            timeout,
            lost: AtomicU64::new(0),
        };
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .error_handler(Box::new(ErrorSummary(crate::logging::RateLimited::new(
                ERROR_SUMMARY_EVERY,
            ))))
            .build_unchecked(manager);
        Ok(PostgresStore {
            pool,
            legacy_names: AtomicBool::new(false),
            nodes,
            watchdog,
            timeout,
            unconfirmed: parking_lot::Mutex::new(None),
        })
    }

    /// Whether the database holds a store: its `schema_version` table.
    pub(super) fn has_schema(&self) -> Result<bool, StoreError> {
        self.with(self.timeout, |conn| {
            let row = conn.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?;
            Ok(row.get(0))
        })
    }

    /// A pooled connection, its calls not watched: for work whose length has no bound known
    /// in advance (a migration), or that watches each of its parts ([`Store::create_many`]).
    fn conn(&self) -> Result<r2d2::PooledConnection<PgManager>, StoreError> {
        self.pool.get().map_err(StoreError::Pool)
    }

    /// `call` on a pooled connection, cancelled if it still runs after `patience`; a commit
    /// in it whose wait for a synchronous standby was cancelled is
    /// [`StoreError::Unreplicated`], whatever `call` made of it.
    fn with<T>(
        &self,
        patience: Duration,
        call: impl FnOnce(&mut PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let _watch = self.watchdog.watch(&conn.cancel, patience);
        pg_watchdog::take_unreplicated();
        let result = call(&mut conn);
        match pg_watchdog::take_unreplicated() {
            true => Err(StoreError::Unreplicated),
            false => result,
        }
    }

    /// [`with`](Self::with) for a write that must reach a synchronous standby before it is
    /// acknowledged: while commits go unconfirmed (one did within the last
    /// [`UNCONFIRMED_HOLD`]), refused at once with [`StoreError::NoStandby`], not tried, but
    /// for one at a time that finds out whether the standby is back. A standby lost for long
    /// then costs each write nothing, where waiting the store timeout for every one would
    /// queue them all, and commits nothing only the primary has.
    fn durably<T>(
        &self,
        call: impl FnOnce(&mut PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let mut until = self.unconfirmed.lock();
            if let Some(at) = *until {
                let now = Instant::now();
                if now < at {
                    return Err(StoreError::NoStandby);
                }
                // This one finds out; the others are refused meanwhile.
                *until = Some(now + self.timeout + UNCONFIRMED_HOLD);
            }
        }
        let result = self.with(self.timeout, call);
        match &result {
            Err(StoreError::Unreplicated) => {
                *self.unconfirmed.lock() = Some(Instant::now() + UNCONFIRMED_HOLD);
            }
            Ok(_) => *self.unconfirmed.lock() = None,
            Err(_) => {}
        }
        result
    }

    /// The host new connections last reached (`host:port`).
    pub fn primary(&self) -> Option<String> {
        self.nodes.primary()
    }

    /// Bring the schema to the latest version, one account-db at a time.
    pub(super) fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        // A migration may take long on a big table: the request timeouts do not apply to it.
        // Another account-db's is waited for 2 s at a time (55P03 when it lasts longer: a
        // transient error, so a start retries it within --store-start-timeout and hears a stop
        // signal meanwhile, instead of waiting on the lock for ever).
        // It commits without waiting for a synchronous standby (`local`): a start must not hang
        // on a lost standby, and what it writes is made again by the next start if a failover
        // loses it (every step is judged by the version found). A start that finds the schema
        // current writes nothing at all.
        tx.batch_execute(
            "SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = 0;
             SET LOCAL idle_in_transaction_session_timeout = 0;
             SET LOCAL synchronous_commit = local;",
        )?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("SET LOCAL lock_timeout = 0")?;
        // Created only where missing: CREATE TABLE IF NOT EXISTS would print a NOTICE at
        // every start and admin command.
        let exists: bool = tx
            .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
            .get(0);
        if !exists {
            tx.batch_execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")?;
        }
        let version: i32 = tx
            .query_opt("SELECT version FROM schema_version", &[])?
            .map_or(0, |row| row.get(0));
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        let meta =
            |tx: &mut postgres::Transaction, key: &str| -> Result<Option<String>, StoreError> {
                // `meta` is made by step 2: absent from an empty database.
                let exists: bool = tx
                    .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
                    .get(0);
                if !exists {
                    return Ok(None);
                }
                let row = tx.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?;
                Ok(row.map(|row| row.get(0)))
            };
        let min_code_version = meta(&mut tx, schema::MIN_CODE_VERSION)?;
        schema::may_run(
            version,
            MIGRATIONS.len() + CONTRACTIONS.len(),
            min_code_version.as_deref(),
        )?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(step)?;
            tracing::info!(version = i + 1, "account store migrated");
        }
        if version < MIGRATIONS.len() {
            let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
            tx.execute("DELETE FROM schema_version", &[])?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&latest],
            )?;
        }
        let expanded = meta(&mut tx, schema::EXPANDED)?.and_then(|n| n.parse::<usize>().ok());
        let expanded = expanded.unwrap_or(0);
        for (i, sql) in EXPANSIONS.iter().enumerate().skip(expanded) {
            tx.batch_execute(sql)?;
            tracing::info!(expansion = i + 1, "account store expanded");
        }
        if expanded < EXPANSIONS.len() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&schema::EXPANDED, &EXPANSIONS.len().to_string()],
            )?;
        }
        // Skeletons made with other confusables data (or another recipe) are made again.
        let data = format!("{SKELETON_DATA:?}");
        let made_with: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'skeleton_data'", &[])?
            .map(|row| row.get(0));
        if made_with.as_deref() != Some(data.as_str()) {
            let rows = tx.query(
                "SELECT id, username FROM accounts WHERE username IS NOT NULL",
                &[],
            )?;
            for row in &rows {
                let (id, username): (i64, String) = (row.get(0), row.get(1));
                tx.execute(
                    "UPDATE accounts SET skeleton = $2 WHERE id = $1",
                    &[&id, &skeleton(&username)],
                )?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('skeleton_data', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&data],
            )?;
            if !rows.is_empty() {
                tracing::info!(accounts = rows.len(), "account skeletons rebuilt");
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn id(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A throttle record from a row whose columns `first..` are those of the `throttle` table
/// from `count` on; all NULL (an outer join that matched nothing): the empty record.
fn record(row: &postgres::Row, first: usize) -> Record {
    let number = |i: usize| row.get::<_, Option<i64>>(first + i).unwrap_or(0);
    let small = |i: usize| u32::try_from(row.get::<_, Option<i32>>(first + i).unwrap_or(0));
    Record {
        count: small(0).unwrap_or(0),
        window_start: number(1),
        lockouts: small(2).unwrap_or(0),
        locked_until: number(3),
        familiar: familiar_list(&row.get::<_, Option<String>>(first + 4).unwrap_or_default()),
        familiar_until: number(5),
        expires: number(6),
    }
}

const RECORD_COLUMNS: &str =
    "count, window_start, lockouts, locked_until, familiar, familiar_until, expires";

/// A login's read from its rows (see `find_for_login`): the account, the records of `keys`.
fn found(keys: &[String], rows: &[postgres::Row]) -> LoginRead {
    let account = rows.first().and_then(|row| {
        let id_at = 8; // after the key and the record's seven columns
        row.get::<_, Option<i64>>(id_at).map(|account_id| Account {
            id: id(account_id),
            username: row.get(id_at + 1),
            hash: row.get(id_at + 2),
            ban: Ban::from_columns(row.get(id_at + 3), row.get(id_at + 4)),
        })
    });
    (account, in_order(keys, rows))
}

/// The records of `rows` (column 0 the key, then [`RECORD_COLUMNS`]) in the order of `keys`.
fn in_order(keys: &[String], rows: &[postgres::Row]) -> Vec<Record> {
    keys.iter()
        .map(|key| {
            rows.iter()
                .find(|row| row.get::<_, Option<&str>>(0) == Some(key.as_str()))
                .map(|row| record(row, 1))
                .unwrap_or_default()
        })
        .collect()
}

/// What an operator sees of an account, from the columns id, username, hash, created_at,
/// sessions_after, banned_until and ban_reason.
fn details_row(row: &postgres::Row) -> Details {
    Details {
        account: Account {
            id: id(row.get(0)),
            username: row.get(1),
            hash: row.get(2),
            ban: Ban::from_columns(row.get(5), row.get(6)),
        },
        created_at: row.get(3),
        sessions_after: row.get(4),
    }
}

/// A device from the columns `at..` (device_id, account_id, secret_hash, link, linked_ms,
/// last_used_ms); `None` where they are NULL (an outer join that matched nothing).
fn device_row(row: &postgres::Row, at: usize) -> Option<Device> {
    Some(Device {
        device_id: row.get::<_, Option<String>>(at)?,
        account_id: id(row.get::<_, Option<i64>>(at + 1)?),
        secret_hash: row.get::<_, Option<String>>(at + 2)?,
        link: row.get::<_, Option<String>>(at + 3)?,
        linked_ms: row.get::<_, Option<i64>>(at + 4)?,
        last_used_ms: row.get::<_, Option<i64>>(at + 5)?,
    })
}

/// The `i`th key of each read of a run (`None` where it has fewer): one array of the
/// statements that read a run at once.
fn key_column<'a>(reads: &[(&str, &'a [String])], i: usize) -> Vec<Option<&'a str>> {
    reads
        .iter()
        .map(|(_, keys)| keys.get(i).map(String::as_str))
        .collect()
}

/// `rows` grouped by the read of a run they answer: its place (from 1) is column `place`.
fn by_place(rows: Vec<postgres::Row>, reads: usize, place: usize) -> Vec<Vec<postgres::Row>> {
    let mut grouped: Vec<Vec<postgres::Row>> = (0..reads).map(|_| Vec::new()).collect();
    for row in rows {
        let at = usize::try_from(row.get::<_, i64>(place) - 1).ok();
        if let Some(rows) = at.and_then(|i| grouped.get_mut(i)) {
            rows.push(row);
        }
    }
    grouped
}

/// Revoke session `sid` of account `id` (its row locked by the caller, so that the cap holds
/// across account-dbs) until `until_ms` inside `tx`; past [`REVOKED_PER_ACCOUNT`] revocations
/// of the account, void its sessions begun before `void_before` instead.
fn revoke_in(
    tx: &mut postgres::Transaction,
    id: i64,
    sid: &str,
    until_ms: Millis,
    void_before: Millis,
) -> Result<(), StoreError> {
    let held: i64 = tx
        .query_typed_one(
            "SELECT count(*) FROM revoked_sessions WHERE account_id = $1",
            &[(&id, Type::INT8)],
        )?
        .get(0);
    if held >= REVOKED_PER_ACCOUNT {
        tx.execute_typed(
            "UPDATE accounts SET sessions_after = GREATEST(sessions_after, $2) WHERE id = $1",
            &[(&id, Type::INT8), (&void_before, Type::INT8)],
        )?;
    } else {
        tx.execute_typed(
            "INSERT INTO revoked_sessions (sid, account_id, until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (sid) DO UPDATE
                 SET until_ms = GREATEST(revoked_sessions.until_ms, EXCLUDED.until_ms)",
            &[
                (&sid, Type::TEXT),
                (&id, Type::INT8),
                (&until_ms, Type::INT8),
            ],
        )?;
    }
    Ok(())
}

/// A device's read from its rows (see `find_device`): the device and its account, the records
/// of `keys`.
fn device_read(keys: &[String], rows: &[postgres::Row]) -> DeviceRead {
    let device = rows.first().and_then(|row| {
        let device = device_row(row, 8)?;
        let account = Account {
            id: device.account_id,
            username: row.get(14),
            hash: row.get(15),
            ban: Ban::from_columns(row.get(16), row.get(17)),
        };
        Some((device, account))
    });
    (device, in_order(keys, rows))
}

/// A guest with id `account_id`, as a device's login reports it.
fn guest(account_id: u64) -> Account {
    Account {
        id: account_id,
        username: String::new(),
        hash: String::new(),
        ban: None,
    }
}

/// Delete the device `device_id` if its account is gone (deleted by a release that did not
/// know devices, during a rollback): the id is free again, not held for good.
fn drop_orphan(tx: &mut postgres::Transaction, device_id: &str) -> Result<(), StoreError> {
    tx.execute_typed(
        "DELETE FROM devices WHERE device_id = $1
             AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = devices.account_id)",
        &[(&device_id, Type::TEXT)],
    )?;
    Ok(())
}

/// Store `device` unless its id is taken: the rows inserted (0 or 1).
fn insert_device(tx: &mut postgres::Transaction, device: &Device) -> Result<u64, StoreError> {
    Ok(tx.execute_typed(
        "INSERT INTO devices (device_id, account_id, secret_hash, link, linked_ms, last_used_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id) DO NOTHING",
        &[
            (&device.device_id, Type::TEXT),
            (&i64::try_from(device.account_id).unwrap_or(-1), Type::INT8),
            (&device.secret_hash, Type::TEXT),
            (&device.link, Type::TEXT),
            (&device.linked_ms, Type::INT8),
            (&device.last_used_ms, Type::INT8),
        ],
    )?)
}

impl Store for PostgresStore {
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError> {
        self.with(self.timeout, |conn| {
            // Prepared once per connection (see `PgConn`); the statements used less often are
            // typed: parse, bind and execute go in one round trip (an untyped query prepares
            // first, which is a second one).
            let statement = conn.prepared(
                "SELECT id, username, hash, banned_until, ban_reason FROM accounts WHERE folded = $1",
                &[Type::TEXT],
            )?;
            let row = conn.query_opt(&statement, &[&fold(username)])?;
            Ok(row.map(|row| Account {
                id: id(row.get(0)),
                username: row.get(1),
                hash: row.get(2),
                ban: Ban::from_columns(row.get(3), row.get(4)),
            }))
        })
    }

    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError> {
        let (folded, skeleton) = (fold(&account.username), skeleton(&account.username));
        self.durably(|conn| {
            let create = conn.prepared(
                "SELECT inserted, held_by FROM create_account($1, $2, $3, $4, $5, $6)",
                &[
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::TEXT,
                    Type::INT8,
                    Type::TEXT,
                ],
            )?;
            let row = conn.query_one(
                &create,
                &[
                    &folded,
                    &skeleton,
                    &account.username,
                    &account.hash,
                    &unix_now(),
                    &request_id,
                ],
            )?;
            // Committed when the statement ends: it runs in a transaction of its own.
            let (inserted, held_by): (i32, Option<String>) = (row.get(0), row.get(1));
            let Some(stored_by) = held_by else {
                return Ok(Created::inserted(u64::try_from(inserted).unwrap_or(0)));
            };
            let created = Created::held_by(&stored_by, request_id);
            if created == Created::New {
                // This create, asked again: the first may have committed only locally (its
                // wait for a synchronous standby cancelled). A write of the row waits for the
                // standby like any commit, and WAL is in order: once it is confirmed, so is
                // the row.
                conn.execute_typed(
                    "UPDATE accounts SET request_id = request_id WHERE folded = $1",
                    &[(&folded, Type::TEXT)],
                )?;
            }
            Ok(created)
        })
    }

    /// Chunks of creates, each one transaction: first every look-alike lock of the chunk in
    /// key order (so two imports cannot deadlock, and a registration waits for at most one
    /// chunk), then every create in one statement. A chunk that took longer than
    /// [`BATCH_TIME`](super::contract::BATCH_TIME) halves the next; a quick one doubles it.
    fn create_many(&self, accounts: &[(Account, String)]) -> Result<Vec<Created>, StoreError> {
        let mut created = Vec::with_capacity(accounts.len());
        let mut size = 256;
        let mut conn = self.conn()?;
        while created.len() < accounts.len() {
            let started = Instant::now();
            let end = (created.len() + size).min(accounts.len());
            let chunk = &accounts[created.len()..end];
            let column = |f: &dyn Fn(&(Account, String)) -> String| -> Vec<String> {
                chunk.iter().map(f).collect()
            };
            let folded = column(&|(a, _)| fold(&a.username));
            let skeletons = column(&|(a, _)| skeleton(&a.username));
            let usernames = column(&|(a, _)| a.username.clone());
            let hashes = column(&|(a, _)| a.hash.clone());
            let ids = column(&|(_, id)| id.clone());
            let watch = self.watchdog.watch(&conn.cancel, CHUNK_TIME);
            pg_watchdog::take_unreplicated();
            let mut tx = conn.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(k) FROM
                     (SELECT DISTINCT hashtext(s) AS k FROM unnest($1::text[]) AS s ORDER BY k) o",
                &[&skeletons],
            )?;
            let rows = tx.query(
                "SELECT c.inserted, c.held_by, u.request_id
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                      WITH ORDINALITY AS u(folded, skeleton, username, hash, request_id, n)
                 CROSS JOIN LATERAL create_account(u.folded, u.skeleton, u.username, u.hash,
                                                   $6, u.request_id) c
                 ORDER BY u.n",
                &[&folded, &skeletons, &usernames, &hashes, &ids, &unix_now()],
            )?;
            tx.commit()?;
            drop(watch);
            if pg_watchdog::take_unreplicated() {
                return Err(StoreError::Unreplicated);
            }
            for row in &rows {
                let (inserted, held_by, request_id): (i32, Option<String>, String) =
                    (row.get(0), row.get(1), row.get(2));
                created.push(match held_by {
                    Some(stored_by) => Created::held_by(&stored_by, &request_id),
                    None => Created::inserted(u64::try_from(inserted).unwrap_or(0)),
                });
            }
            size = match started.elapsed() {
                took if took > super::contract::BATCH_TIME => (size / 2).max(1),
                took if took < super::contract::BATCH_TIME / 4 => (size * 2).min(4096),
                _ => size,
            };
        }
        Ok(created)
    }

    fn update_hash(&self, username: &str, old: &str, hash: &str) -> Result<bool, StoreError> {
        self.durably(|conn| {
            let updated = conn.execute_typed(
                "UPDATE accounts SET hash = $2 WHERE folded = $1 AND hash = $3",
                &[
                    (&fold(username), Type::TEXT),
                    (&hash, Type::TEXT),
                    (&old, Type::TEXT),
                ],
            )?;
            Ok(updated == 1)
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with(self.timeout, |conn| {
            conn.simple_query("SELECT 1")?;
            Ok(())
        })
    }

    fn details(&self, username: &str) -> Result<Option<Details>, StoreError> {
        let row = self.with(self.timeout, |conn| {
            Ok(conn.query_typed_opt(
                "SELECT id, username, hash, created_at, sessions_after, banned_until, ban_reason
                 FROM accounts WHERE folded = $1",
                &[(&fold(username), Type::TEXT)],
            )?)
        })?;
        Ok(row.as_ref().map(details_row))
    }

    fn delete(&self, username: &str) -> Result<bool, StoreError> {
        let by_id = username
            .strip_prefix('#')
            .and_then(|id| id.parse::<i64>().ok());
        let deleted = self.durably(|conn| {
            let mut tx = conn.transaction()?;
            let row = match by_id {
                Some(id) => tx.query_typed_opt(
                    "DELETE FROM accounts WHERE id = $1 RETURNING id",
                    &[(&id, Type::INT8)],
                )?,
                None => tx.query_typed_opt(
                    "DELETE FROM accounts WHERE folded = $1 RETURNING id",
                    &[(&fold(username), Type::TEXT)],
                )?,
            };
            let Some(row) = row else {
                return Ok(false);
            };
            let id: i64 = row.get(0);
            tx.execute_typed(
                "DELETE FROM devices WHERE account_id = $1",
                &[(&id, Type::INT8)],
            )?;
            tx.commit()?;
            Ok(true)
        })?;
        Ok(deleted)
    }

    /// Under the new name's look-alike lock, as a create takes it: a registration of a
    /// look-alike waits, then finds it held.
    fn rename(&self, old: &str, new: &str) -> Result<Renamed, StoreError> {
        let (folded, skeleton) = (fold(new), skeleton(new));
        self.durably(|conn| {
            let mut tx = conn.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&skeleton])?;
            let Some(row) = tx.query_opt(
                "SELECT id, username FROM accounts WHERE folded = $1 FOR UPDATE",
                &[&fold(old)],
            )?
            else {
                return Ok(Renamed::NoSuchAccount);
            };
            let (id, from): (i64, String) = (row.get(0), row.get(1));
            let holder = tx.query_opt(
                "SELECT username FROM accounts
                 WHERE id <> $3 AND (folded = $1 OR skeleton = $2) LIMIT 1",
                &[&folded, &skeleton, &id],
            )?;
            if let Some(holder) = holder {
                return Ok(Renamed::Taken(holder.get(0)));
            }
            tx.execute(
                "UPDATE accounts SET folded = $1, skeleton = $2, username = $3 WHERE id = $4",
                &[&folded, &skeleton, &new, &id],
            )?;
            tx.commit()?;
            Ok(Renamed::From(from))
        })
    }

    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<Account>, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            // It reads the whole table: planned for its parameters, free to scan, given time.
            let mut tx = conn.maintenance()?;
            let rows = tx.query_typed(
                "SELECT id, username, hash FROM accounts WHERE starts_with(folded, $1)
                 ORDER BY folded COLLATE \"C\" LIMIT $2",
                &[(&fold(prefix), Type::TEXT), (&i64::from(limit), Type::INT8)],
            )?;
            tx.commit()?;
            Ok(rows.iter().map(|row| listed(row, 0)).collect())
        })
    }

    fn look_alikes(&self, limit: u32) -> Result<Vec<(String, Account)>, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            let mut tx = conn.maintenance()?;
            let rows = tx.query_typed(
                "SELECT skeleton, id, username, hash FROM accounts WHERE skeleton IN
                     (SELECT skeleton FROM accounts WHERE skeleton IS NOT NULL
                      GROUP BY skeleton HAVING count(*) > 1)
                 ORDER BY skeleton COLLATE \"C\", id LIMIT $1",
                &[(&i64::from(limit), Type::INT8)],
            )?;
            tx.commit()?;
            Ok(rows
                .iter()
                .map(|row| (row.get(0), listed(row, 1)))
                .collect())
        })
    }

    fn accounts_after(&self, after: u64, limit: u32) -> Result<Vec<Account>, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            let mut tx = conn.maintenance()?;
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let rows = tx.query_typed(
                "SELECT id, COALESCE(username, ''), hash FROM accounts WHERE id > $1
                 ORDER BY id LIMIT $2",
                &[(&after, Type::INT8), (&i64::from(limit), Type::INT8)],
            )?;
            tx.commit()?;
            Ok(rows.iter().map(|row| listed(row, 0)).collect())
        })
    }

    fn set_ban(&self, username: &str, ban: Option<&Ban>) -> Result<bool, StoreError> {
        let (until, reason) = ban.map_or((0, ""), |b| (b.until_ms, b.reason.as_str()));
        // A ban voids every session begun before it; lifting one leaves sessions as they are.
        let void = if ban.is_some() {
            crate::clock::now_ms()
        } else {
            0
        };
        // `#ID`: by id (a guest has no name).
        let by_id = username
            .strip_prefix('#')
            .and_then(|id| id.parse::<i64>().ok());
        let updated = self.durably(|conn| {
            Ok(conn.execute_typed(
                "UPDATE accounts SET banned_until = $2, ban_reason = $3,
                     sessions_after = GREATEST(sessions_after, $4)
                 WHERE CASE WHEN $5::bigint IS NULL THEN folded = $1 ELSE id = $5 END",
                &[
                    (&fold(username), Type::TEXT),
                    (&until, Type::INT8),
                    (&reason, Type::TEXT),
                    (&void, Type::INT8),
                    (&by_id, Type::INT8),
                ],
            )?)
        })?;
        Ok(updated == 1)
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            let mut tx = conn.maintenance()?;
            let n: i64 = tx.query_one("SELECT count(*) FROM accounts", &[])?.get(0);
            tx.commit()?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn session(
        &self,
        account_id: u64,
        sid: &str,
        link: Option<&str>,
    ) -> Result<Option<SessionState>, StoreError> {
        self.with(self.timeout, |conn| {
            let id = i64::try_from(account_id).unwrap_or(-1);
            let statement = conn.prepared(
                "SELECT COALESCE(username, ''), sessions_after,
                     EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = $2 OR sid = 'link:' || $3)
                 FROM accounts WHERE id = $1",
                &[Type::INT8, Type::TEXT, Type::TEXT],
            )?;
            let row = conn.query_opt(&statement, &[&id, &sid, &link])?;
            Ok(row.map(|row| SessionState {
                username: row.get(0),
                sessions_after: row.get(1),
                revoked: row.get(2),
            }))
        })
    }

    fn revoke_session(&self, r: &Revocation) -> Result<(), StoreError> {
        let id = i64::try_from(r.account_id).unwrap_or(-1);
        self.durably(|conn| {
            let mut tx = conn.transaction()?;
            // Logouts of one account take turns, so the cap holds across account-dbs.
            tx.execute_typed(
                "SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
                &[(&id, Type::INT8)],
            )?;
            revoke_in(
                &mut tx,
                id,
                &r.sid,
                r.until_ms,
                r.began_ms.saturating_add(1),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn void_sessions(
        &self,
        account_id: u64,
        before_ms: Millis,
        hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        let id = i64::try_from(account_id).unwrap_or(-1);
        let updated = self.durably(|conn| {
            Ok(conn.execute_typed(
                "UPDATE accounts SET sessions_after = GREATEST(sessions_after, $2),
                     hash = COALESCE($3, hash)
                 WHERE id = $1 AND ($3 IS NULL OR banned_until <= $2)",
                &[
                    (&id, Type::INT8),
                    (&before_ms, Type::INT8),
                    (&hash, Type::TEXT),
                ],
            )?)
        })?;
        Ok(updated == 1)
    }

    fn prune_revoked(&self, now: Millis) -> Result<u64, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            let mut tx = conn.maintenance()?;
            let pruned =
                tx.execute("DELETE FROM revoked_sessions WHERE until_ms <= $1", &[&now])?;
            tx.commit()?;
            Ok(pruned)
        })
    }

    fn find_for_login(
        &self,
        username: &str,
        keys: &[String],
    ) -> Result<(Option<Account>, Vec<Record>), StoreError> {
        self.with(self.timeout, |conn| {
            // One statement, one round trip: the account (if any) beside each record found.
            let statement = conn.prepared(
                "SELECT t.key, t.count, t.window_start, t.lockouts, t.locked_until, t.familiar,
                     t.familiar_until, t.expires, a.id, a.username, a.hash, a.banned_until,
                     a.ban_reason
                 FROM (SELECT 1) AS one
                 LEFT JOIN accounts a ON a.folded = $1
                 LEFT JOIN throttle t ON t.key = ANY($2)",
                &[Type::TEXT, Type::TEXT_ARRAY],
            )?;
            let rows = conn.query(&statement, &[&fold(username), &keys])?;
            Ok(found(keys, &rows))
        })
    }

    fn find_for_logins(&self, logins: &[(&str, &[String])]) -> Result<Vec<LoginRead>, StoreError> {
        if logins.iter().any(|(_, keys)| keys.len() > 2) {
            let one = |(username, keys): &(&str, &[String])| self.find_for_login(username, keys);
            return logins.iter().map(one).collect();
        }
        let folded: Vec<String> = logins.iter().map(|(username, _)| fold(username)).collect();
        let key = |i: usize| key_column(logins, i);
        self.with(self.timeout, |conn| {
            // One statement for them all: each login's account beside each of its records found,
            // tagged with its place (the last column, so the row reads as find_for_login's). The
            // lateral joins make it an index lookup per login whatever the planner guesses of
            // the arrays' length.
            let statement = conn.prepared(
                "SELECT t.key, t.count, t.window_start, t.lockouts, t.locked_until, t.familiar,
                     t.familiar_until, t.expires, a.id, a.username, a.hash, a.banned_until,
                     a.ban_reason, q.i
                 FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(folded, k1, k2, i)
                 LEFT JOIN LATERAL (SELECT id, username, hash, banned_until, ban_reason
                                    FROM accounts WHERE folded = q.folded) a ON true
                 LEFT JOIN LATERAL (SELECT * FROM throttle
                                    WHERE key = ANY(ARRAY[q.k1, q.k2])) t ON true",
                &[Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY],
            )?;
            let rows = conn.query(&statement, &[&folded, &key(0), &key(1)])?;
            let by_login = by_place(rows, logins.len(), 13);
            Ok(logins
                .iter()
                .zip(&by_login)
                .map(|((_, keys), rows)| found(keys, rows))
                .collect())
        })
    }

    fn update_records(
        &self,
        keys: &[String],
        now: Millis,
        change: &mut dyn FnMut(&mut [Record]),
    ) -> Result<(), StoreError> {
        self.with(self.timeout, |conn| {
            let upsert = conn.prepared(&UPSERT_RECORDS, &[Type::TEXT_ARRAY])?;
            let write = conn.prepared(
                "UPDATE throttle t SET count = v.count, window_start = v.window_start,
                     lockouts = v.lockouts, locked_until = v.locked_until, familiar = v.familiar,
                     familiar_until = v.familiar_until, expires = v.expires, rank = v.rank
                 FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[], $5::bigint[],
                             $6::text[], $7::bigint[], $8::bigint[], $9::bigint[])
                     AS v(key, count, window_start, lockouts, locked_until, familiar,
                          familiar_until, expires, rank)
                 WHERE t.key = v.key",
                &[
                    Type::TEXT_ARRAY,
                    Type::INT4_ARRAY,
                    Type::INT8_ARRAY,
                    Type::INT4_ARRAY,
                    Type::INT8_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::INT8_ARRAY,
                    Type::INT8_ARRAY,
                    Type::INT8_ARRAY,
                ],
            )?;
            let mut tx = conn.transaction()?;
            // Make every key's row (the empty record where there was none) and lock it, in key
            // order across transactions, so concurrent changes take turns and cannot deadlock.
            let rows = tx.query(&upsert, &[&keys])?;
            let mut records = in_order(keys, &rows);
            change(&mut records);
            // Written back in one statement; expired ones are left to the next prune.
            let column = |f: &dyn Fn(&Record) -> i64| records.iter().map(f).collect::<Vec<i64>>();
            let counts: Vec<i32> = records
                .iter()
                .map(|r| i32::try_from(r.count).unwrap_or(i32::MAX))
                .collect();
            let lockouts: Vec<i32> = records
                .iter()
                .map(|r| i32::try_from(r.lockouts).unwrap_or(i32::MAX))
                .collect();
            let familiar: Vec<String> = records.iter().map(familiar_text).collect();
            tx.execute(
                &write,
                &[
                    &keys,
                    &counts,
                    &column(&|r| r.window_start),
                    &lockouts,
                    &column(&|r| r.locked_until),
                    &familiar,
                    &column(&|r| r.familiar_until),
                    &column(&|r| r.expires),
                    &column(&|r| r.rank(now)),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.nodes.register_metrics(registry);
    }

    fn find_device(&self, device_id: &str, keys: &[String]) -> Result<DeviceRead, StoreError> {
        self.with(self.timeout, |conn| {
            // One statement, one round trip: the device and its account (if any) beside each
            // record found.
            let statement = conn.prepared(
                "SELECT t.key, t.count, t.window_start, t.lockouts, t.locked_until, t.familiar,
                     t.familiar_until, t.expires, d.device_id, d.account_id, d.secret_hash,
                     d.link, d.linked_ms, d.last_used_ms, COALESCE(a.username, ''), a.hash,
                     a.banned_until, a.ban_reason
                 FROM (SELECT 1) AS one
                 LEFT JOIN (devices d JOIN accounts a ON a.id = d.account_id)
                     ON d.device_id = $1
                 LEFT JOIN throttle t ON t.key = ANY($2)",
                &[Type::TEXT, Type::TEXT_ARRAY],
            )?;
            let rows = conn.query(&statement, &[&device_id, &keys])?;
            Ok(device_read(keys, &rows))
        })
    }

    fn find_devices(&self, devices: &[(&str, &[String])]) -> Result<Vec<DeviceRead>, StoreError> {
        if devices.iter().any(|(_, keys)| keys.len() > 2) {
            let one = |(id, keys): &(&str, &[String])| self.find_device(id, keys);
            return devices.iter().map(one).collect();
        }
        let ids: Vec<&str> = devices.iter().map(|(id, _)| *id).collect();
        let key = |i: usize| key_column(devices, i);
        self.with(self.timeout, |conn| {
            // One statement for them all, as `find_for_logins` reads logins: each device beside
            // each of its records found, tagged with its place in the last column.
            let statement = conn.prepared(
                "SELECT t.key, t.count, t.window_start, t.lockouts, t.locked_until, t.familiar,
                     t.familiar_until, t.expires, x.device_id, x.account_id, x.secret_hash,
                     x.link, x.linked_ms, x.last_used_ms, COALESCE(x.username, ''), x.hash,
                     x.banned_until, x.ban_reason, q.i
                 FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(id, k1, k2, i)
                 LEFT JOIN LATERAL (SELECT d.device_id, d.account_id, d.secret_hash, d.link,
                                           d.linked_ms, d.last_used_ms, a.username, a.hash,
                                           a.banned_until, a.ban_reason
                                    FROM devices d JOIN accounts a ON a.id = d.account_id
                                    WHERE d.device_id = q.id) x ON true
                 LEFT JOIN LATERAL (SELECT * FROM throttle
                                    WHERE key = ANY(ARRAY[q.k1, q.k2])) t ON true",
                &[Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::TEXT_ARRAY],
            )?;
            let rows = conn.query(&statement, &[&ids, &key(0), &key(1)])?;
            let mut by_device: Vec<Vec<postgres::Row>> =
                devices.iter().map(|_| Vec::new()).collect();
            for row in rows {
                let place = usize::try_from(row.get::<_, i64>(18) - 1).ok();
                if let Some(rows) = place.and_then(|i| by_device.get_mut(i)) {
                    rows.push(row);
                }
            }
            Ok(devices
                .iter()
                .zip(&by_device)
                .map(|((_, keys), rows)| device_read(keys, rows))
                .collect())
        })
    }

    fn create_guest(
        &self,
        device: &Device,
        request_id: &str,
    ) -> Result<Option<(Account, Device)>, StoreError> {
        self.durably(|conn| {
            let mut tx = conn.transaction()?;
            drop_orphan(&mut tx, &device.device_id)?;
            let held = tx.query_typed_opt(
                "SELECT d.device_id, d.account_id, d.secret_hash, d.link, d.linked_ms,
                     d.last_used_ms, a.username, a.request_id
                 FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.device_id = $1",
                &[(&device.device_id, Type::TEXT)],
            )?;
            if let Some(row) = held {
                let (name, stored_by): (Option<String>, String) = (row.get(6), row.get(7));
                let repeated = name.is_none() && stored_by == request_id;
                return Ok(device_row(&row, 0)
                    .filter(|_| repeated)
                    .map(|stored| (guest(stored.account_id), stored)));
            }
            let id: i64 = tx
                .query_typed_one(
                    "INSERT INTO accounts (folded, skeleton, username, hash, created_at, request_id)
                     VALUES (NULL, NULL, NULL, '', $1, $2) RETURNING id",
                    &[(&unix_now(), Type::INT8), (&request_id, Type::TEXT)],
                )?
                .get(0);
            let stored = Device {
                account_id: u64::try_from(id).unwrap_or(0),
                ..device.clone()
            };
            // A concurrent first use of the device that committed first wins: nothing here.
            if insert_device(&mut tx, &stored)? == 0 {
                return Ok(None);
            }
            tx.commit()?;
            Ok(Some((guest(stored.account_id), stored)))
        })
    }

    fn touch_device(&self, device_id: &str, now: Millis) -> Result<(), StoreError> {
        self.with(self.timeout, |conn| {
            // Unsynced, as a throttle record: a last use lost in a crash costs nothing.
            conn.execute_typed(
                "UPDATE devices SET last_used_ms = $2
                 WHERE device_id = $1
                   AND set_config('synchronous_commit', 'off', true) IS NOT NULL",
                &[(&device_id, Type::TEXT), (&now, Type::INT8)],
            )?;
            Ok(())
        })
    }

    /// Under the name's look-alike lock, as a create takes it.
    fn claim(
        &self,
        account_id: u64,
        username: &str,
        hash: &str,
        request_id: &str,
    ) -> Result<Claimed, StoreError> {
        let (folded, skeleton) = (fold(username), skeleton(username));
        let id = i64::try_from(account_id).unwrap_or(-1);
        self.durably(|conn| {
            let mut tx = conn.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&skeleton])?;
            let Some(row) = tx.query_typed_opt(
                "SELECT username, request_id FROM accounts WHERE id = $1 FOR UPDATE",
                &[(&id, Type::INT8)],
            )?
            else {
                return Ok(Claimed::NoAccount);
            };
            let (name, stored_by): (Option<String>, String) = (row.get(0), row.get(1));
            match name {
                Some(_) if stored_by == request_id => return Ok(Claimed::Done),
                Some(_) => return Ok(Claimed::AlreadyClaimed),
                None => {}
            }
            let taken = tx.query_typed_opt(
                "SELECT 1 FROM accounts WHERE folded = $1 OR skeleton = $2 LIMIT 1",
                &[(&folded, Type::TEXT), (&skeleton, Type::TEXT)],
            )?;
            if taken.is_some() {
                return Ok(Claimed::Taken);
            }
            tx.execute_typed(
                "UPDATE accounts SET folded = $2, skeleton = $3, username = $4, hash = $5,
                     request_id = $6
                 WHERE id = $1",
                &[
                    (&id, Type::INT8),
                    (&folded, Type::TEXT),
                    (&skeleton, Type::TEXT),
                    (&username, Type::TEXT),
                    (&hash, Type::TEXT),
                    (&request_id, Type::TEXT),
                ],
            )?;
            tx.commit()?;
            Ok(Claimed::Done)
        })
    }

    /// Under the account's row lock, so the bound holds across account-dbs.
    fn link_device(&self, device: &Device) -> Result<Linked, StoreError> {
        let id = i64::try_from(device.account_id).unwrap_or(-1);
        self.durably(|conn| {
            let mut tx = conn.transaction()?;
            tx.execute_typed(
                "SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
                &[(&id, Type::INT8)],
            )?;
            drop_orphan(&mut tx, &device.device_id)?;
            let holder = tx.query_typed_opt(
                "SELECT account_id FROM devices WHERE device_id = $1 FOR UPDATE",
                &[(&device.device_id, Type::TEXT)],
            )?;
            match holder.map(|row| row.get::<_, i64>(0)) {
                Some(other) if other != id => return Ok(Linked::Taken),
                Some(_) => {
                    tx.execute_typed(
                        "UPDATE devices SET secret_hash = $2 WHERE device_id = $1",
                        &[
                            (&device.device_id, Type::TEXT),
                            (&device.secret_hash, Type::TEXT),
                        ],
                    )?;
                }
                None => {
                    let held: i64 = tx
                        .query_typed_one(
                            "SELECT count(*) FROM devices WHERE account_id = $1",
                            &[(&id, Type::INT8)],
                        )?
                        .get(0);
                    if held >= DEVICES_PER_ACCOUNT {
                        return Ok(Linked::TooMany);
                    }
                    // Another account's link of the device that committed first wins.
                    if insert_device(&mut tx, device)? == 0 {
                        return Ok(Linked::Taken);
                    }
                }
            }
            tx.commit()?;
            Ok(Linked::Done)
        })
    }

    /// Under the account's row lock: of two unlinks of a guest's last two devices, one waits
    /// and then finds the other's device the last.
    fn unlink_device(
        &self,
        account_id: u64,
        device_id: &str,
        now: Millis,
        until_ms: Millis,
    ) -> Result<Unlinked, StoreError> {
        let id = i64::try_from(account_id).unwrap_or(-1);
        self.durably(|conn| {
            let mut tx = conn.transaction()?;
            let Some(account) = tx.query_typed_opt(
                "SELECT username IS NULL FROM accounts WHERE id = $1 FOR UPDATE",
                &[(&id, Type::INT8)],
            )?
            else {
                return Ok(Unlinked::NotLinked);
            };
            let guest: bool = account.get(0);
            let Some(link) = tx.query_typed_opt(
                "SELECT link FROM devices WHERE device_id = $1 AND account_id = $2",
                &[(&device_id, Type::TEXT), (&id, Type::INT8)],
            )?
            else {
                return Ok(Unlinked::NotLinked);
            };
            let link: String = link.get(0);
            let held: i64 = tx
                .query_typed_one(
                    "SELECT count(*) FROM devices WHERE account_id = $1",
                    &[(&id, Type::INT8)],
                )?
                .get(0);
            if guest && held <= 1 {
                return Ok(Unlinked::LastCredential);
            }
            tx.execute_typed(
                "DELETE FROM devices WHERE device_id = $1",
                &[(&device_id, Type::TEXT)],
            )?;
            revoke_in(&mut tx, id, &format!("link:{link}"), until_ms, now)?;
            tx.commit()?;
            Ok(Unlinked::Done)
        })
    }

    fn devices(&self, account_id: u64) -> Result<Vec<Device>, StoreError> {
        let id = i64::try_from(account_id).unwrap_or(-1);
        self.with(self.timeout, |conn| {
            let rows = conn.query_typed(
                "SELECT device_id, account_id, secret_hash, link, linked_ms, last_used_ms
                 FROM devices WHERE account_id = $1 ORDER BY linked_ms DESC, device_id",
                &[(&id, Type::INT8)],
            )?;
            Ok(rows.iter().filter_map(|row| device_row(row, 0)).collect())
        })
    }

    fn details_by_id(&self, id: u64) -> Result<Option<Details>, StoreError> {
        let id = i64::try_from(id).unwrap_or(-1);
        let row = self.with(self.timeout, |conn| {
            Ok(conn.query_typed_opt(
                "SELECT id, COALESCE(username, ''), hash, created_at, sessions_after,
                     banned_until, ban_reason
                 FROM accounts WHERE id = $1",
                &[(&id, Type::INT8)],
            )?)
        })?;
        Ok(row.as_ref().map(details_row))
    }

    fn prune_guests(&self, idle_before_ms: Millis, dry_run: bool) -> Result<u64, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            let mut tx = conn.maintenance()?;
            let idle = "SELECT id FROM accounts a WHERE a.username IS NULL AND NOT EXISTS
                (SELECT 1 FROM devices d WHERE d.account_id = a.id AND d.last_used_ms >= $1)";
            let sql = if dry_run {
                format!("SELECT count(*) FROM ({idle}) g")
            } else {
                format!(
                    "WITH gone AS (DELETE FROM accounts WHERE username IS NULL AND id IN ({idle})
                                   RETURNING id),
                          devices_gone AS (DELETE FROM devices
                                           WHERE account_id IN (SELECT id FROM gone))
                     SELECT count(*) FROM gone"
                )
            };
            let n: i64 = tx.query_one(&sql, &[&idle_before_ms])?.get(0);
            let n = u64::try_from(n).unwrap_or(0);
            tx.commit()?;
            Ok(n)
        })
    }

    fn legacy_names_imported(&self) -> Result<bool, StoreError> {
        if self.legacy_names.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let found = self.with(self.timeout, |conn| {
            let row = conn.query_opt(
                "SELECT 1 FROM meta WHERE key = $1",
                &[&LEGACY_NAMES_IMPORTED],
            )?;
            Ok(row.is_some())
        })?;
        self.legacy_names.store(found, Ordering::Relaxed);
        Ok(found)
    }

    fn mark_legacy_names_imported(&self, how: &str) -> Result<bool, StoreError> {
        let inserted = self.durably(|conn| {
            Ok(conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&LEGACY_NAMES_IMPORTED, &how],
            )?)
        })?;
        Ok(inserted == 1)
    }

    fn schema_state(&self) -> Result<SchemaState, StoreError> {
        self.with(self.timeout, |conn| {
            let version: i32 = conn
                .query_one("SELECT version FROM schema_version", &[])?
                .get(0);
            let meta = |conn: &mut PgConn, key: &str| -> Result<Option<String>, StoreError> {
                let row = conn.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])?;
                Ok(row.map(|row| row.get(0)))
            };
            Ok(SchemaState {
                contracted: usize::try_from(version)
                    .unwrap_or(0)
                    .saturating_sub(MIGRATIONS.len()),
                expanded: meta(conn, schema::EXPANDED)?
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                min_code_version: meta(conn, schema::MIN_CODE_VERSION)?,
            })
        })
    }

    fn contract(&self, step: usize) -> Result<bool, StoreError> {
        let Some(contraction) = CONTRACTIONS.get(step) else {
            return Ok(false);
        };
        self.with(MAINTENANCE_TIME, |conn| {
            let mut tx = conn.client.transaction()?;
            // Under the migrations' lock: no account-db starts on a half-contracted schema.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            let version: i32 = tx
                .query_one("SELECT version FROM schema_version", &[])?
                .get(0);
            let done = usize::try_from(version)
                .unwrap_or(0)
                .saturating_sub(MIGRATIONS.len());
            if done != step {
                return Ok(false);
            }
            tx.batch_execute(contraction.postgres)?;
            let next = i32::try_from(MIGRATIONS.len() + step + 1).unwrap_or(i32::MAX);
            tx.execute("UPDATE schema_version SET version = $1", &[&next])?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&schema::MIN_CODE_VERSION, &contraction.min_code_version],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn record_peer(&self, instance: &str, now: Millis) -> Result<(), StoreError> {
        let kept = Millis::try_from(schema::PEER_KEPT.as_millis()).unwrap_or(Millis::MAX);
        self.with(self.timeout, |conn| {
            // Unsynced: a lost record is made again 10 s later.
            let mut tx = conn.client.transaction()?;
            tx.batch_execute("SET LOCAL synchronous_commit = off")?;
            tx.execute(
                "INSERT INTO peers (instance, code_version, last_seen_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (instance) DO UPDATE
                 SET code_version = EXCLUDED.code_version, last_seen_ms = EXCLUDED.last_seen_ms",
                &[&instance, &schema::CODE_VERSION, &now],
            )?;
            tx.execute(
                "DELETE FROM peers WHERE last_seen_ms < $1",
                &[&now.saturating_sub(kept)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn peers(&self) -> Result<Vec<Peer>, StoreError> {
        self.with(self.timeout, |conn| {
            let rows = conn.query(
                "SELECT instance, code_version, last_seen_ms FROM peers
                 ORDER BY last_seen_ms DESC",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|row| Peer {
                    instance: row.get(0),
                    code_version: row.get(1),
                    last_seen_ms: row.get(2),
                })
                .collect())
        })
    }

    fn prune_records(&self, now: Millis, cap: u64) -> Result<u64, StoreError> {
        self.with(MAINTENANCE_TIME, |conn| {
            // Not the hot path: planned for its parameters, free to scan, and given time to count.
            let mut tx = conn.maintenance()?;
            // One account-db prunes at a time (the others skip this second), so the excess is
            // evicted once, not once per account-db.
            let ours: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])?
                .get(0);
            if !ours {
                return Ok(0);
            }
            // Rows a request is changing right now are skipped, never waited for.
            let expired = tx.execute(
                "DELETE FROM throttle WHERE key IN
                 (SELECT key FROM throttle WHERE expires <= $1 FOR UPDATE SKIP LOCKED)",
                &[&now],
            )?;
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            // Counting a full table (a million rows: 50 to 120 ms here) every second would cost
            // PostgreSQL a tenth of a core. Two estimates say whether it may be near its cap, and
            // only then is it counted: the statistics' live rows (they follow inserts and deletes
            // within seconds, without ANALYZE) and the planner's (rows per page at the last
            // ANALYZE times today's pages: it follows growth of the file at once). Never
            // analyzed: counted.
            let estimate: Option<f64> = tx
                .query_one(
                    "SELECT CASE WHEN c.reltuples < 0 OR c.relpages = 0 THEN NULL
                            ELSE greatest(coalesce(s.n_live_tup, 0),
                                          c.reltuples / c.relpages
                                          * (pg_relation_size(c.oid)
                                             / current_setting('block_size')::int))
                            END
                     FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                     WHERE c.oid = 'throttle'::regclass",
                    &[],
                )?
                .get(0);
            let near_cap = estimate.map_or(true, |rows| rows >= cap as f64 / 2.0);
            let left: i64 = match near_cap {
                true => tx.query_one("SELECT count(*) FROM throttle", &[])?.get(0),
                false => 0,
            };
            let excess = left.saturating_sub(cap);
            // The victims are chosen once (MATERIALIZED): as a subquery of the DELETE, a plan that
            // ran it again for each row (a nested loop) found the rows it had just deleted gone and
            // chose the next ones, deleting the whole table.
            let evicted = match excess > 0 {
                true => tx.execute(
                    "WITH victims AS MATERIALIZED (
                         SELECT key FROM throttle ORDER BY rank LIMIT $1 FOR UPDATE SKIP LOCKED)
                     DELETE FROM throttle t USING victims v WHERE t.key = v.key",
                    &[&excess],
                )?,
                false => 0,
            };
            tx.commit()?;
            Ok(expired + evicted)
        })
    }
}
