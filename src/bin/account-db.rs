//! account-db: the account store server. Parse the flags, start, wait for a stop signal, stop;
//! or, given a command, do it and exit.

use anyhow::Context;
use login_server::accountdb::admin::{self, Reply};
use login_server::accountdb::import::import;
use login_server::accountdb::secrets;
use login_server::accountdb::server::{AccountDb, AccountDbStartError};
use login_server::accountdb::{AccountDbConfig, Command, RotationStep};
use login_server::auth::password::Hasher;
use login_server::{config, logging, signals};
use std::io::BufRead;
use std::process::ExitCode;

/// `import`'s exit status when it ran but rejected some lines.
const SOME_REJECTED: u8 = 3;

fn main() -> ExitCode {
    let config: AccountDbConfig = config::parse();
    let format = config.log_format;
    match run(config) {
        Ok(code) => code,
        Err(e) => {
            logging::fatal(format, "account_db", &logging::causes(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(config: AccountDbConfig) -> anyhow::Result<ExitCode> {
    match &config.command {
        Some(Command::Import {
            file,
            hash_params,
            create,
            complete,
        }) => return run_import(&config, file, *hash_params, *create, *complete),
        Some(Command::Admin { action, create }) => {
            let _logs = logging::init(config.log_format);
            let url = config.store_url();
            let store = url
                .open_as(
                    1,
                    config.store_timeout,
                    false,
                    config.store_password_file.as_deref(),
                    *create,
                )
                .with_context(|| format!("cannot open the account store {url}"))?;
            let ask = || {
                use std::io::IsTerminal;
                std::io::stdin()
                    .is_terminal()
                    .then(|| rpassword::prompt_password("new password: ").ok())
                    .flatten()
            };
            match admin::run(&*store, action, ask)? {
                Reply::Done(out) => print!("{out}"),
                Reply::Already(note) => eprint!("{note}"),
            }
        }
        Some(Command::RotateSecret { step }) => {
            let primary = config.secret_path();
            let done = match step {
                RotationStep::Stage { from } => secrets::stage(&primary, from.as_deref()),
                RotationStep::Finish => secrets::finish(&primary),
            };
            print!("{}", done?);
        }
        Some(Command::GenTls {
            dir,
            name,
            client,
            peer,
            ca,
            days,
        }) => {
            use login_server::tls::generate::{write_as, Usage};
            let usage = if *peer { Usage::Peer } else { Usage::Server };
            let written = write_as(dir, name, usage, *client, *days, ca.as_deref());
            for path in written? {
                println!("wrote {}", path.display());
            }
        }
        Some(Command::GenSecret { path }) => {
            login_server::auth::secret::Secret::create(path)?;
            println!("wrote a new secret to {}", path.display());
        }
        None => serve(config)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(config: AccountDbConfig) -> anyhow::Result<()> {
    let _logs = logging::init(config.log_format);
    let signals = signals::StopSignals::install().context("cannot catch signals")?;
    let data = config.data.clone();
    let server = match AccountDb::open_until(config, &|| signals.received()) {
        Ok(server) => server,
        Err(AccountDbStartError::Stopped) => {
            tracing::info!("stopped before the account store came up");
            return Ok(());
        }
        Err(e) => return Err(e).context("cannot start account-db"),
    };
    tracing::info!(addr = %server.local_addr(), data = %data.display(), "account-db listening");
    if let Some(addr) = server.metrics_addr() {
        tracing::info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
    }
    signals.wait(|| {
        server.reload();
    });
    tracing::info!("signal received: shutting down");
    server.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// `account-db import FILE`: import, with progress on stderr, and print the summary; with
/// `complete` and no line rejected, record that the old server's names are imported. Exits
/// [`SOME_REJECTED`] when lines were rejected.
fn run_import(
    config: &AccountDbConfig,
    file: &std::path::Path,
    hash_params: login_server::auth::password::HashParams,
    create: bool,
    complete: bool,
) -> anyhow::Result<ExitCode> {
    let hasher = Hasher::new(hash_params)?;
    // The file first: one that cannot be read must not leave a new store behind.
    let (input, size): (Box<dyn BufRead>, Option<u64>) = match file.to_str() {
        Some("-") => (Box::new(std::io::stdin().lock()), None),
        _ => {
            let opened = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let meta = opened.metadata()?;
            anyhow::ensure!(!meta.is_dir(), "{} is a directory", file.display());
            (Box::new(std::io::BufReader::new(opened)), Some(meta.len()))
        }
    };
    let url = config.store_url();
    let store = url
        .open_as(
            config.store_pool,
            config.store_timeout,
            !config.skip_integrity_check,
            config.store_password_file.as_deref(),
            create,
        )
        .with_context(|| format!("cannot open the account store {url}"))?;
    let started = std::time::Instant::now();
    let summary = import(&*store, input, &hasher, config::cores(), |done| {
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let rate = done.lines as f64 / seconds;
        // Time left at the rate so far, from the bytes left of a file of known size.
        let left = size.map(|size| size.saturating_sub(done.bytes) as f64 * seconds);
        let eta = left.map_or(String::new(), |left| {
            format!(", about {:.0} s left", left / done.bytes.max(1) as f64)
        });
        eprint!(
            "\rimporting: {} lines read, {rate:.0} lines/s{eta}   ",
            done.lines
        );
    })?;
    eprintln!();
    for (line, why) in &summary.rejected {
        // The reason may quote the file: its control characters are escaped.
        println!("line {line}: rejected: {}", why.escape_debug());
    }
    for (line, holder) in &summary.held {
        println!("line {line}: held here by the account {holder:?} (moved, or registered here)");
    }
    for (line, first) in &summary.duplicates {
        println!(
            "line {line}: the same name as line {first}, in some case: not imported, the name \
             is line {first}'s (this player is told to contact support: docs/migration.md)"
        );
    }
    println!(
        "imported {}, already present {}, held here {}, duplicates {}, rejected {}",
        summary.imported,
        summary.present,
        summary.held.len(),
        summary.duplicates.len(),
        summary.rejected.len()
    );
    if !summary.rejected.is_empty() {
        if complete {
            println!(
                "not recorded as complete: fix the rejected lines and import again \
                 (registration under --legacy-db stays closed)"
            );
        }
        return Ok(ExitCode::from(SOME_REJECTED));
    }
    if complete && summary.names() == 0 {
        println!(
            "not recorded as complete: no name was read (an empty or failed export?); \
             registration under --legacy-db stays closed"
        );
        return Ok(ExitCode::from(SOME_REJECTED));
    }
    if complete {
        let how = format!("account-db import --complete {}", file.display());
        store.mark_legacy_names_imported(&how)?;
        println!(
            "recorded that the old server's names are imported: registration under \
             --legacy-db is open"
        );
    }
    Ok(ExitCode::SUCCESS)
}
