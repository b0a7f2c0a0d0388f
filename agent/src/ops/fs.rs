//! Filesystem ops (`PROTOCOL.md` §5: fs_read, fs_write, fs_list, fs_stat, fs_mkdir, fs_move,
//! fs_remove). Every path goes through `Paths`, so every open is confined in the kernel; the
//! final component is then handled with `*at` calls on its parent's descriptor. All work runs
//! on the blocking pool.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use prost::Message;
use tether_proto::pb;

use crate::error::{OpError, OpResult};
use crate::paths::{Paths, Resolved, via_fd};

mod xdev;

/// The mode asked for a new file when the request leaves it 0: the kernel takes the umask
/// (or a default ACL) off it, as for any program creating a file. Reading the umask instead
/// means setting it, process-wide, under every other thread's feet.
const NEW_FILE_MODE: u32 = 0o666;

/// Bytes a read reply spends besides the content: field tags, length prefixes, total_size.
const READ_OVERHEAD: usize = 32;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> OpResult<T> + Send + 'static) -> OpResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| OpError::os(format!("filesystem task failed: {e}")))?
}

fn mode_or(mode: u32, default: u32) -> Mode {
    Mode::from_bits_truncate(if mode == 0 { default } else { mode })
}

/// fstatat without following a final symlink; ENOENT is `None`.
fn lstat_at(paths: &Paths, dir: BorrowedFd<'_>, name: &OsStr, abs: &Path) -> OpResult<Option<FileStat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(paths.errno(e, "stat", abs)),
    }
}

fn kind_of(st: &FileStat) -> pb::FsEntryKind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => pb::FsEntryKind::Directory,
        SFlag::S_IFLNK => pb::FsEntryKind::Symlink,
        _ => pb::FsEntryKind::File,
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

pub async fn read(paths: Arc<Paths>, req: pb::FsReadRequest, budget: usize) -> OpResult<pb::FsReadResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        // O_NONBLOCK: opening a FIFO must not hang a worker; it is refused just below.
        let file = File::from(paths.open(&r, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?);
        let meta = file.metadata().map_err(|e| OpError::from_io(&e, "stat", &r.abs))?;
        if meta.is_dir() {
            return Err(OpError::from_io(&Errno::EISDIR.into(), "read", &r.abs));
        }
        if !meta.is_file() {
            return Err(OpError::os(format!("{} is not a regular file", r.abs.display()))
                .with("path", r.abs.display()));
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
        let mut content = vec![0u8; want as usize];
        let mut done = 0;
        while done < content.len() {
            match file.read_at(&mut content[done..], req.offset + done as u64) {
                Ok(0) => break, // the file shrank under us
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(OpError::from_io(&e, "read", &r.abs)),
            }
        }
        content.truncate(done);
        Ok(pb::FsReadResponse { content: content.into(), total_size: total })
    })
    .await
}

// ------------------------------------------------------------------ write

pub async fn write(paths: Arc<Paths>, req: pb::FsWriteRequest) -> OpResult<pb::FsWriteResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        if let (true, Some(parent)) = (req.create_parents, r.abs.parent()) {
            let parent = paths.resolve_abs(parent.to_owned())?;
            paths.create_dirs(&parent, Mode::from_bits_truncate(0o755))?;
        }
        if req.append || req.use_offset {
            write_in_place(&paths, &r, &req)
        } else {
            write_atomically(&paths, &r, &req)
        }?;
        Ok(pb::FsWriteResponse { bytes_written: req.content.len() as u64 })
    })
    .await
}

/// Append or positional write into the file itself (no truncation).
fn write_in_place(paths: &Paths, r: &Resolved, req: &pb::FsWriteRequest) -> OpResult<()> {
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT;
    if req.append && !req.use_offset {
        flags |= OFlag::O_APPEND;
    }
    let file = File::from(paths.open(r, flags, mode_or(req.mode, NEW_FILE_MODE))?);
    let io = |e: std::io::Error| OpError::from_io(&e, "write", &r.abs);
    if req.use_offset {
        file.write_all_at(&req.content, req.offset).map_err(io)?;
    } else {
        (&file).write_all(&req.content).map_err(io)?;
    }
    file.sync_data().map_err(io)
}

