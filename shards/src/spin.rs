//! Giving the core away while a shard spins before it parks.
//!
//! glommio's own spin (`spin_before_park`) polls its rings without a system call, which is
//! what makes it fast, and it cannot yield: on a host with more runnable threads than cores
//! (two servers on one core, a shard and a busy client on the same core) a spinning shard
//! keeps the core for its whole scheduler slice while the thread it is waiting for cannot
//! run. [`give_way`] is a task that, for a while after the shard's last work, wakes on a
//! short timer and calls `sched_yield`, which hands the core to any other runnable thread
//! and returns at once when there is none. The shard's I/O loops call [`activity`] after
//! their work. The pool keeps glommio's own spin short, to bridge the timer's turns only.
//! When a yield keeps the shard off its core for long, another thread is busy there (a
//! client that polls, another spinning process): the shard then stops spinning for a while,
//! so that it parks after work and is woken at once when work comes.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// Work happened since the give-way task last looked.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// The give-way task, parked until the next work.
    static IDLE: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// How often a spinning shard offers its core to other threads.
pub const TURN: Duration = Duration::from_micros(5);

/// A yield that kept the shard off its core this long means the core is contended.
const CONTENDED: Duration = Duration::from_micros(200);

/// How long a shard that found its core contended parks right after work.
const COOL_DOWN: Duration = Duration::from_millis(50);

/// Notes that this shard just did work: it keeps spinning (and giving way) for another
/// window. Cheap enough to call after every read.
pub fn activity() {
    ACTIVE.with(|a| a.set(true));
    if let Some(w) = IDLE.with(|i| i.borrow_mut().take()) {
        w.wake();
    }
}

/// The shard's give-way task: for `window` past the last [`activity`] it wakes every
/// [`TURN`] and, when there was no work in that turn (the shard is spinning), yields the
/// core; after a quiet window it waits, without a timer, for the next work.
pub async fn give_way(window: Duration) {
    loop {
        std::future::poll_fn(|cx| {
            if ACTIVE.with(|a| a.replace(false)) {
                Poll::Ready(())
            } else {
                IDLE.with(|i| *i.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        let mut last = Instant::now();
        loop {
            // The timer also keeps glommio's short spin going between turns.
            glommio::timer::sleep(TURN).await;
            if ACTIVE.with(|a| a.replace(false)) {
                // Working, not spinning: nothing to give away this turn.
                last = Instant::now();
            } else if last.elapsed() >= window {
                break;
            } else {
                let asked = Instant::now();
                std::thread::yield_now();
                if asked.elapsed() >= CONTENDED {
                    // Another thread had this core for a while: spinning here only delays
                    // it, and while the shard waits its turn it cannot answer. Park right
                    // after work for a while instead (a parked shard is woken at once).
                    glommio::timer::sleep(COOL_DOWN).await;
                    break;
                }
            }
        }
    }
}
