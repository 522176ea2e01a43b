//! Devices and guests over the real tiers, on both stores: a device's first login makes a
//! guest, a guest claims a name, devices are linked, listed and unlinked, and the throttle and
//! the limits hold. PostgreSQL cases are skipped, with a line saying so, where no PostgreSQL
//! answers and REQUIRE_POSTGRES is not set.

mod common;

use common::{StreamClient, TestDatabase};
use login_server::accountdb::admin::{run, Admin, Reply};
use login_server::accountdb::store::{PostgresStore, SqliteStore, Store};
use login_server::auth::secret::Secret;
use login_server::{AccountDb, AccountDbConfig, LoginServer, LoginServerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Both tiers on one store; the PostgreSQL database (if any) lives as long as they do.
struct On {
    server: LoginServer,
    _db: AccountDb,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
    _pg: Option<TestDatabase>,
}

impl On {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// Both tiers on `store`, login-server's configuration tweaked by `tweak`.
fn tiers(
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
    pg: Option<TestDatabase>,
    tweak: &dyn Fn(&mut LoginServerConfig),
) -> On {
    let secret = Secret::generate();
    let config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
    let db = AccountDb::spawn(config, store.clone()).expect("start account-db");
    let mut config = common::config(db.local_addr(), &secret);
    tweak(&mut config);
    let server = LoginServer::spawn(config).expect("start login-server");
    On {
        server,
        _db: db,
        store,
        _dir: dir,
        _pg: pg,
    }
}

/// Run `case` on SQLite, then on PostgreSQL where there is one.
fn on_both(tweak: &dyn Fn(&mut LoginServerConfig), case: &dyn Fn(&On)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(dir.path()).unwrap());
    case(&tiers(sqlite, dir, None, tweak));
    let Some(pg) = common::postgres_database() else {
        return;
    };
    let store = Arc::new(PostgresStore::open(&pg.url, 8, Duration::from_secs(5)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    case(&tiers(store, dir, Some(pg), tweak));
}

/// One stream-form request: its reply.
fn ask(addr: SocketAddr, request: Value) -> Value {
    let mut client = StreamClient::new(addr);
    client.send(format!("{request}\n").as_bytes());
    client.recv()
}

/// A device id and secret of the right shapes, told apart by `n`.
fn device(n: &str) -> (String, String) {
    (
        format!("device-{n:-<16}"),
        format!("secret-{n}-0123456789abcdefghij"),
    )
}

fn device_login(addr: SocketAddr, n: &str, ip: &str) -> Value {
    let (id, secret) = device(n);
    ask(
        addr,
        json!({"OP": "device", "device_id": id, "device_secret": secret, "ip": ip}),
    )
}

fn with_token(addr: SocketAddr, op: &str, token: &Value, more: Value) -> Value {
    let mut request = json!({"OP": op, "token": token});
    if let (Some(request), Some(more)) = (request.as_object_mut(), more.as_object()) {
        request.extend(more.clone());
    }
    ask(addr, request)
}

const IP: &str = "198.51.100.7";

#[test]
fn a_first_login_makes_a_guest_and_later_ones_log_into_it() {
    on_both(&|_| {}, &|on| {
        let first = device_login(on.addr(), "a", IP);
        assert_eq!(first["code"], 3, "{first}");
        assert_eq!(
            (&first["guest"], &first["created"]),
            (&json!(true), &json!(true))
        );
        assert!(first.get("username").is_none(), "{first}");
        let id = first["account_id"].as_u64().expect("an account id");
        let again = device_login(on.addr(), "a", IP);
        assert_eq!(again["code"], 3, "{again}");
        assert_eq!(again["account_id"], id);
        assert!(again.get("created").is_none(), "{again}");
        // Its token verifies as a guest's: no name, never null.
        let verified = with_token(on.addr(), "verify", &again["token"], json!({}));
        assert_eq!(verified["code"], 9, "{verified}");
        assert_eq!(verified["guest"], true);
        assert!(verified.get("username").is_none(), "{verified}");
        // Another device is another guest.
        let other = device_login(on.addr(), "b", IP);
        assert_ne!(other["account_id"], id);
        // The store keeps the secret's SHA-256, never the secret.
        let (device_id, secret) = device("a");
        let kept = on.store.devices(id).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].device_id, device_id);
        assert_eq!(kept[0].secret_hash.len(), 64);
        assert!(!kept[0].secret_hash.contains(&secret));
    });
}

#[test]
fn malformed_devices_and_short_secrets_are_bad_requests() {
    let on = common::start();
    let (id, secret) = device("x");
    for (device_id, device_secret, field) in [
        ("short", secret.as_str(), "device_id"),
        ("has space in it, long enough", secret.as_str(), "device_id"),
        (&"x".repeat(129)[..], secret.as_str(), "device_id"),
        (id.as_str(), "only-21-characters-ab", "device_secret"),
        (id.as_str(), "twenty-two-but-with-a!", "device_secret"),
    ] {
        let reply = ask(
            on.addr(),
            json!({"OP": "device", "device_id": device_id, "device_secret": device_secret}),
        );
        assert_eq!(reply["code"], 6, "{reply}");
        let info = reply["info"].as_str().unwrap();
        assert!(info.contains(field), "{info}");
        assert!(
            !info.contains(device_secret),
            "the secret is not echoed: {info}"
        );
    }
    // 22 base64url characters are enough, and `=` padding is allowed.
    let reply = ask(
        on.addr(),
        json!({"OP": "device", "device_id": id, "device_secret": "abcdefghijklmnopqrstuv=="}),
    );
    assert_eq!(reply["code"], 3, "{reply}");
    let reply = ask(on.addr(), json!({"OP": "device", "device_id": id}));
    assert_eq!(reply["code"], 6, "{reply}");
    assert!(reply["info"].as_str().unwrap().contains("device_secret"));
}

#[test]
fn wrong_secrets_lock_the_device_not_the_password_login_from_a_familiar_address() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        assert_eq!(
            common::code_from(addr, "register", "Keeper", "keeper-pw-1", IP),
            4
        );
        assert_eq!(
            common::code_from(addr, "login", "Keeper", "keeper-pw-1", IP),
            3
        );
        let login = ask(
            addr,
            json!({"OP": "login", "username": "keeper", "password": "keeper-pw-1", "ip": IP}),
        );
        let (id, _) = device("k");
        let linked = with_token(
            addr,
            "link_device",
            &login["token"],
            json!({"device_id": id, "device_secret": device("k").1}),
        );
        assert_eq!(linked["code"], 11, "{linked}");
        // From another address, wrong secrets: 2, until the device locks (5 by default).
        let attacker = "203.0.113.66";
        let wrong = |from: &str| {
            ask(
                addr,
                json!({"OP": "device", "device_id": id,
                       "device_secret": "wrong-secret-0123456789abc", "ip": from}),
            )
        };
        for _ in 0..5 {
            assert_eq!(wrong(attacker)["code"], 2);
        }
        let locked = wrong("203.0.113.67");
        assert_eq!(locked["code"], 8, "{locked}");
        assert!(locked["retry_after"].as_u64().unwrap() >= 1);
        // Even the right secret, from a stranger's address: locked.
        let right = ask(
            addr,
            json!({"OP": "device", "device_id": id, "device_secret": device("k").1,
                   "ip": "203.0.113.68"}),
        );
        assert_eq!(right["code"], 8, "{right}");
        // The account's password login from its familiar address is not locked.
        assert_eq!(
            common::code_from(addr, "login", "Keeper", "keeper-pw-1", IP),
            3
        );
    });
}

