//! The shipped systemd units (`deploy/*.service`) and their env files (`deploy/*.env`) as
//! systemd takes them: scored by `systemd-analyze security`, verified with the built binaries,
//! their start refused while a per-deployment value is unset, and, with the values set, their
//! commands run as their user in the environment the unit gives (this machine has no systemd
//! to start them: the environment is assembled here as systemd would).

mod common;

use common::StreamClient;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One of `deploy/*.service`.
struct Unit {
    /// `account-db` or `login-server`.
    name: &'static str,
    /// The file as shipped.
    text: String,
}

impl Unit {
    fn load(name: &'static str) -> Unit {
        let text = std::fs::read_to_string(Self::path_of(name)).expect("the unit");
        Unit { name, text }
    }

    fn path_of(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/{name}.service"))
    }

    fn path(&self) -> PathBuf {
        Self::path_of(self.name)
    }

    /// The values of `key=` lines, in order.
    fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    }

    fn one(&self, key: &str) -> &str {
        let values = self.values(key);
        assert_eq!(values.len(), 1, "{key}= in {}", self.name);
        values[0]
    }

    /// `Environment=` as `(NAME, value)`.
    fn environment(&self) -> Vec<(String, String)> {
        self.values("Environment")
            .into_iter()
            .map(|v| {
                let (name, value) = v.split_once('=').expect("NAME=value");
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    /// The env file it reads (required: no leading `-`).
    fn env_file(&self) -> &str {
        self.one("EnvironmentFile")
    }

    /// The script `ExecStartPre=` runs with `/bin/sh -c`, as systemd hands it over (`$$` is `$`).
    fn check_script(&self) -> String {
        let line = self.one("ExecStartPre");
        let script = line
            .strip_prefix("/bin/sh -c '")
            .and_then(|s| s.strip_suffix('\''))
            .expect("ExecStartPre=/bin/sh -c '...'");
        script.replace("$$", "$")
    }

    /// The variables the check requires: `for v in A B C; do`.
    fn required(&self) -> Vec<String> {
        let script = self.check_script();
        let list = script
            .strip_prefix("for v in ")
            .and_then(|s| s.split_once("; do"))
            .expect("for v in ...; do")
            .0;
        list.split_whitespace().map(str::to_string).collect()
    }

    /// The shipped env file beside it.
    fn shipped_env(&self) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/{}.env", self.name));
        std::fs::read_to_string(path).expect("the env file")
    }
}

fn units() -> [Unit; 2] {
    [Unit::load("account-db"), Unit::load("login-server")]
}

/// `systemd-analyze`, or `None` (skipped visibly; a failure under `REQUIRE_SYSTEMD_ANALYZE=1`).
fn systemd_analyze() -> Option<Command> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => Some(Command::new("systemd-analyze")),
        _ => common::missing(
            "REQUIRE_SYSTEMD_ANALYZE",
            "systemd-analyze is not installed",
        ),
    }
}

