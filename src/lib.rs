//! Tern: a thread-per-core NATS server on io_uring.
//!
//! # Layout
//!
//! - [`parser`]: the client protocol parser (sans-IO): bytes in, [`parser::Op`]s out.
//! - [`client`]: the client state machine and encoder (sans-IO): `CONNECT` options and checks,
//!   `MSG`/`HMSG`/`-ERR` bytes.
//! - [`sublist`]: subject validation and the per-shard subject index with queue groups and a
//!   bounded, lazily invalidated match cache (sans-IO).
//! - [`accounts`]: the accounts, their exports and imports, and the subject rewriting an
//!   import implies (sans-IO).
//! - [`events`]: the system account's advisories and the `$SYS.REQ.SERVER...` requests
//!   (sans-IO).
//! - [`auth`]: who may connect (token, users with passwords or nkeys, `no_auth_user`) and
//!   what each user may publish and subscribe to (sans-IO).
//! - [`conf`]: nats-server's config file format, parsed into positioned values (sans-IO but
//!   for reading included files).
//! - [`opts`]: command-line flags (Go `flag` style, as nats-server) and the TOML config file.
//! - [`route`]: the route (cluster) wire format: route INFO/CONNECT, `RS+`/`RS-`,
//!   `RMSG`/`HMSG` parsing and encoding (sans-IO).
//! - [`server`]: the server on its shards: connections, interest gossip between shards,
//!   forwarding, queue groups, the interest barrier, slow consumers, pings; its `routes`
//!   part runs the route connections on shard 0.
//! - [`tls`]: the `tls {}` options and the rustls configuration built from them.
//! - [`log`]: nats-server style log lines through `tracing`, reloadable and reopenable.
//! - [`monitor`]: the HTTP monitoring endpoints (`/varz`, `/connz`, `/subsz`, ...), fed by
//!   reports the shards send on request.
//! - [`main`](../tern/index.html): the binary: flags, preflight, listener, pid and ports files,
//!   signals.
//!
//! The thread-per-core runtime (glommio, pinning, the mesh, the acceptor) is the separate crate
//! `tern-shards`, which knows nothing about NATS.

pub mod accounts;
pub mod auth;
pub mod client;
pub mod conf;
pub mod events;
pub mod log;
pub mod monitor;
pub mod opts;
pub mod parser;
pub mod route;
pub mod server;
pub mod sublist;
mod swar;
pub mod tls;

/// The NATS server version Tern speaks and reports in `INFO`. Clients gate features on this
/// (headers since 2.2, for instance), so it names the nats-server release whose client
/// protocol Tern implements rather than Tern's own version.
pub const VERSION: &str = "2.10.0";

/// Tern's own version.
pub const TERN_VERSION: &str = env!("CARGO_PKG_VERSION");
