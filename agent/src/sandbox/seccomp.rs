//! Named Unix sockets, on kernels whose Landlock cannot confine them. Before Landlock ABI 9
//! (`LANDLOCK_ACCESS_FS_RESOLVE_UNIX`), connect(2) to a named Unix socket is not a file access
//! Landlock checks, so a confined command could reach every socket its user can: the session
//! D-Bus (`systemd-run --user` runs anything, unconfined), the ssh-agent, `docker.sock` (root).
//! There, a seccomp filter refuses to create Unix sockets at all:
//!
//! - `socket(AF_UNIX, ..)` fails with `EACCES`;
//! - `socketpair(AF_UNIX, ..)` keeps working for stream and seqpacket pairs (the plumbing within
//!   one command), but not for datagram ones: a datagram socket may `sendto` any named socket;
//! - `io_uring_setup` fails with `EPERM`: `IORING_OP_SOCKET` creates a socket without socket(2).
//!
//! The BPF programs are compiled (by seccompiler, with its architecture check: a process of
//! another ABI, e.g. 32-bit x86, is killed at its first system call) once at startup; a child
//! only hands a pointer to them to seccomp(2) between fork and exec, after no_new_privs.

use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

/// The socket type bits of socket(2)'s `type` (without `SOCK_NONBLOCK`, `SOCK_CLOEXEC`).
const SOCK_TYPE_MASK: u64 = 0xf;
/// x32 system calls reach the x86_64 filter with this bit set in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// Why the filter could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("seccomp filters are not built for this architecture ({0})")]
    Architecture(&'static str),
    #[error("this kernel does not offer seccomp filters: {0}")]
    Kernel(io::Error),
    #[error("compiling the seccomp filter failed: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

/// The compiled filter, shared by every spawn.
#[derive(Debug)]
pub struct UnixSocketFilter {
    /// One program per errno (a seccompiler filter has one match action).
    programs: [BpfProgram; 2],
}

impl UnixSocketFilter {
    /// Compiles the filter for this machine's architecture, after checking the kernel takes
    /// seccomp filters (blocking-free; once at startup).
    pub fn new() -> Result<UnixSocketFilter, FilterError> {
        let arch = target_arch()?;
        kernel_supports_filters().map_err(FilterError::Kernel)?;
        let sockets = compile(socket_rules()?, libc::EACCES, arch)?;
        let io_uring =
            compile(syscall_numbers(libc::SYS_io_uring_setup).map(|nr| (nr, vec![])), libc::EPERM, arch)?;
        Ok(UnixSocketFilter { programs: [sockets, io_uring] })
    }

    /// Installs the filter in the calling process. Runs in the forked child, after
    /// `PR_SET_NO_NEW_PRIVS`: two system calls on memory prepared before the fork; no
    /// allocation, no lock.
    pub fn apply(&self) -> io::Result<()> {
        for program in &self.programs {
            let prog = SockFprog {
                len: u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
                filter: program.as_ptr(),
            };
            // SAFETY: seccomp(2) copies `prog.len` instructions from `prog.filter`, which points
            // into a live Vec of exactly that many `sock_filter`s (repr(C), the kernel's layout).
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &raw const prog)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// `struct sock_fprog` of linux/filter.h.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const sock_filter,
}

fn target_arch() -> Result<TargetArch, FilterError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(FilterError::Architecture(other)),
    }
}

/// The numbers a system call may arrive with: on x86_64 also its x32 number, which the
/// architecture check lets through (same `AUDIT_ARCH_X86_64`).
fn syscall_numbers(nr: libc::c_long) -> impl Iterator<Item = i64> {
    #[cfg(target_arch = "x86_64")]
    let numbers = [nr, nr | X32_SYSCALL_BIT];
    #[cfg(not(target_arch = "x86_64"))]
    let numbers = [nr];
    numbers.into_iter()
}

/// socket(AF_UNIX, ..) and socketpair(AF_UNIX, SOCK_DGRAM or SOCK_RAW, ..) — the kernel makes a
/// Unix `SOCK_RAW` a datagram socket.
fn socket_rules() -> Result<Vec<(i64, Vec<SeccompRule>)>, FilterError> {
    let unix = || SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_UNIX as u64);
    let of_type = |t: libc::c_int| {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK), t as u64)
    };
    let mut rules = Vec::new();
    for nr in syscall_numbers(libc::SYS_socket) {
        rules.push((nr, vec![SeccompRule::new(vec![unix()?])?]));
    }
    for nr in syscall_numbers(libc::SYS_socketpair) {
        let datagram = [libc::SOCK_DGRAM, libc::SOCK_RAW]
            .into_iter()
            .map(|t| SeccompRule::new(vec![unix()?, of_type(t)?]))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push((nr, datagram));
    }
    Ok(rules)
}

/// A program that returns `errno` for the calls `rules` match and allows everything else.
fn compile(
    rules: impl IntoIterator<Item = (i64, Vec<SeccompRule>)>,
    errno: libc::c_int,
    arch: TargetArch,
) -> Result<BpfProgram, FilterError> {
    let errno = u32::try_from(errno).unwrap_or(libc::EPERM as u32);
    let filter = SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Whether seccomp(2) takes filters that return an errno (Linux 4.14 and later, built with
/// `CONFIG_SECCOMP_FILTER`); a child failing to install one could not run at all.
fn kernel_supports_filters() -> io::Result<()> {
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer; it changes nothing.
    let rc =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_ACTION_AVAIL, 0u32, &raw const action) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::sync::Arc;

    use super::*;

    /// What python reports for each attempt, run under the filter (or not).
    fn probe(filtered: bool) -> String {
        let script = r#"
import ctypes, socket
def attempt(name, f):
    try:
        f(); print(name, "ok")
    except OSError as e:
        print(name, e.errno)
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
attempt("pair", lambda: socket.socketpair())
attempt("seqpacket-pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
attempt("dgram-pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
rc = libc.syscall(425, 1, params)
print("io_uring", "ok" if rc >= 0 else ctypes.get_errno())
if X32:
    rc = libc.syscall(0x40000000 | 41, socket.AF_UNIX, socket.SOCK_STREAM, 0)
    print("x32-unix", "ok" if rc >= 0 else ctypes.get_errno())
"#;
        let script =
            format!("X32 = {}\n{script}", if cfg!(target_arch = "x86_64") { "True" } else { "False" });
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script]);
        if filtered {
            let filter = Arc::new(UnixSocketFilter::new().unwrap());
            // SAFETY: the closure only makes the system calls of `apply` (and prctl).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    filter.apply()
                });
            }
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn unix_sockets_and_io_uring_are_refused_while_stream_pairs_and_inet_work() {
        let unfiltered = probe(false);
        assert!(
            unfiltered.starts_with("unix ok\npair ok\nseqpacket-pair ok\ndgram-pair ok\ninet ok\n"),
            "{unfiltered}"
        );
        let io_uring_enabled =
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "0");
        assert!(!io_uring_enabled || unfiltered.contains("io_uring ok\n"), "{unfiltered}");
        let (eacces, eperm) = (libc::EACCES, libc::EPERM);
        let mut expected = format!(
            "unix {eacces}\npair ok\nseqpacket-pair ok\ndgram-pair {eacces}\ninet ok\nio_uring {eperm}\n"
        );
        if cfg!(target_arch = "x86_64") {
            // Refused by the filter whether or not this kernel runs x32 programs.
            expected.push_str(&format!("x32-unix {eacces}\n"));
        }
        assert_eq!(probe(true), expected);
    }
}
