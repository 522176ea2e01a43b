//! Gateway TLS (`--gateway-tls`) against a real login-server (embedded account-db,
//! 127.0.0.1:0), spoken by gateway-sim's TLS client: both forms, one port for TLS and
//! plaintext, session resumption, client certificates, and peers that stall or trickle their
//! handshake.

use gateway_sim::attack::{self, Kind};
use gateway_sim::secure::{self, Tls, TlsArgs};
use gateway_sim::stress::{Options, Run};
use login_server::auth::password::HashParams;
use login_server::login::GatewayTlsMode;
use login_server::protocol::gateway::{Form, Op};
use login_server::{LoginServer, LoginServerConfig};
use rustls::ClientConnection;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

/// A CA, the server's certificate for 127.0.0.1 and a client certificate, in `dir`.
fn pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let names = ["127.0.0.1".to_string()];
    login_server::tls::generate::write(&pki, &names, true, 30, None).unwrap();
    pki
}

/// A login-server in `dir` with gateway TLS in `mode`, a metrics endpoint, and `tweak`.
fn server(
    dir: &Path,
    mode: GatewayTlsMode,
    tweak: impl FnOnce(&mut LoginServerConfig),
) -> LoginServer {
    let pki = dir.join("pki");
    let mut config = LoginServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.join("data"),
        hash_params: HashParams::CHEAPEST,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        gateway_tls: mode,
        tls_cert: Some(pki.join("server.pem")),
        tls_key: Some(pki.join("server.key")),
        ..LoginServerConfig::default()
    };
    tweak(&mut config);
    LoginServer::spawn(config).unwrap()
}

/// gateway-sim's TLS toward `server`, trusting `dir`'s CA; `identity`: with the client
/// certificate; `resume`: keeping session tickets.
fn client(dir: &Path, server: &LoginServer, identity: bool, resume: bool) -> Arc<Tls> {
    let pki = dir.join("pki");
    let args = TlsArgs {
        tls_ca: Some(pki.join("ca.pem")),
        tls_cert: identity.then(|| pki.join("client.pem")),
        tls_key: identity.then(|| pki.join("client.key")),
        tls_resume: resume,
        tls_name: None,
    };
    args.load(server.local_addr()).unwrap().unwrap()
}

/// A login-server with gateway TLS in `mode` and `tweak`, in a fresh directory with its PKI,
/// and gateway-sim's TLS toward it: the directory (the server's files live as long as it), the
/// server, the client.
fn tls_server(
    mode: GatewayTlsMode,
    tweak: impl FnOnce(&mut LoginServerConfig),
) -> (tempfile::TempDir, LoginServer, Arc<Tls>) {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let server = server(dir.path(), mode, tweak);
    let tls = client(dir.path(), &server, false, false);
    (dir, server, tls)
}

/// A ClientHello from `tls`, as the bytes of its first flight.
fn client_hello(tls: &Tls) -> Vec<u8> {
    let mut hello = Vec::new();
    tls.client().unwrap().write_tls(&mut hello).unwrap();
    hello
}

/// One seed-form request, over TLS when `tls` is given.
fn send(server: &LoginServer, tls: Option<&Tls>, op: Op, user: &str, password: &str) -> Value {
    let request = gateway_sim::request(op, user, password, "");
    let reply = gateway_sim::send_seed(server.local_addr(), tls, &request, PATIENCE).unwrap();
    serde_json::from_str::<Value>(&reply).unwrap()[0].clone()
}

