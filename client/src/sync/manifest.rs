//! A tree's manifest as the sync logic sees it: relative path -> [`Entry`], from the local walk
//! or from the agent's `tree_manifest` pages, and the baseline file format (JSON) that
//! `sync snapshot` writes and `sync down --baseline` reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use super::SyncError;

/// Version of the baseline file format.
const FORMAT_VERSION: u32 = 1;

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: listed, never synced.
    Other,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Content bytes of a file (0 otherwise).
    #[serde(default)]
    pub size: u64,
    /// Permission bits.
    #[serde(default)]
    pub mode: u32,
    /// BLAKE3 of a file's content, hex; None when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A symlink's target, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// Whether `self` and `other` are the same for a sync: same kind, and the same content and
    /// permission bits (file), mode (directory) or target (symlink). A file whose digest is
    /// unknown is never the same as anything.
    pub fn same(&self, other: &Entry) -> bool {
        if self.kind != other.kind {
            return false;
        }
        match self.kind {
            Kind::File => self.digest.is_some() && self.digest == other.digest && self.mode == other.mode,
            Kind::Dir => self.mode == other.mode,
            Kind::Symlink => self.target == other.target,
            Kind::Other => true,
        }
    }

    /// Same content and kind, whatever the mode.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && match self.kind {
                Kind::File => self.digest.is_some() && self.digest == other.digest,
                Kind::Symlink => self.target == other.target,
                Kind::Dir | Kind::Other => true,
            }
    }

    /// The entry an agent manifest reports.
    pub fn from_remote(e: &pb::TreeEntry) -> Entry {
        let kind = match e.kind() {
            pb::FsEntryKind::File => Kind::File,
            pb::FsEntryKind::Directory => Kind::Dir,
            pb::FsEntryKind::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Entry {
            kind,
            size: e.size,
            mode: e.mode & 0o777,
            digest: (e.digest.len() == 32).then(|| hex(&e.digest)),
            target: (kind == Kind::Symlink).then(|| e.symlink_target.clone()),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every entry of a tree by relative path ('/'-separated). Parents sort before their children.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct BaselineFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Writes the manifest as a baseline file (atomically: temp file, rename).
    pub fn save(&self, path: &Path) -> Result<(), SyncError> {
        let file = BaselineFile { version: FORMAT_VERSION, entries: self.entries.clone() };
        let text =
            serde_json::to_vec(&file).map_err(|e| SyncError::Invalid(format!("encoding baseline: {e}")))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| SyncError::io(format!("writing baseline {}", path.display()), e))
    }

    /// Reads a baseline file written by [`Manifest::save`].
    pub fn load(path: &Path) -> Result<Manifest, SyncError> {
        let text = std::fs::read(path)
            .map_err(|e| SyncError::io(format!("reading baseline {}", path.display()), e))?;
        let file: BaselineFile = serde_json::from_slice(&text)
            .map_err(|e| SyncError::Invalid(format!("{} is not a baseline manifest: {e}", path.display())))?;
        if file.version != FORMAT_VERSION {
            return Err(SyncError::Invalid(format!(
                "{} is a baseline of format {}, this tetherctl reads {FORMAT_VERSION}",
                path.display(),
                file.version
            )));
        }
        Ok(Manifest { entries: file.entries })
    }

    /// Files and bytes, for summaries.
    pub fn totals(&self) -> (usize, u64) {
        self.entries.values().filter(|e| e.kind == Kind::File).fold((0, 0), |(n, b), e| (n + 1, b + e.size))
    }
}

/// Whether `path` lies below `dir` (`dir/...`).
pub fn is_below(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(digest: &str, mode: u32) -> Entry {
        Entry { kind: Kind::File, size: 1, mode, digest: Some(digest.into()), target: None }
    }

    #[test]
    fn sameness_covers_content_mode_and_unknown_digests() {
        assert!(file("aa", 0o644).same(&file("aa", 0o644)));
        assert!(!file("aa", 0o644).same(&file("aa", 0o755)));
        assert!(file("aa", 0o644).same_content(&file("aa", 0o755)));
        let unknown = Entry { digest: None, ..file("aa", 0o644) };
        assert!(!unknown.same(&unknown.clone()));
        let link = |t: &str| Entry {
            kind: Kind::Symlink,
            size: 0,
            mode: 0o777,
            digest: None,
            target: Some(t.into()),
        };
        assert!(link("a").same(&link("a")) && !link("a").same(&link("b")));
    }

    #[test]
    fn a_baseline_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::default();
        m.entries.insert("a b/ü".into(), file("ab", 0o600));
        let path = dir.path().join("base.json");
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), m);
        assert!(is_below("a/b", "a") && !is_below("ab", "a") && !is_below("a", "a"));
    }
}
