//! The gateway protocol over real sockets: every reply code, both forms, pipelining, and
//! messages that are malformed, truncated, oversized or wrongly typed.

mod common;

use common::{code, exchange, seed, start, start_with, StreamClient};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

#[test]
fn seed_form_codes_1_to_5_with_the_seeds_texts() {
    let tiers = start();
    // In order: each exchange is one connection, as the seed's gateway makes them.
    let exchanges: [(&[u8], &str); 5] = [
        (
            br#"[{"OP":"login","username":"nobody","password":"whatever1"}]"#,
            r#"[{"code":1,"info":"Failed for error username!"}]"#,
        ),
        (
            br#"[{"OP":"register","username":"Alice","password":"secret123"}]"#,
            r#"[{"code":4,"info":"success","username":"Alice"}]"#,
        ),
        (
            br#"[{"OP":"login","username":"alice","password":"secret123"}]"#,
            // A session token follows (tests/sessions.rs): the seed's fields come first.
            r#"[{"code":3,"info":"success!","username":"Alice","account_id":1,"token":""#,
        ),
        (
            br#"[{"OP":"login","username":"Alice","password":"secret124"}]"#,
            r#"[{"code":2,"info":"Failed for error password!"}]"#,
        ),
        (
            br#"[{"OP":"register","username":"ALICE","password":"secret123"}]"#,
            r#"[{"code":5,"info":"fail","reason":"username_taken"}]"#,
        ),
    ];
    for (request, reply) in exchanges {
        let got = exchange(tiers.addr(), request);
        if reply.ends_with(']') {
            assert_eq!(got, reply);
        } else {
            assert!(got.starts_with(reply), "{got}");
            let parsed: Value = serde_json::from_str(&got).unwrap();
            assert!(parsed[0]["exp"].as_i64().unwrap() > 0, "{got}");
        }
    }
}

#[test]
fn registration_rules_are_reported_as_reasons() {
    let tiers = start();
    let reason =
        |user: &str, pass: &str| seed(tiers.addr(), "register", user, pass)["reason"].clone();
    assert_eq!(reason("ab", "secret123"), json!("invalid_username"));
    assert_eq!(reason("semi;colon", "secret123"), json!("invalid_username"));
    assert_eq!(reason("bob", "short"), json!("invalid_password"));
    assert_eq!(reason("bob", &"x".repeat(1025)), json!("invalid_password"));
    assert_eq!(
        code(tiers.addr(), "register", "Ünïcødé_名前", "secret123"),
        4
    );
    assert_eq!(code(tiers.addr(), "login", "üNÏCØDÉ_名前", "secret123"), 3);
}

