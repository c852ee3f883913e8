//! Cross-shard invariants. Tern places accepted connections on shards
//! round-robin, so consecutive connections land on different shards; these
//! tests only use several connections and never need to know which shard.
//! Against nats-server (`start_sharded` adds nothing) they run on one server.
//!
//! Completion is detected with an end marker published on another subject
//! by the same publisher: NATS keeps per-publisher order per subscriber, so
//! once a subscriber has the marker it has everything published before it.

mod common;

use common::{RawClient, Server};
use std::collections::HashMap;
use std::thread;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

fn conns(s: &Server, n: usize) -> Vec<RawClient> {
    (0..n).map(|_| s.raw_quiet()).collect()
}

/// (a) After SUB + PING/PONG on connection A, a PUB on any other connection
/// (followed by its own PING/PONG) must reach A. Never lost, 2,000 rounds.
fn interest_barrier(shards: usize) {
    let s = Server::start_sharded(shards, &[]);
    let n = (2 * shards).max(4);
    let mut cs = conns(&s, n);
    for i in 0..2000usize {
        let a = i % n;
        let b = (a + 1 + (i / n) % (n - 1)) % n;
        assert_ne!(a, b);
        cs[a].send(format!("SUB x.{i} {i}\r\nPING\r\n").as_bytes());
        cs[a].expect(b"PONG\r\n");
        cs[b].send(format!("PUB x.{i} 2\r\nhi\r\nPING\r\n").as_bytes());
        cs[b].expect(b"PONG\r\n");
        cs[a].expect(format!("MSG x.{i} {i} 2\r\nhi\r\n").as_bytes());
        if i % 2 == 0 {
            // also exercise interest removal
            cs[a].send(format!("UNSUB {i}\r\n").as_bytes());
        }
    }
    for c in cs.iter_mut() {
        c.send(b"PING\r\n");
        c.expect(b"PONG\r\n");
    }
}

#[test]
fn interest_barrier_2_shards() {
    interest_barrier(2);
}

#[test]
fn interest_barrier_4_shards() {
    interest_barrier(4);
}

/// Subscribe `c` to `subj` (sid 1) and `end` (sid 2), then spawn a reader
/// that returns the payloads received on `subj` until the `end` marker.
fn spawn_reader(mut c: RawClient, sub_line: &str) -> thread::JoinHandle<Vec<String>> {
    c.send(format!("{sub_line}\r\nSUB end 2\r\nPING\r\n").as_bytes());
    c.expect(b"PONG\r\n");
    thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            let m = c.read_msg_timeout(LONG);
            if m.subject == "end" {
                // anything duplicated and still in flight would show up here
                let extra = c.msgs_until_pong();
                assert!(extra.is_empty(), "messages after end marker: {extra:?}");
                return got;
            }
            assert_eq!(m.sid, "1");
            got.push(String::from_utf8(m.payload).unwrap());
        }
    })
}

fn publish_numbered(p: &mut RawClient, subj: &str, n: usize) {
    publish_numbered_on(p, n, |_| subj);
}

/// Publishes message `i` of `n` on `subject(i)`, then the end marker.
fn publish_numbered_on<'a>(p: &mut RawClient, n: usize, subject: impl Fn(usize) -> &'a str) {
    let mut batch = Vec::new();
    for i in 0..n {
        let subj = subject(i);
        let body = i.to_string();
        batch.extend_from_slice(format!("PUB {subj} {}\r\n{body}\r\n", body.len()).as_bytes());
        if batch.len() > 32 * 1024 {
            p.send(&batch);
            batch.clear();
        }
    }
    batch.extend_from_slice(b"PUB end 3\r\nEND\r\nPING\r\n");
    p.send(&batch);
    p.expect(b"PONG\r\n");
}

/// (b) One publisher, 10,000 numbered messages, two subscribers on other
/// connections receive all of them in order.
fn ordering(shards: usize) {
    let s = Server::start_sharded(shards, &[]);
    let mut p = s.raw_quiet();
    let readers: Vec<_> = (0..2)
        .map(|_| spawn_reader(s.raw_quiet(), "SUB ord 1"))
        .collect();
    publish_numbered(&mut p, "ord", 10_000);
    for r in readers {
        let got = r.join().expect("reader");
        assert_eq!(got.len(), 10_000, "lost or duplicated messages");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, &i.to_string(), "out of order at {i}");
        }
    }
}

#[test]
fn ordering_2_shards() {
    ordering(2);
}

#[test]
fn ordering_4_shards() {
    ordering(4);
}

/// (c) 4 queue members on 4 connections, 2,000 messages: each delivered
/// exactly once and every member gets at least 15 %.
fn queue_spread(shards: usize) {
    let s = Server::start_sharded(shards, &[]);
    let readers: Vec<_> = (0..4)
        .map(|_| spawn_reader(s.raw_quiet(), "SUB qw q 1"))
        .collect();
    let mut p = s.raw_quiet();
    let n = 2000;
    publish_numbered(&mut p, "qw", n);
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut per_member = Vec::new();
    for r in readers {
        let got = r.join().expect("reader");
        per_member.push(got.len());
        for g in got {
            *count.entry(g).or_default() += 1;
        }
    }
    assert_eq!(count.len(), n, "some messages never delivered");
    assert!(count.values().all(|&c| c == 1), "duplicate queue delivery");
    for (i, &m) in per_member.iter().enumerate() {
        assert!(
            m * 100 >= n * 15,
            "member {i} got only {m} of {n}: {per_member:?}"
        );
    }
}

