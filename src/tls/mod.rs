//! TLS between the tiers, with rustls: TLS 1.3 only, early data (0-RTT) never accepted nor
//! sent. The configurations are made from PEM files ([`ServerFiles`], [`ClientFiles`]) and kept
//! in force, reloaded on SIGHUP, as [`Material`]; a connection's handshake runs under one
//! deadline ([`handshake`]); [`Stream`] is a TCP stream with or without TLS, with the keying
//! material that binds the shared-secret proof to its TLS session ([`Stream::binding`]).

pub mod generate;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ConnectionCommon, RootCertStore, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::ops::DerefMut;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The label of the keying material exported from each TLS session for the secret's proof
/// (RFC 8446 section 7.5, empty context, [`BINDING_LEN`] bytes).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-account-db-auth-v1";

/// Bytes of keying material the proof is bound to.
pub const BINDING_LEN: usize = 32;

/// The largest PEM file read (a chain of a few certificates is a few KiB).
const MAX_PEM: u64 = 256 * 1024;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read (missing, permissions, larger than 256 KiB).
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A file holds no PEM block of the kind wanted, or a malformed one.
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    /// A private key file that group or others may read: refused, as ssh refuses such keys.
    #[error("{path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    KeyReadable { path: PathBuf, mode: u32 },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    /// A client-certificate verifier could not be made from the CA file.
    #[error("{path}: {detail}")]
    Verifier { path: PathBuf, detail: String },
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello): how a server
/// that serves TLS and plaintext on one port tells them apart.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// The rustls crypto provider: ring, which the token signatures already use.
/// Its TLS 1.3 suites in this order: AES-128-GCM with SHA-256 first (TLS 1.3's mandatory suite;
/// SHA-256 runs in hardware on most servers, where SHA-384 does not, and the handshake's key
/// schedule is a score of HMACs), then AES-256-GCM-SHA384 and ChaCha20-Poly1305. A server
/// picks by this order, not the client's.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The text of the file at `path`, refused past [`MAX_PEM`].
fn read_small(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Opened without blocking, so that a FIFO put at the path (whose open waits for a writer)
    // cannot hang a reload, and the signal thread with it; only a regular file is read.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read)?
    };
    if !file.metadata().map_err(read)?.is_file() {
        return Err(read(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(read(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than 256 KiB: not a PEM file",
        )));
    }
    Ok(bytes)
}

/// A PEM parsing failure in words: `wanted` names the block looked for (`CERTIFICATE`).
pub fn pem_detail(e: rustls::pki_types::pem::Error, wanted: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => format!("no {wanted} block"),
        Error::MissingSectionEnd { end_marker } => {
            format!(
                "no -----END {}----- line",
                String::from_utf8_lossy(&end_marker)
            )
        }
        Error::IllegalSectionStart { line } => {
            format!(
                "a malformed -----BEGIN line: {}",
                String::from_utf8_lossy(&line)
            )
        }
        other => other.to_string(),
    }
}

