//! The secrets account-db accepts: the current one, a rotation's staged next one, and any more
//! `--secret-file` names; re-read once a second, and counted by fingerprint as they are proved.
//!
//! A rotation works on the current secret file, `PRIMARY` (the first `--secret-file`, by default
//! `DATA/account-db.secret`): `account-db rotate-secret stage` writes `PRIMARY.next`, which every
//! account-db reading `PRIMARY` then accepts beside it, and `rotate-secret finish` renames it
//! over `PRIMARY`. Neither needs a restart, and a plain restart after either keeps the state
//! reached.

use crate::accountdb::config::AccountDbConfig;
use crate::auth::secret::{Secret, SecretError};
use crate::logging::RateLimited;
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A warning that proofs arrive with a secret other than the current one comes at most this
/// often (10 minutes).
const STALE_WARNING_EVERY: Duration = Duration::from_secs(600);

/// Where a rotation stages the next secret: beside the current one, with `.next` appended.
pub fn staged_path(primary: &Path) -> PathBuf {
    let mut name = primary.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// The files the secrets come from, re-read once a second.
struct SecretFiles {
    /// The current secret's file.
    primary: PathBuf,
    /// More `--secret-file`s, accepted beside it.
    others: Vec<PathBuf>,
}

/// The secrets a client may prove, and how often each was.
pub struct AcceptedSecrets {
    /// Where they come from; `None` for a secret given by the embedding code or in
    /// `ACCOUNT_DB_SECRET`, which is never re-read.
    files: Option<SecretFiles>,
    /// What is accepted now, the current one first.
    secrets: RwLock<Vec<Secret>>,
    /// Proofs accepted, by fingerprint, in the order first seen; only ever grows (one entry per
    /// secret ever accepted since start).
    proofs: Mutex<Vec<(String, u64)>>,
    /// Rate-limits the warning that a rotation is not finished.
    stale: RateLimited,
}

impl AcceptedSecrets {
    /// The secrets `config` names: [`AccountDbConfig::secret`], else `ACCOUNT_DB_SECRET`, else
    /// the secret files (the first created if missing, unless `has_accounts` says the store
    /// holds accounts and --new-secret is not given), with a staged next one.
    pub fn resolve(
        config: &AccountDbConfig,
        has_accounts: impl FnOnce() -> bool,
    ) -> Result<AcceptedSecrets, SecretError> {
        if let Some(secret) = Secret::given_or_env(config.secret.as_ref())? {
            return Ok(AcceptedSecrets::new(None, vec![secret]));
        }
        let primary = config.secret_path();
        if !primary.exists() {
            if !config.new_secret && has_accounts() {
                return Err(SecretError::LostWithAccounts {
                    path: primary.display().to_string(),
                });
            }
            Secret::read_or_create(&primary)?;
            tracing::info!(path = %primary.display(), "created the secret login-servers must prove; give it to each of them");
        }
        let others = config.secret_file.iter().skip(1).cloned().collect();
        let files = SecretFiles { primary, others };
        let secrets = files.read()?;
        Ok(AcceptedSecrets::new(Some(files), secrets))
    }

    fn new(files: Option<SecretFiles>, secrets: Vec<Secret>) -> AcceptedSecrets {
        let proofs = secrets.iter().map(|s| (s.fingerprint(), 0)).collect();
        AcceptedSecrets {
            files,
            secrets: RwLock::new(secrets),
            proofs: Mutex::new(proofs),
            stale: RateLimited::new(STALE_WARNING_EVERY),
        }
    }

    /// The fingerprints accepted now, the current one first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.secrets
            .read()
            .iter()
            .map(Secret::fingerprint)
            .collect()
    }

    /// Which secret, if any, `proof` proves for `nonce`: its fingerprint. Counts it, and warns
    /// (at most every 10 minutes) when it is not the current one.
    pub fn verify(&self, nonce: &str, proof: &str) -> Option<String> {
        let (index, fingerprint) = {
            let secrets = self.secrets.read();
            let index = secrets.iter().position(|s| s.verify(nonce, proof))?;
            (index, secrets[index].fingerprint())
        };
        {
            let mut proofs = self.proofs.lock();
            match proofs.iter_mut().find(|(f, _)| *f == fingerprint) {
                Some((_, n)) => *n += 1,
                None => proofs.push((fingerprint.clone(), 1)),
            }
        }
        if index > 0 {
            if let Some(n) = self.stale.hit() {
                tracing::warn!(
                    secret = %fingerprint,
                    logins = n,
                    "rotation not finished: {n} logins with secret {fingerprint}; once every \
                     login-server has it, run `account-db rotate-secret finish`"
                );
            }
        }
        Some(fingerprint)
    }

    /// Proofs accepted so far, by fingerprint: `accountdb_auth_total{secret}`.
    pub fn proofs(&self) -> Vec<(String, i64)> {
        let proofs = self.proofs.lock();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        proofs.iter().map(|(f, n)| (f.clone(), count(*n))).collect()
    }

    /// Read the files again. What changed is logged; the fingerprints no longer accepted are
    /// returned (their connections should be closed). A file that cannot be read keeps what is
    /// accepted as it was, with a warning from `log`.
    pub fn reload(&self, log: &RateLimited) -> Vec<String> {
        let Some(files) = &self.files else {
            return Vec::new();
        };
        let read = match files.read() {
            Ok(read) => read,
            Err(e) => {
                if let Some(times) = log.hit() {
                    tracing::warn!(error = %e, times, "cannot re-read the secret files: the secrets accepted stay as they were");
                }
                return Vec::new();
            }
        };
        let mut secrets = self.secrets.write();
        if *secrets == read {
            return Vec::new();
        }
        let now: Vec<String> = read.iter().map(Secret::fingerprint).collect();
        let dropped: Vec<String> = secrets
            .iter()
            .map(Secret::fingerprint)
            .filter(|f| !now.contains(f))
            .collect();
        *secrets = read;
        drop(secrets);
        tracing::info!(
            accepted = %now.join(","),
            dropped = %dropped.join(","),
            "the secret files changed: accepting {}", now.join(", ")
        );
        dropped
    }
}

