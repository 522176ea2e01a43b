//! `account-db import FILE`: the old system's players, in bulk, into the store.
//!
//! JSON lines, one account each: `{"username":U,"password":P}` (a plaintext password, hashed
//! with argon2id here, on every core), `{"username":U,"hash":H}` (an argon2 PHC or bcrypt hash,
//! kept as it is: the first login verifies it and replaces it with the current argon2id), or
//! `{"username":U}` (a name reserved for its old owner, whose password only the old server
//! knows: see [`RESERVED_HASH`]). Names keep their spelling and are unique as registrations are
//! (without regard to case, look-alikes refused); today's name and password rules do not bind
//! old accounts. A bad line, a duplicate of an earlier line, or a look-alike of another
//! account's name is rejected with its line number, never half-written; a name an account here
//! holds already (its player moved, or someone registered it) is reported as held and skipped;
//! an account already imported is counted as present, so running the same import twice changes
//! nothing.

use crate::accountdb::store::{Account, Created, Store, StoreError};
use crate::auth::names::{fold, is_invisible, skeleton, Rules, MAX_NAME};
use crate::auth::password::{check_importable, is_bcrypt, Hasher, Memory};
use crate::legacy::RESERVED_HASH;
// The longest line read is the account-db protocol's (64 KiB): a longer one is rejected, and
// read no further than its end.
use crate::protocol::accountdb::MAX_LINE;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::BufRead;

/// Lines hashed together, on every core, and written together, in a few transactions.
const BATCH: usize = 1024;

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Accounts written.
    pub imported: u64,
    /// Accounts that were there already (an earlier run of the same import, say).
    pub present: u64,
    /// Lines skipped: their number (from 1) and why.
    pub rejected: Vec<(u64, String)>,
    /// Lines whose name an account here holds already, in some case (its player moved on a
    /// first login, or someone registered it): not imported, but the name is taken, so no
    /// look-alike of it can be. Their number and the account's spelling.
    pub held: Vec<(u64, String)>,
    /// Lines whose name an earlier line of the input has, in some case (the old server compared
    /// names exactly: `Dan` and `dan` were two players): not imported, the name stays the
    /// first's. Their number and the first's. The other player meets "contact support" (13)
    /// at login (docs/migration.md).
    pub duplicates: Vec<(u64, u64)>,
}

impl Summary {
    /// How many name lines were read: imported, present, held or duplicates. A complete import
    /// of none is no import.
    pub fn names(&self) -> u64 {
        let others = self.held.len() + self.duplicates.len();
        self.imported + self.present + others as u64
    }
}

/// How far an import got: lines read and written, and the bytes they took (a skipped long
/// line counts what was kept of it).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub lines: u64,
    pub bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    hash: Option<String>,
}

/// One line, read: its account, the plaintext still to hash in place of its hash.
struct Pending {
    number: u64,
    account: Account,
    plaintext: Option<String>,
    /// The account exists, reserved: its hash is filled in rather than created.
    reserved: bool,
}

/// The create id of an imported name: the same on every run, so a second run is idempotent.
fn request_id(username: &str) -> String {
    format!("import:{}", fold(username))
}

/// Read the next line of `input` into `line` (without its newline): `Some(true)` if whole,
/// `Some(false)` if it was longer than [`MAX_LINE`] (then `line` holds its start, and the rest
/// was skipped without being kept), `None` at the end.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    line.clear();
    let (mut seen, mut whole) = (false, true);
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(seen.then_some(whole));
        }
        seen = true;
        let (taken, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        if taken > room {
            whole = false;
        }
        line.extend_from_slice(&available[..taken.min(room)]);
        input.consume(taken + usize::from(ends));
        if ends {
            return Ok(Some(whole));
        }
    }
}