/// Every certificate in the PEM file at `path`, in order; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_small(path)?;
    let pem = |detail: String| TlsError::Pem {
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(pem_detail(e, "CERTIFICATE")))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`, which only its owner may read.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mode = std::fs::metadata(path)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyReadable {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let bytes = read_small(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        detail: pem_detail(e, "PRIVATE KEY"),
    })
}

/// Trust anchors: every certificate in the PEM file at `path`.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: "a CA certificate",
            source,
        })?;
    }
    Ok(roots)
}

/// Where a server's TLS material is: its chain and key, and the CA its clients' certificates
/// must come from (none: clients need no certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key, mode 0600.
    pub key: PathBuf,
    /// PEM CA certificates; with it, a client without a certificate from it is refused.
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// A TLS 1.3 server configuration from these files, without early data.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = read_certificates(&self.cert)?;
        check_validity(&self.cert, &chain)?;
        let key = read_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS 1.3",
                source,
            })?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(read_roots(ca)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| TlsError::Verifier {
                            path: ca.clone(),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "the server certificate and key",
                    source,
                })?;
        // Early data is replayable: never accepted (0 is rustls's default; said here).
        config.max_early_data_size = 0;
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// The material of an endpoint served over TLS, loaded, when `cert` and `key` are given (the
/// HTTP endpoint's `--metrics-tls-cert` and `--metrics-tls-key`); `None` without them.
pub fn served(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Arc<Material<ServerFiles>>>, TlsError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let files = ServerFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: None,
    };
    Ok(Some(Arc::new(Material::load(files)?)))
}

/// TLS material that SIGHUP reloads: a [`Material`] of any files.
pub trait Reloadable {
    /// Read the files again; on failure the material in force stays.
    fn reload(&self) -> Result<(), TlsError>;
}

impl<F: Files> Reloadable for Material<F> {
    fn reload(&self) -> Result<(), TlsError> {
        Material::reload(self)
    }
}

/// Reload each of `materials` (named by their flag; `None`: not configured), as SIGHUP asks:
/// a file that fails to load keeps the material in force, and the log says which and why.
/// Returns whether new material is in force for at least one.
pub fn reload_all(materials: &[(&str, Option<&dyn Reloadable>)]) -> bool {
    let mut reloaded = false;
    for (flag, material) in materials {
        let Some(material) = material else { continue };
        match material.reload() {
            Ok(()) => {
                tracing::info!(files = flag, "TLS material reloaded");
                reloaded = true;
            }
            Err(e) => {
                tracing::error!(files = flag, error = %e, "TLS reload failed: the material in force stays");
            }
        }
    }
    if materials.iter().all(|(_, m)| m.is_none()) {
        tracing::info!("nothing to reload: no TLS configured");
    }
    reloaded
}

/// TLS files that make a rustls configuration.
pub trait Files {
    /// The configuration they make.
    type Config;
    /// Read the files and make the configuration.
    fn load(&self) -> Result<Arc<Self::Config>, TlsError>;
    /// Every certificate file they name, whose expiry is watched.
    fn certificates(&self) -> Vec<&Path>;
}

impl Files for ServerFiles {
    type Config = rustls::ServerConfig;
    fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config()
    }
    fn certificates(&self) -> Vec<&Path> {
        std::iter::once(self.cert.as_path())
            .chain(self.client_ca.as_deref())
            .collect()
    }
}

impl Files for ClientFiles {
    type Config = rustls::ClientConfig;
    fn load(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        self.client_config()
    }
    fn certificates(&self) -> Vec<&Path> {
        std::iter::once(self.ca.as_path())
            .chain(self.identity.as_ref().map(|(cert, _)| cert.as_path()))
            .collect()
    }
}

/// The earliest end of validity (notAfter, in seconds since the epoch) of every certificate
/// in `files`; `None` when none can be read.
fn earliest_expiry(files: &[&Path]) -> Option<i64> {
    files
        .iter()
        .filter_map(|path| read_certificates(path).ok())
        .flatten()
        .filter_map(|cert| not_after(&cert))
        .min()
}

/// TLS material in force: the configuration new connections get, replaced by
/// [`Material::reload`] (connections already made keep theirs).
pub struct Material<F: Files> {
    /// Where the material is read from, again on every reload.
    files: F,
    /// What the next handshake uses, and the earliest expiry of its certificates.
    current: parking_lot::RwLock<(Arc<F::Config>, Option<i64>)>,
}

impl<F: Files> Material<F> {
    /// The material `files` hold now.
    pub fn load(files: F) -> Result<Material<F>, TlsError> {
        let loaded = (files.load()?, earliest_expiry(&files.certificates()));
        Ok(Material {
            files,
            current: parking_lot::RwLock::new(loaded),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<F::Config> {
        self.current.read().0.clone()
    }

    /// When the first of the certificates in force expires, in seconds since the epoch.
    pub fn expiry(&self) -> Option<i64> {
        self.current.read().1
    }

    /// Read the files again; on failure the material in force stays, and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = (
            self.files.load()?,
            earliest_expiry(&self.files.certificates()),
        );
        *self.current.write() = fresh;
        Ok(())
    }
}

/// The end of `cert`'s validity (its notAfter), in seconds since the epoch; `None` when the
/// DER cannot be read that far. RFC 5280: `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
/// [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore,
/// notAfter }, ... }, ... }`.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    validity(cert).map(|(_, end)| end)
}

