//! `account-db admin`: an operator's console over the store (`--data` or `--store`), usable
//! while account-db serves it. Each change is logged.

use crate::accountdb::store::schema::{self, CodeVersion, CODE_VERSION, CONTRACTIONS};
use crate::accountdb::store::{Account, Ban, Renamed, Store, StoreError};
use crate::accountdb::throttling;

/// The longest ban reason, in bytes: it goes out in replies.
const MAX_REASON: usize = 200;

/// The end of a ban for good.
const FOR_GOOD: i64 = Ban::FOR_GOOD;
use crate::auth::names::{is_invisible, normalize_password, Rules};
use crate::auth::password::{HashError, HashParams, Hasher, Memory};
use crate::clock::now_ms;
use crate::legacy::RESERVED_HASH;
use crate::throttle;
use std::fmt::Write;

/// What an admin command can be asked. Wherever a command takes a NAME, `#ID` names the
/// account with that id (a guest, which has no name, is named so only).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Admin {
    /// Show an account: spelling, id, created, hash parameters, lock, last successful login,
    /// devices.
    Show { name: String },
    /// Clear an account's failed logins and lock, for every login-server.
    Unlock { name: String },
    /// Set an account's password (asked without echo unless --password) and revoke every
    /// session of it.
    SetPassword {
        name: String,
        /// The new password; without it, it is asked for without echo.
        #[arg(long)]
        password: Option<String>,
        /// argon2id parameters: memory KiB, iterations, lanes. Use login-server's.
        #[arg(long, value_name = "M,T,P", default_value = "19456,2,1")]
        hash_params: HashParams,
    },
    /// Ban an account: its logins are answered "banned" (12) with when it ends and why, and
    /// every session of it is revoked.
    Ban {
        name: String,
        /// Seconds the ban lasts. Defaults to for good.
        #[arg(long = "for", value_name = "SECS", value_parser = crate::config::seconds)]
        duration: Option<std::time::Duration>,
        /// Why, in at most 200 bytes: the player is told. Defaults to none.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift an account's ban.
    Unban { name: String },
    /// Rename an account: to resolve a name conflict (two old players whose names differ only
    /// in case: docs/migration.md), or at a player's request. Its id, password, ban and
    /// sessions stay (a session's token carries the new name from its next refresh); its
    /// failed logins, lock and familiar addresses move with it. The old name is free from then
    /// on: to register, or for its player on the old server to move.
    Rename {
        old: String,
        /// Checked against the name rules (pass login-server's --username-chars).
        new: String,
        #[command(flatten)]
        rules: Rules,
    },
    /// Delete an account: its name may be registered again, and its sessions are void.
    Delete { name: String },
    /// List accounts whose names begin with --prefix (without regard to case), in order; with
    /// --costly, every account whose stored hash is costly at --hash-params (more than 4x
    /// their memory or work, or bcrypt above cost 12), in id order, with its parameters.
    List {
        /// The beginning of the names listed, without regard to case. Defaults to none: every
        /// account.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Accounts listed at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only accounts whose logins go to the costly stage (see docs/operations.md); they are
        /// re-hashed at the next successful login, or by set-password.
        #[arg(long)]
        costly: bool,
        /// Only accounts that look like another (the same skeleton), registered before the
        /// rule that refuses them (Turkish İ and ı): each with its look-alikes, one group a
        /// paragraph. Both keep logging in; delete or ban one to resolve it.
        #[arg(long, conflicts_with = "costly")]
        conflicts: bool,
        /// argon2id parameters costliness is judged against: login-server's --hash-params.
        #[arg(long, value_name = "M,T,P", default_value = "19456,2,1")]
        hash_params: HashParams,
    },
    /// Count accounts.
    Count,
    /// Delete the guests (accounts made by a device's first login, never claimed) none of
    /// whose devices logged in for --idle days, with their devices; their sessions end.
    PruneGuests {
        /// Days without a login of any of its devices.
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
        idle: u32,
        /// Only count them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Record that every name of the old server (--legacy-db) is in the store, imported
    /// before this build recorded it (`import --complete` records it itself): registration
    /// under --legacy-db opens. Run it only once they all are.
    LegacyNamesImported,
    /// The schema across releases (docs/operations.md, "Upgrades"): `show` where it stands
    /// and which account-dbs run on it; `contract` removes what older releases still read.
    Schema {
        #[command(subcommand)]
        step: SchemaStep,
    },
}

/// What `admin schema` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SchemaStep {
    /// Where the schema stands, what contraction is pending, and the account-dbs that
    /// recorded themselves (code version, seconds since last seen).
    Show,
    /// Run the pending contractions, in order. Each is refused while an account-db older
    /// than the code version it needs recorded itself in the last 60 s; afterwards builds
    /// older than that no longer start on the store. Fails when none is pending.
    Contract,
}

