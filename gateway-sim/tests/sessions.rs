//! gateway-sim against a real login-server (embedded account-db, 127.0.0.1:0): `send` for every
//! op, and a stress run whose `verify` requests check the run's own tokens.

use gateway_sim::stress::{Options, Run};
use login_server::auth::password::HashParams;
use login_server::protocol::gateway::{Form, Op};
use login_server::{LoginServer, LoginServerConfig};
use serde_json::Value;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(20);

fn server(dir: &std::path::Path) -> LoginServer {
    LoginServer::spawn(LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        hash_params: HashParams::CHEAPEST,
        ..LoginServerConfig::default()
    })
    .unwrap()
}

fn send(server: &LoginServer, op: Op, subject: &str, password: &str, new: &str) -> Value {
    let request = gateway_sim::request(op, subject, password, new);
    let reply = gateway_sim::send_seed(server.local_addr(), None, &request, PATIENCE).unwrap();
    serde_json::from_str::<Value>(&reply).unwrap()[0].clone()
}

#[test]
fn send_speaks_every_op() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    assert_eq!(
        send(&server, Op::Register, "Sender", "password1", "")["code"],
        4
    );
    let login = send(&server, Op::Login, "sender", "password1", "");
    let token = login["token"].as_str().unwrap().to_string();
    assert_eq!(send(&server, Op::Verify, &token, "", "")["code"], 9);
    let refreshed = send(&server, Op::Refresh, &token, "", "");
    assert_eq!(refreshed["code"], 9);
    assert_eq!(send(&server, Op::Logout, &token, "", "")["code"], 11);
    assert_eq!(
        send(&server, Op::Verify, &token, "", "")["reason"],
        "revoked"
    );
    let changed = send(
        &server,
        Op::ChangePassword,
        "sender",
        "password1",
        "password2",
    );
    assert_eq!(changed["code"], 11);
    let fresh = changed["token"].as_str().unwrap().to_string();
    assert_eq!(send(&server, Op::LogoutAll, &fresh, "", "")["code"], 11);
    assert_eq!(
        send(&server, Op::Verify, &fresh, "", "")["reason"],
        "revoked"
    );
    assert_eq!(
        send(&server, Op::Login, "sender", "password2", "")["code"],
        3
    );
}

#[test]
fn a_server_that_closes_without_a_reply_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Reads the request whole, then closes without answering.
    let closer = std::thread::spawn(move || {
        use std::io::Read;
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 256];
        while !request.ends_with(b"]") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the request came whole");
            request.extend_from_slice(&buf[..n]);
        }
    });
    let request = gateway_sim::request(Op::Login, "u", "password1", "");
    let error = gateway_sim::send_seed(addr, None, &request, PATIENCE).unwrap_err();
    assert!(error.to_string().contains("without a reply"), "{error}");
    closer.join().unwrap();
    // One that says nothing at all: the timeout, told as one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = std::thread::spawn(move || listener.accept().map(|(tcp, _)| tcp));
    let error = gateway_sim::send_seed(addr, None, &request, Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert_eq!(error, "no reply within 0.5 s");
    drop(silent.join());
}

#[test]
fn stress_verifies_the_tokens_of_its_own_logins() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    for form in [Form::Stream, Form::Seed] {
        let run = Run::start(Options {
            targets: vec![server.local_addr()],
            connections: 4,
            duration: Duration::from_secs(2),
            requests: Some(400),
            form,
            pipeline: 2,
            mix: "login=20,verify=80".parse().unwrap(),
            users: 50,
            rate: None,
            timeout: PATIENCE,
            tls: None,
            ..Options::default()
        })
        .unwrap();
        let report = run.finish();
        assert!(report.clean(), "{form:?}: {}", report.table());
        let verified = report.codes.get("9").copied().unwrap_or(0);
        assert!(verified > 100, "{form:?}: {:?}", report.codes);
    }
}

#[test]
fn duration_is_a_hard_limit_and_what_was_cut_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Slow logins: a server that cannot keep up with the rate asked.
    let server = LoginServer::spawn(LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        hash_params: "32768,2,1".parse().unwrap(),
        hash_threads: Some(1),
        ..LoginServerConfig::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let run = Run::start(Options {
        targets: vec![server.local_addr()],
        connections: 4,
        duration: Duration::from_secs(1),
        requests: None,
        form: Form::Stream,
        pipeline: 4,
        mix: "login=1".parse().unwrap(),
        users: 2,
        rate: Some(2000.0),
        timeout: Duration::from_secs(30),
        tls: None,
        ..Options::default()
    })
    .unwrap();
    let setup = started.elapsed();
    let report = run.finish();
    let ran = started.elapsed() - setup;
    // One second of load and at most the grace after it, not the 2000 requests it was asked.
    assert!(
        ran < Duration::from_secs(1) + gateway_sim::run::GRACE + Duration::from_secs(3),
        "{ran:?}"
    );
    assert!(report.unsent > 1000, "{}", report.table());
    assert!(
        report.requests + report.unfinished + report.unsent >= 1900,
        "{}",
        report.table()
    );
    assert_eq!(report.transport.timeout, 0, "{}", report.table());
}

