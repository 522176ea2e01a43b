//! Hostile input over real sockets: thousands of idle connections, slowloris trickles, and a
//! pipelined flood on one connection. Each is bounded and answered or closed, while a normal
//! client is served.

mod common;

use common::{code, start, start_with, StreamClient, PATIENCE};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How many idle connections this process can hold, client and server side both, up to
/// `wanted`: the open-files soft limit is raised as far as the hard limit allows (the common
/// default soft limit is 1024), with room left for the servers' own files and threads.
fn connections_room(wanted: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = usize::try_from(limit.saturating_sub(256) / 2).unwrap_or(wanted);
    if room < wanted {
        eprintln!("open-files limit {limit}: holding {room} idle connections, not {wanted}");
    }
    room.min(wanted)
}

#[test]
fn thousands_of_idle_connections_do_not_hold_up_a_normal_client() {
    let n = connections_room(5000);
    let tiers = start();
    let idle: Vec<TcpStream> = (0..n).map(|_| common::connect(tiers.addr())).collect();
    assert_eq!(
        code(tiers.addr(), "register", "among-crowds", "password1"),
        4
    );
    assert_eq!(code(tiers.addr(), "login", "among-crowds", "password1"), 3);
    // They are all still open: one of them can still be used.
    let mut last = &idle[n - 1];
    last.write_all(br#"[{"OP":"login","username":"among-crowds","password":"password1"}]"#)
        .unwrap();
    let mut reply = String::new();
    last.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("\"code\":3"), "{reply}");
}

#[test]
fn slowloris_trickles_are_cut_off_while_others_are_served() {
    let tiers = start_with(|c| c.message_timeout = Duration::from_millis(800));
    let message = br#"[{"OP":"login","username":"slow","password":"password1"}]"#;
    let mut trickles: Vec<TcpStream> = (0..100).map(|_| common::connect(tiers.addr())).collect();
    let started = Instant::now();
    let mut sent = 0;
    // One byte per connection every 50 ms: never a whole message before the deadline.
    while started.elapsed() < Duration::from_millis(1500) && sent < message.len() - 1 {
        for stream in &mut trickles {
            let _ = stream.write_all(&message[sent..sent + 1]);
        }
        sent += 1;
        if sent == 5 {
            // Mid-trickle, a normal client is answered at once (a lookup: well under 1 s).
            let served = Instant::now();
            assert_eq!(code(tiers.addr(), "login", "nobody", "password1"), 1);
            assert!(
                served.elapsed() < Duration::from_secs(1),
                "{:?}",
                served.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // By now (1.5 s in) the 800 ms deadline has passed for every one of them: each reply is
    // already there, or follows within a tick of the sweep.
    for mut stream in trickles {
        // Answered 6, then closed gently: bytes still trickling in do not reset the reply.
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .expect("cut off at the 800 ms deadline, well before 2 s");
        assert!(
            reply.contains("\"code\":6") && reply.contains("not completed within"),
            "{reply}"
        );
    }
}

#[test]
fn a_pipelined_flood_on_one_connection_is_answered_in_order_while_others_are_served() {
    let tiers = start();
    let stream = common::connect(tiers.addr());
    let mut writer = stream.try_clone().unwrap();
    const N: usize = 20_000;
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            let line = format!("{{\"OP\":\"login\",\"username\":\"bad name {i}\",\"password\":\"password1\",\"id\":{i}}}\n");
            writer.write_all(line.as_bytes()).unwrap();
        }
    });
    // While the flood is being written, other clients get answers.
    let mut other = StreamClient::new(tiers.addr());
    other.send(br#"{"OP":"register","username":"neighbour","password":"password1"}"#);
    assert_eq!(other.recv()["code"], 4);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for i in 0..N {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (reply["code"].as_u64(), reply["id"].as_u64()),
            (Some(1), Some(i as u64))
        );
    }
    flood.join().unwrap();
}

#[test]
fn connections_past_the_limit_are_closed_at_once() {
    let tiers = start_with(|c| c.max_connections = 10);
    let held: Vec<TcpStream> = (0..10).map(|_| common::connect(tiers.addr())).collect();
    // The eleventh is accepted (so it does not wait in the backlog) and closed at once.
    let mut eleventh = StreamClient::new(tiers.addr());
    assert!(eleventh.closed());
    drop(held);
    // Room again once they are gone.
    common::eventually(PATIENCE, "room after the others closed", || {
        let mut stream = common::connect(tiers.addr());
        stream
            .write_all(br#"[{"OP":"login","username":"nobody","password":"password1"}]"#)
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).is_ok() && reply.contains("\"code\":1")
    });
}
