//! Confined children run without Linux capabilities. Landlock and the seccomp filter bound what
//! a command may touch, but a child of an agent running as root would still hold root's
//! capabilities: load a kernel module from memory, open raw sockets, reboot the machine,
//! override file permissions. So, last in the pre-exec hook, the child empties every capability
//! set it has — ambient, bounding (which is what a uid-0 process gets back on execve), then
//! effective, permitted and inheritable. An unprivileged agent's children have none to begin
//! with; for them this only makes sure of it.
//!
//! Everything here is plain system calls on values read before the fork: no allocation.

use std::io;

/// The highest capability number when the kernel does not say (`CAP_CHECKPOINT_RESTORE`).
const FALLBACK_LAST_CAP: u32 = 40;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability of the calling process; prepared once at startup.
#[derive(Debug, Clone, Copy)]
pub struct CapabilityDrop {
    last_cap: u32,
}

/// `struct __user_cap_header_struct` of linux/capability.h.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of linux/capability.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

impl CapabilityDrop {
    /// Reads the kernel's highest capability number (blocking-free: one small procfs read).
    pub fn new() -> Self {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(FALLBACK_LAST_CAP)
            .min(63);
        CapabilityDrop { last_cap }
    }

    /// Empties the calling process's capability sets. Runs in the forked child (see module doc).
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY (all prctl calls): integer arguments only; they change this process's sets.
        // EINVAL: a kernel without ambient capabilities has none to clear.
        if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
        for cap in 0..=self.last_cap {
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                match io::Error::last_os_error().raw_os_error() {
                    // Without CAP_SETPCAP the bounding set stays, but such a process (not uid 0,
                    // under no_new_privs) cannot gain what it lacks on execve anyway.
                    Some(libc::EPERM) => break,
                    Some(libc::EINVAL) => continue, // a number this kernel does not know
                    _ => return Err(io::Error::last_os_error()),
                }
            }
        }
        let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let none = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        // SAFETY: capset(2) reads one header and two data structs laid out as the kernel's.
        if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, none.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capability lines of /proc/self/status, as a forked child sees them.
    fn child_capabilities(drop: Option<CapabilityDrop>) -> String {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("grep");
        cmd.args(["^Cap", "/proc/self/status"]);
        if let Some(drop) = drop {
            // SAFETY: `apply` only makes system calls (see its doc).
            unsafe { cmd.pre_exec(move || drop.apply()) };
        }
        let out = cmd.output().expect("grep runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn a_child_keeps_no_capability_in_any_set() {
        let caps = child_capabilities(Some(CapabilityDrop::new()));
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            let line = caps.lines().find(|l| l.starts_with(set)).unwrap_or_else(|| panic!("{set}: {caps}"));
            assert!(line.ends_with("0000000000000000"), "{line}");
        }
        if nix::unistd::geteuid().is_root() {
            let bounding = caps.lines().find(|l| l.starts_with("CapBnd")).expect("CapBnd");
            assert!(bounding.ends_with("0000000000000000"), "{bounding}");
            let without = child_capabilities(None);
            assert!(
                !without.contains("CapEff:\t0000000000000000"),
                "root's children hold capabilities: {without}"
            );
        }
    }
}
