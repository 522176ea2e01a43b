//! How the schema changes across releases, for both backends: in two steps. An *expansion*
//! adds only what older account-dbs ignore (a table, a nullable column, an index) and runs at
//! every start; a *contraction* removes what older code still reads, and runs only when an
//! operator asks (`account-db admin schema contract`), once no older account-db is running.
//!
//! The store records how far it got: `schema_version` counts the history (the steps from before
//! this rule, which every build applies at start) plus the contractions, and is what builds
//! from before the rule compare with their own (they refuse a higher one); the `meta` row
//! `expanded` counts expansions, which no build refuses; the `meta` row `min_code_version` is
//! the oldest code a contraction left able to run. A build starts on a schema newer than it
//! knows when its own code version is at least that. docs/architecture.md, "How to change the
//! schema", says how to add a step.

use super::contract::{Peer, StoreError};
use crate::clock::Millis;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// This build's code version (the package's).
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `meta` key counting the expansions done.
pub const EXPANDED: &str = "expanded";

/// The `meta` key holding the oldest code version a contraction left able to run.
pub const MIN_CODE_VERSION: &str = "min_code_version";

/// How many expansions this build knows (the same for both backends).
pub const EXPANSIONS: usize = 2;

/// How often a serving account-db records itself in `peers`: 10 s.
pub const PEER_INTERVAL: Duration = Duration::from_secs(10);

/// How recently an older account-db must have recorded itself to hold back a contraction:
/// 60 s (six missed records).
pub const PEER_WINDOW: Duration = Duration::from_secs(60);

/// How long a peer's row is kept after it was last seen: 7 days (one row per instance, so
/// this bounds the table by the instances started in a week).
pub const PEER_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// One contraction: what it removes (per backend), and the oldest code version that can run
/// on the schema it leaves.
pub struct Contraction {
    /// Why the step exists, for `admin schema show` and the log.
    pub what: &'static str,
    /// Builds older than this must not run once it is done.
    pub min_code_version: &'static str,
    /// The step in SQLite.
    pub sqlite: &'static str,
    /// The step in PostgreSQL.
    pub postgres: &'static str,
}

/// The contractions, in order; each needs the ones before it.
pub const CONTRACTIONS: [Contraction; 1] = [
    // 1 (0.3.0): removes nothing. Builds before 0.3.0 do not record themselves in `peers`,
    // so a later contraction's check could not see them; from this step on every account-db
    // that runs is seen.
    Contraction {
        what:
            "builds from before 0.3.0 (which do not record themselves in peers) may no longer start",
        min_code_version: "0.3.0",
        sqlite: "",
        postgres: "",
    },
];

/// A code version, `major.minor.patch`, compared as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CodeVersion(pub u32, pub u32, pub u32);

impl CodeVersion {
    /// This build's.
    pub fn current() -> CodeVersion {
        CODE_VERSION.parse().unwrap_or(CodeVersion(0, 0, 0))
    }
}

impl FromStr for CodeVersion {
    type Err = String;

    /// `1.2.3`; a pre-release or build suffix (`-rc.1`, `+abc`) is ignored.
    fn from_str(s: &str) -> Result<CodeVersion, String> {
        let core = s.split(['-', '+']).next().unwrap_or_default();
        let parts: Vec<u32> = core
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{s:?} is not a version (major.minor.patch)"))?;
        match parts[..] {
            [major, minor, patch] => Ok(CodeVersion(major, minor, patch)),
            _ => Err(format!("{s:?} is not a version (major.minor.patch)")),
        }
    }
}

impl fmt::Display for CodeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Whether this build may run on a store whose `schema_version` is `found` when it knows
/// `known`: yes up to `known`; beyond, only if the store's `min_code_version` is at most this
/// build's. Otherwise [`StoreError::TooNew`].
pub fn may_run(
    found: usize,
    known: usize,
    min_code_version: Option<&str>,
) -> Result<(), StoreError> {
    if found <= known {
        return Ok(());
    }
    let needs = min_code_version.unwrap_or("a newer release");
    let allowed = min_code_version
        .and_then(|v| v.parse::<CodeVersion>().ok())
        .is_some_and(|min| min <= CodeVersion::current());
    if allowed {
        tracing::info!(
            found,
            known,
            min_code_version = needs,
            "the account store's schema is newer than this build's, and allows it"
        );
        return Ok(());
    }
    Err(StoreError::TooNew {
        found,
        known,
        needs: needs.to_string(),
        this: CODE_VERSION,
    })
}

