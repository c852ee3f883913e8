//! The shard pool: one glommio executor per shard, the mesh between them, and the acceptor.
//!
//! [`run`] starts the shards, connects every ordered pair of them with a bounded queue, wires
//! the acceptor, then runs the application's future on each shard and returns when all of
//! them have finished. Accepted connections reach a shard through [`ShardCtx::accept`]:
//! either shard 0 accepts and deals them out round-robin (the default, so consecutive
//! connections land on consecutive shards), or every shard accepts on its own
//! `SO_REUSEPORT` socket and the kernel spreads them.

use crate::mesh::{Mesh, MeshReceiver};
use crate::net::Conn;
use crate::rt::{self, TaskHandle};
use crate::stop::StopSignal;
use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender};
use glommio::net::{AcceptedTcpStream, TcpListener};
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// How accepted connections are spread over the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// Shard 0 accepts and hands connection `k` to shard `k % shards`.
    RoundRobin,
    /// Every shard accepts on its own `SO_REUSEPORT` socket.
    ReusePort,
}

/// How to build the pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of shards (executors), at least 1.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th available core (modulo the core count).
    pub pin: bool,
    /// Spin this long before parking an idle shard (trades idle CPU for wake-up latency).
    pub spin_before_park: Option<Duration>,
    /// Registered I/O memory per shard, in bytes (see `preflight::HostLimits`).
    pub io_memory: usize,
    /// Capacity, in messages, of each queue between two shards.
    pub mesh_capacity: usize,
    /// How connections are spread.
    pub accept: AcceptMode,
}

/// Why the pool could not run.
#[derive(Debug)]
pub enum PoolError {
    /// An executor could not be created (the text is glommio's).
    Executor(String),
    /// A shard thread panicked.
    ShardPanicked(usize),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Executor(e) => write!(f, "cannot start a shard: {e}"),
            PoolError::ShardPanicked(i) => write!(f, "shard {i} panicked"),
        }
    }
}

impl std::error::Error for PoolError {}

