//! Micro-benchmarks of the cross-shard hop: the mesh between two shards of a real pool
//! (two glommio executors, each on its own thread), without any NATS on top.
//!
//! - `mesh/round_trip_*`: shard 0 sends one message to shard 1, which sends it straight
//!   back; the time per round trip is two hops. With the shards spinning before they park
//!   (`spin`) a hop is the queue's own cost; with them parking at once (`park`) each hop
//!   also wakes the other shard's thread, which is what an unbatched hop between idle shards
//!   costs.
//! - `mesh/batches_64_*`: shard 0 streams batches of 64 items and waits for shard 1 to
//!   confirm the last one. With `given_back` shard 1 hands each batch back and shard 0
//!   reuses it (as the server does); with `dropped` shard 1 frees it, into shard 0's malloc
//!   arena, while shard 0 allocates the next one from that arena.
//!
//! Run with `cargo bench -p tern-shards`. The server's whole cross-shard path (parse, route,
//! forward, deliver) is measured by `tern-bench` in placement b, side by side with
//! nats-server.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_shards::{bind_listener, run, AcceptMode, PoolConfig, ShardCtx, StopSignal};

const BATCH: usize = 64;

/// Runs `app` on a pool of two shards and returns what shard 0 timed.
fn on_two_shards<F, Fut>(spin: Option<Duration>, app: F) -> Duration
where
    F: Fn(Rc<ShardCtx<Vec<u64>>>, Arc<Mutex<Duration>>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let cfg = PoolConfig {
        shards: 2,
        pin: true,
        spin_before_park: spin,
        io_memory: 1 << 20,
        mesh_capacity: 128,
        accept: AcceptMode::RoundRobin,
    };
    let listener = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let stop = Arc::new(StopSignal::new(2).unwrap());
    let took = Arc::new(Mutex::new(Duration::ZERO));
    let t = took.clone();
    run(cfg, listener, stop, move |ctx| {
        let (app, t) = (app.clone(), t.clone());
        async move {
            ctx.stop_accepting();
            app(ctx, t).await;
        }
    })
    .expect("the pool runs");
    let d = *took.lock().unwrap();
    d
}

fn round_trips(iters: u64, spin: Option<Duration>) -> Duration {
    on_two_shards(spin, move |ctx, took| async move {
        let mesh = ctx.mesh().clone();
        let rx = ctx.take_receivers().pop().expect("one peer");
        if ctx.id() == 0 {
            let start = Instant::now();
            for i in 0..iters {
                mesh.send(1, vec![i]);
                assert_eq!(rx.recv().await, Some(vec![i]));
            }
            *took.lock().unwrap() = start.elapsed();
            mesh.send(1, Vec::new());
        } else {
            while let Some(m) = rx.recv().await {
                if m.is_empty() {
                    break;
                }
                mesh.send(0, m);
            }
        }
    })
}

fn batches(iters: u64, give_back: bool) -> Duration {
    on_two_shards(
        Some(Duration::from_micros(50)),
        move |ctx, took| async move {
            let mesh = ctx.mesh().clone();
            let rx = ctx.take_receivers().pop().expect("one peer");
            if ctx.id() == 0 {
                let start = Instant::now();
                let mut spare = Vec::new();
                for i in 0..iters {
                    while let Some(mut back) = mesh.take_back(1) {
                        back.clear();
                        spare = back;
                    }
                    let mut batch = std::mem::take(&mut spare);
                    batch.extend((0..BATCH as u64).map(|k| i + k));
                    mesh.send(1, batch);
                    if mesh.congested() {
                        mesh.wait_uncongested().await;
                    }
                }
                mesh.send(1, Vec::new());
                assert_eq!(rx.recv().await, Some(vec![iters]));
                *took.lock().unwrap() = start.elapsed();
            } else {
                let mut got = 0u64;
                while let Some(m) = rx.recv().await {
                    if m.is_empty() {
                        mesh.send(0, vec![got]);
                        break;
                    }
                    assert_eq!(m.len(), BATCH);
                    got += 1;
                    if give_back {
                        rx.give_back(m);
                    }
                }
            }
        },
    )
}

fn mesh(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("round_trip_spin", |b| {
        b.iter_custom(|iters| round_trips(iters, Some(Duration::from_micros(50))))
    });
    g.bench_function("round_trip_park", |b| {
        b.iter_custom(|iters| round_trips(iters, None))
    });
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("batches_64_given_back", |b| {
        b.iter_custom(|iters| batches(iters, true))
    });
    g.bench_function("batches_64_dropped", |b| {
        b.iter_custom(|iters| batches(iters, false))
    });
    g.finish();
}

criterion_group!(benches, mesh);
criterion_main!(benches);
