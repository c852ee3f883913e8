//! The monitoring endpoints (nats-server's `monitor.go`): `/varz`, `/connz`, `/subsz`,
//! `/routez`, `/gatewayz`, `/leafz`, `/accountz`, `/healthz` and the `/` index, with
//! nats-server's field names and types so dashboards and the Prometheus exporter read them.
//!
//! HTTP is `tiny_http` on one plain thread, outside the shards. The figures come from the
//! shards themselves: each request asks every shard, through its [`Inbox`], for a
//! [`ShardReport`], and aggregates the answers. Nothing on the message path takes a lock or
//! touches a shared cache line for this; a shard answers between two batches of work.
//!
//! The JSON builders are plain functions of the reports, so they are tested without sockets.

use crate::opts::Options;
use crate::server::{Admin, ConnInfo, Counts, Global, ShardReport};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tern_shards::Inbox;

/// How long a request waits for a shard's report before answering without it.
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);
/// `/connz` page size when `limit` is not given (nats-server's `DefaultConnListSize`).
const DEFAULT_CONN_LIMIT: usize = 1024;
/// `/subsz` page size when `limit` is not given (nats-server's `DefaultSubListSize`).
const DEFAULT_SUB_LIMIT: usize = 1024;

/// What the monitoring thread shares with the rest of the server.
pub struct Monitor {
    g: Arc<Global>,
    inbox: Arc<Inbox<Admin>>,
    /// The options in force (replaced by a reload), for `/varz`.
    opts: Mutex<Arc<Options>>,
    config_load_time: Mutex<SystemTime>,
    http_addr: Mutex<Option<SocketAddr>>,
    req_stats: Mutex<BTreeMap<String, u64>>,
    /// The last `/varz` CPU sample: (when, process CPU seconds).
    cpu_sample: Mutex<(Instant, f64)>,
}

/// `/varz`, field for field as nats-server writes it (durations in nanoseconds, times as
/// RFC 3339 text).
#[derive(serde::Serialize)]
struct Varz<'a> {
    server_id: &'a str,
    server_name: &'a str,
    version: &'a str,
    proto: u8,
    git_commit: &'a str,
    go: &'a str,
    host: &'a str,
    port: u16,
    max_connections: u32,
    ping_interval: u64,
    ping_max: u32,
    http_host: &'a str,
    http_port: u16,
    http_base_path: &'a str,
    https_port: u16,
    auth_timeout: f64,
    max_control_line: u32,
    max_payload: u32,
    max_pending: u64,
    cluster: &'a Map<String, Value>,
    gateway: &'a Map<String, Value>,
    leaf: &'a Map<String, Value>,
    mqtt: &'a Map<String, Value>,
    websocket: &'a Map<String, Value>,
    jetstream: &'a Map<String, Value>,
    tls_timeout: f64,
    write_deadline: u64,
    start: String,
    now: String,
    uptime: String,
    mem: u64,
    cores: usize,
    gomaxprocs: usize,
    cpu: f64,
    connections: usize,
    total_connections: u64,
    routes: u32,
    remotes: u32,
    leafnodes: u32,
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    out_bytes: u64,
    slow_consumers: u64,
    subscriptions: u64,
    http_req_stats: BTreeMap<String, u64>,
    config_load_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_account: Option<&'a str>,
}

/// An answer: HTTP status and JSON (or HTML) body.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub html: bool,
}

impl Reply {
    fn json(v: &Value) -> Reply {
        Reply {
            status: 200,
            body: serde_json::to_string_pretty(v).unwrap_or_default(),
            html: false,
        }
    }
    fn error(status: u16, text: &str) -> Reply {
        Reply {
            status,
            body: text.to_string(),
            html: false,
        }
    }
}

impl Monitor {
    pub fn new(g: Arc<Global>, inbox: Arc<Inbox<Admin>>) -> Monitor {
        let opts = Arc::new(g.opts.clone());
        Monitor {
            g,
            inbox,
            opts: Mutex::new(opts),
            config_load_time: Mutex::new(SystemTime::now()),
            http_addr: Mutex::new(None),
            req_stats: Mutex::new(BTreeMap::new()),
            cpu_sample: Mutex::new((Instant::now(), process_cpu_seconds())),
        }
    }

    /// Records a reload: `/varz` shows the new options and load time.
    pub fn reloaded(&self, o: Arc<Options>) {
        *lock(&self.opts) = o;
        *lock(&self.config_load_time) = SystemTime::now();
    }

    /// Asks every shard for its report; a shard that does not answer in time is left out.
    pub fn gather(&self, conns: bool) -> Vec<ShardReport> {
        let n = self.inbox.shards();
        let (tx, rx) = crossbeam_channel::bounded(n);
        let asked = (0..n)
            .filter(|&i| {
                self.inbox.send(
                    i,
                    Admin::Report {
                        conns,
                        reply: tx.clone(),
                    },
                )
            })
            .count();
        drop(tx);
        let deadline = Instant::now() + SHARD_TIMEOUT;
        let mut out = Vec::with_capacity(asked);
        while out.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        out.sort_by_key(|r| r.shard);
        out
    }

