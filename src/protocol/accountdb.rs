//! The account-db wire protocol, shared by its server and its client. Pure: no IO.
//!
//! Newline-delimited JSON over one persistent TCP connection. On connect the server sends a
//! [`Greeting`] with a nonce; the client's first request must be [`DbRequest::Auth`], proving
//! the shared secret ([`crate::auth::secret`]), or the server closes the connection. Then the
//! client sends one [`DbRequest`] line and reads one [`DbResponse`] line, as often as it likes.
//! A request the server cannot read is answered with [`DbResponse::Error`]; the connection
//! stays open.
//!
//! The account store only ever sees password hashes, never passwords.

use crate::throttle::{Origin, RegisterLimit, Thresholds, Unknown};

use crate::clock::Millis;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::time::Duration;

/// The greeting's `version`: 3, which clients from before negotiation check exactly, so it
/// stays 3 while [`VERSIONS`] holds it.
pub const VERSION: u32 = 3;

/// The protocol versions this build speaks, as client and as server, oldest first: its own and
/// the previous release's. 4 has the requests of 3; it names the link of a build that
/// negotiates, so the next release's requests can be sent only where 4 or later was agreed.
pub const VERSIONS: [u32; 2] = [3, 4];

/// The name in the greeting, so a client that reached the wrong service says so.
pub const SERVICE: &str = "account-db";

/// The longest line either side accepts, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// The first line the server sends on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    /// [`SERVICE`].
    pub service: String,
    /// [`VERSION`]: what a client from before negotiation checks.
    pub version: u32,
    /// The versions the server speaks ([`VERSIONS`]); absent from a server from before
    /// negotiation, which speaks `version` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<u32>,
    /// The server's `--store-timeout` in milliseconds, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_timeout_ms: Option<u64>,
    /// Random, fresh for every connection: the client proves the secret against it.
    pub nonce: String,
}

impl Greeting {
    /// This build's greeting, with `nonce` and its store's deadline.
    pub fn current(nonce: String, store_timeout: Duration) -> Self {
        Greeting {
            service: SERVICE.to_string(),
            version: VERSION,
            versions: VERSIONS.to_vec(),
            store_timeout_ms: Some(u64::try_from(store_timeout.as_millis()).unwrap_or(u64::MAX)),
            nonce,
        }
    }

    /// The version a client of this build speaks with the server that sent this greeting: the
    /// highest both speak, and whether the `auth` line names it (a server from before
    /// negotiation is sent today's `auth` line unchanged). Err: no version in common, both
    /// ranges named.
    pub fn negotiate(&self) -> Result<Agreed, String> {
        let (ours, theirs) = (&VERSIONS[..], &self.versions[..]);
        let found = if theirs.is_empty() {
            // Only 3 goes unnamed: a server that takes an unnamed auth line as 3 and greets
            // with another version alone is told which one we speak.
            ours.contains(&self.version).then_some(Agreed {
                version: self.version,
                named: self.version != VERSION,
            })
        } else {
            let shared = ours.iter().filter(|v| theirs.contains(v)).max();
            shared.map(|&version| Agreed {
                version,
                named: true,
            })
        };
        found.ok_or_else(|| {
            let theirs = if theirs.is_empty() {
                vec![self.version]
            } else {
                theirs.to_vec()
            };
            format!(
                "it speaks {} versions {}, we speak {SERVICE} versions {}",
                self.service,
                range(&theirs),
                range(ours)
            )
        })
    }
}

/// What a client and a server agreed on at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The protocol version spoken on the connection.
    pub version: u32,
    /// Whether the `auth` line names it (the server announced `versions`).
    pub named: bool,
}

/// Versions as a reader wants them: `3`, `3 to 4`.
pub fn range(versions: &[u32]) -> String {
    match (versions.iter().min(), versions.iter().max()) {
        (Some(lo), Some(hi)) if lo != hi => format!("{lo} to {hi}"),
        (Some(v), _) => v.to_string(),
        _ => "none".to_string(),
    }
}

/// One stored account: its id, the spelling it registered with and its PHC hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Stable, never reused, given by the store (0 in a `create` request: not yet given).
    #[serde(default)]
    pub id: u64,
    /// Empty for a guest (an account made by a device's first login, not claimed yet): the
    /// stores keep no name for it (NULL), and replies and tokens omit it.
    #[serde(default)]
    pub username: String,
    /// Empty for a guest: no password logs into it.
    #[serde(default)]
    pub hash: String,
    /// Set by an operator (`account-db admin ban`): its logins are refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<Ban>,
}

