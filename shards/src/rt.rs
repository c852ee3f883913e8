//! Async primitives for code running on a shard: spawning local tasks, timers, yielding.
//!
//! Everything here is single-threaded and must only be called from a shard thread.

use std::future::Future;
use std::time::Duration;

/// Spawns a task on the current shard and lets it run to completion on its own.
pub fn spawn<F>(fut: F)
where
    F: Future<Output = ()> + 'static,
{
    glommio::spawn_local(fut).detach();
}

/// A task that is cancelled when this handle is dropped.
pub struct TaskHandle(#[allow(dead_code)] glommio::Task<()>);

/// Spawns a task on the current shard; dropping the returned handle cancels it.
pub fn spawn_cancellable<F>(fut: F) -> TaskHandle
where
    F: Future<Output = ()> + 'static,
{
    TaskHandle(glommio::spawn_local(fut))
}

/// Sleeps on the shard's timer wheel (never blocks the thread).
pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Runs `fut` for at most `d`; `None` if the time ran out first.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(d).await;
        None
    })
    .await
}

/// Lets the other tasks of this shard run before continuing.
pub async fn yield_now() {
    futures_lite::future::yield_now().await;
}

/// Waits for whichever of two futures finishes first.
pub async fn race<T, A, B>(a: A, b: B) -> T
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    futures_lite::future::or(a, b).await
}

/// Runs `f` on the shard's helper thread (glommio's blocking pool) and awaits its result, so
/// that slow, CPU-bound work such as a bcrypt check never stalls the shard's other tasks.
pub async fn spawn_blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(f).await
}
