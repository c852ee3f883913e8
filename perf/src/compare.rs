//! `tern-bench compare`: runs a scenario catalog against nats-server and Tern in alternating
//! rounds (a fresh server process per run), takes medians, and writes the Markdown report
//! (machine header, summary table with Tern ÷ nats-server ratios, raw per-round numbers).
//! Owns the catalog, the round schedule and the report format; measuring is `scenario`'s job
//! and process handling is `server`'s.

use crate::conn::Target;
use crate::error::{Error, IoContext, Result};
use crate::scenario::{self, Kind, Opts, Placement, Report};
use crate::server::{strace_available, Cluster, Launch, Server, Strace, TlsFiles, Which};
use crate::stats::{median, si};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// One entry of the scenario catalog.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Name used with `--scenarios`.
    pub name: &'static str,
    /// What runs.
    pub kind: Kind,
    /// Payload size.
    pub size: usize,
    /// Publishers / requesters.
    pub pubs: usize,
    /// Subscribers / responders.
    pub subs: usize,
    /// Preloaded subscriptions (subscale), connections (conns), or the subjects a pub/sub or
    /// queue run publishes on in turn and a request/reply run's reply subjects
    /// (`--subjects`; 0 = one).
    pub count: usize,
    /// In the default set.
    pub default: bool,
    /// Run on a two-server cluster: publishers on one server, subscribers on the other.
    pub routed: bool,
}

const fn spec(name: &'static str, kind: Kind, size: usize, pubs: usize, subs: usize) -> Spec {
    Spec {
        name,
        kind,
        size,
        pubs,
        subs,
        count: 0,
        default: true,
        routed: false,
    }
}

const fn routed(mut s: Spec) -> Spec {
    s.routed = true;
    s
}

const fn extra(mut s: Spec, count: usize) -> Spec {
    s.count = count;
    s.default = false;
    s
}

/// Every scenario `compare` knows.
pub const CATALOG: &[Spec] = &[
    spec("pub16", Kind::Pub, 16, 1, 0),
    // Two publisher connections: with two shards each has a shard of its own, so this row
    // shows what a second shard adds when the load can be spread (see `scaling_table`).
    spec("pub16x2", Kind::Pub, 16, 2, 0),
    spec("pubsub16", Kind::Pubsub, 16, 1, 1),
    spec("pubsub128", Kind::Pubsub, 128, 1, 1),
    spec("pubsub16k", Kind::Pubsub, 16384, 1, 1),
    // Two publisher→subscriber streams on subjects of their own: in b each has a shard
    // (same-shard) or crosses to the other one (cross-shard), as pub16x2 does for publishing.
    spec("pairs16x2", Kind::Pairs, 16, 2, 2),
    spec("pairs128x2", Kind::Pairs, 128, 2, 2),
    spec("fanout16x128", Kind::Fanout, 128, 1, 16),
    spec("fanpoll16x128", Kind::Fanpoll, 128, 1, 16),
    spec("reqreply", Kind::Reqreply, 128, 1, 1),
    spec("reqpoll", Kind::Reqpoll, 128, 1, 1),
    spec("openloop", Kind::Openloop, 128, 1, 1),
    spec("openpoll", Kind::Openpoll, 128, 1, 1),
    routed(spec("routed128", Kind::Pubsub, 128, 1, 1)),
    routed(spec("routedreq", Kind::Reqreply, 128, 1, 1)),
    // 1 KiB: where a TLS record layer's cost per message shows (see `--tls`).
    extra(spec("pubsub1k", Kind::Pubsub, 1024, 1, 1), 0),
    extra(spec("fanin4x128", Kind::Fanin, 128, 4, 1), 0),
    extra(spec("queue4x128", Kind::Queue, 128, 1, 4), 0),
    extra(spec("requesters8x4", Kind::Requesters, 128, 8, 4), 0),
    // The same from one polling generator thread: the twelve threads of `requesters8x4`
    // take turns on the generator's core, and their wake-ups pace both servers alike.
    extra(spec("reqpoll8x4", Kind::Reqpoll, 128, 8, 4), 0),
    extra(spec("subscale10k", Kind::Subscale, 128, 1, 1), 10_000),
    extra(spec("subscale100k", Kind::Subscale, 128, 1, 1), 100_000),
    extra(spec("subscale1m", Kind::Subscale, 128, 1, 1), 1_000_000),
    extra(spec("churn", Kind::Churn, 128, 1, 1), 0),
    // A subject per message from a thousand (each one in the servers' match caches) and
    // from 100k (none of them: a reply inbox per request, a device id per message).
    extra(spec("subjects1k", Kind::Pubsub, 128, 1, 1), 1000),
    extra(spec("subjects100k", Kind::Pubsub, 128, 1, 1), 100_000),
    // A reply subject per request, as async-nats and nats.go make them (never one again
    // within a run): what a client's request costs beyond `reqreply`'s one inbox.
    extra(spec("reqinbox", Kind::Reqreply, 128, 1, 1), 1_000_000_000),
    // A queue group of workers behind a subject per message (`svc.<id>`), none cached.
    extra(spec("queue4x100k", Kind::Queue, 128, 1, 4), 100_000),
    extra(spec("conns1k", Kind::Conns, 0, 0, 0), 1000),
    extra(spec("conns10k", Kind::Conns, 0, 0, 0), 10_000),
];

/// Settings of a comparison.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tern binary.
    pub tern: String,
    /// nats-server binary.
    pub nats: String,
    /// Repository the Tern commit is read from.
    pub tern_repo: PathBuf,
    /// Rounds per server per scenario.
    pub rounds: usize,
    /// Scenarios to run (catalog names).
    pub scenarios: Vec<Spec>,
    /// Placements: 'a' and/or 'b'.
    pub placements: Vec<char>,
    /// Base run options (duration, timeout...).
    pub opts: Opts,
    /// Open-loop rate; `None` means half of nats-server's median pubsub128 rate in the same
    /// placement, as the target asks (measured by a probe run when the comparison
    /// does not include pubsub128).
    pub rate: Option<u64>,
    /// Count syscalls in one extra run per scenario and server.
    pub strace: bool,
    /// Output directory.
    pub out: PathBuf,
    /// Write percentile plots beside the report.
    pub svg: bool,
    /// Progress bar on stderr.
    pub progress: bool,
    /// Extra arguments for every Tern process (a setting under test).
    pub tern_args: Vec<String>,
    /// Both servers require TLS of their clients (a self-signed certificate made for the
    /// run), and the generator connects over TLS 1.3.
    pub tls: bool,
}

