//! account-db: the account store server.

use anyhow::Context;
use clap::Parser;
use login_server::accountdb::server::{AccountDb, Config};
use login_server::accountdb::store::SqliteStore;
use login_server::auth::secret::Secret;
use login_server::logging::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The account store: accounts in SQLite, served to login-servers over TCP.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ACCOUNT_DB_LISTEN", default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Directory holding the database.
    #[arg(long, env = "ACCOUNT_DB_DATA", default_value = "./data")]
    data: PathBuf,
    /// Connections served at once (each holds a handler thread).
    #[arg(long, env = "ACCOUNT_DB_MAX_CONNECTIONS", default_value_t = 256)]
    max_connections: usize,
    /// File holding the secret clients must prove (64 hex digits); created, mode 0600, if
    /// missing. The environment variable ACCOUNT_DB_SECRET may hold the secret instead
    /// [default: DATA/account-db.secret].
    #[arg(long, env = "ACCOUNT_DB_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "ACCOUNT_DB_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, env = "ACCOUNT_DB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _logs = login_server::logging::init(args.log_format);
    let store = SqliteStore::open(&args.data)
        .with_context(|| format!("cannot open the account store in {}", args.data.display()))?;
    let secret = match std::env::var("ACCOUNT_DB_SECRET") {
        Ok(hex) => Secret::from_hex(&hex).context("ACCOUNT_DB_SECRET")?,
        Err(_) => {
            let path = args
                .secret_file
                .unwrap_or_else(|| args.data.join("account-db.secret"));
            Secret::read_or_create(&path)?
        }
    };
    let mut config = Config::new(args.listen, secret);
    config.max_connections = args.max_connections;
    config.metrics_listen = args.metrics_listen;
    let server = AccountDb::spawn(config, Arc::new(store))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %server.local_addr(), data = %args.data.display(), "account-db listening");
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    }
    login_server::logging::wait_for_signal()?;
    tracing::info!("signal received: shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