/// What an admin command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// It made the change (or read what was asked): print this on stdout.
    Done(String),
    /// The state asked for held already, so nothing changed: say this on stderr (the command
    /// still succeeds).
    Already(String),
}

/// Why an admin command failed: it did not make the change asked for.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No account has that name, in any case.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// `rename` to a name a registration could not take (see `--username-chars`).
    #[error("{0:?} breaks the name rules: letters, ASCII digits, _ - . within --username-chars, one script")]
    InvalidName(String),
    /// `rename` to a name another account holds, or a look-alike of it.
    #[error("{0:?} is held by the account {1:?} (the same name, or one that looks alike)")]
    NameTaken(String, String),
    /// `set-password` or `rename` of a guest (`#ID`): it has no name nor password to change;
    /// the player claims one (the gateway's `claim`).
    #[error("#{0} is a guest: it has no name or password to change (its player claims one)")]
    Guest(u64),
    /// `set-password` without `--password`, and no terminal to ask on.
    #[error("no password: pass --password (there is no terminal to ask on)")]
    NoPassword,
    /// `ban --reason` longer than the player may be sent.
    #[error("a ban reason is at most {MAX_REASON} bytes (this one is {0})")]
    ReasonTooLong(usize),
    /// `ban --reason` with a control character (a newline, say), a line or paragraph
    /// separator, or a mark that reorders text (U+202E, say): it would be sent to the player
    /// and written into logs as it is.
    #[error(
        "a ban reason has no control characters (newlines, tabs, escapes), line separators, \
         direction marks or other invisible characters"
    )]
    ReasonControl,
    /// `ban --for 0`: a ban that ends as it begins.
    #[error("a ban lasts more than 0 s (leave --for out to ban for good)")]
    NoTime,
    /// `schema contract` while account-dbs older than the contraction needs were seen in the
    /// last 60 s (named here): they still read what it would remove.
    #[error(
        "contraction {step} needs every account-db at {needs} or later, and these older ones \
         recorded themselves in the last 60 s: {peers}; upgrade them first"
    )]
    OlderPeers {
        step: usize,
        needs: String,
        peers: String,
    },
    /// `schema contract` while no account-db at the contraction's code version recorded itself
    /// in the last 60 s: the store may be served by releases too old to record themselves.
    #[error(
        "contraction {step} needs an account-db at {needs} or later serving the store, and none \
         recorded itself in the last 60 s: releases before 0.3.0 record nothing, so old ones may \
         still serve it; upgrade every account-db first"
    )]
    NoNewPeer { step: usize, needs: String },
    /// `schema contract` with no contraction pending: nothing was changed.
    #[error("no contraction is pending: the schema is contracted as far as this build knows")]
    NothingToContract,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing the new password failed.
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// The account `name` names: `#ID` by its id (a guest too), else by name in any case.
fn resolve(store: &dyn Store, name: &str) -> Result<Account, AdminError> {
    let by_id = name.strip_prefix('#').and_then(|id| id.parse::<u64>().ok());
    let found = match by_id {
        Some(id) => store.details_by_id(id)?.map(|d| d.account),
        None => store.find(name)?,
    };
    found.ok_or_else(|| AdminError::NoSuchAccount(name.to_string()))
}