/// Read a line into an account to write, or say why not.
fn read_account(text: &str) -> Result<(Account, Option<String>), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not an account: {e}"))?;
    if line.username.is_empty() || line.username.len() > MAX_NAME {
        return Err(format!("a username is 1 to {MAX_NAME} bytes"));
    }
    if line.username.chars().any(char::is_control) {
        return Err("a username has no control characters".into());
    }
    if line
        .username
        .chars()
        .all(|c| c.is_whitespace() || is_invisible(c))
    {
        return Err("a username of nothing visible (white space, zero-width characters)".into());
    }
    match (line.password, line.hash) {
        (Some(_), Some(_)) => Err("a password or a hash, not both".into()),
        (Some(password), None) if password.trim().is_empty() => Err(
            "an empty (or whitespace-only) password: nobody could log in with it knowingly; \
             leave the password out to reserve the name for its old owner"
                .into(),
        ),
        (Some(password), None) => Ok((Account::new(&line.username, ""), Some(password))),
        (None, Some(hash)) if hash.starts_with("$argon2") || is_bcrypt(&hash) => {
            check_importable(&hash).map_err(|e| e.to_string())?;
            Ok((Account::new(&line.username, &hash), None))
        }
        (None, Some(_)) => Err("a hash is an argon2 PHC string or a bcrypt one".into()),
        (None, None) => Ok((Account::new(&line.username, RESERVED_HASH), None)),
    }
}

