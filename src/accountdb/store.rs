//! The [`Store`] trait: what the account store can do, whatever keeps the data.
//!
//! account-db serves a [`SqliteStore`]; login-server reaches it through
//! [`RemoteStore`](crate::accountdb::client::RemoteStore), which implements the same trait.
//! Names are unique without regard to case ([`fold`](crate::auth::names::fold)); an account
//! keeps the spelling it registered with.

mod sqlite;

use crate::accountdb::client::DbError;
pub use crate::protocol::accountdb::Account;
pub use sqlite::SqliteStore;

/// What [`Store::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The account is stored, durably.
    New,
    /// The name was taken, in some spelling; nothing changed.
    Exists,
}

/// Why the store could not answer. Never "no such account": that is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// login-server could not reach account-db, or account-db did not answer within
    /// `--db-timeout` (see the source for which).
    #[error("account store unreachable: {0}")]
    Unreachable(#[source] DbError),
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
    /// The database's schema is newer than this build knows: it was opened by a newer version.
    #[error("the account database has schema version {found}, newer than this build's {known}")]
    TooNew { found: usize, known: usize },
    /// The data directory does not exist and cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// An account store. Implementations are shared between threads.
pub trait Store: Send + Sync {
    /// The account named `username` in any case, if there is one.
    fn find(&self, username: &str) -> Result<Option<Account>, StoreError>;
    /// Store `account` unless its name is taken in any case; atomic and durable on `New`.
    /// `request_id` makes it idempotent: if the account with this name was stored by a create
    /// with the same `request_id`, the answer is `New` again, so a create whose outcome was lost
    /// can be repeated safely.
    fn create(&self, account: &Account, request_id: &str) -> Result<Created, StoreError>;
    /// Replace the hash of the account named `username` (any case); `false` if there is none.
    fn update_hash(&self, username: &str, hash: &str) -> Result<bool, StoreError>;
    /// Check that the store answers.
    fn ping(&self) -> Result<(), StoreError>;
}
