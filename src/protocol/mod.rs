//! Wire formats, pure and IO-free: toward the gateway and between the two tiers.

pub mod accountdb;
pub mod gateway;
