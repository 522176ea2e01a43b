//! Open files: at start the soft `RLIMIT_NOFILE` is raised as far as the configuration needs
//! (never past the hard limit), and the connection cap is fitted under what that reaches, so
//! that running out of descriptors refuses the excess connections at accept instead of
//! silently stopping every login, health check and account-db connection.

use std::io;

/// Descriptors kept free beyond those counted: 32 (a `/healthz` past the metrics endpoint's
/// own connections, a pool reconnecting, a log file, a TLS file read again).
pub const RESERVE: u64 = 32;

/// How the connection cap fits under the open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// The cap asked for (`--max-connections`).
    pub wanted: usize,
    /// The cap in force: `wanted`, or what the limit leaves room for.
    pub effective: usize,
    /// Descriptors the process holds whatever its connections, [`RESERVE`] included.
    pub fixed: u64,
    /// The soft limit in force after raising it.
    pub limit: u64,
    /// The hard limit (`u64::MAX`: none).
    pub hard: u64,
}

impl Fit {
    /// Whether the cap had to be lowered.
    pub fn lowered(&self) -> bool {
        self.effective < self.wanted
    }
}

/// The soft and hard `RLIMIT_NOFILE` (`u64::MAX` for infinity).
fn nofile() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let value = |v: libc::rlim_t| match v {
        libc::RLIM_INFINITY => u64::MAX,
        v => v,
    };
    Ok((value(limit.rlim_cur), value(limit.rlim_max)))
}

/// Raise the soft limit to `wanted` descriptors, at most the hard limit (never lowering it);
/// the soft and hard limits in force after.
fn raise_to(wanted: u64) -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    let target = wanted.min(hard);
    if target > soft {
        let limit = libc::rlimit {
            rlim_cur: target as libc::rlim_t,
            rlim_max: if hard == u64::MAX {
                libc::RLIM_INFINITY
            } else {
                hard as libc::rlim_t
            },
        };
        // SAFETY: setrlimit reads the struct it is given, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok((target, hard));
    }
    Ok((soft, hard))
}

/// The cap that fits `max_connections` connections beside `fixed` descriptors under a soft
/// limit of `limit` (at least one connection, so a start can always be tried).
pub fn fit_under(max_connections: usize, fixed: u64, limit: u64, hard: u64) -> Fit {
    let room = usize::try_from(limit.saturating_sub(fixed)).unwrap_or(usize::MAX);
    Fit {
        wanted: max_connections,
        effective: max_connections.min(room).max(1),
        fixed,
        limit,
        hard,
    }
}

/// Raise the soft limit for `max_connections` connections beside `needed` other descriptors
/// (to which [`RESERVE`] is added), and fit the cap under what it reaches.
pub fn fit(max_connections: usize, needed: u64) -> io::Result<Fit> {
    let fixed = needed + RESERVE;
    let wanted = fixed.saturating_add(u64::try_from(max_connections).unwrap_or(u64::MAX));
    let (limit, hard) = raise_to(wanted)?;
    Ok(fit_under(max_connections, fixed, limit, hard))
}

/// Whether an accept failed for want of descriptors (the process's, or the system's).
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_limit_beside_what_is_fixed() {
        let roomy = fit_under(1000, 100, 4096, 4096);
        assert_eq!((roomy.effective, roomy.lowered()), (1000, false));
        let tight = fit_under(10_000, 60, 256, 256);
        assert_eq!((tight.effective, tight.lowered()), (196, true));
        let none = fit_under(10, 300, 256, 256);
        assert_eq!(none.effective, 1, "at least one, so a start is tried");
        assert_eq!(fit_under(7, 0, u64::MAX, u64::MAX).effective, 7);
    }

    #[test]
    fn the_soft_limit_is_raised_only_as_far_as_needed_and_never_lowered() {
        // Other tests in this process may raise it meanwhile (a login-server starting): only
        // "at least" holds across threads.
        let (soft, hard) = nofile().unwrap();
        let kept = fit(1, 0).unwrap();
        assert!(kept.limit >= soft, "a limit above the need is kept");
        assert!(kept.hard == hard && kept.effective == 1);
        let (soft, _) = nofile().unwrap();
        if hard > soft {
            let wanted = (soft + 10).min(hard);
            let raised = fit(usize::try_from(wanted - RESERVE).unwrap(), 0).unwrap();
            assert!(raised.limit >= wanted);
            assert!(nofile().unwrap().0 >= wanted);
        }
    }

    #[test]
    fn descriptor_exhaustion_is_told_apart() {
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