#[test]
fn queue_spread_2_shards() {
    queue_spread(2);
}

#[test]
fn queue_spread_4_shards() {
    queue_spread(4);
}

/// (c') Three queue groups on different subjects and a plain subscriber: messages that name
/// one, two or three groups (`qa` on `mix.a`, `qb` on `mix.b`, `qc` on `mix.*`) and messages
/// only the plain one wants alternate, so the batches between shards carry messages with
/// different groups interleaved. Each message reaches exactly one member of each group that
/// wants it, and the plain subscriber gets every message in order.
fn queue_groups_interleaved(shards: usize) {
    let s = Server::start_sharded(shards, &[]);
    let groups = [("qa", "mix.a"), ("qb", "mix.b"), ("qc", "mix.*")];
    let members: Vec<_> = (0..2)
        .flat_map(|_| groups)
        .map(|(g, subj)| (g, spawn_reader(s.raw_quiet(), &format!("SUB {subj} {g} 1"))))
        .collect();
    let plain = spawn_reader(s.raw_quiet(), "SUB mix.> 1");
    let mut p = s.raw_quiet();
    let n = 3000;
    let subject = |i: usize| ["mix.a", "mix.b", "mix.c", "mix.p.x"][i % 4];
    publish_numbered_on(&mut p, n, subject);
    let mut got: HashMap<&str, Vec<usize>> = HashMap::new();
    for (group, r) in members {
        let numbers = r
            .join()
            .expect("reader")
            .into_iter()
            .map(|g| g.parse::<usize>().unwrap());
        got.entry(group).or_default().extend(numbers);
    }
    for (group, subj) in groups {
        let wanted = |i: &usize| match subj {
            "mix.*" => subject(*i) != "mix.p.x",
            s => subject(*i) == s,
        };
        let want: Vec<usize> = (0..n).filter(wanted).collect();
        let mut numbers = got.remove(group).unwrap_or_default();
        numbers.sort_unstable();
        assert_eq!(numbers, want, "group {group}: lost or duplicated messages");
    }
    let all: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(plain.join().expect("reader"), all);
}

#[test]
fn queue_groups_interleaved_2_shards() {
    queue_groups_interleaved(2);
}

#[test]
fn queue_groups_interleaved_4_shards() {
    queue_groups_interleaved(4);
}

/// (d) A plain subscriber on each of 4 connections receives each of 1,000
/// messages exactly once (one hop, no duplicates), in order.
fn fanout_exactly_once(shards: usize) {
    let s = Server::start_sharded(shards, &[]);
    let readers: Vec<_> = (0..4)
        .map(|_| spawn_reader(s.raw_quiet(), "SUB fan.> 1"))
        .collect();
    let mut p = s.raw_quiet();
    publish_numbered(&mut p, "fan.out", 1000);
    for r in readers {
        let got = r.join().expect("reader");
        let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn fanout_exactly_once_2_shards() {
    fanout_exactly_once(2);
}

#[test]
fn fanout_exactly_once_4_shards() {
    fanout_exactly_once(4);
}

/// A publisher's flush is a barrier too: once the publisher has its PONG, the message is
/// already queued for subscribers on every shard, so the subscriber's own next PING/PONG
/// brings it (one nats-server delivers synchronously, so this always holds there).
fn flushed_publish_is_delivered(shards: usize) {
    let s = Server::start_sharded(shards, &[]);
    let mut cs = conns(&s, 2);
    let (mut sub, mut publ) = (cs.remove(0), cs.remove(0));
    sub.send(b"SUB flushed 1\r\n");
    sub.ping_pong();
    for i in 0..2000 {
        publ.send(format!("PUB flushed {}\r\n{i}\r\nPING\r\n", i.to_string().len()).as_bytes());
        publ.expect(b"PONG\r\n");
        let msgs = sub.msgs_until_pong();
        assert_eq!(msgs.len(), 1, "round {i}: {msgs:?}");
        assert_eq!(msgs[0].payload, i.to_string().as_bytes(), "round {i}");
    }
}

#[test]
fn flushed_publish_is_delivered_2_shards() {
    flushed_publish_is_delivered(2);
}

#[test]
fn flushed_publish_is_delivered_4_shards() {
    flushed_publish_is_delivered(4);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Shards spin only for a moment after work: once traffic has stopped, a server with two
/// shards uses next to no CPU.
#[test]
fn idle_after_traffic_costs_no_cpu() {
    let s = Server::start_sharded(2, &[]);
    let mut cs = conns(&s, 4);
    cs[0].send(b"SUB t 1\r\nPING\r\n");
    cs[0].expect(b"PONG\r\n");
    for round in 0..200 {
        cs[1 + round % 3].send(b"PUB t 2\r\nhi\r\nPING\r\n");
        cs[1 + round % 3].expect(b"PONG\r\n");
        cs[0].expect(b"MSG t 1 2\r\nhi\r\n");
    }
    thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(s.pid());
    thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(s.pid()) - before;
    // Clock ticks are 10 ms: 2 s of one busy core would be 200.
    assert!(used <= 20, "{used} ticks of CPU in 2 idle seconds");
}
