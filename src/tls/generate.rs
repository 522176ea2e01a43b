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
    /// `--ca DIR` holds no CA this command made, or its key is not the certificate's.
    #[error("cannot use the CA {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    /// A name is neither a DNS name nor an IP address (a `--db` address's port is not part of
    /// it).
    #[error("{0}")]
    Name(String),
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
        Authority::with_key(name, KeyPair::generate()?)
    }

    /// The CA `key` signs for, named `name` (its certificate made anew: what it signs
    /// verifies against the certificate first made with the same name and key).
    fn with_key(name: &str, key: KeyPair) -> Result<Authority, GenError> {
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

    /// The CA an earlier `gen-tls` wrote to `dir` (`ca.pem`, `ca.key`), to sign more
    /// certificates with: another account-db's, or a renewed one.
    pub fn read(dir: &Path) -> Result<Authority, GenError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let unreadable = |path: &Path, detail: String| GenError::Read {
            path: path.to_path_buf(),
            detail,
        };
        let chain = super::read_certificates(&cert_path)
            .map_err(|e| unreadable(&cert_path, e.to_string()))?;
        let name = chain
            .first()
            .and_then(|cert| super::subject_common_name(cert))
            .ok_or_else(|| unreadable(&cert_path, "no CA certificate made by gen-tls".into()))?;
        let key_text =
            std::fs::read_to_string(&key_path).map_err(|e| unreadable(&key_path, e.to_string()))?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| unreadable(&key_path, e.to_string()))?;
        let raw = key.public_key_raw().to_vec();
        let belongs = chain
            .first()
            .is_some_and(|cert| cert.windows(raw.len()).any(|w| w == raw));
        if !belongs {
            return Err(unreadable(&key_path, "not the key of ca.pem".into()));
        }
        Authority::with_key(&name, key)
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
        let usage = match client {
            true => Usage::Client,
            false => Usage::Server,
        };
        self.issue_for(names, usage, from, days)
    }

    /// [`Authority::issue`] for `usage`.
    pub fn issue_for(
        &self,
        names: &[String],
        usage: Usage,
        from: Duration,
        days: i64,
    ) -> Result<Issued, GenError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let common = names.first().map_or("login-server", String::as_str);
        params.distinguished_name.push(DnType::CommonName, common);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
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

/// What a certificate may prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's identity (TLS Web Server Authentication).
    Server,
    /// A client's (TLS Web Client Authentication).
    Client,
    /// Both: a peer that presents one certificate to serve and to connect (an etcd member on
    /// its peer links, a Patroni node calling the others).
    Peer,
}

