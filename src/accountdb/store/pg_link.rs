//! How account-db reaches PostgreSQL: TLS as `--store`'s `sslmode` says (libpq's meanings,
//! with rustls: the `postgres` crate knows only disable, prefer and require), trust anchors from
//! its `sslrootcert`, and the password from `--store-password-file` or a pgpass file read as
//! libpq reads one. No password ever reaches a log line or an error.

use super::contract::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as `--store` gives it (default `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, the certificate not checked; plaintext otherwise.
    Prefer,
    /// TLS, the certificate not checked: encrypted, but anyone on the path may pose as the
    /// server.
    Require,
    /// TLS, the chain checked against `sslrootcert`, not the name.
    VerifyCa,
    /// TLS, the chain and the host name (of every host) checked.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<SslMode, StoreError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(StoreError::BadUrl(format!(
                    "sslmode={other}: one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// A PostgreSQL connection as `--store` describes it: the `postgres` crate's configuration,
/// the TLS connector, and the mode.
pub struct PgLink {
    /// Hosts, database, user, password; `sslmode` mapped to the crate's three.
    pub config: postgres::Config,
    /// One configuration per host of `--store`, in its order (libpq's multi-host form
    /// `h1:5432,h2:5433`), each asking for a writable node; named `host:port`.
    pub hosts: Vec<(String, postgres::Config)>,
    /// Makes each connection's TLS, checking what `mode` asks.
    pub tls: MakeRustlsConnect,
    /// As `--store` says.
    pub mode: SslMode,
}

/// Read `url`: `sslmode` and `sslrootcert` taken out of its query (the crate refuses the first's
/// verify modes and knows nothing of the second), the rest parsed by the `postgres` crate. The
/// password: the URL's, else `password_file`'s (its whole text less a final newline), else a
/// pgpass file's entry (`PGPASSFILE`, else `~/.pgpass`), looked up per host.
/// `target_session_attrs` may only be `read-write`, which account-db asks of every host anyway:
/// it writes.
pub fn link(url: &str, password_file: Option<&Path>) -> Result<PgLink, StoreError> {
    let (base, query) = split_url(url);
    let query = query.unwrap_or_default();
    let mut mode = SslMode::Prefer;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = value.parse()?,
            Some(("sslrootcert", value)) => root = Some(PathBuf::from(value)),
            Some(("target_session_attrs", "read-write")) => {}
            Some(("target_session_attrs", other)) => {
                return Err(StoreError::BadUrl(format!(
                    "target_session_attrs={other}: account-db writes, so it connects only to a \
                     writable node (read-write, the default here)"
                )))
            }
            _ => kept.push(pair),
        }
    }
    // The crate's three: the verify modes are require plus our verifier.
    kept.push(match mode {
        SslMode::Disable => "sslmode=disable",
        SslMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    kept.push("target_session_attrs=read-write");
    let query = kept.join("&");
    let password = password_file.map(read_password_file).transpose()?;
    let parse = |base: &str| -> Result<postgres::Config, StoreError> {
        let mut config: postgres::Config = format!("{base}?{query}")
            .parse()
            .map_err(|e: postgres::Error| StoreError::BadUrl(e.to_string()))?;
        if config.get_password().is_none() {
            if let Some(password) = password.clone().or_else(|| pgpass(&config)) {
                config.password(password);
            }
        }
        Ok(config)
    };
    let config = parse(base)?;
    let (before, hosts, after) = split_hosts(base);
    if hosts.split(',').any(str::is_empty) && hosts.contains(',') {
        return Err(StoreError::BadUrl(
            "an empty host in the host list (h1:5432,,h2): remove the extra comma".into(),
        ));
    }
    let hosts = hosts
        .split(',')
        .map(|host| {
            let one = parse(&format!("{before}{host}{after}"))?;
            Ok((host_name(&one), one))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let tls = MakeRustlsConnect::new(client_config(mode, root.as_deref())?);
    Ok(PgLink {
        config,
        hosts,
        tls,
        mode,
    })
}

/// `base` (a URL without its query) cut around its host list: what comes before it (scheme and
/// credentials), the list (`h1:5432,h2:5433`), and what follows (the database's path).
fn split_hosts(base: &str) -> (&str, &str, &str) {
    let start = match base.find('@') {
        Some(at) => at + 1,
        None => base.find("://").map_or(0, |scheme| scheme + 3),
    };
    let end = base[start..]
        .find('/')
        .map_or(base.len(), |slash| start + slash);
    (&base[..start], &base[start..end], &base[end..])
}

/// A one-host configuration's name in logs and metrics: `host:port`.
fn host_name(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// `url` cut where the `postgres` crate's parser starts its query: at the first `?` after the
/// credentials, which end at the first `@` (a password may hold a `?`).
pub fn split_url(url: &str) -> (&str, Option<&str>) {
    // The scheme (`postgres://`) holds neither `@` nor `?`.
    let hosts = url.find('@').map_or(0, |at| at + 1);
    match url[hosts..].find('?') {
        Some(at) => (&url[..hosts + at], Some(&url[hosts + at + 1..])),
        None => (url, None),
    }
}

