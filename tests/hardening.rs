//! Regressions from a hostile test of the running service (issue 8): each test failed on the
//! code before its fix. Real servers on 127.0.0.1:0, raw bytes over real sockets.

mod common;

use common::{code, exchange, http_get as get, seed, start, start_tiers, start_with, StreamClient};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A stream-form login, with the player's address.
fn login(client: &mut StreamClient, user: &str, password: &str, ip: &str) -> Value {
    let line = json!({"OP": "login", "username": user, "password": password, "ip": ip});
    client.send(format!("{line}\n").as_bytes());
    client.recv()
}

/// Throttle records in account-db's side file: how many there are.
fn records(tiers: &common::Tiers) -> i64 {
    let path = tiers.dir.path().join("throttle.sqlite3");
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap()
}

/// Send `n` logins of unknown names from as many addresses, pipelined, starting at `from`.
fn flood(client: &mut StreamClient, from: usize, n: usize) {
    let mut batch = String::new();
    for i in from..from + n {
        let ip = format!("10.{}.{}.1", i / 250, i % 250);
        let line = json!({"OP": "login", "username": format!("filler{i}"), "password": "password1", "ip": ip});
        batch.push_str(&format!("{line}\n"));
    }
    client.send(batch.as_bytes());
    for _ in 0..n {
        assert_eq!(client.recv()["code"], 2);
    }
}

#[test]
fn a_full_throttle_table_still_locks_new_accounts_and_addresses() {
    let tiers = start_tiers(
        |db| db.throttle_table_size = 1000,
        // Unknown names are counted, name and address: they fill the table.
        |c| c.service.hide_user_existence = true,
    );
    assert_eq!(code(tiers.addr(), "register", "victim", "password1"), 4);
    // Overfill the table: 1200 unknown names from 1200 addresses, 2400 records.
    let mut client = StreamClient::new(tiers.addr());
    flood(&mut client, 0, 1200);
    common::eventually(Duration::from_secs(10), "the table cut to its size", || {
        records(&tiers) <= 1000
    });
    // A new account, spread over new addresses, still locks after 5 failures.
    let codes: Vec<Value> = (0..6)
        .map(|i| {
            login(&mut client, "victim", "wrong-pass", &format!("192.0.2.{i}"))["code"].clone()
        })
        .collect();
    assert_eq!(codes[..5], vec![json!(2); 5]);
    assert_eq!(codes[5], 8, "locked although the table is full");
    // And a new address spraying names locks too.
    let codes: Vec<Value> = (0..6)
        .map(|i| {
            login(
                &mut client,
                &format!("spray{i}"),
                "password1",
                "198.51.100.7",
            )["code"]
                .clone()
        })
        .collect();
    assert_eq!(codes[5], 8, "{codes:?}");
    // A second flood, cut to size again, evicts none of the locks.
    flood(&mut client, 1200, 1200);
    common::eventually(Duration::from_secs(10), "the table cut to its size", || {
        records(&tiers) <= 1000
    });
    assert_eq!(
        login(&mut client, "victim", "password1", "192.0.2.77")["code"],
        8
    );
    assert_eq!(
        login(&mut client, "x", "password1", "198.51.100.7")["code"],
        8
    );
}

#[test]
fn ip_must_be_an_address() {
    let tiers = start();
    let mut client = StreamClient::new(tiers.addr());
    for ip in [
        json!("not-an-ip"),
        json!("x".repeat(60_000)),
        json!("10.0.0.1/8"),
    ] {
        let line = json!({"OP": "login", "username": "anyone", "password": "password1", "ip": ip});
        client.send(format!("{line}\n").as_bytes());
        let reply = client.recv();
        assert_eq!(reply["code"], 6, "{reply}");
        assert!(
            reply["info"].as_str().unwrap().contains("\"ip\""),
            "{reply}"
        );
    }
    for ip in ["203.0.113.5", "2001:db8::1", "::ffff:192.0.2.1"] {
        assert_eq!(login(&mut client, "anyone", "password1", ip)["code"], 1);
    }
}

#[test]
fn short_passwords_cannot_lock_a_victim_out() {
    let tiers = start();
    assert_eq!(code(tiers.addr(), "register", "target", "password1"), 4);
    let mut client = StreamClient::new(tiers.addr());
    for i in 0..10 {
        let reply = login(&mut client, "target", "x", &format!("203.0.113.{i}"));
        assert_eq!(reply["code"], 2);
    }
    assert_eq!(
        login(&mut client, "target", "password1", "198.51.100.1")["code"],
        3
    );
    // Without an address, the same: a rule-breaking password never counts against the account.
    for _ in 0..10 {
        assert_eq!(code(tiers.addr(), "login", "target", "x"), 2);
    }
    assert_eq!(code(tiers.addr(), "login", "target", "password1"), 3);
}

