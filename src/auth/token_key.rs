//! The Ed25519 keys that sign and verify session tokens, and their files: a signing key is a
//! PKCS#8 `PRIVATE KEY` PEM file, created with mode 0600; a verify key is a `PUBLIC KEY` (SPKI)
//! PEM file, or a signing key's file, whose public half is taken. Each key is known by its
//! `kid`: the RFC 7638 thumbprint of its public key.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What DER-encoded SPKI puts before an Ed25519 public key (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read (missing, permissions).
    #[error("cannot read the token key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file holds no Ed25519 key in PEM (PKCS#8 private, or SPKI public).
    #[error("the token key {path} is not an Ed25519 PEM key: {detail}")]
    Malformed { path: PathBuf, detail: String },
    /// A new key file cannot be written (it exists, no such directory, read-only disk).
    #[error("cannot create the token key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The system's random source failed.
    #[error("cannot generate a token key")]
    Generate,
}

/// A public key that verifies tokens, with its `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    pub kid: String,
    /// The raw 32-byte Ed25519 public key.
    pub public: [u8; 32],
}

impl VerifyKey {
    fn new(public: [u8; 32]) -> VerifyKey {
        let x = URL_SAFE_NO_PAD.encode(public);
        // RFC 7638: the required members, in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        VerifyKey { kid, public }
    }

    /// The key as a JWK (RFC 8037), for a JWKS.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        })
    }

    /// The key as a `PUBLIC KEY` PEM file's text.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.public);
        pem("PUBLIC KEY", &der)
    }
}

/// A private key that signs tokens. Holds the key: it has no `Debug`.
pub struct SigningKey {
    /// PKCS#8 DER.
    pkcs8: Vec<u8>,
    verify: VerifyKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.verify.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Its public half.
    pub fn verify_key(&self) -> &VerifyKey {
        &self.verify
    }

    /// PKCS#8 DER, as `jsonwebtoken` takes it.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| e.to_string())?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "not an Ed25519 public key".to_string())?;
        Ok(SigningKey {
            pkcs8,
            verify: VerifyKey::new(public),
        })
    }

    /// A fresh random key.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        SigningKey::from_pkcs8(document.as_ref().to_vec()).map_err(|_| KeyError::Generate)
    }

    /// Read a `PRIVATE KEY` PEM file.
    pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
        let (kind, der) = read_pem(path)?;
        let malformed = |detail: String| KeyError::Malformed {
            path: path.to_path_buf(),
            detail,
        };
        if kind != SectionKind::PrivateKey {
            return Err(malformed(format!(
                "a signing key is a PRIVATE KEY, not {}",
                label(kind)
            )));
        }
        SigningKey::from_pkcs8(der).map_err(malformed)
    }

    /// Write a fresh key to `path` (mode 0600; it must not exist yet) and return it.
    pub fn create(path: &Path) -> Result<SigningKey, KeyError> {
        let key = SigningKey::generate()?;
        crate::auth::secret::create_private(path, pem("PRIVATE KEY", &key.pkcs8).as_bytes())
            .map_err(|source| KeyError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(key)
    }
}

/// Read the public key of a `PUBLIC KEY` PEM file, or of a `PRIVATE KEY` one.
pub fn read_verify_key(path: &Path) -> Result<VerifyKey, KeyError> {
    let (kind, der) = read_pem(path)?;
    match kind {
        SectionKind::PrivateKey => SigningKey::read(path).map(|key| key.verify),
        SectionKind::PublicKey => match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(public) => public
                .try_into()
                .map(VerifyKey::new)
                .map_err(|_| "a public key is 32 bytes".to_string()),
            None => Err("not an Ed25519 public key".to_string()),
        }
        .map_err(|detail| KeyError::Malformed {
            path: path.to_path_buf(),
            detail,
        }),
        other => Err(KeyError::Malformed {
            path: path.to_path_buf(),
            detail: format!("a PUBLIC KEY or PRIVATE KEY, not {}", label(other)),
        }),
    }
}

/// `der` as PEM text with `label`, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The kind and DER of the first PEM block in the file at `path`.
fn read_pem(path: &Path) -> Result<(SectionKind, Vec<u8>), KeyError> {
    // A key file is a few hundred bytes: refuse to read a huge one whole.
    let text = std::fs::metadata(path)
        .and_then(|meta| match meta.len() {
            0..=16384 => std::fs::read_to_string(path),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "larger than 16 KiB: not a key file",
            )),
        })
        .map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    parse_pem(&text).map_err(|detail| KeyError::Malformed {
        path: path.to_path_buf(),
        detail,
    })
}

