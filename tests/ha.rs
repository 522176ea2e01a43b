//! PostgreSQL failover on Patroni and etcd (deploy/ha/local-cluster.sh: three nodes, one etcd
//! member, synchronous and failsafe mode), under a load of logins and registrations through two
//! login-servers and two account-dbs on the multi-host URL. Its own test binary, run by .ci/run
//! after the main suite: `cargo test --test ha`. One cluster goes through every event in turn
//! (a switchover, a kill, the old primary's return, etcd's absence, a frozen Patroni), each
//! reported on stderr with what was measured. Needs root, `patroni` and `etcd-server`: skipped
//! visibly without them, a failure with `REQUIRE_HA=1`.

mod common;

use common::load::{missing_from, registered, Load, Outcome};
use login_server::accountdb::store::{Ban, Store, StoreUrl};
use login_server::auth::secret::Secret;
use login_server::{AccountDb, AccountDbConfig, LoginServer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test settings of deploy/ha/patroni.yml.in.
const TTL: Duration = Duration::from_secs(15);
const LOOP_WAIT: Duration = Duration::from_secs(2);

/// account-db's `--store-timeout` here (its default).
const STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// A cluster of deploy/ha/local-cluster.sh in a directory of its own, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    /// HA_PORT: etcd on it, PostgreSQL nodes on +11..13, their REST APIs on +21..23.
    base: u16,
    /// The `--store` URL it printed.
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ha/local-cluster.sh")
}

/// 24 ports in a row that are free now.
fn free_ports() -> u16 {
    let seed = std::process::id() as u16 % 500;
    (0..50)
        .map(|i| 20000 + ((seed + i * 37) % 1000) * 30)
        .find(|&base| {
            (base..base + 24).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
        .expect("24 free ports in a row")
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let missing = |why: String| common::missing::<Cluster>("REQUIRE_HA", why);
        // SAFETY: geteuid reads the process's effective uid and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return missing("not root: cannot run PostgreSQL as the postgres user".into());
        }
        for tool in ["patroni", "etcd"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return missing(format!("no {tool}: apt-get install patroni etcd-server"));
            }
        }
        let dir = tempfile::tempdir().expect("a directory");
        let base = free_ports();
        let started = Instant::now();
        let out = Command::new(script())
            .args(["start", dir.path().to_str().unwrap()])
            .env("HA_PORT", base.to_string())
            .output()
            .expect("run local-cluster.sh");
        let cluster = Cluster {
            dir,
            base,
            url: String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .to_string(),
        };
        assert!(
            out.status.success() && cluster.url.starts_with("postgres://"),
            "local-cluster.sh start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        report(&format!("cluster started in {:?}", started.elapsed()));
        Some(cluster)
    }

    /// The tail of every log, for a failure's message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["etcd.log", "node1.log", "node2.log", "node3.log"] {
            let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            text.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    fn pg_port(&self, node: usize) -> u16 {
        self.base + 10 + node as u16
    }

    /// The HTTP status of `GET path` on node `node`'s Patroni REST API (0: no answer).
    fn rest(&self, node: usize, path: &str) -> u16 {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.base + 20 + node as u16)
            .parse()
            .unwrap();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return 0;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return 0;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The node that is the leader now, by its REST API.
    fn leader(&self) -> Option<usize> {
        (1..=3).find(|&node| self.rest(node, "/primary") == 200)
    }

    /// Wait up to `limit` for a leader other than `not`; it.
    fn new_leader(&self, not: usize, limit: Duration) -> usize {
        let mut found = None;
        common::eventually(limit, "a new leader", || {
            found = self.leader().filter(|&l| l != not);
            found.is_some()
        });
        found.unwrap()
    }

    /// Wait until a node other than `leader` is the synchronous standby: in synchronous mode
    /// only it may take over, so a failover before Patroni named one (some seconds after a
    /// switchover) has no candidate, by design.
    fn await_sync_standby(&self, leader: usize) {
        common::eventually(Duration::from_secs(60), "a synchronous standby", || {
            (1..=3).any(|n| n != leader && self.rest(n, "/sync") == 200)
        });
    }

    /// An administrator's connection to node `node`'s `accounts` database.
    fn admin(&self, node: usize) -> postgres::Client {
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=accounts sslmode=disable connect_timeout=5",
            self.pg_port(node)
        );
        postgres::Client::connect(&url, postgres::NoTls).expect("connect to a node")
    }

    fn pid(&self, file: &str) -> i32 {
        let text = std::fs::read_to_string(self.dir.path().join(file)).expect("a pid file");
        text.lines()
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .expect("a pid")
    }

    fn signal(&self, pid: i32, signal: i32) {
        // SAFETY: sends a signal to a process this cluster started; touches no memory.
        unsafe { libc::kill(pid, signal) };
    }

    /// kill -9 node `node`'s Patroni and its PostgreSQL's postmaster.
    fn kill(&self, node: usize) {
        let patroni = self.pid(&format!("node{node}.pid"));
        let postmaster = self.pid(&format!("node{node}/postmaster.pid"));
        self.signal(patroni, libc::SIGKILL);
        self.signal(postmaster, libc::SIGKILL);
    }

    /// Run `program` (with `args`) in the background as postgres, its pid in `pid_file`.
    fn spawn_as_postgres(&self, program: &str, pid_file: &str, log: &str) {
        let dir = self.dir.path().display();
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--", "bash", "-c"])
            .arg(format!(
                "nohup {program} >>'{dir}/{log}' 2>&1 & echo $! > '{dir}/{pid_file}'"
            ))
            .status()
            .expect("runuser");
        assert!(status.success());
    }

    /// Start node `node`'s Patroni again.
    fn restart(&self, node: usize) {
        let dir = self.dir.path().display();
        self.spawn_as_postgres(
            &format!("patroni '{dir}/node{node}.yml'"),
            &format!("node{node}.pid"),
            &format!("node{node}.log"),
        );
    }

    fn patronictl(&self, args: &[&str]) -> std::process::Output {
        let config = self.dir.path().join("node1.yml");
        Command::new("runuser")
            .args(["-u", "postgres", "--", "patronictl", "-c"])
            .arg(config)
            .args(args)
            .output()
            .expect("patronictl")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            report(&format!("the cluster's logs:\n{}", self.logs()));
        }
        let _ = Command::new(script())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

