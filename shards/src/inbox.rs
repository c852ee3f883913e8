//! Requests from ordinary threads (the monitoring server, the signal thread) to a shard.
//!
//! A shard must never block, and a plain thread cannot use glommio's channels, so an
//! [`Inbox`] pairs a lock-free queue per shard (`crossbeam-channel`) with a socket pair used
//! as a doorbell: [`Inbox::send`] queues the request and writes one byte, and the shard's
//! [`InboxReceiver`] awaits that byte on its reactor like any socket. An idle shard wakes only
//! when a request arrives; a busy one drains several requests per byte. Replies travel back on
//! whatever channel the request carries (the sender may block on it; the shard never does).

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::io::{self, Write};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// A shard's queue end and doorbell end, before the shard takes them.
type ShardEnd<T> = (Receiver<T>, UnixStream);

/// The sending side, shared by every thread that talks to the shards.
pub struct Inbox<T: Send> {
    senders: Vec<(Sender<T>, UnixStream)>,
    /// The shards' ends, taken once each by [`Inbox::receiver`].
    receivers: Mutex<Vec<Option<ShardEnd<T>>>>,
}

impl<T: Send> Inbox<T> {
    /// One queue and one doorbell per shard.
    pub fn new(shards: usize) -> io::Result<Inbox<T>> {
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards.max(1) {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (bell, ear) = UnixStream::pair()?;
            // A full doorbell already means "look at the queue": never block on it.
            bell.set_nonblocking(true)?;
            senders.push((tx, bell));
            receivers.push(Some((rx, ear)));
        }
        Ok(Inbox {
            senders,
            receivers: Mutex::new(receivers),
        })
    }

    /// The number of shards this inbox reaches.
    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Queues `msg` for shard `shard` and rings its doorbell. Returns false if that shard has
    /// stopped listening (or does not exist).
    pub fn send(&self, shard: usize, msg: T) -> bool {
        let Some((tx, bell)) = self.senders.get(shard) else {
            return false;
        };
        if tx.send(msg).is_err() {
            return false;
        }
        match (&*bell).write_all(&[1]) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Shard `shard`'s receiving end. Call it on that shard's thread, once.
    pub fn receiver(&self, shard: usize) -> Option<InboxReceiver<T>> {
        let (rx, ear) = self
            .receivers
            .lock()
            .ok()
            .and_then(|mut r| r.get_mut(shard).and_then(Option::take))?;
        // SAFETY: the std stream is ours alone; its descriptor moves into glommio's stream.
        let ear = unsafe { glommio::net::UnixStream::from_raw_fd(ear.into_raw_fd()) };
        Some(InboxReceiver { rx, ear })
    }
}

/// A shard's end of an [`Inbox`].
pub struct InboxReceiver<T> {
    rx: Receiver<T>,
    ear: glommio::net::UnixStream,
}

impl<T> InboxReceiver<T> {
    /// The next request; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        let mut rung = [0u8; 64];
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Some(m),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            match futures_lite::AsyncReadExt::read(&mut self.ear, &mut rung).await {
                Ok(0) | Err(_) => return self.rx.try_recv().ok(),
                Ok(_) => {}
            }
        }
    }
}
