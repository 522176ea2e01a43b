//! gateway-sim: plays the game gateway against a login-server.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gateway_sim::secure::TlsArgs;
use gateway_sim::stress::{check_prefix, setup_accounts, Mix, Options, Run, StressError};
use login_server::config::{at_least_one, socket_addr};
use login_server::protocol::gateway::{Form, Op};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
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
    /// Send one request in the seed form and print the reply: `login|register|change_password
    /// USERNAME`, `device DEVICE_ID`, or `verify|refresh|logout|logout_all|claim|link_device|
    /// unlink_device|devices TOKEN`.
    Send {
        /// login-server address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:6999", value_parser = socket_addr)]
        target: SocketAddr,
        op: OpArg,
        /// The username; device: the device id; the token ops: the token.
        subject: String,
        /// The password (change_password: the current one; claim: the new account's); without
        /// it, it is asked for without echo.
        #[arg(long)]
        password: Option<String>,
        /// claim: the name the guest takes.
        #[arg(long, required_if_eq("op", "claim"))]
        username: Option<String>,
        /// link_device, unlink_device: the device.
        #[arg(long, required_if_eq_any([("op", "link_device"), ("op", "unlink_device")]))]
        device_id: Option<String>,
        /// device, link_device: the device's secret; without it, it is asked for without echo.
        #[arg(long)]
        device_secret: Option<String>,
        /// change_password's new password; without it, it is asked for without echo.
        #[arg(long)]
        new_password: Option<String>,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// A bounded load run; prints a table (or JSON), exits non-zero on unexpected codes.
    Stress(StressArgs),
    /// A bounded hostile load (loopback only): prints what it did as JSON.
    Attack {
        /// The server to attack, HOST:PORT (loopback only): login-server, or account-db for
        /// `handshake`.
        #[arg(long, default_value = "127.0.0.1:6999", value_parser = socket_addr)]
        target: SocketAddr,
        #[arg(long, value_enum)]
        kind: gateway_sim::attack::Kind,
        /// Attacking connections (the pipelining kinds use one).
        #[arg(long, default_value_t = 2000, value_parser = at_least_one)]
        connections: usize,
        /// Seconds to attack (at most a day).
        #[arg(long, default_value_t = 10.0, value_parser = run_seconds)]
        duration: f64,
        /// shared-gateway: the flood's rotating player addresses.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=65_536))]
        addresses: u32,
        /// shared-gateway: the player's logins a second.
        #[arg(long, default_value_t = 20.0, value_parser = positive_rate)]
        player_rate: f64,
        /// For the TLS kinds (`tls-silent` needs --tls-ca).
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(clap::Args, Debug)]
struct StressArgs {
    /// login-server addresses, HOST:PORT (A,B,...): connections are spread over them, and one whose
    /// login-server refuses or closes it goes on with the next. With several, a request left
    /// without a reply by a closed connection is sent again, once, on the next (counted as
    /// `retried`; lost again, a transport error): a rolling restart measured as a gateway
    /// that retries sees it.
    #[arg(
        long,
        default_value = "127.0.0.1:6999",
        value_delimiter = ',',
        num_args = 1..,
        value_parser = socket_addr
    )]
    target: Vec<SocketAddr>,
    /// Concurrent connections (client threads), at least 1.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    connections: usize,
    /// Seconds to run, at most (above 0, at most a day).
    #[arg(long, default_value_t = 10.0, value_parser = run_seconds)]
    duration: f64,
    /// Requests to send, at most.
    #[arg(long)]
    requests: Option<u64>,
    /// seed: a new connection per request, as the seed's gateway; stream: persistent ones.
    #[arg(long, value_enum, default_value_t = FormArg::Seed)]
    form: FormArg,
    /// Requests in flight on each stream-form connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Weights of request kinds: login, register, badpass, unknown, invalid, malformed, verify
    /// (of a token from one of the run's logins), device (a login of one of --users devices,
    /// their guests made before the run).
    #[arg(long, default_value = "login=90,register=5,badpass=5")]
    mix: Mix,
    /// Accounts that logins pick from, registered before the measured run (reused when they
    /// exist); 0 skips registering.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// The run's accounts are named gwsim-PREFIX-N (1 to 8 of a-z0-9): a run with the same
    /// prefix reuses them; `account-db admin list --prefix gwsim-` lists every run's.
    #[arg(long, default_value = "load", value_parser = check_prefix)]
    prefix: String,
    /// Seconds registering the accounts may take, before the measured run (never counted in
    /// --duration); past it the run exits 2, having measured nothing.
    #[arg(long, default_value_t = 60.0, value_parser = run_seconds)]
    setup_timeout: f64,
    /// Open-loop arrivals per second (more than 0); latency counts from each request's
    /// intended start. Without it: a closed loop, each connection as fast as it is answered.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Open loop: exit non-zero when more than this percentage of the planned arrivals was
    /// never sent (the load tool could not keep up: the run did not offer the rate asked).
    #[arg(long, default_value_t = 1.0, value_parser = percent)]
    max_unsent: f64,
    /// Seconds one request may take before it counts as a timeout.
    #[arg(long, default_value_t = 10.0, value_parser = run_seconds)]
    timeout: f64,
    /// Print the result as one JSON object instead of a table (with the run's parameters).
    #[arg(long)]
    json: bool,
    /// Draw throughput and p99 latency over the run into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormArg {
    Seed,
    Stream,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
