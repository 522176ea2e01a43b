//! Who is shed under overload: the players who ask most, before those who ask little.
//!
//! Every request has a key: the player's address as the gateway forwards it (`ip`; IPv6 by its
//! /64, which one subscriber holds whole), or, without one, its connection. [`Fairness`]
//! remembers per key two counts of the requests that arrived lately (dated when they were read
//! from the socket, not when a worker got to them): one that decays in a second (about its
//! requests in the last second) and one that decays in [`BURST`] (about those that came
//! together). A worker asks [`Fairness::admit`] before it begins a request. Without overload
//! every request is admitted. Under overload (the worker queue half full, [`HASH_BACKLOG`]
//! requests per hash thread waiting for one, or [`BACKLOG`] whole messages waiting behind this
//! one on a connection that waits for hashes, now or within [`BACKLOG_MEMORY`]: a client that
//! pipelines cheap requests is served as fast as it asks), a request is shed, answered
//! "unavailable" (7) at once, when its key already has requests waiting (more than
//! [`BURST_ALLOWANCE`] came together; for a connection's key, more than one, or another of its
//! messages waits behind it or came before it in the worker's turn) or asks more than its share (`--fair-share` requests a second). Everyone else
//! keeps being admitted up to the queues' own bounds, which shed what is past them as before
//! ("queue full").
//!
//! A shed request costs a parse and a reply, no hash and no account-db round trip, so an
//! attacker's flood is answered at the speed of the workers, and a player who asks at a
//! player's pace is admitted even on the same gateway connection as the flood. The bound: the
//! table is [`SLOTS`] slots of 24 bytes (1.5 MiB), each key hashed to two of them with a key of
//! this process; a key whose two slots are both held by keys active more recently takes the
//! older slot, so a flood of fresh addresses can push out a player's history (he is then a
//! fresh key: admitted unless he bursts), never grow the table.

pub use crate::metrics::Shed;
use crate::protocol::gateway::Request;
use parking_lot::Mutex;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Slots in the table: a power of two.
pub const SLOTS: usize = 1 << 16;
/// The time constant of a key's burst count: requests this close count as come together.
pub const BURST: Duration = Duration::from_millis(10);
/// Requests of one player (`ip`) that may come together under overload (a login, then its
/// token's checks; or a player's few requests a stalled connection delivered at once); past
/// it the rest of the burst is shed. A connection's key (no `ip`) may have one.
pub const BURST_ALLOWANCE: f32 = 8.0;
/// Whole messages waiting behind the one being begun on its connection that count as
/// overload: the connection is served more slowly than it asks.
pub const BACKLOG: usize = 16;
/// How long a connection found with [`BACKLOG`] messages behind counts as overloaded after:
/// what a worker sees is only what was read so far, and a flood that the kernel holds back
/// for a moment is no less a flood.
pub const BACKLOG_MEMORY: Duration = Duration::from_secs(1);
/// Requests waiting per hash thread that count as overload: about four hash times of waiting
/// (70 ms at the default parameters here), where the hash queue's own bound (`--queue`) would
/// be seconds.
pub const HASH_BACKLOG: usize = 4;

/// Whom a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// The player's IPv4 address.
    V4(u32),
    /// The /64 of the player's IPv6 address.
    V6(u64),
    /// The connection (a request without `ip`): its peer's address and port.
    Conn(SocketAddr),
}

impl Key {
    /// `request`'s key: its `ip`, else the connection from `peer`.
    pub fn of(request: &Request, peer: SocketAddr) -> Key {
        match request.ip {
            Some(IpAddr::V4(v4)) => Key::V4(u32::from(v4)),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::V4(u32::from(v4)),
                None => Key::V6((u128::from(v6) >> 64) as u64),
            },
            None => Key::Conn(peer),
        }
    }
}

