//! gateway-sim: a client that plays the gateway, for trying the service by hand
//! ([`send_seed`]), for loading it ([`stress`], measured by [`report`]), and for attacking it
//! the way hostile clients do ([`attack`]).

pub mod attack;
pub mod report;
pub mod run;
pub mod secure;
pub mod shared;
pub mod stress;

use login_server::protocol::gateway::Op;
use secure::Tls;
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// The request object of `op`: `subject` is the username, or for the token ops the token;
/// `new_password` is used by `change_password` only.
pub fn request(op: Op, subject: &str, password: &str, new_password: &str) -> Value {
    match op {
        Op::Login | Op::Register => {
            json!({ "OP": op.as_str(), "username": subject, "password": password })
        }
        Op::Verify | Op::Refresh | Op::Logout | Op::LogoutAll => {
            json!({ "OP": op.as_str(), "token": subject })
        }
        Op::ChangePassword => json!({ "OP": op.as_str(), "username": subject,
            "password": password, "new_password": new_password }),
    }
}

/// Send one `request` in the seed form as the seed's gateway does (one connection, one write
/// of `[request]`, no newline) and return the reply: everything the server sends before it
/// closes. A server that closes without a word is an error. With `tls`, over TLS.
pub fn send_seed(
    target: SocketAddr,
    tls: Option<&Tls>,
    request: &Value,
    timeout: Duration,
) -> io::Result<String> {
    let mut stream = secure::connect(target, tls, timeout)?;
    stream.write_all(json!([request]).to_string().as_bytes())?;
    let mut reply = String::new();
    if let Err(e) = stream.read_to_string(&mut reply) {
        // A read timeout is told as what it is, not as the socket's EAGAIN.
        return Err(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {} s", timeout.as_secs_f64()),
            ),
            _ => e,
        });
    }
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection without a reply",
        ));
    }
    Ok(reply)
}