/// Two account-dbs on the cluster and two login-servers, each using both.
struct Tiers {
    servers: Vec<LoginServer>,
    dbs: Vec<AccountDb>,
    /// The first account-db's store, for an operator's action (a ban).
    store: Arc<dyn Store>,
}

impl Tiers {
    fn start(url: &str) -> Tiers {
        let secret = Secret::generate();
        let url: StoreUrl = url.parse().expect("a store URL");
        let mut stores = Vec::new();
        let dbs: Vec<AccountDb> = (0..2)
            .map(|_| {
                let store = url
                    .open(8, STORE_TIMEOUT, false, None)
                    .expect("open the store");
                stores.push(store.clone());
                let mut config =
                    AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
                config.store_timeout = STORE_TIMEOUT;
                config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
                AccountDb::spawn(config, store).expect("start account-db")
            })
            .collect();
        let servers = (0..2)
            .map(|_| {
                let mut config = common::config(dbs[0].local_addr(), &secret);
                config.db = dbs.iter().map(|db| db.local_addr().into()).collect();
                config.workers = Some(4);
                config.db_pool = Some(4);
                LoginServer::spawn(config).expect("start login-server")
            })
            .collect();
        Tiers {
            servers,
            dbs,
            store: stores.swap_remove(0),
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(LoginServer::local_addr).collect()
    }

    /// Whether every account-db's `accountdb_store_primary_info` names `port` as the primary.
    fn all_on(&self, port: u16) -> bool {
        let line = format!("accountdb_store_primary_info{{host=\"127.0.0.1:{port}\"}} 1");
        self.dbs.iter().all(|db| {
            let (_, body) = common::http_get(db.metrics_addr().unwrap(), "/metrics");
            body.lines().any(|l| l == line)
        })
    }
}

fn report(text: &str) {
    let _ = writeln!(std::io::stderr(), "ha: {text}");
}

/// What a load got around an event at `at`: every outcome is a success or a 7 (never a 1, a
/// 2 or a 5), and the length of the gap: from `at` to the last 7 answered.
fn judge(what: &str, outcomes: &[Outcome], at: Instant) -> Duration {
    for o in outcomes {
        assert!(o.succeeded() || o.code == 7, "{what}: {o:?}");
    }
    let sevens = outcomes.iter().filter(|o| o.code == 7).count();
    let gap = outcomes
        .iter()
        .filter(|o| o.code == 7)
        .map(|o| o.answered.saturating_duration_since(at))
        .max()
        .unwrap_or_default();
    let after = outcomes.iter().filter(|o| o.sent > at + gap).count();
    report(&format!(
        "{what}: {} requests, {sevens} answered 7, the last {gap:?} after the event; {after} \
         after it, all answered",
        outcomes.len()
    ));
    assert!(after > 0, "{what}: nothing was answered after the gap");
    gap
}

/// Every registration `outcomes` acknowledged is on node `node`.
fn none_lost(what: &str, cluster: &Cluster, node: usize, outcomes: &[Outcome]) {
    let names = registered(outcomes);
    assert!(!names.is_empty(), "{what}: no registration acknowledged");
    let lost = missing_from(&mut cluster.admin(node), &names);
    assert!(lost.is_empty(), "{what}: acknowledged but lost: {lost:?}");
}

/// With `HA_TIMELINE=FILE` (benches/ha_timeline.py): every outcome as a CSV line, the
/// milliseconds from `at` to its answer (negative before), its op and its code.
fn timeline(outcomes: &[Outcome], at: Instant) {
    let Some(path) = std::env::var_os("HA_TIMELINE") else {
        return;
    };
    let mut csv = String::from("ms,op,code\n");
    for o in outcomes {
        let ms = match o.answered.checked_duration_since(at) {
            Some(after) => after.as_millis() as i64,
            None => -(at.duration_since(o.answered).as_millis() as i64),
        };
        csv.push_str(&format!("{ms},{},{}\n", o.op, o.code));
    }
    std::fs::write(path, csv).expect("write the timeline");
}

/// One stream-form request with a token: the reply.
fn with_token(addr: SocketAddr, op: &str, token: &str) -> serde_json::Value {
    let mut client = common::StreamClient::new(addr);
    let line = serde_json::json!({"OP": op, "token": token});
    client.send(format!("{line}\n").as_bytes());
    client.recv()
}

#[test]
fn a_patroni_cluster_fails_over_and_nothing_acknowledged_is_lost() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t = Tiers::start(&cluster.url);
    let addrs = t.addrs();
    let players: Vec<String> = (0..20).map(|i| format!("player{i}")).collect();
    for player in &players {
        assert_eq!(common::code(addrs[0], "register", player, "password1"), 4);
    }
    let leader = cluster.leader().expect("a leader");
    common::eventually(common::PATIENCE, "the account-dbs on the leader", || {
        t.all_on(cluster.pg_port(leader))
    });