#[test]
fn stream_form_pipelines_in_order_and_echoes_ids() {
    let tiers = start();
    let mut client = StreamClient::new(tiers.addr());
    let mut batch = Vec::new();
    for (i, (op, user, pass)) in [
        ("register", "carol", "password1"),
        ("login", "carol", "password1"),
        ("login", "carol", "password2"),
        ("login", "dave", "password1"),
        ("register", "CAROL", "password1"),
    ]
    .iter()
    .enumerate()
    {
        let id = if i % 2 == 0 {
            json!(i)
        } else {
            json!(format!("req-{i}"))
        };
        let msg = json!({"OP": op, "username": user, "password": pass, "id": id});
        batch.extend_from_slice(msg.to_string().as_bytes());
        batch.push(b'\n');
    }
    client.send(&batch); // all five in one write: pipelined
    let replies: Vec<(Value, Value)> = (0..5)
        .map(|_| {
            let r = client.recv();
            (r["code"].clone(), r["id"].clone())
        })
        .collect();
    assert_eq!(
        replies,
        vec![
            (json!(4), json!(0)),
            (json!(3), json!("req-1")),
            (json!(2), json!(2)),
            (json!(1), json!("req-3")),
            (json!(5), json!(4)),
        ]
    );
    // The connection stays open for more.
    client.send(br#"{"OP":"login","username":"carol","password":"password1"}"#);
    let raw = client.recv_raw();
    assert!(
        raw.starts_with("{\"code\":3,\"info\":\"success!\",\"username\":\"carol\",\"account_id\":"),
        "{raw}"
    );
    assert!(
        raw.ends_with("}\n") && raw.contains("\"token\":\"ey"),
        "{raw}"
    );
}

#[test]
fn bad_requests_get_code_6_saying_what_is_wrong() {
    let tiers = start();
    let cases: [(&[u8], &str); 6] = [
        (br#"[{"OP":"fly","username":"u","password":"p"}]"#, "unknown variant `fly`"),
        (br#"[{"OP":"login","username":"u"}]"#, "missing field `password`"),
        (br#"[{"OP":"login","username":7,"password":"p"}]"#, "\"username\" must be a string"),
        (
            br#"[{"OP":"login","username":"u","password":"p"},{"OP":"login","username":"u","password":"p"}]"#,
            "exactly one object",
        ),
        (br#"[{"OP":"login","username":"u","password":"p",}]"#, "trailing comma"),
        (b"[{\"OP\":\"login\",\"username\":\"\xff\xfe\",\"password\":\"p\"}]", "invalid unicode"),
    ];
    for (message, expected) in cases {
        let reply: Value = serde_json::from_str(&exchange(tiers.addr(), message)).unwrap();
        assert_eq!(reply[0]["code"], 6, "{reply}");
        let info = reply[0]["info"].as_str().unwrap();
        assert!(
            info.contains(expected),
            "{info:?} should mention {expected:?}"
        );
    }
    // In the stream form a bad request keeps the connection, and its id is echoed.
    let mut client = StreamClient::new(tiers.addr());
    client.send(b"{\"OP\":\"login\",\"id\":9}\n{\"OP\":\"login\",\"username\":\"zed\",\"password\":\"password1\"}\n");
    let bad = client.recv();
    assert_eq!(
        (bad["code"].clone(), bad["id"].clone()),
        (json!(6), json!(9))
    );
    assert_eq!(client.recv()["code"], 1);
}

#[test]
fn unframeable_input_is_answered_6_and_closed() {
    let tiers = start();
    for (message, expected) in [
        (&b"hello there\n"[..], "must be a JSON array"),
        (&b"{\"a\":[}"[..], "mismatched brackets"),
        (&b"17"[..], "must be a JSON array"),
    ] {
        let reply: Value = serde_json::from_str(exchange(tiers.addr(), message).trim()).unwrap();
        assert_eq!(reply["code"], 6);
        assert!(
            reply["info"].as_str().unwrap().contains(expected),
            "{reply}"
        );
    }
}

#[test]
fn oversized_and_deeply_nested_messages_are_refused() {
    let tiers = start();
    // 1 MiB that never closes its string: refused once it passes 64 KiB.
    let mut big = br#"{"OP":"login","username":""#.to_vec();
    big.resize(1 << 20, b'x');
    let reply: Value = serde_json::from_str(exchange(tiers.addr(), &big).trim()).unwrap();
    assert_eq!(reply["code"], 6);
    assert!(
        reply["info"]
            .as_str()
            .unwrap()
            .contains("larger than 65536"),
        "{reply}"
    );
    // Nesting 10000 deep fits in the size limit; the parser refuses it without overflowing.
    let deep = [vec![b'['; 10_000], vec![b']'; 10_000]].concat();
    let reply: Value = serde_json::from_str(&exchange(tiers.addr(), &deep)).unwrap();
    assert_eq!(reply[0]["code"], 6);
    // Still serving.
    assert_eq!(code(tiers.addr(), "login", "nobody", "password1"), 1);
}

#[test]
fn truncated_and_stalled_messages_are_answered_then_closed() {
    let tiers = start_with(|c| c.message_timeout = Duration::from_millis(300));
    // Truncated: the client half-closes in the middle of a message.
    let mut stream = common::connect(tiers.addr());
    stream.write_all(br#"[{"OP":"login","user"#).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream, &mut reply).unwrap();
    assert!(
        reply.contains(r#""code":6"#) && reply.contains("closed in the middle"),
        "{reply}"
    );
    // Stalled: the rest of the message never comes.
    let mut client = StreamClient::new(tiers.addr());
    let sent = std::time::Instant::now();
    client.send(br#"{"OP":"login","#);
    let reply = client.recv();
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "the 300 ms deadline cut it off after {waited:?}"
    );
    assert_eq!(reply["code"], 6);
    assert!(
        reply["info"]
            .as_str()
            .unwrap()
            .contains("not completed within"),
        "{reply}"
    );
    assert!(client.closed());
}

#[test]
fn account_db_unreachable_is_answered_7_within_the_bound() {
    // A port with nothing listening on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let db_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut config = common::config(db_addr, &login_server::auth::secret::Secret::generate());
    config.db_timeout = Duration::from_millis(500);
    let server = login_server::LoginServer::spawn(config).unwrap();
    for op in ["login", "register"] {
        // Within the 500 ms deadline, give or take scheduling.
        let started = std::time::Instant::now();
        let reply = seed(server.local_addr(), op, "someone", "password1");
        assert_eq!(reply["code"], 7, "{reply}");
        assert!(reply["info"].as_str().unwrap().contains("unavailable"));
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(1500), "{op}: {waited:?}");
    }
}
