//! Shared by the integration tests: start the real tiers on 127.0.0.1:0, and talk to them
//! over raw TCP as the seed's gateway does.
#![allow(dead_code)] // each test file uses its own part of this

use login_server::accountdb::client::ClientConfig;
use login_server::accountdb::store::SqliteStore;
use login_server::auth::password::HashParams;
use login_server::auth::secret::Secret;
use login_server::auth::token_key::SigningKey;
use login_server::{AccountDb, AccountDbConfig, LoginServer, LoginServerConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

pub mod load;
pub mod pg;

/// The recorded transcript of the previous release's account-db protocol (tests/upgrade.rs
/// records it, tests/versions.rs replays it), from the package's root.
pub const TRANSCRIPT: &str = "tests/fixtures/protocol-v3.jsonl";

/// Long enough that only a hang trips it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Wait until `check` holds, asking every 20 ms, for at most `limit`; fails naming `what`
/// otherwise. For conditions the test cannot be told of, only observe.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An account-db and a login-server, in this process.
pub struct Tiers {
    pub server: LoginServer,
    pub db: AccountDb,
    pub secret: Secret,
    pub dir: TempDir,
}

impl Tiers {
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// Start an account-db on `dir`, admitting those who know `secret`.
pub fn start_db(dir: &std::path::Path, secret: &Secret) -> AccountDb {
    start_db_with(dir, secret, |_| {})
}

/// [`start_db`] with `tweak` applied to its configuration.
pub fn start_db_with(
    dir: &std::path::Path,
    secret: &Secret,
    tweak: impl FnOnce(&mut AccountDbConfig),
) -> AccountDb {
    let store = SqliteStore::open(dir).expect("open store");
    let mut config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    tweak(&mut config);
    AccountDb::spawn(config, Arc::new(store)).expect("start account-db")
}

/// The token signing key every test login-server in this process shares, as the login-servers
/// of one game do.
pub fn token_key() -> Arc<SigningKey> {
    static KEY: std::sync::OnceLock<Arc<SigningKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::new(SigningKey::generate().expect("token key")))
        .clone()
}

/// The test configuration: cheap hashes, few threads, 127.0.0.1:0, the shared token key.
pub fn config(db: SocketAddr, secret: &Secret) -> LoginServerConfig {
    LoginServerConfig {
        token_key: Some(token_key()),
        listen: "127.0.0.1:0".parse().unwrap(),
        db: vec![db.into()],
        db_secret: Some(secret.clone()),
        hash_params: HashParams::CHEAPEST,
        workers: Some(2),
        hash_threads: Some(2),
        db_pool: Some(2),
        ..LoginServerConfig::default()
    }
}

/// Both tiers, with `tweak` applied to the login-server's configuration.
pub fn start_with(tweak: impl FnOnce(&mut LoginServerConfig)) -> Tiers {
    start_tiers(|_| {}, tweak)
}

/// Both tiers, with `db_tweak` applied to account-db's configuration and `tweak` to
/// login-server's.
pub fn start_tiers(
    db_tweak: impl FnOnce(&mut AccountDbConfig),
    tweak: impl FnOnce(&mut LoginServerConfig),
) -> Tiers {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = Secret::generate();
    let db = start_db_with(dir.path(), &secret, db_tweak);
    let mut config = config(db.local_addr(), &secret);
    tweak(&mut config);
    let server = LoginServer::spawn(config).expect("start login-server");
    Tiers {
        server,
        db,
        secret,
        dir,
    }
}

/// Both tiers on one clock that the test moves forward (`clock.advance`) instead of sleeping,
/// with `tweak` applied to login-server's configuration.
pub fn start_on_clock(
    clock: &login_server::clock::Clock,
    tweak: impl FnOnce(&mut LoginServerConfig),
) -> Tiers {
    start_tiers(
        |db| db.clock = clock.clone(),
        |c| {
            c.service.clock = clock.clone();
            tweak(c)
        },
    )
}

pub fn start() -> Tiers {
    start_with(|_| {})
}

/// Connect with generous timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Send raw bytes as the seed's gateway does (one send, no newline) and read until the server
/// closes. Fails the test if the server does not close.
pub fn exchange(addr: SocketAddr, message: &[u8]) -> String {
    let mut stream = connect(addr);
    stream.write_all(message).expect("send");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .expect("the server must answer and close");
    reply
}

/// GET `path` from an HTTP endpoint (`/metrics`, `/healthz`): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = connect(addr);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").expect("head").1.to_string();
    (status, body)
}

