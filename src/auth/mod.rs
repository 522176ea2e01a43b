//! Credentials: what a valid username and password are, how passwords are hashed, and the
//! secret that authenticates login-server to account-db.

pub mod names;
pub mod password;
pub mod secret;
