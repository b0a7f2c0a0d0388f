//! What a confined command may not do that Landlock cannot judge: system calls refused, by
//! number and arguments, by a seccomp filter compiled once at startup and installed in every
//! confined child (exec commands and terminal shells alike):
//!
//! - **No setuid or setgid bits.** A root agent's commands run as uid 0 (without
//!   capabilities, see `privileges`), so they own what they create: a setuid program left in the
//!   workspace would run as root for whoever starts it. `chmod`, `fchmod`, `fchmodat` and
//!   `fchmodat2` with `S_ISUID` or `S_ISGID` in the mode fail with `EPERM`, and so do `open`,
//!   `openat`, `creat`, `mknod` and `mknodat` creating a file with one of them. `openat2` passes
//!   its mode through a pointer seccomp cannot read: it fails with `ENOSYS`, as on a kernel
//!   without it, so callers fall back to `openat`.
//! - **No user namespaces.** Inside one a command would hold every capability again (raw
//!   sockets, mounts in its own namespaces, code of the kernel only root reaches). `unshare`
//!   and `clone` with `CLONE_NEWUSER` fail with `EPERM`; `clone3` passes its flags through a
//!   pointer: it fails with `ENOSYS`, and the C libraries fall back to `clone` for threads,
//!   `fork` and `posix_spawn`.
//! - **No io_uring.** A ring's operations (opening files with any mode, creating sockets) do
//!   not pass through this filter: `io_uring_setup` fails with `EPERM`.
//! - **Named Unix sockets, where Landlock cannot confine them.** Before Landlock ABI 9
//!   (`LANDLOCK_ACCESS_FS_RESOLVE_UNIX`), connect(2) to a named Unix socket is not a file
//!   access Landlock checks, so a confined command could reach every socket its user can: the
//!   session D-Bus (`systemd-run --user` runs anything, unconfined), the ssh-agent,
//!   `docker.sock` (root). There `socket(AF_UNIX, ..)` fails with `EACCES`, and so does
//!   `socketpair(AF_UNIX, ..)` for datagram pairs (a datagram socket may `sendto` any named
//!   socket); stream and seqpacket pairs (the plumbing within one command) keep working.
//!
//! The BPF programs are compiled by seccompiler, with its architecture check: a process of
//! another ABI (e.g. 32-bit x86, whose system call numbers differ) is killed at its first
//! system call. A child only hands pointers to them to seccomp(2) between fork and exec, after
//! no_new_privs.

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
/// `fchmodat2` (Linux 6.6), the same number on x86_64 and aarch64; not in every libc crate.
const SYS_FCHMODAT2: libc::c_long = 452;
/// The mode bits no confined command may set.
const PRIVILEGE_BITS: [libc::mode_t; 2] = [libc::S_ISUID, libc::S_ISGID];
/// The open flags that make an open create a file with the mode given (`O_TMPFILE` without
/// its `O_DIRECTORY` part).
const CREATING_OPEN_FLAGS: [libc::c_int; 2] = [libc::O_CREAT, libc::O_TMPFILE & !libc::O_DIRECTORY];

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
pub struct CommandFilter {
    /// One program per errno (a seccompiler filter has one match action).
    programs: Vec<BpfProgram>,
    refuses_unix_sockets: bool,
}

impl CommandFilter {
    /// Compiles the filter for this machine's architecture, with the Unix socket rules when
    /// `refuse_unix_sockets` (Landlock does not confine them), after checking the kernel takes
    /// seccomp filters (blocking-free; once at startup).
    pub fn new(refuse_unix_sockets: bool) -> Result<CommandFilter, FilterError> {
        let arch = target_arch()?;
        kernel_supports_filters().map_err(FilterError::Kernel)?;
        let unconditionally = |nr| syscall_numbers(nr).map(|nr| (nr, vec![]));
        let refused = privilege_bit_rules()?
            .into_iter()
            .chain(user_namespace_rules()?)
            .chain(unconditionally(libc::SYS_io_uring_setup));
        let mut programs = vec![
            compile(refused, libc::EPERM, arch)?,
            compile(
                unconditionally(libc::SYS_clone3).chain(unconditionally(libc::SYS_openat2)),
                libc::ENOSYS,
                arch,
            )?,
        ];
        if refuse_unix_sockets {
            programs.push(compile(socket_rules()?, libc::EACCES, arch)?);
        }
        Ok(CommandFilter { programs, refuses_unix_sockets: refuse_unix_sockets })
    }