impl SecretFiles {
    /// The secrets in the files, the current one first.
    fn read(&self) -> Result<Vec<Secret>, SecretError> {
        let mut secrets = vec![Secret::read(&self.primary)?];
        let staged = staged_path(&self.primary);
        if staged.exists() {
            secrets.push(Secret::read(&staged)?);
        }
        for path in &self.others {
            secrets.push(Secret::read(path)?);
        }
        secrets.dedup();
        Ok(secrets)
    }
}

/// Why a rotation command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// `stage` when a next secret is already staged.
    #[error(
        "a rotation is already staged in {path} (secret {fingerprint}): finish it with \
         `account-db rotate-secret finish`, or delete that file to abandon it"
    )]
    AlreadyStaged { path: String, fingerprint: String },
    /// `finish` with nothing staged.
    #[error(
        "no rotation is staged: {path} does not exist (run `account-db rotate-secret stage` first)"
    )]
    NothingStaged { path: String },
    /// The current secret file is missing: there is nothing to rotate (check --data).
    #[error(
        "no secret file at {path}: start account-db there first, or check --data and --secret-file"
    )]
    NoCurrent { path: String },
    /// The secret comes from `ACCOUNT_DB_SECRET`, not from a file this command can change.
    #[error("ACCOUNT_DB_SECRET is set: rotate-secret works on files; unset it, or rotate by hand")]
    FromEnvironment,
    /// A secret file could not be read, written or renamed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Renaming the staged file over the current one failed.
    #[error("cannot replace {path}: {source}")]
    Replace {
        path: String,
        source: std::io::Error,
    },
}

/// `rotate-secret stage [FROM]`: write the next secret (`FROM`'s, or a fresh one) to
/// `PRIMARY.next`, owned like its directory, mode 0600. What to print.
pub fn stage(primary: &Path, from: Option<&Path>) -> Result<String, RotationError> {
    check_files(primary)?;
    let staged = staged_path(primary);
    if staged.exists() {
        return Err(RotationError::AlreadyStaged {
            path: staged.display().to_string(),
            fingerprint: Secret::read(&staged)?.fingerprint(),
        });
    }
    let next = match from {
        Some(from) => Secret::read(from)?,
        None => Secret::generate(),
    };
    next.write_new(&staged)?;
    Ok(format!(
        "staged the next secret {} in {}: every account-db reading {} accepts it beside the \
         current one {} within a second. Give that file to every login-server \
         (--db-secret-file) and restart them one at a time; then run \
         `account-db rotate-secret finish`.\n",
        next.fingerprint(),
        staged.display(),
        primary.display(),
        Secret::read(primary)?.fingerprint(),
    ))
}

/// `rotate-secret finish`: rename `PRIMARY.next` over `PRIMARY` (atomic), so the next secret is
/// the only one accepted, now and after any restart. What to print.
pub fn finish(primary: &Path) -> Result<String, RotationError> {
    check_files(primary)?;
    let staged = staged_path(primary);
    if !staged.exists() {
        return Err(RotationError::NothingStaged {
            path: staged.display().to_string(),
        });
    }
    let (old, next) = (Secret::read(primary)?, Secret::read(&staged)?);
    let replace = |source| RotationError::Replace {
        path: primary.display().to_string(),
        source,
    };
    std::fs::rename(&staged, primary).map_err(replace)?;
    if let Some(dir) = primary.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(replace)?;
    }
    Ok(format!(
        "finished: {} holds the secret {}; every account-db reading it accepts only that one \
         within a second (the old {} is refused, its connections closed)\n",
        primary.display(),
        next.fingerprint(),
        old.fingerprint(),
    ))
}

/// Refuse a rotation where there is no current secret file, or the secret comes from the
/// environment.
fn check_files(primary: &Path) -> Result<(), RotationError> {
    if std::env::var_os(crate::auth::secret::SECRET_ENV).is_some() {
        return Err(RotationError::FromEnvironment);
    }
    if !primary.exists() {
        return Err(RotationError::NoCurrent {
            path: primary.display().to_string(),
        });
    }
    Ok(())
}