/// When `cert` becomes valid and when it ends (notBefore, notAfter), in seconds since the
/// epoch; `None` when the DER cannot be read that far.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let [_, _, _, validity, _] = tbs_fields(cert)?;
    let (start, rest) = der(validity.body)?;
    let (end, _) = der(rest)?;
    Some((
        asn1_time(start.tag, start.body)?,
        asn1_time(end.tag, end.body)?,
    ))
}

/// `chain`'s first certificate (the one presented), refused when it is not valid now: a server
/// that presents it is trusted by nobody, so it is refused at start and on reload.
fn check_validity(path: &Path, chain: &[CertificateDer<'_>]) -> Result<(), TlsError> {
    let Some((start, end)) = chain.first().and_then(|cert| validity(cert)) else {
        return Ok(()); // rustls says what is wrong with a certificate that cannot be read
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let when = |at: i64| {
        time::OffsetDateTime::from_unix_timestamp(at)
            .map_or_else(|_| at.to_string(), |t| t.to_string())
    };
    let detail = if now > end {
        format!("the certificate expired at {}", when(end))
    } else if now < start {
        format!("the certificate is not valid before {}", when(start))
    } else {
        return Ok(());
    };
    Err(TlsError::Pem {
        path: path.to_path_buf(),
        detail,
    })
}

/// The first fields of `cert`'s tbsCertificate after its version: serialNumber, signature,
/// issuer, validity, subject (tags checked where they are fixed).
fn tbs_fields(cert: &[u8]) -> Option<[Item<'_>; 5]> {
    let (certificate, _) = der(cert)?;
    let (tbs, _) = der(certificate.body)?;
    let mut fields = tbs.body;
    let mut next = || {
        let (item, rest) = der(fields)?;
        fields = rest;
        Some(item)
    };
    let mut serial = next()?;
    if serial.tag == 0xa0 {
        serial = next()?; // the version was there; this is the serial number
    }
    let (signature, issuer, validity, subject) = (next()?, next()?, next()?, next()?);
    let tags = (
        certificate.tag,
        tbs.tag,
        serial.tag,
        validity.tag,
        subject.tag,
    );
    if tags != (0x30, 0x30, 0x02, 0x30, 0x30) {
        return None;
    }
    Some([serial, signature, issuer, validity, subject])
}

/// The common name (CN) of `cert`'s subject, if it has one in a string form.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    let [_, _, _, _, subject] = tbs_fields(cert)?;
    let mut names = subject.body;
    while let Some((set, rest)) = der(names) {
        names = rest;
        let (pair, _) = der(set.body)?;
        let (oid, value) = der(pair.body)?;
        let (value, _) = der(value)?;
        if oid.tag == 0x06 && oid.body == COMMON_NAME && matches!(value.tag, 0x0c | 0x13 | 0x16) {
            return String::from_utf8(value.body.to_vec()).ok();
        }
    }
    None
}

/// One DER item: its tag and its contents.
struct Item<'a> {
    /// The identifier octet (single-byte tags only).
    tag: u8,
    /// The contents.
    body: &'a [u8],
}

/// The DER item at the start of `input`, and what follows it; `None` when it runs past the
/// input or its length is not DER's (at most 4 length octets).
fn der(input: &[u8]) -> Option<(Item<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let octets = rest.get(..n)?;
            let len = octets
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return None,
    };
    let body = rest.get(..len)?;
    Some((Item { tag, body }, &rest[len..]))
}

