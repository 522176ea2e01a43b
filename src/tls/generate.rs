//! `account-db gen-tls`: a small CA and the certificates the tiers present, for trying TLS
//! out and for tests. A production fleet takes its certificates from its own CA.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Days the CA is valid.
pub const CA_DAYS: i64 = 3650;

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// A name given is neither a DNS name nor an IP address.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A file exists already (nothing is overwritten), or the directory cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its key, in PEM.
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

/// A CA: its certificate, to sign with, and its key.
pub struct Authority {
    /// The CA certificate.
    cert: rcgen::Certificate,
    /// Its key.
    key: KeyPair,
}

impl Authority {
    /// A fresh CA named `name`, valid from an hour ago for [`CA_DAYS`].
    pub fn new(name: &str) -> Result<Authority, GenError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert, key })
    }

    /// The CA certificate, in PEM: what the other side trusts.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's key, in PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `names` (DNS names or IP addresses, as SANs) for a server, or with
    /// `client` for a client, valid from `from` (relative to now: negative for the past) for
    /// `days`.
    pub fn issue(
        &self,
        names: &[String],
        client: bool,
        from: Duration,
        days: i64,
    ) -> Result<Issued, GenError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let common = names.first().map_or("login-server", String::as_str);
        params.distinguished_name.push(DnType::CommonName, common);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match client {
            true => ExtendedKeyUsagePurpose::ClientAuth,
            false => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        let start = OffsetDateTime::now_utc() + from;
        params.not_before = start;
        params.not_after = start + Duration::days(days);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Write to `dir` a fresh CA (`ca.pem`, `ca.key`), a server certificate for `names`
/// (`server.pem`, `server.key`) and with `client` a client certificate (`client.pem`,
/// `client.key`), each valid `days` from an hour ago; keys mode 0600. Nothing is overwritten:
/// an existing file stops it before anything is written. Returns the files written.
pub fn write(
    dir: &Path,
    names: &[String],
    client: bool,
    days: i64,
) -> Result<Vec<PathBuf>, GenError> {
    write_with(
        &Authority::new("login-server tiers CA")?,
        dir,
        names,
        client,
        days,
    )
}

/// [`write()`], with `ca` as the CA.
pub fn write_with(
    ca: &Authority,
    dir: &Path,
    names: &[String],
    client: bool,
    days: i64,
) -> Result<Vec<PathBuf>, GenError> {
    let server = ca.issue(names, false, -Duration::hours(1), days)?;
    let mut files = vec![
        ("ca.pem", ca.cert_pem(), false),
        ("ca.key", ca.key_pem(), true),
        ("server.pem", server.cert, false),
        ("server.key", server.key, true),
    ];
    if client {
        let issued = ca.issue(
            &["login-server".to_string()],
            true,
            -Duration::hours(1),
            days,
        )?;
        files.push(("client.pem", issued.cert, false));
        files.push(("client.key", issued.key, true));
    }
    let paths: Vec<PathBuf> = files.iter().map(|(name, _, _)| dir.join(name)).collect();
    if let Some(taken) = paths.iter().find(|p| p.exists()) {
        return Err(GenError::Write {
            path: taken.clone(),
            source: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| GenError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for ((_, text, private), path) in files.iter().zip(&paths) {
        let written = match private {
            true => crate::auth::secret::create_private(path, text.as_bytes()),
            false => write_new(path, text.as_bytes()),
        };
        written.map_err(|source| GenError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(paths)
}

/// Write `contents` to a new file at `path` (mode 0644).
fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(contents)
}