/// How the store's calls by name name `account`: its name, or `#ID` for a guest.
fn key(account: &Account) -> String {
    match account.is_guest() {
        true => format!("#{}", account.id),
        false => account.username.clone(),
    }
}

/// Run `admin` against `store`; what to print. `password` is the new password of
/// `set-password` when it was not given as a flag.
pub fn run(
    store: &dyn Store,
    admin: &Admin,
    password: impl FnOnce() -> Option<String>,
) -> Result<Reply, AdminError> {
    let missing = |name: &str| AdminError::NoSuchAccount(name.to_string());
    let named = |name: &str| -> Result<Account, AdminError> {
        let account = resolve(store, name)?;
        match account.is_guest() {
            true => Err(AdminError::Guest(account.id)),
            false => Ok(account),
        }
    };
    match admin {
        Admin::Show { name } => show(store, name).map(Reply::Done),
        Admin::Schema {
            step: SchemaStep::Show,
        } => show_schema(store).map(Reply::Done),
        Admin::Schema {
            step: SchemaStep::Contract,
        } => contract(store).map(Reply::Done),
        Admin::Unlock { name } => {
            let account = named(name)?;
            let record = throttling::record(store, &account.username)?;
            if record.locked(now_ms()).is_none() && record.count == 0 {
                return Ok(Reply::Already(format!(
                    "{} is not locked and has no failed logins: nothing to do\n",
                    account.username
                )));
            }
            throttling::unlock(store, &account.username)?;
            tracing::info!(user = ?account.username, "admin: unlocked");
            Ok(Reply::Done(format!("unlocked {}\n", account.username)))
        }
        Admin::SetPassword {
            name,
            password: given,
            hash_params,
        } => {
            let account = named(name)?;
            let password = given
                .clone()
                .or_else(password)
                .ok_or(AdminError::NoPassword)?;
            let (hasher, memory) = (Hasher::new(*hash_params)?, &mut Memory::default());
            let normalized = normalize_password(&password);
            // One that today's (default) rules refuse is marked so, as an old account's is.
            let hash = match Rules::default().password_ok(&password) {
                true => hasher.hash(&normalized, memory)?,
                false => hasher.hash_weak(&normalized, memory)?,
            };
            // A banned account refuses a new hash with its sessions voided (a banned player
            // must not change the password into a session); an operator's is set apart.
            if !store.void_sessions(account.id, now_ms(), Some(&hash))? {
                if !store.update_hash(&account.username, &account.hash, &hash)? {
                    return Err(missing(name)); // deleted, or its password changed, meanwhile
                }
                store.void_sessions(account.id, now_ms(), None)?;
            }
            tracing::info!(user = ?account.username, "admin: password set, sessions revoked");
            Ok(Reply::Done(format!(
                "set the password of {}; its sessions are revoked\n",
                account.username
            )))
        }
        Admin::Ban {
            name,
            duration,
            reason,
        } => {
            if reason.len() > MAX_REASON {
                return Err(AdminError::ReasonTooLong(reason.len()));
            }
            if reason.chars().any(is_invisible) {
                return Err(AdminError::ReasonControl);
            }
            if duration.is_some_and(|d| d.is_zero()) {
                return Err(AdminError::NoTime);
            }
            let account = resolve(store, name)?;
            let until_ms = duration.map_or(FOR_GOOD, |d| {
                now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(FOR_GOOD))
            });
            let ban = Ban {
                until_ms,
                reason: reason.clone(),
            };
            store.set_ban(&key(&account), Some(&ban))?;
            tracing::info!(user = ?account.username, id = account.id, until_ms, ?reason, "admin: banned, sessions revoked");
            Ok(Reply::Done(format!(
                "banned {} until {until_ms} (unix ms)\n",
                key(&account)
            )))
        }
        Admin::Unban { name } => {
            let account = resolve(store, name)?;
            if !account.ban.as_ref().is_some_and(|b| b.until_ms > now_ms()) {
                return Ok(Reply::Already(format!(
                    "{} is not banned: nothing to do\n",
                    key(&account)
                )));
            }
            store.set_ban(&key(&account), None)?;
            tracing::info!(user = ?account.username, id = account.id, "admin: unbanned");
            Ok(Reply::Done(format!("unbanned {}\n", key(&account))))
        }
        Admin::Rename { old, new, rules } => {
            let account = named(old)?;
            rename(store, &account.username, new, rules)
        }
        Admin::Delete { name } => {
            let account = resolve(store, name)?;
            if !store.delete(&key(&account))? {
                return Err(missing(name)); // deleted meanwhile
            }
            tracing::info!(user = ?account.username, id = account.id, "admin: deleted");
            Ok(Reply::Done(format!(
                "deleted {} (id {})\n",
                key(&account),
                account.id
            )))
        }
        Admin::PruneGuests { idle, dry_run } => {
            let before = now_ms().saturating_sub(i64::from(*idle).saturating_mul(86_400_000));
            let n = store.prune_guests(before, *dry_run)?;
            if *dry_run {
                return Ok(Reply::Done(format!(
                    "{n} guests idle for {idle} days or more would be deleted\n"
                )));
            }
            if n == 0 {
                return Ok(Reply::Already(format!(
                    "no guest is idle for {idle} days or more: nothing to do\n"
                )));
            }
            tracing::info!(guests = n, idle_days = idle, "admin: idle guests deleted");
            Ok(Reply::Done(format!(
                "deleted {n} guests idle for {idle} days or more, with their devices\n"
            )))
        }
        Admin::List {
            costly: true,
            limit,
            hash_params,
            ..
        } => costly(store, *limit, *hash_params).map(Reply::Done),
        Admin::List {
            conflicts: true,
            limit,
            ..
        } => {
            let mut out = String::new();
            let mut last: Option<String> = None;
            for (skeleton, account) in store.look_alikes(*limit)? {
                if last.as_ref().is_some_and(|l| *l != skeleton) {
                    out.push('\n');
                }
                let _ = writeln!(out, "{}\t{}", account.id, account.username);
                last = Some(skeleton);
            }
            Ok(Reply::Done(out))
        }
        Admin::List { prefix, limit, .. } => {
            let mut out = String::new();
            for Account { id, username, .. } in store.list(prefix, *limit)? {
                let _ = writeln!(out, "{id}\t{username}");
            }
            Ok(Reply::Done(out))
        }
        Admin::Count => Ok(Reply::Done(format!("{}\n", store.count()?))),
        Admin::LegacyNamesImported => {
            let how = format!("account-db admin legacy-names-imported at {}", now_ms());
            if !store.mark_legacy_names_imported(&how)? {
                return Ok(Reply::Already(
                    "the store records already that the old server's names are imported\n".into(),
                ));
            }
            tracing::info!("admin: the old server's names recorded as imported");
            Ok(Reply::Done(
                "recorded that the old server's names are imported: registration under \
                 --legacy-db is open\n"
                    .into(),
            ))
        }
    }
}

