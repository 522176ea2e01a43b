//! `gateway-sim attack --kind shared-gateway`: one gateway connection that carries a flood and
//! a player together, as a gateway does when a botnet logs in through it beside real players.
//! The flood is logins to a bot's own account with its right password, from `addresses`
//! rotating player addresses, pipelined as fast as the server answers (at most [`WINDOW`]
//! unanswered): each costs a hash, and nothing throttles it (wrong passwords would lock each
//! address after 5 failures, and cost nothing after). The player logs in with his right
//! password at a steady rate from an address of his own. What the player got, and how late,
//! is the measure: fairness is the player being served while the flood is shed.

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Flood requests sent and not yet answered, at most.
pub const WINDOW: u64 = 512;
/// The player's account and password, and the bot's.
const PLAYER: (&str, &str) = ("gwsim-shared-player", "player-password-1");
const BOT: (&str, &str) = ("gwsim-shared-bot", "bot-password-1");
/// The player's address.
const PLAYER_IP: &str = "192.0.2.1";

/// What one side of the connection sent and got.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Side {
    /// Requests sent.
    pub sent: u64,
    /// Replies per code.
    pub codes: BTreeMap<String, u64>,
    /// Latency from when each request was due, in milliseconds (the player's side only).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a shared-gateway run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SharedOutcome {
    pub flood: Side,
    pub player: Side,
    /// Requests sent and never answered when the run ended (the server closed, or was late).
    pub unanswered: u64,
}

/// A request sent and waiting for its reply, in order.
struct Pending {
    id: u64,
    player: bool,
    due: Instant,
}

/// Register the two accounts (either may exist), then run the flood and the player over one
/// connection to `target` for `duration`: the flood from `addresses` addresses, the player at
/// `rate` logins a second.
pub fn run(
    target: SocketAddr,
    addresses: u32,
    rate: f64,
    duration: Duration,
) -> io::Result<SharedOutcome> {
    for (name, password) in [PLAYER, BOT] {
        let request = json!({"OP": "register", "username": name, "password": password});
        let reply = crate::send_seed(target, None, &request, Duration::from_secs(30))?;
        if !reply.contains("\"code\":4") && !reply.contains("\"code\":5") {
            return Err(io::Error::other(format!("registering {name}: {reply}")));
        }
    }
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let reader = stream.try_clone()?;
    reader.set_read_timeout(Some(Duration::from_millis(200)))?;
    let pending = Arc::new(Mutex::new(VecDeque::<Pending>::new()));
    let (answered_flood, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let start = Instant::now();
    let end = start + duration;
    let replies = std::thread::spawn({
        let (pending, answered_flood, done) =
            (pending.clone(), answered_flood.clone(), done.clone());
        move || read_replies(reader, &pending, &answered_flood, &done, end)
    });
    let mut writer = stream;
    let (mut flood_sent, mut player_sent, mut id) = (0u64, 0u64, 0u64);
    let mut line = Vec::with_capacity(64 * 1024);
    while Instant::now() < end {
        line.clear();
        let due = start + Duration::from_secs_f64(player_sent as f64 / rate.max(1e-3));
        let mut queue = pending.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() >= due {
            id += 1;
            let request = json!({"OP": "login", "username": PLAYER.0, "password": PLAYER.1,
                "ip": PLAYER_IP, "id": id});
            push(&mut line, &request);
            queue.push_back(Pending {
                id,
                player: true,
                due,
            });
            player_sent += 1;
        } else {
            let room = WINDOW.saturating_sub(flood_sent - answered_flood.load(Ordering::Relaxed));
            for _ in 0..room.min(32) {
                id += 1;
                let a = flood_sent % u64::from(addresses.max(1));
                let request = json!({"OP": "login", "username": BOT.0, "password": BOT.1,
                    "ip": format!("10.9.{}.{}", a / 256, a % 256), "id": id});
                push(&mut line, &request);
                queue.push_back(Pending {
                    id,
                    player: false,
                    due: Instant::now(),
                });
                flood_sent += 1;
            }
        }
        drop(queue);
        if line.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        if let Err(e) = writer.write_all(&line) {
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                break;
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let (flood, mut player, unanswered) = replies
        .join()
        .map_err(|_| io::Error::other("the reply reader panicked"))?;
    player.sent = player_sent;
    Ok(SharedOutcome {
        flood: Side {
            sent: flood_sent,
            ..flood
        },
        player,
        unanswered,
    })
}

/// The number right after the first `key` in `line`, if there is one.
fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn push(line: &mut Vec<u8>, request: &Value) {
    line.extend_from_slice(request.to_string().as_bytes());
    line.push(b'\n');
}

/// Read replies in order until every request sent is answered after `done` (or 10 s past
/// `end`); returns the flood's side, the player's side, and what was left unanswered.
fn read_replies(
    reader: TcpStream,
    pending: &Mutex<VecDeque<Pending>>,
    answered_flood: &AtomicU64,
    done: &AtomicBool,
    end: Instant,
) -> (Side, Side, u64) {
    let mut lines = BufReader::new(reader);
    let (mut flood, mut player) = (Side::default(), Side::default());
    let mut latencies = Vec::new();
    let mut line = Vec::new();
    let give_up = end + Duration::from_secs(10);
    loop {
        let empty = pending.lock().map_or(true, |q| q.is_empty());
        if (done.load(Ordering::SeqCst) && empty) || Instant::now() > give_up {
            break;
        }
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        }
        // Read as the server writes it (`"code":N`, `"id":N`), without building a JSON value:
        // the reader must not be what holds the flood back, or the player's latency is its.
        let code = number_after(&line, b"\"code\":").unwrap_or(0).to_string();
        let Some(sent) = pending.lock().ok().and_then(|mut q| q.pop_front()) else {
            break;
        };
        if number_after(&line, b"\"id\":") != Some(sent.id) {
            // Out of order, or not a reply: count it as such and stop trusting the stream.
            *flood.codes.entry("out of order".into()).or_default() += 1;
            break;
        }
        if sent.player {
            latencies.push(sent.due.elapsed().as_secs_f64() * 1000.0);
            *player.codes.entry(code).or_default() += 1;
        } else {
            answered_flood.fetch_add(1, Ordering::Relaxed);
            *flood.codes.entry(code).or_default() += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(i).copied().unwrap_or(0.0)
    };
    (player.p50_ms, player.p99_ms, player.max_ms) = (at(0.5), at(0.99), at(1.0));
    let unanswered = pending.lock().map_or(0, |q| q.len() as u64);
    (flood, player, unanswered)
}
