//! Per-command cgroups: the limits that must bind a whole process tree (a cap on processes,
//! which root is not held to by RLIMIT_NPROC; memory; CPU) and a handle on every process a
//! command started, even one that left its process group. Before a spawn the agent makes
//! `<its cgroup>/tether-<agent pid>-<agent id>/cmd-<n>` in each hierarchy it needs, writes the
//! limits and opens `cgroup.procs`; the child joins by writing "0" to that descriptor between
//! fork and exec. The agent's pid in the name lets any later agent remove what a killed one
//! left behind.
//!
//! The base directory is the parent of every command's cgroup, so a cap on the processes of
//! all commands together is its `pids.max`.
//!
//! When a command is killed (timeout, cancel, fence) every process of its cgroup is killed and
//! the cgroup removed. After a normal exit the processes it left running on purpose keep
//! running (PROTOCOL.md §5), still under its limits, until its fence scope advances or the
//! agent stops (`linger`). A command's cgroup dropped unsettled (its request's future dropped)
//! is killed and removed on a blocking thread, never on an async worker. The agent's shutdown
//! waits for that, then kills whatever is left in any of its command cgroups and removes its
//! own directories; an agent that could not (it was SIGKILLed) leaves that to the next one
//! started in the same cgroup (`discover`).

mod command;
mod discover;
mod leaf;
mod linger;

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use command::CommandCgroup;

/// How long shutdown waits for the teardowns of dropped command cgroups (each bounded by
/// `command::KILL_WAIT`, all running at once).
const TEARDOWN_WAIT: Duration = Duration::from_secs(4);
/// CFS period for CPU limits (the kernel default).
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts.
const CPU_MIN_QUOTA_US: u64 = 1_000;

/// A cgroup controller the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Pids,
    Memory,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Pids, Controller::Memory, Controller::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Controller::Pids => "pids",
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }

    /// A file that exists in a v1 cgroup when this controller is bound to its hierarchy.
    fn v1_probe_file(self) -> &'static str {
        match self {
            Controller::Pids => "pids.max",
            Controller::Memory => "memory.limit_in_bytes",
            Controller::Cpu => "cpu.cfs_quota_us",
        }
    }
}

/// Cgroup API version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A hierarchy where the agent makes command cgroups, under `base`.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub version: Version,
    pub base: PathBuf,
    pub controllers: Vec<Controller>,
    /// Its memory controller accounts swap (`memory.swap.max`, v1 `memory.memsw.limit_in_bytes`;
    /// absent when the kernel does not account swap), so a memory limit can include swap.
    pub swap: bool,
}

impl Hierarchy {
    /// The control file that bounds swap in this hierarchy's version.
    pub fn swap_file(version: Version) -> &'static str {
        match version {
            Version::V2 => "memory.swap.max",
            Version::V1 => "memory.memsw.limit_in_bytes",
        }
    }
}

/// The limits of one command's cgroup; `None` leaves a controller's default (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub pids_max: Option<u64>,
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub cpu_millicores: Option<u32>,
}

/// The agent's cgroup hierarchies and the command cgroups that outlived their command.
#[derive(Debug)]
pub struct Cgroups {
    hierarchies: Vec<Hierarchy>,
    /// The v2 leaf the agent moved itself into at startup, left at shutdown.
    leaf: Option<leaf::AgentLeaf>,
    next: AtomicU64,
    lingering: linger::Lingering,
    /// Teardowns of dropped command cgroups not finished yet, and their signal.
    teardowns: Mutex<usize>,
    torn_down: Condvar,
}