/// A server under test as every run of it starts: binary and arguments, and the TLS
/// configuration the generator connects with when the server requires TLS.
#[derive(Clone)]
pub struct Subject {
    which: Which,
    bin: String,
    args: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Subject {
    /// A server started with no arguments beyond the placement's, clients in plain TCP.
    pub fn plain(which: Which, bin: &str) -> Subject {
        Subject {
            which,
            bin: bin.to_string(),
            args: Vec::new(),
            tls: None,
        }
    }

    /// The same server requiring TLS with the certificate in `files`.
    fn with_tls(mut self, files: &TlsFiles) -> Subject {
        self.args.extend(files.server_args());
        self.tls = Some(crate::conn::insecure_tls());
        self
    }
}

/// Resolves `--scenarios` (comma-separated names, `default`, or `all`).
pub fn pick(names: &str) -> Result<Vec<Spec>> {
    let mut v = Vec::new();
    for n in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match n {
            "default" => v.extend(CATALOG.iter().filter(|s| s.default)),
            "all" => v.extend(CATALOG.iter()),
            _ => v.push(*CATALOG.iter().find(|s| s.name == n).ok_or_else(|| {
                Error::Config(format!(
                    "unknown scenario {n:?}; known: {}",
                    CATALOG
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?),
        }
    }
    Ok(v)
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// "a" or "b".
    pub placement: String,
    /// Catalog name plus placement variant (e.g. `pubsub16/cross`).
    pub scenario: String,
    /// Server name.
    pub server: &'static str,
    /// Round number (1-based).
    pub round: usize,
    /// The report, or why the run failed.
    pub result: std::result::Result<Report, String>,
    /// Server log lines that looked like warnings or errors.
    pub warnings: Vec<String>,
}

/// Syscall counts from the strace runs.
#[derive(Debug, Clone, Serialize)]
pub struct Syscalls {
    /// Placement.
    pub placement: String,
    /// Scenario (with variant).
    pub scenario: String,
    /// Server name.
    pub server: &'static str,
    /// Syscalls per delivered message, or why there is no figure.
    pub per_msg: std::result::Result<f64, String>,
}

/// Everything a comparison produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Raw runs.
    pub runs: Vec<Run>,
    /// strace figures.
    pub syscalls: Vec<Syscalls>,
    /// Path of the Markdown report.
    pub report_path: String,
    /// The Markdown summary table.
    pub summary: String,
}

fn launch(which: Which, bin: &str, placement: char, cluster: Cluster, extra: &[String]) -> Launch {
    let (cores, threads) = match placement {
        'a' => (Some("1".to_string()), 1),
        _ => (None, 2),
    };
    Launch {
        which,
        bin: bin.to_string(),
        cores,
        threads,
        cluster,
        extra: extra.to_vec(),
    }
}

fn variants(spec: &Spec, placement: char, tls: bool) -> Vec<Placement> {
    // The polling generator needs a core of its own, which placement b (nothing pinned, the
    // server on both cores) does not give it: three spinning threads on two cores measure
    // the OS scheduler, not the server (recorded in perf/results/README.md).
    if placement == 'b' && matches!(spec.kind, Kind::Reqpoll | Kind::Openpoll) {
        return Vec::new();
    }
    // The polling scenarios wait on the sockets, which cannot tell when TLS holds records
    // it has read but not yet handed out.
    if tls && matches!(spec.kind, Kind::Reqpoll | Kind::Openpoll | Kind::Fanpoll) {
        return Vec::new();
    }
    if placement == 'a' || spec.routed || matches!(spec.kind, Kind::Pub | Kind::Conns) {
        vec![Placement::Any]
    } else if matches!(spec.kind, Kind::Fanout | Kind::Fanpoll) {
        // The subscribers dealt over both shards as well: the publisher's shard delivers to
        // its half and forwards one operation per message for the other's.
        vec![Placement::Same, Placement::Cross, Placement::Spread]
    } else {
        vec![Placement::Same, Placement::Cross]
    }
}

fn variant_name(p: Placement) -> &'static str {
    match p {
        Placement::Any => "",
        Placement::Same => "/same-shard",
        Placement::Cross => "/cross-shard",
        Placement::Spread => "/spread",
    }
}

fn opts_for(s: &Settings, spec: &Spec, placement: char, v: Placement) -> Opts {
    let mut o = s.opts.clone();
    o.size = spec.size;
    o.pubs = spec.pubs;
    o.subs = spec.subs;
    o.placement = v;
    o.progress = false;
    o.pin = if placement == 'a' {
        vec![0]
    } else {
        Vec::new()
    };
    match spec.kind {
        Kind::Subscale => o.preload = spec.count,
        Kind::Conns => o.conns = spec.count,
        Kind::Pubsub | Kind::Pairs | Kind::Queue | Kind::Reqreply => o.subjects = spec.count.max(1),
        _ => {}
    }
    o
}

/// The open-loop rate for `placement`: `--rate` if given, else half of nats-server's median
/// delivered rate for pubsub128 in this placement variant (from this run's rounds, or from
/// one probe run when pubsub128 is not among the scenarios).
fn open_loop_rate(
    s: &Settings,
    nats: &Subject,
    runs: &[Run],
    placement: char,
    v: Placement,
) -> Result<u64> {
    if let Some(r) = s.rate {
        return Ok(r);
    }
    let base = format!("pubsub128{}", variant_name(v));
    let mut seen: Vec<f64> = runs
        .iter()
        .filter(|r| {
            r.placement == placement.to_string() && r.scenario == base && r.server == "nats-server"
        })
        .filter_map(|r| r.result.as_ref().ok().map(|r| r.msgs_out_per_s))
        .collect();
    if seen.is_empty() {
        let spec = CATALOG
            .iter()
            .find(|c| c.name == "pubsub128")
            .ok_or_else(|| Error::Config("pubsub128 missing from the catalogue".into()))?;
        let o = opts_for(s, spec, placement, v);
        let (r, _, _) = one_run(nats, placement, &o, spec, false)?;
        seen.push(r.msgs_out_per_s);
    }
    let max =
        median(seen).ok_or_else(|| Error::Config("no pubsub128 rate for nats-server".into()))?;
    Ok(((max / 2.0) as u64).max(1))
}

/// Starts the server (for a routed scenario, two servers joined by a route), runs the
/// scenario against it, and stops it again.
fn one_run(
    sub: &Subject,
    placement: char,
    o: &Opts,
    spec: &Spec,
    strace: bool,
) -> Result<(Report, Vec<String>, Option<u64>)> {
    let (which, bin, extra) = (sub.which, &sub.bin, &sub.args);
    let shards = if which == Which::Tern {
        launch(which, bin, placement, Cluster::None, extra).threads as u64
    } else {
        1
    };
    let mut servers = Vec::new();
    let first = if spec.routed {
        Cluster::Seed
    } else {
        Cluster::None
    };
    servers.push(Server::start(&launch(which, bin, placement, first, extra))?);
    if spec.routed {
        let seed = servers[0]
            .route_addr
            .clone()
            .ok_or_else(|| Error::Spawn("the seed printed no route listen line".into()))?;
        servers.push(Server::start(&launch(
            which,
            bin,
            placement,
            Cluster::Join(seed),
            extra,
        ))?);
    }
    let mut t = Target::from_url(&servers[0].addr, shards, 0, Some(servers[0].pid))?;
    t.tls = sub.tls.clone();
    if let Some(b) = servers.get(1) {
        let mut peer = Target::from_url(&b.addr, shards, 0, Some(b.pid))?;
        peer.tls = sub.tls.clone();
        t.peer = Some(Box::new(peer));
    }
    let mut tracers = Vec::new();
    if strace {
        for s in &servers {
            tracers.push(Strace::attach(s.pid)?);
        }
    }
    let r = scenario::run(spec.kind, o, &t);
    let mut calls = None;
    for tr in tracers {
        calls = Some(calls.unwrap_or(0) + tr.finish()?);
    }
    let mut warnings = Vec::new();
    for s in servers {
        warnings.extend(
            s.drain_log()
                .into_iter()
                .filter(|l| l.contains("[WRN]") || l.contains("[ERR]") || l.contains("panic")),
        );
        s.stop();
    }
    Ok((r?, warnings, calls))
}

/// Runs the comparison and writes the report.
pub fn compare(s: &Settings) -> Result<Outcome> {
    crate::conn::raise_nofile();
    let mut runs = Vec::new();
    let mut syscalls = Vec::new();
    let strace_ok = s.strace && strace_available();
    let total: usize = s
        .placements
        .iter()
        .map(|&p| {
            s.scenarios
                .iter()
                .map(|sp| variants(sp, p, s.tls).len() * s.rounds * 2)
                .sum::<usize>()
        })
        .sum();
    let pb = if s.progress && std::io::stderr().is_terminal() {
        let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} runs {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(pb)
    } else {
        None
    };
    let mut rates = Vec::new();
    let tls = if s.tls {
        Some(TlsFiles::create()?)
    } else {
        None
    };
    let mut tern = Subject::plain(Which::Tern, &s.tern);
    tern.args.clone_from(&s.tern_args);
    let nats = Subject::plain(Which::Nats, &s.nats);
    let [nats, tern] = [nats, tern].map(|sub| match &tls {
        Some(files) => sub.with_tls(files),
        None => sub,
    });
    let subject = |which: Which| if which == Which::Tern { &tern } else { &nats };
    for &placement in &s.placements {
        for spec in &s.scenarios {
            for v in variants(spec, placement, s.tls) {
                let name = format!("{}{}", spec.name, variant_name(v));
                let mut o = opts_for(s, spec, placement, v);
                if matches!(spec.kind, Kind::Openloop | Kind::Openpoll) {
                    o.rate = open_loop_rate(s, &nats, &runs, placement, v)?;
                    rates.push((placement, name.clone(), o.rate));
                }
                for round in 1..=s.rounds {
                    // A B, B A, A B, ...: in A/B runs on this VM whichever binary ran
                    // first in a round measured faster (by up to 8 % in pubsub128, cause not
                    // known), so neither server gets that place every time.
                    let order = if round % 2 == 1 {
                        [Which::Nats, Which::Tern]
                    } else {
                        [Which::Tern, Which::Nats]
                    };
                    for which in order {
                        if let Some(pb) = &pb {
                            pb.set_message(format!("{placement} {name} {}", which.name()));
                        }
                        let (result, warnings) =
                            match one_run(subject(which), placement, &o, spec, false) {
                                Ok((r, w, _)) => (Ok(r), w),
                                Err(e) => (Err(e.to_string()), Vec::new()),
                            };
                        if let Err(e) = &result {
                            eprintln!("{placement} {name} {} round {round}: {e}", which.name());
                        }
                        runs.push(Run {
                            placement: placement.to_string(),
                            scenario: name.clone(),
                            server: which.name(),
                            round,
                            result,
                            warnings,
                        });
                        if let Some(pb) = &pb {
                            pb.inc(1);
                        }
                    }
                }
                if s.strace {
                    for which in [Which::Nats, Which::Tern] {
                        let per_msg = if !strace_ok {
                            Err("strace not installed".to_string())
                        } else {
                            match one_run(subject(which), placement, &o, spec, true) {
                                Ok((r, _, Some(calls))) => {
                                    let per = if r.received > 0 { r.received } else { r.sent };
                                    Ok(calls as f64 / per.max(1) as f64)
                                }
                                Ok(_) => Err("no count".to_string()),
                                Err(e) => Err(e.to_string()),
                            }
                        };
                        syscalls.push(Syscalls {
                            placement: placement.to_string(),
                            scenario: name.clone(),
                            server: which.name(),
                            per_msg,
                        });
                    }
                }
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let summary = summary_table(s, &runs, &syscalls);
    let path = write_report(s, &runs, &syscalls, &summary, strace_ok, &rates)?;
    Ok(Outcome {
        runs,
        syscalls,
        report_path: path.display().to_string(),
        summary,
    })
}

/// A metric of the summary table.
struct Metric {
    label: &'static str,
    get: fn(&Report) -> Option<f64>,
    fmt: fn(f64) -> String,
}

fn metrics(kind: Kind) -> Vec<Metric> {
    let mut m = vec![];
    match kind {
        Kind::Pub => m.push(Metric {
            label: "msgs/s in ↑",
            get: |r| Some(r.msgs_in_per_s),
            fmt: si,
        }),
        Kind::Conns => {
            m.push(Metric {
                label: "RSS KiB/conn ↓",
                get: |r| r.extra.get("rss_bytes_per_conn").map(|b| b / 1024.0),
                fmt: |v| format!("{v:.1}"),
            });
            m.push(Metric {
                label: "connects/s ↑",
                get: |r| r.extra.get("connects_per_s").copied(),
                fmt: si,
            });
        }
        _ => {
            m.push(Metric {
                label: "msgs/s in ↑",
                get: |r| Some(r.msgs_in_per_s),
                fmt: si,
            });
            m.push(Metric {
                label: "msgs/s out ↑",
                get: |r| Some(r.msgs_out_per_s),
                fmt: si,
            });
            m.push(Metric {
                label: "MB/s out ↑",
                get: |r| Some(r.mb_out_per_s),
                fmt: |v| format!("{v:.1}"),
            });
        }
    }
    if matches!(
        kind,
        Kind::Reqreply | Kind::Reqpoll | Kind::Requesters | Kind::Openloop | Kind::Openpoll
    ) {
        m.push(Metric {
            label: "p50 µs ↓",
            get: |r| r.latency.as_ref().map(|l| l.p50),
            fmt: |v| format!("{v:.1}"),
        });
        m.push(Metric {
            label: "p99 µs ↓",
            get: |r| r.latency.as_ref().map(|l| l.p99),
            fmt: |v| format!("{v:.1}"),
        });
        m.push(Metric {
            label: "p99.9 µs ↓",
            get: |r| r.latency.as_ref().map(|l| l.p999),
            fmt: |v| format!("{v:.1}"),
        });
        m.push(Metric {
            label: "max µs ↓",
            get: |r| r.latency.as_ref().map(|l| l.max),
            fmt: |v| format!("{v:.0}"),
        });
    }
    if kind == Kind::Subscale {
        m.push(Metric {
            label: "SUBs/s preload ↑",
            get: |r| r.extra.get("preload_subs_per_s").copied(),
            fmt: si,
        });
    }
    if kind == Kind::Churn {
        m.push(Metric {
            label: "churn pairs/s",
            get: |r| r.extra.get("churn_pairs_per_s").copied(),
            fmt: si,
        });
    }
    m.push(Metric {
        label: "server CPU ns/msg ↓",
        get: |r| r.server_cpu_ns_per_msg,
        fmt: |v| format!("{v:.0}"),
    });
    m.push(Metric {
        label: "peak RSS MiB ↓",
        get: |r| r.server_peak_rss.map(|b| b as f64 / (1 << 20) as f64),
        fmt: |v| format!("{v:.1}"),
    });
    m.push(Metric {
        label: "generator CPU %",
        get: |r| Some(r.gen_cpu_pct),
        fmt: |v| format!("{v:.0}"),
    });
    m
}

/// The catalogue entry of a report row (`name` or `name/variant`).
fn spec_of(scenario: &str) -> Option<&'static Spec> {
    let base = scenario.split('/').next().unwrap_or(scenario);
    CATALOG.iter().find(|s| s.name == base)
}

fn kind_of(scenario: &str) -> Kind {
    spec_of(scenario).map_or(Kind::Pubsub, |s| s.kind)
}

fn med(runs: &[&Run], server: &str, get: fn(&Report) -> Option<f64>) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.server == server)
            .filter_map(|r| r.result.as_ref().ok().and_then(get))
            .collect(),
    )
}

/// Whether a kind's headline figure is a throughput (not a latency at a fixed load).
fn is_throughput(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Pub
            | Kind::Pubsub
            | Kind::Fanout
            | Kind::Fanpoll
            | Kind::Fanin
            | Kind::Pairs
            | Kind::Queue
            | Kind::Subscale
            | Kind::Churn
    )
}

