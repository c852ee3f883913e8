//! Client connections: the blocking `TcpStream` (TCP_NODELAY on), the CONNECT/PING handshake,
//! PING/PONG bookkeeping, and shard placement. Owns the count of connections opened against a
//! server since it started, which is how the generator steers Tern's round-robin accept
//! (connection k goes to shard k mod shards). Must not know about scenarios.

use crate::error::{Error, IoContext, Result};
use crate::proto::{connect_line, Frame, Parser};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a connection should land among the server's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shard {
    /// Wherever the next accept puts it.
    Any,
    /// On shard `n` (mod the server's shard count).
    On(u64),
}

/// A server under test.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// Connections opened against this server process so far (placement bookkeeping).
    pub opened: Arc<AtomicU64>,
    /// Shard count used for placement (1 = placement ignored).
    pub shards: u64,
    /// The server's pid, when known (for RSS and CPU readings).
    pub pid: Option<u32>,
}

impl Target {
    /// A target from a `nats://host:port` or `host:port` URL.
    pub fn from_url(url: &str, shards: u64, opened: u64, pid: Option<u32>) -> Result<Self> {
        let a = url.strip_prefix("nats://").unwrap_or(url);
        let a = a.rsplit('@').next().unwrap_or(a).trim_end_matches('/');
        if !a.contains(':') {
            return Err(Error::Config(format!("url {url:?} has no port")));
        }
        Ok(Target {
            addr: a.to_string(),
            opened: Arc::new(AtomicU64::new(opened)),
            shards: shards.max(1),
            pid,
        })
    }

    /// Opens one connection and completes the handshake, first opening throwaway connections
    /// until the next accept lands on the wanted shard.
    pub fn connect(&self, name: &str, shard: Shard) -> Result<Conn> {
        if let Shard::On(want) = shard {
            if self.shards > 1 {
                while self.opened.load(Ordering::SeqCst) % self.shards != want % self.shards {
                    drop(self.raw_connect("tern-bench-shift")?);
                }
            }
        }
        self.raw_connect(name)
    }

    fn raw_connect(&self, name: &str) -> Result<Conn> {
        let stream = TcpStream::connect(&self.addr).ctx(|| format!("connect {}", self.addr))?;
        self.opened.fetch_add(1, Ordering::SeqCst);
        stream.set_nodelay(true).ctx(|| "set TCP_NODELAY".into())?;
        let mut c = Conn {
            stream,
            parser: Parser::new(64 * 1024),
            pings_out: 0,
        };
        c.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ctx(|| "set read timeout".into())?;
        // Wait for INFO before anything else so accept order is the order we opened in.
        loop {
            match c.next()? {
                Frame::Info(_) => break,
                Frame::Ping => c.write(b"PONG\r\n")?,
                other => return Err(Error::Protocol(format!("expected INFO, got {other:?}"))),
            }
        }
        c.write(&connect_line(name))?;
        c.pings_out = 1;
        c.wait_pongs(0, Duration::from_secs(10))?;
        c.stream
            .set_read_timeout(None)
            .ctx(|| "clear read timeout".into())?;
        Ok(c)
    }

    /// Resident set size of the server now, in bytes.
    pub fn rss(&self) -> Option<u64> {
        crate::stats::proc_status_kb(self.pid?, "VmRSS")
    }
}

/// One blocking client connection with its parser.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Parser over what the server sent.
    pub parser: Parser,
    /// PINGs written whose PONG has not arrived.
    pub pings_out: u32,
}

impl Conn {
    /// Writes all of `b` (one syscall for buffers the kernel takes whole).
    pub fn write(&mut self, b: &[u8]) -> Result<()> {
        self.stream.write_all(b).ctx(|| "write to server".into())
    }

    /// The next frame, reading as needed. Answers nothing itself.
    pub fn next(&mut self) -> Result<Frame<'_>> {
        while !self.parser.ready()? {
            let n = self
                .parser
                .read_from(&mut self.stream)
                .ctx(|| "read from server".into())?;
            if n == 0 {
                return Err(Error::Protocol("server closed the connection".into()));
            }
        }
        self.parser
            .next_frame()?
            .ok_or_else(|| Error::Protocol("frame vanished".into()))
    }

    /// Sends `PING` and counts it.
    pub fn ping(&mut self) -> Result<()> {
        self.pings_out += 1;
        self.write(b"PING\r\n")
    }

    /// Reads until at most `left` PINGs are outstanding. Any MSG frames seen are dropped; a
    /// server PING is answered; `-ERR` is an error.
    pub fn wait_pongs(&mut self, left: u32, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.pings_out > left {
            if Instant::now() > deadline {
                return Err(Error::Timeout("waiting for PONG".into()));
            }
            let f = self.next()?;
            match f {
                Frame::Pong => self.pings_out -= 1,
                Frame::Ping => self.write(b"PONG\r\n")?,
                Frame::Err(e) => {
                    return Err(Error::Server(String::from_utf8_lossy(e).into_owned()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Round trip: PING and wait for its PONG (the server has processed all we sent).
    pub fn flush(&mut self) -> Result<()> {
        self.ping()?;
        self.wait_pongs(0, Duration::from_secs(30))
    }

    /// Sets the socket read timeout (so reader loops can notice a stop flag).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(t)
            .ctx(|| "set read timeout".into())
    }
}

/// Pins the calling thread to `core` if given (best effort; returns whether it worked).
pub fn pin(core: Option<usize>) -> bool {
    match core {
        Some(id) => core_affinity::set_for_current(core_affinity::CoreId { id }),
        None => false,
    }
}

/// Raises the open-file limit to its hard maximum (connection-scale runs need it; children
/// started afterwards inherit it).
pub fn raise_nofile() {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