/// An account's ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// When it ends, in milliseconds since the epoch.
    pub until_ms: i64,
    pub reason: String,
}

impl Ban {
    /// The end of a ban for good (`account-db admin ban` without `--for`): year 292 million,
    /// never; any end from it on is for good.
    pub const FOR_GOOD: i64 = i64::MAX / 2;

    /// Whether it never ends.
    pub fn permanent(&self) -> bool {
        self.until_ms >= Ban::FOR_GOOD
    }

    /// The ban the store's columns hold: none when `until_ms` is 0.
    pub fn from_columns(until_ms: i64, reason: String) -> Option<Ban> {
        (until_ms != 0).then_some(Ban { until_ms, reason })
    }
}

impl Account {
    /// Whether it is a guest: no name, no password, only its devices log into it.
    pub fn is_guest(&self) -> bool {
        self.username.is_empty()
    }

    /// An account to create: `username` with `hash`, its id still to be given.
    pub fn new(username: &str, hash: &str) -> Account {
        Account {
            id: 0,
            username: username.to_string(),
            hash: hash.to_string(),
            ban: None,
        }
    }
}

/// A device linked to an account: what the store keeps of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// As the client chose it.
    pub device_id: String,
    /// The account it logs into.
    pub account_id: u64,
    /// SHA-256 of its secret, lower-case hex.
    pub secret_hash: String,
    /// Random, new at every link: the sessions the device begins carry it, and unlinking
    /// revokes them by it.
    pub link: String,
    /// When it was linked, in milliseconds since the epoch.
    pub linked_ms: Millis,
    /// When it last logged in (milliseconds; written at most once per
    /// [`LAST_USED_RESOLUTION_MS`]).
    pub last_used_ms: Millis,
}

/// How stale a device's `last_used_ms` may grow before a login writes it again: an hour. A
/// device's login otherwise writes nothing.
pub const LAST_USED_RESOLUTION_MS: Millis = 3_600_000;

/// The session a request acts for (`claim` and the device requests): account-db acts only
/// while it stands ([`SessionState::stands`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    pub account_id: u64,
    pub sid: String,
    /// When it began (the token's `auth_ms`).
    pub auth_ms: Millis,
    /// The device link it began from, if a device's login began it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// What a device's login found ([`DbRequest::Device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceLogin {
    /// The device, or the address, is locked (or, creating a guest, the address made too many).
    Locked(Duration),
    /// No such device: a guest may be created for it.
    Unknown,
    /// The secret is wrong: counted.
    Wrong,
    /// In: the account, the device's link; `created` by this very request.
    In {
        account: Account,
        link: String,
        created: bool,
    },
    /// Creating a guest: another request linked the device first.
    Taken,
}

/// What a token's session may do to its account ([`DbRequest::Claim`], the device requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acted {
    /// Done.
    Done,
    /// The session no longer stands (logged out, voided, the account deleted).
    Revoked,
    /// Refused, for this reason (the gateway's code 5).
    Refused(crate::protocol::gateway::RegisterFailure),
}

/// A logged-out session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    pub account_id: u64,
    pub sid: String,
    /// When the session began.
    pub began_ms: Millis,
    /// Until when to keep the revocation: no token of the session is valid after it.
    pub until_ms: Millis,
}

/// What the store knows of one session of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The account's spelling as registered.
    pub username: String,
    /// Sessions that began before this (milliseconds since the epoch) are void.
    pub sessions_after: Millis,
    /// This session was logged out.
    pub revoked: bool,
}

impl SessionState {
    /// Whether a session that began at `auth_ms` still stands.
    pub fn stands(&self, auth_ms: Millis) -> bool {
        !self.revoked && auth_ms >= self.sessions_after
    }
}

/// What [`Store::create`](crate::accountdb::store::Store::create) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The account is stored, durably.
    New,
    /// The name was taken, in some spelling; nothing changed.
    Exists,
}