    /// Serves one request for `path` (already stripped of `http_base_path`) and `query`.
    pub fn handle(&self, path: &str, query: &str) -> Reply {
        let path = if path.is_empty() { "/" } else { path };
        let q: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        *lock(&self.req_stats).entry(path.to_string()).or_insert(0) += 1;
        self.endpoint(path, &q)
    }

    /// Answers a system account request (`$SYS.REQ.SERVER.PING.VARZ` and the like): `kind`
    /// names the endpoint, `query` holds the request's options.
    pub fn sys_request(&self, kind: &str, query: &str) -> Value {
        if kind == "STATSZ" {
            return self.statsz();
        }
        let q: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let reply = self.endpoint(&format!("/{}", kind.to_ascii_lowercase()), &q);
        if reply.status == 200 {
            serde_json::from_str(&reply.body).unwrap_or(Value::Null)
        } else {
            json!({ "error": { "code": reply.status, "description": reply.body } })
        }
    }

    /// The `statsz` part of a STATSZ message.
    fn statsz(&self) -> Value {
        let reports = self.gather(false);
        let mut counts = Counts::default();
        let (mut slow, mut subs, mut conns) = (0u64, 0u64, 0usize);
        for r in &reports {
            counts = counts.plus(r.counts);
            slow += r.slow_consumers;
            subs += r.sublist.num_subscriptions;
            conns += r.connections;
        }
        json!({
            "start": rfc3339(self.g.started),
            "mem": rss_bytes(),
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "cpu": self.cpu_percent(),
            "connections": conns,
            "total_connections": self.g.total_connections(),
            "active_accounts": self.g.active_accounts(),
            "subscriptions": subs,
            "sent": { "msgs": counts.out_msgs, "bytes": counts.out_bytes },
            "received": { "msgs": counts.in_msgs, "bytes": counts.in_bytes },
            "slow_consumers": slow,
            "active_servers": 1,
        })
    }

    /// One endpoint's answer.
    fn endpoint(&self, path: &str, q: &BTreeMap<String, String>) -> Reply {
        let now = SystemTime::now();
        match path {
            "/" => Reply {
                status: 200,
                body: index_html(&lock(&self.opts).http_base_path),
                html: true,
            },
            "/varz" => Reply::json(&self.varz(now)),
            "/connz" => match ConnzQuery::parse(q) {
                Ok(cq) => Reply::json(&connz(&self.g.server_id, now, &self.gather(true), &cq)),
                Err(e) => Reply::error(400, &e),
            },
            "/subsz" | "/subscriptionsz" => match SubszQuery::parse(q) {
                Ok(sq) => Reply::json(&subsz(&self.g.server_id, now, &self.gather(sq.subs), &sq)),
                Err(e) => Reply::error(400, &e),
            },
            "/routez" => Reply::json(&self.routez(now)),
            "/gatewayz" => Reply::json(&json!({
                "server_id": self.g.server_id,
                "now": rfc3339(now),
                "outbound_gateways": {},
                "inbound_gateways": {},
            })),
            "/leafz" => Reply::json(&json!({
                "server_id": self.g.server_id,
                "now": rfc3339(now),
                "leafnodes": 0,
                "leafs": [],
            })),
            "/accountz" => self.accountz(now, q),
            "/healthz" => Reply::json(&json!({ "status": "ok" })),
            _ => Reply::error(404, "404 page not found"),
        }
    }

