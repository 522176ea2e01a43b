//! Credentials: what a valid username and password are, how passwords are hashed, the secret
//! that authenticates login-server to account-db, and the keys that sign session tokens.

pub mod names;
pub mod password;
pub mod secret;
pub mod token_key;
