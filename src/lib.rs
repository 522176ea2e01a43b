//! login-server: login and registration for online games.
//!
//! A game's gateway sends `login` and `register` requests as JSON over TCP; login-server
//! checks them against account-db, a separate server process holding the accounts, and
//! answers with a result code. Three tiers: gateway → login-server → account-db.
//!
//! # Layout
//!
//! Read in this order to follow one request from the socket to the store and back:
//!
//! - [`protocol::gateway`]: gateway messages, framing, the reply codes. Pure, no IO.
//! - [`login`]: [`LoginServer`] and [`LoginServerConfig`]. `conn` owns a socket, its buffers
//!   and its lifecycle (one enum of phases), plaintext or TLS (`gateway_tls`: the
//!   `--gateway-tls` modes, session-ticket keys, TLS record framing); `io_loop` accepts and
//!   frames without blocking; a
//!   bounded channel feeds batches of connections to a fixed pool of `workers`, which ask the
//!   store for a round of requests at once, and shed first, under overload, the players who
//!   ask most (`fairness`); `hashing` runs the argon2 that is not quick under a cap of permits;
//!   `costly` verifies stored hashes far costlier than the configured ones, one at a time;
//!   `legacy_stage` runs the requests that ask the old server, on threads of their own;
//!   `returns` hands connections back to the I/O thread.
//! - [`service`]: login, register and session logic over
//!   [`Accounts`](accountdb::accounts::Accounts), what login-server asks of the account tier,
//!   a file per operation (`login`, `register`, `sessions`, `migration`, `devices`: device
//!   logins, guests and their claims, linked devices), the step types a
//!   request passes through in `steps`, the per-name turns in `turns`;
//!   [`tokens`]: session JWTs, signed with Ed25519 and checked, and the JWKS.
//! - [`legacy`]: the old database server, asked about players who have not moved yet.
//! - [`auth`]: username and password rules; argon2id hashing; the tiers' shared secret; the
//!   token signing keys and their files.
//! - [`accountdb::accounts`]: `Accounts`, the account tier as login-server uses it: requests
//!   in, responses out; [`accountdb::execute`] runs any request against any `Store`.
//! - [`accountdb::client`]: the r2d2-pooled connections to one or more account-dbs, as
//!   `Accounts` that fail over between them; `client::connection` is one connection,
//!   `client::manager` the r2d2 `ManageConnection` that makes and checks them,
//!   `client::failover` which account-db a request goes to and what is done when it fails.
//! - [`protocol::accountdb`]: the newline-delimited JSON between the two tiers, the versions
//!   it has and how a connection agrees on one, and the words both tiers share (accounts, a
//!   lookup's answers). Pure; a leaf.
//! - [`accountdb::import`]: `account-db import`, the old system's players in bulk;
//!   [`accountdb::admin`]: `account-db admin`, an operator's console.
//! - [`accountdb::server`]: the account-db server, configured by [`AccountDbConfig`];
//!   [`accountdb::secrets`]: the secrets it accepts, re-read once a second, and their rotation;
//!   [`throttle`]: brute-force lockouts, pure record logic; [`accountdb::throttling`] runs
//!   it over the records the store keeps; [`accountdb::devices`]: a device's login, a
//!   guest's create, and what a session does to its own account (claim, link, unlink, list);
//!   [`accountdb::store`]: `StoreUrl`, which picks a store; its `contract` (the `Store` trait,
//!   its values and errors), and the SQLite and PostgreSQL implementations of it (`pg_link`
//!   reads `--store`; `pg_nodes` finds the writable node of its hosts; `pg_watchdog` bounds
//!   every call, COMMIT included); its `schema`: how the schema changes across releases
//!   (expansions at start, contractions on request, the peers that hold them back).
//! - [`metrics`] and [`http`]: Prometheus metrics, `/healthz`, `/readyz` and `/keys`.
//! - [`config`]: what the configuration structs share (parsing, defaults, value parsers);
//!   [`tls`]: TLS 1.3 between the tiers (rustls): configurations from PEM files, a handshake
//!   under one deadline, a stream with or without TLS, and `tls::generate` for `gen-tls`;
//!   [`cidr`]: address blocks for `--allow-from`; [`limits`]: the open-files limit raised
//!   at start and the connection cap fitted under it; [`clock`]: the time the rules judge by,
//!   which tests move forward;
//!   [`signals`] and [`logging`]: process plumbing for the binaries.
//!
//! The binaries in `src/bin/` only parse flags, start these, and wait for a signal (or run one
//! command: `login-server gen-token-key`, `account-db import|admin|gen-secret|rotate-secret`).
//! The load tool, gateway-sim, is a package of its own in `gateway-sim/`.

pub mod accountdb;
pub mod auth;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod http;
pub mod legacy;
pub mod limits;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod protocol;
pub mod service;
pub mod signals;
pub mod throttle;
pub mod tls;
pub mod tokens;

pub use accountdb::server::AccountDb;
pub use accountdb::AccountDbConfig;
pub use login::{LoginServer, LoginServerConfig};
