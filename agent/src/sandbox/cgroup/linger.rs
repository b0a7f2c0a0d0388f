//! Command cgroups that outlive their command. After a normal exit, what a command left running
//! on purpose (`srv &`, `setsid nohup srv &`) keeps running in its cgroup (PROTOCOL.md §5), but
//! no longer than the session that started it: such a cgroup lingers until it empties (a sweep
//! then removes it, so they do not pile up) or until its command's fence scope advances past
//! the command's epoch or the agent stops, whichever comes first; then every process in it is
//! killed. The record here is what remembers a cgroup once its command is gone.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// The lingering command cgroups of one agent.
#[derive(Debug, Default)]
pub(super) struct Lingering {
    entries: Mutex<Vec<Entry>>,
}

/// The cgroups one command left behind.
#[derive(Debug)]
struct Entry {
    dirs: Vec<PathBuf>,
    /// Cancelled once every one of `dirs` is removed: whoever waits to kill them can stop.
    removed: CancellationToken,
}

impl Lingering {
    /// Records `dirs` (one command's cgroups, still populated); the token is cancelled once a
    /// sweep has removed them all.
    pub(super) fn add(&self, dirs: Vec<PathBuf>) -> CancellationToken {
        let removed = CancellationToken::new();
        if dirs.is_empty() {
            removed.cancel();
            return removed;
        }
        let entry = Entry { dirs, removed: removed.clone() };
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).push(entry);
        removed
    }

    /// Removes the cgroups that have emptied (blocking: one rmdir each), forgets the commands
    /// whose cgroups are all gone, and returns how many commands still linger.
    pub(super) fn sweep(&self) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain_mut(|entry| {
            entry.dirs.retain(|dir| fs::remove_dir(dir).is_err_and(|e| e.kind() != io::ErrorKind::NotFound));
            if entry.dirs.is_empty() {
                entry.removed.cancel();
            }
            !entry.dirs.is_empty()
        });
        entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain directories stand in for cgroups: a file inside keeps one from being removed, as
    /// a process keeps a cgroup.
    #[test]
    fn a_command_is_forgotten_once_all_its_cgroups_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = |name: &str| {
            let path = dir.path().join(name);
            fs::create_dir(&path).expect("mkdir");
            path
        };
        let (pids, memory) = (cgroup("pids-cmd-0"), cgroup("memory-cmd-0"));
        fs::write(memory.join("busy"), "").expect("busy");
        let lingering = Lingering::default();
        let removed = lingering.add(vec![pids.clone(), memory.clone()]);
        assert!(lingering.add(Vec::new()).is_cancelled(), "nothing left: nothing lingers");

        assert_eq!(lingering.sweep(), 1);
        assert!(!pids.exists() && memory.exists());
        assert!(!removed.is_cancelled(), "one of its cgroups still holds something");

        fs::remove_file(memory.join("busy")).expect("empty it");
        assert_eq!(lingering.sweep(), 0);
        assert!(!memory.exists());
        assert!(removed.is_cancelled());
    }
}