#[test]
fn of_two_first_uses_of_one_device_at_once_exactly_one_creates() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        let barrier = Arc::new(Barrier::new(8));
        let replies: Vec<Value> = (0..8)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    device_login(addr, "race", &format!("192.0.2.{}", i + 1))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let created = replies.iter().filter(|r| r["created"] == true).count();
        assert_eq!(created, 1, "{replies:?}");
        let id = replies.iter().find(|r| r["created"] == true).unwrap()["account_id"].clone();
        for reply in &replies {
            match reply["code"].as_u64() {
                Some(2) => {}
                Some(3) => assert_eq!(reply["account_id"], id, "{reply}"),
                _ => panic!("{reply}"),
            }
        }
        assert_eq!(on.store.devices(id.as_u64().unwrap()).unwrap().len(), 1);
    });
}

#[test]
fn a_guest_claims_a_name_and_keeps_its_id_and_devices() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        assert_eq!(common::code(addr, "register", "Taken", "taken-pw-1"), 4);
        let guest = device_login(addr, "g", IP);
        let id = guest["account_id"].clone();
        let token = &guest["token"];
        let claim = |name: &str| {
            with_token(
                addr,
                "claim",
                token,
                json!({"username": name, "password": "hero-pw-1", "ip": IP}),
            )
        };
        // Under every registration rule.
        assert_eq!(claim("TAKEN")["reason"], "username_taken");
        assert_eq!(
            claim("ＴＡＫＥＮ")["reason"],
            "username_taken",
            "a look-alike"
        );
        assert_eq!(claim("no spaces")["reason"], "invalid_username");
        let short = with_token(
            addr,
            "claim",
            token,
            json!({"username": "Hero", "password": "short"}),
        );
        assert_eq!(short["reason"], "invalid_password");
        let claimed = claim("Hero");
        assert_eq!(claimed["code"], 4, "{claimed}");
        assert_eq!(claimed["account_id"], id);
        assert_eq!(claimed["username"], "Hero");
        // Its new token is the full account's.
        let verified = with_token(addr, "verify", &claimed["token"], json!({}));
        assert_eq!(
            (&verified["code"], &verified["username"]),
            (&json!(9), &json!("Hero"))
        );
        assert!(verified.get("guest").is_none(), "{verified}");
        // The name and password log into the same account; so does the device.
        let login = ask(
            addr,
            json!({"OP": "login", "username": "hero", "password": "hero-pw-1"}),
        );
        assert_eq!((&login["code"], &login["account_id"]), (&json!(3), &id));
        let again = device_login(addr, "g", IP);
        assert_eq!(
            (&again["code"], &again["username"]),
            (&json!(3), &json!("Hero"))
        );
        assert!(again.get("guest").is_none(), "{again}");
        // The old guest token stays valid; refreshed, it is the full account's.
        let refreshed = with_token(addr, "refresh", token, json!({}));
        assert_eq!(refreshed["code"], 9, "{refreshed}");
        assert_eq!(refreshed["username"], "Hero");
        let claims = jwt_claims(refreshed["token"].as_str().unwrap());
        assert_eq!(claims["name"], "Hero");
        assert!(claims.get("guest").is_none(), "{claims}");
        // A full account cannot claim, with an old guest token or its own.
        assert_eq!(claim("Another")["reason"], "already_claimed");
        let full = with_token(
            addr,
            "claim",
            &claimed["token"],
            json!({"username": "Another", "password": "hero-pw-1"}),
        );
        assert_eq!(
            (&full["code"], &full["reason"]),
            (&json!(5), &json!("already_claimed"))
        );
    });
}

