//! Which account-db a request goes to and what is done when it fails: the retry and failover
//! rules of [`RemoteStore`](super::RemoteStore), apart from the transport ([`Target`]), so that
//! they are tested against scripted account-dbs.

use super::connection::DbError;
use crate::accountdb::store::StoreError;
use crate::config::DbDeadlines;
use crate::protocol::accountdb::{DbRequest, DbResponse};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a create whose outcome is unknown waits before every account-db is asked again.
const RESOLVE_PAUSE: Duration = Duration::from_millis(50);

/// One account-db as the failover rules see it.
pub(super) trait Target {
    /// One attempt of `request` on one connection.
    fn attempt(&self, request: &DbRequest) -> Result<DbResponse, Attempt>;
    /// Every request down one connection at once: the replies read, and what stopped the rest;
    /// `None` when this target cannot pipeline (not pooled).
    fn attempt_all(&self, requests: &[&DbRequest]) -> Option<(Vec<DbResponse>, Option<DbError>)>;
    /// How many connections found dead in a row are followed at once by another to it (after
    /// account-db restarts, every idle pooled connection is dead).
    fn dead_retries(&self) -> u32;
    /// What is known of its health.
    fn health(&self) -> &Health;
}

/// How one attempt failed.
#[derive(Debug)]
pub(super) enum Attempt {
    /// No connection could be had, so nothing was sent.
    NotSent(DbError),
    /// The request may or may not have reached account-db.
    Failed(DbError),
    /// Not sent: the connection agreed on an older protocol version than the request needs
    /// (this one), with an account-db of the previous release during an upgrade.
    Unsupported(u32),
}

/// An account-db's health and counters.
#[derive(Debug)]
pub(super) struct Health {
    /// Its name in the log (as `--db` gives it).
    name: String,
    /// Cleared when a request to it fails for want of a connection or an answer; set again
    /// when it answers (a request or a probe).
    up: AtomicBool,
    /// Requests sent (or tried), for the metrics.
    pub(super) requests: AtomicU64,
    /// Requests it failed, for the metrics.
    pub(super) errors: AtomicU64,
    /// Requests tried on it after a failure, for the metrics.
    pub(super) retries: AtomicU64,
}

impl Health {
    /// A target named `name`, taken to be up until it fails.
    pub(super) fn new(name: String) -> Health {
        Health {
            name,
            up: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Whether it answered last time it was asked.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// It answered: mark it up. Returns whether it was down (and so is logged as back).
    pub(super) fn answered(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::Relaxed);
        if was_down {
            tracing::info!(db = %self.name, "account-db answers again: marked up");
        }
        was_down
    }

    /// A request to it failed (`why`): count it, and mark it down until it answers again.
    fn failed(&self, why: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(db = %self.name, error = %why, "account-db marked down");
        }
    }
}

/// Account-dbs serving the same accounts, and the rules for spreading requests over them.
pub(super) struct Failover<T> {
    /// In `--db` order.
    targets: Vec<T>,
    /// Where the next request starts looking, so that load is spread.
    next: AtomicUsize,
    /// The deadline of a whole request.
    timeout: Duration,
    /// How long a create whose outcome is unknown keeps being repeated to learn it.
    resolve_window: Duration,
}

impl<T: Target> Failover<T> {
    /// Requests spread over `targets` within `deadlines`.
    pub(super) fn new(targets: Vec<T>, deadlines: DbDeadlines) -> Failover<T> {
        Failover {
            targets,
            next: AtomicUsize::new(0),
            timeout: deadlines.request,
            resolve_window: deadlines.resolve_window,
        }
    }

    /// Every target, in `--db` order.
    pub(super) fn targets(&self) -> &[T] {
        &self.targets
    }

