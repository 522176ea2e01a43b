//! Moving a player off the old account server (`--legacy-db`) on a first login: the question
//! to it, and the account made (or the reservation filled) here.

use super::steps::*;
use super::*;
use crate::accountdb::store::{Account, Created};
use crate::auth::password::Memory;
use crate::auth::secret::random_token;
use crate::legacy::{self, Known, RESERVED_HASH};
use crate::metrics::LegacyOutcome;
use crate::protocol::gateway::Reply;

impl Service {
    /// What the old account server knows of `username`, counted in the metrics; its failure
    /// as the reply "unavailable" (7): the player may exist there, so never "no such user".
    pub(super) fn ask_legacy(&self, username: &str) -> Result<Known, Box<Reply>> {
        let Some(legacy) = &self.legacy else {
            return Ok(Known::Unknown);
        };
        match legacy.lookup(username) {
            Ok(known) => {
                self.metrics.legacy_lookup(match known {
                    Known::Unknown => LegacyOutcome::Unknown,
                    Known::Password(_) => LegacyOutcome::Known,
                });
                Ok(known)
            }
            Err(e) => {
                self.metrics.legacy_lookup(LegacyOutcome::Failed);
                tracing::warn!(error = %e, "old account server unavailable");
                Err(Box::new(Reply::unavailable(
                    "old account store unavailable, retry later",
                )))
            }
        }
    }

    /// A login (or password change) of a name the old account server may know: if it does
    /// and the password is its, the account moves here (argon2id; the old server is never
    /// asked about it again) and the player is logged in.
    pub(super) fn migrate(&self, m: Migrate, memory: &mut Memory) -> Reply {
        let hide = self.options.hide_user_existence;
        let plain = match self.ask_legacy(&m.username) {
            Err(reply) => return *reply,
            // Unknown in both: hidden, a wrong password for a name with no account.
            Ok(Known::Unknown) if hide => {
                let _ = self.verify(&m.password, &self.dummy_hash, memory);
                return self.count_failure(&m.username, m.origin, &m.password, false);
            }
            Ok(Known::Unknown) => {
                // Counted as account-db would have counted it: the address only.
                let failures = self.options.throttle.failures();
                return match self.accounts.failed(None, m.origin, &failures) {
                    Ok(_) => Reply::no_such_user(),
                    Err(e) => store_unavailable(&e, &self.metrics),
                };
            }
            Ok(Known::Password(plain)) => plain,
        };
        if !legacy::matches(&m.password, &plain) {
            if let Some(reply) = self.name_conflict(&m.typed, &m.username, &m.password, true) {
                return reply;
            }
            if hide {
                // As long as an unknown name's answer takes.
                let _ = self.verify(&m.password, &self.dummy_hash, memory);
            }
            let weak = !self.options.rules.password_ok(&plain);
            return self.count_failure(&m.username, m.origin, &m.password, weak);
        }
        let new = m.new_password.as_deref().unwrap_or(&m.password);
        let hash = match self.hash_password(new, memory) {
            Ok(hash) => hash,
            Err(e) => return internal_error(&e),
        };
        let moved = match &m.reserved {
            Some(reserved) => self
                .accounts
                .update_hash(&reserved.username, RESERVED_HASH, &hash)
                .map(|updated| match updated {
                    true => Created::New,
                    false => Created::Exists,
                }),
            None => self
                .accounts
                .create(&Account::new(&m.username, &hash), &random_token()),
        };
        let account = match moved.and_then(|moved| Ok((moved, self.accounts.find(&m.username)?))) {
            Err(e) => return store_unavailable(&e, &self.metrics),
            Ok((_, None)) => return Reply::unavailable("account store changed, retry later"),
            Ok((Created::New, Some(account))) => {
                self.metrics.legacy_migrated.inc();
                tracing::info!(user = %account.username, id = account.id, "account moved from the old account server");
                account
            }
            // Moved meanwhile by a concurrent login of the same player: log in against it.
            Ok((Created::Exists, Some(account))) => {
                match self.verify(&m.password, &account.hash, memory) {
                    Ok(Some(_)) => account,
                    Ok(None) => return Reply::wrong_password(),
                    Err(e) => return internal_error(&e),
                }
            }
        };
        if let Err(e) = self.accounts.succeeded(
            &account.username,
            m.origin,
            self.options.hide_user_existence,
        ) {
            tracing::warn!(user = %account.username, error = %e, "cannot record a successful login");
        }
        if let Some(ban) = banned(&account, self.options.clock.now_ms()) {
            return Reply::banned(ban.until_ms, &ban.reason);
        }
        let (token, exp) = self.new_session(&account, m.looked_up, self.options.clock.now_ms());
        match m.new_password {
            Some(_) => Reply::done().with_token(token, exp),
            None => Reply::logged_in(account.username, account.id).with_token(token, exp),
        }
    }
}