#[value(rename_all = "snake_case")]
enum OpArg {
    Login,
    Register,
    Verify,
    Refresh,
    Logout,
    LogoutAll,
    ChangePassword,
    Device,
    Claim,
    LinkDevice,
    UnlinkDevice,
    Devices,
}

impl OpArg {
    fn op(self) -> Op {
        match self {
            OpArg::Login => Op::Login,
            OpArg::Register => Op::Register,
            OpArg::Verify => Op::Verify,
            OpArg::Refresh => Op::Refresh,
            OpArg::Logout => Op::Logout,
            OpArg::LogoutAll => Op::LogoutAll,
            OpArg::ChangePassword => Op::ChangePassword,
            OpArg::Device => Op::Device,
            OpArg::Claim => Op::Claim,
            OpArg::LinkDevice => Op::LinkDevice,
            OpArg::UnlinkDevice => Op::UnlinkDevice,
            OpArg::Devices => Op::Devices,
        }
    }
}

/// A rate of arrivals per second: above 0 (0 would be no rate at all), at most 10 million.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1e7 => Ok(rate),
        _ => Err(format!(
            "{s:?} is not a rate above 0 and at most 10000000 (leave --rate out for a closed loop)"
        )),
    }
}

/// Seconds a run or a wait may take: above 0, at most a day.
fn run_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most 86400"
        )),
    }
}

/// A percentage: 0 to 100.
fn percent(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

/// `given`, or asked for without echo (`flag`: the flag that gives it, for the error).
fn secret_of(given: Option<String>, prompt: &str, flag: &str) -> anyhow::Result<String> {
    match given {
        Some(p) => Ok(p),
        None => {
            use std::io::IsTerminal;
            anyhow::ensure!(
                std::io::stdin().is_terminal(),
                "no terminal to ask on: pass {flag}"
            );
            rpassword::prompt_password(prompt).with_context(|| format!("cannot read {flag}"))
        }
    }
}

/// A password `given`, or asked for without echo.
fn secret(given: Option<String>, prompt: &str) -> anyhow::Result<String> {
    secret_of(given, prompt, "--password")
}

/// What `stress` ended with: exit 2 when it measured nothing (the setup did not finish in
/// time), 1 for any other failure.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", login_server::logging::causes(e.as_ref()));
            match e.downcast_ref::<StressError>() {
                Some(StressError::SetupTimeout { .. }) => std::process::ExitCode::from(2),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn run() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Send {
            target,
            op,
            subject,
            password,
            new_password,
            username,
            device_id,
            device_secret,
            timeout,
            tls,
        } => {
            let tls = tls.load(target)?;
            let op = op.op();
            let (password, new_password) = match op {
                Op::Login | Op::Register | Op::Claim => {
                    (secret(password, "password: ")?, String::new())
                }
                Op::ChangePassword => (
                    secret(password, "current password: ")?,
                    secret(new_password, "new password: ")?,
                ),
                _ => (String::new(), String::new()),
            };
            let device_secret = match op {
                Op::Device | Op::LinkDevice => {
                    secret_of(device_secret, "device secret: ", "--device-secret")?
                }
                _ => String::new(),
            };
            let fields = gateway_sim::Fields {
                subject: &subject,
                password: &password,
                new_password: &new_password,
                username: username.as_deref().unwrap_or_default(),
                device_id: device_id.as_deref().unwrap_or_default(),
                device_secret: &device_secret,
            };
            let request = gateway_sim::request_with(op, &fields);
            let reply = gateway_sim::send_seed(
                target,
                tls.as_deref(),
                &request,
                Duration::from_secs(timeout),
            )
            .with_context(|| format!("request to {target} failed"))?;
            println!("{reply}");
        }
        Command::Stress(args) => return stress(args),
        Command::Attack {
            target,
            kind,
            connections,
            duration,
            addresses,
            player_rate,
            tls,
        } => {
            let tls = tls.load(target)?;
            anyhow::ensure!(
                target.ip().is_loopback(),
                "{target} is not a loopback address: attacks stay on this machine"
            );
            let duration = Duration::try_from_secs_f64(duration).context("seconds must be >= 0")?;
            if kind == gateway_sim::attack::Kind::SharedGateway {
                let outcome = gateway_sim::shared::run(target, addresses, player_rate, duration)
                    .with_context(|| format!("cannot attack {target}"))?;
                println!("{}", serde_json::to_string(&outcome)?);
                return Ok(());
            }
            let outcome =
                gateway_sim::attack::run(target, kind, connections, duration, tls.as_deref())
                    .with_context(|| format!("cannot attack {target}"))?;
            println!("{}", serde_json::to_string(&outcome)?);
            anyhow::ensure!(
                outcome.connected > 0,
                "no connection to {target} was made: nothing was attacked"
            );
        }
    }
    Ok(())
}

