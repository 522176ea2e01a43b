//! Session tokens beside the login they ride on: issuing one (Ed25519 signing) and checking one
//! (signature and claims), against one argon2id verification at the default parameters, in one
//! run, so the ratio is what a login pays for its token.

use criterion::{criterion_group, criterion_main, Criterion};
use login_server::auth::password::{HashParams, Hasher, Memory};
use login_server::auth::token_key::SigningKey;
use login_server::tokens::{Session, Tokens};
use std::hint::black_box;
use std::time::Duration;

fn tokens(c: &mut Criterion) {
    let key = SigningKey::generate().expect("key");
    let tokens = Tokens::new(&key, Vec::new(), Duration::from_secs(3600));
    let now = login_server::clock::now_ms();
    let session = Session {
        account_id: 42,
        name: "player_one".into(),
        sid: "a007628513d94ae4c1754178221281fa".into(),
        auth_ms: now,
        link: None,
    };
    let (token, _) = tokens.issue(&session, now);
    let hasher = Hasher::new(HashParams::default()).expect("params");
    let memory = &mut Memory::default();
    let stored = hasher.hash("correct horse battery", memory).expect("hash");
    let mut group = c.benchmark_group("a login and its token");
    group.bench_function("issue a token", |b| {
        b.iter(|| tokens.issue(black_box(&session), now))
    });
    group.bench_function("check a token", |b| {
        b.iter(|| tokens.check(black_box(&token), now).is_err())
    });
    // The signature alone, with a key parsed once (jsonwebtoken parses it per signature).
    let pair =
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.pkcs8()).expect("key pair");
    let message = token
        .rsplit_once('.')
        .map_or("", |(signed, _)| signed)
        .to_string();
    group.bench_function("Ed25519 signature alone, key parsed once", |b| {
        b.iter(|| pair.sign(black_box(message.as_bytes())))
    });
    group.sample_size(20);
    group.bench_function("argon2id verify, default 19456,2,1", |b| {
        b.iter(|| hasher.verify(black_box("correct horse battery"), &stored, memory))
    });
    group.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
