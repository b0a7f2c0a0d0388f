//! Filesystem ops (`PROTOCOL.md` §5: fs_read, fs_write, fs_list, fs_stat, fs_mkdir, fs_move,
//! fs_remove). Every path goes through `Paths`, so every open is confined in the kernel; the
//! final component is then handled with `*at` calls on its parent's descriptor. All work runs
//! on the blocking pool; the mutations under a deadline ([`commit`]). Verified, resumable
//! uploads and file digests are in [`transfer`] and [`digest`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::UnlinkatFlags;
use prost::Message;
use tether_proto::pb;

use self::kind::not_regular;
use self::write::Placement;
use crate::error::{OpError, OpResult};
use crate::paths::{Paths, Resolved, via_fd};

mod commit;
mod digest;
mod kind;
mod mode;
mod ranges;
mod read_reply;
mod transfer;
mod write;
mod xdev;

pub use commit::DEFAULT_DEADLINE as DEFAULT_MUTATION_DEADLINE;
pub use digest::fs_digest as digest;
pub use read_reply::ReadContent;
pub use transfer::{DEFAULT_IDLE as TRANSFER_IDLE, Transfers, WINDOW as TRANSFER_WINDOW};
// For the tree ops (`ops::tree`), which commit the same way.
pub(crate) use commit::{Gate, under_deadline};
pub(crate) use kind::kind_of;
pub use write::MAX_WRITE_END;

/// Bytes a read reply spends besides the content: field tags, length prefixes, total_size.
const READ_OVERHEAD: usize = 32;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> OpResult<T> + Send + 'static) -> OpResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| OpError::os(format!("filesystem task failed: {e}")))?
}

/// fstatat without following a final symlink; ENOENT is `None`.
fn lstat_at(paths: &Paths, dir: BorrowedFd<'_>, name: &OsStr, abs: &Path) -> OpResult<Option<FileStat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(paths.errno(e, "stat", abs)),
    }
}

fn entry(dir: BorrowedFd<'_>, name: &OsStr, abs: &Path, st: &FileStat) -> pb::FsEntry {
    let kind = kind_of(st);
    let symlink_target = match kind {
        pb::FsEntryKind::Symlink => {
            nix::fcntl::readlinkat(dir, name).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default()
        }
        _ => String::new(),
    };
    pb::FsEntry {
        name: abs.file_name().unwrap_or(name).to_string_lossy().into_owned(),
        path: abs.display().to_string(),
        kind: kind as i32,
        size: st.st_size as u64,
        modified_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
        mode: st.st_mode,
        symlink_target,
    }
}

// ------------------------------------------------------------------ read

pub async fn read(paths: Arc<Paths>, req: pb::FsReadRequest, budget: usize) -> OpResult<ReadContent> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        // O_NONBLOCK: opening a FIFO must not hang a worker; it is refused just below.
        let file = File::from(paths.open(&r, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?);
        let meta = file.metadata().map_err(|e| OpError::from_io(&e, "stat", &r.abs))?;
        if meta.is_dir() {
            return Err(OpError::from_io(&Errno::EISDIR.into(), "read", &r.abs));
        }
        if !meta.is_file() {
            let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| paths.errno(e, "stat", &r.abs))?;
            return Err(not_regular(&r.abs, kind_of(&st), "read"));
        }
        let total = meta.len();
        let rest = total.saturating_sub(req.offset);
        let cap = budget.saturating_sub(READ_OVERHEAD) as u64;
        let want = if req.length == 0 {
            if rest > cap {
                return Err(OpError::payload_too_large(
                    format!(
                        "{} has {rest} bytes from offset {}; one reply holds {cap}: read it in ranges",
                        r.abs.display(),
                        req.offset
                    ),
                    rest as usize,
                    budget,
                )
                .with("total_size", total));
            }
            rest
        } else {
            req.length.min(rest).min(cap)
        };
        ReadContent::read(&file, req.offset, want as usize, total)
            .map_err(|e| OpError::from_io(&e, "read", &r.abs))
    })
    .await
}

// ------------------------------------------------------------------ write

pub async fn write(
    paths: Arc<Paths>,
    req: pb::FsWriteRequest,
    deadline: Duration,
) -> OpResult<pb::FsWriteResponse> {
    let mode = mode::requested("fs_write.mode", req.mode)?;
    let placement = Placement::of(&req)?;
    under_deadline(deadline, move |gate| {
        let r = paths.resolve(&req.path)?;
        if let (true, Some(parent)) = (req.create_parents, r.abs.parent()) {
            let parent = paths.resolve_abs(parent.to_owned())?;
            let nearest = nearest_dir(&paths, &parent)?;
            gate.commit_in(nearest.as_fd(), || paths.create_dirs(&parent, Mode::from_bits_truncate(0o755)))??;
        }
        write::write(&paths, &r, &req.content, placement, mode, gate)?;
        Ok(pb::FsWriteResponse { bytes_written: req.content.len() as u64 })
    })
    .await
}