    // 1. A planned switchover under load: at most 5 s of 7s, nothing lost.
    let candidate = (1..=3).find(|&n| n != leader && cluster.rest(n, "/sync") == 200);
    let candidate = candidate.expect("a synchronous standby");
    let load = Load::start(&addrs, &players, 4, "sw");
    std::thread::sleep(Duration::from_secs(1));
    let at = Instant::now();
    let out = cluster.patronictl(&[
        "switchover",
        "--leader",
        &format!("node{leader}"),
        "--candidate",
        &format!("node{candidate}"),
        "--force",
    ]);
    assert!(out.status.success(), "switchover: {out:?}");
    let leader = cluster.new_leader(leader, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(4));
    let outcomes = load.stop();
    let gap = judge("switchover", &outcomes, at);
    assert!(gap <= Duration::from_secs(5), "switchover: 7s for {gap:?}");
    none_lost("switchover", &cluster, leader, &outcomes);

    cluster.await_sync_standby(leader);

    // 2. A revocation and a ban just before the primary is killed; kill -9 its postmaster
    // and its Patroni under load: back within ttl + loop_wait + 10 s, nothing lost.
    let token = common::seed(addrs[0], "login", "player0", "password1")["token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert_eq!(with_token(addrs[1], "logout_all", &token)["code"], 11);
    let ban = Ban {
        until_ms: i64::MAX / 2,
        reason: "test".into(),
    };
    assert!(t.store.set_ban("player1", Some(&ban)).unwrap());
    let load = Load::start(&addrs, &players[2..], 4, "kill");
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    let old = leader;
    cluster.kill(old);
    let leader = cluster.new_leader(old, TTL + LOOP_WAIT + Duration::from_secs(30));
    let promoted = killed.elapsed();
    common::eventually(
        Duration::from_secs(30),
        "the account-dbs on the new leader",
        || t.all_on(cluster.pg_port(leader)),
    );
    std::thread::sleep(Duration::from_secs(3));
    let outcomes = load.stop();
    let gap = judge("kill -9 of the primary", &outcomes, killed);
    timeline(&outcomes, killed);
    report(&format!(
        "kill -9: node{leader} the leader {promoted:?} after the kill, requests all answered \
         again {gap:?} after it"
    ));
    assert!(
        gap <= TTL + LOOP_WAIT + Duration::from_secs(10),
        "back after {gap:?}"
    );
    none_lost("kill -9", &cluster, leader, &outcomes);
    let verify = with_token(addrs[0], "verify", &token);
    assert_eq!(verify["code"], 10, "the revocation holds: {verify}");
    assert_eq!(
        common::code(addrs[1], "login", "player1", "password1"),
        12,
        "the ban holds"
    );

    // 3. The old primary comes back: rewound, a standby, never written to.
    cluster.restart(old);
    common::eventually(Duration::from_secs(90), "the old primary a standby", || {
        cluster.rest(old, "/replica") == 200
    });
    let load = Load::start(&addrs, &players[2..], 4, "back");
    std::thread::sleep(Duration::from_secs(3));
    let outcomes = load.stop();
    assert!(
        outcomes.iter().all(Outcome::succeeded),
        "with the old primary back"
    );
    let in_recovery: bool = cluster
        .admin(old)
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery, "the old primary follows");
    assert!(
        t.all_on(cluster.pg_port(leader)),
        "account-db stayed on the leader"
    );
    common::eventually(
        Duration::from_secs(10),
        "the old primary has the new accounts",
        || missing_from(&mut cluster.admin(old), &registered(&outcomes)).is_empty(),
    );