impl Created {
    /// The outcome when the name is already held by the create `stored_by`: this very create
    /// (repeated after its reply was lost) or another.
    pub fn held_by(stored_by: &str, request_id: &str) -> Created {
        if stored_by == request_id {
            Created::New
        } else {
            Created::Exists
        }
    }

    /// The outcome of an insert that wrote `rows` rows (0: a concurrent create won).
    pub fn inserted(rows: u64) -> Created {
        if rows == 1 {
            Created::New
        } else {
            Created::Exists
        }
    }
}

/// What account-db answers a login's lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The account, or the address, is locked for this long: answer "too many attempts".
    Locked(Duration),
    /// The login may go on: the account if there is one; `settled`: a success would change
    /// nothing, so it need not be reported with [`succeeded`](crate::accountdb::throttling::succeeded).
    Open {
        account: Option<Account>,
        settled: bool,
    },
}

/// What account-db answers a registration's lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registering {
    /// The address used up its registrations: another is allowed after this long.
    Locked(Duration),
    /// The name, or a look-alike, is taken.
    Taken,
    /// The name is free: go on and hash the password.
    Free,
    /// Registration is closed: the old server's names are not imported yet (see
    /// [`RegisterLimit::legacy_gate`]).
    Closed,
}

/// A request from login-server to account-db.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DbRequest {
    /// The first request on a connection: HMAC-SHA256(secret, nonce) as hex, and the version
    /// the client chose from the greeting's `versions` (absent: 3, a client from before
    /// negotiation or a server that announced none).
    Auth {
        proof: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
    /// Liveness round trip; answered [`DbResponse::Pong`].
    Ping,
    /// Look an account up by name, without regard to case.
    Find { username: String },
    /// Create an account atomically; [`DbResponse::Exists`] when the name is taken in any case.
    /// Idempotent by `request_id`: repeating a create whose account was stored answers
    /// [`DbResponse::Created`] again.
    Create {
        account: Account,
        request_id: String,
    },
    /// Replace an account's hash `old` with `hash` (a login upgrading a weak one); not if it
    /// is no longer `old` (a password change came first).
    UpdateHash {
        username: String,
        old: String,
        hash: String,
    },
    /// A login's lookup ([`crate::accountdb::throttling::login`]): answered [`DbResponse::Locked`] or
    /// [`DbResponse::Open`]. An unknown name is counted as a failure, against `origin` and,
    /// with `unknown`, the name.
    Login {
        username: String,
        origin: Option<Origin>,
        failures: Thresholds,
        unknown: Unknown,
    },
    /// A login failed ([`crate::accountdb::throttling::failed`]): answered [`DbResponse::Counted`], or
    /// [`DbResponse::Locked`] when a key was locked already (then it is not counted).
    Failed {
        username: Option<String>,
        origin: Option<Origin>,
        failures: Thresholds,
    },
    /// A login succeeded ([`crate::accountdb::throttling::succeeded`]): answered [`DbResponse::Updated`].
    Succeeded {
        username: String,
        origin: Option<Origin>,
        /// Keep the failures and locks (`--hide-user-existence`); absent from login-servers
        /// before 2026-11-27: false.
        #[serde(default)]
        keep_failures: bool,
    },
    /// The state of session `sid` of the account with `account_id`: answered
    /// [`DbResponse::Session`], or [`DbResponse::NotFound`] without such an account. `link`
    /// (version 4): the device link it began from; revoked when that link was unlinked.
    Session {
        account_id: u64,
        sid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
    },
    /// Revoke a session: answered [`DbResponse::Updated`].
    Revoke { revocation: Revocation },
    /// Void the account's sessions that began before `before_ms`, and with `hash` replace its
    /// password hash: answered [`DbResponse::Updated`] or [`DbResponse::NotFound`].
    VoidSessions {
        account_id: u64,
        before_ms: i64,
        hash: Option<String>,
    },
    /// A registration's lookup ([`crate::accountdb::throttling::register`]): answered
    /// [`DbResponse::Locked`], [`DbResponse::Exists`] or [`DbResponse::NotFound`].
    Register {
        username: String,
        origin: Option<Origin>,
        limit: RegisterLimit,
    },
    /// Version 4. A device's login ([`crate::accountdb::devices::login`]): the device's
    /// account if `secret_hash` is its, the secret compared in constant time; a wrong one is
    /// counted against the device and `origin` as a wrong password is. Answered
    /// [`DbResponse::Device`], [`DbResponse::Locked`], [`DbResponse::NotFound`] (no such
    /// device) or [`DbResponse::Counted`] (wrong secret).
    Device {
        device_id: String,
        secret_hash: String,
        origin: Option<Origin>,
        failures: Thresholds,
    },
    /// Version 4. A guest for a device's first login, counted against `origin` by `limit`;
    /// idempotent by `request_id`. Answered [`DbResponse::Device`], [`DbResponse::Locked`] or
    /// [`DbResponse::Exists`] (the device was linked meanwhile).
    CreateGuest {
        device_id: String,
        secret_hash: String,
        origin: Option<Origin>,
        limit: RegisterLimit,
        request_id: String,
    },
    /// Version 4. The session's guest takes `username` and the password `hash`, under the
    /// rules of a create (the name and its look-alikes free); idempotent by `request_id`.
    /// Answered [`DbResponse::Created`], [`DbResponse::Exists`] (the name is taken),
    /// [`DbResponse::Refused`] (`already_claimed`) or [`DbResponse::Revoked`].
    Claim {
        session: SessionRef,
        username: String,
        hash: String,
        request_id: String,
    },
    /// Version 4. Link a device to the session's account (again: its secret replaced).
    /// Answered [`DbResponse::Updated`], [`DbResponse::Refused`] (`device_taken`) or
    /// [`DbResponse::Revoked`].
    LinkDevice {
        session: SessionRef,
        device_id: String,
        secret_hash: String,
    },
    /// Version 4. Unlink a device of the session's account, revoking the sessions it began
    /// until `until_ms`. Answered [`DbResponse::Updated`], [`DbResponse::Refused`]
    /// (`last_credential`, `unknown_device`) or [`DbResponse::Revoked`].
    UnlinkDevice {
        session: SessionRef,
        device_id: String,
        until_ms: Millis,
    },
    /// Version 4. The session's account's devices: answered [`DbResponse::Devices`] or
    /// [`DbResponse::Revoked`].
    Devices { session: SessionRef },
}

