//! The gateway codec: framing and parsing each request form, serializing each reply form.

use criterion::{criterion_group, criterion_main, Criterion};
use login_server::protocol::gateway::{encode, parse, Form, Reply, Scanner};
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let seed = br#"[{"OP":"login","username":"player_one","password":"correct horse battery"}]"#;
    let stream = b"{\"OP\":\"login\",\"username\":\"player_one\",\"password\":\"correct horse battery\",\"id\":42}\n";
    let mut group = c.benchmark_group("gateway codec");
    for (name, form, bytes) in [
        ("seed", Form::Seed, &seed[..]),
        ("stream", Form::Stream, &stream[..]),
    ] {
        group.bench_function(format!("frame+parse {name}"), |b| {
            let mut scanner = Scanner::new(64 * 1024);
            b.iter(|| {
                scanner.reset();
                let framed = scanner.scan(black_box(bytes));
                (framed, parse(form, black_box(bytes)))
            })
        });
    }
    let id = serde_json::value::RawValue::from_string("42".into()).expect("raw id");
    for (name, form, id) in [
        ("seed", Form::Seed, None),
        ("stream", Form::Stream, Some(&id)),
    ] {
        let reply = Reply::logged_in("player_one".into(), 42);
        group.bench_function(format!("serialize {name}"), |b| {
            let mut out = Vec::with_capacity(128);
            b.iter(|| {
                out.clear();
                encode(&mut out, form, black_box(&reply), id);
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