    fn varz(&self, now: SystemTime) -> Value {
        let o = lock(&self.opts).clone();
        let reports = self.gather(false);
        let mut counts = Counts::default();
        let (mut slow, mut subs) = (0u64, 0u64);
        for r in &reports {
            counts = counts.plus(r.counts);
            slow += r.slow_consumers;
            subs += r.sublist.num_subscriptions;
        }
        let connections: usize = reports.iter().map(|r| r.connections).sum();
        let http = *lock(&self.http_addr);
        let cpu = self.cpu_percent();
        let empty = Map::new();
        let cluster_report = reports.iter().find_map(|r| r.cluster.clone());
        let cluster = match (&o.cluster, &cluster_report) {
            (Some(c), Some(r)) => {
                let mut m = Map::new();
                m.insert("name".into(), json!(r.name));
                let addr = c.host.clone().unwrap_or_else(|| o.host.clone());
                m.insert("addr".into(), json!(addr));
                m.insert("cluster_port".into(), json!(r.port));
                let auth_timeout = c.auth_timeout.map_or(2.0, |d| d.as_secs_f64());
                m.insert("auth_timeout".into(), json!(auth_timeout));
                let urls: Vec<String> = c
                    .routes
                    .iter()
                    .map(|u| format!("{}:{}", u.host, u.port))
                    .collect();
                if !urls.is_empty() {
                    m.insert("urls".into(), json!(urls));
                }
                m.insert("tls_timeout".into(), json!(2.0));
                m
            }
            _ => Map::new(),
        };
        let routes = cluster_report.as_ref().map_or(0, |r| r.routes.len() as u32);
        let v = Varz {
            server_id: &self.g.server_id,
            server_name: &self.g.server_name,
            version: crate::VERSION,
            proto: 1,
            git_commit: "",
            go: concat!("tern ", env!("CARGO_PKG_VERSION")),
            host: &o.host,
            port: self.g.port,
            max_connections: o.max_connections,
            ping_interval: o.ping_interval.as_nanos() as u64,
            ping_max: o.ping_max,
            http_host: o.http_host.as_deref().unwrap_or(&o.host),
            http_port: http.map_or(0, |a| a.port()),
            http_base_path: &o.http_base_path,
            https_port: 0,
            auth_timeout: 2.0,
            max_control_line: o.max_control_line,
            max_payload: o.max_payload,
            max_pending: o.max_pending,
            cluster: &cluster,
            gateway: &empty,
            leaf: &empty,
            mqtt: &empty,
            websocket: &empty,
            jetstream: &empty,
            tls_timeout: 2.0,
            write_deadline: o.write_deadline.as_nanos() as u64,
            start: rfc3339(self.g.started),
            now: rfc3339(now),
            uptime: uptime(now.duration_since(self.g.started).unwrap_or_default()),
            mem: rss_bytes(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            gomaxprocs: self.inbox.shards(),
            cpu,
            connections,
            total_connections: self.g.total_connections(),
            routes,
            remotes: routes,
            leafnodes: 0,
            in_msgs: counts.in_msgs,
            out_msgs: counts.out_msgs,
            in_bytes: counts.in_bytes,
            out_bytes: counts.out_bytes,
            slow_consumers: slow,
            subscriptions: subs,
            http_req_stats: lock(&self.req_stats).clone(),
            config_load_time: rfc3339(*lock(&self.config_load_time)),
            system_account: self.system_account(),
        };
        serde_json::to_value(v).unwrap_or(Value::Null)
    }

    /// `/routez`: the routes of the shard that owns them.
    fn routez(&self, now: SystemTime) -> Value {
        let cluster = self.gather(false).into_iter().find_map(|r| r.cluster);
        let routes: Vec<Value> = cluster
            .iter()
            .flat_map(|c| c.routes.iter())
            .map(|r| {
                json!({
                    "rid": r.rid,
                    "remote_id": r.remote_id,
                    "remote_name": r.remote_name,
                    "did_solicit": r.did_solicit,
                    "is_configured": r.did_solicit,
                    "ip": r.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                    "port": r.addr.map_or(0, |a| a.port()),
                    "start": rfc3339(r.start),
                    "last_activity": rfc3339(now),
                    "rtt": go_duration(r.rtt.unwrap_or_default()),
                    "uptime": uptime(now.duration_since(r.start).unwrap_or_default()),
                    "idle": "0s",
                    "pending_size": r.pending,
                    "in_msgs": r.counts.in_msgs,
                    "out_msgs": r.counts.out_msgs,
                    "in_bytes": r.counts.in_bytes,
                    "out_bytes": r.counts.out_bytes,
                    "subscriptions": r.subscriptions,
                })
            })
            .collect();
        json!({
            "server_id": self.g.server_id,
            "server_name": self.g.server_name,
            "now": rfc3339(now),
            "num_routes": routes.len(),
            "routes": routes,
        })
    }

    /// The system account's name, unless there is none.
    fn system_account(&self) -> Option<&str> {
        let a = &self.g.accounts;
        a.system.map(|id| a.get(id).name.as_str())
    }

    /// `/accountz`: the account names, or with `acc=NAME` that account's details.
    fn accountz(&self, now: SystemTime, q: &BTreeMap<String, String>) -> Reply {
        let accounts = &self.g.accounts;
        let mut v = json!({
            "server_id": self.g.server_id,
            "now": rfc3339(now),
        });
        if let Some(sys) = self.system_account() {
            v["system_account"] = json!(sys);
        }
        let Some(name) = q.get("acc").filter(|n| !n.is_empty()) else {
            let names: Vec<&str> = accounts.list.iter().map(|a| a.name.as_str()).collect();
            v["accounts"] = json!(names);
            return Reply::json(&v);
        };
        let Some(id) = accounts.id(name) else {
            return Reply::error(400, &format!("Account {name} does not exist"));
        };
        let reports = self.gather(true);
        let a = accounts.get(id);
        let open = reports.iter().flat_map(|r| r.open.iter());
        let clients = open.clone().filter(|c| c.account == a.name).count();
        let stats = reports
            .iter()
            .filter_map(|r| r.accounts.get(id as usize))
            .fold(crate::sublist::SublistStats::default(), |t, s| {
                t.plus(s.clone())
            });
        let mut d = json!({
            "account_name": a.name,
            "update_time": rfc3339(self.g.started),
            "expired": false,
            "complete": true,
            "jetstream_enabled": false,
            "leafnode_connections": 0,
            "client_connections": clients,
            "subscriptions": stats.num_subscriptions,
            "sublist_stats": sublist_stats_json(&stats),
        });
        let exports: Vec<Value> = a.exports.iter().map(export_json).collect();
        if !exports.is_empty() {
            d["exports"] = json!(exports);
        }
        let imports: Vec<Value> = a.imports.iter().map(import_json).collect();
        if !imports.is_empty() {
            d["imports"] = json!(imports);
        }
        v["account_detail"] = d;
        Reply::json(&v)
    }

    /// Process CPU use since the previous call, in percent of one core.
    fn cpu_percent(&self) -> f64 {
        let mut s = lock(&self.cpu_sample);
        let (now, cpu) = (Instant::now(), process_cpu_seconds());
        let wall = now.duration_since(s.0).as_secs_f64();
        let pct = if wall > 0.0 {
            (cpu - s.1) / wall * 100.0
        } else {
            0.0
        };
        *s = (now, cpu);
        (pct * 100.0).round() / 100.0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the HTTP listener on `addr` and serves it on its own thread. Returns the bound
/// address (the port may have been 0, or -1 for random).
pub fn start(monitor: Arc<Monitor>, addr: SocketAddr) -> io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("monitoring listener has no IP address"))?;
    *lock(&monitor.http_addr) = Some(bound);
    let base = lock(&monitor.opts)
        .http_base_path
        .trim_end_matches('/')
        .to_string();
    std::thread::Builder::new()
        .name("tern-monitor".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let url = req.url().to_string();
                let (path, query) = url.split_once('?').unwrap_or((&url, ""));
                let reply = match path.strip_prefix(base.as_str()) {
                    Some(p) if p.is_empty() || p.starts_with('/') => monitor.handle(p, query),
                    _ => Reply::error(404, "404 page not found"),
                };
                let ctype = if reply.html {
                    "text/html; charset=utf-8"
                } else if reply.status == 200 {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                let header = tiny_http::Header::from_bytes("Content-Type", ctype)
                    .expect("static header is valid");
                let resp = tiny_http::Response::from_string(reply.body)
                    .with_status_code(reply.status)
                    .with_header(header);
                let _ = req.respond(resp);
            }
        })?;
    Ok(bound)
}

