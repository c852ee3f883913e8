//! Accounts, black-box, with nats-server's behaviour: subjects of one account are invisible to
//! another; stream exports and imports (with a prefix, and restricted to named accounts);
//! service exports and imports with the `_R_.` reply mapping, singleton and streamed
//! responses and the `Nats-Request-Info` header; import errors; the accounts in
//! `/accountz` and `/connz`; a reload that moves a user to another account.
//!
//! Tern runs with two shards, so the clients of one test sit on both shards and every path
//! is taken both within a shard and across the two.

mod common;

use common::*;

const ACCOUNTS: &str = r#"
accounts {
  A: {
    users: [{user: a, password: a}, {user: a2, password: a}]
    exports: [
      {stream: "news.>"}
      {stream: "priv.>", accounts: [C]}
      {service: "svc.echo"}
      {service: "svc.stream", response_type: stream}
    ]
  }
  B: {
    users: [{user: b, password: b}, {user: b2, password: b}]
    imports: [
      {stream: {account: A, subject: "news.>"}, prefix: "an"}
      {service: {account: A, subject: "svc.echo"}, to: "echo"}
      {service: {account: A, subject: "svc.stream"}}
    ]
  }
  C: {
    users: [{user: c, password: c}]
    imports: [
      {stream: {account: A, subject: "news.sports"}}
      {stream: {account: A, subject: "priv.>"}}
    ]
  }
}
"#;

fn login(s: &Server, user: &str, pass: &str) -> RawClient {
    let mut c = s.raw();
    c.send(
        format!(
            "CONNECT {{\"verbose\":false,\"headers\":true,\"user\":\"{user}\",\"pass\":\"{pass}\"}}\r\nPING\r\n"
        )
        .as_bytes(),
    );
    c.expect(b"PONG\r\n");
    c
}

fn subjects(msgs: &[Msg]) -> Vec<String> {
    let mut v: Vec<String> = msgs
        .iter()
        .map(|m| format!("{} {}", m.sid, m.subject))
        .collect();
    v.sort();
    v
}

/// `tag` names the config's directory: tests run in parallel.
fn start(tag: &str) -> (ConfFile, Server) {
    let conf = ConfFile::new(tag, "acc.conf", ACCOUNTS);
    let s = Server::start_sharded(2, &["-c", conf.arg()]);
    (conf, s)
}

#[test]
fn accounts_keep_subjects_apart() {
    let (_conf, s) = start("acc-apart");
    // Consecutive connections alternate between Tern's two shards.
    let mut a = login(&s, "a", "a");
    let mut b = login(&s, "b", "b");
    let mut a2 = login(&s, "a2", "a");
    let mut b2 = login(&s, "b2", "b");
    for c in [&mut a, &mut b, &mut a2, &mut b2] {
        c.send(b"SUB foo 1\r\nSUB > 2\r\nSUB foo q 3\r\n");
        c.ping_pong();
    }
    a.send(b"PUB foo 2\r\nhi\r\n");
    for c in [&mut a, &mut a2] {
        let got = c.msgs_until_pong();
        assert!(
            got.iter().filter(|m| m.sid != "3").count() == 2,
            "{:?}",
            subjects(&got)
        );
    }
    for c in [&mut b, &mut b2] {
        assert_eq!(c.msgs_until_pong(), vec![], "nothing crosses into B");
    }
    b2.send(b"PUB foo 2\r\nhi\r\n");
    // The publisher's PONG first: then its message has been routed everywhere.
    let got_b: Vec<Msg> = [&mut b2, &mut b]
        .into_iter()
        .flat_map(|c| c.msgs_until_pong())
        .collect();
    assert_eq!(got_b.iter().filter(|m| m.sid == "3").count(), 1);
    assert_eq!(got_b.iter().filter(|m| m.sid == "1").count(), 2);
    for c in [&mut a, &mut a2] {
        assert_eq!(c.msgs_until_pong(), vec![]);
    }
}

