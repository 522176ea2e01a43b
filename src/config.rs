//! What the configuration structs share: how flags are parsed into them, how their defaults are
//! had without flags, and the value parsers for seconds and ranges.
//!
//! Each setting is defined once, as a field of a configuration struct with clap's derive: its
//! flag, its environment variable, its default and its doc comment ("Defaults to X") live
//! together. `--help` and the README's flag tables come from there (a test keeps the README
//! true).

use clap::{Args, Parser};
use std::time::Duration;

/// Parse the process's arguments and environment into `T`. Defaults are stated by each flag's
/// doc comment ("Defaults to X"), so clap's own `[default: X]` is not repeated in `--help`.
pub fn parse<T: Parser>() -> T {
    let command = T::command().mut_args(|arg| {
        let takes_value = arg.get_action().takes_values();
        arg.hide_default_value(takes_value)
    });
    let matches = match command.clone().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => match from_environment(&command, &e, std::env::args_os().collect()) {
            Some(said) => {
                eprint!("{said}");
                std::process::exit(e.exit_code());
            }
            None => e.exit(),
        },
    };
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// When `e` rejects a value that came from an environment variable rather than the command line
/// (`args`), `e`'s message naming that variable too: the operator looks in an env file, not at
/// a command line they never typed. `None` for every other error.
fn from_environment(
    command: &clap::Command,
    e: &clap::Error,
    args: Vec<std::ffi::OsString>,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue) else {
        return None;
    };
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut commands = vec![command];
    while let Some(command) = commands.pop() {
        commands.extend(command.get_subcommands());
        for arg in command.get_arguments() {
            let (Some(long), Some(var)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let given =
                |a: &String| a == &format!("--{long}") || a.starts_with(&format!("--{long}="));
            let named = flag == &format!("--{long}") || flag.starts_with(&format!("--{long} "));
            if named && std::env::var_os(var).is_some() && !args.iter().any(given) {
                // Exactly clap's own words, so that a value that holds them is not touched.
                let var = var.to_string_lossy();
                let words = format!("invalid value '{value}' for '{flag}'");
                let said = e.to_string();
                return Some(said.replacen(
                    &words,
                    &format!("{words} (from the environment variable {var})"),
                    1,
                ));
            }
        }
    }
    None
}

/// `T` as it is with no flags and no environment variables: every field at its default.
pub fn defaults<T: Args>() -> T {
    let matches = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(["defaults"])
        .unwrap_or_else(|e| unreachable!("the defaults must parse: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| unreachable!("the defaults must parse: {e}"))
}

/// The number of CPU cores, or 1 if it cannot be told.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// An address given as `IP:PORT` or `HOST:PORT` (`[IPv6]:PORT` too): a host name is resolved
/// once, here, at start, to its first address; restart to follow a DNS change.
pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT, or HOST does not resolve: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// An account-db's address as `--db` gives it: `IP:PORT`, or `HOST:PORT`, resolved at start
/// (a name that does not resolve stops the start) and again for every new connection, so that
/// an account-db that moves to another address is followed without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As given.
    text: String,
    /// What it resolved to at start: used while a later resolution fails.
    first: std::net::SocketAddr,
    /// Given as a host name (else an IP address, which never needs resolving again).
    named: bool,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        Ok(Endpoint {
            text: s.to_string(),
            first: socket_addr(s)?,
            named: s.parse::<std::net::SocketAddr>().is_err(),
        })
    }
}

