//! The route (cluster) protocol (nats-server's `route.go`), sans-IO.
//!
//! This module owns the route wire format: the route `INFO` and `CONNECT` JSON, the parser
//! for what a peer sends (`RS+`, `RS-`, `RMSG`, `HMSG`, their leafnode-origin forms `LS+`,
//! `LS-`, `LMSG`, `PING`, `PONG`, `INFO`, `CONNECT`, `-ERR`, `+OK`), and the encoder for what
//! Tern sends. Tern presents itself as a no-pool peer without compression (reference 2.5,
//! 2.6): one connection per remote server, the account named in every message. It does not
//! touch sockets or shards: `server` drives route connections with it.

use crate::parser::{Parts, PubMsg, Span};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The route protocol version Tern speaks (`RouteProtoV2`).
pub const ROUTE_PROTO: u8 = 2;
/// nats-server's default cluster port.
pub const DEFAULT_ROUTE_PORT: u16 = 6222;

/// `cluster { ... }` and the `--cluster*`/`--routes` flags.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterOptions {
    pub name: Option<String>,
    /// Where to listen for routes (`None`: the client host).
    pub host: Option<String>,
    /// 0 picks a free port.
    pub port: u16,
    /// The explicit routes: dialled, and re-dialled forever.
    pub routes: Vec<RouteUrl>,
    /// `host:port` to tell other servers instead of the listen address.
    pub advertise: Option<String>,
    pub no_advertise: bool,
    /// How often a route learnt by gossip is re-dialled (0: once).
    pub connect_retries: u32,
    /// `authorization { user, password, timeout }`: what route peers must present.
    pub user: Option<String>,
    pub password: Option<String>,
    pub auth_timeout: Option<std::time::Duration>,
    /// `permissions { import, export }`: which subjects this server takes from routes (the
    /// interest it sends them) and gives to routes (the interest it accepts from them).
    pub import: Option<crate::auth::RuleOptions>,
    pub export: Option<crate::auth::RuleOptions>,
    /// `tls {}`: every route is TLS from its first byte, both ways.
    pub tls: Option<crate::tls::TlsOptions>,
    /// How often routes are pinged, and how many PINGs may go unanswered before a route is
    /// stale (default: the server's `ping_interval` and `ping_max`).
    pub ping_interval: Option<std::time::Duration>,
    pub ping_max: Option<u32>,
}

/// The longest pause between PINGs on a route, whatever `ping_interval` says (nats-server
/// caps it the same way, so a dead peer is noticed within about a minute and a half).
pub const ROUTE_MAX_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

impl ClusterOptions {
    /// The PING period and unanswered-PING limit of routes, given the server's own.
    pub fn pings(
        &self,
        server_interval: std::time::Duration,
        server_max: u32,
    ) -> (std::time::Duration, u32) {
        let interval = self
            .ping_interval
            .filter(|d| !d.is_zero())
            .unwrap_or(server_interval)
            .min(ROUTE_MAX_PING_INTERVAL);
        let max = self
            .ping_max
            .filter(|&m| m > 0)
            .unwrap_or(server_max)
            .max(1);
        (interval, max)
    }

    /// The cluster permissions as a user's would be: import is publish, export is subscribe
    /// (nats-server maps them the same way).
    pub fn permissions(&self) -> Option<crate::auth::PermOptions> {
        (self.import.is_some() || self.export.is_some()).then(|| crate::auth::PermOptions {
            publish: self.import.clone(),
            subscribe: self.export.clone(),
            allow_responses: None,
        })
    }
}

/// Whether `ip` may be given to clients as a way to reach this server when it listens on every
/// address: global unicast only (no loopback, link-local, multicast or unspecified address),
/// as nats-server chooses.
pub fn advertisable(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast())
        }
        std::net::IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_multicast() || v6.is_unspecified() || link_local)
        }
    }
}

/// `host:port` for a client URL (IPv6 in brackets).
pub fn host_port(ip: &std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(*ip, port).to_string()
}