/// The generator's CPU (% of one core) from which a throughput round in placement a, where
/// the generator has that one core, may have been paced by it.
const GEN_BOUND_PCT: f64 = 90.0;

/// A markdown list of the throughput rounds in placement a (many requesters' round trips
/// too) whose generator was at [`GEN_BOUND_PCT`] of its core or more; `None` when there are
/// none. `reqpoll`'s generator polls without ever waiting, so it is always busy and is not
/// listed.
fn generator_bound(runs: &[Run]) -> Option<String> {
    let mut list = String::new();
    for r in runs.iter().filter(|r| r.placement == "a") {
        let Ok(x) = &r.result else { continue };
        let kind = kind_of(&r.scenario);
        if !(is_throughput(kind) || kind == Kind::Requesters) || x.gen_cpu_pct < GEN_BOUND_PCT {
            continue;
        }
        let _ = writeln!(
            list,
            "- {} {} round {}: generator {:.0} %, {} msgs/s out",
            r.scenario,
            r.server,
            r.round,
            x.gen_cpu_pct,
            si(x.msgs_out_per_s)
        );
    }
    (!list.is_empty()).then_some(list)
}

/// The runs of each row (placement, scenario), rows in the order they first ran.
fn rows(runs: &[Run]) -> Vec<(&str, &str, Vec<&Run>)> {
    let mut rows: Vec<(&str, &str, Vec<&Run>)> = Vec::new();
    for r in runs {
        match rows
            .iter_mut()
            .find(|(p, sc, _)| *p == r.placement && *sc == r.scenario)
        {
            Some((_, _, group)) => group.push(r),
            None => rows.push((&r.placement, &r.scenario, vec![r])),
        }
    }
    rows
}