/// How loaded the server is, as a worker sees it when it begins a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Connections waiting for a worker, and `--queue`.
    pub queued: (usize, usize),
    /// Requests waiting for a hash thread, and the hash threads.
    pub hashing: (usize, usize),
    /// Whole messages waiting behind this one on its connection (counted up to [`BACKLOG`]).
    pub behind: usize,
    /// The connection had [`BACKLOG`] messages behind one while it was waiting for hashes
    /// (one of its requests went to a hash thread within [`BACKLOG_MEMORY`]), now or within
    /// [`BACKLOG_MEMORY`]: it asks faster than it is served. A backlog of requests that need
    /// no hash is a client pipelining, served as fast as it asks, and is no overload.
    pub backlogged: bool,
    /// Messages taken from the connection in this worker's turn, this one included: past the
    /// first, its client sent them without waiting for a reply.
    pub turn: usize,
}

impl Load {
    /// Whether requests of `key` must be shed by key: the worker queue half full, the hash
    /// queue [`HASH_BACKLOG`] deep per thread, or, for a player behind a gateway, his
    /// connection backlogged behind its hashes (the players on it wait for each other; a
    /// client of its own, without `ip`, only waits for itself).
    pub fn overloaded(&self, key: Key) -> bool {
        let (queued, queue) = self.queued;
        let (hashing, threads) = self.hashing;
        let shared = !matches!(key, Key::Conn(_));
        queued * 2 >= queue.max(1)
            || hashing >= HASH_BACKLOG * threads.max(1)
            || (self.backlogged && shared)
    }
}

/// One key's recent asking.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The key's hash; 0: empty.
    tag: u64,
    /// Its requests, decayed with a time constant of one second to `at`.
    count: f32,
    /// Its requests, decayed by [`BURST`] to `at`.
    burst: f32,
    /// Milliseconds since [`Fairness::epoch`] of its last request.
    at: u32,
}

/// The per-key table and the share; shared by the workers.
pub struct Fairness {
    slots: Mutex<Box<[Slot]>>,
    /// Keys hash with a key of this process's, so nobody can aim at another's slots.
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    /// `--fair-share`: requests a second one key may ask under overload.
    share: f32,
}

impl Fairness {
    /// A table that lets a key ask `share` requests a second under overload.
    pub fn new(share: u32) -> Fairness {
        Fairness::with_slots(share, SLOTS)
    }

    /// A table of `slots` slots (tests make collisions with a small one).
    fn with_slots(share: u32, slots: usize) -> Fairness {
        Fairness {
            slots: Mutex::new(vec![Slot::default(); slots.max(1)].into_boxed_slice()),
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: Instant::now(),
            share: share as f32,
        }
    }

    /// Count a request of `key` that arrived at `arrived` (when it was read: two requests
    /// read together are a burst, however long the first took to serve), and say whether it
    /// may go on under `load`.
    pub fn admit(&self, key: Key, load: Load, arrived: Instant) -> Result<(), Shed> {
        self.admit_at(key, load, arrived)
    }

