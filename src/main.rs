//! The `tern` binary: a drop-in for `nats-server` on the command line.
//!
//! It parses flags and the config file, runs the startup preflight, binds the client and
//! monitoring listeners, writes the pid and ports files, and runs the shards until SIGINT or
//! SIGTERM. A signal thread handles the rest of nats-server's signals: SIGHUP reloads the
//! config (all or nothing), SIGUSR1 reopens the log file, SIGUSR2 enters lame duck mode.
//! `--signal <cmd>[=<pid>]` sends those signals to a running server.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern::log::LogHandle;
use tern::monitor::Monitor;
use tern::opts::{self, Command, Options};
use tern::server::{self, Admin, Global};
use tern_shards::{AcceptMode, Inbox, PoolConfig, StopSignal};

fn main() -> ExitCode {
    let opts = match opts::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(o)) => *o,
        Ok(Command::Help) => {
            print!("{}", opts::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!(
                "tern: v{} (nats-server {})",
                tern::TERN_VERSION,
                tern::VERSION
            );
            return ExitCode::SUCCESS;
        }
        Ok(Command::Signal { cmd, pid, pid_file }) => {
            return match send_signal(&cmd, pid.as_deref(), pid_file.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tern: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Err(e) => {
            eprintln!("tern: {e}");
            // Usage helps with a mistyped flag, not with a config file error.
            if !matches!(
                e,
                opts::OptsError::Config { .. } | opts::OptsError::Io { .. }
            ) {
                eprintln!("{}", opts::usage());
            }
            return ExitCode::from(1);
        }
    };
    if opts.check_config {
        match &opts.config_file {
            Some(f) => println!("tern: configuration file {} is valid", f.display()),
            None => println!("tern: configuration is valid"),
        }
        return ExitCode::SUCCESS;
    }
    let log = match tern::log::init(
        opts.debug,
        opts.trace,
        opts.logtime,
        opts.log_file.as_deref(),
    ) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tern: cannot open log file: {e}");
            return ExitCode::from(1);
        }
    };
    match run(opts, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tern: {e}");
            ExitCode::from(1)
        }
    }
}

/// A random server id shaped like nats-server's: 56 base32 characters starting with `N`.
fn server_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    std::iter::once('N')
        .chain((0..55).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char))
        .collect()
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve listen address {host:?}"))
}

