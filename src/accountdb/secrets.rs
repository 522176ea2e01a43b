//! The secrets account-db accepts: the current one, a rotation's staged next one, and any more
//! `--secret-file` names; re-read once a second, and counted by fingerprint as they are proved.
//!
//! A rotation works on the current secret file, `PRIMARY` (the first `--secret-file`, by default
//! `DATA/account-db.secret`): `account-db rotate-secret stage` writes `PRIMARY.next`, which every
//! account-db reading `PRIMARY` then accepts beside it, and `rotate-secret finish` renames it
//! over `PRIMARY`. Neither needs a restart, and a plain restart after either keeps the state
//! reached.

use crate::accountdb::config::AccountDbConfig;
use crate::auth::secret::{directory_of, Secret, SecretError};
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

/// A proof that [`AcceptedSecrets::verify`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proved {
    /// The fingerprint of the secret proved.
    pub fingerprint: String,
    /// Whether it is the current secret (else one staged, or another `--secret-file`).
    pub current: bool,
}

/// `account-db rotate-secret finish` for the secret file `primary`, as an operator may paste
/// it whatever their working directory.
fn finish_command(primary: &Path) -> String {
    let absolute = std::path::absolute(primary).unwrap_or_else(|_| primary.to_path_buf());
    format!(
        "account-db --secret-file {} rotate-secret finish",
        absolute.display()
    )
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
            if config.secret_file.is_empty() {
                // With a PostgreSQL store nothing else makes --data: the secret lives there.
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&config.data)
                    .map_err(|source| SecretError::Create {
                        path: config.data.display().to_string(),
                        source,
                    })?;
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

    /// Which secret, if any, `proof` proves for `nonce` on a connection with `binding` (its TLS
    /// session's, see [`Secret::proof`]). Counts it, and warns (at most every
    /// 10 minutes) when it is not the current one: a rotation is under way.
    pub fn verify(&self, nonce: &str, binding: Option<&[u8]>, proof: &str) -> Option<Proved> {
        let (index, fingerprint) = {
            let secrets = self.secrets.read();
            let index = secrets
                .iter()
                .position(|s| s.verify(nonce, binding, proof))?;
            (index, secrets[index].fingerprint())
        };
        let proved = Proved {
            fingerprint,
            current: index == 0,
        };
        {
            let mut proofs = self.proofs.lock();
            match proofs.iter_mut().find(|(f, _)| *f == proved.fingerprint) {
                Some((_, n)) => *n += 1,
                None => proofs.push((proved.fingerprint.clone(), 1)),
            }
        }
        if !proved.current {
            if let Some(n) = self.stale.hit() {
                let (secret, finish) = (&proved.fingerprint, self.finish_command());
                tracing::warn!(
                    secret = %secret,
                    logins = n,
                    "rotation not finished: {n} logins with secret {secret}; once every \
                     login-server has it, run `{finish}`"
                );
            }
        }
        Some(proved)
    }

    /// The command that finishes a rotation of these files.
    fn finish_command(&self) -> String {
        match &self.files {
            Some(files) => finish_command(&files.primary),
            None => "account-db rotate-secret finish".into(),
        }
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
    /// The secrets in the files, the current one first: read until two readings agree, so a
    /// `finish` (a rename) between reading the current file and the staged one is not taken
    /// for the staged secret's removal.
    fn read(&self) -> Result<Vec<Secret>, SecretError> {
        let mut last = self.read_once()?;
        for _ in 0..3 {
            let again = self.read_once()?;
            if again == last {
                break;
            }
            last = again;
        }
        Ok(last)
    }

    /// [`SecretFiles::read`], once.
    fn read_once(&self) -> Result<Vec<Secret>, SecretError> {
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
    /// `stage --from` a file holding the current secret: nothing would be rotated.
    #[error("that is the current secret ({fingerprint}): nothing to rotate")]
    SameSecret { fingerprint: String },
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
    let current = Secret::read(primary)?;
    let next = match from {
        Some(from) => Secret::read(from)?,
        None => Secret::generate(),
    };
    if next == current {
        return Err(RotationError::SameSecret {
            fingerprint: current.fingerprint(),
        });
    }
    next.write_new(&staged)?;
    Ok(format!(
        "staged the next secret {} in {}: every account-db reading {} accepts it beside the \
         current one {} within a second. Give that file to every login-server \
         (--db-secret-file) and restart them one at a time; then run `{}` (or delete the \
         staged file to abandon the rotation).\n",
        next.fingerprint(),
        staged.display(),
        primary.display(),
        current.fingerprint(),
        finish_command(primary),
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
    // The rename is durable once the directory is synced.
    std::fs::File::open(directory_of(primary))
        .and_then(|d| d.sync_all())
        .map_err(replace)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Secrets read from `dir/account-db.secret` (made here), as account-db reads them.
    fn from_files(dir: &Path) -> AcceptedSecrets {
        let config = AccountDbConfig {
            data: dir.to_path_buf(),
            ..AccountDbConfig::default()
        };
        Secret::create(&config.secret_path()).unwrap();
        AcceptedSecrets::resolve(&config, || false).unwrap()
    }

    #[test]
    fn a_staged_secret_is_accepted_until_finish_and_counted_apart() {
        let dir = tempfile::tempdir().unwrap();
        let accepted = from_files(dir.path());
        let primary = dir.path().join("account-db.secret");
        let current = Secret::read(&primary).unwrap();
        let log = RateLimited::new(Duration::from_secs(60));
        let nonce = "nonce";
        let proved = |fingerprint: String, current| {
            Some(Proved {
                fingerprint,
                current,
            })
        };
        assert_eq!(
            accepted.verify(nonce, None, &current.proof(nonce, None)),
            proved(current.fingerprint(), true)
        );
        assert!(accepted.reload(&log).is_empty(), "nothing changed");

        stage(&primary, None).unwrap();
        let next = Secret::read(&staged_path(&primary)).unwrap();
        assert_eq!(
            accepted.verify(nonce, None, &next.proof(nonce, None)),
            None,
            "not yet read"
        );
        assert!(accepted.reload(&log).is_empty(), "nothing dropped");
        assert_eq!(
            accepted.fingerprints(),
            [current.fingerprint(), next.fingerprint()]
        );
        assert_eq!(
            accepted.verify(nonce, None, &next.proof(nonce, None)),
            proved(next.fingerprint(), false)
        );
        assert_eq!(
            accepted.verify(nonce, None, &next.proof("other", None)),
            None
        );
        let counts = accepted.proofs();
        assert_eq!(
            counts,
            [(current.fingerprint(), 1), (next.fingerprint(), 1)]
        );

        finish(&primary).unwrap();
        assert_eq!(accepted.reload(&log), [current.fingerprint()]);
        assert_eq!(accepted.fingerprints(), [next.fingerprint()]);
        assert_eq!(
            accepted.verify(nonce, None, &current.proof(nonce, None)),
            None
        );
        // Counters only grow: the old secret's count stays listed.
        assert_eq!(accepted.proofs().len(), 2);
    }

    #[test]
    fn a_missing_secret_file_is_created_only_for_a_store_without_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AccountDbConfig {
            data: dir.path().to_path_buf(),
            ..AccountDbConfig::default()
        };
        let lost = AcceptedSecrets::resolve(&config, || true);
        assert!(matches!(lost, Err(SecretError::LostWithAccounts { .. })));
        assert!(!config.secret_path().exists());
        config.new_secret = true;
        let made = AcceptedSecrets::resolve(&config, || true).unwrap();
        let secret = Secret::read(&config.secret_path()).unwrap();
        assert_eq!(made.fingerprints(), [secret.fingerprint()]);
        // Found, it is read whatever the store holds.
        config.new_secret = false;
        let read = AcceptedSecrets::resolve(&config, || true).unwrap();
        assert_eq!(read.fingerprints(), [secret.fingerprint()]);
        // A store without accounts gets one made without being told.
        let empty = tempfile::tempdir().unwrap();
        config.data = empty.path().to_path_buf();
        assert!(AcceptedSecrets::resolve(&config, || false).is_ok());
        assert!(config.secret_path().exists());
    }

    #[test]
    fn an_unreadable_file_keeps_what_was_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let accepted = from_files(dir.path());
        let primary = dir.path().join("account-db.secret");
        let before = accepted.fingerprints();
        std::fs::write(staged_path(&primary), "not hex").unwrap();
        let log = RateLimited::new(Duration::from_secs(60));
        assert!(accepted.reload(&log).is_empty());
        assert_eq!(accepted.fingerprints(), before);
        std::fs::remove_file(&primary).unwrap();
        assert!(accepted.reload(&log).is_empty());
        assert_eq!(accepted.fingerprints(), before);
    }

    #[test]
    fn rotation_commands_refuse_what_would_do_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("account-db.secret");
        assert!(matches!(
            stage(&primary, None),
            Err(RotationError::NoCurrent { .. })
        ));
        assert!(matches!(
            finish(&primary),
            Err(RotationError::NoCurrent { .. })
        ));
        Secret::create(&primary).unwrap();
        assert!(matches!(
            finish(&primary),
            Err(RotationError::NothingStaged { .. })
        ));
        assert!(matches!(
            stage(&primary, Some(&primary)),
            Err(RotationError::SameSecret { .. })
        ));
        stage(&primary, None).unwrap();
        assert!(matches!(
            stage(&primary, None),
            Err(RotationError::AlreadyStaged { .. })
        ));
        assert_eq!(
            staged_path(&primary),
            dir.path().join("account-db.secret.next")
        );
    }

    #[test]
    fn a_given_secret_is_never_re_read() {
        let secret = Secret::generate();
        let config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
        let accepted = AcceptedSecrets::resolve(&config, || true).unwrap();
        let log = RateLimited::new(Duration::from_secs(60));
        assert!(accepted.reload(&log).is_empty());
        assert_eq!(accepted.fingerprints(), [secret.fingerprint()]);
    }
}