/// The claims of a JWT, unchecked.
fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[test]
fn of_two_claims_of_one_guest_one_wins_and_a_link_of_its_device_elsewhere_is_refused() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        assert_eq!(common::code(addr, "register", "Other", "other-pw-1"), 4);
        let other = ask(
            addr,
            json!({"OP": "login", "username": "other", "password": "other-pw-1"}),
        );
        let guest = device_login(addr, "twice", IP);
        let barrier = Arc::new(Barrier::new(3));
        let (id, secret) = device("twice");
        let threads: Vec<_> = ["First", "Second"]
            .into_iter()
            .map(|name| {
                let (barrier, token) = (barrier.clone(), guest["token"].clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    with_token(
                        addr,
                        "claim",
                        &token,
                        json!({"username": name, "password": "claim-pw-1"}),
                    )
                })
            })
            .collect();
        let link = {
            let (barrier, token) = (barrier.clone(), other["token"].clone());
            std::thread::spawn(move || {
                barrier.wait();
                with_token(
                    addr,
                    "link_device",
                    &token,
                    json!({"device_id": id, "device_secret": secret}),
                )
            })
        };
        let claims: Vec<Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<&Value> = claims.iter().filter(|r| r["code"] == 4).collect();
        assert_eq!(won.len(), 1, "{claims:?}");
        let lost = claims.iter().find(|r| r["code"] != 4).unwrap();
        assert_eq!(lost["reason"], "already_claimed", "{lost}");
        let link = link.join().unwrap();
        assert_eq!(
            (&link["code"], &link["reason"]),
            (&json!(5), &json!("device_taken"))
        );
        // The loser's name stays free.
        let winner = won[0]["username"].as_str().unwrap();
        let loser = if winner == "First" { "Second" } else { "First" };
        assert_eq!(common::code(addr, "register", loser, "pw-of-loser-1"), 4);
    });
}

