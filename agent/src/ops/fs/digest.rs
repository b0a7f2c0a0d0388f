//! BLAKE3 digests of file content (README "Transfers"): fs_digest, which a download checks its
//! copy against, and the precondition of an upload ("fail if the target changed since I read
//! it"). Files are read in fixed blocks with positional reads, never whole into memory.
//!
//! fs_digest reads the whole file, a second pass beside the download's own reads; so digests are
//! remembered (in memory, a bounded number) by file identity and used again only while the
//! file's size, mtime and ctime are those it had when hashed. An upload's commit enters the
//! digest it has just checked, so a download of a file that came through an upload reads it once.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};
use tether_proto::pb::{self, ErrorCode, FsEntryKind};

use super::kind::{kind_of, not_regular};
use super::{blocking, lstat_at};
use crate::error::{OpError, OpResult};
use crate::paths::Paths;

/// Bytes read per step while hashing.
const BLOCK: usize = 1 << 20;

/// Feeds `[from, to)` of `file` to `hasher`; fails if the file ends before `to`.
pub fn hash_range(file: &File, hasher: &mut blake3::Hasher, from: u64, to: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK.min(usize::try_from(to.saturating_sub(from)).unwrap_or(BLOCK))];
    let mut at = from;
    while at < to {
        let want = buf.len().min(usize::try_from(to - at).unwrap_or(usize::MAX));
        let n = match file.read_at(&mut buf[..want], at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// The digest of a whole regular file and its size.
pub fn hash_file(file: &File) -> std::io::Result<(u64, blake3::Hash)> {
    let size = file.metadata()?.len();
    let mut hasher = blake3::Hasher::new();
    hash_range(file, &mut hasher, 0, size)?;
    Ok((size, hasher.finalize()))
}

/// Entries [`Digests`] keeps at most; past that it starts afresh.
const REMEMBERED: usize = 4096;

/// What must not have changed for a remembered digest to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(st: &FileStat) -> Stamp {
        Stamp {
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Digests the agent computed, by (device, inode).
#[derive(Default)]
pub struct Digests {
    known: Mutex<HashMap<(u64, u64), (Stamp, blake3::Hash)>>,
}

impl Digests {
    /// The digest of the file `st` describes, if it was hashed as it is now.
    fn get(&self, st: &FileStat) -> Option<blake3::Hash> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        match known.get(&(st.st_dev, st.st_ino)) {
            Some((stamp, hash)) if *stamp == Stamp::of(st) => Some(*hash),
            _ => None,
        }
    }

    /// Remembers `hash` for the file `st` describes.
    pub fn remember(&self, st: &FileStat, hash: blake3::Hash) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= REMEMBERED {
            known.clear();
        }
        known.insert((st.st_dev, st.st_ino), (Stamp::of(st), hash));
    }
}

fn modified_ms(st: &FileStat) -> i64 {
    st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000
}

/// fs_digest: the size, modification time and BLAKE3 of a regular file.
pub async fn fs_digest(
    paths: Arc<Paths>,
    req: pb::FsDigestRequest,
    digests: Arc<Digests>,
) -> OpResult<pb::FsDigestResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        // O_NONBLOCK: a FIFO must not hang a worker; it is refused just below.
        let file = File::from(paths.open(&r, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?);
        let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| paths.errno(e, "stat", &r.abs))?;
        if kind_of(&st) != FsEntryKind::File {
            return Err(not_regular(&r.abs, kind_of(&st), "hash"));
        }
        let respond = |size: u64, hash: blake3::Hash| pb::FsDigestResponse {
            size,
            modified_ms: modified_ms(&st),
            blake3: hash.as_bytes().to_vec().into(),
        };
        if let Some(hash) = digests.get(&st) {
            return Ok(respond(st.st_size as u64, hash));
        }
        let (size, hash) = hash_file(&file).map_err(|e| OpError::from_io(&e, "read", &r.abs))?;
        let after = nix::sys::stat::fstat(file.as_fd()).map_err(|e| paths.errno(e, "stat", &r.abs))?;
        if Stamp::of(&after) == Stamp::of(&st) && size == st.st_size as u64 {
            digests.remember(&st, hash);
        }
        Ok(respond(size, hash))
    })
    .await
}

/// Checks that `name` in `dir` (the target `abs`) is as `want` describes.
pub fn check_precondition(
    paths: &Paths,
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    abs: &Path,
    want: &pb::TransferPrecondition,
) -> OpResult<()> {
    let now = lstat_at(paths, dir, name, abs)?;
    let failed = |why: String| {
        OpError::new(ErrorCode::Os, format!("{}: {why}; nothing was written", abs.display()))
            .with("reason", "precondition_failed")
            .with("path", abs.display())
    };
    let st = match (now, want.exists) {
        (None, false) => return Ok(()),
        (Some(_), false) => return Err(failed("exists, and the upload asked for it not to".into())),
        (None, true) => return Err(failed("no longer exists".into())),
        (Some(st), true) => st,
    };
    if kind_of(&st) != FsEntryKind::File {
        return Err(failed(format!("is no longer a regular file ({:?})", kind_of(&st))));
    }
    if want.blake3.is_empty() {
        let (size, ms) = (st.st_size as u64, modified_ms(&st));
        if size != want.size || ms != want.modified_ms {
            return Err(failed(format!(
                "changed: size {size} and modified_ms {ms}, expected {} and {}",
                want.size, want.modified_ms
            )));
        }
        return Ok(());
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = File::from(
        nix::fcntl::openat(dir, name, flags, Mode::empty()).map_err(|e| paths.errno(e, "open", abs))?,
    );
    let (_, hash) = hash_file(&file).map_err(|e| OpError::from_io(&e, "read", abs))?;
    if hash.as_bytes().as_slice() != want.blake3.as_ref() {
        return Err(failed("changed: its content digest differs from the expected one".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_like_its_content_in_blocks_and_ranges() {
        let data: Vec<u8> = (0..(3 * BLOCK + 17)).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        let (size, hash) = hash_file(&f).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(hash, blake3::hash(&data));
        let mut h = blake3::Hasher::new();
        h.update(&data[..10]);
        hash_range(&f, &mut h, 10, data.len() as u64).unwrap();
        assert_eq!(h.finalize(), blake3::hash(&data));
        assert!(hash_range(&f, &mut blake3::Hasher::new(), 0, data.len() as u64 + 1).is_err());
    }

    #[test]
    fn a_remembered_digest_holds_only_while_the_file_is_unchanged() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"one").unwrap();
        let st = nix::sys::stat::fstat(f.as_fd()).unwrap();
        let digests = Digests::default();
        assert_eq!(digests.get(&st), None);
        digests.remember(&st, blake3::hash(b"one"));
        assert_eq!(digests.get(&nix::sys::stat::fstat(f.as_fd()).unwrap()), Some(blake3::hash(b"one")));
        std::io::Write::write_all(&mut f, b" two").unwrap();
        assert_eq!(
            digests.get(&nix::sys::stat::fstat(f.as_fd()).unwrap()),
            None,
            "a changed file is hashed again"
        );
    }
}
