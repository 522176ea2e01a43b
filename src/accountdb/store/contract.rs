//! What every account store is: the [`Store`] trait, the values it takes and gives, and why
//! it fails. A leaf below the store module: the backends implement it, and the module that
//! picks one ([`StoreUrl`](super::StoreUrl)) hands out what they made.

use crate::accountdb::client::connection::DbError;
use crate::clock::Millis;
use crate::protocol::accountdb::{Account, Ban, Created, Device, Revocation, SessionState};
use crate::throttle::{Origin, Record};
use std::time::Duration;

/// An account as an operator sees it (`account-db admin show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    pub account: Account,
    /// When it registered, in unix seconds.
    pub created_at: i64,
    /// Sessions that began before this (milliseconds) are void.
    pub sessions_after: Millis,
}

/// How long one transaction of [`Store::create_many`] may hold the store's write locks, at
/// the most it aims for (100 ms): registrations served meanwhile wait for it.
pub const BATCH_TIME: Duration = Duration::from_millis(100);

/// Revocations an account holds at most; see [`Store::revoke_session`].
pub const REVOKED_PER_ACCOUNT: i64 = 64;

/// What [`Store::rename`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renamed {
    /// Renamed from this spelling.
    From(String),
    /// No account has the old name, in any case.
    NoSuchAccount,
    /// Another account holds the new name or a look-alike of it: this one.
    Taken(String),
}

/// What [`Store::claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The guest has the name and the password now (or had them from this very claim).
    Done,
    /// The name, or a look-alike, is another account's.
    Taken,
    /// The account has a name already.
    AlreadyClaimed,
    /// No such account.
    NoAccount,
}

/// Devices an account holds at most: 32. A link past it is refused (`too_many_devices`).
pub const DEVICES_PER_ACCOUNT: i64 = 32;

/// What [`Store::link_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    /// Linked (again: its secret replaced).
    Done,
    /// The device is another account's.
    Taken,
    /// The account holds [`DEVICES_PER_ACCOUNT`] devices already.
    TooMany,
}

/// What [`Store::unlink_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlinked {
    /// Unlinked; the sessions it began are revoked.
    Done,
    /// The device is not linked to this account.
    NotLinked,
    /// It is the account's last way to log in (a guest's only device): kept.
    LastCredential,
}

/// What a device's login reads: the device and its account, if linked, and the records asked
/// for, in order.
pub type DeviceRead = (Option<(Device, Account)>, Vec<Record>);

/// A record's familiar addresses as the stores keep them: space-separated.
pub(super) fn familiar_text(record: &Record) -> String {
    let texts: Vec<String> = record.familiar.iter().map(|o| o.to_string()).collect();
    texts.join(" ")
}

/// The familiar addresses from their stored text (what cannot be read is skipped).
pub(super) fn familiar_list(text: &str) -> Vec<Origin> {
    text.split_whitespace()
        .filter_map(|o| o.parse().ok())
        .collect()
}

/// Now, in unix seconds, as the stores record `created_at`.
pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Where a store's schema stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// Contractions done (those this build knows and any a newer build did).
    pub contracted: usize,
    /// Expansions done.
    pub expanded: usize,
    /// The oldest code version that may run on it, if a contraction set one.
    pub min_code_version: Option<String>,
}

/// An account-db as it last recorded itself in `peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its host name and listening port.
    pub instance: String,
    /// Its code version.
    pub code_version: String,
    /// When it last recorded itself (unix milliseconds).
    pub last_seen_ms: Millis,
}

