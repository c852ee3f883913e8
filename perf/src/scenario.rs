//! The scenarios: what connections a run opens, what each thread sends and counts, flow
//! control, and the [`Report`] a run produces. One thread per connection, blocking sockets,
//! pipelined batches of PUB frames written with one syscall each. Owns no server process: it
//! is handed a [`Target`] and measures whatever answers there.

use crate::conn::{pin, Conn, Shard, Target};
use crate::error::{Error, IoContext, Result};
use crate::proto::{payload_stamp, Frame, PubBatch};
use crate::stats::{self, latency, new_histogram, now_ns, record, Latency};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{ErrorKind, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Publishers only, nobody subscribed.
    Pub,
    /// One publisher, one subscriber (with --pubs/--subs: N publishers, M subscribers).
    Pubsub,
    /// One publisher, --subs subscribers each receiving everything.
    Fanout,
    /// Fanout with all subscribers read by one thread that waits in poll(2) on their sockets,
    /// so that 16 subscriber threads taking turns on the generator's core do not pace the run.
    Fanpoll,
    /// --pubs publishers, one subscriber.
    Fanin,
    /// --pubs independent publisher→subscriber pairs, pair i on its own subject
    /// (`bench.<i>`) that only its own subscriber takes: load a sharded server can spread.
    /// With --placement same pair i sits on shard i; with cross its publisher is on shard i
    /// and its subscriber on shard i+1.
    Pairs,
    /// One publisher, a queue group of --subs members.
    Queue,
    /// One synchronous requester against one responder; latency per request.
    Reqreply,
    /// --pubs synchronous requesters against a queue group of --subs responders.
    Requesters,
    /// Requesters (one of each by default) with every requester and responder in one
    /// generator thread that polls their sockets without blocking: no generator thread
    /// wake-up in the round trip, so the latency is the server's and the kernel's (how a
    /// latency rig's client measures).
    Reqpoll,
    /// Open loop at --rate msgs/s; latency from each message's intended send time.
    Openloop,
    /// Openloop from one generator thread that publishes on schedule and reads the
    /// subscriber between writes, waiting in ppoll(2) until the next message is due or a
    /// delivery arrives. In openloop the publisher and the subscriber are two threads on the
    /// generator's core, and a delivery waits until the scheduler runs the subscriber; here
    /// nothing on the generator's side is woken, so the latency is the server's and the
    /// kernel's.
    Openpoll,
    /// Preload --preload subscriptions on idle connections, then pubsub throughput.
    Subscale,
    /// SUB/UNSUB at --churn-rate ops/s on another connection while pubsub runs.
    Churn,
    /// Open --conns mostly idle connections and report the server's RSS.
    Conns,
}

/// Where publishers and subscribers sit among the server's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Accept order decides.
    Any,
    /// Everything on shard 0.
    Same,
    /// Publishers/requesters on shard 0, subscribers/responders on shard 1.
    Cross,
    /// Publisher (requester) i and subscriber (responder) i on shard i: a fan-out's
    /// subscribers dealt over the shards, as a server's round-robin accept deals them.
    Spread,
}

impl Placement {
    /// Where publisher (requester) `i` connects; `pairs` when it is pair i's (see
    /// [`Kind::Pairs`]).
    fn publisher(self, i: usize, pairs: bool) -> Shard {
        match self {
            Placement::Any => Shard::Any,
            _ => Shard::On(self.base(i, pairs)),
        }
    }

    /// Where subscriber (responder) `i` connects; `pairs` as for [`Placement::publisher`].
    fn subscriber(self, i: usize, pairs: bool) -> Shard {
        match self {
            Placement::Any => Shard::Any,
            Placement::Cross => Shard::On(self.base(i, pairs) + 1),
            _ => Shard::On(self.base(i, pairs)),
        }
    }

    /// The shard connection `i` of a side starts from: its own for a pair and with
    /// `Spread`, else shard 0 for the whole side.
    fn base(self, i: usize, pairs: bool) -> u64 {
        if pairs || self == Placement::Spread {
            i as u64
        } else {
            0
        }
    }
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Messages to publish in total (overrides `duration`).
    pub msgs: Option<u64>,
    /// How long to publish.
    pub duration: Duration,
    /// Payload size in bytes.
    pub size: usize,
    /// Publishers (or requesters).
    pub pubs: usize,
    /// Subscribers (or responders, queue members).
    pub subs: usize,
    /// Open-loop rate in msgs/s (all publishers together).
    pub rate: u64,
    /// Cores to pin the generator's threads to (round robin); empty = unpinned.
    pub pin: Vec<usize>,
    /// Bound on undelivered bytes per receiver (flow control).
    pub window: usize,
    /// How long to wait for stragglers after publishing stops before reporting loss.
    pub timeout: Duration,
    /// Shard placement.
    pub placement: Placement,
    /// Show a progress bar (still hidden when stderr is not a terminal or the run is short).
    pub progress: bool,
    /// Subscriptions to preload (subscale).
    pub preload: usize,
    /// Idle connections holding the preloaded subscriptions.
    pub idle_conns: usize,
    /// SUB+UNSUB pairs per second (churn).
    pub churn_rate: u64,
    /// Connections to open (conns).
    pub conns: usize,
    /// Subjects the publishers cycle through (see `Subjects`); 1 = `bench.0` alone.
    pub subjects: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            msgs: None,
            duration: Duration::from_secs(2),
            size: 16,
            pubs: 1,
            subs: 1,
            rate: 20_000,
            pin: Vec::new(),
            window: 4 << 20,
            timeout: Duration::from_secs(10),
            placement: Placement::Any,
            progress: true,
            preload: 100_000,
            idle_conns: 10,
            churn_rate: 10_000,
            conns: 1000,
            subjects: 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Payload size.
    pub size: usize,
    /// Publishers / requesters.
    pub pubs: usize,
    /// Subscribers / responders.
    pub subs: usize,
    /// Messages published (requests sent).
    pub sent: u64,
    /// Messages delivered to subscribers (replies received).
    pub received: u64,
    /// Deliveries expected.
    pub expected: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Seconds from first send to last delivery.
    pub elapsed_s: f64,
    /// Published msgs/s (until the publishers' final PONG).
    pub msgs_in_per_s: f64,
    /// Delivered msgs/s.
    pub msgs_out_per_s: f64,
    /// Payload MB/s published.
    pub mb_in_per_s: f64,
    /// Payload MB/s delivered.
    pub mb_out_per_s: f64,
    /// Latency, for latency scenarios.
    pub latency: Option<Latency>,
    /// CPU seconds the generator used during the measured interval.
    pub gen_cpu_s: f64,
    /// Generator CPU as a percentage of one core over the interval.
    pub gen_cpu_pct: f64,
    /// Server CPU ns per delivered message (per published message when nothing is delivered).
    pub server_cpu_ns_per_msg: Option<f64>,
    /// Server VmHWM after the run, bytes.
    pub server_peak_rss: Option<u64>,
    /// Milliseconds of VM steal time (all CPUs) during the measured interval: the host
    /// running something else instead of this machine.
    pub steal_ms: Option<f64>,
    /// Scenario-specific figures (preload time, churn ops/s, RSS per connection, ...).
    pub extra: BTreeMap<String, f64>,
}