#[test]
fn a_locked_account_stays_open_to_where_its_player_logged_in_before() {
    let tiers = start();
    assert_eq!(code(tiers.addr(), "register", "regular", "password1"), 4);
    let mut client = StreamClient::new(tiers.addr());
    let home = "198.51.100.20";
    assert_eq!(login(&mut client, "regular", "password1", home)["code"], 3);
    for _ in 0..5 {
        assert_eq!(
            login(&mut client, "regular", "guess-again", "203.0.113.66")["code"],
            2
        );
    }
    assert_eq!(
        login(&mut client, "regular", "password1", "203.0.113.67")["code"],
        8
    );
    assert_eq!(
        code(tiers.addr(), "login", "regular", "password1"),
        8,
        "no address: locked"
    );
    assert_eq!(login(&mut client, "regular", "password1", home)["code"], 3);
    // Its IPv6 /64 counts as the same place.
    assert_eq!(
        login(&mut client, "v6user", "password1", "2001:db8:1:2::1")["code"],
        1
    );
}

#[test]
fn hidden_user_existence_locks_unknown_names_like_known_ones() {
    let tiers = start_with(|c| c.service.hide_user_existence = true);
    assert_eq!(code(tiers.addr(), "register", "known", "password1"), 4);
    let mut client = StreamClient::new(tiers.addr());
    for name in ["known", "unknown"] {
        let codes: Vec<Value> = (0..6)
            .map(|i| {
                login(&mut client, name, "wrong-pass", &format!("192.0.2.{i}"))["code"].clone()
            })
            .collect();
        assert_eq!(codes[..5], vec![json!(2); 5], "{name}");
        assert_eq!(codes[5], 8, "{name}");
    }
}

#[test]
fn hidden_user_existence_counts_short_guesses_at_unknown_names_as_at_known_ones() {
    let tiers = start_with(|c| c.service.hide_user_existence = true);
    assert_eq!(code(tiers.addr(), "register", "known", "password1"), 4);
    let mut client = StreamClient::new(tiers.addr());
    // Whatever the guess, it counts against the name, known or not: a rule that spared short
    // guesses at some names only (those of accounts made under today's rules) would lock only
    // the others, and so tell which names exist.
    let codes = |client: &mut StreamClient, name: &str| -> Vec<Value> {
        (0..8)
            .map(|i| login(client, name, "123", &format!("198.51.100.{i}"))["code"].clone())
            .collect()
    };
    let known = codes(&mut client, "known");
    assert_eq!(known[..5], vec![json!(2); 5]);
    assert_eq!(known[5..], vec![json!(8); 3]);
    assert_eq!(codes(&mut client, "unknown"), known);
}

