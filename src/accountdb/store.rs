//! The [`Store`] trait: what the account store can do, whatever keeps the data.
//!
//! account-db serves a [`SqliteStore`] or a [`PostgresStore`] (chosen by [`StoreUrl`]);
//! login-server reaches it through [`RemoteStore`](crate::accountdb::client::RemoteStore),
//! which is no `Store`: it implements [`Accounts`](crate::accountdb::accounts::Accounts), what
//! login-server asks of the account tier, as every `Store` does too.
//! Names are unique without regard to case ([`fold`](crate::auth::names::fold)); an account
//! keeps the spelling it registered with.

mod contract;
pub mod pg_link;
mod pg_nodes;
mod pg_watchdog;
mod postgres;
pub mod schema;
mod sqlite;

pub use crate::protocol::accountdb::{Account, Ban, Created, Device, Revocation, SessionState};
pub use contract::{
    Claimed, Details, DeviceRead, Linked, LoginRead, Peer, Renamed, SchemaState, Store, StoreError,
    Unlinked, BATCH_TIME, DEVICES_PER_ACCOUNT, REVOKED_PER_ACCOUNT,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where account-db keeps its accounts: `sqlite:DIR` or `postgres://user@host:port/dbname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite file in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its connection URL.
    Postgres(String),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("sqlite:") {
            Ok(StoreUrl::Sqlite(PathBuf::from(dir)))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(s.to_string()))
        } else {
            // Not quoted back: a mistyped URL may hold a password.
            Err("a store is sqlite:DIR or postgres://user@host:port/dbname".into())
        }
    }
}

/// Parses `--store` for clap without quoting a value it refuses back (clap's own errors do):
/// a mistyped URL may hold a password.
#[derive(Debug, Clone, Copy)]
pub struct StoreUrlParser;

impl clap::builder::TypedValueParser for StoreUrlParser {
    type Value = StoreUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreUrl, clap::Error> {
        let flag = arg.map_or_else(|| "--store".to_string(), |a| format!("--{}", a.get_id()));
        let refused = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("{flag}: {why} (the value is not shown: it may hold a password)\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refused("not UTF-8"))?;
        text.parse().map_err(|why: String| refused(&why))
    }
}

impl std::fmt::Display for StoreUrl {
    /// The URL without a password, for logs: neither `user:password@` nor a `password=`
    /// parameter is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(dir) => write!(f, "sqlite:{}", dir.display()),
            StoreUrl::Postgres(url) => {
                let (url, query) = pg_link::split_url(url);
                let start = url.find("://").map_or(0, |scheme| scheme + 3);
                // The last `@`: a password may hold a raw `@` (not percent-encoded), and none
                // of it may show.
                match url[start..].rfind('@') {
                    Some(at) => {
                        let at = start + at;
                        let user = url[start..at].split(':').next().unwrap_or_default();
                        write!(f, "{}{user}@{}", &url[..start], &url[at + 1..])?;
                    }
                    None => f.write_str(url)?,
                }
                let Some(query) = query else { return Ok(()) };
                let shown: Vec<&str> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if pg_link::is_password_key(key) => "password=…",
                        _ => pair,
                    })
                    .collect();
                write!(f, "?{}", shown.join("&"))
            }
        }
    }
}

impl StoreUrl {
    /// Open the store, creating it if it does not exist yet: for PostgreSQL with a pool of
    /// `pool` connections, `timeout` to connect, and the password in `password_file` if the
    /// URL has none (`--store-password-file`); for SQLite checking the file's integrity first
    /// if `integrity_check`.
    pub fn open(
        &self,
        pool: u32,
        timeout: Duration,
        integrity_check: bool,
        password_file: Option<&Path>,
    ) -> Result<Arc<dyn Store>, StoreError> {
        self.open_as(pool, timeout, integrity_check, password_file, true)
    }

    /// [`StoreUrl::open`], but a store that does not exist yet is [`StoreError::NoStore`]
    /// unless `create`: what the commands that work on a store (`admin`, `import`) open, so
    /// that a typo in `--data` is not a new empty store.
    pub fn open_as(
        &self,
        pool: u32,
        timeout: Duration,
        integrity_check: bool,
        password_file: Option<&Path>,
        create: bool,
    ) -> Result<Arc<dyn Store>, StoreError> {
        let missing = || StoreError::NoStore {
            store: self.to_string(),
        };
        Ok(match self {
            StoreUrl::Sqlite(dir) => {
                if !create && !dir.join(sqlite::FILE_NAME).exists() {
                    return Err(missing());
                }
                Arc::new(SqliteStore::open_with(dir, integrity_check)?)
            }
            StoreUrl::Postgres(url) => {
                let store = PostgresStore::connect(url, pool, timeout, password_file)?;
                if !create && !store.has_schema()? {
                    return Err(missing());
                }
                store.migrate()?;
                Arc::new(store)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::StoreUrl;

    #[test]
    fn no_part_of_a_password_is_shown() {
        let shown = |url: &str| url.parse::<StoreUrl>().unwrap().to_string();
        let plain = shown("postgres://postgres:hunter2@127.0.0.1:5432/x");
        assert_eq!(plain, "postgres://postgres@127.0.0.1:5432/x");
        // A raw `@` in the password (not percent-encoded): none of it shows.
        let raw = shown("postgres://postgres:hun@ter2@127.0.0.1:5432/x");
        assert_eq!(raw, "postgres://postgres@127.0.0.1:5432/x");
        let query = shown("postgres://u@h:5432/x?password=hunter2&sslmode=require");
        assert!(!query.contains("hunter2"), "{query}");
    }
}