#[test]
fn stream_imports_with_a_prefix_and_restricted_exports() {
    let (_conf, s) = start("acc-stream");
    let mut a = login(&s, "a", "a");
    let mut b = login(&s, "b", "b");
    let mut c = login(&s, "c", "c");
    b.send(b"SUB an.> 1\r\nSUB news.> 2\r\n");
    b.ping_pong();
    c.send(b"SUB news.> 1\r\nSUB priv.> 2\r\n");
    c.ping_pong();
    a.send(b"PUB news.sports 2\r\nhi\r\nPUB news.x 2\r\nhx\r\nPUB priv.q 2\r\npq\r\n");
    assert_eq!(a.msgs_until_pong(), vec![]);
    let got = b.msgs_until_pong();
    assert_eq!(
        subjects(&got),
        ["1 an.news.sports", "1 an.news.x"],
        "B imports news.> under the prefix an"
    );
    assert_eq!(got[0].payload, b"hi");
    let got = c.msgs_until_pong();
    assert_eq!(
        subjects(&got),
        ["1 news.sports", "2 priv.q"],
        "C imports news.sports only, and priv.> exported to it alone"
    );
    // An import goes one way: B's own news.y stays in B.
    b.send(b"PUB news.y 2\r\nby\r\n");
    let got = b.msgs_until_pong();
    assert_eq!(subjects(&got), ["2 news.y"]);
    assert_eq!(c.msgs_until_pong(), vec![]);
    assert_eq!(a.msgs_until_pong(), vec![]);
}

/// One read of many messages, delivered on the other shard both as published and mapped by
/// a stream import (each mapped message is made anew, so the batch between the shards keeps
/// switching between the read and the copies): every message arrives whole and in order.
#[test]
fn imported_and_direct_messages_of_one_read_cross_shards_whole() {
    let (_conf, s) = start("acc-mixed");
    // Connections alternate between the two shards: a and c on one, a2 and b on the other.
    let mut a = login(&s, "a", "a");
    let mut a2 = login(&s, "a2", "a");
    let _c = login(&s, "c", "c");
    let mut b = login(&s, "b", "b");
    a2.send(b"SUB news.> 1\r\n");
    a2.ping_pong();
    b.send(b"SUB an.> 1\r\n");
    b.ping_pong();
    let n = 500;
    let mut batch = Vec::new();
    for i in 0..n {
        let body = format!("m{i}.{}", "x".repeat(i % 23));
        batch.extend_from_slice(format!("PUB news.{i} {}\r\n{body}\r\n", body.len()).as_bytes());
    }
    a.send(&batch);
    assert_eq!(a.msgs_until_pong(), vec![]);
    for (c, prefix) in [(&mut a2, ""), (&mut b, "an.")] {
        let got = c.msgs_until_pong();
        assert_eq!(got.len(), n, "{prefix}: lost or duplicated messages");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.subject, format!("{prefix}news.{i}"));
            assert_eq!(m.payload, format!("m{i}.{}", "x".repeat(i % 23)).as_bytes());
        }
    }
}