impl Cgroups {
    /// Finds and prepares the hierarchies (blocking; once at startup). `agent_name` names the
    /// agent's base directory. Also returns notes on what could not be used.
    pub fn discover(agent_name: &str) -> (Option<Arc<Cgroups>>, Vec<String>) {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let mounts = discover::parse_mountinfo(&read("/proc/self/mountinfo"));
        let members = discover::parse_proc_cgroup(&read("/proc/self/cgroup"));
        let base_name = format!("tether-{}-{}", std::process::id(), sanitize(agent_name));
        let setup = discover::setup(discover::candidates(&mounts, &members), &base_name);
        if setup.hierarchies.is_empty() {
            let cgroups = Cgroups::new(Vec::new(), setup.leaf);
            cgroups.leave_leaf();
            return (None, setup.notes);
        }
        (Some(Arc::new(Cgroups::new(setup.hierarchies, setup.leaf))), setup.notes)
    }

    fn new(hierarchies: Vec<Hierarchy>, leaf: Option<leaf::AgentLeaf>) -> Cgroups {
        Cgroups {
            hierarchies,
            leaf,
            next: AtomicU64::new(0),
            lingering: linger::Lingering::default(),
            teardowns: Mutex::new(0),
            torn_down: Condvar::new(),
        }
    }

    /// The hierarchy hosting `controller`, if any.
    fn hierarchy(&self, controller: Controller) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.controllers.contains(&controller))
    }

    pub fn has(&self, controller: Controller) -> bool {
        self.hierarchy(controller).is_some()
    }

    /// Whether `memory.high` can be set (cgroup v2 only).
    pub fn memory_high(&self) -> bool {
        self.hierarchy(Controller::Memory).is_some_and(|h| h.version == Version::V2)
    }

    /// Where the hierarchies are, and whether memory limits include swap, for logs.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .hierarchies
            .iter()
            .map(|h| {
                let names: Vec<&str> = h.controllers.iter().map(|c| c.name()).collect();
                let swap = match (h.controllers.contains(&Controller::Memory), h.swap) {
                    (false, _) => "",
                    (true, true) => ", memory limits include swap",
                    (true, false) => ", memory limits do not bound swap (no swap accounting)",
                };
                format!("{} ({:?}) in {}{swap}", names.join("+"), h.version, h.base.display())
            })
            .collect();
        parts.join(", ")
    }

    /// Caps the processes of all commands together at `max` (blocking; one sysfs write): the
    /// `pids.max` of the base directory that holds every command's pids cgroup. False when
    /// there is no pids hierarchy.
    pub fn cap_total_processes(&self, max: u64) -> io::Result<bool> {
        let Some(h) = self.hierarchy(Controller::Pids) else { return Ok(false) };
        fs::write(h.base.join("pids.max"), max.to_string())?;
        Ok(true)
    }

    /// Makes the cgroups of one command with `limits` (blocking; a few small sysfs writes). The
    /// pids hierarchy is always used, so every process of the command can be found and killed.
    /// What the command leaves running after a normal exit is killed when `until` fires (its
    /// fence scope advanced past its epoch, or the agent stops).
    pub fn create(
        self: &Arc<Self>,
        limits: &CgroupLimits,
        until: CancellationToken,
    ) -> io::Result<CommandCgroup> {
        self.sweep();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("cmd-{n}");
        let mut cgroup = CommandCgroup::new(self.clone(), until);
        let mut join = Vec::new();
        for h in self.hierarchies.iter().filter(|h| needed(h, limits)) {
            let dir = h.base.join(&name);
            fs::create_dir(&dir)?;
            cgroup.add(dir.clone());
            for (file, value) in limit_files(h, limits) {
                fs::write(dir.join(file), &value)
                    .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {file}: {e}")))?;
            }
            join.push(
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(dir.join("cgroup.procs"))?,
            );
        }
        cgroup.set_join(join.into_iter().map(OwnedFd::from).collect());
        Ok(cgroup)
    }

    /// Removes lingering command cgroups that have emptied.
    pub fn sweep(&self) {
        self.lingering.sweep();
    }

    /// At shutdown (blocking): waits for the teardowns of dropped command cgroups, kills every
    /// process left in any command cgroup (what commands left running, whatever is still
    /// running), removes them and the base directories, and leaves the v2 leaf.
    pub fn shutdown(&self) {
        let pending = self.teardowns.lock().unwrap_or_else(PoisonError::into_inner);
        let (pending, wait) = self
            .torn_down
            .wait_timeout_while(pending, TEARDOWN_WAIT, |n| *n > 0)
            .unwrap_or_else(PoisonError::into_inner);
        if wait.timed_out() {
            tracing::warn!(left = *pending, "dropped commands' cgroups were still being killed at shutdown");
        }
        drop(pending);
        let commands: Vec<PathBuf> = self.hierarchies.iter().flat_map(|h| subdirs(&h.base)).collect();
        let killed = command::kill_members(&commands);
        if killed > 0 {
            tracing::info!(killed, "killed what commands left running");
        }
        let left = command::remove_dirs(commands);
        self.sweep();
        for h in &self.hierarchies {
            if let Err(e) = fs::remove_dir(&h.base) {
                tracing::warn!(base = %h.base.display(), error = %e, ?left, "the agent's cgroup directory stays");
            }
        }
        self.leave_leaf();
    }

    /// Moves the agent out of its v2 leaf and removes it; when that cannot be done now, the
    /// next agent's sweep of dead agents removes it (see `leaf`).
    fn leave_leaf(&self) {
        let Some(agent_leaf) = &self.leaf else { return };
        match leaf::leave(agent_leaf, std::process::id()) {
            Ok(()) => tracing::debug!(leaf = %agent_leaf.dir.display(), "left the agent's leaf cgroup"),
            Err(e) => tracing::info!(error = %e, "the agent's leaf cgroup stays until the next agent starts"),
        }
    }

    /// Keeps a command's populated cgroups `dirs` until a sweep finds them empty, or kills
    /// their processes and removes them when `until` fires, whichever comes first. The wait is
    /// a task on the runtime; outside one (tests on a plain thread) they stay until shutdown.
    fn linger(self: &Arc<Self>, dirs: Vec<PathBuf>, until: CancellationToken) {
        let removed = self.lingering.add(dirs.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let owner = self.clone();
        runtime.spawn(async move {
            tokio::select! {
                () = until.cancelled() => command::tear_down(owner, dirs),
                () = removed.cancelled() => {}
            }
        });
    }

    fn teardown_started(&self) {
        *self.teardowns.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }

    fn teardown_finished(&self) {
        let mut pending = self.teardowns.lock().unwrap_or_else(PoisonError::into_inner);
        *pending = pending.saturating_sub(1);
        self.torn_down.notify_all();
    }
}