impl DbRequest {
    /// Every request's name, in order: its `op` on the wire, and its label in account-db's
    /// `accountdb_requests_total{op}`.
    pub const NAMES: [&'static str; 18] = [
        "auth",
        "ping",
        "find",
        "create",
        "update_hash",
        "login",
        "failed",
        "succeeded",
        "register",
        "session",
        "revoke",
        "void_sessions",
        "device",
        "create_guest",
        "claim",
        "link_device",
        "unlink_device",
        "devices",
    ];

    /// Where this request's name is in [`DbRequest::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            DbRequest::Auth { .. } => 0,
            DbRequest::Ping => 1,
            DbRequest::Find { .. } => 2,
            DbRequest::Create { .. } => 3,
            DbRequest::UpdateHash { .. } => 4,
            DbRequest::Login { .. } => 5,
            DbRequest::Failed { .. } => 6,
            DbRequest::Succeeded { .. } => 7,
            DbRequest::Register { .. } => 8,
            DbRequest::Session { .. } => 9,
            DbRequest::Revoke { .. } => 10,
            DbRequest::VoidSessions { .. } => 11,
            DbRequest::Device { .. } => 12,
            DbRequest::CreateGuest { .. } => 13,
            DbRequest::Claim { .. } => 14,
            DbRequest::LinkDevice { .. } => 15,
            DbRequest::UnlinkDevice { .. } => 16,
            DbRequest::Devices { .. } => 17,
        }
    }

    /// The oldest protocol version that has this request as it stands: it is sent only on
    /// connections that agreed on it or later (docs/protocol.md, "Fields across versions").
    pub fn min_version(&self) -> u32 {
        match self {
            DbRequest::Device { .. }
            | DbRequest::CreateGuest { .. }
            | DbRequest::Claim { .. }
            | DbRequest::LinkDevice { .. }
            | DbRequest::UnlinkDevice { .. }
            | DbRequest::Devices { .. } => 4,
            DbRequest::Session { link: Some(_), .. } => 4,
            _ => 3,
        }
    }

    /// Whether its outcome must be known, so that a client repeats it after any failure
    /// (timeouts included) until it learns it: a create, which is idempotent by its request
    /// id (a guest's create and a claim, likewise). Any other request that fails is given up
    /// after its deadline.
    pub fn resolves(&self) -> bool {
        matches!(
            self,
            DbRequest::Create { .. } | DbRequest::CreateGuest { .. } | DbRequest::Claim { .. }
        )
    }

    /// Whether asking it again after a failure whose outcome is unknown changes nothing twice:
    /// the reads, and a create (by its request id). The other writes (a failure or success
    /// counted, a registration counted, a hash, a revocation, a void) are not asked again: a
    /// missed count is preferable to a double one.
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            DbRequest::Ping
                | DbRequest::Find { .. }
                | DbRequest::Login { .. }
                | DbRequest::Session { .. }
                | DbRequest::Create { .. }
                | DbRequest::CreateGuest { .. }
                | DbRequest::Claim { .. }
                | DbRequest::Devices { .. }
        )
    }
}