#[test]
fn service_imports_map_the_reply_and_carry_the_response_back() {
    let (_conf, s) = start("acc-service");
    let mut a = login(&s, "a", "a");
    let mut b = login(&s, "b", "b");
    a.send(b"SUB svc.echo 1\r\nSUB svc.stream 2\r\nSUB _R_.> 3\r\n");
    a.ping_pong();
    b.send(b"SUB _INBOX.1 9\r\nSUB echo 3\r\nPUB echo _INBOX.1 3\r\nreq\r\n");
    let own = b.msgs_until_pong();
    // The responder sees the exported subject, a mapped reply and who asked.
    let req = a.read_msg();
    assert_eq!(req.subject, "svc.echo");
    assert_eq!(req.payload, b"req");
    let reply = req.reply.clone().unwrap();
    assert!(reply.starts_with("_R_."), "{reply}");
    let hdr = String::from_utf8(req.headers.clone().unwrap()).unwrap();
    assert!(hdr.starts_with("NATS/1.0\r\n"), "{hdr}");
    assert!(hdr.contains("Nats-Request-Info: {\"acc\":\"B\""), "{hdr}");
    // B's own subscriber on the import subject gets the request as published.
    assert_eq!(own.len(), 1);
    let own = &own[0];
    assert_eq!(
        (
            own.subject.as_str(),
            own.reply.as_deref(),
            own.headers.is_none()
        ),
        ("echo", Some("_INBOX.1"), true)
    );
    // A singleton service: one response reaches the requester; the second does not.
    a.send(format!("PUB {reply} 4\r\nresp\r\nPUB {reply} 5\r\nresp2\r\n").as_bytes());
    // The _R_ subject is an ordinary subject in A too.
    assert_eq!(a.msgs_until_pong().len(), 2);
    let got = b.msgs_until_pong();
    assert_eq!(subjects(&got), ["9 _INBOX.1"]);
    assert_eq!(got[0].payload, b"resp");

    // A streamed service: every response gets through.
    b.send(b"SUB _INBOX.2 10\r\nPUB svc.stream _INBOX.2 3\r\nreq\r\n");
    b.ping_pong();
    let req = a.read_msg();
    assert_eq!(req.subject, "svc.stream");
    let reply = req.reply.unwrap();
    a.send(format!("PUB {reply} 4\r\nrsp1\r\nPUB {reply} 4\r\nrsp2\r\n").as_bytes());
    assert_eq!(a.msgs_until_pong().len(), 2);
    let got = b.msgs_until_pong();
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [&b"rsp1"[..], b"rsp2"]);

    // No reply: the request arrives without one.
    b.send(b"PUB echo 2\r\nnr\r\n");
    assert_eq!(b.msgs_until_pong().len(), 1);
    let got = a.msgs_until_pong();
    let req = got.iter().find(|m| m.subject == "svc.echo").unwrap();
    assert_eq!((req.reply.as_deref(), &req.payload[..]), (None, &b"nr"[..]));
}

#[tokio::test]
async fn requests_through_a_service_import_with_async_nats() {
    let (_conf, s) = start("acc-request");
    let url = s.url();
    let responder = async_nats::ConnectOptions::with_user_and_password("a".into(), "a".into())
        .connect(&url)
        .await
        .unwrap();
    let mut sub = responder.subscribe("svc.echo").await.unwrap();
    responder.flush().await.unwrap();
    let serve = tokio::spawn(async move {
        use futures::StreamExt;
        for _ in 0..20 {
            let m = sub.next().await.unwrap();
            let mut out = b"echo: ".to_vec();
            out.extend_from_slice(&m.payload);
            responder
                .publish(m.reply.unwrap(), out.into())
                .await
                .unwrap();
        }
        responder.flush().await.unwrap();
    });
    let requester = async_nats::ConnectOptions::with_user_and_password("b".into(), "b".into())
        .connect(&url)
        .await
        .unwrap();
    for i in 0..20 {
        let r = requester
            .request("echo", format!("{i}").into())
            .await
            .unwrap();
        assert_eq!(r.payload, format!("echo: {i}").as_bytes());
    }
    serve.await.unwrap();
}

#[test]
fn imports_that_are_not_exported_are_refused() {
    let cases = [
        (
            "accounts { A: { exports: [{stream: \"priv.>\", accounts: [C]}] }, B: { imports: [{stream: {account: A, subject: \"priv.>\"}}] }, C: {} }",
            "Error adding stream import \"priv.>\": stream import not authorized",
        ),
        (
            "accounts { A: { exports: [{stream: \"x.>\"}] }, B: { imports: [{stream: {account: A, subject: \"y.>\"}}] } }",
            "Error adding stream import \"y.>\": stream import not authorized",
        ),
        (
            "accounts { A: { exports: [{stream: \"x.>\"}] }, B: { imports: [{service: {account: A, subject: \"x.y\"}}] } }",
            "Error adding service import \"x.y\": service import not authorized",
        ),
        (
            "accounts { B: { imports: [{stream: {account: Z, subject: \"x\"}}] } }",
            "\"Z\" account not defined for stream import",
        ),
        (
            "accounts { A: { users: [{user: u, password: p}] }, B: { users: [{user: u, password: q}] } }",
            "Duplicate user \"u\" detected",
        ),
    ];
    for (text, want) in cases {
        let conf = ConfFile::new("badimport", "bad.conf", text);
        let out = std::process::Command::new(server_bin())
            .args(["-t", "-c", conf.arg()])
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: {got}");
        assert!(got.contains(want), "{text}:\n{got}\nwanted {want}");
    }
}

