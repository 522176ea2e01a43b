//! Properties over arbitrary input for the two parsers that face the network: the gateway
//! framing and parsing, and the account-db line protocol. None may panic; framing must not
//! depend on how the bytes are split into reads.

use login_server::protocol::accountdb::{decode_line, DbRequest, DbResponse, Greeting};
use login_server::protocol::gateway::{encode, parse, Form, Reply, Scan, Scanner};
use proptest::prelude::*;

/// Bytes that look like JSON often enough to reach deep into the parsers.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"["[..],
        b"]",
        b"{",
        b"}",
        b"\"",
        b"\\",
        b":",
        b",",
        b" ",
        b"\n",
        b"\"OP\"",
        b"\"login\"",
        b"\"register\"",
        b"\"username\"",
        b"\"password\"",
        b"\"id\"",
        b"1",
        b"\xff",
        b"\xc3\xa9",
        b"null",
        b"\"u\\u00e9\"",
    ]);
    prop::collection::vec(pieces, 0..64).prop_map(|p| p.concat())
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![jsonish(), prop::collection::vec(any::<u8>(), 0..256)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn framing_does_not_depend_on_read_boundaries(bytes in any_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = Scanner::new(1024).scan(&bytes);
        let mut scanner = Scanner::new(1024);
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        ends.sort();
        let mut last = Scan::Empty;
        for end in ends.into_iter().chain([bytes.len()]) {
            last = scanner.scan(&bytes[..end]);
            if matches!(last, Scan::Complete { .. } | Scan::Invalid(_)) {
                break;
            }
        }
        prop_assert_eq!(last, whole);
    }

    #[test]
    fn parsing_never_panics_and_complete_frames_are_json(bytes in any_bytes()) {
        if let Scan::Complete { form, start, end } = Scanner::new(1024).scan(&bytes) {
            let framed = &bytes[start..end];
            let parsed = parse(form, framed);
            if parsed.is_ok() {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(framed).is_ok());
            }
        }
        let _ = parse(Form::Seed, &bytes);
        let _ = parse(Form::Stream, &bytes);
    }

    #[test]
    fn account_db_lines_never_panic(bytes in any_bytes()) {
        let _ = decode_line::<DbRequest>(&bytes);
        let _ = decode_line::<DbResponse>(&bytes);
        let _ = decode_line::<Greeting>(&bytes);
    }

    #[test]
    fn every_reply_encodes_to_json(info in ".{0,40}", id in any::<i64>()) {
        let mut out = Vec::new();
        let raw = serde_json::value::RawValue::from_string(id.to_string()).unwrap();
        encode(&mut out, Form::Stream, &Reply::bad_request(info), Some(&raw));
        prop_assert!(out.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(v["id"].as_i64(), Some(id));
    }
}
