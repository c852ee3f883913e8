//! The server on its shards: connections, the per-shard subject index, interest gossip and
//! message forwarding between shards (DESIGN.md, "The shape").
//!
//! Each shard owns its clients and a [`Sublist`] of their subscriptions, plus a table of the
//! other shards' interest. A publish is delivered to local subscribers and forwarded once per
//! interested shard in per-peer batches; a forwarded message is only ever delivered locally
//! (one hop). Queue groups are chosen across the whole server by weight. A client's `PING` is
//! answered only after every peer shard has applied what this shard sent it (the interest
//! barrier: a `Sync`/`Ack` round on the FIFO mesh queues), so a flushed `SUB` sees every later
//! publish and a flushed `PUB` is already queued for its subscribers, as on one nats-server.
//!
//! This module does I/O only through `tern_shards`; the protocol itself lives in `parser` and
//! `client`.

use crate::accounts::{AccId, Account, Accounts, ResponseType, ServiceRoute};
use crate::auth::{Auth, ClientPerms, Grant, Verdict};
use crate::client::{self, ConnectOpts};
use crate::events;
use crate::opts::Options;
use crate::parser::{Op, OwnedPub, ParseError, Parser, Parts, PubMsg};
use crate::sublist::{self, Sublist};
use bytes::{Buf, Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};
use tern_shards::{
    rt, ConnReader, ConnWriter, InboxReceiver, Mesh, MeshReceiver, Sending, ShardCtx,
};

mod routes;

/// Smallest and largest read buffer (nats-server's dynamic read buffer bounds).
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
/// The longest a producer waits for stalled subscribers per batch (nats-server: 10 ms).
const STALL_MAX: Duration = Duration::from_millis(10);
/// A subscriber's queued output past which its producers wait for it to drain (the soft
/// stall, up to `STALL_MAX`, and only while every subscriber the batch fed has this much
/// queued; see `Shard::wait_for_stalled`). Its socket's own buffer keeps it busy meanwhile,
/// so a fan-out to readers slower than Tern holds about this much per reader instead of
/// what the publishers' flow control lets pile up (up to `max_pending`).
const STALL_SOFT: usize = 256 * 1024;
/// How long a subscriber over `STALL_SOFT` must go without acknowledging anything (TCP) for
/// the soft stall to take it for one that stopped reading. Well above the pauses of a reader
/// that is only slow: its window opens again in pieces of at least an MSS.
const STALL_STUCK: Duration = Duration::from_millis(100);
/// The queued output past which a subscriber's producers wait for it however its siblings
/// fare (the hard stall): 3/4 of `max_pending`, as in nats-server.
fn hard_stall_level(max_pending: u64) -> usize {
    (max_pending / 4 * 3) as usize
}

/// A shard's limits on a client's queued output, from `max_pending` (which a reload may not
/// change), read by every delivery: kept on the shard rather than behind the options'
/// `RefCell` and `Arc`.
#[derive(Clone, Copy)]
struct OutLimits {
    /// Past this a subscriber is a slow consumer and is dropped.
    max_pending: u64,
    /// The hard stall's level (see [`hard_stall_level`]).
    hard_stall: usize,
    /// Past this a delivery lists its subscriber as stalled: the soft or the hard level,
    /// whichever is lower.
    stall_at: usize,
}

impl OutLimits {
    fn new(o: &Options) -> OutLimits {
        let hard_stall = hard_stall_level(o.max_pending);
        OutLimits {
            max_pending: o.max_pending,
            hard_stall,
            stall_at: STALL_SOFT.min(hard_stall),
        }
    }
}
/// How long a shutdown waits for clients' queued output to drain.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// How many closed connections `/connz?state=closed` remembers (nats-server's default).
pub const MAX_CLOSED_CLIENTS: usize = 10_000;

/// State shared by all shards; read-mostly, and only atomics are written. `opts` are the
/// options the server started with; each shard keeps its own copy of the current ones, which
/// a reload replaces.
pub struct Global {
    pub opts: Options,
    pub server_id: String,
    pub server_name: String,
    pub port: u16,
    pub started: SystemTime,
    pub shutdown: Arc<AtomicBool>,
    pub connections: AtomicUsize,
    /// Lame duck mode: no new clients, the connected ones are told and closed gradually.
    pub lame_duck: AtomicBool,
    /// The TLS configurations, built once at start-up; `None` for plaintext clients.
    pub tls: Option<crate::tls::ServerTls>,
    /// The accounts, numbered once at start-up (a reload may not change them).
    pub accounts: Arc<Accounts>,
    /// Connected clients per account (for the system account's `account_connections`).
    account_conns: Vec<AtomicU64>,
    /// The sequence number of the system account's events.
    event_seq: AtomicU64,
    /// Answers system account requests (`$SYS.REQ.SERVER...`) off the shards: set by the
    /// binary to the monitoring module.
    pub sys_api: OnceLock<SysApi>,
    /// The cluster port, bound by the binary; shard 0 takes it and serves the routes.
    pub route_listener: Mutex<Option<std::net::TcpListener>>,
    /// The cluster's client URLs (this server's first), for INFO `connect_urls`; written
    /// by the shard that owns the routes when servers join or leave, read at connect time.
    connect_urls: Mutex<Vec<String>>,
    /// The cluster's name for INFO `cluster` (it can be adopted from a peer, so shard 0,
    /// which owns the routes, keeps it here).
    pub cluster_name: Mutex<Option<String>>,
    next_cid: AtomicU64,
}

/// Answers a `$SYS.REQ.SERVER...` request: the endpoint (`VARZ`, ...) and its options as a
/// query string. It blocks (it asks every shard), so it runs on a helper thread.
pub type SysApi = Arc<dyn Fn(&str, &str) -> serde_json::Value + Send + Sync>;

impl Global {
    pub fn new(opts: Options, server_id: String, port: u16) -> Global {
        // Already checked when the options were validated.
        let tls = opts
            .tls
            .as_ref()
            .and_then(|t| crate::tls::server_tls(t).ok());
        let server_name = opts
            .server_name
            .clone()
            .unwrap_or_else(|| server_id.clone());
        let accounts = Arc::new(Accounts::new(&opts.accounts).unwrap_or_default());
        Global {
            opts,
            server_id,
            server_name,
            port,
            started: SystemTime::now(),
            shutdown: Arc::new(AtomicBool::new(false)),
            connections: AtomicUsize::new(0),
            lame_duck: AtomicBool::new(false),
            tls,
            account_conns: (0..accounts.len()).map(|_| AtomicU64::new(0)).collect(),
            accounts,
            event_seq: AtomicU64::new(0),
            sys_api: OnceLock::new(),
            route_listener: Mutex::new(None),
            connect_urls: Mutex::new(Vec::new()),
            cluster_name: Mutex::new(None),
            next_cid: AtomicU64::new(1),
        }
    }

    /// Accounts with a client connected.
    pub fn active_accounts(&self) -> usize {
        self.account_conns
            .iter()
            .filter(|n| n.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// The server as the system account's events name it, with the next sequence number.
    fn event_server(&self) -> events::ServerInfo<'_> {
        events::ServerInfo {
            name: &self.server_name,
            host: &self.opts.host,
            id: &self.server_id,
            seq: self.event_seq.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Connections accepted since the start (client ids are handed out in order from 1).
    pub fn total_connections(&self) -> u64 {
        self.next_cid.load(Ordering::Relaxed) - 1
    }

    /// The INFO line for client `cid` under the current options `o`; `nonce` when the
    /// client must sign one (nkeys).
    fn info_line(&self, o: &Options, cid: u64, ip: &str, nonce: Option<&str>) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Info<'a> {
            server_id: &'a str,
            server_name: &'a str,
            version: &'a str,
            proto: u8,
            go: &'a str,
            host: &'a str,
            port: u16,
            headers: bool,
            max_payload: u32,
            client_id: u64,
            client_ip: &'a str,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            auth_required: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            tls_required: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            tls_verify: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            tls_available: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            nonce: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster: Option<String>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            ldm: bool,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            connect_urls: Vec<String>,
        }
        let info = Info {
            server_id: &self.server_id,
            server_name: &self.server_name,
            version: crate::VERSION,
            proto: 1,
            go: concat!("tern ", env!("CARGO_PKG_VERSION")),
            host: &self.opts.host,
            port: self.port,
            headers: !o.no_header_support,
            max_payload: o.max_payload,
            client_id: cid,
            client_ip: ip,
            auth_required: o.auth.is_configured(),
            tls_required: self.tls.is_some() && !o.allow_non_tls,
            tls_verify: self.tls.is_some()
                && o.tls.as_ref().is_some_and(|t| t.verify || t.verify_and_map),
            tls_available: self.tls.is_some() && o.allow_non_tls,
            nonce,
            cluster: self.cluster_name.lock().ok().and_then(|n| n.clone()),
            ldm: self.lame_duck.load(Ordering::Relaxed),
            connect_urls: self
                .connect_urls
                .lock()
                .map(|u| u.clone())
                .unwrap_or_default(),
        };
        let mut line = b"INFO ".to_vec();
        line.extend_from_slice(&serde_json::to_vec(&info).unwrap_or_default());
        // nats-server puts a space between the JSON and the line end.
        line.extend_from_slice(b" \r\n");
        line
    }
}

/// One unit of traffic between shards: 48 bytes, the size of a forwarded message (see
/// `a_shard_op_is_small`), so that a batch of them is small to write and to read.
pub enum ShardOp {
    /// An interest change: boxed, being rare and twice a message's size.
    Interest(Box<Interest>),
    /// "Answer with `Ack(seq)` once everything I sent before this is applied."
    Sync(u64),
    /// The receiver of `Sync(seq)` has applied and delivered everything sent before it.
    Ack(u64),
    /// The batch comes from a publisher that also fed a destination with a short queue:
    /// the receiver must not soft-stall for it (see `Shard::hungry`).
    Hungry,
    /// The cluster's client URLs changed: tell the clients (async INFO).
    ConnectUrls,
    /// The chunk the `Msg`s after it in this batch lie in, up to the next `Frame`: one
    /// refcount on a publisher's read chunk for all the messages of it that a batch carries,
    /// where one per message made the two shards' cores trade that count's cache line.
    Frame(Bytes),
    /// A message to deliver locally, to plain subscribers and to one member of each named queue.
    Msg {
        account: AccId,
        /// Where subject, reply and payload lie in the batch's current `Frame`.
        parts: Parts,
        /// How many queue groups it must serve: the next ones in the batch's `queues`.
        queues: u32,
        /// The receiver owns the routes and passes the message on to them too.
        to_routes: bool,
    },
}

/// The sender's interest in (account, subject, queue) is now `weight` (0 = gone): its
/// clients', or with `routed` its routes' (other servers').
pub struct Interest {
    account: AccId,
    subject: Bytes,
    queue: Option<Bytes>,
    weight: u32,
    routed: bool,
}

/// The queue groups a forwarded message must serve on the receiving shard.
pub type Queues = smallvec::SmallVec<[QueueName; 1]>;

/// A queue group's name as a forwarded message carries it: by value (inline up to 24
/// bytes), not as a `Bytes` of the name the interest arrived with. That one was cloned on
/// the sending shard and dropped on the receiving one for every message, so its refcount's
/// cache line crossed between the cores twice per message (`shared_clone` and
/// `shared_drop`, ~17 ns of a queue message's ~500 across shards).
pub type QueueName = smallvec::SmallVec<[u8; 24]>;

/// What travels on the mesh: a batch of operations, in order, and the queue groups its
/// messages name, in the same order.
#[derive(Default)]
pub struct MeshMsg {
    ops: Vec<ShardOp>,
    queues: Vec<QueueName>,
}

/// The largest batch (in operations, 48 bytes each, and as many queue names, 32 bytes
/// each) kept for reuse per peer: a 64 KiB read of messages of 32 bytes or more (a 16-byte
/// payload's `PUB` with a short subject). Larger batches are freed and made anew, so what a
/// shard keeps for its peers stays small with many shards; only links that carried such
/// batches keep one.
const SPARE_MAX: usize = 2048;

/// The batch this shard is building for one peer.
#[derive(Default)]
struct Outbox {
    batch: MeshMsg,
    /// Address and length of the last `ShardOp::Frame` in `batch` (which keeps that memory
    /// alive, so no other chunk can have it while the batch is pending).
    frame: (usize, usize),
    /// An emptied batch the peer gave back, to build the next one in.
    spare: MeshMsg,
}

impl MeshMsg {
    /// Takes `done`, a batch the peer gave back, as this spare if it is larger and within
    /// [`SPARE_MAX`]; either way frees the read chunks and queue names it holds, here, where
    /// they were allocated.
    fn reuse(&mut self, mut done: MeshMsg) {
        done.ops.clear();
        done.queues.clear();
        let room = done.ops.capacity();
        if room > self.ops.capacity() && room <= SPARE_MAX {
            if done.queues.capacity() > SPARE_MAX {
                // Many queue groups per message: not kept.
                done.queues = Vec::new();
            }
            *self = done;
        }
    }
}

/// A request from outside the shards (monitoring, signals) to one shard, through its inbox.
pub enum Admin {
    /// Answer with this shard's counters, and with its connections when `conns` is set.
    Report {
        conns: bool,
        reply: crossbeam_channel::Sender<ShardReport>,
    },
    /// Use these options from now on (a config reload that passed its checks).
    Reload(Arc<Options>),
    /// Enter lame duck mode: stop accepting, tell the clients (INFO `ldm`), wait `grace`, then
    /// close this shard's clients one every `every`.
    LameDuck { grace: Duration, every: Duration },
}

/// Why a connection closed, as `/connz` reports it (nats-server's `ClosedState` texts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ReadError,
    WriteError,
    ParseError,
    ProtocolViolation,
    StaleConnection,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    MaxConnectionsExceeded,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    NoRespondersRequiresHeaders,
    AuthenticationTimeout,
    AuthenticationViolation,
    TlsHandshakeError,
    ServerShutdown,
}