impl From<std::net::SocketAddr> for Endpoint {
    fn from(addr: std::net::SocketAddr) -> Endpoint {
        Endpoint {
            text: addr.to_string(),
            first: addr,
            named: false,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Endpoint {
    /// The address to connect to now: a host name resolved again (its first address), or,
    /// while it does not resolve, what it resolved to at start.
    pub fn resolve(&self) -> std::net::SocketAddr {
        match self.named {
            true => socket_addr(&self.text).unwrap_or(self.first),
            false => self.first,
        }
    }

    /// The host as given (a name, or an IP address without its brackets): what a TLS
    /// certificate is checked against.
    pub fn host(&self) -> &str {
        let host = self
            .text
            .rsplit_once(':')
            .map_or(&*self.text, |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A duration given in (fractional) seconds.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a non-negative number of seconds"))
}

/// A whole number of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// `MIN,MAX`, with MIN ≤ MAX.
pub fn range(s: &str) -> Result<(usize, usize), String> {
    let (min, max) = s.split_once(',').ok_or("expected MIN,MAX")?;
    let parse = |n: &str| n.trim().parse::<usize>().map_err(|e| e.to_string());
    let (min, max) = (parse(min)?, parse(max)?);
    if min > max {
        return Err("MIN is larger than MAX".into());
    }
    Ok((min, max))
}

/// Every deadline login-server derives from `--db-timeout`, each computed here once: what the
/// account tier, the old server and the costly stage may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbDeadlines {
    /// A whole request to the account tier, retries on other account-dbs included:
    /// `--db-timeout`.
    pub request: Duration,
    /// One attempt at one account-db: connecting, waiting for a pooled connection, or one round
    /// trip. The whole request with one account-db; a third of it with several, so that a
    /// retry on another fits in the request.
    pub attempt: Duration,
    /// How long a create whose outcome is unknown is repeated to learn it: twice the request,
    /// since a registration that was stored must not be answered as failed.
    pub resolve_window: Duration,
    /// One question to the old account server (`--legacy-db`): its turn, connect, greeting and
    /// reply: `--db-timeout`.
    pub legacy: Duration,
    /// How long a login against a costly stored hash waits for the costly stage before it is
    /// answered "unavailable": `--db-timeout`.
    pub costly_wait: Duration,
}

impl DbDeadlines {
    /// The deadlines of `db_timeout` with `account_dbs` account-dbs to fail over between.
    pub fn new(db_timeout: Duration, account_dbs: usize) -> DbDeadlines {
        DbDeadlines {
            request: db_timeout,
            attempt: match account_dbs {
                0 | 1 => db_timeout,
                _ => db_timeout / 3,
            },
            resolve_window: 2 * db_timeout,
            legacy: db_timeout,
            costly_wait: db_timeout,
        }
    }
}

/// How long login-server keeps an idle pooled account-db connection: 5 minutes, below
/// account-db's default `--idle-timeout` ([`ACCOUNT_DB_IDLE_TIMEOUT`]), so that the pool
/// retires a connection before account-db drops it under it.
pub const POOL_IDLE: Duration = Duration::from_secs(5 * 60);

/// account-db's default `--idle-timeout`: 15 minutes.
pub const ACCOUNT_DB_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

// Checked at build: a pool that kept connections longer would meet dead ones after quiet hours.
const _: () = assert!(POOL_IDLE.as_secs() < ACCOUNT_DB_IDLE_TIMEOUT.as_secs());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_at_start_and_names_again_when_used() {
        let ip: Endpoint = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(ip.to_string(), "127.0.0.1:9999");
        assert_eq!(ip.resolve(), "127.0.0.1:9999".parse().unwrap());
        let named: Endpoint = "localhost:9999".parse().unwrap();
        assert_eq!(named.to_string(), "localhost:9999");
        assert!(named.resolve().ip().is_loopback());
        assert_eq!(named.resolve().port(), 9999);
        assert!("no-such-host.invalid:1".parse::<Endpoint>().is_err());
        assert_eq!(ip.host(), "127.0.0.1");
        assert_eq!(named.host(), "localhost");
        let v6: Endpoint = "[::1]:9999".parse().unwrap();
        assert_eq!(v6.host(), "::1");
        assert!("localhost".parse::<Endpoint>().is_err(), "a port is needed");
        // A name that stops resolving keeps its address from the start.
        let gone = Endpoint {
            text: "no-such-host.invalid:7".into(),
            first: "192.0.2.1:7".parse().unwrap(),
            named: true,
        };
        assert_eq!(gone.resolve(), "192.0.2.1:7".parse().unwrap());
    }

    #[test]
    fn value_parsers_accept_what_they_say_and_refuse_the_rest() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(seconds("-1").is_err());
        assert!(seconds("soon").is_err());
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").is_err());
        assert_eq!(range("3,32"), Ok((3, 32)));
        assert!(range("5,4").is_err());
        assert!(range("5").is_err());
    }

    #[test]
    fn the_deadlines_of_one_account_db_and_of_several() {
        let one = DbDeadlines::new(Duration::from_secs(3), 1);
        assert_eq!(
            (one.request, one.attempt),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
        assert_eq!(one.resolve_window, Duration::from_secs(6));
        assert_eq!((one.legacy, one.costly_wait), (one.request, one.request));
        let three = DbDeadlines::new(Duration::from_secs(3), 3);
        assert_eq!(three.attempt, Duration::from_secs(1), "a retry fits");
        assert_eq!(
            DbDeadlines::new(Duration::from_secs(3), 0).attempt,
            one.attempt,
            "embedded"
        );
    }

    #[test]
    fn the_pool_retires_idle_connections_before_account_db_drops_them() {
        let account_db = crate::accountdb::AccountDbConfig::default();
        assert_eq!(
            account_db.idle_timeout, ACCOUNT_DB_IDLE_TIMEOUT,
            "the documented default"
        );
        assert!(POOL_IDLE < account_db.idle_timeout);
    }
}