fn run(opts: Options, log: LogHandle) -> Result<(), String> {
    // Registered first, so that a signal sent as soon as the pid file or the listener exists
    // is handled rather than killing the process with the default action.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2])
        .map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = opts.shards.unwrap_or(cores).max(1);
    let limits = tern_shards::preflight().map_err(|e| e.to_string())?;

    let id = server_id();
    tracing::info!(
        "Starting tern version {} (NATS protocol of nats-server {})",
        tern::TERN_VERSION,
        tern::VERSION
    );
    tracing::info!("  Name:     {}", opts.server_name.as_deref().unwrap_or(&id));
    tracing::info!("  ID:       {id}");
    tracing::info!("  Shards:   {shards} on {cores} cores");
    if let Some(f) = &opts.config_file {
        tracing::info!("Using configuration file: {}", f.display());
    }
    if let Ok(Some(auth)) = tern::auth::Auth::new(
        &opts.auth,
        &tern::accounts::Accounts::new(&opts.accounts).unwrap_or_default(),
    ) {
        if auth.has_plaintext() {
            tracing::warn!("Plaintext passwords detected, use nkeys or bcrypt");
        }
    }

    let addr = resolve(&opts.host, opts.port)?;
    let listener = tern_shards::bind_listener(addr, opts.reuseport)
        .map_err(|e| format!("Error listening on port: {addr}, \"{e}\""))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(pid_file) = &opts.pid_file {
        std::fs::write(pid_file, std::process::id().to_string())
            .map_err(|e| format!("Could not write pidfile: {e}"))?;
    }
    let ports_file = match &opts.ports_file_dir {
        Some(dir) => Some(write_ports_file(dir, &opts.host, local.port())?),
        None => None,
    };

    tracing::info!(
        "Listening for client connections on {}",
        SocketAddr::new(addr.ip(), local.port())
    );

    let cfg = PoolConfig {
        shards,
        pin: shards <= cores,
        spin_before_park: Some(opts.spin_before_park).filter(|d| !d.is_zero()),
        io_memory: limits.io_memory_per_shard(shards),
        // Each queued batch can pin a 64 KiB read buffer until its receiver gives it back and
        // its sender takes it back: 128 of them bound that to 8 MiB per pair of shards (and
        // as much in the return queue) while keeping plenty in flight.
        mesh_capacity: 128,
        accept: if opts.reuseport {
            AcceptMode::ReusePort
        } else {
            AcceptMode::RoundRobin
        },
    };
    let http = match opts.http_port {
        Some(port) => {
            let host = opts.http_host.as_deref().unwrap_or(&opts.host);
            Some(resolve(host, port)?)
        }
        None => None,
    };
    // The cluster port, served by shard 0.
    let route_listener = match &opts.cluster {
        Some(c) => {
            let host = c.host.as_deref().unwrap_or(&opts.host);
            let addr = resolve(host, c.port)?;
            let l = tern_shards::bind_listener(addr, false)
                .map_err(|e| format!("can't listen to the route port: {e}"))?;
            let bound = l.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(
                "Cluster name is {}",
                c.name.as_deref().unwrap_or("(dynamic)")
            );
            tracing::info!("Listening for route connections on {bound}");
            Some(l)
        }
        None => None,
    };
    let global = Arc::new(Global::new(opts, id, local.port()));
    if let Ok(mut slot) = global.route_listener.lock() {
        *slot = route_listener;
    }
    let inbox = Arc::new(Inbox::<Admin>::new(shards).map_err(|e| e.to_string())?);
    let monitor = Arc::new(Monitor::new(global.clone(), inbox.clone()));
    {
        // System account requests are answered from the monitoring figures.
        let weak = Arc::downgrade(&monitor);
        let api: tern::server::SysApi = Arc::new(move |kind: &str, query: &str| {
            weak.upgrade()
                .map_or(serde_json::Value::Null, |m| m.sys_request(kind, query))
        });
        let _ = global.sys_api.set(api);
    }
    if let Some(addr) = http {
        let bound = tern::monitor::start(monitor.clone(), addr)
            .map_err(|e| format!("can't listen to the monitor port: {e}"))?;
        tracing::info!("Starting http monitor on {bound}");
    }
    // A plain thread handles the signals and wakes the shards through their stop signal or
    // inbox, so an idle shard never wakes on a timer to look for them.
    let stop = Arc::new(StopSignal::new(shards).map_err(|e| e.to_string())?);
    let control = Arc::new(Control {
        global: global.clone(),
        inbox: inbox.clone(),
        monitor,
        stop: stop.clone(),
        log,
        current: Mutex::new(Arc::new(global.opts.clone())),
    });
    control.spawn_signal_thread(signals)?;
    tracing::info!("Server is ready");
    let g = global.clone();
    let result = tern_shards::run(cfg, listener, stop, move |ctx| {
        let inbox = inbox.receiver(ctx.id());
        server::shard_main(ctx, g.clone(), inbox)
    });
    if global.shutdown.load(Ordering::Relaxed) {
        tracing::info!("Server Exiting..");
    }
    if let Some(f) = ports_file {
        let _ = std::fs::remove_file(f);
    }
    result.map_err(|e| e.to_string())
}

/// What the signal thread needs to reload, reopen, enter lame duck mode and stop.
struct Control {
    global: Arc<Global>,
    inbox: Arc<Inbox<Admin>>,
    monitor: Arc<Monitor>,
    stop: Arc<StopSignal>,
    log: LogHandle,
    /// The options in force (the startup ones until a reload succeeds).
    current: Mutex<Arc<Options>>,
}

