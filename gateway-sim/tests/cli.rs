//! `gateway-sim stress` as an operator runs it, against a real login-server (embedded
//! account-db, 127.0.0.1:0): what it refuses, what its JSON says, and its exit codes.

use login_server::auth::password::HashParams;
use login_server::protocol::gateway::Op;
use login_server::{LoginServer, LoginServerConfig};
use serde_json::Value;
use std::process::{Command, Output};

const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

fn server(dir: &std::path::Path) -> LoginServer {
    LoginServer::spawn(LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        hash_params: HashParams::CHEAPEST,
        ..LoginServerConfig::default()
    })
    .unwrap()
}

fn stress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway-sim"))
        .arg("stress")
        .args(args)
        .output()
        .unwrap()
}

fn said(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn no_rate_and_no_connections_are_refused() {
    for args in [
        ["--rate", "0"],
        ["--rate=-5", "--duration=1"],
        ["--connections", "0"],
        ["--prefix", "Has-Caps"],
        ["--duration", "0"],
        ["--setup-timeout", "1e19"],
        ["--max-unsent", "NaN"],
        ["--rate", "1e300"],
    ] {
        let output = stress(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", said(&output));
        let flag = args[0].split('=').next().unwrap();
        assert!(said(&output).contains(flag), "{}", said(&output));
    }
}

#[test]
fn the_json_report_carries_the_run_and_its_setup_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    // HOST:PORT, as the servers take it.
    let target = format!("localhost:{}", server.local_addr().port());
    let run = |prefix: &str| -> Value {
        let output = stress(&[
            "--target",
            &target,
            "--json",
            "--connections",
            "2",
            "--requests",
            "60",
            "--users",
            "20",
            "--prefix",
            prefix,
            "--form",
            "stream",
            "--pipeline",
            "2",
        ]);
        assert!(output.status.success(), "{}", said(&output));
        serde_json::from_slice(&output.stdout).expect("one JSON object")
    };
    let first = run("cli");
    let params = &first["params"];
    assert_eq!(params["targets"][0], server.local_addr().to_string());
    assert_eq!(params["form"], "stream");
    assert_eq!(params["connections"], 2);
    assert_eq!(params["pipeline"], 2);
    assert_eq!(params["requests"], 60);
    assert_eq!(params["mix"], "login=90,register=5,badpass=5");
    assert_eq!(params["prefix"], "cli");
    assert_eq!(params["rate"], Value::Null);
    assert!(first["setup_s"].as_f64().unwrap() > 0.0, "{first}");
    assert_eq!(first["requests"], 60);
    // The accounts: gwsim-cli-N and decoys gwsim-cli-dN, which a second run with the same
    // prefix reuses (its setup finds them registered: 5).
    let code = |user: &str, password: &str| {
        let request = gateway_sim::request(Op::Login, user, password, "");
        let reply = gateway_sim::send_seed(server.local_addr(), None, &request, PATIENCE).unwrap();
        serde_json::from_str::<Value>(&reply).unwrap()[0]["code"].clone()
    };
    assert_eq!(code("gwsim-cli-19", "stress-password-19"), 3);
    assert_eq!(code("gwsim-cli-d19", "not-it"), 2);
    let second = run("cli");
    assert_eq!(second["requests"], 60, "{second}");
}

#[test]
fn a_setup_that_does_not_finish_in_time_exits_2_having_measured_nothing() {
    // Busy (7) for ever: the accounts are never registered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let _ = writeln!(writer, r#"{{"code":7,"info":"busy"}}"#);
                    line.clear();
                }
            });
        }
    });
    let began = std::time::Instant::now();
    let output = stress(&[
        "--target",
        &target,
        "--form",
        "stream",
        "--setup-timeout",
        "1",
        "--duration",
        "30",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", said(&output));
    assert!(began.elapsed().as_secs() < 10, "{:?}", began.elapsed());
    assert!(
        said(&output).contains("--setup-timeout"),
        "{}",
        said(&output)
    );
    assert!(
        output.stdout.is_empty(),
        "nothing measured, nothing reported"
    );
}

#[test]
fn an_open_loop_that_could_not_send_what_it_planned_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Slow logins on one hash thread: 4 connections cannot offer 2,000 a second.
    let server = LoginServer::spawn(LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        hash_params: "32768,2,1".parse().unwrap(),
        hash_threads: Some(1),
        ..LoginServerConfig::default()
    })
    .unwrap();
    let target = server.local_addr().to_string();
    let plot = dir.path().join("run.svg");
    let output = stress(&[
        "--target",
        &target,
        "--json",
        "--connections",
        "4",
        "--duration",
        "1",
        "--rate",
        "2000",
        "--mix",
        "login=1",
        "--users",
        "2",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", said(&output));
    assert!(said(&output).contains("--max-unsent"), "{}", said(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["planned"], 2000, "{report}");
    assert!(report["unsent"].as_u64().unwrap() > 20, "{report}");
    // The plot says what was offered, what was never sent, and where the run ended.
    let svg = std::fs::read_to_string(&plot).unwrap();
    for text in [
        "2000 req/s offered",
        "never sent",
        "end of --duration",
        "login=1",
    ] {
        assert!(svg.contains(text), "{text} not in the plot");
    }
}