#[test]
fn a_connection_gets_at_most_a_turn_of_messages_while_another_waits() {
    // One worker, held on a lookup while account-db is stopped, so that two clients' pipelined
    // messages are both waiting when it goes on.
    let dir = tempfile::tempdir().unwrap();
    let db = common::DbProcess::start(dir.path(), "127.0.0.1:0");
    let key = dir.path().join("token.key");
    common::gen_token_key(&key);
    let command = common::login_server_command([
        "--workers".as_ref(),
        "1".as_ref(),
        "--hash-params".as_ref(),
        "8,1,1".as_ref(),
        "--db-timeout".as_ref(),
        "20".as_ref(),
        "--log-format".as_ref(),
        "json".as_ref(),
        "--db".as_ref(),
        db.addr.to_string().as_ref(),
        "--db-secret-file".as_ref(),
        dir.path().join("account-db.secret").as_os_str(),
        "--token-key-file".as_ref(),
        key.as_os_str(),
        "--metrics-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    let (mut child, addr, metrics, lines) = common::spawn_json_logging(command);
    let metrics = metrics.expect("the metrics address");
    // Read as it comes: a full pipe would hold up the server's log writer.
    let log = std::thread::spawn(move || lines.map(Result::unwrap).collect::<Vec<String>>());
    db.signal("STOP");
    let mut held = StreamClient::new(addr);
    held.send(b"{\"OP\":\"login\",\"username\":\"someone\",\"password\":\"password1\"}\n");
    common::eventually(common::PATIENCE, "the worker holds the lookup", || {
        common::metric(metrics, "login_busy_workers") == Some(1.0)
    });
    let mut clients: Vec<StreamClient> = (0..2).map(|_| StreamClient::new(addr)).collect();
    for client in &mut clients {
        client.send(&b"{\"OP\":\"bogus\"}\n".repeat(300));
    }
    common::eventually(
        common::PATIENCE,
        "both connections wait for the worker",
        || common::metric(metrics, "login_queue_depth") == Some(2.0),
    );
    db.signal("CONT");
    assert_eq!(held.recv()["code"], 1);
    for client in &mut clients {
        for _ in 0..300 {
            assert_eq!(client.recv()["code"], 6);
        }
    }
    common::signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    // The order the worker answered them in: its log. Without a turn's cap (64 messages) the
    // first connection taken would have all 300 of its messages answered before the other's.
    let peers: Vec<String> = log
        .join()
        .unwrap()
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON log line"))
        .filter(|event| event["target"] == "request" && event["fields"]["code"] == 6)
        .map(|event| event["fields"]["peer"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(peers.len(), 600);
    let longest = peers
        .chunk_by(|a, b| a == b)
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(
        longest <= 3 * 64,
        "{longest} answers in a row to one connection"
    );
}

#[test]
fn hidden_user_existence_keeps_a_lock_through_its_owners_login() {
    let tiers = start_with(|c| c.service.hide_user_existence = true);
    let home = "203.0.113.9";
    assert_eq!(code(tiers.addr(), "register", "owner", "password1"), 4);
    let mut client = StreamClient::new(tiers.addr());
    assert_eq!(login(&mut client, "owner", "password1", home)["code"], 3);
    // Both names locked by wrong guesses from five addresses.
    for name in ["owner", "ghost"] {
        for i in 0..5 {
            let from = format!("198.51.100.{i}");
            assert_eq!(login(&mut client, name, "wrong-pass", &from)["code"], 2);
        }
    }
    // The owner logs in from home, which the lock lets through.
    assert_eq!(login(&mut client, "owner", "password1", home)["code"], 3);
    // A watcher sees both names still locked: an owner's login must not lift the lock
    // early, or it would tell that the name has one.
    let probe = |client: &mut StreamClient, name: &str| {
        login(client, name, "wrong-pass", "192.0.2.77")["code"].clone()
    };
    assert_eq!(probe(&mut client, "ghost"), 8);
    assert_eq!(probe(&mut client, "owner"), 8);
}

#[test]
fn error_texts_quote_only_a_short_prefix_of_the_input() {
    let tiers = start();
    let mut client = StreamClient::new(tiers.addr());
    let op = "A".repeat(60_000);
    client.send(format!("{{\"OP\":\"{op}\",\"username\":\"u\",\"password\":\"p\"}}\n").as_bytes());
    let reply = client.recv_raw();
    assert!(reply.contains("\"code\":6"), "{}", &reply[..200]);
    assert!(reply.len() < 400, "a {}-byte reply", reply.len());
}

#[test]
fn whitespace_is_bounded_and_counts_toward_the_message_deadline() {
    let tiers = start_with(|c| c.message_timeout = Duration::from_millis(400));
    // 80 KiB of spaces is refused at once, not buffered.
    let reply = exchange(tiers.addr(), &vec![b' '; 80 * 1024]);
    assert!(
        reply.contains("\"code\":6") && reply.contains("whitespace"),
        "{reply}"
    );
    // A trickle of spaces (under the bound) does not dodge the deadline.
    let started = Instant::now();
    let mut stream = common::connect(tiers.addr());
    for _ in 0..6 {
        stream.write_all(b" ").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("not completed within"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    // A client that connects and says nothing must still send a message within the deadline.
    let started = Instant::now();
    let mut silent = StreamClient::new(tiers.addr());
    assert_eq!(silent.recv()["code"], 6);
    assert!(silent.closed());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
}

#[test]
fn ids_are_echoed_byte_for_byte() {
    let tiers = start();
    let mut client = StreamClient::new(tiers.addr());
    for id in ["1e2", "18446744073709551616", "-0.50", "\"a\\u0041\""] {
        client.send(format!("{{\"OP\":\"login\",\"username\":\"nobody\",\"password\":\"password1\",\"id\":{id}}}\n").as_bytes());
        let reply = client.recv_raw();
        assert!(
            reply.ends_with(&format!(",\"id\":{id}}}\n")),
            "{id}: {reply}"
        );
    }
    // Too long an id is a bad request, not an echo of anything the client likes.
    let long = "9".repeat(100);
    client.send(format!("{{\"OP\":\"login\",\"username\":\"nobody\",\"password\":\"password1\",\"id\":{long}}}\n").as_bytes());
    let reply = client.recv();
    assert_eq!(reply["code"], 6);
    assert!(reply.get("id").is_none(), "{reply}");
}

#[test]
fn a_seed_form_connection_answers_one_message() {
    let tiers = start();
    let two = br#"[{"OP":"login","username":"nobody","password":"password1"}][{"OP":"login","username":"nobody","password":"password1"}]"#;
    let reply = exchange(tiers.addr(), two);
    assert_eq!(reply, r#"[{"code":1,"info":"Failed for error username!"}]"#);
}

#[test]
fn registrations_are_limited_per_player_address() {
    let clock = login_server::clock::Clock::adjustable();
    let tiers = common::start_on_clock(&clock, |c| c.service.throttle.register_limit = 3);
    let mut client = StreamClient::new(tiers.addr());
    let mut register = |name: &str, ip: &str| {
        let line = json!({"OP": "register", "username": name, "password": "password1", "ip": ip});
        client.send(format!("{line}\n").as_bytes());
        client.recv()
    };
    for i in 0..3 {
        assert_eq!(register(&format!("bot{i}"), "203.0.113.1")["code"], 4);
    }
    let refused = register("bot3", "203.0.113.1");
    assert_eq!(refused["code"], 8, "{refused}");
    let retry_after = refused["retry_after"].as_u64().unwrap();
    assert!(retry_after > 3000, "{refused}");
    assert_eq!(
        register("bot4", "203.0.113.2")["code"],
        4,
        "another address"
    );
    // Still refused just before the window ends; served again once it has.
    clock.advance(Duration::from_secs(retry_after - 2));
    assert_eq!(register("bot5", "203.0.113.1")["code"], 8);
    clock.advance(Duration::from_secs(3));
    assert_eq!(register("bot5", "203.0.113.1")["code"], 4);
    // The gateway's own requests (no "ip") are never limited.
    for i in 0..5 {
        assert_eq!(
            seed(tiers.addr(), "register", &format!("human{i}"), "password1")["code"],
            4
        );
    }
}

#[test]
fn sighup_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let command = common::login_server_command([
        "--hash-params".as_ref(),
        "8,1,1".as_ref(),
        "--data".as_ref(),
        dir.path().as_os_str(),
    ]);
    let (mut child, addr) = common::spawn_listening(command);
    common::signal(child.id(), "HUP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped it");
    assert_eq!(code(addr, "login", "nobody", "password1"), 1);
    common::signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn names_that_look_the_same_are_one_name() {
    let tiers = start();
    let addr = tiers.addr();
    let register = |name: &str| seed(addr, "register", name, "password1");
    assert_eq!(register("dave")["code"], 4);
    for (name, reason) in [
        ("dave\u{3164}", "invalid_username"),
        ("\u{3164}\u{3164}\u{3164}", "invalid_username"),
        ("\u{0430}dmin", "invalid_username"), // Cyrillic а among Latin letters
        ("ｄａｖｅ", "username_taken"),
        ("𝐝𝐚𝐯𝐞", "username_taken"),
    ] {
        let reply = register(name);
        assert_eq!(
            (reply["code"].clone(), reply["reason"].clone()),
            (json!(5), json!(reason)),
            "{name:?}"
        );
    }
    assert_eq!(register("coco")["code"], 4);
    let reply = register("\u{0441}\u{043e}\u{0441}\u{043e}"); // Cyrillic сосо
    assert_eq!(
        reply["reason"], "username_taken",
        "a whole-script look-alike"
    );
    assert_eq!(register("straße")["code"], 4);
    assert_eq!(register("STRASSE")["reason"], "username_taken");
    assert_eq!(
        seed(addr, "login", "STRASSE", "password1")["username"],
        "straße"
    );
}

#[test]
fn names_valid_before_still_log_in() {
    use login_server::accountdb::store::{Account, SqliteStore, Store};
    use login_server::auth::password::{HashParams, Hasher, Memory};
    let tiers = start();
    let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
    let hash = hasher.hash("password1", &mut Memory::default()).unwrap();
    let store = SqliteStore::open(tiers.dir.path()).unwrap();
    let old = "dave\u{3164}"; // registered before fillers were refused
    let account = Account::new(old, &hash);
    store.create(&account, "legacy").unwrap();
    assert_eq!(seed(tiers.addr(), "login", old, "password1")["code"], 3);
}

#[test]
fn passwords_typed_composed_or_decomposed_are_the_same() {
    use login_server::accountdb::store::{Account, SqliteStore, Store};
    use login_server::auth::password::{HashParams, Hasher, Memory};
    let tiers = start();
    let (composed, decomposed) = ("caf\u{e9}-au-lait", "cafe\u{301}-au-lait");
    assert_eq!(code(tiers.addr(), "register", "barista", decomposed), 4);
    assert_eq!(code(tiers.addr(), "login", "barista", composed), 3);
    assert_eq!(code(tiers.addr(), "login", "barista", decomposed), 3);
    // A hash made before passwords were normalized (of the decomposed form as typed) still
    // verifies as typed, and is then made again from the normalized form.
    let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
    let hash = hasher.hash(decomposed, &mut Memory::default()).unwrap();
    let store = SqliteStore::open(tiers.dir.path()).unwrap();
    let account = Account::new("oldtimer", &hash);
    store.create(&account, "legacy").unwrap();
    assert_eq!(
        code(tiers.addr(), "login", "oldtimer", composed),
        2,
        "not yet rehashed"
    );
    assert_eq!(code(tiers.addr(), "login", "oldtimer", decomposed), 3);
    assert_eq!(
        code(tiers.addr(), "login", "oldtimer", composed),
        3,
        "rehashed from NFC"
    );
}

#[test]
fn only_allowed_gateways_may_connect() {
    let closed = start_with(|c| {
        c.allow_from = vec![
            "10.9.9.9".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    for _ in 0..3 {
        assert!(
            StreamClient::new(closed.addr()).closed(),
            "closed at accept"
        );
    }
    let (_, metrics) = get(closed.server.metrics_addr().unwrap(), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "login_disallowed_connections_total 3"),
        "{metrics}"
    );
    let open = start_with(|c| c.allow_from = vec!["127.0.0.0/8".parse().unwrap()]);
    assert_eq!(code(open.addr(), "login", "nobody", "password1"), 1);
}

#[test]
fn a_slow_client_does_not_blind_the_health_endpoint() {
    let tiers = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()));
    let metrics = tiers.server.metrics_addr().unwrap();
    // Five clients that trickle a request a byte at a time and never finish it.
    let started = Instant::now();
    let slow: Vec<std::thread::JoinHandle<Duration>> = (0..5)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = common::connect(metrics);
                for byte in b"GET /metrics HTTP/1.1\r\nHost: slow\r\n" {
                    if stream.write_all(&[*byte]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
                started.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let probed = Instant::now();
        assert_eq!(get(metrics, "/healthz"), (200, "ok\n".into()));
        assert!(
            probed.elapsed() < Duration::from_secs(1),
            "{:?}",
            probed.elapsed()
        );
    }
    for client in slow {
        let cut = client.join().unwrap();
        assert!(cut < Duration::from_secs(4), "held for {cut:?}");
    }
}

#[test]
fn unauthenticated_connections_cannot_take_login_servers_slots() {
    use login_server::{AccountDb, AccountDbConfig, LoginServer};
    let dir = tempfile::tempdir().unwrap();
    let secret = login_server::auth::secret::Secret::generate();
    let mut config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    config.max_connections = 4;
    config.max_handshakes = 4;
    config.auth_timeout = Duration::from_secs(20);
    let store =
        std::sync::Arc::new(login_server::accountdb::store::SqliteStore::open(dir.path()).unwrap());
    let db = AccountDb::spawn(config, store).unwrap();
    // Twenty peers that connect and never authenticate: the newest four wait in their
    // handshake, the older ones are cut off as newer ones come.
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| {
            let stream = common::connect(db.local_addr());
            let mut greeting = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut greeting)
                .unwrap();
            stream
        })
        .collect();
    let still_open = |mut stream: &TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        matches!(stream.read(&mut [0u8; 64]), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    };
    let open: Vec<bool> = silent.iter().map(still_open).collect();
    assert_eq!(open.iter().filter(|&&o| o).count(), 4, "{open:?}");
    assert!(open[16..].iter().all(|&o| o), "the newest wait: {open:?}");
    // A login-server still gets its connections: its handshakes cut off the silent ones.
    let server = LoginServer::spawn(common::config(db.local_addr(), &secret)).unwrap();
    assert_eq!(
        code(server.local_addr(), "register", "still-served", "password1"),
        4
    );
    assert_eq!(
        code(server.local_addr(), "login", "still-served", "password1"),
        3
    );
}

/// A store with enough accounts to span several pages, closed.
fn filled_store(dir: &std::path::Path) {
    use login_server::accountdb::store::{Account, SqliteStore, Store};
    let store = SqliteStore::open(dir).unwrap();
    for i in 0..300 {
        let account = Account::new(&format!("player{i}"), &"x".repeat(100));
        store.create(&account, &format!("r{i}")).unwrap();
    }
}

#[test]
fn a_damaged_store_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path());
    let path = dir.path().join("accounts.sqlite3");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4 * 4096, "{} bytes", bytes.len());
    bytes[2 * 4096..3 * 4096].fill(0); // zero page 3
    std::fs::write(&path, bytes).unwrap();
    let (status, log) = common::account_db_start_failure(dir.path(), &[]);
    assert!(!status.success());
    assert!(log.contains("damaged"), "{log}");
}

#[test]
fn a_read_only_store_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path());
    let path = dir.path().join("accounts.sqlite3");
    // Root ignores file modes; the immutable attribute binds root too.
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&path)
        .status();
    if !immutable.is_ok_and(|s| s.success()) {
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&path, perms).unwrap();
        if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
            let why = format!("cannot make {} read-only here", path.display());
            common::missing::<()>("REQUIRE_READ_ONLY", why);
            return;
        }
    }
    let (status, log) = common::account_db_start_failure(dir.path(), &[]);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&path)
        .status();
    assert!(!status.success());
    assert!(
        log.contains("readonly") || log.contains("read-only"),
        "{log}"
    );
}

