//! Operations: Prometheus metrics, /healthz and /readyz on both servers, scraped over HTTP.

mod common;

use common::{code, http_get as get, start_with, DbProcess};
use login_server::accountdb::store::SqliteStore;
use login_server::auth::secret::Secret;
use login_server::{AccountDb, AccountDbConfig, LoginServer};
use std::sync::Arc;

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn login_server_metrics_count_requests_by_op_and_code() {
    let tiers = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()));
    let metrics = tiers.server.metrics_addr().unwrap();
    let addr = tiers.addr();
    assert_eq!(code(addr, "register", "metered", "password1"), 4);
    for _ in 0..3 {
        assert_eq!(code(addr, "login", "metered", "password1"), 3);
    }
    assert_eq!(code(addr, "login", "metered", "password2"), 2);
    common::exchange(addr, b"[{\"OP\":\"fly\"}]");

    let (status, text) = get(metrics, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "login_requests_total{op=\"login\",code=\"3\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "login_requests_total{op=\"login\",code=\"2\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "login_requests_total{op=\"register\",code=\"4\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "login_requests_total{op=\"none\",code=\"6\"}"),
        1.0
    );
    assert_eq!(sample(&text, "login_request_duration_seconds_count"), 6.0);
    // Connections are made as needed (one for these requests one at a time), at most the pool.
    let pooled = sample(&text, "login_db_pool_connections");
    assert!((1.0..=2.0).contains(&pooled), "{pooled}");
    for series in [
        "login_open_connections",
        "login_busy_workers",
        "login_hashes_in_progress",
        "login_queue_depth",
        "login_db_pool_idle",
        "login_db_pool_wait_seconds_count",
        "login_db_errors_total",
        "login_throttled_total",
    ] {
        sample(&text, series);
    }
    let version = format!(
        "login_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &version), 1.0);
    assert!(sample(&text, "login_process_resident_memory_bytes") > 1e6);
    assert!(sample(&text, "login_process_open_fds") >= 3.0);
    assert!(sample(&text, "login_process_cpu_seconds") >= 0.0);
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(metrics, "/readyz").0, 200);
    assert_eq!(get(metrics, "/nope").0, 404);
}

#[test]
fn readyz_follows_the_account_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = DbProcess::start(dir.path(), "127.0.0.1:0");
    let mut config = db.config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.db_timeout = std::time::Duration::from_millis(300);
    let server = LoginServer::spawn(config).unwrap();
    let metrics = server.metrics_addr().unwrap();
    assert_eq!(get(metrics, "/readyz").0, 200);
    db.kill();
    assert_eq!(get(metrics, "/readyz").0, 503);
    assert_eq!(get(metrics, "/healthz").0, 200, "alive, only not ready");
    assert_eq!(code(server.local_addr(), "login", "anyone", "password1"), 7);
    let (_, text) = get(metrics, "/metrics");
    assert!(sample(&text, "login_db_errors_total") >= 1.0);
}

/// An account-db in this process on `dir`, serving metrics on a port of its own.
fn db_with_metrics(dir: &std::path::Path, secret: &Secret) -> AccountDb {
    let mut config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let store = Arc::new(SqliteStore::open(dir).unwrap());
    AccountDb::spawn(config, store).unwrap()
}

#[test]
fn account_db_serves_its_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate();
    let db = db_with_metrics(dir.path(), &secret);
    let server = LoginServer::spawn(common::config(db.local_addr(), &secret)).unwrap();
    assert_eq!(
        code(server.local_addr(), "register", "counted", "password1"),
        4
    );
    let bad = login_server::accountdb::client::DbConn::connect(
        db.local_addr(),
        common::PATIENCE,
        &Secret::generate(),
        None,
    );
    assert!(bad.is_err());
    let metrics = db.metrics_addr().unwrap();
    let (status, text) = get(metrics, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "accountdb_requests_total{op=\"create\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "accountdb_requests_total{op=\"register\"}"),
        1.0
    );
    assert_eq!(sample(&text, "accountdb_refused_total"), 1.0);
    assert!(sample(&text, "accountdb_open_connections") >= 1.0);
    assert_eq!(get(metrics, "/readyz").0, 200);
}