/// An ASN.1 UTCTime (tag 0x17, `YYMMDDHHMMSSZ`, years 1950 to 2049) or GeneralizedTime (0x18,
/// `YYYYMMDDHHMMSSZ`) in seconds since the epoch.
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let two = |at: usize| rest.get(at..at + 2)?.parse::<u8>().ok();
    let month = time::Month::try_from(two(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, two(2)?).ok()?;
    let clock = time::Time::from_hms(two(4)?, two(6)?, two(8)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Where a client's TLS material is: the CA its servers' certificates must come from, and its
/// own certificate and key, if its servers ask for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// PEM CA certificates the server's chain must lead to.
    pub ca: PathBuf,
    /// PEM chain and key presented to servers that require a client certificate.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientFiles {
    /// A TLS 1.3 client configuration from these files, without early data.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let roots = read_roots(&self.ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS 1.3",
                source,
            })?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    {
                        let chain = read_certificates(cert)?;
                        check_validity(cert, &chain)?;
                        chain
                    },
                    read_key(key)?,
                )
                .map_err(|source| TlsError::Rustls {
                    what: "the client certificate and key",
                    source,
                })?,
        };
        config.enable_early_data = false;
        Ok(Arc::new(config))
    }
}

/// The name a server's certificate is checked against: `host` as an IP address (checked
/// against the certificate's IP SANs) or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|_| {
            format!("{host:?} is not a DNS name or IP address to check a certificate against")
        }),
    }
}