/// Whether the query key `key` (percent-encoded or not, in any case) names the password.
pub fn is_password_key(key: &str) -> bool {
    percent_decode(key).eq_ignore_ascii_case("password")
}

/// `text` with `%XX` escapes decoded (bytes that are not UTF-8 replaced).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls configuration for `mode`: for the verify modes, trust anchors from `root`
/// (libpq's default `~/.postgresql/root.crt`).
pub(super) fn client_config(
    mode: SslMode,
    root: Option<&Path>,
) -> Result<rustls::ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::BadUrl(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Lenient {
            provider,
            chain: None,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = match root {
                Some(root) => root.to_path_buf(),
                None => home().join(".postgresql/root.crt"),
            };
            let roots = crate::tls::read_roots(&root).map_err(|e| {
                StoreError::BadUrl(format!("sslmode=verify-*: the CA (sslrootcert): {e}"))
            })?;
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| StoreError::BadUrl(format!("sslrootcert: {e}")))?;
            match mode {
                SslMode::VerifyCa => Arc::new(Lenient {
                    provider,
                    chain: Some(webpki),
                }),
                _ => webpki,
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The home directory, as libpq finds it.
fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// `--store-password-file`: its text, less one final newline; refused if group or others may
/// read it.
fn read_password_file(path: &Path) -> Result<String, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |detail: String| {
        StoreError::BadUrl(format!(
            "--store-password-file {}: {detail}",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unreadable(
            "readable by group or others: chmod 600 it".into(),
        ));
    }
    if meta.len() > 4096 {
        return Err(unreadable("larger than 4 KiB: not a password".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// The password a pgpass file holds for `config`'s first host, port, database and user, as libpq
/// reads it: `PGPASSFILE` or `~/.pgpass`, ignored (with a warning) unless only its owner may
/// read it; lines `host:port:database:user:password`, `*` matching anything, `\:` and `\\`
/// escaped, `#` comments.
fn pgpass(config: &postgres::Config) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE").map_or_else(|| home().join(".pgpass"), PathBuf::from);
    pgpass_from(&path, config)
}

/// [`pgpass`] from the file at `path`.
fn pgpass_from(path: &Path, config: &postgres::Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %path.display(), "password file ignored: readable by group or others (chmod 600 it)");
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    pgpass_lookup(&text, [&host, &port, database, user])
}

/// The password of the first line of `text` whose fields match `wanted` (host, port,
/// database, user).
fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(split_pgpass_line)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(f, w)| f == "*" || f == w)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// A pgpass line's five fields, unescaped; `None` when it has fewer.
fn split_pgpass_line(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next()?;
                fields.last_mut()?.push(next);
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

/// libpq's lenient modes: `prefer` and `require` check nothing of the certificate (the link
/// is encrypted to whoever answered), `verify-ca` (with `chain`) checks the chain against the
/// trust anchors whatever name the certificate holds. The handshake's signatures are checked
/// always.
#[derive(Debug)]
struct Lenient {
    /// Whose signature algorithms check the handshake.
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The chain's verifier, for `verify-ca`.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the name after the chain: a name error means the chain held.
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_and_the_rest_kept() {
        let link = link(
            "postgres://app@db1:5433,db2:5434/accounts?sslmode=require&application_name=x",
            None,
        )
        .unwrap();
        assert_eq!(link.mode, SslMode::Require);
        assert_eq!(
            link.config.get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        assert_eq!(link.config.get_application_name(), Some("x"));
        assert_eq!(link.config.get_ports(), &[5433, 5434]);
        let plain = super::link("postgres://app@db/accounts", None).unwrap();
        assert_eq!(plain.mode, SslMode::Prefer);
        assert_eq!(
            plain.config.get_ssl_mode(),
            postgres::config::SslMode::Prefer
        );
        for verify in ["verify-ca", "verify-full"] {
            let url = format!("postgres://app@db/a?sslmode={verify}&sslrootcert=/dev/null");
            // /dev/null holds no CA: refused, not taken for plaintext or unchecked TLS.
            assert!(super::link(&url, None).is_err(), "{verify}");
        }
        let off = super::link("postgres://app@db/accounts?sslmode=disable", None).unwrap();
        assert_eq!(
            off.config.get_ssl_mode(),
            postgres::config::SslMode::Disable
        );
        assert!(super::link("postgres://app@db/a?sslmode=verify-all", None).is_err());
        // The verify modes need their CA, and say so.
        let error = super::link(
            "postgres://app@db/a?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("sslrootcert") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn every_host_of_a_multi_host_url_is_one_writable_node() {
        let link = link(
            "postgres://app:pw@h1:5433,h2,[::1]:5435/accounts?sslmode=disable&target_session_attrs=read-write",
            None,
        )
        .unwrap();
        let names: Vec<&str> = link.hosts.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["h1:5433", "h2:5432", "[::1]:5435"]);
        for (name, config) in &link.hosts {
            assert_eq!(config.get_hosts().len(), 1, "{name}");
            assert_eq!(config.get_password(), Some(&b"pw"[..]), "{name}");
            assert_eq!(config.get_dbname(), Some("accounts"), "{name}");
            assert_eq!(
                config.get_ssl_mode(),
                postgres::config::SslMode::Disable,
                "{name}"
            );
            assert_eq!(
                config.get_target_session_attrs(),
                postgres::config::TargetSessionAttrs::ReadWrite,
                "{name}"
            );
        }
        // A single host is asked for a writable node too; anything else is refused.
        let one = super::link("postgres://app@db/accounts", None).unwrap();
        assert_eq!(one.hosts.len(), 1);
        assert_eq!(
            one.hosts[0].1.get_target_session_attrs(),
            postgres::config::TargetSessionAttrs::ReadWrite
        );
        for empty in [
            "postgres://app@a,,b/x",
            "postgres://app@,a/x",
            "postgres://app@a,/x",
        ] {
            let error = super::link(empty, None).err().unwrap().to_string();
            assert!(error.contains("empty host"), "{empty}: {error}");
        }
        let any = super::link("postgres://app@a,b/x?target_session_attrs=any", None);
        let error = any.err().unwrap().to_string();
        assert!(error.contains("read-write"), "{error}");
        assert_eq!(split_hosts("postgres://h/db"), ("postgres://", "h", "/db"));
        assert_eq!(
            split_hosts("postgres://u@h1,h2"),
            ("postgres://u@", "h1,h2", "")
        );
    }

    #[test]
    fn the_query_starts_after_the_credentials() {
        let cases = [
            (
                "postgres://app:pa?ss@h/db?sslmode=require",
                "postgres://app:pa?ss@h/db",
                Some("sslmode=require"),
            ),
            ("postgres://app@h/db", "postgres://app@h/db", None),
            (
                "postgres://h:5432/db?a=b",
                "postgres://h:5432/db",
                Some("a=b"),
            ),
            ("postgres://app:p@h?x=1", "postgres://app:p@h", Some("x=1")),
            (
                "postgres://app:pa?@h/db?y=2",
                "postgres://app:pa?@h/db",
                Some("y=2"),
            ),
            ("postgres://h/db?", "postgres://h/db", Some("")),
        ];
        for (url, base, query) in cases {
            assert_eq!(split_url(url), (base, query), "{url}");
        }
        // A `?` in the password does not hide sslmode=require.
        let link = super::link("postgres://app:pa?ss@db/accounts?sslmode=require", None).unwrap();
        assert_eq!(link.mode, SslMode::Require);
        assert_eq!(link.config.get_password(), Some(&b"pa?ss"[..]));
        for key in [
            "password",
            "PASSWORD",
            "pass%77ord",
            "%70%61%73%73%77%6f%72%64",
        ] {
            assert!(is_password_key(key), "{key}");
        }
        assert!(!is_password_key("passwd") && !is_password_key("pass%7"));
    }

    #[test]
    fn pgpass_lines_are_read_as_libpq_reads_them() {
        let text = "# a comment\n\
                    other:5432:accounts:app:wrong\n\
                    db\\:1:*:accounts:app:first\\:one\n\
                    *:*:*:app:fallback\\\\\n";
        let wanted = |host| pgpass_lookup(text, [host, "5432", "accounts", "app"]);
        assert_eq!(wanted("db:1").as_deref(), Some("first:one"));
        assert_eq!(wanted("elsewhere").as_deref(), Some("fallback\\"));
        assert_eq!(pgpass_lookup(text, ["x", "1", "y", "nobody"]), None);
        assert_eq!(split_pgpass_line("a:b:c:d"), None);
        assert_eq!(
            split_pgpass_line("a:b:c:d:pass:with:colons").unwrap()[4],
            "pass:with:colons"
        );
    }

    #[test]
    fn a_pgpass_file_is_read_only_when_its_owner_alone_may() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "db:5433:accounts:app:from-pgpass\n").unwrap();
        let config: postgres::Config = "postgres://app@db:5433/accounts".parse().unwrap();
        for (mode, found) in [(0o600, Some("from-pgpass")), (0o640, None), (0o604, None)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(pgpass_from(&file, &config).as_deref(), found, "{mode:o}");
        }
        let other: postgres::Config = "postgres://app@elsewhere:5433/accounts".parse().unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(pgpass_from(&file, &other), None);
        assert_eq!(pgpass_from(&dir.path().join("missing"), &config), None);
    }

    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&file).unwrap(), "s3cret");
        // At most 4 KiB.
        std::fs::write(&file, "x".repeat(4096)).unwrap();
        assert_eq!(read_password_file(&file).unwrap().len(), 4096);
        std::fs::write(&file, "x".repeat(4097)).unwrap();
        assert!(read_password_file(&file)
            .unwrap_err()
            .to_string()
            .contains("4 KiB"));
        std::fs::write(&file, "s3cret\n").unwrap();
        let link = link("postgres://app@db/accounts", Some(&file)).unwrap();
        assert_eq!(link.config.get_password(), Some(&b"s3cret"[..]));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_password_file(&file).unwrap_err().to_string();
        assert!(
            error.contains("chmod 600") && !error.contains("s3cret"),
            "{error}"
        );
        // A password in the URL wins.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = super::link("postgres://app:inurl@db/accounts", Some(&file)).unwrap();
        assert_eq!(link.config.get_password(), Some(&b"inurl"[..]));
    }
}