/// The directories in `dir` (a base: its command cgroups).
fn subdirs(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

/// Whether a command with `limits` needs a cgroup in `h`.
fn needed(h: &Hierarchy, limits: &CgroupLimits) -> bool {
    h.controllers.iter().any(|c| match c {
        Controller::Pids => true,
        Controller::Memory => limits.memory_max.is_some() || limits.memory_high.is_some(),
        Controller::Cpu => limits.cpu_millicores.is_some(),
    })
}

/// The control files to write in a command cgroup of `h`, in order.
fn limit_files(h: &Hierarchy, limits: &CgroupLimits) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    let has = |c| h.controllers.contains(&c);
    if has(Controller::Pids) {
        files.push(("pids.max", limits.pids_max.map_or_else(|| "max".to_owned(), |n| n.to_string())));
    }
    if has(Controller::Memory) {
        // A memory limit that swap could dodge is not one: with swap accounted, v2 allows no
        // swap at all, and v1 bounds memory plus swap by the same number (written after
        // memory.limit_in_bytes, which it may never be below).
        let swap_file = h.swap.then(|| Hierarchy::swap_file(h.version));
        match h.version {
            Version::V2 => {
                files.extend(limits.memory_high.map(|b| ("memory.high", b.to_string())));
                files.extend(limits.memory_max.map(|b| ("memory.max", b.to_string())));
                files.extend(limits.memory_max.and(swap_file).map(|f| (f, "0".to_owned())));
            }
            Version::V1 => {
                files.extend(limits.memory_max.map(|b| ("memory.limit_in_bytes", b.to_string())));
                files.extend(swap_file.zip(limits.memory_max).map(|(f, b)| (f, b.to_string())));
            }
        }
    }
    if has(Controller::Cpu)
        && let Some(millicores) = limits.cpu_millicores
    {
        let quota = (u64::from(millicores) * CPU_PERIOD_US / 1000).max(CPU_MIN_QUOTA_US);
        match h.version {
            Version::V2 => files.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}"))),
            Version::V1 => {
                files.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                files.push(("cpu.cfs_quota_us", quota.to_string()));
            }
        }
    }
    files
}