#[test]
fn devices_are_linked_listed_and_unlinked_and_unlinking_ends_their_sessions() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        let guest = device_login(addr, "first", IP);
        let token = guest["token"].clone();
        let (second, second_secret) = device("second");
        let linked = with_token(
            addr,
            "link_device",
            &token,
            json!({"device_id": second, "device_secret": second_secret}),
        );
        assert_eq!(linked["code"], 11, "{linked}");
        let from_second = device_login(addr, "second", IP);
        assert_eq!(from_second["account_id"], guest["account_id"]);
        assert!(from_second.get("created").is_none());
        let listed = with_token(addr, "devices", &token, json!({}));
        assert_eq!(listed["code"], 11, "{listed}");
        let ids: Vec<&str> = listed["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2, "{listed}");
        assert!(ids.contains(&second.as_str()) && ids.contains(&device("first").0.as_str()));
        for d in listed["devices"].as_array().unwrap() {
            assert!(d["linked_at"].as_i64().unwrap() > 1_700_000_000, "{d}");
            assert!(d["last_used"].as_i64().is_some(), "{d}");
            assert!(d.get("secret_hash").is_none(), "{d}");
        }
        // Unlinked: the sessions it began are revoked at once; the others stand.
        let unlinked = with_token(addr, "unlink_device", &token, json!({"device_id": second}));
        assert_eq!(unlinked["code"], 11, "{unlinked}");
        let ended = with_token(addr, "verify", &from_second["token"], json!({}));
        assert_eq!(
            (&ended["code"], &ended["reason"]),
            (&json!(10), &json!("revoked"))
        );
        let refreshed = with_token(addr, "refresh", &from_second["token"], json!({}));
        assert_eq!(refreshed["code"], 10, "{refreshed}");
        assert_eq!(with_token(addr, "verify", &token, json!({}))["code"], 9);
        // The device, unlinked, is a stranger again: its next login makes a new guest.
        let fresh = device_login(addr, "second", IP);
        assert_eq!(fresh["created"], true, "{fresh}");
        assert_ne!(fresh["account_id"], guest["account_id"]);
        // A guest's last device cannot be unlinked; a device not its own is unknown.
        let (first, _) = device("first");
        let last = with_token(addr, "unlink_device", &token, json!({"device_id": first}));
        assert_eq!(
            (&last["code"], &last["reason"]),
            (&json!(5), &json!("last_credential"))
        );
        let stranger = with_token(addr, "unlink_device", &token, json!({"device_id": second}));
        assert_eq!(stranger["reason"], "unknown_device", "{stranger}");
        // Another account's device cannot be linked.
        let taken = with_token(
            addr,
            "link_device",
            &token,
            json!({"device_id": second, "device_secret": device("second").1}),
        );
        assert_eq!(taken["reason"], "device_taken", "{taken}");
        // Logged out, the token does nothing.
        assert_eq!(with_token(addr, "logout", &token, json!({}))["code"], 11);
        let after = with_token(addr, "devices", &token, json!({}));
        assert_eq!(
            (&after["code"], &after["reason"]),
            (&json!(10), &json!("revoked"))
        );
    });
}

#[test]
fn guests_are_limited_per_address_and_in_all() {
    let tweak = |c: &mut LoginServerConfig| c.service.throttle.guest_limit = 2;
    on_both(&tweak, &|on| {
        let addr = on.addr();
        assert_eq!(device_login(addr, "l1", IP)["code"], 3);
        assert_eq!(device_login(addr, "l2", IP)["code"], 3);
        let third = device_login(addr, "l3", IP);
        assert_eq!(third["code"], 8, "{third}");
        assert!(third["retry_after"].as_u64().unwrap() > 3000, "{third}");
        // Known devices still log in from there; another address may make guests.
        assert_eq!(device_login(addr, "l1", IP)["code"], 3);
        assert_eq!(device_login(addr, "l3", "198.51.100.99")["code"], 3);
    });
    // --guest-rate: requests without an address are bounded by it alone.
    let on = common::start_with(|c| c.service.guest_rate = 2);
    let no_ip = |n: &str| {
        let (id, secret) = device(n);
        ask(
            on.addr(),
            json!({"OP": "device", "device_id": id, "device_secret": secret}),
        )
    };
    let codes: Vec<Value> = (0..4)
        .map(|i| no_ip(&format!("r{i}"))["code"].clone())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 3).count(), 2, "{codes:?}");
    assert!(codes.iter().any(|c| *c == 8), "{codes:?}");
    // A known device is not a creation: not bounded by it.
    assert_eq!(no_ip("r0")["code"], 3);
}

