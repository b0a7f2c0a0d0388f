//! fs_write (`PROTOCOL.md` §5). A whole-file write replaces the target by rename, so a reader
//! sees the old file or the new one; append and positional writes change the file in place.
//!
//! Only regular files are written: a FIFO, a socket or a device is refused (opened, if at
//! all, with O_NONBLOCK, so one swapped in cannot block the agent). A file that does not exist
//! yet is never created empty first: its content goes to a temp file that is renamed into place
//! only once written, so a write that fails leaves nothing behind. In confined mode an in-place
//! write to a file with more than one hard link is refused: the other link may lie outside the
//! root (a command can link a file it can read), and writing in place would change it there. A
//! whole-file write is fine: the rename replaces this link only.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use tether_proto::pb::{self, ErrorCode, FsEntryKind};

use super::commit::Gate;
use super::kind::{kind_of, not_regular};
use super::mode::carried_over;
use super::{lstat_at, sync_dir, temp_name};
use crate::error::{OpError, OpResult};
use crate::paths::{Paths, Resolved};

/// The mode asked for a new file when the request leaves it 0: the kernel takes the umask
/// (or a default ACL) off it, as for any program creating a file. Reading the umask instead
/// means setting it, process-wide, under every other thread's feet.
const NEW_FILE_MODE: u32 = 0o666;

/// Where a positional write may end at most (64 GiB): a file is never made sparse beyond it.
pub const MAX_WRITE_END: u64 = 64 << 30;

/// Where the content goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Replaces the whole file, atomically.
    Whole,
    /// At the end of the file.
    Append,
    /// At this offset, the rest of the file kept.
    At(u64),
}

impl Placement {
    /// The placement a request asks for, or PROTOCOL when it asks for two or for too far.
    pub fn of(req: &pb::FsWriteRequest) -> OpResult<Placement> {
        match (req.append, req.use_offset) {
            (true, true) => Err(OpError::protocol(
                "fs_write: append and use_offset cannot be combined (append writes at the end, \
                 use_offset at offset)",
            )),
            (true, false) => Ok(Placement::Append),
            (false, false) => Ok(Placement::Whole),
            (false, true) => {
                let end = req.offset.saturating_add(req.content.len() as u64);
                if end > MAX_WRITE_END {
                    return Err(OpError::protocol(format!(
                        "fs_write: a positional write may end at {MAX_WRITE_END} bytes at most; this one \
                         ends at {end}"
                    ))
                    .with("field", "offset")
                    .with("max_end", MAX_WRITE_END));
                }
                Ok(Placement::At(req.offset))
            }
        }
    }
}

/// Writes `content` to `r` as `placement` says; `mode` (None: keep, or the default for a new
/// file) is already checked to be permission bits only.
pub fn write(
    paths: &Paths,
    r: &Resolved,
    content: &[u8],
    placement: Placement,
    mode: Option<Mode>,
    gate: &Gate,
) -> OpResult<()> {
    let target = final_target(paths, r)?;
    let (dir, name) = paths.open_parent(&target)?;
    let existing = lstat_at(paths, dir.as_fd(), &name, &target.abs)?;
    let new = Landing { paths, target: &target, dir: dir.as_fd(), name: &name, mode };
    match (existing.as_ref().map(kind_of), placement) {
        // Nothing there: only a whole-file write may replace what appears meanwhile.
        (None, Placement::Whole) => new.place(content, 0, true, gate),
        (None, Placement::Append) => new.place(content, 0, false, gate),
        (None, Placement::At(offset)) => new.place(content, offset, false, gate),
        (Some(FsEntryKind::Directory), _) => {
            Err(OpError::from_io(&Errno::EISDIR.into(), "write", &target.abs))
        }
        (Some(FsEntryKind::File), Placement::Whole) => {
            let keep = existing.map(|st| mode.unwrap_or_else(|| carried_over(st.st_mode)));
            Landing { mode: keep, ..new }.place(content, 0, true, gate)
        }
        (Some(FsEntryKind::File), placement) => in_place(&new, content, placement, gate),
        (Some(kind), _) => Err(not_regular(&target.abs, kind, "write")),
    }
}

/// Where a write lands: `name` in `dir`, reached as `target`, with the mode a file made
/// there gets (`place` makes one from a temp file renamed into place).
struct Landing<'a> {
    paths: &'a Paths,
    target: &'a Resolved,
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
    /// Set exactly, or None: the kernel's default for a new file.
    mode: Option<Mode>,
}

