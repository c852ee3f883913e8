//! Route connections (cluster links) on the shard that owns them (nats-server's `route.go`,
//! the I/O half; the wire format is `crate::route`).
//!
//! Shard 0 owns every route: it accepts on the cluster port and dials the configured routes
//! (forever, backing off from one second to eight). A route's interest becomes shard 0's
//! routed interest, which the other shards learn by the usual gossip (apart from shard 0's
//! clients' interest, so queue groups prefer members on this server), so they forward
//! matching messages to shard 0; shard 0 then sends each message once to every interested
//! route (an `RMSG` naming the queue groups the route must serve). What a route sends is
//! delivered here and on the other shards, never to another route (the one-hop rule). The
//! interest sent to routes is the server's own clients' interest (shard 0's clients plus the
//! other shards', and the exporters' subjects its stream imports need), never what routes
//! told us.

use super::*;
use crate::route::{self, RouteConnect, RouteInfo, RouteOp, RouteParser, RouteUrl};
use crate::sublist::SublistResult;

/// How long a dial may take, and the pause between attempts at a route: `RETRY`, doubled
/// after each failed attempt at an explicit route up to `RETRY_MAX`, plus up to a quarter
/// more at random, so servers restarted together do not dial in lockstep.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// The pause before the next dial after `failures` failed attempts in a row.
fn retry_pause(failures: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let base = RETRY.saturating_mul(1 << failures.min(8)).min(RETRY_MAX);
    base + base.mul_f64((r % 1000) as f64 / 4000.0)
}

/// One route connection.
pub(super) struct Route {
    rid: u64,
    addr: String,
    out: RefCell<client::Outbound>,
    /// Bytes the writer has taken from `out` and not written yet.
    in_flight: Cell<usize>,
    /// The send in the ring fell short or failed: the writer must look at it.
    send_note: Cell<bool>,
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
    /// Past the handshake: counted in the cluster, sends and takes interest.
    registered: Cell<bool>,
    /// The peer's INFO.
    remote: RefCell<RouteInfo>,
    /// We dialled it (the other side accepted).
    solicited: bool,
    /// The peer said CONNECT (an accepted route must, first).
    connected: Cell<bool>,
    /// The peer's interest: (account, subject, queue) → weight (1 for plain).
    subs: RefCell<HashMap<InterestKey, u32>>,
    peer: Option<SocketAddr>,
    start: SystemTime,
    /// Messages from the peer (in) and to it (out).
    counts: Cell<Counts>,
    /// PINGs sent without a PONG back.
    pings_out: Cell<u32>,
    /// When the PING being timed went out, and the round trip the last one took.
    ping_sent: Cell<Option<Instant>>,
    rtt: Cell<Option<Duration>>,
    /// The TLS session (cluster `tls {}`): every byte both ways goes through it.
    tls: Option<RefCell<rustls::Connection>>,
    /// The account the last message named, and its number here (`None`: not an account of
    /// this server): messages come in runs for one account, and a look-up by name costs a
    /// UTF-8 check and a hash, a tenth of a routed message's time.
    last_account: RefCell<(Vec<u8>, Option<AccId>)>,
}

impl Route {
    /// The number of the account named `name` in a message from this route.
    fn account(&self, shard: &Shard, name: &[u8]) -> Option<AccId> {
        let mut last = self.last_account.borrow_mut();
        if last.0 != name {
            *last = (name.to_vec(), account_id(shard, name));
        }
        last.1
    }

    fn write(&self, b: &[u8]) {
        self.out.borrow_mut().extend_from_slice(b);
        self.wake();
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    /// Sends a PING, timing it unless another is being timed.
    fn ping(&self) {
        if self.ping_sent.get().is_none() {
            self.ping_sent.set(Some(Instant::now()));
        }
        self.write(b"PING\r\n");
    }

    /// Wakes the writer if it waits; returns whether it did.
    fn wake(&self) -> bool {
        self.waker.take().map(Waker::wake).is_some()
    }

    /// Appends up to `max` bytes of plaintext from the peer to `buf`: from the socket
    /// straight into its spare room (not zeroed first), or through the TLS session.
    async fn read(
        &self,
        reader: &mut ConnReader,
        buf: &mut BytesMut,
        max: usize,
        cipher: &mut BytesMut,
    ) -> std::io::Result<usize> {
        match &self.tls {
            Some(t) => {
                super::read_through(t, reader, buf, max, cipher, || {
                    self.wake();
                })
                .await
            }
            None => reader.read_into(buf, max).await,
        }
    }
}

/// A route's interest in one (subject, queue), as the routes' subject index holds it.
#[derive(Clone)]
pub(super) struct RouteSub {
    route: Rc<Route>,
    queue: Option<Bytes>,
    weight: u32,
}

impl PartialEq for RouteSub {
    fn eq(&self, o: &Self) -> bool {
        self.route.rid == o.route.rid && self.queue == o.queue
    }
}

/// The cluster, on the shard that owns the routes.
pub(super) struct Cluster {
    opts: route::ClusterOptions,
    name: RefCell<String>,
    /// No name was configured: adopt the first peer's.
    dynamic: Cell<bool>,
    /// Where other servers reach this one, as `host:port`.
    listen: SocketAddr,
    routes: RefCell<Vec<Rc<Route>>>,
    /// Per account: the routes' interest.
    subs: RefCell<Vec<Sublist<RouteSub>>>,
    /// This server's clients' interest, as sent to routes: (account, subject, queue) → weight.
    interest: RefCell<HashMap<InterestKey, u32>>,
    next_rid: Cell<u64>,
    /// Servers an implicit route is being dialled to.
    dialing: RefCell<std::collections::HashSet<String>>,
    /// `permissions { import, export }`, compiled as publish and subscribe rules.
    perms: Option<crate::auth::Permissions>,
    /// `tls {}`: the configurations for accepted and for dialled routes.
    tls: Option<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)>,
}