    // 4. etcd gone for longer than ttl: the primary keeps serving (failsafe mode).
    let etcd = cluster.pid("etcd.pid");
    let load = Load::start(&addrs, &players[2..], 4, "etcd");
    cluster.signal(etcd, libc::SIGKILL);
    std::thread::sleep(TTL + LOOP_WAIT * 3);
    let outcomes = load.stop();
    let sevens = outcomes.iter().filter(|o| o.code == 7).count();
    report(&format!(
        "etcd down {:?}: {} requests, {sevens} answered 7",
        TTL + LOOP_WAIT * 3,
        outcomes.len(),
    ));
    // Without failsafe mode the primary would step down once its key could not be renewed
    // (within ttl) and every write would fail from then on. A commit that a loaded machine's
    // standby confirms late is answered 7 (and the next second's writes with it): a few.
    for o in &outcomes {
        assert!(o.succeeded() || o.code == 7, "without etcd: {o:?}");
    }
    assert!(
        sevens * 50 <= outcomes.len(),
        "without etcd: {sevens} answered 7"
    );
    let late = Instant::now() - LOOP_WAIT * 2;
    for op in ["login", "register"] {
        assert!(
            outcomes
                .iter()
                .any(|o| o.op == op && o.succeeded() && o.sent > late),
            "without etcd, past ttl: no {op} succeeded"
        );
    }
    assert_eq!(cluster.leader(), Some(leader), "the primary kept its role");
    let dir = cluster.dir.path().display();
    cluster.spawn_as_postgres(
        &format!("etcd --config-file '{dir}/etcd.yml'"),
        "etcd.pid",
        "etcd.log",
    );
    std::thread::sleep(LOOP_WAIT * 3);

    // 5. The primary's Patroni frozen (a partitioned old primary): whatever it accepts alone
    // is never acknowledged; the new leader has every acknowledged registration.
    cluster.await_sync_standby(leader);
    let frozen = leader;
    let patroni = cluster.pid(&format!("node{frozen}.pid"));
    let load = Load::start(&addrs, &players[2..], 4, "frozen");
    let stopped = Instant::now();
    cluster.signal(patroni, libc::SIGSTOP);
    let leader = cluster.new_leader(frozen, TTL + LOOP_WAIT + Duration::from_secs(30));
    report(&format!(
        "SIGSTOP of node{frozen}'s Patroni: node{leader} the leader {:?} after",
        stopped.elapsed()
    ));
    std::thread::sleep(Duration::from_secs(3));
    cluster.signal(patroni, libc::SIGCONT);
    // Woken, the old primary's Patroni finds another leader and steps down, or (the lock
    // free again in the meantime) may win it back: whichever leads at the end has every
    // acknowledged registration, and the account-dbs follow it.
    let mut leader = leader;
    common::eventually(
        Duration::from_secs(60),
        "the account-dbs on the leader",
        || {
            leader = cluster.leader().unwrap_or(leader);
            t.all_on(cluster.pg_port(leader))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();
    let gap = judge("a frozen Patroni", &outcomes, stopped);
    report(&format!(
        "a frozen Patroni: node{leader} leads at the end; all answered again {gap:?} after the \
         SIGSTOP"
    ));
    none_lost("a frozen Patroni", &cluster, leader, &outcomes);
}
