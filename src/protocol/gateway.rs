//! The gateway wire protocol: framing, requests and replies. Pure: no IO.
//!
//! A message is one JSON value. Two forms share one connection type:
//! - **seed form**: `[{"OP":"login",...}]`, exactly what the seed's gateway sends (no newline
//!   after it). The reply is `[{...}]` and the server then closes the connection.
//! - **stream form**: `{"OP":"login",...}`. The reply is `{...}\n`, the connection stays open,
//!   and an optional `"id"` is echoed back.
//!
//! [`Scanner`] finds where a message ends without parsing it, incrementally, so a client that
//! trickles bytes costs one pass over them in total. [`parse`] turns one framed message into a
//! [`Request`]; [`encode`] turns a [`Reply`] back into bytes.

use crate::tokens::Invalid;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::net::IpAddr;

/// Whitespace allowed before a message (between two messages, say `\r\n`). More is refused:
/// whitespace alone never starts a message, so it must not be a way to hold a connection.
pub const MAX_GAP: usize = 16;
/// Longest `"id"` echoed, in bytes of JSON.
pub const MAX_ID: usize = 64;
/// Most bytes of a bad request's description in a reply: descriptions may quote the input.
pub const MAX_INFO: usize = 160;

/// Which of the two message forms a request came in, and so which form its reply takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `[{...}]`: one request, then the server closes the connection.
    Seed,
    /// `{...}` then `\n`: many requests on one connection, replies in order.
    Stream,
}

/// What the scanner found in the bytes it has been given so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Only whitespace so far.
    Empty,
    /// A message has started but not ended.
    Partial,
    /// A whole message lies at `buf[start..end]`.
    Complete {
        form: Form,
        start: usize,
        end: usize,
    },
    /// The bytes cannot be a message; the connection cannot be resynchronised.
    Invalid(FrameError),
}

/// Why a byte stream cannot be framed. Each is answered "bad request" (6) and the connection
/// closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first non-whitespace byte of a message is neither `[` nor `{`.
    #[error("a message must be a JSON array (seed form) or object (stream form)")]
    NotJson,
    /// The message grew past the size limit before it ended.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// A closing bracket that does not match the open one.
    #[error("mismatched brackets")]
    Mismatched,
    /// More than [`MAX_GAP`] bytes of whitespace before a message.
    #[error("more than {MAX_GAP} bytes of whitespace between messages")]
    TooMuchWhitespace,
}

/// Incremental message framer. Feed it the connection's whole input buffer each time; it
/// resumes where it stopped. Call [`Scanner::reset`] after removing a message from the buffer.
#[derive(Debug, Clone)]
pub struct Scanner {
    max_len: usize,
    pos: usize,
    start: Option<usize>,
    /// Open brackets, innermost last: `true` for `{`, `false` for `[`. Its length is bounded by
    /// `max_len`, and serde_json refuses deep nesting when the message is parsed.
    stack: Vec<bool>,
    in_string: bool,
    escaped: bool,
    /// The message found, kept until `reset` so that scanning again is free.
    found: Option<(Form, usize, usize)>,
}

impl Scanner {
    /// A scanner that refuses messages longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Scanner {
            max_len,
            pos: 0,
            start: None,
            stack: Vec::new(),
            in_string: false,
            escaped: false,
            found: None,
        }
    }

    /// Forget all progress: call after the bytes scanned so far were removed from the buffer.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.start = None;
        self.stack.clear();
        self.in_string = false;
        self.escaped = false;
        self.found = None;
    }

    /// Scan `buf`, which must begin with the bytes given before, and say what it holds.
    pub fn scan(&mut self, buf: &[u8]) -> Scan {
        if let Some((form, start, end)) = self.found {
            return Scan::Complete { form, start, end };
        }
        while self.pos < buf.len() {
            let byte = buf[self.pos];
            let at = self.pos;
            self.pos += 1;
            let Some(start) = self.start else {
                match byte {
                    b' ' | b'\t' | b'\r' | b'\n' if at < MAX_GAP => continue,
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        return Scan::Invalid(FrameError::TooMuchWhitespace)
                    }
                    b'[' | b'{' => {
                        self.start = Some(at);
                        self.stack.push(byte == b'{');
                        continue;
                    }
                    _ => return Scan::Invalid(FrameError::NotJson),
                }
            };
            if at - start >= self.max_len {
                return Scan::Invalid(FrameError::TooLarge(self.max_len));
            }
            if self.in_string {
                match byte {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.stack.push(byte == b'{'),
                b']' | b'}' => {
                    if self.stack.pop() != Some(byte == b'}') {
                        return Scan::Invalid(FrameError::Mismatched);
                    }
                    if self.stack.is_empty() {
                        let form = if buf[start] == b'[' {
                            Form::Seed
                        } else {
                            Form::Stream
                        };
                        self.found = Some((form, start, self.pos));
                        return Scan::Complete {
                            form,
                            start,
                            end: self.pos,
                        };
                    }
                }
                _ => {}
            }
        }
        // Every byte of a message too long was already refused in the loop above.
        match self.start {
            None => Scan::Empty,
            Some(_) => Scan::Partial,
        }
    }
}

