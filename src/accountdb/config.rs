//! [`AccountDbConfig`]: every setting of account-db, with its flag, environment variable and
//! default in one place.

use crate::accountdb::admin::Admin;
use crate::accountdb::store::StoreUrl;
use crate::auth::password::HashParams;
use crate::auth::secret::Secret;
use crate::config::{at_least_one, seconds};
use crate::logging::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Commands that do something other than serve, then exit.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Import accounts from the old system into the existing store (--data or --store) and
    /// print a summary: JSON lines of {"username":U,"password":P}, {"username":U,"hash":H} (argon2 or
    /// bcrypt) or {"username":U} (a name reserved for its old owner). FILE `-` reads stdin.
    /// Running it twice changes nothing; it may run while account-db serves the store. Exits
    /// 0 when every line was imported or already present, 3 when some lines were rejected, 1
    /// when it could not run.
    Import {
        /// The JSON-lines file, or `-`.
        file: PathBuf,
        /// argon2id parameters for plaintext passwords: memory KiB, iterations, lanes. Use
        /// login-server's --hash-params.
        #[arg(long, value_name = "M,T,P", default_value = "19456,2,1")]
        hash_params: HashParams,
        /// Create the store if it does not exist yet (without it, a missing store is an
        /// error: a typo in --data must not import into a store nobody serves).
        #[arg(long)]
        create: bool,
        /// FILE holds every name of the old server (--legacy-db): when no line is rejected,
        /// record so in the store, which opens registration under --legacy-db.
        #[arg(long)]
        complete: bool,
    },
    /// Administer accounts in the existing store (--data or --store), while account-db serves
    /// it or not. Exits non-zero, saying why on stderr, when it did not make the change asked
    /// for.
    Admin {
        /// Create the store if it does not exist yet (without it, a missing store is an
        /// error: a typo in --data must not answer from a new empty store).
        #[arg(long, global = true)]
        create: bool,
        #[command(subcommand)]
        action: Admin,
    },
    /// Write a fresh secret to PATH (mode 0600, owned like its directory; it must not exist).
    /// For a rotation use rotate-secret.
    GenSecret {
        /// Where to write it.
        path: PathBuf,
    },
    /// Write a small CA and a server certificate for trying TLS between the tiers: DIR/ca.pem
    /// and ca.key, DIR/server.pem and server.key (for --tls-cert and --tls-key; login-server's
    /// --db-tls-ca takes ca.pem), and with --client DIR/client.pem and client.key (for
    /// login-server's --db-tls-cert and --db-tls-key; account-db's --tls-client-ca takes
    /// ca.pem). Keys are mode 0600. Nothing is overwritten: it fails if any of them exists.
    GenTls {
        /// Where to write them (created if missing).
        dir: PathBuf,
        /// The names the server certificate holds: DNS names or IP addresses, the host part of
        /// the address login-servers write in --db (without its port), or their --db-tls-name.
        #[arg(
            long,
            value_name = "NAME[,NAME]",
            value_delimiter = ',',
            required = true
        )]
        name: Vec<String>,
        /// Write a client certificate too.
        #[arg(long)]
        client: bool,
        /// Make the server certificate a client's too (both TLS Web Server and Client
        /// Authentication): for an etcd member, which presents it on its peer links, or a
        /// Patroni node that calls the others.
        #[arg(long)]
        peer: bool,
        /// Sign with the CA an earlier gen-tls wrote to this directory (its ca.pem is copied
        /// to DIR; its ca.key stays there): another account-db's certificate, or a renewed
        /// one, that login-servers already trust. Defaults to none: a new CA.
        #[arg(long, value_name = "CA_DIR")]
        ca: Option<PathBuf>,
        /// Days the certificates are valid (the CA: 3650).
        #[arg(long, value_name = "N", default_value = "365", value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
    },
    /// Rotate the secret login-servers prove, without a restart: `stage`, move every
    /// login-server to the staged secret, `finish` (see docs/operations.md). Works on the
    /// current secret file: the first --secret-file, else DATA/account-db.secret.
    RotateSecret {
        #[command(subcommand)]
        step: RotationStep,
    },
}

