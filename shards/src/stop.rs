//! Stopping the shards from outside them (a signal-handling thread) without polling: each
//! shard waits on its end of a socket pair, and [`StopSignal::trigger`] writes one byte to
//! every pair. A shard that is asleep wakes only for that, never on a timer.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// The trigger side, shared with whoever decides to stop (e.g. a signal thread).
pub struct StopSignal {
    writers: Vec<UnixStream>,
    /// The shards' ends, taken once each by the pool.
    readers: Mutex<Vec<Option<UnixStream>>>,
}

impl StopSignal {
    /// One socket pair per shard.
    pub fn new(shards: usize) -> io::Result<StopSignal> {
        let mut writers = Vec::with_capacity(shards);
        let mut readers = Vec::with_capacity(shards);
        for _ in 0..shards.max(1) {
            let (w, r) = UnixStream::pair()?;
            writers.push(w);
            readers.push(Some(r));
        }
        Ok(StopSignal {
            writers,
            readers: Mutex::new(readers),
        })
    }

    /// Asks every shard to stop. Safe to call more than once.
    pub fn trigger(&self) {
        for w in &self.writers {
            let _ = (&*w).write(&[1]);
        }
    }

    /// Shard `i`'s end (taken once, at pool start-up, not on a shard's hot path).
    pub(crate) fn take_reader(&self, i: usize) -> Option<UnixStream> {
        self.readers
            .lock()
            .ok()
            .and_then(|mut r| r.get_mut(i).and_then(Option::take))
    }
}