/// The operation a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    #[default]
    Login,
    Register,
    Verify,
    Refresh,
    Logout,
    LogoutAll,
    ChangePassword,
    /// A device's (guest's) login, creating the guest on its first use.
    Device,
    /// A guest becomes a full account: a username and password for the token's account.
    Claim,
    LinkDevice,
    UnlinkDevice,
    /// The token's account's devices.
    Devices,
}

impl Op {
    /// Every op, in the order of [`Op::index`].
    pub const ALL: [Op; 12] = [
        Op::Login,
        Op::Register,
        Op::Verify,
        Op::Refresh,
        Op::Logout,
        Op::LogoutAll,
        Op::ChangePassword,
        Op::Device,
        Op::Claim,
        Op::LinkDevice,
        Op::UnlinkDevice,
        Op::Devices,
    ];

    /// The name the wire uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::Register => "register",
            Op::Verify => "verify",
            Op::Refresh => "refresh",
            Op::Logout => "logout",
            Op::LogoutAll => "logout_all",
            Op::ChangePassword => "change_password",
            Op::Device => "device",
            Op::Claim => "claim",
            Op::LinkDevice => "link_device",
            Op::UnlinkDevice => "unlink_device",
            Op::Devices => "devices",
        }
    }

    /// Its position in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The fields it requires, besides `OP`.
    fn required(self) -> &'static [&'static str] {
        match self {
            Op::Login | Op::Register => &["username", "password"],
            Op::Verify | Op::Refresh | Op::Logout | Op::LogoutAll | Op::Devices => &["token"],
            Op::ChangePassword => &["username", "password", "new_password"],
            Op::Device => &["device_id", "device_secret"],
            Op::Claim => &["token", "username", "password"],
            Op::LinkDevice => &["token", "device_id", "device_secret"],
            Op::UnlinkDevice => &["token", "device_id"],
        }
    }
}

/// One parsed gateway request: the fields its op requires are there (the others are empty).
/// Its `Debug` form hides the passwords and the token.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub op: Op,
    pub username: String,
    pub password: String,
    /// `change_password`'s new password.
    pub new_password: String,
    /// The session token of `verify`, `refresh`, `logout`, `logout_all`, `claim` and the
    /// device operations but `device`.
    pub token: String,
    /// The device of `device`, `link_device` and `unlink_device`: checked by [`device_id_ok`].
    pub device_id: String,
    /// The device's secret (`device`, `link_device`): checked by [`device_secret_ok`].
    pub device_secret: String,
    /// The player's address, as the gateway forwards it (optional): for throttling.
    pub ip: Option<IpAddr>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("op", &self.op)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("device_id", &self.device_id)
            .field("ip", &self.ip)
            .finish()
    }
}

/// An `"id"` to echo: a JSON string or number, kept byte for byte as it came (at most
/// [`MAX_ID`] bytes).
pub type Id = Box<RawValue>;

/// A message that is well framed but is not a valid request: answered "bad request" (6).
#[derive(Debug, Clone)]
pub struct BadRequest {
    /// What is wrong, for the reply's `info`.
    pub info: String,
    /// The request's `"id"`, when it could be read.
    pub id: Option<Id>,
}

/// A request as it stands on the wire: the request's fields plus an optional id.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "OP")]
    op: Op,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    new_password: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    device_secret: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    id: Option<Id>,
}

/// Only the id of a message that is not a valid request, so its reply can carry it.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Id>,
}