fn said(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn both_units_are_rated_2_5_or_lower_by_systemd_analyze_security() {
    let Some(mut analyze) = systemd_analyze() else {
        return;
    };
    let output = analyze
        .args(["security", "--offline=true", "--threshold=25", "--no-pager"])
        .args(units().iter().map(Unit::path))
        .output()
        .unwrap();
    let text = said(&output);
    assert!(output.status.success(), "{text}");
    for unit in units() {
        let overall = format!("Overall exposure level for {}.service: ", unit.name);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split_once(&overall).map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score for {}: {text}", unit.name));
        assert!(score <= 2.5, "{}: {score}\n{text}", unit.name);
    }
}

#[test]
fn both_units_verify_with_the_built_binaries_and_no_warning() {
    let Some(mut analyze) = systemd_analyze() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dir = |path: &str| {
        let dir = root.path().join(path);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let bin = dir("usr/local/bin");
    std::fs::copy(env!("CARGO_BIN_EXE_account-db"), bin.join("account-db")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_login-server"), bin.join("login-server")).unwrap();
    for program in ["/bin/sh", "/bin/kill"] {
        std::fs::copy(program, dir("bin").join(&program[5..])).unwrap();
    }
    // The targets the units name (network-online, multi-user) and those those need.
    let targets = dir("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "target") && path.is_file() {
            std::fs::copy(&path, targets.join(path.file_name().unwrap())).unwrap();
        }
    }
    let units_dir = dir("etc/systemd/system");
    for unit in units() {
        std::fs::copy(
            unit.path(),
            units_dir.join(format!("{}.service", unit.name)),
        )
        .unwrap();
    }
    let output = analyze
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(["account-db.service", "login-server.service"])
        .output()
        .unwrap();
    let text = said(&output);
    assert!(output.status.success(), "{text}");
    // An unknown key is only a warning to systemd: here it is a failure.
    assert_eq!(text.trim(), "", "systemd-analyze verify said something");
}

#[test]
fn per_deployment_values_are_in_the_env_files_only() {
    for unit in units() {
        let required = unit.required();
        assert!(!required.is_empty(), "{}", unit.name);
        let shipped = unit.shipped_env();
        // Every line is a comment: the file as shipped sets nothing, so the unit refuses.
        assert!(
            shipped.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "{}",
            unit.name
        );
        // The required ones come first, each with a commented example.
        let first_block = shipped.split("# Optional").next().unwrap();
        for name in &required {
            assert!(
                first_block.contains(&format!("\n#{name}=")),
                "{name} has no example at the top of deploy/{}.env",
                unit.name
            );
        }
        // The unit itself holds no address but loopback.
        for (name, value) in unit.environment() {
            let ip = value.split(':').next().unwrap_or_default();
            if ip.parse::<std::net::IpAddr>().is_ok() {
                assert!(ip.starts_with("127."), "{name}={value} in {}", unit.name);
            }
        }
        assert!(
            unit.text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
            "{}",
            unit.name
        );
    }
    // The gateway-facing listener needs its allow list.
    let login = Unit::load("login-server");
    assert!(login
        .required()
        .contains(&"LOGIN_SERVER_ALLOW_FROM".to_string()));
    // The metrics ports: the documented pair, outside the exporters' 9100-9999.
    let operations =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    for (unit, port) in [("account-db", 6991), ("login-server", 6990)] {
        let environment = Unit::load(unit).environment();
        let metrics = environment
            .iter()
            .find(|(name, _)| name.ends_with("_METRICS_LISTEN"))
            .expect("a metrics address");
        assert_eq!(metrics.1, format!("127.0.0.1:{port}"), "{unit}");
        assert!(operations.contains(&format!("127.0.0.1:{port}")), "{unit}");
    }
}

/// The unit's check run as systemd would run it, with `env` alone in the environment.
fn check(unit: &Unit, env: &BTreeMap<String, String>) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(unit.check_script())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env)
        .output()
        .unwrap()
}

#[test]
fn a_unit_refuses_to_start_naming_the_file_and_the_variable_while_one_is_unset() {
    for unit in units() {
        let required = unit.required();
        let all: BTreeMap<String, String> = required
            .iter()
            .map(|name| (name.clone(), "x".to_string()))
            .collect();
        assert!(check(&unit, &all).status.success(), "{}", unit.name);
        for missing in &required {
            for value in [None, Some("")] {
                let mut env = all.clone();
                match value {
                    None => env.remove(missing),
                    Some(empty) => env.insert(missing.clone(), empty.to_string()),
                };
                let output = check(&unit, &env);
                let text = said(&output);
                assert!(!output.status.success(), "{text}");
                assert!(
                    text.contains(unit.env_file())
                        && text.contains(&format!("{missing} is not set")),
                    "{text}"
                );
            }
        }
    }
}

/// What systemd reads from an `EnvironmentFile=`: `NAME=value` lines; comments and blank
/// lines skipped.
fn read_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once('=').expect("NAME=value");
            (name.trim().to_string(), value.to_string())
        })
        .collect()
}