// Regressions found by a hostile review of the hardened build.

#[test]
fn a_newline_after_a_request_does_not_start_the_message_deadline() {
    let tiers = start_with(|c| c.message_timeout = Duration::from_millis(300));
    let mut client = StreamClient::new(tiers.addr());
    let request =
        b"{\"OP\":\"login\",\"username\":\"nobody\",\"password\":\"password1\",\"id\":1}\r\n";
    client.send(request);
    assert_eq!(client.recv()["code"], 1);
    std::thread::sleep(Duration::from_millis(900)); // three deadlines of idleness
    client.send(request);
    let reply = client.recv();
    assert_eq!(
        (reply["code"].clone(), reply["id"].clone()),
        (json!(1), json!(1)),
        "{reply}"
    );
}

#[test]
fn a_refused_client_that_does_not_read_is_refused_once_then_closed() {
    let tiers = start_with(|c| c.message_timeout = Duration::from_millis(300));
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&tiers.addr().into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    // Replies the client does not read, then a message that never ends.
    let request = b"{\"OP\":\"login\",\"username\":\"no\",\"password\":\"password1\"}\n";
    stream.write_all(&request.repeat(3000)).unwrap();
    stream.write_all(b"{").unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let mut replies = String::new();
    stream.read_to_string(&mut replies).unwrap(); // the server closes at the end
    let refusals = replies.matches("not completed within").count();
    assert!(refusals <= 1, "refused {refusals} times");
}