/// Whether `id` may be echoed: a JSON string or number, not too long.
fn id_ok(id: &RawValue) -> bool {
    let text = id.get();
    text.len() <= MAX_ID
        && (text.starts_with('"')
            || text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']))
}

/// `info` cut to at most [`MAX_INFO`] bytes (on a character boundary), marked when cut.
fn bounded(mut info: String) -> String {
    if info.len() > MAX_INFO {
        let mut end = MAX_INFO;
        while !info.is_char_boundary(end) {
            end -= 1;
        }
        info.truncate(end);
        info.push('…');
    }
    info
}

impl Wire {
    fn split(self) -> Result<(Request, Option<Id>), String> {
        let Wire {
            op,
            username,
            password,
            new_password,
            token,
            device_id,
            device_secret,
            ip,
            id,
        } = self;
        let given = |field: &str| match field {
            "username" => username.is_some(),
            "password" => password.is_some(),
            "new_password" => new_password.is_some(),
            "device_id" => device_id.is_some(),
            "device_secret" => device_secret.is_some(),
            _ => token.is_some(),
        };
        if let Some(missing) = op.required().iter().find(|&&field| !given(field)) {
            return Err(format!("missing field `{missing}`"));
        }
        if let Some(device_id) = &device_id {
            if op.required().contains(&"device_id") && !device_id_ok(device_id) {
                return Err(format!(
                    "\"device_id\" must be {MIN_DEVICE_ID} to {MAX_DEVICE_ID} characters of \
                     A-Z, a-z, 0-9, _ and -, random per install"
                ));
            }
        }
        if let Some(secret) = &device_secret {
            if op.required().contains(&"device_secret") && !device_secret_ok(secret) {
                return Err(format!(
                    "\"device_secret\" must be {MIN_DEVICE_SECRET} to {MAX_DEVICE_SECRET} \
                     base64url characters (at least 128 random bits)"
                ));
            }
        }
        let ip = match ip {
            None => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| "\"ip\" must be an IPv4 or IPv6 address".to_string())?,
            ),
        };
        if id.as_deref().is_some_and(|id| !id_ok(id)) {
            return Err(format!(
                "\"id\" must be a string or a number of at most {MAX_ID} bytes"
            ));
        }
        Ok((
            Request {
                op,
                username: username.unwrap_or_default(),
                password: password.unwrap_or_default(),
                new_password: new_password.unwrap_or_default(),
                token: token.unwrap_or_default(),
                device_id: device_id.unwrap_or_default(),
                device_secret: device_secret.unwrap_or_default(),
                ip,
            },
            id,
        ))
    }
}

/// Shortest `device_id`, in bytes.
pub const MIN_DEVICE_ID: usize = 16;
/// Longest `device_id`, in bytes.
pub const MAX_DEVICE_ID: usize = 128;
/// Shortest `device_secret`: 22 base64url characters hold 128 bits.
pub const MIN_DEVICE_SECRET: usize = 22;
/// Longest `device_secret`, in bytes: it is hashed, so its length costs little, but it is
/// bounded like every field.
pub const MAX_DEVICE_SECRET: usize = 256;

/// Whether `c` is a base64url character (`A-Z a-z 0-9 _ -`).
fn base64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Whether `id` may name a device: [`MIN_DEVICE_ID`] to [`MAX_DEVICE_ID`] base64url
/// characters.
pub fn device_id_ok(id: &str) -> bool {
    (MIN_DEVICE_ID..=MAX_DEVICE_ID).contains(&id.len()) && id.bytes().all(base64url)
}

/// Whether `secret` may be a device's secret: [`MIN_DEVICE_SECRET`] to [`MAX_DEVICE_SECRET`]
/// base64url characters (`=` padding allowed at the end, not counted).
pub fn device_secret_ok(secret: &str) -> bool {
    let unpadded = secret.trim_end_matches('=');
    secret.len() - unpadded.len() <= 2
        && (MIN_DEVICE_SECRET..=MAX_DEVICE_SECRET).contains(&unpadded.len())
        && unpadded.bytes().all(base64url)
}

/// The request fields that must be strings when present (`ip` may also be null).
const STRING_FIELDS: [&str; 8] = [
    "OP",
    "username",
    "password",
    "new_password",
    "token",
    "device_id",
    "device_secret",
    "ip",
];

/// On the error path only: a request field of the wrong type, named, without quoting its value
/// (a password sent as a number must not come back in the reply).
fn wrong_type(bytes: &[u8], form: Form) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = match (form, &value) {
        (Form::Seed, serde_json::Value::Array(items)) => items.first()?.as_object()?,
        (Form::Stream, serde_json::Value::Object(object)) => object,
        _ => return None,
    };
    STRING_FIELDS
        .iter()
        .find_map(|&field| match object.get(field) {
            Some(serde_json::Value::String(_)) | None => None,
            Some(serde_json::Value::Null) if field == "ip" => None,
            Some(_) => Some(format!("\"{field}\" must be a string")),
        })
}

/// Parse one framed message (as found by [`Scanner`]) into a request and its id.
pub fn parse(form: Form, bytes: &[u8]) -> Result<(Request, Option<Id>), BadRequest> {
    let bad = |info: String, id| BadRequest {
        info: bounded(format!("bad request: {info}")),
        id,
    };
    let explain = |e: &serde_json::Error| wrong_type(bytes, form).unwrap_or_else(|| describe(e));
    match form {
        Form::Seed => {
            let mut items: Vec<Wire> =
                serde_json::from_slice(bytes).map_err(|e| bad(explain(&e), None))?;
            match (items.pop(), items.is_empty()) {
                (Some(wire), true) => match wire.split() {
                    Ok((request, _)) => Ok((request, None)),
                    Err(info) => Err(bad(wrong_type(bytes, form).unwrap_or(info), None)),
                },
                _ => Err(bad(
                    "a seed-form message must hold exactly one object".into(),
                    None,
                )),
            }
        }
        Form::Stream => {
            // A field the op requires may be missing or null: null is named as a wrong type.
            let result = serde_json::from_slice::<Wire>(bytes)
                .map_err(|e| explain(&e))
                .and_then(|wire| {
                    wire.split()
                        .map_err(|info| wrong_type(bytes, form).unwrap_or(info))
                });
            result.map_err(|info| {
                // Only on the error path: read the id, if any, so the client can match the reply.
                let id = serde_json::from_slice::<IdOnly>(bytes)
                    .ok()
                    .and_then(|only| only.id)
                    .filter(|id| id_ok(id));
                bad(info, id)
            })
        }
    }
}

