//! Workspace sync between a local directory and a directory on the agent's machine
//! (README "Workspace sync"): [`sync_up`] makes the remote tree equal the local one, sending
//! only what differs; [`sync_down`] brings remote changes home, merging them three-way against
//! a baseline [`snapshot`] so local edits made meanwhile survive.
//!
//! Both sides are compared by manifest: relative path, kind, mode, symlink target and the
//! BLAKE3 digest of each file's content. The agent computes its manifest itself (`tree_manifest`)
//! with a digest cache, and the local walk uses the same cache format, so a re-sync of an
//! unchanged tree reads no file contents on either side. Small files travel many to a request
//! (`batch_write`, `batch_read`); large ones through the chunked transfer of
//! [`Client::write_file_from`](crate::Client::write_file_from) and
//! [`Client::download`](crate::Client::download). The decisions are pure functions
//! ([`plan::plan_up`], [`merge::merge`]); this module and its `up`/`down` halves only carry them out.

use std::path::{Path, PathBuf};

use tether_proto::digests::DigestCache;

use crate::error::ClientError;

mod down;
pub mod local;
pub mod manifest;
pub mod merge;
pub mod plan;
mod rpc;
mod up;

pub use down::{DownOptions, DownReport, sync_down};
pub use manifest::{Entry, Kind, Manifest};
pub use merge::{Conflict, ConflictKind, MergePlan, Prefer};
pub use plan::UpPlan;
pub use rpc::RemoteScan;
pub use up::{UpOptions, UpReport, sync_up};

/// Requests of a sync kept in flight at once.
pub const IN_FLIGHT: usize = 4;

/// A failed sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A call to the agent failed (its code says how: FENCED, CONSENT_REQUIRED, ...).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An argument or a baseline file cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A file changed between its manifest and its transfer.
    #[error("{path} changed while it was being synced; run the sync again")]
    Changed { path: String },
}

impl SyncError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> SyncError {
        SyncError::Io { context: context.into(), source }
    }
}

/// The local digest cache at `path`, or one in memory.
fn open_cache(path: Option<&Path>) -> DigestCache {
    path.map_or_else(DigestCache::in_memory, DigestCache::load)
}

/// The default place of the local digest cache: `$XDG_CACHE_HOME/tether/sync-digests.bin`
/// (or `~/.cache/...`); None without a home.
pub fn default_digest_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("tether");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("sync-digests.bin"))
}

/// The manifest of local directory `root` with `excludes` applied: what `sync snapshot`
/// writes as a baseline. Blocking (it walks and may hash the tree).
pub fn snapshot(
    root: &Path,
    excludes: &[String],
    digest_cache: Option<&Path>,
) -> Result<Manifest, SyncError> {
    let matcher = local::excludes(excludes)?;
    let mut cache = open_cache(digest_cache);
    Ok(local::scan(root, &matcher, &mut cache)?.manifest)
}

/// `rel` below remote directory `root` (the agent's workspace root when `root` is empty).
pub fn remote_path(root: &str, rel: &str) -> String {
    match root.trim_end_matches('/') {
        "" if root.is_empty() => rel.to_owned(),
        "" => format!("/{rel}"),
        base => format!("{base}/{rel}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_join_onto_their_root() {
        assert_eq!(remote_path("", "a/b"), "a/b");
        assert_eq!(remote_path("/", "a"), "/a");
        assert_eq!(remote_path("/workspace/p/", "a"), "/workspace/p/a");
    }
}