/// Why the store could not answer. Never "no such account": that is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// login-server could not reach account-db, or account-db did not answer within
    /// `--db-timeout` (see the source for which).
    #[error("account store unreachable: {0}")]
    Unreachable(#[source] DbError),
    /// No account-db reachable agreed on protocol version `needs`, which the request needs:
    /// during a rolling upgrade, before an account-db of this release serves.
    #[error("no account-db reached speaks protocol version {needs}, which `{op}` needs")]
    Unsupported { op: &'static str, needs: u32 },
    /// account-db answered with an error: its own store failed (the text is its message), or
    /// its reply did not fit the request.
    #[error("account store failed: {0}")]
    Remote(String),
    /// The SQLite database failed: an IO error, a full disk, a damaged file, or a lock held
    /// past the busy timeout.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file is damaged: `PRAGMA quick_check` found these problems at start.
    #[error("the account database is damaged: {0}")]
    Damaged(String),
    /// The database's schema is newer than this build knows, and a contraction made it
    /// unfit for builds as old as this one (the store's `schema` module says when).
    #[error(
        "the account database has schema version {found}, newer than this build's {known}, \
         and needs code version {needs} (this is {this})"
    )]
    TooNew {
        found: usize,
        known: usize,
        /// The store's `min_code_version`, or "a newer release" where none is recorded.
        needs: String,
        /// This build's code version.
        this: &'static str,
    },
    /// PostgreSQL failed: unreachable, restarting, or it refused a statement. Shown with
    /// PostgreSQL's SQLSTATE and message, or the OS error.
    #[error("PostgreSQL: {}", describe(.0))]
    Postgres(#[from] ::postgres::Error),
    /// PostgreSQL (or something on its port) accepted a connection but did not answer it
    /// within this long.
    #[error("PostgreSQL accepted the connection but did not answer within {} ms", waited.as_millis())]
    Silent { waited: Duration },
    /// A commit's wait for a synchronous standby outlasted `--store-timeout` and was
    /// cancelled: PostgreSQL kept the change, but a standby may not have it, so it is not
    /// acknowledged (a create asked again by its request id is answered once a standby has it).
    #[error(
        "PostgreSQL committed locally but no synchronous standby confirmed it within \
         --store-timeout: not acknowledged"
    )]
    Unreplicated,
    /// A write that must reach a synchronous standby was refused without being tried: a commit
    /// went unconfirmed within the last second, and another write is finding out whether the
    /// standby is back.
    #[error(
        "PostgreSQL's synchronous standby is not confirming commits: write refused, retry later"
    )]
    NoStandby,
    /// The OS refused a thread (resource limits).
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// No PostgreSQL connection could be had from the pool within the deadline.
    #[error("no PostgreSQL connection: {0}")]
    Pool(r2d2::Error),
    /// `--store` names a PostgreSQL URL that cannot be parsed.
    #[error("bad PostgreSQL URL: {0}")]
    BadUrl(String),
    /// A database file does not exist and cannot be created, or exists and cannot be opened
    /// (permissions, a full disk).
    #[error("cannot create or open the data file {path}: {source}")]
    DataFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A command that works on an existing store (`admin`, `import`) found none: no database
    /// file in the SQLite directory, or no schema in the PostgreSQL database.
    #[error(
        "no account store in {store}: start account-db there first, or pass --create (check \
         --data and --store)"
    )]
    NoStore { store: String },
    /// The data directory, or a database file in it, cannot be written: its permissions (the
    /// service runs as another user), a read-only mount, an immutable file.
    #[error(
        "{path} is read-only for account-db ({source}): it writes its database there; give \
         the user it runs as write access (or mount it read-write)",
        path = path.display()
    )]
    ReadOnly {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The data directory does not exist and cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the store may answer if asked again later: PostgreSQL not up yet or restarting
    /// (refused, timed out, SQLSTATE 57P03 or class 08), or no connection within the deadline. Not a wrong
    /// password, a missing database, a damaged file.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Postgres(e) => is_transient(e),
            StoreError::Pool(_) | StoreError::Silent { .. } => true,
            _ => false,
        }
    }
}

impl StoreError {
    /// Whether the call lost its connection or its node: PostgreSQL closed the connection,
    /// shut down, restarted or is gone (class 08, 57P01 to 57P03, the link closed), or the
    /// node is a standby now (25006). A repeatable request asked again on a fresh connection
    /// reaches the node that is writable now.
    pub fn lost_node(&self) -> bool {
        let StoreError::Postgres(e) = self else {
            return false;
        };
        match e.code() {
            Some(code) => {
                let code = code.code();
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
            }
            // The connection closed, or its socket failed (reset, timed out).
            None => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>())
            }
        }
    }
}

