//! Raw client-protocol tests: exact bytes on the wire.
//! Every expectation here was checked against nats-server 2.9.10.

mod common;

use common::{Msg, RawClient, Server};
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn info_on_connect() {
    let s = Server::start(&[]);
    let c = RawClient::connect(s.port);
    let i = &c.info;
    for k in ["server_id", "server_name", "version"] {
        assert!(
            i[k].is_string() && !i[k].as_str().unwrap().is_empty(),
            "INFO.{k}: {i}"
        );
    }
    assert_eq!(i["proto"], 1, "{i}");
    assert!(i["host"].is_string(), "{i}");
    assert_eq!(i["port"].as_u64(), Some(s.port as u64), "{i}");
    assert_eq!(i["headers"], true, "{i}");
    assert_eq!(i["max_payload"], 1048576, "{i}");
    assert!(i["client_id"].is_u64(), "{i}");
    assert_eq!(i["client_ip"], "127.0.0.1", "{i}");
    // two connections get different client ids
    let c2 = RawClient::connect(s.port);
    assert_ne!(c.info["client_id"], c2.info["client_id"]);
}

#[test]
fn connect_empty_is_verbose() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {}\r\n");
    c.expect(b"+OK\r\n");
    c.send(b"PING\r\n");
    c.expect(b"PONG\r\n");
}

#[test]
fn connect_not_verbose_ping_gets_only_pong() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    c.expect(b"PONG\r\n");
    c.expect_nothing(Duration::from_millis(200));
}

#[test]
fn connect_protocol_0_and_1_accepted() {
    let s = Server::start(&[]);
    for p in ["0", "1"] {
        let mut c = s.raw();
        c.send(format!("CONNECT {{\"verbose\":false,\"protocol\":{p}}}\r\nPING\r\n").as_bytes());
        c.expect(b"PONG\r\n");
    }
}

/// No CONNECT at all: PUB/SUB work. Real server: the connection then runs with
/// the default options (verbose and pedantic on), so every SUB/PUB is +OK'd.
#[test]
fn pub_sub_without_connect() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n");
    c.expect(b"+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\nPONG\r\n");
}

#[test]
fn verbs_are_case_insensitive() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"connect {\"verbose\":false}\r\nsub foo 1\r\nPub foo 2\r\nhi\r\npInG\r\n");
    c.expect(b"MSG foo 1 2\r\nhi\r\nPONG\r\n");
    c.send(b"unsub 1\r\npub foo 1\r\nx\r\nping\r\n");
    c.expect(b"PONG\r\n");
    let mut c = s.raw();
    c.send(b"CoNnEcT {\"verbose\":false,\"headers\":true}\r\nSuB foo 1\r\nHpUb foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUnSuB 1\r\npub foo 1\r\nx\r\nPING\r\n");
    c.expect(b"HMSG foo 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPONG\r\n");
}

#[test]
fn tabs_and_multiple_spaces_separate_fields() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT \t {\"verbose\":false}\r\nSUB\tfoo   q\t\t 1\r\nPUB \t foo\t\tbar  2\r\nhi\r\nPING\r\n");
    c.expect(b"MSG foo 1 bar 2\r\nhi\r\nPONG\r\n");
}

/// Control lines may end with a bare "\n". (The payload terminator must still
/// be "\r\n": `hi\n` after a payload is a parse error, see bad_input.rs.)
#[test]
fn bare_lf_line_endings() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false}\nSUB foo 1\nPUB foo 2\nhi\r\nPING\n");
    c.expect(b"MSG foo 1 2\r\nhi\r\nPONG\r\n");
}

/// Real server quirk: anything after PING on the line is ignored.
#[test]
fn ping_with_trailing_garbage_still_pongs() {
    let s = Server::start(&[]);
    let mut c = s.raw_quiet();
    c.send(b"PING x\r\n");
    c.expect(b"PONG\r\n");
}

