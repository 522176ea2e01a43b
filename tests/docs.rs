//! The docs stay true to the code: the README's flag tables are generated from the
//! configuration structs (the same place `--help` comes from), and every flag's doc states
//! its real default.
//!
//! After changing a flag, regenerate the tables with `UPDATE_README=1 cargo test --test docs`.

mod common;

use clap::CommandFactory;
use login_server::{AccountDbConfig, LoginServerConfig};

/// The flags a user can set: everything but `--help` and `--version`.
fn flags(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
}

fn help(arg: &clap::Arg) -> String {
    arg.get_help().map(|h| h.to_string()).unwrap_or_default()
}

/// The README table of `command`'s flags: flag, environment variable, default, meaning.
fn table(command: &clap::Command) -> String {
    let mut out = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
    for arg in flags(command) {
        let long = arg.get_long().unwrap_or_default();
        let flag = match arg.get_value_names() {
            Some(names) if arg.get_action().takes_values() => format!("--{long} {}", names[0]),
            _ => format!("--{long}"),
        };
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let help = help(arg);
        let (meaning, default) = help.split_once(" Defaults to ").unwrap_or((&help, ""));
        let default = default.trim_end_matches('.');
        out.push_str(&format!("| `{flag}` | `{env}` | {default} | {meaning} |\n"));
    }
    out
}

/// The README with each generated table between its markers replaced by `tables`.
fn with_tables(readme: &str, tables: &[(&str, String)]) -> String {
    let mut out = readme.to_string();
    for (name, table) in tables {
        let begin = format!("<!-- flags: {name} -->\n");
        let end = "<!-- end flags -->";
        let start = out.find(&begin).expect("table marker in README") + begin.len();
        let stop = start + out[start..].find(end).expect("end marker in README");
        out.replace_range(start..stop, table);
    }
    out
}

#[test]
fn readme_flag_tables_are_generated_from_the_configuration() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let tables = [
        ("login-server", table(&LoginServerConfig::command())),
        ("account-db", table(&AccountDbConfig::command())),
    ];
    let expected = with_tables(&readme, &tables);
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(path, &expected).expect("write README.md");
        return;
    }
    assert!(
        readme == expected,
        "README's flag tables differ from the configuration structs; run \
         `UPDATE_README=1 cargo test --test docs`. Expected:\n{}\n{}",
        tables[0].1,
        tables[1].1
    );
}

#[test]
fn every_flag_states_its_real_default() {
    for command in [LoginServerConfig::command(), AccountDbConfig::command()] {
        for arg in flags(&command) {
            let help = help(arg);
            let Some((_, stated)) = help.split_once(" Defaults to ") else {
                panic!("--{:?} does not say what it defaults to", arg.get_long());
            };
            for default in arg.get_default_values() {
                let default = default.to_string_lossy();
                assert!(
                    stated.starts_with(&*default),
                    "--{:?} defaults to {default} but says {stated:?}",
                    arg.get_long()
                );
            }
        }
    }
}

#[test]
fn defaults_are_the_flags_defaults() {
    let config = LoginServerConfig::default();
    assert_eq!(config.listen.to_string(), "127.0.0.1:6999");
    assert_eq!(config.queue, 1024);
    assert_eq!(config.service.throttle.max_failures, 5);
    assert_eq!(config.service.rules.username_chars, (3, 32));
    assert_eq!(config.db_timeout.as_secs(), 2);
    assert!(config.db.is_empty() && config.workers.is_none());
    assert_eq!(AccountDbConfig::default().max_connections, 256);
}

/// Every `reason` of a refused registration, spelled as the wire spells it. The match fails to
/// compile when a reason is added, so this list (and protocol.md) cannot fall behind.
fn register_reasons() -> Vec<String> {
    use login_server::protocol::gateway::RegisterFailure::{self, *};
    let all = [
        UsernameTaken,
        InvalidUsername,
        InvalidPassword,
        RegistrationClosed,
        AlreadyClaimed,
        DeviceTaken,
        LastCredential,
        UnknownDevice,
        TooManyDevices,
    ];
    for reason in all {
        match reason {
            UsernameTaken | InvalidUsername | InvalidPassword | RegistrationClosed
            | AlreadyClaimed | DeviceTaken | LastCredential | UnknownDevice | TooManyDevices => {}
        }
    }
    all.iter()
        .map(|r: &RegisterFailure| serde_json::to_string(r).expect("a reason"))
        .collect()
}

#[test]
fn protocol_md_lists_every_registration_reason() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let protocol = std::fs::read_to_string(path).expect("docs/protocol.md");
    let row = protocol
        .lines()
        .find(|l| l.starts_with("| 5 |"))
        .expect("the row of code 5");
    for reason in register_reasons() {
        let reason = reason.trim_matches('"');
        assert!(
            row.contains(&format!("`{reason}`")),
            "{reason} missing: {row}"
        );
    }
}