/// A reply from account-db.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DbResponse {
    /// Authenticated.
    Ok,
    Pong,
    Found {
        account: Account,
    },
    NotFound,
    Created,
    Exists,
    Updated,
    /// A login may go on: the account, if there is one; `settled`: its success need not be
    /// reported.
    Open {
        account: Option<Account>,
        settled: bool,
    },
    /// Locked by throttling: try again in this many milliseconds.
    Locked {
        wait_ms: u64,
    },
    /// A failure was counted.
    Counted,
    /// A registration refused because registration is closed: the old server's names are not
    /// imported yet ([`crate::throttle::RegisterLimit::legacy_gate`]).
    Closed,
    /// What the store knows of a session.
    Session {
        username: String,
        sessions_after: i64,
        revoked: bool,
    },
    /// A device's login is in ([`DbRequest::Device`], [`DbRequest::CreateGuest`]).
    Device {
        account: Account,
        link: String,
        #[serde(default)]
        created: bool,
    },
    /// The session a request acted for no longer stands.
    Revoked,
    /// Refused, for this reason (a gateway `reason` of code 5).
    Refused {
        reason: crate::protocol::gateway::RegisterFailure,
    },
    /// An account's devices.
    Devices {
        devices: Vec<Device>,
    },
    /// The request could not be served; the connection is still usable.
    Error {
        message: String,
    },
}