#[test]
fn whatever_registers_logs_in_with_the_same_spelling() {
    let tiers = start();
    for name in ["bob²x", "carol１", &"e\u{301}".repeat(20)] {
        assert_eq!(
            code(tiers.addr(), "register", name, "password1"),
            4,
            "{name:?}"
        );
        assert_eq!(
            code(tiers.addr(), "login", name, "password1"),
            3,
            "{name:?}"
        );
    }
    let composed = "\u{e9}".repeat(500); // 1000 bytes; decomposed, 1500
    assert_eq!(code(tiers.addr(), "register", "accents", &composed), 4);
    assert_eq!(
        code(tiers.addr(), "login", "accents", &"e\u{301}".repeat(500)),
        3
    );
    let reply = seed(tiers.addr(), "register", "tooshort", &"e\u{301}".repeat(3));
    assert_eq!(
        reply["reason"], "invalid_password",
        "6 bytes once normalized"
    );
}

#[test]
fn a_capital_i_is_a_look_alike_of_l() {
    let tiers = start();
    assert_eq!(code(tiers.addr(), "register", "alice", "password1"), 4);
    assert_eq!(code(tiers.addr(), "register", "paypal", "password1"), 4);
    for twin in ["aIice", "paypaI", "ALICE"] {
        assert_eq!(
            seed(tiers.addr(), "register", twin, "password1")["reason"],
            "username_taken",
            "{twin}"
        );
    }
}

