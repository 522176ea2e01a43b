//! TLS between login-server and account-db, attacked from the path between them: a relay over
//! loopback that records, rewrites or corrupts what passes; certificates that must not be
//! trusted; plaintext and certificate-less clients; replayed proofs; silent peers.

mod common;

use common::{code, StreamClient, PATIENCE};
use login_server::accountdb::client::{DbConn, DbTls};
use login_server::accountdb::store::pg_link;
use login_server::auth::password::{HashParams, Hasher, Memory};
use login_server::auth::secret::Secret;
use login_server::tls::generate::{self, Authority};
use login_server::tls::{ClientFiles, Material, Stream};
use login_server::{AccountDb, LoginServer, LoginServerConfig};
use parking_lot::Mutex;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CA, and account-db's certificate for `localhost` and 127.0.0.1, in a directory.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signed them.
    ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("test CA").unwrap();
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let files = vec![("ca.pem", ca.cert_pem(), false)];
        generate::write_with(
            &ca,
            files,
            dir.path(),
            &names,
            generate::Usage::Server,
            true,
            30,
        )
        .unwrap();
        Pki { dir, ca }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// account-db's TLS flags, and `--tls-client-ca` with `client_ca`.
    fn serve(&self, config: &mut login_server::AccountDbConfig, client_ca: bool) {
        config.tls_cert = Some(self.path("server.pem"));
        config.tls_key = Some(self.path("server.key"));
        config.tls_client_ca = client_ca.then(|| self.path("ca.pem"));
    }

    /// login-server's TLS flags, with its client certificate when `identity`.
    fn trust(&self, config: &mut LoginServerConfig, identity: bool) {
        config.db_tls_ca = Some(self.path("ca.pem"));
        if identity {
            config.db_tls_cert = Some(self.path("client.pem"));
            config.db_tls_key = Some(self.path("client.key"));
        }
    }

    /// What a client connection checks: this CA, `name`, and its certificate when `identity`.
    fn client(&self, name: &str, identity: bool) -> DbTls {
        let files = ClientFiles {
            ca: self.path("ca.pem"),
            identity: identity.then(|| (self.path("client.pem"), self.path("client.key"))),
        };
        DbTls {
            material: Arc::new(Material::load(files).unwrap()),
            name: login_server::tls::server_name(name).unwrap(),
        }
    }
}

/// An account-db serving TLS with a fresh CA's certificate, in this process (`client_ca`:
/// `--tls-client-ca` too), `tweak` applied after the TLS flags: its directory, the CA, the
/// secret and the server, in the order that stops the server first when they are dropped as
/// `let` bindings.
fn tls_db(
    client_ca: bool,
    tweak: impl FnOnce(&mut login_server::AccountDbConfig),
) -> (tempfile::TempDir, Pki, Secret, AccountDb) {
    let (pki, data, secret) = (Pki::new(), tempfile::tempdir().unwrap(), Secret::generate());
    let db = start_db(data.path(), &secret, |c| {
        pki.serve(c, client_ca);
        tweak(c);
    });
    (data, pki, secret, db)
}

/// An account-db in this process, TLS as `tweak` sets it.
fn start_db(
    dir: &Path,
    secret: &Secret,
    tweak: impl FnOnce(&mut login_server::AccountDbConfig),
) -> AccountDb {
    common::start_db_with(dir, secret, tweak)
}

/// A login-server reaching `db` with `secret`, as `tweak` sets it.
fn start_server(
    db: SocketAddr,
    secret: &Secret,
    tweak: impl FnOnce(&mut LoginServerConfig),
) -> LoginServer {
    let mut config = common::config(db, secret);
    config.db_timeout = Duration::from_secs(1);
    tweak(&mut config);
    LoginServer::spawn(config).expect("start login-server")
}

/// What a relay does to the bytes account-db sends.
#[derive(Clone)]
enum Tamper {
    /// Passes them on as they are.
    Nothing,
    /// Replaces every `"hash":"..."` value it can read with this one (same length or not).
    Hash(String),
    /// Flips the last byte of every TLS application-data record account-db sends once the
    /// client has sent three (its Finished, its proof, a request): the replies.
    Replies,
}

/// A TCP relay between login-server and account-db on loopback that records every byte each
/// way, and may rewrite what account-db sends.
struct Relay {
    addr: SocketAddr,
    /// Client to account-db, every connection's bytes in the order they passed.
    up: Arc<Mutex<Vec<u8>>>,
    /// Account-db to client.
    down: Arc<Mutex<Vec<u8>>>,
    /// Connections the client closed.
    closed_by_client: Arc<AtomicUsize>,
}