/// Binds the client listener. With `reuseport`, the socket allows the other shards to bind
/// the same address.
pub fn bind_listener(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if reuseport {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Connections waiting for the application on one shard.
#[derive(Default)]
struct ConnQueue {
    q: RefCell<VecDeque<Conn>>,
    waker: Cell<Option<Waker>>,
    closed: Cell<bool>,
}

impl ConnQueue {
    fn push(&self, c: Conn) {
        self.q.borrow_mut().push_back(c);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
    fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// What the application sees of its shard.
pub struct ShardCtx<M: Send + 'static> {
    id: usize,
    count: usize,
    mesh: Rc<Mesh<M>>,
    receivers: RefCell<Vec<MeshReceiver<M>>>,
    conns: Rc<ConnQueue>,
    acceptors: RefCell<Vec<TaskHandle>>,
    stop: RefCell<Option<glommio::net::UnixStream>>,
}

impl<M: Send + 'static> ShardCtx<M> {
    /// This shard's index, `0..count`.
    pub fn id(&self) -> usize {
        self.id
    }
    /// The number of shards.
    pub fn count(&self) -> usize {
        self.count
    }
    /// The sending side of the mesh.
    pub fn mesh(&self) -> &Rc<Mesh<M>> {
        &self.mesh
    }
    /// The receiving ends of the mesh, one per peer; can be taken once.
    pub fn take_receivers(&self) -> Vec<MeshReceiver<M>> {
        std::mem::take(&mut *self.receivers.borrow_mut())
    }
    /// The next connection handed to this shard; `None` after [`Self::stop_accepting`].
    pub async fn accept(&self) -> Option<Conn> {
        futures_lite::future::poll_fn(|cx| {
            if let Some(c) = self.conns.q.borrow_mut().pop_front() {
                return Poll::Ready(Some(c));
            }
            if self.conns.closed.get() {
                return Poll::Ready(None);
            }
            self.conns.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
    /// Resolves once [`StopSignal::trigger`] has been called (can be awaited once).
    pub async fn stop_requested(&self) {
        let Some(mut s) = self.stop.borrow_mut().take() else {
            return;
        };
        let mut b = [0u8; 1];
        let _ = futures_lite::AsyncReadExt::read(&mut s, &mut b).await;
    }

    /// Stops accepting on this shard (closing its listener, if it has one).
    pub fn stop_accepting(&self) {
        self.acceptors.borrow_mut().clear();
        self.conns.close();
    }
}

/// Everything one shard needs from the pool builder; all of it is `Send`.
struct ShardSeed<M: Send + 'static> {
    id: usize,
    senders: Vec<
        Option<(
            shared_channel::SharedSender<M>,
            crossbeam_channel::Receiver<M>,
        )>,
    >,
    receivers: Vec<(
        usize,
        shared_channel::SharedReceiver<M>,
        crossbeam_channel::Sender<M>,
    )>,
    conn_senders: Vec<Option<shared_channel::SharedSender<AcceptedTcpStream>>>,
    conn_receiver: Option<shared_channel::SharedReceiver<AcceptedTcpStream>>,
    listener_fd: Option<RawFd>,
    listen_addr: SocketAddr,
    stop: Option<std::os::unix::net::UnixStream>,
}

/// How much free memory at the top of a malloc arena stays mapped before `free` gives it
/// back to the kernel.
const TRIM_THRESHOLD: usize = 16 << 20;
/// Allocations from this size up get their own mapping.
const MMAP_THRESHOLD: usize = 1 << 20;

/// Stops glibc's malloc from handing memory back to the kernel whenever a read chunk is freed.
///
/// A message forwarded to another shard keeps its publisher's read chunk (up to 64 KiB)
/// alive there, so chunks are freed out of the order they were allocated in: when the batch
/// comes back to the publisher ([`crate::mesh::MeshReceiver::give_back`]), or on the
/// receiving shard, into the publisher's arena, when the return queue is full. With glibc's
/// defaults a free that leaves enough room at the arena's top trims it with `madvise`, which
/// flushes the TLB of every core the process runs on (an IPI each), and the publisher's next
/// read faults the pages back in: 10-20 % of the CPU of a cross-shard stream (measured when
/// the receiving shard freed every chunk). Fixed thresholds end that (and the dynamic
/// adjustment that would move them): freed read chunks stay mapped for the next read, up to
/// `TRIM_THRESHOLD` per arena.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the shards start.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Runs `app` on every shard until all of them return.
pub fn run<M, F, Fut>(
    cfg: PoolConfig,
    listener: std::net::TcpListener,
    stop: Arc<StopSignal>,
    app: F,
) -> Result<(), PoolError>
where
    M: Send + 'static,
    F: Fn(Rc<ShardCtx<M>>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let n = cfg.shards.max(1);
    if n > 1 {
        keep_freed_memory();
    }
    let listen_addr = listener
        .local_addr()
        .map_err(|e| PoolError::Executor(e.to_string()))?;
    let mut seeds: Vec<ShardSeed<M>> = (0..n)
        .map(|id| ShardSeed {
            id,
            senders: (0..n).map(|_| None).collect(),
            receivers: Vec::new(),
            conn_senders: (0..n).map(|_| None).collect(),
            conn_receiver: None,
            listener_fd: None,
            listen_addr,
            stop: stop.take_reader(id),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(cfg.mesh_capacity);
                // A sender takes back what it gave at every flush, so what waits to be taken
                // is at most what was in flight when it last flushed.
                let (back_tx, back_rx) = crossbeam_channel::bounded(cfg.mesh_capacity);
                seeds[from].senders[to] = Some((tx, back_rx));
                seeds[to].receivers.push((from, rx, back_tx));
            }
        }
    }
    if cfg.accept == AcceptMode::RoundRobin {
        for to in 1..n {
            let (tx, rx) = shared_channel::new_bounded(1024);
            seeds[0].conn_senders[to] = Some(tx);
            seeds[to].conn_receiver = Some(rx);
        }
    }
    seeds[0].listener_fd = Some(listener.into_raw_fd());

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(n);
    for seed in seeds {
        let id = seed.id;
        let placement = match (cfg.pin, cores.is_empty()) {
            (true, false) => Placement::Fixed(cores[id % cores.len()].id),
            _ => Placement::Unbound,
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("tern-shard-{id}"))
            .io_memory(cfg.io_memory);
        if let Some(spin) = cfg.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let app = app.clone();
        let accept = cfg.accept;
        let handle = builder
            .spawn(move || async move {
                let ctx = Rc::new(shard_setup(seed, n, accept).await);
                app(ctx).await;
            })
            .map_err(|e| PoolError::Executor(e.to_string()))?;
        handles.push(handle);
    }
    let mut result = Ok(());
    for (i, h) in handles.into_iter().enumerate() {
        if h.join().is_err() && result.is_ok() {
            result = Err(PoolError::ShardPanicked(i));
        }
    }
    result
}

async fn shard_setup<M: Send + 'static>(
    seed: ShardSeed<M>,
    n: usize,
    accept: AcceptMode,
) -> ShardCtx<M> {
    // Both ends of a queue must connect before either connect() returns, so every end of this
    // shard connects concurrently: a sequential order could wait on a peer that waits on us.
    let (senders, backs): (Vec<_>, Vec<_>) = seed
        .senders
        .into_iter()
        .map(|s| {
            s.map(|(s, back)| (glommio::spawn_local(s.connect()), back))
                .unzip()
        })
        .unzip();
    let receivers: Vec<_> = seed
        .receivers
        .into_iter()
        .map(|(from, r, back)| (from, glommio::spawn_local(r.connect()), back))
        .collect();
    let conn_senders: Vec<_> = seed
        .conn_senders
        .into_iter()
        .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
        .collect();
    let conn_receiver = seed
        .conn_receiver
        .map(|r| glommio::spawn_local(r.connect()));

    let connected: Vec<_> = (await_each(senders).await.into_iter())
        .zip(backs)
        .map(|(s, back)| s.zip(back))
        .collect();
    let mut mesh_rx = Vec::with_capacity(n);
    for (from, t, back) in receivers {
        mesh_rx.push(MeshReceiver::new(from, t.await, back));
    }
    let conn_tx = await_each(conn_senders).await;
    let conn_rx = match conn_receiver {
        Some(t) => Some(t.await),
        None => None,
    };

    let conns = Rc::new(ConnQueue::default());
    let mut acceptors = Vec::new();
    if let Some(fd) = seed.listener_fd {
        // SAFETY: the pool owns this listener fd and gives it to shard 0 only.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        acceptors.push(rt::spawn_cancellable(accept_loop(
            listener,
            conns.clone(),
            conn_tx,
        )));
    } else if accept == AcceptMode::ReusePort {
        match TcpListener::bind(seed.listen_addr) {
            Ok(l) => acceptors.push(rt::spawn_cancellable(accept_loop(
                l,
                conns.clone(),
                Vec::new(),
            ))),
            Err(e) => tracing::error!(
                "shard {}: cannot bind its SO_REUSEPORT listener: {e}",
                seed.id
            ),
        }
    }
    if let Some(rx) = conn_rx {
        acceptors.push(rt::spawn_cancellable(handoff_loop(rx, conns.clone())));
    }
    ShardCtx {
        id: seed.id,
        count: n,
        mesh: Rc::new(Mesh::new(seed.id, connected)),
        receivers: RefCell::new(mesh_rx),
        conns,
        acceptors: RefCell::new(acceptors),
        // SAFETY: the pool owns this socket-pair end and gives it to this shard only.
        stop: RefCell::new(
            seed.stop
                .map(|s| unsafe { glommio::net::UnixStream::from_raw_fd(s.into_raw_fd()) }),
        ),
    }
}

