//! account-db: the account store server. Parse the flags, start, wait for a stop signal, stop.

use anyhow::Context;
use login_server::accountdb::server::AccountDb;
use login_server::accountdb::AccountDbConfig;
use login_server::{config, logging, signals};

fn main() -> anyhow::Result<()> {
    let config: AccountDbConfig = config::parse();
    let _logs = logging::init(config.log_format);
    let signals = signals::StopSignals::install().context("cannot catch signals")?;
    let data = config.data.clone();
    let server = AccountDb::open(config).context("cannot start account-db")?;
    tracing::info!(addr = %server.local_addr(), data = %data.display(), "account-db listening");
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    }
    signals.wait();
    tracing::info!("signal received: shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
