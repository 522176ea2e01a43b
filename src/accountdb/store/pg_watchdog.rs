//! Every PostgreSQL call bounded on account-db's side, COMMIT included. `statement_timeout`
//! does not end a COMMIT waiting for a synchronous standby, so a standby that stops answering
//! would hold every handler and its pooled connection: a [`Watchdog`] thread sends a cancel
//! request for a call still running at its deadline. PostgreSQL then ends the wait with a
//! warning, the transaction "already committed locally": the notice is caught
//! ([`notice`]), and the call is answered as an error ([`take_unreplicated`]), never as a
//! success the standby may not have.

use parking_lot::{Condvar, Mutex};
use postgres::error::DbError;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Cancel requests in flight at once, over every watchdog (4): each opens a connection of its
/// own to the server. Past this, a late call is left to the link's own timeouts.
const MAX_CANCELS: usize = 4;

/// How a connection's running call is cancelled, and whether it was.
pub struct Cancel {
    /// PostgreSQL's key for the connection's backend.
    token: postgres::CancelToken,
    /// A cancel request was sent: the connection is not reused (the request could land on a
    /// later call).
    sent: AtomicBool,
}

impl Cancel {
    /// For the connection `client`.
    pub fn of(client: &postgres::Client) -> Arc<Cancel> {
        Arc::new(Cancel {
            token: client.cancel_token(),
            sent: AtomicBool::new(false),
        })
    }

    /// Whether a cancel request was sent for a call on this connection.
    pub fn was_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Calls running, each with its deadline, and a thread that cancels the late ones. Cloning
/// shares it; the thread ends with the last clone.
#[derive(Clone)]
pub struct Watchdog {
    /// What the thread watches.
    shared: Arc<Shared>,
    /// Ends the thread when the last clone goes.
    _stop: Arc<Stop>,
}

/// The watchdog's state, shared with its thread.
struct Shared {
    calls: Mutex<Calls>,
    /// Wakes the thread: a first call to watch, or the end.
    wake: Condvar,
    /// Makes the cancel requests' TLS, as the connections'.
    tls: MakeRustlsConnect,
}

/// The calls being watched.
#[derive(Default)]
struct Calls {
    /// The next call's key.
    next: u64,
    /// By key: the deadline and the connection's cancel.
    running: HashMap<u64, (Instant, Arc<Cancel>)>,
    /// When the thread wakes by itself next (`None`: it waits with no deadline, nothing was
    /// watched when it last looked). A call due earlier wakes it; one due later (every call
    /// of the hot path, their patience being the same) does not: no context switch per call.
    wakes_at: Option<Instant>,
    /// The watchdog was dropped.
    stopped: bool,
}

/// Sets `stopped` when dropped.
struct Stop(Arc<Shared>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.calls.lock().stopped = true;
        self.0.wake.notify_all();
    }
}

/// A call being watched; dropping it ends the watch.
pub struct Watch {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.calls.lock().running.remove(&self.key);
    }
}

impl Watchdog {
    /// A watchdog whose cancel requests go over `tls`, and its thread.
    pub fn start(tls: MakeRustlsConnect) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            calls: Mutex::default(),
            wake: Condvar::new(),
            tls,
        });
        let watched = shared.clone();
        std::thread::Builder::new()
            .name("postgres-watchdog".into())
            .spawn(move || watched.run())?;
        Ok(Watchdog {
            _stop: Arc::new(Stop(shared.clone())),
            shared,
        })
    }

    /// Watch a call on the connection of `cancel`: cancelled if it still runs after
    /// `patience`.
    pub fn watch(&self, cancel: &Arc<Cancel>, patience: Duration) -> Watch {
        let mut calls = self.shared.calls.lock();
        let key = calls.next;
        calls.next += 1;
        let deadline = Instant::now() + patience;
        calls.running.insert(key, (deadline, cancel.clone()));
        let wake = calls.wakes_at.map_or(true, |at| deadline < at);
        if wake {
            calls.wakes_at = Some(deadline);
        }
        drop(calls);
        if wake {
            self.shared.wake.notify_one();
        }
        Watch {
            shared: self.shared.clone(),
            key,
        }
    }
}

