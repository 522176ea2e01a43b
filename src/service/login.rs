//! A login, and the password check a password change shares with it: the lookup, the
//! verification (a cheap one by the worker, else on a hash thread), throttling's counts, a
//! re-hash of a weak hash, and a wrong password typed in another case than its account's.

use super::steps::*;
use super::*;
use crate::accountdb::store::Account;
use crate::auth::names::{self, normalize_password};
use crate::auth::password::{self, HashError, Memory};
use crate::legacy::{Known, RESERVED_HASH};
use crate::protocol::accountdb::{DbRequest, Login};
use crate::protocol::gateway::{Op, Reply, SupportReason};
use crate::throttle::{Origin, Unknown};
use std::time::Duration;

impl Service {
    /// A login's lookup (also of a password change's old password): what to ask the store, or
    /// the answer reached without it.
    pub(super) fn begin_lookup(
        &self,
        username: String,
        password: String,
        origin: Option<Origin>,
        new_password: Option<String>,
    ) -> Begun {
        let failures = self.options.throttle.failures();
        // Today's name and password rules bind registrations only: accounts from the old
        // system (imported, or moved on their first login) may break them and still log in.
        // So only a name no account can have (longer than any, or with control characters) is
        // answered without a lookup; it costs the address, never an account: one round trip
        // with an address, none without.
        if !names::could_name_an_account(&username) {
            if origin.is_some() {
                match self.accounts.failed(None, origin, &failures) {
                    Ok(Some(wait)) => return Begun::Step(self.throttled(wait)),
                    Ok(None) => {}
                    Err(e) => return Begun::Step(Step::Done(store_unavailable(&e, &self.metrics))),
                }
            }
            return Begun::Step(match self.options.hide_user_existence {
                true => Step::Hash(HashTask(Task::Pretend {
                    op: op_of(&new_password),
                    password,
                    failure: None,
                    _turn: None,
                })),
                false => Step::Done(Reply::no_such_user()),
            });
        }
        // A few attempts at a time per name on this login-server, so that a burst of
        // concurrent guesses meets the lock its first failures set instead of all passing the
        // lookup before any is counted.
        let Some(turn) = self.verifying.take(&username) else {
            return Begun::Step(self.throttled(Duration::from_secs(1)));
        };
        let unknown = match (&self.legacy, self.options.hide_user_existence) {
            // Counted once the old server has answered; or, hidden, after the verification,
            // as a wrong password is: the same round trips, and the same rule for which
            // guesses count against the name.
            (Some(_), _) | (None, true) => Unknown::Nothing,
            (None, false) => Unknown::Address,
        };
        Begun::Asking(Asking {
            request: DbRequest::Login {
                username: username.clone(),
                origin,
                failures,
                unknown,
            },
            then: Then::Lookup(Pending {
                username,
                password,
                origin,
                new_password,
                turn,
            }),
        })
    }

    /// What a login's lookup came to: the password to verify, or the answer without it.
    pub(super) fn looked_up(&self, pending: Pending, login: Login) -> Step {
        let migrate = |pending: Pending, reserved: Option<Account>| {
            Step::Hash(HashTask(Task::Migrate(Migrate {
                username: reserved
                    .as_ref()
                    .map_or_else(|| pending.username.clone(), |a| a.username.clone()),
                typed: pending.username,
                password: pending.password,
                origin: pending.origin,
                new_password: pending.new_password,
                reserved,
                looked_up: self.options.clock.now_ms(),
                _turn: pending.turn,
            })))
        };
        match login {
            Login::Locked(wait) => self.throttled(wait),
            Login::Open { account: None, .. } if self.legacy.is_some() => migrate(pending, None),
            Login::Open {
                account: Some(account),
                ..
            } if account.hash == RESERVED_HASH => migrate(pending, Some(account)),
            // The turn is held as for a real account, so that neither the time nor a
            // concurrent attempt tells them apart.
            Login::Open { account: None, .. } if self.options.hide_user_existence => {
                Step::Hash(HashTask(Task::Pretend {
                    op: op_of(&pending.new_password),
                    password: pending.password,
                    failure: Some((pending.username, pending.origin)),
                    _turn: Some(pending.turn),
                }))
            }
            Login::Open { account: None, .. } => Step::Done(Reply::no_such_user()),
            Login::Open {
                account: Some(account),
                settled,
            } => {
                let found = Verification {
                    account,
                    typed: pending.username,
                    password: pending.password,
                    origin: pending.origin,
                    settled,
                    looked_up: self.options.clock.now_ms(),
                    _turn: pending.turn,
                };
                Step::Hash(HashTask(match pending.new_password {
                    None => Task::Verify(found),
                    Some(new_password) => Task::ChangePassword {
                        found,
                        new_password,
                    },
                }))
            }
        }
    }