#[test]
fn monitoring_shows_the_accounts() {
    let conf = ConfFile::new("accmon", "acc.conf", ACCOUNTS);
    let s = Server::start_sharded(2, &["-c", conf.arg(), "-m", "-1"]);
    let mut b = login(&s, "b", "b");
    b.send(b"SUB x 1\r\n");
    b.ping_pong();
    let v = s.http_json("/accountz");
    assert_eq!(v["system_account"], "$SYS");
    let mut names: Vec<String> = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["$G", "$SYS", "A", "B", "C"]);
    let d = &s.http_json("/accountz?acc=B")["account_detail"];
    assert_eq!(d["account_name"], "B");
    assert_eq!(d["client_connections"], 1);
    let imports = d["imports"].as_array().unwrap();
    let stream = imports.iter().find(|i| i["type"] == "stream").unwrap();
    assert_eq!(stream["subject"], "news.>");
    assert_eq!(stream["local_subject"], "an.news.>");
    // nats-server 2.9 shows a service import as {subject: local, to: exported}; 2.10 and
    // later as {subject: exported, to: local, local_subject: local}.
    let echo = imports
        .iter()
        .find(|i| i["subject"] == "echo" || i["local_subject"] == "echo")
        .unwrap();
    assert_eq!(echo["account"], "A");
    assert!(echo["subject"] == "svc.echo" || echo["to"] == "svc.echo");
    assert_eq!(s.http_get("/accountz?acc=ZZ").0, 400);
    let d = &s.http_json("/accountz?acc=A")["account_detail"];
    let exports = d["exports"].as_array().unwrap();
    let streamed = exports
        .iter()
        .find(|e| e["subject"] == "svc.stream")
        .unwrap();
    assert_eq!(streamed["response_type"], "Streamed");
    let c = &s.http_json("/connz?auth=1")["connections"][0];
    assert_eq!(
        (&c["account"], &c["authorized_user"]),
        (&"B".into(), &"b".into())
    );
    let subs = s.http_json("/subsz?subs=1");
    let mine = subs["subscriptions_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["subject"] == "x")
        .cloned()
        .unwrap();
    assert_eq!(mine["account"], "B");
}

/// nats-server closes a client whose user a reload moved to another account; the others
/// stay.
#[test]
fn a_reload_that_moves_a_user_to_another_account_closes_it() {
    let text = |m_in_a: bool| {
        let (in_a, in_b) = if m_in_a {
            (", {user: m, password: m}", "")
        } else {
            ("", ", {user: m, password: m}")
        };
        format!(
            "accounts {{\n  A: {{ users: [{{user: a, password: a}}{in_a}] }}\n  B: {{ users: [{{user: b, password: b}}{in_b}] }}\n}}\n"
        )
    };
    let conf = ConfFile::new("accreload", "acc.conf", &text(true));
    let s = Server::start_sharded(2, &["-c", conf.arg()]);
    let mut m = login(&s, "m", "m");
    let mut a = login(&s, "a", "a");
    a.send(b"SUB in.a 1\r\n");
    a.ping_pong();
    m.send(b"PUB in.a 1\r\nx\r\n");
    m.ping_pong();
    assert_eq!(a.msgs_until_pong().len(), 1, "m publishes into A");
    conf.rewrite(&text(false));
    s.signal("HUP");
    assert!(m.expect_closed().is_empty());
    a.ping_pong();
    let mut m = login(&s, "m", "m");
    m.send(b"PUB in.a 1\r\nx\r\n");
    m.ping_pong();
    assert_eq!(a.msgs_until_pong(), vec![], "m is in B now");
}

