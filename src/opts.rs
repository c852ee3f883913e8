//! Server options: the command-line flags and the TOML config file, turned
//! into one validated [`Options`].
//!
//! This module owns:
//! - the command-line grammar ([`parse_args`]), which follows Go's `flag`
//!   package exactly as `nats-server` uses it: one or two dashes, `-f v` or
//!   `-f=v`, booleans that never consume the next argument, and Go's error
//!   texts (`flag provided but not defined: -xyz`, ...);
//! - the TOML config file (`-c FILE`), whose keys are the `nats-server`
//!   option names; an unknown or mistyped key is reported with the file name
//!   and line number;
//! - defaults equal to `nats-server`'s, and the cross-option validation that
//!   `nats-server` does at start-up;
//! - the help text ([`usage`]).
//!
//! Flags override the config file. Flags and keys whose feature Tern does not
//! have yet are refused with an error naming them, so that a configuration
//! never silently runs without something it asked for.
//!
//! The only I/O here is reading the config file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::conf;
use toml::Spanned;

/// Default client port, as `nats-server`.
pub const DEFAULT_PORT: u16 = 4222;
/// Default bind address.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Default maximum message payload (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;
/// Default maximum bytes pending for one client (64 MiB).
pub const DEFAULT_MAX_PENDING: u64 = 64 * 1024 * 1024;
/// Default maximum protocol control line.
pub const DEFAULT_MAX_CONTROL_LINE: u32 = 4096;
/// Default maximum number of client connections.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64 * 1024;
/// Default interval between server PINGs.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(120);
/// Default number of unanswered PINGs before a client is dropped.
pub const DEFAULT_PING_MAX: u32 = 2;
/// Default deadline for flushing data to a client.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Tern only: an idle shard polls this long after its last work before it parks. Parking and
/// being woken costs a few µs of syscalls and scheduler latency on every message of a
/// request/reply exchange; a short spin catches the reply instead (Go's scheduler, and so
/// nats-server, spins briefly before blocking in the poller too). An idle server never spins.
pub const DEFAULT_SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
/// How long lame duck mode takes to close all clients (nats-server's default).
pub const DEFAULT_LAME_DUCK_DURATION: Duration = Duration::from_secs(120);
/// The shortest `lame_duck_duration` nats-server accepts.
pub const MIN_LAME_DUCK_DURATION: Duration = Duration::from_secs(30);
/// How long lame duck mode waits before it starts closing clients.
pub const DEFAULT_LAME_DUCK_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Largest `max_payload` Tern accepts (64 MiB).
pub const MAX_PAYLOAD_MAX_SIZE: u32 = 64 * 1024 * 1024;

/// Everything the server needs to know to start, after defaults, the config
/// file and the command line have been merged and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Address to bind the client listener to.
    pub host: String,
    /// Client port; 0 means a random port (`-p -1` / `port = -1`).
    pub port: u16,
    /// Server name; `None` lets the server pick one.
    pub server_name: Option<String>,
    /// Maximum message payload in bytes.
    pub max_payload: u32,
    /// Maximum bytes pending for one client before it is a slow consumer.
    pub max_pending: u64,
    /// Maximum length of a protocol control line.
    pub max_control_line: u32,
    /// Maximum number of client connections.
    pub max_connections: u32,
    /// Maximum subscriptions per connection; 0 means unlimited.
    pub max_subscriptions: u32,
    /// Interval between server PINGs.
    pub ping_interval: Duration,
    /// Unanswered PINGs before a client is dropped.
    pub ping_max: u32,
    /// Deadline for flushing data to a client.
    pub write_deadline: Duration,
    /// Debug logging.
    pub debug: bool,
    /// Protocol tracing.
    pub trace: bool,
    /// Timestamp log lines.
    pub logtime: bool,
    /// Log to this file instead of standard error.
    pub log_file: Option<PathBuf>,
    /// Write the process id to this file.
    pub pid_file: Option<PathBuf>,
    /// Write a `<executable>_<pid>.ports` file in this directory.
    pub ports_file_dir: Option<PathBuf>,
    /// The config file that was loaded, if any.
    pub config_file: Option<PathBuf>,
    /// Tern only: number of shards; `None` means one per available core.
    pub shards: Option<usize>,
    /// Tern only: every shard accepts on its own `SO_REUSEPORT` socket
    /// instead of connections being handed off round-robin.
    pub reuseport: bool,
    /// Tern only: how long an idle shard spins before parking; zero parks at once.
    pub spin_before_park: Duration,
    /// Do not advertise header support to clients.
    pub no_header_support: bool,
    /// `-t`: check the configuration and exit.
    pub check_config: bool,
    /// Monitoring listener host; `None` means the client `host`.
    pub http_host: Option<String>,
    /// Monitoring port (`-m`, `http_port`, `http`); `None` disables it, 0 is random.
    pub http_port: Option<u16>,
    /// Prefix of every monitoring path.
    pub http_base_path: String,
    /// Lame duck mode: time to close every client in.
    pub lame_duck_duration: Duration,
    /// Lame duck mode: time before the first client is closed.
    pub lame_duck_grace_period: Duration,
    /// `tls { ... }` and the `--tls*` flags; `None` means plaintext clients.
    pub tls: Option<crate::tls::TlsOptions>,
    /// With `tls`: clients may also connect without TLS (INFO says `tls_available`).
    pub allow_non_tls: bool,
    /// `cluster { ... }` and the route flags; `None`: no cluster port, no routes.
    pub cluster: Option<crate::route::ClusterOptions>,
    /// `authorization { ... }`, `no_auth_user` and `--user/--pass/--auth`.
    pub auth: crate::auth::AuthOptions,
    /// `accounts { ... }`, `system_account`, `no_system_account` (the accounts' users are
    /// in `auth`).
    pub accounts: crate::accounts::AccountsOptions,
    /// The command line these options came from, so a reload can re-read the config file
    /// and apply the same flags on top of it, as nats-server does.
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            server_name: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_pending: DEFAULT_MAX_PENDING,
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_subscriptions: 0,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_max: DEFAULT_PING_MAX,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            debug: false,
            trace: false,
            logtime: true,
            log_file: None,
            pid_file: None,
            ports_file_dir: None,
            config_file: None,
            shards: None,
            reuseport: false,
            spin_before_park: DEFAULT_SPIN_BEFORE_PARK,
            no_header_support: false,
            check_config: false,
            http_host: None,
            http_port: None,
            http_base_path: String::new(),
            lame_duck_duration: DEFAULT_LAME_DUCK_DURATION,
            lame_duck_grace_period: DEFAULT_LAME_DUCK_GRACE_PERIOD,
            auth: crate::auth::AuthOptions::default(),
            accounts: crate::accounts::AccountsOptions::default(),
            tls: None,
            allow_non_tls: false,
            cluster: None,
            args: Vec::new(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run (or, with `check_config`, check) the server with these options.
    Run(Box<Options>),
    /// `-h`, `--help` or `help`: print [`usage`] and exit.
    Help,
    /// `-v`, `--version` or `version`: print the version and exit.
    Version,
    /// `--signal <cmd>[=<pid>]`: send a signal to a running server and exit.
    /// Without `=<pid>`, the pid comes from `-P` or from the process list.
    Signal {
        cmd: String,
        pid: Option<String>,
        pid_file: Option<PathBuf>,
    },
}

/// Why the options could not be built.
#[derive(Debug)]
pub enum OptsError {
    /// A flag that is not defined (Go: `flag provided but not defined: -xyz`).
    UnknownFlag(String),
    /// A value flag given without a value (Go: `flag needs an argument: -p`).
    MissingValue(String),
    /// A flag value that does not parse (Go: `invalid value "abc" for flag -p:
    /// parse error`).
    InvalidValue {
        /// The flag name as written, without dashes.
        flag: String,
        /// The value given.
        value: String,
        /// Why it was refused (`parse error`, `value out of range`).
        reason: String,
    },
    /// An argument that is not a flag at all (Go: `bad flag syntax: ---x`).
    BadFlagSyntax(String),
    /// A `nats-server` flag whose feature Tern does not have yet.
    UnsupportedFlag(String),
    /// A positional argument other than `help` or `version`.
    UnrecognizedCommand(String),
    /// The config file could not be read.
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or has an unknown, unsupported or
    /// mistyped key.
    Config {
        /// The config file (an included file, if the error is in one).
        path: PathBuf,
        /// 1-based line of the offending key or syntax error.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// The merged options are inconsistent (e.g. `max_payload` above
    /// `max_pending`).
    Invalid(String),
}

impl fmt::Display for OptsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptsError::UnknownFlag(name) => write!(f, "flag provided but not defined: -{name}"),
            OptsError::MissingValue(name) => write!(f, "flag needs an argument: -{name}"),
            OptsError::InvalidValue {
                flag,
                value,
                reason,
            } => write!(f, "invalid value {value:?} for flag -{flag}: {reason}"),
            OptsError::BadFlagSyntax(arg) => write!(f, "bad flag syntax: {arg}"),
            OptsError::UnsupportedFlag(name) => {
                write!(f, "flag -{name} is not supported by Tern yet")
            }
            OptsError::UnrecognizedCommand(arg) => write!(f, "unrecognized command: {arg:?}"),
            OptsError::Io { path, source } => {
                write!(f, "error opening config file {}: {source}", path.display())
            }
            OptsError::Config {
                path,
                line,
                col,
                message,
            } => write!(f, "{}:{line}:{col}: {message}", path.display()),
            OptsError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl From<conf::ConfError> for OptsError {
    fn from(e: conf::ConfError) -> Self {
        match e {
            conf::ConfError::Syntax { pos, message } => OptsError::Config {
                path: pos.file.to_path_buf(),
                line: pos.line as usize,
                col: pos.col as usize,
                message,
            },
            conf::ConfError::Io {
                path,
                source,
                included_at: Some(at),
            } => OptsError::Config {
                path: at.file.to_path_buf(),
                line: at.line as usize,
                col: at.col as usize,
                message: format!("error opening include file {}: {source}", path.display()),
            },
            conf::ConfError::Io {
                path,
                source,
                included_at: None,
            } => OptsError::Io { path, source },
        }
    }
}

impl std::error::Error for OptsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OptsError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Whether a flag takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `-f`, `-f=true`, `-f=false`; never consumes the next argument.
    Bool,
    /// `-f v` or `-f=v`.
    Value,
}

/// What a flag does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Host,
    Port,
    ServerName,
    PidFile,
    Config,
    CheckConfig,
    PortsFileDir,
    LogFile,
    LogTime,
    Debug,
    Trace,
    DebugTrace,
    Help,
    Version,
    Shards,
    ReusePort,
    SpinBeforePark,
    HttpPort,
    Signal,
    User,
    Pass,
    Token,
    Tls,
    TlsVerify,
    TlsCert,
    TlsKey,
    TlsCaCert,
    Routes,
    ClusterListen,
    ClusterName,
    ClusterAdvertise,
    ConnectRetries,
    NoAdvertise,
    /// Accepted and ignored, any string (as `nats-server` without the feature).
    IgnoredStr,
    /// Accepted and ignored, must be an integer.
    IgnoredInt,
    /// Refused: Tern does not have the feature yet.
    Unsupported,
}

