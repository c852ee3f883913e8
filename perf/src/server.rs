//! Server processes under test: starting Tern or nats-server on 127.0.0.1 with a random port
//! (optionally under `taskset` and with `GOMAXPROCS`), learning the port from the
//! "Listening for client connections on HOST:PORT" log line, stopping them, attaching
//! `strace -c` to count syscalls, and the certificate servers that require TLS are started
//! with. Owns child processes only; knows nothing of scenarios.

use crate::error::{Error, IoContext, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Which server a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Which {
    /// nats-server (the baseline, "A").
    Nats,
    /// Tern ("B").
    Tern,
}

impl Which {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Which::Nats => "nats-server",
            Which::Tern => "tern",
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Which server.
    pub which: Which,
    /// Path to its binary.
    pub bin: String,
    /// `taskset -c` core list, if pinned.
    pub cores: Option<String>,
    /// Tern `--shards` / nats-server `GOMAXPROCS`.
    pub threads: usize,
    /// Whether the server is a member of a cluster, and how it finds the others.
    pub cluster: Cluster,
    /// More arguments, after the ones `start` gives.
    pub extra: Vec<String>,
}

/// Cluster membership of a launched server (the routed scenarios). Every member listens for
/// routes on a random port of 127.0.0.1, in the cluster named `bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    /// A standalone server.
    None,
    /// The first member, which the others dial.
    Seed,
    /// A member that dials the seed's route address (`host:port`).
    Join(String),
}

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `127.0.0.1:PORT` of the route listener, for a cluster member.
    pub route_addr: Option<String>,
    /// Log lines seen so far (stderr), kept for error reports.
    log: mpsc::Receiver<String>,
}

/// Extracts `HOST:PORT` from a "Listening for `what` connections on HOST:PORT" log line
/// (an unspecified host becomes 127.0.0.1).
pub fn parse_listen(line: &str, what: &str) -> Option<String> {
    let rest = line
        .split(&format!("Listening for {what} connections on "))
        .nth(1)?;
    let addr = rest.split_whitespace().next()?;
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "0.0.0.0" || host == "::" || host.is_empty() {
        "127.0.0.1"
    } else {
        host
    };
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

impl Server {
    /// Starts the server and waits (up to 10 s) for its listen line.
    pub fn start(l: &Launch) -> Result<Server> {
        let mut cmd = match &l.cores {
            Some(cores) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cores]).arg(&l.bin);
                c
            }
            None => Command::new(&l.bin),
        };
        cmd.args(["-a", "127.0.0.1", "-p", "-1"]);
        if l.cluster != Cluster::None {
            cmd.args([
                "--cluster",
                "nats://127.0.0.1:-1",
                "--cluster_name",
                "bench",
            ]);
        }
        if let Cluster::Join(seed) = &l.cluster {
            cmd.args(["--routes", &format!("nats://{seed}")]);
        }
        cmd.args(&l.extra);
        match l.which {
            Which::Tern => {
                cmd.args(["--shards", &l.threads.to_string()]);
            }
            Which::Nats => {
                cmd.env("GOMAXPROCS", l.threads.to_string());
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Spawn(format!("{} ({}): {e}", l.bin, l.which.name())))?;
        let pid = child.id();
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::Spawn("no stderr pipe".into()))?;
        let (tx, rx) = mpsc::channel();
        // Drain stderr for the server's whole life so it never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Receiver gone: keep draining silently.
                    continue;
                }
            }
        });
        let mut seen = Vec::new();
        let (mut addr, mut route_addr) = (None, None);
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    addr = addr.or_else(|| parse_listen(&line, "client"));
                    route_addr = route_addr.or_else(|| parse_listen(&line, "route"));
                    if let Some(a) = &addr {
                        if l.cluster == Cluster::None || route_addr.is_some() {
                            return Ok(Server {
                                child,
                                pid,
                                addr: a.clone(),
                                route_addr,
                                log: rx,
                            });
                        }
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Spawn(format!(
                        "{} printed no listen line; its log:\n{}",
                        l.which.name(),
                        seen.join("\n")
                    )));
                }
            }
        }
    }

    /// Log lines printed since the last call (warnings such as slow consumers).
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.exited() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..300 {
            if self.exited() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A self-signed certificate for `localhost` (ECDSA P-256, rcgen's default) and its key,
/// in PEM files of a directory of their own, for servers that require TLS of their
/// clients (`compare --tls`). The directory goes when this does.
pub struct TlsFiles {
    dir: std::path::PathBuf,
}

impl TlsFiles {
    /// Makes the certificate and writes both files.
    pub fn create() -> Result<TlsFiles> {
        let dir = std::env::temp_dir().join(format!("tern-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let files = TlsFiles { dir };
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| Error::Config(format!("certificate: {e}")))?;
        for (path, pem) in [
            (files.cert(), ck.cert.pem()),
            (files.key(), ck.key_pair.serialize_pem()),
        ] {
            std::fs::write(&path, pem).ctx(|| format!("write {}", path.display()))?;
        }
        Ok(files)
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.join("key.pem")
    }

    /// The arguments that make a server require TLS with this certificate: the same flags
    /// for Tern and nats-server.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--tlscert".into(),
            self.cert().display().to_string(),
            "--tlskey".into(),
            self.key().display().to_string(),
        ]
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `strace -c -f` attached to a server for one measured run.
pub struct Strace {
    child: Child,
    out: std::path::PathBuf,
}

/// Whether strace can be run at all.
pub fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Strace {
    /// Attaches to every thread of `pid`; returns once strace says it has attached.
    pub fn attach(pid: u32) -> Result<Strace> {
        let out = std::env::temp_dir().join(format!("tern-bench-strace-{pid}.txt"));
        let mut child = Command::new("strace")
            .args(["-c", "-f", "-o"])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| "start strace".into())?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::Spawn("no strace stderr".into()))?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(l) if l.contains("attached") => {}
            Ok(l) => {
                let _ = child.kill();
                return Err(Error::Spawn(format!("strace: {l}")));
            }
            Err(_) => {
                let _ = child.kill();
                return Err(Error::Timeout("strace did not attach".into()));
            }
        }
        // Let it finish attaching to the other threads.
        thread::sleep(Duration::from_millis(200));
        Ok(Strace { child, out })
    }

    /// Detaches and returns the total syscall count.
    pub fn finish(mut self) -> Result<u64> {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).ctx(|| "read strace output".into())?;
        let _ = std::fs::remove_file(&self.out);
        parse_strace_total(&text)
            .ok_or_else(|| Error::Protocol(format!("no total line in strace output:\n{text}")))
    }
}

