//! TLS toward a login-server with `--gateway-tls` (`--tls-ca`, `--tls-cert`/`--tls-key`,
//! `--tls-resume`): the client a TLS gateway is, made with login-server's own TLS 1.3 client
//! configuration, and connections with or without it.

use login_server::tls::{self, ClientFiles, Stream};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The TLS flags of `send`, `stress` and `attack`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Speak TLS 1.3 to the login-server (its --gateway-tls), checking its certificate against
    /// these PEM CA certificates. Defaults to none: plaintext.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain to present (the login-server's --gateway-tls-client-ca).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Resume sessions from the tickets the server issued, as a reconnecting gateway would;
    /// without it every connection pays a full handshake.
    #[arg(long, requires = "tls_ca")]
    pub tls_resume: bool,
    /// The name the server's certificate must hold. Defaults to the target's IP address.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_name: Option<String>,
}

/// How to reach one login-server over TLS.
#[derive(Debug, Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsArgs {
    /// The TLS these flags ask for toward `target`; `None` without `--tls-ca`.
    pub fn load(&self, target: SocketAddr) -> anyhow::Result<Option<Arc<Tls>>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let files = ClientFiles {
            ca: ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        };
        let mut config = ClientConfig::clone(&*files.client_config()?);
        if !self.tls_resume {
            config.resumption = Resumption::disabled();
        }
        let host = self
            .tls_name
            .clone()
            .unwrap_or_else(|| target.ip().to_string());
        let name = tls::server_name(&host).map_err(anyhow::Error::msg)?;
        Ok(Some(Arc::new(Tls {
            config: Arc::new(config),
            name,
        })))
    }
}

impl Tls {
    /// The client side of a new connection, before any byte is sent.
    pub fn client(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)
    }

    /// Run the handshake on `tcp` within `deadline`.
    pub fn handshake(&self, mut tcp: TcpStream, deadline: Instant) -> io::Result<Stream> {
        let mut conn = self.client()?;
        tls::handshake(&mut conn, &mut tcp, deadline)?;
        Ok(Stream::Client(Box::new(StreamOwned::new(conn, tcp))))
    }
}

/// A connection to `target` (with TLS when `tls` is given, its handshake done), each step of
/// it, and each read and write that follows, within `patience`.
pub fn connect(target: SocketAddr, tls: Option<&Tls>, patience: Duration) -> io::Result<Stream> {
    let started = Instant::now();
    let tcp = TcpStream::connect_timeout(&target, patience)?;
    tcp.set_nodelay(true)?;
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => tls.handshake(tcp, started + patience)?,
    };
    stream.tcp().set_read_timeout(Some(patience))?;
    stream.tcp().set_write_timeout(Some(patience))?;
    Ok(stream)
}