impl CloseReason {
    /// The text nats-server puts in `reason`.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "Client Closed",
            CloseReason::ReadError => "Read Error",
            CloseReason::WriteError => "Write Error",
            CloseReason::ParseError => "Parse Error",
            CloseReason::ProtocolViolation => "Protocol Violation",
            CloseReason::StaleConnection => "Stale Connection",
            CloseReason::SlowConsumerPendingBytes => "Slow Consumer (Pending Bytes)",
            CloseReason::SlowConsumerWriteDeadline => "Slow Consumer (Write Deadline)",
            CloseReason::MaxConnectionsExceeded => "Maximum Connections Exceeded",
            CloseReason::MaxPayloadExceeded => "Maximum Message Payload Exceeded",
            CloseReason::MaxControlLineExceeded => "Maximum Control Line Exceeded",
            CloseReason::NoRespondersRequiresHeaders => "No Responders Requires Headers",
            CloseReason::AuthenticationTimeout => "Authentication Timeout",
            CloseReason::AuthenticationViolation => "Authentication Failure",
            CloseReason::TlsHandshakeError => "TLS Handshake Failure",
            CloseReason::ServerShutdown => "Server Shutdown",
        }
    }
}

/// One subscription, as `/connz?subs=detail` lists it.
#[derive(Debug, Clone)]
pub struct SubInfo {
    pub subject: String,
    pub queue: Option<String>,
    pub sid: String,
    pub msgs: u64,
    pub max: u64,
}

/// One connection, open or closed, as `/connz` reports it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub cid: u64,
    pub addr: Option<SocketAddr>,
    pub start: SystemTime,
    pub last_activity: SystemTime,
    pub stop: Option<SystemTime>,
    pub reason: Option<CloseReason>,
    pub rtt: Option<Duration>,
    pub pending_bytes: u64,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub subs: Vec<SubInfo>,
    /// The account's name, and the user (name or nkey) it authenticated as.
    pub account: String,
    pub user: Option<String>,
    pub name: String,
    pub lang: String,
    pub version: String,
}

/// Message counters (server, shard or connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
}

impl Counts {
    /// The sum of two sets of counts.
    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            in_msgs: self.in_msgs + o.in_msgs,
            in_bytes: self.in_bytes + o.in_bytes,
            out_msgs: self.out_msgs + o.out_msgs,
            out_bytes: self.out_bytes + o.out_bytes,
        }
    }
}

/// One route, as `/routez` reports it.
#[derive(Debug, Clone)]
pub struct RouteReport {
    pub rid: u64,
    pub remote_id: String,
    pub remote_name: String,
    pub did_solicit: bool,
    pub addr: Option<SocketAddr>,
    pub start: SystemTime,
    pub counts: Counts,
    pub subscriptions: usize,
    pub pending: usize,
    /// The last PING's round trip.
    pub rtt: Option<Duration>,
}

/// The cluster, as `/varz` and `/routez` report it.
#[derive(Debug, Clone, Default)]
pub struct ClusterReport {
    pub name: String,
    pub port: u16,
    pub routes: Vec<RouteReport>,
}

/// What a shard answers to [`Admin::Report`].
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub counts: Counts,
    pub slow_consumers: u64,
    pub connections: usize,
    pub sublist: sublist::SublistStats,
    /// Per account (indexed by [`AccId`]).
    pub accounts: Vec<sublist::SublistStats>,
    /// Open connections (only when asked for).
    pub open: Vec<ConnInfo>,
    /// The most recently closed connections (only when asked for), oldest first.
    pub closed: Vec<ConnInfo>,
    /// The shard that owns the routes: the cluster.
    pub cluster: Option<ClusterReport>,
}

/// A client connection on this shard. `repr(C)` keeps the fields in this order: the first
/// ones are what a delivery reads and writes, together in three cache lines (spread over
/// the ~2 KiB struct they cost a fan-out delivery five or six, each reloaded after a
/// batch's output has flushed them out of the cache).
#[repr(C)]
struct Client {
    cid: u64,
    out: RefCell<client::Outbound>,
    in_flight: Cell<usize>,
    counts: Cell<Counts>,
    /// The shard's `stall_batch` when this client was last listed in its `stalled`.
    stall_batch: Cell<u64>,
    writer: Cell<Option<Waker>>,
    closed: Cell<bool>,
    dirty: Cell<bool>,
    /// A message was delivered to this client since the shard's last flush.
    fed: Cell<bool>,
    echo: Cell<bool>,
    headers: Cell<bool>,
    /// This user's permissions look at deliveries: subscribe deny entries filter them, and
    /// `allow_responses` remembers their reply subjects.
    check_deliveries: Cell<bool>,
    /// The send in the ring fell short or failed: its writer must look at it.
    send_note: Cell<bool>,
    /// Drop queued output instead of flushing it (slow consumer).
    discard: Cell<bool>,
    /// The peer stopped reading: soft stalls are off for this client until its socket
    /// takes some output or its peer acknowledges more, so such a subscriber costs its
    /// producers about `STALL_STUCK` of waits, not one per batch (the hard stall still
    /// applies).
    soft_off: Cell<bool>,
    /// What the peer had acknowledged at the last look (`unacked_for`, when a soft stall on
    /// this client ran out of time), and since when; cleared when its socket takes output.
    /// After `STALL_STUCK` with nothing more acknowledged it is taken to have stopped
    /// reading.
    acked_at: Cell<Option<(u64, Instant)>>,
    /// Reads the peer's progress from the socket.
    probe: tern_shards::SendProbe,
    /// Producers waiting for this client's queue to drain.
    stall_waiters: RefCell<Vec<Waker>>,
    opts: RefCell<ConnectOpts>,
    subs: RefCell<HashMap<Bytes, SubRef>>,
    received: Cell<bool>,
    pings_out: Cell<u32>,
    next_ping: Cell<Instant>,
    rtt_due: Cell<bool>,
    /// Wakes the ping timer: on close (so it lets go of the client at once) and when
    /// CONNECT moves the next PING earlier.
    ping_waker: Cell<Option<Waker>>,
    writer_done: Cell<bool>,
    addr: String,
    peer: Option<SocketAddr>,
    start: SystemTime,
    last_activity: Cell<Instant>,
    /// When the PING that measures the round trip went out, and the last measurement.
    rtt_ping: Cell<Option<Instant>>,
    rtt: Cell<Option<Duration>>,
    reason: Cell<Option<CloseReason>>,
    /// The INFO nonce an nkey user must sign.
    nonce: Option<String>,
    /// CONNECT has passed authentication (always true when none is configured).
    authed: Cell<bool>,
    /// CONNECT has been accepted: the client counts in its account and its going away is
    /// announced in the system account.
    connected: Cell<bool>,
    /// The account the client's user belongs to (`$G` until authenticated), and the user
    /// name or nkey it authenticated as.
    account: Cell<AccId>,
    user: RefCell<Option<String>>,
    /// What this user may publish and subscribe to (`None`: everything).
    perms: RefCell<Option<ClientPerms>>,
    /// The TLS session, when the server requires TLS. The reader feeds it ciphertext and
    /// takes plaintext out; the writer puts plaintext in and sends the records.
    tls: Option<RefCell<rustls::Connection>>,
    /// Send the next write in plaintext (the INFO before the handshake).
    tls_plain_once: Cell<bool>,
    /// The handshake timed out: nothing more goes through the session.
    tls_failed: Cell<bool>,
    /// `allow_non_tls`: the client's first byte (a TLS handshake record, or not) has yet to
    /// say whether it speaks TLS; and it chose plaintext.
    tls_undecided: Cell<bool>,
    tls_off: Cell<bool>,
    /// The client's ClientHello has yet to choose the session's configuration.
    tls_hello: Cell<bool>,
}

impl Client {
    /// The TLS session, unless the client chose plaintext (`allow_non_tls`).
    fn session(&self) -> Option<&RefCell<rustls::Connection>> {
        self.tls.as_ref().filter(|_| !self.tls_off.get())
    }

    /// The names its verified certificate may map it to (`verify_and_map`).
    fn cert_identities(&self) -> Vec<String> {
        self.session()
            .and_then(|t| {
                t.borrow()
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(|der| crate::tls::cert_identities(der))
            })
            .unwrap_or_default()
    }

    /// Protocol output waits while the session may still be replaced by one that suits the
    /// client's hello ([`accept_hello`]): what the old session sealed would be lost with it.
    /// The plaintext INFO that precedes the handshake is not held.
    fn tls_holds_output(&self) -> bool {
        self.tls_hello.get() && !self.tls_plain_once.get()
    }

    /// In the TLS handshake (a client still choosing, under `allow_non_tls`, is not).
    fn handshaking(&self) -> bool {
        !self.tls_undecided.get() && self.session().is_some_and(|t| t.borrow().is_handshaking())
    }

    /// Takes a user's permissions (`None`: everything allowed).
    fn set_perms(&self, perms: Option<Arc<crate::auth::Permissions>>) {
        self.check_deliveries.set(
            perms
                .as_ref()
                .is_some_and(|p| p.has_sub_deny() || p.tracks_replies()),
        );
        *self.perms.borrow_mut() = perms.map(ClientPerms::new);
    }

    fn write(&self, b: &[u8]) {
        self.out.borrow_mut().extend_from_slice(b);
    }
    fn write_err(&self, text: &str) {
        client::write_err(self.out.borrow_mut().tail(text.len() + 9), text);
    }
    /// Wakes the writer if it waits; returns whether it did.
    fn wake_writer(&self) -> bool {
        self.writer.take().map(Waker::wake).is_some()
    }
    fn count_in(&self, bytes: usize) {
        let mut k = self.counts.get();
        k.in_msgs += 1;
        k.in_bytes += bytes as u64;
        self.counts.set(k);
    }

    /// Its socket took some output: wakes the producers waiting for its queue to drain, and
    /// returns whether there were any.
    fn wake_stalled(&self) -> bool {
        self.soft_off.set(false);
        self.acked_at.set(None);
        let mut w = self.stall_waiters.borrow_mut();
        let woke = !w.is_empty();
        w.drain(..).for_each(Waker::wake);
        woke
    }

    /// Whether producers may soft-stall for this client: not while it has stopped reading,
    /// which its peer acknowledging more ends early.
    fn soft_stallable(&self) -> bool {
        if self.soft_off.get() && self.unacked_for().is_zero() {
            self.soft_off.set(false);
        }
        !self.soft_off.get()
    }

    /// How long the peer has acknowledged nothing more, as far as these looks (one system
    /// call each) tell: zero when it has since the last one.
    fn unacked_for(&self) -> Duration {
        let (acked, now) = (self.probe.bytes_acked(), Instant::now());
        match self.acked_at.get() {
            Some((before, since)) if acked.is_none_or(|a| a == before) => now - since,
            _ => {
                self.acked_at.set(acked.map(|a| (a, now)));
                Duration::ZERO
            }
        }
    }

    /// Output queued and not yet taken by the socket.
    fn pending(&self) -> usize {
        self.out.borrow().len() + self.in_flight.get()
    }

    fn count_out(&self, bytes: usize) {
        let mut k = self.counts.get();
        k.out_msgs += 1;
        k.out_bytes += bytes as u64;
        self.counts.set(k);
    }

