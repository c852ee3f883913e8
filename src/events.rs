//! System account events and requests (nats-server's `events.go`), sans-IO.
//!
//! This module owns the subjects and JSON of what the server says in the system account:
//! the `client_connect`, `client_disconnect` and `account_connections` advisories, the
//! `STATSZ` message, and which `$SYS.REQ.SERVER...` request asks for what. It builds bytes
//! only: `server` publishes them on its shards (when someone listens), and the monitoring
//! figures come from `monitor`.

use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// The server's identity, as every event names it.
pub struct ServerInfo<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub id: &'a str,
    /// This event's number, counted over the server's life.
    pub seq: u64,
}

impl ServerInfo<'_> {
    fn json(&self, now: SystemTime) -> Value {
        json!({
            "name": self.name,
            "host": self.host,
            "id": self.id,
            "ver": crate::VERSION,
            "seq": self.seq,
            "jetstream": false,
            "time": crate::monitor::rfc3339(now),
        })
    }
}

/// A client, as the connect and disconnect advisories describe it.
pub struct ClientInfo<'a> {
    pub start: SystemTime,
    pub stop: Option<SystemTime>,
    pub host: String,
    pub id: u64,
    pub account: &'a str,
    pub user: Option<&'a str>,
    pub name: &'a str,
    pub lang: &'a str,
    pub version: &'a str,
    pub rtt: Option<Duration>,
}

impl ClientInfo<'_> {
    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("start".into(), json!(crate::monitor::rfc3339(self.start)));
        if let Some(stop) = self.stop {
            m.insert("stop".into(), json!(crate::monitor::rfc3339(stop)));
        }
        m.insert("host".into(), json!(self.host));
        m.insert("id".into(), json!(self.id));
        m.insert("acc".into(), json!(self.account));
        for (k, v) in [
            ("user", self.user.unwrap_or("")),
            ("name", self.name),
            ("lang", self.lang),
            ("ver", self.version),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(rtt) = self.rtt {
            m.insert("rtt".into(), json!(rtt.as_nanos() as u64));
        }
        m.insert("kind".into(), json!("Client"));
        m.insert("client_type".into(), json!("nats"));
        Value::Object(m)
    }
}

/// Message and byte counts, as `{msgs, bytes}`.
pub fn data_stats(msgs: u64, bytes: u64) -> Value {
    json!({ "msgs": msgs, "bytes": bytes })
}

/// A fresh advisory id.
fn event_id() -> String {
    crate::auth::nonce()
}

/// `$SYS.ACCOUNT.<acc>.CONNECT`: a client connected.
pub fn client_connect(s: &ServerInfo, c: &ClientInfo, now: SystemTime) -> (String, Value) {
    (
        format!("$SYS.ACCOUNT.{}.CONNECT", c.account),
        json!({
            "type": "io.nats.server.advisory.v1.client_connect",
            "id": event_id(),
            "timestamp": crate::monitor::rfc3339(now),
            "server": s.json(now),
            "client": c.json(),
        }),
    )
}

/// `$SYS.ACCOUNT.<acc>.DISCONNECT`: a client went away, with its traffic and why.
pub fn client_disconnect(
    s: &ServerInfo,
    c: &ClientInfo,
    sent: Value,
    received: Value,
    reason: &str,
    now: SystemTime,
) -> (String, Value) {
    (
        format!("$SYS.ACCOUNT.{}.DISCONNECT", c.account),
        json!({
            "type": "io.nats.server.advisory.v1.client_disconnect",
            "id": event_id(),
            "timestamp": crate::monitor::rfc3339(now),
            "server": s.json(now),
            "client": c.json(),
            "sent": sent,
            "received": received,
            "reason": reason,
        }),
    )
}

/// The account's connection count, on its current subject and the one nats-server used
/// before 2.2 (`$SYS.SERVER.ACCOUNT.<acc>.CONNS`), which it still sends.
pub fn account_connections(
    s: &ServerInfo,
    account: &str,
    conns: u64,
    total: u64,
    now: SystemTime,
) -> [(String, Value); 2] {
    let body = json!({
        "type": "io.nats.server.advisory.v1.account_connections",
        "id": event_id(),
        "timestamp": crate::monitor::rfc3339(now),
        "server": s.json(now),
        "acc": account,
        "conns": conns,
        "leafnodes": 0,
        "total_conns": total,
    });
    [
        (format!("$SYS.ACCOUNT.{account}.SERVER.CONNS"), body.clone()),
        (format!("$SYS.SERVER.ACCOUNT.{account}.CONNS"), body),
    ]
}

/// The answer to a request: `{"server": ..., "data": ...}` (or `statsz` for STATSZ).
pub fn response(s: &ServerInfo, key: &str, data: Value, now: SystemTime) -> Value {
    json!({ "server": s.json(now), key: data })
}

/// What a `$SYS.REQ.SERVER...` request asks this server (`server_id`) for: `STATSZ`,
/// `VARZ`, `CONNZ`, `SUBSZ`, `ROUTEZ`, `GATEWAYZ`, `LEAFZ`, `ACCOUNTZ`, `HEALTHZ`.
/// `None` if it is not one, or is addressed to another server.
pub fn server_request<'a>(subject: &'a str, server_id: &str) -> Option<&'a str> {
    let rest = subject.strip_prefix("$SYS.REQ.SERVER.")?;
    let kind = match rest.split_once('.') {
        None if rest == "PING" => "STATSZ",
        Some(("PING", kind)) => kind,
        Some((id, kind)) if id == server_id => kind,
        _ => return None,
    };
    const KINDS: &[&str] = &[
        "STATSZ", "VARZ", "CONNZ", "SUBSZ", "ROUTEZ", "GATEWAYZ", "LEAFZ", "ACCOUNTZ", "HEALTHZ",
    ];
    KINDS.contains(&kind).then_some(kind)
}

/// A request body's options (`{"subscriptions": true, "sort": "cid", ...}`) as the
/// monitoring endpoint's query string.
pub fn options_query(body: &[u8]) -> String {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &o {
        let key = match k.as_str() {
            "subscriptions" => "subs",
            "accounts" | "account" => "acc",
            k => k,
        };
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if k == "subscriptions_detail" && value == "true" {
            q.append_pair("subs", "detail");
        } else {
            q.append_pair(key, &value);
        }
    }
    q.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_what_they_ask_for() {
        assert_eq!(server_request("$SYS.REQ.SERVER.PING", "N1"), Some("STATSZ"));
        assert_eq!(
            server_request("$SYS.REQ.SERVER.PING.VARZ", "N1"),
            Some("VARZ")
        );
        assert_eq!(
            server_request("$SYS.REQ.SERVER.N1.CONNZ", "N1"),
            Some("CONNZ")
        );
        assert_eq!(server_request("$SYS.REQ.SERVER.N2.CONNZ", "N1"), None);
        assert_eq!(server_request("$SYS.REQ.SERVER.PING.JSZ", "N1"), None);
        assert_eq!(server_request("other", "N1"), None);
    }

    #[test]
    fn request_options_become_a_query() {
        assert_eq!(
            options_query(br#"{"subscriptions":true,"limit":5,"sort":"cid"}"#),
            "limit=5&sort=cid&subs=true"
        );
        assert_eq!(options_query(b""), "");
    }
}
