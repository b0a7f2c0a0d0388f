//! The file an execution's journal spills to: `<state>/exec/spill/<key>`. Blocking file I/O
//! only; callers run it on the blocking pool. Each write lands at the offset the journal
//! planned (a slot of the file per segment), so a crash mid-write never shifts later chunks.
//!
//! One file whose slots are written over, rather than a file per segment deleted when it is
//! dropped: the slots' page-cache pages are reused as they are, where new files would allocate
//! (and, on a VM, first touch) fresh pages for every byte spilled, and the file never holds
//! more than the spill cap.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::journal::{OnDisk, SpillPlan};

/// The spill file of one execution.
#[derive(Debug, Clone)]
pub struct SpillFile(PathBuf);

impl SpillFile {
    pub fn new(path: PathBuf) -> Self {
        SpillFile(path)
    }

    /// Writes the planned chunks.
    pub fn write(&self, plan: &SpillPlan) -> io::Result<()> {
        if let Some(dir) = self.0.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.0)?;
        for (at, data) in &plan.writes {
            file.write_all_at(data, at.offset)?;
        }
        Ok(())
    }

    /// Reads spilled chunks back. What a slot held may have been written over meanwhile: the
    /// caller checks that the chunks' segment is still held after the read.
    pub fn read(&self, chunks: &[OnDisk]) -> io::Result<Vec<Bytes>> {
        let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&self.0)?;
        chunks
            .iter()
            .map(|at| {
                let mut buf = vec![0; at.len];
                file.read_exact_at(&mut buf, at.offset)?;
                Ok(Bytes::from(buf))
            })
            .collect()
    }

    /// Deletes the file.
    pub fn remove(&self) {
        remove_quietly(&self.0, |p| fs::remove_file(p));
    }
}

/// Removes a directory tree of spill files (what an earlier run left).
pub fn remove_tree(path: &Path) {
    remove_quietly(path, |p| fs::remove_dir_all(p));
}

/// Removes `path` with `remove`; one already gone is no error, any other is logged.
fn remove_quietly(path: &Path, remove: fn(&Path) -> io::Result<()>) {
    if let Err(e) = remove(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "removing spilled output");
    }
}