/// `admin rename`: the account, then its throttle record.
fn rename(store: &dyn Store, old: &str, new: &str, rules: &Rules) -> Result<Reply, AdminError> {
    if !rules.username_ok(new) {
        return Err(AdminError::InvalidName(new.to_string()));
    }
    let from = match store.rename(old, new)? {
        Renamed::NoSuchAccount => return Err(AdminError::NoSuchAccount(old.to_string())),
        Renamed::Taken(holder) => return Err(AdminError::NameTaken(new.to_string(), holder)),
        Renamed::From(from) if from == new => {
            return Ok(Reply::Already(format!(
                "{new} is named so already: nothing to do\n"
            )));
        }
        Renamed::From(from) => from,
    };
    // The lock and the failures follow the account, and its old spelling starts afresh. A
    // failure here leaves the account renamed and its record under the old name.
    let keys = [throttle::account_key(&from), throttle::account_key(new)];
    if keys[0] != keys[1] {
        store.update_records(&keys, now_ms(), &mut |records| {
            if let [old, new] = records {
                *new = std::mem::take(old);
            }
        })?;
    }
    tracing::info!(from = ?from, to = ?new, "admin: renamed");
    Ok(Reply::Done(format!(
        "renamed {from} to {new}; the name {from} is free\n"
    )))
}