#[test]
fn pub_sub_exact_bytes() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet();
    sub.send(b"SUB foo 1\r\nSUB foo 7\r\nUNSUB 7\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_quiet();
    p.send(b"PUB foo bar 5\r\nhello\r\nPUB foo 0\r\n\r\nPUB foo 4\r\na\r\nb\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    sub.expect(b"MSG foo 1 bar 5\r\nhello\r\nMSG foo 1 0\r\n\r\nMSG foo 1 4\r\na\r\nb\r\n");
    sub.expect_nothing(Duration::from_millis(100));
}

#[test]
fn pub_max_payload_exactly_is_accepted() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet();
    sub.send(b"SUB big 1\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_quiet();
    let payload = vec![b'z'; 1048576];
    p.send(b"PUB big 1048576\r\n");
    p.send(&payload);
    p.send(b"\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    let m = sub.read_msg();
    assert_eq!(m.subject, "big");
    assert_eq!(m.payload.len(), 1048576);
    assert!(m.payload.iter().all(|&b| b == b'z'));
}

/// A large message trickled in small writes, between small ones, arrives whole and in
/// order: the server holds a frame that spans many reads without losing or reordering bytes.
#[test]
fn large_message_across_many_reads() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet();
    sub.send(b"SUB big.* 1\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_quiet();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut input = b"PUB big.a 2\r\nhi\r\nPUB big.b 300000\r\n".to_vec();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\nPUB big.c r 3\r\nend\r\nPING\r\n");
    for (i, piece) in input.chunks(4093).enumerate() {
        p.send(piece);
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p.expect(b"PONG\r\n");
    let a = sub.read_msg();
    assert_eq!((a.subject.as_str(), &a.payload[..]), ("big.a", &b"hi"[..]));
    let b = sub.read_msg();
    assert_eq!(b.subject, "big.b");
    assert!(b.payload == payload, "the large payload changed in transit");
    let c = sub.read_msg();
    assert_eq!(
        (c.subject.as_str(), c.reply.as_deref(), &c.payload[..]),
        ("big.c", Some("r"), &b"end"[..])
    );
}

#[test]
fn hpub_hmsg_exact_bytes() {
    let s = Server::start(&[]);
    let mut sub = s.raw_headers();
    sub.send(b"SUB foo 1\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_headers();
    p.send(b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    p.send(b"HPUB foo rep 18 20\r\nNATS/1.0\r\nA: B\r\n\r\nhi\r\n");
    p.send(b"HPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    sub.expect(b"HMSG foo 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    sub.expect(b"HMSG foo 1 rep 18 20\r\nNATS/1.0\r\nA: B\r\n\r\nhi\r\n");
    sub.expect(b"HMSG foo 1 12 12\r\nNATS/1.0\r\n\r\n\r\n");
    // a plain PUB reaches a headers-capable subscriber as MSG
    p.send(b"PUB foo 2\r\nok\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    sub.expect(b"MSG foo 1 2\r\nok\r\n");
}

/// nats-server 2.9.10: a subscriber that did not declare headers:true gets a
/// MSG with the header block stripped (size = total - hdr).
#[test]
fn hpub_to_subscriber_without_headers_is_stripped() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet(); // no headers
    sub.send(b"SUB foo 1\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_headers();
    p.send(b"HPUB foo r 18 20\r\nNATS/1.0\r\nA: B\r\n\r\nhi\r\nHPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    sub.expect(b"MSG foo 1 r 2\r\nhi\r\nMSG foo 1 0\r\n\r\n");
}

#[test]
fn queue_group_on_one_connection_delivers_once() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet();
    sub.send(b"SUB work q 1\r\nSUB work q 2\r\nSUB work 3\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_quiet();
    let n = 200;
    let mut batch = Vec::new();
    for i in 0..n {
        let body = i.to_string();
        batch.extend_from_slice(format!("PUB work {}\r\n{}\r\n", body.len(), body).as_bytes());
    }
    batch.extend_from_slice(b"PING\r\n");
    p.send(&batch);
    p.expect(b"PONG\r\n");
    let msgs = sub.msgs_until_pong();
    let mut queue_count: HashMap<String, usize> = HashMap::new();
    let mut plain = 0;
    for m in &msgs {
        if m.sid == "3" {
            plain += 1;
        } else {
            assert!(m.sid == "1" || m.sid == "2", "{m:?}");
            *queue_count
                .entry(String::from_utf8(m.payload.clone()).unwrap())
                .or_default() += 1;
        }
    }
    assert_eq!(plain, n, "the plain subscriber gets every message");
    assert_eq!(queue_count.len(), n, "every message reached the group");
    assert!(
        queue_count.values().all(|&c| c == 1),
        "exactly one member per message"
    );
}

fn sids(msgs: &[Msg]) -> Vec<String> {
    let mut v: Vec<String> = msgs.iter().map(|m| m.sid.clone()).collect();
    v.sort();
    v
}

#[test]
fn wildcards() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet();
    sub.send(b"SUB foo.* 1\r\nSUB foo.> 2\r\nSUB > 3\r\nSUB *.bar.* 4\r\nSUB foo* 5\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut p = s.raw_quiet();
    let cases: &[(&str, &[&str])] = &[
        ("foo.bar", &["1", "2", "3"]),
        ("foo.bar.baz", &["2", "3", "4"]),
        ("foo", &["3"]),
        ("x.bar.y", &["3", "4"]),
        ("foo*", &["3", "5"]), // `foo*` is a literal token
        ("Foo.bar", &["3"]),   // subjects are case-sensitive
    ];
    for (subj, expected) in cases {
        p.send(format!("PUB {subj} 1\r\nx\r\nPING\r\n").as_bytes());
        p.expect(b"PONG\r\n");
        let msgs = sub.msgs_until_pong();
        assert!(msgs.iter().all(|m| m.subject == *subj), "{msgs:?}");
        let want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(sids(&msgs), want, "subject {subj}");
    }
}

#[test]
fn unsub_stops_delivery() {
    let s = Server::start(&[]);
    let mut c = s.raw_quiet();
    c.send(b"SUB foo 1\r\nPUB foo 1\r\na\r\nUNSUB 1\r\nPUB foo 1\r\nb\r\nPING\r\n");
    c.expect(b"MSG foo 1 1\r\na\r\nPONG\r\n");
    // unsubscribing an unknown sid is not an error
    c.send(b"UNSUB 99\r\nPING\r\n");
    c.expect(b"PONG\r\n");
}

#[test]
fn unsub_max_auto_unsubscribes() {
    let s = Server::start(&[]);
    let mut c = s.raw_quiet();
    c.send(
        b"SUB foo 1\r\nUNSUB 1 2\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nPUB foo 1\r\nc\r\nPING\r\n",
    );
    c.expect(b"MSG foo 1 1\r\na\r\nMSG foo 1 1\r\nb\r\nPONG\r\n");
    // max already reached when UNSUB arrives -> removed at once
    c.send(
        b"SUB bar 2\r\nPUB bar 1\r\na\r\nPUB bar 1\r\nb\r\nUNSUB 2 1\r\nPUB bar 1\r\nc\r\nPING\r\n",
    );
    c.expect(b"MSG bar 2 1\r\na\r\nMSG bar 2 1\r\nb\r\nPONG\r\n");
    // UNSUB sid 0 behaves like a plain UNSUB (real server)
    c.send(b"SUB baz 3\r\nUNSUB 3 0\r\nPUB baz 1\r\na\r\nPING\r\n");
    c.expect(b"PONG\r\n");
}

/// A SUB that reuses a live sid on the same connection is ignored (in verbose
/// mode it is still +OK'd by nats-server 2.9.10).
#[test]
fn sub_reusing_sid_is_ignored() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {}\r\nSUB foo 1\r\nSUB bar 1\r\nSUB foo 1\r\nPING\r\n");
    c.expect(b"+OK\r\n+OK\r\n+OK\r\n+OK\r\nPONG\r\n");
    c.send(b"CONNECT {\"verbose\":false}\r\nPUB bar 1\r\nb\r\nPUB foo 1\r\nf\r\nPING\r\n");
    if after_2_10(&c.info) {
        // nats-server 2.11+ no longer delivers on a sid that was reused for another subject.
        c.expect(b"PONG\r\n");
    } else {
        c.expect(b"MSG foo 1 1\r\nf\r\nPONG\r\n");
    }
}

/// True for nats-server releases after 2.10, whose answers differ in a few places; Tern
/// follows 2.9/2.10, the releases it must interoperate with.
fn after_2_10(info: &serde_json::Value) -> bool {
    let v = info["version"].as_str().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) > (2, 10)
}

#[test]
fn echo_false_suppresses_self_delivery() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(
        b"CONNECT {\"verbose\":false,\"echo\":false}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n",
    );
    c.expect(b"PONG\r\n");
    // others still receive it, and it still receives others
    let mut other = s.raw_quiet();
    other.send(b"SUB foo 1\r\nPING\r\n");
    other.expect(b"PONG\r\n");
    c.send(b"PUB foo 2\r\nhi\r\nPING\r\n");
    c.expect(b"PONG\r\n");
    other.expect(b"MSG foo 1 2\r\nhi\r\n");
    other.send(b"PUB foo 2\r\nyo\r\nPING\r\n");
    other.expect(b"MSG foo 1 2\r\nyo\r\nPONG\r\n");
    c.expect(b"MSG foo 1 2\r\nyo\r\n");
    // echo default (true): self-delivery
    let mut e = s.raw_quiet();
    e.send(b"SUB foo 5\r\nPUB foo 1\r\nz\r\nPING\r\n");
    e.expect(b"MSG foo 5 1\r\nz\r\nPONG\r\n");
}

/// Verbose: +OK after CONNECT, SUB, PUB (sent before the resulting MSG),
/// UNSUB; never after PING.
#[test]
fn verbose_ok_sequence() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":true}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\nPING\r\n");
    c.expect(b"+OK\r\n+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\n+OK\r\nPONG\r\n");
    c.send(b"PING\r\n");
    c.expect(b"PONG\r\n");
    c.expect_nothing(Duration::from_millis(100));
}

/// Pedantic (the CONNECT default): PUB to a wildcard subject gets
/// -ERR 'Invalid Publish Subject' and the connection stays open.
/// Real nats-server 2.9.10: the message is STILL delivered (the check does not
/// drop it), and in verbose mode the +OK follows the -ERR.
#[test]
fn pedantic_invalid_publish_subject() {
    let s = Server::start(&[]);
    let mut sub = s.raw_quiet();
    sub.send(b"SUB foo.* 1\r\nPING\r\n");
    sub.expect(b"PONG\r\n");
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\nPUB foo.* 2\r\nhi\r\nPING\r\n");
    c.expect(b"-ERR 'Invalid Publish Subject'\r\nPONG\r\n");
    sub.expect(b"MSG foo.* 1 2\r\nhi\r\n");
    c.send(b"PUB foo.> 1\r\nx\r\nPING\r\n");
    c.expect(b"-ERR 'Invalid Publish Subject'\r\nPONG\r\n");
    sub.expect(b"MSG foo.> 1 1\r\nx\r\n");
    let mut v = s.raw();
    v.send(b"CONNECT {\"verbose\":true,\"pedantic\":true}\r\nPUB a.* 1\r\nx\r\nPING\r\n");
    v.expect(b"+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n");
}

#[test]
fn non_pedantic_accepts_wildcard_publish() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB foo.* 1\r\nPUB foo.* 2\r\nhi\r\nPING\r\n");
    c.expect(b"MSG foo.* 1 2\r\nhi\r\nPONG\r\n");
}

#[test]
fn no_responders_status() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.x 1\r\nPUB foo _INBOX.x 0\r\n\r\nPING\r\n");
    if after_2_10(&c.info) {
        // 2.11+ adds the request subject as a header.
        c.expect(b"HMSG _INBOX.x 1 35 35\r\nNATS/1.0 503\r\nNats-Subject: foo\r\n\r\n\r\nPONG\r\n");
    } else {
        c.expect(b"HMSG _INBOX.x 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPONG\r\n");
    }
    // with a responder present there is no 503
    let mut r = s.raw_quiet();
    r.send(b"SUB svc 1\r\nPING\r\n");
    r.expect(b"PONG\r\n");
    c.send(b"PUB svc _INBOX.x 2\r\nhi\r\nPING\r\n");
    c.expect(b"PONG\r\n");
    r.expect(b"MSG svc 1 _INBOX.x 2\r\nhi\r\n");
    // a PUB without reply never triggers no-responders
    c.send(b"PUB nobody 0\r\n\r\nPING\r\n");
    c.expect(b"PONG\r\n");
}

