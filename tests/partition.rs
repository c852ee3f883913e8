//! A network partition between two cluster members, made with network namespaces: each
//! server runs in a namespace of its own, and the two are joined by a veth pair. Taking the
//! link down cuts the route without closing it (no FIN, no RST), as a real partition does:
//! each side must notice the silence (route PINGs), keep serving its own clients, and once
//! the link is back the dialling side must reconnect and both must send their interest
//! afresh, including interest that appeared during the partition, with nothing delivered
//! twice and nothing from the dead connection delivered late.
//!
//! Needs root (or CAP_SYS_ADMIN) for `ip netns`; without it the test says so and passes.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A named network namespace, deleted on drop (which also deletes the veth end in it).
struct Netns {
    name: String,
    file: std::fs::File,
}

impl Netns {
    fn new(name: &str) -> Result<Netns, String> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let file = std::fs::File::open(format!("/run/netns/{name}"))
            .map_err(|e| format!("open /run/netns/{name}: {e}"))?;
        let ns = Netns {
            name: name.to_string(),
            file,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens, and processes
    /// it starts, live in the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns(2) on a namespace file we hold open; it changes only the
                // calling thread's network namespace.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Two namespaces joined by a veth pair: 10.231.0.1 in the first, 10.231.0.2 in the second.
/// `link` is the first one's end of the pair, which the test takes down and up.
struct Pair {
    a: Netns,
    b: Netns,
    link: String,
}

fn pair(tag: &str) -> Result<Pair, String> {
    let a = Netns::new(&format!("tern-{tag}-a"))?;
    let b = Netns::new(&format!("tern-{tag}-b"))?;
    let (la, lb) = (format!("{tag}a"), format!("{tag}b"));
    let _ = ip(&["link", "del", &la]);
    ip(&["link", "add", &la, "type", "veth", "peer", "name", &lb])?;
    ip(&["link", "set", &la, "netns", &a.name])?;
    ip(&["link", "set", &lb, "netns", &b.name])?;
    a.ip(&["addr", "add", "10.231.0.1/24", "dev", &la])?;
    b.ip(&["addr", "add", "10.231.0.2/24", "dev", &lb])?;
    a.ip(&["link", "set", &la, "up"])?;
    b.ip(&["link", "set", &lb, "up"])?;
    Ok(Pair { a, b, link: la })
}

/// A member of cluster `TC` pinging its routes every second (two unanswered PINGs make a
/// route stale), listening for routes on `host`, dialling `seed`.
fn member(
    ns: &Netns,
    bin: &Path,
    name: &str,
    host: &str,
    seed: Option<String>,
) -> (ConfFile, Server) {
    let routes = seed
        .map(|s| format!("routes: [\"{s}\"]"))
        .unwrap_or_default();
    let conf = ConfFile::new(
        &format!("partition-{name}"),
        "member.conf",
        &format!(
            "server_name: {name}\nping_interval: \"1s\"\nping_max: 2\n\
             cluster {{\n  name: TC\n  host: {host}\n  port: -1\n  {routes}\n}}\n"
        ),
    );
    let mut args = vec!["-c", conf.arg()];
    if !bin.to_string_lossy().contains("nats-server") {
        args.extend(["--shards", "2"]);
    }
    let s = ns.run(|| Server::start_bin(bin, &args));
    (conf, s)
}

fn client(ns: &Netns, s: &Server) -> RawClient {
    ns.run(|| {
        let mut c = s.raw();
        c.send(b"CONNECT {\"verbose\":false,\"echo\":false}\r\nPING\r\n");
        c.expect(b"PONG\r\n");
        c
    })
}

/// Keeps `clients` answering their servers' PINGs (the servers ping every second) until
/// `done` holds or `limit` passes; returns whether `done` held.
fn wait_while_pinging(
    clients: &mut [&mut RawClient],
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        for c in clients.iter_mut() {
            c.ping_pong();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done()
}

/// Publishes to `subject` from `p` until `s` (subscribed to it) gets one, answering PINGs.
fn await_route(p: &mut RawClient, s: &mut RawClient, subject: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        p.send(format!("PUB {subject} 0\r\n\r\n").as_bytes());
        p.ping_pong();
        if s.msgs_until_pong().iter().any(|m| m.subject == subject) {
            // Late copies of earlier probes.
            std::thread::sleep(Duration::from_millis(100));
            s.msgs_until_pong();
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Messages cross the route both ways within `limit` seconds: from a's publisher to b's
/// subscriber (on `sync.b`) and from b's publisher to a's subscriber (on `sync.a`).
fn both_ways(c: [&mut RawClient; 4], limit: u64, when: &str) {
    let [pa, sb, pb, sa] = c;
    let limit = Duration::from_secs(limit);
    assert!(await_route(pa, sb, "sync.b", limit), "a→b {when}");
    assert!(await_route(pb, sa, "sync.a", limit), "b→a {when}");
}

/// Subjects `c` receives up to and including the first on `until`.
fn subjects_until(c: &mut RawClient, until: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let m = c.read_msg();
        seen.push(m.subject.clone());
        if m.subject == until {
            return seen;
        }
    }
}

fn partition_and_heal(bin_a: &Path, bin_b: &Path, tag: &str) {
    let net = match pair(tag) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("partition test skipped: network namespaces unavailable ({e})");
            return;
        }
    };
    let (_ca, a) = member(&net.a, bin_a, &format!("{tag}-a"), "10.231.0.1", None);
    let seed = format!("nats-route://10.231.0.1:{}", a.route_port());
    let (_cb, b) = member(&net.b, bin_b, &format!("{tag}-b"), "10.231.0.2", Some(seed));
    let (mut pa, mut sa) = (client(&net.a, &a), client(&net.a, &a));
    let (mut pb, mut sb) = (client(&net.b, &b), client(&net.b, &b));
    sb.send(b"SUB x.> 1\r\nSUB sync.b 9\r\n");
    sb.ping_pong();
    sa.send(b"SUB y.> 1\r\nSUB sync.a 9\r\n");
    sa.ping_pong();
    both_ways([&mut pa, &mut sb, &mut pb, &mut sa], 10, "never joined");

    // Partition: the link goes down, the route's TCP connection is left hanging.
    net.a.ip(&["link", "set", &net.link, "down"]).unwrap();
    // Sent into the dead connection: must never arrive, even after the heal.
    pa.send(b"PUB x.during 1\r\nx\r\n");
    // New interest on b, which a can only learn once the route is back.
    sb.send(b"SUB late.b 2\r\n");
    // Each side keeps serving its own clients.
    pa.send(b"PUB y.local 1\r\nx\r\n");
    pa.ping_pong();
    assert_eq!(subjects_until(&mut sa, "y.local"), ["y.local"]);
    // Both sides notice the silence and drop the route.
    let stale = |s: &Server| s.logs().iter().any(|l| l.contains("Stale Connection"));
    assert!(
        wait_while_pinging(
            &mut [&mut pa, &mut sa, &mut pb, &mut sb],
            Duration::from_secs(20),
            || stale(&a) && stale(&b)
        ),
        "the partition was not noticed; a:\n{}\nb:\n{}",
        a.logs().join("\n"),
        b.logs().join("\n")
    );

    // Heal: b dials a again, and both send their interest afresh.
    net.a.ip(&["link", "set", &net.link, "up"]).unwrap();
    both_ways([&mut pa, &mut sb, &mut pb, &mut sa], 20, "not back");
    let mut batch = Vec::new();
    batch.extend_from_slice(b"PUB late.b 1\r\nx\r\n");
    for i in 0..100 {
        batch.extend_from_slice(format!("PUB x.{i} 1\r\nx\r\n").as_bytes());
    }
    batch.extend_from_slice(b"PUB sync.b 0\r\n\r\n");
    pa.send(&batch);
    pa.ping_pong();
    let got = subjects_until(&mut sb, "sync.b");
    let mut want = vec!["late.b".to_string()];
    want.extend((0..100).map(|i| format!("x.{i}")));
    want.push("sync.b".into());
    assert_eq!(
        got, want,
        "each once, in order, and nothing from the partition"
    );
}

fn tern_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tern"))
}

#[test]
fn a_partitioned_pair_heals() {
    let bin = server_bin();
    partition_and_heal(&bin, &bin, "tp1");
}

#[test]
fn a_partitioned_pair_with_nats_server_heals() {
    let nats = PathBuf::from("/usr/sbin/nats-server");
    if !is_tern() || !nats.exists() {
        return;
    }
    // nats-server dials Tern.
    partition_and_heal(&tern_bin(), &nats, "tp2");
}
