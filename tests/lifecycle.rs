//! Signals and lifecycle, as nats-server behaves: SIGHUP reloads the config all or nothing,
//! SIGUSR2 is lame duck mode, SIGUSR1 reopens the log file, `--signal` sends them.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_applies_a_reloadable_change() {
    let conf = ConfFile::new("reload-ok", "r.conf", "max_payload: 1MB\n");
    let s = Server::start(&["-c", conf.arg()]);
    let mut old = s.raw_quiet();
    assert_eq!(s.raw().info["max_payload"], 1048576);
    assert!(!s
        .logs()
        .iter()
        .any(|l| l.contains("Client connection created")));
    conf.rewrite("max_payload: 2048\ndebug: true\n");
    s.signal("HUP");
    wait_until("the new max_payload in INFO", || {
        s.raw().info["max_payload"] == 2048
    });
    // Debug logging is on now. nats-server switches its logger only at the end of the reload,
    // after the new limits already show in INFO, so a connection made in between may not be
    // logged: connect once more after the reload has finished.
    assert!(s.wait_for_log("Reloaded server configuration", Duration::from_secs(10)));
    let _logged = s.raw_quiet();
    assert!(s.wait_for_log("Client connection created", Duration::from_secs(10)));
    // The limit applies to connections that were already open.
    let mut p = s.raw_quiet();
    p.send(format!("PUB big 4000\r\n{}\r\n", "x".repeat(4000)).as_bytes());
    p.expect_then_closed(b"-ERR 'Maximum Payload Violation'\r\n");
    old.send(b"PUB ok 2\r\nhi\r\nPING\r\n");
    old.auto_pong = true;
    let line = old.read_line();
    assert!(
        line.starts_with("INFO ") || line == "PONG",
        "an open connection keeps working after a reload: {line:?}"
    );
}

#[test]
fn sighup_refuses_a_change_that_needs_a_restart() {
    let conf = ConfFile::new("reload-bad", "r.conf", "max_payload: 1MB\n");
    let s = Server::start(&["-c", conf.arg()]);
    // A server name change cannot be reloaded: nothing of this file may be applied.
    conf.rewrite("server_name: other\nmax_payload: 2048\n");
    s.signal("HUP");
    assert!(
        s.log_contains("config reload not supported for ServerName: old=, new=other"),
        "the rejected reload is logged with its reason"
    );
    assert_eq!(s.raw().info["max_payload"], 1048576, "nothing applied");
    s.assert_healthy();
    // A file that does not parse is refused too.
    conf.rewrite("max_payload: {\n");
    s.signal("HUP");
    wait_until("a second reload error", || {
        s.logs().iter().filter(|l| l.contains("reload")).count() >= 2
    });
    s.assert_healthy();
}

#[test]
fn lame_duck_warns_clients_then_closes_them_and_exits() {
    let conf = ConfFile::new(
        "ldm",
        "ldm.conf",
        // 30 s is nats-server's minimum; with two clients each is closed within a second.
        "lame_duck_grace_period: \"3s\"\nlame_duck_duration: \"30s\"\n",
    );
    let mut s = Server::start(&["-c", conf.arg()]);
    // Async INFO goes to clients that announce protocol 1 (all current clients do).
    let connect = |s: &Server| {
        let mut c = s.raw();
        c.send(b"CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n");
        c.expect(b"PONG\r\n");
        c
    };
    let mut a = connect(&s);
    let mut b = connect(&s);
    // A protocol 0 client is closed like the others, without the INFO.
    let mut old = s.raw_quiet();
    s.signal("USR2");
    for c in [&mut a, &mut b] {
        // nats-server 2.10+ also sends an INFO right after CONNECT (`connect_info`): skip it.
        loop {
            let line = c.read_line();
            let info: serde_json::Value =
                serde_json::from_str(line.strip_prefix("INFO ").expect("an async INFO")).unwrap();
            if info["ldm"] == true {
                break;
            }
            assert_eq!(info["connect_info"], true, "an INFO without ldm: {line}");
        }
        // During the grace period the clients are still served.
        c.ping_pong();
    }
    // No new clients.
    wait_until("the listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", s.port)).is_err()
    });
    a.expect_closed();
    b.expect_closed();
    old.expect_closed();
    let st = s
        .wait_exit(Duration::from_secs(15))
        .expect("the server exits after lame duck");
    assert!(st.code().is_some(), "exited, not killed: {st:?}");
}

#[test]
fn sigusr1_reopens_the_log_file() {
    let dir = ConfFile::new("reopen", "unused.conf", "");
    let log = dir.dir.join("server.log");
    let moved = dir.dir.join("server.log.1");
    // The harness reads the port from the log, so the log file goes through `-c`, and the
    // port is discovered from the file itself.
    let conf = dir.dir.join("log.conf");
    std::fs::write(&conf, format!("log_file: \"{}\"\n", log.display())).unwrap();
    let mut child = std::process::Command::new(server_bin())
        .args(["-a", "127.0.0.1", "-p", "-1", "-c", conf.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_until("the log file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Server is ready"))
    });
    std::fs::rename(&log, &moved).unwrap();
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap();
    wait_until("a new log file", || log.exists());
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let _ = child.wait();
    let old = std::fs::read_to_string(&moved).unwrap();
    assert!(old.contains("Server is ready"), "{old}");
}

#[test]
fn signal_flag_reaches_the_server() {
    if !is_tern() {
        // nats-server finds its target by process name; this test is about Tern's.
        return;
    }
    let dir = ConfFile::new("sigflag", "unused.conf", "");
    let pid_file = dir.dir.join("tern.pid");
    let mut s = Server::start(&["-P", pid_file.to_str().unwrap()]);
    wait_until("the pid file", || pid_file.exists());
    let out = std::process::Command::new(server_bin())
        .args(["--signal", "reload", "-P", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(s.log_contains("Reloaded server configuration"));
    // `=<pid file>` works as well as `=<pid>`.
    let out = std::process::Command::new(server_bin())
        .args(["--signal", &format!("reopen={}", pid_file.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(server_bin())
        .args(["--signal", &format!("quit={}", s.pid())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = s
        .wait_exit(Duration::from_secs(10))
        .expect("quit stops the server");
    assert_eq!(st.code(), Some(0));
    let bad = std::process::Command::new(server_bin())
        .args(["--signal", "bogus=1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown signal"));
}