/// Run `conn`'s handshake over `tcp` until it completes or `deadline` passes, however the
/// peer's bytes trickle in: every read waits at most what is left. A failed handshake sends
/// its alert, if it can, before the error is returned.
pub fn handshake<S>(
    conn: &mut impl DerefMut<Target = ConnectionCommon<S>>,
    tcp: &mut TcpStream,
    deadline: Instant,
) -> io::Result<()> {
    loop {
        while conn.wants_write() {
            set_timeouts(tcp, deadline)?;
            conn.write_tls(tcp)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        set_timeouts(tcp, deadline)?;
        if conn.read_tls(tcp)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Err(e) = conn.process_new_packets() {
            // The alert rustls queued, sent if the peer still listens.
            let _ = set_timeouts(tcp, deadline).and_then(|()| conn.write_tls(tcp));
            return Err(io::Error::new(io::ErrorKind::InvalidData, describe(&e)));
        }
    }
}

/// Both timeouts of `tcp` set to what is left before `deadline`; `TimedOut` once it passed.
fn set_timeouts(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}

/// A handshake failure in words an operator acts on: whose certificate, and what is wrong.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => {
                "the peer's certificate is not from a trusted CA (unknown issuer)".into()
            }
            C::BadSignature => {
                "the peer's certificate is not from a trusted CA (its signature does not verify)"
                    .into()
            }
            C::Expired | C::ExpiredContext { .. } => "the peer's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the peer's certificate is not valid yet".into()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("the peer's certificate is not valid for the name checked ({e})")
            }
            C::Revoked => "the peer's certificate is revoked".into(),
            _ => format!("the peer's certificate is refused: {e}"),
        },
        rustls::Error::NoCertificatesPresented => {
            "the peer presented no certificate, and one is required".into()
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the peer refused the handshake ({alert:?})")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A TCP stream, with TLS or without.
pub enum Stream {
    /// Plaintext (no TLS configured, or `--tls-optional` and a plaintext peer).
    Plain(TcpStream),
    /// A server's side of a TLS connection (account-db's listener, the HTTP endpoint).
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    /// login-server's side of a TLS connection.
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP stream beneath: for timeouts, shutdown and the peer's address.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Server(tls) => &tls.sock,
            Stream::Client(tls) => &tls.sock,
        }
    }

    /// The keying material exported from this connection's TLS session
    /// ([`EXPORTER_LABEL`]), to bind the secret's proof to it; `None` without TLS.
    pub fn binding(&self) -> Option<[u8; BINDING_LEN]> {
        let out = [0u8; BINDING_LEN];
        let exported = match self {
            Stream::Plain(_) => return None,
            Stream::Server(tls) => tls
                .conn
                .export_keying_material(out, EXPORTER_LABEL, Some(&[])),
            Stream::Client(tls) => tls
                .conn
                .export_keying_material(out, EXPORTER_LABEL, Some(&[])),
        };
        // Only before the handshake completes can exporting fail: a connection past it always
        // has its material.
        exported.ok()
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Server(tls) => tls.read(buf),
            Stream::Client(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Server(tls) => tls.write(buf),
            Stream::Client(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Server(tls) => tls.flush(),
            Stream::Client(tls) => tls.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A CA's directory from `gen-tls`.
    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        generate::write(dir.path(), &names, true, 30, None).unwrap();
        dir
    }

    fn server_files(dir: &Path) -> ServerFiles {
        ServerFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: None,
        }
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let dir = pki();
        let key = dir.path().join("server.key");
        assert!(read_key(&key).is_ok());
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_key(&key) {
                Err(TlsError::KeyReadable { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("{mode:o}: {other:?}"),
            }
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(server_files(dir.path()).server_config().is_ok());
    }

    #[test]
    fn files_that_are_not_what_they_should_be_are_refused_with_the_reason() {
        let dir = pki();
        let path = dir.path().join("bad.pem");
        let read = |text: &[u8]| {
            std::fs::write(&path, text).unwrap();
            read_certificates(&path).unwrap_err().to_string()
        };
        assert!(read(b"").contains("no CERTIFICATE block"));
        assert!(read(b"-----BEGIN CERTIFICATE-----\nAAAA\n").contains("END"));
        assert!(read(&vec![b'A'; 300 * 1024]).contains("256 KiB"));
        assert!(read(&vec![b'A'; 256 * 1024 + 1]).contains("256 KiB"));
        assert!(read(&vec![b'A'; 256 * 1024]).contains("no CERTIFICATE block"));
        // A key where a certificate should be, and a certificate where a key should be.
        let key_as_cert = read_certificates(&dir.path().join("server.key"));
        assert!(key_as_cert
            .unwrap_err()
            .to_string()
            .contains("no CERTIFICATE"));
        let cert = dir.path().join("server.pem");
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&cert)
            .unwrap_err()
            .to_string()
            .contains("no PRIVATE KEY"));
        // A key that is not the certificate's.
        let mut files = server_files(dir.path());
        files.key = dir.path().join("client.key");
        let mismatch = files.server_config().unwrap_err().to_string();
        assert!(
            mismatch.contains("the server certificate and key"),
            "{mismatch}"
        );
        assert!(matches!(
            read_certificates(&dir.path().join("missing.pem")),
            Err(TlsError::Read { .. })
        ));
        // A FIFO (whose open would wait for a writer) and a directory: refused at once.
        let fifo = dir.path().join("fifo.pem");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path given and creates a FIFO there.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for path in [fifo, dir.path().to_path_buf()] {
            let error = read_certificates(&path).unwrap_err().to_string();
            assert!(
                error.contains("not a regular file") || error.contains("directory"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_certificate_not_valid_now_is_refused() {
        let dir = pki();
        let ca = generate::Authority::new("test").unwrap();
        let names = ["localhost".to_string()];
        for (from_days, days, said) in [(-30, 1, "expired at"), (2, 30, "not valid before")] {
            let issued = ca
                .issue(&names, false, time::Duration::days(from_days), days)
                .unwrap();
            std::fs::write(dir.path().join("server.pem"), &issued.cert).unwrap();
            std::fs::write(dir.path().join("server.key"), &issued.key).unwrap();
            let error = server_files(dir.path())
                .server_config()
                .unwrap_err()
                .to_string();
            assert!(error.contains(said), "{error}");
        }
        let issued = ca
            .issue(&names, false, -time::Duration::hours(1), 1)
            .unwrap();
        std::fs::write(dir.path().join("server.pem"), &issued.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &issued.key).unwrap();
        assert!(server_files(dir.path()).server_config().is_ok());
    }

    #[test]
    fn early_data_is_never_accepted_nor_sent() {
        let dir = pki();
        let server = server_files(dir.path()).server_config().unwrap();
        assert_eq!(server.max_early_data_size, 0);
        let client = ClientFiles {
            ca: dir.path().join("ca.pem"),
            identity: None,
        }
        .client_config()
        .unwrap();
        assert!(!client.enable_early_data);
    }

    #[test]
    fn names_are_checked_as_ip_addresses_or_dns_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("db.example.org"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("not a name").is_err());
        assert!(server_name("").is_err());
    }

    /// A peer that trickles a byte every 100 ms keeps no handshake past its deadline.
    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline() {
        let dir = pki();
        let config = server_files(dir.path()).server_config().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let trickler = std::thread::spawn(move || {
            let mut peer = TcpStream::connect(addr).unwrap();
            // A ClientHello's record header, then one byte at a time for ever (or until cut).
            let _ = peer.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
            for _ in 0..50 {
                std::thread::sleep(Duration::from_millis(100));
                if peer.write_all(&[0x01]).is_err() {
                    return;
                }
            }
        });
        let (mut tcp, _) = listener.accept().unwrap();
        let mut conn = ServerConnection::new(config).unwrap();
        let started = Instant::now();
        let cut = handshake(&mut conn, &mut tcp, started + Duration::from_millis(500));
        let took = started.elapsed();
        assert!(cut.is_err());
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        drop(tcp);
        trickler.join().unwrap();
    }

    #[test]
    fn failures_are_told_in_an_operators_words() {
        use rustls::CertificateError as C;
        let told = |e: rustls::Error| describe(&e);
        assert!(told(rustls::Error::InvalidCertificate(C::UnknownIssuer)).contains("trusted CA"));
        assert!(told(rustls::Error::InvalidCertificate(C::BadSignature)).contains("trusted CA"));
        assert!(told(rustls::Error::InvalidCertificate(C::Expired)).contains("expired"));
        assert!(told(rustls::Error::InvalidCertificate(C::NotValidYet)).contains("not valid yet"));
        assert!(told(rustls::Error::InvalidCertificate(C::NotValidForName)).contains("name"));
        assert!(told(rustls::Error::InvalidCertificate(C::Revoked)).contains("revoked"));
        assert!(told(rustls::Error::NoCertificatesPresented).contains("no certificate"));
        assert!(told(rustls::Error::DecryptError).contains("TLS handshake failed"));
    }

    #[test]
    fn the_end_of_a_certificates_validity_is_read() {
        let ca = generate::Authority::new("test").unwrap();
        let names = ["localhost".to_string()];
        for (from_hours, days) in [(-1, 30), (-48, 1), (0, 365 * 40)] {
            let issued = ca
                .issue(&names, false, time::Duration::hours(from_hours), days)
                .unwrap();
            let cert = CertificateDer::from_pem_slice(issued.cert.as_bytes()).unwrap();
            let expected = (time::OffsetDateTime::now_utc()
                + time::Duration::hours(from_hours)
                + time::Duration::days(days))
            .unix_timestamp();
            let read = not_after(&cert).unwrap();
            assert!((read - expected).abs() <= 2, "{read} vs {expected}");
            // Whatever is cut off or flipped, the reader answers without panicking.
            for cut in 0..cert.len() {
                let _ = not_after(&cert[..cut]);
            }
            for at in 0..cert.len() {
                let mut flipped = cert.to_vec();
                flipped[at] ^= 0xff;
                let _ = not_after(&flipped);
            }
        }
        // Both time forms, and what is not a time.
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x17, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(asn1_time(0x18, b"20500101000000Z"), Some(2_524_608_000));
        for (tag, bad) in [
            (0x17, &b"4912312359Z"[..]),
            (0x18, b"491231235959Z"),
            (0x17, b"491331235959Z"),
            (0x17, b"49123123595+Z"),
            (0x17, b"491231235959"),
            (0x04, b"491231235959Z"),
        ] {
            assert_eq!(asn1_time(tag, bad), None, "{bad:?}");
        }
    }
}
