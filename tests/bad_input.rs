//! Misbehaving clients: exact -ERR text (or none) and whether the server
//! closes the connection. After each bad client a well-behaved client must
//! still get a pub/sub roundtrip (the server stays up).
//! Every expectation here was checked against nats-server 2.9.10.

mod common;

use common::Server;
use std::time::Duration;

const UNKNOWN_OP: &[u8] = b"-ERR 'Unknown Protocol Operation'\r\n";

/// Send `input` on a fresh connection (optionally after a quiet CONNECT) and
/// expect exactly `before_close` and then a close.
fn closes_with(connect: Option<&str>, input: &[u8], before_close: &[u8]) {
    let s = Server::start(&[]);
    let mut c = s.raw();
    if let Some(cn) = connect {
        c.send(format!("CONNECT {cn}\r\nPING\r\n").as_bytes());
        c.expect(b"PONG\r\n");
    }
    c.send(input);
    c.expect_then_closed(before_close);
    s.assert_healthy();
}

const QUIET: Option<&str> = Some(r#"{"verbose":false}"#);
const QUIET_HDR: Option<&str> = Some(r#"{"verbose":false,"headers":true}"#);

#[test]
fn unknown_verb_closes() {
    closes_with(None, b"FOO bar\r\n", UNKNOWN_OP);
    closes_with(QUIET, b"FOO\r\n", UNKNOWN_OP);
}

#[test]
fn empty_line_closes() {
    closes_with(QUIET, b"\r\n", UNKNOWN_OP);
}

#[test]
fn server_only_verbs_from_client_close() {
    closes_with(QUIET, b"MSG foo 1 1\r\na\r\n", UNKNOWN_OP);
    closes_with(QUIET, b"RS+ foo\r\n", UNKNOWN_OP);
}

#[test]
fn binary_garbage_closes() {
    closes_with(None, b"\x00\x01\x02\xff\xfe\r\n", UNKNOWN_OP);
}

#[test]
fn verb_without_args_closes() {
    closes_with(QUIET, b"PUB\r\n", UNKNOWN_OP);
    closes_with(QUIET, b"SUB\r\n", UNKNOWN_OP);
    closes_with(QUIET, b"UNSUB\r\n", UNKNOWN_OP);
}

#[test]
fn invalid_subject_keeps_connection_open() {
    let s = Server::start(&[]);
    let mut c = s.raw_quiet();
    for bad in ["foo..bar", "foo.", ".foo", "a.>.b", ">.foo"] {
        c.send(format!("SUB {bad} 1\r\nPING\r\n").as_bytes());
        c.expect(b"-ERR 'Invalid Subject'\r\nPONG\r\n");
    }
    // the rejected SUBs did not register anything; sid 1 is still free
    c.send(b"SUB ok 1\r\nPUB ok 1\r\nx\r\nPING\r\n");
    c.expect(b"MSG ok 1 1\r\nx\r\nPONG\r\n");
    // verbose: -ERR instead of +OK
    c.send(b"CONNECT {\"verbose\":true}\r\nSUB foo..bar 2\r\nPING\r\n");
    c.expect(b"+OK\r\n-ERR 'Invalid Subject'\r\nPONG\r\n");
    s.assert_healthy();
}

#[test]
fn max_payload_violation_closes() {
    closes_with(
        QUIET,
        b"PUB foo 2000000\r\n",
        b"-ERR 'Maximum Payload Violation'\r\n",
    );
    closes_with(
        QUIET,
        b"PUB foo 1048577\r\n",
        b"-ERR 'Maximum Payload Violation'\r\n",
    );
    closes_with(
        QUIET_HDR,
        b"HPUB foo 20 2000000\r\n",
        b"-ERR 'Maximum Payload Violation'\r\n",
    );
}

#[test]
fn max_control_line_exceeded_closes() {
    let long = "a".repeat(5000);
    closes_with(
        QUIET,
        format!("PUB {long} 1\r\n").as_bytes(),
        b"-ERR 'maximum control line exceeded'\r\n",
    );
    // also when the over-long line has no line ending yet
    closes_with(
        QUIET,
        format!("SUB {long}").as_bytes(),
        b"-ERR 'maximum control line exceeded'\r\n",
    );
}

#[test]
fn long_control_line_under_limit_ok() {
    let s = Server::start(&[]);
    let mut c = s.raw_quiet();
    let subj = "a".repeat(4000);
    c.send(format!("SUB {subj} 1\r\nPUB {subj} 1\r\nx\r\nPING\r\n").as_bytes());
    c.expect(format!("MSG {subj} 1 1\r\nx\r\nPONG\r\n").as_bytes());
}

#[test]
fn payload_without_crlf_closes() {
    closes_with(QUIET, b"PUB foo 2\r\nhiXX", UNKNOWN_OP);
    // size too small / too large for what follows
    closes_with(QUIET, b"PUB foo 1\r\nhi\r\n", UNKNOWN_OP);
    closes_with(QUIET, b"PUB foo 3\r\nhi\r\n", UNKNOWN_OP);
    // a bare LF is not accepted as payload terminator
    closes_with(QUIET, b"PUB foo 2\r\nhi\n\n", UNKNOWN_OP);
    closes_with(
        QUIET_HDR,
        b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhiXX",
        UNKNOWN_OP,
    );
}

/// Real server: a PUB/SUB whose arguments do not parse closes the connection
/// WITHOUT any -ERR (protocol violation, only logged).
#[test]
fn bad_pub_sub_args_close_silently() {
    closes_with(QUIET, b"PUB foo -1\r\n", b"");
    closes_with(QUIET, b"PUB foo abc\r\n", b"");
    closes_with(QUIET, b"PUB foo\r\n", b"");
    closes_with(QUIET, b"PUB foo 1 2 3\r\n", b"");
    closes_with(QUIET, b"SUB foo\r\n", b"");
    closes_with(QUIET, b"SUB foo bar baz 1\r\n", b"");
    closes_with(QUIET, b"UNSUB 1 2 3\r\n", b"");
}

/// Invalid CONNECT JSON: closed without -ERR.
#[test]
fn invalid_connect_json_closes_silently() {
    closes_with(None, b"CONNECT {bad\r\n", b"");
    closes_with(None, b"CONNECT\r\n", b"");
}

#[test]
fn connect_with_account_field_is_authorization_violation() {
    closes_with(
        None,
        b"CONNECT {\"verbose\":false,\"account\":\"x\"}\r\n",
        b"-ERR 'Authorization Violation'\r\n",
    );
}

/// HPUB from a connection that did not declare headers:true: closed, no -ERR.
#[test]
fn hpub_without_headers_closes_silently() {
    closes_with(QUIET, b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"");
    closes_with(None, b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"");
}

#[test]
fn hpub_bad_sizes_close_silently() {
    closes_with(QUIET_HDR, b"HPUB foo 14 12\r\n", b"");
    closes_with(QUIET_HDR, b"HPUB foo -1 2\r\n", b"");
    closes_with(QUIET_HDR, b"HPUB foo 2\r\n", b"");
}

/// A client sending -ERR is closed (nothing sent back); +OK and INFO from a
/// client are ignored.
#[test]
fn client_sent_server_ops() {
    closes_with(QUIET, b"-ERR 'x'\r\n", b"");
    let s = Server::start(&[]);
    let mut c = s.raw_quiet();
    c.send(b"+OK\r\nINFO {}\r\nPONG\r\nPING\r\n");
    c.expect(b"PONG\r\n");
    c.expect_nothing(Duration::from_millis(100));
}

/// Many bad clients in a row against one server; it keeps serving.
#[test]
fn server_survives_many_bad_clients() {
    let s = Server::start(&[]);
    let inputs: &[&[u8]] = &[
        b"FOO\r\n",
        b"PUB foo 2000000\r\n",
        b"PUB foo -1\r\n",
        b"CONNECT {bad\r\n",
        b"\xff\xfe\xfd",
        b"PUB foo 2\r\nhiXX",
        b"HPUB foo 12 14\r\n",
    ];
    for _ in 0..5 {
        for inp in inputs {
            let mut c = s.raw();
            c.send(inp);
            c.expect_closed();
        }
    }
    // a client that connects and drops mid-payload
    {
        let mut c = s.raw_quiet();
        c.send(b"PUB foo 100\r\nabc");
    }
    s.assert_healthy();
}