/// Truncating write: a temp file beside the target, fsync, rename over it. A reader sees the
/// old file or the new one, never half of one.
fn write_atomically(paths: &Paths, r: &Resolved, req: &pb::FsWriteRequest) -> OpResult<()> {
    let target = final_target(paths, r)?;
    let (dir, name) = paths.open_parent(&target)?;
    let existing = lstat_at(paths, dir.as_fd(), &name, &target.abs)?;
    if existing.as_ref().is_some_and(|st| kind_of(st) == pb::FsEntryKind::Directory) {
        return Err(OpError::from_io(&Errno::EISDIR.into(), "write", &target.abs));
    }
    // A mode to set exactly (kept or asked for), or None: the kernel's default for a new file.
    // The temp file starts 0600 when its content may be more private than a new file's.
    let mode = match (req.mode, &existing) {
        (0, Some(st)) => Some(Mode::from_bits_truncate(st.st_mode & 0o7777)),
        (0, None) => None,
        (m, _) => Some(Mode::from_bits_truncate(m)),
    };
    let tmp_name = temp_name(&name);
    let tmp = nix::fcntl::openat(
        dir.as_fd(),
        tmp_name.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(if mode.is_some() { 0o600 } else { NEW_FILE_MODE }),
    )
    .map_err(|e| paths.errno(e, "create temp file beside", &target.abs))?;
    let committed = fill_and_rename(File::from(tmp), &req.content, mode, dir.as_fd(), &tmp_name, &name);
    if let Err(e) = committed {
        let _ = nix::unistd::unlinkat(dir.as_fd(), tmp_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(OpError::from_io(&e, "write", &target.abs));
    }
    Ok(())
}

fn fill_and_rename(
    mut file: File,
    content: &[u8],
    mode: Option<Mode>,
    dir: BorrowedFd<'_>,
    tmp: &OsStr,
    name: &OsStr,
) -> std::io::Result<()> {
    file.write_all(content)?;
    if let Some(mode) = mode {
        nix::sys::stat::fchmod(file.as_fd(), mode)?;
    }
    file.sync_all()?;
    nix::fcntl::renameat(dir, tmp, dir, name)?;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename or unlink in `dir` durable, as far as it can: the change is already made, so
/// a directory that cannot be synced (one the agent may write but not read, mode 0300) is
/// logged, never reported as a failure of the op (a retry would then find it done).
fn sync_dir(dir: BorrowedFd<'_>) {
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

/// A final symlink is written through only when its target stays inside the consent; the
/// kernel resolves it beneath the root, so a link pointing out is CONSENT_REQUIRED.
fn final_target(paths: &Paths, r: &Resolved) -> OpResult<Resolved> {
    let (dir, name) = paths.open_parent(r)?;
    match lstat_at(paths, dir.as_fd(), &name, &r.abs)? {
        Some(st) if kind_of(&st) == pb::FsEntryKind::Symlink => {
            let fd = paths.open(r, OFlag::O_PATH, Mode::empty())?;
            let real = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)))
                .map_err(|e| OpError::from_io(&e, "resolve symlink", &r.abs))?;
            paths.resolve_abs(real)
        }
        _ => Ok(r.clone()),
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

pub async fn mkdir(paths: Arc<Paths>, req: pb::FsMkdirRequest) -> OpResult<pb::FsMkdirResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        let mode = mode_or(req.mode, 0o755);
        if req.parents {
            paths.create_dirs(&r, mode)?;
        } else {
            let (dir, name) = paths.open_parent(&r)?;
            nix::sys::stat::mkdirat(dir.as_fd(), name.as_os_str(), mode)
                .map_err(|e| paths.errno(e, "create directory", &r.abs))?;
        }
        Ok(pb::FsMkdirResponse {})
    })
    .await
}

pub async fn rename(paths: Arc<Paths>, req: pb::FsMoveRequest) -> OpResult<pb::FsMoveResponse> {
    blocking(move || {
        let from = paths.resolve(&req.from)?;
        let to = paths.resolve(&req.to)?;
        let (from_dir, from_name) = paths.open_parent(&from)?;
        let (to_dir, to_name) = paths.open_parent(&to)?;
        if lstat_at(&paths, from_dir.as_fd(), &from_name, &from.abs)?.is_none() {
            return Err(OpError::not_found("path", &from.abs));
        }
        let flags = if req.overwrite { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
        let moved = nix::fcntl::renameat2(
            from_dir.as_fd(),
            from_name.as_os_str(),
            to_dir.as_fd(),
            to_name.as_os_str(),
            flags,
        );
        match moved {
            Ok(()) => {
                sync_dir(to_dir.as_fd());
                sync_dir(from_dir.as_fd());
            }
            Err(Errno::EXDEV) => {
                xdev::move_across(from_dir.as_fd(), &from_name, to_dir.as_fd(), &to_name, req.overwrite)
                    .map_err(|e| match e.raw_os_error().map(Errno::from_raw) {
                        Some(Errno::EEXIST) => exists(&to.abs),
                        _ => OpError::from_io(&e, "move across filesystems", &from.abs),
                    })?
            }
            Err(Errno::EEXIST) => return Err(exists(&to.abs)),
            Err(e) => return Err(paths.errno(e, "move", &from.abs)),
        }
        Ok(pb::FsMoveResponse {})
    })
    .await
}

fn exists(to: &Path) -> OpError {
    OpError::os(format!("{} exists; set overwrite to replace it", to.display()))
        .with("path", to.display())
        .with("errno", Errno::EEXIST as i32)
}

pub async fn remove(paths: Arc<Paths>, req: pb::FsRemoveRequest) -> OpResult<pb::FsRemoveResponse> {
    blocking(move || {
        let r = paths.resolve(&req.path)?;
        let (dir, name) = paths.open_parent(&r)?;
        let Some(st) = lstat_at(&paths, dir.as_fd(), &name, &r.abs)? else {
            return Err(OpError::not_found("path", &r.abs));
        };
        let removed = match (kind_of(&st), req.recursive) {
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
        };
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