#[test]
fn usernames_stay_hidden_under_hide_user_existence() {
    let hide = |c: &mut LoginServerConfig| c.service.hide_user_existence = true;
    on_both(&hide, &|on| {
        let addr = on.addr();
        let guest = device_login(addr, "h", IP);
        assert_eq!(guest["code"], 3);
        let claimed = with_token(
            addr,
            "claim",
            &guest["token"],
            json!({"username": "Hidden", "password": "hidden-pw-1"}),
        );
        assert_eq!(claimed["code"], 4);
        // A wrong password of the claimed name and an unknown name answer alike.
        let wrong = ask(
            addr,
            json!({"OP": "login", "username": "hidden", "password": "wrong-pw-1"}),
        );
        let unknown = ask(
            addr,
            json!({"OP": "login", "username": "nobody-here", "password": "wrong-pw-1"}),
        );
        assert_eq!(
            (wrong["code"].clone(), unknown["code"].clone()),
            (json!(2), json!(2))
        );
        assert_eq!(wrong["info"], unknown["info"]);
        // No device reply names an account a player did not prove.
        let stranger = device_login(addr, "h2", IP);
        assert!(stranger.get("username").is_none(), "{stranger}");
    });
}

#[test]
fn seed_form_device_logins_work_and_close() {
    let on = common::start();
    let (id, secret) = device("seed");
    let message = json!([{"OP": "device", "device_id": id, "device_secret": secret}]);
    let reply = common::exchange(on.addr(), message.to_string().as_bytes());
    let reply: Value = serde_json::from_str(&reply).expect("a JSON reply");
    assert_eq!(reply[0]["code"], 3, "{reply}");
    assert_eq!(reply[0]["created"], true);
}

/// An admin command's output, or its error's text.
fn admin(store: &dyn Store, command: Admin) -> Result<String, String> {
    match run(store, &command, || None) {
        Ok(Reply::Done(out)) => Ok(out),
        Ok(Reply::Already(out)) => Err(format!("already: {out}")),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn operators_name_guests_by_id_and_see_ban_and_delete_them() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        let guest = device_login(addr, "op", IP);
        let id = guest["account_id"].as_u64().unwrap();
        let store = &*on.store;
        let shown = admin(
            store,
            Admin::Show {
                name: format!("#{id}"),
            },
        )
        .unwrap();
        assert!(shown.contains("name\tnone: a guest"), "{shown}");
        assert!(shown.contains(&format!("id\t{id}")), "{shown}");
        assert!(shown.contains("devices\t1"), "{shown}");
        assert!(shown.contains(&device("op").0), "{shown}");
        assert!(!shown.contains(&device("op").1), "no secret: {shown}");
        // A guest has no password or name to change.
        let set = Admin::SetPassword {
            name: format!("#{id}"),
            password: Some("whatever-1".into()),
            hash_params: login_server::auth::password::HashParams::CHEAPEST,
        };
        assert!(admin(store, set).unwrap_err().contains("is a guest"));
        // Banned: its device's login is answered 12, its session ends.
        let ban = Admin::Ban {
            name: format!("#{id}"),
            duration: None,
            reason: "cheating".into(),
        };
        admin(store, ban).unwrap();
        let banned = device_login(addr, "op", IP);
        assert_eq!(
            (&banned["code"], &banned["reason"]),
            (&json!(12), &json!("cheating"))
        );
        let verified = with_token(addr, "verify", &guest["token"], json!({}));
        assert_eq!(verified["code"], 10, "{verified}");
        admin(
            store,
            Admin::Unban {
                name: format!("#{id}"),
            },
        )
        .unwrap();
        assert_eq!(device_login(addr, "op", IP)["code"], 3);
        // Deleted: the device is a stranger again.
        let deleted = admin(
            store,
            Admin::Delete {
                name: format!("#{id}"),
            },
        )
        .unwrap();
        assert!(deleted.contains(&format!("id {id}")), "{deleted}");
        assert!(store.devices(id).unwrap().is_empty());
        let again = device_login(addr, "op", IP);
        assert_eq!(again["created"], true, "{again}");
        // A named account by #ID, and its devices listed.
        assert_eq!(common::code(addr, "register", "Named", "named-pw-1"), 4);
        let named = store.find("named").unwrap().unwrap();
        let shown = admin(
            store,
            Admin::Show {
                name: format!("#{}", named.id),
            },
        )
        .unwrap();
        assert!(
            shown.contains("name\tNamed") && shown.contains("devices\t0"),
            "{shown}"
        );
        let missing = admin(
            store,
            Admin::Show {
                name: "#999999".into(),
            },
        )
        .unwrap_err();
        assert!(missing.contains("no account"), "{missing}");
    });
}

