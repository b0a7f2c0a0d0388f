//! The resource limits of one command: a request's `OperationResourcePolicy` plus the agent's
//! process cap, enforced by a per-command cgroup where the machine offers one, else by
//! setrlimit in the child: RLIMIT_AS for memory (it bounds address space, which is larger than
//! what a process really uses, so it is a rougher limit) and, for a non-root agent, RLIMIT_NPROC
//! (which counts all the user's processes, so it is set to what the user runs now plus the cap).
//! The kernel exempts root from RLIMIT_NPROC: a root agent without a pids cgroup has no cap and
//! says so in its capabilities. A command whose request sets no memory limit gets the agent's
//! default one, but only from a memory cgroup: as a default, RLIMIT_AS would break programs
//! that merely reserve address space (Go and Java runtimes, sanitizers).

use std::io;
use std::sync::Arc;

use tether_proto::pb;

use super::cgroup::{CgroupLimits, CommandCgroup};
use crate::process::PreExecHook;

/// How a limit is enforced; mirrors `pb::LimitEnforcement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    None,
    Cgroup,
    Rlimit,
}

impl Enforcement {
    pub fn to_proto(self) -> pb::LimitEnforcement {
        match self {
            Enforcement::None => pb::LimitEnforcement::None,
            Enforcement::Cgroup => pb::LimitEnforcement::Cgroup,
            Enforcement::Rlimit => pb::LimitEnforcement::Rlimit,
        }
    }
}

/// A request's resource policy, with 0 meaning "no limit" (an unset optional field reads 0 in
/// some clients).
pub fn requested(policy: Option<&pb::OperationResourcePolicy>) -> CgroupLimits {
    let nonzero = |v: Option<u64>| v.filter(|&v| v > 0);
    let Some(policy) = policy else { return CgroupLimits::default() };
    CgroupLimits {
        pids_max: None,
        memory_max: nonzero(policy.memory_max_bytes),
        memory_high: nonzero(policy.memory_high_bytes),
        cpu_millicores: policy.cpu_max_millicores.filter(|&m| m > 0),
    }
}

/// The memory limit of a command whose request sets none: `configured` (0 = none), by default
/// half the machine's RAM, and none at all without a memory cgroup to enforce it.
pub fn default_memory_max(memory_cgroup: bool, configured: Option<u64>) -> Option<u64> {
    if !memory_cgroup {
        return None;
    }
    let half_the_ram = || {
        let ram = sysinfo::System::new().map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        });
        ram.unwrap_or(0) / 2
    };
    let bytes = configured.unwrap_or_else(half_the_ram);
    (bytes > 0).then_some(bytes)
}

/// What one command runs under, prepared in the agent before the spawn.
#[derive(Debug, Default)]
pub struct CommandLimits {
    pub(super) cgroup: Option<CommandCgroup>,
    /// RLIMIT_AS for the child, in bytes.
    pub(super) address_space: Option<u64>,
    /// RLIMIT_NPROC for the child.
    pub(super) processes: Option<u64>,
}

impl CommandLimits {
    /// No limits at all (tests, tools).
    pub fn none() -> Self {
        Self::default()
    }

    /// The pre-exec steps for the child: join the cgroups, then set the rlimits.
    pub fn hooks(&self) -> Vec<PreExecHook> {
        let mut hooks: Vec<PreExecHook> = self.cgroup.iter().map(CommandCgroup::hook).collect();
        let (address_space, processes) = (self.address_space, self.processes);
        if address_space.is_some() || processes.is_some() {
            hooks.push(Arc::new(move || {
                if let Some(bytes) = address_space {
                    set_rlimit(libc::RLIMIT_AS, bytes)?;
                }
                if let Some(n) = processes {
                    set_rlimit(libc::RLIMIT_NPROC, n)?;
                }
                Ok(())
            }));
        }
        hooks
    }

