//! login-server: the gateway-facing server. Without `--db` it runs an account-db embedded on
//! an ephemeral loopback port, storing under `--data`.

use anyhow::Context;
use clap::Parser;
use login_server::accountdb::server::{self as dbserver, AccountDb};
use login_server::accountdb::store::SqliteStore;
use login_server::auth::password::HashParams;
use login_server::auth::secret::Secret;
use login_server::logging::LogFormat;
use login_server::server::{cores, Config};
use login_server::throttle::Policy;
use login_server::LoginServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Login and registration for game gateways: seed-compatible JSON over TCP.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to accept gateway connections on.
    #[arg(long, env = "LOGIN_SERVER_LISTEN", default_value = "127.0.0.1:6999")]
    listen: SocketAddr,
    /// Address of a running account-db. Without it, an account-db runs embedded.
    #[arg(long, env = "LOGIN_SERVER_DB")]
    db: Option<SocketAddr>,
    /// Data directory of the embedded account-db (ignored with --db).
    #[arg(long, env = "LOGIN_SERVER_DATA", default_value = "./data")]
    data: PathBuf,
    /// Worker threads [default: 4 x CPU cores].
    #[arg(long, env = "LOGIN_SERVER_WORKERS")]
    workers: Option<usize>,
    /// Whole messages waiting for a worker before new ones are answered 7 (busy).
    #[arg(long, env = "LOGIN_SERVER_QUEUE", default_value_t = 1024)]
    queue: usize,
    /// Open gateway connections at most.
    #[arg(long, env = "LOGIN_SERVER_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Pooled account-db connections; 0 opens one per request, as the seed did
    /// [default: the worker count].
    #[arg(long, env = "LOGIN_SERVER_DB_POOL")]
    db_pool: Option<u32>,
    /// Deadline of each account-db request, and of getting a pooled connection, in seconds.
    #[arg(long, env = "LOGIN_SERVER_DB_TIMEOUT", default_value_t = 2.0)]
    db_timeout: f64,
    /// argon2id parameters for new hashes: memory KiB, iterations, lanes.
    #[arg(long, env = "LOGIN_SERVER_HASH_PARAMS", default_value_t = HashParams::default())]
    hash_params: HashParams,
    /// Hashes computed at once [default: CPU cores].
    #[arg(long, env = "LOGIN_SERVER_HASH_THREADS")]
    hash_threads: Option<usize>,
    /// Username length in characters: MIN,MAX.
    #[arg(long, env = "LOGIN_SERVER_USERNAME_CHARS", default_value = "3,32", value_parser = parse_range)]
    username_chars: (usize, usize),
    /// Password length in bytes: MIN,MAX.
    #[arg(long, env = "LOGIN_SERVER_PASSWORD_BYTES", default_value = "8,1024", value_parser = parse_range)]
    password_bytes: (usize, usize),
    /// Seconds a message may take to arrive whole after its first byte.
    #[arg(long, env = "LOGIN_SERVER_MESSAGE_TIMEOUT", default_value_t = 10.0)]
    message_timeout: f64,
    /// Seconds an idle connection is kept open.
    #[arg(long, env = "LOGIN_SERVER_IDLE_TIMEOUT", default_value_t = 300.0)]
    idle_timeout: f64,
    /// Seconds shutdown waits for accepted requests to be answered.
    #[arg(long, env = "LOGIN_SERVER_SHUTDOWN_TIMEOUT", default_value_t = 10.0)]
    shutdown_timeout: f64,
    /// File holding account-db's secret (64 hex digits), needed with --db. The environment
    /// variable ACCOUNT_DB_SECRET may hold the secret itself instead.
    #[arg(long, env = "LOGIN_SERVER_DB_SECRET_FILE")]
    db_secret_file: Option<PathBuf>,
    /// Failed logins, per account or player address, that lock it.
    #[arg(long, env = "LOGIN_SERVER_THROTTLE_FAILURES", default_value_t = 5)]
    throttle_failures: u32,
    /// Seconds within which those failures count.
    #[arg(long, env = "LOGIN_SERVER_THROTTLE_WINDOW", default_value_t = 900.0)]
    throttle_window: f64,
    /// Seconds of the first lockout; each further one doubles it.
    #[arg(long, env = "LOGIN_SERVER_THROTTLE_LOCKOUT", default_value_t = 60.0)]
    throttle_lockout: f64,
    /// Seconds a lockout lasts at most.
    #[arg(
        long,
        env = "LOGIN_SERVER_THROTTLE_MAX_LOCKOUT",
        default_value_t = 900.0
    )]
    throttle_max_lockout: f64,
    /// Answer an unknown user 2 (wrong password) after a real verification, so neither the
    /// code nor the time tells whether the account exists. Off: the seed's gateway expects 1.
    #[arg(long, env = "LOGIN_SERVER_HIDE_USER_EXISTENCE")]
    hide_user_existence: bool,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address.
    #[arg(long, env = "LOGIN_SERVER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, env = "LOGIN_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The secret for an account-db at `--db`: from ACCOUNT_DB_SECRET, or --db-secret-file.