/// VM steal in a round (milliseconds, all CPUs) from which a row whose two servers' rounds
/// were stolen from unevenly is listed: its ratio is then partly the host's.
const STEAL_NOTE_MS: f64 = 100.0;

/// A markdown list of the rows whose median VM steal per round was [`STEAL_NOTE_MS`] or
/// more for one server and at least twice the other's; `None` when there are none.
fn uneven_steal(runs: &[Run]) -> Option<String> {
    let mut list = String::new();
    for (placement, scenario, row) in rows(runs) {
        let steal = |w: Which| med(&row, w.name(), |x| x.steal_ms);
        let (Some(t), Some(n)) = (steal(Which::Tern), steal(Which::Nats)) else {
            continue;
        };
        if t.max(n) >= STEAL_NOTE_MS && t.max(n) >= 2.0 * t.min(n) {
            let _ = writeln!(
                list,
                "- {placement} {scenario}: tern {t:.0} ms, nats-server {n:.0} ms"
            );
        }
    }
    (!list.is_empty()).then_some(list)
}

/// Whether a placement-b row gives both shards work: publishers dealt over them (`pub16x2`),
/// a pair on each (`pairs`), or a fan-out's subscribers over both (`/spread`). The others
/// carry one stream, which one shard serves (one read loop, in nats-server).
fn loads_both_shards(scenario: &str) -> bool {
    scenario.ends_with(variant_name(Placement::Spread))
        || spec_of(scenario)
            .is_some_and(|s| s.pubs >= 2 && matches!(s.kind, Kind::Pub | Kind::Pairs))
}

/// Placement b ÷ placement a, per server, for every throughput row run in both: whether two
/// shards (nats-server: `GOMAXPROCS=2`) deliver more than one pinned core (`GOMAXPROCS=1`).
/// In b the generator shares the two cores with the server. `None` without such a row.
fn scaling_table(runs: &[Run]) -> Option<String> {
    let mut t = String::from(
        "| scenario (placement b) | load on both shards | tern b ÷ a | nats-server b ÷ a |\n\
         |---|---|---:|---:|\n",
    );
    let rows = rows(runs);
    for (_, scenario, in_b) in rows.iter().filter(|(p, _, _)| *p == "b") {
        let base = scenario.split('/').next().unwrap_or(scenario);
        let kind = kind_of(base);
        let Some((_, _, in_a)) = rows.iter().find(|(p, sc, _)| *p == "a" && *sc == base) else {
            continue;
        };
        if !is_throughput(kind) {
            continue;
        }
        let get: fn(&Report) -> Option<f64> = if kind == Kind::Pub {
            |r| Some(r.msgs_in_per_s)
        } else {
            |r| Some(r.msgs_out_per_s)
        };
        let ratio = |w: Which| match (med(in_a, w.name(), get), med(in_b, w.name(), get)) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "–".into(),
        };
        let _ = writeln!(
            t,
            "| {scenario} | {} | {} | {} |",
            if loads_both_shards(scenario) {
                "yes"
            } else {
                ""
            },
            ratio(Which::Tern),
            ratio(Which::Nats)
        );
    }
    (t.lines().count() > 2).then_some(t)
}