    /// Whether killing the command's processes reaches beyond its process group.
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// Kills every process of the command and removes its cgroup (blocking; bounded). For a
    /// command that was killed: timeout, cancel.
    pub fn kill(mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill();
            cgroup.close();
        }
    }

    /// After a normal exit: removes the cgroup once empty; what the command left running keeps
    /// running, under its limits.
    pub fn release(mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.close();
        }
    }

    /// [`CommandLimits::kill`] (when `kill`) or [`CommandLimits::release`], off the async workers.
    pub async fn settle(self, kill: bool) {
        if !self.has_cgroup() {
            return;
        }
        let task = tokio::task::spawn_blocking(move || if kill { self.kill() } else { self.release() });
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "cleaning up a command's cgroup");
        }
    }
}

/// setrlimit in the child: both soft and hard, so the command cannot raise it back.
fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
    // SAFETY: setrlimit reads the struct on our stack and changes only this process's limits.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many tasks (threads included, as RLIMIT_NPROC counts them) the real user `uid` runs now.
pub fn user_task_count(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| tasks_of(&status, uid))
        .sum()
}

/// The thread count in a `/proc/<pid>/status` text, if its real uid is `uid`.
fn tasks_of(status: &str, uid: u32) -> Option<u64> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let real_uid: u32 = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    (real_uid == uid).then(|| field("Threads:").and_then(|t| t.parse().ok()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsStr;
    use std::path::Path;

    use super::*;
    use crate::process::Launcher;

    #[test]
    fn zero_and_unset_fields_mean_no_limit() {
        assert_eq!(requested(None), CgroupLimits::default());
        let policy = pb::OperationResourcePolicy {
            memory_max_bytes: Some(0),
            memory_high_bytes: Some(1 << 20),
            cpu_max_millicores: Some(0),
        };
        assert_eq!(
            requested(Some(&policy)),
            CgroupLimits { memory_high: Some(1 << 20), ..Default::default() }
        );
    }

    #[test]
    fn the_default_memory_limit_needs_a_memory_cgroup_and_0_means_none() {
        assert_eq!(default_memory_max(false, Some(1 << 30)), None);
        assert_eq!(default_memory_max(true, Some(1 << 30)), Some(1 << 30));
        assert_eq!(default_memory_max(true, Some(0)), None);
        let half = default_memory_max(true, None).expect("half the RAM");
        assert!(half >= 64 << 20, "half of this machine's RAM: {half}");
    }

    #[test]
    fn task_counts_come_from_the_real_uid_and_thread_count() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nThreads:\t7\n";
        assert_eq!(tasks_of(status, 1000), Some(7));
        assert_eq!(tasks_of(status, 0), None);
        assert!(user_task_count(nix::unistd::getuid().as_raw()) >= 1, "this test process counts");
    }

    /// The RLIMIT_AS fallback really stops a large allocation and leaves a small one alone.
    #[test]
    fn address_space_limit_fails_a_large_allocation() {
        let launcher = Launcher::from_env(std::env::vars_os(), &[] as &[&str]);
        let limits = CommandLimits { address_space: Some(256 << 20), ..CommandLimits::none() };
        let run = |mib: u32| {
            let script = format!("b = bytearray({mib} * 1024 * 1024); print('allocated')");
            let mut cmd = launcher.command(
                OsStr::new("/usr/bin/python3"),
                &["-c".into(), script.into()],
                Path::new("/"),
                &HashMap::new(),
                &limits.hooks(),
            );
            cmd.kill_on_drop(true);
            let out = cmd.as_std_mut().output().expect("python3 runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, stdout, stderr) = run(16);
        assert!(ok && stdout.contains("allocated"), "16 MiB under 256 MiB: {stdout} {stderr}");
        let (ok, stdout, stderr) = run(512);
        assert!(!ok && !stdout.contains("allocated"), "512 MiB under 256 MiB: {stdout}");
        assert!(stderr.contains("MemoryError"), "{stderr}");
    }
}
