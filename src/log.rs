//! Log lines in nats-server's shape, `[pid] 2006/01/02 15:04:05.000000 [INF] text`, through
//! `tracing`. `-D` enables debug lines, `-V` trace lines, `-T=false` drops the timestamp,
//! `-l FILE` appends to a file instead of stderr. The level, the timestamp and the file can
//! change while running ([`LogHandle`]: config reload, and SIGUSR1 to reopen a rotated file).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

struct NatsFormat {
    pid: u32,
    logtime: Arc<AtomicBool>,
}

/// The UTC civil date (`YYYY-MM-DD`) of `secs` since the Unix epoch, and the seconds into
/// that day.
pub(crate) fn civil(secs: u64) -> (String, u64) {
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), rem as u64)
}

/// Formats a UTC timestamp as nats-server does (`2006/01/02 15:04:05.000000`).
fn timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, rem) = civil(d.as_secs());
    format!(
        "{} {:02}:{:02}:{:02}.{:06}",
        date.replace('-', "/"),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

impl<S, N> FormatEvent<S, N> for NatsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERR",
            Level::WARN => "WRN",
            Level::INFO => "INF",
            Level::DEBUG => "DBG",
            Level::TRACE => "TRC",
        };
        write!(w, "[{}] ", self.pid)?;
        if self.logtime.load(Ordering::Relaxed) {
            write!(w, "{} ", timestamp(SystemTime::now()))?;
        }
        write!(w, "[{level}] ")?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Whether protocol tracing (`-V`) is on. The message path asks this instead of
/// `tracing::enabled!`, which goes through the subscriber when the level can change at run
/// time (a relaxed load of one flag here).
static TRACE_ON: AtomicBool = AtomicBool::new(false);

/// True when `-V` (or `trace: true`) is in force.
#[inline]
pub fn trace_on() -> bool {
    TRACE_ON.load(Ordering::Relaxed)
}

/// Where log lines go: stderr, or a file opened for appending.
enum Sink {
    Stderr,
    File(PathBuf, std::fs::File),
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer `tracing` asks for on every event: the current sink, behind a lock that only
/// log lines (never the message path) take.
#[derive(Clone)]
struct SinkWriter(Arc<Mutex<Sink>>);

impl io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sink = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *sink {
            Sink::Stderr => io::stderr().write(buf),
            Sink::File(_, f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Changes the running logger: what a config reload and SIGUSR1 (reopen) need.
pub struct LogHandle {
    level: reload::Handle<LevelFilter, Registry>,
    logtime: Arc<AtomicBool>,
    sink: Arc<Mutex<Sink>>,
}

fn level_for(debug: bool, trace: bool) -> LevelFilter {
    if trace {
        LevelFilter::TRACE
    } else if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    }
}

impl LogHandle {
    /// Applies `-D`/`-V`/`logtime`/`-l` as a reload does. A log file that cannot be opened
    /// leaves the current sink in place and returns the error.
    pub fn apply(
        &self,
        debug: bool,
        trace: bool,
        logtime: bool,
        file: Option<&Path>,
    ) -> io::Result<()> {
        let _ = self.level.modify(|l| *l = level_for(debug, trace));
        TRACE_ON.store(trace, Ordering::Relaxed);
        self.logtime.store(logtime, Ordering::Relaxed);
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (&*sink, file) {
            (Sink::Stderr, None) => true,
            (Sink::File(p, _), Some(f)) => p == f,
            _ => false,
        };
        if !same {
            *sink = match file {
                Some(path) => Sink::File(path.to_path_buf(), open_append(path)?),
                None => Sink::Stderr,
            };
        }
        Ok(())
    }

    /// Reopens the log file (after rotation moved it away); stderr needs nothing.
    pub fn reopen(&self) -> io::Result<()> {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Sink::File(path, f) = &mut *sink {
            *f = open_append(path)?;
        }
        Ok(())
    }
}

/// Installs the global logger and returns the handle that changes it later. Fails only if
/// the log file cannot be opened. A logger already installed (tests) is left alone.
pub fn init(debug: bool, trace: bool, logtime: bool, file: Option<&Path>) -> io::Result<LogHandle> {
    let sink = match file {
        Some(path) => Sink::File(path.to_path_buf(), open_append(path)?),
        None => Sink::Stderr,
    };
    let sink = Arc::new(Mutex::new(sink));
    let logtime = Arc::new(AtomicBool::new(logtime));
    TRACE_ON.store(trace, Ordering::Relaxed);
    let (filter, level) = reload::Layer::new(level_for(debug, trace));
    let format = NatsFormat {
        pid: std::process::id(),
        logtime: logtime.clone(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(format)
                .with_writer(SinkWriter(sink.clone())),
        )
        .try_init();
    Ok(LogHandle {
        level,
        logtime,
        sink,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_like_nats_server() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_319_279_000_123);
        assert_eq!(timestamp(t), "2026/11/22 03:47:59.000123");
        assert_eq!(timestamp(UNIX_EPOCH), "1970/01/01 00:00:00.000000");
    }
}
