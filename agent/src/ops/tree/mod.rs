//! Workspace sync on the agent (README "Workspace sync"): tree manifests with cached content
//! digests ([`manifest`]), and batched small-file writes ([`write`]) and reads ([`read`]).
//!
//! Every op names a tree `root`, resolved and opened like any fs path (virtual root, consent,
//! `openat2(RESOLVE_BENEATH)` in [`Paths`]). Below the root, paths are relative, checked by
//! [`rel_parts`] (no `..`, no `.`, no empty or absolute component), and reached one component
//! at a time with `O_NOFOLLOW` from the root's descriptor: nothing below the root is ever
//! followed through a symlink, so a link in the tree pointing anywhere is data, not a way out.
//! The merge logic lives in the client; the agent only serves what it is asked.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};
use tether_proto::digests::{DigestCache, StatKey};

use crate::error::{OpError, OpResult};
use crate::paths::{Paths, Resolved};

pub mod manifest;
pub mod read;
pub mod write;

/// The digest cache's file in the state directory.
const CACHE_FILE: &str = "tree-digests.bin";

/// State shared by the tree ops: the digest cache.
#[derive(Debug)]
pub struct Trees {
    cache: Mutex<DigestCache>,
}

impl Trees {
    /// Digests kept in memory only (tests, and agents without a state directory).
    pub fn in_memory() -> Trees {
        Trees { cache: Mutex::new(DigestCache::in_memory()) }
    }

    /// Digests kept in `<state_dir>/tree-digests.bin` across restarts.
    pub fn open(state_dir: &Path) -> Trees {
        Trees { cache: Mutex::new(DigestCache::load(&state_dir.join(CACHE_FILE))) }
    }

    fn cache(&self) -> MutexGuard<'_, DigestCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the cache back; a failure only costs re-reading files later, so it is logged.
    fn save(cache: &mut DigestCache) {
        if let Err(e) = cache.save() {
            tracing::warn!(error = %e, "the tree digest cache could not be saved");
        }
    }
}

/// The cache key of a file as `st` describes it.
pub(crate) fn stat_key(st: &FileStat) -> StatKey {
    StatKey {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
    }
}

/// The components of a relative tree path, or PROTOCOL naming `field`.
pub(crate) fn rel_parts<'a>(field: &str, rel: &'a str) -> OpResult<Vec<&'a OsStr>> {
    let bad = |why: &str| {
        OpError::protocol(format!("{field} {rel:?} {why}")).with("field", field).with("path", rel)
    };
    if rel.is_empty() {
        return Err(bad("is empty"));
    }
    if rel.starts_with('/') {
        return Err(bad("must be relative to the tree root"));
    }
    rel.split('/')
        .map(|part| match part {
            "" | "." | ".." => Err(bad("has an empty, `.` or `..` component")),
            p if p.as_bytes().contains(&0) => Err(bad("contains a NUL byte")),
            p => Ok(OsStr::new(p)),
        })
        .collect()
}

/// The tree root, opened as a directory through the path layer (confined like any fs op).
/// `Ok(None)`: it does not exist.
pub(crate) fn open_root(paths: &Paths, root: &str) -> OpResult<(Resolved, Option<OwnedFd>)> {
    let r = paths.resolve(root)?;
    match paths.open(&r, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()) {
        Ok(fd) => Ok((r, Some(fd))),
        Err(e) if e.code == tether_proto::pb::ErrorCode::NotFound => Ok((r, None)),
        Err(e) => Err(e),
    }
}

/// Opens directory `name` in `dir` without following a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::empty())
}

/// Walks `parts` (directories) down from `root`, never through a symlink. ENOTDIR or ELOOP:
/// a component is not a real directory.
pub(crate) fn open_dirs(root: BorrowedFd<'_>, parts: &[&OsStr]) -> Result<Option<OwnedFd>, Errno> {
    let mut at: Option<OwnedFd> = None;
    for part in parts {
        let dir = at.as_ref().map_or(root, AsFd::as_fd);
        match open_dir_at(dir, part) {
            Ok(fd) => at = Some(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    match at {
        Some(fd) => Ok(Some(fd)),
        None => nix::fcntl::openat(
            root,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Some),
    }
}

/// `rel` joined onto the root's absolute path, for messages.
pub(crate) fn shown(root: &Resolved, rel: &str) -> std::path::PathBuf {
    root.abs.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_must_stay_below_the_root() {
        assert_eq!(rel_parts("f", "a/b c/ü").unwrap().len(), 3);
        for bad in ["", "/a", "a/../b", "..", "a//b", "./a", "a/", "a\0b"] {
            let err = rel_parts("f", bad).unwrap_err();
            assert_eq!(err.code, tether_proto::pb::ErrorCode::Protocol, "{bad:?}");
        }
    }
}