/// The environment `unit` gives its commands: its `Environment=` lines with `%d` (the
/// credentials directory) and its state directory placed at `state`, then `env_file` over them
/// (as systemd lets an env file override `Environment=`).
fn environment(unit: &Unit, state: &Path, env_file: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = unit
        .environment()
        .into_iter()
        .map(|(name, value)| {
            let value = value
                .replace("%d", &state.display().to_string())
                .replace("/var/lib/account-db", &state.display().to_string());
            (name, value)
        })
        .collect();
    // systemd's own PATH for services.
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into(),
    );
    env.extend(read_env_file(env_file));
    env
}

/// `unit`'s check and then its `ExecStart=` (the binary built here in place of
/// /usr/local/bin), as `user`, in `env` alone. Returns the server, its JSON log, and its
/// `listening` line's `addr`.
fn start(
    unit: &Unit,
    user: &common::ServiceUser,
    env: &BTreeMap<String, String>,
) -> (common::Logged, std::net::SocketAddr) {
    let mut pre = user.command("/bin/sh");
    pre.arg("-c").arg(unit.check_script()).env_clear().envs(env);
    let checked = pre.output().unwrap();
    assert!(checked.status.success(), "{}", said(&checked));
    let program = match unit.one("ExecStart") {
        "/usr/local/bin/account-db" => env!("CARGO_BIN_EXE_account-db"),
        "/usr/local/bin/login-server" => env!("CARGO_BIN_EXE_login-server"),
        other => panic!("ExecStart={other}"),
    };
    let mut command = user.command(program);
    command.env_clear().envs(env);
    let mut server = common::Logged::spawn(command);
    let line = server.wait_for("listening");
    let event: Value = serde_json::from_str(&line).expect("the unit's log is JSON");
    let addr = event["fields"]["addr"]
        .as_str()
        .expect("addr")
        .parse()
        .unwrap();
    (server, addr)
}

#[test]
fn with_their_env_files_set_both_units_start_as_their_user_and_serve() {
    let Some(user) = common::service_user() else {
        return;
    };
    let [account_db, login_server] = units();
    let db_state = user.subdir("account-db");
    let db_env = environment(
        &account_db,
        &db_state,
        "ACCOUNT_DB_LISTEN=127.0.0.1:0\nACCOUNT_DB_METRICS_LISTEN=127.0.0.1:0\n",
    );
    let (_db, db_addr) = start(&account_db, &user, &db_env);
    // The credentials systemd would hand login-server: account-db's secret and a token key,
    // readable by the unit's user.
    let credentials = user.subdir("credentials");
    std::fs::copy(
        db_state.join("account-db.secret"),
        credentials.join("account-db.secret"),
    )
    .unwrap();
    common::gen_token_key(&credentials.join("token.key"));
    let (uid, gid) = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&credentials).unwrap();
        (meta.uid(), meta.gid())
    };
    for name in ["account-db.secret", "token.key"] {
        std::os::unix::fs::chown(credentials.join(name), Some(uid), Some(gid)).unwrap();
    }
    let login_env = environment(
        &login_server,
        &credentials,
        &format!(
            "LOGIN_SERVER_LISTEN=127.0.0.1:0\nLOGIN_SERVER_DB={db_addr}\n\
             LOGIN_SERVER_ALLOW_FROM=127.0.0.1/32\nLOGIN_SERVER_METRICS_LISTEN=127.0.0.1:0\n\
             LOGIN_SERVER_HASH_PARAMS=8,1,1\n"
        ),
    );
    let (_login, addr) = start(&login_server, &user, &login_env);
    let mut gateway = StreamClient::new(addr);
    gateway.send(b"{\"OP\":\"register\",\"username\":\"Unit\",\"password\":\"password1\"}\n");
    assert_eq!(gateway.recv()["code"], 4);
    gateway.send(b"{\"OP\":\"login\",\"username\":\"unit\",\"password\":\"password1\"}\n");
    assert_eq!(gateway.recv()["code"], 3);
}