    /// The targets to try for one request: those up, starting at the next in turn, then those
    /// down (one may have come back since it was marked).
    fn order(&self) -> Vec<&T> {
        let list = &self.targets;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = (0..list.len()).map(|i| &list[(start + i) % list.len()]);
        let (up, down): (Vec<&T>, Vec<&T>) = turn.partition(|t| t.health().is_up());
        up.into_iter().chain(down).collect()
    }

    /// One request: see [`Failover::call_since`].
    pub(super) fn call(&self, request: &DbRequest) -> Result<DbResponse, StoreError> {
        self.call_since(request, request.resolves(), Instant::now(), None)
    }

    /// One request, retried where that is safe and useful, within the request's deadline
    /// (its window opened at `started`; `last`: it failed already, asked with others: once the
    /// window has closed, it is not tried again). Every request is idempotent (a create by its
    /// request id), so:
    /// - a connection found dead is followed by another to the same target at once, up to
    ///   [`Target::dead_retries`] times;
    /// - a target that cannot be reached or does not answer in time is marked down, and the
    ///   request goes to the next;
    /// - a store error (account-db's PostgreSQL unreachable from it, say) is the answer when
    ///   there is one target; with several, that target is marked down and the next asked;
    /// - a request that is not [repeatable](DbRequest::repeatable) (a write other than a
    ///   create) is asked of no other target once it may have been done (a store error, no
    ///   answer in time): a missed count is preferable to a double one;
    /// - a request whose outcome must be known (`resolve`: a create) is repeated after any
    ///   failure, timeouts included, for up to the resolve window.
    fn call_since(
        &self,
        request: &DbRequest,
        resolve: bool,
        started: Instant,
        mut last: Option<DbError>,
    ) -> Result<DbResponse, StoreError> {
        let window = if resolve {
            self.resolve_window
        } else {
            self.timeout
        };
        let mut failed_remote = None;
        // The version a target lacked: the answer when no target could be asked.
        let mut unsupported = None;
        loop {
            for target in self.order() {
                let health = target.health();
                let mut dead = target.dead_retries();
                loop {
                    if started.elapsed() >= window {
                        if let Some(e) = last.take() {
                            return Err(StoreError::Unreachable(e));
                        }
                    }
                    if last.is_some() {
                        health.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    health.requests.fetch_add(1, Ordering::Relaxed);
                    match target.attempt(request) {
                        Err(Attempt::Unsupported(needs)) => {
                            unsupported = Some(needs);
                            break;
                        }
                        Ok(DbResponse::Error { message }) => {
                            if self.targets.len() == 1 || !request.repeatable() {
                                health.errors.fetch_add(1, Ordering::Relaxed);
                                return Err(StoreError::Remote(message));
                            }
                            health.failed(&message);
                            failed_remote = Some(message);
                            break;
                        }
                        Ok(response) => {
                            let _ = health.answered();
                            return Ok(response);
                        }
                        Err(Attempt::Failed(e)) if e.is_dead_connection() && dead > 0 => {
                            dead -= 1;
                            tracing::debug!(db = %health.name, error = %e, "dead account-db connection; trying another");
                            last = Some(e);
                        }
                        // It may have been done: not asked of another account-db.
                        Err(Attempt::Failed(e)) if !request.repeatable() => {
                            health.failed(&e);
                            return Err(StoreError::Unreachable(e));
                        }
                        Err(Attempt::NotSent(e) | Attempt::Failed(e)) => {
                            health.failed(&e);
                            last = Some(e);
                            break;
                        }
                    }
                }
            }
            // Every target failed once: only a create whose outcome is unknown goes round
            // again, until its window closes (one no target could be sent is not unknown).
            let never_sent = unsupported.is_some() && last.is_none() && failed_remote.is_none();
            if !resolve || never_sent || started.elapsed() >= window {
                break;
            }
            std::thread::sleep(RESOLVE_PAUSE);
        }
        Err(match (last, failed_remote, unsupported) {
            (Some(e), _, _) => StoreError::Unreachable(e),
            (None, Some(message), _) => StoreError::Remote(message),
            (None, None, Some(needs)) => StoreError::Unsupported {
                op: DbRequest::NAMES[request.index()],
                needs,
            },
            (None, None, None) => StoreError::Remote("no account-db configured".into()),
        })
    }

    /// Pipelined on one connection of the next target up: one round trip for all. What that
    /// leaves unanswered (no pool, a connection that died or timed out midway, a store error
    /// where another account-db may answer) is asked again one by one, with the usual retries
    /// and failover; the replies already read are kept. The round shares one deadline: once a
    /// question is unreachable (a lone account-db that did not answer in time, or every
    /// account-db failed it), the rest are answered so at once, except the creates, which are
    /// asked again until their outcome is known, as [`Failover::call`] does, within one
    /// resolve window for the round: however many creates are unknown, the round ends by then
    /// (and one attempt after it).
    pub(super) fn call_all(&self, requests: &[&DbRequest]) -> Vec<Result<DbResponse, StoreError>> {
        let started = Instant::now();
        let single = self.targets.len() == 1;
        let first = self.order().first().copied();
        let (responses, failure) = match first {
            Some(target) if requests.len() > 1 => match target.attempt_all(requests) {
                Some((responses, failure)) => {
                    let health = target.health();
                    let n = u64::try_from(requests.len()).unwrap_or(u64::MAX);
                    health.requests.fetch_add(n, Ordering::Relaxed);
                    match &failure {
                        None => {
                            let _ = health.answered();
                        }
                        Some(e) if !e.is_dead_connection() => health.failed(e),
                        Some(_) => {}
                    }
                    (responses, failure)
                }
                None => (Vec::new(), None),
            },
            _ => (Vec::new(), None),
        };
        // What last failed a create of this round (or the round itself).
        let mut create_failed = failure.as_ref().map(DbError::again);
        // The round stopped where what was sent may have been done (not a dead connection).
        let midway = failure
            .as_ref()
            .filter(|e| !e.is_dead_connection())
            .map(DbError::again);
        let mut unreachable = failure.filter(|e| single && !e.is_dead_connection());
        let mut responses = responses.into_iter();
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let answer = match (responses.next(), &unreachable) {
                // As `call` answers it: with one account-db, its store's error is the answer.
                (Some(DbResponse::Error { message }), _) if single => {
                    if let Some(target) = first {
                        target.health().errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(StoreError::Remote(message))
                }
                // A create not answered, or failed by this account-db (another may answer).
                (Some(DbResponse::Error { .. }) | None, _) if request.resolves() => {
                    let last = create_failed.as_ref().map(DbError::again);
                    let answer = self.call_since(request, true, started, last);
                    if let Err(StoreError::Unreachable(e)) = &answer {
                        create_failed = Some(e.again());
                    }
                    answer
                }
                // Not repeatable: not asked of another account-db once it may have been done.
                (Some(DbResponse::Error { message }), _) if !request.repeatable() => {
                    Err(StoreError::Remote(message))
                }
                (Some(DbResponse::Error { .. }), _) => self.call(request),
                (Some(response), _) => Ok(response),
                (None, Some(e)) => Err(StoreError::Unreachable(e.again())),
                (None, None) => match &midway {
                    Some(e) if !request.repeatable() => Err(StoreError::Unreachable(e.again())),
                    _ => self.call(request),
                },
            };
            // Every account-db failed it: the rest are answered so. (A write that was not
            // asked again says nothing of the others.)
            match &answer {
                Err(StoreError::Unreachable(e)) if request.repeatable() => {
                    unreachable = Some(e.again());
                }
                _ => {}
            }
            answers.push(answer);
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::accountdb::Account;
    use parking_lot::Mutex;
    use std::collections::VecDeque;
    use std::io;

    /// What a scripted account-db does with one request.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Does {
        /// Answers it.
        Answer,
        /// Its connection is found dead (reset).
        Dead,
        /// Does not answer within the attempt's deadline.
        Slow,
        /// Cannot be connected to.
        Refuse,
        /// Answers that its store failed.
        StoreDown,
    }

    /// An account-db that does what its script says, then `then` for ever.
    struct Scripted {
        health: Health,
        script: Mutex<VecDeque<Does>>,
        then: Does,
        /// Whether it can pipeline (is pooled).
        pooled: bool,
        /// Requests it was asked, one by one or pipelined.
        asked: Mutex<Vec<DbRequest>>,
        /// The protocol version its connections agree on.
        version: u32,
    }

    impl Scripted {
        fn new(name: &str, script: &[Does], then: Does) -> Scripted {
            Scripted {
                health: Health::new(name.into()),
                script: Mutex::new(script.iter().copied().collect()),
                then,
                pooled: true,
                asked: Mutex::new(Vec::new()),
                version: 4,
            }
        }

        fn next(&self, request: &DbRequest) -> Does {
            self.asked.lock().push(request.clone());
            self.script.lock().pop_front().unwrap_or(self.then)
        }

        fn asked(&self) -> usize {
            self.asked.lock().len()
        }
    }

    fn answer_to(request: &DbRequest) -> DbResponse {
        match request {
            DbRequest::Create { .. } => DbResponse::Created,
            _ => DbResponse::Pong,
        }
    }

    fn io(kind: io::ErrorKind) -> DbError {
        DbError::Io(io::Error::from(kind))
    }

    impl Target for Scripted {
        fn attempt(&self, request: &DbRequest) -> Result<DbResponse, Attempt> {
            if request.min_version() > self.version {
                return Err(Attempt::Unsupported(request.min_version()));
            }
            match self.next(request) {
                Does::Answer => Ok(answer_to(request)),
                Does::Dead => Err(Attempt::Failed(io(io::ErrorKind::ConnectionReset))),
                Does::Slow => Err(Attempt::Failed(io(io::ErrorKind::TimedOut))),
                Does::Refuse => Err(Attempt::NotSent(io(io::ErrorKind::ConnectionRefused))),
                Does::StoreDown => Ok(DbResponse::Error {
                    message: "store down".into(),
                }),
            }
        }

        fn attempt_all(
            &self,
            requests: &[&DbRequest],
        ) -> Option<(Vec<DbResponse>, Option<DbError>)> {
            if !self.pooled {
                return None;
            }
            let mut replies = Vec::new();
            for request in requests {
                match self.attempt(request) {
                    Ok(reply) => replies.push(reply),
                    Err(Attempt::NotSent(e) | Attempt::Failed(e)) => {
                        return Some((replies, Some(e)))
                    }
                    // As a real connection does: the rest are asked one by one.
                    Err(Attempt::Unsupported(_)) => return Some((replies, None)),
                }
            }
            Some((replies, None))
        }

        fn dead_retries(&self) -> u32 {
            2
        }

        fn health(&self) -> &Health {
            &self.health
        }
    }

    /// `targets` with a 100 ms request deadline (a 200 ms resolve window).
    fn failover(targets: Vec<Scripted>) -> Failover<Scripted> {
        let n = targets.len();
        Failover::new(targets, DbDeadlines::new(Duration::from_millis(100), n))
    }

    fn ping() -> DbRequest {
        DbRequest::Ping
    }

    fn create() -> DbRequest {
        DbRequest::Create {
            account: Account {
                id: 0,
                username: "u".into(),
                hash: "h".into(),
                ban: None,
            },
            request_id: "r".into(),
        }
    }

    fn counts(t: &Scripted) -> (bool, u64, u64, u64) {
        let h = &t.health;
        (
            h.is_up(),
            h.requests.load(Ordering::Relaxed),
            h.errors.load(Ordering::Relaxed),
            h.retries.load(Ordering::Relaxed),
        )
    }

    /// A request of version 4: a device's devices.
    fn devices() -> DbRequest {
        DbRequest::Devices {
            session: crate::protocol::accountdb::SessionRef {
                account_id: 1,
                sid: "s".into(),
                auth_ms: 0,
                link: None,
            },
        }
    }

    #[test]
    fn a_request_of_a_newer_version_goes_only_where_it_was_agreed() {
        let old = || Scripted {
            version: 3,
            ..Scripted::new("old", &[], Does::Answer)
        };
        let f = failover(vec![old(), Scripted::new("new", &[], Does::Answer)]);
        for _ in 0..4 {
            assert!(f.call(&devices()).is_ok());
            assert!(f.call(&ping()).is_ok());
        }
        let [old_one, new_one] = f.targets() else {
            panic!("two targets");
        };
        assert!(old_one.asked.lock().iter().all(|r| r == &ping()));
        let sent_new = new_one
            .asked
            .lock()
            .iter()
            .filter(|&r| r == &devices())
            .count();
        assert_eq!(sent_new, 4);
        assert!(old_one.health.is_up(), "not marked down for its version");
        // Pipelined with others: asked on its own where it can be.
        let answers = f.call_all(&[&ping(), &devices(), &ping()]);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        // No account-db of this release: said so, at once, even for a request that resolves.
        let f = failover(vec![old(), old()]);
        match f.call(&devices()) {
            Err(StoreError::Unsupported {
                op: "devices",
                needs: 4,
            }) => {}
            other => panic!("{other:?}"),
        }
        let guest = DbRequest::CreateGuest {
            device_id: "d".repeat(16),
            secret_hash: "h".into(),
            origin: None,
            limit: crate::throttle::Policy::default().guests(),
            request_id: "r".into(),
        };
        let started = Instant::now();
        assert!(matches!(
            f.call(&guest),
            Err(StoreError::Unsupported { .. })
        ));
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "not resolved for 200 ms"
        );
        assert!(f.targets().iter().all(|t| t.asked.lock().is_empty()));
    }

    #[test]
    fn an_instance_is_told_back_only_when_it_was_down() {
        let health = Health::new("a".into());
        assert!(!health.answered(), "up from the start");
        health.failed(&"gone");
        assert!(!health.is_up());
        assert!(health.answered());
        assert!(health.is_up() && !health.answered());
    }

    #[test]
    fn requests_take_turns_over_the_instances_up() {
        let f = failover(vec![
            Scripted::new("a", &[], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
            Scripted::new("c", &[], Does::Answer),
        ]);
        for _ in 0..6 {
            assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        }
        let asked: Vec<usize> = f.targets().iter().map(Scripted::asked).collect();
        assert_eq!(asked, [2, 2, 2]);
    }

    #[test]
    fn an_instance_that_fails_is_marked_down_and_tried_last() {
        let f = failover(vec![
            Scripted::new("a", &[Does::Refuse], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        // a is first in turn, refuses, and b answers the same request.
        assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        assert_eq!(counts(&f.targets()[0]), (false, 1, 1, 0));
        assert_eq!(counts(&f.targets()[1]), (true, 1, 0, 1));
        // While a is down, b is asked first whoever's turn it is.
        for _ in 0..4 {
            f.call(&ping()).unwrap();
        }
        assert_eq!(f.targets()[0].asked(), 1);
        assert_eq!(f.targets()[1].asked(), 5);
    }

    #[test]
    fn a_down_instance_is_still_tried_when_every_other_fails() {
        let f = failover(vec![
            Scripted::new("a", &[Does::Refuse], Does::Answer),
            Scripted::new("b", &[Does::Answer], Does::Refuse),
        ]);
        f.call(&ping()).unwrap(); // a refuses: down; b answers
        assert!(!f.targets()[0].health.is_up());
        // b refuses now; a, down but answering again, is asked and marked up.
        assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        assert!(f.targets()[0].health.is_up());
        assert!(!f.targets()[1].health.is_up());
    }

    #[test]
    fn a_dead_connection_is_followed_by_another_to_the_same_instance() {
        let f = failover(vec![
            Scripted::new("a", &[Does::Dead, Does::Dead], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        // Two dead connections (the budget) then an answer, all on a; a stays up.
        assert_eq!(counts(&f.targets()[0]), (true, 3, 0, 2));
        assert_eq!(f.targets()[1].asked(), 0);
    }

    #[test]
    fn past_its_dead_connection_budget_an_instance_is_marked_down() {
        let f = failover(vec![
            Scripted::new("a", &[], Does::Dead),
            Scripted::new("b", &[], Does::Answer),
        ]);
        assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        // 1 + 2 dead retries on a, then b.
        assert_eq!(counts(&f.targets()[0]), (false, 3, 1, 2));
        assert_eq!(f.targets()[1].asked(), 1);
    }

    #[test]
    fn a_slow_instance_is_not_retried_on_another_connection() {
        let f = failover(vec![
            Scripted::new("a", &[Does::Slow], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        assert_eq!(counts(&f.targets()[0]), (false, 1, 1, 0));
        assert_eq!(f.targets()[1].asked(), 1);
    }

    #[test]
    fn with_one_instance_its_store_error_is_the_answer_and_it_stays_up() {
        let f = failover(vec![Scripted::new("a", &[], Does::StoreDown)]);
        match f.call(&ping()) {
            Err(StoreError::Remote(message)) => assert_eq!(message, "store down"),
            other => panic!("{other:?}"),
        }
        assert_eq!(counts(&f.targets()[0]), (true, 1, 1, 0));
    }

    #[test]
    fn with_several_a_store_error_sends_the_request_to_another() {
        let f = failover(vec![
            Scripted::new("a", &[], Does::StoreDown),
            Scripted::new("b", &[], Does::Answer),
        ]);
        assert_eq!(f.call(&ping()).unwrap(), DbResponse::Pong);
        assert!(!f.targets()[0].health.is_up());
        // Every one failing its store: the store's error is the answer.
        let f = failover(vec![
            Scripted::new("a", &[], Does::StoreDown),
            Scripted::new("b", &[], Does::StoreDown),
        ]);
        assert!(matches!(f.call(&ping()), Err(StoreError::Remote(_))));
    }

    /// A write that is not repeatable.
    fn update_hash() -> DbRequest {
        DbRequest::UpdateHash {
            username: "u".into(),
            old: "h".into(),
            hash: "h2".into(),
        }
    }

    #[test]
    fn a_write_that_may_have_been_done_is_asked_of_no_other_instance() {
        for (does, expected_remote) in [(Does::StoreDown, true), (Does::Slow, false)] {
            let f = failover(vec![
                Scripted::new("a", &[does], Does::Answer),
                Scripted::new("b", &[], Does::Answer),
            ]);
            match f.call(&update_hash()) {
                Err(StoreError::Remote(_)) => assert!(expected_remote, "{does:?}"),
                Err(StoreError::Unreachable(_)) => assert!(!expected_remote, "{does:?}"),
                other => panic!("{does:?}: {other:?}"),
            }
            assert_eq!((f.targets()[0].asked(), f.targets()[1].asked()), (1, 0));
        }
        // Not sent, or on a connection found dead: asked again, as any request is.
        for does in [Does::Refuse, Does::Dead] {
            let f = failover(vec![
                Scripted::new("a", &[does], Does::Answer),
                Scripted::new("b", &[], Does::Answer),
            ]);
            assert!(f.call(&update_hash()).is_ok(), "{does:?}");
        }
    }

    #[test]
    fn a_round_s_writes_that_may_have_been_done_are_asked_of_no_other_instance() {
        // A store error for the write: the answer, b never asked.
        let f = failover(vec![
            Scripted::new("a", &[Does::Answer, Does::StoreDown], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        let answers = f.call_all(&[&ping(), &update_hash()]);
        assert!(answers[0].is_ok());
        assert!(matches!(answers[1], Err(StoreError::Remote(_))));
        assert_eq!(f.targets()[1].asked(), 0);
        // A round cut short by a timeout: its unanswered writes are unreachable, its
        // unanswered reads asked again.
        let f = failover(vec![
            Scripted::new("a", &[Does::Answer, Does::Slow], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        let answers = f.call_all(&[&ping(), &update_hash(), &ping(), &update_hash()]);
        assert!(answers[0].is_ok() && answers[2].is_ok());
        assert!(matches!(answers[1], Err(StoreError::Unreachable(_))));
        assert!(matches!(answers[3], Err(StoreError::Unreachable(_))));
        assert_eq!(f.targets()[1].asked(), 1);
    }

    #[test]
    fn a_lookup_goes_round_once_then_is_unreachable() {
        let f = failover(vec![
            Scripted::new("a", &[], Does::Slow),
            Scripted::new("b", &[], Does::Refuse),
        ]);
        assert!(matches!(f.call(&ping()), Err(StoreError::Unreachable(_))));
        assert_eq!(f.targets()[0].asked() + f.targets()[1].asked(), 2);
    }

    #[test]
    fn a_create_is_repeated_until_its_outcome_is_known() {
        // Unknown three times (a timeout is no answer), then stored.
        let f = failover(vec![Scripted::new(
            "a",
            &[Does::Slow, Does::Slow, Does::Slow],
            Does::Answer,
        )]);
        assert_eq!(f.call(&create()).unwrap(), DbResponse::Created);
        assert_eq!(f.targets()[0].asked(), 4);
        // The same script for a lookup: one attempt, then unreachable.
        let f = failover(vec![Scripted::new("a", &[Does::Slow], Does::Answer)]);
        assert!(matches!(f.call(&ping()), Err(StoreError::Unreachable(_))));
        assert_eq!(f.targets()[0].asked(), 1);
    }

    #[test]
    fn a_create_that_stays_unknown_ends_with_its_window() {
        let f = failover(vec![Scripted::new("a", &[], Does::Slow)]);
        let started = Instant::now();
        assert!(matches!(f.call(&create()), Err(StoreError::Unreachable(_))));
        let waited = started.elapsed();
        // The resolve window is 200 ms; one pause more at most, and a generous margin.
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_millis(1500), "{waited:?}");
        assert!(f.targets()[0].asked() >= 3, "{}", f.targets()[0].asked());
    }

    #[test]
    fn no_instance_is_a_store_error() {
        let f = failover(Vec::new());
        assert!(matches!(f.call(&ping()), Err(StoreError::Remote(_))));
        assert!(f.call_all(&[&ping(), &ping()]).iter().all(Result::is_err));
    }

    #[test]
    fn a_round_is_pipelined_on_one_instance() {
        let f = failover(vec![
            Scripted::new("a", &[], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        let (p, c) = (ping(), create());
        let answers = f.call_all(&[&p, &c, &p]);
        let answers: Vec<DbResponse> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            answers,
            [DbResponse::Pong, DbResponse::Created, DbResponse::Pong]
        );
        assert_eq!(counts(&f.targets()[0]), (true, 3, 0, 0));
        assert_eq!(f.targets()[1].asked(), 0);
    }

    #[test]
    fn what_a_dead_pipeline_leaves_unanswered_is_asked_one_by_one() {
        let mut a = Scripted::new("a", &[Does::Answer, Does::Dead], Does::Answer);
        a.pooled = true;
        let f = failover(vec![a]);
        let answers = f.call_all(&[&ping(), &ping(), &ping()]);
        assert!(answers
            .iter()
            .all(|a| a.as_ref().ok() == Some(&DbResponse::Pong)));
        // 2 pipelined (the second found the connection dead), then 2 one by one; a dead
        // connection is no failure of the instance.
        assert_eq!(f.targets()[0].asked(), 4);
        assert_eq!(counts(&f.targets()[0]).2, 0, "no error counted");
        assert!(f.targets()[0].health.is_up());
    }

    #[test]
    fn a_lone_instance_that_times_out_midway_fails_the_rest_of_the_round_at_once() {
        let f = failover(vec![Scripted::new(
            "a",
            &[Does::Answer, Does::Slow],
            Does::Answer,
        )]);
        let answers = f.call_all(&[&ping(), &ping(), &ping(), &ping()]);
        assert_eq!(answers[0].as_ref().ok(), Some(&DbResponse::Pong));
        for answer in &answers[1..] {
            assert!(
                matches!(answer, Err(StoreError::Unreachable(_))),
                "{answer:?}"
            );
        }
        // Nothing asked again: the round's deadline belongs to a peer that did not answer.
        assert_eq!(f.targets()[0].asked(), 2);
        assert!(!f.targets()[0].health.is_up());
    }

    #[test]
    fn a_create_left_unanswered_by_a_round_is_asked_until_known() {
        let f = failover(vec![Scripted::new(
            "a",
            &[Does::Slow, Does::Slow],
            Does::Answer,
        )]);
        let (p, c) = (ping(), create());
        let answers = f.call_all(&[&c, &p]);
        assert_eq!(answers[0].as_ref().ok(), Some(&DbResponse::Created));
        // The lookup behind it in a round that failed with a lone account-db: unreachable.
        assert!(matches!(answers[1], Err(StoreError::Unreachable(_))));
    }

    #[test]
    fn a_round_on_one_instance_answers_its_store_errors_as_they_are() {
        let f = failover(vec![Scripted::new(
            "a",
            &[Does::Answer, Does::StoreDown],
            Does::Answer,
        )]);
        let answers = f.call_all(&[&ping(), &ping(), &ping()]);
        assert_eq!(answers[0].as_ref().ok(), Some(&DbResponse::Pong));
        assert!(matches!(&answers[1], Err(StoreError::Remote(m)) if m == "store down"));
        assert_eq!(answers[2].as_ref().ok(), Some(&DbResponse::Pong));
        assert_eq!(f.targets()[0].asked(), 3);
    }

    #[test]
    fn with_several_a_round_s_store_errors_are_asked_elsewhere() {
        let f = failover(vec![
            Scripted::new("a", &[Does::Answer, Does::StoreDown], Does::Answer),
            Scripted::new("b", &[], Does::Answer),
        ]);
        let answers = f.call_all(&[&ping(), &ping(), &ping()]);
        assert!(answers
            .iter()
            .all(|a| a.as_ref().ok() == Some(&DbResponse::Pong)));
        // The failed one was asked again, of the next in turn: b.
        assert_eq!(f.targets()[0].asked(), 3);
        assert_eq!(f.targets()[1].asked(), 1);
    }

    #[test]
    fn a_round_of_one_is_asked_as_one_call() {
        // As `call`: a dead connection is followed by another at once, counted as a retry.
        let f = failover(vec![Scripted::new("a", &[Does::Dead], Does::Answer)]);
        let answers = f.call_all(&[&ping()]);
        assert_eq!(answers[0].as_ref().ok(), Some(&DbResponse::Pong));
        assert_eq!(counts(&f.targets()[0]), (true, 2, 0, 1));
    }

    #[test]
    fn an_instance_that_cannot_pipeline_is_asked_one_by_one() {
        let mut a = Scripted::new("a", &[], Does::Answer);
        a.pooled = false;
        let f = failover(vec![a]);
        let answers = f.call_all(&[&ping(), &ping()]);
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(counts(&f.targets()[0]), (true, 2, 0, 0));
    }
}