/// Runs one scenario against `target`.
///
/// The calling thread only coordinates and is never pinned: servers that `compare` starts
/// later inherit its CPU mask.
pub fn run(kind: Kind, o: &Opts, t: &Target) -> Result<Report> {
    let name = format!("{kind:?}").to_lowercase();
    let mut r = match kind {
        Kind::Pub => flow(t, o, &Flow::new(o.pubs, 0, 0, None))?,
        Kind::Pubsub => flow(t, o, &Flow::new(o.pubs, o.subs, o.subs as u64, None))?,
        Kind::Fanout => flow(t, o, &Flow::new(1, o.subs, o.subs as u64, None))?,
        Kind::Fanpoll => {
            let mut f = Flow::new(1, o.subs, o.subs as u64, None);
            f.poll_subs = true;
            flow(t, o, &f)?
        }
        Kind::Fanin => flow(t, o, &Flow::new(o.pubs, 1, 1, None))?,
        Kind::Pairs => {
            let mut f = Flow::new(o.pubs, o.pubs, 1, None);
            f.pairs = true;
            flow(t, o, &f)?
        }
        Kind::Queue => flow(t, o, &Flow::new(1, o.subs, 1, Some("q")))?,
        Kind::Openloop => {
            let mut f = Flow::new(1, 1, 1, None);
            f.open_loop = true;
            flow(t, o, &f)?
        }
        Kind::Openpoll => openpoll(t, o)?,
        Kind::Reqreply => reqreply(t, o, 1, 1)?,
        Kind::Requesters => reqreply(t, o, o.pubs, o.subs)?,
        Kind::Reqpoll => reqpoll(t, o)?,
        Kind::Subscale => subscale(t, o)?,
        Kind::Churn => churn(t, o)?,
        Kind::Conns => conns(t, o)?,
    };
    r.scenario = name;
    r.server_peak_rss = t.pid.and_then(|p| stats::proc_status_kb(p, "VmHWM"));
    Ok(r)
}

/// The shape of a publish/subscribe run.
#[derive(Clone)]
struct Flow {
    pubs: usize,
    subs: usize,
    /// Deliveries per published message.
    factor: u64,
    queue: Option<&'static str>,
    open_loop: bool,
    /// One reader thread for all subscribers (poll(2)) instead of one thread each.
    poll_subs: bool,
    /// Publisher i sends to subscriber i alone, on its own subject (see [`Kind::Pairs`]).
    pairs: bool,
}

impl Flow {
    fn new(pubs: usize, subs: usize, factor: u64, queue: Option<&'static str>) -> Self {
        Flow {
            pubs: pubs.max(1),
            subs,
            factor: if queue.is_some() { 1 } else { factor },
            queue,
            open_loop: false,
            poll_subs: false,
            pairs: false,
        }
    }

    /// The subject prefix (see [`Subjects::under`]) of publisher or subscriber `i`.
    fn prefix(&self, i: usize) -> String {
        if self.pairs {
            format!("bench.{i}")
        } else {
            SUBJECT.into()
        }
    }

    /// The subscribers that must see a probe from publisher `p`.
    fn probed_by(&self, p: usize) -> std::ops::Range<usize> {
        if self.pairs {
            p..p + 1
        } else {
            0..self.subs
        }
    }
}

struct Shared {
    stop: AtomicBool,
    abort: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    /// probe_seen[sub * pubs + pub]
    probe_seen: Vec<AtomicBool>,
}

/// Brackets the measured interval: generator CPU and server CPU before and after.
struct Meter {
    t0: Instant,
    gen0: Duration,
    srv0: Option<u64>,
    steal0: Option<u64>,
    pids: Vec<u32>,
}

/// The CPU time of every server process together, if all can be read.
fn servers_cpu_ns(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| stats::proc_cpu_ns(p)).sum()
}

impl Meter {
    fn start(t: &Target) -> Self {
        let pids = t.pids();
        Meter {
            t0: Instant::now(),
            gen0: stats::self_cpu(),
            srv0: servers_cpu_ns(&pids),
            steal0: stats::host_steal_ns(),
            pids,
        }
    }
    /// Fills the CPU fields of `r`; `per` is the message count CPU is divided by. The servers'
    /// CPU is summed: a routed message costs both ends of the route.
    fn finish(&self, r: &mut Report, per: u64) {
        let wall = self.t0.elapsed().as_secs_f64();
        let gen = (stats::self_cpu() - self.gen0).as_secs_f64();
        r.gen_cpu_s = gen;
        r.gen_cpu_pct = if wall > 0.0 { 100.0 * gen / wall } else { 0.0 };
        if let (Some(a), Some(b)) = (self.steal0, stats::host_steal_ns()) {
            r.steal_ms = Some(b.saturating_sub(a) as f64 / 1e6);
        }
        if let (Some(a), Some(b)) = (self.srv0, servers_cpu_ns(&self.pids)) {
            if per > 0 {
                r.server_cpu_ns_per_msg = Some(b.saturating_sub(a) as f64 / per as f64);
            }
        }
    }
}

fn progress_bar(o: &Opts, secs: f64) -> Option<ProgressBar> {
    if !o.progress || secs < 3.0 || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::with_draw_target(Some(secs as u64), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(pb)
}

fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| Error::Protocol("a generator thread panicked".into()))?
}

fn probe_payload(size: usize, p: usize) -> Vec<u8> {
    let s = if size == 5 {
        format!("P{p:05}")
    } else {
        format!("P{p:04}")
    };
    s.into_bytes()
}

/// The `PUB` frame of publisher `p`'s probe: a payload whose length differs from `size`, so
/// subscribers tell it from the measured messages.
fn probe_frame(subject: &str, size: usize, p: usize) -> Vec<u8> {
    let payload = probe_payload(size, p);
    let mut frame = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(b"\r\n");
    frame
}

fn parse_probe(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload.get(1..)?).ok()?.parse().ok()
}

const SUBJECT: &str = "bench.0";

/// The subjects a run publishes on (`--subjects`): `bench.0` alone, or N subjects
/// `bench.0.<k>` (k zero-padded to one width, so that every frame has the same length) that
/// the subscribers take with `bench.0.*`. Each message's subject then differs from the one
/// before it, and past a server's match cache (about a thousand subjects in nats-server and
/// in Tern) each one is a walk of its subject index.
#[derive(Debug, Clone, Copy)]
struct Subjects {
    n: u64,
    width: usize,
}

impl Subjects {
    fn of(o: &Opts) -> Self {
        let n = o.subjects.max(1) as u64;
        let width = if n > 1 { (n - 1).to_string().len() } else { 0 };
        Subjects { n, width }
    }

    /// What the subscribers subscribe to.
    fn filter(&self) -> String {
        self.under(SUBJECT).0
    }

    /// The first subject: the one batches are built with and probes go to.
    fn first(&self) -> String {
        self.under(SUBJECT).1
    }

