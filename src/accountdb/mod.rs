//! The account store tier: the [`Store`](store::Store) trait and its SQLite and PostgreSQL
//! implementations, the account-db server that serves a store over TCP with its configuration
//! and the secrets it accepts,
//! the pooled client login-server uses, and [`Accounts`](accounts::Accounts), what login-server
//! asks of the tier.

pub mod accounts;
pub mod admin;
pub mod client;
mod config;
pub mod devices;
pub mod execute;
pub mod import;
pub mod secrets;
pub mod server;
pub mod store;
pub mod throttling;

pub use config::{AccountDbConfig, Command, RotationStep};
