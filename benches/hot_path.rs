//! Micro-benchmarks of the sans-IO hot path: the client and route parsers, the MSG encoders
//! (one-off and one message to many subscribers), the subject index (hit, miss, wildcards, a
//! large index, churn). Run with `cargo bench`; compare runs with
//! criterion's saved baselines. The cross-shard hop is in `shards/benches/mesh.rs`; whole-server
//! throughput is measured by `tern-bench` (perf/), side by side with nats-server.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tern::client::{write_msg, Outbound, Outgoing};
use tern::parser::{Op, Parser};
use tern::route::{RouteOp, RouteParser};
use tern::sublist::Sublist;

fn pubs(n: usize, payload: usize) -> Vec<u8> {
    let body = vec![b'x'; payload];
    let mut v = Vec::new();
    for i in 0..n {
        v.extend_from_slice(format!("PUB bench.subject.{} {}\r\n", i % 16, payload).as_bytes());
        v.extend_from_slice(&body);
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn parser(c: &mut Criterion) {
    let mut g = c.benchmark_group("parser");
    for size in [16usize, 128, 16 * 1024] {
        let n = (256 * 1024 / (size + 30)).max(1);
        let input = pubs(n, size);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("pub_{size}B"), |b| {
            b.iter_batched(
                || Bytes::copy_from_slice(&input[..]),
                |buf| {
                    let mut p = Parser::new(4096, 1 << 20);
                    let mut count = 0;
                    let mut pos = 0;
                    while let Ok(Some(op)) = p.next(&buf, &mut pos) {
                        if let Op::Pub(_) = op {
                            count += 1;
                        }
                    }
                    assert_eq!(count, n);
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn route_parser(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_parser");
    let body = vec![b'x'; 128];
    let n = 256 * 1024 / (128 + 32);
    let mut input = Vec::new();
    for i in 0..n {
        input.extend_from_slice(format!("RMSG $G bench.subject.{} 128\r\n", i % 16).as_bytes());
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n");
    }
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("rmsg_128B", |b| {
        b.iter_batched(
            || Bytes::copy_from_slice(&input[..]),
            |buf| {
                let mut p = RouteParser::new(4096, 1 << 20);
                let (mut count, mut pos) = (0, 0);
                while let Ok(Some(op)) = p.next(&buf, &mut pos) {
                    if let RouteOp::Msg { .. } = op {
                        count += 1;
                    }
                }
                assert_eq!(count, n);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn encoder(c: &mut Criterion) {
    let mut g = c.benchmark_group("encoder");
    let payload = vec![b'x'; 128];
    g.throughput(Throughput::Elements(1000));
    g.bench_function("msg_128B_x1000", |b| {
        let mut out = BytesMut::with_capacity(256 * 1024);
        b.iter(|| {
            out.clear();
            for _ in 0..1000 {
                write_msg(
                    &mut out,
                    b"bench.subject.7",
                    b"42",
                    Some(b"_INBOX.abc"),
                    0,
                    black_box(&payload),
                    false,
                );
            }
            black_box(out.len())
        })
    });
    // Fan-out: one message to 16 subscribers, the line formatted once and copied 16 times.
    g.throughput(Throughput::Elements(1000 * 16));
    g.bench_function("outgoing_128B_x1000_to_16", |b| {
        let sids: Vec<Vec<u8>> = (1..=16).map(|i: u32| i.to_string().into_bytes()).collect();
        b.iter(|| {
            let mut outs: Vec<Outbound> = (0..16).map(|_| Outbound::default()).collect();
            for _ in 0..1000 {
                let m = Outgoing::new(b"bench.subject.7", None, 0, black_box(&payload));
                for (out, sid) in outs.iter_mut().zip(&sids) {
                    m.write(out, sid, false);
                }
            }
            black_box(outs.iter().map(Outbound::len).sum::<usize>())
        })
    });
    g.finish();
}

fn index(subs: usize) -> Sublist<u32> {
    let mut s = Sublist::new();
    for i in 0..subs {
        let subject = match i % 4 {
            0 => format!("svc.{}.req", i),
            1 => format!("svc.{}.*", i),
            2 => format!("evt.{}.>", i),
            _ => format!("a.b.c.{}", i),
        };
        s.insert(subject.as_bytes(), None, i as u32).unwrap();
    }
    s.insert(b"svc.*.req", None, u32::MAX).unwrap();
    s.insert(b">", Some(b"q"), u32::MAX - 1).unwrap();
    s
}

fn sublist(c: &mut Criterion) {
    let mut g = c.benchmark_group("sublist");
    for subs in [1_000usize, 1_000_000] {
        let mut s = index(subs);
        g.bench_function(format!("hit_cached_{subs}"), |b| {
            b.iter(|| black_box(s.matches(black_box(b"svc.17.req")).psubs.len()))
        });
        g.bench_function(format!("miss_cached_{subs}"), |b| {
            b.iter(|| black_box(s.matches(black_box(b"none.of.these")).psubs.len()))
        });
        let subjects: Vec<Vec<u8>> = (0..4096)
            .map(|i| format!("evt.{}.x.y", i % subs).into_bytes())
            .collect();
        let mut k = 0;
        g.bench_function(format!("wildcard_uncached_{subs}"), |b| {
            b.iter(|| {
                k = (k + 1) % subjects.len();
                black_box(s.matches(&subjects[k]).psubs.len())
            })
        });
    }
    let mut s = index(10_000);
    let mut i = 0u32;
    g.bench_function("churn_insert_remove", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let subj = Bytes::from(format!("churn.{}.x", i % 512));
            s.insert(&subj, None, i).unwrap();
            black_box(s.matches(&subj));
            s.remove(&subj, None, &i);
        })
    });
    g.finish();
}

criterion_group!(benches, parser, route_parser, encoder, sublist);
criterion_main!(benches);
