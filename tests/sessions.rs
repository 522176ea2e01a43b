//! Sessions over real sockets: a login's token verifies on any login-server sharing the key,
//! and revocation (logout, logout_all, change_password) holds on all of them at once.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{code, http_get, start_with, StreamClient};
use login_server::auth::token_key::SigningKey;
use login_server::clock::Clock;
use login_server::{LoginServer, LoginServerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One stream-form request: its reply.
fn ask(addr: SocketAddr, request: Value) -> Value {
    let mut client = StreamClient::new(addr);
    client.send(format!("{request}\n").as_bytes());
    client.recv()
}

fn login(addr: SocketAddr, user: &str, password: &str) -> Value {
    ask(
        addr,
        json!({"OP": "login", "username": user, "password": password}),
    )
}

fn token_of(reply: &Value) -> String {
    reply["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {reply}"))
        .to_string()
}

fn with_token(addr: SocketAddr, op: &str, token: &str) -> Value {
    ask(addr, json!({"OP": op, "token": token}))
}

/// `(code, reason)` of a reply.
fn outcome(reply: &Value) -> (u64, &str) {
    (
        reply["code"].as_u64().unwrap_or(0),
        reply["reason"].as_str().unwrap_or(""),
    )
}

/// A second login-server on the first one's account-db, with `tweak`.
fn second(tiers: &common::Tiers, tweak: impl FnOnce(&mut LoginServerConfig)) -> LoginServer {
    let mut config = common::config(tiers.db.local_addr(), &tiers.secret);
    tweak(&mut config);
    LoginServer::spawn(config).unwrap()
}

/// The claims of `token`, read without checking anything.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[test]
fn a_token_from_one_login_server_verifies_on_another() {
    let tiers = start_with(|_| {});
    let other = second(&tiers, |_| {});
    assert_eq!(code(tiers.addr(), "register", "Hero", "password1"), 4);
    let reply = login(tiers.addr(), "hero", "password1");
    assert_eq!(reply["code"], 3, "{reply}");
    let token = token_of(&reply);
    let account_id = reply["account_id"].as_u64().unwrap();
    let checked = with_token(other.local_addr(), "verify", &token);
    assert_eq!(checked["code"], 9, "{checked}");
    assert_eq!(checked["info"], "valid");
    assert_eq!(checked["username"], "Hero");
    assert_eq!(checked["account_id"], account_id);
    assert_eq!(checked["exp"], reply["exp"]);
    // The claims, as any JWT library reads them.
    let claims = claims(&token);
    assert_eq!(claims["sub"], account_id.to_string());
    assert_eq!(claims["name"], "Hero");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 3600, "--session-ttl defaults to an hour");
    assert_eq!(
        claims["auth_time"],
        claims["auth_ms"].as_i64().unwrap() / 1000
    );
    // The seed form carries it too, after the seed's fields.
    let seed = common::seed(tiers.addr(), "login", "hero", "password1");
    assert_eq!(seed["code"], 3);
    assert_eq!(
        with_token(other.local_addr(), "verify", &token_of(&seed))["code"],
        9
    );
}