    /// Whether this filter keeps commands from creating Unix sockets.
    pub fn refuses_unix_sockets(&self) -> bool {
        self.refuses_unix_sockets
    }

    /// Installs the filter in the calling process. Runs in the forked child, after
    /// `PR_SET_NO_NEW_PRIVS`: system calls on memory prepared before the fork; no allocation,
    /// no lock.
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

type Rules = Vec<(i64, Vec<SeccompRule>)>;

/// Argument `index` (32 bits) has every bit of `bits` set.
fn has_bits(index: u8, bits: u64) -> Result<SeccompCondition, FilterError> {
    Ok(SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bits), bits)?)
}

/// The mode changes and file creations that would set `S_ISUID` or `S_ISGID`: each call with
/// the index of its mode argument and, for the open calls, of the flags that make it create.
fn privilege_bit_rules() -> Result<Rules, FilterError> {
    let mut calls: Vec<(libc::c_long, u8, Option<u8>)> =
        vec![(libc::SYS_fchmod, 1, None), (libc::SYS_fchmodat, 2, None), (SYS_FCHMODAT2, 2, None)];
    calls.extend([(libc::SYS_mknodat, 2, None), (libc::SYS_openat, 3, Some(2))]);
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (libc::SYS_chmod, 1, None),
        (libc::SYS_mknod, 1, None),
        (libc::SYS_creat, 1, None),
        (libc::SYS_open, 2, Some(1)),
    ]);
    let mut rules = Vec::new();
    for (nr, mode, creating_flags) in calls {
        let mut any = Vec::new();
        for bit in PRIVILEGE_BITS {
            let with_bit = has_bits(mode, u64::from(bit))?;
            match creating_flags {
                None => any.push(SeccompRule::new(vec![with_bit])?),
                Some(flags) => {
                    for creating in CREATING_OPEN_FLAGS {
                        let creates = has_bits(flags, creating as u64)?;
                        any.push(SeccompRule::new(vec![creates, with_bit.clone()])?);
                    }
                }
            }
        }
        rules.extend(syscall_numbers(nr).map(|nr| (nr, any.clone())));
    }
    Ok(rules)
}

/// `unshare` and `clone` asking for a new user namespace (`flags` is their first argument).
fn user_namespace_rules() -> Result<Rules, FilterError> {
    let new_user = || -> Result<SeccompRule, FilterError> {
        Ok(SeccompRule::new(vec![has_bits(0, libc::CLONE_NEWUSER as u64)?])?)
    };
    let mut rules = Vec::new();
    for nr in [libc::SYS_unshare, libc::SYS_clone] {
        for nr in syscall_numbers(nr) {
            rules.push((nr, vec![new_user()?]));
        }
    }
    Ok(rules)
}