/// Makes a rename or unlink in `dir` durable, as far as it can: the change is already made, so
/// a directory that cannot be synced (one the agent may write but not read, mode 0300) is
/// logged, never reported as a failure of the op (a retry would then find it done).
pub(crate) fn sync_dir(dir: BorrowedFd<'_>) {
    if let Err(e) = try_sync_dir(dir) {
        tracing::warn!(error = %e, "a directory could not be synced after a change in it");
    }
}

/// `dir` is usually an O_PATH descriptor, which fsync refuses (EBADF), so the directory is
/// opened for reading through it first. EINVAL: a filesystem that cannot sync directories.
fn try_sync_dir(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let readable =
        nix::fcntl::openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    match nix::unistd::fsync(readable.as_fd()) {
        Ok(()) | Err(Errno::EINVAL) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn temp_name(name: &OsStr) -> OsString {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tether-{}-{nanos:x}.tmp", std::process::id()));
    tmp
}

// ------------------------------------------------------------------ list / stat

pub async fn list(paths: Arc<Paths>, req: pb::FsListRequest, budget: usize) -> OpResult<pb::FsListResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        let dir = paths.open(&r, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        let mut listing = Listing {
            entries: Vec::new(),
            left: budget.saturating_sub(16),
            max: if req.max_entries == 0 { usize::MAX } else { req.max_entries as usize },
            truncated: false,
        };
        walk(&paths, dir, &r.abs, req.recursive, &mut listing)?;
        Ok(pb::FsListResponse { entries: listing.entries, truncated: listing.truncated })
    })
    .await
}

struct Listing {
    entries: Vec<pb::FsEntry>,
    /// Encoded bytes still available in the reply.
    left: usize,
    max: usize,
    truncated: bool,
}

impl Listing {
    /// Adds `entry` if it fits; false once the listing is full.
    fn push(&mut self, entry: pb::FsEntry) -> bool {
        let len = entry.encoded_len();
        let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if self.entries.len() >= self.max || cost > self.left {
            self.truncated = true;
            return false;
        }
        self.left -= cost;
        self.entries.push(entry);
        true
    }
}

