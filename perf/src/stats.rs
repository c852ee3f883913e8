//! Measurement: the process-wide monotonic clock that send timestamps use, latency histograms
//! and their percentiles, the generator's own CPU time, and what `/proc` says about a server
//! process (CPU ticks, RSS). Owns no sockets and no threads.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (monotonic; never 0 after the first call).
#[inline]
pub fn now_ns() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_nanos() as u64 + 1
}

/// The percentiles every latency report carries.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// A latency histogram in nanoseconds (1 ns .. 100 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

/// Records `ns`, clamped into the histogram's range.
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let v = ns.clamp(1, h.high());
    let _ = h.record(v);
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// p50, p90, p99, p99.9, p99.99 in µs.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    /// Largest sample in µs.
    pub max: f64,
    /// Mean in µs.
    pub mean: f64,
    /// (percentile, µs) pairs for a percentile plot.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// Extracts the summary and a plot curve from a histogram (values in ns, output in µs).
pub fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    let q = |p: f64| us(h.value_at_percentile(p));
    let mut curve = Vec::new();
    if !h.is_empty() {
        for v in h.iter_quantiles(2) {
            curve.push((v.percentile(), us(v.value_iterated_to())));
        }
    }
    Latency {
        count: h.len(),
        p50: q(PERCENTILES[0]),
        p90: q(PERCENTILES[1]),
        p99: q(PERCENTILES[2]),
        p999: q(PERCENTILES[3]),
        p9999: q(PERCENTILES[4]),
        max: us(h.max()),
        mean: h.mean() / 1000.0,
        curve,
    }
}

/// CPU time (user + system) this process has used so far.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Clock ticks per second for `/proc/<pid>/stat`.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of a process (all threads) in nanoseconds, from `/proc/<pid>/stat`.
pub fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&s).map(|t| t * 1_000_000_000 / clk_tck())
}

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14, stime field 15.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some(ut + st)
}

/// The time the hypervisor ran something else while this VM's CPUs wanted to run (steal,
/// summed over all CPUs), in nanoseconds, from `/proc/stat`: a latency tail that lines up
/// with it is the host's, not the server's.
pub fn host_steal_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_steal_ticks(&s).map(|t| t * 1_000_000_000 / clk_tck())
}

/// The steal clock ticks of the `cpu` line (all CPUs) of `/proc/stat`'s text.
pub fn parse_steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    line.split_whitespace().nth(8)?.parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmHWM`, `VmRSS`), in bytes.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Median of a list (mean of the middle two for even lengths); `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `1234567.0` → `"1.23M"`: short human numbers for tables.
pub fn si(x: f64) -> String {
    let a = x.abs();
    if a >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_histogram() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            record(&mut h, i * 1000); // 1 µs .. 10 ms
        }
        let l = latency(&h);
        assert_eq!(l.count, 10_000);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.002;
        assert!(close(l.p50, 5000.0), "{}", l.p50);
        assert!(close(l.p90, 9000.0), "{}", l.p90);
        assert!(close(l.p99, 9900.0), "{}", l.p99);
        assert!(close(l.p999, 9990.0), "{}", l.p999);
        assert!(close(l.max, 10000.0), "{}", l.max);
        assert!(l
            .curve
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(l.curve.last().unwrap().0 >= 99.99);
    }

    #[test]
    fn stat_and_median() {
        let stat = "1234 (tern shard (x)) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(280));
        let proc_stat =
            "cpu  2584207 0 421520 9173234 3779411 0 99603 51738 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_steal_ticks(proc_stat), Some(51738));
        assert_eq!(parse_steal_ticks("intr 1 2 3\n"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(si(2_345_678.0), "2.35M");
    }
}