fn index_html(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let links: String = [
        "varz", "connz", "routez", "gatewayz", "leafz", "subsz", "accountz", "healthz",
    ]
    .iter()
    .map(|e| format!("<a href=\"{base}/{e}\">{e}</a><br/>\n"))
    .collect();
    format!("<html><head><title>tern monitoring</title></head><body>\n{links}</body></html>\n")
}

// ---------------------------------------------------------------------------
// /connz
// ---------------------------------------------------------------------------

/// Which connections `/connz` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Open,
    Closed,
    Any,
}

/// Subscriptions shown per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsShown {
    None,
    List,
    Detail,
}

/// `/connz` query parameters.
#[derive(Debug, Clone)]
pub struct ConnzQuery {
    pub sort: String,
    pub subs: SubsShown,
    pub offset: usize,
    pub limit: usize,
    pub cid: Option<u64>,
    pub state: ConnState,
    /// `auth=1`: show each connection's user and account.
    pub auth: bool,
}

fn param_usize(q: &BTreeMap<String, String>, k: &str, default: usize) -> Result<usize, String> {
    match q.get(k) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("strconv.Atoi: parsing {v:?}: invalid syntax")),
    }
}

const SORTS: &[&str] = &[
    "cid",
    "start",
    "subs",
    "pending",
    "msgs_to",
    "msgs_from",
    "bytes_to",
    "bytes_from",
    "last",
    "idle",
    "uptime",
    "stop",
    "reason",
    "rtt",
];

impl ConnzQuery {
    pub fn parse(q: &BTreeMap<String, String>) -> Result<ConnzQuery, String> {
        let state = match q.get("state").map(String::as_str) {
            None | Some("") | Some("open") => ConnState::Open,
            Some("closed") => ConnState::Closed,
            Some("any" | "all") => ConnState::Any,
            Some(s) => return Err(format!("invalid state option: {s}")),
        };
        let sort = q
            .get("sort")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "cid".to_string());
        if !SORTS.contains(&sort.as_str()) {
            return Err(format!("invalid sorting option: {sort}"));
        }
        if (sort == "stop" || sort == "reason") && state == ConnState::Open {
            return Err(format!("sort by {sort} only valid on closed connections"));
        }
        let subs = match q.get("subs").map(String::as_str) {
            Some("detail") => SubsShown::Detail,
            Some(v) if is_true(v) => SubsShown::List,
            _ => SubsShown::None,
        };
        let cid = match q.get("cid") {
            Some(v) if !v.is_empty() => Some(
                v.parse()
                    .map_err(|_| format!("strconv.Atoi: parsing {v:?}: invalid syntax"))?,
            ),
            _ => None,
        };
        Ok(ConnzQuery {
            sort,
            subs,
            offset: param_usize(q, "offset", 0)?,
            limit: param_usize(q, "limit", DEFAULT_CONN_LIMIT)?,
            cid,
            state,
            auth: q.get("auth").is_some_and(|v| is_true(v)),
        })
    }
}