impl Cluster {
    pub(super) fn new(g: &Global, listen: SocketAddr) -> Option<Rc<Cluster>> {
        let opts = g.opts.cluster.clone()?;
        let dynamic = opts.name.is_none();
        let name = opts.name.clone().unwrap_or_else(crate::auth::nonce);
        Some(Rc::new(Cluster {
            name: RefCell::new(name),
            dynamic: Cell::new(dynamic),
            listen,
            routes: RefCell::new(Vec::new()),
            subs: RefCell::new((0..g.accounts.len()).map(|_| Sublist::new()).collect()),
            interest: RefCell::new(HashMap::new()),
            next_rid: Cell::new(1),
            dialing: RefCell::new(std::collections::HashSet::new()),
            perms: opts
                .permissions()
                .and_then(|p| crate::auth::Permissions::new(&p).ok()),
            // Already checked when the options were validated.
            tls: opts.tls.as_ref().and_then(|t| {
                Some((
                    crate::tls::server_config(t).ok()?,
                    crate::tls::route_client_config(t).ok()?,
                ))
            }),
            opts,
        }))
    }

    /// The routes interested in `subject` in `account`. A subject the export permissions
    /// deny goes to no route, even one whose wildcard interest was accepted.
    pub(super) fn matches(&self, account: AccId, subject: &[u8]) -> Rc<SublistResult<RouteSub>> {
        if self
            .perms
            .as_ref()
            .is_some_and(|p| p.deny_delivery(subject))
        {
            return Rc::new(SublistResult::default());
        }
        self.subs.borrow_mut()[account as usize].matches(subject)
    }

    /// May this server ask routes for messages on `subject` (tell them its interest)?
    fn can_import(&self, subject: &[u8]) -> bool {
        self.perms.as_ref().is_none_or(|p| p.can_publish(subject))
    }

    /// May a route's interest in `subject` be served from here?
    fn can_export(&self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        self.perms
            .as_ref()
            .is_none_or(|p| p.can_subscribe(subject, queue))
    }

    /// The cluster for `/varz` and `/routez`.
    pub(super) fn report(&self) -> ClusterReport {
        ClusterReport {
            name: self.name.borrow().clone(),
            port: self.listen.port(),
            routes: self
                .registered()
                .iter()
                .map(|r| {
                    let remote = r.remote.borrow();
                    RouteReport {
                        rid: r.rid,
                        remote_id: remote.server_id.clone(),
                        remote_name: remote.server_name.clone(),
                        did_solicit: r.solicited,
                        addr: r.peer,
                        start: r.start,
                        counts: r.counts.get(),
                        subscriptions: r.subs.borrow().len(),
                        pending: r.out.borrow().len() + r.in_flight.get(),
                        rtt: r.rtt.get(),
                    }
                })
                .collect(),
        }
    }

    fn registered(&self) -> Vec<Rc<Route>> {
        self.routes
            .borrow()
            .iter()
            .filter(|r| r.registered.get() && !r.closed.get())
            .cloned()
            .collect()
    }
}

/// Where clients reach this server: the client listener's address or, when it listens on
/// every address, each global unicast address of this machine's interfaces (as nats-server
/// lists them).
fn own_client_urls(g: &Global) -> Vec<String> {
    match g.opts.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => interface_ips()
            .iter()
            .filter(|ip| route::advertisable(ip))
            .map(|ip| route::host_port(ip, g.port))
            .collect(),
        Ok(ip) => vec![route::host_port(&ip, g.port)],
        Err(_) => vec![format!("{}:{}", g.opts.host, g.port)],
    }
}