/// A stored hash without its salt and digest: `$argon2id$v=19$m=..,t=..,p=..`, or `$2b$12`.
fn parameters(hash: &str) -> &str {
    if crate::auth::password::is_bcrypt(hash) {
        return hash.get(..6).unwrap_or("?");
    }
    hash.rsplitn(3, '$').nth(2).unwrap_or("?")
}

/// Accounts scanned per page by [`costly`].
const SCAN_PAGE: u32 = 1000;

/// Up to `limit` accounts whose stored hash is costly at `params`, in id order: id, name and
/// the hash's parameters, a line each.
fn costly(store: &dyn Store, limit: u32, params: HashParams) -> Result<String, AdminError> {
    let hasher = Hasher::new(params)?;
    let (mut out, mut found, mut after) = (String::new(), 0, 0);
    loop {
        let page = store.accounts_after(after, SCAN_PAGE)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.id;
        for account in page.iter().filter(|a| hasher.is_costly(&a.hash)) {
            if found == limit {
                return Ok(out);
            }
            found += 1;
            let cost = parameters(&account.hash);
            let _ = writeln!(out, "{}\t{}\t{cost}", account.id, account.username);
        }
    }
}

fn show(store: &dyn Store, name: &str) -> Result<String, AdminError> {
    let by_id = name.strip_prefix('#').and_then(|id| id.parse::<u64>().ok());
    let details = match by_id {
        Some(id) => store.details_by_id(id)?,
        None => store.details(name)?,
    };
    let details = details.ok_or_else(|| AdminError::NoSuchAccount(name.to_string()))?;
    let account = &details.account;
    let record = match account.is_guest() {
        true => throttle::Record::default(),
        false => throttling::record(store, &account.username)?,
    };
    let now = now_ms();
    let hash = match account.hash.as_str() {
        RESERVED_HASH => "none: reserved for its owner on the old server".to_string(),
        "" => "none".to_string(),
        hash => parameters(hash).to_string(),
    };
    let mut out = String::new();
    let _ = match account.is_guest() {
        true => writeln!(out, "name\tnone: a guest (its devices log in)"),
        false => writeln!(out, "name\t{}", account.username),
    };
    let _ = writeln!(out, "id\t{}", account.id);
    let _ = writeln!(
        out,
        "created\t{}",
        utc(details.created_at.saturating_mul(1000))
    );
    let _ = writeln!(out, "hash\t{hash}");
    let _ = match record.locked(now) {
        Some(wait) => writeln!(out, "locked\tfor {} s more", wait.as_secs().max(1)),
        None => writeln!(out, "locked\tno ({} recent failures)", record.count),
    };
    let _ = match record.last_login() {
        Some(at) => writeln!(out, "last login\t{} (to the minute)", utc(at)),
        None => writeln!(out, "last login\tnone known"),
    };
    if let Some(last) = record.familiar.first() {
        let _ = writeln!(out, "last address\t{last}");
    }
    let _ = match details.sessions_after {
        0 => writeln!(out, "sessions\tnever voided"),
        after => writeln!(out, "sessions\tthose begun before {} are void", utc(after)),
    };
    let _ = match account.ban.as_ref().filter(|b| b.until_ms > now) {
        Some(ban) if ban.permanent() => {
            writeln!(out, "banned\tfor good: {}", ban.reason)
        }
        Some(ban) => writeln!(out, "banned\tuntil {}: {}", utc(ban.until_ms), ban.reason),
        None => writeln!(out, "banned\tno"),
    };
    let devices = store.devices(account.id)?;
    let _ = writeln!(out, "devices\t{}", devices.len());
    for device in devices {
        let _ = writeln!(
            out,
            "device\t{}\tlinked {}\tlast used {} (to the hour)",
            device.device_id,
            utc(device.linked_ms),
            utc(device.last_used_ms)
        );
    }
    Ok(out)
}