fn is_true(v: &str) -> bool {
    matches!(v, "1" | "true" | "t" | "T" | "TRUE" | "True")
}

/// Builds the `/connz` answer from the shards' reports.
pub fn connz(server_id: &str, now: SystemTime, reports: &[ShardReport], q: &ConnzQuery) -> Value {
    let mut conns: Vec<&ConnInfo> = Vec::new();
    if q.state != ConnState::Closed {
        conns.extend(reports.iter().flat_map(|r| r.open.iter()));
    }
    if q.state != ConnState::Open || q.cid.is_some() {
        let mut closed: Vec<&ConnInfo> = reports.iter().flat_map(|r| r.closed.iter()).collect();
        // One ring for the whole server: keep the most recently closed.
        closed.sort_by_key(|c| std::cmp::Reverse(c.stop));
        closed.truncate(crate::server::MAX_CLOSED_CLIENTS);
        conns.extend(closed);
    }
    if let Some(cid) = q.cid {
        conns.retain(|c| c.cid == cid);
        conns.truncate(1);
    }
    sort_conns(&mut conns, &q.sort, now);
    let total = conns.len();
    let page: Vec<Value> = conns
        .iter()
        .skip(q.offset)
        .take(q.limit)
        .map(|c| conn_json(c, now, q.subs, q.auth))
        .collect();
    json!({
        "server_id": server_id,
        "now": rfc3339(now),
        "num_connections": page.len(),
        "total": total,
        "offset": q.offset,
        "limit": q.limit,
        "connections": page,
    })
}

fn sort_conns(conns: &mut [&ConnInfo], sort: &str, now: SystemTime) {
    let end = |c: &ConnInfo| c.stop.unwrap_or(now);
    let idle = |c: &ConnInfo| end(c).duration_since(c.last_activity).unwrap_or_default();
    let up = |c: &ConnInfo| end(c).duration_since(c.start).unwrap_or_default();
    match sort {
        "start" => conns.sort_by_key(|c| (c.start, c.cid)),
        "subs" => conns.sort_by_key(|c| std::cmp::Reverse(c.subs.len())),
        "pending" => conns.sort_by_key(|c| std::cmp::Reverse(c.pending_bytes)),
        "msgs_to" => conns.sort_by_key(|c| std::cmp::Reverse(c.out_msgs)),
        "msgs_from" => conns.sort_by_key(|c| std::cmp::Reverse(c.in_msgs)),
        "bytes_to" => conns.sort_by_key(|c| std::cmp::Reverse(c.out_bytes)),
        "bytes_from" => conns.sort_by_key(|c| std::cmp::Reverse(c.in_bytes)),
        "last" => conns.sort_by_key(|c| std::cmp::Reverse(c.last_activity)),
        "idle" => conns.sort_by_key(|c| std::cmp::Reverse(idle(c))),
        "uptime" => conns.sort_by_key(|c| std::cmp::Reverse(up(c))),
        "stop" => conns.sort_by_key(|c| std::cmp::Reverse(c.stop)),
        "reason" => conns.sort_by_key(|c| c.reason.map(|r| r.text())),
        "rtt" => conns.sort_by_key(|c| std::cmp::Reverse(c.rtt)),
        _ => conns.sort_by_key(|c| c.cid),
    }
}

