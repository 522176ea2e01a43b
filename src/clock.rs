//! Wall-clock time for the rules that depend on it (session expiry and max age, lockouts,
//! registration windows, bans), in milliseconds since the Unix epoch, read through a [`Clock`]
//! that tests move forward instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch: when records were written, windows began, locks end.
pub type Millis = i64;

/// Now by the system's clock, in [`Millis`]: for what no test moves (an operator's command,
/// say). The servers read a [`Clock`].
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

/// `d` in [`Millis`] (saturating).
pub fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// The system's clock, or (made by [`Clock::adjustable`]) the system's clock plus an offset
/// that [`Clock::advance`] moves forward; clones share the offset. The default is the system's.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// How far ahead of the system's clock this one is; `None`: never.
    ahead: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// A clock that runs with the system's and that [`Clock::advance`] moves ahead of it.
    pub fn adjustable() -> Clock {
        Clock {
            ahead: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    /// Now, in [`Millis`].
    pub fn now_ms(&self) -> Millis {
        let ahead = self.ahead.as_ref().map_or(0, |a| a.load(Ordering::Relaxed));
        now_ms().saturating_add(ahead)
    }

    /// Move this clock (and its clones) `by` ahead. Returns whether it moved: the system's
    /// clock cannot be.
    pub fn advance(&self, by: Duration) -> bool {
        match &self.ahead {
            Some(ahead) => {
                ahead.fetch_add(millis(by), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_and_its_clones_move_together() {
        let clock = Clock::adjustable();
        let twin = clock.clone();
        let before = twin.now_ms();
        assert!(clock.advance(Duration::from_secs(3600)));
        let after = twin.now_ms();
        assert!(after - before >= 3_600_000, "{}", after - before);
        assert!(after - before < 3_660_000, "{}", after - before);
        assert!(after - now_ms() >= 3_599_000);
    }

    #[test]
    fn the_system_clock_does_not_move() {
        let clock = Clock::default();
        assert!(!clock.advance(Duration::from_secs(3600)));
        assert!((clock.now_ms() - now_ms()).abs() < 60_000);
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), Millis::MAX);
    }
}
