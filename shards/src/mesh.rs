//! The mesh: one bounded lock-free SPSC queue per ordered pair of shards.
//!
//! A shard sends with [`Mesh::send`], which never waits: it tries the queue, and when the queue
//! is full it parks the message in a per-peer overflow queue that a local task drains as the
//! peer catches up. [`Mesh::congested`] tells a caller that some peer is behind, so it can
//! pause its producers (DESIGN.md invariant 6) instead of buffering without bound.

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
    pub(crate) fn new(me: usize, senders: Vec<Option<ConnectedSender<M>>>) -> Mesh<M> {
        let peers = senders
            .into_iter()
            .map(|s| {
                s.map(|sender| {
                    Rc::new(Peer {
                        sender,
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

/// The receiving end of the queue from one peer shard.
pub struct MeshReceiver<M: Send + 'static> {
    from: usize,
    rx: ConnectedReceiver<M>,
}

impl<M: Send + 'static> MeshReceiver<M> {
    pub(crate) fn new(from: usize, rx: ConnectedReceiver<M>) -> Self {
        MeshReceiver { from, rx }
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
