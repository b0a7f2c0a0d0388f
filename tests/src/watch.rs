//! Observers for the confinement, limits and soak tests: an inotify watch that sees every access
//! to a directory outside the workspace root (atime is no witness: filesystems here are mounted
//! `relatime`, so a read need not touch it), and a process's resident memory, open descriptors
//! and threads from `/proc`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Every access to the watched directories, their entries included: open, read, write, create,
/// delete, move, attribute change. A listing of a watched directory is an open of it, so any
/// resolution that walks into one is seen too.
pub struct AccessWatch {
    fd: OwnedFd,
}

impl AccessWatch {
    /// Watches each of `dirs` (not recursively: name every directory to watch).
    pub fn new(dirs: &[&Path]) -> AccessWatch {
        // SAFETY: plain syscall; the returned descriptor is checked and owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(raw >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for dir in dirs {
            let path = CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
            // SAFETY: `path` is a valid C string for the duration of the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_ALL_EVENTS) };
            assert!(wd >= 0, "inotify_add_watch {}: {}", dir.display(), std::io::Error::last_os_error());
        }
        AccessWatch { fd }
    }

    /// The events that arrived since the last call, as `(mask, name)` pairs (empty name: the
    /// watched directory itself).
    pub fn take(&self) -> Vec<(u32, String)> {
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return events;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event header at `at` (read_unaligned copes
                // with the byte buffer's alignment).
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast::<libc::inotify_event>()) };
                let name_bytes = &buf[at + header..at + header + ev.len as usize];
                let name = name_bytes.split(|&b| b == 0).next().unwrap_or_default();
                events.push((ev.mask, String::from_utf8_lossy(name).into_owned()));
                at += header + ev.len as usize;
            }
        }
    }
}

/// A number field of `/proc/<pid>/status` (`"VmRSS"`, `"VmHWM"` in KiB, `"Threads"`); None
/// once the process is gone.
pub fn status_field(pid: impl std::fmt::Display, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    value.split_whitespace().next()?.parse().ok()
}

/// Resident memory, open descriptors and threads of one process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: u64,
}

impl ProcStats {
    /// Reads `/proc/<pid>`; None once the process is gone.
    pub fn of(pid: i32) -> Option<ProcStats> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some(ProcStats { rss_kib: status_field(pid, "VmRSS")?, fds, threads: status_field(pid, "Threads")? })
    }
}

impl std::fmt::Display for ProcStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.1} MiB, {} fds, {} threads", self.rss_kib as f64 / 1024.0, self.fds, self.threads)
    }
}

/// The `p`-th percentile (0..=100) of `samples`, sorted here; zero for no samples.
pub fn percentile(samples: &mut [std::time::Duration], p: usize) -> std::time::Duration {
    if samples.is_empty() {
        return std::time::Duration::ZERO;
    }
    samples.sort();
    samples[((samples.len() - 1) * p) / 100]
}