#[test]
fn no_responders_without_headers_closes() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false,\"no_responders\":true}\r\nPING\r\n");
    c.expect_then_closed(b"-ERR 'no responders requires headers support'\r\n");
    s.assert_healthy();
}

#[test]
fn invalid_client_protocol_closes() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.send(b"CONNECT {\"verbose\":false,\"protocol\":2}\r\nPING\r\n");
    c.expect_then_closed(b"-ERR 'invalid client protocol'\r\n");
    s.assert_healthy();
}

/// A client that connects and sends nothing (no CONNECT, no auth configured)
/// gets INFO and stays connected (nats-server only PINGs it after the 2 min
/// ping_interval; it does send a PING ~2 s after a CONNECT, which the
/// RawClient answers automatically).
#[test]
fn idle_client_stays_connected() {
    let s = Server::start(&[]);
    let mut c = s.raw();
    c.expect_nothing(Duration::from_millis(2500));
    c.send(b"PING\r\n");
    c.expect(b"PONG\r\n");
}

/// SIGTERM: the server shuts down by itself (connected clients see the close).
/// nats-server 2.9.10 logs "Initiating Shutdown..." / "Server Exiting.." and
/// exits with status 1 (not 0), so only "it exited on its own, not killed by
/// the signal" is asserted, not the code.
#[test]
fn sigterm_shuts_down() {
    let mut s = Server::start(&[]);
    let mut c = s.raw_quiet();
    assert!(s.is_running());
    let st = s
        .stop_gracefully(Duration::from_secs(10))
        .expect("server did not exit within 10 s of SIGTERM");
    assert!(
        st.code().is_some(),
        "server died from the signal instead of exiting: {st:?}"
    );
    c.expect_closed();
    assert!(!s.is_running());
}