fn conn_json(c: &ConnInfo, now: SystemTime, subs: SubsShown, auth: bool) -> Value {
    let end = c.stop.unwrap_or(now);
    let mut m = Map::new();
    m.insert("cid".into(), json!(c.cid));
    m.insert("kind".into(), json!("Client"));
    m.insert("type".into(), json!("nats"));
    m.insert(
        "ip".into(),
        json!(c.addr.map(|a| a.ip().to_string()).unwrap_or_default()),
    );
    m.insert("port".into(), json!(c.addr.map_or(0, |a| a.port())));
    m.insert("start".into(), json!(rfc3339(c.start)));
    m.insert("last_activity".into(), json!(rfc3339(c.last_activity)));
    if let Some(stop) = c.stop {
        m.insert("stop".into(), json!(rfc3339(stop)));
    }
    if let Some(r) = c.reason {
        m.insert("reason".into(), json!(r.text()));
    }
    // nats-server shows "0s" until the first PONG has measured it.
    m.insert("rtt".into(), json!(go_duration(c.rtt.unwrap_or_default())));
    m.insert(
        "uptime".into(),
        json!(uptime(end.duration_since(c.start).unwrap_or_default())),
    );
    m.insert(
        "idle".into(),
        json!(uptime(
            end.duration_since(c.last_activity).unwrap_or_default()
        )),
    );
    m.insert("pending_bytes".into(), json!(c.pending_bytes));
    m.insert("in_msgs".into(), json!(c.in_msgs));
    m.insert("out_msgs".into(), json!(c.out_msgs));
    m.insert("in_bytes".into(), json!(c.in_bytes));
    m.insert("out_bytes".into(), json!(c.out_bytes));
    m.insert("subscriptions".into(), json!(c.subs.len()));
    for (k, v) in [
        ("name", &c.name),
        ("lang", &c.lang),
        ("version", &c.version),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    }
    if auth {
        if let Some(u) = &c.user {
            m.insert("authorized_user".into(), json!(u));
        }
        m.insert("account".into(), json!(c.account));
    }
    if !c.subs.is_empty() {
        match subs {
            SubsShown::None => {}
            SubsShown::List => {
                let list: Vec<&str> = c.subs.iter().map(|s| s.subject.as_str()).collect();
                m.insert("subscriptions_list".into(), json!(list));
            }
            SubsShown::Detail => {
                let list: Vec<Value> = c.subs.iter().map(|s| sub_detail(c, s)).collect();
                m.insert("subscriptions_list_detail".into(), json!(list));
            }
        }
    }
    Value::Object(m)
}