/// What a login's read finds: the account, if any, and the records asked for, in order.
pub type LoginRead = (Option<Account>, Vec<Record>);

/// An account store, and the throttle [`Record`]s beside the accounts. Implementations are
/// shared between threads.
pub trait Store: Send + Sync {
    /// The account named `username` in any case, if there is one, with its id.
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError>;
    /// Store `account` (its `id` is ignored: the store gives one, stable and never reused)
    /// unless its name, or a look-alike of it, is taken; atomic and durable on `New`.
    /// `request_id` makes it idempotent: if the account with this name was stored by a create
    /// with the same `request_id`, the answer is `New` again, so a create whose outcome was lost
    /// can be repeated safely.
    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError>;
    /// [`Store::create`] for each of `accounts` (with its create's request id), in order, in
    /// as few durable transactions as keep each under [`BATCH_TIME`]: an import's writes.
    /// Each transaction takes its look-alike locks in key order. Defaults to one create after
    /// another.
    fn create_many(&self, accounts: &[(Account, String)]) -> Result<Vec<Created>, StoreError> {
        accounts
            .iter()
            .map(|(account, request_id)| self.create(account, request_id))
            .collect()
    }
    /// Replace the hash of the account named `username` (any case) with `hash`, if it is still
    /// `old`; `false` if there is no such account or its hash changed meanwhile (a password
    /// change won: a login's rehash of the old password must not undo it).
    fn update_hash(&self, username: &str, old: &str, hash: &str) -> Result<bool, StoreError>;
    /// Check that the store answers.
    fn ping(&self) -> Result<(), StoreError>;
    /// How many accounts there are.
    fn count(&self) -> Result<u64, StoreError>;
    /// What an operator sees of the account named `username` (any case).
    fn details(&self, username: &str) -> Result<Option<Details>, StoreError>;
    /// Delete the account named `username` (any case), or `#ID` the account with that id (a
    /// guest, say), with its devices: its name may be registered again, and its sessions fall
    /// with it. `false` if there is none.
    fn delete(&self, username: &str) -> Result<bool, StoreError>;
    /// Rename the account named `old` (any case) to `new`, unless another account holds
    /// `new` or a look-alike of it: its id, password, ban and sessions stay; `old` is free
    /// from then on. Atomic and durable. Its throttle record is the caller's to move.
    fn rename(&self, old: &str, new: &str) -> Result<Renamed, StoreError>;
    /// Ban the account named `username` (any case; `#ID`: the guest with that id) as `ban`
    /// says, voiding its sessions, or with `None` lift its ban; `false` if there is no such
    /// account.
    fn set_ban(&self, username: &str, ban: Option<&Ban>) -> Result<bool, StoreError>;
    /// At most `limit` accounts whose folded names begin with the folded `prefix`, in order.
    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<Account>, StoreError>;
    /// At most `limit` accounts with ids above `after`, in id order: an operator's scan of
    /// every account, a page at a time (`admin list --costly`).
    fn accounts_after(&self, after: u64, limit: u32) -> Result<Vec<Account>, StoreError>;
    /// At most `limit` accounts that share their skeleton with another (look-alikes registered
    /// before the recipe that tells them apart: `admin list --conflicts`), ordered by skeleton
    /// then id, each with its skeleton.
    fn look_alikes(&self, limit: u32) -> Result<Vec<(String, Account)>, StoreError>;
    /// What a login needs, in one read: [`find`](Store::find) and the records at `keys`
    /// (absent ones as the empty record), in the order of `keys`.
    fn find_for_login(
        &self,
        username: &str,
        keys: &[String],
    ) -> Result<(Option<Account>, Vec<Record>), StoreError>;
    /// [`find_for_login`](Store::find_for_login) for many logins (name, keys), in order.
    /// Defaults to one after another; PostgreSQL reads them all in one statement.
    fn find_for_logins(&self, logins: &[(&str, &[String])]) -> Result<Vec<LoginRead>, StoreError> {
        logins
            .iter()
            .map(|(username, keys)| self.find_for_login(username, keys))
            .collect()
    }
    /// Change the records at `keys` atomically, as of `now`: `change` gets them (absent ones as
    /// the empty record) in the order of `keys`, and what it leaves is written back, ranked as
    /// of `now`; a record that expires by `now` is deleted. Concurrent changes of one key,
    /// from any account-db, take turns. Not durable: a crash may lose the last changes.
    fn update_records(
        &self,
        keys: &[String],
        now: Millis,
        change: &mut dyn FnMut(&mut [Record]),
    ) -> Result<(), StoreError>;
    /// What `verify` needs of session `sid` of the account with `account_id`, in one read;
    /// `None` if there is no such account. With `link`, the session is revoked also when that
    /// device link was unlinked.
    fn session(
        &self,
        account_id: u64,
        sid: &str,
        link: Option<&str>,
    ) -> Result<Option<SessionState>, StoreError>;
    /// The device `device_id`, with its account, and the records at `keys` (absent ones as the
    /// empty record), in one read.
    fn find_device(&self, device_id: &str, keys: &[String]) -> Result<DeviceRead, StoreError>;
    /// [`find_device`](Store::find_device) for many devices (id, keys), in order. Defaults to
    /// one after another; PostgreSQL reads them all in one statement.
    fn find_devices(&self, devices: &[(&str, &[String])]) -> Result<Vec<DeviceRead>, StoreError> {
        devices
            .iter()
            .map(|(device_id, keys)| self.find_device(device_id, keys))
            .collect()
    }
    /// A guest account for `device` (its `account_id` is ignored), made with the device in one
    /// durable transaction: the account and the device as stored. `None` if the device is
    /// linked already, unless to a guest this same `request_id` made (a create repeated after
    /// its reply was lost): then that guest again.
    fn create_guest(
        &self,
        device: &Device,
        request_id: &str,
    ) -> Result<Option<(Account, Device)>, StoreError>;
    /// Record that `device_id` logged in at `now`. Not durable, like a throttle record.
    fn touch_device(&self, device_id: &str, now: Millis) -> Result<(), StoreError>;
    /// Give the guest `account_id` the name `username` and the password `hash`, unless the
    /// name or a look-alike is taken; idempotent by `request_id`. Atomic and durable: of two
    /// claims of one guest, one wins.
    fn claim(
        &self,
        account_id: u64,
        username: &str,
        hash: &str,
        request_id: &str,
    ) -> Result<Claimed, StoreError>;
    /// Link `device` to its `account_id` (linked to it already: its secret replaced, its link
    /// kept), unless it is another account's or the account holds [`DEVICES_PER_ACCOUNT`].
    /// Durable.
    fn link_device(&self, device: &Device) -> Result<Linked, StoreError>;
    /// Unlink `device_id` from `account_id` at `now`, revoking the sessions its link began
    /// until `until_ms`, in one durable transaction; not a guest's last device. Past
    /// [`REVOKED_PER_ACCOUNT`] revocations of the account (a player linking and unlinking
    /// without end), every session of the account that began before `now` is voided instead.
    fn unlink_device(
        &self,
        account_id: u64,
        device_id: &str,
        now: Millis,
        until_ms: Millis,
    ) -> Result<Unlinked, StoreError>;
    /// The devices linked to `account_id`, most recently linked first.
    fn devices(&self, account_id: u64) -> Result<Vec<Device>, StoreError>;
    /// The account with id `id` (a guest's name empty), as an operator sees it.
    fn details_by_id(&self, id: u64) -> Result<Option<Details>, StoreError>;
    /// Delete the guests (accounts without a name) none of whose devices logged in since
    /// `idle_before_ms`, with their devices; with `dry_run`, only count them. How many.
    fn prune_guests(&self, idle_before_ms: Millis, dry_run: bool) -> Result<u64, StoreError>;
    /// Revoke a session until it could no longer be used anyway. Durable. An account holds at
    /// most [`REVOKED_PER_ACCOUNT`] revocations: past that, every session of the account that
    /// began no later than this one is voided instead.
    fn revoke_session(&self, revocation: &Revocation) -> Result<(), StoreError>;
    /// Void every session of the account with `account_id` that began before `before_ms`
    /// (an earlier void stays), and with `hash` replace its password hash, in one durable
    /// transaction; `false` if there is no such account, or (with `hash`) it is banned at
    /// `before_ms`: a banned player cannot change the password into a new session.
    fn void_sessions(
        &self,
        account_id: u64,
        before_ms: Millis,
        hash: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Delete the revocations of sessions that expired by `now`. Returns how many went.
    fn prune_revoked(&self, now: Millis) -> Result<u64, StoreError>;
    /// Delete the records that expired by `now`; then, while more than `cap` are left, those of
    /// lowest [`rank`](Record::rank). Returns how many went. Run once a second by account-db.
    fn prune_records(&self, now: Millis, cap: u64) -> Result<u64, StoreError>;
    /// Export what this store knows of itself into `registry` (PostgreSQL: which host is the
    /// writable node). Defaults to nothing.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }
    /// Whether the store records that the old server's names were all imported (`account-db
    /// import --complete`, or `account-db admin legacy-names-imported`).
    /// Where the schema stands: contractions and expansions done, and the oldest code version
    /// that may run on it.
    fn schema_state(&self) -> Result<SchemaState, StoreError>;
    /// Do contraction `step` (an index into the schema module's `CONTRACTIONS`), in
    /// one transaction, if the store has done exactly the ones before it; `false` if it has
    /// not (another operator did it meanwhile): nothing changed.
    fn contract(&self, step: usize) -> Result<bool, StoreError>;
    /// Record that the account-db `instance` runs this build, seen at `now`; forget the peers
    /// not seen for the schema module's `PEER_KEPT` (7 days).
    fn record_peer(&self, instance: &str, now: Millis) -> Result<(), StoreError>;
    /// The account-dbs that recorded themselves, most recently seen first.
    fn peers(&self) -> Result<Vec<Peer>, StoreError>;
    fn legacy_names_imported(&self) -> Result<bool, StoreError>;
    /// Record that the old server's names were all imported, with `how` (which command, when):
    /// registration under `--legacy-db` opens. Kept for good; `false` if it was recorded
    /// already (nothing changed).
    fn mark_legacy_names_imported(&self, how: &str) -> Result<bool, StoreError>;
}

/// The `meta` key under which a store records that the old server's names were imported.
pub(super) const LEGACY_NAMES_IMPORTED: &str = "legacy_names_imported";

/// PostgreSQL's own words for an error: its severity, SQLSTATE, message, detail and hint; for
/// an error that is not PostgreSQL's (a refused port, a timeout), the error and every cause
/// beneath it, down to the OS error. `postgres::Error`'s own text says only "db error" or
/// "error connecting to server".
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(error) = cause {
        text.push_str(&format!(": {error}"));
        cause = error.source();
    }
    text
}

/// Whether `e` may pass by itself: PostgreSQL not up yet (refused, timed out, starting or
/// shutting down: SQLSTATE 57P03, class 08), or a lock held by another account-db's
/// migration (55P03). Not a wrong password, a missing database or role,
/// or a missing privilege: waiting does not mend those.
pub fn is_transient(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) => matches!(code.code(), "57P03" | "55P03") || code.code().starts_with("08"),
        // Not PostgreSQL's: the connection (refused, reset, timed out), unless the client's
        // own settings are wrong (a password the server asks for and the URL lacks).
        None => {
            let text = e.to_string();
            e.as_db_error().is_none()
                && !text.starts_with("invalid configuration")
                && !text.starts_with("authentication error")
        }
    }
}
