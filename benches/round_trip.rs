//! One login, end to end through a live login-server and account-db on loopback, cheapest
//! hash parameters: pooled vs `--db-pool 0` (a new account-db connection per request, as the
//! seed did), seed form (a new gateway connection per request) vs stream form (one persistent
//! connection).

use criterion::{criterion_group, criterion_main, Criterion};
use login_server::accountdb::store::SqliteStore;
use login_server::auth::password::HashParams;
use login_server::auth::secret::Secret;
use login_server::auth::token_key::SigningKey;
use login_server::{AccountDb, AccountDbConfig, LoginServer, LoginServerConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One seed-form request as the seed's gateway sends it (one connection, one write, no
/// newline); the reply is everything the server sends before it closes.
fn send_seed(addr: std::net::SocketAddr, op: &str) -> String {
    let message = format!(r#"[{{"OP":"{op}","username":"bencher","password":"password1"}}]"#);
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(message.as_bytes()).expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    reply
}

fn round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("store");
    let secret = Secret::generate();
    let db_config = AccountDbConfig::embedded("127.0.0.1:0".parse().expect("addr"), secret.clone());
    let db = AccountDb::spawn(db_config, Arc::new(store)).expect("account-db");
    let token_key = Arc::new(SigningKey::generate().expect("token key"));
    let mut group = c.benchmark_group("login round trip");
    for pool in [4, 0] {
        let config = LoginServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            db: vec![db.local_addr().into()],
            db_secret: Some(secret.clone()),
            token_key: Some(token_key.clone()),
            hash_params: HashParams::CHEAPEST,
            db_pool: Some(pool),
            ..LoginServerConfig::default()
        };
        let server = LoginServer::spawn(config).expect("login-server");
        let addr = server.local_addr();
        let label = if pool == 0 { "db-pool 0" } else { "pooled" };
        let reply = send_seed(addr, "register");
        assert!(
            reply.contains("\"code\":4") || reply.contains("\"code\":5"),
            "{reply}"
        );

        group.bench_function(format!("{label}, seed form"), |b| {
            b.iter(|| send_seed(addr, "login"))
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