/// The value of the metric line starting `name` (labels included) on `server`'s endpoint.
fn metric(server: &LoginServer, name: &str) -> f64 {
    let addr = server.metrics_addr().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A stress run of `requests` requests against `server`, over `tls`.
fn stress(server: &LoginServer, tls: &Arc<Tls>, form: Form, pipeline: usize, requests: u64) {
    let options = Options {
        targets: vec![server.local_addr()],
        connections: 4,
        duration: Duration::from_secs(30),
        requests: Some(requests),
        form,
        pipeline,
        mix: "login=8,register=1,badpass=1".parse().unwrap(),
        users: 8,
        rate: None,
        timeout: PATIENCE,
        tls: Some(tls.clone()),
        ..Options::default()
    };
    let report = Run::start(options).unwrap().finish();
    assert!(report.clean(), "{}", report.table());
    assert_eq!(report.requests, requests, "{}", report.table());
}

#[test]
fn both_forms_are_served_over_tls_and_plaintext_is_told_why_it_is_refused() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |_| {});
    assert_eq!(
        send(&server, Some(&tls), Op::Register, "Secure", "password1")["code"],
        4
    );
    let login = send(&server, Some(&tls), Op::Login, "secure", "password1");
    assert_eq!(login["code"], 3, "{login}");
    stress(&server, &tls, Form::Seed, 1, 200);
    stress(&server, &tls, Form::Stream, 8, 2000);
    // A plaintext gateway hears why, in plaintext, and is closed.
    let reply = gateway_sim::send_seed(
        server.local_addr(),
        None,
        &gateway_sim::request(Op::Login, "secure", "password1", ""),
        PATIENCE,
    )
    .unwrap();
    assert!(reply.contains("\"code\":6"), "{reply}");
    assert!(reply.contains("TLS only"), "{reply}");
    assert!(metric(&server, "login_tls_handshakes_total{outcome=\"failed\"}") >= 1.0);
    // pki()'s certificate: 30 days from an hour ago (its CA lives 3650 days).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expected = now - 3600.0 + 30.0 * 86400.0;
    let expiry = metric(&server, "login_tls_cert_expiry_seconds");
    assert!((expiry - expected).abs() < 120.0, "{expiry} vs {expected}");
}

#[test]
fn optional_serves_tls_and_plaintext_on_one_port() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Optional, |_| {});
    assert_eq!(
        send(&server, None, Op::Register, "plain", "password1")["code"],
        4
    );
    assert_eq!(
        send(&server, Some(&tls), Op::Login, "plain", "password1")["code"],
        3
    );
    assert_eq!(
        send(&server, None, Op::Login, "plain", "password1")["code"],
        3
    );
    assert_eq!(
        metric(&server, "login_tls_handshakes_total{outcome=\"full\"}"),
        1.0
    );
    assert_eq!(
        metric(&server, "login_plaintext_gateway_connections_total"),
        2.0,
        "the plaintext register and login"
    );
}

#[test]
fn a_reconnecting_gateway_resumes_from_a_ticket_and_skips_the_full_handshake() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let server = server(dir.path(), GatewayTlsMode::Required, |_| {});
    let full = "login_tls_handshakes_total{outcome=\"full\"}";
    let resumed = "login_tls_handshakes_total{outcome=\"resumed\"}";
    // Without tickets kept, every seed-form request is a full handshake.
    let fresh = client(dir.path(), &server, false, false);
    for _ in 0..5 {
        send(&server, Some(&fresh), Op::Login, "nobody", "password1");
    }
    assert_eq!(
        (metric(&server, full), metric(&server, resumed)),
        (5.0, 0.0)
    );
    // With them, only the first is.
    let resuming = client(dir.path(), &server, false, true);
    for _ in 0..20 {
        send(&server, Some(&resuming), Op::Login, "nobody", "password1");
    }
    assert_eq!(
        (metric(&server, full), metric(&server, resumed)),
        (6.0, 19.0)
    );
    // A reload of the certificate keeps the ticket keys: still resumed.
    assert!(server.reload());
    send(&server, Some(&resuming), Op::Login, "nobody", "password1");
    assert_eq!(metric(&server, resumed), 20.0);
    // Another login-server (other ticket keys) makes the same gateway pay a full handshake.
    let other_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(other_dir.path().join("data")).unwrap();
    let other = server_with_pki(other_dir.path(), dir.path());
    let before = metric(&other, full);
    let request = gateway_sim::request(Op::Login, "nobody", "password1", "");
    gateway_sim::send_seed(other.local_addr(), Some(&resuming), &request, PATIENCE).unwrap();
    assert_eq!(metric(&other, full), before + 1.0);
    assert_eq!(metric(&other, resumed), 0.0);
}