#[test]
fn tokens_that_are_not_ours_are_refused_with_the_reason() {
    let clock = Clock::adjustable();
    let tiers = common::start_on_clock(&clock, |c| c.service.session_ttl = Duration::from_secs(1));
    assert_eq!(code(tiers.addr(), "register", "target", "password1"), 4);
    let token = token_of(&login(tiers.addr(), "target", "password1"));
    // Tampered: another name in the claims, the signature kept.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut forged = claims(&token);
    forged["sub"] = json!("999");
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    let tampered = parts.join(".");
    assert_eq!(
        outcome(&with_token(tiers.addr(), "verify", &tampered)),
        (10, "bad_signature")
    );
    // Signed by another key.
    let stranger = second(&tiers, |c| {
        c.token_key = Some(Arc::new(SigningKey::generate().unwrap()));
    });
    let theirs = token_of(&login(stranger.local_addr(), "target", "password1"));
    assert_eq!(
        outcome(&with_token(tiers.addr(), "verify", &theirs)),
        (10, "bad_signature")
    );
    // Garbage, alg none, HS256 signed with our public key as the secret.
    for garbage in ["", "x", "a.b.c", "!!!.###.$$$", "eyJhbGciOiJFZERTQSJ9.e30"] {
        assert_eq!(
            outcome(&with_token(tiers.addr(), "verify", garbage)),
            (10, "malformed"),
            "{garbage}"
        );
    }
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(outcome(&with_token(tiers.addr(), "verify", &none)).0, 10);
    let key = common::token_key();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.verify_key().kid.clone());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(&token),
        &jsonwebtoken::EncodingKey::from_secret(&key.verify_key().public),
    )
    .unwrap();
    assert_eq!(
        outcome(&with_token(tiers.addr(), "verify", &confused)),
        (10, "bad_signature")
    );
    // Still valid; expired once the one-second ttl has passed.
    assert_eq!(with_token(tiers.addr(), "verify", &token)["code"], 9);
    clock.advance(Duration::from_millis(2100));
    assert_eq!(
        outcome(&with_token(tiers.addr(), "verify", &token)),
        (10, "expired")
    );
    assert_eq!(
        outcome(&with_token(tiers.addr(), "refresh", &token)),
        (10, "expired")
    );
}

