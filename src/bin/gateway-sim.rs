//! gateway-sim: plays the game gateway against a login-server.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use login_server::protocol::gateway::Op;
use std::net::SocketAddr;
use std::time::Duration;

/// Play the game gateway: send login-server the requests a gateway would.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send one request in the seed form and print the reply.
    Send {
        /// login-server address.
        #[arg(long, default_value = "127.0.0.1:6999")]
        target: SocketAddr,
        op: OpArg,
        username: String,
        /// The password; without it, it is asked for without echo.
        #[arg(long)]
        password: Option<String>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum OpArg {
    Login,
    Register,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Send {
            target,
            op,
            username,
            password,
            timeout,
        } => {
            let password = match password {
                Some(p) => p,
                None => {
                    rpassword::prompt_password("password: ").context("cannot read the password")?
                }
            };
            let op = match op {
                OpArg::Login => Op::Login,
                OpArg::Register => Op::Register,
            };
            let reply = login_server::sim::send_seed(
                target,
                op,
                &username,
                &password,
                Duration::from_secs(timeout),
            )
            .with_context(|| format!("request to {target} failed"))?;
            println!("{reply}");
        }
    }
    Ok(())
}