/// A second login-server in `dir` using the certificate of `pki_dir`.
fn server_with_pki(dir: &Path, pki_dir: &Path) -> LoginServer {
    let pki = pki_dir.join("pki");
    server(dir, GatewayTlsMode::Required, |c| {
        c.tls_cert = Some(pki.join("server.pem"));
        c.tls_key = Some(pki.join("server.key"));
    })
}

#[test]
fn a_gateway_without_a_certificate_from_the_client_ca_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let server = server(dir.path(), GatewayTlsMode::Required, |c| {
        c.gateway_tls_client_ca = Some(ca.join("ca.pem"));
    });
    let with = client(dir.path(), &server, true, false);
    assert_eq!(
        send(&server, Some(&with), Op::Register, "certified", "password1")["code"],
        4
    );
    let without = client(dir.path(), &server, false, false);
    let request = gateway_sim::request(Op::Login, "certified", "password1", "");
    let refused = gateway_sim::send_seed(server.local_addr(), Some(&without), &request, PATIENCE);
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("CertificateRequired"), "{error}");
    assert_eq!(
        metric(&server, "login_tls_handshakes_total{outcome=\"failed\"}"),
        1.0
    );
    // A certificate from another CA is refused too.
    let stranger_dir = tempfile::tempdir().unwrap();
    pki(stranger_dir.path());
    let stranger = TlsArgs {
        tls_ca: Some(ca.join("ca.pem")),
        tls_cert: Some(stranger_dir.path().join("pki/client.pem")),
        tls_key: Some(stranger_dir.path().join("pki/client.key")),
        ..TlsArgs::default()
    };
    let stranger = stranger.load(server.local_addr()).unwrap().unwrap();
    let refused = gateway_sim::send_seed(server.local_addr(), Some(&stranger), &request, PATIENCE);
    assert!(refused.is_err());
    assert_eq!(
        metric(&server, "login_tls_handshakes_total{outcome=\"failed\"}"),
        2.0
    );
}

#[test]
fn the_flags_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let start = |mode, cert: bool| {
        let pki = dir.path().join("pki");
        LoginServer::spawn(LoginServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().join("data"),
            gateway_tls: mode,
            tls_cert: cert.then(|| pki.join("server.pem")),
            tls_key: cert.then(|| pki.join("server.key")),
            ..LoginServerConfig::default()
        })
        .err()
        .map(|e| e.to_string())
    };
    let unused = start(GatewayTlsMode::Off, true).unwrap();
    assert!(unused.contains("--gateway-tls is off"), "{unused}");
    let missing = start(GatewayTlsMode::Required, false).unwrap();
    assert!(missing.contains("needs --tls-cert"), "{missing}");
    assert!(start(GatewayTlsMode::Optional, true).is_none());
}

