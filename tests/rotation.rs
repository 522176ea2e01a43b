//! The secret rotation of docs/operations.md, followed as written against real account-db
//! processes (as the tests' user, and as a service user), then a plain restart.

mod common;

use common::{code, eventually, free_port, Logged, ServiceUser, PATIENCE};
use login_server::auth::secret::Secret;
use login_server::LoginServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ACCOUNT_DB: &str = env!("CARGO_BIN_EXE_account-db");

/// account-db run as the tests' user, or as a service user.
struct Runner<'a> {
    user: Option<&'a ServiceUser>,
    data: PathBuf,
    listen: SocketAddr,
}

/// A running account-db process, its log, and where it serves metrics.
struct Running {
    process: Logged,
    metrics: SocketAddr,
}

impl Runner<'_> {
    fn command(&self) -> Command {
        let mut command = match self.user {
            Some(user) => user.command(ACCOUNT_DB),
            None => Command::new(ACCOUNT_DB),
        };
        command.arg("--data").arg(&self.data);
        command.env_remove("ACCOUNT_DB_SECRET");
        command
    }

    /// `account-db --data DATA ARGS`, to its end.
    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run account-db")
    }

    /// [`Runner::run`] as the tests' user (root, where there is a service user), as an operator
    /// who forgets `sudo -u` would.
    fn run_as_operator(&self, args: &[&str]) -> Output {
        let mut command = Command::new(ACCOUNT_DB);
        command.arg("--data").arg(&self.data).args(args);
        command
            .env_remove("ACCOUNT_DB_SECRET")
            .output()
            .expect("run")
    }

    /// account-db serving, as the unit starts it: only --listen, --data and metrics.
    fn serve(&self) -> Running {
        let mut command = self.command();
        command
            .args(["--listen", &self.listen.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        let mut process = Logged::spawn(command);
        let metrics = process.field("serving /metrics", "metrics");
        Running {
            process,
            metrics: metrics.parse().expect("an address"),
        }
    }
}

fn login_server(db: SocketAddr, secret: &Secret) -> LoginServer {
    LoginServer::spawn(common::config(db, secret)).expect("start login-server")
}

/// The value of the metric line that begins with `prefix`, if there is one.
fn metric(addr: SocketAddr, prefix: &str) -> Option<f64> {
    let (_, body) = common::http_get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// docs/operations.md's rotation: stage, move the login-servers, finish; then a plain restart.
fn rotate(user: Option<&ServiceUser>, data: PathBuf) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let runner = Runner {
        user,
        data: data.clone(),
        listen: free_port(),
    };
    let primary = data.join("account-db.secret");
    let staged = data.join("account-db.secret.next");
    let db = runner.serve();
    let old = Secret::read(&primary).expect("the secret account-db wrote");
    let before = login_server(runner.listen, &old);
    assert_eq!(
        code(before.local_addr(), "register", "Rotor", "password1"),
        4
    );
    assert_eq!(code(before.local_addr(), "login", "rotor", "password1"), 3);

    // 1. Stage: a private file owned like the data directory (run as root, the service user's
    // still), accepted within a second.
    let staging = runner.run_as_operator(&["rotate-secret", "stage"]);
    assert!(staging.status.success(), "{staging:?}");
    let next = Secret::read(&staged).expect("the staged secret");
    assert!(
        stdout(&staging).contains(&next.fingerprint()),
        "{staging:?}"
    );
    let (file, dir) = (
        std::fs::metadata(&staged).unwrap(),
        std::fs::metadata(&data).unwrap(),
    );
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    assert_eq!((file.uid(), file.gid()), (dir.uid(), dir.gid()));
    let again = runner.run(&["rotate-secret", "stage"]);
    assert!(!again.status.success(), "a second stage is refused");
    assert!(stderr(&again).contains("already staged"), "{again:?}");
    assert_eq!(Secret::read(&staged).unwrap(), next, "and changes nothing");

    // 2. The login-servers move to the next secret; the old one still serves meanwhile.
    let after = login_server(runner.listen, &next);
    eventually(PATIENCE, "the staged secret is accepted", || {
        code(after.local_addr(), "login", "rotor", "password1") == 3
    });
    assert_eq!(code(before.local_addr(), "login", "rotor", "password1"), 3);
    let counted = |secret: &Secret| {
        let label = format!(
            "accountdb_auth_total{{secret=\"{}\"}}",
            secret.fingerprint()
        );
        metric(db.metrics, &label).unwrap_or(0.0)
    };
    assert!(counted(&old) >= 1.0 && counted(&next) >= 1.0);
    let open = format!("accountdb_connections{{secret=\"{}\"}}", old.fingerprint());
    assert!(metric(db.metrics, &open).is_some_and(|n| n >= 1.0));
    let warned = || {
        db.process
            .lines()
            .iter()
            .any(|l| l.contains("rotation not finished") && l.contains(&next.fingerprint()))
    };
    assert!(warned(), "{:?}", db.process.lines());

    // 3. Finish: only the next secret, at once and for the connections already made.
    let finishing = runner.run(&["rotate-secret", "finish"]);
    assert!(finishing.status.success(), "{finishing:?}");
    assert!(!staged.exists());
    assert_eq!(Secret::read(&primary).unwrap(), next);
    eventually(PATIENCE, "the old secret is refused", || {
        code(before.local_addr(), "login", "rotor", "password1") == 7
    });
    assert_eq!(
        metric(db.metrics, &open),
        None,
        "the old secret is not listed"
    );
    let open = format!("accountdb_connections{{secret=\"{}\"}}", next.fingerprint());
    assert!(metric(db.metrics, &open).is_some_and(|n| n >= 1.0));
    let nothing = runner.run(&["rotate-secret", "finish"]);
    assert!(!nothing.status.success(), "{nothing:?}");
    assert!(stderr(&nothing).contains("no rotation is staged"));

    // 4. A plain restart with the defaults (a reboot) keeps the new secret.
    drop(db);
    let _db = runner.serve();
    eventually(PATIENCE, "logins after a plain restart", || {
        code(after.local_addr(), "login", "rotor", "password1") == 3
    });
    assert_eq!(code(before.local_addr(), "login", "rotor", "password1"), 7);
}

#[test]
fn the_documented_rotation_survives_a_plain_restart() {
    let dir = tempfile::tempdir().unwrap();
    rotate(None, dir.path().join("data"));
}

#[test]
fn the_documented_rotation_works_as_the_service_user() {
    let Some(user) = common::service_user() else {
        return;
    };
    let data = user.subdir("data");
    rotate(Some(&user), data);
}

#[test]
fn stage_from_a_file_stages_that_secret_and_refuses_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner {
        user: None,
        data: dir.path().to_path_buf(),
        listen: free_port(),
    };
    // Nothing to rotate where account-db never ran: a typo in --data says so.
    let typo = runner.run(&["rotate-secret", "stage"]);
    assert!(!typo.status.success());
    assert!(stderr(&typo).contains("no secret file"), "{typo:?}");
    assert!(!dir.path().join("account-db.secret.next").exists());
    drop(runner.serve());
    let elsewhere = dir.path().join("from-another-host.secret");
    let secret = Secret::create(&elsewhere).unwrap();
    let from = elsewhere.to_str().unwrap();
    let staging = runner.run(&["rotate-secret", "stage", "--from", from]);
    assert!(staging.status.success(), "{staging:?}");
    let staged = Path::new(dir.path()).join("account-db.secret.next");
    assert_eq!(Secret::read(&staged).unwrap(), secret);
}

