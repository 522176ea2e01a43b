//! login-server: the gateway-facing server. Parse the flags, start, wait for a stop signal,
//! stop.

use anyhow::Context;
use login_server::login::{LoginServer, LoginServerConfig};
use login_server::{config, logging, signals};

fn main() -> anyhow::Result<()> {
    let config: LoginServerConfig = config::parse();
    let _logs = logging::init(config.log_format);
    let signals = signals::StopSignals::install().context("cannot catch signals")?;
    let server = LoginServer::spawn(config).context("cannot start login-server")?;
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    }
    signals.wait();
    tracing::info!("signal received: shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