/// The value of the unlabelled metric `name` at the `/metrics` of `addr`; `None` when absent.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A seed-form request; returns the reply's one object.
pub fn seed(addr: SocketAddr, op: &str, username: &str, password: &str) -> Value {
    let message = serde_json::json!([{"OP": op, "username": username, "password": password}]);
    let reply = exchange(addr, message.to_string().as_bytes());
    let parsed: Value = serde_json::from_str(&reply).expect("reply is JSON");
    let items = parsed.as_array().expect("seed reply is an array");
    assert_eq!(items.len(), 1, "{reply}");
    items[0].clone()
}

/// The code of a seed-form request's reply.
pub fn code(addr: SocketAddr, op: &str, username: &str, password: &str) -> u64 {
    seed(addr, op, username, password)["code"]
        .as_u64()
        .expect("numeric code")
}

/// A stream-form connection: one JSON object per line each way.
pub struct StreamClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl StreamClient {
    pub fn new(addr: SocketAddr) -> Self {
        let stream = connect(addr);
        StreamClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// The next reply line, parsed.
    pub fn recv(&mut self) -> Value {
        let line = self.recv_raw();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// The next reply line, as sent (newline included).
    pub fn recv_raw(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("reply line");
        assert!(line.ends_with('\n'), "no full line before close: {line:?}");
        line
    }

    /// Whether no reply has arrived yet (looks without waiting).
    pub fn nothing_yet(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_ref();
        stream.set_nonblocking(true).expect("nonblocking");
        let empty =
            matches!(stream.peek(&mut [0u8]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        stream.set_nonblocking(false).expect("blocking");
        empty
    }

    /// Whether the server has closed the connection (reads end of stream).
    pub fn closed(&mut self) -> bool {
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest).is_ok() && rest.is_empty()
    }
}

/// A real account-db process, so it can be killed with SIGKILL or stopped with SIGSTOP.
pub struct DbProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The secret it created in its data directory.
    pub secret: Secret,
}

impl DbProcess {
    /// Start `account-db --data DIR --listen LISTEN` and wait until it says where it listens.
    pub fn start(dir: &std::path::Path, listen: &str) -> DbProcess {
        DbProcess::start_with(dir, listen, &[])
    }

    /// [`DbProcess::start`] with more flags (`--store URL`, say). Its secret is
    /// DIR/account-db.secret, so account-dbs started on one DIR share it.
    pub fn start_with(dir: &std::path::Path, listen: &str, flags: &[&str]) -> DbProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_account-db"))
            .args(["--listen", listen, "--data"])
            .arg(dir)
            .args(flags)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn account-db");
        let addr = listening_addr(child.stderr.take().expect("stderr"));
        let secret = Secret::read(&dir.join("account-db.secret")).expect("account-db.secret");
        DbProcess {
            child,
            addr,
            secret,
        }
    }

    /// The test login-server configuration for this account-db.
    pub fn config(&self) -> LoginServerConfig {
        config(self.addr, &self.secret)
    }

    /// How the test login-server reaches this account-db.
    pub fn client_config(&self) -> ClientConfig {
        self.config()
            .db_client(vec![self.addr.into()], self.secret.clone())
            .expect("no TLS files to load")
    }

    /// Send a signal by name (KILL, STOP, CONT, TERM, INT).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    pub fn kill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for DbProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send a signal by name (KILL, STOP, CONT, TERM, INT) to a process, through kill(1). A STOP
/// returns once the process is stopped: kill(1) returns when the signal is sent, and on a busy
/// machine the process may run on for a moment and answer one more request.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
    if name == "STOP" {
        let stopped = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            state.is_some_and(|rest| rest.starts_with('T'))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stopped() {
            assert!(std::time::Instant::now() < deadline, "{pid} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Run `login-server gen-token-key PATH`: the kid it printed.
pub fn gen_token_key(path: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_login-server"))
        .arg("gen-token-key")
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.trim().strip_prefix("kid ").unwrap().to_string()
}

/// The login-server binary on 127.0.0.1:0 with `args`, its log piped, ready to spawn.
pub fn login_server_command<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_login-server"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    command
}

/// Spawn `command` (from [`login_server_command`], with `--log-format json`) and read its log
/// until it says where it listens: the child, that address, and the rest of its log.
/// Spawn `command` (from [`login_server_command`]) with JSON logs: the child, the address it
/// listens on, its metrics address (with `--metrics-listen`), and the log lines after that.
pub fn spawn_json_logging(
    mut command: Command,
) -> (
    Child,
    SocketAddr,
    Option<SocketAddr>,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = command
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn login-server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (addr, metrics) = loop {
        let line = lines.next().expect("a log line").expect("read log");
        let event: Value = serde_json::from_str(&line).expect("JSON log line");
        let fields = &event["fields"];
        if fields["message"] == "login-server listening" {
            let addr = fields["addr"].as_str().expect("addr");
            let metrics = fields["metrics"]
                .as_str()
                .map(|m| m.parse().expect("an address"));
            break (addr.parse().expect("an address"), metrics);
        }
    };
    (child, addr, metrics, lines)
}

/// Spawn `command` (from [`login_server_command`]) and wait for the address it listens on.
pub fn spawn_listening(mut command: Command) -> (Child, SocketAddr) {
    let mut child = command.spawn().expect("spawn login-server");
    let addr = listening_addr(child.stderr.take().expect("stderr"));
    (child, addr)
}

/// Read a server's log until its "listening" line, and take `addr=` from it. The rest of the
/// log is drained in the background so the server never blocks on a full pipe.
pub fn listening_addr(stderr: impl Read + Send + 'static) -> SocketAddr {
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read log");
        if line.contains("listening") {
            let addr = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
                .expect("addr= in the listening line");
            break addr.parse().expect("an address");
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    addr
}

/// A PostgreSQL database of its own for one test, dropped with it.
pub struct TestDatabase {
    admin: String,
    name: String,
    /// Its connection URL.
    pub url: String,
}

/// A fresh PostgreSQL database at `TEST_DATABASE_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`). Where no PostgreSQL answers: `None`, skipped
/// visibly, unless `REQUIRE_POSTGRES=1` (as CI sets): see [`missing`].
pub fn postgres_database() -> Option<TestDatabase> {
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut client = match postgres::Client::connect(&admin, postgres::NoTls) {
        Ok(client) => client,
        Err(e) => return missing("REQUIRE_POSTGRES", format!("no PostgreSQL at {admin}: {e}")),
    };
    let name = format!("login_test_{}", login_server::auth::secret::random_token());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let url = format!("{base}/{name}");
    Some(TestDatabase { admin, name, url })
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// One stream-form request with the player's address `ip`: its reply code.
pub fn code_from(addr: SocketAddr, op: &str, user: &str, password: &str, ip: &str) -> u64 {
    let line = serde_json::json!({"OP": op, "username": user, "password": password, "ip": ip});
    let mut client = StreamClient::new(addr);
    client.send(format!("{line}\n").as_bytes());
    client.recv()["code"].as_u64().unwrap_or(0)
}

/// Throttling holds across the login-servers at `a` and `b` (default policy: 5 failures lock,
/// 5 registrations per address): counts spread over both lock on both, and a locked account
/// stays open to an address it logged in from through either.
pub fn throttling_holds_across(a: SocketAddr, b: SocketAddr) {
    assert_eq!(
        code_from(a, "register", "Shared", "password1", "192.0.2.1"),
        4
    );
    assert_eq!(
        code_from(b, "login", "shared", "password1", "198.51.100.1"),
        3
    );
    // Five failures, alternating, each from an address of its own.
    for i in 0..5 {
        let via = if i % 2 == 0 { a } else { b };
        let ip = format!("203.0.113.{i}");
        assert_eq!(
            code_from(via, "login", "SHARED", "wrong-pass", &ip),
            2,
            "failure {i}"
        );
    }
    for via in [a, b] {
        assert_eq!(
            code_from(via, "login", "shared", "password1", "203.0.113.99"),
            8
        );
    }
    // Open to the familiar address through the other login-server (which ends the lock).
    assert_eq!(
        code_from(a, "login", "shared", "password1", "198.51.100.1"),
        3
    );
    // Registrations from one address, spread over both, are limited as one.
    for i in 0..4 {
        let via = if i % 2 == 0 { a } else { b };
        let name = format!("newcomer{i}");
        assert_eq!(
            code_from(via, "register", &name, "password1", "192.0.2.1"),
            4,
            "{name}"
        );
    }
    assert_eq!(
        code_from(b, "register", "one-too-many", "password1", "192.0.2.1"),
        8
    );
    assert_eq!(
        code_from(a, "register", "one-too-many", "password1", "192.0.2.1"),
        8
    );
}

/// Run account-db on `dir` with `flags` until it exits (it must, within the patience: it is
/// expected to refuse to start); its status and log.
pub fn account_db_start_failure(
    dir: &std::path::Path,
    flags: &[&str],
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_account-db"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .args(flags)
        .env_remove("ACCOUNT_DB_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn account-db");
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for account-db") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("account-db started where it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    (status, log)
}

/// What a test does when an outside tool it needs (PostgreSQL, root, a second cluster) is not
/// there: with the environment variable `require` set to 1 (as CI sets them) it fails; else it
/// says `SKIPPED` on the process's own stderr, past libtest's capture, so the run shows it, and
/// the caller returns `None`.
pub fn missing<T>(require: &str, why: impl std::fmt::Display) -> Option<T> {
    assert!(
        std::env::var(require).as_deref() != Ok("1"),
        "{require}=1 but {why}"
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (set {require}=1 to make this a failure)"
    );
    None
}

/// An OS user other than the tests', with a directory of its own (owned by it, mode 0700), to
/// run the servers as a service's user would. Needs root; see [`service_user`].
pub struct ServiceUser {
    /// Its name: `TEST_SERVICE_USER`, default `nobody`.
    pub name: String,
    /// Its directory, removed with it.
    pub dir: TempDir,
}

/// The [`ServiceUser`], or `None` (skipped visibly, or a failure with
/// `REQUIRE_SERVICE_USER=1`) where the tests do not run as root or `runuser` is missing.
pub fn service_user() -> Option<ServiceUser> {
    use std::os::unix::fs::PermissionsExt;
    let name = std::env::var("TEST_SERVICE_USER").unwrap_or_else(|_| "nobody".into());
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, &name]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let me = Command::new("id").arg("-u").output().ok();
    let root = me.is_some_and(|out| out.stdout.trim_ascii() == b"0");
    let runuser = std::path::Path::new("/usr/sbin/runuser").exists()
        || std::path::Path::new("/sbin/runuser").exists();
    let (Some(uid), Some(gid), true, true) = (id("-u"), id("-g"), root, runuser) else {
        return missing(
            "REQUIRE_SERVICE_USER",
            format!("running as user {name} needs root, runuser and the user"),
        );
    };
    let dir = tempfile::tempdir().expect("a directory");
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    Some(ServiceUser { name, dir })
}

impl ServiceUser {
    /// `program` run as this user (`runuser -u USER --`), in its directory. A program the user
    /// cannot reach (a parent directory it may not search) is copied into its directory first.
    pub fn command(&self, program: &str) -> Command {
        let reachable = Command::new("runuser")
            .args(["-u", &self.name, "--", "test", "-x", program])
            .status()
            .is_ok_and(|s| s.success());
        let program = if reachable {
            std::path::PathBuf::from(program)
        } else {
            let name = std::path::Path::new(program).file_name().expect("a file");
            let copy = self.dir.path().join(name);
            if !copy.exists() {
                std::fs::copy(program, &copy).expect("copy the program");
            }
            copy
        };
        let mut command = Command::new("runuser");
        command
            .args(["-u", &self.name, "--"])
            .arg(program)
            .current_dir(self.dir.path());
        command
    }

    /// A directory for this user (owned by it, mode 0700) inside its own.
    pub fn subdir(&self, name: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        let status = Command::new("runuser")
            .args(["-u", &self.name, "--", "mkdir", "-m", "0700"])
            .arg(&path)
            .status()
            .expect("run mkdir");
        assert!(
            status.success(),
            "mkdir {} as {}",
            path.display(),
            self.name
        );
        path
    }
}

/// A TCP relay to `target` that the test can break (every connection cut, new ones closed at
/// once) and heal.
pub struct Relay {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    broken: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    pub fn start(target: std::net::SocketAddr) -> Relay {
        Relay::start_on("127.0.0.1:0".parse().unwrap(), target)
    }

    /// A relay on `addr` (a port picked earlier, say) to `target`.
    pub fn start_on(addr: std::net::SocketAddr, target: std::net::SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (is_broken, conns) = (broken.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if is_broken.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                conns.lock().unwrap().extend([client, server]);
            }
        });
        Relay { addr, broken, open }
    }

    pub fn cut(&self) {
        self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A free port on loopback, for a server started (or restarted) where others look for it.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("its address")
}

/// A server process whose log (stderr) is kept, line by line, as it comes. Dropping it stops
/// it with SIGTERM, as systemd does (runuser passes that on; SIGKILL would end runuser alone).
pub struct Logged {
    pub child: Child,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Spawn `command` with its stderr piped, and keep what it logs.
    pub fn spawn(mut command: Command) -> Logged {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Logged { child, log }
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Wait (at most [`PATIENCE`]) for a line that contains `text`: that line. Fails, with the
    /// log, if the process exits first.
    pub fn wait_for(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(text)) {
                return line;
            }
            let exited = self.child.try_wait().expect("wait").is_some();
            std::thread::sleep(Duration::from_millis(20));
            assert!(
                !exited && std::time::Instant::now() < deadline,
                "no {text:?} in the log (exited: {exited}): {:#?}",
                self.lines()
            );
        }
    }

    /// The value of `name=` in a log line that contains `text`, waiting for it.
    pub fn field(&mut self, text: &str, name: &str) -> String {
        let line = self.wait_for(text);
        let prefix = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name}= in {line}"))
            .to_string()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), "TERM");
        }
        let _ = self.child.wait();
    }
}