#[test]
fn a_secret_given_in_memory_outlives_the_reloads() {
    // An embedded account-db's secret is in no file: the once-a-second re-read must keep it
    // (it once emptied the accepted set, and every login got 7 after a second).
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::generate();
    let db = common::start_db(dir.path(), &secret);
    std::thread::sleep(Duration::from_millis(2500));
    let conn =
        login_server::accountdb::client::DbConn::connect(db.local_addr(), PATIENCE, &secret, None);
    assert!(conn.is_ok());
}

#[test]
fn staging_as_root_changes_the_owner_of_no_file_but_its_own() {
    // stage linked the file into the service user's directory, then changed the owner of
    // whatever the path named by then: the service user, racing it, swapped in a symlink to
    // any root file and got it (seen in 2 s of tries).
    let Some(user) = common::service_user() else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let dir = user.subdir("data");
    let victim = user.dir.path().join("victim");
    std::fs::write(&victim, "root's").unwrap();
    std::os::unix::fs::chown(&victim, Some(0), Some(0)).unwrap();
    let staged = dir.join("account-db.secret.next");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (staged, victim, stop) = (staged.clone(), victim.clone(), stop.clone());
        std::thread::spawn(move || {
            let link = staged.with_extension("swap");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::fs::symlink_metadata(&staged).is_ok_and(|m| m.is_file()) {
                    let _ = std::fs::remove_file(&link);
                    let _ = std::os::unix::fs::symlink(&victim, &link);
                    let _ = std::fs::rename(&link, &staged);
                }
            }
        })
    };
    for _ in 0..2000 {
        let _ = Secret::generate().write_new(&staged);
        let _ = std::fs::remove_file(&staged);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    racer.join().unwrap();
    let owner = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (owner.uid(), owner.gid()),
        (0, 0),
        "the victim changed hands"
    );
}