#[test]
fn bad_token_fields_are_a_clean_6_or_10() {
    let tiers = start_with(|_| {});
    let addr = tiers.addr();
    for (request, expected) in [
        (json!({"OP": "verify"}), "missing field `token`"),
        (
            json!({"OP": "verify", "token": 42}),
            "\"token\" must be a string",
        ),
        (
            json!({"OP": "verify", "token": null}),
            "\"token\" must be a string",
        ),
        (
            json!({"OP": "logout", "token": ["a"]}),
            "\"token\" must be a string",
        ),
        (
            json!({"OP": "change_password", "username": "u", "password": "password1"}),
            "missing field `new_password`",
        ),
        (
            json!({"OP": "change_password", "username": "u", "password": "password1", "new_password": 7}),
            "\"new_password\" must be a string",
        ),
    ] {
        let reply = ask(addr, request.clone());
        assert_eq!(reply["code"], 6, "{request}: {reply}");
        assert!(
            reply["info"].as_str().unwrap().contains(expected),
            "{request}: {reply}"
        );
    }
    // A token of 60 KiB fits in a message and is malformed; one of 1 MiB is too long a message.
    let long = "A".repeat(60 * 1024);
    assert_eq!(
        outcome(&with_token(addr, "verify", &long)),
        (10, "malformed")
    );
    let huge = "A".repeat(1024 * 1024);
    let reply = common::exchange(
        addr,
        format!(r#"{{"OP":"verify","token":"{huge}"}}"#).as_bytes(),
    );
    assert!(reply.contains("\"code\":6"), "{reply}");
    // And everyone else is still served.
    assert_eq!(code(addr, "register", "bystander", "password1"), 4);
}

#[test]
fn logout_on_one_login_server_is_seen_on_another_at_once() {
    let tiers = start_with(|_| {});
    let other = second(&tiers, |_| {});
    assert_eq!(code(tiers.addr(), "register", "player", "password1"), 4);
    let first = token_of(&login(tiers.addr(), "player", "password1"));
    let second_session = token_of(&login(tiers.addr(), "player", "password1"));
    let done = with_token(tiers.addr(), "logout", &first);
    assert_eq!(
        (done["code"].clone(), done["info"].clone()),
        (json!(11), json!("done"))
    );
    assert_eq!(
        outcome(&with_token(other.local_addr(), "verify", &first)),
        (10, "revoked")
    );
    assert_eq!(
        outcome(&with_token(other.local_addr(), "refresh", &first)),
        (10, "revoked")
    );
    // Only that session: the other still stands.
    assert_eq!(
        with_token(other.local_addr(), "verify", &second_session)["code"],
        9
    );
    // Logging out twice is still done.
    assert_eq!(with_token(other.local_addr(), "logout", &first)["code"], 11);
}

#[test]
fn logout_all_voids_every_older_session_but_not_the_next() {
    let tiers = start_with(|_| {});
    let other = second(&tiers, |_| {});
    assert_eq!(code(tiers.addr(), "register", "many", "password1"), 4);
    let tokens: Vec<String> = (0..3)
        .map(|_| token_of(&login(tiers.addr(), "many", "password1")))
        .collect();
    assert_eq!(
        with_token(other.local_addr(), "logout_all", &tokens[0])["code"],
        11
    );
    for token in &tokens {
        assert_eq!(
            outcome(&with_token(tiers.addr(), "verify", token)),
            (10, "revoked")
        );
    }
    // A session begun right after, within the same second, stands: compared to the millisecond.
    let next = token_of(&login(tiers.addr(), "many", "password1"));
    assert_eq!(with_token(other.local_addr(), "verify", &next)["code"], 9);
    // A revoked token cannot void the new session.
    assert_eq!(
        outcome(&with_token(tiers.addr(), "logout_all", &tokens[1])),
        (10, "revoked")
    );
    assert_eq!(with_token(tiers.addr(), "verify", &next)["code"], 9);
}

#[test]
fn change_password_voids_older_sessions_and_swaps_the_password() {
    let tiers = start_with(|c| c.service.throttle.max_failures = 3);
    let other = second(&tiers, |c| c.service.throttle.max_failures = 3);
    assert_eq!(code(tiers.addr(), "register", "mover", "password1"), 4);
    let old = token_of(&login(tiers.addr(), "mover", "password1"));
    let change = |addr, password: &str, new: &str| {
        ask(
            addr,
            json!({"OP": "change_password", "username": "MOVER", "password": password, "new_password": new}),
        )
    };
    // A new password the rules refuse: 5 with the reason; nothing changes.
    assert_eq!(
        outcome(&change(tiers.addr(), "password1", "short")),
        (5, "invalid_password")
    );
    // The wrong old password: 2, and counted like a failed login.
    assert_eq!(change(tiers.addr(), "wrong-one", "password2")["code"], 2);
    let reply = change(other.local_addr(), "password1", "password2");
    assert_eq!(reply["code"], 11, "{reply}");
    let fresh = token_of(&reply);
    assert_eq!(
        outcome(&with_token(tiers.addr(), "verify", &old)),
        (10, "revoked")
    );
    assert_eq!(with_token(tiers.addr(), "verify", &fresh)["code"], 9);
    assert_eq!(code(tiers.addr(), "login", "mover", "password1"), 2);
    assert_eq!(code(other.local_addr(), "login", "mover", "password2"), 3);
    // Wrong old passwords lock the account (3 failures here), as failed logins do: 8.
    for _ in 0..3 {
        assert_eq!(change(tiers.addr(), "password1", "password3")["code"], 2);
    }
    assert_eq!(
        change(other.local_addr(), "password2", "password3")["code"],
        8
    );
    // Unknown user: 1.
    let unknown = ask(
        tiers.addr(),
        json!({"OP": "change_password", "username": "nobody", "password": "password1", "new_password": "password2"}),
    );
    assert_eq!(unknown["code"], 1);
}

#[test]
fn refresh_keeps_the_session_until_its_max_age() {
    let clock = Clock::adjustable();
    let tiers = common::start_on_clock(&clock, |c| {
        c.service.session_max_age = Duration::from_millis(1500)
    });
    assert_eq!(code(tiers.addr(), "register", "stayer", "password1"), 4);
    let token = token_of(&login(tiers.addr(), "stayer", "password1"));
    clock.advance(Duration::from_millis(1100)); // a later iat
    let refreshed = with_token(tiers.addr(), "refresh", &token);
    assert_eq!(refreshed["code"], 9, "{refreshed}");
    assert_eq!(refreshed["username"], "stayer");
    let new = token_of(&refreshed);
    let (before, after) = (claims(&token), claims(&new));
    assert_eq!(after["sid"], before["sid"]);
    assert_eq!(after["auth_ms"], before["auth_ms"]);
    assert_eq!(after["auth_time"], before["auth_time"]);
    assert!(after["iat"].as_i64() > before["iat"].as_i64());
    assert!(after["exp"].as_i64() > before["exp"].as_i64());
    assert_eq!(with_token(tiers.addr(), "verify", &new)["code"], 9);
    // Past the max age, a refresh is refused; logging out still ends the session.
    clock.advance(Duration::from_millis(500));
    assert_eq!(
        outcome(&with_token(tiers.addr(), "refresh", &new)),
        (10, "expired"),
        "past --session-max-age"
    );
    assert_eq!(with_token(tiers.addr(), "logout", &new)["code"], 11);
    assert_eq!(
        outcome(&with_token(tiers.addr(), "verify", &token)),
        (10, "revoked")
    );
}

#[test]
fn the_jwks_at_keys_verifies_tokens_without_our_key_file() {
    let tiers = start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(code(tiers.addr(), "register", "outsider", "password1"), 4);
    let token = token_of(&login(tiers.addr(), "outsider", "password1"));
    let (status, body) = http_get(tiers.server.metrics_addr().unwrap(), "/keys");
    assert_eq!(status, 200);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["name"], "outsider");
    // The public key only: it cannot sign.
    assert!(!body.contains("\"d\""), "{body}");
}