/// serde_json's message without its "at line 1 column N" suffix for single-line input.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) if e.line() <= 1 => text[..i].to_string(),
        _ => text,
    }
}

/// Every reply code of the gateway protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: no such user.
    NoSuchUser = 1,
    /// 2: wrong password.
    WrongPassword = 2,
    /// 3: login succeeded.
    LoggedIn = 3,
    /// 4: registration succeeded.
    Registered = 4,
    /// 5: registration failed; `reason` says why.
    RegisterFailed = 5,
    /// 6: the message was not a valid request.
    BadRequest = 6,
    /// 7: the service cannot answer now (busy, account store unreachable or slow): retry.
    Unavailable = 7,
    /// 8: too many failed logins for this account or address; `retry_after` says when.
    TooManyAttempts = 8,
    /// 9: the token is valid (`verify`), or here is a new one (`refresh`).
    Valid = 9,
    /// 10: the token is not valid; `reason` says why.
    InvalidToken = 10,
    /// 11: done (`logout`, `logout_all`, `change_password`).
    Done = 11,
    /// 12: the account is banned; `until` and `reason` say how long and why.
    Banned = 12,
    /// 13: the player cannot be served without an operator's help; `reason` says why.
    ContactSupport = 13,
}

/// Every code, in order.
pub const CODES: [Code; 13] = [
    Code::NoSuchUser,
    Code::WrongPassword,
    Code::LoggedIn,
    Code::Registered,
    Code::RegisterFailed,
    Code::BadRequest,
    Code::Unavailable,
    Code::TooManyAttempts,
    Code::Valid,
    Code::InvalidToken,
    Code::Done,
    Code::Banned,
    Code::ContactSupport,
];

/// Why a registration (or a new password) was refused ("registration refused", 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterFailure {
    UsernameTaken,
    InvalidUsername,
    InvalidPassword,
    /// Registration is closed: under `--legacy-db`, until the old server's names are
    /// imported.
    RegistrationClosed,
    /// `claim` of an account that has a name already.
    AlreadyClaimed,
    /// `link_device` of a device linked to another account.
    DeviceTaken,
    /// `unlink_device` of an account's last way to log in: a guest's only device.
    LastCredential,
    /// `unlink_device` of a device not linked to the token's account.
    UnknownDevice,
    /// `link_device` to an account that holds the most devices an account may (32).
    TooManyDevices,
}

/// Why a player must contact support ("contact support", 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SupportReason {
    /// The old server (`--legacy-db`) holds the name as typed, with this password, but an
    /// account here holds the name in another case (two old players who differ only in
    /// case): an operator renames one (`account-db admin rename`).
    NameConflict,
}

/// The `reason` of a reply: why a registration failed (5), why a token is invalid (10), why
/// an account is banned (12, an operator's words), or why to contact support (13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reason {
    Register(RegisterFailure),
    Token(Invalid),
    Ban(String),
    Support(SupportReason),
}

/// One reply, before it is given a form and an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: Code,
    pub info: String,
    pub reason: Option<Reason>,
    /// The account's spelling as registered, on codes 3, 4 and 9.
    pub username: Option<String>,
    /// Seconds until a locked login may be tried again, on "too many attempts" (8).
    pub retry_after: Option<u64>,
    /// A session token, on codes 3, 9 (`refresh`) and 11 (`change_password`).
    pub token: Option<String>,
    /// The account's id, on codes 3 and 9.
    pub account_id: Option<u64>,
    /// When the token expires (seconds since the epoch), with `token` or on `verify`'s 9.
    pub exp: Option<i64>,
    /// When a ban ends (seconds since the epoch), on code 12 unless it never does.
    pub until: Option<i64>,
    /// `true` on code 12 for a ban that never ends (then without `until`).
    pub permanent: Option<bool>,
    /// `true` with a guest's token (an account without a name; then without `username`).
    pub guest: Option<bool>,
    /// `true` on the `device` login that created its guest.
    pub created: Option<bool>,
    /// `devices`' answer: the account's devices, most recently linked first.
    pub devices: Option<Vec<DeviceInfo>>,
}