fn sub_detail(c: &ConnInfo, s: &crate::server::SubInfo) -> Value {
    let mut m = Map::new();
    m.insert("account".into(), json!(c.account));
    m.insert("subject".into(), json!(s.subject));
    if let Some(q) = &s.queue {
        m.insert("qgroup".into(), json!(q));
    }
    m.insert("sid".into(), json!(s.sid));
    m.insert("msgs".into(), json!(s.msgs));
    if s.max > 0 {
        m.insert("max".into(), json!(s.max));
    }
    m.insert("cid".into(), json!(c.cid));
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// /accountz
// ---------------------------------------------------------------------------

fn export_json(e: &crate::accounts::ExportOptions) -> Value {
    use crate::accounts::Kind;
    let mut m = Map::new();
    m.insert("subject".into(), json!(e.subject));
    match e.kind {
        Kind::Stream => m.insert("type".into(), json!("stream")),
        Kind::Service => {
            m.insert("type".into(), json!("service"));
            m.insert("response_type".into(), json!(e.response_type.label()))
        }
    };
    if !e.accounts.is_empty() {
        m.insert("approved_accounts".into(), json!(e.accounts));
    }
    Value::Object(m)
}

fn import_json(i: &crate::accounts::ImportOptions) -> Value {
    use crate::accounts::Kind;
    let mut m = Map::new();
    match i.kind {
        Kind::Stream => {
            m.insert("subject".into(), json!(i.subject));
            m.insert("account".into(), json!(i.account));
            let local = match (&i.prefix, &i.to) {
                (Some(p), _) => format!("{p}.{}", i.subject),
                (None, Some(to)) => to.clone(),
                (None, None) => i.subject.clone(),
            };
            m.insert("local_subject".into(), json!(local));
            m.insert("type".into(), json!("stream"));
        }
        // As nats-server 2.10 and later show it (2.9 had `subject` and `to` swapped).
        Kind::Service => {
            let local = i.to.as_ref().unwrap_or(&i.subject);
            m.insert("subject".into(), json!(i.subject));
            m.insert("account".into(), json!(i.account));
            m.insert("to".into(), json!(local));
            m.insert("local_subject".into(), json!(local));
            m.insert("type".into(), json!("service"));
        }
    }
    m.insert("invalid".into(), json!(false));
    m.insert("share".into(), json!(false));
    m.insert("tracking".into(), json!(false));
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// /subsz
// ---------------------------------------------------------------------------

/// `/subsz` query parameters.
#[derive(Debug, Clone)]
pub struct SubszQuery {
    pub subs: bool,
    pub offset: usize,
    pub limit: usize,
    pub test: Option<String>,
}

impl SubszQuery {
    pub fn parse(q: &BTreeMap<String, String>) -> Result<SubszQuery, String> {
        let test = q.get("test").filter(|t| !t.is_empty()).cloned();
        if let Some(t) = &test {
            if !crate::sublist::is_valid_literal_subject(t.as_bytes()) {
                return Err(format!(
                    "invalid test subject, must be valid publish subject: {t}"
                ));
            }
        }
        Ok(SubszQuery {
            // As in nats-server, `test` filters the list that `subs=1` asks for.
            subs: q.get("subs").is_some_and(|v| is_true(v)),
            offset: param_usize(q, "offset", 0)?,
            limit: param_usize(q, "limit", DEFAULT_SUB_LIMIT)?,
            test,
        })
    }
}

/// A subject index's counters as nats-server's `SublistStats` JSON.
fn sublist_stats_json(st: &crate::sublist::SublistStats) -> Value {
    let hit_rate = if st.num_matches > 0 {
        st.cache_hits as f64 / st.num_matches as f64
    } else {
        0.0
    };
    let avg_fanout = if st.num_cache > 0 {
        st.total_fanout as f64 / st.num_cache as f64
    } else {
        0.0
    };
    json!({
        "num_subscriptions": st.num_subscriptions,
        "num_cache": st.num_cache,
        "num_inserts": st.num_inserts,
        "num_removes": st.num_removes,
        "num_matches": st.num_matches,
        "cache_hit_rate": hit_rate,
        "max_fanout": st.max_fanout,
        "avg_fanout": avg_fanout,
    })
}

/// Builds the `/subsz` answer from the shards' reports.
pub fn subsz(server_id: &str, now: SystemTime, reports: &[ShardReport], q: &SubszQuery) -> Value {
    let st = reports
        .iter()
        .fold(crate::sublist::SublistStats::default(), |t, r| {
            t.plus(r.sublist.clone())
        });
    let mut m = Map::new();
    m.insert("server_id".into(), json!(server_id));
    m.insert("now".into(), json!(rfc3339(now)));
    if let Value::Object(stats) = sublist_stats_json(&st) {
        m.extend(stats);
    }
    if q.subs {
        let mut all: Vec<Value> = Vec::new();
        for c in reports.iter().flat_map(|r| r.open.iter()) {
            for s in &c.subs {
                let hit = q.test.as_deref().is_none_or(|t| {
                    crate::sublist::subject_matches(s.subject.as_bytes(), t.as_bytes())
                });
                if hit {
                    all.push(sub_detail(c, s));
                }
            }
        }
        m.insert("total".into(), json!(all.len()));
        m.insert("offset".into(), json!(q.offset));
        m.insert("limit".into(), json!(q.limit));
        let page: Vec<Value> = all.into_iter().skip(q.offset).take(q.limit).collect();
        if !page.is_empty() {
            m.insert("subscriptions_list".into(), Value::Array(page));
        }
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------
// Formats: Go's time and duration texts, process figures
// ---------------------------------------------------------------------------

/// A UTC time as Go's JSON encoding writes it (RFC 3339, nanoseconds with trailing zeros
/// trimmed).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, secs) = crate::log::civil(d.as_secs());
    let mut s = format!(
        "{date}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// nats-server's uptime text: `3s`, `2m3s`, `1h2m3s`, `4d1h2m3s`, `1y4d1h2m3s`.
pub fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, days) = (s / 60, s / 3600, s / 86_400);
    let years = days / 365;
    if years > 0 {
        format!("{years}y{}d{}h{}m{}s", days % 365, h % 24, m % 60, s % 60)
    } else if days > 0 {
        format!("{days}d{}h{}m{}s", h % 24, m % 60, s % 60)
    } else if h > 0 {
        format!("{h}h{}m{}s", m % 60, s % 60)
    } else if m > 0 {
        format!("{m}m{}s", s % 60)
    } else {
        format!("{s}s")
    }
}

/// Go's `time.Duration.String()`: `0s`, `850ns`, `1.5µs`, `1.234ms`, `2.5s`, `1m30s`, `2h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_string();
    }
    let frac = |v: u128, unit: u128, name: &str| {
        let whole = v / unit;
        let rest = v % unit;
        if rest == 0 {
            format!("{whole}{name}")
        } else {
            let digits = unit.ilog10() as usize;
            let f = format!("{rest:0digits$}");
            format!("{whole}.{}{name}", f.trim_end_matches('0'))
        }
    };
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        frac(ns, 1_000, "µs")
    } else if ns < 1_000_000_000 {
        frac(ns, 1_000_000, "ms")
    } else {
        let h = ns / 3_600_000_000_000;
        let m = ns / 60_000_000_000 % 60;
        let s = frac(ns % 60_000_000_000, 1_000_000_000, "s");
        if h > 0 {
            format!("{h}h{m}m{s}")
        } else if m > 0 {
            format!("{m}m{s}")
        } else {
            s
        }
    }
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// CPU seconds (user + system) this process has used.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{CloseReason, SubInfo};

    #[test]
    fn go_duration_texts() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(850)), "850ns");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_micros(1_234)), "1.234ms");
        assert_eq!(go_duration(Duration::from_millis(2_500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(7200)), "2h0m0s");
    }

    #[test]
    fn uptime_texts() {
        assert_eq!(uptime(Duration::from_secs(3)), "3s");
        assert_eq!(uptime(Duration::from_secs(123)), "2m3s");
        assert_eq!(uptime(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(uptime(Duration::from_secs(4 * 86_400 + 3723)), "4d1h2m3s");
        assert_eq!(uptime(Duration::from_secs(369 * 86_400)), "1y4d0h0m0s");
    }

    #[test]
    fn rfc3339_texts() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_795_319_279_120_000_000);
        assert_eq!(rfc3339(t), "2026-11-22T03:47:59.12Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    fn conn(cid: u64, out_msgs: u64, closed: Option<CloseReason>) -> ConnInfo {
        let t = UNIX_EPOCH + Duration::from_secs(1_000 + cid);
        ConnInfo {
            cid,
            addr: Some("127.0.0.1:5000".parse().unwrap()),
            start: t,
            last_activity: t,
            stop: closed.map(|_| t + Duration::from_secs(5)),
            reason: closed,
            rtt: Some(Duration::from_micros(250)),
            pending_bytes: 0,
            in_msgs: 0,
            out_msgs,
            in_bytes: 0,
            out_bytes: 0,
            subs: vec![SubInfo {
                subject: format!("s.{cid}"),
                queue: None,
                sid: "1".into(),
                msgs: 0,
                max: 0,
            }],
            account: "$G".into(),
            user: None,
            name: String::new(),
            lang: "rust".into(),
            version: String::new(),
        }
    }

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn connz_states_sorting_and_paging() {
        let reports = vec![
            ShardReport {
                shard: 0,
                open: vec![conn(1, 5, None), conn(3, 9, None)],
                closed: vec![conn(2, 1, Some(CloseReason::SlowConsumerPendingBytes))],
                ..Default::default()
            },
            ShardReport {
                shard: 1,
                open: vec![conn(4, 7, None)],
                ..Default::default()
            },
        ];
        let now = UNIX_EPOCH + Duration::from_secs(2_000);
        let cids = |v: &Value| -> Vec<u64> {
            v["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["cid"].as_u64().unwrap())
                .collect()
        };
        let open = connz("S", now, &reports, &ConnzQuery::parse(&q(&[])).unwrap());
        assert_eq!(cids(&open), [1, 3, 4]);
        assert_eq!(open["total"], 3);
        assert!(open["connections"][0].get("subscriptions_list").is_none());
        let by_out = ConnzQuery::parse(&q(&[("sort", "msgs_to"), ("limit", "2")])).unwrap();
        let v = connz("S", now, &reports, &by_out);
        assert_eq!(cids(&v), [3, 4]);
        assert_eq!(
            (v["num_connections"].as_u64(), v["total"].as_u64()),
            (Some(2), Some(3))
        );
        let closed = ConnzQuery::parse(&q(&[("state", "closed"), ("subs", "1")])).unwrap();
        let v = connz("S", now, &reports, &closed);
        assert_eq!(cids(&v), [2]);
        assert_eq!(
            v["connections"][0]["reason"],
            "Slow Consumer (Pending Bytes)"
        );
        assert_eq!(v["connections"][0]["subscriptions_list"], json!(["s.2"]));
        let any = ConnzQuery::parse(&q(&[("state", "any"), ("offset", "1")])).unwrap();
        assert_eq!(cids(&connz("S", now, &reports, &any)), [2, 3, 4]);
        let one = ConnzQuery::parse(&q(&[("cid", "2")])).unwrap();
        assert_eq!(cids(&connz("S", now, &reports, &one)), [2]);
        let detail = ConnzQuery::parse(&q(&[("subs", "detail")])).unwrap();
        let v = connz("S", now, &reports, &detail);
        assert_eq!(
            v["connections"][0]["subscriptions_list_detail"][0]["subject"],
            "s.1"
        );
        assert_eq!(v["connections"][0]["rtt"], "250µs");
        assert!(ConnzQuery::parse(&q(&[("sort", "nope")])).is_err());
        assert!(ConnzQuery::parse(&q(&[("sort", "stop")])).is_err());
        assert!(ConnzQuery::parse(&q(&[("state", "closed"), ("sort", "stop")])).is_ok());
        assert!(ConnzQuery::parse(&q(&[("limit", "x")])).is_err());
    }

    #[test]
    fn subsz_aggregates_and_tests_a_subject() {
        let mut a = ShardReport {
            open: vec![conn(1, 0, None), conn(2, 0, None)],
            ..Default::default()
        };
        a.sublist.num_subscriptions = 2;
        a.sublist.num_matches = 10;
        a.sublist.cache_hits = 5;
        a.sublist.num_cache = 2;
        a.sublist.total_fanout = 3;
        a.sublist.max_fanout = 2;
        let now = UNIX_EPOCH;
        let plain = subsz("S", now, &[a.clone()], &SubszQuery::parse(&q(&[])).unwrap());
        assert_eq!(plain["num_subscriptions"], 2);
        assert_eq!(plain["cache_hit_rate"], 0.5);
        assert_eq!(plain["avg_fanout"], 1.5);
        assert!(plain.get("subscriptions_list").is_none());
        let t = SubszQuery::parse(&q(&[("subs", "1"), ("test", "s.2")])).unwrap();
        let v = subsz("S", now, &[a], &t);
        assert_eq!(v["total"], 1);
        assert_eq!(v["subscriptions_list"][0]["cid"], 2);
        assert!(SubszQuery::parse(&q(&[("test", "s.*")])).is_err());
    }
}