/// The typed answers to requests, and back: what [`crate::accountdb::execute`] answers, and
/// what a client makes of the answer. A response that does not fit its request is `Err` with
/// it.
impl DbResponse {
    /// A lock for `wait`, in whole milliseconds.
    pub fn locked(wait: Duration) -> DbResponse {
        DbResponse::Locked {
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// `true` for [`DbResponse::Updated`], `false` for [`DbResponse::NotFound`]: whether an
    /// `update_hash` or `void_sessions` changed the account.
    pub fn updated(changed: bool) -> DbResponse {
        match changed {
            true => DbResponse::Updated,
            false => DbResponse::NotFound,
        }
    }

    /// The answer to `login`.
    pub fn into_login(self) -> Result<Login, DbResponse> {
        match self {
            DbResponse::Locked { wait_ms } => Ok(Login::Locked(Duration::from_millis(wait_ms))),
            DbResponse::Open { account, settled } => Ok(Login::Open { account, settled }),
            other => Err(other),
        }
    }

    /// The answer to `register`.
    pub fn into_registering(self) -> Result<Registering, DbResponse> {
        match self {
            DbResponse::Locked { wait_ms } => {
                Ok(Registering::Locked(Duration::from_millis(wait_ms)))
            }
            DbResponse::Exists => Ok(Registering::Taken),
            DbResponse::NotFound => Ok(Registering::Free),
            DbResponse::Closed => Ok(Registering::Closed),
            other => Err(other),
        }
    }

    /// The answer to `session`.
    pub fn into_session(self) -> Result<Option<SessionState>, DbResponse> {
        match self {
            DbResponse::Session {
                username,
                sessions_after,
                revoked,
            } => Ok(Some(SessionState {
                username,
                sessions_after,
                revoked,
            })),
            DbResponse::NotFound => Ok(None),
            other => Err(other),
        }
    }

    /// The answer to `create`.
    pub fn into_created(self) -> Result<Created, DbResponse> {
        match self {
            DbResponse::Created => Ok(Created::New),
            DbResponse::Exists => Ok(Created::Exists),
            other => Err(other),
        }
    }

    /// The answer to `find`.
    pub fn into_found(self) -> Result<Option<Account>, DbResponse> {
        match self {
            DbResponse::Found { account } => Ok(Some(account)),
            DbResponse::NotFound => Ok(None),
            other => Err(other),
        }
    }

    /// The answer to `failed`: the longest lock met, if a key was locked already.
    pub fn into_counted(self) -> Result<Option<Duration>, DbResponse> {
        match self {
            DbResponse::Locked { wait_ms } => Ok(Some(Duration::from_millis(wait_ms))),
            DbResponse::Counted => Ok(None),
            other => Err(other),
        }
    }

    /// The answer to `update_hash` and `void_sessions`: whether the account changed.
    pub fn into_updated(self) -> Result<bool, DbResponse> {
        match self {
            DbResponse::Updated => Ok(true),
            DbResponse::NotFound => Ok(false),
            other => Err(other),
        }
    }

    /// The answer to `device` and `create_guest`.
    pub fn into_device_login(self) -> Result<DeviceLogin, DbResponse> {
        match self {
            DbResponse::Locked { wait_ms } => {
                Ok(DeviceLogin::Locked(Duration::from_millis(wait_ms)))
            }
            DbResponse::NotFound => Ok(DeviceLogin::Unknown),
            DbResponse::Counted => Ok(DeviceLogin::Wrong),
            DbResponse::Exists => Ok(DeviceLogin::Taken),
            DbResponse::Device {
                account,
                link,
                created,
            } => Ok(DeviceLogin::In {
                account,
                link,
                created,
            }),
            other => Err(other),
        }
    }
    /// The answer to `claim`, `link_device` and `unlink_device` (a claim's taken name is
    /// `Refused(UsernameTaken)`).
    pub fn into_acted(self) -> Result<Acted, DbResponse> {
        use crate::protocol::gateway::RegisterFailure;
        match self {
            DbResponse::Updated | DbResponse::Created => Ok(Acted::Done),
            DbResponse::Revoked => Ok(Acted::Revoked),
            DbResponse::Exists => Ok(Acted::Refused(RegisterFailure::UsernameTaken)),
            DbResponse::Refused { reason } => Ok(Acted::Refused(reason)),
            other => Err(other),
        }
    }
    /// The answer to `devices`: `None` when the session no longer stands.
    pub fn into_devices(self) -> Result<Option<Vec<Device>>, DbResponse> {
        match self {
            DbResponse::Devices { devices } => Ok(Some(devices)),
            DbResponse::Revoked => Ok(None),
            other => Err(other),
        }
    }
    /// The answer to `succeeded`, `revoke` and `ping`: done.
    pub fn into_done(self) -> Result<(), DbResponse> {
        match self {
            DbResponse::Updated | DbResponse::Pong => Ok(()),
            other => Err(other),
        }
    }
}

impl From<DeviceLogin> for DbResponse {
    fn from(login: DeviceLogin) -> DbResponse {
        match login {
            DeviceLogin::Locked(wait) => DbResponse::locked(wait),
            DeviceLogin::Unknown => DbResponse::NotFound,
            DeviceLogin::Wrong => DbResponse::Counted,
            DeviceLogin::Taken => DbResponse::Exists,
            DeviceLogin::In {
                account,
                link,
                created,
            } => DbResponse::Device {
                account,
                link,
                created,
            },
        }
    }
}
impl From<Acted> for DbResponse {
    fn from(acted: Acted) -> DbResponse {
        match acted {
            Acted::Done => DbResponse::Updated,
            Acted::Revoked => DbResponse::Revoked,
            Acted::Refused(reason) => DbResponse::Refused { reason },
        }
    }
}
impl From<Login> for DbResponse {
    fn from(login: Login) -> DbResponse {
        match login {
            Login::Locked(wait) => DbResponse::locked(wait),
            Login::Open { account, settled } => DbResponse::Open { account, settled },
        }
    }
}

impl From<Registering> for DbResponse {
    fn from(registering: Registering) -> DbResponse {
        match registering {
            Registering::Locked(wait) => DbResponse::locked(wait),
            Registering::Taken => DbResponse::Exists,
            Registering::Free => DbResponse::NotFound,
            Registering::Closed => DbResponse::Closed,
        }
    }
}

impl From<Created> for DbResponse {
    fn from(created: Created) -> DbResponse {
        match created {
            Created::New => DbResponse::Created,
            Created::Exists => DbResponse::Exists,
        }
    }
}

impl From<Option<SessionState>> for DbResponse {
    fn from(state: Option<SessionState>) -> DbResponse {
        match state {
            Some(state) => DbResponse::Session {
                username: state.username,
                sessions_after: state.sessions_after,
                revoked: state.revoked,
            },
            None => DbResponse::NotFound,
        }
    }
}

/// Serialize `msg` as one line, newline included.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    // These message types hold only strings and numbers: serializing them cannot fail.
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Parse one line (its newline optional).
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_single_lines() {
        let requests = [
            DbRequest::Ping,
            DbRequest::Find {
                username: "Ålice".into(),
            },
            DbRequest::Create {
                account: Account::new("bob", "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA"),
                request_id: "7f3a".into(),
            },
            DbRequest::Auth {
                proof: "00ff".into(),
                version: None,
            },
            DbRequest::Failed {
                username: None,
                origin: Some("2001:db8:0:1::7".parse().unwrap()),
                failures: crate::throttle::Policy::default().failures(),
            },
        ];
        for request in requests {
            let line = encode_line(&request);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(decode_line::<DbRequest>(&line).unwrap(), request);
        }
    }

    /// One request of every kind.
    fn every_request() -> Vec<DbRequest> {
        let t = crate::throttle::Policy::default();
        let revocation = Revocation {
            account_id: 1,
            sid: "s".into(),
            began_ms: 0,
            until_ms: 1,
        };
        vec![
            DbRequest::Auth {
                proof: "p".into(),
                version: Some(4),
            },
            DbRequest::Ping,
            DbRequest::Find {
                username: "u".into(),
            },
            DbRequest::Create {
                account: Account::new("u", "h"),
                request_id: "r".into(),
            },
            DbRequest::UpdateHash {
                username: "u".into(),
                old: "o".into(),
                hash: "h".into(),
            },
            DbRequest::Login {
                username: "u".into(),
                origin: None,
                failures: t.failures(),
                unknown: Unknown::Nothing,
            },
            DbRequest::Failed {
                username: None,
                origin: None,
                failures: t.failures(),
            },
            DbRequest::Succeeded {
                username: "u".into(),
                origin: None,
                keep_failures: false,
            },
            DbRequest::Register {
                username: "u".into(),
                origin: None,
                limit: t.registrations(),
            },
            DbRequest::Session {
                account_id: 1,
                sid: "s".into(),
                link: None,
            },
            DbRequest::Revoke { revocation },
            DbRequest::VoidSessions {
                account_id: 1,
                before_ms: 0,
                hash: None,
            },
            DbRequest::Device {
                device_id: "d".into(),
                secret_hash: "h".into(),
                origin: None,
                failures: t.failures(),
            },
            DbRequest::CreateGuest {
                device_id: "d".into(),
                secret_hash: "h".into(),
                origin: None,
                limit: t.guests(),
                request_id: "r".into(),
            },
            DbRequest::Claim {
                session: crate::protocol::accountdb::SessionRef {
                    account_id: 1,
                    sid: "s".into(),
                    auth_ms: 0,
                    link: Some("l".into()),
                },
                username: "u".into(),
                hash: "h".into(),
                request_id: "r".into(),
            },
            DbRequest::LinkDevice {
                session: crate::protocol::accountdb::SessionRef {
                    account_id: 1,
                    sid: "s".into(),
                    auth_ms: 0,
                    link: Some("l".into()),
                },
                device_id: "d".into(),
                secret_hash: "h".into(),
            },
            DbRequest::UnlinkDevice {
                session: crate::protocol::accountdb::SessionRef {
                    account_id: 1,
                    sid: "s".into(),
                    auth_ms: 0,
                    link: Some("l".into()),
                },
                device_id: "d".into(),
                until_ms: 1,
            },
            DbRequest::Devices {
                session: crate::protocol::accountdb::SessionRef {
                    account_id: 1,
                    sid: "s".into(),
                    auth_ms: 0,
                    link: Some("l".into()),
                },
            },
        ]
    }

    #[test]
    fn every_request_is_named_as_the_wire_names_it() {
        let every = every_request();
        assert_eq!(every.len(), DbRequest::NAMES.len());
        for (i, request) in every.iter().enumerate() {
            assert_eq!(request.index(), i);
            let wire: serde_json::Value = serde_json::to_value(request).unwrap();
            assert_eq!(wire["op"], DbRequest::NAMES[i], "{wire}");
        }
    }

    #[test]
    fn a_field_from_a_newer_release_is_ignored_in_every_request_and_reply() {
        let mut every: Vec<serde_json::Value> = every_request()
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        every.push(serde_json::to_value(DbResponse::NotFound).unwrap());
        for wire in every {
            let mut newer = wire.clone();
            newer["added_by_a_newer_release"] = serde_json::json!({"any": [1, "shape"]});
            let line = format!("{newer}\n");
            let decoded = match wire.get("op") {
                Some(_) => decode_line::<DbRequest>(line.as_bytes())
                    .map(|r| serde_json::to_value(r).unwrap()),
                None => decode_line::<DbResponse>(line.as_bytes())
                    .map(|r| serde_json::to_value(r).unwrap()),
            };
            assert_eq!(decoded.ok(), Some(wire.clone()), "{newer}");
        }
    }

    #[test]
    fn wire_shape_is_documented_form() {
        assert_eq!(encode_line(&DbRequest::Ping), b"{\"op\":\"ping\"}\n");
        assert_eq!(
            encode_line(&DbResponse::NotFound),
            b"{\"status\":\"not_found\"}\n"
        );
        assert_eq!(
            String::from_utf8(encode_line(&Greeting::current(
                "ab12".into(),
                Duration::from_secs(5)
            )))
            .unwrap(),
            "{\"service\":\"account-db\",\"version\":3,\"versions\":[3,4],\
             \"store_timeout_ms\":5000,\"nonce\":\"ab12\"}\n"
        );
        // From a login-server that predates negotiation: no version named, 3.
        assert_eq!(
            decode_line::<DbRequest>(br#"{"op":"auth","proof":"00"}"#).unwrap(),
            DbRequest::Auth {
                proof: "00".into(),
                version: None
            }
        );
        assert_eq!(
            encode_line(&DbRequest::Auth {
                proof: "00".into(),
                version: None
            }),
            b"{\"op\":\"auth\",\"proof\":\"00\"}\n",
            "the auth line toward an account-db that announced no versions is unchanged"
        );
        assert!(decode_line::<DbRequest>(b"{\"op\":\"drop_table\"}").is_err());
        // From a login-server that predates keep_failures: a success as it always was.
        let old = br#"{"op":"succeeded","username":"a","origin":null}"#;
        assert_eq!(
            decode_line::<DbRequest>(old).unwrap(),
            DbRequest::Succeeded {
                username: "a".into(),
                origin: None,
                keep_failures: false,
            }
        );
    }

    fn greeting(version: u32, versions: &[u32]) -> Greeting {
        Greeting {
            service: SERVICE.into(),
            version,
            versions: versions.to_vec(),
            store_timeout_ms: None,
            nonce: "n".into(),
        }
    }

    #[test]
    fn the_highest_version_both_speak_is_agreed_and_named_only_to_a_server_that_announced() {
        let agreed = |version, named| Ok(Agreed { version, named });
        // An account-db from before negotiation: 3, today's auth line.
        assert_eq!(greeting(3, &[]).negotiate(), agreed(3, false));
        assert_eq!(greeting(3, &[3, 4]).negotiate(), agreed(4, true));
        assert_eq!(greeting(3, &[3]).negotiate(), agreed(3, true));
        // The next release, which speaks 4 and 5.
        assert_eq!(greeting(4, &[4, 5]).negotiate(), agreed(4, true));
        let newer = greeting(5, &[5, 6]).negotiate().unwrap_err();
        assert!(
            newer.contains("versions 5 to 6") && newer.contains("versions 3 to 4"),
            "{newer}"
        );
        let older = greeting(2, &[]).negotiate().unwrap_err();
        assert!(
            older.contains("versions 2,") && older.contains("3 to 4"),
            "{older}"
        );
        assert_eq!(range(&[]), "none");
        // A greeting of 4 without a range: 4, named, so that both sides speak the same.
        assert_eq!(greeting(4, &[]).negotiate(), agreed(4, true));
    }
}
