//! account-db: the account store server.

use anyhow::Context;
use clap::Parser;
use login_server::accountdb::server::{AccountDb, Config};
use login_server::accountdb::store::SqliteStore;
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    login_server::logging::init();
    let store = SqliteStore::open(&args.data)
        .with_context(|| format!("cannot open the account store in {}", args.data.display()))?;
    let config = Config {
        listen: args.listen,
        max_connections: args.max_connections,
        ..Config::default()
    };
    let server = AccountDb::spawn(config, Arc::new(store))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %server.local_addr(), data = %args.data.display(), "account-db listening");
    login_server::logging::wait_for_signal()?;
    tracing::info!("signal received: shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
