//! `tern-bench`: load generator and side-by-side comparison harness for Tern and nats-server.
//!
//! It speaks only the NATS wire protocol, so it measures nats-server exactly as it measures
//! Tern. Layout:
//! - `error`: the one error enum.
//! - `proto`: sans-IO client side of the protocol (MSG parser, PUB/SUB/CONNECT builders).
//! - `conn`: blocking connections, handshake, PING/PONG, shard placement by connect order.
//! - `stats`: clock, HDR latency histograms, generator CPU, `/proc` readings of a server.
//! - `scenario`: the scenarios, their threads and flow control, and the per-run report.
//! - `server`: starting/stopping server processes, the listen-line parser, strace.
//! - `compare`: alternating rounds against both servers, medians, the Markdown report.
//! - `svg`: the percentile plot.
//!
//! This file owns only the command line.

mod compare;
mod conn;
mod error;
mod proto;
mod scenario;
mod server;
mod stats;
mod svg;

use clap::{Args, Parser, Subcommand};
use error::{Error, IoContext, Result};
use scenario::{Kind, Opts, Placement, Report};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tern-bench",
    version,
    about = "NATS load generator: one scenario against a running server, or Tern vs nats-server side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario against a running server.
    Run(RunArgs),
    /// Start nats-server and Tern, run scenarios in alternating rounds, write a report.
    Compare(CompareArgs),
    /// List the scenarios `compare` knows.
    List,
}

#[derive(Args, Clone)]
struct Common {
    /// Seconds to publish (per measurement).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Open-loop rate, msgs/s [run: 20000; compare: half of nats-server's pubsub128 rate].
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds to wait for outstanding deliveries before reporting them lost.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Undelivered bytes allowed per receiver before publishers wait (flow control).
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    window: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario.
    #[arg(value_enum)]
    scenario: Kind,
    /// Server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Upgrade connections to TLS after INFO (the server requires TLS; its certificate is not
    /// checked: benchmarks only).
    #[arg(long)]
    tls: bool,
    /// Messages to publish in total (instead of --duration).
    #[arg(long, conflicts_with = "duration")]
    msgs: Option<u64>,
    /// Payload size in bytes (at least 8 to carry a timestamp for latency).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Publishers (requesters for `requesters`).
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Subscribers (queue members, responders).
    #[arg(long, default_value_t = 1)]
    subs: usize,
    /// Pin the generator's threads to these cores (comma-separated, round robin).
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Where publishers and subscribers sit among the server's shards.
    #[arg(long, value_enum, default_value_t = Placement::Any)]
    placement: Placement,
    /// The server's shard count (for --placement).
    #[arg(long, default_value_t = 1)]
    shards: u64,
    /// Connections the server has already accepted since it started (for --placement).
    #[arg(long, default_value_t = 0)]
    conn_offset: u64,
    /// Server pid, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another server of the same cluster for subscribers and responders, so that every
    /// message crosses a route (publishers and requesters stay on --url).
    #[arg(long)]
    sub_url: Option<String>,
    /// The --sub-url server's pid, for its CPU time.
    #[arg(long, requires = "sub_url")]
    sub_server_pid: Option<u32>,
    /// Subscriptions to preload (subscale).
    #[arg(long, default_value_t = 100_000)]
    preload: usize,
    /// Idle connections holding the preloaded subscriptions (subscale).
    #[arg(long, default_value_t = 10)]
    idle_conns: usize,
    /// SUB+UNSUB pairs per second (churn).
    #[arg(long, default_value_t = 10_000)]
    churn_rate: u64,
    /// Connections to open (conns).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Publish on this many subjects in turn (`bench.0.<k>`, subscribed as `bench.0.*`)
    /// instead of one: past about a thousand, every message is a miss in the servers'
    /// match caches (pub/sub scenarios). Request/reply: this many reply subjects in turn
    /// (`_INBOX.bench.<i>.<k>` under `_INBOX.bench.<i>.*`), a new one per request as
    /// async-nats and nats.go make them.
    #[arg(long, default_value_t = 1)]
    subjects: usize,
    /// Write a percentile plot (latency scenarios) to this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct CompareArgs {
    /// Tern binary.
    #[arg(long, default_value = "target/release/tern")]
    tern: String,
    /// nats-server binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats: String,
    /// Repository the Tern commit is read from (default: the one holding --tern).
    #[arg(long)]
    tern_repo: Option<PathBuf>,
    /// Rounds per server per scenario.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Scenarios: catalog names, `default` or `all` (see `tern-bench list`).
    #[arg(long, default_value = "default")]
    scenarios: String,
    /// Placements to run: a (1 core each, pinned), b (2 shards, unpinned), or both.
    #[arg(long, default_value = "both", value_parser = ["a", "b", "both"])]
    placement: String,
    /// Count syscalls per message in one extra run per scenario under `strace -c -f`.
    #[arg(long)]
    strace: bool,
    /// Report directory.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Also write SVG percentile plots for latency scenarios.
    #[arg(long)]
    svg: bool,
    /// An extra argument for every Tern process (repeat it), e.g.
    /// `--tern-arg=--spin_before_park --tern-arg=0` to compare a setting.
    #[arg(long = "tern-arg", allow_hyphen_values = true, value_name = "ARG")]
    tern_args: Vec<String>,
    /// Start both servers requiring TLS (a self-signed certificate made for the run) and
    /// connect over TLS 1.3; the report is `<date>-<commit>-tls.md`. The polling scenarios
    /// are left out.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    common: Common,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Compare(a) => compare(a),
        Cmd::List => {
            for s in compare::CATALOG {
                println!(
                    "{:<16} {:<11} size {:>5}  pubs {:>2}  subs {:>2}{}{}",
                    s.name,
                    format!("{:?}", s.kind).to_lowercase(),
                    s.size,
                    s.pubs,
                    s.subs,
                    if s.count > 0 {
                        format!("  count {}", s.count)
                    } else {
                        String::new()
                    },
                    if s.default { "  (default)" } else { "" }
                );
            }
            Ok(())
        }
    };
    if let Err(e) = r {
        eprintln!("tern-bench: {e}");
        std::process::exit(1);
    }
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| Error::Config(format!("bad duration {s}")))
}

