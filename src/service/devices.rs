//! Devices and guests: a device's login (creating its guest on first use), a guest's claim of
//! a name and password, and what a token's holder does with the account's devices.

use super::steps::*;
use super::*;
use crate::accountdb::store::Device;
use crate::auth::password::Memory;
use crate::clock::Millis;
use crate::protocol::accountdb::{Acted, DbRequest, DeviceLogin, SessionRef};
use crate::protocol::gateway::{DeviceInfo, Op, RegisterFailure, Reply};
use crate::throttle::Origin;
use crate::tokens::{Claims, Invalid};
use sha2::{Digest, Sha256};

/// `--guest-rate`: a token bucket of guest creations per second, whatever their address.
pub(super) struct Budget {
    /// Creations per second, and the most saved up.
    rate: f64,
    /// Creations that may be made now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: std::time::Instant,
}

impl Budget {
    /// Full, at `rate` a second.
    pub(super) fn new(rate: u32) -> Budget {
        let rate = f64::from(rate.max(1));
        Budget {
            rate,
            tokens: rate,
            at: std::time::Instant::now(),
        }
    }

    /// Take one creation: `Err` with how long until one is saved up.
    fn take(&mut self) -> Result<(), Duration> {
        let now = std::time::Instant::now();
        let saved = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + saved).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// SHA-256 of a device's secret without its `=` padding (with or without it, one secret),
/// lower-case hex: what the store keeps and compares. The secret is random and long (at least 128 bits, see
/// [`device_secret_ok`](crate::protocol::gateway::device_secret_ok)), so no slow hash is needed.
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.trim_end_matches('=').as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `link_device`'s and `unlink_device`'s reply.
pub(super) fn acted(acted: Acted) -> Reply {
    match acted {
        Acted::Done => Reply::done(),
        Acted::Revoked => Reply::invalid_token(Invalid::Revoked),
        Acted::Refused(reason) => Reply::register_failed(reason),
    }
}

/// `devices`' reply.
pub(super) fn listed(devices: Option<Vec<Device>>) -> Reply {
    let Some(devices) = devices else {
        return Reply::invalid_token(Invalid::Revoked);
    };
    let seconds = |ms: Millis| ms.div_euclid(1000);
    Reply::devices(
        devices
            .into_iter()
            .map(|d| DeviceInfo {
                device_id: d.device_id,
                linked_at: seconds(d.linked_ms),
                last_used: seconds(d.last_used_ms),
            })
            .collect(),
    )
}

/// The session a token's `claims` name, for account-db to check it stands.
fn session_of(claims: &Claims) -> Option<SessionRef> {
    Some(SessionRef {
        account_id: claims.account_id()?,
        sid: claims.sid.clone(),
        auth_ms: claims.auth_ms,
        link: claims.dl.clone(),
    })
}

impl Service {
    /// `device`: look the device up (its throttle with it).
    pub(super) fn begin_device(
        &self,
        device_id: String,
        secret: &str,
        origin: Option<Origin>,
    ) -> Begun {
        let pending = DevicePending {
            secret_hash: secret_hash(secret),
            device_id,
            origin,
            looked_up: self.options.clock.now_ms(),
        };
        Begun::Asking(Asking {
            request: DbRequest::Device {
                device_id: pending.device_id.clone(),
                secret_hash: pending.secret_hash.clone(),
                origin,
                failures: self.options.throttle.failures(),
            },
            then: Then::Device(pending),
        })
    }

    /// A device's login, given what account-db found.
    pub(super) fn device_answered(&self, pending: DevicePending, login: DeviceLogin) -> Step {
        Step::Done(match login {
            DeviceLogin::Locked(wait) => return self.throttled(wait),
            DeviceLogin::Wrong | DeviceLogin::Taken => Reply::wrong_password(),
            DeviceLogin::Unknown => match self.guest_budget.lock().take() {
                Ok(()) => return Step::Hash(HashTask(Task::CreateGuest(pending))),
                Err(wait) => return self.throttled(wait),
            },
            DeviceLogin::In {
                account,
                link,
                created,
            } => {
                let now = self.options.clock.now_ms();
                if let Some(ban) = banned(&account, now) {
                    return Step::Done(Reply::banned(ban.until_ms, &ban.reason));
                }
                let (token, exp) =
                    self.new_session_from(&account, Some(link), pending.looked_up, now);
                Reply::device_logged_in(account.username, account.id, created)
                    .with_token(token, exp)
            }
        })
    }

