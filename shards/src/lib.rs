//! `tern-shards`: the thread-per-core runtime Tern runs on.
//!
//! This crate is the only one that knows glommio. It knows nothing about NATS: it starts one
//! glommio executor per shard (optionally pinned to a core), checks at startup that io_uring
//! and the memlock limit allow that ([`preflight`]), connects every pair of shards with a
//! lock-free queue ([`mesh`]), hands accepted TCP connections to shards ([`pool`], round-robin
//! or `SO_REUSEPORT`), and offers the few async primitives the server needs on a shard
//! ([`rt`], [`net`]). Ordinary threads reach a shard through an [`inbox`].
//!
//! Rules it enforces for its users (DESIGN.md, invariant 5): a send between shards never
//! awaits (it is `try_send` plus a per-peer overflow queue), channel ends are never cloned,
//! and nothing here blocks a shard thread.

pub mod inbox;
pub mod mesh;
pub mod net;
pub mod pool;
pub mod preflight;
pub mod rt;
pub mod stop;

pub use inbox::{Inbox, InboxReceiver};
pub use mesh::{Mesh, MeshReceiver};
pub use net::{connect, Conn, ConnReader, ConnWriter, Listener, SendProbe, Sending};
pub use pool::{bind_listener, run, AcceptMode, PoolConfig, PoolError, ShardCtx};
pub use preflight::{preflight, PreflightError};
pub use stop::StopSignal;