impl Shared {
    /// The thread: sleep until the earliest deadline, cancel what is late, again.
    fn run(&self) {
        let mut calls = self.calls.lock();
        loop {
            if calls.stopped {
                return;
            }
            let now = Instant::now();
            let late: Vec<u64> = calls
                .running
                .iter()
                .filter(|(_, (deadline, _))| *deadline <= now)
                .map(|(key, _)| *key)
                .collect();
            for key in late {
                if let Some((_, cancel)) = calls.running.remove(&key) {
                    self.cancel(cancel);
                }
            }
            let next = calls.running.values().map(|(deadline, _)| *deadline).min();
            calls.wakes_at = next;
            match next {
                Some(next) => {
                    let _ = self.wake.wait_until(&mut calls, next);
                }
                None => self.wake.wait(&mut calls),
            }
        }
    }

    /// Send a cancel request for `cancel`'s connection, on a thread of its own (the server
    /// may be slow to take it).
    fn cancel(&self, cancel: Arc<Cancel>) {
        cancel.sent.store(true, Ordering::Relaxed);
        if CANCELLING.fetch_add(1, Ordering::SeqCst) >= MAX_CANCELS {
            CANCELLING.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let tls = self.tls.clone();
        let spawned = std::thread::Builder::new()
            .name("postgres-cancel".into())
            .spawn(move || {
                if let Err(e) = cancel.token.cancel_query(tls) {
                    tracing::debug!(error = %e, "cannot send a cancel request to PostgreSQL");
                }
                CANCELLING.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            CANCELLING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Cancel requests in flight, over every watchdog.
static CANCELLING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// A commit on this thread had its wait for a synchronous standby cancelled.
    static UNREPLICATED: Cell<bool> = const { Cell::new(false) };
}

/// The connections' notice handler: PostgreSQL's warning that a commit's wait for a
/// synchronous standby was cancelled is noted for the thread whose call it ended (the
/// `postgres` crate runs a connection on its caller's thread); other notices go to the debug
/// log.
pub fn notice(notice: DbError) {
    if notice
        .message()
        .contains("wait for synchronous replication")
        || notice
            .detail()
            .is_some_and(|d| d.contains("committed locally"))
    {
        UNREPLICATED.with(|flag| flag.set(true));
    } else {
        tracing::debug!(message = notice.message(), "PostgreSQL notice");
    }
}

/// Whether a commit on this thread had its wait for a synchronous standby cancelled since the
/// last call; clears it.
pub fn take_unreplicated() -> bool {
    UNREPLICATED.with(|flag| flag.replace(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to the machine's PostgreSQL (`TEST_DATABASE_URL`'s server), without TLS;
    /// `None` (skipped visibly) where there is none, unless `REQUIRE_POSTGRES=1`.
    fn connect() -> Option<postgres::Client> {
        let url = "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable";
        match postgres::Client::connect(url, postgres::NoTls) {
            Ok(client) => Some(client),
            Err(e) if std::env::var_os("REQUIRE_POSTGRES").is_some() => panic!("{url}: {e}"),
            Err(e) => {
                eprintln!("SKIPPED: no PostgreSQL at {url}: {e}");
                None
            }
        }
    }

    /// What the store's connections use, for `sslmode=prefer` (the cancels here go in
    /// plaintext: the test's connection has `sslmode=disable`).
    fn tls() -> MakeRustlsConnect {
        use super::super::pg_link::{client_config, SslMode};
        MakeRustlsConnect::new(client_config(SslMode::Prefer, None).unwrap())
    }

    #[test]
    fn a_late_call_is_cancelled_even_behind_a_longer_one() {
        let (Some(mut client), Some(other)) = (connect(), connect()) else {
            return;
        };
        let dog = Watchdog::start(tls()).unwrap();
        // The thread sleeps towards this one's deadline first.
        let _long = dog.watch(&Cancel::of(&other), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
        let cancel = Cancel::of(&client);
        let started = Instant::now();
        let watch = dog.watch(&cancel, Duration::from_millis(300));
        let error = client.simple_query("SELECT pg_sleep(20)").unwrap_err();
        drop(watch);
        assert_eq!(
            error.code(),
            Some(&postgres::error::SqlState::QUERY_CANCELED),
            "{error}"
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "cancelled after {took:?}");
        assert!(cancel.was_sent());
        // A call that ends in time is left alone.
        let quick = Cancel::of(&client);
        let watch = dog.watch(&quick, Duration::from_secs(5));
        client.simple_query("SELECT 1").unwrap();
        drop(watch);
        assert!(!quick.was_sent());
    }
}