#[test]
fn idle_connections_cannot_hold_up_a_health_probe() {
    let tiers = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()));
    let metrics = tiers.server.metrics_addr().unwrap();
    let _idle: Vec<TcpStream> = (0..40).map(|_| common::connect(metrics)).collect();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        assert_eq!(get(metrics, "/healthz"), (200, "ok\n".into()));
    }
}

#[test]
fn readyz_answers_503_while_the_account_db_is_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::DbProcess::start(dir.path(), "127.0.0.1:0");
    let mut config = db.config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = login_server::LoginServer::spawn(config).unwrap();
    let metrics = server.metrics_addr().unwrap();
    assert_eq!(get(metrics, "/readyz").0, 200);
    db.signal("STOP");
    let status = get(metrics, "/readyz").0;
    db.signal("CONT");
    assert_eq!(status, 503);
}

/// Review of issue 9/10: a burst of concurrent guesses all passed the lookup before the first
/// failure was counted, so a lock that should hold at 3 let dozens through. A few attempts at a
/// time per name (TURNS_PER_NAME, 16): a burst meets the lock its first failures set.
#[test]
fn a_burst_of_concurrent_guesses_meets_the_lock_after_its_first_failures() {
    let tiers = start_with(|c| {
        c.service.throttle.max_failures = 3;
        c.hash_params = "1024,1,1".parse().unwrap(); // verifications that overlap
        c.workers = Some(4);
    });
    assert_eq!(code(tiers.addr(), "register", "besieged", "password1"), 4);
    let addr = tiers.addr();
    let guesses: Vec<std::thread::JoinHandle<u64>> = (0..64)
        .map(|i| {
            std::thread::spawn(move || {
                let line = json!({"OP": "login", "username": "besieged",
                    "password": format!("guess-{i:04}"), "ip": format!("10.9.{i}.1")});
                let mut client = StreamClient::new(addr);
                client.send(format!("{line}\n").as_bytes());
                client.recv()["code"].as_u64().unwrap()
            })
        })
        .collect();
    let codes: Vec<u64> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    // At most 3 failures before the lock, and the other turns' in flight when it comes.
    let most = 3 + usize::from(login_server::service::TURNS_PER_NAME) - 1;
    let wrong = codes.iter().filter(|&&c| c == 2).count();
    assert!(wrong <= most, "{wrong} guesses were checked: {codes:?}");
    assert!(codes.iter().all(|&c| c == 2 || c == 8), "{codes:?}");
    // Every guess that was checked counted: the lock comes after at least 3, at most `most`.
    let mut checked = wrong;
    for i in 0..10 {
        match code(addr, "login", "besieged", &format!("late-guess-{i}")) {
            2 => checked += 1,
            8 => break,
            other => panic!("code {other}"),
        }
    }
    assert!((3..=most).contains(&checked), "{checked}");
    assert_eq!(code(addr, "login", "besieged", "password1"), 8, "locked");
}