/// socket(AF_UNIX, ..) and socketpair(AF_UNIX, SOCK_DGRAM or SOCK_RAW, ..) — the kernel makes a
/// Unix `SOCK_RAW` a datagram socket.
fn socket_rules() -> Result<Rules, FilterError> {
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

    /// What python prints running `script` (after the `attempt` helper), under `filter` or not.
    fn probe(filter: Option<CommandFilter>, script: &str) -> String {
        let prelude = r#"
import ctypes, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
X32 = sys.argv[1] == "x32"
def attempt(name, f):
    try:
        f(); print(name, "ok")
    except OSError as e:
        print(name, e.errno)
def raw(name, *args):
    rc = libc.syscall(*args)
    print(name, "ok" if rc >= 0 else ctypes.get_errno())
"#;
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &format!("{prelude}{script}")]);
        cmd.arg(if cfg!(target_arch = "x86_64") { "x32" } else { "-" });
        if let Some(filter) = filter.map(Arc::new) {
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

    const SOCKETS: &str = r#"
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
attempt("pair", lambda: socket.socketpair())
attempt("seqpacket-pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
attempt("dgram-pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
raw("io_uring", 425, 1, ctypes.create_string_buffer(120))
if X32:
    raw("x32-unix", 0x40000000 | 41, socket.AF_UNIX, socket.SOCK_STREAM, 0)
"#;

    #[test]
    fn unix_sockets_and_io_uring_are_refused_while_stream_pairs_and_inet_work() {
        let unfiltered = probe(None, SOCKETS);
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
        let filter = CommandFilter::new(true).unwrap();
        assert!(filter.refuses_unix_sockets());
        assert_eq!(probe(Some(filter), SOCKETS), expected);

        let without_socket_rules = CommandFilter::new(false).unwrap();
        assert!(!without_socket_rules.refuses_unix_sockets());
        let out = probe(Some(without_socket_rules), SOCKETS);
        assert!(out.starts_with("unix ok\npair ok\nseqpacket-pair ok\ndgram-pair ok\ninet ok\n"), "{out}");
        assert!(out.contains(&format!("io_uring {eperm}\n")), "io_uring stays refused: {out}");
    }

    /// Every way to a setuid or setgid bit, ordinary modes, a user namespace, threads and a
    /// child process; `{dir}` is a scratch directory.
    const PRIVILEGES: &str = r#"
d = sys.argv[2]
def touch(name, mode=0o644):
    p = os.path.join(d, name)
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, mode))
    return p
f = touch("f")
attempt("chmod-u+s", lambda: os.chmod(f, 0o4755))
attempt("chmod-g+s", lambda: os.chmod(f, 0o2755))
attempt("fchmod-u+s", lambda: os.fchmod(os.open(f, os.O_RDONLY), 0o4700))
raw("fchmodat2-g+s", 452, -100, f.encode(), 0o2755, 0)
attempt("chmod-755", lambda: os.chmod(f, 0o755))
attempt("open-creat-u+s", lambda: touch("suid", 0o4755))
attempt("open-tmpfile-g+s", lambda: os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o2755))
attempt("open-existing-any-mode", lambda: os.close(os.open(f, os.O_RDONLY, 0o6777)))
attempt("mknod-u+s", lambda: os.mknod(os.path.join(d, "node"), 0o104755))
attempt("creat-644", lambda: touch("plain"))
print("modes", " ".join(oct(os.stat(os.path.join(d, n)).st_mode & 0o7777) for n in sorted(os.listdir(d))))
rc = libc.unshare(0x10000000)  # CLONE_NEWUSER
print("unshare-user", "ok" if rc == 0 else ctypes.get_errno())
raw("clone3", 435, None, 0)
out = []
t = threading.Thread(target=lambda: out.append("thread ran")); t.start(); t.join()
print(out[0])
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"#;

    fn privileges(filter: Option<CommandFilter>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let script = format!("sys.argv.append({:?})\n{PRIVILEGES}", dir.path().display().to_string());
        probe(filter, &script)
    }

    #[test]
    fn setuid_and_setgid_bits_and_user_namespaces_are_refused_while_threads_and_fork_work() {
        let unfiltered = privileges(None);
        assert!(
            unfiltered.contains("chmod-u+s ok\n") && unfiltered.contains("open-creat-u+s ok\n"),
            "{unfiltered}"
        );
        let (eperm, enosys) = (libc::EPERM, libc::ENOSYS);
        let expected = format!(
            "chmod-u+s {eperm}\nchmod-g+s {eperm}\nfchmod-u+s {eperm}\nfchmodat2-g+s {eperm}\nchmod-755 ok\n\
             open-creat-u+s {eperm}\nopen-tmpfile-g+s {eperm}\nopen-existing-any-mode ok\nmknod-u+s {eperm}\n\
             creat-644 ok\nmodes 0o755 0o644\nunshare-user {eperm}\nclone3 {enosys}\nthread ran\nfork 7\n"
        );
        assert_eq!(privileges(Some(CommandFilter::new(false).unwrap())), expected);
    }
}
