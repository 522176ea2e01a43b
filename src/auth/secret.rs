//! The secret that login-server and account-db share, and the challenge-response that proves
//! it: account-db greets with a random nonce, the client answers HMAC-SHA256(secret, nonce).
//! The secret itself never crosses the wire.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// 32 random bytes, written as 64 hex digits in files and environment variables.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// The environment variable that may hold the secret itself (64 hex digits), for both servers.
pub const SECRET_ENV: &str = "ACCOUNT_DB_SECRET";

/// The largest secret file read, in bytes: 64 hex digits and some white space fit many times.
pub const MAX_FILE: u64 = 4096;

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Text given as a secret (in [`SECRET_ENV`], say) is not 64 hex digits.
    #[error("a secret must be 64 hex digits (32 bytes)")]
    Malformed,
    /// A secret file holds something other than 64 hex digits, or is no regular file of at
    /// most 4 KiB.
    #[error("the secret file {path} does not hold 64 hex digits (32 bytes)")]
    MalformedFile { path: String },
    /// A secret file exists but cannot be read (permissions, say).
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A missing secret file cannot be created (no such directory, read-only disk).
    #[error("cannot create the secret file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    /// account-db's secret file is missing but its store holds accounts: a new secret would
    /// lock out every login-server that has the old one.
    #[error(
        "the secret file {path} is missing but the store holds accounts: restore it (or point \
         --secret-file at it), or pass --new-secret to make a new one and give it to every \
         login-server"
    )]
    LostWithAccounts { path: String },
    /// login-server was pointed at an account-db (`--db`) but given no secret for it.
    #[error(
        "account-db requires its secret: pass --db-secret-file (account-db writes \
         DATA/account-db.secret) or set {SECRET_ENV}"
    )]
    Missing,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A fresh random 128-bit token, as hex: greeting nonces, request ids.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Create the file `path` holding `contents`, readable by its owner only (mode 0600); fails
/// with `AlreadyExists` if there is one. Atomic: written whole and synced to a temporary file,
/// then linked into place, so processes that create it at once end up with one whole file.
pub fn create_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    create_private_owned(path, contents, None)
}