#[test]
fn hidden_user_existence_asks_account_db_the_same_for_known_and_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate();
    let db = db_with_metrics(dir.path(), &secret);
    let mut config = common::config(db.local_addr(), &secret);
    config.service.hide_user_existence = true;
    let server = LoginServer::spawn(config).unwrap();
    let addr = server.local_addr();
    assert_eq!(code(addr, "register", "known", "password1"), 4);
    let metrics = db.metrics_addr().unwrap();
    let asked = || {
        let text = get(metrics, "/metrics").1;
        // A series appears once its op is first counted.
        ["login", "failed", "succeeded", "find"].map(|op| {
            let series = format!("accountdb_requests_total{{op=\"{op}\"}}");
            match text.lines().any(|l| l.starts_with(&series)) {
                true => sample(&text, &series),
                false => 0.0,
            }
        })
    };
    // Each request's round trips to account-db, by kind: a wrong password for an account and
    // any password for a name that has none must not differ (a round trip is time).
    let mut per_login = Vec::new();
    for name in ["known", "unknown"] {
        let before = asked();
        assert_eq!(code(addr, "login", name, "password2"), 2);
        let after = asked();
        per_login.push(
            after
                .iter()
                .zip(before)
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(per_login[0], vec![1.0, 1.0, 0.0, 0.0]);
    assert_eq!(per_login[1], per_login[0]);
}

#[test]
fn json_logs_have_one_line_per_request_and_never_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let command = common::login_server_command([
        "--hash-params".as_ref(),
        "8,1,1".as_ref(),
        "--log-format".as_ref(),
        "json".as_ref(),
        "--data".as_ref(),
        dir.path().as_os_str(),
    ]);
    let (mut child, addr, _, lines) = common::spawn_json_logging(command);
    let secret = "correct-horse-battery-staple";
    assert_eq!(code(addr, "register", "logged", secret), 4);
    assert_eq!(code(addr, "login", "logged", secret), 3);
    // A graceful stop flushes the background log writer.
    common::signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    let mut requests = Vec::new();
    for line in lines {
        let line = line.unwrap();
        assert!(!line.contains(secret), "a password was logged: {line}");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if event["target"] == "request" {
            requests.push(event["fields"].clone());
        }
    }
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        (requests[0]["op"].as_str(), requests[0]["code"].as_u64()),
        (Some("register"), Some(4))
    );
    assert_eq!(
        (requests[1]["op"].as_str(), requests[1]["code"].as_u64()),
        (Some("login"), Some(3))
    );
    for fields in &requests {
        assert!(
            fields["latency_us"].is_u64() && fields["peer"].is_string(),
            "{fields}"
        );
    }
}

/// The metric names a scrape exposes, as docs/operations.md names them: counters with
/// `_total`, histograms and gauges by their family name.
fn exposed_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_string(),
        })
        .collect()
}

