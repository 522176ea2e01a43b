//! gateway-sim: a client that plays the gateway, for trying the service by hand
//! ([`send_seed`]), for loading it ([`stress`], measured by [`report`]), and for attacking it
//! the way hostile clients do ([`attack`]).

pub mod attack;
pub mod report;
pub mod stress;

use login_server::protocol::gateway::Op;
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The seed-form message for one request: exactly what the seed's gateway sends.
pub fn seed_message(op: Op, username: &str, password: &str) -> Vec<u8> {
    let message = json!([{ "OP": op.as_str(), "username": username, "password": password }]);
    message.to_string().into_bytes()
}

/// Send one seed-form request as the seed's gateway does (one connection, one write, no
/// newline) and return the reply: everything the server sends before it closes.
pub fn send_seed(
    target: SocketAddr,
    op: Op,
    username: &str,
    password: &str,
    timeout: Duration,
) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&seed_message(op, username, password))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}