/// The call count from the `total` line of `strace -c` output.
pub fn parse_strace_total(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    // % time, seconds, usecs/call, calls, [errors], "total"
    f.get(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_lines() {
        let tern = "[775] 2026/11/22 04:43:28.944723 [INF] Listening for client connections on 127.0.0.1:45913";
        assert_eq!(
            parse_listen(tern, "client").as_deref(),
            Some("127.0.0.1:45913")
        );
        let nats = "[784] 2026/11/22 04:43:30.976792 [INF] Listening for client connections on 0.0.0.0:4222";
        assert_eq!(
            parse_listen(nats, "client").as_deref(),
            Some("127.0.0.1:4222")
        );
        let v6 = "[1] [INF] Listening for client connections on [::1]:5000";
        assert_eq!(parse_listen(v6, "client").as_deref(), Some("[::1]:5000"));
        assert_eq!(parse_listen("[INF] Server is ready", "client"), None);
        let route = "[1] [INF] Listening for route connections on 0.0.0.0:6222";
        assert_eq!(
            parse_listen(route, "route").as_deref(),
            Some("127.0.0.1:6222")
        );
        assert_eq!(parse_listen(route, "client"), None);
        assert_eq!(
            parse_listen("Listening for client connections on 127.0.0.1:x", "client"),
            None
        );
    }

    #[test]
    fn strace_total() {
        let out = "% time     seconds  usecs/call     calls    errors syscall\n\
                   ------ ----------- ----------- --------- --------- ----------------\n\
                    60.00    0.006000           5      1200        10 read\n\
                    40.00    0.004000           4      1000           write\n\
                   ------ ----------- ----------- --------- --------- ----------------\n\
                   100.00    0.010000           4      2200        10 total\n";
        assert_eq!(parse_strace_total(out), Some(2200));
    }
}
