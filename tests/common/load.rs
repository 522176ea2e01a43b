//! A load of logins and registrations through real gateway connections, every outcome kept
//! with when it was sent and answered: what the failover tests judge a failover by.

use super::StreamClient;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One stream-form request on `client`: its reply code.
pub fn ask(client: &mut StreamClient, op: &str, user: &str, password: &str) -> u64 {
    let line = serde_json::json!({"OP": op, "username": user, "password": password});
    client.send(format!("{line}\n").as_bytes());
    client.recv()["code"].as_u64().unwrap_or(0)
}

/// What one request got, and when it was sent and answered.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `login` or `register`.
    pub op: &'static str,
    pub user: String,
    pub code: u64,
    pub sent: Instant,
    pub answered: Instant,
}

impl Outcome {
    /// Whether it got what it asked for: 3 for a login, 4 for a registration.
    pub fn succeeded(&self) -> bool {
        self.code == if self.op == "login" { 3 } else { 4 }
    }
}

/// A load running until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Logins of `players` (registered before, password `password1`) and registrations of
    /// new names (prefixed `tag`), alternating, from `threads` connections spread over
    /// `addrs`, each pausing 5 ms between requests.
    pub fn start(addrs: &[SocketAddr], players: &[String], threads: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|t| {
                let addr = addrs[t % addrs.len()];
                let (players, stop, next) = (players.to_vec(), stop.clone(), next.clone());
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    let mut client = StreamClient::new(addr);
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        let (op, user) = match n % 2 {
                            0 => ("login", players[n / 2 % players.len()].clone()),
                            _ => ("register", format!("{tag}{t}x{n}")),
                        };
                        let sent = Instant::now();
                        let code = ask(&mut client, op, &user, "password1");
                        outcomes.push(Outcome {
                            op,
                            user,
                            code,
                            sent,
                            answered: Instant::now(),
                        });
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stop it: every outcome.
    pub fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|h| h.join().expect("a load thread"))
            .collect()
    }
}

/// The names `outcomes` registered (answered 4), folded as the store keeps them.
pub fn registered(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.op == "register" && o.code == 4)
        .map(|o| o.user.to_lowercase())
        .collect()
}

/// Those of `names` missing from the `accounts` table `client` reads.
pub fn missing_from(client: &mut postgres::Client, names: &[String]) -> Vec<String> {
    let rows = client
        .query("SELECT folded FROM accounts", &[])
        .expect("read the accounts");
    let stored: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    names
        .iter()
        .filter(|n| !stored.contains(*n))
        .cloned()
        .collect()
}