/// One direction of the cluster permissions in a route INFO (`import`, `export`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SubjectPermission {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl From<&crate::auth::RuleOptions> for SubjectPermission {
    fn from(r: &crate::auth::RuleOptions) -> Self {
        SubjectPermission {
            allow: r.allow.clone().unwrap_or_default(),
            deny: r.deny.clone(),
        }
    }
}

/// A route URL: `nats-route://[user:pass@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub pass: Option<String>,
}

impl RouteUrl {
    /// Parses `[scheme://][user[:pass]@]host[:port]`.
    pub fn parse(s: &str) -> Result<RouteUrl, String> {
        let rest = s.split_once("://").map_or(s, |(_, r)| r);
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (user, pass) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in route URL {s:?}"))?,
            ),
            _ => (hostport, DEFAULT_ROUTE_PORT),
        };
        if host.is_empty() {
            return Err(format!("no host in route URL {s:?}"));
        }
        Ok(RouteUrl {
            host: host.to_string(),
            port,
            user,
            pass,
        })
    }
}

/// A route `INFO`: what each side says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouteInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u8,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    pub max_payload: u32,
    pub cluster: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_verify: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    /// `nats-route://host:port/`: where other servers reach this one (gossip).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    /// Lame duck mode: the peer is going away.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ldm: bool,
    /// The sender's cluster permissions (informative: each side applies its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import: Option<SubjectPermission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<SubjectPermission>,
    /// 2.10 pooling: Tern never sends it (a no-pool peer); a peer's value is ignored.
    #[serde(skip_serializing)]
    pub route_pool_size: i64,
    /// 2.10 pinned-account routes, which a no-pool peer refuses.
    #[serde(skip_serializing)]
    pub route_account: String,
}

/// A route `CONNECT`. Never has `lang` (that marks a client on the route port).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouteConnect {
    pub echo: bool,
    pub verbose: bool,
    pub pedantic: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    pub tls_required: bool,
    pub headers: bool,
    /// The server's ID (not its name).
    pub name: String,
    pub cluster: String,
    /// Set by clients that dial the route port by mistake.
    #[serde(skip_serializing)]
    pub lang: String,
    /// Set by gateways that dial the route port by mistake.
    #[serde(skip_serializing)]
    pub gateway: String,
}

/// One operation from a route peer. A message borrows the read chunk it lies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp<'a> {
    Info(Bytes),
    Connect(Bytes),
    Ping,
    Pong,
    Ok,
    Err(String),
    /// `RS+ acc subject [queue weight]` (and `LS+`, whose origin cluster is dropped).
    Sub {
        account: Bytes,
        subject: Bytes,
        queue: Option<(Bytes, u32)>,
    },
    /// `RS- acc subject [queue]` (and `LS-`).
    Unsub {
        account: Bytes,
        subject: Bytes,
        queue: Option<Bytes>,
    },
    /// `RMSG`/`HMSG`/`LMSG`: a message for this server's subscribers, and the queue groups
    /// the sender picked this server to serve.
    Msg {
        account: &'a [u8],
        /// The queue groups the sender picked this server for.
        queues: Vec<Bytes>,
        msg: PubMsg<'a>,
    },
}

/// What a peer sent that Tern cannot take; the route is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// A control line longer than the limit.
    ControlLine,
    /// A message larger than the limit.
    Payload,
    /// A verb or arguments that do not parse.
    Protocol(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::ControlLine => f.write_str("Maximum Control Line Exceeded"),
            RouteError::Payload => f.write_str("Maximum Payload Violation"),
            RouteError::Protocol(l) => write!(f, "Unknown Protocol Operation: {l:?}"),
        }
    }
}

impl std::error::Error for RouteError {}

/// An incremental parser of a route's byte stream.
pub struct RouteParser {
    max_control_line: usize,
    max_payload: usize,
    /// How many bytes a message whose control line is at the front of the buffer needs in
    /// all (line, payload and CRLF); nothing is parsed again until they are there.
    need: usize,
    /// The current line's tokens (kept to spare an allocation per line).
    toks: Vec<Span>,
}

