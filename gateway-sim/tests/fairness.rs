//! Fair under overload, through the wire: one gateway connection carries a flood from one
//! player address and a player logging in at 20 a second; the flood is shed, the player is
//! served, and not behind the flood.

use login_server::{LoginServer, LoginServerConfig};
use std::time::Duration;

fn metric(server: &LoginServer, name: &str) -> f64 {
    use std::io::{Read, Write};
    let addr = server.metrics_addr().expect("metrics");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_player_beside_a_flood_on_one_gateway_connection_is_never_shed() {
    let dir = tempfile::tempdir().unwrap();
    // Hashes that go to a hash thread (above the quick bound), about 15 ms each in a debug build.
    let server = LoginServer::spawn(LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        hash_params: "2048,1,1".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..LoginServerConfig::default()
    })
    .unwrap();
    let outcome =
        gateway_sim::shared::run(server.local_addr(), 1, 20.0, Duration::from_secs(4)).unwrap();
    let (flood, player) = (&outcome.flood, &outcome.player);
    // Every one of the player's logins succeeded: none shed, none lost.
    assert_eq!(
        player.codes.get("3").copied(),
        Some(player.sent),
        "{outcome:?}"
    );
    assert!(player.sent >= 70, "{outcome:?}");
    assert_eq!(outcome.unanswered, 0, "{outcome:?}");
    // The flood was shed, for its share, and the player did not wait behind it: unshed, the
    // player's logins queue behind up to 512 wrong-password hashes (seconds).
    let shed = flood.codes.get("7").copied().unwrap_or(0);
    assert!(shed * 2 > flood.sent, "{outcome:?}");
    assert!(metric(&server, "login_shed_total{reason=\"share\"}") > 0.0);
    assert!(player.max_ms < 1000.0, "{outcome:?}");
}
