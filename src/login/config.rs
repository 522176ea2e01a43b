//! [`LoginServerConfig`]: every setting of login-server, with its flag, environment variable
//! and default in one place.

use super::gateway_tls::GatewayFiles;
pub use super::gateway_tls::Mode as GatewayTlsMode;
use crate::accountdb::client::{ClientConfig, DbTrust};
use crate::auth::password::HashParams;
use crate::auth::secret::{Secret, SecretError};
use crate::auth::token_key::{read_verify_key, KeyError, SigningKey};
use crate::cidr::Cidr;
use crate::config::{at_least_one, cores, seconds, DbDeadlines, Endpoint};
use crate::legacy::LegacyDb;
use crate::logging::LogFormat;
use crate::service::Options as ServiceOptions;
use crate::tls::{ClientFiles, Material, ServerFiles, TlsError};
use crate::tokens::Tokens;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Commands that do something other than serve, then exit.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Write a new token signing key to PATH (mode 0600; it must not exist) and its public
    /// half beside it with the extension .pub (token.key: token.pub), and print its kid.
    GenTokenKey {
        /// Where to write the key.
        path: PathBuf,
    },
}

/// Why the token keys cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    /// `--db` is set but `--token-key-file` is not.
    #[error(
        "login-server with --db needs the token signing key every login-server shares: make one \
         with `login-server gen-token-key PATH` and pass --token-key-file PATH"
    )]
    Missing,
    /// A key file cannot be read, parsed or created.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Why the gateway listener's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayTlsError {
    /// `--gateway-tls optional` or `required` without `--tls-cert` and `--tls-key`.
    #[error("--gateway-tls {0} needs --tls-cert and --tls-key")]
    NoCertificate(&'static str),
    /// `--tls-cert` given with `--gateway-tls off`: the certificate would go unused, and the
    /// gateways' passwords would cross in plaintext.
    #[error(
        "--tls-cert is given but --gateway-tls is off: pass --gateway-tls required \
         (or optional, during a migration from plaintext)"
    )]
    Unused,
    /// The files cannot be loaded.
    #[error(transparent)]
    Files(#[from] TlsError),
}

