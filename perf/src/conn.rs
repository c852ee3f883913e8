//! Client connections: the blocking `TcpStream` (TCP_NODELAY on), the CONNECT/PING handshake,
//! PING/PONG bookkeeping, and shard placement. Owns the count of connections opened against a
//! server since it started, which is how the generator steers Tern's round-robin accept
//! (connection k goes to shard k mod shards). Must not know about scenarios.

use crate::error::{Error, IoContext, Result};
use crate::proto::{connect_line, Frame, Parser};
use std::io::{Read, Write};
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
    /// Upgrade every connection to TLS after the INFO line (the server requires TLS).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Another server of the same cluster that subscribers and responders connect to, so that
    /// every message crosses a route (the routed scenarios).
    pub peer: Option<Box<Target>>,
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Sets the socket read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    /// Makes the socket non-blocking.
    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        self.tcp().set_nonblocking(on)
    }
}

impl std::os::unix::io::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        self.tcp().as_raw_fd()
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Accepts any server certificate: for benchmarking against a test server only.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that trusts any server certificate (benchmarks only).
pub fn insecure_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
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
            tls: None,
            peer: None,
        })
    }

    /// Where subscribers and responders connect: the peer server when there is one.
    pub fn sub_side(&self) -> &Target {
        self.peer.as_deref().unwrap_or(self)
    }

    /// The pids of every server process taking part (this one and its peer).
    pub fn pids(&self) -> Vec<u32> {
        self.pid
            .into_iter()
            .chain(self.peer.as_ref().and_then(|p| p.pid))
            .collect()
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
            stream: Stream::Tcp(stream),
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
        if let Some(cfg) = &self.tls {
            let placeholder = Stream::Tcp(tcp_clone(&c)?);
            let Stream::Tcp(sock) = std::mem::replace(&mut c.stream, placeholder) else {
                unreachable!("a new connection is plain TCP");
            };
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(|e| Error::Config(e.to_string()))?;
            let conn = rustls::ClientConnection::new(cfg.clone(), name)
                .map_err(|e| Error::Config(format!("TLS: {e}")))?;
            c.stream = Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock)));
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
    /// The socket (TLS or not).
    pub stream: Stream,
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

    /// Makes reads return at once when nothing is there (polling loops). Writes of a few
    /// frames still go whole: the kernel's send buffer takes them.
    pub fn set_nonblocking(&self) -> Result<()> {
        self.stream
            .set_nonblocking(true)
            .ctx(|| "set non-blocking".into())
    }
}

/// A second handle on the connection's socket (kept only while swapping in TLS).
fn tcp_clone(c: &Conn) -> Result<TcpStream> {
    c.stream.tcp().try_clone().ctx(|| "clone socket".into())
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
