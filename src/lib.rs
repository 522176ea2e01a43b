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
//! - [`server`]: [`LoginServer`]. `io_loop` accepts and frames without blocking, a bounded
//!   channel feeds a fixed pool of workers, hash threads do the argon2 work, `conn` owns a
//!   socket and its buffers.
//! - [`service`]: login and register logic over a [`Store`](accountdb::store::Store);
//!   [`throttle`]: brute-force lockouts.
//! - [`auth`]: username and password rules; argon2id hashing; the tiers' shared secret.
//! - [`accountdb::client`]: the r2d2-pooled connection to account-db, as a `Store`.
//! - [`protocol::accountdb`]: the newline-delimited JSON between the two tiers. Pure.
//! - [`accountdb::server`]: the account-db server; [`accountdb::store`]: the `Store` trait and
//!   its SQLite implementation.
//! - [`metrics`] and [`http`]: Prometheus metrics, `/healthz` and `/readyz`.
//! - [`sim`]: gateway-sim, a client that plays the gateway.
//!
//! The binaries in `src/bin/` only parse flags, start these, and wait for a signal.

pub mod accountdb;
pub mod auth;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod service;
pub mod sim;
pub mod throttle;

pub use accountdb::server::AccountDb;
pub use server::LoginServer;
