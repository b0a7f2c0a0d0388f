//! The segment files an execution's journal spills to: `<state>/exec/spill/<key>/seg-<n>`.
//! Blocking file I/O only; callers run it on the blocking pool. Each write lands at the offset
//! the journal planned, so a crash mid-write never shifts later chunks.
//!
//! A dropped segment is not deleted but kept as the spare, which the next new segment takes
//! over and overwrites: its page-cache pages are reused as they are, where a new file would
//! allocate (and, on a VM, first touch) fresh ones for every byte spilled. So the directory
//! holds at most one segment more than the journal's spill cap. A reader that opened a segment
//! before it was dropped may read its successor's bytes: it checks after the read that the
//! segment was still held ([`super::journal::Journal::holds`]).

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

    fn spare(&self) -> PathBuf {
        self.0.join("spare")
    }

    /// Writes the planned chunks.
    pub fn write(&self, plan: &SpillPlan) -> io::Result<()> {
        fs::create_dir_all(&self.0)?;
        let mut open: Option<(u64, File)> = None;
        for (at, data) in &plan.writes {
            let file = match &open {
                Some((id, file)) if *id == at.segment => file,
                _ => {
                    let path = self.segment(at.segment);
                    if at.offset == 0 {
                        // A new segment: the spare's pages are taken over where there is one.
                        let _ = fs::rename(self.spare(), &path);
                    }
                    let file =
                        OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)?;
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

    /// Lets go of dropped segments: the newest becomes the spare (replacing any), the others
    /// are deleted.
    pub fn delete(&self, segments: &[u64]) {
        let Some((&newest, older)) = segments.split_last() else { return };
        for id in older {
            if let Err(e) = fs::remove_file(self.segment(*id))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "deleting a spill segment");
            }
        }
        if let Err(e) = fs::rename(self.segment(newest), self.spare())
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "keeping a spill segment as the spare");
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tether_proto::pb::ExecStream;

    use super::*;

    fn at(seq: u64, segment: u64, offset: u64, len: usize) -> OnDisk {
        OnDisk { seq, pos: 0, stream: ExecStream::Stdout, segment, offset, len }
    }

    #[test]
    fn a_dropped_segment_is_reused_by_the_next_and_reads_back_what_was_written_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SpillDir::new(tmp.path().join("spill"));
        let old = Bytes::from(vec![b'o'; 4096]);
        let plan = |writes: Vec<(OnDisk, Bytes)>| SpillPlan { writes };
        dir.write(&plan(vec![(at(0, 0, 0, 4096), old.clone()), (at(1, 1, 0, 4096), old.clone())])).unwrap();
        let inode = |path: PathBuf| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
        let reused = inode(dir.segment(0));

        dir.delete(&[0]);
        assert!(!dir.segment(0).exists(), "a dropped segment is gone under its name");
        assert_eq!(inode(dir.spare()), reused, "it is kept as the spare");

        let new = Bytes::from_static(b"fresh output");
        dir.write(&plan(vec![(at(2, 2, 0, new.len()), new.clone())])).unwrap();
        assert_eq!(inode(dir.segment(2)), reused, "the next new segment takes the spare over");
        assert!(!dir.spare().exists());
        let read = dir.read(&[at(2, 2, 0, new.len()), at(1, 1, 0, 4096)]).unwrap();
        assert_eq!(read, vec![new, old]);

        // Several dropped at once: the newest is kept, the others deleted.
        dir.delete(&[1, 2]);
        let names: Vec<String> =
            fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, vec!["spare".to_owned()]);
        assert_eq!(inode(dir.spare()), reused);
    }
}