    /// The subscription that takes the subjects under `prefix`, and the first of them:
    /// `prefix` itself for one subject, else `prefix.*` and `prefix.<0…0>`.
    fn under(&self, prefix: &str) -> (String, String) {
        if self.n > 1 {
            let first = format!("{prefix}.{}", "0".repeat(self.width));
            (format!("{prefix}.*"), first)
        } else {
            (prefix.into(), prefix.into())
        }
    }

    /// Gives the first `n` frames of `batch` the subjects numbered from `next` on, and
    /// returns the number after them.
    fn number(&self, batch: &mut PubBatch, n: usize, next: u64) -> u64 {
        self.number_at("PUB ".len() + SUBJECT.len() + 1, batch, n, next)
    }

    /// [`Subjects::number`] of the token at byte `at` of each frame.
    fn number_at(&self, at: usize, batch: &mut PubBatch, n: usize, next: u64) -> u64 {
        if self.n == 1 {
            return next;
        }
        batch.number(n, at, self.width, next, self.n);
        (next + n as u64) % self.n
    }
}

/// Where request/reply runs send their requests.
const REQUEST: &str = "bench.req";

/// One requester's requests: its reply subject `_INBOX.bench.<i>`, or with `--subjects` a
/// reply subject per request (`_INBOX.bench.<i>.<k>`, k in turn) under one wildcard
/// subscription, as async-nats and nats.go make their requests.
struct Requests {
    /// What the requester subscribes to for its replies.
    filter: String,
    batch: PubBatch,
    subjects: Subjects,
    /// Offset of the reply's last token in the frame.
    at: usize,
    next: u64,
}

impl Requests {
    fn new(o: &Opts, i: usize) -> Self {
        let subjects = Subjects::of(o);
        let (filter, reply) = subjects.under(&format!("_INBOX.bench.{i}"));
        let at = "PUB ".len() + REQUEST.len() + 1 + reply.len() - subjects.width;
        Requests {
            filter,
            batch: PubBatch::new(REQUEST, Some(&reply), o.size.max(8), 1),
            subjects,
            at,
            next: 0,
        }
    }

    /// The next request's frame, its payload stamped with `stamp`.
    fn next(&mut self, stamp: u64) -> &[u8] {
        self.next = self
            .subjects
            .number_at(self.at, &mut self.batch, 1, self.next);
        self.batch.stamp(1, stamp);
        self.batch.frames(1)
    }
}

/// Publish/subscribe run: throughput (closed loop, flow-controlled) or open-loop latency.
fn flow(t: &Target, o: &Opts, f: &Flow) -> Result<Report> {
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        probe_seen: (0..f.subs * f.pubs)
            .map(|_| AtomicBool::new(false))
            .collect(),
    });
    // Subscribers first, each registered (PONG) before the next is opened.
    let mut sub_conns = Vec::new();
    for i in 0..f.subs {
        let mut c = t.sub_side().connect(
            &format!("bench-sub-{i}"),
            o.placement.subscriber(i, f.pairs),
        )?;
        let filter = Subjects::of(o).under(&f.prefix(i)).0;
        let line = match f.queue {
            Some(q) => format!("SUB {filter} {q} 1\r\n"),
            None => format!("SUB {filter} 1\r\n"),
        };
        c.write(line.as_bytes())?;
        c.flush()?;
        sub_conns.push(c);
    }
    let mut pub_conns = Vec::new();
    for i in 0..f.pubs {
        pub_conns.push(t.connect(&format!("bench-pub-{i}"), o.placement.publisher(i, f.pairs))?);
    }
    let sub_threads = if f.poll_subs { 1 } else { f.subs };
    let threads = 1 + sub_threads + f.pubs;
    let go = Arc::new(Barrier::new(threads));
    let probed = Arc::new(Barrier::new(1 + f.pubs));
    let record_latency = f.open_loop;

    let mut sub_handles = Vec::new();
    if f.poll_subs {
        let (sh, go, o) = (sh.clone(), go.clone(), o.clone());
        let pubs = f.pubs;
        let core = core_for(&o, 1);
        sub_handles.push(thread::spawn(move || {
            pin(core);
            go.wait();
            subscribers_polled(sub_conns, &sh, &o, pubs, record_latency)
        }));
    } else {
        for (i, c) in sub_conns.into_iter().enumerate() {
            let (sh, go, o) = (sh.clone(), go.clone(), o.clone());
            let pubs = f.pubs;
            let core = core_for(&o, 1 + i);
            sub_handles.push(thread::spawn(move || {
                pin(core);
                go.wait();
                subscriber(c, &sh, &o, i, pubs, record_latency)
            }));
        }
    }
    let quota = |i: usize| {
        o.msgs.map(|m| {
            let per = m / f.pubs as u64;
            per + u64::from((i as u64) < m % f.pubs as u64)
        })
    };
    let mut pub_handles = Vec::new();
    for (i, c) in pub_conns.into_iter().enumerate() {
        let (sh, go, probed, o, f) = (sh.clone(), go.clone(), probed.clone(), o.clone(), f.clone());
        let core = core_for(&o, 1 + sub_threads + i);
        let q = quota(i);
        pub_handles.push(thread::spawn(move || {
            pin(core);
            go.wait();
            let mut c = c;
            let r = probe(&mut c, &sh, i, &f, &o);
            probed.wait();
            r?;
            if f.open_loop {
                open_loop_publisher(c, &sh, &o, q, f.pubs)
            } else {
                publisher(c, &sh, &o, q, f.factor, &f.prefix(i))
            }
        }));
    }
    go.wait();
    probed.wait();
    let meter = Meter::start(t);
    let start_ns = now_ns();
    let pb = progress_bar(o, o.duration.as_secs_f64());
    // Wait for publishers, with a progress bar while they run.
    let mut pub_results = Vec::new();
    for h in pub_handles {
        while !h.is_finished() {
            thread::sleep(Duration::from_millis(20));
            if let Some(pb) = &pb {
                pb.set_position(meter.t0.elapsed().as_secs());
                pb.set_message(format!(
                    "{} msgs delivered",
                    stats::si(sh.received.load(Ordering::Relaxed) as f64)
                ));
            }
        }
        pub_results.push(join(h));
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let sent = sh.sent.load(Ordering::SeqCst);
    let expected = sent * f.factor;
    let deadline = Instant::now() + o.timeout;
    while sh.received.load(Ordering::SeqCst) < expected
        && Instant::now() < deadline
        && !sh.abort.load(Ordering::SeqCst)
    {
        thread::sleep(Duration::from_micros(200));
    }
    sh.stop.store(true, Ordering::SeqCst);
    let mut pub_end = start_ns;
    for r in pub_results {
        pub_end = pub_end.max(r?);
    }
    let mut hist = new_histogram();
    let mut last_rx = start_ns;
    let mut received = 0;
    for h in sub_handles {
        let s = join(h)?;
        received += s.count;
        last_rx = last_rx.max(s.last_rx);
        if let Some(h) = s.hist {
            let _ = hist.add(&h);
        }
    }
    let times = (start_ns, pub_end, last_rx);
    let hist = record_latency.then_some(&hist);
    Ok(flow_report(o, f, (sent, received), times, hist, &meter))
}