/// Splits the control line at the front of `buf` into its space- or tab-separated tokens
/// (in `out`) and returns where its LF is, in one pass; `None` when no LF is in `buf`. A
/// CR just before the LF ends the line too (anywhere else it is part of a token).
fn line_tokens(buf: &[u8], out: &mut Vec<Span>) -> Option<usize> {
    out.clear();
    let mut start = None;
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' || b == b'\t' || b == b'\n' {
            if let Some(s) = start.take() {
                out.push(s..i);
            }
            if b == b'\n' {
                if let Some(last) = out.last_mut().filter(|t| t.end == i && buf[i - 1] == b'\r') {
                    last.end -= 1;
                    if last.start == last.end {
                        out.pop();
                    }
                }
                return Some(i);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    None
}

fn number(b: &[u8]) -> Option<usize> {
    if b.is_empty() || b.len() > 12 {
        return None;
    }
    b.iter().try_fold(0, |n: usize, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

/// The parts of an `RMSG`/`HMSG`/`LMSG` control line, as places in it.
struct MsgLine {
    account: Span,
    subject: Span,
    reply: Option<Span>,
    queues: std::ops::Range<usize>,
    hdr_len: usize,
    total: usize,
}

impl RouteParser {
    pub fn new(max_control_line: usize, max_payload: usize) -> RouteParser {
        RouteParser {
            max_control_line,
            max_payload,
            need: 0,
            toks: Vec::new(),
        }
    }

    /// How many bytes, counted from the position of the next call, must be there before it
    /// can make progress: all of a message whose control line has arrived, or 1. A reader
    /// holding fewer reads on first, so a large message is not parsed again on every read.
    pub fn wants(&self) -> usize {
        self.need.max(1)
    }

    /// Takes the next whole operation from `chunk[*pos..]` and moves `*pos` past it; `None`
    /// means more bytes are needed, and what is left from `*pos` on must come first in the
    /// next chunk. A message borrows the chunk, its parts in place: no copy, no reference
    /// count per message.
    pub fn next<'a>(
        &mut self,
        chunk: &'a Bytes,
        pos: &mut usize,
    ) -> Result<Option<RouteOp<'a>>, RouteError> {
        loop {
            let base = *pos;
            let buf = &chunk[base..];
            if buf.len() < self.need {
                return Ok(None);
            }
            self.need = 0;
            let line_max = buf.len().min(self.max_control_line + 1);
            let Some(nl) = line_tokens(&buf[..line_max], &mut self.toks) else {
                if buf.len() > self.max_control_line {
                    return Err(RouteError::ControlLine);
                }
                return Ok(None);
            };
            let end = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            let Some(verb) = self.toks.first().map(|t| &buf[t.clone()]) else {
                *pos += nl + 1;
                continue;
            };
            let msg = match verb {
                [a, b'M' | b'm', b'S' | b's', b'G' | b'g'] => match a.to_ascii_uppercase() {
                    b'R' => Some((false, false)),
                    b'H' => Some((false, true)),
                    b'L' => Some((true, true)),
                    _ => None,
                },
                _ => None,
            };
            if let Some((lmsg, headers)) = msg {
                let m = self.msg_line(&buf[..end], lmsg, headers)?;
                let needed = nl + 1 + m.total + 2;
                if buf.len() < needed {
                    self.need = needed;
                    return Ok(None);
                }
                *pos = base + needed;
                let at = |s: &Span| s.start + base..s.end + base;
                let queues = match m.queues.is_empty() {
                    true => Vec::new(),
                    false => self.toks[m.queues]
                        .iter()
                        .map(|q| chunk.slice(at(q)))
                        .collect(),
                };
                let body = base + nl + 1..base + nl + 1 + m.total;
                let parts = Parts::new(at(&m.subject), m.reply.as_ref().map(at), m.hdr_len, body);
                return Ok(Some(RouteOp::Msg {
                    account: &chunk[at(&m.account)],
                    queues,
                    msg: PubMsg::new(chunk, parts),
                }));
            }
            *pos = base + nl + 1;
            return self.other(&chunk.slice(base..base + end)).map(Some);
        }
    }

    /// Reads a message's control line (tokens already in `self.toks`).
    fn msg_line(&self, line: &[u8], lmsg: bool, headers: bool) -> Result<MsgLine, RouteError> {
        let bad = || RouteError::Protocol(String::from_utf8_lossy(line).into_owned());
        let tok = |i: usize| &line[self.toks[i].clone()];
        // LMSG carries the origin cluster first.
        let first = if lmsg { 2 } else { 1 };
        let n = self.toks.len();
        let sizes = if headers { 2 } else { 1 };
        if n < first + 2 + sizes {
            return Err(bad());
        }
        let (hdr_len, total) = if headers {
            (
                number(tok(n - 2)).ok_or_else(bad)?,
                number(tok(n - 1)).ok_or_else(bad)?,
            )
        } else {
            (0, number(tok(n - 1)).ok_or_else(bad)?)
        };
        if hdr_len > total {
            return Err(bad());
        }
        if total > self.max_payload {
            return Err(RouteError::Payload);
        }
        let rest = first + 2..n - sizes;
        let (reply, queues) = match rest.len() {
            0 => (None, rest.end..rest.end),
            1 => (Some(self.toks[rest.start].clone()), rest.end..rest.end),
            _ if tok(rest.start) == b"+" => (
                Some(self.toks[rest.start + 1].clone()),
                rest.start + 2..rest.end,
            ),
            _ if tok(rest.start) == b"|" => (None, rest.start + 1..rest.end),
            _ => return Err(bad()),
        };
        Ok(MsgLine {
            account: self.toks[first].clone(),
            subject: self.toks[first + 1].clone(),
            reply,
            queues,
            hdr_len,
            total,
        })
    }

    /// Any operation but a message (tokens already in `self.toks`).
    fn other(&self, line: &Bytes) -> Result<RouteOp<'static>, RouteError> {
        let bad = || RouteError::Protocol(String::from_utf8_lossy(line).into_owned());
        let toks: Vec<Bytes> = self.toks.iter().map(|t| line.slice(t.clone())).collect();
        let verb = toks[0].to_ascii_uppercase();
        let rest_after_verb = || {
            let s = line.slice(self.toks[0].end..);
            let skip = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
            s.slice(skip..)
        };
        Ok(match verb.as_slice() {
            b"PING" => RouteOp::Ping,
            b"PONG" => RouteOp::Pong,
            b"+OK" => RouteOp::Ok,
            b"-ERR" => {
                let text = rest_after_verb();
                let text = String::from_utf8_lossy(&text);
                RouteOp::Err(text.trim_matches('\'').to_string())
            }
            b"INFO" => RouteOp::Info(rest_after_verb()),
            b"CONNECT" => RouteOp::Connect(rest_after_verb()),
            b"RS+" | b"LS+" => {
                // LS+ carries the origin cluster first.
                let args = if verb.as_slice() == b"LS+" {
                    toks.get(2..).unwrap_or_default()
                } else {
                    &toks[1..]
                };
                let (account, subject, queue) = match args {
                    [a, s] => (a, s, None),
                    [a, s, q] => (a, s, Some((q.clone(), 1))),
                    [a, s, q, w] => (a, s, Some((q.clone(), number(w).ok_or_else(bad)? as u32))),
                    _ => return Err(bad()),
                };
                RouteOp::Sub {
                    account: account.clone(),
                    subject: subject.clone(),
                    queue,
                }
            }
            b"RS-" | b"LS-" => {
                let args = &toks[1..];
                // LS- may carry the origin cluster (2.10 peers with lnocu).
                let args = if verb.as_slice() == b"LS-" && args.len() >= 3 {
                    &args[1..]
                } else {
                    args
                };
                let (account, subject, queue) = match args {
                    [a, s] => (a, s, None),
                    [a, s, q, ..] => (a, s, Some(q.clone())),
                    _ => return Err(bad()),
                };
                RouteOp::Unsub {
                    account: account.clone(),
                    subject: subject.clone(),
                    queue,
                }
            }
            _ => return Err(bad()),
        })
    }
}

