//! Hostile clients: each gets nats-server's answer, everyone else keeps being served, and the
//! server's memory stays bounded (VmRSS read before and after). Also a seeded randomized
//! protocol test (the seed is printed; `TERN_FUZZ_SEED` replays one).

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A subscriber that must keep receiving while the hostile clients do their worst.
struct Witness {
    sub: RawClient,
    publ: RawClient,
    n: u64,
}

impl Witness {
    fn new(s: &Server, connect: &str) -> Witness {
        let open = || {
            let mut c = s.raw();
            c.send(format!("CONNECT {connect}\r\nPING\r\n").as_bytes());
            c.expect(b"PONG\r\n");
            c
        };
        let mut sub = open();
        sub.send(b"SUB witness 1\r\nPING\r\n");
        sub.expect(b"PONG\r\n");
        Witness {
            sub,
            publ: open(),
            n: 0,
        }
    }

    fn check(&mut self) {
        self.n += 1;
        let body = self.n.to_string();
        self.publ
            .send(format!("PUB witness {}\r\n{body}\r\n", body.len()).as_bytes());
        let m = self.sub.read_msg();
        assert_eq!(m.payload, body.as_bytes(), "the witness lost a message");
    }
}

const PLAIN: &str = r#"{"verbose":false,"pedantic":false}"#;

#[test]
fn slowloris_clients_are_cut_off_at_the_auth_timeout() {
    let conf = ConfFile::new(
        "slowloris",
        "s.conf",
        "authorization { token: t0k, timeout: 1 }\n",
    );
    let s = Server::start(&["-c", conf.arg()]);
    let mut w = Witness::new(&s, r#"{"verbose":false,"auth_token":"t0k"}"#);
    let mut lazy: Vec<RawClient> = (0..20).map(|_| s.raw()).collect();
    for c in lazy.iter_mut() {
        // Half a CONNECT, never finished.
        let _ = c.try_send(b"CONNECT {\"verb");
    }
    w.check();
    for c in lazy.iter_mut() {
        c.expect_then_closed(b"-ERR 'Authentication Timeout'\r\n");
    }
    w.check();
}

#[test]
fn endless_control_lines_and_giant_payloads_are_refused() {
    let s = Server::start(&[]);
    let pid = s.pid();
    let mut w = Witness::new(&s, PLAIN);
    let before = rss_kib(pid);
    for _ in 0..3 {
        let mut c = s.raw_quiet();
        let mut line = b"PUB ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 1 << 20));
        // The server closes as soon as the line passes max_control_line; later writes fail.
        for _ in 0..8 {
            if c.try_send(&line).is_err() {
                break;
            }
        }
        c.expect_then_closed(b"-ERR 'maximum control line exceeded'\r\n");
        let mut g = s.raw_quiet();
        g.send(b"PUB x 999999999\r\n");
        g.expect_then_closed(b"-ERR 'Maximum Payload Violation'\r\n");
        // More than nine digits is a malformed size: closed without an -ERR.
        let mut g = s.raw_quiet();
        g.send(b"PUB x 99999999999999\r\n");
        assert!(g.expect_closed().is_empty());
        w.check();
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn connection_floods_stop_at_max_connections() {
    let conf = ConfFile::new("connflood", "c.conf", "max_connections: 20\n");
    let s = Server::start(&["-c", conf.arg()]);
    let mut w = Witness::new(&s, PLAIN);
    // 2 witness connections + 18 more fill the limit; the rest are refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut c = s.raw();
        c.send(format!("CONNECT {PLAIN}\r\nPING\r\n").as_bytes());
        let line = c.read_line();
        if line.starts_with("-ERR") {
            assert_eq!(line, "-ERR 'maximum connections exceeded'");
            c.expect_closed();
            refused += 1;
        } else {
            assert_eq!(line, "PONG");
            held.push(c);
        }
    }
    assert_eq!(held.len(), 18, "refused {refused}");
    w.check();
    drop(held);
    // Room again once they are gone.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = s.raw();
        c.send(format!("CONNECT {PLAIN}\r\nPING\r\n").as_bytes());
        if c.read_line() == "PONG" {
            break;
        }
        assert!(Instant::now() < deadline, "no room after the flood left");
        std::thread::sleep(Duration::from_millis(50));
    }
    w.check();
}

#[test]
fn subscription_floods_stop_at_max_subscriptions() {
    let conf = ConfFile::new("subflood", "s.conf", "max_subscriptions: 100\n");
    let s = Server::start(&["-c", conf.arg()]);
    let mut w = Witness::new(&s, PLAIN);
    let mut c = s.raw_quiet();
    let mut batch = Vec::new();
    for i in 0..150 {
        batch.extend_from_slice(format!("SUB flood.{i} {i}\r\n").as_bytes());
    }
    c.send(&batch);
    c.send(b"PING\r\n");
    let mut errs = 0;
    loop {
        let line = c.read_line();
        if line == "PONG" {
            break;
        }
        assert_eq!(line, "-ERR 'maximum subscriptions exceeded'");
        errs += 1;
    }
    assert_eq!(errs, 50);
    // The connection stays open and its first 100 subscriptions work.
    let mut p = s.raw_quiet();
    p.send(b"PUB flood.99 1\r\nx\r\nPUB flood.120 1\r\ny\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    let got = c.msgs_until_pong();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject, "flood.99");
    w.check();
}

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random client input: valid operations, mutated (bytes flipped, cut, repeated).
fn random_input(r: &mut Rng) -> Vec<u8> {
    const OPS: &[&[u8]] = &[
        b"CONNECT {\"verbose\":false}\r\n",
        b"CONNECT {\"headers\":true,\"verbose\":true}\r\n",
        b"PUB a.b 5\r\nhello\r\n",
        b"PUB a.b reply 0\r\n\r\n",
        b"HPUB a.b 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
        b"SUB a.* 1\r\n",
        b"SUB > q 2\r\n",
        b"UNSUB 1 3\r\n",
        b"PING\r\n",
        b"PONG\r\n",
        b"+OK\r\n",
        b"MSG a 1 1\r\nx\r\n",
        b"INFO {}\r\n",
    ];
    let mut out = Vec::new();
    for _ in 0..(1 + r.below(12)) {
        let mut op = OPS[r.below(OPS.len())].to_vec();
        match r.below(6) {
            0 if !op.is_empty() => {
                let i = r.below(op.len());
                op[i] = r.next() as u8;
            }
            1 => op.truncate(r.below(op.len() + 1)),
            2 => op.insert(r.below(op.len() + 1), b' '),
            3 => {
                let junk: Vec<u8> = (0..r.below(64)).map(|_| r.next() as u8).collect();
                op.extend(junk);
            }
            _ => {}
        }
        out.extend(op);
    }
    out
}

#[test]
fn seeded_random_protocol_input_never_hurts_other_clients() {
    let seed = std::env::var("TERN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seeded_random_protocol_input: TERN_FUZZ_SEED={seed}");
    let mut r = Rng(seed);
    let s = Server::start_sharded(2, &[]);
    let pid = s.pid();
    let mut w = Witness::new(&s, PLAIN);
    let before = rss_kib(pid);
    for round in 0..300 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(2))).ok();
        let input = random_input(&mut r);
        let _ = c.write_all(&input);
        if round % 3 == 0 {
            // Leave some open for a while, drop the others at once.
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(c);
        if round % 25 == 0 {
            w.check();
        }
    }
    w.check();
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "seed {seed}: RSS grew from {before} KiB to {after} KiB"
    );
}