    /// A login's verification, and the session it leads to.
    pub(super) fn log_in(&self, found: Verification, memory: &mut Memory) -> Finish {
        let rehash = match self.check_password(&found, memory) {
            Ok(rehash) => rehash,
            Err(refused) => return refused.finish(found, Op::Login),
        };
        if let Some(ban) = banned(&found.account, self.options.clock.now_ms()) {
            return Finish::Reply(Reply::banned(ban.until_ms, &ban.reason));
        }
        if rehash {
            self.upgrade(&found.account, &found.password, memory);
        }
        // The session began when the password was looked up: a password change
        // committed while it was being verified voids it.
        let (token, exp) =
            self.new_session(&found.account, found.looked_up, self.options.clock.now_ms());
        let Verification { account, .. } = found;
        Finish::Reply(Reply::logged_in(account.username, account.id).with_token(token, exp))
    }

    /// A password change: the old password verified as a login's, then the new one hashed and
    /// stored with every older session voided.
    pub(super) fn change_password(
        &self,
        found: Verification,
        new_password: &str,
        memory: &mut Memory,
    ) -> Finish {
        if let Err(refused) = self.check_password(&found, memory) {
            return refused.finish(found, Op::ChangePassword);
        }
        Finish::Reply(self.set_password(&found, new_password, memory))
    }

    /// A password change's new password, once the old one is verified: hashed and stored, every
    /// older session voided, a new one begun.
    pub(super) fn set_password(
        &self,
        found: &Verification,
        new_password: &str,
        memory: &mut Memory,
    ) -> Reply {
        if let Some(ban) = banned(&found.account, self.options.clock.now_ms()) {
            return Reply::banned(ban.until_ms, &ban.reason);
        }
        let hash = match self.hash_password(new_password, memory) {
            Ok(hash) => hash,
            Err(e) => return internal_error(&e),
        };
        // Every session begun before now is void, this one's begins now: one instant,
        // so the new session stands and every older one falls.
        let now = self.options.clock.now_ms();
        match self
            .accounts
            .void_sessions(found.account.id, now, Some(&hash))
        {
            Ok(true) => {
                let (token, exp) = self.new_session(&found.account, now, now);
                Reply::done().with_token(token, exp)
            }
            // Deleted, or banned, since it was looked up: the next attempt is told.
            Ok(false) => Reply::unavailable("the account changed meanwhile, retry"),
            Err(e) => store_unavailable(&e, &self.metrics),
        }
    }

    /// An unknown user under `--hide-user-existence`: a real verification against the dummy
    /// hash, the failure counted, "wrong password".
    pub(super) fn pretend(
        &self,
        password: &str,
        failure: Option<(String, Option<Origin>)>,
        memory: &mut Memory,
    ) -> Reply {
        // The result is always "no"; the work is what makes it indistinguishable (the
        // same verifications and store requests as a wrong password for a real
        // account).
        let _ = self.verify(password, &self.dummy_hash, memory);
        match failure {
            Some((username, origin)) => self.count_failure(&username, origin, password, false),
            None => Reply::wrong_password(),
        }
    }