fn stress(args: StressArgs) -> anyhow::Result<()> {
    for target in &args.target {
        anyhow::ensure!(
            args.allow_remote || target.ip().is_loopback(),
            "{target} is not a loopback address: pass --allow-remote to load another host",
        );
    }
    let first = *args.target.first().context("--target names no address")?;
    let seconds = |s: f64| Duration::try_from_secs_f64(s).context("seconds must be >= 0");
    let options = Options {
        targets: args.target.clone(),
        connections: args.connections,
        duration: seconds(args.duration)?,
        requests: args.requests,
        form: match args.form {
            FormArg::Seed => Form::Seed,
            FormArg::Stream => Form::Stream,
        },
        pipeline: args.pipeline,
        mix: args.mix,
        users: args.users,
        prefix: args.prefix.clone(),
        setup_timeout: seconds(args.setup_timeout)?,
        rate: args.rate,
        timeout: seconds(args.timeout)?,
        tls: args.tls.load(first)?,
    };
    let total = options.duration;
    let run = set_up(options)?;
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4} {msg}")
            .context("progress template")?,
    );
    while !run.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let elapsed = run.elapsed();
        let done = run.live().completed.load(Ordering::Relaxed);
        let errors = run.live().errors.load(Ordering::Relaxed);
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!(
            "{done} requests  {:.0} req/s  {errors} errors",
            done as f64 / elapsed.as_secs_f64().max(1e-3)
        ));
    }
    bar.finish_and_clear();
    let report = run.finish();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        report
            .plot(path)
            .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    anyhow::ensure!(
        report.clean(),
        "{} unexpected replies, {} transport errors, {} answered",
        report.unexpected,
        report.transport.total(),
        report.requests
    );
    anyhow::ensure!(
        report.planned == 0 || report.unsent_percent() <= args.max_unsent,
        "{} of the {} planned arrivals ({:.1}%) were never sent, more than --max-unsent {}%: \
         the run did not offer --rate {} (fewer --connections cannot keep up, or the machine \
         is too busy)",
        report.unsent,
        report.planned,
        report.unsent_percent(),
        args.max_unsent,
        report.params.rate.unwrap_or_default(),
    );
    Ok(())
}

/// Register the run's accounts with a progress bar (on a terminal), then start the run.
fn set_up(options: Options) -> anyhow::Result<Run> {
    let total = setup_accounts(&options);
    let registered = std::sync::atomic::AtomicU64::new(0);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "setting up {bar:30} {pos}/{len} accounts {elapsed}",
        )
        .context("progress template")?,
    );
    let run = std::thread::scope(|scope| {
        let starting = scope.spawn(|| Run::start_counting(options, &registered));
        while !starting.is_finished() {
            bar.set_position(registered.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        starting.join()
    });
    bar.finish_and_clear();
    match run {
        Ok(run) => Ok(run?),
        Err(_) => anyhow::bail!("the setup panicked"),
    }
}