/// Awaits every spawned task in order, keeping the gaps (the shard's own slot).
async fn await_each<T>(tasks: Vec<Option<glommio::Task<T>>>) -> Vec<Option<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(match t {
            Some(t) => Some(t.await),
            None => None,
        });
    }
    out
}

/// Accepts connections; with peers, deals them out round-robin (shard 0 keeps every n-th).
async fn accept_loop(
    listener: TcpListener,
    conns: Rc<ConnQueue>,
    peers: Vec<Option<ConnectedSender<AcceptedTcpStream>>>,
) {
    let n = peers.len().max(1);
    let mut next = 0usize;
    loop {
        match listener.shared_accept().await {
            Ok(stream) => {
                let target = next;
                next = (next + 1) % n;
                let stream = match peers.get(target).and_then(|p| p.as_ref()) {
                    None => stream,
                    Some(tx) => match tx.try_send(stream) {
                        Ok(()) => continue,
                        // The peer is backed up or gone: serve the connection here.
                        Err(GlommioError::WouldBlock(ResourceType::Channel(s)))
                        | Err(GlommioError::Closed(ResourceType::Channel(s))) => s,
                        Err(_) => continue,
                    },
                };
                conns.push(Conn::new(stream.bind_to_executor()));
            }
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                tracing::error!("error accepting client connection: {e}");
                rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Receives connections that shard 0 accepted for this shard.
async fn handoff_loop(rx: ConnectedReceiver<AcceptedTcpStream>, conns: Rc<ConnQueue>) {
    while let Some(stream) = rx.recv().await {
        conns.push(Conn::new(stream.bind_to_executor()));
    }
}