/// The addresses of this machine's network interfaces (`getifaddrs`), in the kernel's order.
fn interface_ips() -> Vec<std::net::IpAddr> {
    let mut ips = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return ips;
        }
        let mut cur = head;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(a as *const libc::sockaddr_in);
                        ips.push(std::net::IpAddr::from(
                            u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(a as *const libc::sockaddr_in6);
                        ips.push(std::net::IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    ips
}

/// The total weight of the routes' members of queue group `name`.
pub(super) fn queue_weight(r: &SublistResult<RouteSub>, name: &[u8]) -> usize {
    r.qsubs
        .iter()
        .find(|(n, _)| &n[..] == name)
        .map_or(0, |(_, m)| m.iter().map(|s| s.weight as usize).sum())
}

/// What one message sends to which route: plain interest, and the queue groups picked there.
/// Held inline for up to four routes, so a message allocates nothing here (a `Vec` cost a
/// routed message a malloc and a free, ~20 ns). The list exists only once a route is
/// picked: every message another shard wants makes a `RouteSends`, almost always with no
/// route in it, and an empty `SmallVec`'s drop is still an out-of-line call (~20
/// instructions on each side of a cross-shard hop).
#[derive(Default)]
pub(super) struct RouteSends {
    to: Option<smallvec::SmallVec<[RouteSend; 4]>>,
}

/// A route, whether it gets the message for plain interest, and the queue groups it serves.
type RouteSend = (Rc<Route>, bool, Vec<Bytes>);

impl RouteSends {
    fn entry(&mut self, route: &Rc<Route>) -> &mut RouteSend {
        let to = self.to.get_or_insert_with(Default::default);
        let i = match to.iter().position(|(r, _, _)| r.rid == route.rid) {
            Some(i) => i,
            None => {
                to.push((route.clone(), false, Vec::new()));
                to.len() - 1
            }
        };
        &mut to[i]
    }

    /// The route member of queue group `name` whose weight range holds `pick`.
    pub(super) fn pick_queue(&mut self, r: &SublistResult<RouteSub>, name: &[u8], mut pick: usize) {
        let Some((_, members)) = r.qsubs.iter().find(|(n, _)| &n[..] == name) else {
            return;
        };
        for m in members {
            if pick < m.weight as usize {
                let q = m.queue.clone().unwrap_or_default();
                self.entry(&m.route).2.push(q);
                return;
            }
            pick -= m.weight as usize;
        }
    }

    /// Every route with plain interest.
    pub(super) fn plain(&mut self, r: &SublistResult<RouteSub>) {
        for s in &r.psubs {
            self.entry(&s.route).1 = true;
        }
    }

    /// Sends one `RMSG` per route. Returns whether any route gets the message.
    pub(super) fn send(
        &mut self,
        shard: &Shard,
        account: AccId,
        subject: &[u8],
        reply: Option<&[u8]>,
        hdr_len: usize,
        msg: &[u8],
    ) -> bool {
        let name = shard.g.accounts.get(account).name.as_bytes();
        let mut any = false;
        for (r, plain, queues) in self.to.take().into_iter().flatten() {
            if r.closed.get() || (!plain && queues.is_empty()) {
                continue;
            }
            let headers = r.remote.borrow().headers;
            let size = name.len() + subject.len() + reply.map_or(0, <[u8]>::len) + msg.len();
            let size = size + queues.iter().map(|q| q.len() + 1).sum::<usize>() + 64;
            route::write_msg(
                r.out.borrow_mut().tail(size),
                name,
                subject,
                reply,
                &queues,
                hdr_len,
                msg,
                headers,
            );
            let mut k = r.counts.get();
            k.out_msgs += 1;
            k.out_bytes += msg.len() as u64;
            r.counts.set(k);
            // A route that does not keep up is cut, as a slow consumer is: its peer will
            // dial again and get the interest afresh.
            let max_pending = shard.opts.borrow().max_pending;
            if r.out.borrow().len() as u64 > max_pending {
                tracing::error!(
                    "{} - rid:{} - Slow Consumer Detected: MaxPending of {max_pending} Exceeded",
                    r.addr,
                    r.rid
                );
                r.out.borrow_mut().clear();
                r.close();
            }
            if let Some(w) = r.waker.take() {
                w.wake();
            }
            any = true;
        }
        any
    }
}

impl Shard {
    /// This server's clients' interest changed by `delta` (`+`/`-` members, or weight):
    /// tells the routes, as nats-server does (plain interest when it appears or goes, queue
    /// weights always).
    pub(super) fn cluster_interest(&self, key: InterestKey, delta: i64) {
        let Some(cl) = &self.cluster else {
            return;
        };
        if delta == 0 {
            return;
        }
        let (before, after) = {
            let mut m = cl.interest.borrow_mut();
            let w = m.entry(key.clone()).or_insert(0);
            let before = *w;
            *w = (i64::from(*w) + delta).max(0) as u32;
            let after = *w;
            if after == 0 {
                m.remove(&key);
            }
            (before, after)
        };
        let plain_news = (before == 0) != (after == 0);
        if (key.2.is_none() && !plain_news) || !cl.can_import(&key.1) {
            return;
        }
        let mut line = BytesMut::new();
        let acc = self.g.accounts.get(key.0).name.as_bytes();
        if after > 0 {
            route::write_sub(&mut line, acc, &key.1, key.2.as_deref().map(|q| (q, after)));
        } else {
            route::write_unsub(&mut line, acc, &key.1, key.2.as_deref());
        }
        for r in cl.registered() {
            r.write(&line);
        }
    }

    /// Shard 0: starts the cluster (the route listener and the explicit routes).
    pub(super) fn start_cluster(self: &Rc<Self>, listener: std::net::TcpListener) {
        let Some(cl) = self.cluster.clone() else {
            return;
        };
        match tern_shards::Listener::from_std(listener) {
            Ok(l) => {
                let shard = self.clone();
                rt::spawn(async move {
                    while let Ok(conn) = l.accept().await {
                        if shard.g.shutdown.load(Ordering::Relaxed) {
                            break;
                        }
                        let shard = shard.clone();
                        rt::spawn(async move {
                            route_main(shard, conn, None).await;
                        });
                    }
                });
            }
            Err(e) => tracing::error!("cannot accept routes: {e}"),
        }
        // Stream imports are served by each server from the exporter's messages, so every
        // server wants those, always (nats-server's import subscriptions).
        for exporter in 0..self.g.accounts.len() as AccId {
            for r in self.g.accounts.get(exporter).stream_routes() {
                let subject = Bytes::copy_from_slice(r.filter());
                self.cluster_interest((exporter, subject, None), 1);
            }
        }
        for url in cl.opts.routes.clone() {
            rt::spawn(solicit(self.clone(), url));
        }
        self.cluster_changed(&cl);
    }

    /// Servers joined or left, or changed their client URLs: recomputes the cluster's
    /// client URLs and tells every shard's clients.
    pub(super) fn cluster_changed(&self, cl: &Cluster) {
        if let Ok(mut n) = self.g.cluster_name.lock() {
            *n = Some(cl.name.borrow().clone());
        }
        if cl.opts.no_advertise {
            return;
        }
        // As nats-server: no URLs until another server has joined (then this server's stay).
        let routes = cl.registered();
        let clustered = self.g.connect_urls.lock().is_ok_and(|u| !u.is_empty());
        let mut urls = if routes.is_empty() && !clustered {
            Vec::new()
        } else {
            own_client_urls(&self.g)
        };
        for r in routes {
            let remote = r.remote.borrow();
            if !remote.ldm {
                urls.extend(remote.connect_urls.iter().cloned());
            }
        }
        let mut seen = std::collections::HashSet::new();
        urls.retain(|u| seen.insert(u.clone()));
        match self.g.connect_urls.lock() {
            Ok(mut u) if *u != urls => *u = urls,
            _ => return,
        }
        for peer in (0..self.shards).filter(|&p| p != self.id) {
            self.send_to(peer, ShardOp::ConnectUrls);
        }
        self.connect_urls_changed();
    }

    /// Our route INFO.
    fn route_info(&self, cl: &Cluster) -> RouteInfo {
        let host = cl
            .opts
            .host
            .clone()
            .unwrap_or_else(|| self.g.opts.host.clone());
        RouteInfo {
            server_id: self.g.server_id.clone(),
            server_name: self.g.server_name.clone(),
            version: crate::VERSION.to_string(),
            proto: route::ROUTE_PROTO,
            host,
            port: cl.listen.port(),
            headers: !self.g.opts.no_header_support,
            max_payload: self.opts.borrow().max_payload,
            cluster: cl.name.borrow().clone(),
            auth_required: cl.opts.user.is_some(),
            connect_urls: if cl.opts.no_advertise {
                Vec::new()
            } else {
                own_client_urls(&self.g)
            },
            // `advertise`: where the other servers should dial this one.
            ip: cl
                .opts
                .advertise
                .as_ref()
                .map(|a| format!("nats-route://{a}/"))
                .unwrap_or_default(),
            nonce: crate::auth::nonce(),
            tls_required: cl.tls.is_some(),
            tls_verify: cl.opts.tls.as_ref().is_some_and(|t| t.verify),
            import: cl.opts.import.as_ref().map(Into::into),
            export: cl.opts.export.as_ref().map(Into::into),
            ..Default::default()
        }
    }

    /// The peer's interest in (account, subject, queue) is now `weight` (0: gone).
    fn route_interest(&self, cl: &Cluster, r: &Rc<Route>, key: InterestKey, weight: u32) {
        let old = {
            let mut subs = r.subs.borrow_mut();
            let old = if weight == 0 {
                subs.remove(&key)
            } else {
                subs.insert(key.clone(), weight)
            };
            old.unwrap_or(0)
        };
        if old == weight {
            return;
        }
        {
            let mut sl = cl.subs.borrow_mut();
            let sl = &mut sl[key.0 as usize];
            let entry = |w| RouteSub {
                route: r.clone(),
                queue: key.2.clone(),
                weight: w,
            };
            if old > 0 {
                sl.remove(&key.1, key.2.as_deref(), &entry(old));
            }
            if weight > 0 && sl.insert(&key.1, key.2.as_deref(), entry(weight)).is_err() {
                r.subs.borrow_mut().remove(&key);
            }
        }
        // The other shards learn it as this shard's routed interest (queue weights
        // included), kept apart from its clients' so that queue groups prefer members here.
        let delta = i64::from(weight) - i64::from(old);
        let delta = if key.2.is_none() {
            delta.signum()
        } else {
            delta
        };
        self.interest_delta(key, delta, true);
    }

    /// Registers a route whose handshake is done: sends it our interest.
    fn register_route(&self, cl: &Cluster, r: &Rc<Route>) -> Result<(), &'static str> {
        let remote = r.remote.borrow().clone();
        if remote.server_id == self.g.server_id {
            return Err("route to self");
        }
        if !remote.route_account.is_empty() {
            // A 2.10+ pinned-account route: Tern is a no-pool peer (reference 2.5).
            return Err("pinned-account route refused (no-pool peer)");
        }
        let existing = cl
            .registered()
            .into_iter()
            .find(|o| o.remote.borrow().server_id == remote.server_id);
        if let Some(e) = existing {
            // Two servers that dial each other get two links; both keep the one the server
            // with the smaller ID dialled, so they agree without another round.
            let smaller_is_us = self.g.server_id < remote.server_id;
            if r.solicited == smaller_is_us && e.solicited != smaller_is_us {
                tracing::info!("{} - rid:{} - Duplicate route, closing it", e.addr, e.rid);
                e.registered.set(false);
                e.close();
            } else {
                return Err("duplicate route");
            }
        }
        r.registered.set(true);
        // A first round trip, for /routez `rtt`.
        r.ping();
        let mut out = BytesMut::new();
        for ((acc, subject, queue), w) in cl.interest.borrow().iter() {
            if !cl.can_import(subject) {
                continue;
            }
            let name = self.g.accounts.get(*acc).name.as_bytes();
            route::write_sub(&mut out, name, subject, queue.as_deref().map(|q| (q, *w)));
        }
        r.write(&out);
        tracing::info!(
            "{} - rid:{} - Route connection registered with {} ({})",
            r.addr,
            r.rid,
            remote.server_name,
            remote.server_id
        );
        // Gossip: the other servers hear of this one, with where to reach it, and dial it.
        let mut gossip = remote;
        gossip.nonce.clear();
        if gossip.ip.is_empty() {
            if let Some(p) = r.peer {
                gossip.ip = format!("nats-route://{}/", SocketAddr::new(p.ip(), gossip.port));
            }
        }
        let line = format!(
            "INFO {}\r\n",
            serde_json::to_string(&gossip).unwrap_or_default()
        );
        for o in cl.registered().iter().filter(|o| o.rid != r.rid) {
            o.write(line.as_bytes());
        }
        self.cluster_changed(cl);
        Ok(())
    }

    /// Another server, named in an INFO a route forwarded: dial it unless already linked
    /// (an implicit route, tried `connect_retries` + 1 times, as nats-server does).
    fn implicit_route(self: &Rc<Self>, cl: &Cluster, info: &RouteInfo) {
        if info.server_id == self.g.server_id || info.ip.is_empty() {
            return;
        }
        let known = cl
            .registered()
            .iter()
            .any(|r| r.remote.borrow().server_id == info.server_id);
        if known || !cl.dialing.borrow_mut().insert(info.server_id.clone()) {
            return;
        }
        let Ok(url) = RouteUrl::parse(&info.ip) else {
            cl.dialing.borrow_mut().remove(&info.server_id);
            return;
        };
        let url = RouteUrl {
            user: cl.opts.user.clone(),
            pass: cl.opts.password.clone(),
            ..url
        };
        let (shard, id, tries) = (
            self.clone(),
            info.server_id.clone(),
            cl.opts.connect_retries + 1,
        );
        rt::spawn(async move {
            for attempt in 0..tries {
                if attempt > 0 {
                    rt::sleep(retry_pause(0)).await;
                }
                let addr = format!("{}:{}", url.host, url.port);
                let Some(sa) = std::net::ToSocketAddrs::to_socket_addrs(&addr)
                    .ok()
                    .and_then(|mut a| a.next())
                else {
                    break;
                };
                if let Ok(conn) = tern_shards::connect(sa, DIAL_TIMEOUT).await {
                    route_main(shard.clone(), conn, Some(url.clone())).await;
                    break;
                }
            }
            if let Some(cl) = &shard.cluster {
                cl.dialing.borrow_mut().remove(&id);
            }
        });
    }

    /// Forgets a closed route's interest.
    fn unregister_route(&self, cl: &Cluster, r: &Rc<Route>) {
        let keys: Vec<InterestKey> = r.subs.borrow().keys().cloned().collect();
        for k in keys {
            self.route_interest(cl, r, k, 0);
        }
        cl.routes.borrow_mut().retain(|o| o.rid != r.rid);
        if r.registered.replace(false) {
            self.cluster_changed(cl);
        }
        self.flush();
    }
}

/// Dials an explicit route, and again after each failure or close, forever: a second (and
/// a little) after a route that worked, longer after each attempt that did not.
async fn solicit(shard: Rc<Shard>, url: RouteUrl) {
    let mut failures: u32 = 0;
    loop {
        if shard.g.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let addr = format!("{}:{}", url.host, url.port);
        let target = std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .ok()
            .and_then(|mut a| a.next());
        if let Some(sa) = target {
            match tern_shards::connect(sa, DIAL_TIMEOUT).await {
                Ok(conn) => match route_main(shard.clone(), conn, Some(url.clone())).await {
                    RouteEnd::Never => return,
                    RouteEnd::Lost => failures = 0,
                    RouteEnd::Retry => failures += 1,
                    // Connected the other way: dial again only once that link is gone.
                    RouteEnd::Duplicate(id) => {
                        while shard.cluster.as_ref().is_some_and(|cl| {
                            cl.registered()
                                .iter()
                                .any(|r| r.remote.borrow().server_id == id)
                        }) {
                            rt::sleep(retry_pause(0)).await;
                        }
                        failures = 0;
                    }
                },
                Err(e) => {
                    tracing::debug!("Error trying to connect to route {addr}: {e}");
                    failures += 1;
                }
            }
        }
        rt::sleep(retry_pause(failures.saturating_sub(1))).await;
    }
}

/// How a route connection ended, for the loop that dials an explicit route.
enum RouteEnd {
    /// It never became a route: dial again after a longer pause.
    Retry,
    /// It was a route until it closed: dial again soon.
    Lost,
    /// Never again (it was a route to ourselves).
    Never,
    /// Another link to this server is up: dial again once it is gone.
    Duplicate(String),
}

/// Serves one route connection until it closes.
async fn route_main(
    shard: Rc<Shard>,
    conn: tern_shards::Conn,
    solicited: Option<RouteUrl>,
) -> RouteEnd {
    let Some(cl) = shard.cluster.clone() else {
        return RouteEnd::Never;
    };
    let rid = cl.next_rid.get();
    cl.next_rid.set(rid + 1);
    let addr = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    let peer = conn.peer_addr();
    // With cluster TLS, the handshake comes first (the dialler is the TLS client).
    let tls = match route_session(&cl, solicited.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{addr} - rid:{rid} - TLS route setup error: {e}");
            return RouteEnd::Retry;
        }
    };
    let handshake_timeout = cl.opts.tls.as_ref().map(|t| t.timeout());
    let (mut reader, writer) = conn.split();
    let r = Rc::new(Route {
        rid,
        addr,
        out: RefCell::new(client::Outbound::default()),
        in_flight: Cell::new(0),
        send_note: Cell::new(false),
        waker: Cell::new(None),
        closed: Cell::new(false),
        registered: Cell::new(false),
        remote: RefCell::new(RouteInfo::default()),
        solicited: solicited.is_some(),
        connected: Cell::new(solicited.is_some()),
        subs: RefCell::new(HashMap::new()),
        peer,
        start: SystemTime::now(),
        counts: Cell::new(Counts::default()),
        pings_out: Cell::new(0),
        ping_sent: Cell::new(None),
        rtt: Cell::new(None),
        tls,
        last_account: RefCell::new((Vec::new(), None)),
    });
    cl.routes.borrow_mut().push(r.clone());
    tracing::info!("{} - rid:{} - Route connection created", r.addr, rid);
    rt::spawn(route_writer(r.clone(), writer));
    if let Some(limit) = handshake_timeout {
        let r = r.clone();
        rt::spawn(async move {
            rt::sleep(limit).await;
            if r.tls.as_ref().is_some_and(|t| t.borrow().is_handshaking()) {
                tracing::error!("{} - rid:{} - TLS route handshake timeout", r.addr, r.rid);
                r.close();
            }
        });
    }
    let info = shard.route_info(&cl);
    let info_line = format!(
        "INFO {}\r\n",
        serde_json::to_string(&info).unwrap_or_default()
    );
    if let Some(url) = &solicited {
        let connect = RouteConnect {
            echo: true,
            user: url.user.clone().or_else(|| cl.opts.user.clone()),
            pass: url.pass.clone().or_else(|| cl.opts.password.clone()),
            headers: info.headers,
            tls_required: info.tls_required,
            name: shard.g.server_id.clone(),
            cluster: cl.name.borrow().clone(),
            ..Default::default()
        };
        r.write(
            format!(
                "CONNECT {}\r\n",
                serde_json::to_string(&connect).unwrap_or_default()
            )
            .as_bytes(),
        );
    }
    r.write(info_line.as_bytes());
    let mut end = RouteEnd::Retry;
    let o = shard.opts.borrow().clone();
    let mut parser = RouteParser::new(o.max_control_line as usize, o.max_payload as usize);
    let mut buf = BytesMut::new();
    let mut cipher = BytesMut::new();
    let (ping_interval, ping_max) = cl.opts.pings(o.ping_interval, o.ping_max);
    let ping = rt::spawn_cancellable(route_pinger(r.clone(), ping_interval, ping_max));
    let mut read_size = READ_MIN;
    'read: loop {
        // What routes send goes on to the other shards: wait while they are behind.
        if shard.mesh.congested() {
            shard.flush();
            shard.mesh.wait_uncongested().await;
        }
        let n = match r.read(&mut reader, &mut buf, read_size, &mut cipher).await {
            Ok(0) => break,
            Err(e) => {
                if r.tls.is_some() {
                    tracing::error!("{} - rid:{rid} - TLS route error: {e}", r.addr);
                }
                break;
            }
            Ok(n) => n,
        };
        read_size = next_read_size(read_size, n);
        if r.closed.get() {
            break;
        }
        if buf.len() < parser.wants() {
            // A large message still arriving: read on before looking at it again.
            continue;
        }
        // One shared chunk per read, as for a client (`read_loop`): the messages in it
        // borrow it; what is left of one not all there yet goes back into `buf`.
        let chunk = buf.split().freeze();
        let mut pos = 0;
        loop {
            match parser.next(&chunk, &mut pos) {
                Ok(None) => {
                    buf.extend_from_slice(&chunk[pos..]);
                    break;
                }
                Ok(Some(op)) => {
                    if let Err(why) = handle_route_op(&shard, &cl, &r, op) {
                        tracing::info!("{} - rid:{} - Route closed: {why}", r.addr, rid);
                        end = match why {
                            "route to self" => RouteEnd::Never,
                            "duplicate route" => {
                                RouteEnd::Duplicate(r.remote.borrow().server_id.clone())
                            }
                            _ => RouteEnd::Retry,
                        };
                        break 'read;
                    }
                }
                Err(e) => {
                    tracing::error!("{} - rid:{} - Route error: {e}", r.addr, rid);
                    r.write(format!("-ERR '{e}'\r\n").as_bytes());
                    break 'read;
                }
            }
        }
        shard.flush();
    }
    drop(ping);
    r.close();
    if matches!(end, RouteEnd::Retry) && r.registered.get() {
        end = RouteEnd::Lost;
    }
    shard.unregister_route(&cl, &r);
    tracing::info!("{} - rid:{} - Router connection closed", r.addr, rid);
    end
}

