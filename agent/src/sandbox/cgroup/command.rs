//! One command's cgroups: the handle that puts the child in them between fork and exec, kills
//! every process in them when the command is killed, and removes them — or, when the command
//! exited leaving processes running, hands them to `linger`, to be killed when its fence scope
//! advances or the agent stops. Dropping the handle unsettled (a request's future dropped
//! mid-command) must still kill and remove, and that may wait for processes to die, so it is
//! done on a blocking thread, never on an async worker.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Cgroups;
use crate::process::PreExecHook;

/// How long killing a command's cgroup may take before its leftovers are left to a sweep.
pub const KILL_WAIT: Duration = Duration::from_secs(3);

/// The cgroups of one command. Dropped while armed (the command was not settled normally), it
/// kills every process in them and removes them.
#[derive(Debug)]
pub struct CommandCgroup {
    owner: Arc<Cgroups>,
    dirs: Vec<PathBuf>,
    join: Arc<Vec<OwnedFd>>,
    /// Fires when the command's fence scope advances past its epoch, or the agent stops: what
    /// it left running is killed then.
    until: CancellationToken,
    armed: bool,
}

impl CommandCgroup {
    /// An armed handle with no cgroup yet: dropped now, it would remove what was added.
    pub(super) fn new(owner: Arc<Cgroups>, until: CancellationToken) -> CommandCgroup {
        CommandCgroup { owner, dirs: Vec::new(), join: Arc::new(Vec::new()), until, armed: true }
    }

    /// Adds a cgroup made for this command.
    pub(super) fn add(&mut self, dir: PathBuf) {
        self.dirs.push(dir);
    }

    /// The `cgroup.procs` descriptors the child writes to join.
    pub(super) fn set_join(&mut self, fds: Vec<OwnedFd>) {
        self.join = Arc::new(fds);
    }

    /// The pre-exec step that moves the child into the cgroups: one `write("0")` per
    /// pre-opened `cgroup.procs`. Async-signal-safe (see `PreExecHook`).
    pub fn hook(&self) -> PreExecHook {
        let fds = self.join.clone();
        Arc::new(move || {
            for fd in fds.iter() {
                // SAFETY: writes one byte from a static buffer to a descriptor kept open by `fds`.
                if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }

    /// Kills every process in the command's cgroups and waits (bounded) until they are empty.
    /// Blocking.
    pub fn kill(&self) {
        kill_members(&self.dirs);
    }

    /// Removes the cgroups; the ones still holding processes (left running on purpose) linger
    /// until they empty, or are killed when `until` fires. Blocking.
    pub fn close(mut self) {
        self.armed = false;
        let left = remove_dirs(std::mem::take(&mut self.dirs));
        if !left.is_empty() {
            self.owner.linger(left, self.until.clone());
        }
    }
}

/// Dropped while armed: see [`tear_down`].
impl Drop for CommandCgroup {
    fn drop(&mut self) {
        if self.armed {
            tear_down(self.owner.clone(), std::mem::take(&mut self.dirs));
        }
    }
}

/// Kills every process in `dirs` and removes them. The kill may wait up to `KILL_WAIT`, so
/// inside a tokio runtime it runs on a blocking thread (shutdown waits for it); outside one (a
/// plain thread) it runs here.
pub(super) fn tear_down(owner: Arc<Cgroups>, dirs: Vec<PathBuf>) {
    let teardown = Teardown::new(owner, dirs);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(teardown))),
        Err(_) => drop(teardown),
    }
}

/// The kill and removal owed by a dropped, unsettled command cgroup or a lingering one whose
/// time is up. It is done in `Drop`, so it happens even when the blocking task carrying it is
/// discarded unrun (a runtime shutting down drops queued blocking tasks, and a closed one
/// refuses new ones).
struct Teardown {
    owner: Arc<Cgroups>,
    dirs: Vec<PathBuf>,
}

impl Teardown {
    fn new(owner: Arc<Cgroups>, dirs: Vec<PathBuf>) -> Teardown {
        owner.teardown_started();
        Teardown { owner, dirs }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        kill_members(&self.dirs);
        // What could not be removed yet (its processes are dying) is left to a sweep.
        self.owner.lingering.add(remove_dirs(std::mem::take(&mut self.dirs)));
        self.owner.teardown_finished();
    }
}

