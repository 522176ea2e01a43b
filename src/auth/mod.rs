//! Credentials: what a valid username and password are, and how passwords are hashed.

pub mod names;
pub mod password;