/// The system account: connect and disconnect advisories for every account's clients, and
/// the server answers `$SYS.REQ.SERVER.PING` (STATSZ) and `$SYS.REQ.SERVER.PING.<ENDPOINT>`
/// with its monitoring figures, to system account users only.
#[test]
fn the_system_account_hears_events_and_asks_the_server() {
    let conf = ConfFile::new(
        "sysacc",
        "sys.conf",
        "accounts {\n  SYS: { users: [{user: sys, password: sys}] }\n  A: { users: [{user: a, password: a}] }\n}\nsystem_account: SYS\n",
    );
    let s = Server::start_sharded(2, &["-c", conf.arg()]);
    let mut sys = login(&s, "sys", "sys");
    let server_id = sys.info["server_id"].as_str().unwrap().to_string();
    sys.send(
        b"SUB $SYS.ACCOUNT.A.CONNECT 1\r\nSUB $SYS.ACCOUNT.A.DISCONNECT 2\r\nSUB _INBOX.sys 3\r\n",
    );
    sys.ping_pong();
    let mut a = login(&s, "a", "a");
    let m = sys.read_msg();
    assert_eq!(m.subject, "$SYS.ACCOUNT.A.CONNECT");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["type"], "io.nats.server.advisory.v1.client_connect");
    assert_eq!(v["client"]["acc"], "A");
    assert_eq!(v["client"]["user"], "a");
    assert_eq!(v["server"]["id"], server_id.as_str());
    a.send(b"PUB x 2\r\nhi\r\n");
    a.ping_pong();
    drop(a);
    let m = sys.read_msg();
    assert_eq!(m.subject, "$SYS.ACCOUNT.A.DISCONNECT");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["type"], "io.nats.server.advisory.v1.client_disconnect");
    assert_eq!(v["reason"], "Client Closed");
    // As the client sees it: it sent one message.
    assert_eq!(v["sent"]["msgs"], 1, "{v}");

    sys.send(b"PUB $SYS.REQ.SERVER.PING _INBOX.sys 0\r\n\r\n");
    let m = sys.read_msg();
    assert_eq!(m.subject, "_INBOX.sys");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["server"]["id"], server_id.as_str());
    assert_eq!(v["statsz"]["connections"], 1, "{v}");
    let ask = format!("PUB $SYS.REQ.SERVER.{server_id}.VARZ _INBOX.sys 0\r\n\r\n");
    sys.send(ask.as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&sys.read_msg().payload).unwrap();
    assert_eq!(v["data"]["server_id"], server_id.as_str());
    assert_eq!(v["data"]["system_account"], "SYS");
    sys.send(b"PUB $SYS.REQ.SERVER.PING.CONNZ _INBOX.sys 2\r\n{}\r\n");
    let v: serde_json::Value = serde_json::from_slice(&sys.read_msg().payload).unwrap();
    assert_eq!(v["data"]["num_connections"], 1, "{v}");

    // Another account's $SYS subjects are its own: nobody answers there.
    let mut other = login(&s, "a", "a");
    other.send(b"SUB _INBOX.a 1\r\nPUB $SYS.REQ.SERVER.PING _INBOX.a 0\r\n\r\n");
    other.ping_pong();
    other.expect_nothing(std::time::Duration::from_millis(300));
}

/// `no_auth_user` may name a user of an account: clients without credentials land there.
#[test]
fn no_auth_user_in_an_account() {
    let conf = ConfFile::new(
        "accnoauth",
        "n.conf",
        "accounts {\n  A: { users: [{user: a, password: a}] }\n  B: { users: [{user: b, password: b}] }\n}\nno_auth_user: b\n",
    );
    let s = Server::start(&["-c", conf.arg()]);
    let mut anon = s.raw();
    anon.send(b"CONNECT {\"verbose\":false}\r\nSUB t 1\r\nPING\r\n");
    anon.expect(b"PONG\r\n");
    let mut a = login(&s, "a", "a");
    let mut b = login(&s, "b", "b");
    a.send(b"PUB t 1\r\na\r\n");
    a.ping_pong();
    b.send(b"PUB t 1\r\nb\r\n");
    b.ping_pong();
    let got: Vec<Vec<u8>> = anon
        .msgs_until_pong()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(got, [b"b".to_vec()]);
}