impl Landing<'_> {
    /// Writes `content` at `offset` of a temp file beside the target, syncs it, and renames it
    /// over the target (`replace`) or only where nothing is. The temp file starts 0600 when its
    /// content may be more private than a new file's.
    fn place(&self, content: &[u8], offset: u64, replace: bool, gate: &Gate) -> OpResult<()> {
        let abs = &self.target.abs;
        let tmp_name = temp_name(self.name);
        let initial = if self.mode.is_some() { 0o600 } else { NEW_FILE_MODE };
        let tmp = nix::fcntl::openat(
            self.dir,
            tmp_name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(initial),
        )
        .map_err(|e| self.paths.errno(e, "create temp file beside", abs))?;
        let flags = if replace { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
        let placed = fill(File::from(tmp), content, offset, self.mode)
            .map_err(|e| OpError::from_io(&e, "write", abs))
            .and_then(|()| {
                let renamed = gate.commit_in(self.dir, || {
                    nix::fcntl::renameat2(self.dir, tmp_name.as_os_str(), self.dir, self.name, flags)
                })?;
                renamed.map_err(|e| match e {
                    Errno::EEXIST => {
                        OpError::os(format!("{} appeared while it was being written", abs.display()))
                            .retryable()
                            .with("path", abs.display())
                            .with("errno", e as i32)
                    }
                    e => self.paths.errno(e, "rename into place", abs),
                })
            });
        if let Err(e) = placed {
            let _ = nix::unistd::unlinkat(self.dir, tmp_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        sync_dir(self.dir);
        Ok(())
    }
}

fn fill(file: File, content: &[u8], offset: u64, mode: Option<Mode>) -> std::io::Result<()> {
    file.write_all_at(content, offset)?;
    if let Some(mode) = mode {
        nix::sys::stat::fchmod(file.as_fd(), mode)?;
    }
    file.sync_all()
}

/// Append or positional write into the existing regular file itself (no truncation).
fn in_place(at: &Landing<'_>, content: &[u8], placement: Placement, gate: &Gate) -> OpResult<()> {
    let abs = &at.target.abs;
    // O_NONBLOCK: a FIFO swapped in since the look above must not hang; it is refused below.
    let mut flags =
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if placement == Placement::Append {
        flags |= OFlag::O_APPEND;
    }
    let file = match nix::fcntl::openat(at.dir, at.name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        // What a FIFO nobody reads, or a socket, says to a non-blocking open for writing.
        Err(Errno::ENXIO) => {
            let now = lstat_at(at.paths, at.dir, at.name, abs)?;
            return Err(not_regular(abs, now.as_ref().map_or(FsEntryKind::Fifo, kind_of), "write"));
        }
        Err(e) => return Err(at.paths.errno(e, "open", abs)),
    };
    let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| at.paths.errno(e, "stat", abs))?;
    let kind = kind_of(&st);
    if kind != FsEntryKind::File {
        return Err(not_regular(abs, kind, "write"));
    }
    if st.st_nlink > 1 && at.paths.confined() {
        return Err(OpError::new(
            ErrorCode::ConsentRequired,
            format!(
                "{} has {} hard links, and another may lie outside the workspace root: an append or \
                 positional write would change them all; write the whole file instead",
                abs.display(),
                st.st_nlink
            ),
        )
        .with("path", abs.display())
        .with("links", st.st_nlink));
    }
    let io = |e: std::io::Error| OpError::from_io(&e, "write", abs);
    match placement {
        Placement::At(offset) => {
            gate.commit_in(at.dir, || file.write_all_at(content, offset))?.map_err(io)?
        }
        _ => gate.commit_in(at.dir, || (&file).write_all(content))?.map_err(io)?,
    }
    file.sync_data().map_err(io)
}

/// A final symlink is written through only when its target stays inside the consent; the
/// kernel resolves it beneath the root, so a link pointing out is CONSENT_REQUIRED.
pub(super) fn final_target(paths: &Paths, r: &Resolved) -> OpResult<Resolved> {
    let (dir, name) = paths.open_parent(r)?;
    match lstat_at(paths, dir.as_fd(), &name, &r.abs)? {
        Some(st) if kind_of(&st) == FsEntryKind::Symlink => {
            let fd = paths.open(r, OFlag::O_PATH, Mode::empty())?;
            let real = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)))
                .map_err(|e| OpError::from_io(&e, "resolve symlink", &r.abs))?;
            paths.resolve_abs(real)
        }
        _ => Ok(r.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(append: bool, use_offset: bool, offset: u64, len: usize) -> pb::FsWriteRequest {
        pb::FsWriteRequest { append, use_offset, offset, content: vec![0; len].into(), ..Default::default() }
    }

    #[test]
    fn placements_that_contradict_or_reach_too_far_are_protocol_errors() {
        assert_eq!(Placement::of(&req(false, false, 0, 1)).unwrap(), Placement::Whole);
        assert_eq!(Placement::of(&req(true, false, 0, 1)).unwrap(), Placement::Append);
        assert_eq!(Placement::of(&req(false, true, 5, 1)).unwrap(), Placement::At(5));
        assert_eq!(
            Placement::of(&req(false, true, MAX_WRITE_END - 4, 4)).unwrap(),
            Placement::At(MAX_WRITE_END - 4)
        );
        for bad in
            [req(true, true, 0, 1), req(false, true, MAX_WRITE_END - 4, 5), req(false, true, u64::MAX, 2)]
        {
            assert_eq!(Placement::of(&bad).unwrap_err().code, ErrorCode::Protocol, "{bad:?}");
        }
    }
}
