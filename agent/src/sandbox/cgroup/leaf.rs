//! The agent's own leaf cgroup on cgroup v2. A v2 cgroup that enables controllers for its
//! children may hold no process itself, so an agent alone in its cgroup (a systemd service
//! with `Delegate=yes`) moves into `<its cgroup>/tether-<pid>-<id>-agent` to hand controllers
//! to its command cgroups. A cgroup cannot be removed while a process is in it, so at shutdown
//! the agent moves back and removes the leaf; when it cannot (a command it started still holds
//! a controller below, or it was killed), the leaf carries its pid in its name and the next
//! agent's sweep of dead agents' directories removes it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A leaf the agent moved itself into, and the cgroup it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLeaf {
    pub own_dir: PathBuf,
    pub dir: PathBuf,
}

/// The leaf's name beside the agent's base directory `base_name`.
pub fn leaf_name(base_name: &str) -> String {
    format!("{base_name}-agent")
}

/// Moves process `pid` (the agent) into `<own_dir>/<base_name>-agent` when it is alone in
/// `own_dir`; `None` when it is not.
pub fn enter(own_dir: &Path, base_name: &str, pid: u32) -> io::Result<Option<AgentLeaf>> {
    let me = pid.to_string();
    let procs = fs::read_to_string(own_dir.join("cgroup.procs"))?;
    if procs.split_whitespace().any(|p| p != me) {
        return Ok(None);
    }
    let dir = own_dir.join(leaf_name(base_name));
    match fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    fs::write(dir.join("cgroup.procs"), &me)?;
    Ok(Some(AgentLeaf { own_dir: own_dir.to_owned(), dir }))
}

/// Why the agent could not leave its leaf.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error("{0} still holds other cgroups")]
    NotAlone(PathBuf),
    #[error("{what} in {dir}: {source}")]
    Io { what: &'static str, dir: PathBuf, source: io::Error },
}

/// Moves process `pid` from `leaf` back into its own cgroup and removes the leaf: undoes
/// [`enter`]. The controllers enabled in the own cgroup's subtree are disabled first, since a
/// cgroup that enables any may hold no process; that is done only when the leaf is the last
/// cgroup there (the base was removed first), so no other cgroup loses its limits.
pub fn leave(leaf: &AgentLeaf, pid: u32) -> Result<(), LeaveError> {
    let own = &leaf.own_dir;
    let io = |what: &'static str| move |source| LeaveError::Io { what, dir: own.clone(), source };
    let others = fs::read_dir(own)
        .map_err(io("listing"))?
        .flatten()
        .any(|e| e.path().is_dir() && e.path() != leaf.dir);
    if others {
        return Err(LeaveError::NotAlone(own.clone()));
    }
    let subtree = own.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&subtree).map_err(io("reading cgroup.subtree_control"))?;
    let disable: Vec<String> = enabled.split_whitespace().map(|c| format!("-{c}")).collect();
    if !disable.is_empty() {
        fs::write(&subtree, disable.join(" ")).map_err(io("disabling controllers"))?;
    }
    fs::write(own.join("cgroup.procs"), pid.to_string()).map_err(io("moving back"))?;
    fs::remove_dir(&leaf.dir).map_err(|source| LeaveError::Io {
        what: "removing",
        dir: leaf.dir.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    /// A process in a fresh child cgroup of this test's own cgroup v2 directory, both removed
    /// on drop.
    struct Subject {
        own_dir: PathBuf,
        child: Child,
    }

    impl Drop for Subject {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_dir(self.own_dir.join(leaf_name("tether-test")));
            // An exited process leaves its cgroup a moment after it is reaped.
            for _ in 0..50 {
                if fs::remove_dir(&self.own_dir).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// This test process's cgroup v2 directory, when the unified hierarchy is mounted.
    fn own_v2_dir() -> Option<PathBuf> {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let mounts = super::super::discover::parse_mountinfo(&read("/proc/self/mountinfo"));
        let members = super::super::discover::parse_proc_cgroup(&read("/proc/self/cgroup"));
        let unified = members.iter().find(|m| m.id == 0)?;
        let mount = mounts.iter().find(|m| m.version == super::super::Version::V2)?;
        let rel = unified.path.strip_prefix(mount.root.as_str())?;
        Some(mount.mount_point.join(rel.trim_start_matches('/')))
    }

    fn subject() -> Option<Subject> {
        let parent = own_v2_dir()?;
        let own_dir = parent.join(format!("tether-leaf-test-{}", std::process::id()));
        if let Err(e) = fs::create_dir(&own_dir) {
            println!("cannot make a cgroup in {}: {e}; nothing to test", parent.display());
            return None;
        }
        let child = Command::new("sleep").arg("60").spawn().expect("sleep runs");
        let subject = Subject { own_dir, child };
        fs::write(subject.own_dir.join("cgroup.procs"), subject.child.id().to_string()).expect("move in");
        Some(subject)
    }

    fn procs(dir: &Path) -> String {
        fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().trim().to_owned()
    }

    /// On the real cgroup v2 file system: a process alone in its cgroup enters a leaf, and
    /// leaving puts it back and removes the leaf; with another cgroup beside the leaf, it stays.
    #[test]
    fn a_process_alone_enters_a_leaf_and_leaves_it_removed() {
        let Some(s) = subject() else {
            println!("no cgroup v2 hierarchy here; nothing to test");
            return;
        };
        let pid = s.child.id();
        let leaf = enter(&s.own_dir, "tether-test", pid).expect("enter").expect("alone, so it moves");
        assert_eq!(leaf.dir, s.own_dir.join("tether-test-agent"));
        assert_eq!((procs(&s.own_dir), procs(&leaf.dir)), (String::new(), pid.to_string()));

        let other = s.own_dir.join("tether-test");
        fs::create_dir(&other).expect("a base beside the leaf");
        assert!(matches!(leave(&leaf, pid), Err(LeaveError::NotAlone(_))));
        assert_eq!(procs(&leaf.dir), pid.to_string(), "stays while another cgroup is there");
        fs::remove_dir(&other).expect("remove the base");

        leave(&leaf, pid).expect("leave");
        assert!(!leaf.dir.exists(), "the leaf is removed");
        assert_eq!(procs(&s.own_dir), pid.to_string(), "back in its own cgroup");
        // Not alone any more: a second process in the cgroup keeps it out of a leaf.
        assert_eq!(enter(&s.own_dir, "tether-test", pid + 1_000_000).expect("read procs"), None);
    }
}