/// Applies one operation from a route; `Err` closes it.
fn handle_route_op(
    shard: &Rc<Shard>,
    cl: &Cluster,
    r: &Rc<Route>,
    op: RouteOp<'_>,
) -> Result<(), &'static str> {
    if !r.connected.get() && !matches!(op, RouteOp::Connect(_)) {
        r.write(b"-ERR 'Authorization Violation'\r\n");
        return Err("first operation was not CONNECT");
    }
    match op {
        RouteOp::Connect(json) => {
            let c: RouteConnect = serde_json::from_slice(&json).map_err(|_| "bad CONNECT")?;
            if !c.lang.is_empty() {
                return Err("a client connected to the route port");
            }
            if !c.gateway.is_empty() {
                return Err("a gateway connected to the route port");
            }
            if let Some(user) = &cl.opts.user {
                let ok = c.user.as_deref() == Some(user.as_str())
                    && c.pass.as_deref().unwrap_or("") == cl.opts.password.as_deref().unwrap_or("");
                if !ok {
                    r.write(b"-ERR 'Authorization Violation'\r\n");
                    return Err("route authorization failed");
                }
            }
            if !c.cluster.is_empty() && c.cluster != *cl.name.borrow() {
                if cl.dynamic.get() {
                    *cl.name.borrow_mut() = c.cluster.clone();
                    cl.dynamic.set(false);
                } else {
                    r.write(
                        format!(
                            "-ERR 'Rejecting connection, cluster name \"{}\" does not match \"{}\"'\r\n",
                            c.cluster,
                            cl.name.borrow()
                        )
                        .as_bytes(),
                    );
                    return Err("cluster name mismatch");
                }
            }
            r.connected.set(true);
        }
        RouteOp::Info(json) => {
            let info: RouteInfo = serde_json::from_slice(&json).map_err(|_| "bad INFO")?;
            if r.registered.get() {
                if info.server_id != r.remote.borrow().server_id {
                    // Gossip about another server.
                    shard.implicit_route(cl, &info);
                } else {
                    // The peer's own news (its client URLs, lame duck).
                    let changed = info.connect_urls != r.remote.borrow().connect_urls;
                    r.remote.borrow_mut().connect_urls = info.connect_urls;
                    r.remote.borrow_mut().ldm = info.ldm;
                    if changed || info.ldm {
                        shard.cluster_changed(cl);
                    }
                }
                return Ok(());
            }
            if info.cluster != *cl.name.borrow() {
                if cl.dynamic.get() && !info.cluster.is_empty() {
                    *cl.name.borrow_mut() = info.cluster.clone();
                    cl.dynamic.set(false);
                } else {
                    return Err("cluster name mismatch");
                }
            }
            *r.remote.borrow_mut() = info;
            shard.register_route(cl, r)?;
        }
        RouteOp::Ping => r.write(b"PONG\r\n"),
        RouteOp::Pong => {
            r.pings_out.set(0);
            if let Some(t) = r.ping_sent.take() {
                r.rtt.set(Some(t.elapsed()));
            }
        }
        RouteOp::Ok => {}
        RouteOp::Err(text) => {
            tracing::info!("{} - rid:{} - Route error from peer: {text}", r.addr, r.rid);
            return Err("the peer sent -ERR");
        }
        RouteOp::Sub {
            account,
            subject,
            queue,
        } => {
            if !r.registered.get() {
                return Ok(());
            }
            // Accounts this server does not have are not ours to serve.
            let Some(acc) = account_id(shard, &account) else {
                return Ok(());
            };
            let (q, w) = match queue {
                Some((q, w)) => (Some(q), w.max(1)),
                None => (None, 1),
            };
            if !cl.can_export(&subject, q.as_deref()) {
                tracing::debug!(
                    "{} - rid:{} - Can not export {:?}, ignoring remote subscription",
                    r.addr,
                    r.rid,
                    String::from_utf8_lossy(&subject)
                );
                return Ok(());
            }
            shard.route_interest(cl, r, (acc, subject, q), w);
        }
        RouteOp::Unsub {
            account,
            subject,
            queue,
        } => {
            // Accounts this server does not have are not ours to serve.
            let Some(acc) = account_id(shard, &account) else {
                return Ok(());
            };
            shard.route_interest(cl, r, (acc, subject, queue), 0);
        }
        RouteOp::Msg {
            account,
            queues,
            msg,
        } => {
            // Accounts this server does not have are not ours to serve.
            let Some(acc) = r.account(shard, account) else {
                return Ok(());
            };
            let mut k = r.counts.get();
            k.in_msgs += 1;
            k.in_bytes += msg.msg().len() as u64;
            r.counts.set(k);
            // Plain subscribers here and on the other shards, and the queue groups the
            // sender picked this server for; never another route. This server's importers
            // of the account's streams get their copies here.
            shard.route_scoped(acc, &msg, 0, Some(&queues), false);
            let a = shard.g.accounts.get(acc);
            if !a.stream_routes().is_empty() {
                shard.route_streams(a, &msg, 0);
            }
        }
    }
    Ok(())
}