/// The steps of a secret rotation.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RotationStep {
    /// Write the next secret to the current secret file's path plus `.next` (mode 0600, owned
    /// like its directory); every account-db reading the current file accepts both within a
    /// second. Refused while a rotation is staged.
    Stage {
        /// Stage this file's secret instead of a fresh one: the file `stage` wrote on another
        /// account-db host, so that every host stages the same secret.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
    /// Replace the current secret file with the staged one (atomically): from then on, and
    /// after any restart, only the new secret is accepted and connections made with the old
    /// one are closed.
    Finish,
}

/// The account store: accounts in SQLite or PostgreSQL, served to login-servers over TCP.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "account-db", version)]
pub struct AccountDbConfig {
    /// Address to listen on. Defaults to 127.0.0.1:9999.
    #[arg(
        long,
        value_name = "ADDR",
        env = "ACCOUNT_DB_LISTEN",
        default_value = "127.0.0.1:9999",
        value_parser = crate::config::socket_addr
    )]
    pub listen: SocketAddr,
    /// Directory holding the database (accounts.sqlite3). Defaults to ./data.
    #[arg(
        global = true,
        long,
        value_name = "DIR",
        env = "ACCOUNT_DB_DATA",
        default_value = "./data"
    )]
    pub data: PathBuf,
    /// Where the accounts live: sqlite:DIR, or postgres://user@host:port/dbname (several
    /// account-dbs may serve one PostgreSQL database). Several hosts (h1:5432,h2:5432: a
    /// primary and its standbys) are tried for the writable node, as libpq's
    /// target_session_attrs=read-write does. Its sslmode (disable, prefer, require, verify-ca,
    /// verify-full: libpq's meanings; default prefer) and sslrootcert (the CA of the verify
    /// modes) are honoured. Defaults to sqlite:DATA.
    #[arg(
        global = true,
        long,
        value_name = "URL",
        env = "ACCOUNT_DB_STORE",
        value_parser = crate::accountdb::store::StoreUrlParser
    )]
    pub store: Option<StoreUrl>,
    /// File holding the PostgreSQL password (its whole text, less a final newline; mode 0600),
    /// used when --store's URL has none; without it, a pgpass file (PGPASSFILE, else
    /// ~/.pgpass) is read as libpq reads one. Defaults to none.
    #[arg(
        global = true,
        long,
        value_name = "FILE",
        env = "ACCOUNT_DB_STORE_PASSWORD_FILE"
    )]
    pub store_password_file: Option<PathBuf>,
    /// PostgreSQL connections pooled by this account-db (unused with SQLite). Defaults to 16.
    #[arg(
        global = true,
        long,
        value_name = "N",
        env = "ACCOUNT_DB_STORE_POOL",
        default_value = "16",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub store_pool: u32,
    /// Seconds a PostgreSQL request may wait, for a connection (over every host of --store),
    /// a statement, a lock or a synchronous standby's confirmation, before it is answered with
    /// an error (unused with SQLite). Keep it below login-server's
    /// per-attempt deadline (--db-timeout, or a third of it with several account-dbs), so that
    /// login-server hears an error, not silence. Defaults to 0.5.
    #[arg(
        global = true,
        long,
        value_name = "SECS",
        env = "ACCOUNT_DB_STORE_TIMEOUT",
        default_value = "0.5",
        value_parser = seconds
    )]
    pub store_timeout: Duration,
    /// Seconds account-db waits at start for a PostgreSQL that is not up yet (connection
    /// refused or timed out, SQLSTATE 57P03 or class 08), retrying with backoff, before it
    /// gives up; 0 waits for ever. A wrong password, a missing database or role, or a missing
    /// privilege fails at once. While it waits, connections to --listen are closed at once,
    /// and /readyz answers 503. Defaults to 60.
    #[arg(
        long,
        value_name = "SECS",
        env = "ACCOUNT_DB_STORE_START_TIMEOUT",
        default_value = "60",
        value_parser = seconds
    )]
    pub store_start_timeout: Duration,
    /// Connections served at once, each holding a handler thread; further ones are refused.
    /// Defaults to 256.
    #[arg(
        long, value_name = "N",
        env = "ACCOUNT_DB_MAX_CONNECTIONS",
        default_value = "256",
        value_parser = at_least_one
    )]
    pub max_connections: usize,
    /// Connections still in their handshake (not yet authenticated) at most; they are counted
    /// apart from --max-connections, so unauthenticated peers can never take an authenticated
    /// login-server's place. Past it, the oldest handshake of the address holding the most is
    /// cut off. Defaults to 64.
    #[arg(
        long,
        value_name = "N",
        env = "ACCOUNT_DB_MAX_HANDSHAKES",
        default_value = "64",
        value_parser = at_least_one
    )]
    pub max_handshakes: usize,
    /// Refuse to start when the open-files limit cannot cover --max-connections and
    /// --max-handshakes beside the descriptors the rest of the process needs, instead of
    /// lowering the cap to fit (and saying so). Defaults to off: the cap is lowered.
    #[arg(long, env = "ACCOUNT_DB_STRICT_LIMITS")]
    pub strict_limits: bool,
    /// Throttle records (failed-login counts and locks per account and per address,
    /// registration counts, familiar addresses) the store keeps at most, for every
    /// login-server it serves. Checked once a second: between checks a flood may add what
    /// arrives in that second. When full, records that lock nothing go first (oldest change
    /// first), then locks (soonest to end first), and familiar addresses last (only successful
    /// logins make them).
    /// Defaults to 1000000.
    #[arg(
        long,
        value_name = "N",
        env = "ACCOUNT_DB_THROTTLE_TABLE_SIZE",
        default_value_t = 1_000_000
    )]
    pub throttle_table_size: u64,
    /// Delete, once an hour, the guests (accounts made by a device's first login, never
    /// claimed) none of whose devices logged in for this many days, with their devices, as
    /// `account-db admin prune-guests --idle DAYS` does. Defaults to 0: never.
    #[arg(
        long,
        value_name = "DAYS",
        env = "ACCOUNT_DB_GUEST_IDLE_DAYS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=36500)
    )]
    pub guest_idle_days: u32,
    /// Skip the integrity check (`PRAGMA quick_check`) of the database at start; it reads the
    /// whole file, which takes long for huge stores. Defaults to off: the check runs.
    #[arg(global = true, long, env = "ACCOUNT_DB_SKIP_INTEGRITY_CHECK")]
    pub skip_integrity_check: bool,
    /// File holding the secret clients must prove (64 hex digits), created with mode 0600 if
    /// missing (and its path logged), unless the store already holds accounts: see
    /// --new-secret. A secret staged beside it (the same path plus `.next`, by `rotate-secret
    /// stage`) is accepted too. Repeat it (or separate with commas) to accept more; the first
    /// is the one created and rotated. The files are read again once a second. The environment
    /// variable ACCOUNT_DB_SECRET may hold the secret itself instead. Defaults to
    /// DATA/account-db.secret.
    #[arg(
        global = true,
        long,
        value_name = "PATH",
        env = "ACCOUNT_DB_SECRET_FILE",
        value_delimiter = ','
    )]
    pub secret_file: Vec<PathBuf>,
    /// Create a missing secret file even though the store already holds accounts (every
    /// login-server then needs the new secret). Without it, a missing file (deleted, or a
    /// wrong --data) stops the start instead of locking every login-server out. Defaults to
    /// off.
    #[arg(long, env = "ACCOUNT_DB_NEW_SECRET")]
    pub new_secret: bool,
    /// The secret itself, for embedding: it wins over the file and the environment.
    #[arg(skip)]
    pub secret: Option<Secret>,
    /// Seconds an authenticated connection may send nothing before it is closed; longer than
    /// login-server's pool keeps idle connections (300 s), so the pool retires them first.
    /// Defaults to 900.
    #[arg(long, value_name = "SECS", env = "ACCOUNT_DB_IDLE_TIMEOUT", default_value = "900", value_parser = seconds)]
    pub idle_timeout: Duration,
    /// Seconds a new connection has to prove the secret: one deadline for the whole
    /// handshake, however slowly its bytes arrive. Defaults to 5.
    #[arg(
        long,
        value_name = "SECS",
        env = "ACCOUNT_DB_AUTH_TIMEOUT",
        default_value = "5",
        value_parser = seconds
    )]
    pub auth_timeout: Duration,
    /// PEM certificate chain (this server's first) for TLS on --listen; with --tls-key,
    /// account-db accepts TLS 1.3 only (see --tls-optional). Defaults to none: plaintext.
    #[arg(
        long,
        value_name = "FILE",
        env = "ACCOUNT_DB_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; refused at start if group or others may read it.
    /// Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "ACCOUNT_DB_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert, accept plaintext login-servers too (told apart by their first byte),
    /// for a rollout only: a plaintext link can be read and rewritten on its way. Logged as a
    /// warning at start. Defaults to off: TLS only.
    #[arg(long, env = "ACCOUNT_DB_TLS_OPTIONAL", requires = "tls_cert")]
    pub tls_optional: bool,
    /// PEM CA certificates: with --tls-cert, every login-server must present a certificate
    /// from one of them (login-server's --db-tls-cert). Defaults to none: no client
    /// certificate asked for.
    #[arg(
        long,
        value_name = "FILE",
        env = "ACCOUNT_DB_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address. Defaults to none.
    #[arg(
        long,
        value_name = "ADDR",
        env = "ACCOUNT_DB_METRICS_LISTEN",
        value_parser = crate::config::socket_addr
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the metrics endpoint (--metrics-listen) over TLS with this PEM certificate chain
    /// (with --metrics-tls-key; TLS 1.3). Fetch /keys over TLS, or pin the key: whoever can
    /// change the JWKS on its way can mint tokens game servers accept. Re-read on SIGHUP.
    /// Defaults to none: plaintext.
    #[arg(
        long,
        value_name = "FILE",
        env = "ACCOUNT_DB_METRICS_TLS_CERT",
        requires = "metrics_tls_key",
        requires = "metrics_listen"
    )]
    pub metrics_tls_cert: Option<PathBuf>,
    /// The private key of --metrics-tls-cert (PEM, mode 0600). Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "ACCOUNT_DB_METRICS_TLS_KEY",
        requires = "metrics_tls_cert"
    )]
    pub metrics_tls_key: Option<PathBuf>,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log line format: text or json. Defaults to text.
    #[arg(
        global = true,
        long,
        value_name = "FORMAT",
        env = "ACCOUNT_DB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What throttle records are judged by: the system's clock, which tests replace with one
    /// they move forward ([`crate::clock::Clock::adjustable`]).
    #[arg(skip)]
    pub clock: crate::clock::Clock,
}

impl Default for AccountDbConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

impl AccountDbConfig {
    /// The defaults, listening on `listen` and admitting those who know `secret`.
    pub fn embedded(listen: SocketAddr, secret: Secret) -> Self {
        AccountDbConfig {
            listen,
            secret: Some(secret),
            ..AccountDbConfig::default()
        }
    }

    /// The TLS files `--tls-cert`, `--tls-key` and `--tls-client-ca` name; `None` without TLS.
    pub fn tls_files(&self) -> Option<crate::tls::ServerFiles> {
        Some(crate::tls::ServerFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The store `--store` names, or the SQLite one in `--data`.
    pub fn store_url(&self) -> StoreUrl {
        self.store
            .clone()
            .unwrap_or_else(|| StoreUrl::Sqlite(self.data.clone()))
    }

    /// The current secret's file: the first `--secret-file`, else `DATA/account-db.secret`.
    pub fn secret_path(&self) -> PathBuf {
        self.secret_file
            .first()
            .cloned()
            .unwrap_or_else(|| self.data.join("account-db.secret"))
    }
}