/// One device of an account, as `devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub device_id: String,
    /// When it was linked (the guest created), in seconds since the epoch.
    pub linked_at: i64,
    /// When it last logged in, in seconds since the epoch (to the hour: see
    /// docs/protocol.md).
    pub last_used: i64,
}

impl Reply {
    fn new(code: Code, info: &str) -> Self {
        Reply {
            code,
            info: info.to_string(),
            reason: None,
            username: None,
            retry_after: None,
            token: None,
            account_id: None,
            exp: None,
            until: None,
            permanent: None,
            guest: None,
            created: None,
            devices: None,
        }
    }

    /// Code 1, the seed's text.
    pub fn no_such_user() -> Self {
        Reply::new(Code::NoSuchUser, "Failed for error username!")
    }

    /// Code 2, the seed's text.
    pub fn wrong_password() -> Self {
        Reply::new(Code::WrongPassword, "Failed for error password!")
    }

    /// Code 3, the seed's text, with the account.
    pub fn logged_in(username: String, account_id: u64) -> Self {
        Reply {
            username: Some(username),
            account_id: Some(account_id),
            ..Reply::new(Code::LoggedIn, "success!")
        }
    }
    /// Code 3 for a device's login into the account `account_id`, named `username` (empty:
    /// a guest, said as `guest`); `created`: this login created the guest.
    pub fn device_logged_in(username: String, account_id: u64, created: bool) -> Self {
        let guest = username.is_empty();
        Reply {
            username: (!guest).then_some(username),
            guest: guest.then_some(true),
            created: created.then_some(true),
            account_id: Some(account_id),
            ..Reply::new(Code::LoggedIn, "success!")
        }
    }
    /// Code 4 for a claimed guest: its new name, its id.
    pub fn claimed(username: String, account_id: u64) -> Self {
        Reply {
            username: Some(username),
            account_id: Some(account_id),
            ..Reply::new(Code::Registered, "success")
        }
    }
    /// Code 11 with the account's devices.
    pub fn devices(devices: Vec<DeviceInfo>) -> Self {
        Reply {
            devices: Some(devices),
            ..Reply::new(Code::Done, "done")
        }
    }

    /// Code 4, the seed's text.
    pub fn registered(username: String) -> Self {
        Reply {
            username: Some(username),
            ..Reply::new(Code::Registered, "success")
        }
    }

    /// Code 5, the seed's text, and why.
    pub fn register_failed(reason: RegisterFailure) -> Self {
        Reply {
            reason: Some(Reason::Register(reason)),
            ..Reply::new(Code::RegisterFailed, "fail")
        }
    }

    /// Code 9: the token of `account_id` (spelled `username`; empty: a guest, said as
    /// `guest`) is valid until `exp`.
    pub fn valid(username: String, account_id: u64, exp: i64) -> Self {
        let guest = username.is_empty();
        Reply {
            guest: guest.then_some(true),
            username: (!guest).then_some(username),
            account_id: Some(account_id),
            exp: Some(exp),
            ..Reply::new(Code::Valid, "valid")
        }
    }

    /// Code 10, and why.
    pub fn invalid_token(reason: Invalid) -> Self {
        Reply {
            reason: Some(Reason::Token(reason)),
            ..Reply::new(Code::InvalidToken, "invalid token")
        }
    }

    /// Code 12: banned until `until_ms` (from [`Ban::FOR_GOOD`](crate::protocol::accountdb::Ban::FOR_GOOD)
    /// on: for good, said as `permanent`), for `reason`.
    pub fn banned(until_ms: i64, reason: &str) -> Self {
        let permanent = until_ms >= crate::protocol::accountdb::Ban::FOR_GOOD;
        Reply {
            until: (!permanent).then(|| until_ms.div_euclid(1000)),
            permanent: permanent.then_some(true),
            reason: Some(Reason::Ban(reason.to_string())),
            ..Reply::new(Code::Banned, "banned")
        }
    }

    /// Code 13, and why.
    pub fn contact_support(reason: SupportReason) -> Self {
        Reply {
            reason: Some(Reason::Support(reason)),
            ..Reply::new(Code::ContactSupport, "contact support")
        }
    }

    /// Code 11.
    pub fn done() -> Self {
        Reply::new(Code::Done, "done")
    }

    /// This reply with a session `token` that expires at `exp`.
    pub fn with_token(self, token: String, exp: i64) -> Self {
        Reply {
            token: Some(token),
            exp: Some(exp),
            ..self
        }
    }

    /// Code 6 with what is wrong.
    pub fn bad_request(info: String) -> Self {
        Reply {
            info,
            ..Reply::new(Code::BadRequest, "")
        }
    }

    /// Code 7 with why.
    pub fn unavailable(info: &str) -> Self {
        Reply::new(Code::Unavailable, info)
    }

