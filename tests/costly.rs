//! Stored hashes far costlier than the configured parameters (imported before imports were
//! capped): their logins go to the costly stage, one at a time, so they hold no hash thread,
//! and its memory goes back to the system. In a test binary of its own, so that the process's
//! memory is this test's.

mod common;

use common::{code, start_with};
use login_server::accountdb::store::{Account, SqliteStore, Store};
use login_server::auth::password::{HashParams, Hasher, Memory};
use std::time::{Duration, Instant};

/// The configured parameters: not cheap, so normal logins go to the hash threads.
const CONFIGURED: &str = "2048,1,1";

/// Resident memory of this process, in MiB.
fn rss_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096 / (1024 * 1024)
}

/// A login's code and how long it took.
fn timed_login(addr: std::net::SocketAddr, user: &str, password: &str) -> (u64, Duration) {
    let started = Instant::now();
    let code = code(addr, "login", user, password);
    (code, started.elapsed())
}

#[test]
fn costly_stored_hashes_hold_no_hash_thread_and_give_their_memory_back() {
    let tiers = start_with(|c| {
        c.hash_params = CONFIGURED.parse().unwrap();
        c.hash_threads = Some(2);
    });
    let addr = tiers.addr();
    let store = SqliteStore::open(tiers.dir.path()).unwrap();
    let memory = &mut Memory::default();
    // At the import cap relative to the configured parameters (4x the memory, 4x the passes:
    // 16x the work of a normal login), and far above it (64x the memory: 128 MiB).
    for (name, params) in [("AtCap", "8192,4,1"), ("Above", "131072,1,1")] {
        let params: HashParams = params.parse().unwrap();
        let hash = Hasher::new(params)
            .unwrap()
            .hash("right-pw-1", memory)
            .unwrap();
        store.create(&Account::new(name, &hash), name).unwrap();
    }
    drop(std::mem::take(memory));
    assert_eq!(code(addr, "register", "Normal", "normal-pw-1"), 4);
    let (ok, alone) = timed_login(addr, "Normal", "normal-pw-1");
    assert_eq!(ok, 3);
    let (_, costly_alone) = timed_login(addr, "Above", "wrong-pw-1");
    let rss_before = rss_mib();

    // Four wrong logins on each costly account at once, while a player logs in at 10/s.
    let attackers: Vec<_> = ["AtCap", "Above"]
        .into_iter()
        .flat_map(|name| std::iter::repeat(name).take(4))
        .map(|name| std::thread::spawn(move || timed_login(addr, name, "wrong-pw-1")))
        .collect();
    let mut normal = Vec::new();
    for _ in 0..30 {
        let (code, took) = timed_login(addr, "Normal", "normal-pw-1");
        assert_eq!(code, 3);
        normal.push(took);
        std::thread::sleep(Duration::from_millis(100).saturating_sub(took));
    }
    let worst = normal.iter().max().copied().unwrap_or_default();
    // Behind even one costly verification a normal login would wait `costly_alone`.
    assert!(
        worst < alone * 3 + Duration::from_millis(100) && worst < costly_alone,
        "normal logins held: worst {worst:?}, alone {alone:?}, a costly one {costly_alone:?}"
    );
    for attacker in attackers {
        let (code, took) = attacker.join().unwrap();
        assert!(code == 2 || code == 7, "{code}");
        // Waited at most --db-timeout (2 s) for its turn, then one verification.
        assert!(took < Duration::from_secs(2) + costly_alone * 2, "{took:?}");
    }

    // The memory of the costly verifications goes back: no hash thread keeps it.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_mib();
    assert!(
        rss_after <= rss_before + 64,
        "{rss_before} MiB before, {rss_after} MiB after"
    );

    // The owner gets in, and the hash is made again at the configured parameters.
    assert_eq!(code(addr, "login", "above", "right-pw-1"), 3);
    let stored = store.find("above").unwrap().unwrap().hash;
    assert!(stored.contains("m=2048,t=1"), "{stored}");
}