#[test]
fn a_run_over_two_targets_rides_out_one_stopping() {
    for form in [Form::Stream, Form::Seed] {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (stopping, staying) = (server(dirs.0.path()), server(dirs.1.path()));
        let run = Run::start(Options {
            targets: vec![stopping.local_addr(), staying.local_addr()],
            connections: 4,
            duration: Duration::from_secs(3),
            requests: None,
            form,
            pipeline: 4,
            // Unknown names (1): nothing the two stores must share.
            mix: "unknown=1".parse().unwrap(),
            users: 0,
            rate: None,
            timeout: PATIENCE,
            tls: None,
            ..Options::default()
        })
        .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        // Stopped as SIGTERM stops it: what it received whole is answered, the rest closed.
        stopping.shutdown();
        let report = run.finish();
        assert!(report.clean(), "{form:?}: {}", report.table());
        assert!(
            report.codes.get("1").copied().unwrap_or(0) > 100,
            "{form:?}: {}",
            report.table()
        );
        drop(staying);
    }
}

#[test]
fn a_target_that_closes_every_connection_hands_its_work_to_the_next() {
    // Accepts, then closes without a word: registration and load both go on with the next.
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_addr = closer.local_addr().unwrap();
    std::thread::spawn(move || closer.incoming().for_each(drop));
    let dir = tempfile::tempdir().unwrap();
    let staying = server(dir.path());
    for form in [Form::Stream, Form::Seed] {
        let run = Run::start(Options {
            targets: vec![closer_addr, staying.local_addr()],
            connections: 2,
            duration: Duration::from_secs(1),
            requests: Some(200),
            form,
            pipeline: 2,
            mix: "login=1".parse().unwrap(),
            users: 5,
            rate: None,
            timeout: PATIENCE,
            tls: None,
            ..Options::default()
        })
        .unwrap();
        let report = run.finish();
        assert!(report.clean(), "{form:?}: {}", report.table());
        assert!(
            report.codes.get("3").copied().unwrap_or(0) > 50,
            "{form:?}: {}",
            report.table()
        );
    }
}

/// `gateway-sim send`, the binary, with `args`: its stdout parsed (the seed form's reply).
fn send_cli(server: &LoginServer, args: &[&str]) -> Value {
    let target = server.local_addr().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-sim"))
        .args(["send", "--target", &target])
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?}: {said}");
    let out = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str::<Value>(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))[0].clone()
}

#[test]
fn send_speaks_the_device_ops() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let (phone, tablet) = ("phone-0123456789abcdef", "tablet-0123456789abcdef");
    let secret = "0123456789abcdefghijklmnop";
    let guest = send_cli(&server, &["device", phone, "--device-secret", secret]);
    assert_eq!(
        (&guest["code"], &guest["created"]),
        (&3.into(), &true.into())
    );
    let token = guest["token"].as_str().unwrap().to_string();
    let link = [
        "link_device",
        &token,
        "--device-id",
        tablet,
        "--device-secret",
        secret,
    ];
    assert_eq!(send_cli(&server, &link)["code"], 11);
    let listed = send_cli(&server, &["devices", &token]);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 2, "{listed}");
    let unlink = ["unlink_device", &token, "--device-id", tablet];
    assert_eq!(send_cli(&server, &unlink)["code"], 11);
    let claim = [
        "claim",
        &token,
        "--username",
        "Claimer",
        "--password",
        "password1",
    ];
    let claimed = send_cli(&server, &claim);
    assert_eq!(
        (&claimed["code"], &claimed["username"]),
        (&4.into(), &"Claimer".into())
    );
    // Without a terminal, a missing secret is named, not waited for.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-sim"))
        .args([
            "send",
            "--target",
            &server.local_addr().to_string(),
            "device",
            phone,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--device-secret"));
    // claim without --username is refused by the parser.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-sim"))
        .args([
            "send",
            "--target",
            &server.local_addr().to_string(),
            "claim",
            &token,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--username"));
}

#[test]
fn stress_logs_devices_into_the_guests_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    for _ in 0..2 {
        // The second run logs into the guests the first made.
        let run = Run::start(Options {
            targets: vec![server.local_addr()],
            connections: 4,
            duration: Duration::from_secs(2),
            requests: Some(400),
            form: Form::Stream,
            pipeline: 2,
            mix: "device=80,login=20".parse().unwrap(),
            users: 60,
            rate: None,
            timeout: PATIENCE,
            tls: None,
            ..Options::default()
        })
        .unwrap();
        let report = run.finish();
        assert!(report.clean(), "{}", report.table());
        let logged_in = report.codes.get("3").copied().unwrap_or(0);
        assert!(logged_in >= 400, "{:?}", report.codes);
    }
}