/// Write to `dir` a CA and certificates: with `ca_dir`, the CA written there before (`ca.pem`
/// copied; its key stays where it is), else a fresh one (`ca.pem`, `ca.key`); a server
/// certificate for `names` (`server.pem`, `server.key`) and with `client` a client
/// certificate (`client.pem`, `client.key`), each valid `days` from an hour ago; keys mode
/// 0600. Nothing is overwritten: an existing file (or link) stops it before anything is
/// written. Returns the files written.
pub fn write(
    dir: &Path,
    names: &[String],
    client: bool,
    days: i64,
    ca_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, GenError> {
    write_as(dir, names, Usage::Server, client, days, ca_dir)
}

/// [`write()`], the server certificate for `usage` ([`Usage::Peer`]: `gen-tls --peer`).
pub fn write_as(
    dir: &Path,
    names: &[String],
    usage: Usage,
    client: bool,
    days: i64,
    ca_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, GenError> {
    let names = names
        .iter()
        .map(|name| match super::server_name(name) {
            Ok(rustls::pki_types::ServerName::IpAddress(ip)) => {
                Ok(std::net::IpAddr::from(ip).to_string())
            }
            Ok(_) => Ok(name.clone()),
            Err(why) => Err(GenError::Name(why)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (ca, ca_files) = match ca_dir {
        Some(ca_dir) => {
            let ca = Authority::read(ca_dir)?;
            let cert =
                std::fs::read_to_string(ca_dir.join("ca.pem")).map_err(|e| GenError::Read {
                    path: ca_dir.join("ca.pem"),
                    detail: e.to_string(),
                })?;
            (ca, vec![("ca.pem", cert, false)])
        }
        None => {
            let stamp = OffsetDateTime::now_utc().unix_timestamp();
            let ca = Authority::new(&format!("login-server tiers CA {stamp}"))?;
            let files = vec![
                ("ca.pem", ca.cert_pem(), false),
                ("ca.key", ca.key_pem(), true),
            ];
            (ca, files)
        }
    };
    write_with(&ca, ca_files, dir, &names, usage, client, days)
}

/// [`write()`] with `ca` signing, and `files` (the CA's) written first.
pub fn write_with(
    ca: &Authority,
    mut files: Vec<(&'static str, String, bool)>,
    dir: &Path,
    names: &[String],
    usage: Usage,
    client: bool,
    days: i64,
) -> Result<Vec<PathBuf>, GenError> {
    let server = ca.issue_for(names, usage, -Duration::hours(1), days)?;
    files.push(("server.pem", server.cert, false));
    files.push(("server.key", server.key, true));
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
    // symlink_metadata: a dangling link counts as taken too.
    if let Some(taken) = paths.iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// Whether `dir`'s server certificate is trusted under `ca`'s `ca.pem` for `name`.
    fn trusted(dir: &Path, ca: &Path, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let roots = crate::tls::read_roots(&ca.join("ca.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let cert = CertificateDer::from_pem_file(dir.join("server.pem")).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    use std::sync::Arc;

    #[test]
    fn a_second_certificate_is_signed_by_the_first_ca() {
        let root = tempfile::tempdir().unwrap();
        let (first, second) = (root.path().join("first"), root.path().join("second"));
        write(&first, &["db1.internal".into()], false, 30, None).unwrap();
        let written = write(
            &second,
            &["db2.internal".into(), "[::1]".into()],
            true,
            30,
            Some(&first),
        )
        .unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "server.pem",
                "server.key",
                "client.pem",
                "client.key"
            ]
        );
        assert_eq!(
            std::fs::read(first.join("ca.pem")).unwrap(),
            std::fs::read(second.join("ca.pem")).unwrap()
        );
        trusted(&second, &first, "db2.internal").unwrap();
        trusted(&second, &first, "::1").unwrap();
        assert!(
            trusted(&second, &first, "db1.internal").is_err(),
            "not its name"
        );
        // Another CA's key beside the first's certificate: refused, nothing written.
        let other = root.path().join("other");
        write(&other, &["x".into()], false, 30, None).unwrap();
        std::fs::copy(first.join("ca.pem"), other.join("ca-first.pem")).unwrap();
        let mixed = root.path().join("mixed");
        std::fs::create_dir(&mixed).unwrap();
        std::fs::copy(first.join("ca.pem"), mixed.join("ca.pem")).unwrap();
        std::fs::copy(other.join("ca.key"), mixed.join("ca.key")).unwrap();
        let error = write(
            &root.path().join("third"),
            &["y".into()],
            false,
            30,
            Some(&mixed),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("not the key of ca.pem"), "{error}");
        assert!(!root.path().join("third").exists());
    }

    #[test]
    fn names_a_certificate_cannot_be_checked_against_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "*",
            "db 1.internal",
            "10.0.0.5:9999",
            "db1.internal:9999",
            "a..b",
        ] {
            let dir = root.path().join("bad");
            let error = write(&dir, &[bad.to_string()], false, 30, None)
                .err()
                .unwrap();
            assert!(matches!(error, GenError::Name(_)), "{bad:?}: {error}");
            assert!(!dir.exists(), "{bad:?}: something was written");
        }
        // Every CA a fresh run makes has a name of its own.
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        write(&a, &["x".into()], false, 30, None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write(&b, &["x".into()], false, 30, None).unwrap();
        let cn = |dir: &Path| {
            let cert = CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap();
            crate::tls::subject_common_name(&cert).unwrap()
        };
        assert_ne!(cn(&a), cn(&b));
        assert!(cn(&a).starts_with("login-server tiers CA "));
    }

    /// Whether `dir`'s server certificate is accepted as a client's under its own CA.
    fn accepted_as_client(dir: &Path) -> bool {
        let roots = crate::tls::read_roots(&dir.join("ca.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let cert = CertificateDer::from_pem_file(dir.join("server.pem")).unwrap();
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_peer_certificate_serves_and_connects_a_server_one_only_serves() {
        let names = ["127.0.0.1".to_string()];
        let (peer, server) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_as(peer.path(), &names, Usage::Peer, false, 30, None).unwrap();
        write_as(server.path(), &names, Usage::Server, false, 30, None).unwrap();
        for dir in [peer.path(), server.path()] {
            trusted(dir, dir, "127.0.0.1").unwrap();
        }
        assert!(accepted_as_client(peer.path()));
        // What etcd refused on its peer links: "incompatible key usage".
        assert!(!accepted_as_client(server.path()));
    }

    #[test]
    fn a_dangling_link_in_the_way_stops_it_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", dir.path().join("server.key")).unwrap();
        let error = write(dir.path(), &["x".into()], false, 30, None)
            .err()
            .unwrap();
        assert!(error.to_string().contains("server.key"), "{error}");
        assert!(!dir.path().join("ca.pem").exists());
    }
}