#[test]
fn idle_guests_are_pruned_by_the_operator_or_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let secret = Secret::generate();
    let serve = |idle_days: u32| {
        let mut config = AccountDbConfig::embedded("127.0.0.1:0".parse().unwrap(), secret.clone());
        config.guest_idle_days = idle_days;
        AccountDb::spawn(config, store.clone()).expect("start account-db")
    };
    let db = serve(0);
    let server = LoginServer::spawn(common::config(db.local_addr(), &secret)).unwrap();
    let addr = server.local_addr();
    let idle = device_login(addr, "idle", IP)["account_id"]
        .as_u64()
        .unwrap();
    let busy = device_login(addr, "busy", IP)["account_id"]
        .as_u64()
        .unwrap();
    assert_eq!(common::code(addr, "register", "Owner", "owner-pw-1"), 4);
    drop(server);
    drop(db);
    // Nothing is idle yet: said, and nothing changed.
    let prune = |dry_run| Admin::PruneGuests { idle: 30, dry_run };
    assert!(admin(&*store, prune(false))
        .unwrap_err()
        .starts_with("already"));
    // The idle guest's device last logged in 31 days ago.
    let long_ago = login_server::clock::now_ms() - 31 * 86_400_000;
    store.touch_device(&device("idle").0, long_ago).unwrap();
    let counted = admin(&*store, prune(true)).unwrap();
    assert!(counted.starts_with("1 guests"), "{counted}");
    assert!(
        store.details_by_id(idle).unwrap().is_some(),
        "a dry run deletes nothing"
    );
    // In the background, at start, with --guest-idle-days.
    let db = serve(30);
    common::eventually(Duration::from_secs(10), "the idle guest pruned", || {
        store.details_by_id(idle).unwrap().is_none()
    });
    assert!(store.devices(idle).unwrap().is_empty());
    assert!(store.details_by_id(busy).unwrap().is_some());
    assert!(
        store.find("owner").unwrap().is_some(),
        "named accounts are never pruned"
    );
    drop(db);
    // By the operator: the same, and said.
    store.touch_device(&device("busy").0, long_ago).unwrap();
    let pruned = admin(&*store, prune(false)).unwrap();
    assert!(pruned.starts_with("deleted 1 guests"), "{pruned}");
    assert!(store.details_by_id(busy).unwrap().is_none());
}

#[test]
fn linking_and_unlinking_without_end_keeps_the_revocations_bounded() {
    use login_server::accountdb::store::{Device, Linked, Unlinked, REVOKED_PER_ACCOUNT};
    on_both(&|_| {}, &|on| {
        assert_eq!(
            common::code(on.addr(), "register", "Churner", "churn-pw-1"),
            4
        );
        let id = on.store.find("churner").unwrap().unwrap().id;
        let store = &*on.store;
        let now = login_server::clock::now_ms();
        let voided = || {
            store
                .session(id, "any", None)
                .unwrap()
                .unwrap()
                .sessions_after
        };
        for round in 0..REVOKED_PER_ACCOUNT + 4 {
            let device = Device {
                device_id: device("churn").0,
                account_id: id,
                secret_hash: "0".repeat(64),
                link: format!("link-{round}"),
                linked_ms: now,
                last_used_ms: now,
            };
            assert_eq!(store.link_device(&device).unwrap(), Linked::Done);
            let until = now + 86_400_000;
            assert_eq!(
                store
                    .unlink_device(id, &device.device_id, now, until)
                    .unwrap(),
                Unlinked::Done
            );
            if round < REVOKED_PER_ACCOUNT {
                assert_eq!(
                    voided(),
                    0,
                    "round {round}: each unlink revokes its own link"
                );
            }
        }
        // Past the bound, an unlink voids the account's sessions instead of adding a row.
        assert_eq!(voided(), now);
    });
}