/// One flag definition: its names (without dashes), kind and effect.
struct FlagDef {
    names: &'static [&'static str],
    kind: Kind,
    target: Target,
}

const fn def(names: &'static [&'static str], kind: Kind, target: Target) -> FlagDef {
    FlagDef {
        names,
        kind,
        target,
    }
}

/// Every flag Tern knows, mirroring `nats-server --help`.
static FLAGS: &[FlagDef] = &[
    // Server options.
    def(&["a", "addr", "net"], Kind::Value, Target::Host),
    def(&["p", "port"], Kind::Value, Target::Port),
    def(
        &["n", "name", "server_name"],
        Kind::Value,
        Target::ServerName,
    ),
    def(&["P", "pid"], Kind::Value, Target::PidFile),
    def(&["c", "config"], Kind::Value, Target::Config),
    def(&["t"], Kind::Bool, Target::CheckConfig),
    def(&["ports_file_dir"], Kind::Value, Target::PortsFileDir),
    def(&["m", "http_port"], Kind::Value, Target::HttpPort),
    def(&["ms", "https_port"], Kind::Value, Target::Unsupported),
    def(&["sl", "signal"], Kind::Value, Target::Signal),
    def(&["client_advertise"], Kind::Value, Target::Unsupported),
    // Logging options.
    def(&["l", "log"], Kind::Value, Target::LogFile),
    def(&["T", "logtime"], Kind::Bool, Target::LogTime),
    def(&["D", "debug"], Kind::Bool, Target::Debug),
    def(&["V", "trace", "VV"], Kind::Bool, Target::Trace),
    def(&["DV", "DVV"], Kind::Bool, Target::DebugTrace),
    def(&["s", "syslog"], Kind::Bool, Target::Unsupported),
    def(&["r", "remote_syslog"], Kind::Value, Target::Unsupported),
    def(&["log_size_limit"], Kind::Value, Target::IgnoredInt),
    def(&["max_traced_msg_len"], Kind::Value, Target::IgnoredInt),
    // JetStream options.
    def(&["js", "jetstream"], Kind::Bool, Target::Unsupported),
    def(&["sd", "store_dir"], Kind::Value, Target::IgnoredStr),
    // Authorization options.
    def(&["user"], Kind::Value, Target::User),
    def(&["pass"], Kind::Value, Target::Pass),
    def(&["auth"], Kind::Value, Target::Token),
    // TLS options.
    def(&["tls"], Kind::Bool, Target::Tls),
    def(&["tlsverify"], Kind::Bool, Target::TlsVerify),
    def(&["tlscert"], Kind::Value, Target::TlsCert),
    def(&["tlskey"], Kind::Value, Target::TlsKey),
    def(&["tlscacert"], Kind::Value, Target::TlsCaCert),
    // Cluster options.
    def(&["routes"], Kind::Value, Target::Routes),
    def(
        &["cluster", "cluster_listen"],
        Kind::Value,
        Target::ClusterListen,
    ),
    def(&["cluster_name"], Kind::Value, Target::ClusterName),
    def(
        &["cluster_advertise"],
        Kind::Value,
        Target::ClusterAdvertise,
    ),
    def(&["connect_retries"], Kind::Value, Target::ConnectRetries),
    def(&["no_advertise"], Kind::Bool, Target::NoAdvertise),
    // Profiling options.
    def(&["profile"], Kind::Value, Target::Unsupported),
    // Common options.
    def(&["h", "help"], Kind::Bool, Target::Help),
    def(&["v", "version"], Kind::Bool, Target::Version),
    def(&["help_tls"], Kind::Bool, Target::Unsupported),
    // Tern options.
    def(&["shards"], Kind::Value, Target::Shards),
    def(&["reuseport"], Kind::Bool, Target::ReusePort),
    def(&["spin_before_park"], Kind::Value, Target::SpinBeforePark),
];

fn lookup_flag(name: &str) -> Option<&'static FlagDef> {
    FLAGS.iter().find(|d| d.names.contains(&name))
}

/// One setting from the command line, applied on top of the config file.
#[derive(Debug, Clone)]
enum Setting {
    Host(String),
    Port(u16),
    ServerName(String),
    PidFile(PathBuf),
    PortsFileDir(PathBuf),
    LogFile(PathBuf),
    LogTime(bool),
    Debug(bool),
    Trace(bool),
    CheckConfig(bool),
    Shards(usize),
    ReusePort(bool),
    SpinBeforePark(Duration),
    HttpPort(u16),
    User(String),
    Pass(String),
    Token(String),
    Tls(bool),
    TlsVerify(bool),
    TlsCert(PathBuf),
    TlsKey(PathBuf),
    TlsCaCert(PathBuf),
    Routes(Vec<crate::route::RouteUrl>),
    ClusterListen(crate::route::RouteUrl),
    ClusterName(String),
    ClusterAdvertise(String),
    ConnectRetries(u32),
    NoAdvertise(bool),
}