fn db_secret(file: Option<&std::path::Path>) -> anyhow::Result<Secret> {
    if let Ok(hex) = std::env::var("ACCOUNT_DB_SECRET") {
        return Secret::from_hex(&hex).context("ACCOUNT_DB_SECRET");
    }
    let file = file.context(
        "account-db requires its secret: pass --db-secret-file (account-db writes \
         DATA/account-db.secret) or set ACCOUNT_DB_SECRET",
    )?;
    Ok(Secret::read(file)?)
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (min, max) = s.split_once(',').ok_or("expected MIN,MAX")?;
    let parse = |n: &str| n.trim().parse::<usize>().map_err(|e| e.to_string());
    let (min, max) = (parse(min)?, parse(max)?);
    if min > max {
        return Err("MIN is larger than MAX".into());
    }
    Ok((min, max))
}

fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).context("a timeout must be a non-negative number of seconds")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _logs = login_server::logging::init(args.log_format);
    let (db_addr, secret, embedded) = match args.db {
        Some(addr) => (addr, db_secret(args.db_secret_file.as_deref())?, None),
        None => {
            let store = SqliteStore::open(&args.data).with_context(|| {
                format!("cannot open the account store in {}", args.data.display())
            })?;
            // In-process: a fresh secret that never leaves memory.
            let secret = Secret::generate();
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let config = dbserver::Config::new(listen, secret.clone());
            let db = AccountDb::spawn(config, Arc::new(store))
                .context("cannot start the embedded account-db")?;
            tracing::info!(addr = %db.local_addr(), data = %args.data.display(), "embedded account-db started");
            (db.local_addr(), secret, Some(db))
        }
    };
    let mut config = Config::new(args.listen, db_addr, secret);
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    config.db.pool_size = args.db_pool.unwrap_or(config.workers as u32);
    config.db.request_timeout = seconds(args.db_timeout)?;
    config.db.checkout_timeout = seconds(args.db_timeout)?;
    config.queue = args.queue;
    config.max_connections = args.max_connections;
    config.hash_params = args.hash_params;
    config.hash_threads = args.hash_threads.unwrap_or_else(cores);
    config.service.rules.username_chars = args.username_chars;
    config.service.rules.password_bytes = args.password_bytes;
    config.service.hide_user_existence = args.hide_user_existence;
    config.service.throttle = Policy {
        max_failures: args.throttle_failures,
        window: seconds(args.throttle_window)?,
        lockout: seconds(args.throttle_lockout)?,
        max_lockout: seconds(args.throttle_max_lockout)?,
        ..Policy::default()
    };
    config.metrics_listen = args.metrics_listen;
    config.message_timeout = seconds(args.message_timeout)?;
    config.idle_timeout = seconds(args.idle_timeout)?;
    config.shutdown_timeout = seconds(args.shutdown_timeout)?;

    let server = LoginServer::spawn(config.clone()).context("cannot start login-server")?;
    tracing::info!(
        addr = %server.local_addr(),
        workers = config.workers,
        db_pool = config.db.pool_size,
        hash_params = %config.hash_params,
        "login-server listening"
    );
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    }
    login_server::logging::wait_for_signal()?;
    tracing::info!("signal received: shutting down");
    server.shutdown();
    if let Some(db) = embedded {
        db.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}