impl Control {
    fn spawn_signal_thread(
        self: &Arc<Self>,
        mut signals: signal_hook::iterator::Signals,
    ) -> Result<(), String> {
        use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1, SIGUSR2};
        let me = self.clone();
        std::thread::Builder::new()
            .name("tern-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    match sig {
                        SIGHUP => me.reload(),
                        SIGUSR1 => match me.log.reopen() {
                            Ok(()) => tracing::info!("Reopened log file"),
                            Err(e) => tracing::error!("Failed to reopen log file: {e}"),
                        },
                        SIGUSR2 => me.clone().lame_duck(),
                        // nats-server ignores SIGTERM in lame duck mode, so it can finish.
                        SIGTERM if me.global.lame_duck.load(Ordering::Relaxed) => {
                            tracing::info!("Lame duck mode in progress, ignoring SIGTERM");
                        }
                        _ => {
                            me.shut_down();
                            return;
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn shut_down(&self) {
        self.global.shutdown.store(true, Ordering::Relaxed);
        self.stop.trigger();
    }

    /// SIGHUP: re-read the config file with the same flags on top; apply it only if every
    /// changed option may change at run time (nats-server's rule), else log why and keep
    /// everything as it is.
    fn reload(&self) {
        let old = lock(&self.current).clone();
        let new = match opts::parse_args(old.args.clone()) {
            Ok(Command::Run(o)) => Arc::new(*o),
            Ok(_) => return,
            Err(e) => {
                tracing::error!("Failed to reload server configuration: {e}");
                return;
            }
        };
        if let Err(e) = opts::check_reload(&old, &new) {
            tracing::error!("Failed to reload server configuration: {e}");
            return;
        }
        if let Err(e) = self
            .log
            .apply(new.debug, new.trace, new.logtime, new.log_file.as_deref())
        {
            tracing::error!("Failed to reload server configuration: cannot open log file: {e}");
            return;
        }
        if new.pid_file != old.pid_file {
            if let Some(f) = &new.pid_file {
                if let Err(e) = std::fs::write(f, std::process::id().to_string()) {
                    tracing::error!("Could not write pidfile: {e}");
                }
            }
        }
        for shard in 0..self.inbox.shards() {
            self.inbox.send(shard, Admin::Reload(new.clone()));
        }
        self.monitor.reloaded(new.clone());
        *lock(&self.current) = new;
        tracing::info!("Reloaded server configuration");
    }

    /// SIGUSR2: lame duck mode (nats-server's `lameDuckMode`). The shards stop accepting and
    /// tell their clients; after the grace period the clients are closed one at a time over
    /// the rest of `lame_duck_duration` (at most one a second); then the server shuts down.
    fn lame_duck(self: Arc<Self>) {
        if self.global.lame_duck.swap(true, Ordering::Relaxed) {
            return;
        }
        let o = lock(&self.current).clone();
        let duration = o.lame_duck_duration;
        let grace = o.lame_duck_grace_period.min(duration);
        let connected = self.global.connections.load(Ordering::Relaxed);
        let clients = connected.max(1) as u32;
        let interval = ((duration - grace) / clients).min(Duration::from_secs(1));
        tracing::info!("Entering lame duck mode, stop accepting new clients");
        let shards = self.inbox.shards() as u32;
        for shard in 0..self.inbox.shards() {
            self.inbox.send(
                shard,
                Admin::LameDuck {
                    grace,
                    every: interval * shards,
                },
            );
        }
        let _ = std::thread::Builder::new()
            .name("tern-lame-duck".into())
            .spawn(move || {
                let deadline = Instant::now() + duration + Duration::from_secs(5);
                // With nobody to warn, there is nothing to wait for.
                if connected > 0 {
                    std::thread::sleep(grace);
                }
                while self.global.connections.load(Ordering::Relaxed) > 0
                    && Instant::now() < deadline
                    && !self.global.shutdown.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.shut_down();
            });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `--signal <cmd>[=<pid or pid file>]`: finds the server (the pid or pid file given, the
/// `-P` pid file, or the one process named `tern`) and sends it the signal nats-server uses
/// for `cmd`.
fn send_signal(cmd: &str, pid: Option<&str>, pid_file: Option<&Path>) -> Result<(), String> {
    let sig = match cmd {
        "stop" => libc::SIGKILL,
        "quit" => libc::SIGINT,
        "term" => libc::SIGTERM,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        "ldm" => libc::SIGUSR2,
        _ => return Err(format!("unknown signal {cmd:?}")),
    };
    // `=<pid>` may also name a pid file, as in nats-server.
    let pid_file = match pid {
        Some(p) if p.trim().parse::<i32>().is_err() => Some(Path::new(p)),
        _ => pid_file,
    };
    let pid: i32 = match (pid.filter(|_| pid_file.is_none()), pid_file) {
        (Some(p), _) => p.trim().parse().map_err(|_| format!("invalid pid: {p}"))?,
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("could not read pid file {}: {e}", f.display()))?;
            text.trim()
                .parse()
                .map_err(|_| format!("invalid pid in {}: {}", f.display(), text.trim()))?
        }
        (None, None) => {
            let me = std::process::id() as i32;
            let found: Vec<i32> = std::fs::read_dir("/proc")
                .map_err(|e| e.to_string())?
                .filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| p != me)
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "tern")
                })
                .collect();
            match found[..] {
                [p] => p,
                [] => return Err("no tern process running".to_string()),
                _ => {
                    let list: Vec<String> = found.iter().map(i32::to_string).collect();
                    return Err(format!(
                        "multiple tern processes running:\n{}",
                        list.join("\n")
                    ));
                }
            }
        }
    };
    // SAFETY: kill has no memory preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(format!(
            "failed to signal process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Writes `<executable>_<pid>.ports` the way nats-server does, for harnesses that look for it.
fn write_ports_file(
    dir: &std::path::Path,
    host: &str,
    port: u16,
) -> Result<std::path::PathBuf, String> {
    let exe = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tern".into());
    let shown = if host == "0.0.0.0" || host == "::" {
        "127.0.0.1"
    } else {
        host
    };
    let json = serde_json::json!({ "nats": [format!("nats://{shown}:{port}")] });
    let path = dir.join(format!("{exe}_{}.ports", std::process::id()));
    std::fs::write(&path, json.to_string())
        .map_err(|e| format!("Error writing ports file ({}): {e}", path.display()))?;
    Ok(path)
}
