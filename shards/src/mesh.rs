//! The mesh: one bounded lock-free SPSC queue per ordered pair of shards.
//!
//! A shard sends with [`Mesh::send`], which never waits: it tries the queue, and when the queue
//! is full it parks the message in a per-peer overflow queue that a local task drains as the
//! peer catches up. [`Mesh::congested`] tells a caller that some peer is behind, so it can
//! pause its producers (DESIGN.md invariant 6) instead of buffering without bound.
//!
//! Beside each queue runs a return queue the other way: the receiver hands a message it has
//! finished with back ([`MeshReceiver::give_back`]) and the sender takes it
//! ([`Mesh::take_back`]), to free or reuse it on the thread that allocated it. glibc's
//! malloc locks an arena for every free into it, so a shard freeing what another allocated
//! contends with that shard's own allocations on the arena's lock (a `futex` each time it
//! is taken while held).

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use glommio::{GlommioError, ResourceType};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// How often a full queue is retried while its overflow is non-empty.
const RETRY: Duration = Duration::from_micros(50);

struct Peer<M: Send + 'static> {
    sender: ConnectedSender<M>,
    returned: crossbeam_channel::Receiver<M>,
    overflow: RefCell<VecDeque<M>>,
    draining: Cell<bool>,
}

/// This shard's sending ends towards every other shard.
pub struct Mesh<M: Send + 'static> {
    me: usize,
    peers: Vec<Option<Rc<Peer<M>>>>,
    congested: Cell<usize>,
}

impl<M: Send + 'static> Mesh<M> {
    pub(crate) fn new(me: usize, senders: Vec<Option<PeerEnds<M>>>) -> Mesh<M> {
        let peers = senders
            .into_iter()
            .map(|s| {
                s.map(|(sender, returned)| {
                    Rc::new(Peer {
                        sender,
                        returned,
                        overflow: RefCell::new(VecDeque::new()),
                        draining: Cell::new(false),
                    })
                })
            })
            .collect();
        Mesh {
            me,
            peers,
            congested: Cell::new(0),
        }
    }

    /// This shard's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// The number of shards, this one included.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the mesh has no shard at all (never true for a running pool).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// True while some peer's queue is full and messages wait in its overflow.
    pub fn congested(&self) -> bool {
        self.congested.get() > 0
    }

    /// Sends `msg` to shard `to` without waiting. Messages to one peer arrive in send order.
    /// Sending to oneself or to a peer that has gone away drops the message.
    pub fn send(self: &Rc<Self>, to: usize, msg: M) {
        let Some(Some(peer)) = self.peers.get(to) else {
            return;
        };
        if !peer.overflow.borrow().is_empty() {
            peer.overflow.borrow_mut().push_back(msg);
            return;
        }
        // A closed queue means the peer has shut down: the message has nowhere to go.
        if let Some(msg) = would_block(peer.sender.try_send(msg)) {
            peer.overflow.borrow_mut().push_back(msg);
            self.start_drain(peer.clone());
        }
    }

    /// A message sent to shard `to` that it has given back, if any.
    pub fn take_back(&self, to: usize) -> Option<M> {
        let Some(Some(peer)) = self.peers.get(to) else {
            return None;
        };
        peer.returned.try_recv().ok()
    }

    fn start_drain(self: &Rc<Self>, peer: Rc<Peer<M>>) {
        if peer.draining.replace(true) {
            return;
        }
        self.congested.set(self.congested.get() + 1);
        let mesh = self.clone();
        crate::rt::spawn(async move {
            loop {
                {
                    let mut q = peer.overflow.borrow_mut();
                    while let Some(m) = q.pop_front() {
                        match peer.sender.try_send(m) {
                            Ok(()) => {}
                            Err(GlommioError::WouldBlock(ResourceType::Channel(m))) => {
                                q.push_front(m);
                                break;
                            }
                            Err(_) => q.clear(),
                        }
                    }
                    if q.is_empty() {
                        break;
                    }
                }
                crate::rt::sleep(RETRY).await;
            }
            peer.draining.set(false);
            mesh.congested.set(mesh.congested.get() - 1);
        });
    }

    /// Waits until no peer is congested. Producers call this before reading more input.
    pub async fn wait_uncongested(&self) {
        while self.congested() {
            crate::rt::sleep(RETRY).await;
        }
    }
}