/// The metric names docs/operations.md lists: every backticked `login_…` or `accountdb_…`.
fn documented_names() -> std::collections::BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    doc.split('`')
        .skip(1)
        .step_by(2)
        .map(|code| code.split('{').next().unwrap_or_default())
        .filter(|name| {
            (name.starts_with("login_") || name.starts_with("accountdb_"))
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_documented_metric_is_exported_and_nothing_else() {
    // And an account-db on PostgreSQL, whose store's metrics exist only there.
    let Some(pg) = common::postgres_database() else {
        return;
    };
    // With TLS between the tiers and for gateways, whose metrics exist only then.
    let (dir, tls) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let names = ["127.0.0.1".to_string()];
    login_server::tls::generate::write(tls.path(), &names, false, 30, None).unwrap();
    let secret = Secret::generate();
    let mut db_config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    db_config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    db_config.tls_cert = Some(tls.path().join("server.pem"));
    db_config.tls_key = Some(tls.path().join("server.key"));
    let db = AccountDb::spawn(db_config, Arc::new(SqliteStore::open(dir.path()).unwrap())).unwrap();
    let mut config = common::config(db.local_addr(), &secret);
    config.db_tls_ca = Some(tls.path().join("ca.pem"));
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.gateway_tls = login_server::login::GatewayTlsMode::Required;
    config.tls_cert = Some(tls.path().join("server.pem"));
    config.tls_key = Some(tls.path().join("server.key"));
    let server = LoginServer::spawn(config).unwrap();
    let mut exposed = exposed_names(&get(server.metrics_addr().unwrap(), "/metrics").1);
    exposed.extend(exposed_names(
        &get(db.metrics_addr().unwrap(), "/metrics").1,
    ));
    let store = pg
        .url
        .parse::<login_server::accountdb::store::StoreUrl>()
        .unwrap()
        .open(2, std::time::Duration::from_secs(2), false, None)
        .unwrap();
    let mut pg_config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    pg_config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let on_pg = AccountDb::spawn(pg_config, store).unwrap();
    exposed.extend(exposed_names(
        &get(on_pg.metrics_addr().unwrap(), "/metrics").1,
    ));
    let documented = documented_names();
    assert!(
        documented.len() >= 15,
        "too few names read from the docs: {documented:?}"
    );
    assert_eq!(exposed, documented, "exported vs docs/operations.md");
}

#[test]
fn a_fatal_error_is_one_line_in_the_log_format_without_a_backtrace() {
    let login_server = env!("CARGO_BIN_EXE_login-server");
    let account_db = env!("CARGO_BIN_EXE_account-db");
    // --db without its secret; an admin command on a store that does not exist.
    let runs: [(&str, &[&str]); 2] = [
        (
            login_server,
            &["--listen", "127.0.0.1:0", "--db", "127.0.0.1:1"],
        ),
        (
            account_db,
            &["--data", "/nonexistent/store", "admin", "count"],
        ),
    ];
    for (program, args) in runs {
        for format in ["json", "text"] {
            let output = std::process::Command::new(program)
                .args(args)
                .args(["--log-format", format])
                .env("RUST_BACKTRACE", "1")
                .env_remove("ACCOUNT_DB_SECRET")
                .env_remove("LOGIN_SERVER_DB_SECRET_FILE")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{said}");
            assert!(!said.to_lowercase().contains("backtrace"), "{said}");
            let last = said.lines().last().unwrap_or_default();
            assert_eq!(said.lines().filter(|l| !l.is_empty()).count(), 1, "{said}");
            if format == "json" {
                let line: serde_json::Value = serde_json::from_str(last).expect(last);
                assert_eq!(line["level"], "ERROR", "{last}");
                assert!(
                    line["fields"]["message"].as_str().unwrap().len() > 10,
                    "{last}"
                );
            } else {
                assert!(last.starts_with("Error: "), "{last}");
            }
        }
    }
}

#[test]
fn an_invalid_value_from_the_environment_names_the_variable() {
    let login_server = env!("CARGO_BIN_EXE_login-server");
    let account_db = env!("CARGO_BIN_EXE_account-db");
    let runs = [
        (login_server, "LOGIN_SERVER_WORKERS", "--workers"),
        (account_db, "ACCOUNT_DB_LISTEN", "--listen"),
    ];
    for (program, var, flag) in runs {
        let from_env = std::process::Command::new(program)
            .env(var, "not-a-value")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&from_env.stderr);
        assert_eq!(from_env.status.code(), Some(2), "{said}");
        assert!(said.contains(flag), "{said}");
        assert!(
            said.contains(&format!("environment variable {var}")),
            "{said}"
        );
        // Given on the command line, the same value is the flag's alone.
        let from_flag = std::process::Command::new(program)
            .env(var, "not-a-value")
            .args([flag, "not-a-value"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&from_flag.stderr);
        assert_eq!(from_flag.status.code(), Some(2), "{said}");
        assert!(!said.contains("environment variable"), "{said}");
    }
}

#[test]
fn a_taken_port_stops_the_start_at_once_naming_the_flag_and_the_port_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let programs = [
        env!("CARGO_BIN_EXE_account-db"),
        env!("CARGO_BIN_EXE_login-server"),
    ];
    let listen = vec!["--listen", &port, "--data", data];
    let metrics = vec![
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &port,
        "--data",
        data,
    ];
    let runs = programs.into_iter().flat_map(|program| {
        [
            (program, listen.clone(), "--listen"),
            (program, metrics.clone(), "--metrics-listen"),
        ]
    });
    for (program, args, flag) in runs {
        let began = std::time::Instant::now();
        let output = std::process::Command::new(program)
            .args(&args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{said}");
        assert!(began.elapsed() < common::PATIENCE, "{said}");
        assert!(said.contains(&port) && said.contains(flag), "{said}");
        assert_eq!(said.matches("in use").count(), 1, "{said}");
    }
}

#[test]
fn an_odd_environment_value_or_argument_gets_clap_s_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let login_server = env!("CARGO_BIN_EXE_login-server");
    // A value that holds clap's own words: the note goes after the real ones, once.
    let value = "x' for '--listen <ADDR>'";
    let output = std::process::Command::new(login_server)
        .env("LOGIN_SERVER_LISTEN", value)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    let whole = format!("'{value}' for '--listen <ADDR>' (from the environment variable");
    assert!(said.contains(&whole), "{said}");
    assert_eq!(said.matches("environment variable").count(), 1, "{said}");
    // An argument that is not UTF-8, beside a flag clap refuses: its error, exit 2.
    let output = std::process::Command::new(login_server)
        .arg("--data")
        .arg(std::ffi::OsStr::from_bytes(b"/tmp/\xff"))
        .arg("--bogus")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}