impl Relay {
    fn start(target: SocketAddr, tamper: Tamper) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(Mutex::new(Vec::new()));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (u, d, c) = (up.clone(), down.clone(), closed_by_client.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let client_records = Arc::new(AtomicUsize::new(0));
                let (u, d, c, tamper) = (u.clone(), d.clone(), c.clone(), tamper.clone());
                let (from_client, to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counted = client_records.clone();
                std::thread::spawn(move || {
                    pump_up(from_client, to_server, &u, &counted);
                    c.fetch_add(1, Ordering::SeqCst);
                });
                std::thread::spawn(move || pump_down(server, client, &d, &tamper, &client_records));
            }
        });
        Relay {
            addr,
            up,
            down,
            closed_by_client,
        }
    }

    /// Everything both ways, as text where it is text.
    fn seen(&self) -> String {
        let mut all = self.up.lock().clone();
        all.extend_from_slice(&self.down.lock());
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Client to account-db: recorded, passed on, and its TLS application-data records counted.
fn pump_up(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Vec<u8>>, records: &AtomicUsize) {
    let mut parser = Records::default();
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.lock().extend_from_slice(&buf[..n]);
        for _ in parser
            .feed(&buf[..n])
            .into_iter()
            .filter(|&(kind, _)| kind == 0x17)
        {
            records.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Account-db to client: recorded, rewritten as `tamper` says, passed on.
fn pump_down(
    mut from: TcpStream,
    mut to: TcpStream,
    seen: &Mutex<Vec<u8>>,
    tamper: &Tamper,
    client_records: &AtomicUsize,
) {
    let mut parser = Records::default();
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.lock().extend_from_slice(&buf[..n]);
        let mut out = buf[..n].to_vec();
        match tamper {
            Tamper::Nothing => {}
            Tamper::Hash(hash) => out = replace_hashes(&out, hash),
            Tamper::Replies => {
                // Records ending in this chunk: flip the last byte of each reply record.
                let start = parser.consumed;
                for (kind, end) in parser.feed(&buf[..n]) {
                    if kind == 0x17 && client_records.load(Ordering::SeqCst) >= 3 && end > start {
                        out[end - start - 1] ^= 0x01;
                    }
                }
            }
        }
        if to.write_all(&out).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Every `"hash":"..."` value in `bytes` replaced with `hash`.
fn replace_hashes(bytes: &[u8], hash: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    if !text.contains("\"hash\":\"") {
        return bytes.to_vec();
    }
    let mut out = String::new();
    let mut rest = &*text;
    while let Some(at) = rest.find("\"hash\":\"") {
        let (before, after) = rest.split_at(at + 8);
        out.push_str(before);
        out.push_str(hash);
        rest = &after[after.find('"').unwrap_or(after.len())..];
    }
    out.push_str(rest);
    out.into_bytes()
}

/// TLS records in a byte stream: their type and where they end, counted from the stream's
/// start.
#[derive(Default)]
struct Records {
    /// Bytes fed so far.
    consumed: usize,
    /// Where the record being read ends; 0 while its header is not whole.
    header: Vec<u8>,
    /// Bytes of the current record's body still to come.
    left: usize,
    /// The current record's type.
    kind: u8,
}

impl Records {
    /// Feed `bytes`; the records that ended in them.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut ended = Vec::new();
        for &b in bytes {
            self.consumed += 1;
            if self.left == 0 {
                self.header.push(b);
                if self.header.len() == 5 {
                    self.kind = self.header[0];
                    self.left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                    self.header.clear();
                    if self.left == 0 {
                        ended.push((self.kind, self.consumed));
                    }
                }
            } else {
                self.left -= 1;
                if self.left == 0 {
                    ended.push((self.kind, self.consumed));
                }
            }
        }
        ended
    }
}

fn login(addr: SocketAddr, user: &str, password: &str) -> serde_json::Value {
    let mut client = StreamClient::new(addr);
    let line = serde_json::json!({"OP": "login", "username": user, "password": password});
    client.send(format!("{line}\n").as_bytes());
    client.recv()
}

fn with_token(addr: SocketAddr, op: &str, token: &str) -> serde_json::Value {
    let mut client = StreamClient::new(addr);
    let line = serde_json::json!({"OP": op, "token": token});
    client.send(format!("{line}\n").as_bytes());
    client.recv()
}

#[test]
fn an_on_path_relay_sees_no_name_hash_sid_or_token() {
    let (_data, pki, secret, db) = tls_db(false, |_| {});
    let relay = Relay::start(db.local_addr(), Tamper::Nothing);
    let server = start_server(relay.addr, &secret, |c| pki.trust(c, false));
    let name = "unmistakable-player-name";
    assert_eq!(code(server.local_addr(), "register", name, "password1"), 4);
    let reply = login(server.local_addr(), name, "password1");
    assert_eq!(reply["code"], 3, "{reply}");
    let token = reply["token"].as_str().unwrap().to_string();
    assert_eq!(with_token(server.local_addr(), "verify", &token)["code"], 9);
    assert_eq!(
        with_token(server.local_addr(), "logout", &token)["code"],
        11
    );
    let seen = relay.seen();
    assert!(
        seen.len() > 1000,
        "the relay saw the traffic: {} bytes",
        seen.len()
    );
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    let sid = claims["sid"].as_str().unwrap();
    for secret_thing in [name, "argon2", sid, &token[..40], "\"op\"", "status"] {
        assert!(
            !seen.contains(secret_thing),
            "the relay read {secret_thing:?}"
        );
    }
}

/// The attack of the issue: a relay replaces the hash in a `login` reply with one of the
/// attacker's password. On a plaintext link it logs the attacker in as the victim; over TLS
/// the relay cannot find the hash, and the attacker's password is wrong.
#[test]
fn a_relay_that_rewrites_a_login_reply_logs_nobody_in() {
    let hasher = Hasher::new(HashParams::CHEAPEST).unwrap();
    let forged = hasher
        .hash("attacker-pass", &mut Memory::default())
        .unwrap();
    for tls in [false, true] {
        let (pki, data) = (Pki::new(), tempfile::tempdir().unwrap());
        let secret = Secret::generate();
        let db = start_db(data.path(), &secret, |c| {
            if tls {
                pki.serve(c, false)
            }
        });
        let relay = Relay::start(db.local_addr(), Tamper::Hash(forged.clone()));
        let server = start_server(relay.addr, &secret, |c| {
            if tls {
                pki.trust(c, false)
            }
        });
        assert_eq!(
            code(server.local_addr(), "register", "victim", "victim-pass"),
            4
        );
        let reply = login(server.local_addr(), "victim", "attacker-pass");
        if tls {
            assert_eq!(reply["code"], 2, "over TLS: {reply}");
        } else {
            // The relay's power on a plaintext link, which is what TLS takes away.
            assert_eq!(reply["code"], 3, "in plaintext the rewrite works: {reply}");
            assert_eq!(reply["username"], "victim");
        }
    }
}

#[test]
fn a_relay_that_corrupts_replies_gets_7_never_3() {
    let (_data, pki, secret, db) = tls_db(false, |_| {});
    // Registered directly: the relay corrupts every reply.
    let direct = start_server(db.local_addr(), &secret, |c| pki.trust(c, false));
    assert_eq!(
        code(direct.local_addr(), "register", "someone", "password1"),
        4
    );
    let relay = Relay::start(db.local_addr(), Tamper::Replies);
    let server = start_server(relay.addr, &secret, |c| pki.trust(c, false));
    for _ in 0..3 {
        let reply = login(server.local_addr(), "someone", "password1");
        assert_eq!(reply["code"], 7, "{reply}");
    }
    // Each corrupted connection was dropped by login-server.
    common::eventually(
        PATIENCE,
        "login-server closed the corrupted connections",
        || relay.closed_by_client.load(Ordering::SeqCst) >= 1,
    );
    assert!(!relay.seen().contains("someone"));
}

#[test]
fn certificates_that_must_not_be_trusted_are_refused_with_the_cause() {
    let pki = Pki::new();
    let secret = Secret::generate();
    let other_ca = Authority::new("someone else's CA").unwrap();
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let expired = pki_with(&pki, "expired", |ca| {
        ca.issue(&names, false, -time::Duration::days(30), 1)
            .unwrap()
    });
    let foreign = pki_with(&pki, "foreign", |_| {
        other_ca
            .issue(&names, false, -time::Duration::hours(1), 30)
            .unwrap()
    });
    let cases: [(&str, PathBuf, PathBuf, &str, &str); 3] = [
        (
            "another CA",
            foreign.0,
            foreign.1,
            "127.0.0.1",
            "not from a trusted CA",
        ),
        (
            "an expired certificate",
            expired.0,
            expired.1,
            "127.0.0.1",
            "expired",
        ),
        (
            "a wrong name",
            pki.path("server.pem"),
            pki.path("server.key"),
            "db.example.org",
            "not valid for the name",
        ),
    ];
    for (what, cert, key, name, cause) in cases {
        // account-db refuses to serve an expired certificate: a bare TLS server presents these.
        let db = BareTls::start(&cert, &key);
        let error = connect_tls(db.local_addr(), &secret, &pki, name, false)
            .err()
            .unwrap_or_else(|| panic!("{what}: trusted"))
            .to_string();
        assert!(error.contains(cause), "{what}: {error}");
        // A login-server refuses it as well: not ready, 7, and never a plaintext proof.
        let relay = Relay::start(db.local_addr(), Tamper::Nothing);
        let server = start_server(relay.addr, &secret, |c| {
            pki.trust(c, false);
            c.db_tls_name = Some(login_server::tls::server_name(name).unwrap());
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        });
        assert_eq!(
            code(server.local_addr(), "login", "anyone", "password1"),
            7,
            "{what}"
        );
        let metrics = server.metrics_addr().unwrap();
        assert_eq!(common::http_get(metrics, "/readyz").0, 503, "{what}");
        let seen = relay.seen();
        assert!(
            !seen.contains("\"op\":\"auth\"") && !seen.contains("greeting"),
            "{what}: plaintext passed"
        );
        drop(server);
    }
}

/// A TLS server presenting any certificate (none of account-db's checks), that completes each
/// handshake it can and closes: a peer for the client's checks.
struct BareTls(SocketAddr);

impl BareTls {
    fn start(cert: &Path, key: &Path) -> BareTls {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(2);
                let _ = login_server::tls::handshake(&mut conn, &mut tcp, deadline);
            }
        });
        BareTls(addr)
    }

    fn local_addr(&self) -> SocketAddr {
        self.0
    }
}

