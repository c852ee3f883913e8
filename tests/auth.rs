//! Authentication and authorization, black-box, with nats-server's answers: tokens, users
//! with plain and bcrypt passwords, nkeys, no_auth_user, the authorization timeout, and
//! publish/subscribe permissions (the connection stays open and nothing crosses them).

mod common;

use common::*;
use std::time::Duration;

fn connect_with(s: &Server, json: &str) -> RawClient {
    let mut c = s.raw();
    c.send(format!("CONNECT {json}\r\nPING\r\n").as_bytes());
    c
}

fn refused(s: &Server, json: &str) {
    let mut c = connect_with(s, json);
    c.expect_then_closed(b"-ERR 'Authorization Violation'\r\n");
}

fn accepted(s: &Server, json: &str) -> RawClient {
    let mut c = connect_with(s, json);
    c.expect(b"PONG\r\n");
    c
}

#[test]
fn token_from_the_command_line() {
    let s = Server::start(&["--auth", "s3cret-token"]);
    assert_eq!(s.raw().info["auth_required"], true);
    refused(&s, r#"{"verbose":false}"#);
    refused(&s, r#"{"verbose":false,"auth_token":"wrong"}"#);
    accepted(&s, r#"{"verbose":false,"auth_token":"s3cret-token"}"#);
    assert!(
        !s.logs()
            .iter()
            .any(|l| l.contains("s3cret-token") || l.contains("wrong\"")),
        "secrets must not be logged"
    );
}

#[test]
fn users_with_plain_and_bcrypt_passwords() {
    let hash = bcrypt::hash("hashed-pw", 4).unwrap();
    let conf = ConfFile::new(
        "users",
        "users.conf",
        &format!(
            "authorization {{\n  users: [\n    {{user: alice, password: plain-pw}}\n    {{user: bob, password: \"{hash}\"}}\n  ]\n}}\n"
        ),
    );
    let s = Server::start(&["-c", conf.arg()]);
    accepted(&s, r#"{"verbose":false,"user":"alice","pass":"plain-pw"}"#);
    refused(&s, r#"{"verbose":false,"user":"alice","pass":"nope"}"#);
    refused(&s, r#"{"verbose":false,"user":"carol","pass":"plain-pw"}"#);
    refused(&s, r#"{"verbose":false}"#);
    // bcrypt runs off the shard: a verbose client still gets +OK after it, then PONG.
    let mut b = connect_with(&s, r#"{"verbose":true,"user":"bob","pass":"hashed-pw"}"#);
    b.expect(b"+OK\r\nPONG\r\n");
    refused(&s, r#"{"verbose":false,"user":"bob","pass":"plain-pw"}"#);
    assert!(!s
        .logs()
        .iter()
        .any(|l| l.contains("plain-pw") || l.contains("hashed-pw")));
    s.assert_healthy_as(r#"{"verbose":false,"user":"alice","pass":"plain-pw"}"#);
}

#[test]
fn operations_before_connect_and_the_auth_timeout() {
    let conf = ConfFile::new(
        "authto",
        "to.conf",
        "authorization {\n  token: tok\n  timeout: 1\n}\n",
    );
    let s = Server::start(&["-c", conf.arg()]);
    let mut early = s.raw();
    early.send(b"SUB x 1\r\n");
    early.expect_then_closed(b"-ERR 'Authorization Violation'\r\n");
    let mut idle = s.raw();
    let start = std::time::Instant::now();
    idle.expect_then_closed(b"-ERR 'Authentication Timeout'\r\n");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    accepted(&s, r#"{"verbose":false,"auth_token":"tok"}"#);
}

#[test]
fn nkey_users_sign_the_nonce() {
    use base64::Engine;
    let kp = nkeys::KeyPair::new_user();
    let conf = ConfFile::new(
        "nkeys",
        "nk.conf",
        &format!(
            "authorization {{\n  users: [ {{nkey: {}}} ]\n}}\n",
            kp.public_key()
        ),
    );
    let s = Server::start(&["-c", conf.arg()]);
    let mut c = s.raw();
    let nonce = c.info["nonce"]
        .as_str()
        .expect("INFO has a nonce")
        .to_string();
    let sig =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.sign(nonce.as_bytes()).unwrap());
    c.send(
        format!(
            "CONNECT {{\"verbose\":false,\"nkey\":\"{}\",\"sig\":\"{sig}\"}}\r\nPING\r\n",
            kp.public_key()
        )
        .as_bytes(),
    );
    c.expect(b"PONG\r\n");
    // A signature over something else is refused.
    let mut bad = s.raw();
    bad.send(
        format!(
            "CONNECT {{\"verbose\":false,\"nkey\":\"{}\",\"sig\":\"{sig}\"}}\r\nPING\r\n",
            kp.public_key()
        )
        .as_bytes(),
    );
    bad.expect_then_closed(b"-ERR 'Authorization Violation'\r\n");
}

#[test]
fn no_auth_user_logs_in_clients_without_credentials() {
    let conf = ConfFile::new(
        "noauth",
        "na.conf",
        "authorization {\n  users: [ {user: guest, password: g, permissions: {publish: \"public.>\"}} ]\n}\nno_auth_user: guest\n",
    );
    let s = Server::start(&["-c", conf.arg()]);
    let mut c = accepted(&s, r#"{"verbose":false}"#);
    // And gets that user's permissions.
    c.send(b"PUB private.x 1\r\nx\r\nPING\r\n");
    c.expect(b"-ERR 'Permissions Violation for Publish to \"private.x\"'\r\nPONG\r\n");
    refused(&s, r#"{"verbose":false,"user":"guest","pass":"wrong"}"#);
}

#[test]
fn permissions_keep_the_connection_and_stop_the_message() {
    let conf = ConfFile::new(
        "perms",
        "perms.conf",
        "authorization {\n  users: [\n    {user: app, password: pw, permissions: {\n      publish: { allow: [\"orders.>\"], deny: [\"orders.secret\"] }\n      subscribe: { allow: [\"orders.>\", \"jobs.* workers\"], deny: [\"orders.secret\"] }\n    }}\n    {user: admin, password: pw}\n  ]\n}\n",
    );
    let s = Server::start(&["-c", conf.arg()]);
    let app = r#"{"verbose":false,"user":"app","pass":"pw"}"#;
    let admin = r#"{"verbose":false,"user":"admin","pass":"pw"}"#;
    let mut watcher = accepted(&s, admin);
    watcher.send(b"SUB > 1\r\nPING\r\n");
    watcher.expect(b"PONG\r\n");

    let mut c = accepted(&s, app);
    c.send(b"PUB payments.x 2\r\nno\r\nPING\r\n");
    c.expect(b"-ERR 'Permissions Violation for Publish to \"payments.x\"'\r\nPONG\r\n");
    c.send(b"PUB orders.secret 2\r\nno\r\nPING\r\n");
    c.expect(b"-ERR 'Permissions Violation for Publish to \"orders.secret\"'\r\nPONG\r\n");
    c.send(b"SUB payments.> 1\r\nPING\r\n");
    c.expect(b"-ERR 'Permissions Violation for Subscription to \"payments.>\"'\r\nPONG\r\n");
    c.send(b"SUB jobs.run others 2\r\nPING\r\n");
    c.expect(
        b"-ERR 'Permissions Violation for Subscription to \"jobs.run\" using queue \"others\"'\r\nPONG\r\n",
    );
    c.send(b"SUB jobs.run workers 3\r\nSUB orders.* 4\r\nPING\r\n");
    c.expect(b"PONG\r\n");
    // Allowed traffic flows; the denied subject never reaches the wildcard subscription.
    let mut p = accepted(&s, admin);
    p.send(b"PUB orders.secret 1\r\ns\r\nPUB orders.new 1\r\nn\r\nPUB jobs.run 1\r\nj\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    let mut got = c.msgs_until_pong();
    got.sort_by(|a, b| a.subject.cmp(&b.subject));
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["jobs.run", "orders.new"], "{got:?}");
    c.send(b"PUB orders.new 2\r\nok\r\nPING\r\n");
    c.expect(b"MSG orders.new 4 2\r\nok\r\nPONG\r\n");
    // The watcher saw only what was allowed to be published.
    let seen: Vec<String> = watcher
        .msgs_until_pong()
        .into_iter()
        .map(|m| m.subject)
        .collect();
    assert!(!seen.contains(&"payments.x".to_string()), "{seen:?}");
    assert!(seen.contains(&"orders.new".to_string()), "{seen:?}");
}

/// A reload that changes users or permissions applies to the clients already connected, as
/// nats-server does: a removed user is disconnected, and a subscription the new permissions
/// deny is removed with an -ERR naming it.
#[test]
fn a_reload_applies_to_connected_clients() {
    let users = |alice_sub: &str| {
        format!(
            "authorization {{\n  users: [\n    {{user: alice, password: pw, permissions: {{subscribe: {alice_sub}}}}}\n    {{user: bob, password: pw}}\n  ]\n}}\n"
        )
    };
    let conf = ConfFile::new("permreload", "p.conf", &users("\">\""));
    let s = Server::start(&["-c", conf.arg()]);
    let mut alice = accepted(&s, r#"{"verbose":false,"user":"alice","pass":"pw"}"#);
    alice.send(b"SUB a.b 1\r\nSUB x.y 2\r\nPING\r\n");
    alice.expect(b"PONG\r\n");
    let mut bob = accepted(&s, r#"{"verbose":false,"user":"bob","pass":"pw"}"#);
    // alice may now only subscribe to a.>; bob is gone.
    conf.rewrite(&users("\"a.>\"").replace("    {user: bob, password: pw}\n", ""));
    s.signal("HUP");
    let line = alice.read_line();
    assert_eq!(
        line,
        "-ERR 'Permissions Violation for Subscription to \"x.y\" (sid \"2\")'"
    );
    // A removed user is closed without an -ERR.
    assert!(bob.expect_closed().is_empty());
    // a.b still delivers, x.y does not.
    let mut p = accepted(&s, r#"{"verbose":false,"user":"alice","pass":"pw"}"#);
    p.send(b"PUB x.y 1\r\nx\r\nPUB a.b 1\r\na\r\nPING\r\n");
    p.expect(b"PONG\r\n");
    let got = alice.msgs_until_pong();
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["a.b"], "{got:?}");
}

/// `allow_responses`: a user may publish to the reply subjects of the requests it received
/// (once by default, `max` times within `expires` when given), and nothing else unless its
/// publish rules allow it.
#[test]
fn allow_responses_permits_answering_requests_only() {
    let conf = ConfFile::new(
        "allowresp",
        "r.conf",
        "authorization {\n  users: [\n    {user: cli, password: pw}\n    {user: svc, password: pw, permissions: {subscribe: \"req.>\", allow_responses: true}}\n    {user: svc2, password: pw, permissions: {publish: \"log.>\", subscribe: \"req.>\", allow_responses: {max: 2, expires: \"1s\"}}}\n  ]\n}\n",
    );
    let s = Server::start(&["-c", conf.arg()]);
    let mut cli = accepted(&s, r#"{"verbose":false,"user":"cli","pass":"pw"}"#);
    let mut svc = accepted(&s, r#"{"verbose":false,"user":"svc","pass":"pw"}"#);
    let mut svc2 = accepted(&s, r#"{"verbose":false,"user":"svc2","pass":"pw"}"#);
    svc.send(b"SUB req.> 1\r\nPUB other 1\r\nx\r\nPING\r\n");
    assert_eq!(
        svc.read_line(),
        "-ERR 'Permissions Violation for Publish to \"other\"'"
    );
    svc.expect(b"PONG\r\n");
    svc2.send(b"SUB req.> 1\r\nPING\r\n");
    svc2.expect(b"PONG\r\n");
    cli.send(b"SUB _INBOX.> 1\r\nPUB req.a _INBOX.1 1\r\nq\r\nPING\r\n");
    cli.expect(b"PONG\r\n");
    assert_eq!(svc.read_msg().reply.as_deref(), Some("_INBOX.1"));
    assert_eq!(svc2.read_msg().reply.as_deref(), Some("_INBOX.1"));
    // svc: one response; the second is refused and never delivered.
    svc.send(b"PUB _INBOX.1 2\r\nr1\r\nPUB _INBOX.1 2\r\nr2\r\nPING\r\n");
    assert_eq!(
        svc.read_line(),
        "-ERR 'Permissions Violation for Publish to \"_INBOX.1\"'"
    );
    svc.expect(b"PONG\r\n");
    // svc2: two responses, then refused; its own publish rule still works.
    svc2.send(b"PUB _INBOX.1 2\r\nr3\r\nPUB _INBOX.1 2\r\nr4\r\nPUB _INBOX.1 2\r\nr5\r\nPUB log.x 1\r\nl\r\nPING\r\n");
    assert_eq!(
        svc2.read_line(),
        "-ERR 'Permissions Violation for Publish to \"_INBOX.1\"'"
    );
    svc2.expect(b"PONG\r\n");
    let got: Vec<Vec<u8>> = cli
        .msgs_until_pong()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(got, [b"r1".to_vec(), b"r3".to_vec(), b"r4".to_vec()]);
    // The permission expires.
    cli.send(b"PUB req.b _INBOX.2 1\r\nq\r\nPING\r\n");
    cli.expect(b"PONG\r\n");
    assert_eq!(svc2.read_msg().reply.as_deref(), Some("_INBOX.2"));
    std::thread::sleep(std::time::Duration::from_millis(1300));
    svc2.send(b"PUB _INBOX.2 2\r\nr6\r\nPING\r\n");
    assert_eq!(
        svc2.read_line(),
        "-ERR 'Permissions Violation for Publish to \"_INBOX.2\"'"
    );
    svc2.expect(b"PONG\r\n");
    assert_eq!(cli.msgs_until_pong(), vec![]);
}
