//! PostgreSQL clusters of a test's own, run as the `postgres` OS user (PostgreSQL refuses
//! root) on free loopback ports: a primary, streaming standbys made with `pg_basebackup`, and
//! the ways they stop (fast, immediate, kill -9) and take over (`pg_ctl promote`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where Debian puts PostgreSQL 15's server programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// One PostgreSQL server: its data directory and port, in a directory of its own (removed
/// with it, the server stopped first).
pub struct OwnPostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

/// The `postgres` OS user's uid and gid; `None` (skipped visibly, or a failure with
/// `REQUIRE_POSTGRES=1`) where the tests cannot run a server as it.
fn postgres_user() -> Option<(u32, u32)> {
    let missing = |why: String| super::missing::<(u32, u32)>("REQUIRE_POSTGRES", why);
    if !Path::new(&format!("{PG_BIN}/initdb")).exists() {
        return missing(format!("no {PG_BIN}/initdb"));
    }
    // SAFETY: geteuid reads the process's effective uid and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return missing("not root: cannot run PostgreSQL as the postgres user".into());
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => missing("no postgres OS user".into()),
    }
}

/// Run PostgreSQL's `program` as the `postgres` user; panics with its output if it fails.
pub fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/{program}"))
        .args(args)
        .output()
        .expect("runuser");
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    out
}

impl OwnPostgres {
    /// A new primary: `initdb`, `settings` appended to postgresql.conf (after the port,
    /// loopback only, the socket in its directory, `fsync = off`), `hba` as pg_hba.conf, and
    /// `files` (name in the data directory, source, mode) copied in, all owned by `postgres`.
    /// Not started.
    pub fn init(settings: &str, hba: &str, files: &[(&str, &Path, u32)]) -> Option<OwnPostgres> {
        let (uid, gid) = postgres_user()?;
        let dir = tempfile::tempdir().expect("a directory");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let own = OwnPostgres {
            port: super::free_port().port(),
            dir,
        };
        let data = own.data();
        as_postgres(
            "initdb",
            &["-D", path(&data), "-U", "postgres", "-A", "trust"],
        );
        for (name, from, mode) in files {
            let to = data.join(name);
            std::fs::copy(from, &to).expect("copy into the data directory");
            std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        own.configure(settings);
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        Some(own)
    }

    /// A streaming standby of `primary` (which allows replication connections from loopback
    /// without a password): `pg_basebackup -R`, on a port of its own, started.
    pub fn standby_of(primary: &OwnPostgres) -> OwnPostgres {
        let (uid, gid) = postgres_user().expect("a postgres user, as for the primary");
        let dir = tempfile::tempdir().expect("a directory");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let own = OwnPostgres {
            port: super::free_port().port(),
            dir,
        };
        let port = primary.port.to_string();
        as_postgres(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path(&own.data()),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
        );
        own.configure("");
        own.start();
        own
    }

    /// Append the port, the socket directory, and `settings` to postgresql.conf (a later line
    /// wins).
    fn configure(&self, settings: &str) {
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .expect("postgresql.conf");
        writeln!(
            conf,
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\n{settings}",
            self.port,
            self.dir.path().display()
        )
        .expect("write postgresql.conf");
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start it and wait until it accepts connections.
    pub fn start(&self) {
        let log = self.dir.path().join("log");
        as_postgres(
            "pg_ctl",
            &["-D", path(&self.data()), "-l", path(&log), "-w", "start"],
        );
    }

    /// Stop it with `mode` (`fast`, `immediate`).
    pub fn stop(&self, mode: &str) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-D", path(&self.data()), "-m", mode, "stop"])
            .output();
    }

    /// Kill its postmaster with SIGKILL (its backends end when they notice).
    pub fn kill9(&self) {
        let pid =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let pid: i32 = pid
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .expect("a pid");
        // SAFETY: kill sends a signal to a process this test started; it touches no memory.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill -9 {pid}"
        );
    }

    /// Promote this standby and wait until it accepts writes.
    pub fn promote(&self) {
        as_postgres("pg_ctl", &["-D", path(&self.data()), "-w", "promote"]);
    }

    /// An administrator's connection over its socket, to database `dbname`.
    pub fn admin(&self, dbname: &str) -> postgres::Client {
        let socket = format!(
            "host={} port={} user=postgres dbname={dbname} connect_timeout=5",
            self.dir.path().display(),
            self.port
        );
        postgres::Client::connect(&socket, postgres::NoTls).expect("connect over the socket")
    }

    /// Reload its configuration after `settings` were appended.
    pub fn reconfigure(&self, settings: &str) {
        self.configure(settings);
        as_postgres("pg_ctl", &["-D", path(&self.data()), "reload"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            self.stop("immediate");
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