/// Login and registration for game gateways: seed-compatible JSON over TCP.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "login-server", version, args_conflicts_with_subcommands = true)]
pub struct LoginServerConfig {
    /// Address to accept gateway connections on (IP:PORT, or HOST:PORT resolved at start, as
    /// every address flag). Defaults to 127.0.0.1:6999.
    #[arg(
        long,
        value_name = "ADDR",
        env = "LOGIN_SERVER_LISTEN",
        default_value = "127.0.0.1:6999",
        value_parser = crate::config::socket_addr
    )]
    pub listen: SocketAddr,
    /// Gateway addresses allowed to connect, as address blocks (`10.0.0.0/8,2001:db8::/32`,
    /// or single addresses); others are closed at accept and counted, never logged one by one.
    /// Defaults to everyone (with a warning at start when --listen is not a loopback address).
    #[arg(
        long,
        value_name = "CIDR,...",
        env = "LOGIN_SERVER_ALLOW_FROM",
        value_delimiter = ','
    )]
    pub allow_from: Vec<Cidr>,
    /// Whether gateways speak TLS 1.3 on --listen: off, optional (TLS and plaintext on one
    /// port, told apart by the first byte: for a migration), or required (a plaintext gateway
    /// is answered a bad request saying so). Needs --tls-cert and --tls-key. Defaults to off.
    #[arg(
        long,
        value_name = "MODE",
        env = "LOGIN_SERVER_GATEWAY_TLS",
        value_enum,
        default_value = "off"
    )]
    pub gateway_tls: GatewayTlsMode,
    /// PEM certificate chain (this server's first) for --gateway-tls; an Ed25519 or ECDSA
    /// P-256 key costs a gateway's full handshake a fraction of an RSA key's. Re-read on
    /// SIGHUP. Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; refused at start if group or others may read it.
    /// Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: with --gateway-tls, every TLS gateway must present a certificate
    /// from one of them, or its handshake is refused (a stronger --allow-from). Defaults to
    /// none: no client certificate asked for.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_GATEWAY_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub gateway_tls_client_ca: Option<PathBuf>,
    /// Addresses of running account-dbs serving the same accounts (ADDR,ADDR,...; a host name
    /// is resolved again for every new connection): requests go to those that answer, and one
    /// that fails is retried on another. Defaults to none:
    /// an account-db runs embedded, on an ephemeral loopback port, reached over TCP like a
    /// remote one.
    #[arg(
        long,
        value_name = "ADDR,...",
        env = "LOGIN_SERVER_DB",
        value_delimiter = ','
    )]
    pub db: Vec<Endpoint>,
    /// Data directory of the embedded account-db (unused with --db). Defaults to ./data.
    #[arg(
        long,
        value_name = "DIR",
        env = "LOGIN_SERVER_DATA",
        default_value = "./data"
    )]
    pub data: PathBuf,
    /// File holding account-db's secret (64 hex digits), needed with --db; the environment
    /// variable ACCOUNT_DB_SECRET may hold the secret itself instead. Defaults to none.
    #[arg(long, value_name = "PATH", env = "LOGIN_SERVER_DB_SECRET_FILE")]
    pub db_secret_file: Option<PathBuf>,
    /// The secret itself, for embedding: it wins over the file and the environment.
    #[arg(skip)]
    pub db_secret: Option<Secret>,
    /// PEM CA certificates: with it, every --db connection is TLS 1.3 and the account-db's
    /// certificate must come from one of them and hold the host of its --db address (an IP
    /// address as an IP SAN); nothing falls back to plaintext. Defaults to none: plaintext.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_DB_TLS_CA",
        requires = "db"
    )]
    pub db_tls_ca: Option<PathBuf>,
    /// The name every account-db's certificate must hold, instead of each --db host. Defaults
    /// to none: each --db host.
    #[arg(
        long,
        value_name = "NAME",
        env = "LOGIN_SERVER_DB_TLS_NAME",
        requires = "db_tls_ca",
        value_parser = crate::tls::server_name
    )]
    pub db_tls_name: Option<rustls::pki_types::ServerName<'static>>,
    /// PEM certificate chain presented to account-dbs that require one (their
    /// --tls-client-ca). Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_DB_TLS_CERT",
        requires_all = ["db_tls_ca", "db_tls_key"]
    )]
    pub db_tls_cert: Option<PathBuf>,
    /// PEM private key of --db-tls-cert; refused at start if group or others may read it.
    /// Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_DB_TLS_KEY",
        requires = "db_tls_cert"
    )]
    pub db_tls_key: Option<PathBuf>,
    /// The old database server whose players move here on their first login (ADDR): asked
    /// about names account-db does not know, never written to. Its protocol carries passwords
    /// in plaintext and has no TLS: keep it on this host or tunnel it (a warning at start when
    /// it is not a loopback address). Defaults to none.
    #[arg(
        long,
        value_name = "ADDR",
        env = "LOGIN_SERVER_LEGACY_DB",
        value_parser = crate::config::socket_addr
    )]
    pub legacy_db: Option<SocketAddr>,
    /// Requests to --legacy-db at once (one connection each: it cannot be pooled), each on a
    /// thread of the old-server stage, never a hash thread; up to 64 more wait (within
    /// --db-timeout), further ones are answered 7. Defaults to 4.
    #[arg(
        long,
        value_name = "N",
        env = "LOGIN_SERVER_LEGACY_DB_CONNECTIONS",
        default_value = "4",
        value_parser = at_least_one
    )]
    pub legacy_db_connections: usize,
    /// The Ed25519 key that signs session tokens (PKCS#8 PEM, made by `login-server
    /// gen-token-key PATH`); every login-server of a game shares it. Required with --db;
    /// without --db, a missing one is created (mode 0600). Defaults to DATA/token.key without
    /// --db.
    #[arg(long, value_name = "PATH", env = "LOGIN_SERVER_TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,
    /// Further keys whose tokens stay valid (they sign none): the old key during a rotation.
    /// PUBLIC KEY or PRIVATE KEY PEM files, comma-separated, or the flag repeated. Defaults to
    /// none.
    #[arg(
        long,
        value_name = "PATH,...",
        env = "LOGIN_SERVER_TOKEN_VERIFY_KEY",
        value_delimiter = ','
    )]
    pub token_verify_key: Vec<PathBuf>,
    /// The signing key itself, for embedding: it wins over --token-key-file.
    #[arg(skip)]
    pub token_key: Option<Arc<SigningKey>>,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Worker threads: the cheap part of each request, including the account-db lookup, asked
    /// for up to 8 connections' requests at once, and quick password checks. Defaults to 2 × CPU
    /// cores.
    #[arg(long, value_name = "N", env = "LOGIN_SERVER_WORKERS", value_parser = at_least_one)]
    pub workers: Option<usize>,
    /// Connections with a whole message waiting for a worker (and, apart, requests waiting for
    /// a hash thread) before new ones are answered "unavailable" (7) at once. Defaults to 1024.
    #[arg(long, value_name = "N", env = "LOGIN_SERVER_QUEUE", default_value = "1024", value_parser = at_least_one)]
    pub queue: usize,
    /// Requests a second one player may ask while the server is overloaded (the worker queue
    /// half full, four requests per hash thread waiting for one, or 16 messages behind one on
    /// a connection waiting for hashes); past it, and past 8 of the player's requests within about 10 ms, the
    /// player's requests are shed (7) first. A player is the `ip` a gateway forwards (IPv6 by
    /// its /64), or the connection for a request without one. Defaults to 50.
    #[arg(
        long, value_name = "N",
        env = "LOGIN_SERVER_FAIR_SHARE",
        default_value = "50",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub fair_share: u32,
    /// Open gateway connections at most; further ones are closed at accept. Defaults to 10000.
    #[arg(
        long, value_name = "N",
        env = "LOGIN_SERVER_MAX_CONNECTIONS",
        default_value = "10000",
        value_parser = at_least_one
    )]
    pub max_connections: usize,
    /// Refuse to start when the open-files limit cannot cover --max-connections beside the
    /// descriptors the rest of the process needs, instead of lowering the cap to fit (and
    /// saying so). Defaults to off: the cap is lowered.
    #[arg(long, env = "LOGIN_SERVER_STRICT_LIMITS")]
    pub strict_limits: bool,
    /// Pooled account-db connections; 0 opens one per request, as the seed did (and workers
    /// take one gateway connection at a time: there is no round trip to share). Defaults to
    /// workers + hash threads: one for each thread that asks account-db.
    #[arg(long, value_name = "N", env = "LOGIN_SERVER_DB_POOL")]
    pub db_pool: Option<u32>,
    /// Seconds each account-db request, and getting a pooled connection, may take. Defaults
    /// to 2.
    #[arg(long, value_name = "SECS", env = "LOGIN_SERVER_DB_TIMEOUT", default_value = "2", value_parser = seconds)]
    pub db_timeout: Duration,
    /// Seconds a pooled account-db connection lives at most (and up to 30 s more: the pool
    /// retires expired connections every 30 s), jittered by up to 10% per account-db so that
    /// pools do not reconnect together: a TLS reload (SIGHUP) or a moved account-db reaches
    /// every connection within it. 0 keeps them for ever. Defaults to 3600.
    #[arg(
        long,
        value_name = "SECS",
        env = "LOGIN_SERVER_DB_MAX_LIFETIME",
        default_value = "3600",
        value_parser = seconds
    )]
    pub db_max_lifetime: Duration,
    /// argon2id parameters for new hashes: memory KiB, iterations, lanes. Defaults to
    /// 19456,2,1 (OWASP's).
    #[arg(
        long,
        value_name = "M,T,P",
        env = "LOGIN_SERVER_HASH_PARAMS",
        default_value = "19456,2,1"
    )]
    pub hash_params: HashParams,
    /// Hashes computed at once (the hash threads). Defaults to the CPU cores.
    #[arg(long, value_name = "N", env = "LOGIN_SERVER_HASH_THREADS", value_parser = at_least_one)]
    pub hash_threads: Option<usize>,
    /// Largest gateway message, in bytes. Defaults to 65536.
    #[arg(
        long, value_name = "BYTES",
        env = "LOGIN_SERVER_MAX_MESSAGE",
        default_value = "65536",
        value_parser = at_least_one
    )]
    pub max_message: usize,
    /// Seconds a message may take to arrive whole after its first byte. Defaults to 10.
    #[arg(
        long, value_name = "SECS",
        env = "LOGIN_SERVER_MESSAGE_TIMEOUT",
        default_value = "10",
        value_parser = seconds
    )]
    pub message_timeout: Duration,
    /// Seconds an idle connection is kept open. Defaults to 300.
    #[arg(long, value_name = "SECS", env = "LOGIN_SERVER_IDLE_TIMEOUT", default_value = "300", value_parser = seconds)]
    pub idle_timeout: Duration,
    /// Seconds shutdown waits for accepted requests to be answered. Defaults to 10.
    #[arg(
        long, value_name = "SECS",
        env = "LOGIN_SERVER_SHUTDOWN_TIMEOUT",
        default_value = "10",
        value_parser = seconds
    )]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub service: ServiceOptions,
    /// Serve Prometheus /metrics, /healthz, /readyz and /keys (the token keys' JWKS) on this
    /// address. Defaults to none.
    #[arg(
        long,
        value_name = "ADDR",
        env = "LOGIN_SERVER_METRICS_LISTEN",
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
        env = "LOGIN_SERVER_METRICS_TLS_CERT",
        requires = "metrics_tls_key",
        requires = "metrics_listen"
    )]
    pub metrics_tls_cert: Option<PathBuf>,
    /// The private key of --metrics-tls-cert (PEM, mode 0600). Defaults to none.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOGIN_SERVER_METRICS_TLS_KEY",
        requires = "metrics_tls_cert"
    )]
    pub metrics_tls_key: Option<PathBuf>,
    /// Log line format: text or json. Defaults to text.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "LOGIN_SERVER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Default for LoginServerConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

