//! The segment files an execution's journal spills to: `<state>/exec/spill/<key>/seg-<n>`.
//! Blocking file I/O only; callers run it on the blocking pool. Each write lands at the offset
//! the journal planned, so a crash mid-write never shifts later chunks.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::journal::{OnDisk, SpillPlan};

/// The spill directory of one execution.
#[derive(Debug, Clone)]
pub struct SpillDir(PathBuf);

impl SpillDir {
    pub fn new(path: PathBuf) -> Self {
        SpillDir(path)
    }

    fn segment(&self, id: u64) -> PathBuf {
        self.0.join(format!("seg-{id}"))
    }

    /// Writes the planned chunks.
    pub fn write(&self, plan: &SpillPlan) -> io::Result<()> {
        fs::create_dir_all(&self.0)?;
        let mut open: Option<(u64, File)> = None;
        for (at, data) in &plan.writes {
            let file = match &open {
                Some((id, file)) if *id == at.segment => file,
                _ => {
                    let file = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .mode(0o600)
                        .open(self.segment(at.segment))?;
                    &open.insert((at.segment, file)).1
                }
            };
            file.write_all_at(data, at.offset)?;
        }
        Ok(())
    }

    /// Reads spilled chunks back (a segment dropped meanwhile is `NotFound`).
    pub fn read(&self, chunks: &[OnDisk]) -> io::Result<Vec<Bytes>> {
        let mut open: Option<(u64, File)> = None;
        let mut out = Vec::with_capacity(chunks.len());
        for at in chunks {
            let file = match &open {
                Some((id, file)) if *id == at.segment => file,
                _ => &open.insert((at.segment, File::open(self.segment(at.segment))?)).1,
            };
            let mut buf = vec![0; at.len];
            file.read_exact_at(&mut buf, at.offset)?;
            out.push(Bytes::from(buf));
        }
        Ok(out)
    }

    /// Deletes dropped segments.
    pub fn delete(&self, segments: &[u64]) {
        for id in segments {
            if let Err(e) = fs::remove_file(self.segment(*id))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "deleting a spill segment");
            }
        }
    }

    /// Deletes the whole directory.
    pub fn remove(&self) {
        remove_tree(&self.0);
    }
}

/// Removes a directory tree, quietly if it is already gone.
pub fn remove_tree(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "removing spilled output");
    }
}