fn run(a: RunArgs) -> Result<()> {
    let c = &a.common;
    let o = Opts {
        msgs: a.msgs,
        duration: secs(c.duration.unwrap_or(5.0))?,
        size: a.size,
        pubs: a.pubs,
        subs: a.subs,
        rate: c.rate.unwrap_or(20_000),
        pin: a.pin.clone(),
        window: c.window,
        timeout: secs(c.timeout)?,
        placement: a.placement,
        progress: !c.json,
        preload: a.preload,
        idle_conns: a.idle_conns,
        churn_rate: a.churn_rate,
        conns: a.conns,
        subjects: a.subjects,
    };
    if matches!(
        a.scenario,
        Kind::Openloop | Kind::Openpoll | Kind::Reqreply | Kind::Reqpoll | Kind::Requesters
    ) && o.size < 8
    {
        return Err(Error::Config(
            "latency scenarios need --size 8 or more (the payload carries a timestamp)".into(),
        ));
    }
    let mut t = conn::Target::from_url(&a.url, a.shards, a.conn_offset, a.server_pid)?;
    if let Some(url) = &a.sub_url {
        t.peer = Some(Box::new(conn::Target::from_url(
            url,
            1,
            0,
            a.sub_server_pid,
        )?));
    }
    if a.tls {
        let tls = conn::insecure_tls();
        if let Some(p) = &mut t.peer {
            p.tls = Some(tls.clone());
        }
        t.tls = Some(tls);
    }
    let r = scenario::run(a.scenario, &o, &t)?;
    if let (Some(path), Some(l)) = (&a.svg, &r.latency) {
        let svg = svg::percentile_plot(
            &format!("{} {} B", r.scenario, r.size),
            &[(a.url.clone(), l.curve.clone())],
        );
        std::fs::write(path, svg).ctx(|| format!("write {}", path.display()))?;
    }
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::Config(e.to_string()))?
        );
    } else {
        print_report(&r);
    }
    if r.lost > 0 {
        return Err(Error::Protocol(format!(
            "{} of {} expected deliveries never arrived",
            r.lost, r.expected
        )));
    }
    Ok(())
}

fn print_report(r: &Report) {
    use stats::si;
    println!(
        "{} size={} pubs={} subs={}: sent {} received {} (expected {}, lost {}) in {:.2}s",
        r.scenario, r.size, r.pubs, r.subs, r.sent, r.received, r.expected, r.lost, r.elapsed_s
    );
    println!(
        "  in  {:>9} msgs/s {:>9.1} MB/s\n  out {:>9} msgs/s {:>9.1} MB/s",
        si(r.msgs_in_per_s),
        r.mb_in_per_s,
        si(r.msgs_out_per_s),
        r.mb_out_per_s
    );
    if let Some(l) = &r.latency {
        println!(
            "  latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.count
        );
    }
    println!(
        "  generator CPU {:.2}s ({:.0}% of one core)",
        r.gen_cpu_s, r.gen_cpu_pct
    );
    if let Some(c) = r.server_cpu_ns_per_msg {
        println!("  server CPU {c:.0} ns/msg");
    }
    if let Some(b) = r.server_peak_rss {
        println!("  server peak RSS {:.1} MiB", b as f64 / 1048576.0);
    }
    if let Some(s) = r.steal_ms.filter(|&s| s > 0.0) {
        println!("  VM steal {s:.0} ms (the host ran something else)");
    }
    for (k, v) in &r.extra {
        println!("  {k}: {}", si(*v));
    }
}

fn compare(a: CompareArgs) -> Result<()> {
    let c = &a.common;
    let opts = Opts {
        duration: secs(
            c.duration
                .unwrap_or(compare::DEFAULT_DURATION.as_secs_f64()),
        )?,
        window: c.window,
        timeout: secs(c.timeout)?,
        ..Opts::default()
    };
    let tern_repo = a.tern_repo.clone().unwrap_or_else(|| {
        PathBuf::from(&a.tern)
            .parent()
            .map_or(PathBuf::from("."), |p| p.to_path_buf())
    });
    for (name, bin) in [("--tern", &a.tern), ("--nats", &a.nats)] {
        if !std::path::Path::new(bin).exists() {
            return Err(Error::Config(format!("{name} {bin}: no such file")));
        }
    }
    let s = compare::Settings {
        tern: a.tern.clone(),
        nats: a.nats.clone(),
        tern_repo,
        rounds: a.rounds.max(1),
        scenarios: compare::pick(&a.scenarios)?,
        placements: match a.placement.as_str() {
            "a" => vec!['a'],
            "b" => vec!['b'],
            _ => vec!['a', 'b'],
        },
        opts,
        rate: c.rate,
        strace: a.strace,
        out: a.out.clone(),
        svg: a.svg,
        progress: !c.json,
        tern_args: a.tern_args.clone(),
        tls: a.tls,
    };
    let out = compare::compare(&s)?;
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| Error::Config(e.to_string()))?
        );
    } else {
        println!("{}", out.summary);
        println!("report: {}", out.report_path);
    }
    Ok(())
}