/// This account-db's name in `peers`: the machine's host name and the port it listens on.
pub fn instance_name(port: u16) -> String {
    format!(
        "{}:{port}",
        host_name().unwrap_or_else(|| "localhost".into())
    )
}

/// This host's name, from gethostname(2): it needs no file (a sandbox may hide /proc/sys).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given, which
    // lives across the call.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// The peers seen within [`PEER_WINDOW`] of `now` that run code older than `min`.
pub fn older_peers(peers: &[Peer], min: CodeVersion, now: Millis) -> Vec<Peer> {
    let window = Millis::try_from(PEER_WINDOW.as_millis()).unwrap_or(Millis::MAX);
    peers
        .iter()
        .filter(|p| p.last_seen_ms > now - window)
        .filter(|p| {
            p.code_version
                .parse::<CodeVersion>()
                .map_or(true, |v| v < min)
        })
        .cloned()
        .collect()
}

/// How many peers seen within [`PEER_WINDOW`] of `now` run code at `min` or later.
pub fn recent_peers_at_least(peers: &[Peer], min: CodeVersion, now: Millis) -> usize {
    let window = Millis::try_from(PEER_WINDOW.as_millis()).unwrap_or(Millis::MAX);
    peers
        .iter()
        .filter(|p| p.last_seen_ms > now - window)
        .filter(|p| {
            p.code_version
                .parse::<CodeVersion>()
                .is_ok_and(|v| v >= min)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_is_named_by_the_host_as_the_kernel_says_it() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(instance_name(9999), format!("{}:9999", kernel.trim()));
    }

    #[test]
    fn versions_compare_as_numbers() {
        let v = |s: &str| s.parse::<CodeVersion>().unwrap();
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("1.0.0") > v("0.99.99"));
        assert_eq!(v("0.3.0-rc.1"), v("0.3.0"));
        assert_eq!(v("0.3.0").to_string(), "0.3.0");
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "1.2.x"] {
            assert!(bad.parse::<CodeVersion>().is_err(), "{bad}");
        }
        assert_eq!(CodeVersion::current().to_string(), CODE_VERSION);
    }

    #[test]
    fn a_newer_schema_runs_only_when_its_floor_allows_this_build() {
        assert!(may_run(7, 8, None).is_ok());
        assert!(may_run(8, 8, None).is_ok());
        let now = CodeVersion::current();
        let next = CodeVersion(now.0, now.1 + 1, 0).to_string();
        assert!(may_run(9, 8, Some(CODE_VERSION)).is_ok());
        assert!(may_run(9, 8, Some("0.0.1")).is_ok());
        for refused in [None, Some(next.as_str()), Some("garbage")] {
            match may_run(9, 8, refused) {
                Err(StoreError::TooNew {
                    found: 9, known: 8, ..
                }) => {}
                other => panic!("{refused:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_recent_older_peers_hold_a_contraction_back() {
        let peer = |code: &str, seen: Millis| Peer {
            instance: format!("{code}@{seen}"),
            code_version: code.into(),
            last_seen_ms: seen,
        };
        let now = 1_000_000;
        let peers = [
            peer("0.2.0", now - 59_000),
            peer("0.2.0", now - 60_000),
            peer("0.3.0", now),
            peer("0.4.1", now),
            peer("unknown", now - 1),
        ];
        let held: Vec<String> = older_peers(&peers, CodeVersion(0, 3, 0), now)
            .into_iter()
            .map(|p| p.instance)
            .collect();
        assert_eq!(
            held,
            [
                format!("0.2.0@{}", now - 59_000),
                format!("unknown@{}", now - 1)
            ]
        );
    }
}