fn summary_table(s: &Settings, runs: &[Run], sys: &[Syscalls]) -> String {
    let mut t = String::from(
        "| placement | scenario | metric | nats-server | tern | tern ÷ nats |\n\
         |---|---|---|---:|---:|---:|\n",
    );
    for (p, sc, group) in rows(runs) {
        for m in metrics(kind_of(sc)) {
            let a = med(&group, Which::Nats.name(), m.get);
            let b = med(&group, Which::Tern.name(), m.get);
            let f = |v: Option<f64>| v.map_or("–".to_string(), m.fmt);
            let ratio = match (a, b) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                _ => "–".into(),
            };
            let _ = writeln!(
                t,
                "| {p} | {sc} | {} | {} | {} | {ratio} |",
                m.label,
                f(a),
                f(b)
            );
        }
        let lost: Vec<String> = [Which::Nats, Which::Tern]
            .iter()
            .map(|w| {
                let (l, fails) = group.iter().filter(|r| r.server == w.name()).fold(
                    (0u64, 0usize),
                    |(l, f), r| match &r.result {
                        Ok(rep) => (l + rep.lost, f),
                        Err(_) => (l, f + 1),
                    },
                );
                if fails > 0 {
                    format!("{l} lost, {fails} failed")
                } else {
                    format!("{l}")
                }
            })
            .collect();
        if lost.iter().any(|l| l != "0") {
            let _ = writeln!(
                t,
                "| {p} | {sc} | lost msgs (all rounds) | {} | {} | |",
                lost[0], lost[1]
            );
        }
        if s.strace {
            let get = |w: Which| {
                sys.iter()
                    .find(|x| x.placement == p && x.scenario == sc && x.server == w.name())
                    .map(|x| x.per_msg.clone())
            };
            let (a, b) = (get(Which::Nats), get(Which::Tern));
            let f = |v: &Option<std::result::Result<f64, String>>| match v {
                Some(Ok(x)) => format!("{x:.3}"),
                Some(Err(e)) => e.clone(),
                None => "–".into(),
            };
            let ratio = match (&a, &b) {
                (Some(Ok(a)), Some(Ok(b))) if *a > 0.0 => format!("{:.2}", b / a),
                _ => "–".into(),
            };
            let _ = writeln!(
                t,
                "| {p} | {sc} | syscalls/msg (strace run) ↓ | {} | {} | {ratio} |",
                f(&a),
                f(&b)
            );
        }
    }
    t
}

fn cmd_out(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    let mut s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if s.is_empty() {
        s = String::from_utf8_lossy(&o.stderr).trim().to_string();
    }
    (!s.is_empty()).then_some(s)
}

/// `YYYY-MM-DD` (UTC) for the report name.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A file's modification time as `YYYY-MM-DD HH:MM UTC`, so a stale binary is visible.
fn mtime(path: &str) -> String {
    let Some(t) = std::fs::metadata(path).and_then(|m| m.modified()).ok() else {
        return "unknown".into();
    };
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        sod / 3600,
        sod % 3600 / 60
    )
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    // Not available_parallelism: that follows this process's CPU mask.
    // SAFETY: sysconf has no memory effects.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    format!("{model}, {cores} cores, Linux {kernel}")
}