    fn admit_at(&self, key: Key, load: Load, now: Instant) -> Result<(), Shed> {
        let tag = self.hasher.hash_one(key) | 1;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let (count, burst) = {
            let mut slots = self.slots.lock();
            let n = slots.len();
            let (a, b) = (tag as usize % n, (tag >> 32) as usize % n);
            let i = if slots[a].tag == tag {
                a
            } else if slots[b].tag == tag {
                b
            } else {
                // A new key takes the slot whose key asked longest ago.
                let age = |s: &Slot| now_ms.wrapping_sub(s.at);
                let i = if age(&slots[a]) >= age(&slots[b]) {
                    a
                } else {
                    b
                };
                slots[i] = Slot {
                    tag,
                    count: 0.0,
                    burst: 0.0,
                    at: now_ms.wrapping_sub(u32::MAX / 2),
                };
                i
            };
            let slot = &mut slots[i];
            // Arrivals of one key may be seen out of order (read on two connections): an
            // earlier one than the last counts as simultaneous, and time never goes back.
            let gap_ms = match now_ms.wrapping_sub(slot.at) {
                gap if gap > u32::MAX / 2 => 0,
                gap => gap,
            };
            let seconds = gap_ms as f32 / 1000.0;
            slot.count = slot.count * (-seconds).exp() + 1.0;
            slot.burst = slot.burst * (-seconds / BURST.as_secs_f32()).exp() + 1.0;
            slot.at = slot.at.wrapping_add(gap_ms);
            (slot.count, slot.burst)
        };
        if !load.overloaded(key) {
            return Ok(());
        }
        // A connection (no `ip`) is one client: any two of its requests together, or one
        // waiting behind this, is pipelining. A player behind a gateway may send a few at once.
        let waiting = match key {
            Key::Conn(_) => load.behind > 0 || load.turn > 1 || burst >= 2.0,
            Key::V4(_) | Key::V6(_) => burst > BURST_ALLOWANCE,
        };
        if waiting || count > self.share {
            return Err(Shed::Share);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        Key::V4(n)
    }

    const CALM: Load = Load {
        queued: (0, 1024),
        hashing: (7, 2),
        behind: 0,
        backlogged: false,
        turn: 1,
    };
    const BUSY: Load = Load {
        queued: (0, 1024),
        hashing: (8, 2),
        behind: 0,
        backlogged: false,
        turn: 1,
    };

    #[test]
    fn admit_counts_by_the_time_a_request_arrived() {
        let fair = Fairness::new(50);
        let arrived = Instant::now();
        let peer: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        assert_eq!(fair.admit(Key::Conn(peer), BUSY, arrived), Ok(()));
        assert_eq!(fair.admit(Key::Conn(peer), BUSY, arrived), Err(Shed::Share));
    }

    #[test]
    fn without_overload_everyone_is_admitted() {
        let fair = Fairness::new(50);
        let now = Instant::now();
        for i in 0..1000 {
            assert_eq!(
                fair.admit_at(key(1), CALM, now + Duration::from_micros(i)),
                Ok(())
            );
        }
    }

    #[test]
    fn under_overload_a_burst_and_a_big_asker_are_shed_a_player_at_his_pace_is_not() {
        let fair = Fairness::new(50);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // A player at 20 a second, an attacker at 1,000 a second, both under overload.
        let (mut player, mut attacker) = (Vec::new(), Vec::new());
        for ms in 0..3000 {
            if ms % 50 == 0 {
                player.push(fair.admit_at(key(1), BUSY, at(ms)));
            }
            attacker.push(fair.admit_at(key(2), BUSY, at(ms)));
        }
        assert!(player.iter().all(Result::is_ok), "{player:?}");
        // A fresh key's first requests come in under the burst allowance; then it is shed.
        assert!(
            attacker[..8].iter().all(Result::is_ok),
            "{:?}",
            &attacker[..20]
        );
        assert!(attacker[20..].iter().all(|r| *r == Err(Shed::Share)));
        // Requests read together: up to the allowance admitted, the rest of the burst shed.
        let together = at(10_000);
        let burst: Vec<_> = (0..12)
            .map(|_| fair.admit_at(key(3), BUSY, together))
            .collect();
        assert!(burst[..8].iter().all(Result::is_ok), "{burst:?}");
        assert!(burst[8..].iter().all(Result::is_err), "{burst:?}");
        // One read before the last one counted (on another connection): simultaneous, no
        // older: still the burst.
        assert!(fair.admit_at(key(3), BUSY, at(9_990)).is_err());
        // A quiet moment later, admitted again.
        assert_eq!(fair.admit_at(key(3), BUSY, at(10_200)), Ok(()));
        // A big asker that stops is forgotten within seconds, not counted for ever.
        for i in 0..100 {
            let _ = fair.admit_at(key(5), BUSY, at(30_000 + i * 5));
        }
        assert!(fair.admit_at(key(5), BUSY, at(30_600)).is_err());
        assert_eq!(fair.admit_at(key(5), BUSY, at(34_000)), Ok(()));
        // Asking just above the share, evenly: shed once the count passes it.
        let steady: Vec<_> = (0..200)
            .map(|i| fair.admit_at(key(4), BUSY, at(20_000 + i * 16)))
            .collect();
        assert!(steady[..40].iter().all(Result::is_ok), "{steady:?}");
        assert!(steady[150..].iter().all(Result::is_err), "{steady:?}");
    }

    #[test]
    fn a_connection_with_messages_behind_is_a_burst_an_address_is_not() {
        let fair = Fairness::new(50);
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let behind = Load { behind: 3, ..BUSY };
        assert_eq!(
            fair.admit_at(Key::Conn(peer), behind, now),
            Err(Shed::Share)
        );
        assert_eq!(fair.admit_at(key(9), behind, now), Ok(()));
        // The last of a connection's pipelined requests, nothing behind it: its burst.
        let other: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        assert_eq!(fair.admit_at(Key::Conn(other), BUSY, now), Ok(()));
        assert_eq!(fair.admit_at(Key::Conn(other), BUSY, now), Err(Shed::Share));
        let later = now + Duration::from_millis(200);
        assert_eq!(fair.admit_at(Key::Conn(other), BUSY, later), Ok(()));
        // The second message taken in one turn, though it seems to have come alone.
        let second = Load { turn: 2, ..BUSY };
        let much_later = now + Duration::from_secs(5);
        assert_eq!(
            fair.admit_at(Key::Conn(other), second, much_later),
            Err(Shed::Share)
        );
        assert_eq!(fair.admit_at(key(9), second, much_later), Ok(()));
        // A connection backlogged behind its hashes is overload by itself; messages behind
        // alone (a client pipelining cheap requests) are not.
        let backlog = Load {
            backlogged: true,
            ..CALM
        };
        let pipelining = Load {
            behind: BACKLOG,
            ..CALM
        };
        assert!(backlog.overloaded(key(9)) && !pipelining.overloaded(key(9)));
        assert!(!CALM.overloaded(key(9)) && BUSY.overloaded(key(9)));
        // A client without `ip` backlogged behind its own hashes only waits for itself.
        assert!(!backlog.overloaded(Key::Conn(peer)) && BUSY.overloaded(Key::Conn(peer)));
        let half_queue = Load {
            queued: (512, 1024),
            ..CALM
        };
        let under_half = Load {
            queued: (511, 1024),
            ..CALM
        };
        assert!(half_queue.overloaded(key(9)) && !under_half.overloaded(key(9)));
        let hash_short = Load {
            hashing: (7, 2),
            ..CALM
        };
        assert!(!hash_short.overloaded(key(9)));
    }

    #[test]
    fn keys_are_addresses_v6_by_their_64_and_else_the_connection() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let with = |ip: &str| Request {
            ip: Some(ip.parse().unwrap()),
            ..Request::default()
        };
        assert_eq!(Key::of(&with("192.0.2.7"), peer), Key::V4(0xc000_0207));
        assert_eq!(
            Key::of(&with("::ffff:192.0.2.7"), peer),
            Key::V4(0xc000_0207)
        );
        assert_eq!(
            Key::of(&with("2001:db8:1:2:aaaa::1"), peer),
            Key::of(&with("2001:db8:1:2:bbbb::2"), peer)
        );
        assert_ne!(
            Key::of(&with("2001:db8:1:2::1"), peer),
            Key::of(&with("2001:db8:1:3::1"), peer)
        );
        assert_eq!(Key::of(&Request::default(), peer), Key::Conn(peer));
    }

    #[test]
    fn keys_that_meet_in_a_small_table_never_share_a_count() {
        // 64 slots for 200 keys asking in turn, and a player among them at 20 a second: some
        // keys lose their slots to others (and start again as fresh keys), but none counts
        // another's requests, so the player is never shed for asking too much.
        let fair = Fairness::with_slots(50, 64);
        let start = Instant::now();
        for tick in 0..100u32 {
            let at = start + Duration::from_millis(u64::from(tick) * 50);
            for other in 1..=200 {
                let _ = fair.admit_at(key(other), BUSY, at);
            }
            assert_eq!(fair.admit_at(key(1000), BUSY, at), Ok(()), "tick {tick}");
        }
    }

    #[test]
    fn a_flood_of_fresh_keys_never_grows_the_table() {
        let fair = Fairness::new(50);
        let now = Instant::now();
        for n in 0..(SLOTS as u32 * 3) {
            let _ = fair.admit_at(key(n), CALM, now);
        }
        assert_eq!(fair.slots.lock().len(), SLOTS);
    }
}
