//! argon2id hash and verify, at the default parameters and at the cheapest; and, at the
//! default, verifications on every core at once: what a login flood can reach at most (the
//! hashing limit), since cores that share caches and memory bandwidth (or are hyperthreads of
//! one physical core, as a VM's may be) do not each verify as fast as one alone.

use criterion::{criterion_group, criterion_main, Criterion};
use login_server::auth::password::{HashParams, Hasher, Memory};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

fn hashing(c: &mut Criterion) {
    for (name, params) in [
        ("default 19456,2,1", HashParams::default()),
        ("cheapest 8,1,1", HashParams::CHEAPEST),
    ] {
        let hasher = Hasher::new(params).expect("valid params");
        let memory = &mut Memory::default();
        let stored = hasher.hash(PASSWORD, memory).expect("hash");
        let mut group = c.benchmark_group(format!("argon2id {name}"));
        if params == HashParams::default() {
            group.sample_size(20);
        }
        group.bench_function("hash", |b| {
            b.iter(|| hasher.hash(black_box(PASSWORD), memory))
        });
        group.bench_function("verify", |b| {
            b.iter(|| hasher.verify(black_box(PASSWORD), black_box(&stored), memory))
        });
        if params == HashParams::default() {
            // One iteration: one verification on each core, all at once. Its time divides
            // the core count into the hashing limit (benches/stress_matrix.py reads it).
            group.bench_function("verify on every core", |b| {
                b.iter_custom(|iters| on_every_core(&hasher, &stored, iters))
            });
        }
        group.finish();
    }
}

/// The time for `iters` verifications on each core, every core's thread verifying at once.
fn on_every_core(hasher: &Hasher, stored: &str, iters: u64) -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| {
                let memory = &mut Memory::default();
                for _ in 0..iters {
                    let verified = hasher.verify(black_box(PASSWORD), black_box(stored), memory);
                    black_box(verified.expect("verifies"));
                }
            });
        }
    });
    start.elapsed()
}

criterion_group!(benches, hashing);
criterion_main!(benches);
