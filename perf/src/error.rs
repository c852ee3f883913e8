//! The one error type of tern-bench. Owns the list of ways a run can fail; it knows nothing of
//! how errors are reported (main prints them and exits non-zero).

use std::fmt;
use std::io;

/// Everything that can stop a benchmark run.
#[derive(Debug)]
pub enum Error {
    /// A socket, file or process operation failed; the string says what was being done.
    Io(String, io::Error),
    /// The server sent bytes that are not the NATS protocol (or not what this step expected).
    Protocol(String),
    /// The server answered `-ERR ...`.
    Server(String),
    /// A wait exceeded its limit (handshake, PONG, server start-up).
    Timeout(String),
    /// A server process could not be started or did not announce its port.
    Spawn(String),
    /// The command line or a scenario name is invalid.
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Protocol(s) => write!(f, "protocol error: {s}"),
            Error::Server(s) => write!(f, "server error: {s}"),
            Error::Timeout(s) => write!(f, "timed out: {s}"),
            Error::Spawn(s) => write!(f, "cannot start server: {s}"),
            Error::Config(s) => write!(f, "invalid configuration: {s}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Attaches a description to an `io::Result`.
pub trait IoContext<T> {
    /// Maps an `io::Error` to [`Error::Io`] with `what` as context.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io(what(), e))
    }
}
