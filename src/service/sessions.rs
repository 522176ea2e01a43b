//! Sessions: `verify`, `refresh`, `logout` and `logout_all` over a token, and the token a
//! login or a password change issues.

use super::steps::*;
use super::*;
use crate::accountdb::store::{Account, Revocation, SessionState};
use crate::auth::secret::random_token;
use crate::clock::{millis, Millis};
use crate::protocol::accountdb::DbRequest;
use crate::protocol::gateway::{Op, Reply};
use crate::tokens::{Claims, Invalid, Session};

impl Service {
    /// `verify`, `refresh`, `logout` and `logout_all`: no argon2, at most two store round
    /// trips (the session's state, then a revocation). A logout is answered here.
    pub(super) fn begin_session(&self, op: Op, token: &str) -> Begun {
        let claims = match self.tokens.check(token, self.options.clock.now_ms()) {
            Ok(claims) => claims,
            Err(reason) => return Begun::Step(Step::Done(Reply::invalid_token(reason))),
        };
        let Some(account_id) = claims.account_id() else {
            return Begun::Step(Step::Done(Reply::invalid_token(Invalid::Malformed)));
        };
        if op == Op::Logout {
            return Begun::Step(Step::Done(self.logout(claims, account_id)));
        }
        Begun::Asking(Asking {
            request: DbRequest::Session {
                account_id,
                sid: claims.sid.clone(),
                link: claims.dl.clone(),
            },
            then: Then::Session {
                op,
                claims,
                account_id,
            },
        })
    }

    /// Revoke the session of `claims`. Idempotent: no need to ask first.
    pub(super) fn logout(&self, claims: Claims, account_id: u64) -> Reply {
        // Kept until no token of the session could be valid any more: the last refresh is
        // before its max age, and the token that gives lasts a ttl more.
        let until = self.revoked_until(claims.auth_ms, claims.exp);
        let revocation = Revocation {
            account_id,
            sid: claims.sid,
            began_ms: claims.auth_ms,
            until_ms: until,
        };
        match self.accounts.revoke_session(&revocation) {
            Ok(()) => Reply::done(),
            Err(e) => store_unavailable(&e, &self.metrics),
        }
    }

    /// `verify`, `refresh` or `logout_all`, given the session's `state` in the store.
    pub(super) fn session_read(
        &self,
        op: Op,
        claims: Claims,
        account_id: u64,
        state: Option<SessionState>,
    ) -> Reply {
        let state = match state {
            Some(state) if state.stands(claims.auth_ms) => state,
            _ => return Reply::invalid_token(Invalid::Revoked),
        };
        let max_age = millis(self.options.session_max_age);
        let now = self.options.clock.now_ms();
        match op {
            Op::Refresh if now.saturating_sub(claims.auth_ms) >= max_age => {
                Reply::invalid_token(Invalid::Expired)
            }
            Op::Refresh => {
                // A guest claimed since: the new token is the full account's.
                let session = Session {
                    account_id,
                    name: state.username.clone(),
                    sid: claims.sid,
                    auth_ms: claims.auth_ms,
                    link: claims.dl,
                };
                let (token, exp) = self.tokens.issue(&session, now);
                Reply::valid(state.username, account_id, exp).with_token(token, exp)
            }
            Op::LogoutAll => match self.accounts.void_sessions(account_id, now, None) {
                Ok(_) => Reply::done(),
                Err(e) => store_unavailable(&e, &self.metrics),
            },
            _ => Reply::valid(state.username, account_id, claims.exp),
        }
    }

    /// A new session for `account`, begun at `began`, its token issued at `now`: the token and
    /// its `exp`.
    pub(super) fn new_session(
        &self,
        account: &Account,
        began: Millis,
        now: Millis,
    ) -> (String, i64) {
        self.new_session_from(account, None, began, now)
    }

    /// [`Service::new_session`], begun by a device's login from its `link`, if it was.
    pub(super) fn new_session_from(
        &self,
        account: &Account,
        link: Option<String>,
        began: Millis,
        now: Millis,
    ) -> (String, i64) {
        let session = Session {
            account_id: account.id,
            name: account.username.clone(),
            sid: random_token(),
            auth_ms: began,
            link,
        };
        self.tokens.issue(&session, now)
    }

    /// Until when to keep the revocation of a session that may be refreshed until
    /// `session_max_age` after `began`: no token of it is valid after (its last second
    /// included, as `exp` is checked in whole seconds).
    pub(super) fn revoked_until(&self, began: Millis, exp_s: i64) -> Millis {
        let max_age = millis(self.options.session_max_age);
        let ttl = millis(self.options.session_ttl);
        began
            .saturating_add(max_age)
            .saturating_add(ttl)
            .max(exp_s.saturating_mul(1000))
            .saturating_add(1000)
    }
}