/// The fixed `info` of a reply code, `None` where the text says what went wrong. The match
/// fails to compile when a code is added, so protocol.md's table cannot fall behind.
fn fixed_info(code: login_server::protocol::gateway::Code) -> Option<String> {
    use login_server::protocol::gateway::{Code::*, RegisterFailure, Reply, SupportReason};
    use login_server::tokens::Invalid;
    let reply = match code {
        NoSuchUser => Reply::no_such_user(),
        WrongPassword => Reply::wrong_password(),
        LoggedIn => Reply::logged_in("a".into(), 1),
        Registered => Reply::registered("a".into()),
        RegisterFailed => Reply::register_failed(RegisterFailure::UsernameTaken),
        BadRequest | Unavailable => return None,
        TooManyAttempts => Reply::too_many_attempts(std::time::Duration::from_secs(1)),
        Valid => Reply::valid("a".into(), 1, 0),
        InvalidToken => Reply::invalid_token(Invalid::Expired),
        Done => Reply::done(),
        Banned => Reply::banned(0, ""),
        ContactSupport => Reply::contact_support(SupportReason::NameConflict),
    };
    assert_eq!(reply.code, code);
    Some(reply.info)
}

#[test]
fn protocol_md_has_a_row_for_every_reply_code_with_its_text_and_reasons() {
    use login_server::protocol::gateway::{SupportReason, CODES};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let protocol = std::fs::read_to_string(path).expect("docs/protocol.md");
    for code in CODES {
        let n = code as u8;
        let row = protocol
            .lines()
            .find(|l| l.starts_with(&format!("| {n} |")))
            .unwrap_or_else(|| panic!("no row for code {n}"));
        if let Some(info) = fixed_info(code) {
            assert!(row.contains(&format!("| `{info}` |")), "code {n}: {row}");
        }
    }
    let row = protocol.lines().find(|l| l.starts_with("| 13 |")).unwrap();
    // Every reason: the match fails to compile when one is added.
    let reason = SupportReason::NameConflict;
    match reason {
        SupportReason::NameConflict => {}
    }
    let reason = serde_json::to_string(&reason).unwrap();
    assert!(
        row.contains(&format!("`{}`", reason.trim_matches('"'))),
        "{row}"
    );
}

#[test]
fn operations_md_lists_every_account_db_request_label() {
    use login_server::protocol::accountdb::DbRequest;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");
    let operations = std::fs::read_to_string(path).expect("docs/operations.md");
    let row = operations
        .lines()
        .find(|l| l.starts_with("| `accountdb_requests_total{op}` |"))
        .expect("the row of accountdb_requests_total");
    let listed: Vec<&str> = row.split('`').skip(3).step_by(2).collect();
    let mut labels: Vec<&str> = DbRequest::NAMES.to_vec();
    labels.push("unreadable");
    assert_eq!(listed, labels, "{row}");
}

/// The backticked JSON objects of a markdown table row, in order.
fn json_in(row: &str) -> Vec<&str> {
    row.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('{'))
        .collect()
}