    /// Verify a login's password, and tell throttling how it went: `Ok(rehash)` when it
    /// matches (`rehash`: its hash should be made again), else the reply.
    pub(super) fn check_password(
        &self,
        found: &Verification,
        memory: &mut Memory,
    ) -> Result<bool, Refused> {
        let Verification {
            account,
            typed,
            password,
            origin,
            settled,
            ..
        } = found;
        match self.verify(password, &account.hash, memory) {
            Ok(Some(rehash)) => {
                if !settled {
                    if let Err(e) = self.accounts.succeeded(
                        &account.username,
                        *origin,
                        self.options.hide_user_existence,
                    ) {
                        tracing::warn!(user = %account.username, error = %e, "cannot record a successful login");
                    }
                }
                // A costly hash too is replaced: its cost is paid once.
                let stored = &account.hash;
                Ok(rehash || self.hasher.is_weaker(stored) || self.hasher.is_costly(stored))
            }
            Ok(None) => {
                if let Some(reply) = self.name_conflict(typed, &account.username, password, false) {
                    return Err(Refused::Reply(Box::new(reply)));
                }
                // Typed in another case than the account's, under --legacy-db: the old server
                // may hold the spelling typed. It is asked on its own stage, before the
                // failure is counted: the task goes on there.
                let other_case = self.legacy.is_some() && *typed != account.username;
                if other_case
                    && self
                        .spelling_asks
                        .may_ask(typed, self.options.clock.now_ms())
                {
                    return Err(Refused::AskOld);
                }
                if self.options.hide_user_existence && self.hasher.is_weaker(&account.hash) {
                    // A cheaper old hash verifies faster than an unknown name's dummy: make
                    // up the difference, so the time does not tell the account exists.
                    let _ = self.hasher.verify(password, &self.dummy_hash, memory);
                }
                Err(Refused::Reply(Box::new(self.count_wrong(found))))
            }
            Err(e) => Err(Refused::Reply(Box::new(internal_error(&e)))),
        }
    }

    /// Count a wrong password for the account `found` names: the reply, as
    /// [`count_failure`](Self::count_failure) gives it.
    pub(super) fn count_wrong(&self, found: &Verification) -> Reply {
        let Verification {
            account,
            password,
            origin,
            ..
        } = found;
        let weak = password::is_marked_weak(&account.hash);
        self.count_failure(&account.username, *origin, password, weak)
    }

    /// A login (or password change) whose password failed against an account holding the name
    /// in another case than typed: "contact support" if the old server holds the spelling
    /// typed with this password, else a wrong password, counted as it would have been.
    pub(super) fn conflict(&self, found: Verification) -> Reply {
        let holder = &found.account.username;
        match self.name_conflict(&found.typed, holder, &found.password, true) {
            Some(reply) => reply,
            None => self.count_wrong(&found),
        }
    }

    /// A login that failed against the account spelled `holder`, typed as `typed`: "contact
    /// support" (13) if the old server holds `typed` exactly, with this `password`: two old
    /// players whose names differ only in case, one of whom moved here first. Neither the
    /// failure is counted against the holder nor the player told "wrong password" forever;
    /// the operator is told (a log line, a metric) and resolves it with `account-db admin
    /// rename`. The old server is asked only where `may_ask` (on the old-server stage), at
    /// most once per spelling per `--throttle-window` ([`SpellingAsks`]); within the window a
    /// password it confirmed is answered alike without asking. `None`: the failure stands.
    pub(super) fn name_conflict(
        &self,
        typed: &str,
        holder: &str,
        password: &str,
        may_ask: bool,
    ) -> Option<Reply> {
        if self.legacy.is_none() || typed == holder {
            return None;
        }
        let (asks, now) = (&self.spelling_asks, self.options.clock.now_ms());
        let confirmed = asks.confirmed(typed, password, now)
            || (may_ask
                && asks.claim(typed, now)
                && match self.ask_legacy(typed) {
                    // Its password is remembered (as a keyed digest) whatever was typed, so
                    // that one wrong guess in the window cannot hide the conflict from the
                    // real player, who is then answered without asking again.
                    Ok(Known::Password(plain)) => {
                        asks.confirm(typed, &plain, now);
                        asks.confirmed(typed, password, now)
                    }
                    _ => false,
                });
        if confirmed && asks.first_report(typed, now) {
            self.metrics.legacy_name_conflicts.inc();
            tracing::warn!(
                typed = ?typed,
                holder = ?holder,
                "name conflict: the old account server holds this spelling with the password \
                 given, an account here holds the name in another case; the player is told to \
                 contact support (resolve with `account-db admin rename`)"
            );
        }
        confirmed.then(|| Reply::contact_support(SupportReason::NameConflict))
    }

