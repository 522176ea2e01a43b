//! Regressions from a hostile test of the running service (issue 8): each test failed on the
//! code before its fix. Real servers on 127.0.0.1:0, raw bytes over real sockets.

mod common;

use common::{code, exchange, seed, start, start_with, StreamClient};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A stream-form login, with the player's address.
fn login(client: &mut StreamClient, user: &str, password: &str, ip: &str) -> Value {
    let line = json!({"OP": "login", "username": user, "password": password, "ip": ip});
    client.send(format!("{line}\n").as_bytes());
    client.recv()
}

#[test]
fn a_full_throttle_table_still_locks_new_accounts_and_addresses() {
    let tiers = start_with(|c| {
        c.service.throttle.max_tracked = 1000;
        c.service.hide_user_existence = true; // unknown names are counted: they fill the table
    });
    assert_eq!(code(tiers.addr(), "register", "victim", "password1"), 4);
    // Fill both tables: 1200 unknown names from 1200 addresses, pipelined.
    let mut client = StreamClient::new(tiers.addr());
    let mut batch = String::new();
    for i in 0..1200 {
        let ip = format!("10.{}.{}.1", i / 250, i % 250);
        let line = json!({"OP": "login", "username": format!("filler{i}"), "password": "password1", "ip": ip});
        batch.push_str(&format!("{line}\n"));
    }
    client.send(batch.as_bytes());
    for _ in 0..1200 {
        assert_eq!(client.recv()["code"], 2);
    }
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
    let tiers = start_with(|c| c.service.throttle.register_limit = 3);
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
    assert!(refused["retry_after"].as_u64().unwrap() > 3000, "{refused}");
    assert_eq!(
        register("bot4", "203.0.113.2")["code"],
        4,
        "another address"
    );
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