/// Handshakes that stall halfway and handshakes that complete and fall silent: each closed at
/// the message deadline, none holding a worker, while a normal gateway is served.
#[test]
fn stalled_and_silent_handshakes_are_closed_at_the_deadline_and_others_served() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |c| {
        c.message_timeout = Duration::from_secs(1);
        c.workers = Some(2);
    });
    assert_eq!(
        send(&server, Some(&tls), Op::Register, "normal", "password1")["code"],
        4
    );
    let target = server.local_addr();
    let attackers: Vec<_> = [Kind::TlsHalfHello, Kind::TlsSilent]
        .into_iter()
        .map(|kind| {
            let tls = tls.clone();
            std::thread::spawn(move || {
                attack::run(target, kind, 200, Duration::from_secs(4), Some(&tls)).unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let login = send(&server, Some(&tls), Op::Login, "normal", "password1");
    assert_eq!(login["code"], 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for attacker in attackers {
        let outcome = attacker.join().unwrap();
        assert_eq!(outcome.connected, 200);
        assert_eq!(
            outcome.closed_by_server, 200,
            "every attacking connection closed by the server: {outcome:?}"
        );
    }
    assert_eq!(metric(&server, "login_busy_workers"), 0.0);
    assert!(metric(&server, "login_tls_handshakes_total{outcome=\"failed\"}") >= 200.0);
}

/// A ClientHello split into one-byte records, trickled: each whole record would cost a worker
/// a visit, so the handshake is dropped after a few, long before its deadline.
#[test]
fn a_hello_in_one_byte_records_is_dropped_after_a_few_worker_visits() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |c| {
        c.message_timeout = Duration::from_secs(30);
    });
    let hello = client_hello(&tls);
    let body = &hello[5..];
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in body.iter().take(40) {
        if stream.write_all(&[22, 3, 1, 0, 1, *byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "still open after 40 one-byte records");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A client that sends its hello whole is served.
    assert!(secure::connect(server.local_addr(), Some(&tls), PATIENCE).is_ok());
}

#[test]
fn a_trickled_hello_is_closed_at_the_message_deadline() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |c| {
        c.message_timeout = Duration::from_secs(1);
    });
    let hello = client_hello(&tls);
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    // A byte every 100 ms: a whole hello would take most of a minute.
    while sent < hello.len() && stream.write_all(&hello[sent..sent + 1]).is_ok() {
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
        let mut buf = [0u8; 16];
        stream.set_nonblocking(true).unwrap();
        let read = stream.read(&mut buf);
        stream.set_nonblocking(false).unwrap();
        if matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?} and {sent} bytes"
    );
}

/// A rustls client on a blocking socket to `server`, its handshake done; `rcvbuf`: the socket's
/// receive buffer in bytes, when it is to be small.
fn handshaken(
    server: &LoginServer,
    tls: &Tls,
    rcvbuf: Option<usize>,
) -> (ClientConnection, TcpStream) {
    let addr = server.local_addr();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket.connect(&addr.into()).unwrap();
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut conn = tls.client().unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).unwrap();
    }
    (conn, stream)
}

/// The TLS records carrying `plaintext` from `conn`, followed by its close_notify when `close`.
fn seal(conn: &mut ClientConnection, mut plaintext: &[u8], close: bool) -> Vec<u8> {
    let mut records = Vec::new();
    loop {
        let n = conn.writer().write(plaintext).unwrap();
        plaintext = &plaintext[n..];
        if plaintext.is_empty() && close {
            conn.send_close_notify();
        }
        while conn.wants_write() {
            conn.write_tls(&mut records).unwrap();
        }
        if plaintext.is_empty() {
            return records;
        }
    }
}