/// The kind and DER of the first PEM block of a kind `rustls-pki-types` knows in `text`.
fn parse_pem(text: &str) -> Result<(SectionKind, Vec<u8>), String> {
    <(SectionKind, Vec<u8>)>::from_pem_slice(text.as_bytes())
        .map_err(|e| crate::tls::pem_detail(e, "PEM"))
}

/// The label a PEM block of `kind` begins with.
fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        _ => "an unknown kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_created_key_is_private_and_reads_back_with_its_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let key = SigningKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SigningKey::read(&path).unwrap();
        assert_eq!(again.verify_key(), key.verify_key());
        assert_eq!(read_verify_key(&path).unwrap(), *key.verify_key());
        assert!(SigningKey::create(&path).is_err(), "never overwritten");
        // The public half, as a PUBLIC KEY file, reads back the same.
        let public = dir.path().join("token.pub");
        std::fs::write(&public, key.verify_key().to_pem()).unwrap();
        assert_eq!(read_verify_key(&public).unwrap(), *key.verify_key());
        assert!(
            SigningKey::read(&public).is_err(),
            "a public key cannot sign"
        );
        // Its Debug form names it, and shows nothing of the private key.
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.verify_key().kid), "{shown}");
        assert!(!shown.contains("pkcs8"), "{shown}");
        // Distinct keys, distinct kids; a kid is a 256-bit thumbprint.
        let other = SigningKey::generate().unwrap();
        assert_ne!(other.verify_key().kid, key.verify_key().kid);
        assert_eq!(key.verify_key().kid.len(), 43);
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3: the thumbprint of its example public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = VerifyKey::new(x.try_into().unwrap());
        assert_eq!(key.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn files_that_are_not_keys_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        for (text, why) in [
            ("", "no PEM block"),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
                "base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n",
                "no -----END PRIVATE KEY----- line",
            ),
            // A kind no key is: told as what it is, or as no block at all.
            (
                "-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n",
                "no PEM block",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "CERTIFICATE",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "not an Ed25519",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = read_verify_key(&path).unwrap_err().to_string();
            assert!(error.contains(why), "{text:?}: {error}");
        }
        std::fs::write(&path, vec![b'A'; 20_000]).unwrap();
        assert!(read_verify_key(&path)
            .unwrap_err()
            .to_string()
            .contains("16 KiB"));
        assert!(matches!(
            read_verify_key(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }

    /// Keys made by openssl (with text before the block, with CRLF line ends) and by
    /// `login-server gen-token-key` load, and each pair's halves agree.
    #[test]
    fn key_files_made_by_openssl_and_by_gen_token_key_load() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let kid = |file: &str| read_verify_key(&fixtures.join(file)).unwrap().kid.clone();
        let openssl = SigningKey::read(&fixtures.join("openssl-ed25519.key")).unwrap();
        let ours = SigningKey::read(&fixtures.join("gen-token-key.key")).unwrap();
        assert_eq!(openssl.verify_key().kid, kid("openssl-ed25519.pub"));
        assert_eq!(openssl.verify_key().kid, kid("openssl-ed25519-crlf.pub"));
        assert_eq!(
            openssl.verify_key().kid,
            kid("openssl-ed25519-with-text.key")
        );
        // The kid gen-token-key printed when it made the file.
        assert_eq!(
            ours.verify_key().kid,
            "0_Gz8p3qQMIBN8aBYfsn7Gz94S8R4GPk5Rzpi2ParfY"
        );
        assert_eq!(ours.verify_key().kid, kid("gen-token-key.pub"));
        assert_eq!(ours.verify_key().kid, kid("gen-token-key.key"));
    }

    /// A block of another kind is named for what it is, whichever reader it reaches.
    #[test]
    fn blocks_of_other_kinds_are_named_by_their_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other");
        let block = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
        for label in [
            "CERTIFICATE",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "X509 CRL",
            "CERTIFICATE REQUEST",
            "ECHCONFIG",
        ] {
            std::fs::write(&path, block(label)).unwrap();
            let error = read_verify_key(&path).unwrap_err().to_string();
            assert!(error.ends_with(&format!("not {label}")), "{label}: {error}");
            let error = SigningKey::read(&path).err().unwrap().to_string();
            assert!(error.ends_with(&format!("not {label}")), "{label}: {error}");
        }
        std::fs::write(&path, block("PUBLIC KEY")).unwrap();
        let error = SigningKey::read(&path).err().unwrap().to_string();
        assert!(
            error.ends_with("a signing key is a PRIVATE KEY, not PUBLIC KEY"),
            "{error}"
        );
    }
}