/// Depth-first in name order, so entries come out sorted by path (component-wise) and a
/// full listing can stop early. Symlinks are reported, never followed; unreadable entries
/// are skipped.
fn walk(paths: &Paths, dir: OwnedFd, abs: &Path, recursive: bool, out: &mut Listing) -> OpResult<bool> {
    let mut handle = nix::dir::Dir::from_fd(dir).map_err(|e| paths.errno(e, "list", abs))?;
    let mut names: Vec<OsString> = handle
        .iter()
        .filter_map(Result::ok)
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    for name in names {
        let child = abs.join(&name);
        let Ok(st) = nix::sys::stat::fstatat(handle.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        else {
            continue;
        };
        if !out.push(entry(handle.as_fd(), &name, &child, &st)) {
            return Ok(false);
        }
        if recursive && kind_of(&st) == pb::FsEntryKind::Directory {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let Ok(sub) = nix::fcntl::openat(handle.as_fd(), name.as_os_str(), flags, Mode::empty()) else {
                continue;
            };
            if !walk(paths, sub, &child, true, out)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

pub async fn stat(paths: Arc<Paths>, req: pb::FsStatRequest) -> OpResult<pb::FsStatResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        let (dir, name) = match r.file_name() {
            Some(_) => match paths.open_parent(&r) {
                Ok(found) => found,
                Err(e) if e.code == pb::ErrorCode::NotFound => return Ok(pb::FsStatResponse::default()),
                Err(e) => return Err(e),
            },
            None => (paths.open(&r, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?, OsString::from(".")),
        };
        Ok(match lstat_at(&paths, dir.as_fd(), &name, &r.abs)? {
            Some(st) if kind_of(&st) == pb::FsEntryKind::Symlink => {
                // Reported, not followed; but a link that leads out is outside the consent.
                match paths.open(&r, OFlag::O_PATH, Mode::empty()) {
                    Err(e) if e.code == pb::ErrorCode::ConsentRequired => return Err(e),
                    _ => pb::FsStatResponse {
                        exists: true,
                        entry: Some(entry(dir.as_fd(), &name, &r.abs, &st)),
                    },
                }
            }
            Some(st) => {
                pb::FsStatResponse { exists: true, entry: Some(entry(dir.as_fd(), &name, &r.abs, &st)) }
            }
            None => pb::FsStatResponse::default(),
        })
    })
    .await
}

// ------------------------------------------------------------------ mkdir / move / remove

pub async fn mkdir(
    paths: Arc<Paths>,
    req: pb::FsMkdirRequest,
    deadline: Duration,
) -> OpResult<pb::FsMkdirResponse> {
    let mode = mode::requested("fs_mkdir.mode", req.mode)?.unwrap_or(Mode::from_bits_truncate(0o755));
    under_deadline(deadline, move |gate| {
        let r = paths.resolve(&req.path)?;
        if req.parents {
            let nearest = nearest_dir(&paths, &r)?;
            gate.commit_in(nearest.as_fd(), || paths.create_dirs(&r, mode))??;
        } else {
            let (dir, name) = paths.open_parent(&r)?;
            gate.commit_in(dir.as_fd(), || nix::sys::stat::mkdirat(dir.as_fd(), name.as_os_str(), mode))?
                .map_err(|e| paths.errno(e, "create directory", &r.abs))?;
        }
        Ok(pb::FsMkdirResponse {})
    })
    .await
}

pub async fn rename(
    paths: Arc<Paths>,
    req: pb::FsMoveRequest,
    deadline: Duration,
) -> OpResult<pb::FsMoveResponse> {
    under_deadline(deadline, move |gate| {
        let from = paths.resolve(&req.from)?;
        let to = paths.resolve(&req.to)?;
        let (from_dir, from_name) = paths.open_parent(&from)?;
        let (to_dir, to_name) = paths.open_parent(&to)?;
        if lstat_at(&paths, from_dir.as_fd(), &from_name, &from.abs)?.is_none() {
            return Err(OpError::not_found("path", &from.abs));
        }
        let flags = if req.overwrite { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
        let moved = gate.commit_in(to_dir.as_fd(), || {
            nix::fcntl::renameat2(
                from_dir.as_fd(),
                from_name.as_os_str(),
                to_dir.as_fd(),
                to_name.as_os_str(),
                flags,
            )
        })?;
        match moved {
            Ok(()) => {
                sync_dir(to_dir.as_fd());
                sync_dir(from_dir.as_fd());
            }
            Err(Errno::EXDEV) => xdev::move_across(
                (from_dir.as_fd(), &from_name),
                (to_dir.as_fd(), &to_name),
                req.overwrite,
                gate,
            )
            .map_err(|e| match e.raw_os_error().map(Errno::from_raw) {
                Some(Errno::EEXIST) => exists(&to.abs),
                _ => OpError::from_io(&e, "move across filesystems", &from.abs),
            })?,
            Err(Errno::EEXIST) => return Err(exists(&to.abs)),
            Err(e) => return Err(paths.errno(e, "move", &from.abs)),
        }
        Ok(pb::FsMoveResponse {})
    })
    .await
}

/// The deepest directory that exists on the way to `r` (`r` itself if it is one), for the
/// gate's probe before directories are created there.
pub(crate) fn nearest_dir(paths: &Paths, r: &Resolved) -> OpResult<OwnedFd> {
    let mut at = r.abs.clone();
    loop {
        let found =
            paths.open(&paths.resolve_abs(at.clone())?, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty());
        match (found, at.parent()) {
            (Ok(fd), _) => return Ok(fd),
            (Err(e), None) => return Err(e),
            (Err(_), Some(parent)) => at = parent.to_owned(),
        }
    }
}

fn exists(to: &Path) -> OpError {
    OpError::os(format!("{} exists; set overwrite to replace it", to.display()))
        .with("path", to.display())
        .with("errno", Errno::EEXIST as i32)
}

pub async fn remove(
    paths: Arc<Paths>,
    req: pb::FsRemoveRequest,
    deadline: Duration,
) -> OpResult<pb::FsRemoveResponse> {
    under_deadline(deadline, move |gate| {
        let r = paths.resolve(&req.path)?;
        let (dir, name) = paths.open_parent(&r)?;
        let Some(st) = lstat_at(&paths, dir.as_fd(), &name, &r.abs)? else {
            return Err(OpError::not_found("path", &r.abs));
        };
        let removed = gate.commit_in(dir.as_fd(), || match (kind_of(&st), req.recursive) {
            // std's remove_dir_all walks with O_NOFOLLOW and unlinkat: links are removed,
            // never followed.
            (pb::FsEntryKind::Directory, true) => std::fs::remove_dir_all(via_fd(dir.as_fd(), &name))
                .map_err(|e| OpError::from_io(&e, "remove", &r.abs)),
            (pb::FsEntryKind::Directory, false) => {
                nix::unistd::unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::RemoveDir)
                    .map_err(|e| paths.errno(e, "remove directory", &r.abs))
            }
            _ => nix::unistd::unlinkat(dir.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| paths.errno(e, "remove", &r.abs)),
        })?;
        removed.map(|()| pb::FsRemoveResponse {})
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_directory_reached_by_an_o_path_descriptor_can_be_synced() {
        let dir = tempfile::tempdir().unwrap();
        let fd = nix::fcntl::open(dir.path(), OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        // What the write path used to do, silently failing: fsync refuses an O_PATH descriptor.
        assert_eq!(nix::unistd::fsync(fd.as_fd()), Err(Errno::EBADF));
        try_sync_dir(fd.as_fd()).unwrap();
    }
}