    /// A device's first login: its guest's create, to ask.
    pub(super) fn guest_asking(&self, pending: DevicePending) -> Asking {
        Asking {
            request: DbRequest::CreateGuest {
                device_id: pending.device_id.clone(),
                secret_hash: pending.secret_hash.clone(),
                origin: pending.origin,
                limit: self.options.throttle.guests(),
                request_id: random_token(),
            },
            then: Then::Device(pending),
        }
    }

    /// `claim`: the token's session, the name and password rules, then the name's check as a
    /// registration's.
    pub(super) fn begin_claim(
        &self,
        token: &str,
        username: String,
        password: String,
        origin: Option<Origin>,
    ) -> Begun {
        let done = |reply| Begun::Step(Step::Done(reply));
        let claims = match self.tokens.check(token, self.options.clock.now_ms()) {
            Ok(claims) => claims,
            Err(reason) => return done(Reply::invalid_token(reason)),
        };
        let Some(session) = session_of(&claims) else {
            return done(Reply::invalid_token(Invalid::Malformed));
        };
        if !claims.guest {
            return done(Reply::register_failed(RegisterFailure::AlreadyClaimed));
        }
        let asking = match self.begin_register(username, password, origin) {
            Begun::Asking(asking) => asking,
            // A name or password the rules refuse, answered as a registration's.
            refused => return refused,
        };
        let Then::Register { username, password } = asking.then else {
            return done(Reply::unavailable("internal error, retry later"));
        };
        Begun::Asking(Asking {
            request: asking.request,
            then: Then::Claim(ClaimPending {
                session,
                username,
                password,
            }),
        })
    }

    /// A claim's hash, then its write, on this thread.
    pub(super) fn claim(
        &self,
        claim: ClaimPending,
        ask_legacy: bool,
        memory: &mut Memory,
    ) -> Reply {
        match self.claim_asking(claim, ask_legacy, memory) {
            Ok(asking) => {
                let response = self.call(&asking.request);
                match self.resume(asking, response) {
                    Step::Done(reply) => reply,
                    Step::Hash(_) => Reply::unavailable("internal error, retry later"),
                }
            }
            Err(reply) => *reply,
        }
    }

    /// A claim hashed: its write, to ask.
    pub(super) fn claim_asking(
        &self,
        claim: ClaimPending,
        ask_legacy: bool,
        memory: &mut Memory,
    ) -> Result<Asking, Box<Reply>> {
        let ClaimPending {
            session,
            username,
            password,
        } = claim;
        let (account, request_id) = self.new_account(&username, &password, ask_legacy, memory)?;
        Ok(Asking {
            request: DbRequest::Claim {
                session: session.clone(),
                username: account.username,
                hash: account.hash,
                request_id,
            },
            then: Then::Claimed { session, username },
        })
    }

    /// A claim's reply: on success code 4 and a new token, the full account's.
    pub(super) fn claimed(&self, session: SessionRef, username: String, done: Acted) -> Reply {
        match done {
            Acted::Done => {
                let account = crate::accountdb::store::Account {
                    id: session.account_id,
                    username: username.clone(),
                    hash: String::new(),
                    ban: None,
                };
                let now = self.options.clock.now_ms();
                let (token, exp) = self.new_session_from(&account, session.link, now, now);
                Reply::claimed(username, session.account_id).with_token(token, exp)
            }
            other => acted(other),
        }
    }

    /// `link_device`, `unlink_device` and `devices`: the token's session, then its request.
    pub(super) fn begin_device_op(
        &self,
        op: Op,
        token: &str,
        device_id: String,
        secret: &str,
    ) -> Begun {
        let done = |reply| Begun::Step(Step::Done(reply));
        let claims = match self.tokens.check(token, self.options.clock.now_ms()) {
            Ok(claims) => claims,
            Err(reason) => return done(Reply::invalid_token(reason)),
        };
        let Some(session) = session_of(&claims) else {
            return done(Reply::invalid_token(Invalid::Malformed));
        };
        let (request, then) = match op {
            Op::LinkDevice => (
                DbRequest::LinkDevice {
                    session,
                    device_id,
                    secret_hash: secret_hash(secret),
                },
                Then::Acted,
            ),
            Op::UnlinkDevice => {
                let now = self.options.clock.now_ms();
                // The device's sessions may have begun as late as now.
                let until = self.revoked_until(now, claims.exp.max(now.div_euclid(1000)));
                (
                    DbRequest::UnlinkDevice {
                        session,
                        device_id,
                        until_ms: until,
                    },
                    Then::Acted,
                )
            }
            _ => (DbRequest::Devices { session }, Then::Devices),
        };
        Begun::Asking(Asking { request, then })
    }
}