/// The account a route names, if this server has it.
fn account_id(shard: &Shard, name: &[u8]) -> Option<AccId> {
    std::str::from_utf8(name)
        .ok()
        .and_then(|a| shard.g.accounts.id(a))
}

/// The TLS session a new route starts with: the server side on an accepted route, the
/// client side (checking the certificate against the route URL's host) on a dialled one.
fn route_session(
    cl: &Cluster,
    solicited: Option<&RouteUrl>,
) -> Result<Option<RefCell<rustls::Connection>>, String> {
    let Some((server, client)) = &cl.tls else {
        return Ok(None);
    };
    let mut t: rustls::Connection = match solicited {
        None => rustls::ServerConnection::new(server.clone())
            .map_err(|e| e.to_string())?
            .into(),
        Some(url) => {
            let host = url.host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
            rustls::ClientConnection::new(client.clone(), name)
                .map_err(|e| e.to_string())?
                .into()
        }
    };
    // The route's own output is bounded by max_pending.
    t.set_buffer_limit(None);
    Ok(Some(RefCell::new(t)))
}

impl super::Outlet for Route {
    fn in_flight(&self) -> &Cell<usize> {
        &self.in_flight
    }
    fn note_send(&self) -> bool {
        self.send_note.set(true);
        self.wake()
    }
}