/// Kills every process in the cgroups `dirs` (but the agent) and waits, at most `KILL_WAIT`,
/// until they are empty. Returns how many processes it signalled. Blocking.
pub(super) fn kill_members(dirs: &[PathBuf]) -> usize {
    for dir in dirs {
        // cgroup v2 (Linux 5.14+) kills the whole cgroup, forks in flight included.
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + KILL_WAIT;
    let me = std::process::id();
    let mut signalled = BTreeSet::new();
    loop {
        let pids: Vec<i32> =
            dirs.iter().flat_map(|d| members(d)).filter(|&p| p > 1 && p as u32 != me).collect();
        if pids.is_empty() {
            return signalled.len();
        }
        if Instant::now() > deadline {
            tracing::warn!(left = pids.len(), "processes of a killed command outlived the kill");
            return signalled.len();
        }
        for pid in pids {
            signalled.insert(pid);
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes the cgroups `dirs` and returns the ones that still hold processes.
pub(super) fn remove_dirs(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.into_iter()
        .filter(|dir| fs::remove_dir(dir).is_err_and(|e| e.kind() != io::ErrorKind::NotFound))
        .collect()
}

/// The pids in cgroup `dir`.
fn members(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{CgroupLimits, Controller, Version, discover};
    use super::*;

    /// This test process's directory in the v1 hierarchy of `controller`, if one is mounted.
    fn own_v1_dir(controller: &str) -> Option<PathBuf> {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let mounts = discover::parse_mountinfo(&read("/proc/self/mountinfo"));
        let members = discover::parse_proc_cgroup(&read("/proc/self/cgroup"));
        let bound = |names: &[String]| names.iter().any(|n| n == controller);
        let mount = mounts.iter().find(|m| m.version == Version::V1 && bound(&m.controllers))?;
        let member = members.iter().find(|m| m.id != 0 && bound(&m.controllers))?;
        let rel = member.path.strip_prefix(mount.root.as_str())?;
        Some(mount.mount_point.join(rel.trim_start_matches('/')))
    }

    /// A v1 freezer cgroup for this test, removed on drop (after thawing).
    struct Freezer(PathBuf);

    impl Freezer {
        fn state(&self, state: &str) {
            fs::write(self.0.join("freezer.state"), state).expect("freezer.state");
        }
    }

    impl Drop for Freezer {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join("freezer.state"), "THAWED");
            for _ in 0..100 {
                if fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// A command cgroup dropped unsettled on the async worker: the worker is not held while
    /// its processes are killed (here a frozen one, which a SIGKILL cannot end before it is
    /// thawed, so an inline kill would hold the worker for the whole KILL_WAIT), and the
    /// cgroup is still emptied and removed, and shutdown waits for that. Needs the v1 pids and
    /// freezer hierarchies (and root), as on our machines.
    #[tokio::test]
    async fn a_dropped_command_cgroup_is_killed_off_the_worker_and_still_removed() {
        let (Some(pids_dir), Some(freezer_dir)) = (own_v1_dir("pids"), own_v1_dir("freezer")) else {
            println!("no v1 pids and freezer hierarchies here; nothing to test");
            return;
        };
        let base_name = format!("tether-{}-test-drop", std::process::id());
        let candidate = discover::Candidate {
            version: Version::V1,
            own_dir: pids_dir,
            controllers: vec![Controller::Pids],
        };
        let setup = discover::setup(vec![candidate], &base_name);
        assert_eq!(setup.hierarchies.len(), 1, "a pids cgroup as root: {:?}", setup.notes);
        let cgroups = Arc::new(Cgroups::new(setup.hierarchies, None));
        let base = cgroups.hierarchies[0].base.clone();
        let freezer = Freezer(freezer_dir.join(&base_name));
        fs::create_dir(&freezer.0).expect("freezer cgroup");

        let cgroup =
            cgroups.create(&CgroupLimits::default(), CancellationToken::new()).expect("command cgroup");
        let dir = cgroup.dirs[0].clone();
        let launcher = crate::process::Launcher::from_env(std::env::vars_os(), &[] as &[&str]);
        let mut cmd = launcher.command(
            std::ffi::OsStr::new("sleep"),
            &["60".into()],
            Path::new("/"),
            &std::collections::HashMap::new(),
            &[cgroup.hook()],
        );
        let mut child = cmd.kill_on_drop(true).spawn().expect("sleep runs");
        let pid = child.id().expect("pid");
        assert_eq!(members(&dir), [pid as i32]);
        fs::write(freezer.0.join("cgroup.procs"), pid.to_string()).expect("into the freezer");
        freezer.state("FROZEN");

        let started = Instant::now();
        drop(cgroup);
        let held = started.elapsed();
        assert!(held < KILL_WAIT / 3, "the drop held the async worker for {held:?}");
        assert_eq!(members(&dir), [pid as i32], "frozen: nothing can have killed it yet");

        freezer.state("THAWED");
        let status = tokio::time::timeout(KILL_WAIT * 2, child.wait()).await.expect("killed").expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        tokio::task::spawn_blocking(move || cgroups.shutdown()).await.expect("shutdown");
        assert!(!dir.exists() && !base.exists(), "the command cgroup and the base are removed");
    }
}
