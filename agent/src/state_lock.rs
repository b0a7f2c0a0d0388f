//! One agent per state directory. A running agent holds an exclusive `flock` on
//! `<state_dir>/agent.lock` for as long as it lives (the kernel drops it when the process dies,
//! however it dies), so a second agent on the same directory, or an operator's `tether-agent
//! fence reset` while the agent runs, is refused instead of racing it.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

const LOCK_FILE: &str = "agent.lock";

/// The held lock; dropping it releases the directory.
pub struct StateLock(#[allow(dead_code)] Flock<File>);

impl StateLock {
    /// Takes the lock of `state_dir` (creating the directory, mode 0700, if needed), or fails
    /// at once naming the directory if another process holds it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<StateLock> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(StateLock(lock)),
            Err((_, Errno::EWOULDBLOCK)) => bail!(
                "another tether-agent is running on the state directory {} (stop it first)",
                state_dir.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).err().unwrap();
        assert!(err.to_string().contains("another tether-agent"), "{err:#}");
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