/// Appends `RS+ acc subject[ queue weight]`.
pub fn write_sub(out: &mut BytesMut, account: &[u8], subject: &[u8], queue: Option<(&[u8], u32)>) {
    out.extend_from_slice(b"RS+ ");
    out.extend_from_slice(account);
    out.extend_from_slice(b" ");
    out.extend_from_slice(subject);
    if let Some((q, w)) = queue {
        out.extend_from_slice(b" ");
        out.extend_from_slice(q);
        out.extend_from_slice(b" ");
        out.extend_from_slice(itoa::Buffer::new().format(w).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `RS- acc subject[ queue]`.
pub fn write_unsub(out: &mut BytesMut, account: &[u8], subject: &[u8], queue: Option<&[u8]>) {
    out.extend_from_slice(b"RS- ");
    out.extend_from_slice(account);
    out.extend_from_slice(b" ");
    out.extend_from_slice(subject);
    if let Some(q) = queue {
        out.extend_from_slice(b" ");
        out.extend_from_slice(q);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an `RMSG` (or `HMSG` when the message has headers and the peer takes them; a
/// peer without header support gets the payload alone).
#[allow(clippy::too_many_arguments)]
pub fn write_msg(
    out: &mut BytesMut,
    account: &[u8],
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: &[Bytes],
    hdr_len: usize,
    msg: &[u8],
    peer_headers: bool,
) {
    let hdr_len = hdr_len.min(msg.len());
    let (with_headers, body) = if hdr_len > 0 && peer_headers {
        (true, msg)
    } else {
        (false, &msg[hdr_len..])
    };
    out.extend_from_slice(if with_headers { b"HMSG " } else { b"RMSG " });
    out.extend_from_slice(account);
    out.extend_from_slice(b" ");
    out.extend_from_slice(subject);
    match (reply, queues.is_empty()) {
        (Some(r), true) => {
            out.extend_from_slice(b" ");
            out.extend_from_slice(r);
        }
        (None, true) => {}
        (r, false) => {
            match r {
                Some(r) => {
                    out.extend_from_slice(b" + ");
                    out.extend_from_slice(r);
                }
                None => out.extend_from_slice(b" |"),
            }
            for q in queues {
                out.extend_from_slice(b" ");
                out.extend_from_slice(q);
            }
        }
    }
    let mut n = itoa::Buffer::new();
    if with_headers {
        out.extend_from_slice(b" ");
        out.extend_from_slice(n.format(hdr_len).as_bytes());
    }
    out.extend_from_slice(b" ");
    out.extend_from_slice(n.format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {

    #[test]
    fn advertised_addresses() {
        let ok = |s: &str| advertisable(&s.parse().unwrap());
        assert!(ok("10.1.2.3") && ok("192.168.0.7") && ok("2001:db8::1") && ok("fd00::5"));
        for no in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.1.1",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
        ] {
            assert!(!ok(no), "{no}");
        }
        assert_eq!(
            host_port(&"10.0.0.1".parse().unwrap(), 4222),
            "10.0.0.1:4222"
        );
        assert_eq!(
            host_port(&"2001:db8::1".parse().unwrap(), 4222),
            "[2001:db8::1]:4222"
        );
    }

    use super::*;

    /// Feeds `input` to `p` as a route's read loop does, `size` bytes per read, the rest of a
    /// partial operation carried into the next chunk. Returns the operations and how many
    /// bytes were left unparsed, or the error that stopped it. The chunks are leaked so that
    /// the operations can outlive them here.
    fn feed(
        p: &mut RouteParser,
        input: &[u8],
        size: usize,
    ) -> (Vec<RouteOp<'static>>, Result<usize, RouteError>) {
        let (mut buf, mut ops) = (BytesMut::new(), Vec::new());
        for piece in input.chunks(size) {
            buf.extend_from_slice(piece);
            if buf.len() < p.wants() {
                continue;
            }
            let chunk: &'static Bytes = Box::leak(Box::new(buf.split().freeze()));
            let mut pos = 0;
            loop {
                match p.next(chunk, &mut pos) {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => break,
                    Err(e) => return (ops, Err(e)),
                }
            }
            buf.extend_from_slice(&chunk[pos..]);
        }
        (ops, Ok(buf.len()))
    }

    /// Everything in `input`, in chunks of `size`.
    fn parse_chunks(input: &[u8], size: usize) -> Vec<RouteOp<'static>> {
        let (ops, left) = feed(&mut RouteParser::new(4096, 1 << 20), input, size);
        assert_eq!(left, Ok(0), "chunks of {size}");
        ops
    }

    /// Byte by byte (the parser must cope with any split), and checked against other
    /// chunk sizes.
    fn parse_all(input: &[u8]) -> Vec<RouteOp<'static>> {
        let ops = parse_chunks(input, 1);
        for size in [2, 7, 64, input.len().max(1)] {
            assert_eq!(parse_chunks(input, size), ops, "chunks of {size}");
        }
        ops
    }

    #[test]
    fn parses_interest_and_messages() {
        let ops = parse_all(
            b"RS+ $G foo\r\nRS+ $G bar q 3\r\nRS- $G bar q\r\nLS+ leafc $G x.y\r\nLS- leafc $G x.y\r\n\
              RMSG $G foo 5\r\nhello\r\nRMSG $G foo r.1 2\r\nhi\r\nRMSG $G bar | q1 q2 1\r\nx\r\n\
              RMSG $G bar + r.2 q1 1\r\ny\r\nHMSG $G h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n\
              LMSG leafc $G l.1 | q 0 2\r\nok\r\nPING\r\nPONG\r\n-ERR 'oops'\r\n",
        );
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        assert_eq!(
            ops[0],
            RouteOp::Sub {
                account: b("$G"),
                subject: b("foo"),
                queue: None
            }
        );
        assert_eq!(
            ops[1],
            RouteOp::Sub {
                account: b("$G"),
                subject: b("bar"),
                queue: Some((b("q"), 3))
            }
        );
        assert_eq!(
            ops[2],
            RouteOp::Unsub {
                account: b("$G"),
                subject: b("bar"),
                queue: Some(b("q"))
            }
        );
        assert!(matches!(&ops[3], RouteOp::Sub { subject, .. } if subject == "x.y"));
        assert!(matches!(&ops[4], RouteOp::Unsub { subject, queue: None, .. } if subject == "x.y"));
        let msg = |i: usize| match &ops[i] {
            RouteOp::Msg { queues, msg, .. } => (
                b(std::str::from_utf8(msg.subject()).unwrap()),
                msg.reply().map(|r| b(std::str::from_utf8(r).unwrap())),
                queues.clone(),
                msg.hdr_len(),
                Bytes::copy_from_slice(msg.msg()),
            ),
            o => panic!("{o:?}"),
        };
        assert_eq!(msg(5), (b("foo"), None, vec![], 0, b("hello")));
        assert_eq!(msg(6), (b("foo"), Some(b("r.1")), vec![], 0, b("hi")));
        assert_eq!(msg(7), (b("bar"), None, vec![b("q1"), b("q2")], 0, b("x")));
        assert_eq!(msg(8), (b("bar"), Some(b("r.2")), vec![b("q1")], 0, b("y")));
        assert_eq!(msg(9).3, 12);
        assert_eq!(msg(10), (b("l.1"), None, vec![b("q")], 0, b("ok")));
        assert_eq!(
            ops[11..],
            [RouteOp::Ping, RouteOp::Pong, RouteOp::Err("oops".into())]
        );
    }

    /// Random sequences of protocol-looking pieces: the parser answers each with an
    /// operation, an error or a wait, and never panics.
    #[test]
    fn survives_random_input() {
        let pieces: [&[u8]; 16] = [
            b"RMSG", b"HMSG", b"LMSG", b"RS+", b"LS-", b" ", b"\r\n", b"\n", b"$G", b"+", b"|",
            b"q", b"5", b"12", b"0", b"hello",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..24 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.extend_from_slice(pieces[(x % pieces.len() as u64) as usize]);
            }
            // Whole, and in reads of 1 to 8 bytes with the rest carried over as the route's
            // read loop does: the same operations, and the same error if any.
            let whole = feed(&mut RouteParser::new(64, 32), &input, input.len());
            let small = feed(&mut RouteParser::new(64, 32), &input, (x % 8) as usize + 1);
            let text = String::from_utf8_lossy(&input);
            assert_eq!(small.0, whole.0, "{text:?}");
            if small.1.is_err() {
                assert_eq!(small.1, whole.1, "{text:?}");
            }
        }
    }

    #[test]
    fn encodes_what_it_parses() {
        let mut out = BytesMut::new();
        write_sub(&mut out, b"$G", b"a.*", None);
        write_sub(&mut out, b"A", b"b", Some((b"q", 2)));
        write_unsub(&mut out, b"A", b"b", Some(b"q"));
        let q = [Bytes::from_static(b"q1")];
        write_msg(&mut out, b"$G", b"s", Some(b"r"), &q, 0, b"data", true);
        // With headers to a peer that takes them, and without to one that does not.
        for peer_headers in [true, false] {
            let hmsg = b"NATS/1.0\r\n\r\nhi";
            write_msg(&mut out, b"$G", b"s", None, &[], 12, hmsg, peer_headers);
        }
        assert_eq!(
            &out[..],
            &b"RS+ $G a.*\r\nRS+ A b q 2\r\nRS- A b q\r\nRMSG $G s + r q1 4\r\ndata\r\n\
               HMSG $G s 12 14\r\nNATS/1.0\r\n\r\nhi\r\nRMSG $G s 2\r\nhi\r\n"[..]
        );
        assert_eq!(parse_all(&out).len(), 6);
    }

    #[test]
    fn route_urls() {
        let u = RouteUrl::parse("nats-route://ruser:T0p@127.0.0.1:6223").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.user.as_deref(),
                u.pass.as_deref()
            ),
            ("127.0.0.1", 6223, Some("ruser"), Some("T0p"))
        );
        assert_eq!(
            RouteUrl::parse("nats://a.b").unwrap().port,
            DEFAULT_ROUTE_PORT
        );
        assert_eq!(RouteUrl::parse("[::1]:7000").unwrap().host, "::1");
        assert!(RouteUrl::parse("nats://:1").is_err());
    }

    #[test]
    fn refuses_garbage_and_limits() {
        let mut p = RouteParser::new(64, 10);
        let mut next = |input: &[u8]| p.next(&Bytes::copy_from_slice(input), &mut 0).map(|_| ());
        assert!(matches!(next(b"BOGUS x\r\n"), Err(RouteError::Protocol(_))));
        assert_eq!(next(b"RMSG $G foo 11\r\n"), Err(RouteError::Payload));
        assert_eq!(next(&[b'x'; 100]), Err(RouteError::ControlLine));
        assert!(next(b"RMSG $G\r\n").is_err());
        assert!(next(b"RMSG $G foo 1x\r\n").is_err());
        assert_eq!(number(b"0042"), Some(42));
        assert_eq!(number(b"999999999999"), Some(999_999_999_999));
        assert_eq!(number(b"1234567890123"), None);
        assert_eq!(number(b""), None);
        assert_eq!(number(b"-1"), None);
    }
}
