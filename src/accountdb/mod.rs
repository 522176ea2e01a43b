//! The account store tier: the [`Store`](store::Store) trait and its SQLite implementation, the
//! account-db server that serves a store over TCP with its configuration, and the pooled
//! client login-server uses.

pub mod client;
mod config;
pub mod server;
pub mod store;

pub use config::AccountDbConfig;