/// Delete account `id`'s row and nothing else, as a release that knows no devices does.
fn delete_row_only(on: &On, id: u64) {
    let id = i64::try_from(id).unwrap();
    match &on._pg {
        Some(pg) => {
            let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
            client
                .execute("DELETE FROM accounts WHERE id = $1", &[&id])
                .unwrap();
        }
        None => {
            let file = on._dir.path().join("accounts.sqlite3");
            let conn = rusqlite::Connection::open(file).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            conn.execute("DELETE FROM accounts WHERE id = ?1", [id])
                .unwrap();
        }
    }
}

#[test]
fn a_device_whose_account_is_gone_is_free_again() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        let first = device_login(addr, "orphan", IP);
        let gone = first["account_id"].as_u64().unwrap();
        delete_row_only(on, gone);
        // Its next login makes a new guest, rather than failing for good.
        let again = device_login(addr, "orphan", IP);
        assert_eq!(
            (&again["code"], &again["created"]),
            (&json!(3), &json!(true)),
            "{again}"
        );
        assert_ne!(again["account_id"], gone);
        // And it may be linked elsewhere once its new guest lets it go.
        let taken = on
            .store
            .devices(again["account_id"].as_u64().unwrap())
            .unwrap();
        assert_eq!(taken.len(), 1);
        delete_row_only(on, again["account_id"].as_u64().unwrap());
        assert_eq!(common::code(addr, "register", "Adopter", "adopter-pw-1"), 4);
        let login = ask(
            addr,
            json!({"OP": "login", "username": "adopter", "password": "adopter-pw-1"}),
        );
        let (id, secret) = device("orphan");
        let linked = with_token(
            addr,
            "link_device",
            &login["token"],
            json!({"device_id": id, "device_secret": secret}),
        );
        assert_eq!(linked["code"], 11, "{linked}");
    });
}

#[test]
fn the_address_that_made_a_guest_passes_its_lock_and_padding_is_one_secret() {
    on_both(&|_| {}, &|on| {
        let addr = on.addr();
        let (id, secret) = ("fresh-device-0123456789", "abcdefghijklmnopqrstuvw");
        let login = |secret: &str, ip: Option<&str>| {
            let mut request = json!({"OP": "device", "device_id": id, "device_secret": secret});
            if let Some(ip) = ip {
                request["ip"] = ip.into();
            }
            ask(addr, request)
        };
        assert_eq!(login(secret, Some(IP))["created"], true);
        // A second address the player logs in from becomes familiar too.
        let second = Some("198.51.100.99");
        assert_eq!(login(secret, second)["code"], 3);
        // A stranger who knows the id locks the device...
        for _ in 0..5 {
            assert_eq!(login("wrong-wrong-wrong-wrong-1", None)["code"], 2);
        }
        assert_eq!(login(secret, Some("203.0.113.9"))["code"], 8);
        // ...but not for the player at the address that made the guest (found by a hostile
        // review: only a second login made it familiar).
        assert_eq!(login(secret, Some(IP))["code"], 3);
        assert_eq!(login(secret, second)["code"], 3);
        // `=` padding, added or not, is the same secret, and never a wrong one.
        assert_eq!(login(&format!("{secret}="), Some(IP))["code"], 3);
        assert_eq!(login(&format!("{secret}=="), Some(IP))["code"], 3);
    });
}

#[test]
fn a_devices_last_use_is_written_once_an_hour_at_most() {
    on_both(&|_| {}, &|on| {
        let id = device_login(on.addr(), "hourly", IP)["account_id"]
            .as_u64()
            .unwrap();
        let last_used = || on.store.devices(id).unwrap()[0].last_used_ms;
        let created = last_used();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(device_login(on.addr(), "hourly", IP)["code"], 3);
        assert_eq!(
            last_used(),
            created,
            "a login within the hour writes nothing"
        );
        // Two hours old: the next login writes it.
        let before = login_server::clock::now_ms();
        on.store
            .touch_device(&device("hourly").0, before - 2 * 3_600_000)
            .unwrap();
        assert_eq!(device_login(on.addr(), "hourly", IP)["code"], 3);
        let touched = last_used();
        assert!(touched >= before, "{touched} < {before}");
    });
}