/// Writes what is queued for a route (through its TLS session, if it has one).
async fn route_writer(r: Rc<Route>, w: ConnWriter) {
    let mut flow = super::Outflow::new();
    let mut fresh = VecDeque::new();
    loop {
        std::future::poll_fn(|cx| {
            let tls_out = r.tls.as_ref().is_some_and(|t| t.borrow().wants_write());
            if !r.out.borrow().is_empty()
                || r.closed.get()
                || tls_out
                || !flow.batch.is_empty()
                || r.send_note.get()
            {
                Poll::Ready(())
            } else {
                r.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        r.send_note.set(false);
        if flow.settle(&r.in_flight).await.is_err() {
            r.close();
            break;
        }
        r.out.borrow_mut().take_into(&mut fresh);
        if let Some(t) = &r.tls {
            if super::seal_blocks(&mut t.borrow_mut(), &mut fresh).is_err() {
                r.close();
                break;
            }
        }
        r.in_flight
            .set(r.in_flight.get() + fresh.iter().map(BytesMut::len).sum::<usize>());
        flow.batch.append(&mut fresh);
        if flow.batch.is_empty() {
            if r.closed.get() {
                break;
            }
            continue;
        }
        flow.start(&w, &r);
    }
    r.in_flight.set(0);
    flow.clear();
    w.shutdown();
}

/// Pings a route every `interval`, and closes it when `ping_max` PINGs in a row get no
/// PONG (a stale connection), as nats-server does.
async fn route_pinger(r: Rc<Route>, interval: Duration, ping_max: u32) {
    loop {
        rt::sleep(interval).await;
        if r.closed.get() {
            return;
        }
        if r.pings_out.get() >= ping_max {
            tracing::info!(
                "{} - rid:{} - Stale Connection, closing the route",
                r.addr,
                r.rid
            );
            r.close();
            return;
        }
        r.pings_out.set(r.pings_out.get() + 1);
        r.ping();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redials_back_off_with_jitter() {
        let within = |d: Duration, lo: u64, hi: u64| {
            d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi)
        };
        assert!(within(retry_pause(0), 1000, 1250));
        assert!(within(retry_pause(1), 2000, 2500));
        assert!(within(retry_pause(2), 4000, 5000));
        assert!(within(retry_pause(40), 8000, 10_000));
        // Not every pause is the same.
        let pauses: std::collections::HashSet<Duration> = (0..20).map(|_| retry_pause(0)).collect();
        assert!(pauses.len() > 1);
    }
}
