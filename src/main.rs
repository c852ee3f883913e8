//! The `tern` binary: a drop-in for `nats-server` on the command line.
//!
//! It parses flags and the config file, runs the startup preflight, binds the client
//! listener, writes the pid and ports files, installs the signal handlers, and runs the
//! shards until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tern::opts::{self, Command, Options};
use tern::server::{self, Global};
use tern_shards::{AcceptMode, PoolConfig};

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
        Err(e) => {
            eprintln!("tern: {e}");
            eprintln!("{}", opts::usage());
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
    if let Err(e) = tern::log::init(
        opts.debug,
        opts.trace,
        opts.logtime,
        opts.log_file.as_deref(),
    ) {
        eprintln!("tern: cannot open log file: {e}");
        return ExitCode::from(1);
    }
    match run(opts) {
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

fn run(opts: Options) -> Result<(), String> {
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
        // Each queued batch can pin a 64 KiB read buffer: 128 of them bound that to 8 MiB per
        // pair of shards while keeping plenty in flight.
        mesh_capacity: 128,
        accept: if opts.reuseport {
            AcceptMode::ReusePort
        } else {
            AcceptMode::RoundRobin
        },
    };
    let global = Arc::new(Global::new(opts, id, local.port()));
    // A plain thread waits for SIGINT/SIGTERM and wakes every shard through the stop signal,
    // so an idle shard never wakes on a timer to look for it.
    let stop = Arc::new(tern_shards::StopSignal::new(shards).map_err(|e| e.to_string())?);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| e.to_string())?;
    {
        let (stop, global) = (stop.clone(), global.clone());
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                global.shutdown.store(true, Ordering::Relaxed);
                stop.trigger();
            }
        });
    }
    tracing::info!("Server is ready");
    let g = global.clone();
    let result = tern_shards::run(cfg, listener, stop, move |ctx| {
        server::shard_main(ctx, g.clone())
    });
    if global.shutdown.load(Ordering::Relaxed) {
        tracing::info!("Server Exiting..");
    }
    if let Some(f) = ports_file {
        let _ = std::fs::remove_file(f);
    }
    result.map_err(|e| e.to_string())
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