#[test]
fn account_db_refuses_to_serve_a_certificate_that_is_not_valid_now() {
    let pki = Pki::new();
    let names = ["localhost".to_string()];
    let expired = pki_with(&pki, "expired", |ca| {
        ca.issue(&names, false, -time::Duration::days(30), 1)
            .unwrap()
    });
    let data = tempfile::tempdir().unwrap();
    let mut config =
        login_server::AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), Secret::generate());
    config.data = data.path().to_path_buf();
    config.tls_cert = Some(expired.0);
    config.tls_key = Some(expired.1);
    let error = AccountDb::open(config).err().unwrap().to_string();
    assert!(error.contains("expired at"), "{error}");
}

/// `(cert, key)` files of what `issue` makes with `pki`'s CA, written into `pki`'s directory.
fn pki_with(
    pki: &Pki,
    stem: &str,
    issue: impl FnOnce(&Authority) -> generate::Issued,
) -> (PathBuf, PathBuf) {
    let issued = issue(&pki.ca);
    let (cert, key) = (
        pki.path(&format!("{stem}.pem")),
        pki.path(&format!("{stem}.key")),
    );
    std::fs::write(&cert, issued.cert).unwrap();
    login_server::auth::secret::create_private(&key, issued.key.as_bytes()).unwrap();
    (cert, key)
}