/// [`create_private`], the file given to `owner` (uid, gid) before it is linked into place:
/// through the descriptor of the file written, so no path that someone swaps meanwhile (the
/// directory's owner may) can redirect the change of owner.
fn create_private_owned(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension(format!("tmp-{}", random_token()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(contents)?;
            if let Some((uid, gid)) = owner {
                use std::os::unix::fs::MetadataExt;
                let made = file.metadata()?;
                if (made.uid(), made.gid()) != (uid, gid) {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                }
            }
            file.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    written
}

/// The directory a file at `path` is in (`.` for a bare file name).
pub fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Secret {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Secret(bytes)
    }

    /// Parse 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<Secret, SecretError> {
        let bytes = unhex(text).ok_or(SecretError::Malformed)?;
        bytes
            .try_into()
            .map(Secret)
            .map_err(|_| SecretError::Malformed)
    }

    /// The secret a server uses: `given` (by the embedding code), else the one in the
    /// environment variable [`SECRET_ENV`], else what `from_file` reads.
    pub fn resolve(
        given: Option<&Secret>,
        from_file: impl FnOnce() -> Result<Secret, SecretError>,
    ) -> Result<Secret, SecretError> {
        match Secret::given_or_env(given)? {
            Some(secret) => Ok(secret),
            None => from_file(),
        }
    }

    /// `given`, else the one in the environment variable [`SECRET_ENV`]; `None` if neither is
    /// there (the secret is then in a file).
    pub fn given_or_env(given: Option<&Secret>) -> Result<Option<Secret>, SecretError> {
        if let Some(secret) = given {
            return Ok(Some(secret.clone()));
        }
        match std::env::var(SECRET_ENV) {
            Ok(hex) => Secret::from_hex(&hex).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Write a fresh secret to a new file at `path` (mode 0600); it must not exist.
    pub fn create(path: &Path) -> Result<Secret, SecretError> {
        let secret = Secret::generate();
        secret.write_new(path)?;
        Ok(secret)
    }

    /// Write this secret to a new file at `path` (mode 0600), owned by the owner of the
    /// directory it is in: run as root for a service user's directory, the file is the
    /// service's to read. It must not exist.
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        let error = |source| SecretError::Create {
            path: path.display().to_string(),
            source,
        };
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::metadata(directory_of(path)).map_err(error)?;
        let contents = format!("{}\n", hex(&self.0));
        create_private_owned(path, contents.as_bytes(), Some((dir.uid(), dir.gid()))).map_err(error)
    }

    /// Read a secret file: a regular file of at most [`MAX_FILE`] bytes (a FIFO would block
    /// the reader, and a huge or endless file would be read whole).
    pub fn read(path: &Path) -> Result<Secret, SecretError> {
        use std::io::Read;
        let malformed = || SecretError::MalformedFile {
            path: path.display().to_string(),
        };
        let unreadable = |source| SecretError::Read {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return Err(malformed());
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_FILE).read_to_string(&mut text))
            .map_err(unreadable)?;
        Secret::from_hex(&text).map_err(|_| SecretError::MalformedFile {
            path: path.display().to_string(),
        })
    }

    /// Read the secret file at `path`, or create it (mode 0600) with a fresh secret. Creating
    /// is atomic (written whole to a temporary file, then linked into place), so servers that
    /// start together on one directory end up with the same secret, never a torn file.
    pub fn read_or_create(path: &Path) -> Result<Secret, SecretError> {
        if path.exists() {
            return Secret::read(path);
        }
        let secret = Secret::generate();
        match create_private(path, format!("{}\n", hex(&secret.0)).as_bytes()) {
            Ok(()) => Ok(secret),
            // Another server created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Secret::read(path),
            Err(source) => Err(SecretError::Create {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The first 8 hex digits of the secret's SHA-256: names it in metrics, logs and command
    /// output without revealing anything that helps to guess it (32 bits of a hash of 256
    /// random bits).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        hex(&Sha256::digest(self.0)[..4])
    }

    fn mac(&self, nonce: &str, binding: Option<&[u8]>) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(nonce.as_bytes());
        if let Some(binding) = binding {
            mac.update(binding);
        }
        mac
    }

    /// The answer to a greeting's `nonce`: HMAC-SHA256(secret, nonce), or over TLS
    /// HMAC-SHA256(secret, nonce || binding), `binding` being the keying material exported
    /// from the connection's TLS session ([`crate::tls::Stream::binding`]), so that a proof
    /// seen on one connection proves nothing on another.
    pub fn proof(&self, nonce: &str, binding: Option<&[u8]>) -> String {
        hex(&self.mac(nonce, binding).finalize().into_bytes())
    }

    /// Whether `proof` answers `nonce` on a connection with `binding` (compared in constant
    /// time).
    pub fn verify(&self, nonce: &str, binding: Option<&[u8]>, proof: &str) -> bool {
        unhex(proof).is_some_and(|bytes| self.mac(nonce, binding).verify_slice(&bytes).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_nonce() {
        let secret = Secret::generate();
        let n = random_token();
        let proof = secret.proof(&n, None);
        assert!(secret.verify(&n, None, &proof));
        assert!(!secret.verify(&random_token(), None, &proof));
        assert!(!Secret::generate().verify(&n, None, &proof));
        assert!(!secret.verify(&n, None, "zz"));
        // Bound to a TLS session: only with that session's material.
        let (one, other) = ([1u8; 32], [2u8; 32]);
        let bound = secret.proof(&n, Some(&one));
        assert!(secret.verify(&n, Some(&one), &bound));
        assert!(!secret.verify(&n, Some(&other), &bound));
        assert!(!secret.verify(&n, None, &bound));
        assert!(!secret.verify(&n, Some(&one), &proof));
        // HMAC(secret, nonce || binding), as protocol.md says.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).unwrap();
        mac.update(n.as_bytes());
        mac.update(&one);
        assert_eq!(bound, hex(&mac.finalize().into_bytes()));
        assert!(!format!("{secret:?}").contains(&hex(&secret.0)));
    }

    #[test]
    fn fingerprints_name_a_secret_in_8_hex_digits() {
        let secret = Secret::from_hex(&"ab".repeat(32)).unwrap();
        // SHA-256 of 32 bytes of 0xab, its first 4 bytes.
        use sha2::Digest;
        let expected = hex(&Sha256::digest([0xab; 32])[..4]);
        assert_eq!(secret.fingerprint(), expected);
        assert_eq!(secret.fingerprint().len(), 8);
        assert_ne!(Secret::generate().fingerprint(), secret.fingerprint());
        assert!(!hex(&secret.0).starts_with(&secret.fingerprint()));
    }

    #[test]
    fn secret_files_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("account-db.secret");
        let created = Secret::read_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Secret::read_or_create(&path).unwrap(), created);
        // Servers starting together on one directory agree on one secret.
        let racing = dir.path().join("racing.secret");
        let secrets: Vec<Secret> = (0..8)
            .map(|_| {
                let racing = racing.clone();
                std::thread::spawn(move || Secret::read_or_create(&racing).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(secrets.iter().all(|s| *s == secrets[0]));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary files left");
        assert!(matches!(
            Secret::from_hex("abc"),
            Err(SecretError::Malformed)
        ));
        // No FIFO (it would block), nothing huge (it would be read whole).
        let fifo = dir.path().join("fifo.secret");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            assert!(matches!(
                Secret::read(&fifo),
                Err(SecretError::MalformedFile { .. })
            ));
        }
        let huge = dir.path().join("huge.secret");
        let mut text = hex(&created.0);
        text.push_str(&" ".repeat(5000));
        std::fs::write(&huge, text).unwrap();
        assert!(matches!(
            Secret::read(&huge),
            Err(SecretError::MalformedFile { .. })
        ));
    }
}
