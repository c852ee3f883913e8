//! Shared black-box harness: start a server binary (Tern or the real
//! nats-server), discover its port from the log, talk raw protocol to it.
//!
//! Binary selection: `NATS_SERVER_BIN` if set, else the `tern` binary of the
//! package under test (`CARGO_BIN_EXE_tern`). Every server is started with
//! `-a 127.0.0.1 -p -1` (random port) plus the test's extra arguments.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Correctness timeout for anything we wait for (never a performance assert).
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    match option_env!("CARGO_BIN_EXE_tern") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "no server binary: set NATS_SERVER_BIN=/path/to/nats-server (or tern), \
             or run these tests inside the tern package so CARGO_BIN_EXE_tern is set"
        ),
    }
}

/// True when the binary under test is Tern (anything whose file name is not
/// `nats-server`).
pub fn is_tern() -> bool {
    let bin = server_bin();
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    !name.contains("nats-server")
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start with `-a 127.0.0.1 -p -1` plus `args` (for both binaries).
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_tern_args(args, &[])
    }

    /// `args` go to both binaries, `tern_only` only when the binary is Tern.
    pub fn start_with_tern_args(args: &[&str], tern_only: &[&str]) -> Server {
        let mut all: Vec<String> = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), "-1".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        // Extra flags for every server a test starts, e.g. TERN_TEST_ARGS=-DV to debug one.
        if let Ok(extra) = std::env::var("TERN_TEST_ARGS") {
            all.extend(extra.split_whitespace().map(String::from));
        }
        if is_tern() {
            all.extend(tern_only.iter().map(|s| s.to_string()));
        }
        Self::spawn(&all)
    }

    /// Tern gets `--shards n`; nats-server gets nothing extra (one process,
    /// so the same cross-shard invariants must trivially hold).
    pub fn start_sharded(n_shards: usize, args: &[&str]) -> Server {
        let n = n_shards.to_string();
        Self::start_with_tern_args(args, &["--shards", &n])
    }

    /// Starts `bin` (not necessarily the binary under test) with `-a 127.0.0.1 -p -1` and
    /// `args`: for tests that compare Tern with a reference nats-server in one run.
    pub fn start_bin(bin: &std::path::Path, args: &[&str]) -> Server {
        let mut all: Vec<String> = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), "-1".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        Self::spawn_bin(bin.to_path_buf(), &all)
    }

    fn spawn(args: &[String]) -> Server {
        Self::spawn_bin(server_bin(), args)
    }

    fn spawn_bin(bin: PathBuf, args: &[String]) -> Server {
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<u16>();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        spawn_log_reader(stderr, logs.clone(), tx.clone());
        spawn_log_reader(stdout, logs.clone(), tx);
        let port = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server {} {:?} did not print 'Listening for client connections on'; log:\n{}",
                    bin.display(),
                    args,
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child: Some(child),
            port,
            logs,
        }
    }

    /// The monitoring port, from the `Starting http monitor on host:port` log line (start the
    /// server with `-m -1` or an `http` config key).
    pub fn http_port(&self) -> u16 {
        self.logged_port("Starting http monitor on ")
    }

    /// The cluster port, from the `Listening for route connections on host:port` log line.
    pub fn route_port(&self) -> u16 {
        self.logged_port("Listening for route connections on ")
    }

    /// The port at the end of the log line that contains `needle`.
    pub fn logged_port(&self, needle: &str) -> u16 {
        assert!(
            self.wait_for_log(needle, TIMEOUT),
            "no {needle:?} in the log"
        );
        self.logs()
            .iter()
            .find_map(|l| {
                let rest = &l[l.find(needle)? + needle.len()..];
                rest.trim()
                    .rsplit(':')
                    .next()?
                    .trim_end_matches('/')
                    .parse()
                    .ok()
            })
            .expect("a port in the log")
    }

    /// GETs `path` from the monitoring port: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port(), path)
    }

    /// GETs `path` and parses the JSON body, asserting a 200.
    pub fn http_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.http_get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}"))
    }

    /// Sends `sig` (e.g. "HUP", "USR2") to the server process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "kill -{sig} {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already stopped").id()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Polls the captured log (stderr+stdout) for up to `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls the log for up to 5 s.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.wait_for_log(needle, TIMEOUT)
    }

    /// True while the child process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status. Returns None
    /// (and SIGKILLs the child) if it did not exit in time.
    pub fn stop_gracefully(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Raw protocol client connected to this server (INFO already read).
    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.port)
    }

    /// Raw client that has sent `CONNECT {"verbose":false}` and completed a
    /// PING/PONG (so the server has processed the CONNECT).
    pub fn raw_quiet(&self) -> RawClient {
        let mut c = RawClient::connect(self.port);
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
        c.expect(b"PONG\r\n");
        c
    }

    /// Raw client with `{"verbose":false,"headers":true}`.
    pub fn raw_headers(&self) -> RawClient {
        let mut c = RawClient::connect(self.port);
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nPING\r\n");
        c.expect(b"PONG\r\n");
        c
    }

    pub async fn client(&self) -> async_nats::Client {
        client(self.port).await
    }

    /// A well-behaved client can still do a pub/sub roundtrip: the server is
    /// up and serving.
    pub fn assert_healthy(&self) {
        self.assert_healthy_as(r#"{"verbose":false,"pedantic":false}"#);
    }

    /// `assert_healthy` for a server that requires credentials (`connect` is the CONNECT JSON).
    pub fn assert_healthy_as(&self, connect: &str) {
        let open = |port| {
            let mut c = RawClient::connect(port);
            c.send(format!("CONNECT {connect}\r\nPING\r\n").as_bytes());
            c.expect(b"PONG\r\n");
            c
        };
        let mut s = open(self.port);
        s.send(b"SUB health.check 1\r\nPING\r\n");
        s.expect(b"PONG\r\n");
        let mut p = open(self.port);
        p.send(b"PUB health.check 2\r\nok\r\nPING\r\n");
        p.expect(b"PONG\r\n");
        s.expect(b"MSG health.check 1 2\r\nok\r\n");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing test shows the server's log, which is usually the quickest clue.
        if std::thread::panicking() {
            if let Ok(lines) = self.logs.lock() {
                let tail = lines.len().saturating_sub(500);
                eprintln!("--- server log (last {} lines) ---", lines.len() - tail);
                for l in &lines[tail..] {
                    eprintln!("{l}");
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_log_reader<R: Read + Send + 'static>(
    r: R,
    logs: Arc<Mutex<Vec<String>>>,
    port_tx: mpsc::Sender<u16>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut line = Vec::new();
        let needle = "Listening for client connections on ";
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line).trim_end().to_string();
                    if s.contains(needle) {
                        if let Some(p) = s
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse::<u16>().ok())
                        {
                            let _ = port_tx.send(p);
                        }
                    }
                    logs.lock().unwrap().push(s);
                }
            }
        }
    });
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port` (test-side only): (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to monitoring port");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read HTTP response");
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {head:?}"));
    (status, body.to_string())
}

/// Connected async-nats client.
pub async fn client(port: u16) -> async_nats::Client {
    tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::connect(format!("nats://127.0.0.1:{port}")),
    )
    .await
    .expect("async_nats connect timed out")
    .expect("async_nats connect failed")
}

/// A MSG or HMSG received by a RawClient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub subject: String,
    pub sid: String,
    pub reply: Option<String>,
    /// Header block (HMSG only).
    pub headers: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Raw protocol client over a blocking TcpStream.
///
/// Incoming bytes are split into whole server operations. A server `PING`
/// (nats-server sends one ~2 s after CONNECT, then every ping_interval) is
/// answered with `PONG` and hidden from the test, unless `auto_pong` is off.
pub struct RawClient {
    pub stream: TcpStream,
    pub info: serde_json::Value,
    pub auto_pong: bool,
    raw: Vec<u8>,
    ops: Vec<u8>,
    closed: bool,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

impl RawClient {
    /// Connects and reads the INFO line.
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
        stream.set_nodelay(true).ok();
        let mut c = RawClient {
            stream,
            info: serde_json::Value::Null,
            auto_pong: true,
            raw: Vec::new(),
            ops: Vec::new(),
            closed: false,
        };
        let line = c.read_line();
        let json = line
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("first line is not INFO: {line:?}"));
        c.info = serde_json::from_str(json.trim_end())
            .unwrap_or_else(|e| panic!("INFO json does not parse ({e}): {json:?}"));
        c
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send to server failed");
    }

    /// Like send, but returns the error instead of panicking (for writes to
    /// a connection the server may already have closed).
    pub fn try_send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data)
    }

    /// Move complete operations from `raw` into `ops`, answering PINGs.
    fn split_ops(&mut self) {
        loop {
            let Some(nl) = self.raw.iter().position(|&b| b == b'\n') else {
                return;
            };
            let line = &self.raw[..=nl];
            let upper = line.to_ascii_uppercase();
            let mut total = nl + 1;
            if upper.starts_with(b"MSG ") || upper.starts_with(b"HMSG ") {
                let s = lossy(line);
                let size: usize = s
                    .split_whitespace()
                    .last()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                total += size + 2;
                if self.raw.len() < total {
                    return;
                }
            } else if self.auto_pong && line == b"PING\r\n" {
                self.raw.drain(..total);
                let _ = self.stream.write_all(b"PONG\r\n");
                continue;
            }
            let op: Vec<u8> = self.raw.drain(..total).collect();
            self.ops.extend_from_slice(&op);
        }
    }

    /// Read more bytes, waiting at most until `deadline`. Returns false on
    /// timeout; sets `closed` on EOF / reset.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(wait)).ok();
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.closed = true;
                // flush whatever partial op is left so it can be reported
                let rest: Vec<u8> = self.raw.drain(..).collect();
                self.split_ops();
                self.ops.extend_from_slice(&rest);
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                self.split_ops();
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.closed = true;
                let rest: Vec<u8> = self.raw.drain(..).collect();
                self.ops.extend_from_slice(&rest);
                false
            }
        }
    }

    /// Reads until exactly `expected` has arrived (as the next bytes).
    pub fn expect(&mut self, expected: &[u8]) {
        let deadline = Instant::now() + TIMEOUT;
        while self.ops.len() < expected.len() {
            if !self.fill(deadline) && (self.closed || Instant::now() >= deadline) {
                break;
            }
        }
        let n = expected.len().min(self.ops.len());
        if &self.ops[..n] != expected || n < expected.len() {
            panic!(
                "expected {:?}\n     got {:?}{}",
                lossy(expected),
                lossy(&self.ops),
                if self.closed {
                    " (connection closed)"
                } else {
                    " (timeout)"
                }
            );
        }
        self.ops.drain(..n);
    }

    /// Next line, with the trailing "\r\n" stripped off.
    pub fn read_line(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(nl) = self.ops.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.ops.drain(..=nl).collect();
                return lossy(&line).trim_end_matches(['\r', '\n']).to_string();
            }
            if !self.fill(deadline) && (self.closed || Instant::now() >= deadline) {
                panic!(
                    "read_line: no complete line; got {:?}{}",
                    lossy(&self.ops),
                    if self.closed {
                        " (closed)"
                    } else {
                        " (timeout)"
                    }
                );
            }
        }
    }

    /// Reads the next MSG/HMSG (panics on anything else or on timeout).
    pub fn read_msg(&mut self) -> Msg {
        self.read_msg_timeout(TIMEOUT)
    }

    pub fn read_msg_timeout(&mut self, timeout: Duration) -> Msg {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(nl) = self.ops.iter().position(|&b| b == b'\n') {
                let line = lossy(&self.ops[..nl]).trim_end_matches('\r').to_string();
                let toks: Vec<&str> = line.split_whitespace().collect();
                let verb = toks
                    .first()
                    .map(|t| t.to_ascii_uppercase())
                    .unwrap_or_default();
                let (hdr, total, reply) = match (verb.as_str(), toks.len()) {
                    ("MSG", 4) => (None, toks[3], None),
                    ("MSG", 5) => (None, toks[4], Some(toks[3])),
                    ("HMSG", 5) => (Some(toks[3]), toks[4], None),
                    ("HMSG", 6) => (Some(toks[4]), toks[5], Some(toks[3])),
                    _ => panic!("expected MSG/HMSG, got {:?}", lossy(&self.ops)),
                };
                let total: usize = total.parse().expect("msg size");
                let hdr: Option<usize> = hdr.map(|h| h.parse().expect("hdr size"));
                // split_ops guarantees the whole op is present
                assert!(
                    self.ops.len() >= nl + 1 + total + 2,
                    "incomplete msg in ops"
                );
                let body = &self.ops[nl + 1..nl + 1 + total];
                assert_eq!(
                    &self.ops[nl + 1 + total..nl + 3 + total],
                    b"\r\n",
                    "msg not CRLF terminated"
                );
                let hsz = hdr.unwrap_or(0);
                let msg = Msg {
                    subject: toks[1].to_string(),
                    sid: toks[2].to_string(),
                    reply: reply.map(|r| r.to_string()),
                    headers: hdr.map(|h| body[..h].to_vec()),
                    payload: body[hsz..].to_vec(),
                };
                self.ops.drain(..nl + 3 + total);
                return msg;
            }
            if !self.fill(deadline) && (self.closed || Instant::now() >= deadline) {
                panic!(
                    "read_msg: no message; got {:?}{}",
                    lossy(&self.ops),
                    if self.closed {
                        " (closed)"
                    } else {
                        " (timeout)"
                    }
                );
            }
        }
    }

    /// Waits until the server closes the connection; returns everything
    /// received (unconsumed) before the close.
    pub fn expect_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while !self.closed {
            if !self.fill(deadline) && !self.closed && Instant::now() >= deadline {
                panic!(
                    "expected the server to close the connection; still open, got {:?}",
                    lossy(&self.ops)
                );
            }
        }
        std::mem::take(&mut self.ops)
    }

    /// Expect exactly `expected` followed by a close.
    pub fn expect_then_closed(&mut self, expected: &[u8]) {
        let got = self.expect_closed();
        assert_eq!(lossy(&got), lossy(expected), "bytes before close");
    }

    /// Nothing (other than auto-answered server PINGs) arrives for `d`, and
    /// the connection stays open.
    pub fn expect_nothing(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline && !self.closed {
            self.fill(deadline);
            assert!(
                self.ops.is_empty(),
                "expected nothing, got {:?}",
                lossy(&self.ops)
            );
        }
        assert!(!self.closed, "connection was closed by the server");
        assert!(
            self.ops.is_empty(),
            "expected nothing, got {:?}",
            lossy(&self.ops)
        );
    }

    /// PING and wait for PONG (nothing else may arrive in between).
    pub fn ping_pong(&mut self) {
        self.send(b"PING\r\n");
        self.expect(b"PONG\r\n");
    }

    /// Sends PING and collects every MSG/HMSG that arrives before the PONG.
    pub fn msgs_until_pong(&mut self) -> Vec<Msg> {
        self.send(b"PING\r\n");
        let deadline = Instant::now() + TIMEOUT;
        let mut out = Vec::new();
        loop {
            if self.ops.starts_with(b"PONG\r\n") {
                self.ops.drain(..6);
                return out;
            }
            if self.ops.contains(&b'\n') {
                out.push(self.read_msg());
                continue;
            }
            if !self.fill(deadline) && (self.closed || Instant::now() >= deadline) {
                panic!(
                    "msgs_until_pong: no PONG; got {} msgs then {:?}{}",
                    out.len(),
                    lossy(&self.ops),
                    if self.closed {
                        " (closed)"
                    } else {
                        " (timeout)"
                    }
                );
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// A config file in a fresh temporary directory, removed on drop.
pub struct ConfFile {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl ConfFile {
    pub fn new(tag: &str, name: &str, text: &str) -> ConfFile {
        let dir = std::env::temp_dir().join(format!("tern-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        ConfFile { dir, path }
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Replaces the file's contents (for reload tests).
    pub fn rewrite(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

impl Drop for ConfFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// files in a temporary directory.
pub struct Pki {
    pub dir: ConfFile,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn pki(tag: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = ConfFile::new(tag, "unused.conf", "");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, client: bool| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        if client {
            // What verify_and_map can map: an e-mail address and the subject.
            params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
                "alice@acme.io".try_into().unwrap(),
            ));
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CountryName, "US");
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Acme");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "alice");
        }
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], false);
    let (client_pem, client_key) = leaf(vec!["client.example".into()], true);
    let write = |name: &str, text: &str| {
        let p = dir.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        cert: write("server.pem", &server_pem),
        key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client-key.pem", &client_key),
        dir,
    }
}