/// What the server sent within `patience`, until `lines` replies are in or the server closes:
/// the plaintext, and whether the server sent close_notify and then closed the TCP connection.
fn receive(
    conn: &mut ClientConnection,
    stream: &mut TcpStream,
    lines: usize,
    patience: Duration,
) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + patience;
    let mut text = Vec::new();
    let (mut notified, mut seen) = (false, 0);
    while Instant::now() < until && seen < lines {
        if notified {
            let mut rest = [0u8; 64];
            match stream.read(&mut rest) {
                Ok(0) => return (String::from_utf8(text).unwrap(), true),
                Ok(_) => panic!("bytes after close_notify"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
            continue;
        }
        match conn.read_tls(stream) {
            Ok(_) => {
                let state = conn.process_new_packets().unwrap();
                let start = text.len();
                text.resize(start + state.plaintext_bytes_to_read(), 0);
                conn.reader().read_exact(&mut text[start..]).unwrap();
                seen += text[start..].iter().filter(|&&b| b == b'\n').count();
                notified = state.peer_has_closed();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    (String::from_utf8(text).unwrap(), false)
}

const LOGIN: &[u8] = br#"{"OP":"login","username":"reader","password":"password1"}"#;

/// The seed form's close and a gateway's close_notify, wherever it arrives, end the
/// connection: the server answers what it read, sends its own close_notify and closes.
#[test]
fn the_seed_form_and_a_close_notify_end_the_connection_once_answered() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |c| {
        c.message_timeout = Duration::from_secs(30);
    });
    assert_eq!(
        send(&server, Some(&tls), Op::Register, "reader", "password1")["code"],
        4
    );
    let patience = Duration::from_secs(3);
    // The seed form, no close_notify: the server closes after its reply.
    let (mut conn, mut stream) = handshaken(&server, &tls, None);
    let seed = [b"[".as_slice(), LOGIN, b"]"].concat();
    stream.write_all(&seal(&mut conn, &seed, false)).unwrap();
    let (reply, closed) = receive(&mut conn, &mut stream, usize::MAX, patience);
    assert!(reply.contains(r#""code":3"#), "{reply}");
    assert!(closed, "the seed form closes after its reply");
    // The stream form, with close_notify after the request, after the handshake.
    let line = [LOGIN, b"\n"].concat();
    let (mut conn, mut stream) = handshaken(&server, &tls, None);
    stream.write_all(&seal(&mut conn, &line, true)).unwrap();
    let (reply, closed) = receive(&mut conn, &mut stream, usize::MAX, patience);
    assert!(reply.contains(r#""code":3"#), "{reply}");
    assert!(
        closed,
        "close_notify after the handshake: answered, then closed"
    );
    // The same in one write with the client's Finished: the worker's handshake visit reads it.
    let mut conn = tls.client().unwrap();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.write_tls(&mut stream).unwrap();
    while conn.is_handshaking() {
        assert!(
            conn.read_tls(&mut stream).unwrap() > 0,
            "closed by the server"
        );
        conn.process_new_packets().unwrap();
    }
    stream.write_all(&seal(&mut conn, &line, true)).unwrap();
    let (reply, closed) = receive(&mut conn, &mut stream, usize::MAX, patience);
    assert!(reply.contains(r#""code":3"#), "{reply}");
    assert!(
        closed,
        "close_notify with the Finished: answered, then closed"
    );
}

/// A peer that closes in the middle of its handshake is closed at once, not at the deadline,
/// and its handshake is counted failed, never completed.
#[test]
fn a_handshake_cut_short_is_closed_at_once_and_counted_failed() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |c| {
        c.message_timeout = Duration::from_secs(30);
    });
    let hello = client_hello(&tls);
    for sent in [&hello[..10], &hello[..]] {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.write_all(sent).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut flight = Vec::new();
        let read = stream.read_to_end(&mut flight);
        assert!(
            read.is_ok(),
            "closed at once, not at the deadline: {read:?}"
        );
    }
    let count = |outcome: &str| {
        metric(
            &server,
            &format!("login_tls_handshakes_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!((count("full"), count("failed")), (0.0, 2.0));
}

/// A TLS gateway that stops reading while its replies pile up gets every one of them once it
/// reads again (the encrypted bytes rustls holds are written when the socket takes them), and
/// one that resets its connection with replies pending costs nobody anything.
#[test]
fn a_gateway_that_reads_late_gets_every_reply_and_one_that_resets_costs_nothing() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |c| {
        // One worker: a worker stuck on a broken socket would leave nobody to serve.
        c.workers = Some(1);
    });
    assert_eq!(
        send(&server, Some(&tls), Op::Register, "reader", "password1")["code"],
        4
    );
    // More replies than the socket buffers hold (the server's grows to 4 MiB here), so rustls
    // holds some: bad requests, cheap to answer, each reply some 230 bytes.
    let requests = 30_000;
    let bad = format!("{{\"OP\":\"nope\",\"id\":\"{}\"}}\n", "x".repeat(60));
    let lines = bad.repeat(requests).into_bytes();
    // The requests written by a thread of their own, for at most `patience`.
    let pipelined = |patience| {
        let (mut conn, stream) = handshaken(&server, &tls, Some(4096));
        let records = seal(&mut conn, &lines, false);
        let mut writer = stream.try_clone().unwrap();
        writer.set_write_timeout(Some(patience)).unwrap();
        let writing = std::thread::spawn(move || writer.write_all(&records).is_ok());
        (conn, stream, writing)
    };
    let (mut conn, mut stream, writing) = pipelined(PATIENCE);
    // Until the server stops answering: its socket buffer and rustls's are full.
    let answered = || metric(&server, "login_requests_total{op=\"none\",code=\"6\"}");
    let (until, mut last) = (Instant::now() + PATIENCE, -1.0);
    while answered() != last && Instant::now() < until {
        last = answered();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        last < requests as f64,
        "the server waited for the gateway to read"
    );
    let (replies, _) = receive(&mut conn, &mut stream, requests, PATIENCE);
    assert!(writing.join().unwrap(), "every request was taken");
    let answered = replies
        .lines()
        .filter(|r| r.starts_with(r#"{"code":6,"#))
        .count();
    assert_eq!(
        answered, requests,
        "every reply arrives once the gateway reads"
    );
    // Pipelined, never read, then reset (closed with replies unread).
    let (_conn, stream, writing) = pipelined(Duration::from_secs(2));
    let _ = writing.join();
    let linger = socket2::SockRef::from(&stream);
    linger.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    let started = Instant::now();
    let login = send(&server, Some(&tls), Op::Login, "reader", "password1");
    assert_eq!(login["code"], 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&server, "login_busy_workers"), 0.0);
}

/// A gateway's flights arrive in whatever pieces the network makes of them: a record split
/// across two reads (a ClientHello, or the client's Finished, cut in the middle) is put back
/// together, not taken for a bad record header.
#[test]
fn handshake_records_split_across_reads_are_reassembled() {
    let (_dir, server, tls) = tls_server(GatewayTlsMode::Required, |_| {});
    assert_eq!(
        send(&server, Some(&tls), Op::Register, "reader", "password1")["code"],
        4
    );
    // Write `bytes` in two pieces, cut `from_end` bytes before their end, 200 ms apart.
    let split = |stream: &mut TcpStream, bytes: &[u8], from_end: usize| {
        let cut = bytes.len() - from_end;
        stream.write_all(&bytes[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stream.write_all(&bytes[cut..]).unwrap();
    };
    for cut_hello in [true, false] {
        let mut conn = tls.client().unwrap();
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        if cut_hello {
            // Two records, the second cut in its middle.
            let body = &hello[5..];
            let (a, b) = body.split_at(body.len() / 2);
            let mut records = Vec::new();
            for part in [a, b] {
                records.extend_from_slice(&[22, 3, 1]);
                records.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
                records.extend_from_slice(part);
            }
            split(&mut stream, &records, 10);
        } else {
            stream.write_all(&hello).unwrap();
        }
        while conn.is_handshaking() {
            let read = conn.read_tls(&mut stream).unwrap();
            assert!(read > 0, "cut hello {cut_hello}: closed by the server");
            conn.process_new_packets().unwrap();
        }
        let mut finished = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut finished).unwrap();
        }
        split(&mut stream, &finished, 10);
        let line = [LOGIN, b"\n"].concat();
        stream.write_all(&seal(&mut conn, &line, true)).unwrap();
        let (reply, _) = receive(&mut conn, &mut stream, 1, PATIENCE);
        assert!(
            reply.contains(r#""code":3"#),
            "cut hello {cut_hello}: {reply:?}"
        );
    }
}

/// A peer that sends nothing to a TLS-only port is closed at the deadline without a word: a
/// plaintext reply would be noise to a TLS client. It counts as a failed handshake.
#[test]
fn a_silent_peer_on_a_tls_only_port_is_closed_without_a_reply() {
    let (_dir, server, _tls) = tls_server(GatewayTlsMode::Required, |c| {
        c.message_timeout = Duration::from_secs(1);
    });
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut heard = Vec::new();
    let read = stream.read_to_end(&mut heard);
    assert!(read.is_ok(), "closed by the server: {read:?}");
    assert!(heard.is_empty(), "{}", String::from_utf8_lossy(&heard));
    assert_eq!(
        metric(&server, "login_tls_handshakes_total{outcome=\"failed\"}"),
        1.0
    );
}