/// The report of a publish/subscribe run: `(sent, received)` messages, publishing from
/// `start_ns` to `pub_end` and receiving until `last_rx`, with the latency histogram of an
/// open-loop run.
fn flow_report(
    o: &Opts,
    f: &Flow,
    (sent, received): (u64, u64),
    (start_ns, pub_end, last_rx): (u64, u64, u64),
    hist: Option<&Histogram<u64>>,
    meter: &Meter,
) -> Report {
    let expected = sent * f.factor;
    let mut r = Report {
        size: o.size,
        pubs: f.pubs,
        subs: f.subs,
        sent,
        received,
        expected,
        lost: expected.saturating_sub(received),
        ..Report::default()
    };
    meter.finish(&mut r, if received > 0 { received } else { sent });
    let in_s = (pub_end - start_ns) as f64 / 1e9;
    let out_s = (last_rx.max(pub_end) - start_ns) as f64 / 1e9;
    r.elapsed_s = out_s;
    r.msgs_in_per_s = sent as f64 / in_s;
    r.mb_in_per_s = r.msgs_in_per_s * o.size as f64 / 1e6;
    if f.subs > 0 {
        r.msgs_out_per_s = received as f64 / out_s;
        r.mb_out_per_s = r.msgs_out_per_s * o.size as f64 / 1e6;
    }
    if let Some(h) = hist {
        r.latency = Some(latency(h));
        r.extra.insert("rate_target".into(), o.rate as f64);
    }
    r
}

fn core_for(o: &Opts, thread_index: usize) -> Option<usize> {
    (!o.pin.is_empty()).then(|| o.pin[thread_index % o.pin.len()])
}

/// Publishes probe messages until every subscriber of publisher `p` (any member, for a
/// queue group) has seen one from it: on a sharded server interest reaches other shards
/// asynchronously.
fn probe(c: &mut Conn, sh: &Shared, p: usize, f: &Flow, o: &Opts) -> Result<()> {
    let subs = f.probed_by(p);
    if subs.is_empty() {
        return Ok(());
    }
    let frame = probe_frame(&Subjects::of(o).under(&f.prefix(p)).1, o.size, p);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = subs
            .clone()
            .filter(|s| sh.probe_seen[s * f.pubs + p].load(Ordering::SeqCst))
            .count();
        if (f.queue.is_some() && seen > 0) || seen == subs.len() {
            return Ok(());
        }
        if Instant::now() > deadline || sh.abort.load(Ordering::SeqCst) {
            sh.abort.store(true, Ordering::SeqCst);
            return Err(Error::Timeout(format!(
                "interest did not reach publisher {p} ({seen}/{} subscribers saw a probe)",
                subs.len()
            )));
        }
        c.write(&frame)?;
        c.flush()?;
        thread::sleep(Duration::from_millis(1));
    }
}

/// Closed-loop publisher on the subjects under `prefix`. Returns the time (ns) its final PONG
/// arrived.
fn publisher(
    mut c: Conn,
    sh: &Shared,
    o: &Opts,
    quota: Option<u64>,
    factor: u64,
    prefix: &str,
) -> Result<u64> {
    let subjects = Subjects::of(o);
    let first = subjects.under(prefix).1;
    let at = "PUB ".len() + prefix.len() + 1;
    let frame_len = PubBatch::new(&first, None, o.size, 1).frame_len;
    let per_batch = (64 * 1024 / frame_len).clamp(1, 4096);
    let mut batch = PubBatch::new(&first, None, o.size, per_batch);
    let mut next = 0;
    let ping_bytes = 256 * 1024;
    let window_msgs = ((o.window / frame_len).max(64) as u64) * factor.max(1);
    let end = Instant::now() + o.duration;
    let mut sent = 0u64;
    let mut since_ping = 0usize;
    loop {
        let n = match quota {
            Some(q) => (q - sent).min(per_batch as u64) as usize,
            None if Instant::now() >= end => 0,
            None => per_batch,
        };
        if n == 0 || sh.abort.load(Ordering::Relaxed) {
            break;
        }
        batch.stamp(n, now_ns());
        next = subjects.number_at(at, &mut batch, n, next);
        c.write(batch.frames(n))?;
        sent += n as u64;
        let total = sh.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        since_ping += n * frame_len;
        if since_ping >= ping_bytes {
            since_ping = 0;
            c.ping()?;
            if c.pings_out > 4 {
                c.wait_pongs(2, Duration::from_secs(30))?;
            }
        }
        if factor > 0 {
            // Never let the server queue more than the window for any receiver.
            let mut seen = sh.received.load(Ordering::Relaxed);
            let mut since = Instant::now();
            while total * factor > seen + window_msgs && !sh.abort.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_micros(50));
                let now = sh.received.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() > o.timeout {
                    sh.abort.store(true, Ordering::SeqCst);
                    return Err(Error::Timeout(
                        "subscribers stopped receiving (messages lost?)".into(),
                    ));
                }
            }
        }
    }
    c.flush()?;
    Ok(now_ns())
}

/// Open-loop publisher: message i is due at start + i/rate and carries that intended time, so
/// a stalled server shows up as latency instead of as fewer samples.
fn open_loop_publisher(
    mut c: Conn,
    sh: &Shared,
    o: &Opts,
    quota: Option<u64>,
    pubs: usize,
) -> Result<u64> {
    let rate = (o.rate / pubs as u64).max(1);
    let interval = 1e9 / rate as f64;
    let total = quota.unwrap_or((o.duration.as_secs_f64() * rate as f64) as u64);
    let subjects = Subjects::of(o);
    let mut batch = PubBatch::new(&subjects.first(), None, o.size, 1024);
    let mut next = 0;
    fine_timer_slack();
    let start = now_ns();
    let mut i = 0u64;
    while i < total && !sh.abort.load(Ordering::Relaxed) {
        let now = now_ns();
        let due = (((now - start) as f64 / interval) as u64 + 1).min(total);
        if due > i {
            let n = ((due - i) as usize).min(batch.count());
            for j in 0..n {
                batch.stamp_one(j, start + ((i + j as u64) as f64 * interval) as u64);
            }
            next = subjects.number(&mut batch, n, next);
            c.write(batch.frames(n))?;
            i += n as u64;
            sh.sent.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            let next = start + (i as f64 * interval) as u64;
            let gap = next.saturating_sub(now);
            if gap > 20_000 {
                // Timer slack is 1 ns on this thread, so this wakes within a few µs.
                thread::sleep(Duration::from_nanos(gap - 5_000));
            } else {
                // Yield rather than spin: in placement (a) the subscriber shares this core,
                // and a spinning publisher would hold it off for a whole scheduler slice.
                thread::yield_now();
            }
        }
    }
    c.flush()?;
    Ok(now_ns())
}

