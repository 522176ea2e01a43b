//! TLS on the gateway listener (`--gateway-tls`): the mode, the material in force with the
//! process's session-ticket keys, and the framing of TLS records by which the I/O thread sends a
//! handshaking connection to a worker only once a whole record has arrived (the key exchange
//! and the signature run on a worker, never on the I/O thread).

use crate::metrics::{Metrics, TlsOutcome as Outcome};
use crate::tls::{Files, Material, ServerFiles, TlsError};
use rustls::server::ProducesTickets;
use rustls::{HandshakeKind, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Worker visits one handshake may take. A TLS 1.3 handshake needs two (the ClientHello, then
/// the client's Finished), three after a HelloRetryRequest, one more per 16 KiB record of a
/// client certificate chain; a peer that splits its ClientHello into many tiny records to make
/// the workers pay a visit each is closed past this.
pub const HANDSHAKE_VISITS: u8 = 8;

/// The largest TLS record: 2^14 bytes of plaintext plus 256 of expansion (RFC 8446, 5.2).
const MAX_RECORD: usize = (1 << 14) + 256;
/// A TLS record's header: content type, legacy version (2 bytes), length (2 bytes).
const HEADER: usize = 5;

/// `--gateway-tls`: whether the gateway listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Plaintext only (the seed's gateway).
    #[default]
    Off,
    /// TLS and plaintext on one port, told apart by the first byte: for a migration.
    Optional,
    /// TLS only; a plaintext gateway is answered a bad request (6) saying so.
    Required,
}

/// The gateway listener's TLS: its mode and the material new connections get.
pub struct GatewayTls {
    /// `--gateway-tls` (never [`Mode::Off`] here).
    pub mode: Mode,
    /// `--tls-cert`, `--tls-key` and `--gateway-tls-client-ca`, reloaded on SIGHUP.
    pub material: Arc<Material<GatewayFiles>>,
    /// Handshakes counted by outcome.
    pub metrics: Metrics,
}

impl GatewayTls {
    /// A new connection's TLS state, or why there is none (a configuration rustls refuses,
    /// which loading it already checked: not expected).
    pub fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(self.material.current())
    }

    /// Count a handshake that completed.
    pub fn completed(&self, kind: Option<HandshakeKind>) {
        self.metrics.tls_handshake(match kind {
            Some(HandshakeKind::Resumed) => Outcome::Resumed,
            _ => Outcome::Full,
        });
    }

    /// Count a handshake that failed (refused, broken, too slow, or not TLS where it is required).
    pub fn failed(&self) {
        self.metrics.tls_handshake(Outcome::Failed);
    }
}

/// The gateway listener's TLS files, and the process's session-ticket keys: the same keys
/// across reloads, so a reload does not cost every gateway a full handshake.
pub struct GatewayFiles {
    /// The certificate, its key, and the CA of gateways' certificates.
    pub files: ServerFiles,
    /// Random per process, rotated every 6 hours; a ticket is accepted 12 hours at most
    /// (rustls's `Ticketer`).
    tickets: Arc<dyn ProducesTickets>,
}

impl GatewayFiles {
    /// `files` with fresh session-ticket keys.
    pub fn new(files: ServerFiles) -> Result<GatewayFiles, TlsError> {
        let tickets = rustls::crypto::ring::Ticketer::new().map_err(|source| TlsError::Rustls {
            what: "session-ticket keys",
            source,
        })?;
        Ok(GatewayFiles { files, tickets })
    }
}

impl Files for GatewayFiles {
    type Config = ServerConfig;
    fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::clone(&*self.files.server_config()?);
        config.ticketer = self.tickets.clone();
        Ok(Arc::new(config))
    }
    fn certificates(&self) -> Vec<&Path> {
        self.files.certificates()
    }
}

/// What the raw bytes received during a handshake hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// No whole record yet.
    Partial,
    /// Whole records, `len` bytes of them from the start: work for a worker. What follows
    /// them is the beginning of a record whose rest has not arrived.
    Whole { len: usize },
    /// Not TLS records (an unknown content type or version, or a record longer than TLS
    /// allows): the connection is dropped.
    Invalid,
}

/// Frame `raw` as TLS records by their headers, without looking inside them.
pub fn records(raw: &[u8]) -> Records {
    let mut at = 0;
    while let Some(header) = raw.get(at..at + HEADER) {
        let content_type = header[0];
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        // change_cipher_spec, alert, handshake, application_data; legacy version 3.x.
        if !(20..=23).contains(&content_type) || header[1] != 3 || len > MAX_RECORD {
            return Records::Invalid;
        }
        if raw.len() < at + HEADER + len {
            break;
        }
        at += HEADER + len;
    }
    if at > 0 {
        Records::Whole { len: at }
    } else {
        Records::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8, len: usize) -> Vec<u8> {
        let mut r = vec![content_type, 3, 1];
        r.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        r.resize(HEADER + len, 0xaa);
        r
    }

    #[test]
    fn a_record_is_whole_once_its_header_and_body_are_in() {
        let hello = record(22, 300);
        assert_eq!(records(&[]), Records::Partial);
        assert_eq!(records(&hello[..4]), Records::Partial, "half a header");
        assert_eq!(records(&hello[..HEADER]), Records::Partial, "a header");
        assert_eq!(records(&hello[..hello.len() - 1]), Records::Partial);
        assert_eq!(records(&hello), Records::Whole { len: 305 });
        let two = [hello.clone(), record(20, 1)[..3].to_vec()].concat();
        assert_eq!(
            records(&two),
            Records::Whole { len: 305 },
            "one whole, one begun: the whole one's length"
        );
        let both = [hello.clone(), record(20, 1)].concat();
        assert_eq!(records(&both), Records::Whole { len: 311 });
        let empty = record(23, 0);
        assert_eq!(
            records(&empty),
            Records::Whole { len: 5 },
            "a record may be empty"
        );
    }

    #[test]
    fn what_is_not_tls_is_invalid_as_soon_as_its_header_shows_it() {
        assert_eq!(records(b"[{\"OP\":\"login\"}]"), Records::Invalid);
        for content_type in [19, 24, 0x5b] {
            assert_eq!(records(&record(content_type, 10)), Records::Invalid);
        }
        for good in 20..=23 {
            assert_eq!(records(&record(good, 10)), Records::Whole { len: 15 });
        }
        let mut version = record(22, 10);
        version[1] = 2;
        assert_eq!(records(&version), Records::Invalid);
        // RFC 8446, 5.2: 2^14 bytes of plaintext plus 256 of expansion, written out here.
        let longest = record(22, 16_640);
        assert_eq!(records(&longest), Records::Whole { len: 16_645 });
        assert_eq!(records(&longest[..HEADER]), Records::Partial);
        let mut too_long = longest[..HEADER].to_vec();
        too_long[3..5].copy_from_slice(&u16::try_from(16_641).unwrap().to_be_bytes());
        assert_eq!(records(&too_long), Records::Invalid);
        let bad_second = [record(22, 10), record(99, 1)].concat();
        assert_eq!(
            records(&bad_second),
            Records::Invalid,
            "every header is checked"
        );
    }
}
