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
/// `new_password` is used by `change_password` only. The device ops: [`request_with`].
pub fn request(op: Op, subject: &str, password: &str, new_password: &str) -> Value {
    request_with(
        op,
        &Fields {
            subject,
            password,
            new_password,
            ..Fields::default()
        },
    )
}

/// What a request may carry besides its op.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    /// The username (login, register, change_password), the device id (device), or the token
    /// (the other ops).
    pub subject: &'a str,
    /// The password (login, register, claim; change_password: the current one).
    pub password: &'a str,
    /// change_password's new password.
    pub new_password: &'a str,
    /// claim's username.
    pub username: &'a str,
    /// link_device's and unlink_device's device.
    pub device_id: &'a str,
    /// device's and link_device's secret.
    pub device_secret: &'a str,
}

/// The request object of `op`, with `fields`.
pub fn request_with(op: Op, fields: &Fields) -> Value {
    let Fields {
        subject,
        password,
        new_password,
        username,
        device_id,
        device_secret,
    } = *fields;
    let name = op.as_str();
    match op {
        Op::Login | Op::Register => {
            json!({ "OP": name, "username": subject, "password": password })
        }
        Op::Verify | Op::Refresh | Op::Logout | Op::LogoutAll | Op::Devices => {
            json!({ "OP": name, "token": subject })
        }
        Op::ChangePassword => json!({ "OP": name, "username": subject,
            "password": password, "new_password": new_password }),
        Op::Device => json!({ "OP": name, "device_id": subject, "device_secret": device_secret }),
        Op::Claim => {
            json!({ "OP": name, "token": subject, "username": username, "password": password })
        }
        Op::LinkDevice => json!({ "OP": name, "token": subject, "device_id": device_id,
            "device_secret": device_secret }),
        Op::UnlinkDevice => json!({ "OP": name, "token": subject, "device_id": device_id }),
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