/// Import the accounts of `input` into `store`, hashing plaintext passwords with `hasher` on
/// `threads` threads; `progress` hears how far it got after each batch. Stops at the
/// first store error (what was written stays, and running again resumes).
pub fn import(
    store: &dyn Store,
    input: impl BufRead,
    hasher: &Hasher,
    threads: usize,
    mut progress: impl FnMut(Progress),
) -> Result<Summary, ImportError> {
    let mut summary = Summary::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut number = 0;
    let mut input = input;
    let mut bytes = Vec::new();
    let mut read = 0;
    while let Some(whole) = read_line(&mut input, &mut bytes).map_err(ImportError::Read)? {
        number += 1;
        read += bytes.len() as u64 + 1;
        if !whole {
            let why = format!("longer than {MAX_LINE} bytes");
            summary.rejected.push((number, why));
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            summary.rejected.push((number, "not UTF-8".into()));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let (account, plaintext) = match read_account(text) {
            Ok(read) => read,
            Err(why) => {
                summary.rejected.push((number, why));
                continue;
            }
        };
        if let Some(&first) = seen.get(&fold(&account.username)) {
            summary.duplicates.push((number, first));
            continue;
        }
        seen.insert(fold(&account.username), number);
        batch.push(Pending {
            number,
            account,
            plaintext,
            reserved: false,
        });
        if batch.len() == BATCH {
            write(store, &mut batch, hasher, threads, &mut summary)?;
            progress(Progress {
                lines: number,
                bytes: read,
            });
        }
    }
    write(store, &mut batch, hasher, threads, &mut summary)?;
    progress(Progress {
        lines: number,
        bytes: read,
    });
    Ok(summary)
}

/// Write a batch: look its names up in one read; hash the plaintext passwords of those not
/// imported already on `threads` threads; then write the new accounts, and tell this import's
/// accounts from others' by probing their creates, with [`Store::create_many`] (a few durable
/// transactions, not one per line).
fn write(
    store: &dyn Store,
    batch: &mut Vec<Pending>,
    hasher: &Hasher,
    threads: usize,
    summary: &mut Summary,
) -> Result<(), ImportError> {
    // Look-alikes within the batch (the store refuses those of earlier batches).
    let mut shapes: HashMap<String, u64> = HashMap::new();
    batch.retain(|pending| {
        match shapes.insert(skeleton(&pending.account.username), pending.number) {
            Some(first) => {
                let why = format!("a look-alike of the name on line {first}");
                summary.rejected.push((pending.number, why));
                false
            }
            None => true,
        }
    });
    let names: Vec<(&str, &[String])> = batch
        .iter()
        .map(|p| (p.account.username.as_str(), &[][..]))
        .collect();
    let found = store.find_for_logins(&names)?;
    let (mut fresh, mut probes) = (Vec::new(), Vec::new());
    for (pending, (found, _)) in batch.drain(..).zip(found) {
        match found {
            None => fresh.push(pending),
            // A name reserved by an earlier import, now with its password or hash: filled in.
            Some(found) if found.hash == RESERVED_HASH && pending.account.hash != RESERVED_HASH => {
                fresh.push(Pending {
                    account: Account {
                        username: found.username,
                        ..pending.account
                    },
                    reserved: true,
                    ..pending
                })
            }
            Some(found) => probes.push((pending.number, found.username)),
        }
    }
    // Ours from an earlier run (the create with this line's id answers `New` again, and writes
    // nothing), or another account's: a player who moved, or registered the name.
    let probing: Vec<(Account, String)> = probes
        .iter()
        .map(|(_, name)| (Account::new(name, RESERVED_HASH), request_id(name)))
        .collect();
    for ((number, holder), created) in probes.into_iter().zip(store.create_many(&probing)?) {
        match created {
            Created::New => summary.present += 1,
            Created::Exists => summary.held.push((number, holder)),
        }
    }
    hash_all(&mut fresh, hasher, threads)?;
    let (reserved, new): (Vec<Pending>, Vec<Pending>) = fresh.into_iter().partition(|p| p.reserved);
    for pending in reserved {
        let name = &pending.account.username;
        match store.update_hash(name, RESERVED_HASH, &pending.account.hash)? {
            true => summary.imported += 1,
            false => summary.present += 1, // filled in meanwhile (its owner moved)
        }
    }
    let creating: Vec<(Account, String)> = new
        .iter()
        .map(|p| (p.account.clone(), request_id(&p.account.username)))
        .collect();
    for (pending, created) in new.iter().zip(store.create_many(&creating)?) {
        match created {
            Created::New => summary.imported += 1,
            Created::Exists => summary.rejected.push((
                pending.number,
                "a look-alike of another account's name".into(),
            )),
        }
    }
    Ok(())
}

/// Hash the plaintext passwords of `pending` in place, on `threads` threads.
fn hash_all(pending: &mut [Pending], hasher: &Hasher, threads: usize) -> Result<(), ImportError> {
    let per_thread = pending.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let hashing: Vec<_> = pending
            .chunks_mut(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    let memory = &mut Memory::default();
                    for pending in chunk.iter_mut() {
                        if let Some(password) = pending.plaintext.take() {
                            let normalized = crate::auth::names::normalize_password(&password);
                            // A password today's (default) rules refuse is marked so: a
                            // short guess may be it, and counts against the account.
                            pending.account.hash = match Rules::default().password_ok(&password) {
                                true => hasher.hash(&normalized, memory)?,
                                false => hasher.hash_weak(&normalized, memory)?,
                            };
                        }
                    }
                    Ok::<(), crate::auth::password::HashError>(())
                })
            })
            .collect();
        for thread in hashing {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ImportError::Hash(e)),
                Err(_) => return Err(ImportError::Panicked),
            }
        }
        Ok(())
    })
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read.
    #[error("cannot read the import: {0}")]
    Read(std::io::Error),
    /// Hashing a password failed (out of memory, say).
    #[error("cannot hash a password: {0}")]
    Hash(crate::auth::password::HashError),
    /// A hashing thread panicked: nothing of its batch was written.
    #[error("a hashing thread failed; nothing of its batch was written")]
    Panicked,
    /// The store failed: what was written stays; running the import again resumes.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accountdb::store::SqliteStore;
    use crate::auth::password::HashParams;

    #[test]
    fn lines_are_read_or_refused_with_the_reason() {
        assert!(read_account(r#"{"username":"a","password":"p"}"#)
            .unwrap()
            .1
            .is_some());
        let (reserved, _) = read_account(r#"{"username":"a"}"#).unwrap();
        let longest = format!(r#"{{"username":"{}"}}"#, "n".repeat(255));
        assert!(read_account(&longest).is_ok());
        assert_eq!(reserved.hash, RESERVED_HASH);
        for (line, why) in [
            ("nonsense", "not an account"),
            (r#"{"username":""}"#, "1 to 255"),
            (r#"{"username":"a\nb"}"#, "control characters"),
            (
                &format!(r#"{{"username":"{}"}}"#, "n".repeat(256)),
                "1 to 255",
            ),
            (
                r#"{"username":"a","password":"p","hash":"$2b$x"}"#,
                "not both",
            ),
            (
                r#"{"username":"a","hash":"md5:abc"}"#,
                "argon2 PHC string or a bcrypt",
            ),
            (r#"{"username":"a","pasword":"p"}"#, "not an account"),
        ] {
            let error = read_account(line).err().unwrap();
            assert!(error.contains(why), "{line}: {error}");
        }
    }

    #[test]
    fn lines_are_capped_and_need_not_be_utf8() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"username\":\"First\"}\n");
        input.extend_from_slice(&vec![b'x'; MAX_LINE + 1]);
        input.extend_from_slice(b"\n\xff\xfe not UTF-8\n");
        input.extend_from_slice(&vec![b'y'; MAX_LINE]);
        input.extend_from_slice(b"\nlast, no newline");
        let mut reader = std::io::BufReader::with_capacity(1000, &input[..]);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(whole) = read_line(&mut reader, &mut line).unwrap() {
            lines.push((whole, line.len()));
        }
        assert_eq!(
            lines,
            [
                (true, 20),
                (false, MAX_LINE),
                (true, 12),
                (true, MAX_LINE),
                (true, 16)
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
        let summary = import(&store, &input[..], &hasher, 1, |_| {}).unwrap();
        assert_eq!(
            summary.imported, 1,
            "the lines after the bad ones are read on"
        );
        let rejected: Vec<(u64, &str)> = summary
            .rejected
            .iter()
            .map(|(n, why)| (*n, why.as_str()))
            .collect();
        assert_eq!(rejected[0], (2, "longer than 65536 bytes"));
        assert_eq!(rejected[1], (3, "not UTF-8"));
        assert_eq!(rejected.len(), 4, "{rejected:?}");
    }

    #[test]
    fn an_import_twice_changes_nothing_and_reports_every_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
        Store::create(&store, &Account::new("Taken", "h"), "registered here").unwrap();
        let input = "{\"username\":\"Ann\",\"password\":\"pw\"}\n\nbroken\n{\"username\":\"ANN\",\"password\":\"x\"}\n{\"username\":\"reserved one\"}\n{\"username\":\"taken\"}\n";
        let run = || import(&store, input.as_bytes(), &hasher, 2, |_| {}).unwrap();
        let first = run();
        assert_eq!((first.imported, first.present), (2, 0));
        assert_eq!(first.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
        assert_eq!(first.duplicates, [(4, 1)], "ANN is line 1's Ann");
        assert_eq!(first.held, [(6, "Taken".to_string())]);
        assert_eq!(first.names(), 4);
        let second = run();
        assert_eq!((second.imported, second.present), (0, 2));
        // The reserved name, imported again with its password, is filled in.
        let filled = import(
            &store,
            &b"{\"username\":\"RESERVED ONE\",\"password\":\"its-pw\"}\n"[..],
            &hasher,
            1,
            |_| {},
        )
        .unwrap();
        assert_eq!(filled.imported, 1);
        let reserved = Store::find(&store, "reserved one").unwrap().unwrap();
        assert_eq!(reserved.username, "reserved one", "its spelling kept");
        assert!(reserved.hash.starts_with("$argon2id$"));
        let ann = Store::find(&store, "ann").unwrap().unwrap();
        assert!(ann.hash.starts_with("$argon2id$"));
    }
}