impl LoginServerConfig {
    /// Worker threads, the default resolved.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| 2 * cores())
    }

    /// Hash threads, the default resolved.
    pub fn hash_threads(&self) -> usize {
        self.hash_threads.unwrap_or_else(cores)
    }

    /// Descriptors the process holds whatever its gateway connections, before
    /// [`limits::RESERVE`](crate::limits::RESERVE): stdio, the listener, the poller and its
    /// waker, the metrics endpoint and its 16 connections, the account-db pools (each `--db`'s;
    /// embedded: both ends, its listener and the SQLite files), the old server's connections.
    pub fn descriptors_needed(&self) -> u64 {
        let metrics = if self.metrics_listen.is_some() { 17 } else { 0 };
        let pool = u64::from(self.db_pool()).max(1);
        let account_dbs = match self.db.len() {
            0 => 2 * pool + 1 + 8,
            n => pool * n as u64,
        };
        let legacy = if self.legacy_db.is_some() {
            self.legacy_db_connections as u64
        } else {
            0
        };
        3 + 3 + metrics + account_dbs + legacy
    }

    /// Pooled account-db connections, the default resolved.
    pub fn db_pool(&self) -> u32 {
        let users = self.workers() + self.hash_threads();
        self.db_pool
            .unwrap_or_else(|| u32::try_from(users).unwrap_or(u32::MAX))
    }

    /// The secret of the account-db at `--db`: [`Self::db_secret`], else the environment
    /// variable, else `--db-secret-file`.
    pub fn resolve_db_secret(&self) -> Result<Secret, SecretError> {
        Secret::resolve(self.db_secret.as_ref(), || match &self.db_secret_file {
            Some(path) => Secret::read(path),
            None => Err(SecretError::Missing),
        })
    }

    /// The keys of session tokens: [`Self::token_key`], else `--token-key-file` (without
    /// `--db`: DATA/token.key, created if missing), and `--token-verify-key`.
    pub fn tokens(&self) -> Result<Tokens, TokenKeyError> {
        let signing = match (&self.token_key, &self.token_key_file) {
            (Some(key), _) => key.clone(),
            (None, Some(path)) => Arc::new(SigningKey::read(path)?),
            (None, None) if !self.db.is_empty() => return Err(TokenKeyError::Missing),
            (None, None) => Arc::new(self.embedded_token_key()?),
        };
        let verify = self
            .token_verify_key
            .iter()
            .map(|path| read_verify_key(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tokens::new(&signing, verify, self.service.session_ttl))
    }

    /// DATA/token.key, created (mode 0600) if it is missing.
    fn embedded_token_key(&self) -> Result<SigningKey, KeyError> {
        let path = self.data.join("token.key");
        if path.exists() {
            return SigningKey::read(&path);
        }
        let created = std::fs::create_dir_all(&self.data)
            .map_err(|source| KeyError::Create {
                path: path.clone(),
                source,
            })
            .and_then(|()| SigningKey::create(&path));
        match created {
            Ok(key) => {
                tracing::info!(path = %path.display(), kid = %key.verify_key().kid, "created a token signing key");
                Ok(key)
            }
            // Created at the same moment by another process: use theirs.
            Err(KeyError::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                SigningKey::read(&path)
            }
            Err(e) => Err(e),
        }
    }

    /// The deadlines `--db-timeout` makes, over the `--db` account-dbs (one embedded without).
    pub fn db_deadlines(&self) -> DbDeadlines {
        DbDeadlines::new(self.db_timeout, self.db.len())
    }

    /// The old database server, if `--legacy-db` names one.
    pub fn legacy(&self) -> Option<LegacyDb> {
        self.legacy_db
            .map(|addr| LegacyDb::new(addr, self.legacy_db_connections, self.db_deadlines().legacy))
    }

    /// The gateway listener's TLS material (`--tls-cert`, `--tls-key`,
    /// `--gateway-tls-client-ca`), loaded with fresh session-ticket keys; `None` with
    /// `--gateway-tls off`.
    pub fn gateway_tls_files(&self) -> Result<Option<Material<GatewayFiles>>, GatewayTlsError> {
        let mode = match self.gateway_tls {
            GatewayTlsMode::Off if self.tls_cert.is_some() => return Err(GatewayTlsError::Unused),
            GatewayTlsMode::Off => return Ok(None),
            GatewayTlsMode::Optional => "optional",
            GatewayTlsMode::Required => "required",
        };
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Err(GatewayTlsError::NoCertificate(mode));
        };
        let files = GatewayFiles::new(ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.gateway_tls_client_ca.clone(),
        })?;
        Ok(Some(Material::load(files)?))
    }

    /// How to reach the account-dbs at `addrs` that ask for `secret`, as these flags say,
    /// the TLS material (`--db-tls-*`) loaded.
    pub fn db_client(
        &self,
        addrs: Vec<Endpoint>,
        secret: Secret,
    ) -> Result<ClientConfig, TlsError> {
        let tls = match &self.db_tls_ca {
            None => None,
            Some(ca) => {
                let files = ClientFiles {
                    ca: ca.clone(),
                    identity: self.db_tls_cert.clone().zip(self.db_tls_key.clone()),
                };
                Some(DbTrust {
                    material: Arc::new(Material::load(files)?),
                    name: self.db_tls_name.clone(),
                })
            }
        };
        Ok(ClientConfig {
            addrs,
            secret,
            pool_size: self.db_pool(),
            timeout: self.db_timeout,
            max_lifetime: self.db_max_lifetime,
            tls,
        })
    }
}