/// A time (unix milliseconds) as every admin output writes it: UTC, to the second
/// (`2026-12-04 20:57:58 UTC`); one past what a calendar holds as its milliseconds.
fn utc(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => format!("{ms} (unix ms)"),
    }
}

/// `admin schema show`.
fn show_schema(store: &dyn Store) -> Result<String, AdminError> {
    let state = store.schema_state()?;
    let mut out = format!(
        "code version {CODE_VERSION}\nexpansions done {}\ncontractions done {} of {} known\n\
         min code version {}\n",
        state.expanded,
        state.contracted,
        CONTRACTIONS.len(),
        state.min_code_version.as_deref().unwrap_or("none"),
    );
    for (i, step) in CONTRACTIONS.iter().enumerate().skip(state.contracted) {
        let _ = writeln!(
            out,
            "pending contraction {} (needs {}): {}",
            i + 1,
            step.min_code_version,
            step.what
        );
    }
    let now = now_ms();
    for peer in store.peers()? {
        let _ = writeln!(
            out,
            "peer {} {} seen {} s ago",
            peer.instance,
            peer.code_version,
            (now - peer.last_seen_ms).max(0) / 1000
        );
    }
    Ok(out)
}

/// `admin schema contract`: each pending contraction, in order, once no account-db older
/// than it needs was seen within [`PEER_WINDOW`](schema::PEER_WINDOW).
fn contract(store: &dyn Store) -> Result<String, AdminError> {
    let state = store.schema_state()?;
    if state.contracted >= CONTRACTIONS.len() {
        return Err(AdminError::NothingToContract);
    }
    let mut out = String::new();
    for (i, step) in CONTRACTIONS.iter().enumerate().skip(state.contracted) {
        let needs: CodeVersion = step
            .min_code_version
            .parse()
            .unwrap_or(CodeVersion(0, 0, 0));
        let peers = store.peers()?;
        // Releases before 0.3.0 record nothing: a store no new account-db serves is most
        // likely served by old ones still, which the contraction would stop from restarting.
        if schema::recent_peers_at_least(&peers, needs, now_ms()) == 0 {
            return Err(AdminError::NoNewPeer {
                step: i + 1,
                needs: step.min_code_version.into(),
            });
        }
        let older = schema::older_peers(&peers, needs, now_ms());
        if !older.is_empty() {
            let peers: Vec<String> = older
                .iter()
                .map(|p| format!("{} ({})", p.instance, p.code_version))
                .collect();
            return Err(AdminError::OlderPeers {
                step: i + 1,
                needs: step.min_code_version.into(),
                peers: peers.join(", "),
            });
        }
        if store.contract(i)? {
            tracing::info!(
                contraction = i + 1,
                min_code_version = step.min_code_version,
                "admin: schema contracted"
            );
            let _ = writeln!(
                out,
                "contraction {} done: {}; min code version {}",
                i + 1,
                step.what,
                step.min_code_version
            );
        }
    }
    if out.is_empty() {
        return Err(AdminError::NothingToContract);
    }
    Ok(out)
}
