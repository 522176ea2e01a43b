//! [`DbManager`], the r2d2 `ManageConnection` that makes and checks [`DbConn`]s, and the
//! handler that reports the pool's failed connection attempts.
//!
//! As in r2d2-postgres and r2d2-redis: `is_valid` is a real round trip (a ping), and
//! `has_broken` never blocks: it reads a flag that any IO error, timeout or bad reply sets.

use super::connection::{DbConn, DbError, DbTls};
use crate::auth::secret::Secret;
use crate::config::Endpoint;
use crate::logging::RateLimited;
use crate::protocol::accountdb::{DbRequest, DbResponse};
use std::time::Duration;

/// Makes and checks [`DbConn`]s for an r2d2 pool.
#[derive(Debug, Clone)]
pub struct DbManager {
    /// The account-db, resolved again for each connection.
    endpoint: Endpoint,
    /// The connect (TLS handshake and greeting included) and per-request deadline.
    timeout: Duration,
    /// What each connection proves.
    secret: Secret,
    /// TLS for each connection; `None`: plaintext.
    tls: Option<DbTls>,
}

impl DbManager {
    /// Connections to `endpoint` (a host name resolved again for each), with `timeout` as the
    /// connect and per-request deadline, over TLS with `tls`.
    pub fn new(endpoint: Endpoint, timeout: Duration, secret: Secret, tls: Option<DbTls>) -> Self {
        DbManager {
            endpoint,
            timeout,
            secret,
            tls,
        }
    }
}

impl r2d2::ManageConnection for DbManager {
    type Connection = DbConn;
    type Error = DbError;

    fn connect(&self) -> Result<DbConn, DbError> {
        DbConn::connect(
            self.endpoint.resolve(),
            self.timeout,
            &self.secret,
            self.tls.as_ref(),
        )
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), DbError> {
        match conn.call(&DbRequest::Ping)? {
            DbResponse::Pong => Ok(()),
            other => {
                conn.broken = true;
                Err(DbError::BadReply(format!("ping answered {other:?}")))
            }
        }
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        std::thread::panicking() || conn.broken
    }
}

/// Reports the pool's failed connection attempts through `tracing`, at most one line per
/// 10 s with how many failed since: a wrong secret fails every attempt, many a second.
pub(super) struct LogErrors(pub(super) RateLimited);

impl std::fmt::Debug for LogErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogErrors")
    }
}

impl r2d2::HandleError<DbError> for LogErrors {
    fn handle_error(&self, error: DbError) {
        if let Some(failed) = self.0.hit() {
            tracing::warn!(%error, failed, "account-db connection attempts failed");
        }
    }
}
