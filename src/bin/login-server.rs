//! login-server: the gateway-facing server. Parse the flags, start, wait for a stop signal,
//! stop; or, given a command, do it and exit.

use anyhow::Context;
use login_server::auth::token_key::SigningKey;
use login_server::login::{Command, LoginServer, LoginServerConfig};
use login_server::{config, logging, signals};

fn main() -> std::process::ExitCode {
    let config: LoginServerConfig = config::parse();
    let format = config.log_format;
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(format, "login_server", &logging::causes(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: LoginServerConfig) -> anyhow::Result<()> {
    if let Some(Command::GenTokenKey { path }) = &config.command {
        let key = SigningKey::create(path)?;
        let public = path.with_extension("pub");
        std::fs::write(&public, key.verify_key().to_pem())
            .with_context(|| format!("cannot write {}", public.display()))?;
        println!("kid {}", key.verify_key().kid);
        return Ok(());
    }
    let _logs = logging::init(config.log_format);
    let signals = signals::StopSignals::install().context("cannot catch signals")?;
    let server = LoginServer::spawn(config).context("cannot start login-server")?;
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz, /readyz and /keys");
    }
    signals.wait(|| {
        server.reload();
    });
    tracing::info!("signal received: shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}