    /// The `/connz` view of this connection.
    fn info(&self, subs: bool, accounts: &Accounts) -> ConnInfo {
        let now = Instant::now();
        let wall = SystemTime::now();
        let counts = self.counts.get();
        let o = self.opts.borrow();
        ConnInfo {
            cid: self.cid,
            addr: self.peer,
            start: self.start,
            last_activity: wall - now.saturating_duration_since(self.last_activity.get()),
            stop: self.closed.get().then_some(wall),
            reason: self.reason.get(),
            rtt: self.rtt.get(),
            pending_bytes: self.pending() as u64,
            in_msgs: counts.in_msgs,
            out_msgs: counts.out_msgs,
            in_bytes: counts.in_bytes,
            out_bytes: counts.out_bytes,
            subs: if subs {
                self.subs
                    .borrow()
                    .values()
                    .map(|s| SubInfo {
                        subject: String::from_utf8_lossy(&s.0.subject).into_owned(),
                        queue: s
                            .0
                            .queue
                            .as_ref()
                            .map(|q| String::from_utf8_lossy(q).into_owned()),
                        sid: String::from_utf8_lossy(&s.0.sid).into_owned(),
                        msgs: s.0.delivered.get(),
                        max: s.0.max.get(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            account: accounts.get(self.account.get()).name.clone(),
            user: self.user.borrow().clone(),
            name: o.name.clone(),
            lang: o.lang.clone(),
            version: o.version.clone(),
        }
    }

    /// Resolves when the ping timer is woken (close, or CONNECT re-arming it).
    async fn wait_event(&self) {
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if self.closed.get() || armed {
                Poll::Ready(())
            } else {
                armed = true;
                self.ping_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A subscription; compared by identity. `repr(C)`: what a delivery reads comes first, in
/// one cache line (see [`Client`]).
#[repr(C)]
struct Subscription {
    client: Rc<Client>,
    max: Cell<u64>,
    delivered: Cell<u64>,
    sid: Bytes,
    account: AccId,
    subject: Bytes,
    queue: Option<Bytes>,
}

#[derive(Clone)]
struct SubRef(Rc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// Another shard's interest, with its queue weight (1 for plain interest). The queue name is
/// the gossiped `Bytes`, so naming the group in a forward costs a refcount, not a copy.
/// Two refs are equal when they name the same interest, whatever their weights: the index
/// holds one entry per (shard, subject, queue, routed), and a weight change takes the old
/// entry out by that identity ([`Sublist::take`]) and learns its weight from it.
#[derive(Clone)]
struct RemoteRef {
    shard: usize,
    weight: u32,
    queue: Option<Bytes>,
    /// Interest the owning shard holds for its routes (other servers' members), which a
    /// queue group uses only when no member on this server is left.
    routed: bool,
}

impl PartialEq for RemoteRef {
    fn eq(&self, o: &Self) -> bool {
        self.shard == o.shard && self.routed == o.routed && self.queue == o.queue
    }
}

/// A local (account, subject, queue) interest.
type InterestKey = (AccId, Bytes, Option<Bytes>);
/// Another shard's (shard, account, subject, queue, routed) interest.
type RemoteKey = (usize, AccId, Bytes, Option<Bytes>, bool);

/// A service request waiting for its response (nats-server's response service import): a
/// response published in the exporting account to `_R_.<shard prefix>.<token>` goes to
/// `reply` in account `to`.
struct PendingResponse {
    to: AccId,
    reply: Bytes,
    /// More than one response may come (`stream` and `chunked` exports).
    many: bool,
    deadline: Instant,
}

/// One shard of the server.
struct Shard {
    g: Arc<Global>,
    /// The current options (replaced by a reload).
    opts: RefCell<Arc<Options>>,
    /// Compiled from `opts.auth`; `None` when clients need no credentials.
    auth: RefCell<Option<Arc<Auth>>>,
    ctx: Rc<ShardCtx<MeshMsg>>,
    id: usize,
    /// The number of shards, this one included.
    shards: usize,
    mesh: Rc<Mesh<MeshMsg>>,
    /// Per account (indexed by [`AccId`]): the local subscriptions and the other shards'
    /// interest.
    subs: RefCell<Vec<Sublist<SubRef>>>,
    remote: RefCell<Vec<Sublist<RemoteRef>>>,
    /// `_R_.<random>.`: the reply prefix of the service requests this shard maps, so that
    /// the responses come back to it.
    resp_prefix: Bytes,
    /// Per account, whether it exports a service (then a message under `resp_prefix` may be
    /// a response to map back). Kept here, beside the message path's other state, rather
    /// than read through `g.accounts` per message: that walk missed the cache often enough
    /// to cost a forwarded delivery a fifth of its time.
    exports: Box<[bool]>,
    responses: RefCell<HashMap<Bytes, PendingResponse>>,
    /// The mapped replies in the order they were made, to forget unanswered ones.
    resp_expiry: RefCell<VecDeque<(Instant, Bytes)>>,
    interest: RefCell<HashMap<InterestKey, u32>>,
    /// The same for the interest of this shard's routes (shard 0 only).
    routed_interest: RefCell<HashMap<InterestKey, u32>>,
    outbox: RefCell<Vec<Outbox>>,
    /// The last `Sync` sequence issued (to any peer).
    sync_seq: Cell<u64>,
    /// Per peer: the last `Sync` sent to it, the last one it acknowledged, and whether
    /// anything has been sent to it since that last `Sync`.
    issued: RefCell<Vec<u64>>,
    acked: RefCell<Vec<u64>>,
    unsynced: RefCell<Vec<bool>>,
    barrier_waiters: RefCell<Vec<Waker>>,
    dirty: RefCell<Vec<Rc<Client>>>,
    /// Clients whose queued output passed a stall level (`STALL_SOFT`, or 3/4 of
    /// `max_pending`) in this batch: the producer (a reader, or the mesh loop) waits a little
    /// for them before taking more input.
    stalled: RefCell<Vec<Rc<Client>>>,
    /// Counts the batches that took their `stalled`, so a client is listed once per batch.
    stall_batch: Cell<u64>,
    out_limits: OutLimits,
    /// This batch fed some destination whose queue is short (a subscriber at or under
    /// `STALL_SOFT`, a route, or another shard's batch marked `Hungry`): pausing its
    /// producer would leave that destination idle, so the soft stall is off for the batch.
    hungry: Cell<bool>,
    clients: RefCell<HashMap<u64, Rc<Client>>>,
    /// Per-peer scratch for one publish: plain interest, and the queue groups it must serve.
    scratch: RefCell<Vec<(bool, Queues)>>,
    rng: Cell<u64>,
    /// Message counts of the clients that have closed (open ones keep their own, so the
    /// message path updates one connection's counters only).
    closed_counts: Cell<Counts>,
    slow_consumers: Cell<u64>,
    /// The last closed connections, oldest first, for `/connz?state=closed`.
    closed: RefCell<VecDeque<ConnInfo>>,
    /// Shard 0 of a clustered server: the routes.
    cluster: Option<Rc<routes::Cluster>>,
}

/// Runs one shard until shutdown.
pub async fn shard_main(
    ctx: Rc<ShardCtx<MeshMsg>>,
    g: Arc<Global>,
    inbox: Option<InboxReceiver<Admin>>,
) {
    let n = ctx.count();
    let route_listener = if ctx.id() == 0 {
        g.route_listener.lock().ok().and_then(|mut l| l.take())
    } else {
        None
    };
    let cluster = route_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|addr| routes::Cluster::new(&g, addr));
    let shard = Rc::new(Shard {
        g: g.clone(),
        opts: RefCell::new(Arc::new(g.opts.clone())),
        auth: RefCell::new(compile_auth(&g.opts, &g.accounts)),
        ctx: ctx.clone(),
        id: ctx.id(),
        shards: n,
        mesh: ctx.mesh().clone(),
        subs: RefCell::new((0..g.accounts.len()).map(|_| Sublist::new()).collect()),
        remote: RefCell::new((0..g.accounts.len()).map(|_| Sublist::new()).collect()),
        exports: g.accounts.list.iter().map(|a| a.exports_services).collect(),
        resp_prefix: Bytes::from(format!(
            "_R_.{}.",
            crate::auth::nonce().get(..6).unwrap_or("0")
        )),
        responses: RefCell::new(HashMap::new()),
        resp_expiry: RefCell::new(VecDeque::new()),
        interest: RefCell::new(HashMap::new()),
        routed_interest: RefCell::new(HashMap::new()),
        outbox: RefCell::new((0..n).map(|_| Outbox::default()).collect()),
        sync_seq: Cell::new(0),
        issued: RefCell::new(vec![0; n]),
        acked: RefCell::new(vec![0; n]),
        unsynced: RefCell::new(vec![false; n]),
        barrier_waiters: RefCell::new(Vec::new()),
        dirty: RefCell::new(Vec::new()),
        stalled: RefCell::new(Vec::new()),
        stall_batch: Cell::new(1),
        out_limits: OutLimits::new(&g.opts),
        hungry: Cell::new(false),
        clients: RefCell::new(HashMap::new()),
        scratch: RefCell::new((0..n).map(|_| (false, Queues::new())).collect()),
        rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ (ctx.id() as u64 + 1)),
        closed_counts: Cell::new(Counts::default()),
        slow_consumers: Cell::new(0),
        closed: RefCell::new(VecDeque::new()),
        cluster,
    });
    if let Some(l) = route_listener {
        shard.start_cluster(l);
    }
    // Responses to the service requests this shard maps come back through interest in
    // its reply prefix, in every account that exports a service.
    let mut wildcard = BytesMut::from(&shard.resp_prefix[..]);
    wildcard.extend_from_slice(b">");
    let wildcard = wildcard.freeze();
    for (id, _) in shard.exports.iter().enumerate().filter(|(_, &e)| e) {
        shard.interest_changed(id as AccId, &wildcard, &None, true);
    }
    for rx in ctx.take_receivers() {
        rt::spawn(mesh_loop(shard.clone(), rx));
    }
    if let Some(inbox) = inbox {
        rt::spawn(admin_loop(shard.clone(), inbox));
    }
    {
        // Accepting ends at shutdown, or earlier in lame duck mode.
        let (ctx, shard) = (ctx.clone(), shard.clone());
        rt::spawn(async move {
            while let Some(conn) = ctx.accept().await {
                rt::spawn(client_main(shard.clone(), conn));
            }
        });
    }
    // glommio polls a shard's main future on every turn of its loop, so the main future
    // waits on a flag (a cheap poll) and a task waits on the stop socket.
    let stopped = Rc::new(Cell::new(false));
    let main_waker: Rc<Cell<Option<Waker>>> = Rc::new(Cell::new(None));
    {
        let (ctx, stopped, main_waker) = (ctx.clone(), stopped.clone(), main_waker.clone());
        rt::spawn(async move {
            ctx.stop_requested().await;
            stopped.set(true);
            if let Some(w) = main_waker.take() {
                w.wake();
            }
        });
    }
    std::future::poll_fn(|cx| {
        if stopped.get() {
            return Poll::Ready(());
        }
        let w = main_waker.take();
        main_waker.set(Some(w.unwrap_or_else(|| cx.waker().clone())));
        Poll::Pending
    })
    .await;
    ctx.stop_accepting();
    // Shutting down: close every client, letting writers flush what is queued.
    let clients: Vec<Rc<Client>> = shard.clients.borrow().values().cloned().collect();
    for c in &clients {
        shard.close_client(c, CloseReason::ServerShutdown);
    }
    let deadline = Instant::now() + SHUTDOWN_FLUSH;
    while clients.iter().any(|c| !c.writer_done.get()) && Instant::now() < deadline {
        rt::sleep(Duration::from_millis(5)).await;
    }
}

/// The authentication setup for `o` (already validated when the options were built).
fn compile_auth(o: &Options, accounts: &Accounts) -> Option<Arc<Auth>> {
    Auth::new(&o.auth, accounts).ok().flatten().map(Arc::new)
}

/// Closes a connection that has not authenticated within the authorization timeout.
async fn auth_timer(shard: Rc<Shard>, c: Rc<Client>, timeout: Duration) {
    rt::sleep(timeout).await;
    if !c.authed.get() && !c.closed.get() {
        tracing::error!("{} - cid:{} - Authentication Timeout", c.addr, c.cid);
        c.write_err("Authentication Timeout");
        shard.close_client(&c, CloseReason::AuthenticationTimeout);
    }
}

/// Closes a connection whose TLS handshake has not completed in time. nats-server (2.9 and
/// 2.15 alike) closes it without a word, since there is no session to send an error in.
async fn tls_timer(shard: Rc<Shard>, c: Rc<Client>, timeout: Duration) {
    rt::sleep(timeout).await;
    if c.handshaking() && !c.closed.get() {
        tracing::error!("{} - cid:{} - TLS handshake timeout", c.addr, c.cid);
        c.tls_failed.set(true);
        c.discard.set(true);
        shard.close_client(&c, CloseReason::TlsHandshakeError);
    }
}

/// Appends up to `max` bytes of a client's plaintext to `buf`: straight from the socket
/// into its spare room (not zeroed first), or through its TLS session ([`read_through`]),
/// after telling TLS from plaintext under `allow_non_tls`.
async fn read_plain(
    c: &Client,
    configs: Option<&crate::tls::ServerTls>,
    reader: &mut ConnReader,
    buf: &mut BytesMut,
    max: usize,
    cipher: &mut BytesMut,
) -> std::io::Result<usize> {
    let Some(tls) = c.session() else {
        if !cipher.is_empty() {
            // Plaintext read while telling TLS from plaintext (`allow_non_tls`).
            return Ok(take_buffered(cipher, buf, max));
        }
        return reader.read_into(buf, max).await;
    };
    if c.tls_undecided.get() {
        // A TLS client opens with a handshake record (type 22); a plaintext one with CONNECT.
        if reader.read_into(cipher, CIPHER_READ).await? == 0 {
            return Ok(0);
        }
        c.tls_undecided.set(false);
        if cipher[0] != 0x16 {
            c.tls_off.set(true);
            c.tls_hello.set(false);
            c.wake_writer();
            return Ok(take_buffered(cipher, buf, max));
        }
    }
    if let Some(configs) = configs.filter(|_| c.tls_hello.get()) {
        c.tls_hello.set(false);
        if !accept_hello(tls, configs, reader, cipher).await? {
            return Ok(0);
        }
        // The session has its answer to the hello (ServerHello and the rest) to send, and
        // the writer may now seal what it held back.
        c.wake_writer();
    }
    read_through(tls, reader, buf, max, cipher, || {
        c.wake_writer();
    })
    .await
}

/// A server-side TLS session with `cfg`, its output unbounded: the protocol's output is
/// already bounded by `max_pending`, and rustls' own 64 KiB cap would make the writer's
/// hand-off partial.
fn server_session(cfg: &Arc<rustls::ServerConfig>) -> Result<rustls::Connection, rustls::Error> {
    let mut t = rustls::ServerConnection::new(cfg.clone())?;
    t.set_buffer_limit(None);
    Ok(t.into())
}

/// Reads the client's ClientHello and gives `tls` a session with the configuration that
/// suits the cipher suites it offers (see [`crate::tls::ServerTls`]). The hello stays in
/// `cipher` until rustls' `Acceptor` has taken it whole; if the acceptor refuses it, it is
/// left there for the session `tls` already holds, whose error and alert are the usual
/// ones. Returns `false` at the end of the stream.
async fn accept_hello(
    tls: &RefCell<rustls::Connection>,
    configs: &crate::tls::ServerTls,
    reader: &mut ConnReader,
    cipher: &mut BytesMut,
) -> std::io::Result<bool> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        if fed == cipher.len() && reader.read_into(cipher, CIPHER_READ).await? == 0 {
            return Ok(false);
        }
        let mut rest = &cipher[fed..];
        // A hello the acceptor cannot hold (over 64 KiB): the session decides.
        let Ok(n) = acceptor.read_tls(&mut rest) else {
            return Ok(true);
        };
        fed += n;
        match acceptor.accept() {
            Ok(None) if n > 0 => continue,
            Ok(Some(hello)) => {
                let cfg = configs.for_client(hello.client_hello().cipher_suites());
                if let Ok(mut t) = hello.into_connection(cfg.clone()) {
                    t.set_buffer_limit(None);
                    *tls.borrow_mut() = t.into();
                    cipher.advance(fed);
                }
                return Ok(true);
            }
            // Refused (or a hello larger than the acceptor takes): the session decides.
            Ok(None) | Err(_) => return Ok(true),
        }
    }
}

/// Most ciphertext one socket read of a TLS connection takes: a whole record of the
/// largest size, with its header and tag.
const CIPHER_READ: usize = 16 * 1024 + 512;

/// Appends up to `max` bytes of plaintext read through the TLS session `tls` (a client's or
/// a route's) to `buf`: plaintext the session already holds comes first; then ciphertext
/// kept from an earlier read (`cipher`, fed to the session no faster than it takes it, so
/// its plaintext buffer cannot overflow); then a new socket read. `wake_writer` runs when
/// the session has records to send (handshake, alerts). `Ok(0)` is the end of the stream.
///
/// Nothing is zeroed on the way: the socket reads into the spare room of `cipher`, what the
/// session took is dropped from its front without moving the rest, and the plaintext is
/// copied out of the session's own buffer (`fill_buf`). A zeroed room for the plaintext
/// (`read` wants an initialised `&mut [u8]`) and one for each socket read cost a 16 KiB
/// message over TLS 50k of its 267k instructions.
pub(crate) async fn read_through(
    tls: &RefCell<rustls::Connection>,
    reader: &mut ConnReader,
    buf: &mut BytesMut,
    max: usize,
    cipher: &mut BytesMut,
    wake_writer: impl Fn(),
) -> std::io::Result<usize> {
    use std::io::{BufRead, ErrorKind};
    // Room for the whole read up front, as a plain read takes it, rather than growing `buf`
    // chunk by chunk.
    buf.reserve(max);
    loop {
        {
            let mut t = tls.borrow_mut();
            let mut plain = t.reader();
            match plain.fill_buf() {
                Ok(chunk) => {
                    let n = chunk.len().min(max);
                    buf.extend_from_slice(&chunk[..n]);
                    plain.consume(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if cipher.is_empty() && reader.read_into(cipher, CIPHER_READ).await? == 0 {
            return Ok(0);
        }
        let mut t = tls.borrow_mut();
        let mut rest = &cipher[..];
        let fed = t.read_tls(&mut rest);
        let used = cipher.len() - rest.len();
        cipher.advance(used);
        fed?;
        if let Err(e) = t.process_new_packets() {
            drop(t);
            // Let the alert go out before the close.
            wake_writer();
            return Err(std::io::Error::new(ErrorKind::InvalidData, e));
        }
        let wants_write = t.wants_write();
        drop(t);
        if wants_write {
            wake_writer();
        }
    }
}

/// Turns `data` (plaintext) into TLS records, in place, with whatever else the session has
/// to send (handshake records, alerts). The session's buffer must be unlimited
/// (`set_buffer_limit(None)`), so the hand-off cannot fall short.
pub(crate) fn seal(t: &mut rustls::Connection, data: &mut BytesMut) -> std::io::Result<()> {
    use bytes::BufMut;
    use std::io::Write;
    if !data.is_empty() {
        t.writer().write_all(data)?;
        data.clear();
    }
    while t.wants_write() {
        t.write_tls(&mut (&mut *data).writer())?;
    }
    Ok(())
}

/// Most blocks one send gathers: 1 MiB of output at once when a backlog allows it.
const GATHER: usize = 16;

/// What a connection's writer shares with the completion hooks of its sends.
trait Outlet: 'static {
    /// Bytes taken from the connection's queue and not yet sent.
    fn in_flight(&self) -> &Cell<usize>;
    /// Tells the writer that its send fell short or failed, so it must look at it; returns
    /// whether that woke a task.
    fn note_send(&self) -> bool;
    /// A send went out whole: producers waiting for this connection to drain may go on.
    /// Returns whether that woke a task.
    fn sent(&self) -> bool {
        false
    }
}

impl Outlet for Client {
    fn in_flight(&self) -> &Cell<usize> {
        &self.in_flight
    }
    fn note_send(&self) -> bool {
        self.send_note.set(true);
        self.wake_writer()
    }
    fn sent(&self) -> bool {
        self.wake_stalled()
    }
}

/// A connection's output between its queue and its socket: the blocks taken from the
/// queue and not yet sent, and the send in the ring, if any. One send is out at a time, so
/// bytes leave in order. A send that the socket takes whole (the usual case) gives its
/// blocks back to the pool and counts them off `in_flight` from its completion hook,
/// without waking the writer; the writer only looks at it again before its next send.
struct Outflow {
    /// Taken from the queue, not yet handed to a send (more than one send gathers, or
    /// what a short send left).
    batch: VecDeque<BytesMut>,
    /// Bytes of the front block of `batch` already sent.
    done: usize,
    /// The send in the ring, the byte of its first block it started from, and how many
    /// blocks it has.
    sending: Option<(Sending<BytesMut>, usize, usize)>,
    /// The (empty) list the next send takes its blocks in.
    spare: Vec<BytesMut>,
}

impl Outflow {
    fn new() -> Self {
        Outflow {
            batch: VecDeque::new(),
            done: 0,
            sending: None,
            spare: Vec::with_capacity(GATHER),
        }
    }

    /// Whether a send is out.
    fn busy(&self) -> bool {
        self.sending.is_some()
    }

    /// Blocks in the batch and in the send that is out.
    fn blocks(&self) -> usize {
        self.batch.len() + self.sending.as_ref().map_or(0, |s| s.2)
    }

    /// Waits for the send that is out, if any. What it did not send goes back to the front
    /// of the batch, counted off `in_flight` by what it did.
    async fn settle(&mut self, in_flight: &Cell<usize>) -> std::io::Result<()> {
        let Some((send, skip, _)) = self.sending.take() else {
            return Ok(());
        };
        let (wrote, mut back) = send.await;
        let wrote = match wrote {
            Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
            r => r,
        }?;
        if !back.is_empty() {
            // The hook leaves the blocks of a send that fell short.
            back.drain(..).rev().for_each(|b| self.batch.push_front(b));
            in_flight.set(in_flight.get().saturating_sub(wrote));
            self.done = skip + wrote;
            drop_written(&mut self.batch, &mut self.done);
        }
        self.spare = back;
        Ok(())
    }

    /// Hands up to [`GATHER`] blocks of the batch to a send on `w`. Its hook gives the
    /// blocks of a whole send back to the pool and counts them off `owner`'s `in_flight`;
    /// a send that fell short or failed is left to the writer, through `note_send`.
    fn start(&mut self, w: &ConnWriter, owner: &Rc<impl Outlet>) {
        drop_written(&mut self.batch, &mut self.done);
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len().min(GATHER);
        self.spare.extend(self.batch.drain(..n));
        let skip = std::mem::take(&mut self.done);
        let owner = owner.clone();
        let send = w.send(std::mem::take(&mut self.spare), skip, move |r, blocks| {
            let total = blocks.iter().map(BytesMut::len).sum::<usize>() - skip;
            match r {
                Ok(n) if *n == total && total > 0 => {
                    let in_flight = owner.in_flight();
                    in_flight.set(in_flight.get().saturating_sub(total));
                    blocks.drain(..).for_each(client::give_block);
                    owner.sent()
                }
                _ => owner.note_send(),
            }
        });
        self.sending = Some((send, skip, n));
    }

    /// Gives every block back to the pool; a send still out is cancelled.
    fn clear(&mut self) {
        self.sending = None;
        self.batch.drain(..).for_each(client::give_block);
    }
}

/// Gives back the front blocks that `done` bytes cover entirely (and empty ones), leaving
/// in `done` how much of the new front block is written.
fn drop_written(batch: &mut VecDeque<BytesMut>, done: &mut usize) {
    while batch.front().is_some_and(|b| b.len() <= *done) {
        if let Some(b) = batch.pop_front() {
            *done -= b.len();
            client::give_block(b);
        }
    }
}

/// Seals every plaintext block of `batch` into TLS records in place; with nothing queued,
/// a block takes whatever records rustls has to send (the handshake's).
fn seal_blocks(t: &mut rustls::Connection, batch: &mut VecDeque<BytesMut>) -> std::io::Result<()> {
    if batch.is_empty() && t.wants_write() {
        batch.push_back(client::take_block());
    }
    batch.iter_mut().try_for_each(|b| seal(t, b))
}

/// Moves up to `max` bytes from the front of `buffered` to the end of `buf`.
fn take_buffered(buffered: &mut BytesMut, buf: &mut BytesMut, max: usize) -> usize {
    let n = buffered.len().min(max);
    buf.extend_from_slice(&buffered[..n]);
    buffered.advance(n);
    n
}

/// Applies the outcome of an authentication check to `c`.
fn finish_auth(
    shard: &Shard,
    c: &Client,
    r: Result<Grant, crate::auth::AuthError>,
) -> Result<(), CloseReason> {
    match r {
        Ok(grant) => {
            c.authed.set(true);
            c.account.set(grant.account);
            *c.user.borrow_mut() = grant.user;
            c.set_perms(grant.perms);
            shard.client_connected(c);
            Ok(())
        }
        Err(e) => {
            tracing::error!("{} - cid:{} - {e}", c.addr, c.cid);
            c.write_err("Authorization Violation");
            Err(CloseReason::AuthenticationViolation)
        }
    }
}

/// Serves requests from outside the shards: reports, reloads, lame duck.
async fn admin_loop(shard: Rc<Shard>, mut inbox: InboxReceiver<Admin>) {
    while let Some(req) = inbox.recv().await {
        match req {
            Admin::Report { conns, reply } => {
                let _ = reply.send(shard.report(conns));
            }
            Admin::Reload(o) => shard.reload(o),
            Admin::LameDuck { grace, every } => {
                rt::spawn(lame_duck(shard.clone(), grace, every));
            }
        }
    }
}

/// This shard's part of lame duck mode (nats-server's `lameDuckMode`): stop accepting, send
/// every client an INFO with `ldm` so it can move elsewhere, wait out the grace period, then
/// close the clients that are left one at a time.
async fn lame_duck(shard: Rc<Shard>, grace: Duration, every: Duration) {
    shard.ctx.stop_accepting();
    let clients: Vec<Rc<Client>> = shard.clients.borrow().values().cloned().collect();
    let o = shard.opts.borrow().clone();
    for c in &clients {
        shard.async_info(c, &o);
    }
    shard.flush();
    rt::sleep(grace).await;
    let clients: Vec<Rc<Client>> = shard.clients.borrow().values().cloned().collect();
    for c in clients {
        shard.close_client(&c, CloseReason::ServerShutdown);
        shard.flush();
        if !every.is_zero() {
            rt::sleep(every).await;
        }
    }
}

async fn mesh_loop(shard: Rc<Shard>, rx: MeshReceiver<MeshMsg>) {
    let from = rx.from();
    let no_frame = Bytes::new();
    while let Some(mut batch) = rx.recv().await {
        let mut ack = None;
        let mut frame = &no_frame;
        let mut peer_hungry = false;
        let mut queues = &batch.queues[..];
        for op in &batch.ops {
            match op {
                ShardOp::Interest(i) => shard.apply_remote_interest(
                    (
                        from,
                        i.account,
                        i.subject.clone(),
                        i.queue.clone(),
                        i.routed,
                    ),
                    i.weight,
                ),
                ShardOp::Sync(seq) => ack = Some(*seq),
                ShardOp::ConnectUrls => shard.connect_urls_changed(),
                ShardOp::Hungry => peer_hungry = true,
                ShardOp::Ack(seq) => {
                    let mut acked = shard.acked.borrow_mut();
                    acked[from] = acked[from].max(*seq);
                    for w in shard.barrier_waiters.borrow_mut().drain(..) {
                        w.wake();
                    }
                }
                ShardOp::Frame(f) => frame = f,
                ShardOp::Msg {
                    account,
                    parts,
                    queues: n,
                    to_routes,
                } => {
                    let (now, later) = queues.split_at(queues.len().min(*n as usize));
                    queues = later;
                    shard.deliver_forwarded(
                        *account,
                        &PubMsg::new(frame, parts.clone()),
                        now,
                        *to_routes,
                    )
                }
            }
        }
        // The batch, the read chunks and the queue names it holds were allocated by the
        // sender: freeing them there keeps this shard off the lock of the sender's malloc
        // arena. The rest of the batch is dropped here, where it is in the cache, not by a
        // sender that may be busy.
        batch.ops.retain(|op| matches!(op, ShardOp::Frame(_)));
        rx.give_back(batch);
        // Not `send_to`: an Ack needs no Sync of its own, or two shards would sync forever.
        if let Some(seq) = ack {
            shard.outbox.borrow_mut()[from]
                .batch
                .ops
                .push(ShardOp::Ack(seq));
        }
        shard.flush();
        // After the flush, so that the mark does not travel on to this shard's own batches.
        if peer_hungry {
            shard.hungry.set(true);
        }
        shard.wait_for_stalled().await;
    }
}

impl Shard {
    fn report(&self, conns: bool) -> ShardReport {
        let clients = self.clients.borrow();
        let accounts: Vec<sublist::SublistStats> =
            self.subs.borrow().iter().map(Sublist::stats).collect();
        let counts = clients
            .values()
            .fold(self.closed_counts.get(), |t, c| t.plus(c.counts.get()));
        ShardReport {
            shard: self.id,
            counts,
            slow_consumers: self.slow_consumers.get(),
            connections: clients.len(),
            sublist: accounts.iter().cloned().fold(
                sublist::SublistStats::default(),
                sublist::SublistStats::plus,
            ),
            accounts,
            open: if conns {
                clients
                    .values()
                    .map(|c| c.info(true, &self.g.accounts))
                    .collect()
            } else {
                Vec::new()
            },
            closed: if conns {
                self.closed.borrow().iter().cloned().collect()
            } else {
                Vec::new()
            },
            cluster: self.cluster.as_ref().map(|cl| cl.report()),
        }
    }

    /// Takes new options. Readers pick up the new limits at their next read, ping timers at
    /// their next tick; a changed `max_payload` is announced to the clients with an INFO, as
    /// nats-server does.
    fn reload(&self, o: Arc<Options>) {
        *self.auth.borrow_mut() = compile_auth(&o, &self.g.accounts);
        self.recheck_permissions();
        let old = self.opts.replace(o.clone());
        if old.max_payload != o.max_payload {
            let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
            for c in &clients {
                self.async_info(c, &o);
            }
            self.flush();
        }
    }

    /// After a reload, as nats-server does: a connected user that no longer exists is
    /// closed (silently), the others take their new permissions, and subscriptions those no longer
    /// allow are removed with an `-ERR` naming them.
    fn recheck_permissions(&self) {
        let auth = self.auth.borrow().clone();
        let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
        for c in clients.iter().filter(|c| c.authed.get() && !c.closed.get()) {
            let perms = match &auth {
                None => None,
                Some(a) => match a.identity(&c.opts.borrow()) {
                    None => None,
                    Some(id) => match a.lookup(&id) {
                        Some(g) if g.account == c.account.get() => g.perms,
                        _ => {
                            tracing::error!(
                                "{} - cid:{} - user {id:?} removed by a reload",
                                c.addr,
                                c.cid
                            );
                            // nats-server closes it without an -ERR.
                            c.discard.set(true);
                            self.close_client(c, CloseReason::AuthenticationViolation);
                            continue;
                        }
                    },
                },
            };
            c.set_perms(perms.clone());
            let Some(p) = perms else { continue };
            let denied: Vec<(Bytes, Bytes)> = c
                .subs
                .borrow()
                .iter()
                .filter(|(_, s)| !p.can_subscribe(&s.0.subject, s.0.queue.as_deref()))
                .map(|(sid, s)| (sid.clone(), s.0.subject.clone()))
                .collect();
            for (sid, subject) in denied {
                self.remove_sub(c, &sid);
                c.write_err(&format!(
                    "Permissions Violation for Subscription to \"{}\" (sid \"{}\")",
                    String::from_utf8_lossy(&subject),
                    String::from_utf8_lossy(&sid)
                ));
                self.mark_dirty(c);
            }
        }
        self.flush();
    }

    /// The cluster's client URLs changed: every client that takes async INFO gets one.
    fn connect_urls_changed(&self) {
        let o = self.opts.borrow().clone();
        let clients: Vec<Rc<Client>> = self.clients.borrow().values().cloned().collect();
        for c in clients.iter().filter(|c| c.connected.get()) {
            self.async_info(c, &o);
        }
        self.flush();
    }

    /// Sends `c` a fresh INFO, if it said (CONNECT `protocol: 1`) that it understands INFO
    /// after the first one, as nats-server does.
    fn async_info(&self, c: &Rc<Client>, o: &Options) {
        if c.opts.borrow().protocol < 1 {
            return;
        }
        let ip = c.peer.map(|p| p.ip().to_string()).unwrap_or_default();
        c.write(&self.g.info_line(o, c.cid, &ip, c.nonce.as_deref()));
        self.mark_dirty(c);
    }

    fn next_rand(&self, bound: usize) -> usize {
        // xorshift64*: queue member selection only needs to be cheap and well spread.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % bound.max(1)
    }

    /// Pushes each peer's pending batch and wakes the writers of touched clients.
    fn flush(&self) {
        // The list goes back afterwards, so its room is not allocated again every batch.
        let mut dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for c in dirty.drain(..) {
            c.dirty.set(false);
            // A subscriber this batch fed that still has a short queue makes it `hungry`.
            if c.fed.replace(false) && c.pending() <= STALL_SOFT {
                self.hungry.set(true);
            }
            c.wake_writer();
        }
        {
            let mut slot = self.dirty.borrow_mut();
            if slot.is_empty() {
                *slot = dirty;
            }
        }
        {
            let mut outbox = self.outbox.borrow_mut();
            for (peer, out) in outbox.iter_mut().enumerate() {
                while let Some(done) = self.mesh.take_back(peer) {
                    out.spare.reuse(done);
                }
                if !out.batch.ops.is_empty() {
                    if self.hungry.get() {
                        out.batch.ops.push(ShardOp::Hungry);
                    }
                    let mut next = std::mem::take(&mut out.spare);
                    // The next batch is likely as large as this one: room for it at once
                    // when the peer has not given a spare back yet, rather than growing a
                    // new list from nothing ten times over (copying it each time).
                    next.ops.reserve(out.batch.ops.len());
                    self.mesh
                        .send(peer, std::mem::replace(&mut out.batch, next));
                    out.frame = (0, 0);
                }
            }
        }
    }

    #[inline]
    fn mark_dirty(&self, c: &Rc<Client>) {
        if !c.dirty.replace(true) {
            self.dirty.borrow_mut().push(c.clone());
        }
    }

    /// Producer stall, as nats-server does it: when a batch left some subscriber's queue over
    /// 3/4 of `max_pending`, wait (up to `STALL_MAX`) for its writer to drain it before taking
    /// more input, so a subscriber that reads slower than the publisher writes is slowed
    /// down to, not cut off. One that does not read at all still reaches `max_pending` and is
    /// dropped as a slow consumer. Before that, the soft stall waits for the batch's
    /// subscribers with queues over `STALL_SOFT`, unless it fed one with a shorter queue
    /// (`hungry`), until one of them is back under it: a subscriber slower than the others
    /// does not slow them down, as in nats-server. The wait ends on the stalled clients'
    /// sends.
    async fn wait_for_stalled(&self) {
        let hungry = self.hungry.replace(false);
        if self.stalled.borrow().is_empty() {
            return;
        }
        // This batch's stalled clients: other producers wait for those of their own batches.
        let stalled = std::mem::take(&mut *self.stalled.borrow_mut());
        self.stall_batch.set(self.stall_batch.get() + 1);
        self.flush();
        let hard = self.out_limits.hard_stall;
        // The soft stall waits while every subscriber it is for still has more than
        // `STALL_SOFT` queued: once one has less, pausing would leave it idle.
        let soft: Vec<&Rc<Client>> = match hungry {
            true => Vec::new(),
            false => stalled
                .iter()
                .filter(|c| c.pending() > STALL_SOFT && c.soft_stallable())
                .collect(),
        };
        let start = Instant::now();
        loop {
            let waited = start.elapsed();
            let open = |c: &Rc<Client>| !c.closed.get();
            let busy = stalled.iter().any(|c| open(c) && c.pending() > hard)
                || !soft.is_empty() && soft.iter().all(|c| open(c) && c.pending() > STALL_SOFT);
            if !busy {
                return;
            }
            if waited >= STALL_MAX {
                break;
            }
            // Woken by a stalled client's next send, or when the time is up.
            let mut armed = false;
            let woken = std::future::poll_fn(|cx| {
                if armed {
                    return Poll::Ready(());
                }
                armed = true;
                for c in &stalled {
                    let mut w = c.stall_waiters.borrow_mut();
                    if !w.iter().any(|w| w.will_wake(cx.waker())) {
                        w.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            });
            rt::race(rt::sleep(STALL_MAX - waited), woken).await;
        }
        // Timed out: is each subscriber it waited for still reading (more acknowledged than
        // at its last timeout), or not?
        for c in soft.iter().filter(|c| c.pending() > STALL_SOFT) {
            if c.unacked_for() >= STALL_STUCK {
                c.soft_off.set(true);
            }
        }
    }

    /// Queues `op` for `peer`, to go out with the next flush.
    fn send_to(&self, peer: usize, op: ShardOp) {
        self.outbox.borrow_mut()[peer].batch.ops.push(op);
        self.unsynced.borrow_mut()[peer] = true;
    }

    /// Queues message `m` for `peer`, after its frame unless the batch's last frame is it.
    /// The operation is built in place in the batch (through `send_to` it was moved twice and
    /// the batch borrowed again: ~60 instructions of a forwarded message's ~460 here).
    /// The queue groups it must serve are taken out of `queues`.
    #[inline(always)]
    fn forward(
        &self,
        peer: usize,
        account: AccId,
        m: &PubMsg,
        queues: &mut Queues,
        to_routes: bool,
    ) {
        let mut outbox = self.outbox.borrow_mut();
        let out = &mut outbox[peer];
        let frame = m.frame();
        let id = (frame.as_ptr() as usize, frame.len());
        if out.frame != id {
            out.batch.ops.push(ShardOp::Frame(frame.clone()));
            out.frame = id;
        }
        let n = queues.len() as u32;
        if n > 0 {
            out.batch.queues.extend(queues.drain(..));
        }
        out.batch.ops.push(ShardOp::Msg {
            account,
            parts: m.parts().clone(),
            queues: n,
            to_routes,
        });
        self.unsynced.borrow_mut()[peer] = true;
    }

    /// Waits until every peer shard has applied everything this shard sent it so far:
    /// interest changes and forwarded messages alike. A client's PONG waits for this, so a
    /// flushed SUB sees every later publish, and a flushed PUB is already in the subscribers'
    /// output, exactly as on a single nats-server.
    async fn interest_barrier(&self) {
        if self.shards == 1 {
            return;
        }
        {
            let mut unsynced = self.unsynced.borrow_mut();
            let mut issued = self.issued.borrow_mut();
            let mut outbox = self.outbox.borrow_mut();
            for peer in 0..self.shards {
                if unsynced[peer] {
                    let seq = self.sync_seq.get() + 1;
                    self.sync_seq.set(seq);
                    outbox[peer].batch.ops.push(ShardOp::Sync(seq));
                    issued[peer] = seq;
                    unsynced[peer] = false;
                }
            }
        }
        let target = self.issued.borrow().clone();
        self.flush();
        std::future::poll_fn(|cx| {
            let acked = self.acked.borrow();
            let behind = acked.iter().zip(&target).any(|(a, t)| a < t);
            if behind && !self.g.shutdown.load(Ordering::Relaxed) {
                self.barrier_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    fn gossip(&self, key: &InterestKey, weight: u32, routed: bool) {
        for peer in (0..self.shards).filter(|&p| p != self.id) {
            self.send_to(
                peer,
                ShardOp::Interest(Box::new(Interest {
                    account: key.0,
                    subject: key.1.clone(),
                    queue: key.2.clone(),
                    weight,
                    routed,
                })),
            );
        }
    }

    /// A local subscription came or went: the other shards and the routes hear of it.
    fn interest_changed(
        &self,
        account: AccId,
        subject: &Bytes,
        queue: &Option<Bytes>,
        added: bool,
    ) {
        let delta = if added { 1 } else { -1 };
        if self.cluster.is_some() {
            self.cluster_interest((account, subject.clone(), queue.clone()), delta);
        }
        self.interest_delta((account, subject.clone(), queue.clone()), delta, false);
    }

    /// This shard's interest in (account, subject, queue) changed by `delta` members (or
    /// queue weight): gossips it to the other shards. `routed`: the interest is its routes'
    /// (other servers'), counted apart from its clients'.
    fn interest_delta(&self, key: InterestKey, delta: i64, routed: bool) {
        if self.shards == 1 || delta == 0 {
            return;
        }
        let (before, weight) = {
            let mut m = if routed {
                self.routed_interest.borrow_mut()
            } else {
                self.interest.borrow_mut()
            };
            let w = m.entry(key.clone()).or_insert(0);
            let before = *w;
            *w = (i64::from(*w) + delta).max(0) as u32;
            let w = *w;
            if w == 0 {
                m.remove(&key);
            }
            (before, w)
        };
        // Plain interest is news only when it appears or disappears; queue weights always are.
        if key.2.is_some() || (before == 0) != (weight == 0) {
            self.gossip(&key, weight, routed);
        }
    }

    fn apply_remote_interest(&self, key: RemoteKey, w: u32) {
        let old = {
            let mut remote = self.remote.borrow_mut();
            let Some(sl) = remote.get_mut(key.1 as usize) else {
                return;
            };
            let entry = |weight| RemoteRef {
                shard: key.0,
                weight,
                queue: key.3.clone(),
                routed: key.4,
            };
            let old = sl.take(&key.2, key.3.as_deref(), &entry(0));
            if w > 0 {
                // An invalid subject is not stored, as before: it can match nothing.
                let _ = sl.insert(&key.2, key.3.as_deref(), entry(w));
            }
            old.map_or(0, |r| r.weight)
        };
        // The routes hear of the other shards' clients through the shard that owns them.
        if self.cluster.is_some() && !key.4 {
            let delta = i64::from(w) - i64::from(old);
            self.cluster_interest((key.1, key.2, key.3), delta);
        }
    }

    fn add_sub(&self, c: &Rc<Client>, subject: Bytes, queue: Option<Bytes>, sid: Bytes) {
        let account = c.account.get();
        let sub = SubRef(Rc::new(Subscription {
            client: c.clone(),
            account,
            sid: sid.clone(),
            subject: subject.clone(),
            queue: queue.clone(),
            max: Cell::new(0),
            delivered: Cell::new(0),
        }));
        if self.subs.borrow_mut()[account as usize]
            .insert(&subject, queue.as_deref(), sub.clone())
            .is_err()
        {
            return;
        }
        c.subs.borrow_mut().insert(sid, sub);
        self.interest_changed(account, &subject, &queue, true);
    }

    fn remove_sub(&self, c: &Client, sid: &[u8]) {
        let Some(sub) = c.subs.borrow_mut().remove(sid) else {
            return;
        };
        self.unindex(&sub);
    }

    fn unindex(&self, sub: &SubRef) {
        let s = &sub.0;
        self.subs.borrow_mut()[s.account as usize].remove(&s.subject, s.queue.as_deref(), sub);
        self.interest_changed(s.account, &s.subject, &s.queue, false);
    }

    fn close_client(&self, c: &Rc<Client>, reason: CloseReason) {
        if c.closed.replace(true) {
            return;
        }
        c.reason.set(Some(reason));
        self.closed_counts
            .set(self.closed_counts.get().plus(c.counts.get()));
        if matches!(
            reason,
            CloseReason::SlowConsumerPendingBytes | CloseReason::SlowConsumerWriteDeadline
        ) {
            self.slow_consumers.set(self.slow_consumers.get() + 1);
        }
        {
            let mut closed = self.closed.borrow_mut();
            if closed.len() >= MAX_CLOSED_CLIENTS {
                closed.pop_front();
            }
            closed.push_back(c.info(true, &self.g.accounts));
        }
        let subs: Vec<SubRef> = c.subs.borrow_mut().drain().map(|(_, s)| s).collect();
        for s in &subs {
            self.unindex(s);
        }
        if c.connected.replace(false) {
            self.client_disconnected(c, reason);
        }
        if self.clients.borrow_mut().remove(&c.cid).is_some() {
            self.g.connections.fetch_sub(1, Ordering::Relaxed);
        }
        c.wake_writer();
        if let Some(w) = c.ping_waker.take() {
            w.wake();
        }
    }

    /// Appends one delivery to a subscriber. Returns whether it was delivered. Inlined into
    /// the loops over subscribers: a fan-out delivery's call cost a sixth of its instructions.
    #[inline(always)]
    fn deliver(&self, sub: &SubRef, m: &client::Outgoing, publisher: u64) -> bool {
        let (subject, reply) = (m.subject, m.reply);
        let s = &sub.0;
        let c = &s.client;
        if c.closed.get() || (publisher == c.cid && !c.echo.get()) {
            return false;
        }
        let max = s.max.get();
        if max > 0 && s.delivered.get() >= max {
            return false;
        }
        if c.check_deliveries.get() {
            if let Some(p) = c.perms.borrow().as_ref() {
                if p.perms.deny_delivery(subject) {
                    return false;
                }
                if let Some(r) = reply {
                    p.track_reply(r, Instant::now());
                }
            }
        }
        s.delivered.set(s.delivered.get() + 1);
        if crate::log::trace_on() {
            tracing::trace!(
                "{} - cid:{} - ->> [MSG {} {} {}]",
                c.addr,
                c.cid,
                String::from_utf8_lossy(subject),
                String::from_utf8_lossy(&s.sid),
                m.size_for(false)
            );
        }
        let headers = c.headers.get();
        // `Client::pending` after the write, from the borrow that wrote it. (The same as a
        // `Client` method cost a fan-out delivery 3 more instructions under callgrind.)
        let queued = {
            let mut out = c.out.borrow_mut();
            m.write(&mut out, &s.sid, headers);
            out.len()
        };
        let pending = queued + c.in_flight.get();
        c.count_out(m.size_for(headers));
        let OutLimits {
            max_pending,
            stall_at,
            ..
        } = self.out_limits;
        if pending as u64 > max_pending {
            tracing::info!(
                "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
                c.addr,
                c.cid,
                max_pending
            );
            c.discard.set(true);
            self.close_client(c, CloseReason::SlowConsumerPendingBytes);
            return true;
        }
        self.mark_dirty(c);
        c.fed.set(true);
        let batch = self.stall_batch.get();
        if pending > stall_at && c.stall_batch.replace(batch) != batch {
            self.stalled.borrow_mut().push(c.clone());
        }
        if max > 0 && s.delivered.get() >= max {
            self.remove_sub(c, &s.sid);
        }
        true
    }

    /// Picks one deliverable member of a local queue group and delivers to it.
    fn deliver_queue(&self, members: &[SubRef], m: &client::Outgoing, publisher: u64) -> bool {
        if members.is_empty() {
            return false;
        }
        let start = self.next_rand(members.len());
        (0..members.len())
            .any(|i| self.deliver(&members[(start + i) % members.len()], m, publisher))
    }

    /// Whether anyone (here or on another shard) listens to `subject` in `account`.
    fn has_interest(&self, account: AccId, subject: &[u8]) -> bool {
        self.subs.borrow_mut()[account as usize].has_interest(subject)
            || self.remote.borrow_mut()[account as usize].has_interest(subject)
    }

    /// Publishes an event in the system account, if there is one and anyone listens (the
    /// JSON is only built then).
    fn system_event(&self, build: impl FnOnce(&Global) -> Vec<(String, serde_json::Value)>) {
        let Some(sys) = self.g.accounts.system else {
            return;
        };
        for (subject, body) in build(&self.g) {
            if self.has_interest(sys, subject.as_bytes()) {
                let body = body.to_string();
                let m = OwnedPub::from_parts(subject.as_bytes(), None, 0, body.as_bytes());
                self.route(sys, &m.as_msg(), 0);
            }
        }
    }

    fn client_info<'a>(
        &'a self,
        c: &'a Client,
        opts: &'a ConnectOpts,
        user: Option<&'a str>,
    ) -> events::ClientInfo<'a> {
        events::ClientInfo {
            start: c.start,
            stop: c.closed.get().then(SystemTime::now),
            host: c.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            id: c.cid,
            account: &self.g.accounts.get(c.account.get()).name,
            user,
            name: &opts.name,
            lang: &opts.lang,
            version: &opts.version,
            rtt: c.rtt.get(),
        }
    }

    /// CONNECT accepted: the client counts in its account, and the system account hears it.
    fn client_connected(&self, c: &Client) {
        if c.connected.replace(true) {
            return;
        }
        let acc = c.account.get();
        let n = self.g.account_conns[acc as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let opts = c.opts.borrow();
        let user = c.user.borrow();
        let info = self.client_info(c, &opts, user.as_deref());
        self.system_event(|g| {
            let now = SystemTime::now();
            let mut out = vec![events::client_connect(&g.event_server(), &info, now)];
            out.extend(events::account_connections(
                &g.event_server(),
                info.account,
                n,
                n,
                now,
            ));
            out
        });
    }

    /// A connected client went away.
    fn client_disconnected(&self, c: &Client, reason: CloseReason) {
        let acc = c.account.get();
        let n = self.g.account_conns[acc as usize]
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        let opts = c.opts.borrow();
        let user = c.user.borrow();
        let info = self.client_info(c, &opts, user.as_deref());
        let k = c.counts.get();
        self.system_event(|g| {
            let now = SystemTime::now();
            // Sent and received as the client sees them: what it published, what it got.
            let mut out = vec![events::client_disconnect(
                &g.event_server(),
                &info,
                events::data_stats(k.in_msgs, k.in_bytes),
                events::data_stats(k.out_msgs, k.out_bytes),
                reason.text(),
                now,
            )];
            out.extend(events::account_connections(
                &g.event_server(),
                info.account,
                n,
                n,
                now,
            ));
            out
        });
    }

    /// A request to the server in the system account (`$SYS.REQ.SERVER.PING`, ...): the
    /// answer is gathered off the shard, then published to `reply`. Returns whether it is one.
    fn system_request(self: &Rc<Self>, account: AccId, m: &PubMsg) -> bool {
        if Some(account) != self.g.accounts.system {
            return false;
        }
        let (Ok(subject), Some(reply)) = (std::str::from_utf8(m.subject()), m.reply_bytes()) else {
            return false;
        };
        let Some(kind) = events::server_request(subject, &self.g.server_id) else {
            return false;
        };
        let Some(api) = self.g.sys_api.get().cloned() else {
            return false;
        };
        let (kind, query) = (
            kind.to_string(),
            events::options_query(m.msg()[m.hdr_len()..].as_ref()),
        );
        let shard = self.clone();
        rt::spawn(async move {
            let data = rt::spawn_blocking({
                let kind = kind.clone();
                move || api(&kind, &query)
            })
            .await;
            let key = if kind == "STATSZ" { "statsz" } else { "data" };
            let body =
                events::response(&shard.g.event_server(), key, data, SystemTime::now()).to_string();
            let m = OwnedPub::from_parts(&reply, None, 0, body.as_bytes());
            shard.route(account, &m.as_msg(), 0);
            shard.flush();
        });
        true
    }

    /// Routes a message published by a client of this shard: in its account, and through
    /// the account's imports (streams others take from it, the service it calls). Returns
    /// whether anyone (here or on another shard) will receive it.
    fn publish(&self, publisher: &Client, m: &PubMsg) -> bool {
        let account = publisher.account.get();
        let mut any = self.route(account, m, publisher.cid);
        let a = self.g.accounts.get(account);
        if !a.stream_routes().is_empty() {
            any |= self.route_streams(a, m, publisher.cid);
        }
        if let Some(si) = a.service_route(m.subject()) {
            any |= self.service_request(publisher, si, m);
        }
        any
    }

    /// Delivers a message of account `a` to the accounts that import it as a stream, under
    /// their subject for it, on this server only: as in nats-server, every server serves its
    /// own importers, from the message in the exporter's account (routes carry that, never
    /// the imported copies).
    fn route_streams(&self, a: &Account, m: &PubMsg, cid: u64) -> bool {
        let mut any = false;
        for r in a.stream_routes() {
            if let Some(subject) = r.map(m.subject()) {
                let mapped = OwnedPub::from_parts(&subject, m.reply(), m.hdr_len(), m.msg());
                any |= self.route_scoped(r.to, &mapped.as_msg(), cid, None, false);
            }
        }
        any
    }

    /// Sends a request through a service import into the exporting account, as nats-server
    /// does: under the exported subject, with a `Nats-Request-Info` header naming the
    /// requester's account, and with the reply mapped to `_R_.<prefix>.<token>` so that the
    /// response comes back here and goes to the requester's reply subject.
    fn service_request(&self, c: &Client, si: &ServiceRoute, m: &PubMsg) -> bool {
        let now = Instant::now();
        self.expire_responses(now);
        let reply = m.reply().map(|r| {
            let mut mapped = BytesMut::from(&self.resp_prefix[..]);
            mapped.extend_from_slice(crate::auth::nonce().get(..8).unwrap_or("0").as_bytes());
            let mapped = mapped.freeze();
            let deadline = now + si.threshold;
            self.responses.borrow_mut().insert(
                mapped.clone(),
                PendingResponse {
                    to: c.account.get(),
                    reply: Bytes::copy_from_slice(r),
                    many: si.response != ResponseType::Singleton,
                    deadline,
                },
            );
            self.resp_expiry
                .borrow_mut()
                .push_back((deadline, mapped.clone()));
            mapped
        });
        let name = &self.g.accounts.get(c.account.get()).name;
        let info = match c.rtt.get() {
            Some(rtt) => serde_json::json!({ "acc": name, "rtt": rtt.as_nanos() as u64 }),
            None => serde_json::json!({ "acc": name }),
        };
        let (hdr_len, msg) = client::add_header(
            m.hdr_len(),
            m.msg(),
            b"Nats-Request-Info",
            info.to_string().as_bytes(),
        );
        let request = OwnedPub::from_parts(&si.map(m.subject()), reply.as_deref(), hdr_len, &msg);
        self.route(si.to, &request.as_msg(), c.cid)
    }

    /// Forgets the mapped replies whose time is up.
    fn expire_responses(&self, now: Instant) {
        let mut expiry = self.resp_expiry.borrow_mut();
        while expiry.front().is_some_and(|(d, _)| *d <= now) {
            if let Some((_, key)) = expiry.pop_front() {
                let mut responses = self.responses.borrow_mut();
                if responses.get(&key).is_some_and(|p| p.deadline <= now) {
                    responses.remove(&key);
                }
            }
        }
    }

    /// If `subject` is a reply this shard mapped for a service request, carries the response
    /// back to the requester's account and reply subject.
    fn service_response(
        &self,
        subject: &[u8],
        reply: Option<&[u8]>,
        hdr_len: usize,
        msg: &[u8],
    ) -> bool {
        let pending = {
            let mut responses = self.responses.borrow_mut();
            let Some(p) = responses.get(subject) else {
                return false;
            };
            if p.deadline <= Instant::now() {
                responses.remove(subject);
                return false;
            }
            if p.many {
                (p.to, p.reply.clone())
            } else {
                let p = responses.remove(subject).expect("present");
                (p.to, p.reply)
            }
        };
        let response = OwnedPub::from_parts(&pending.1, reply, hdr_len, msg);
        self.route(pending.0, &response.as_msg(), 0)
    }

    /// Routes a message within one account: to this shard's subscribers, and once to each
    /// shard with interest (naming the queue groups it must serve there), and on the shard
    /// that owns the routes, once to each interested route.
    fn route(&self, account: AccId, m: &PubMsg, cid: u64) -> bool {
        self.route_scoped(account, m, cid, None, true)
    }

    /// [`Shard::route`], limited to the queue groups `only` names (a message from a route
    /// serves those), and without the routes unless `to_routes` (the one-hop rule).
    /// Picks the member of queue group `name` that gets one message, weighted by members: one
    /// on this server first (`members` on this shard, other than the publisher `cid` unless
    /// it echoes, or other shards' clients' in `rmembers`); another server's (other shards'
    /// routed weight, or the routes in `routes`) only when there is none, and only for a
    /// message that may go `to_routes`.
    fn choose_member<'a>(
        &self,
        name: &[u8],
        members: &[SubRef],
        cid: u64,
        rmembers: &'a [RemoteRef],
        routes: Option<&crate::sublist::SublistResult<routes::RouteSub>>,
        to_routes: bool,
    ) -> QueuePick<'a> {
        let can_take = |m: &SubRef| {
            let c = &m.0.client;
            !c.closed.get() && (c.cid != cid || c.echo.get())
        };
        // With no other shard in the group, any member here will do (`deliver_queue` picks
        // which): no need to look at every member's client to count them.
        if rmembers.is_empty() && members.iter().any(can_take) {
            return QueuePick::Here;
        }
        let eligible = members.iter().filter(|m| can_take(m)).count();
        let weight = |routed: bool| -> usize {
            rmembers
                .iter()
                .filter(|r| r.routed == routed)
                .map(|r| r.weight as usize)
                .sum()
        };
        let shard_of = |routed: bool, pick: usize| {
            pick_weighted(rmembers.iter().filter(|r| r.routed == routed), pick)
                .map_or(QueuePick::Nobody, QueuePick::Shard)
        };
        let here = weight(false);
        if eligible + here > 0 {
            let pick = self.next_rand(eligible + here);
            return if pick < eligible {
                QueuePick::Here
            } else {
                shard_of(false, pick - eligible)
            };
        }
        let routed = if to_routes { weight(true) } else { 0 };
        let direct = routes.map_or(0, |r| routes::queue_weight(r, name));
        if routed + direct == 0 {
            return QueuePick::Nobody;
        }
        let pick = self.next_rand(routed + direct);
        if pick < routed {
            shard_of(true, pick)
        } else {
            QueuePick::Route(pick - routed)
        }
    }

    fn route_scoped(
        &self,
        account: AccId,
        m: &PubMsg,
        cid: u64,
        only: Option<&[Bytes]>,
        to_routes: bool,
    ) -> bool {
        let (subject, rep, hdr_len, msg) = (m.subject(), m.reply(), m.hdr_len(), m.msg());
        let wanted = |name: &[u8]| only.is_none_or(|qs| qs.iter().any(|q| &q[..] == name));
        let rmatch = if to_routes {
            self.cluster.as_ref().map(|cl| cl.matches(account, subject))
        } else {
            None
        };
        let local = self.subs.borrow_mut()[account as usize].matches(subject);
        let mut any = false;
        let outgoing = || client::Outgoing::new(subject, rep, hdr_len, msg);
        if !local.psubs.is_empty() {
            let out = outgoing();
            for s in &local.psubs {
                any |= self.deliver(s, &out, cid);
            }
        }
        if self.exports[account as usize] && subject.starts_with(&self.resp_prefix) {
            any |= self.service_response(subject, rep, hdr_len, msg);
        }
        // With one shard the remote table is empty and this reduces to local choices.
        let remote = self.remote.borrow_mut()[account as usize].matches(subject);
        if local.qsubs.is_empty() && remote.is_empty() && rmatch.is_none() {
            // No queue group to choose for and nobody elsewhere: the plain deliveries were all.
            return any;
        }
        // The common forward: one other shard's plain interest, no queue group to pick for.
        if let ([r], true, true, None) = (
            &remote.psubs[..],
            local.qsubs.is_empty(),
            remote.qsubs.is_empty(),
            &rmatch,
        ) {
            if to_routes || !r.routed {
                self.forward(r.shard, account, m, &mut Queues::new(), to_routes);
                return true;
            }
            return any;
        }
        let mut rsend = routes::RouteSends::default();
        let mut scratch = self.scratch.borrow_mut();
        // Routed interest only matters for a message that may go on to the routes.
        for r in remote.psubs.iter().filter(|r| to_routes || !r.routed) {
            scratch[r.shard].0 = true;
        }
        let route_set = rmatch.as_deref();
        for (name, members) in local.qsubs.iter().filter(|(n, _)| wanted(n)) {
            let rmembers = remote
                .qsubs
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&[][..], |(_, m)| &m[..]);
            match self.choose_member(name, members, cid, rmembers, route_set, to_routes) {
                QueuePick::Here => {
                    any |= self.deliver_queue(members, &outgoing(), cid);
                }
                QueuePick::Shard(r) => scratch[r.shard]
                    .1
                    .extend(r.queue.as_deref().map(QueueName::from_slice)),
                QueuePick::Route(pick) => {
                    if let Some(r) = route_set {
                        rsend.pick_queue(r, name, pick);
                    }
                }
                QueuePick::Nobody => {}
            }
        }
        for (name, rmembers) in remote.qsubs.iter().filter(|(n, _)| wanted(n)) {
            if local.qsubs.iter().any(|(n, _)| n == name) {
                continue;
            }
            match self.choose_member(name, &[], cid, rmembers, route_set, to_routes) {
                QueuePick::Shard(r) => scratch[r.shard]
                    .1
                    .extend(r.queue.as_deref().map(QueueName::from_slice)),
                QueuePick::Route(pick) => {
                    if let Some(r) = route_set {
                        rsend.pick_queue(r, name, pick);
                    }
                }
                QueuePick::Here | QueuePick::Nobody => {}
            }
        }
        if let Some(r) = &rmatch {
            let taken = |n: &[u8]| {
                local.qsubs.iter().any(|(l, _)| &l[..] == n)
                    || remote.qsubs.iter().any(|(l, _)| &l[..] == n)
            };
            for (name, _) in r.qsubs.iter().filter(|(n, _)| wanted(n) && !taken(n)) {
                let pick = self.next_rand(routes::queue_weight(r, name));
                rsend.pick_queue(r, name, pick);
            }
            rsend.plain(r);
            if rsend.send(self, account, subject, rep, hdr_len, msg) {
                any = true;
                self.hungry.set(true);
            }
        }
        for (peer, (plain, queues)) in scratch.iter_mut().enumerate() {
            if *plain || !queues.is_empty() {
                any = true;
                self.forward(peer, account, m, queues, to_routes);
                *plain = false;
            }
        }
        any
    }

    /// Delivers a message another shard forwarded: to this shard's subscribers, never to
    /// another shard; on the shard that owns the routes also to them when `to_routes` (a
    /// client's message, not one a route or a stream import delivered). A response to a
    /// service request this shard mapped goes on to the requester.
    fn deliver_forwarded(&self, account: AccId, m: &PubMsg, queues: &[QueueName], to_routes: bool) {
        let (subject, reply, hdr_len, msg) = (m.subject(), m.reply(), m.hdr_len(), m.msg());
        let Some(local) = self
            .subs
            .borrow_mut()
            .get_mut(account as usize)
            .map(|sl| sl.matches(subject))
        else {
            return;
        };
        let out = client::Outgoing::new(subject, reply, hdr_len, msg);
        for s in &local.psubs {
            self.deliver(s, &out, 0);
        }
        // The shard that owns the routes passes a client's message on to them too: its
        // share of a queue group counts the routes' members.
        let rmatch = match &self.cluster {
            Some(cl) if to_routes => Some(cl.matches(account, subject)),
            _ => None,
        };
        let mut rsend = routes::RouteSends::default();
        for q in queues {
            let members = local
                .qsubs
                .iter()
                .find(|(n, _)| n[..] == q[..])
                .map_or(&[][..], |(_, m)| &m[..]);
            // A member here first; a route's only when there is none.
            let cweight = match &rmatch {
                Some(r) if members.is_empty() => routes::queue_weight(r, q),
                _ => 0,
            };
            let pick = self.next_rand(members.len() + cweight);
            if pick < members.len() || cweight == 0 {
                self.deliver_queue(members, &out, 0);
            } else if let Some(r) = &rmatch {
                rsend.pick_queue(r, q, pick - members.len());
            }
        }
        if self.exports[account as usize] && subject.starts_with(&self.resp_prefix) {
            self.service_response(subject, reply, hdr_len, msg);
        }
        if let Some(r) = &rmatch {
            rsend.plain(r);
            if rsend.send(self, account, subject, reply, hdr_len, msg) {
                self.hungry.set(true);
            }
        }
    }
}

/// The member whose weight range contains `pick` (in `0..sum of weights`).
fn pick_weighted<'a>(
    members: impl Iterator<Item = &'a RemoteRef>,
    mut pick: usize,
) -> Option<&'a RemoteRef> {
    for m in members {
        if pick < m.weight as usize {
            return Some(m);
        }
        pick -= m.weight as usize;
    }
    None
}

/// Where one message for a queue group goes.
enum QueuePick<'a> {
    /// To a member on this shard.
    Here,
    /// To the shard holding this member (its clients' or its routes').
    Shard(&'a RemoteRef),
    /// To the route member whose weight range holds this pick (shard 0 only).
    Route(usize),
    Nobody,
}

/// What the reader must do after an operation.
enum Next {
    Continue,
    Close(CloseReason),
    /// Answer a PING: after the interest barrier, which is the only operation that waits.
    Pong,
    /// Check a bcrypt password off the shard thread, then go on (sending `+OK` if verbose).
    Verify(crate::auth::Pending, bool),
}

async fn client_main(shard: Rc<Shard>, conn: tern_shards::Conn) {
    let g = shard.g.clone();
    let o = shard.opts.borrow().clone();
    let cid = g.next_cid.fetch_add(1, Ordering::Relaxed);
    let peer = conn.peer_addr();
    let ip = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let addr = peer.map(|p| p.to_string()).unwrap_or_default();
    let (reader, writer) = conn.split();
    let auth = shard.auth.borrow().clone();
    let nonce = auth
        .as_ref()
        .filter(|a| a.needs_nonce())
        .map(|_| crate::auth::nonce());
    let tls = match &g.tls {
        // Until its ClientHello is read (`accept_hello`) the session has the default
        // configuration.
        Some(cfgs) => match server_session(cfgs.default()) {
            Ok(t) => Some(RefCell::new(t)),
            Err(e) => {
                tracing::error!("{addr} - cid:{cid} - TLS setup error: {e}");
                return;
            }
        },
        None => None,
    };
    let handshake_first = o.tls.as_ref().is_some_and(|t| t.handshake_first);
    let allow_non_tls = tls.is_some() && o.allow_non_tls && !handshake_first;
    let client = Rc::new(Client {
        cid,
        out: RefCell::new(client::Outbound::default()),
        in_flight: Cell::new(0),
        send_note: Cell::new(false),
        writer: Cell::new(None),
        dirty: Cell::new(false),
        closed: Cell::new(false),
        discard: Cell::new(false),
        stall_batch: Cell::new(0),
        soft_off: Cell::new(false),
        acked_at: Cell::new(None),
        probe: writer.probe(),
        stall_waiters: RefCell::new(Vec::new()),
        fed: Cell::new(false),
        opts: RefCell::new(ConnectOpts::default()),
        echo: Cell::new(true),
        headers: Cell::new(false),
        subs: RefCell::new(HashMap::new()),
        received: Cell::new(false),
        pings_out: Cell::new(0),
        next_ping: Cell::new(Instant::now() + o.ping_interval),
        rtt_due: Cell::new(false),
        ping_waker: Cell::new(None),
        writer_done: Cell::new(false),
        addr,
        peer,
        start: SystemTime::now(),
        last_activity: Cell::new(Instant::now()),
        counts: Cell::new(Counts::default()),
        rtt_ping: Cell::new(None),
        rtt: Cell::new(None),
        reason: Cell::new(None),
        authed: Cell::new(auth.is_none()),
        connected: Cell::new(false),
        account: Cell::new(crate::accounts::GLOBAL),
        user: RefCell::new(None),
        nonce,
        perms: RefCell::new(None),
        check_deliveries: Cell::new(false),
        tls_plain_once: Cell::new(tls.is_some() && !handshake_first),
        // Before `tls` moves in: a TLS client's hello is still to come.
        tls_hello: Cell::new(tls.is_some()),
        tls,
        tls_failed: Cell::new(false),
        tls_undecided: Cell::new(allow_non_tls),
        tls_off: Cell::new(false),
    });
    client.write(&g.info_line(&o, cid, &ip, client.nonce.as_deref()));
    rt::spawn(writer_task(shard.clone(), client.clone(), writer));
    let count = g.connections.fetch_add(1, Ordering::Relaxed) + 1;
    shard.clients.borrow_mut().insert(cid, client.clone());
    if count > o.max_connections as usize {
        tracing::error!(
            "{} - cid:{} - maximum connections exceeded",
            client.addr,
            cid
        );
        client.write_err("maximum connections exceeded");
        shard.close_client(&client, CloseReason::MaxConnectionsExceeded);
        return;
    }
    tracing::debug!("{} - cid:{} - Client connection created", client.addr, cid);
    rt::spawn(ping_task(shard.clone(), client.clone()));
    if let Some(a) = &auth {
        rt::spawn(auth_timer(shard.clone(), client.clone(), a.timeout));
    }
    if client.tls.is_some() {
        let timeout = o
            .tls
            .as_ref()
            .map_or(crate::tls::DEFAULT_TLS_TIMEOUT, |t| t.timeout());
        rt::spawn(tls_timer(shard.clone(), client.clone(), timeout));
    }
    let reason = read_loop(&shard, &client, reader).await;
    shard.close_client(&client, reason);
    shard.flush();
    tracing::debug!("{} - cid:{} - Client connection closed", client.addr, cid);
}

/// Reads and handles the client's operations until the connection ends; returns why.
async fn read_loop(shard: &Rc<Shard>, c: &Rc<Client>, mut reader: ConnReader) -> CloseReason {
    let mut limits = shard.opts.borrow().clone();
    let mut parser = Parser::new(
        limits.max_control_line as usize,
        limits.max_payload as usize,
    );
    let mut buf = BytesMut::new();
    let mut read_size = READ_MIN;
    let mut cipher = BytesMut::new();
    loop {
        if shard.mesh.congested() {
            shard.flush();
            shard.mesh.wait_uncongested().await;
        }
        let tls = shard.g.tls.as_ref();
        let n = match read_plain(c, tls, &mut reader, &mut buf, read_size, &mut cipher).await {
            Ok(0) => return CloseReason::ClientClosed,
            Err(e) if c.handshaking() => {
                tracing::error!("{} - cid:{} - TLS handshake error: {e}", c.addr, c.cid);
                return CloseReason::TlsHandshakeError;
            }
            Err(_) => return CloseReason::ReadError,
            Ok(n) => n,
        };
        if c.closed.get() {
            return CloseReason::ClientClosed;
        }
        c.received.set(true);
        c.last_activity.set(Instant::now());
        if !Arc::ptr_eq(&limits, &shard.opts.borrow()) {
            limits = shard.opts.borrow().clone();
            parser.set_limits(
                limits.max_control_line as usize,
                limits.max_payload as usize,
            );
        }
        read_size = next_read_size(read_size, n);
        if buf.len() < parser.wants() {
            // A large message still arriving: read on before looking at it again.
            continue;
        }
        // One shared chunk per read: the messages in it borrow it, and only a forward to
        // another shard or a route takes a reference. What is left of a frame not all
        // there yet goes back into `buf` (which kept this allocation's spare room, and
        // reclaims all of it once the chunk is gone) to meet the next read.
        let chunk = buf.split().freeze();
        let mut pos = 0;
        loop {
            match parser.next(&chunk, &mut pos) {
                Ok(Some(op)) => match handle_op(shard, c, &op) {
                    Next::Continue => parser.set_headers(c.headers.get()),
                    Next::Pong => {
                        shard.interest_barrier().await;
                        c.write(client::PONG);
                        shard.mark_dirty(c);
                        shard.flush();
                    }
                    Next::Close(reason) => return reason,
                    Next::Verify(pending, verbose) => {
                        let r = rt::spawn_blocking(move || pending.verify()).await;
                        if c.closed.get() {
                            return c.reason.get().unwrap_or(CloseReason::ClientClosed);
                        }
                        if let Err(reason) = finish_auth(shard, c, r) {
                            return reason;
                        }
                        if verbose {
                            c.write(client::OK);
                        }
                        parser.set_headers(c.headers.get());
                    }
                },
                Ok(None) => {
                    buf.extend_from_slice(&chunk[pos..]);
                    break;
                }
                Err(e) => {
                    protocol_error(c, &e);
                    return match e {
                        ParseError::MaxPayload => CloseReason::MaxPayloadExceeded,
                        ParseError::MaxControlLine => CloseReason::MaxControlLineExceeded,
                        _ => CloseReason::ParseError,
                    };
                }
            }
        }
        // Replies to this client (+OK, -ERR, PONG, its own messages) go out with the batch.
        if !c.out.borrow().is_empty() {
            shard.mark_dirty(c);
        }
        shard.flush();
        shard.wait_for_stalled().await;
    }
}

/// The size of the next read after one of `size` bytes brought `n`: doubled when the read
/// filled it, halved when it used less than a quarter (within `READ_MIN..=READ_MAX`), so a
/// busy connection reads in large batches and an idle one holds little memory.
fn next_read_size(size: usize, n: usize) -> usize {
    if n == size && size < READ_MAX {
        size * 2
    } else if n < size / 4 && size > READ_MIN {
        size / 2
    } else {
        size
    }
}

fn protocol_error(c: &Client, e: &ParseError) {
    match e.err_text() {
        Some(text) => {
            tracing::error!("{} - cid:{} - {}", c.addr, c.cid, e);
            c.write_err(text);
        }
        None => tracing::error!("{} - cid:{} - {}", c.addr, c.cid, e),
    }
}

/// A client's `PUB`/`HPUB`, once it is authenticated.
#[inline]
fn handle_pub(shard: &Rc<Shard>, c: &Rc<Client>, m: &PubMsg) {
    c.count_in(m.msg().len());
    if let Some(p) = &*c.perms.borrow() {
        if !p.may_publish(m.subject()) {
            let subject = String::from_utf8_lossy(m.subject());
            tracing::error!(
                "{} - cid:{} - Publish Violation - Subject {subject:?}",
                c.addr,
                c.cid
            );
            c.write_err(&format!(
                "Permissions Violation for Publish to \"{subject}\""
            ));
            return;
        }
    }
    let pedantic = c.opts.borrow().pedantic;
    if pedantic && !sublist::is_valid_literal_subject(m.subject()) {
        c.write_err("Invalid Publish Subject");
    }
    if c.opts.borrow().verbose {
        c.write(client::OK);
    }
    let delivered = shard.publish(c, m) | shard.system_request(c.account.get(), m);
    if let Some(reply) = m.reply() {
        if !delivered && c.opts.borrow().no_responders {
            no_responders(shard, c, reply);
        }
    }
}

fn handle_op(shard: &Rc<Shard>, c: &Rc<Client>, op: &Op) -> Next {
    if crate::log::trace_on() {
        match op {
            Op::Connect(json) => tracing::trace!(
                "{} - cid:{} - <<- [CONNECT {}]",
                c.addr,
                c.cid,
                client::redact_connect(json)
            ),
            _ => tracing::trace!("{} - cid:{} - <<- [{:?}]", c.addr, c.cid, op),
        }
    }
    if !c.authed.get() && !matches!(op, Op::Connect(_)) {
        tracing::error!(
            "{} - cid:{} - Authorization Violation: an operation before CONNECT",
            c.addr,
            c.cid
        );
        c.write_err("Authorization Violation");
        return Next::Close(CloseReason::AuthenticationViolation);
    }
    let verbose = || c.opts.borrow().verbose;
    match *op {
        Op::Connect(json) => match ConnectOpts::parse(json) {
            Ok(o) => {
                c.echo.set(o.echo);
                c.headers
                    .set(o.headers && !shard.opts.borrow().no_header_support);
                if o.no_responders && !c.headers.get() {
                    c.write_err("no responders requires headers support");
                    return Next::Close(CloseReason::NoRespondersRequiresHeaders);
                }
                let verbose = o.verbose;
                let auth = if c.authed.get() {
                    None
                } else {
                    shard.auth.borrow().clone()
                };
                let map_cert = shard
                    .opts
                    .borrow()
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.verify_and_map);
                let verdict = auth.map(|a| {
                    if map_cert {
                        Verdict::Done(a.check_mapped(&c.cert_identities()))
                    } else {
                        a.check(&o, c.nonce.as_deref().unwrap_or(""))
                    }
                });
                *c.opts.borrow_mut() = o;
                // nats-server measures the RTT soon after CONNECT: the first PING comes early.
                let first = shard
                    .opts
                    .borrow()
                    .ping_interval
                    .min(Duration::from_secs(2));
                c.next_ping.set(Instant::now() + first);
                c.rtt_due.set(true);
                if let Some(w) = c.ping_waker.take() {
                    w.wake();
                }
                match verdict {
                    Some(Verdict::Bcrypt(p)) => return Next::Verify(p, verbose),
                    Some(Verdict::Done(r)) => {
                        if let Err(reason) = finish_auth(shard, c, r) {
                            return Next::Close(reason);
                        }
                    }
                    None => {
                        c.authed.set(true);
                        shard.client_connected(c);
                    }
                }
                if verbose {
                    c.write(client::OK);
                }
            }
            Err(e) => {
                tracing::error!("{} - cid:{} - {}", c.addr, c.cid, e);
                if let Some(text) = e.err_text() {
                    c.write_err(text);
                }
                return Next::Close(CloseReason::ProtocolViolation);
            }
        },
        Op::Pub(ref m) => handle_pub(shard, c, m),
        Op::Sub {
            subject,
            queue,
            sid,
        } => {
            let max_subs = shard.opts.borrow().max_subscriptions as usize;
            let denied = c
                .perms
                .borrow()
                .as_ref()
                .is_some_and(|p| !p.perms.can_subscribe(subject, queue));
            // nats-server checks the subject only; any queue token is accepted.
            if !sublist::is_valid_subject(subject) {
                c.write_err("Invalid Subject");
            } else if denied {
                let s = String::from_utf8_lossy(subject);
                let text = match queue {
                    Some(q) => format!(
                        "Permissions Violation for Subscription to \"{s}\" using queue \"{}\"",
                        String::from_utf8_lossy(q)
                    ),
                    None => format!("Permissions Violation for Subscription to \"{s}\""),
                };
                tracing::error!(
                    "{} - cid:{} - Subscription Violation - Subject {s:?}",
                    c.addr,
                    c.cid
                );
                c.write_err(&text);
            } else if max_subs > 0 && c.subs.borrow().len() >= max_subs {
                tracing::error!(
                    "{} - cid:{} - maximum subscriptions exceeded",
                    c.addr,
                    c.cid
                );
                c.write_err("maximum subscriptions exceeded");
            } else {
                if !c.subs.borrow().contains_key(sid) {
                    // Copies: a subscription must not pin the read buffer.
                    let copy = Bytes::copy_from_slice;
                    shard.add_sub(c, copy(subject), queue.map(copy), copy(sid));
                }
                if verbose() {
                    c.write(client::OK);
                }
            }
        }
        Op::Unsub { sid, max } => {
            let sub = c.subs.borrow().get(sid).cloned();
            if let Some(sub) = sub {
                match max {
                    Some(m) if m > 0 && sub.0.delivered.get() < m => sub.0.max.set(m),
                    _ => shard.remove_sub(c, sid),
                }
            }
            if verbose() {
                c.write(client::OK);
            }
        }
        Op::Ping => return Next::Pong,
        Op::Pong => {
            c.pings_out.set(0);
            c.rtt_due.set(false);
            if let Some(sent) = c.rtt_ping.take() {
                c.rtt.set(Some(sent.elapsed()));
            }
        }
        Op::Ignored => {}
        Op::ClientErr(text) => {
            tracing::error!(
                "{} - cid:{} - Client Error {}",
                c.addr,
                c.cid,
                String::from_utf8_lossy(text)
            );
            return Next::Close(CloseReason::ClientClosed);
        }
    }
    if c.closed.get() {
        Next::Close(c.reason.get().unwrap_or(CloseReason::ClientClosed))
    } else {
        Next::Continue
    }
}

/// Answers a request nobody can receive with a 503 status on the requester's own
/// subscription that matches the reply subject.
fn no_responders(shard: &Shard, c: &Rc<Client>, reply: &[u8]) {
    let sid = c
        .subs
        .borrow()
        .values()
        .find(|s| sublist::subject_matches(&s.0.subject, reply))
        .map(|s| s.0.sid.clone());
    if let Some(sid) = sid {
        let hdr = client::NO_RESPONDERS_HDR;
        client::write_msg(
            c.out.borrow_mut().tail(reply.len() + hdr.len() + 64),
            reply,
            &sid,
            None,
            hdr.len(),
            hdr,
            true,
        );
        shard.mark_dirty(c);
    }
}

async fn writer_task(shard: Rc<Shard>, c: Rc<Client>, w: ConnWriter) {
    let mut flow = Outflow::new();
    let mut fresh = VecDeque::new();
    loop {
        std::future::poll_fn(|cx| {
            let tls_pending = c.tls.as_ref().is_some_and(|t| t.borrow().wants_write());
            if (!c.out.borrow().is_empty() && !c.tls_holds_output())
                || c.closed.get()
                || tls_pending
                || !flow.batch.is_empty()
                || c.send_note.get()
            {
                Poll::Ready(())
            } else {
                c.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        if c.discard.get() {
            break;
        }
        c.send_note.set(false);
        if flow.busy() {
            let deadline = shard.opts.borrow().write_deadline;
            let (chunks, total) = (flow.blocks(), c.in_flight.get());
            // One deadline per send, as for one writev.
            match rt::timeout(deadline, flow.settle(&c.in_flight)).await {
                Some(Ok(())) => {
                    c.wake_stalled();
                }
                Some(Err(_)) => {
                    shard.close_client(&c, CloseReason::WriteError);
                    break;
                }
                None => {
                    tracing::info!(
                        "{} - cid:{} - Slow Consumer Detected: WriteDeadline of {:?} exceeded with {} chunks of {} total bytes.",
                        c.addr, c.cid, deadline, chunks, total
                    );
                    c.discard.set(true);
                    shard.close_client(&c, CloseReason::SlowConsumerWriteDeadline);
                    break;
                }
            }
        }
        if !c.tls_holds_output() {
            c.out.borrow_mut().take_into(&mut fresh);
        }
        if let Some(tls) = c.session().filter(|_| !c.tls_failed.get()) {
            // Plaintext in, TLS records out (handshake records included).
            if !c.tls_plain_once.replace(false)
                && seal_blocks(&mut tls.borrow_mut(), &mut fresh).is_err()
            {
                shard.close_client(&c, CloseReason::WriteError);
                break;
            }
        }
        c.in_flight
            .set(c.in_flight.get() + fresh.iter().map(BytesMut::len).sum::<usize>());
        flow.batch.append(&mut fresh);
        if flow.batch.is_empty() {
            if c.closed.get() {
                break;
            }
            continue;
        }
        flow.start(&w, &c);
    }
    w.shutdown();
    c.in_flight.set(0);
    flow.clear();
    // Stale match-cache entries may still reference this client: let go of its buffers now.
    c.out.borrow_mut().clear();
    c.writer_done.set(true);
}

async fn ping_task(shard: Rc<Shard>, c: Rc<Client>) {
    loop {
        let now = Instant::now();
        let due = c.next_ping.get();
        if due > now {
            // Woken early on close, or when CONNECT moves the deadline.
            rt::race(rt::sleep(due - now), c.wait_event()).await;
            if c.closed.get() {
                return;
            }
            continue;
        }
        let (interval, ping_max) = {
            let o = shard.opts.borrow();
            (o.ping_interval, o.ping_max)
        };
        c.next_ping.set(now + interval);
        if c.pings_out.get() + 1 > ping_max {
            tracing::debug!(
                "{} - cid:{} - Stale Client Connection - Closing",
                c.addr,
                c.cid
            );
            c.write_err("Stale Connection");
            shard.close_client(&c, CloseReason::StaleConnection);
            return;
        }
        if c.received.replace(false) && !c.rtt_due.get() {
            continue;
        }
        c.pings_out.set(c.pings_out.get() + 1);
        c.rtt_ping.set(Some(now));
        c.write(client::PING);
        c.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_batch_is_bounded() {
        let batch = |ops: usize, queues: usize| MeshMsg {
            ops: Vec::with_capacity(ops),
            queues: Vec::with_capacity(queues),
        };
        let mut spare = MeshMsg::default();
        spare.reuse(batch(SPARE_MAX + 1, 0));
        assert_eq!(spare.ops.capacity(), 0, "too many operations to keep");
        spare.reuse(batch(512, 100 * SPARE_MAX));
        assert!(spare.ops.capacity() >= 512);
        assert!(
            spare.queues.capacity() <= SPARE_MAX,
            "queue names bounded too"
        );
        spare.reuse(batch(256, 16));
        assert!(spare.ops.capacity() >= 512, "the larger batch stays");
    }

    #[test]
    fn a_shard_op_is_small() {
        // A forwarded message is one op, written by one shard and read by another.
        assert!(std::mem::size_of::<ShardOp>() <= 48);
    }
}