    /// Code 8, and when to try again (whole seconds, rounded up).
    pub fn too_many_attempts(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Reply {
            retry_after: Some(secs.max(1)),
            ..Reply::new(Code::TooManyAttempts, "too many attempts")
        }
    }
}

#[derive(Serialize)]
struct WireReply<'a> {
    code: u8,
    info: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permanent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<&'a [DeviceInfo]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
}

/// Append `reply` to `out` in `form`: `[{...}]` for seed form, `{...}\n` for stream form.
pub fn encode(out: &mut Vec<u8>, form: Form, reply: &Reply, id: Option<&Id>) {
    let wire = WireReply {
        code: reply.code as u8,
        info: &reply.info,
        reason: reply.reason.as_ref(),
        username: reply.username.as_deref(),
        retry_after: reply.retry_after,
        account_id: reply.account_id,
        token: reply.token.as_deref(),
        exp: reply.exp,
        until: reply.until,
        permanent: reply.permanent,
        guest: reply.guest,
        created: reply.created,
        devices: reply.devices.as_deref(),
        id: id.map(|id| &**id),
    };
    if form == Form::Seed {
        out.push(b'[');
    }
    // Serializing these plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &wire);
    out.push(if form == Form::Seed { b']' } else { b'\n' });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Scan {
        Scanner::new(1024).scan(input)
    }

    #[test]
    fn frames_seed_and_stream_messages() {
        let seed = br#"[{"OP":"login","username":"u","password":"p"}]"#;
        assert_eq!(
            scan_all(seed),
            Scan::Complete {
                form: Form::Seed,
                start: 0,
                end: seed.len()
            }
        );
        let stream = b" \n{\"a\":\"}\\\"]\"}\n{";
        assert_eq!(
            scan_all(stream),
            Scan::Complete {
                form: Form::Stream,
                start: 2,
                end: 14
            }
        );
    }

    #[test]
    fn resumes_across_partial_input() {
        let msg = br#"{"OP":"login","username":"a}b","password":"[x"}"#;
        let mut scanner = Scanner::new(1024);
        for n in 0..msg.len() {
            let got = scanner.scan(&msg[..n]);
            assert!(matches!(got, Scan::Partial | Scan::Empty), "{n}: {got:?}");
        }
        assert!(matches!(scanner.scan(msg), Scan::Complete { end, .. } if end == msg.len()));
        // Asking again, even with more bytes after the message, finds the same message.
        let more = [&msg[..], b"{\"next\""].concat();
        assert!(matches!(scanner.scan(&more), Scan::Complete { end, .. } if end == msg.len()));
    }

    #[test]
    fn the_size_limit_counts_from_the_message_not_the_buffer() {
        // Whitespace before a message does not count toward its size: exactly 1024 bytes fit.
        let message_of = |len: usize| {
            let mut m = b"  {\"a\":\"".to_vec();
            m.resize(2 + len - 2, b'x');
            m.extend_from_slice(b"\"}");
            m
        };
        let exact = message_of(1024);
        assert_eq!(
            Scanner::new(1024).scan(&exact),
            Scan::Complete {
                form: Form::Stream,
                start: 2,
                end: exact.len()
            }
        );
        let longer = message_of(1025);
        assert_eq!(
            Scanner::new(1024).scan(&longer),
            Scan::Invalid(FrameError::TooLarge(1024))
        );
        // And a partial one is refused as soon as it passes the limit, however it arrives.
        let mut scanner = Scanner::new(1024);
        assert_eq!(scanner.scan(&longer[..600]), Scan::Partial);
        assert_eq!(
            scanner.scan(&longer[..1027]),
            Scan::Invalid(FrameError::TooLarge(1024))
        );
    }

    #[test]
    fn device_ids_and_secrets_are_held_to_their_shapes_and_bounds() {
        let id = |n: usize| "a".repeat(n);
        assert!(!device_id_ok(&id(MIN_DEVICE_ID - 1)));
        assert!(device_id_ok(&id(MIN_DEVICE_ID)));
        assert!(device_id_ok(&id(MAX_DEVICE_ID)));
        assert!(!device_id_ok(&id(MAX_DEVICE_ID + 1)));
        assert!(
            device_id_ok("AZaz09_-AZaz09_-"),
            "every base64url character"
        );
        for bad in [
            "AZaz09_-AZaz09_+",
            "AZaz09_-AZaz09_=",
            "AZaz09_-AZaz09_é",
            "AZaz09_ AZaz09__",
        ] {
            assert!(!device_id_ok(bad), "{bad}");
        }
        let secret = |n: usize| "s".repeat(n);
        assert!(!device_secret_ok(&secret(MIN_DEVICE_SECRET - 1)));
        assert!(device_secret_ok(&secret(MIN_DEVICE_SECRET)));
        assert!(device_secret_ok(&secret(MAX_DEVICE_SECRET)));
        assert!(!device_secret_ok(&secret(MAX_DEVICE_SECRET + 1)));
        // Padding: at most two `=`, not counted toward the length.
        assert!(device_secret_ok(&format!(
            "{}==",
            secret(MIN_DEVICE_SECRET)
        )));
        assert!(!device_secret_ok(&format!(
            "{}===",
            secret(MIN_DEVICE_SECRET)
        )));
        assert!(!device_secret_ok(&format!(
            "{}=",
            secret(MIN_DEVICE_SECRET - 1)
        )));
        assert!(!device_secret_ok(&format!(
            "{}=",
            secret(MAX_DEVICE_SECRET + 1)
        )));
        assert!(device_secret_ok("_-_-_-_-_-_-_-_-_-_-_-"));
        assert!(!device_secret_ok("_-_-_-_-_-_-_-_-_-_-_+"));
        assert!(
            !device_secret_ok("=_-_-_-_-_-_-_-_-_-_-_-"),
            "padding only at the end"
        );
    }

    #[test]
    fn descriptions_are_cut_at_the_bound_on_a_character_boundary() {
        let exact = "x".repeat(MAX_INFO);
        assert_eq!(bounded(exact.clone()), exact);
        let cut = bounded("x".repeat(MAX_INFO + 1));
        assert_eq!(cut, format!("{exact}…"));
        // Two-byte characters straddling the bound: cut before the one that does not fit.
        let accents = format!("x{}", "é".repeat(MAX_INFO));
        let cut = bounded(accents);
        assert!(cut.ends_with("é…"), "{cut}");
        assert_eq!(cut.len(), MAX_INFO - 1 + "…".len());
    }

    #[test]
    fn a_null_ip_is_absent_but_a_null_name_is_wrong() {
        let (request, _) = parse(
            Form::Stream,
            br#"{"OP":"login","username":"u","password":"p","ip":null}"#,
        )
        .unwrap();
        assert_eq!(request.ip, None);
        let err = parse(
            Form::Stream,
            br#"{"OP":"login","username":null,"password":"p"}"#,
        )
        .unwrap_err();
        assert!(
            err.info.contains("\"username\" must be a string"),
            "{}",
            err.info
        );
        let err = parse(
            Form::Stream,
            br#"{"OP":"login","username":"u","password":"p","ip":[1]}"#,
        )
        .unwrap_err();
        assert!(err.info.contains("\"ip\" must be a string"), "{}", err.info);
    }

    #[test]
    fn errors_keep_their_position_only_for_input_of_several_lines() {
        let one_line = parse(Form::Stream, br#"{"OP":"login","username":"u",}"#).unwrap_err();
        assert!(!one_line.info.contains(" at line "), "{}", one_line.info);
        let two_lines =
            parse(Form::Stream, b"{\"OP\":\"login\",\n\"username\":\"u\",}").unwrap_err();
        assert!(two_lines.info.contains(" at line 2"), "{}", two_lines.info);
    }

    #[test]
    fn replies_carry_what_their_code_needs() {
        assert_eq!(
            Reply::registered("Ann".into()).username.as_deref(),
            Some("Ann")
        );
        assert_eq!(Reply::bad_request("why".into()).info, "why");
        let retry =
            |ms: u64| Reply::too_many_attempts(std::time::Duration::from_millis(ms)).retry_after;
        assert_eq!(retry(1500), Some(2), "rounded up");
        assert_eq!(retry(2000), Some(2), "whole seconds stay");
        assert_eq!(retry(0), Some(1), "at least one");
        assert_eq!(retry(60_001), Some(61));
    }

    #[test]
    fn ops_have_their_wire_names_and_debug_hides_the_password() {
        assert_eq!(
            (Op::Login.as_str(), Op::Register.as_str()),
            ("login", "register")
        );
        let (request, _) = parse(
            Form::Seed,
            br#"[{"OP":"login","username":"u","password":"hunter2hunter2","ip":"192.0.2.1"}]"#,
        )
        .unwrap();
        let shown = format!("{request:?}");
        assert!(
            shown.contains("<hidden>") && shown.contains("192.0.2.1"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn after_a_reset_the_next_message_is_found_afresh() {
        let mut scanner = Scanner::new(1024);
        let first = br#"{"OP":"login"}"#;
        assert!(matches!(scanner.scan(first), Scan::Complete { end, .. } if end == first.len()));
        scanner.reset();
        let second = br#"[{"OP":"register","username":"someone"}]"#;
        assert_eq!(
            scanner.scan(second),
            Scan::Complete {
                form: Form::Seed,
                start: 0,
                end: second.len()
            }
        );
    }

    #[test]
    fn refuses_garbage_oversize_and_mismatch() {
        assert_eq!(scan_all(b"  hello"), Scan::Invalid(FrameError::NotJson));
        assert_eq!(scan_all(b"[}"), Scan::Invalid(FrameError::Mismatched));
        let big = [b'['; 2000];
        assert_eq!(scan_all(&big), Scan::Invalid(FrameError::TooLarge(1024)));
        let mut long_string = b"{\"a\":\"".to_vec();
        long_string.resize(1025, b'x');
        assert_eq!(
            scan_all(&long_string),
            Scan::Invalid(FrameError::TooLarge(1024))
        );
        assert_eq!(scan_all(b"  \r\n"), Scan::Empty);
        assert_eq!(scan_all(&[b' '; MAX_GAP]), Scan::Empty);
        assert_eq!(
            scan_all(&[b' '; MAX_GAP + 1]),
            Scan::Invalid(FrameError::TooMuchWhitespace)
        );
    }

    #[test]
    fn parses_both_forms() {
        let (req, id) = parse(
            Form::Seed,
            br#"[{"OP":"register","username":"u","password":"p"}]"#,
        )
        .unwrap();
        assert_eq!(req.op, Op::Register);
        assert!(id.is_none());
        let (req, id) = parse(
            Form::Stream,
            br#"{"OP":"login","username":"u","password":"p","id":7,"ip":"1.2.3.4"}"#,
        )
        .unwrap();
        assert_eq!((req.op, req.username.as_str()), (Op::Login, "u"));
        assert_eq!(id.map(|id| id.get().to_string()), Some("7".into()));
        assert_eq!(req.ip, Some("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = parse(
            Form::Stream,
            br#"{"OP":"fly","username":"u","password":"p","id":"x"}"#,
        )
        .unwrap_err();
        assert!(err.info.contains("unknown variant `fly`"), "{}", err.info);
        assert_eq!(err.id.map(|id| id.get().to_string()), Some("\"x\"".into()));
        let err = parse(Form::Seed, br#"[{"OP":"login","username":"u"}]"#).unwrap_err();
        assert!(
            err.info.contains("missing field `password`"),
            "{}",
            err.info
        );
        let err = parse(Form::Seed, b"[]").unwrap_err();
        assert!(err.info.contains("exactly one object"));
        let err = parse(
            Form::Stream,
            br#"{"OP":"login","username":5,"password":"p"}"#,
        )
        .unwrap_err();
        assert!(
            err.info.contains("\"username\" must be a string"),
            "{}",
            err.info
        );
        for (message, field) in [
            (
                &br#"{"OP":"login","username":"u","password":"p","ip":5}"#[..],
                "ip",
            ),
            (
                br#"[{"OP":"login","username":"u","password":12345678}]"#,
                "password",
            ),
        ] {
            let form = if message[0] == b'[' {
                Form::Seed
            } else {
                Form::Stream
            };
            let err = parse(form, message).unwrap_err();
            assert!(
                err.info.contains(&format!("\"{field}\" must be a string")),
                "{}",
                err.info
            );
            assert!(
                !err.info.contains("12345678"),
                "a password value is never quoted"
            );
        }
        let err = parse(
            Form::Stream,
            br#"{"OP":"login","username":"u","password":"p","id":[1]}"#,
        )
        .unwrap_err();
        assert!(err.info.contains("\"id\""));
        let err = parse(Form::Stream, b"{\"OP\":\"login\",\"username\":\"\xff\"}").unwrap_err();
        assert!(err.info.starts_with("bad request"));
    }

    #[test]
    fn encodes_seed_texts_exactly() {
        let mut out = Vec::new();
        encode(&mut out, Form::Seed, &Reply::no_such_user(), None);
        assert_eq!(out, br#"[{"code":1,"info":"Failed for error username!"}]"#);
        out.clear();
        encode(
            &mut out,
            Form::Stream,
            &Reply::register_failed(RegisterFailure::UsernameTaken),
            Some(&RawValue::from_string("\"r1\"".into()).unwrap()),
        );
        assert_eq!(
            out,
            b"{\"code\":5,\"info\":\"fail\",\"reason\":\"username_taken\",\"id\":\"r1\"}\n"
        );
    }

    #[test]
    fn a_ban_for_good_says_permanent_instead_of_a_year_near_146_million() {
        let wire = |reply: &Reply| {
            let mut out = Vec::new();
            encode(&mut out, Form::Stream, reply, None);
            String::from_utf8(out).unwrap()
        };
        let for_good = crate::protocol::accountdb::Ban::FOR_GOOD;
        assert_eq!(
            wire(&Reply::banned(for_good, "cheating")),
            "{\"code\":12,\"info\":\"banned\",\"reason\":\"cheating\",\"permanent\":true}\n"
        );
        assert_eq!(
            wire(&Reply::banned(1_800_000_000_999, "spam")),
            "{\"code\":12,\"info\":\"banned\",\"reason\":\"spam\",\"until\":1800000000}\n"
        );
    }
}
