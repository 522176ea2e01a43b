//! One login, end to end through a live login-server and account-db on loopback, cheapest
//! hash parameters: pooled vs `--db-pool 0` (a new account-db connection per request, as the
//! seed did), seed form (a new gateway connection per request) vs stream form (one persistent
//! connection).

use criterion::{criterion_group, criterion_main, Criterion};
use login_server::accountdb::server::{self as dbserver, AccountDb};
use login_server::accountdb::store::SqliteStore;
use login_server::auth::password::HashParams;
use login_server::auth::secret::Secret;
use login_server::protocol::gateway::Op;
use login_server::server::Config;
use login_server::sim::send_seed;
use login_server::LoginServer;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

fn round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("store");
    let secret = Secret::generate();
    let db_config = dbserver::Config::new("127.0.0.1:0".parse().expect("addr"), secret.clone());
    let db = AccountDb::spawn(db_config, Arc::new(store)).expect("account-db");
    let mut group = c.benchmark_group("login round trip");
    for pool in [4, 0] {
        let listen = "127.0.0.1:0".parse().expect("addr");
        let mut config = Config::new(listen, db.local_addr(), secret.clone());
        config.hash_params = HashParams::CHEAPEST;
        config.db.pool_size = pool;
        let server = LoginServer::spawn(config).expect("login-server");
        let addr = server.local_addr();
        let label = if pool == 0 { "db-pool 0" } else { "pooled" };
        let reply =
            send_seed(addr, Op::Register, "bencher", "password1", TIMEOUT).expect("register");
        assert!(
            reply.contains("\"code\":4") || reply.contains("\"code\":5"),
            "{reply}"
        );

        group.bench_function(format!("{label}, seed form"), |b| {
            b.iter(|| send_seed(addr, Op::Login, "bencher", "password1", TIMEOUT).expect("login"))
        });
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let message = b"{\"OP\":\"login\",\"username\":\"bencher\",\"password\":\"password1\"}\n";
        let mut line = String::new();
        group.bench_function(format!("{label}, stream form"), |b| {
            b.iter(|| {
                writer.write_all(message).expect("send");
                line.clear();
                reader.read_line(&mut line).expect("reply");
                assert!(line.contains("\"code\":3"), "{line}");
            })
        });
        server.shutdown();
    }
    group.finish();
    db.shutdown();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