    /// Count a wrong `password` for `username` from `origin`. A guess that breaks today's rules
    /// cannot be the password of an account made under them: it costs the address only, so
    /// short guesses cannot lock a victim out. An account from the old system (`weak`: its hash
    /// is bcrypt or marked weak, or the old server's password breaks the rules itself) may
    /// have such a password: there every guess counts against it. Under `--hide-user-existence` every
    /// guess counts against every name: a rule that depends on the account would tell that
    /// it exists. The reply: a wrong password once counted; when the failure cannot be counted
    /// (the store failed, or failed over, and the count's outcome is unknown), code 7: a
    /// verdict the throttle did not see would be a free guess.
    pub(super) fn count_failure(
        &self,
        username: &str,
        origin: Option<Origin>,
        password: &str,
        weak: bool,
    ) -> Reply {
        let failures = self.options.throttle.failures();
        let counts =
            self.options.hide_user_existence || weak || self.options.rules.password_ok(password);
        let name = counts.then_some(username);
        match self.accounts.failed(name, origin, &failures) {
            Ok(_) => Reply::wrong_password(),
            Err(e) => store_unavailable(&e, &self.metrics),
        }
    }

    /// Verify `password` (in NFC) against `stored`. `Some(rehash)` when it matches; `rehash`:
    /// it matched only as typed, not normalized (a hash made before passwords were
    /// normalized), so it should be hashed again.
    pub(super) fn verify(
        &self,
        password: &str,
        stored: &str,
        memory: &mut Memory,
    ) -> Result<Option<bool>, HashError> {
        let normalized = normalize_password(password);
        if self.hasher.verify(&normalized, stored, memory)? {
            return Ok(Some(false));
        }
        if normalized != password && self.hasher.verify(password, stored, memory)? {
            return Ok(Some(true));
        }
        Ok(None)
    }

    /// `password`'s hash (of its NFC form), marked weak when it breaks today's rules (an old
    /// account's password, moved or re-hashed: see [`password::is_marked_weak`]).
    pub(super) fn hash_password(
        &self,
        password: &str,
        memory: &mut Memory,
    ) -> Result<String, HashError> {
        let normalized = normalize_password(password);
        match self.options.rules.password_ok(password) {
            true => self.hasher.hash(&normalized, memory),
            false => self.hasher.hash_weak(&normalized, memory),
        }
    }

    /// Re-hash a password (normalized) whose stored hash is weaker than the current parameters
    /// or was made from the password as typed. A failure only means the upgrade waits for the
    /// next login.
    /// Only over the hash the login verified: a password change that came in between wins.
    pub(super) fn upgrade(&self, account: &Account, password: &str, memory: &mut Memory) {
        let username = &account.username;
        let result = self
            .hash_password(password, memory)
            .map_err(|e| e.to_string())
            .and_then(|hash| {
                self.accounts
                    .update_hash(username, &account.hash, &hash)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(true) => tracing::info!(user = %username, "upgraded a weak password hash"),
            Ok(false) => tracing::info!(user = %username, "not upgraded: the password changed"),
            Err(error) => tracing::warn!(user = %username, %error, "cannot upgrade a weak hash"),
        }
    }
}