fn write_report(
    s: &Settings,
    runs: &[Run],
    sys: &[Syscalls],
    summary: &str,
    strace_ok: bool,
    rates: &[(char, String, u64)],
) -> Result<PathBuf> {
    let commit = cmd_out(
        "git",
        &[
            "-C",
            &s.tern_repo.to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )
    .filter(|c| !c.contains(' '))
    .unwrap_or_else(|| "unknown".into());
    let dirty = cmd_out(
        "git",
        &[
            "-C",
            &s.tern_repo.to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some();
    let date = today();
    std::fs::create_dir_all(&s.out).ctx(|| format!("create {}", s.out.display()))?;
    let tls = if s.tls { "-tls" } else { "" };
    let path = s.out.join(format!("{date}-{commit}{tls}.md"));
    let mut m = String::new();
    let _ = writeln!(m, "# Tern vs nats-server, {date}, tern {commit}\n");
    let _ = writeln!(m, "- Machine: {}", machine());
    let _ = writeln!(
        m,
        "- Tern: `{}` (binary modified {}) at commit {commit}{} ({})",
        s.tern,
        mtime(&s.tern),
        if dirty {
            " (work tree had uncommitted changes)"
        } else {
            ""
        },
        cmd_out(&s.tern, &["--version"]).unwrap_or_default()
    );
    let _ = writeln!(
        m,
        "- nats-server: `{}` ({})",
        s.nats,
        cmd_out(&s.nats, &["--version"]).unwrap_or_default()
    );
    let _ = writeln!(
        m,
        "- Generator: tern-bench {} over the NATS wire protocol; {} s per measurement, \
         {} rounds per server, alternating (nats-server first in odd rounds, tern first in even ones), a fresh server process per run; \
         medians below",
        env!("CARGO_PKG_VERSION"),
        s.opts.duration.as_secs_f64(),
        s.rounds
    );
    if !s.tern_args.is_empty() {
        let _ = writeln!(m, "- Tern's extra arguments: `{}`", s.tern_args.join(" "));
    }
    if s.tls {
        let _ = writeln!(
            m,
            "- TLS: both servers require it (`--tls --tlscert --tlskey`, a self-signed ECDSA \
             P-256 certificate made for the run); the generator's connections are TLS 1.3 \
             (rustls, ring). The polling scenarios are not run over TLS"
        );
    }
    for p in &s.placements {
        let text = match p {
            'a' => {
                "placement a: server on core 1 (`taskset -c 1`; tern `--shards 1`, \
                    nats-server `GOMAXPROCS=1`), generator threads pinned to core 0"
            }
            _ => {
                "placement b: tern `--shards 2`, nats-server `GOMAXPROCS=2`, nothing \
                  pinned; `/same-shard` puts publisher and subscriber on tern's shard 0 \
                  (a `pairs` row: pair i on shard i), `/cross-shard` the publisher on shard \
                  0 and subscribers on shard 1 (pair i across shards i and i+1), `/spread` \
                  a fan-out's subscribers over both shards in turn (by connection order; no \
                  effect on nats-server)"
            }
        };
        let _ = writeln!(m, "- {text}");
    }
    let how = if s.rate.is_some() {
        "set by `--rate`"
    } else {
        "half of nats-server's median pubsub128 rate in that placement"
    };
    let list: Vec<String> = rates
        .iter()
        .map(|(p, n, r)| format!("{p} {n}: {}", si(*r as f64)))
        .collect();
    let _ = writeln!(
        m,
        "- Open loop msgs/s ({how}): {}; latency from each message's intended send time. \
         Request/reply: each requester waits for its reply before its next request (one \
         requester unless the row names more), latency and CPU per round trip.",
        if list.is_empty() {
            "not run".to_string()
        } else {
            list.join(", ")
        }
    );
    if s.strace && !strace_ok {
        let _ = writeln!(
            m,
            "- strace was requested but is not installed: no syscall counts."
        );
    }
    let _ = writeln!(
        m,
        "\n↑ higher is better, ↓ lower is better. \"generator CPU %\" is the load generator's \
         own CPU as a share of one core; near 100 × (its cores) it is the bottleneck.\n"
    );
    m.push_str("## Summary\n\n");
    m.push_str(summary);
    if let Some(list) = generator_bound(runs) {
        let _ = write!(
            m,
            "\n## Rounds the generator may have paced\n\nThroughput rounds (and many \
             requesters' round trips) in placement a whose generator used \
             {GEN_BOUND_PCT:.0} % or more of its one core: there the rate may be the \
             generator's, not the server's.\n\n{list}"
        );
    }
    if let Some(list) = uneven_steal(runs) {
        let _ = write!(
            m,
            "\n## Rows the host stole from unevenly\n\nMedian VM steal per round (the time \
             the hypervisor ran something else while this VM's CPUs wanted to run, all CPUs) \
             where one server's rounds lost {STEAL_NOTE_MS:.0} ms or more and at least twice \
             the other's: these rows' ratios are partly the host's. Each round's figure is \
             under Raw runs.\n\n{list}"
        );
    }
    if let Some(scaling) = scaling_table(runs) {
        m.push_str(
            "\n## Scaling: placement b ÷ placement a\n\nMessages per second (in for `pub`, \
             out for the rest), medians. A row with one publisher connection cannot gain from \
             a second shard: a connection lives on one shard (on one goroutine's read loop in \
             nats-server). The rows that load both shards (two publishers, a pair per shard, a \
             fan-out's subscribers spread over both) say so; in b the generator shares the \
             server's two cores.\n\n",
        );
        m.push_str(&scaling);
    }
    m.push_str("\n## Raw runs\n\n");
    m.push_str(
        "| placement | scenario | server | round | msgs/s in | msgs/s out | MB/s out | lost | \
         server CPU ns/msg | peak RSS MiB | p50 µs | p99 µs | p99.9 µs | max µs | gen CPU % | VM steal ms |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        match &r.result {
            Ok(x) => {
                let l = |f: fn(&crate::stats::Latency) -> f64| {
                    x.latency
                        .as_ref()
                        .map_or("–".into(), |l| format!("{:.1}", f(l)))
                };
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
                    r.placement,
                    r.scenario,
                    r.server,
                    r.round,
                    si(x.msgs_in_per_s),
                    si(x.msgs_out_per_s),
                    x.mb_out_per_s,
                    x.lost,
                    x.server_cpu_ns_per_msg.map_or("–".into(), |v| format!("{v:.0}")),
                    x.server_peak_rss
                        .map_or("–".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                    l(|l| l.p50),
                    l(|l| l.p99),
                    l(|l| l.p999),
                    l(|l| l.max),
                    x.gen_cpu_pct,
                    x.steal_ms.map_or("–".into(), |s| format!("{s:.0}"))
                );
            }
            Err(e) => {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | failed: {} ||||||||||||",
                    r.placement,
                    r.scenario,
                    r.server,
                    r.round,
                    e.replace('|', "/").replace('\n', " ")
                );
            }
        }
    }
    let warned: Vec<&Run> = runs.iter().filter(|r| !r.warnings.is_empty()).collect();
    if !warned.is_empty() {
        m.push_str("\n## Server warnings\n\n");
        for r in warned {
            for w in r.warnings.iter().take(5) {
                let _ = writeln!(
                    m,
                    "- {} {} {} round {}: `{}`",
                    r.placement, r.scenario, r.server, r.round, w
                );
            }
        }
    }
    if s.svg {
        m.push_str("\n## Latency plots\n\n");
        for (p, sc, file) in write_plots(s, runs, &path)? {
            let _ = writeln!(m, "- {p} {sc}: ![{sc}]({file})");
        }
    }
    let _ = sys;
    std::fs::write(&path, m).ctx(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// One SVG per latency scenario, overlaying each server's last successful round.
fn write_plots(s: &Settings, runs: &[Run], md: &Path) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    let stem = md
        .file_stem()
        .map_or("plot".into(), |x| x.to_string_lossy().into_owned());
    let mut seen: Vec<(String, String)> = Vec::new();
    for r in runs {
        let k = (r.placement.clone(), r.scenario.clone());
        if seen.contains(&k) {
            continue;
        }
        seen.push(k.clone());
        let mut series = Vec::new();
        for w in [Which::Nats, Which::Tern] {
            let last = runs
                .iter()
                .rev()
                .filter(|x| x.placement == k.0 && x.scenario == k.1 && x.server == w.name())
                .find_map(|x| x.result.as_ref().ok().and_then(|r| r.latency.clone()));
            if let Some(l) = last {
                series.push((w.name().to_string(), l.curve));
            }
        }
        if series.is_empty() {
            continue;
        }
        let file = format!("{stem}-{}-{}.svg", k.0, k.1.replace('/', "-"));
        let svg = crate::svg::percentile_plot(&format!("{} ({})", k.1, k.0), &series);
        std::fs::write(s.out.join(&file), svg).ctx(|| format!("write {file}"))?;
        out.push((k.0, k.1, file));
    }
    Ok(out)
}

/// Default report directory and run length, for the CLI.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_picking() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let d = pick("default").unwrap();
        assert_eq!(d.len(), 15);
        assert!(d.iter().any(|s| s.routed && s.kind == Kind::Reqreply));
        assert!(pick("pub16,nope").is_err());
        assert_eq!(pick("churn,conns1k").unwrap()[1].count, 1000);
        let poll = pick("reqpoll").unwrap()[0];
        assert_eq!(variants(&poll, 'a', false), vec![Placement::Any]);
        assert!(variants(&poll, 'b', false).is_empty());
        assert!(variants(&pick("openpoll").unwrap()[0], 'b', false).is_empty());
        assert!(variants(&poll, 'a', true).is_empty());
    }

    fn run(placement: &str, scenario: &str, server: &'static str, out: f64) -> Run {
        Run {
            placement: placement.into(),
            scenario: scenario.into(),
            server,
            round: 1,
            result: Ok(Report {
                msgs_in_per_s: out / 2.0,
                msgs_out_per_s: out,
                ..Report::default()
            }),
            warnings: Vec::new(),
        }
    }

    /// Each placement-b variant of a throughput row is set against the row in placement a,
    /// per server (messages in for `pub`, out for the rest); latency rows are left out.
    #[test]
    fn scaling_sets_b_against_a() {
        let (t, n) = (Which::Tern.name(), Which::Nats.name());
        let runs = vec![
            run("a", "pubsub128", t, 100.0),
            run("a", "pubsub128", n, 50.0),
            run("b", "pubsub128/same-shard", t, 150.0),
            run("b", "pubsub128/same-shard", n, 100.0),
            run("b", "pubsub128/cross-shard", t, 80.0),
            run("b", "pubsub128/cross-shard", n, 25.0),
            run("a", "pub16x2", t, 100.0),
            run("b", "pub16x2", t, 170.0),
            run("a", "reqreply", t, 100.0),
            run("b", "reqreply/same-shard", t, 100.0),
            run("a", "fanout16x128", t, 100.0),
            run("b", "fanout16x128/spread", t, 120.0),
            run("b", "fanout16x128/same-shard", t, 90.0),
        ];
        let table = scaling_table(&runs).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| pubsub128/same-shard |  | 1.50 | 2.00 |",
                "| pubsub128/cross-shard |  | 0.80 | 0.50 |",
                "| pub16x2 | yes | 1.70 | – |",
                "| fanout16x128/spread | yes | 1.20 | – |",
                "| fanout16x128/same-shard |  | 0.90 | – |",
            ]
        );
        assert!(scaling_table(&runs[..2]).is_none());
    }

    /// Only throughput and many-requester rounds in placement a at 90 % of the generator's
    /// core or more are listed as possibly paced by the generator.
    #[test]
    fn generator_bound_lists_busy_throughput_rounds() {
        let t = Which::Tern.name();
        let mut runs = vec![
            run("a", "fanout16x128", t, 9e6),
            run("a", "fanout16x128", t, 8e6),
            run("a", "openloop", t, 7e5),
            run("b", "pubsub128/same-shard", t, 5e6),
            run("a", "requesters8x4", t, 2e4),
            run("a", "reqpoll8x4", t, 3e4),
        ];
        for (r, pct) in runs.iter_mut().zip([95.0, 60.0, 99.0, 150.0, 91.0, 100.0]) {
            r.result.as_mut().unwrap().gen_cpu_pct = pct;
        }
        let list = generator_bound(&runs).unwrap();
        assert_eq!(
            list,
            "- fanout16x128 tern round 1: generator 95 %, 9.00M msgs/s out\n\
             - requesters8x4 tern round 1: generator 91 %, 20.0k msgs/s out\n"
        );
        assert!(generator_bound(&runs[1..4]).is_none());
    }

    /// Rows are listed when one server's median steal is past the mark and twice the
    /// other's; even or small steal is not.
    #[test]
    fn uneven_steal_lists_rows_stolen_from_on_one_side() {
        let (t, n) = (Which::Tern.name(), Which::Nats.name());
        let mut runs = vec![
            run("a", "reqreply", t, 1e4),
            run("a", "reqreply", n, 1e4),
            run("a", "pub16", t, 1e7),
            run("a", "pub16", n, 1e7),
            run("b", "pub16", t, 1e7),
            run("b", "pub16", n, 1e7),
        ];
        for (r, ms) in runs
            .iter_mut()
            .zip([450.0, 150.0, 400.0, 300.0, 60.0, 10.0])
        {
            r.result.as_mut().unwrap().steal_ms = Some(ms);
        }
        assert_eq!(
            uneven_steal(&runs).unwrap(),
            "- a reqreply: tern 450 ms, nats-server 150 ms\n"
        );
        assert!(uneven_steal(&runs[2..]).is_none());
    }

    /// The Tern binary built beside this test (target/<profile>/tern).
    fn tern_binary() -> String {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("tern");
        assert!(
            bin.exists(),
            "build the tern binary first: {}",
            bin.display()
        );
        bin.display().to_string()
    }

    #[test]
    fn routed_scenarios_cross_a_route() {
        let tern = tern_binary();
        for name in ["routed128", "routedreq"] {
            let spec = pick(name).unwrap()[0];
            let mut o = opts_for_test(&spec);
            o.msgs = Some(if spec.kind == Kind::Reqreply {
                300
            } else {
                20_000
            });
            // Subscribers sit on the second server and publishers on the first: every
            // delivery has crossed the route.
            let (r, warnings, _) =
                one_run(&Subject::plain(Which::Tern, &tern), 'b', &o, &spec, false).unwrap();
            assert!(r.sent >= 300, "{name}: {r:?}");
            assert_eq!((r.received, r.lost), (r.sent, 0), "{name}: {r:?}");
            assert!(
                r.server_cpu_ns_per_msg.is_some(),
                "{name}: both servers' CPU"
            );
            assert!(warnings.is_empty(), "{name}: {warnings:?}");
        }
    }

    /// With `--tls` both servers take the same flags, require TLS, and every delivery
    /// arrives over it. (A server left without them would take the generator's TLS
    /// handshake for a bad protocol line; a client left in plain text would send `CONNECT`
    /// to a server waiting for a handshake: either way the run fails.)
    #[test]
    fn tls_runs_deliver_over_tls() {
        let files = TlsFiles::create().unwrap();
        // Both servers take the same TLS flags: nats-server's own.
        for sub in both_servers() {
            let sub = sub.with_tls(&files);
            for (name, msgs) in [("pubsub128", 20_000), ("reqreply", 300), ("conns1k", 0)] {
                let spec = pick(name).unwrap()[0];
                let mut o = opts_for_test(&spec);
                (o.msgs, o.conns) = (Some(msgs), 50);
                let (r, warnings, _) = one_run(&sub, 'a', &o, &spec, false)
                    .unwrap_or_else(|e| panic!("{} {name}: {e}", sub.which.name()));
                assert_eq!((r.received, r.lost), (r.expected, 0), "{name}: {r:?}");
                assert!(r.sent >= msgs, "{name}: {r:?}");
                if spec.kind == Kind::Conns {
                    assert_eq!(r.extra.get("connections"), Some(&50.0), "{r:?}");
                }
                assert!(warnings.is_empty(), "{name}: {warnings:?}");
            }
        }
    }

    /// The polling request/reply gets every reply back, with a latency for each.
    #[test]
    fn reqpoll_round_trips() {
        let tern = tern_binary();
        let spec = pick("reqpoll").unwrap()[0];
        let mut o = opts_for_test(&spec);
        o.msgs = Some(500);
        let (r, warnings, _) =
            one_run(&Subject::plain(Which::Tern, &tern), 'a', &o, &spec, false).unwrap();
        assert_eq!((r.sent, r.received, r.lost), (500, 500, 0), "{r:?}");
        let l = r.latency.expect("latency");
        assert!(l.p50 > 0.0 && l.p50 <= l.p99, "{l:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    /// The polling open loop publishes at its rate and times every delivery.
    #[test]
    fn openpoll_times_every_message() {
        let tern = tern_binary();
        let spec = pick("openpoll").unwrap()[0];
        let mut o = opts_for_test(&spec);
        (o.msgs, o.rate) = (Some(20_000), 100_000);
        let (r, warnings, _) =
            one_run(&Subject::plain(Which::Tern, &tern), 'a', &o, &spec, false).unwrap();
        assert_eq!((r.sent, r.received, r.lost), (20_000, 20_000, 0), "{r:?}");
        let l = r.latency.as_ref().expect("latency");
        assert_eq!(l.count, 20_000, "{l:?}");
        assert!(l.p50 > 0.0 && l.p50 <= l.p99, "{l:?}");
        // 20k messages at 100k/s take 0.2 s; a generator that ignored the rate takes less.
        assert!(r.msgs_in_per_s < 150_000.0, "{r:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    /// Tern, and Debian's nats-server where it is installed (scripts/test installs it).
    fn both_servers() -> Vec<Subject> {
        let mut servers = vec![Subject::plain(Which::Tern, &tern_binary())];
        if Path::new("/usr/sbin/nats-server").exists() {
            servers.push(Subject::plain(Which::Nats, "/usr/sbin/nats-server"));
        }
        servers
    }

    /// `msgs` messages of catalog row `name` in placement a on each of [`both_servers`],
    /// with the row's count as `--subjects`, as `compare` runs it.
    fn run_with_subjects(name: &str, msgs: u64) -> Vec<Report> {
        let spec = pick(name).unwrap()[0];
        let mut o = opts_for_test(&spec);
        (o.msgs, o.subjects) = (Some(msgs), spec.count);
        both_servers()
            .iter()
            .map(|sub| {
                let (r, warnings, _) = one_run(sub, 'a', &o, &spec, false).unwrap();
                assert!(warnings.is_empty(), "{warnings:?}");
                r
            })
            .collect()
    }

    /// With a reply subject per request, every request is answered, by both servers.
    #[test]
    fn reqinbox_round_trips() {
        for r in run_with_subjects("reqinbox", 300) {
            assert_eq!((r.sent, r.received, r.lost), (300, 300, 0), "{r:?}");
        }
    }

    /// A queue group over subjects none of which comes back: every message delivered once,
    /// by both servers.
    #[test]
    fn queue_over_many_subjects_delivers_each_message_once() {
        for r in run_with_subjects("queue4x100k", 20_000) {
            assert_eq!(
                (r.expected, r.received, r.lost),
                (20_000, 20_000, 0),
                "{r:?}"
            );
        }
    }

    /// Eight requesters polled from one thread against a queue group of four: every request
    /// answered and timed, by both servers.
    #[test]
    fn reqpoll_many_requesters_round_trip() {
        let spec = pick("reqpoll8x4").unwrap()[0];
        let mut o = opts_for_test(&spec);
        o.msgs = Some(800);
        for sub in both_servers() {
            let (r, warnings, _) = one_run(&sub, 'a', &o, &spec, false).unwrap();
            assert_eq!((r.pubs, r.subs), (8, 4), "{r:?}");
            assert_eq!((r.sent, r.received, r.lost), (800, 800, 0), "{r:?}");
            let l = r.latency.as_ref().expect("latency");
            assert_eq!(l.count, 800, "{l:?}");
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    }

    /// The polled fan-out delivers every message to each of its 16 subscribers: on one
    /// shard, and on two with the subscribers on the publisher's shard, on the other one,
    /// and dealt over both.
    #[test]
    fn fanpoll_delivers_to_every_subscriber() {
        let tern = Subject::plain(Which::Tern, &tern_binary());
        let spec = pick("fanpoll16x128").unwrap()[0];
        let mut o = opts_for_test(&spec);
        o.msgs = Some(20_000);
        let b = variants(&spec, 'b', false);
        assert_eq!(b.len(), 3, "{b:?}");
        for (placement, v) in [('a', Placement::Any)]
            .into_iter()
            .chain(b.into_iter().map(|v| ('b', v)))
        {
            o.placement = v;
            let (r, warnings, _) = one_run(&tern, placement, &o, &spec, false).unwrap();
            assert_eq!(
                (r.sent, r.received, r.lost, r.subs),
                (20_000, 320_000, 0, 16),
                "{placement} {v:?}: {r:?}"
            );
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    }

    /// Two pairs deliver each stream to its own subscriber only (a subscriber that took
    /// the other stream too would make more deliveries than messages), on both servers, and
    /// on two shards of Tern with each pair on a shard of its own and with every pair across
    /// the shards.
    #[test]
    fn pairs_deliver_each_stream_to_its_own_subscriber() {
        let spec = pick("pairs128x2").unwrap()[0];
        let mut o = opts_for_test(&spec);
        o.msgs = Some(20_000);
        let mut cases: Vec<(Subject, char, Placement)> = both_servers()
            .into_iter()
            .map(|sub| (sub, 'a', Placement::Any))
            .collect();
        for v in variants(&spec, 'b', false) {
            cases.push((Subject::plain(Which::Tern, &tern_binary()), 'b', v));
        }
        assert_eq!(cases.len(), both_servers().len() + 2);
        for (sub, placement, v) in cases {
            o.placement = v;
            let (r, warnings, _) = one_run(&sub, placement, &o, &spec, false).unwrap();
            assert_eq!((r.pubs, r.subs), (2, 2), "{r:?}");
            assert_eq!(
                (r.sent, r.expected, r.received, r.lost),
                (20_000, 20_000, 20_000, 0),
                "{} {placement} {v:?}: {r:?}",
                sub.which.name()
            );
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    }

    fn opts_for_test(spec: &Spec) -> Opts {
        let mut o = Opts {
            size: spec.size,
            pubs: spec.pubs,
            subs: spec.subs,
            progress: false,
            ..Opts::default()
        };
        o.timeout = Duration::from_secs(20);
        o
    }
}