/// Timer slack of 1 ns on the calling thread, so its sleeps and timeouts end within a few
/// µs of when they are due (the default slack is 50 µs).
fn fine_timer_slack() {
    // SAFETY: prctl on the calling thread with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Openpoll (see [`Kind::Openpoll`]): one subscriber and one publisher connection, served by
/// one pinned thread.
fn openpoll(t: &Target, o: &Opts) -> Result<Report> {
    let mut sub = t
        .sub_side()
        .connect("bench-sub-0", o.placement.subscriber(0, false))?;
    sub.write(format!("SUB {} 1\r\n", Subjects::of(o).filter()).as_bytes())?;
    sub.flush()?;
    let publ = t.connect("bench-pub-0", o.placement.publisher(0, false))?;
    let (o, target) = (o.clone(), t.clone());
    let core = core_for(&o, 0);
    // The polling thread is pinned; the calling thread never is (see `run`).
    let h = thread::spawn(move || {
        pin(core);
        open_polled(sub, publ, &o, &target)
    });
    join(h)
}

/// The openpoll thread: a probe until the subscriber sees one, then message i due at
/// start + i/rate, stamped with that intended time, written without blocking; deliveries
/// read whenever there is nothing to write.
fn open_polled(mut sub: Conn, mut publ: Conn, o: &Opts, t: &Target) -> Result<Report> {
    use std::os::unix::io::AsRawFd;
    let sh = Shared {
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        probe_seen: vec![AtomicBool::new(false)],
    };
    let mut r = SubResult::new(true);
    sub.set_nonblocking()?;
    // Interest may still be travelling to the publisher's shard or server.
    let subjects = Subjects::of(o);
    let probe = probe_frame(&subjects.first(), o.size, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sh.probe_seen[0].load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            return Err(Error::Timeout(
                "interest did not reach the publisher (no probe seen)".into(),
            ));
        }
        publ.write(&probe)?;
        publ.flush()?;
        while poll_read(&mut sub, "the subscriber")? {
            take_frames(&mut sub, &sh, o, 0, 1, &mut r)?;
        }
        thread::sleep(Duration::from_millis(1));
    }
    publ.set_nonblocking()?;
    fine_timer_slack();
    let interval = 1e9 / o.rate.max(1) as f64;
    let total = o
        .msgs
        .unwrap_or((o.duration.as_secs_f64() * o.rate as f64) as u64);
    let due_at = |i: u64| (i as f64 * interval) as u64;
    let mut batch = PubBatch::new(&subjects.first(), None, o.size, 1024);
    let mut next = 0;
    let mut fds = [sub.stream.as_raw_fd(), publ.stream.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    fds[0].events = libc::POLLIN;
    let meter = Meter::start(t);
    let start = now_ns();
    let (mut i, mut pub_end) = (0u64, start);
    // The frames of `batch` being written, and how many of their bytes the socket took.
    let (mut frames, mut written) = (0usize, 0usize);
    loop {
        let now = now_ns();
        let mut busy = false;
        if frames == 0 && i < total {
            let due = (((now - start) as f64 / interval) as u64 + 1).min(total);
            if due > i {
                frames = ((due - i) as usize).min(batch.count());
                for j in 0..frames {
                    batch.stamp_one(j, start + due_at(i + j as u64));
                }
                next = subjects.number(&mut batch, frames, next);
                written = 0;
                i += frames as u64;
            }
        }
        if frames > 0 {
            match publ.stream.write(&batch.frames(frames)[written..]) {
                Ok(n) => {
                    written += n;
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::Io("write to server".into(), e)),
            }
            if written == batch.frames(frames).len() {
                sh.sent.fetch_add(frames as u64, Ordering::Relaxed);
                frames = 0;
                if i == total {
                    pub_end = now_ns();
                }
            }
        }
        while poll_read(&mut sub, "the subscriber")? {
            busy = true;
            take_frames(&mut sub, &sh, o, 0, 1, &mut r)?;
        }
        let published = i == total && frames == 0;
        if published && (r.count >= total || now_ns() > pub_end + o.timeout.as_nanos() as u64) {
            break;
        }
        if !busy {
            // Until the next message is due, a delivery arrives, or the socket takes more.
            let wait = if frames == 0 && i < total {
                (start + due_at(i)).saturating_sub(now_ns())
            } else {
                20_000_000
            };
            fds[1].events = if frames > 0 { libc::POLLOUT } else { 0 };
            let ts = libc::timespec {
                tv_sec: (wait / 1_000_000_000) as libc::time_t,
                tv_nsec: (wait % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `fds` is a live array of two pollfd structs, `ts` a valid timespec,
            // and a null signal mask leaves the thread's mask as it is.
            if unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(Error::Io("ppoll".into(), e));
                }
            }
        }
    }
    let f = Flow::new(1, 1, 1, None);
    let hist = r.hist.as_ref();
    let times = (start, pub_end, r.last_rx);
    let sent = sh.sent.load(Ordering::Relaxed);
    Ok(flow_report(o, &f, (sent, r.count), times, hist, &meter))
}

struct SubResult {
    count: u64,
    last_rx: u64,
    hist: Option<Histogram<u64>>,
}

impl SubResult {
    /// Nothing received yet; a latency histogram if `lat`.
    fn new(lat: bool) -> Self {
        SubResult {
            count: 0,
            last_rx: 0,
            hist: lat.then(new_histogram),
        }
    }
}

/// Reader thread of one subscriber: counts deliveries, records latency, answers PING.
fn subscriber(
    mut c: Conn,
    sh: &Shared,
    o: &Opts,
    idx: usize,
    pubs: usize,
    lat: bool,
) -> Result<SubResult> {
    c.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut r = SubResult::new(lat);
    loop {
        match c.parser.read_from(&mut c.stream) {
            Ok(0) => return Err(closed(sh)),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if sh.stop.load(Ordering::Relaxed) || sh.abort.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
            Err(e) => return Err(read_failed(sh, e)),
        }
        take_frames(&mut c, sh, o, idx, pubs, &mut r)?;
    }
    Ok(r)
}

/// One reader thread for every subscriber: waits in poll(2) until some socket has data,
/// then reads each of them until it would block.
fn subscribers_polled(
    mut conns: Vec<Conn>,
    sh: &Shared,
    o: &Opts,
    pubs: usize,
    lat: bool,
) -> Result<SubResult> {
    use std::os::unix::io::AsRawFd;
    for c in &conns {
        c.set_nonblocking()?;
    }
    let mut fds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut r = SubResult::new(lat);
    while !sh.stop.load(Ordering::Relaxed) && !sh.abort.load(Ordering::Relaxed) {
        let mut any = false;
        for (idx, c) in conns.iter_mut().enumerate() {
            loop {
                match c.parser.read_from(&mut c.stream) {
                    Ok(0) => return Err(closed(sh)),
                    Ok(_) => {
                        any = true;
                        take_frames(c, sh, o, idx, pubs, &mut r)?;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(read_failed(sh, e)),
                }
            }
        }
        if !any {
            // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(read_failed(sh, e));
                }
            }
        }
    }
    Ok(r)
}