#[test]
fn a_key_rotation_keeps_old_tokens_valid() {
    let dir = tempfile::tempdir().unwrap();
    let old_path = dir.path().join("old.key");
    let old = SigningKey::create(&old_path).unwrap();
    let tiers = start_with(|c| c.token_key = Some(Arc::new(SigningKey::read(&old_path).unwrap())));
    assert_eq!(code(tiers.addr(), "register", "rotor", "password1"), 4);
    let before = token_of(&login(tiers.addr(), "rotor", "password1"));
    // The new login-server signs with a new key and still trusts the old one.
    let new = Arc::new(SigningKey::generate().unwrap());
    let rotated = second(&tiers, |c| {
        c.token_key = Some(new.clone());
        c.token_verify_key = vec![old_path.clone()];
    });
    assert_eq!(
        with_token(rotated.local_addr(), "verify", &before)["code"],
        9
    );
    let after = token_of(&login(rotated.local_addr(), "rotor", "password1"));
    let kid = jsonwebtoken::decode_header(&after).unwrap().kid.unwrap();
    assert_eq!(kid, new.verify_key().kid);
    assert_ne!(kid, old.verify_key().kid);
    // Without the old key, the old token is a stranger's.
    let forgetful = second(&tiers, |c| c.token_key = Some(new.clone()));
    assert_eq!(
        outcome(&with_token(forgetful.local_addr(), "verify", &before)),
        (10, "bad_signature")
    );
}

#[test]
fn embedded_mode_creates_a_private_token_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        LoginServer::spawn(LoginServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().to_path_buf(),
            hash_params: login_server::auth::password::HashParams::CHEAPEST,
            ..LoginServerConfig::default()
        })
        .unwrap()
    };
    let server = start();
    let path = dir.path().join("token.key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        code(server.local_addr(), "register", "homebody", "password1"),
        4
    );
    let token = token_of(&login(server.local_addr(), "homebody", "password1"));
    server.shutdown();
    // Restarted on the same directory: the same key, so the token still verifies.
    let server = start();
    assert_eq!(with_token(server.local_addr(), "verify", &token)["code"], 9);
}