/// A directory name from an agent id: anything but letters, digits, `-`, `_` and `.` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(version: Version, controllers: &[Controller]) -> Hierarchy {
        Hierarchy { version, base: "/sys/fs/cgroup/x".into(), controllers: controllers.to_vec(), swap: false }
    }

    #[test]
    fn limits_become_the_right_control_files_for_each_version() {
        let limits = CgroupLimits {
            pids_max: Some(512),
            memory_max: Some(64 << 20),
            memory_high: Some(48 << 20),
            cpu_millicores: Some(250),
        };
        let v2 = Hierarchy { swap: true, ..hierarchy(Version::V2, &Controller::ALL) };
        assert_eq!(
            limit_files(&v2, &limits),
            [
                ("pids.max", "512".to_owned()),
                ("memory.high", (48u64 << 20).to_string()),
                ("memory.max", (64u64 << 20).to_string()),
                ("memory.swap.max", "0".to_owned()),
                ("cpu.max", "25000 100000".to_owned()),
            ]
        );
        let high_only = CgroupLimits { memory_max: None, ..limits };
        assert!(!limit_files(&v2, &high_only).iter().any(|(f, _)| *f == "memory.swap.max"));
        let v1_mem = Hierarchy { swap: true, ..hierarchy(Version::V1, &[Controller::Memory]) };
        let mem = (64u64 << 20).to_string();
        assert_eq!(
            limit_files(&v1_mem, &limits),
            [("memory.limit_in_bytes", mem.clone()), ("memory.memsw.limit_in_bytes", mem.clone())]
        );
        // Without swap accounting the file is absent and not written.
        let v1_no_swap = hierarchy(Version::V1, &[Controller::Memory]);
        assert_eq!(limit_files(&v1_no_swap, &limits), [("memory.limit_in_bytes", mem)]);
        let v1_cpu = hierarchy(Version::V1, &[Controller::Cpu]);
        let tiny = CgroupLimits { cpu_millicores: Some(1), ..limits };
        assert_eq!(
            limit_files(&v1_cpu, &tiny),
            [("cpu.cfs_period_us", "100000".to_owned()), ("cpu.cfs_quota_us", "1000".to_owned())]
        );
        let v1_pids = hierarchy(Version::V1, &[Controller::Pids]);
        assert_eq!(limit_files(&v1_pids, &CgroupLimits::default()), [("pids.max", "max".to_owned())]);
    }

    #[test]
    fn only_the_hierarchies_a_command_needs_get_a_cgroup() {
        let none = CgroupLimits::default();
        let mem = CgroupLimits { memory_max: Some(1 << 30), ..none };
        assert!(needed(&hierarchy(Version::V1, &[Controller::Pids]), &none));
        assert!(!needed(&hierarchy(Version::V1, &[Controller::Memory]), &none));
        assert!(needed(&hierarchy(Version::V1, &[Controller::Memory]), &mem));
        assert!(!needed(&hierarchy(Version::V1, &[Controller::Cpu]), &mem));
    }

    #[test]
    fn agent_ids_cannot_climb_out_of_the_cgroup_tree() {
        assert_eq!(sanitize("ws1.agent-7"), "ws1.agent-7");
        assert_eq!(sanitize("../../etc x"), ".._.._etc_x");
    }
}
