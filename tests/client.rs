//! Scenarios through the real async-nats client (0.38).

mod common;

use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use common::Server;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

async fn next(sub: &mut Subscriber) -> Message {
    timeout(T, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_roundtrip() {
    let s = Server::start(&[]);
    let c = s.client().await;
    let mut sub = c.subscribe("greet").await.unwrap();
    c.flush().await.unwrap();
    let p = s.client().await;
    for i in 0..10 {
        p.publish("greet", Bytes::from(format!("hello {i}")))
            .await
            .unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..10 {
        let m = next(&mut sub).await;
        assert_eq!(m.subject.as_str(), "greet");
        assert_eq!(m.payload, Bytes::from(format!("hello {i}")));
        assert!(m.reply.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards() {
    let s = Server::start(&[]);
    let c = s.client().await;
    let mut star = c.subscribe("a.*").await.unwrap();
    let mut gt = c.subscribe("a.>").await.unwrap();
    c.flush().await.unwrap();
    let p = s.client().await;
    p.publish("a.b", "1".into()).await.unwrap();
    p.publish("a.b.c", "2".into()).await.unwrap();
    p.publish("b.c", "3".into()).await.unwrap();
    p.publish("a.x", "4".into()).await.unwrap();
    p.flush().await.unwrap();
    let m = next(&mut star).await;
    assert_eq!((m.subject.as_str(), &m.payload[..]), ("a.b", &b"1"[..]));
    let m = next(&mut star).await;
    assert_eq!((m.subject.as_str(), &m.payload[..]), ("a.x", &b"4"[..]));
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(next(&mut gt).await.subject.to_string());
        }
        v
    };
    assert_eq!(got, vec!["a.b", "a.b.c", "a.x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_each_message_exactly_once() {
    let s = Server::start(&[]);
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = s.client().await;
        subs.push(
            c.queue_subscribe("jobs", "workers".to_string())
                .await
                .unwrap(),
        );
        c.flush().await.unwrap();
        clients.push(c);
    }
    let mut merged = futures::stream::select_all(subs);
    let p = s.client().await;
    let n = 300;
    for i in 0..n {
        p.publish("jobs", Bytes::from(i.to_string())).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let m = timeout(T, merged.next())
            .await
            .expect("timeout")
            .expect("ended");
        *seen
            .entry(String::from_utf8(m.payload.to_vec()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), n, "every message delivered");
    assert!(seen.values().all(|&c| c == 1), "no duplicates");
    // best effort: no late duplicate shows up
    assert!(timeout(Duration::from_millis(300), merged.next())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply() {
    let s = Server::start(&[]);
    let responder = s.client().await;
    let mut svc = responder.subscribe("svc.upper").await.unwrap();
    responder.flush().await.unwrap();
    let r2 = responder.clone();
    let task = tokio::spawn(async move {
        for _ in 0..5 {
            let m = next(&mut svc).await;
            let reply = m.reply.expect("request has a reply subject");
            let up = String::from_utf8(m.payload.to_vec())
                .unwrap()
                .to_uppercase();
            r2.publish(reply, up.into()).await.unwrap();
        }
        r2.flush().await.unwrap();
    });
    let c = s.client().await;
    for i in 0..5 {
        let resp = timeout(T, c.request("svc.upper", Bytes::from(format!("hi {i}"))))
            .await
            .expect("timeout")
            .expect("request failed");
        assert_eq!(resp.payload, Bytes::from(format!("HI {i}")));
    }
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip() {
    let s = Server::start(&[]);
    let c = s.client().await;
    let mut sub = c.subscribe("h").await.unwrap();
    c.flush().await.unwrap();
    let p = s.client().await;
    let mut h = HeaderMap::new();
    h.insert("X-Test", "1");
    h.insert("Another-Key", "a value with spaces");
    p.publish_with_headers("h", h, "body".into()).await.unwrap();
    p.publish("h", "plain".into()).await.unwrap();
    p.flush().await.unwrap();
    let m = next(&mut sub).await;
    let hm = m.headers.expect("headers present");
    assert_eq!(hm.get("X-Test").map(|v| v.as_str()), Some("1"));
    assert_eq!(
        hm.get("Another-Key").map(|v| v.as_str()),
        Some("a value with spaces")
    );
    assert_eq!(m.payload, Bytes::from("body"));
    let m = next(&mut sub).await;
    assert_eq!(m.payload, Bytes::from("plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_responders_fails_fast() {
    let s = Server::start(&[]);
    let c = s.client().await;
    let err = timeout(T, c.request("nobody.home", "x".into()))
        .await
        .expect("no-responders must not wait for the request timeout")
        .expect_err("request with no responders must fail");
    assert_eq!(
        err.kind(),
        async_nats::RequestErrorKind::NoResponders,
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_unsubscribe_after_n() {
    let s = Server::start(&[]);
    let c = s.client().await;
    let mut sub = c.subscribe("au").await.unwrap();
    sub.unsubscribe_after(3).await.unwrap();
    c.flush().await.unwrap();
    let p = s.client().await;
    for i in 0..6 {
        p.publish("au", Bytes::from(i.to_string())).await.unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..3 {
        assert_eq!(next(&mut sub).await.payload, Bytes::from(i.to_string()));
    }
    // after the 3rd message the subscription ends
    let end = timeout(T, sub.next())
        .await
        .expect("subscription did not end");
    assert!(end.is_none(), "got a 4th message: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let s = Server::start(&[]);
    let port = s.port;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let c = common::client(port).await;
                let subj = format!("conn.{i}");
                let mut sub = c.subscribe(subj.clone()).await.unwrap();
                c.flush().await.unwrap();
                c.publish(subj.clone(), Bytes::from(format!("m{i}")))
                    .await
                    .unwrap();
                c.flush().await.unwrap();
                let m = next(&mut sub).await;
                assert_eq!(m.subject.as_str(), subj);
                assert_eq!(m.payload, Bytes::from(format!("m{i}")));
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(
            timeout(Duration::from_secs(60), t)
                .await
                .expect("timeout")
                .unwrap(),
        );
    }
    assert_eq!(clients.len(), 200);
    // Cross-connection traffic while all 200 are connected. async-nats' flush() only writes
    // its buffer (no PING round trip), so nothing guarantees that the subscription is known
    // server-wide before the other connections publish: on nats-server that race is merely
    // rare. Probe until one round of probes from every publisher arrives whole, then count.
    let mut sub = clients[0].subscribe("all").await.unwrap();
    clients[0].flush().await.unwrap();
    for round in 0.. {
        assert!(
            round < 100,
            "the subscription never became visible to all publishers"
        );
        for (i, c) in clients.iter().enumerate().skip(1) {
            c.publish("all", format!("probe{round}.{i}").into())
                .await
                .unwrap();
            c.flush().await.unwrap();
        }
        let prefix = format!("probe{round}.");
        let mut seen = std::collections::HashSet::new();
        while let Ok(Some(m)) = timeout(Duration::from_millis(200), sub.next()).await {
            if m.payload.starts_with(prefix.as_bytes()) {
                seen.insert(m.payload);
            }
            if seen.len() == 199 {
                break;
            }
        }
        if seen.len() == 199 {
            break;
        }
    }
    for c in clients.iter().skip(1) {
        c.publish("all", "x".into()).await.unwrap();
        c.flush().await.unwrap();
    }
    let mut got = 0;
    while got < 199 {
        if next(&mut sub).await.payload == "x" {
            got += 1;
        }
    }
}