/// Counts and times the deliveries a read brought, notes probes, answers PING.
fn take_frames(
    c: &mut Conn,
    sh: &Shared,
    o: &Opts,
    idx: usize,
    pubs: usize,
    r: &mut SubResult,
) -> Result<()> {
    let now = now_ns();
    let mut n = 0u64;
    let mut pong = false;
    loop {
        n += c.parser.take_repeats(o.size, |payload| {
            if let (Some(h), Some(ts)) = (r.hist.as_mut(), payload_stamp(payload)) {
                record(h, now.saturating_sub(ts));
            }
        });
        let Some(f) = c.parser.next_frame()? else {
            break;
        };
        match f {
            Frame::Msg { payload, .. } if payload.len() == o.size => {
                n += 1;
                if let (Some(h), Some(ts)) = (r.hist.as_mut(), payload_stamp(payload)) {
                    record(h, now.saturating_sub(ts));
                }
            }
            Frame::Msg { payload, .. } => {
                if let Some(p) = parse_probe(payload).filter(|&p| p < pubs) {
                    sh.probe_seen[idx * pubs + p].store(true, Ordering::SeqCst);
                }
            }
            Frame::Ping => pong = true,
            Frame::Err(e) => {
                sh.abort.store(true, Ordering::SeqCst);
                return Err(Error::Server(String::from_utf8_lossy(e).into_owned()));
            }
            _ => {}
        }
    }
    if pong {
        c.write(b"PONG\r\n")?;
    }
    if n > 0 {
        r.count += n;
        r.last_rx = now;
        sh.received.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

fn closed(sh: &Shared) -> Error {
    sh.abort.store(true, Ordering::SeqCst);
    Error::Protocol("server closed a subscriber connection".into())
}

fn read_failed(sh: &Shared, e: std::io::Error) -> Error {
    sh.abort.store(true, Ordering::SeqCst);
    Error::Io("read on a subscriber".into(), e)
}

/// The responders of a request/reply run, subscribed to the request subject: a queue group
/// when there is more than one, a plain subscription otherwise.
fn responder_conns(t: &Target, o: &Opts, responders: usize) -> Result<Vec<Conn>> {
    let line = if responders > 1 {
        format!("SUB {REQUEST} resp 1\r\n")
    } else {
        format!("SUB {REQUEST} 1\r\n")
    };
    (0..responders)
        .map(|i| {
            let mut c = t
                .sub_side()
                .connect(&format!("bench-resp-{i}"), o.placement.subscriber(i, false))?;
            c.write(line.as_bytes())?;
            c.flush()?;
            Ok(c)
        })
        .collect()
}

/// The requesters of a request/reply run, each subscribed to its reply subjects.
fn requester_conns(t: &Target, o: &Opts, requesters: usize) -> Result<Vec<(Conn, Requests)>> {
    (0..requesters)
        .map(|i| {
            let mut c = t.connect(&format!("bench-req-{i}"), o.placement.publisher(i, false))?;
            let requests = Requests::new(o, i);
            c.write(format!("SUB {} 1\r\n", requests.filter).as_bytes())?;
            c.flush()?;
            Ok((c, requests))
        })
        .collect()
}

/// Request/reply: `requesters` synchronous requesters, `responders` responders in a queue
/// group (a plain subscription when there is one responder).
fn reqreply(t: &Target, o: &Opts, requesters: usize, responders: usize) -> Result<Report> {
    let requesters = requesters.max(1);
    let responders = responders.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut resp_handles = Vec::new();
    for (i, c) in responder_conns(t, o, responders)?.into_iter().enumerate() {
        let stop = stop.clone();
        let core = core_for(o, 1 + i);
        resp_handles.push(thread::spawn(move || {
            pin(core);
            responder(c, &stop)
        }));
    }
    let req_conns = requester_conns(t, o, requesters)?;
    let go = Arc::new(Barrier::new(requesters + 1));
    let mut handles = Vec::new();
    for (i, (c, requests)) in req_conns.into_iter().enumerate() {
        let (go, o) = (go.clone(), o.clone());
        let core = core_for(&o, 1 + responders + i);
        let quota = o.msgs.map(|m| (m / requesters as u64).max(1));
        handles.push(thread::spawn(move || {
            pin(core);
            requester(c, requests, &o, &go, quota)
        }));
    }
    go.wait(); // every requester has had one reply: interest is everywhere
    go.wait();
    let meter = Meter::start(t);
    let pb = progress_bar(o, o.duration.as_secs_f64());
    let mut hist = new_histogram();
    let (mut sent, mut got) = (0, 0);
    let mut results = Vec::new();
    for h in handles {
        while !h.is_finished() {
            thread::sleep(Duration::from_millis(20));
            if let Some(pb) = &pb {
                pb.set_position(meter.t0.elapsed().as_secs());
            }
        }
        results.push(join(h));
    }
    let wall = meter.t0.elapsed().as_secs_f64();
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    stop.store(true, Ordering::SeqCst);
    for r in results {
        let (s, g, h) = r?;
        sent += s;
        got += g;
        let _ = hist.add(&h);
    }
    let r = round_trip_report(
        o,
        (requesters, responders),
        (sent, got),
        wall,
        &hist,
        &meter,
    );
    for h in resp_handles {
        join(h)?;
    }
    Ok(r)
}

fn requester(
    mut c: Conn,
    mut requests: Requests,
    o: &Opts,
    go: &Barrier,
    quota: Option<u64>,
) -> Result<(u64, u64, Histogram<u64>)> {
    // Warm up until one reply comes back (interest may still be travelling between shards).
    c.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let warm = loop {
        c.write(requests.next(now_ns()))?;
        match wait_reply(&mut c) {
            Ok(Some(_)) => break Ok(()),
            Ok(None) if Instant::now() < deadline => continue,
            Ok(None) => break Err(Error::Timeout("no reply to warm-up requests".into())),
            Err(e) => break Err(e),
        }
    };
    go.wait();
    go.wait();
    warm?;
    c.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let mut hist = new_histogram();
    let end = Instant::now() + o.duration;
    let (mut sent, mut got) = (0u64, 0u64);
    loop {
        let more = match quota {
            Some(q) => sent < q,
            None => sent & 15 != 0 || Instant::now() < end,
        };
        if !more {
            break;
        }
        let t0 = now_ns();
        c.write(requests.next(t0))?;
        sent += 1;
        // Drop late replies to earlier (timed-out) requests by checking the stamp.
        loop {
            match wait_reply(&mut c)? {
                Some(ts) if ts == t0 => {
                    record(&mut hist, now_ns() - t0);
                    got += 1;
                    break;
                }
                Some(_) => continue,
                None => break,
            }
        }
    }
    Ok((sent, got, hist))
}

/// Reads until one reply arrives (its stamp) or the read timeout passes (`None`).
fn wait_reply(c: &mut Conn) -> Result<Option<u64>> {
    loop {
        let mut stamp = None;
        let mut pong = false;
        while let Some(f) = c.parser.next_frame()? {
            match f {
                Frame::Msg { payload, .. } => {
                    stamp = payload_stamp(payload);
                    break;
                }
                Frame::Ping => pong = true,
                Frame::Err(e) => return Err(Error::Server(String::from_utf8_lossy(e).into())),
                _ => {}
            }
        }
        if pong {
            c.write(b"PONG\r\n")?;
        }
        if stamp.is_some() {
            return Ok(stamp);
        }
        match c.parser.read_from(&mut c.stream) {
            Ok(0) => return Err(Error::Protocol("server closed a requester".into())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) => return Err(Error::Io("read on a requester".into(), e)),
        }
    }
}

/// Echoes every request's payload to its reply subject, one write per read.
fn responder(mut c: Conn, stop: &AtomicBool) -> Result<()> {
    c.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        match c.parser.read_from(&mut c.stream) {
            Ok(0) => return Ok(()),
            Ok(_) => answer(&mut c, &mut out)?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(e) => return Err(Error::Io("read on a responder".into(), e)),
        }
    }
}

/// Answers the requests read so far on a responder's connection, in one write.
fn answer(c: &mut Conn, out: &mut Vec<u8>) -> Result<()> {
    while let Some(f) = c.parser.next_frame()? {
        match f {
            Frame::Msg {
                reply: Some(reply),
                payload,
                ..
            } => {
                out.extend_from_slice(b"PUB ");
                out.extend_from_slice(reply);
                let _ = write!(out, " {}\r\n", payload.len());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Ping => out.extend_from_slice(b"PONG\r\n"),
            Frame::Err(e) => return Err(Error::Server(String::from_utf8_lossy(e).into())),
            _ => {}
        }
    }
    if !out.is_empty() {
        c.write(out)?;
        out.clear();
    }
    Ok(())
}

/// A requester of [`reqpoll`]: its connection, its requests, and the one outstanding.
struct Polled {
    c: Conn,
    requests: Requests,
    /// The stamp (send time) of the request waiting for its reply.
    waiting: Option<u64>,
}

impl Polled {
    fn send(&mut self) -> Result<()> {
        let t0 = now_ns();
        self.c.write(self.requests.next(t0))?;
        self.waiting = Some(t0);
        Ok(())
    }

    /// Reads what arrived without waiting: the stamp of the awaited reply if it came (a late
    /// reply to a request given up on has another stamp and is dropped).
    fn reply(&mut self) -> Result<Option<u64>> {
        if !poll_read(&mut self.c, "a requester")? {
            return Ok(None);
        }
        let mut got = None;
        while let Some(f) = self.c.parser.next_frame()? {
            match f {
                Frame::Msg { payload, .. }
                    if self.waiting.is_some() && payload_stamp(payload) == self.waiting =>
                {
                    got = self.waiting.take();
                }
                Frame::Ping => self.c.write(b"PONG\r\n")?,
                Frame::Err(e) => return Err(Error::Server(String::from_utf8_lossy(e).into())),
                _ => {}
            }
        }
        Ok(got)
    }
}

/// Request/reply with every requester and responder in one generator thread that polls
/// their sockets without blocking, never a sleep: no generator thread is woken in a round
/// trip, so the latency is the server's and the kernel's (how a latency rig's client
/// measures), and with many requesters the generator's one busy thread does not pace the
/// run the way `requesters`' thread per connection does.
fn reqpoll(t: &Target, o: &Opts) -> Result<Report> {
    let (requesters, responders) = (o.pubs.max(1), o.subs.max(1));
    let mut resps = responder_conns(t, o, responders)?;
    let mut reqs = Vec::new();
    for (c, requests) in requester_conns(t, o, requesters)? {
        c.set_nonblocking()?;
        reqs.push(Polled {
            c,
            requests,
            waiting: None,
        });
    }
    for c in &resps {
        c.set_nonblocking()?;
    }
    let (o, target) = (o.clone(), t.clone());
    let core = core_for(&o, 0);
    // The polling thread is pinned; the calling thread never is (see `run`).
    let h = thread::spawn(move || -> Result<Report> {
        pin(core);
        let mut out = Vec::with_capacity(64 * 1024);
        // One pass over every socket: answers the requests that arrived, and calls `next`
        // for each requester whose reply came back (with its latency) or whose request is
        // older than `limit` (with none).
        let mut sweep = |reqs: &mut [Polled],
                         limit: u64,
                         next: &mut dyn FnMut(&mut Polled, Option<u64>) -> Result<()>|
         -> Result<()> {
            for r in resps.iter_mut() {
                if poll_read(r, "a responder")? {
                    answer(r, &mut out)?;
                }
            }
            // One clock read for the timeouts; a reply is timed when it is read.
            let now = now_ns();
            for q in reqs.iter_mut() {
                if let Some(t0) = q.reply()? {
                    next(q, Some(now_ns().saturating_sub(t0)))?;
                } else if q.waiting.is_some_and(|t0| now.saturating_sub(t0) > limit) {
                    q.waiting = None;
                    next(q, None)?;
                }
            }
            Ok(())
        };
        // Warm up until every requester has had a reply (interest may still be travelling
        // between shards), asking again every 100 ms.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut cold = reqs.len();
        for q in reqs.iter_mut() {
            q.send()?;
        }
        while cold > 0 {
            if Instant::now() > deadline {
                return Err(Error::Timeout("no reply to warm-up requests".into()));
            }
            sweep(&mut reqs, 100_000_000, &mut |q, lat| match lat {
                Some(_) => {
                    cold -= 1;
                    Ok(())
                }
                None => q.send(),
            })?;
        }
        let meter = Meter::start(&target);
        let mut hist = new_histogram();
        let end = Instant::now() + o.duration;
        let quota = o
            .msgs
            .map(|m| (m / reqs.len() as u64).max(1) * reqs.len() as u64);
        let (mut sent, mut got) = (0u64, 0u64);
        let more = |sent: u64| match quota {
            Some(q) => sent < q,
            None => Instant::now() < end,
        };
        for q in reqs.iter_mut() {
            q.send()?;
            sent += 1;
        }
        while reqs.iter().any(|q| q.waiting.is_some()) {
            sweep(&mut reqs, 1_000_000_000, &mut |q, lat| {
                if let Some(ns) = lat {
                    record(&mut hist, ns);
                    got += 1;
                }
                if more(sent) {
                    q.send()?;
                    sent += 1;
                }
                Ok(())
            })?;
        }
        let wall = meter.t0.elapsed().as_secs_f64();
        Ok(round_trip_report(
            &o,
            (requesters, responders),
            (sent, got),
            wall,
            &hist,
            &meter,
        ))
    });
    join(h)
}

/// The report of a request/reply run: `(sent, got)` round trips of `o.size` bytes by
/// `(requesters, responders)` in `wall` seconds, with their latency. CPU is per round trip
/// (two deliveries through the server).
fn round_trip_report(
    o: &Opts,
    (requesters, responders): (usize, usize),
    (sent, got): (u64, u64),
    wall: f64,
    hist: &Histogram<u64>,
    meter: &Meter,
) -> Report {
    let mut r = Report {
        size: o.size,
        pubs: requesters,
        subs: responders,
        sent,
        received: got,
        expected: sent,
        lost: sent.saturating_sub(got),
        elapsed_s: wall,
        msgs_in_per_s: sent as f64 / wall,
        msgs_out_per_s: got as f64 / wall,
        mb_in_per_s: sent as f64 / wall * o.size as f64 / 1e6,
        mb_out_per_s: got as f64 / wall * o.size as f64 / 1e6,
        latency: Some(latency(hist)),
        ..Report::default()
    };
    meter.finish(&mut r, got);
    r
}

/// One non-blocking read into the connection's parser: whether it brought bytes.
fn poll_read(c: &mut Conn, what: &str) -> Result<bool> {
    match c.parser.read_from(&mut c.stream) {
        Ok(0) => Err(Error::Protocol(format!("server closed {what}"))),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(Error::Io(format!("read on {what}"), e)),
    }
}

/// Subjects for preloaded subscriptions: literals, `*` and `>` at several depths, none of
/// which matches the benchmark subject.
pub fn preload_subject(i: usize) -> String {
    match i % 5 {
        0 => format!("idle.{i}.lit.x"),
        1 => format!("idle.{i}.*"),
        2 => format!("idle.{i}.>"),
        3 => format!("*.idle{i}.x"),
        _ => format!("bench.{i}.*.y"),
    }
}

fn subscale(t: &Target, o: &Opts) -> Result<Report> {
    let n_conns = o.idle_conns.max(1);
    let rss0 = t.rss();
    let t0 = Instant::now();
    let mut idle = Vec::new();
    for k in 0..n_conns {
        idle.push(t.connect(&format!("bench-idle-{k}"), Shard::Any)?);
    }
    let mut bufs = vec![Vec::with_capacity(1 << 20); n_conns];
    for i in 0..o.preload {
        let b = &mut bufs[i % n_conns];
        let _ = write!(b, "SUB {} {}\r\n", preload_subject(i), i + 1);
        if b.len() >= 1 << 20 {
            idle[i % n_conns].write(b)?;
            b.clear();
        }
    }
    for (c, b) in idle.iter_mut().zip(&bufs) {
        c.write(b)?;
    }
    for c in &mut idle {
        c.ping()?;
    }
    for c in &mut idle {
        c.wait_pongs(0, Duration::from_secs(300))?;
    }
    let load_s = t0.elapsed().as_secs_f64();
    let rss1 = t.rss();
    let mut r = flow(t, o, &Flow::new(1, 1, 1, None))?;
    r.extra.insert("preloaded_subs".into(), o.preload as f64);
    r.extra.insert("preload_s".into(), load_s);
    r.extra
        .insert("preload_subs_per_s".into(), o.preload as f64 / load_s);
    if let (Some(a), Some(b)) = (rss0, rss1) {
        r.extra.insert(
            "rss_bytes_per_sub".into(),
            b.saturating_sub(a) as f64 / o.preload.max(1) as f64,
        );
    }
    drop(idle);
    Ok(r)
}

fn churn(t: &Target, o: &Opts) -> Result<Report> {
    let mut c = t.connect("bench-churn", Shard::Any)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let (stop2, ops2, rate) = (stop.clone(), ops.clone(), o.churn_rate.max(1));
    let core = core_for(o, 7);
    let h = thread::spawn(move || -> Result<f64> {
        pin(core);
        let start = Instant::now();
        let mut done = 0u64;
        let mut buf = Vec::with_capacity(64 * 1024);
        while !stop2.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while done < due && buf.len() < 60 * 1024 {
                let sid = done + 1;
                let subj = match done % 3 {
                    0 => format!("bench.c{done}"),
                    1 => format!("bench.c{done}.*"),
                    _ => format!("churn.*.{done}"),
                };
                let _ = write!(buf, "SUB {subj} {sid}\r\nUNSUB {sid}\r\n");
                done += 1;
            }
            if !buf.is_empty() {
                c.write(&buf)?;
                buf.clear();
                c.flush()?;
                ops2.store(done, Ordering::Relaxed);
            } else {
                thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    });
    thread::sleep(Duration::from_millis(100));
    let r = flow(t, o, &Flow::new(1, 1, 1, None));
    stop.store(true, Ordering::SeqCst);
    let achieved = join(h)?;
    let mut r = r?;
    r.extra
        .insert("churn_target_per_s".into(), o.churn_rate as f64);
    r.extra.insert("churn_pairs_per_s".into(), achieved);
    r.extra
        .insert("churn_pairs".into(), ops.load(Ordering::Relaxed) as f64);
    Ok(r)
}

fn conns(t: &Target, o: &Opts) -> Result<Report> {
    crate::conn::raise_nofile();
    let rss0 = t.rss();
    let meter = Meter::start(t);
    let mut held = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        let c = t
            .connect(&format!("bench-idle-{i}"), Shard::Any)
            .map_err(|e| Error::Config(format!("connection {i} of {}: {e}", o.conns)))?;
        c.stream
            .set_nonblocking(true)
            .ctx(|| "set nonblocking".into())?;
        held.push(c);
    }
    let secs = meter.t0.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(200));
    let rss1 = t.rss();
    let mut r = Report {
        elapsed_s: secs,
        ..Report::default()
    };
    meter.finish(&mut r, o.conns as u64);
    r.extra.insert("connections".into(), o.conns as f64);
    r.extra
        .insert("connects_per_s".into(), o.conns as f64 / secs);
    if let Some(b) = rss1 {
        r.extra.insert("server_rss_bytes".into(), b as f64);
        if let Some(a) = rss0 {
            r.extra.insert(
                "rss_bytes_per_conn".into(),
                b.saturating_sub(a) as f64 / o.conns.max(1) as f64,
            );
        }
    }
    drop(held);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_differ_from_payload_size() {
        for size in [0, 4, 5, 6, 16] {
            let p = probe_payload(size, 7);
            assert_ne!(p.len(), size);
            assert_eq!(parse_probe(&p), Some(7));
        }
        assert_eq!(parse_probe(b"abcdefghijklmnop"), None);
    }

    /// The reply subject of each request in turn, as a server reads it.
    fn reply_of(frame: &[u8]) -> String {
        let line = std::str::from_utf8(&frame[..frame.iter().position(|&b| b == b'\r').unwrap()]);
        line.unwrap().split(' ').nth(2).unwrap().to_string()
    }

    #[test]
    fn requests_take_a_reply_subject_each_in_turn() {
        let mut o = Opts {
            subjects: 3,
            ..Opts::default()
        };
        let mut r = Requests::new(&o, 2);
        assert_eq!(r.filter, "_INBOX.bench.2.*");
        let replies: Vec<String> = (0..4).map(|k| reply_of(r.next(k))).collect();
        assert_eq!(
            replies,
            [
                "_INBOX.bench.2.0",
                "_INBOX.bench.2.1",
                "_INBOX.bench.2.2",
                "_INBOX.bench.2.0"
            ]
        );
        assert_eq!(
            payload_stamp(&r.batch.bytes[r.batch.payload_offsets[0]..]),
            Some(3)
        );
        o.subjects = 1;
        let mut r = Requests::new(&o, 2);
        assert_eq!(r.filter, "_INBOX.bench.2");
        assert_eq!(reply_of(r.next(0)), "_INBOX.bench.2");
        assert_eq!(reply_of(r.next(1)), "_INBOX.bench.2");
    }
}