/// The message back if the queue was full; `None` if it was sent or the peer is gone.
fn would_block<M>(r: Result<(), GlommioError<M>>) -> Option<M> {
    match r {
        Err(GlommioError::WouldBlock(ResourceType::Channel(m))) => Some(m),
        _ => None,
    }
}

/// The sending end towards one peer and the end its given-back messages arrive on.
pub(crate) type PeerEnds<M> = (ConnectedSender<M>, crossbeam_channel::Receiver<M>);

/// The receiving end of the queue from one peer shard.
pub struct MeshReceiver<M: Send + 'static> {
    from: usize,
    rx: ConnectedReceiver<M>,
    back: crossbeam_channel::Sender<M>,
}

impl<M: Send + 'static> MeshReceiver<M> {
    pub(crate) fn new(
        from: usize,
        rx: ConnectedReceiver<M>,
        back: crossbeam_channel::Sender<M>,
    ) -> Self {
        MeshReceiver { from, rx, back }
    }

    /// Hands `msg` back to the shard that sent it, to be freed there. Never waits: when that
    /// shard is gone or has not taken back what it got before, `msg` is dropped here.
    pub fn give_back(&self, msg: M) {
        let _ = self.back.try_send(msg);
    }

    /// The shard this queue comes from.
    pub fn from(&self) -> usize {
        self.from
    }

    /// The next message; `None` once the peer has shut down.
    pub async fn recv(&self) -> Option<M> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use crate::pool::{bind_listener, run, AcceptMode, PoolConfig, ShardCtx};
    use crate::stop::StopSignal;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    const SENT: usize = 10;
    const CAPACITY: usize = 2;

    /// Shard 0 sends `SENT` vectors to shard 1 through a queue of `CAPACITY`, which gives each
    /// back, then says it is done. Shard 0 takes back exactly the first `CAPACITY` of its own
    /// allocations (the rest could not wait in the full return queue, and were dropped on
    /// shard 1), and nothing comes back from a shard it never sent to.
    #[test]
    fn a_receiver_gives_messages_back_to_the_shard_that_sent_them() {
        let cfg = PoolConfig {
            shards: 2,
            pin: false,
            spin_before_park: None,
            io_memory: 1 << 20,
            mesh_capacity: CAPACITY,
            accept: AcceptMode::RoundRobin,
        };
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let stop = Arc::new(StopSignal::new(2).unwrap());
        run(
            cfg,
            listener,
            stop,
            |ctx: Rc<ShardCtx<Vec<usize>>>| async move {
                let mesh = ctx.mesh().clone();
                let rx = ctx.take_receivers().pop().unwrap();
                if ctx.id() == 0 {
                    let mut sent = Vec::new();
                    for i in 0..SENT {
                        let v = vec![i; 4];
                        sent.push(v.as_ptr() as usize);
                        mesh.send(1, v);
                        // Let the overflow drain and shard 1 catch up.
                        crate::rt::sleep(Duration::from_millis(1)).await;
                    }
                    assert_eq!(rx.recv().await, Some(vec![usize::MAX]));
                    let mut back = Vec::new();
                    while let Some(v) = mesh.take_back(1) {
                        back.push((v.as_ptr() as usize, v[0]));
                    }
                    let expected: Vec<_> = (0..CAPACITY).map(|i| (sent[i], i)).collect();
                    assert_eq!(back, expected);
                    assert!(mesh.take_back(0).is_none());
                } else {
                    for i in 0..SENT {
                        let v = rx.recv().await.unwrap();
                        assert_eq!(v, vec![i; 4]);
                        rx.give_back(v);
                    }
                    mesh.send(0, vec![usize::MAX]);
                    assert!(mesh.take_back(0).is_none());
                }
                ctx.stop_accepting();
            },
        )
        .unwrap();
    }
}