/// Issue 12: values that cannot work are refused at start, saying what would.
#[test]
fn values_that_cannot_work_are_refused_with_the_allowed_range() {
    let refused = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_login-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for flag in ["--workers", "--hash-threads", "--max-connections"] {
        let said = refused(&[flag, "0"]);
        assert!(said.contains("at least 1"), "{flag}: {said}");
    }
    let said = refused(&["--hash-params", "4,1,1"]);
    assert!(said.contains("at least 8 KiB per lane"), "{said}");
    // More memory than the machine has, times the hash threads.
    let dir = tempfile::tempdir().unwrap();
    let said = refused(&[
        "--hash-params",
        "4000000000,1,1",
        "--hash-threads",
        "2",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(said.contains("more than this machine's"), "{said}");
}

/// A spawned server alone gets 256 open files, soft and hard (the common default outside
/// systemd is 1024). setrlimit is async-signal-safe, and this touches nothing else: fit for
/// `pre_exec`.
fn limit_to_256() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: setrlimit reads the struct it is given, which lives across the call.
    match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// `command` with `--strict-limits`, at 256 open files, refuses to start, saying `wanted` and
/// the hard limit.
fn refused_under_strict_limits(command: &Command, wanted: &str) {
    use std::os::unix::process::CommandExt;
    let mut strict = Command::new(command.get_program());
    strict.args(command.get_args()).arg("--strict-limits");
    // SAFETY: see limit_to_256.
    unsafe { strict.pre_exec(limit_to_256) };
    let refused = strict.output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains(wanted) && said.contains("hard limit 256"),
        "{said}"
    );
}

#[test]
fn an_account_db_at_a_low_open_files_limit_caps_its_connections_and_serves() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_account-db"));
    command
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--data")
        .arg(dir.path());
    refused_under_strict_limits(&command, "--max-connections 256");
    // SAFETY: see limit_to_256.
    unsafe { command.pre_exec(limit_to_256) };
    let mut db = common::Logged::spawn(command);
    let warning = db.wait_for("open-files limit cannot hold --max-connections");
    assert!(
        warning.contains("wanted=256") && warning.contains("hard=256"),
        "{warning}"
    );
    let effective: f64 = warning
        .split_whitespace()
        .find_map(|w| w.strip_prefix("effective="))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("effective in {warning}"));
    assert!(effective > 0.0 && effective < 256.0, "{warning}");
    let metrics: std::net::SocketAddr = db.field("serving /metrics", "metrics").parse().unwrap();
    assert_eq!(
        common::metric(metrics, "accountdb_max_connections"),
        Some(effective)
    );
    let addr = db.field("account-db listening", "addr");
    let secret =
        login_server::auth::secret::Secret::read(&dir.path().join("account-db.secret")).unwrap();
    let server =
        login_server::LoginServer::spawn(common::config(addr.parse().unwrap(), &secret)).unwrap();
    assert_eq!(
        code(server.local_addr(), "register", "Capped", "password1"),
        4
    );
    assert_eq!(code(server.local_addr(), "login", "capped", "password1"), 3);
}