impl Setting {
    fn apply(self, o: &mut Options) {
        match self {
            Setting::Host(v) => o.host = v,
            Setting::Port(v) => o.port = v,
            Setting::ServerName(v) => o.server_name = Some(v),
            Setting::PidFile(v) => o.pid_file = Some(v),
            Setting::PortsFileDir(v) => o.ports_file_dir = Some(v),
            Setting::LogFile(v) => o.log_file = Some(v),
            Setting::LogTime(v) => o.logtime = v,
            Setting::Debug(v) => o.debug = v,
            Setting::Trace(v) => o.trace = v,
            Setting::CheckConfig(v) => o.check_config = v,
            Setting::Shards(v) => o.shards = Some(v),
            Setting::ReusePort(v) => o.reuseport = v,
            Setting::SpinBeforePark(v) => o.spin_before_park = v,
            Setting::HttpPort(v) => o.http_port = Some(v),
            Setting::User(v) => o.auth.user = Some(v),
            Setting::Pass(v) => o.auth.password = Some(v),
            Setting::Token(v) => o.auth.token = Some(v),
            // As in nats-server, any of the TLS flags turns TLS on.
            Setting::Tls(v) => {
                if v {
                    o.tls.get_or_insert_with(Default::default);
                }
            }
            Setting::TlsVerify(v) => o.tls.get_or_insert_with(Default::default).verify = v,
            Setting::TlsCert(v) => o.tls.get_or_insert_with(Default::default).cert_file = Some(v),
            Setting::TlsKey(v) => o.tls.get_or_insert_with(Default::default).key_file = Some(v),
            Setting::TlsCaCert(v) => o.tls.get_or_insert_with(Default::default).ca_file = Some(v),
            Setting::Routes(v) => o.cluster.get_or_insert_with(Default::default).routes = v,
            Setting::ClusterListen(u) => {
                let c = o.cluster.get_or_insert_with(Default::default);
                c.host = Some(u.host);
                c.port = u.port;
                if u.user.is_some() {
                    c.user = u.user;
                    c.password = u.pass;
                }
            }
            Setting::ClusterName(v) => {
                o.cluster.get_or_insert_with(Default::default).name = Some(v)
            }
            Setting::ClusterAdvertise(v) => {
                o.cluster.get_or_insert_with(Default::default).advertise = Some(v)
            }
            Setting::ConnectRetries(v) => {
                o.cluster
                    .get_or_insert_with(Default::default)
                    .connect_retries = v
            }
            Setting::NoAdvertise(v) => {
                o.cluster.get_or_insert_with(Default::default).no_advertise = v
            }
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b` prefixes,
/// a leading `0` for octal, `_` separators only after a prefix. The error is
/// Go's reason text.
fn parse_go_int(s: &str) -> Result<i64, &'static str> {
    const SYNTAX: &str = "parse error";
    const RANGE: &str = "value out of range";
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    let digits: String = if prefixed {
        digits.chars().filter(|&c| c != '_').collect()
    } else {
        digits.to_string()
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(SYNTAX);
    }
    let mag = u64::from_str_radix(&digits, radix).map_err(|_| RANGE)?;
    if neg {
        if mag > i64::MAX as u64 + 1 {
            return Err(RANGE);
        }
        Ok((mag as i64).wrapping_neg())
    } else {
        i64::try_from(mag).map_err(|_| RANGE)
    }
}

/// A port as `nats-server` reads it: -1 means random (0 here), 0 means the
/// default port.
fn port_from_i64(v: i64) -> Option<u16> {
    match v {
        -1 => Some(0),
        0 => Some(DEFAULT_PORT),
        1..=65535 => u16::try_from(v).ok(),
        _ => None,
    }
}

/// Parses the command line (without `argv[0]`).
///
/// `-v` and `-h` win over everything else and are answered before any config
/// file is read. Otherwise the config file named by `-c` is loaded, every
/// flag is applied on top of it, and the result is validated.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, OptsError> {
    let args: Vec<String> = args.into_iter().collect();
    let mut settings: Vec<Setting> = Vec::new();
    let mut config: Option<PathBuf> = None;
    let mut help = false;
    let mut version = false;
    let mut signal = None;

    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        i += 1;
        let dashes = if arg.starts_with("--") { 2 } else { 1 };
        if dashes == 2 && arg.len() == 2 {
            break; // "--" ends the flags.
        }
        let spec = &arg[dashes..];
        if spec.is_empty() || spec.starts_with('-') || spec.starts_with('=') {
            return Err(OptsError::BadFlagSyntax(arg.clone()));
        }
        let (name, inline) = match spec.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (spec, None),
        };
        let flag = lookup_flag(name).ok_or_else(|| OptsError::UnknownFlag(name.to_string()))?;
        if flag.target == Target::Unsupported {
            return Err(OptsError::UnsupportedFlag(name.to_string()));
        }
        let invalid = |value: &str, reason: &str| OptsError::InvalidValue {
            flag: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };

        if flag.kind == Kind::Bool {
            let on = match inline {
                None => true,
                Some(v) => parse_go_bool(v).ok_or_else(|| invalid(v, "parse error"))?,
            };
            match flag.target {
                Target::CheckConfig => settings.push(Setting::CheckConfig(on)),
                Target::LogTime => settings.push(Setting::LogTime(on)),
                Target::Debug => settings.push(Setting::Debug(on)),
                Target::Trace => settings.push(Setting::Trace(on)),
                Target::DebugTrace => {
                    settings.push(Setting::Debug(on));
                    settings.push(Setting::Trace(on));
                }
                Target::Help => help = on,
                Target::Version => version = on,
                Target::ReusePort => settings.push(Setting::ReusePort(on)),
                Target::Tls => settings.push(Setting::Tls(on)),
                Target::TlsVerify => settings.push(Setting::TlsVerify(on)),
                Target::NoAdvertise => settings.push(Setting::NoAdvertise(on)),
                _ => {}
            }
            continue;
        }

        let value: String = match inline {
            Some(v) => v.to_string(),
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(OptsError::MissingValue(name.to_string())),
        };
        match flag.target {
            Target::Host => settings.push(Setting::Host(value)),
            Target::Port | Target::HttpPort => {
                let n = parse_go_int(&value).map_err(|r| invalid(&value, r))?;
                let port = port_from_i64(n).ok_or_else(|| invalid(&value, "value out of range"))?;
                settings.push(if flag.target == Target::Port {
                    Setting::Port(port)
                } else {
                    Setting::HttpPort(port)
                });
            }
            Target::Signal => {
                let (cmd, pid) = match value.split_once('=') {
                    Some((c, p)) => (c.to_string(), Some(p.to_string())),
                    None => (value.clone(), None),
                };
                signal = Some((cmd, pid));
            }
            Target::ServerName => settings.push(Setting::ServerName(value)),
            Target::User => settings.push(Setting::User(value)),
            Target::Pass => settings.push(Setting::Pass(value)),
            Target::Token => settings.push(Setting::Token(value)),
            Target::TlsCert => settings.push(Setting::TlsCert(value.into())),
            Target::TlsKey => settings.push(Setting::TlsKey(value.into())),
            Target::TlsCaCert => settings.push(Setting::TlsCaCert(value.into())),
            Target::PidFile => settings.push(Setting::PidFile(value.into())),
            Target::Config => config = Some(value.into()),
            Target::PortsFileDir => settings.push(Setting::PortsFileDir(value.into())),
            Target::LogFile => settings.push(Setting::LogFile(value.into())),
            Target::Shards => {
                let n = parse_go_int(&value).map_err(|r| invalid(&value, r))?;
                let n = usize::try_from(n).map_err(|_| invalid(&value, "value out of range"))?;
                settings.push(Setting::Shards(n));
            }
            Target::SpinBeforePark => {
                let d = parse_duration(&value).map_err(|_| invalid(&value, "parse error"))?;
                settings.push(Setting::SpinBeforePark(d));
            }
            Target::IgnoredInt => {
                parse_go_int(&value).map_err(|r| invalid(&value, r))?;
            }
            Target::Routes => {
                let urls = value
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(crate::route::RouteUrl::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(&value, &e))?;
                settings.push(Setting::Routes(urls));
            }
            Target::ClusterListen => {
                // `-1` as the port picks a free one, as in nats-server.
                let v = value.replace(":-1", ":0");
                let u = crate::route::RouteUrl::parse(&v).map_err(|e| invalid(&value, &e))?;
                settings.push(Setting::ClusterListen(u));
            }
            Target::ClusterName => settings.push(Setting::ClusterName(value)),
            Target::ClusterAdvertise => settings.push(Setting::ClusterAdvertise(value)),
            Target::ConnectRetries => {
                let n = parse_go_int(&value).map_err(|r| invalid(&value, r))?;
                let n = u32::try_from(n).map_err(|_| invalid(&value, "value out of range"))?;
                settings.push(Setting::ConnectRetries(n));
            }
            _ => {}
        }
    }

    // Leftover positional arguments: nats-server accepts only these two.
    for arg in &args[i..] {
        match arg.as_str() {
            "version" => version = true,
            "help" => help = true,
            _ => return Err(OptsError::UnrecognizedCommand(arg.clone())),
        }
    }
    if version {
        return Ok(Command::Version);
    }
    if help {
        return Ok(Command::Help);
    }
    if let Some((cmd, pid)) = signal {
        let pid_file = settings.iter().rev().find_map(|s| match s {
            Setting::PidFile(p) => Some(p.clone()),
            _ => None,
        });
        return Ok(Command::Signal { cmd, pid, pid_file });
    }

    let mut opts = Options {
        args: args.clone(),
        ..Options::default()
    };
    if let Some(path) = config {
        opts.apply_config_file(&path)?;
    }
    for s in settings {
        s.apply(&mut opts);
    }
    opts.validate()?;
    Ok(Command::Run(Box::new(opts)))
}

/// The help text, in `nats-server --help`'s layout, listing what Tern
/// supports.
pub fn usage() -> &'static str {
    "\
Usage: tern [options]

Server Options:
    -a, --addr, --net <host>         Bind to host address (default: 0.0.0.0)
    -p, --port <port>                Use port for clients (default: 4222)
    -n, --name
        --server_name <server_name>  Server name (default: auto)
    -P, --pid <file>                 File to store PID
    -c, --config <file>              Configuration file
    -t                               Test configuration and exit
        --ports_file_dir <dir>       Creates a ports file in the specified directory (<executable_name>_<pid>.ports).
    -m, --http_port <port>           Use port for http monitoring
        --signal <signal>[=<pid>]    Send signal to tern process (ldm, stop, quit, term, reopen, reload)

Logging Options:
    -l, --log <file>                 File to redirect log output
    -T, --logtime                    Timestamp log entries (default: true)
    -D, --debug                      Enable debugging output
    -V, --trace                      Trace the raw protocol
    -VV                              Verbose trace (same as -V)
    -DV                              Debug and trace
    -DVV                             Debug and verbose trace (same as -DV)

TLS Options:
        --tls                        Enable TLS, do not verify clients (default: false)
        --tlscert <file>             Server certificate file
        --tlskey <file>              Private key for server certificate
        --tlsverify                  Enable TLS, verify client certificates
        --tlscacert <file>           Client certificate CA for verification

Authorization Options:
        --user <user>                User required for connections
        --pass <password>            Password required for connections
        --auth <token>               Authorization token required for connections

Common Options:
    -h, --help                       Show this message
    -v, --version                    Show version

Tern Options:
        --shards <n>                 Number of shards (default: one per available core)
        --reuseport                  Accept on an SO_REUSEPORT socket in every shard
        --spin_before_park <dur>     Spin this long before an idle shard parks (default 50us, 0 = never)
"
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// Checks that going from `old` to `new` changes only options that may change at run time
/// (nats-server's reload rules). The error names the first option that may not, with its
/// nats-server field name: `config reload not supported for Port: old=4222, new=4223`.
pub fn check_reload(old: &Options, new: &Options) -> Result<(), OptsError> {
    fn same<T: PartialEq + GoValue>(name: &str, a: &T, b: &T) -> Result<(), OptsError> {
        if a == b {
            Ok(())
        } else {
            Err(OptsError::Invalid(format!(
                "config reload not supported for {name}: old={}, new={}",
                a.go(),
                b.go()
            )))
        }
    }
    same("Host", &old.host, &new.host)?;
    same("Port", &old.port, &new.port)?;
    same("ServerName", &old.server_name, &new.server_name)?;
    same("MaxPending", &old.max_pending, &new.max_pending)?;
    same("MaxSubs", &old.max_subscriptions, &new.max_subscriptions)?;
    same(
        "NoHeaderSupport",
        &old.no_header_support,
        &new.no_header_support,
    )?;
    same("HTTPHost", &old.http_host, &new.http_host)?;
    same("HTTPPort", &old.http_port, &new.http_port)?;
    same("HTTPBasePath", &old.http_base_path, &new.http_base_path)?;
    same(
        "LameDuckDuration",
        &old.lame_duck_duration,
        &new.lame_duck_duration,
    )?;
    same(
        "LameDuckGracePeriod",
        &old.lame_duck_grace_period,
        &new.lame_duck_grace_period,
    )?;
    same("Shards", &old.shards, &new.shards)?;
    same("ReusePort", &old.reuseport, &new.reuseport)?;
    same(
        "SpinBeforePark",
        &old.spin_before_park,
        &new.spin_before_park,
    )?;
    // nats-server reloads TLS; Tern builds its TLS configuration once, at start-up.
    if old.tls != new.tls {
        return Err(OptsError::Invalid(
            "config reload not supported for TLSConfig (Tern reads TLS files at start-up)"
                .to_string(),
        ));
    }
    // nats-server reloads accounts too; Tern numbers its accounts once, at start-up. Their
    // users are part of the authorization setup, which does reload.
    if old.accounts != new.accounts {
        return Err(OptsError::Invalid(
            "config reload not supported for Accounts (Tern sets accounts, exports and imports at start-up)"
                .to_string(),
        ));
    }
    if old.cluster != new.cluster {
        return Err(OptsError::Invalid(
            "config reload not supported for Cluster (Tern sets routes at start-up)".to_string(),
        ));
    }
    // Reloadable: debug, trace, logtime, log_file, pid_file, ports_file_dir, max_connections,
    // max_payload, max_control_line, ping_interval, ping_max, write_deadline.
    Ok(())
}

/// A value as Go's `%v` prints it, for reload errors.
trait GoValue {
    fn go(&self) -> String;
}

macro_rules! go_display {
    ($($t:ty),*) => {$(
        impl GoValue for $t {
            fn go(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
go_display!(String, u16, u32, u64, usize, bool);

impl GoValue for Duration {
    fn go(&self) -> String {
        crate::monitor::go_duration(*self)
    }
}

impl<T: GoValue> GoValue for Option<T> {
    fn go(&self) -> String {
        self.as_ref().map_or_else(String::new, GoValue::go)
    }
}

// ---------------------------------------------------------------------------
// Sizes and durations
// ---------------------------------------------------------------------------

/// Parses a size as `nats-server`'s config parser does: a number with an
/// optional unit. `k`, `m`, `g`, `t` are powers of 1000; `kb`/`ki`/`kib`,
/// `mb`/`mi`/`mib`, `gb`/`gi`/`gib`, `tb`/`ti`/`tib` are powers of 1024.
/// Units are case-insensitive and may follow a space.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        return Err(format!("expected a size like \"64MB\", got {s:?}"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is out of range"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1000,
        "kb" | "ki" | "kib" => 1 << 10,
        "m" => 1000 * 1000,
        "mb" | "mi" | "mib" => 1 << 20,
        "g" => 1000 * 1000 * 1000,
        "gb" | "gi" | "gib" => 1 << 30,
        "t" => 1000 * 1000 * 1000 * 1000,
        "tb" | "ti" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

/// Parses a Go duration (`time.ParseDuration`): `2m`, `10s`, `500ms`, `50us`,
/// `1m30s`, `1.5h`, `0`. Units: `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`.
/// Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if let Some(r) = rest.strip_prefix('-') {
        if r == "0" {
            return Ok(Duration::ZERO);
        }
        return Err(format!("time: negative duration {s:?}"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_end);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let e = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(e)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_end = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale: u128 = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(invalid)?;
        // Fraction: at most 18 digits matter for nanosecond precision.
        let frac: String = frac_part.chars().take(18).collect();
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| invalid())?;
            let denom = 10u128.pow(frac.len() as u32);
            nanos = nanos.checked_add(f * scale / denom).ok_or_else(invalid)?;
        }
        total = total.checked_add(nanos).ok_or_else(invalid)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| invalid())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

// ---------------------------------------------------------------------------
// Config file
// ---------------------------------------------------------------------------

/// `nats-server` config keys for parts Tern does not have yet: a config that uses one is
/// refused with a message naming the part, never run without it.
const UNSUPPORTED_KEYS: &[(&str, &str)] = &[
    ("https", "HTTPS monitoring"),
    ("https_port", "HTTPS monitoring"),
    ("operator", "operator mode"),
    ("operators", "operator mode"),
    ("trusted", "operator mode"),
    ("trusted_keys", "operator mode"),
    ("resolver", "operator mode"),
    ("resolver_tls", "operator mode"),
    ("resolver_preload", "operator mode"),
    ("resolver_pinned_accounts", "operator mode"),
    ("ocsp", "TLS"),
    ("ocsp_cache", "TLS"),
    ("gateway", "gateways"),
    ("leafnodes", "leafnodes"),
    ("leaf", "leafnodes"),
    ("jetstream", "JetStream"),
    ("store_dir", "JetStream"),
    ("default_js_domain", "JetStream"),
    ("mqtt", "MQTT"),
    ("websocket", "websocket"),
    ("ws", "websocket"),
    ("mappings", "subject mappings"),
    ("maps", "subject mappings"),
    ("syslog", "syslog"),
    ("remote_syslog", "syslog"),
    ("client_advertise", "cluster advertisement"),
    ("prof_port", "profiling"),
];

/// `nats-server` keys that are accepted and have no effect in Tern (they tune parts of
/// nats-server that Tern does differently).
const INERT_KEYS: &[&str] = &[
    "connect_error_reports",
    "reconnect_error_reports",
    "max_traced_msg_len",
    "trace_verbose",
    "logtime_utc",
    "log_size_limit",
    "logfile_size_limit",
    "logfile_max_num",
    "disable_sublist_cache",
    "no_fast_producer_stall",
    "server_tags",
    "max_sub_tokens",
];

/// One config value with what is needed to report errors about it.
struct Entry<'a> {
    key: &'a str,
    key_pos: &'a conf::Pos,
    item: &'a conf::Item,
}

impl Entry<'_> {
    /// An error about the value (located at the value).
    fn err(&self, message: String) -> OptsError {
        Self::located(&self.item.pos, message)
    }

    /// An error about the key itself (located at the key).
    fn key_err(&self, message: String) -> OptsError {
        Self::located(self.key_pos, message)
    }

    fn located(p: &conf::Pos, message: String) -> OptsError {
        OptsError::Config {
            path: p.file.to_path_buf(),
            line: p.line as usize,
            col: p.col as usize,
            message,
        }
    }

    fn wrong_type(&self, expected: &str) -> OptsError {
        self.err(format!(
            "option {:?} must be {expected}, got {}",
            self.key,
            self.item.value.type_name()
        ))
    }

    fn invalid(&self, why: String) -> OptsError {
        self.err(format!("invalid value for {:?}: {why}", self.key))
    }

    fn string(&self) -> Result<String, OptsError> {
        match &self.item.value {
            conf::Value::Str(s) => Ok(s.clone()),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn boolean(&self) -> Result<bool, OptsError> {
        match &self.item.value {
            conf::Value::Bool(b) => Ok(*b),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    /// An integer (the NATS format's size suffixes are already applied) or a size string.
    fn size(&self) -> Result<u64, OptsError> {
        match &self.item.value {
            conf::Value::Int(n) => {
                u64::try_from(*n).map_err(|_| self.invalid(format!("{n} is negative")))
            }
            conf::Value::Str(s) => parse_size(s).map_err(|e| self.invalid(e)),
            _ => Err(self.wrong_type("an integer or a size string")),
        }
    }

    fn size_u32(&self) -> Result<u32, OptsError> {
        let n = self.size()?;
        u32::try_from(n).map_err(|_| self.invalid(format!("{n} is too big")))
    }

    /// Integer seconds (as nats-server accepts for back-compat) or a Go duration string.
    fn duration(&self) -> Result<Duration, OptsError> {
        match &self.item.value {
            conf::Value::Int(n) => u64::try_from(*n)
                .map(Duration::from_secs)
                .map_err(|_| self.invalid(format!("{n} is negative"))),
            conf::Value::Str(s) => parse_duration(s).map_err(|e| self.invalid(e)),
            _ => Err(self.wrong_type("integer seconds or a duration string")),
        }
    }

    /// A `timeout` (authorization, TLS): seconds, possibly fractional (`0.5`), or a duration.
    fn timeout(&self) -> Result<Duration, OptsError> {
        match &self.item.value {
            conf::Value::Float(f) if *f >= 0.0 => Ok(Duration::from_secs_f64(*f)),
            _ => self.duration(),
        }
    }

    fn port(&self) -> Result<u16, OptsError> {
        match &self.item.value {
            conf::Value::Int(n) => port_from_i64(*n)
                .ok_or_else(|| self.invalid(format!("port {n} is not between -1 and 65535"))),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    fn path(&self) -> Result<PathBuf, OptsError> {
        self.string().map(PathBuf::from)
    }

    /// `host:port` (either part may be empty) or a bare port.
    fn listen(&self) -> Result<(Option<String>, u16), OptsError> {
        if let conf::Value::Int(_) = self.item.value {
            return Ok((None, self.port()?));
        }
        let s = self.string()?;
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| self.invalid(format!("{s:?} is not host:port")))?;
        let port = port
            .parse::<i64>()
            .ok()
            .and_then(port_from_i64)
            .ok_or_else(|| self.invalid(format!("bad port in {s:?}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(((!host.is_empty()).then(|| host.to_string()), port))
    }
}

/// The entries of a map value, as [`Entry`]s.
fn map_entries<'a>(e: &Entry<'a>) -> Result<Vec<Entry<'a>>, OptsError> {
    match &e.item.value {
        conf::Value::Map(m) => Ok(m
            .entries
            .iter()
            .map(|x| Entry {
                key: &x.key,
                key_pos: &x.key_pos,
                item: &x.item,
            })
            .collect()),
        _ => Err(e.wrong_type("a map")),
    }
}

/// A string, or an array of strings.
fn string_list(e: &Entry) -> Result<Vec<String>, OptsError> {
    match &e.item.value {
        conf::Value::Str(s) => Ok(vec![s.clone()]),
        conf::Value::Array(a) => a
            .iter()
            .map(|i| match &i.value {
                conf::Value::Str(s) => Ok(s.clone()),
                _ => Err(e.wrong_type("a list of strings")),
            })
            .collect(),
        _ => Err(e.wrong_type("a string or a list of strings")),
    }
}

/// `publish`/`subscribe`: a list (the allow list) or `{ allow, deny }`.
fn parse_rule(e: &Entry) -> Result<crate::auth::RuleOptions, OptsError> {
    let mut r = crate::auth::RuleOptions::default();
    if !matches!(e.item.value, conf::Value::Map(_)) {
        r.allow = Some(string_list(e)?);
        return Ok(r);
    }
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "allow" => r.allow = Some(string_list(&x)?),
            "deny" => r.deny = string_list(&x)?,
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    Ok(r)
}

fn parse_permissions(e: &Entry) -> Result<crate::auth::PermOptions, OptsError> {
    let mut p = crate::auth::PermOptions::default();
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "publish" | "pub" => p.publish = Some(parse_rule(&x)?),
            "subscribe" | "sub" => p.subscribe = Some(parse_rule(&x)?),
            "allow_responses" | "allow_response" => {
                p.allow_responses = parse_allow_responses(&x)?;
            }
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    Ok(p)
}

/// `users: [ { user, password | nkey, permissions, account } ]`, for `authorization` or for
/// the account named `account`.
fn parse_users(
    x: &Entry,
    account: Option<&str>,
    users: &mut Vec<crate::auth::UserOptions>,
) -> Result<(), OptsError> {
    let conf::Value::Array(list) = &x.item.value else {
        return Err(x.wrong_type("a list of users"));
    };
    for item in list {
        let ue = Entry {
            key: "users",
            key_pos: &item.pos,
            item,
        };
        let mut u = crate::auth::UserOptions {
            account: account.map(str::to_string),
            ..Default::default()
        };
        for f in map_entries(&ue)? {
            match f.key.to_ascii_lowercase().as_str() {
                "user" | "username" => u.user = Some(f.string()?),
                "password" | "pass" => u.password = Some(f.string()?),
                "nkey" => u.nkey = Some(f.string()?),
                "permissions" => u.permissions = Some(parse_permissions(&f)?),
                _ => return Err(f.key_err(format!("unknown field {:?}", f.key))),
            }
        }
        users.push(u);
    }
    Ok(())
}

/// `accounts { NAME: { users, exports, imports, default_permissions } }` (or a list of
/// names). Users go to the authorization setup, bound to their account.
fn parse_accounts(e: &Entry, o: &mut Options) -> Result<(), OptsError> {
    use crate::accounts::AccountOptions;
    if let conf::Value::Array(list) = &e.item.value {
        for item in list {
            let conf::Value::Str(name) = &item.value else {
                return Err(e.wrong_type("a map of accounts or a list of names"));
            };
            o.accounts.accounts.push(AccountOptions {
                name: name.clone(),
                ..Default::default()
            });
        }
        return Ok(());
    }
    for a in map_entries(e)? {
        let mut acc = AccountOptions {
            name: a.key.to_string(),
            ..Default::default()
        };
        let mut users = Vec::new();
        let mut default_permissions = None;
        for x in map_entries(&a)? {
            match x.key.to_ascii_lowercase().as_str() {
                "users" => parse_users(&x, Some(a.key), &mut users)?,
                "default_permissions" => default_permissions = Some(parse_permissions(&x)?),
                "exports" => {
                    for item in list_items(&x)? {
                        acc.exports.push(parse_export(&item)?);
                    }
                }
                "imports" => {
                    for item in list_items(&x)? {
                        acc.imports.push(parse_import(&item)?);
                    }
                }
                "jetstream" | "js" => {
                    return Err(x.key_err(
                        "option \"jetstream\" needs JetStream, which Tern does not support yet"
                            .to_string(),
                    ))
                }
                "mappings" | "maps" => return Err(x.key_err(
                    "option \"mappings\" needs subject mappings, which Tern does not support yet"
                        .to_string(),
                )),
                "limits" | "max_connections" | "max_subscriptions" | "max_payload"
                | "max_leafnodes" => {
                    return Err(x.key_err(format!(
                        "option {:?} needs account limits, which Tern does not support yet",
                        x.key
                    )))
                }
                _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
            }
        }
        for mut u in users {
            if u.permissions.is_none() {
                u.permissions = default_permissions.clone();
            }
            o.auth.users.push(u);
        }
        o.accounts.accounts.push(acc);
    }
    crate::accounts::Accounts::new(&o.accounts).map_err(|m| e.key_err(m))?;
    Ok(())
}

/// The entries of a list value, each positioned at its item.
fn list_items<'a>(x: &Entry<'a>) -> Result<Vec<Entry<'a>>, OptsError> {
    let conf::Value::Array(list) = &x.item.value else {
        return Err(x.wrong_type("a list"));
    };
    Ok(list
        .iter()
        .map(|item| Entry {
            key: x.key,
            key_pos: &item.pos,
            item,
        })
        .collect())
}

/// The kind a `stream`/`service` key names; an entry may name only one (`what` says which
/// entry, for the error).
fn export_kind(
    x: &Entry,
    seen: Option<crate::accounts::Kind>,
    what: &str,
) -> Result<crate::accounts::Kind, OptsError> {
    if seen.is_some() {
        return Err(x.invalid(format!("{what} is a stream or a service, not both")));
    }
    Ok(if x.key.eq_ignore_ascii_case("stream") {
        crate::accounts::Kind::Stream
    } else {
        crate::accounts::Kind::Service
    })
}

/// `{ stream | service: subject, accounts, response_type, response_threshold }`.
fn parse_export(e: &Entry) -> Result<crate::accounts::ExportOptions, OptsError> {
    use crate::accounts::{ExportOptions, Kind, ResponseType};
    let mut kind = None;
    let mut subject = String::new();
    let mut accounts = Vec::new();
    let mut response_type = ResponseType::Singleton;
    let mut response_threshold = None;
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "stream" | "service" => {
                kind = Some(export_kind(&x, kind, "an export")?);
                subject = x.string()?;
            }
            "accounts" => accounts = string_list(&x)?,
            "response" | "response_type" => {
                response_type = match x.string()?.to_ascii_lowercase().as_str() {
                    "single" | "singleton" => ResponseType::Singleton,
                    "stream" => ResponseType::Stream,
                    "chunk" | "chunked" => ResponseType::Chunked,
                    other => return Err(x.invalid(format!("unknown response type: {other:?}"))),
                }
            }
            "threshold" | "response_threshold" | "response_max_time" | "response_time" => {
                response_threshold = Some(x.duration()?)
            }
            "latency" | "allow_trace" => {
                return Err(x.key_err(format!(
                    "option {:?} needs service latency tracking, which Tern does not support yet",
                    x.key
                )))
            }
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    let Some(kind) = kind else {
        return Err(e.invalid("an export needs a stream or a service subject".into()));
    };
    if kind == Kind::Stream && response_type != ResponseType::Singleton {
        return Err(e.invalid("a stream export has no response type".into()));
    }
    Ok(ExportOptions {
        kind,
        subject,
        accounts,
        response_type,
        response_threshold,
    })
}

/// `{ stream | service: { account, subject }, prefix, to }`.
fn parse_import(e: &Entry) -> Result<crate::accounts::ImportOptions, OptsError> {
    use crate::accounts::{ImportOptions, Kind};
    let mut kind = None;
    let (mut account, mut subject) = (String::new(), String::new());
    let (mut to, mut prefix) = (None, None);
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "stream" | "service" => {
                kind = Some(export_kind(&x, kind, "an import")?);
                for f in map_entries(&x)? {
                    match f.key.to_ascii_lowercase().as_str() {
                        "account" => account = f.string()?,
                        "subject" => subject = f.string()?,
                        _ => return Err(f.key_err(format!("unknown field {:?}", f.key))),
                    }
                }
            }
            "prefix" => prefix = Some(x.string()?),
            "to" => to = Some(x.string()?),
            "share" => return Err(x.key_err(
                "option \"share\" needs service latency tracking, which Tern does not support yet"
                    .to_string(),
            )),
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    let Some(kind) = kind else {
        return Err(e.invalid("an import needs a stream or a service".into()));
    };
    if account.is_empty() || subject.is_empty() {
        return Err(e.invalid(format!(
            "{} import needs an account and a subject",
            if kind == Kind::Stream {
                "a stream"
            } else {
                "a service"
            }
        )));
    }
    if kind == Kind::Service && prefix.is_some() {
        return Err(e.invalid("a service import has no prefix (use \"to\")".into()));
    }
    Ok(ImportOptions {
        kind,
        account,
        subject,
        to,
        prefix,
    })
}

/// `allow_responses: true | false | { max, expires }`.
fn parse_allow_responses(x: &Entry) -> Result<Option<crate::auth::ResponsePermission>, OptsError> {
    let mut rp = crate::auth::DEFAULT_RESPONSE_PERMISSION;
    match &x.item.value {
        conf::Value::Bool(false) => return Ok(None),
        conf::Value::Bool(true) => {}
        conf::Value::Map(_) => {
            for f in map_entries(x)? {
                match f.key.to_ascii_lowercase().as_str() {
                    "max" | "max_msgs" | "max_messages" | "max_responses" => {
                        let n = f.size()?;
                        rp.max = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
                    }
                    "expires" | "expiration" | "ttl" => {
                        let d = f.duration()?;
                        if !d.is_zero() {
                            rp.expires = d;
                        }
                    }
                    _ => return Err(f.key_err(format!("unknown field {:?}", f.key))),
                }
            }
        }
        _ => return Err(x.wrong_type("a boolean or a map")),
    }
    Ok(Some(rp))
}

/// `authorization { token | user+password | users: [...], permissions, timeout }`.
fn parse_authorization(e: &Entry, a: &mut crate::auth::AuthOptions) -> Result<(), OptsError> {
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "token" => a.token = Some(x.string()?),
            "user" | "username" => a.user = Some(x.string()?),
            "password" | "pass" => a.password = Some(x.string()?),
            "permissions" => a.permissions = Some(parse_permissions(&x)?),
            "default_permissions" => a.default_permissions = Some(parse_permissions(&x)?),
            "timeout" => {
                a.timeout = Some(x.timeout()?);
            }
            "users" => parse_users(&x, None, &mut a.users)?,
            "auth_callout" => {
                return Err(x.key_err(
                    "option \"auth_callout\" needs auth callout, which Tern does not support yet"
                        .to_string(),
                ))
            }
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    Ok(())
}

/// `cluster { name, listen | host + port, routes, advertise, no_advertise, connect_retries,
/// authorization { user, password, timeout }, permissions { import, export }, tls {} }`.
fn parse_cluster(e: &Entry) -> Result<crate::route::ClusterOptions, OptsError> {
    use crate::route::{RouteUrl, DEFAULT_ROUTE_PORT};
    let mut c = crate::route::ClusterOptions {
        port: DEFAULT_ROUTE_PORT,
        ..Default::default()
    };
    // A cluster port: -1 picks a free one, 0 means the default.
    let port = |x: &Entry, v: i64| match v {
        -1 => Ok(0),
        0 => Ok(DEFAULT_ROUTE_PORT),
        1..=65535 => Ok(v as u16),
        _ => Err(x.invalid(format!("{v} is not a port"))),
    };
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "name" => c.name = Some(x.string()?),
            "host" | "net" => c.host = Some(x.string()?),
            "port" => match &x.item.value {
                conf::Value::Int(v) => c.port = port(&x, *v)?,
                _ => return Err(x.wrong_type("a port number")),
            },
            "listen" => match &x.item.value {
                conf::Value::Int(v) => c.port = port(&x, *v)?,
                _ => {
                    let s = x.string()?;
                    let (h, p) = s
                        .rsplit_once(':')
                        .ok_or_else(|| x.invalid(format!("{s:?} is not host:port")))?;
                    let p: i64 = p
                        .parse()
                        .map_err(|_| x.invalid(format!("bad port in {s:?}")))?;
                    c.port = port(&x, p)?;
                    let h = h.trim_start_matches('[').trim_end_matches(']');
                    if !h.is_empty() {
                        c.host = Some(h.to_string());
                    }
                }
            },
            "routes" => {
                c.routes = string_list(&x)?
                    .iter()
                    .map(|u| RouteUrl::parse(u))
                    .collect::<Result<_, _>>()
                    .map_err(|m| x.invalid(m))?
            }
            "advertise" | "cluster_advertise" => c.advertise = Some(x.string()?),
            "no_advertise" => c.no_advertise = x.boolean()?,
            "connect_retries" => {
                c.connect_retries = u32::try_from(x.size()?).map_err(|_| x.invalid("too big".into()))?
            }
            "authorization" => {
                for f in map_entries(&x)? {
                    match f.key.to_ascii_lowercase().as_str() {
                        "user" | "username" => c.user = Some(f.string()?),
                        "password" | "pass" => c.password = Some(f.string()?),
                        "timeout" => c.auth_timeout = Some(f.timeout()?),
                        _ => return Err(f.key_err(format!(
                            "cluster authorization option {:?} is not supported by Tern yet",
                            f.key
                        ))),
                    }
                }
            }
            // Tern is a no-pool peer without compression (reference 2.5, 2.6): the values
            // that ask for exactly that are accepted.
            "pool_size" => match &x.item.value {
                conf::Value::Int(v) if *v <= 0 => {}
                _ => return Err(x.key_err(
                    "cluster pool_size other than -1 is not supported by Tern yet (it is a no-pool peer)".to_string(),
                )),
            },
            "compression" => match &x.item.value {
                conf::Value::Str(m) if m == "off" || m == "accept" || m == "disabled" => {}
                conf::Value::Bool(false) => {}
                _ => return Err(x.key_err(
                    "route compression is not supported by Tern yet (use \"off\")".to_string(),
                )),
            },
            "permissions" => {
                for f in map_entries(&x)? {
                    match f.key.to_ascii_lowercase().as_str() {
                        "import" => c.import = Some(parse_rule(&f)?),
                        "export" => c.export = Some(parse_rule(&f)?),
                        _ => return Err(f.key_err(format!("unknown field {:?}", f.key))),
                    }
                }
                if let Some(p) = c.permissions() {
                    crate::auth::Permissions::new(&p).map_err(|m| x.invalid(m))?;
                }
            }
            "tls" => c.tls = Some(parse_tls(&x)?),
            "ping_interval" => c.ping_interval = Some(x.duration()?),
            "ping_max" => c.ping_max = Some(x.size_u32()?),
            "accounts" => {
                return Err(x.key_err(format!(
                    "cluster option {:?} is not supported by Tern yet",
                    x.key
                )))
            }
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    Ok(c)
}

/// `tls { cert_file, key_file, ca_file, verify, verify_and_map, timeout, handshake_first }`.
fn parse_tls(e: &Entry) -> Result<crate::tls::TlsOptions, OptsError> {
    let mut t = crate::tls::TlsOptions::default();
    for x in map_entries(e)? {
        match x.key.to_ascii_lowercase().as_str() {
            "cert_file" => t.cert_file = Some(x.path()?),
            "key_file" => t.key_file = Some(x.path()?),
            "ca_file" => t.ca_file = Some(x.path()?),
            "verify" => t.verify = x.boolean()?,
            "verify_and_map" => t.verify_and_map = x.boolean()?,
            "timeout" => t.timeout = Some(x.timeout()?),
            "handshake_first" | "first" | "immediate" => {
                t.handshake_first = match &x.item.value {
                    conf::Value::Bool(b) => *b,
                    _ => {
                        return Err(x.key_err(
                            "handshake_first \"auto\" or a delay is not supported by Tern yet"
                                .to_string(),
                        ))
                    }
                }
            }
            "verify_cert_and_check_known_urls"
            | "pinned_certs"
            | "ocsp_peer"
            | "cert_store"
            | "cert_match"
            | "connection_rate_limit" => {
                return Err(x.key_err(format!(
                    "TLS option {:?} is not supported by Tern yet",
                    x.key
                )))
            }
            "insecure" => t.insecure = x.boolean()?,
            // Accepted: rustls chooses safe suites and curves itself.
            "cipher_suites" | "curve_preferences" | "min_version" => {}
            _ => return Err(x.key_err(format!("unknown field {:?}", x.key))),
        }
    }
    Ok(t)
}

/// Which syntax a config file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// nats-server's own format (`server.conf`).
    Nats,
    /// TOML with nats-server's key names.
    Toml,
}

impl ConfigFormat {
    /// By extension (`.toml`), else by content: a `[table]` header line means TOML.
    pub fn detect(path: &Path, src: &str) -> ConfigFormat {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
        {
            return ConfigFormat::Toml;
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("conf"))
        {
            return ConfigFormat::Nats;
        }
        let table_header = src.lines().any(|l| {
            let l = l.trim();
            l.starts_with('[') && l.ends_with(']') && !l.contains(',') && !l.contains('"')
        });
        if table_header {
            ConfigFormat::Toml
        } else {
            ConfigFormat::Nats
        }
    }
}

/// Turns TOML into the NATS format's tree, so that one function applies both. Positions are
/// those of the top-level keys (the only ones Tern reads).
fn toml_to_map(src: &str, path: &Path) -> Result<conf::Map, OptsError> {
    let file = std::sync::Arc::new(path.to_path_buf());
    let pos_at = |offset: usize| {
        let upto = &src[..offset.min(src.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        conf::Pos {
            file: file.clone(),
            line: line as u32,
            col: col as u32,
        }
    };
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(src).map_err(|e| {
            let p = pos_at(e.span().map_or(0, |s| s.start));
            OptsError::Config {
                path: path.to_path_buf(),
                line: p.line as usize,
                col: p.col as usize,
                message: e.message().trim().replace('\n', "; "),
            }
        })?;
    fn convert(v: &toml::Value, pos: &conf::Pos) -> conf::Value {
        let item = |v: &toml::Value| conf::Item {
            value: convert(v, pos),
            pos: pos.clone(),
        };
        match v {
            toml::Value::String(s) => conf::Value::Str(s.clone()),
            toml::Value::Integer(n) => conf::Value::Int(*n),
            toml::Value::Float(f) => conf::Value::Float(*f),
            toml::Value::Boolean(b) => conf::Value::Bool(*b),
            toml::Value::Datetime(d) => conf::Value::Date(d.to_string()),
            toml::Value::Array(a) => conf::Value::Array(a.iter().map(item).collect()),
            toml::Value::Table(t) => conf::Value::Map(conf::Map {
                entries: t
                    .iter()
                    .map(|(k, v)| conf::Entry {
                        key: k.clone(),
                        key_pos: pos.clone(),
                        item: item(v),
                        used_as_variable: false,
                    })
                    .collect(),
            }),
        }
    }
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    Ok(conf::Map {
        entries: entries
            .into_iter()
            .map(|(k, v)| {
                let pos = pos_at(k.span().start);
                conf::Entry {
                    key: k.get_ref().clone(),
                    key_pos: pos.clone(),
                    item: conf::Item {
                        value: convert(v.get_ref(), &pos),
                        pos,
                    },
                    used_as_variable: false,
                }
            })
            .collect(),
    })
}

impl Options {
    /// Reads the config file at `path` (the NATS format, or TOML by extension or content)
    /// and applies it on top of `self`; records `path` in `config_file`. Does not validate.
    pub fn apply_config_file(&mut self, path: &Path) -> Result<(), OptsError> {
        let src = std::fs::read_to_string(path).map_err(|source| OptsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.apply_config_str(&src, path)?;
        self.config_file = Some(path.to_path_buf());
        Ok(())
    }

    /// Applies config text on top of `self`; `path` names it in errors and anchors includes.
    /// Keys are the `nats-server` option names, case-insensitive.
    pub fn apply_config_str(&mut self, src: &str, path: &Path) -> Result<(), OptsError> {
        let map = match ConfigFormat::detect(path, src) {
            ConfigFormat::Toml => toml_to_map(src, path)?,
            ConfigFormat::Nats => conf::parse_str(src, path).map_err(OptsError::from)?,
        };
        self.apply_config_map(&map)
    }

    fn apply_config_map(&mut self, map: &conf::Map) -> Result<(), OptsError> {
        for entry in &map.entries {
            let lower = entry.key.to_ascii_lowercase();
            let e = Entry {
                key: &entry.key,
                key_pos: &entry.key_pos,
                item: &entry.item,
            };
            match lower.as_str() {
                "host" | "net" => self.host = e.string()?,
                "port" => self.port = e.port()?,
                "listen" => {
                    let (host, port) = e.listen()?;
                    if let Some(h) = host {
                        self.host = h;
                    }
                    self.port = port;
                }
                "http" | "monitor" => {
                    let (host, port) = e.listen()?;
                    if let Some(h) = host {
                        self.http_host = Some(h);
                    }
                    self.http_port = Some(port);
                }
                "http_port" | "monitor_port" => self.http_port = Some(e.port()?),
                "http_base_path" => self.http_base_path = e.string()?,
                "server_name" => self.server_name = Some(e.string()?),
                "max_payload" => self.max_payload = e.size_u32()?,
                "max_pending" => self.max_pending = e.size()?,
                "max_control_line" => self.max_control_line = e.size_u32()?,
                "max_connections" | "max_conn" => self.max_connections = e.size_u32()?,
                "max_subscriptions" | "max_subs" => self.max_subscriptions = e.size_u32()?,
                "ping_interval" => self.ping_interval = e.duration()?,
                "ping_max" | "max_pings_out" => self.ping_max = e.size_u32()?,
                "write_deadline" => self.write_deadline = e.duration()?,
                "lame_duck_duration" => {
                    let d = e.duration()?;
                    if d < MIN_LAME_DUCK_DURATION {
                        return Err(e.err(format!(
                            "invalid lame_duck_duration of {}, minimum is 30 seconds",
                            crate::monitor::go_duration(d)
                        )));
                    }
                    self.lame_duck_duration = d;
                }
                "lame_duck_grace_period" => self.lame_duck_grace_period = e.duration()?,
                "debug" => self.debug = e.boolean()?,
                "trace" => self.trace = e.boolean()?,
                "logtime" => self.logtime = e.boolean()?,
                "log_file" | "logfile" => self.log_file = Some(e.path()?),
                "pid_file" | "pidfile" => self.pid_file = Some(e.path()?),
                "ports_file_dir" => self.ports_file_dir = Some(e.path()?),
                "no_header_support" => self.no_header_support = e.boolean()?,
                "shards" => {
                    let n = e.size()?;
                    self.shards =
                        Some(usize::try_from(n).map_err(|_| e.invalid(format!("{n} is too big")))?);
                }
                "reuseport" => self.reuseport = e.boolean()?,
                "spin_before_park" => self.spin_before_park = e.duration()?,
                "authorization" => parse_authorization(&e, &mut self.auth)?,
                "tls" => self.tls = Some(parse_tls(&e)?),
                "allow_non_tls" => self.allow_non_tls = e.boolean()?,
                "cluster" => self.cluster = Some(parse_cluster(&e)?),
                "no_auth_user" => self.auth.no_auth_user = Some(e.string()?),
                "accounts" => parse_accounts(&e, self)?,
                "system_account" | "system" => self.accounts.system_account = Some(e.string()?),
                "no_system_account" => self.accounts.no_system_account = e.boolean()?,
                k if INERT_KEYS.contains(&k) => {}
                k => {
                    if let Some((_, part)) = UNSUPPORTED_KEYS.iter().find(|(n, _)| *n == k) {
                        return Err(e.key_err(format!(
                            "option {:?} needs {part}, which Tern does not support yet",
                            e.key
                        )));
                    }
                    // A key defined only to be referenced as `$variable` is not an option.
                    if !entry.used_as_variable {
                        return Err(e.key_err(format!("unknown field {:?}", e.key)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Fills zero limits with their defaults (as `nats-server` does) and
    /// checks the options against each other.
    pub fn validate(&mut self) -> Result<(), OptsError> {
        if self.max_payload == 0 {
            self.max_payload = DEFAULT_MAX_PAYLOAD;
        }
        if self.max_pending == 0 {
            self.max_pending = DEFAULT_MAX_PENDING;
        }
        if self.max_control_line == 0 {
            self.max_control_line = DEFAULT_MAX_CONTROL_LINE;
        }
        if self.max_connections == 0 {
            self.max_connections = DEFAULT_MAX_CONNECTIONS;
        }
        if self.ping_interval.is_zero() {
            self.ping_interval = DEFAULT_PING_INTERVAL;
        }
        if self.ping_max == 0 {
            self.ping_max = DEFAULT_PING_MAX;
        }
        if self.write_deadline.is_zero() {
            self.write_deadline = DEFAULT_WRITE_DEADLINE;
        }
        if self.max_payload > MAX_PAYLOAD_MAX_SIZE {
            return Err(OptsError::Invalid(format!(
                "max_payload ({}) cannot exceed {MAX_PAYLOAD_MAX_SIZE} (64 MiB)",
                self.max_payload
            )));
        }
        if u64::from(self.max_payload) > self.max_pending {
            return Err(OptsError::Invalid(format!(
                "max_payload ({}) cannot be higher than max_pending ({})",
                self.max_payload, self.max_pending
            )));
        }
        let accounts =
            crate::accounts::Accounts::new(&self.accounts).map_err(OptsError::Invalid)?;
        crate::auth::Auth::new(&self.auth, &accounts).map_err(OptsError::Invalid)?;
        if let Some(t) = &self.tls {
            crate::tls::server_config(t).map_err(OptsError::Invalid)?;
        }
        if let Some(t) = self.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
            crate::tls::server_config(t).map_err(OptsError::Invalid)?;
            crate::tls::route_client_config(t).map_err(OptsError::Invalid)?;
        }
        if let Some(name) = self.cluster.as_ref().and_then(|c| c.name.as_ref()) {
            if name.contains([' ', '\n', '\r', '\t']) {
                return Err(OptsError::Invalid(
                    "cluster name cannot contain spaces or new lines".to_string(),
                ));
            }
        }
        if self.shards == Some(0) {
            return Err(OptsError::Invalid("shards must be at least 1".to_string()));
        }
        if self.server_name.as_deref().is_some_and(|n| n.contains(' ')) {
            return Err(OptsError::Invalid(
                "server name cannot contain spaces".to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    /// The options, without the recorded command line (so they compare with defaults).
    fn run(s: &[&str]) -> Options {
        match parse_args(args(s)) {
            Ok(Command::Run(o)) => Options {
                args: Vec::new(),
                ..*o
            },
            other => panic!("{s:?}: expected Run, got {other:?}"),
        }
    }

    fn err(s: &[&str]) -> String {
        match parse_args(args(s)) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("{s:?}: expected an error, got {c:?}"),
        }
    }

    /// A config file with a unique name under the temp dir, removed on drop.
    struct TempConf(PathBuf);

    impl TempConf {
        fn new(text: &str) -> Self {
            Self::with_ext(text, "toml")
        }
        /// A file in nats-server's format.
        fn conf(text: &str) -> Self {
            Self::with_ext(text, "conf")
        }
        fn with_ext(text: &str, ext: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "tern-opts-{}-{}.{ext}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, text).expect("write temp config");
            TempConf(path)
        }
        fn arg(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for TempConf {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn conf_err(text: &str) -> OptsError {
        let mut o = Options::default();
        match o.apply_config_str(text, Path::new("tern.toml")) {
            Err(e) => e,
            Ok(()) => panic!("expected config error for {text:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert_eq!(o.port, 4222);
        assert_eq!(o.host, "0.0.0.0");
        assert_eq!(o.max_payload, 1_048_576);
        assert_eq!(o.max_pending, 64 * 1024 * 1024);
        assert_eq!(o.ping_interval, Duration::from_secs(120));
        assert!(o.logtime);
    }

    #[test]
    fn port_spellings() {
        for form in [
            &["-p", "4333"][..],
            &["--port", "4333"],
            &["-p=4333"],
            &["--port=4333"],
            &["-port", "4333"],
            &["-port=4333"],
        ] {
            assert_eq!(run(form).port, 4333, "{form:?}");
        }
    }

    #[test]
    fn port_random_and_default() {
        assert_eq!(run(&["-p", "-1"]).port, 0);
        assert_eq!(run(&["--port=-1"]).port, 0);
        assert_eq!(run(&["-p", "0"]).port, DEFAULT_PORT);
        assert_eq!(
            err(&["-p", "70000"]),
            "invalid value \"70000\" for flag -p: value out of range"
        );
    }

    #[test]
    fn other_value_flags() {
        let o = run(&[
            "-a",
            "127.0.0.1",
            "--name",
            "srv",
            "-P",
            "/tmp/x.pid",
            "-l",
            "/tmp/x.log",
            "--ports_file_dir",
            "/tmp",
            "--shards",
            "3",
            "--spin_before_park",
            "20us",
        ]);
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.server_name.as_deref(), Some("srv"));
        assert_eq!(o.pid_file, Some(PathBuf::from("/tmp/x.pid")));
        assert_eq!(o.log_file, Some(PathBuf::from("/tmp/x.log")));
        assert_eq!(o.ports_file_dir, Some(PathBuf::from("/tmp")));
        assert_eq!(o.shards, Some(3));
        assert_eq!(o.spin_before_park, Duration::from_micros(20));
        assert_eq!(run(&["--net", "::1"]).host, "::1");
        assert_eq!(run(&["-addr=h"]).host, "h");
        assert_eq!(
            run(&["--server_name", "x"]).server_name.as_deref(),
            Some("x")
        );
        assert_eq!(run(&["-n", "y"]).server_name.as_deref(), Some("y"));
    }

    #[test]
    fn bool_flags() {
        let o = run(&["-DV"]);
        assert!(o.debug && o.trace);
        let o = run(&["--DV"]);
        assert!(o.debug && o.trace);
        let o = run(&["-DVV"]);
        assert!(o.debug && o.trace);
        let o = run(&["-VV"]);
        assert!(!o.debug && o.trace);
        let o = run(&["-D", "-V"]);
        assert!(o.debug && o.trace);
        assert!(run(&["--debug"]).debug);
        assert!(run(&["--trace=true"]).trace);
        assert!(!run(&["-T=false"]).logtime);
        assert!(!run(&["--logtime=0"]).logtime);
        assert!(run(&["-T"]).logtime);
        assert!(run(&["-t"]).check_config);
        assert!(run(&["--reuseport"]).reuseport);
        let o = run(&["-DV", "-D=false"]);
        assert!(!o.debug && o.trace);
        assert_eq!(
            err(&["-D=maybe"]),
            "invalid value \"maybe\" for flag -D: parse error"
        );
    }

    #[test]
    fn bool_does_not_consume_next_arg() {
        let o = run(&["-D", "-p", "5000"]);
        assert!(o.debug);
        assert_eq!(o.port, 5000);
        // "false" after a bool is a positional argument, not its value.
        assert_eq!(err(&["-D", "false"]), "unrecognized command: \"false\"");
    }

    #[test]
    fn value_flag_consumes_dash_value() {
        // As in Go, a value flag takes the next argument even if it looks
        // like a flag.
        assert_eq!(run(&["-n", "-D"]).server_name.as_deref(), Some("-D"));
    }

    #[test]
    fn flag_errors() {
        assert_eq!(err(&["-xyz"]), "flag provided but not defined: -xyz");
        assert_eq!(err(&["--xyz=1"]), "flag provided but not defined: -xyz");
        assert_eq!(err(&["-p"]), "flag needs an argument: -p");
        assert_eq!(err(&["--port"]), "flag needs an argument: -port");
        assert_eq!(
            err(&["-p", "abc"]),
            "invalid value \"abc\" for flag -p: parse error"
        );
        assert_eq!(
            err(&["--spin_before_park", "fast"]),
            "invalid value \"fast\" for flag -spin_before_park: parse error"
        );
        assert_eq!(err(&["---p"]), "bad flag syntax: ---p");
        assert_eq!(err(&["-=1"]), "bad flag syntax: -=1");
        assert!(matches!(
            parse_args(args(&["-zz"])),
            Err(OptsError::UnknownFlag(n)) if n == "zz"
        ));
    }

    #[test]
    fn positional_arguments() {
        assert_eq!(err(&["extra"]), "unrecognized command: \"extra\"");
        assert_eq!(err(&["-D", "--", "x"]), "unrecognized command: \"x\"");
        assert!(run(&["-D", "--"]).debug);
        // Parsing stops at the first non-flag.
        assert_eq!(err(&["x", "-D"]), "unrecognized command: \"x\"");
        assert_eq!(parse_args(args(&["version"])).ok(), Some(Command::Version));
        assert_eq!(parse_args(args(&["help"])).ok(), Some(Command::Help));
    }

    #[test]
    fn cluster_flags_and_block() {
        let o = run(&[
            "--cluster",
            "nats://ru:rp@127.0.0.1:-1",
            "--cluster_name",
            "C1",
            "--routes",
            "nats://127.0.0.1:6223, nats-route://u:p@h2:6224",
            "--no_advertise",
        ]);
        let c = o.cluster.unwrap();
        assert_eq!((c.host.as_deref(), c.port), (Some("127.0.0.1"), 0));
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("ru"), Some("rp"))
        );
        assert_eq!(c.name.as_deref(), Some("C1"));
        assert!(c.no_advertise);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].user.as_deref(), Some("u"));
        let f = TempConf::conf(
            "cluster {\n  name: C2\n  listen: 127.0.0.1:-1\n  routes: [nats://a:1]\n  authorization { user: x, password: y, timeout: 1 }\n  pool_size: -1\n  compression: off\n}\n",
        );
        let c = run(&["-c", &f.arg()]).cluster.unwrap();
        assert_eq!(
            (c.name.as_deref(), c.port, c.routes.len()),
            (Some("C2"), 0, 1)
        );
        let f = TempConf::conf("cluster {\n  pool_size: 3\n}\n");
        assert!(err(&["-c", &f.arg()]).contains("pool_size"));
        let f = TempConf::conf(
            "cluster {\n  permissions { import: [\"a.>\"], export: { allow: \"b.*\", deny: [b.c] } }\n}\n",
        );
        let c = run(&["-c", &f.arg()]).cluster.unwrap();
        let p = crate::auth::Permissions::new(&c.permissions().unwrap()).unwrap();
        assert!(p.can_publish(b"a.x") && !p.can_publish(b"b.x"));
        assert!(p.can_subscribe(b"b.x", None) && !p.can_subscribe(b"b.c", None));
        assert!(!p.can_subscribe(b"b.>", None));
        let f = TempConf::conf("cluster {\n  permissions { publish: [a] }\n}\n");
        assert!(err(&["-c", &f.arg()]).contains("unknown field \"publish\""));
        let f = TempConf::conf("cluster {\n  name: \"a b\"\n}\n");
        assert!(err(&["-c", &f.arg()]).contains("cluster name cannot contain spaces"));
    }

    #[test]
    fn unsupported_flags_refused() {
        for (arg, name) in [
            (&["--ms", "8222"][..], "ms"),
            (&["--https_port=8222"], "https_port"),
            (&["-js"], "js"),
            (&["--help_tls"], "help_tls"),
        ] {
            let e = parse_args(args(arg)).expect_err("must be refused");
            assert!(matches!(&e, OptsError::UnsupportedFlag(n) if n == name));
            let msg = e.to_string();
            assert!(msg.contains(&format!("-{name}")), "{msg}");
            assert!(msg.contains("not supported"), "{msg}");
        }
    }

    #[test]
    fn inert_flags_accepted() {
        assert_eq!(run(&["-sd", "/tmp/js"]), Options::default());
        assert_eq!(run(&["--store_dir=/tmp/js"]), Options::default());
        assert_eq!(run(&["--max_traced_msg_len", "100"]), Options::default());
        assert_eq!(
            err(&["--log_size_limit", "big"]),
            "invalid value \"big\" for flag -log_size_limit: parse error"
        );
    }

    #[test]
    fn help_and_version() {
        for a in [&["-h"][..], &["--help"], &["-help"], &["-D", "-h"]] {
            assert_eq!(parse_args(args(a)).ok(), Some(Command::Help), "{a:?}");
        }
        for a in [&["-v"][..], &["--version"], &["-v", "-h"]] {
            assert_eq!(parse_args(args(a)).ok(), Some(Command::Version), "{a:?}");
        }
        // Answered before the config file is read.
        assert_eq!(
            parse_args(args(&["-c", "/nonexistent/tern.toml", "-v"])).ok(),
            Some(Command::Version)
        );
        assert!(!run(&["-h=false"]).debug);
        let u = usage();
        assert!(u.starts_with("Usage: tern [options]"));
        assert!(u.contains("--shards") && u.contains("Tern Options:"));
        assert!(u.contains("--http_port") && u.contains("--signal"));
        assert!(!u.contains("--https_port"));
    }

    #[test]
    fn monitoring_and_signal_flags() {
        assert_eq!(run(&["-m", "8222"]).http_port, Some(8222));
        assert_eq!(run(&["--http_port=-1"]).http_port, Some(0));
        assert_eq!(run(&[]).http_port, None);
        assert_eq!(
            parse_args(args(&["--signal", "reload=42"])).ok(),
            Some(Command::Signal {
                cmd: "reload".into(),
                pid: Some("42".into()),
                pid_file: None
            })
        );
        assert_eq!(
            parse_args(args(&["-P", "/tmp/t.pid", "-sl", "ldm"])).ok(),
            Some(Command::Signal {
                cmd: "ldm".into(),
                pid: None,
                pid_file: Some(PathBuf::from("/tmp/t.pid"))
            })
        );
        // The command line is kept for reloads.
        match parse_args(args(&["-p", "5"])) {
            Ok(Command::Run(o)) => assert_eq!(o.args, ["-p", "5"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_ints() {
        assert_eq!(parse_go_int("42"), Ok(42));
        assert_eq!(parse_go_int("-1"), Ok(-1));
        assert_eq!(parse_go_int("+7"), Ok(7));
        assert_eq!(parse_go_int("0x10"), Ok(16));
        assert_eq!(parse_go_int("010"), Ok(8));
        assert_eq!(parse_go_int("0"), Ok(0));
        assert_eq!(parse_go_int(""), Err("parse error"));
        assert_eq!(parse_go_int("1_000"), Err("parse error"));
        assert_eq!(
            parse_go_int("99999999999999999999"),
            Err("value out of range")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("512KB"), Ok(512 << 10));
        assert_eq!(parse_size("512kib"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("1 Gi"), Ok(1 << 30));
        assert_eq!(parse_size("2K"), Ok(2000));
        assert_eq!(parse_size("3m"), Ok(3_000_000));
        assert!(parse_size("MB").is_err());
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TB").is_err());
    }

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).expect(s);
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("50us"), Duration::from_micros(50));
        assert_eq!(ok("50µs"), Duration::from_micros(50));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(
            parse_duration("10").unwrap_err(),
            "time: missing unit in duration \"10\""
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.s5").is_err());
        assert!(parse_duration(".s").is_err());
    }

    #[test]
    fn config_file_loading() {
        let f = TempConf::new(
            r#"
# comment
port = 4333
net = "127.0.0.1"
server_name = "alpha"
max_payload = "2MB"
max_pending = "128MB"
max_control_line = 8192
max_connections = 100
max_subscriptions = 10
ping_interval = 30
ping_max = 5
write_deadline = "2s"
debug = true
trace = false
logtime = false
log_file = "/tmp/t.log"
pid_file = "/tmp/t.pid"
ports_file_dir = "/tmp"
no_header_support = true
shards = 2
reuseport = true
spin_before_park = "0s"
"#,
        );
        let o = run(&["-c", &f.arg()]);
        assert_eq!(o.port, 4333);
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.server_name.as_deref(), Some("alpha"));
        assert_eq!(o.max_payload, 2 << 20);
        assert_eq!(o.max_pending, 128 << 20);
        assert_eq!(o.max_control_line, 8192);
        assert_eq!(o.max_connections, 100);
        assert_eq!(o.max_subscriptions, 10);
        assert_eq!(o.ping_interval, Duration::from_secs(30));
        assert_eq!(o.ping_max, 5);
        assert_eq!(o.write_deadline, Duration::from_secs(2));
        assert!(o.debug && !o.trace && !o.logtime && o.no_header_support);
        assert_eq!(o.log_file, Some(PathBuf::from("/tmp/t.log")));
        assert_eq!(o.pid_file, Some(PathBuf::from("/tmp/t.pid")));
        assert_eq!(o.ports_file_dir, Some(PathBuf::from("/tmp")));
        assert_eq!(o.shards, Some(2));
        assert!(o.reuseport);
        assert_eq!(o.spin_before_park, Duration::ZERO);
        assert_eq!(o.config_file, Some(f.0.clone()));
    }

    #[test]
    fn config_misc_keys() {
        let mut o = Options::default();
        o.apply_config_str(
            "PORT = -1\nhost = \"h\"\nlisten = \"[::1]:5222\"\nmax_payload = 0\n",
            Path::new("t"),
        )
        .expect("valid");
        assert_eq!(o.host, "::1");
        assert_eq!(o.port, 5222);
        o.validate().expect("valid");
        assert_eq!(o.max_payload, DEFAULT_MAX_PAYLOAD);
        let mut o = Options::default();
        o.apply_config_str("port = -1", Path::new("t")).expect("ok");
        assert_eq!(o.port, 0);
    }

    #[test]
    fn flags_override_file() {
        let f = TempConf::new("port = 4333\ndebug = true\nlogtime = true\nshards = 4\n");
        let o = run(&["-p", "5555", "-D=false", "-T=false", "-c", &f.arg()]);
        assert_eq!(o.port, 5555);
        assert!(!o.debug && !o.logtime);
        assert_eq!(o.shards, Some(4));
        let o = run(&["--config", &f.arg(), "--shards=1"]);
        assert_eq!((o.port, o.shards, o.debug), (4333, Some(1), true));
    }

    #[test]
    fn config_unknown_key_names_key_and_line() {
        let e = conf_err("port = 4222\n\nprot = 4333\n");
        assert_eq!(e.to_string(), "tern.toml:3:1: unknown field \"prot\"");
        assert!(matches!(e, OptsError::Config { line: 3, .. }));

        let f = TempConf::new("debug = true\nbogus = 1\n");
        let msg = err(&["-c", &f.arg()]);
        assert_eq!(msg, format!("{}:2:1: unknown field \"bogus\"", f.arg()));

        let e = conf_err("debug = true\n[gateway]\nport = 7222\n");
        assert_eq!(
            e.to_string(),
            "tern.toml:2:2: option \"gateway\" needs gateways, which Tern does not support yet"
        );
    }

    #[test]
    fn config_wrong_type() {
        let e = conf_err("port = 4222\ndebug = \"yes\"\n");
        assert_eq!(
            e.to_string(),
            "tern.toml:2:1: option \"debug\" must be a boolean, got string"
        );
        let e = conf_err("\n\nport = \"4222\"\n");
        assert!(matches!(e, OptsError::Config { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("\"port\""));
        let e = conf_err("max_payload = \"1XB\"");
        assert!(e
            .to_string()
            .starts_with("tern.toml:1:1: invalid value for \"max_payload\""));
        let e = conf_err("ping_interval = \"soon\"");
        assert!(e.to_string().contains("ping_interval"), "{e}");
        let e = conf_err("port = 70000");
        assert!(e.to_string().contains("port"), "{e}");
        let e = conf_err("max_connections = -3");
        assert!(e.to_string().contains("max_connections"), "{e}");
    }

    #[test]
    fn config_syntax_error_has_line() {
        let e = conf_err("port = 4222\ndebug = \n");
        assert!(matches!(e, OptsError::Config { line: 2, .. }), "{e}");
        assert!(e.to_string().starts_with("tern.toml:2:"), "{e}");
        let e = conf_err("port = 1\nport = 2\n");
        assert!(matches!(e, OptsError::Config { line: 2, .. }), "{e}");
    }

    fn nats_conf(text: &str) -> Result<Options, OptsError> {
        let mut o = Options::default();
        o.apply_config_str(text, Path::new("server.conf"))?;
        Ok(o)
    }

    #[test]
    fn nats_format_config() {
        let o = nats_conf(
            "# a comment\n\
             limit = 2MB\n\
             listen: 127.0.0.1:4333\n\
             server_name: \"edge-1\"\n\
             max_payload: $limit\n\
             max_pending 64MB\n\
             ping_interval: \"30s\"\n\
             write_deadline: 5\n\
             http: 8222\n\
             http_base_path: /mon\n\
             lame_duck_duration: \"45s\"\n\
             lame_duck_grace_period: \"5s\"\n\
             debug: true; logtime: false\n\
             max_connections: 1k\n",
        )
        .unwrap();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 4333));
        assert_eq!(o.server_name.as_deref(), Some("edge-1"));
        assert_eq!(o.max_payload, 2 << 20);
        assert_eq!(o.max_pending, 64 << 20);
        assert_eq!(o.ping_interval, Duration::from_secs(30));
        assert_eq!(o.write_deadline, Duration::from_secs(5));
        assert_eq!(o.http_port, Some(8222));
        assert_eq!(o.http_base_path, "/mon");
        assert_eq!(o.lame_duck_duration, Duration::from_secs(45));
        assert_eq!(o.lame_duck_grace_period, Duration::from_secs(5));
        assert!(o.debug && !o.logtime);
        assert_eq!(o.max_connections, 1000);
        let o = nats_conf("http: \"127.0.0.2:-1\"\n").unwrap();
        assert_eq!(
            (o.http_host.as_deref(), o.http_port),
            (Some("127.0.0.2"), Some(0))
        );
    }

    #[test]
    fn nats_format_errors_name_file_line_and_column() {
        let e = nats_conf("port: 4222\n  foo: 1\n").unwrap_err();
        assert_eq!(e.to_string(), "server.conf:2:3: unknown field \"foo\"");
        let e = nats_conf("jetstream {\n  store_dir: /x\n}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "server.conf:1:1: option \"jetstream\" needs JetStream, which Tern does not support yet"
        );
        let e = nats_conf("lame_duck_duration: \"3s\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid lame_duck_duration of 3s, minimum is 30 seconds"),
            "{e}"
        );
        let e = nats_conf("debug: \"yes please\"\n").unwrap_err();
        assert!(e.to_string().contains("must be a boolean"), "{e}");
        let e = nats_conf("port: \"x\n").unwrap_err();
        assert!(matches!(e, OptsError::Config { line: 1, .. }), "{e}");
        // nats-server's inert keys are accepted.
        assert!(nats_conf("connect_error_reports: 10\n").is_ok());
    }

    #[test]
    fn format_detection() {
        use ConfigFormat::*;
        assert_eq!(ConfigFormat::detect(Path::new("a.toml"), "port: 1"), Toml);
        assert_eq!(ConfigFormat::detect(Path::new("a.conf"), "[x]\n"), Nats);
        assert_eq!(
            ConfigFormat::detect(Path::new("cfg"), "[cluster]\nport = 1\n"),
            Toml
        );
        assert_eq!(
            ConfigFormat::detect(Path::new("cfg"), "port: 1\nroutes: [\n a\n]\n"),
            Nats
        );
    }

    #[test]
    fn reload_rules() {
        let old = Options::default();
        let mut new = old.clone();
        new.debug = true;
        new.max_payload = 2048;
        new.ping_interval = Duration::from_secs(5);
        new.log_file = Some(PathBuf::from("/tmp/x.log"));
        assert!(check_reload(&old, &new).is_ok());
        new.server_name = Some("other".into());
        assert_eq!(
            check_reload(&old, &new).unwrap_err().to_string(),
            "config reload not supported for ServerName: old=, new=other"
        );
        let mut new = old.clone();
        new.lame_duck_duration = Duration::from_secs(40);
        assert_eq!(
            check_reload(&old, &new).unwrap_err().to_string(),
            "config reload not supported for LameDuckDuration: old=2m0s, new=40s"
        );
        let mut new = old.clone();
        new.max_pending = 10;
        assert!(check_reload(&old, &new)
            .unwrap_err()
            .to_string()
            .contains("MaxPending: old=67108864, new=10"));
    }

    #[test]
    fn config_missing_file() {
        let e = parse_args(args(&["-c", "/nonexistent/dir/tern.toml"])).expect_err("missing");
        assert!(matches!(e, OptsError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/dir/tern.toml"));
    }

    #[test]
    fn validation() {
        let f = TempConf::new("max_payload = \"2MB\"\nmax_pending = \"1MB\"\n");
        assert_eq!(
            err(&["-c", &f.arg()]),
            "max_payload (2097152) cannot be higher than max_pending (1048576)"
        );
        let f = TempConf::new("max_payload = \"65MB\"\nmax_pending = \"1GB\"\n");
        assert!(err(&["-c", &f.arg()]).contains("cannot exceed 67108864"));
        let f = TempConf::new("max_payload = \"64MB\"\nmax_pending = \"1GB\"\n");
        assert_eq!(run(&["-c", &f.arg()]).max_payload, 64 << 20);
        assert_eq!(err(&["--shards", "0"]), "shards must be at least 1");
        assert_eq!(
            err(&["--shards", "-2"]),
            "invalid value \"-2\" for flag -shards: value out of range"
        );
        assert_eq!(err(&["-n", "a b"]), "server name cannot contain spaces");
    }
}
