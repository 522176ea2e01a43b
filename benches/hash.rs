//! argon2id hash and verify, at the default parameters and at the cheapest.

use criterion::{criterion_group, criterion_main, Criterion};
use login_server::auth::password::{HashParams, Hasher, Memory};
use std::hint::black_box;

fn hashing(c: &mut Criterion) {
    for (name, params) in [
        ("default 19456,2,1", HashParams::default()),
        ("cheapest 8,1,1", HashParams::CHEAPEST),
    ] {
        let hasher = Hasher::new(params).expect("valid params");
        let memory = &mut Memory::default();
        let stored = hasher.hash("correct horse battery", memory).expect("hash");
        let mut group = c.benchmark_group(format!("argon2id {name}"));
        if params == HashParams::default() {
            group.sample_size(20);
        }
        group.bench_function("hash", |b| {
            b.iter(|| hasher.hash(black_box("correct horse battery"), memory))
        });
        group.bench_function("verify", |b| {
            b.iter(|| {
                hasher.verify(
                    black_box("correct horse battery"),
                    black_box(&stored),
                    memory,
                )
            })
        });
        group.finish();
    }
}

criterion_group!(benches, hashing);
criterion_main!(benches);