#[test]
fn at_a_low_open_files_limit_the_excess_is_refused_and_logins_and_health_go_on() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let db = common::DbProcess::start(dir.path(), "127.0.0.1:0");
    let key = dir.path().join("token.key");
    let kid = common::gen_token_key(&key);
    let mut command = common::login_server_command([
        "--hash-params".as_ref(),
        "8,1,1".as_ref(),
        "--db".as_ref(),
        db.addr.to_string().as_ref(),
        "--db-secret-file".as_ref(),
        dir.path().join("account-db.secret").as_os_str(),
        "--token-key-file".as_ref(),
        key.as_os_str(),
        "--metrics-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    refused_under_strict_limits(&command, "--max-connections 10000");
    // SAFETY: as below.
    unsafe { command.pre_exec(limit_to_256) };
    let mut server = common::Logged::spawn(command);
    let warning = server.wait_for("open-files limit cannot hold --max-connections");
    // The start says which keys sign and verify tokens, and who may connect.
    let keys = server.wait_for("token keys and gateways allowed");
    assert!(
        keys.contains(&format!("signing_kid={kid}"))
            && keys.contains("verify_kids=none")
            && keys.contains("allow_from=anyone"),
        "{keys}"
    );
    let field = |name: &str| -> u64 {
        let prefix = format!("{name}=");
        let word = warning
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix));
        word.and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {warning}"))
    };
    let effective = field("effective");
    assert!(field("wanted") == 10_000 && effective < 256, "{warning}");
    assert_eq!(field("limit"), 256, "{warning}");
    let addr: std::net::SocketAddr = server
        .field("login-server listening", "addr")
        .parse()
        .unwrap();
    let metrics: std::net::SocketAddr = server
        .field("login-server listening", "metrics")
        .parse()
        .unwrap();
    assert_eq!(
        common::metric(metrics, "login_max_connections"),
        Some(effective as f64)
    );
    // A gateway connected first, then 300 idle connections: the excess is refused at accept.
    let mut gateway = StreamClient::new(addr);
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let refused = 300 + 1 - effective as usize;
    common::eventually(common::PATIENCE, "the excess refused and counted", || {
        common::metric(metrics, "login_refused_connections_total") == Some(refused as f64)
    });
    gateway.send(b"{\"OP\":\"register\",\"username\":\"Crowded\",\"password\":\"password1\"}\n");
    assert_eq!(gateway.recv()["code"], 4);
    gateway.send(b"{\"OP\":\"login\",\"username\":\"crowded\",\"password\":\"password1\"}\n");
    assert_eq!(gateway.recv()["code"], 3);
    assert_eq!(get(metrics, "/healthz").0, 200);
    assert_eq!(get(metrics, "/readyz").0, 200);
    assert_eq!(
        common::metric(metrics, "login_accept_out_of_files_total"),
        Some(0.0)
    );
    let failures = server
        .lines()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(failures, 0, "no accept ran out of descriptors");
    drop(idle);
}
