//! Startup checks: can this process run glommio shards at all?
//!
//! glommio needs io_uring and a memlock limit of at least 512 KiB. When either is missing it
//! fails deep inside executor construction; this module finds out first and says, in one
//! sentence, what the operator must change.

use std::fmt;
use std::io;

/// glommio refuses to start below this memlock limit (bytes).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why the shards cannot start on this host.
#[derive(Debug)]
pub enum PreflightError {
    /// `kernel.io_uring_disabled` is set, or a seccomp profile refuses `io_uring_setup`.
    IoUringDisabled {
        /// The value of `/proc/sys/kernel/io_uring_disabled`, if readable.
        sysctl: Option<u8>,
    },
    /// The kernel has no io_uring (`ENOSYS`), or setup failed for another reason.
    IoUringUnavailable(io::Error),
    /// `RLIMIT_MEMLOCK` is below what glommio needs.
    MemlockTooLow {
        /// The current soft limit in bytes.
        have: u64,
    },
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightError::IoUringDisabled { sysctl: Some(v) } if *v > 0 => write!(
                f,
                "io_uring is disabled on this host (kernel.io_uring_disabled = {v}): \
                 run `sysctl -w kernel.io_uring_disabled=0` to let Tern start"
            ),
            PreflightError::IoUringDisabled { .. } => write!(
                f,
                "io_uring is blocked for this process (io_uring_setup returned EPERM): allow \
                 the io_uring_setup, io_uring_enter and io_uring_register syscalls in the \
                 seccomp profile (e.g. docker --security-opt seccomp=deploy/docker/seccomp-tern.json)"
            ),
            PreflightError::IoUringUnavailable(e) => write!(
                f,
                "io_uring is unavailable on this kernel ({e}): Tern needs Linux 5.8 or newer \
                 with io_uring enabled"
            ),
            PreflightError::MemlockTooLow { have } => write!(
                f,
                "the locked-memory limit is {} KiB but Tern needs at least {} KiB: raise it \
                 with `ulimit -l 65536` (or LimitMEMLOCK=64M in the systemd unit, \
                 --ulimit memlock=67108864 for docker)",
                have / 1024,
                MIN_MEMLOCK / 1024
            ),
        }
    }
}

impl std::error::Error for PreflightError {}

/// What preflight learned about the host.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// The memlock soft limit in bytes, `None` when unlimited.
    pub memlock: Option<u64>,
}

impl HostLimits {
    /// The registered I/O memory to give each of `shards` executors so that all of them fit
    /// in half the memlock limit (the rest is left for the rings themselves).
    pub fn io_memory_per_shard(&self, shards: usize) -> usize {
        const MIN: u64 = 64 * 1024;
        const MAX: u64 = 1024 * 1024;
        let budget = self.memlock.unwrap_or(u64::MAX) / 2 / shards.max(1) as u64;
        budget.clamp(MIN, MAX) as usize
    }
}

/// Checks io_uring and the memlock limit.
pub fn preflight() -> Result<HostLimits, PreflightError> {
    let memlock = memlock_limit();
    if let Some(have) = memlock {
        if have < MIN_MEMLOCK {
            return Err(PreflightError::MemlockTooLow { have });
        }
    }
    check_io_uring()?;
    Ok(HostLimits { memlock })
}

fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

fn check_io_uring() -> Result<(), PreflightError> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params`, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: the fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Err(PreflightError::IoUringDisabled { sysctl })
        }
        _ => Err(PreflightError::IoUringUnavailable(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_memory_fits_an_8_mib_limit() {
        let limits = HostLimits {
            memlock: Some(8 * 1024 * 1024),
        };
        for shards in 1..=16 {
            let per = limits.io_memory_per_shard(shards) as u64;
            assert!(per >= 64 * 1024);
            assert!(shards as u64 * per <= 4 * 1024 * 1024 || per == 64 * 1024);
        }
    }

    #[test]
    fn messages_say_what_to_change() {
        let m = PreflightError::MemlockTooLow { have: 64 * 1024 }.to_string();
        assert!(m.contains("ulimit -l"), "{m}");
        let d = PreflightError::IoUringDisabled { sysctl: Some(2) }.to_string();
        assert!(d.contains("kernel.io_uring_disabled"), "{d}");
    }
}