#[test]
fn a_plaintext_client_is_refused_by_a_tls_only_account_db_at_once() {
    let (_data, pki, secret, db) = tls_db(false, |_| {});
    let started = Instant::now();
    let error = DbConn::connect(db.local_addr(), PATIENCE, &secret, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("TLS required"), "{error}");
    let waited = started.elapsed();
    let sniff = login_server::accountdb::server::TLS_SNIFF;
    assert!(
        waited >= sniff && waited < sniff + Duration::from_millis(1500),
        "{waited:?}"
    );
    // A ClientHello that comes late (a lost first segment sent again) is still served.
    let tls = pki.client("localhost", false);
    let mut tcp = TcpStream::connect(db.local_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut conn = rustls::ClientConnection::new(tls.material.current(), tls.name.clone()).unwrap();
    login_server::tls::handshake(&mut conn, &mut tcp, Instant::now() + PATIENCE).unwrap();
    // With TLS it is served.
    assert!(connect_tls(db.local_addr(), &secret, &pki, "localhost", false).is_ok());
    // And with --tls-optional, the plaintext one too.
    let optional = start_db(tempfile::tempdir().unwrap().path(), &secret, |c| {
        pki.serve(c, false);
        c.tls_optional = true;
    });
    assert!(DbConn::connect(optional.local_addr(), PATIENCE, &secret, None).is_ok());
    assert!(connect_tls(optional.local_addr(), &secret, &pki, "localhost", false).is_ok());
}

#[test]
fn a_client_certificate_is_required_under_tls_client_ca() {
    let (_data, pki, secret, db) = tls_db(true, |_| {});
    let without = connect_tls(db.local_addr(), &secret, &pki, "localhost", false);
    assert!(without.is_err(), "served without a client certificate");
    assert!(connect_tls(db.local_addr(), &secret, &pki, "localhost", true).is_ok());
    // A login-server with its certificate is served end to end.
    let server = start_server(db.local_addr(), &secret, |c| pki.trust(c, true));
    assert_eq!(
        code(server.local_addr(), "register", "carded", "password1"),
        4
    );
    assert_eq!(code(server.local_addr(), "login", "carded", "password1"), 3);
}

/// A connection to account-db at `addr` proving `secret`, over TLS checked against `pki`'s CA
/// for `name` (presenting `pki`'s client certificate with `identity`).
fn connect_tls(
    addr: SocketAddr,
    secret: &Secret,
    pki: &Pki,
    name: &str,
    identity: bool,
) -> Result<DbConn, login_server::accountdb::client::DbError> {
    DbConn::connect(addr, PATIENCE, secret, Some(&pki.client(name, identity)))
}

/// A TLS connection to `addr` checked as `tls` says, its greeting read: the stream and nonce.
fn tls_greeted(addr: SocketAddr, tls: &DbTls) -> (BufReader<Stream>, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    let mut conn = rustls::ClientConnection::new(tls.material.current(), tls.name.clone()).unwrap();
    login_server::tls::handshake(&mut conn, &mut tcp, Instant::now() + PATIENCE).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(Stream::Client(Box::new(rustls::StreamOwned::new(
        conn, tcp,
    ))));
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let greeting: serde_json::Value = serde_json::from_str(&line).unwrap();
    (reader, greeting["nonce"].as_str().unwrap().to_string())
}

/// Send `proof` and read the answer.
fn prove(reader: &mut BufReader<Stream>, proof: &str) -> serde_json::Value {
    let line = serde_json::json!({"op": "auth", "proof": proof});
    let stream = reader.get_mut();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[test]
fn a_proof_made_for_another_connection_is_refused() {
    let (_data, pki, secret, db) = tls_db(false, |_| {});
    let tls = pki.client("localhost", false);
    let (other, _) = tls_greeted(db.local_addr(), &tls);
    let elsewhere = other.get_ref().binding().unwrap();
    let bound = |reader: &BufReader<Stream>| reader.get_ref().binding().unwrap();
    // The right nonce, bound to another TLS session (what a proof seen on one connection and
    // replayed on another amounts to), or bound to none (the plaintext form): refused.
    for binding in [Some(&elsewhere[..]), None] {
        let (mut reader, nonce) = tls_greeted(db.local_addr(), &tls);
        assert_ne!(bound(&reader), elsewhere);
        let answer = prove(&mut reader, &secret.proof(&nonce, binding));
        assert_eq!(answer["status"], "error", "{answer}");
        assert_eq!(answer["message"], "authentication failed");
    }
    // Bound to its own session: served.
    let (mut reader, nonce) = tls_greeted(db.local_addr(), &tls);
    let own = bound(&reader);
    assert_eq!(
        prove(&mut reader, &secret.proof(&nonce, Some(&own)))["status"],
        "ok"
    );
}

/// The soft limit of open files raised toward the hard one (CI starts at 1024).
fn raise_open_files(to: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < to {
            limit.rlim_cur = to.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[test]
fn silent_peers_hold_no_slot_and_a_login_server_still_gets_in() {
    raise_open_files(8192);
    let (_data, pki, secret, db) = tls_db(false, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    // 2,000 peers that open TCP and never send a ClientHello.
    let silent: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(db.local_addr()).unwrap())
        .collect();
    let started = Instant::now();
    let served = connect_tls(db.local_addr(), &secret, &pki, "localhost", false);
    assert!(served.is_ok(), "{:?}", served.err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Each silent peer is let go within the handshake deadline (5 s): told "TLS required", or
    // cut off at --max-handshakes.
    for mut peer in silent {
        peer.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut rest = Vec::new();
        let _ = peer.read_to_end(&mut rest);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Each counted once: told "TLS required", or cut off and then seen closed by its handler.
    let refused = || common::metric(db.metrics_addr().unwrap(), "accountdb_refused_total");
    common::eventually(PATIENCE, "every silent peer counted", || {
        refused() == Some(2000.0)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(refused(), Some(2000.0), "counted twice");
}

#[test]
fn openssl_s_client_negotiates_tls_1_3_and_verifies_the_chain() {
    let Ok(_) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        return common::missing::<()>("REQUIRE_OPENSSL", "no openssl command").unwrap_or(());
    };
    let (_data, pki, _, db) = tls_db(false, |_| {});
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(db.local_addr().to_string())
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .args(["-verify_ip", "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("Protocol version: TLSv1.3"), "{said}");
    assert!(said.contains("Verification: OK"), "{said}");
    // And TLS 1.2 is not spoken.
    let old = std::process::Command::new("openssl")
        .args(["s_client", "-brief", "-tls1_2", "-connect"])
        .arg(db.local_addr().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!old.status.success(), "TLS 1.2 negotiated");
}

#[test]
fn sighup_reloads_certificates_and_keeps_what_works() {
    let (_data, pki, secret, db) = tls_db(false, |_| {});
    let server = start_server(db.local_addr(), &secret, |c| {
        pki.trust(c, false);
        c.workers = Some(1);
        c.hash_threads = Some(1);
        c.db_pool = Some(1);
    });
    assert_eq!(
        code(server.local_addr(), "register", "stays", "password1"),
        4
    );
    // A new CA and certificate in the same files.
    let next = Pki::new();
    for file in ["server.pem", "server.key"] {
        std::fs::copy(next.path(file), pki.path(file)).unwrap();
    }
    assert!(db.reload(), "the new certificate is in force");
    // New connections present it: trusted under the new CA, not the old.
    assert!(connect_tls(db.local_addr(), &secret, &next, "localhost", false).is_ok());
    let old = connect_tls(db.local_addr(), &secret, &pki, "localhost", false);
    let old = old.err().unwrap().to_string();
    assert!(old.contains("trusted CA"), "{old}");
    // The established pooled connection keeps working.
    assert_eq!(code(server.local_addr(), "login", "stays", "password1"), 3);
    // A broken file leaves the certificate in force.
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    assert!(!db.reload());
    assert!(connect_tls(db.local_addr(), &secret, &next, "localhost", false).is_ok());
    // login-server takes the new CA on its reload; new connections then trust it.
    std::fs::copy(next.path("ca.pem"), pki.path("ca.pem")).unwrap();
    assert!(server.reload());
    std::fs::write(pki.path("ca.pem"), "").unwrap();
    assert!(
        !server.reload(),
        "an empty CA file is refused and the CA in force stays"
    );
}

#[test]
fn the_certificates_expiry_is_a_metric() {
    let (_data, pki, secret, db) = tls_db(false, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let server = start_server(db.local_addr(), &secret, |c| {
        pki.trust(c, false);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    // gen-tls' certificates: 30 days from an hour ago; the CA's 3650 days.
    let expected = (time::OffsetDateTime::now_utc() - time::Duration::hours(1)
        + time::Duration::days(30))
    .unix_timestamp();
    let read = |addr, name| common::metric(addr, name).unwrap() as i64;
    let served = read(
        db.metrics_addr().unwrap(),
        "accountdb_tls_cert_expiry_seconds",
    );
    assert!((served - expected).abs() < 60, "{served} vs {expected}");
    let trusted = read(
        server.metrics_addr().unwrap(),
        "login_db_tls_cert_expiry_seconds",
    );
    assert!(
        trusted > served,
        "the CA outlives the certificate: {trusted}"
    );
}

/// Whether the PostgreSQL link of `client` is encrypted, as the server sees it.
fn encrypted(client: &mut postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn postgres_sslmode_require_encrypts_the_link_to_the_machines_postgresql() {
    let Some(db) = common::postgres_database() else {
        return;
    };
    let link = |mode: &str| pg_link::link(&format!("{}?sslmode={mode}", db.url), None).unwrap();
    let require = link("require");
    let mut client = require.config.connect(require.tls).unwrap();
    assert!(encrypted(&mut client), "sslmode=require");
    // prefer (the default) takes TLS where the server offers it; disable does not.
    let prefer = pg_link::link(&db.url, None).unwrap();
    assert!(encrypted(&mut prefer.config.connect(prefer.tls).unwrap()));
    let disable = link("disable");
    assert!(!encrypted(
        &mut disable.config.connect(disable.tls).unwrap()
    ));
    // account-db's store over it.
    let url = format!("{}?sslmode=require", db.url)
        .parse::<login_server::accountdb::store::StoreUrl>()
        .unwrap();
    let store = url.open(2, Duration::from_secs(5), false, None).unwrap();
    store.ping().unwrap();
}

/// A PostgreSQL of the test's own with a certificate from `pki` and only `hostssl ...
/// scram-sha-256` connections over TCP; the role `postgres` has the password `PG_PASSWORD`.
struct OwnPostgres(common::pg::OwnPostgres);

const PG_PASSWORD: &str = "correct horse battery staple";

impl OwnPostgres {
    fn start(pki: &Pki) -> Option<OwnPostgres> {
        let pg = common::pg::OwnPostgres::init(
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             password_encryption = 'scram-sha-256'",
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            &[
                ("server.crt", &pki.path("server.pem"), 0o644),
                ("server.key", &pki.path("server.key"), 0o600),
            ],
        )?;
        pg.start();
        let mut admin = pg.admin("postgres");
        admin
            .batch_execute(&format!("ALTER USER postgres PASSWORD '{PG_PASSWORD}'"))
            .unwrap();
        admin.batch_execute("CREATE DATABASE accounts").unwrap();
        Some(OwnPostgres(pg))
    }

    /// The URL of its `accounts` database over TCP, with `query`.
    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/accounts?{query}",
            self.0.port
        )
    }
}

#[test]
fn postgres_verify_full_with_a_scram_password_and_clear_errors() {
    let pki = Pki::new();
    let Some(pg) = OwnPostgres::start(&pki) else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("pg-password");
    login_server::auth::secret::create_private(
        &password_file,
        format!("{PG_PASSWORD}\n").as_bytes(),
    )
    .unwrap();
    let ca = pki.path("ca.pem");
    let verify_full = pg.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    // The link: encrypted, the certificate and the name checked, the password proved.
    let link = pg_link::link(&verify_full, Some(&password_file)).unwrap();
    let mut client = link.config.connect(link.tls).unwrap();
    assert!(encrypted(&mut client));
    // account-db's store over it, end to end.
    let url: login_server::accountdb::store::StoreUrl = verify_full.parse().unwrap();
    let store = url
        .open(2, Duration::from_secs(5), false, Some(&password_file))
        .unwrap();
    store.ping().unwrap();
    // A wrong password: said so, the password nowhere in it.
    let wrong = secrets.path().join("wrong");
    login_server::auth::secret::create_private(&wrong, b"not-the-password").unwrap();
    let error = url
        .open(1, Duration::from_secs(5), false, Some(&wrong))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(
        !error.contains("not-the-password") && !error.contains(PG_PASSWORD),
        "{error}"
    );
    // A CA that did not sign its certificate: refused, saying it is the certificate.
    let other = Pki::new();
    let foreign = pg.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other.path("ca.pem").display()
    ));
    let url: login_server::accountdb::store::StoreUrl = foreign.parse().unwrap();
    let error = url
        .open(1, Duration::from_secs(5), false, Some(&password_file))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("certificate"), "{error}");
    // verify-ca checks the chain only: the same foreign CA is refused, the right one served
    // whatever the name (the certificate holds 127.0.0.1 and localhost anyway).
    let chain = pg.url(&format!("sslmode=verify-ca&sslrootcert={}", ca.display()));
    let link = pg_link::link(&chain, Some(&password_file)).unwrap();
    assert!(encrypted(&mut link.config.connect(link.tls).unwrap()));
    // Plaintext is refused by its pg_hba (hostssl only), with PostgreSQL's reason.
    let link = pg_link::link(&pg.url("sslmode=disable"), Some(&password_file)).unwrap();
    let error = link.config.connect(link.tls).err().unwrap();
    let said = error.as_db_error().map(|e| e.message().to_string());
    assert!(
        said.as_deref().is_some_and(|m| m.contains("no encryption")),
        "{error:?}"
    );
}

/// rustls reads a TLS record whole, one wait per byte: a proof trickled inside TLS a byte at a
/// time must still be cut off at the handshake's deadline, not when the record ends.
#[test]
fn a_proof_trickled_inside_tls_is_cut_off_at_the_deadline() {
    let (_data, pki, _, db) = tls_db(false, |c| {
        c.auth_timeout = Duration::from_secs(1);
    });
    let tls = pki.client("localhost", false);
    let mut tcp = TcpStream::connect(db.local_addr()).unwrap();
    let mut conn = rustls::ClientConnection::new(tls.material.current(), tls.name.clone()).unwrap();
    login_server::tls::handshake(&mut conn, &mut tcp, Instant::now() + PATIENCE).unwrap();
    let proof = format!("{{\"op\":\"auth\",\"proof\":\"{}\"}}\n", "0".repeat(64));
    conn.writer().write_all(proof.as_bytes()).unwrap();
    let mut record = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut record).unwrap();
    }
    assert!(
        record.len() > 80,
        "{} bytes: 8 s at 10 a second",
        record.len()
    );
    let started = Instant::now();
    let mut cut = false;
    for byte in record {
        if tcp.write_all(&[byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert!(cut, "the whole record went in: {took:?}");
    // The deadline (1 s), the once-a-second watch, and margin.
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// Past `--max-handshakes`, the handshake cut off is the oldest of the address holding the
/// most: a flood from one address no longer cuts off a login-server's handshake from another,
/// even the oldest one (it cut 1-6% of logins at 2,000 connections a second before).
#[test]
fn a_handshake_flood_from_one_address_does_not_cut_off_anothers() {
    let (_data, pki, secret, db) = tls_db(false, |c| c.max_handshakes = 8);
    // The login-server's connection, from 127.0.0.1, slow to send its ClientHello.
    let tls = pki.client("localhost", false);
    let mut tcp = TcpStream::connect(db.local_addr()).unwrap();
    // Then a flood of silent peers from 127.0.0.2, many times the cap.
    let flood: Vec<TcpStream> = (0..64)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            socket.connect(&db.local_addr().into()).unwrap();
            socket.into()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut conn = rustls::ClientConnection::new(tls.material.current(), tls.name.clone()).unwrap();
    login_server::tls::handshake(&mut conn, &mut tcp, Instant::now() + PATIENCE)
        .expect("the oldest handshake, but the only one from its address: not cut off");
    drop(flood);
    // The secret proved over it as usual.
    assert!(connect_tls(db.local_addr(), &secret, &pki, "localhost", false).is_ok());
}

/// `curl` with `ca` as its only CA: the HTTP status of `url`, or `None` when the TLS
/// connection fails.
fn curl(ca: &Path, url: &str) -> Option<(u16, String)> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_string()))
}

#[test]
fn the_http_endpoints_over_tls_serve_keys_and_metrics_to_a_client_with_the_ca() {
    let pki = Pki::new();
    let tiers = common::start_tiers(
        |db| {
            db.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            db.metrics_tls_cert = Some(pki.path("server.pem"));
            db.metrics_tls_key = Some(pki.path("server.key"));
        },
        |c| {
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            c.metrics_tls_cert = Some(pki.path("server.pem"));
            c.metrics_tls_key = Some(pki.path("server.key"));
        },
    );
    let login = tiers.server.metrics_addr().unwrap();
    let db = tiers.db.metrics_addr().unwrap();
    let ca = pki.path("ca.pem");
    // The JWKS that game servers verify tokens with, and the metrics, over TLS.
    let (status, keys) = curl(&ca, &format!("https://127.0.0.1:{}/keys", login.port())).unwrap();
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_str(&keys).unwrap();
    assert!(jwks["keys"][0]["x"].is_string(), "{jwks}");
    for (addr, metric) in [
        (login, "login_build_info"),
        (db, "accountdb_open_connections"),
    ] {
        let (status, body) =
            curl(&ca, &format!("https://127.0.0.1:{}/metrics", addr.port())).unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(metric), "{addr}");
        let (status, _) = curl(&ca, &format!("https://localhost:{}/healthz", addr.port())).unwrap();
        assert_eq!(status, 200);
    }
    // Plaintext gets no page; a client that trusts another CA gets no connection.
    let mut plain = common::connect(login);
    plain
        .write_all(b"GET /keys HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(!String::from_utf8_lossy(&reply).contains("\"keys\""));
    let other = Pki::new();
    assert_eq!(
        curl(
            &other.path("ca.pem"),
            &format!("https://127.0.0.1:{}/keys", login.port())
        ),
        None
    );
    // SIGHUP: a certificate from another CA is in force for the next connection.
    for file in ["server.pem", "server.key"] {
        std::fs::copy(other.path(file), pki.path(file)).unwrap();
    }
    assert!(tiers.server.reload() && tiers.db.reload());
    for addr in [login, db] {
        let url = format!("https://127.0.0.1:{}/healthz", addr.port());
        assert_eq!(curl(&other.path("ca.pem"), &url).map(|r| r.0), Some(200));
        assert_eq!(curl(&ca, &url), None);
    }
}