#[test]
fn protocol_md_account_db_examples_are_the_wire_byte_for_byte() {
    use login_server::protocol::accountdb::{decode_line, encode_line, DbRequest, DbResponse};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let protocol = std::fs::read_to_string(path).expect("docs/protocol.md");
    let rows: Vec<&str> = protocol
        .lines()
        .skip_while(|l| !l.starts_with("| request | replies |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let mut named = Vec::new();
    for row in &rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        let (request, replies) = (json_in(cells[0]), json_in(cells[1]));
        let text = request
            .first()
            .unwrap_or_else(|| panic!("no request in {row}"));
        let parsed: DbRequest =
            decode_line(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            encode_line(&parsed),
            format!("{text}\n").into_bytes(),
            "{text}"
        );
        named.push(DbRequest::NAMES[parsed.index()]);
        assert!(!replies.is_empty(), "no reply in {row}");
        for text in replies {
            let parsed: DbResponse =
                decode_line(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                encode_line(&parsed),
                format!("{text}\n").into_bytes(),
                "{text}"
            );
        }
    }
    // Every request but `auth` (the handshake's, described above the table) has its row.
    let every: Vec<&str> = DbRequest::NAMES
        .iter()
        .copied()
        .filter(|n| *n != "auth")
        .collect();
    assert_eq!(named, every);
}

#[test]
fn architecture_md_traces_a_login_through_functions_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/architecture.md")).expect("doc");
    let section: String = doc
        .split("### A login, file by file")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the section")
        .to_string();
    // Every `src/...rs` `name` pair, and the short `file.rs` `name` pairs after one, name a
    // function that the file defines.
    let ticks: Vec<&str> = section.split('`').skip(1).step_by(2).collect();
    let mut checked = 0;
    let mut last_dir = String::new();
    for pair in ticks.windows(2) {
        let (file, name) = (pair[0], pair[1]);
        if !file.ends_with(".rs") || name.ends_with(".rs") {
            continue;
        }
        let path = if file.starts_with("src/") {
            last_dir = file.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            file.to_string()
        } else if file.contains('/') {
            format!("src/{file}")
        } else {
            let candidates = [
                format!("{last_dir}/{file}"),
                format!("src/login/{file}"),
                format!("src/protocol/{file}"),
                format!("src/service/{file}"),
            ];
            candidates
                .into_iter()
                .find(|p| std::path::Path::new(&format!("{root}/{p}")).exists())
                .unwrap_or_else(|| panic!("{file}: no such file"))
        };
        let text = std::fs::read_to_string(format!("{root}/{path}"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            text.contains(&format!("fn {name}(")) || text.contains(&format!("fn {name}<")),
            "{path} has no fn {name}"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} functions named");
}

#[test]
fn keys_and_backups_the_docs_make_stay_private() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).expect(path);
    // The README's own command writes the key into the project: one `git add .` from a commit.
    let (readme, ignored) = (read("README.md"), read(".gitignore"));
    assert!(readme.contains("gen-token-key ./token.key"));
    for key in ["/token.key", "/token.pub"] {
        assert!(ignored.lines().any(|l| l == key), "{key} in .gitignore");
    }
    // Every backup command of the runbook makes its file 0600.
    let operations = read("docs/operations.md");
    let runbook = operations
        .lines()
        .skip_while(|l| !l.starts_with("**Backup and restore.**"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    for tool in ["sqlite3", "pg_dump"] {
        assert!(
            runbook.contains(&format!("(umask 077 && {tool}")),
            "{tool}: {runbook}"
        );
    }
    // And the public half is named as the file it is.
    let mut help = Vec::new();
    LoginServerConfig::command()
        .find_subcommand_mut("gen-token-key")
        .expect("gen-token-key")
        .write_long_help(&mut help)
        .unwrap();
    assert!(String::from_utf8(help).unwrap().contains("token.pub"));
}

#[test]
fn help_texts_say_what_they_serve_and_describe_every_flag() {
    let login = LoginServerConfig::command();
    let metrics = login
        .get_arguments()
        .find(|a| a.get_id() == "metrics_listen")
        .map(|a| a.get_help().map(|h| h.to_string()).unwrap_or_default())
        .expect("--metrics-listen");
    assert!(metrics.contains("/keys"), "{metrics}");
    let mut db = AccountDbConfig::command();
    let about = db.get_about().map(|a| a.to_string()).unwrap_or_default();
    assert!(about.contains("SQLite or PostgreSQL"), "{about}");
    let list = db
        .find_subcommand_mut("admin")
        .and_then(|a| a.find_subcommand_mut("list"))
        .expect("admin list");
    for flag in list.get_arguments().filter(|a| !a.is_global_set()) {
        assert!(
            flag.get_help().is_some(),
            "admin list --{} has no help",
            flag.get_id()
        );
    }
}

/// `text` with the value of every `"key":` among `keys` replaced by the value `like` has there
/// (a string's whole, a number's digits): what differs from run to run.
fn as_documented(text: &str, like: &str, keys: &[&str]) -> String {
    let value_at = |s: &str, at: usize| -> usize {
        let rest = &s[at..];
        let end = match rest.strip_prefix('"') {
            Some(inner) => inner.find('"').map_or(rest.len(), |i| i + 2),
            None => rest.find([',', '}', ']']).unwrap_or(rest.len()),
        };
        at + end
    };
    let mut out = text.to_string();
    for key in keys {
        let pattern = format!("\"{key}\":");
        let mut from = 0;
        let mut nth = 0;
        while let Some(found) = out[from..].find(&pattern) {
            let start = from + found + pattern.len();
            let end = value_at(&out, start);
            // The documented value at the same occurrence, if there is one.
            let documented = like.match_indices(&pattern).nth(nth).map(|(i, _)| {
                let s = i + pattern.len();
                like[s..value_at(like, s)].to_string()
            });
            if let Some(value) = documented {
                out.replace_range(start..end, &value);
                from = start + value.len();
            } else {
                from = end;
            }
            nth += 1;
        }
    }
    out
}

#[test]
fn protocol_md_device_session_is_what_a_live_server_answers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let protocol = std::fs::read_to_string(path).expect("docs/protocol.md");
    let block: Vec<&str> = protocol
        .lines()
        .skip_while(|l| !l.starts_with("### Devices and guests"))
        .skip_while(|l| !l.starts_with("→ "))
        .take_while(|l| l.starts_with("→ ") || l.starts_with("← "))
        .collect();
    assert!(
        block.len() >= 18,
        "the device session in protocol.md: {block:?}"
    );
    let tiers = common::start();
    let mut client = common::StreamClient::new(tiers.addr());
    let mut token = String::new();
    for pair in block.chunks(2) {
        let (request, reply) = (
            pair[0].trim_start_matches("→ "),
            pair[1].trim_start_matches("← "),
        );
        let sent = request.replace("\"token\":\"eyJ0eXAi…\"", &format!("\"token\":\"{token}\""));
        client.send(format!("{sent}\n").as_bytes());
        let got = client.recv_raw();
        let got = got.trim_end();
        if let Some(t) =
            serde_json::from_str::<serde_json::Value>(got).expect("JSON")["token"].as_str()
        {
            token = t.to_string();
        }
        let keys = ["token", "exp", "linked_at", "last_used"];
        assert_eq!(
            as_documented(got, reply, &keys),
            reply,
            "the reply to {request}"
        );
    }
}
