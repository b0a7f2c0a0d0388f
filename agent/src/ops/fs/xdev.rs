//! fs_move across filesystems, where rename(2) says EXDEV (`PROTOCOL.md` §5: copy + remove).
//!
//! Why it is not a plain recursive copy onto the target: the target may already hold a
//! symlink (at its name or anywhere inside a directory there), and a copy that opens paths
//! follows it, possibly out of the root. So the tree is copied into a fresh temp sibling of
//! the target, only ever creating entries (O_EXCL, O_NOFOLLOW, `*at` calls on descriptors),
//! synced, and then renamed over the target with rename's own rules: a symlink there is
//! replaced, a non-empty directory is refused, and without overwrite nothing is replaced.
//! The source is read the same way (descriptors, O_NOFOLLOW), so it cannot be swapped for a
//! link to a file outside either. Only then is the source removed.
//!
//! Copies carry permission bits only (see `mode`): a setuid file moved across a mount would
//! otherwise become a setuid file owned by the agent's user. The copy stops as soon as the
//! op's deadline passes; placing it and removing the source is one commit step of its gate.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::UnlinkatFlags;

use super::commit::{Gate, probe};
use super::mode::carried_over;
use super::{sync_dir, temp_name, try_sync_dir};
use crate::paths::{is, via_fd};

/// Moves `from_name` in `from_dir` to `to_name` in `to_dir`, which lie on different
/// filesystems. Errors are the OS's; on one, the target and the source are as they were.
pub(super) fn move_across(
    (from_dir, from_name): (BorrowedFd<'_>, &OsStr),
    (to_dir, to_name): (BorrowedFd<'_>, &OsStr),
    overwrite: bool,
    gate: &Gate,
) -> io::Result<()> {
    // Not worth copying a tree only to be refused (the rename below still decides, atomically).
    if !overwrite && fstatat(to_dir, to_name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
        return Err(Errno::EEXIST.into());
    }
    // rename(2) says EINVAL for a directory moved into itself, but EXDEV when a mount lies on
    // the way: copying it would copy the copy, level after level.
    let source = fstatat(from_dir, from_name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if is(&source, SFlag::S_IFDIR) && lies_within(to_dir, &source)? {
        return Err(Errno::EINVAL.into());
    }
    let tmp = temp_name(to_name);
    let copied = copy_entry(from_dir, from_name, to_dir, &tmp, 0, gate).map_err(Placing::Before);
    let placed = copied.and_then(|()| {
        let flags = if overwrite { RenameFlags::empty() } else { RenameFlags::RENAME_NOREPLACE };
        // Both filesystems change: the source's is probed here, the target's by the gate.
        probe(from_dir);
        gate.commit_in(to_dir, || place_and_remove_source(from_dir, from_name, to_dir, &tmp, to_name, flags))
            .map_err(|_| deadline_passed())?
    });
    if let Err(Placing::Before(e)) = placed {
        remove_entry(to_dir, &tmp);
        return Err(e);
    }
    placed.map_err(Placing::into_inner)
}

/// How a move failed: before its copy was in place (the temp copy is then removed) or after.
enum Placing {
    Before(io::Error),
    After(io::Error),
}

impl Placing {
    fn into_inner(self) -> io::Error {
        match self {
            Placing::Before(e) | Placing::After(e) => e,
        }
    }
}

impl From<io::Error> for Placing {
    fn from(e: io::Error) -> Self {
        Placing::Before(e)
    }
}

/// The commit of a move: the copy renamed into place, made durable, then the source removed.
fn place_and_remove_source(
    from_dir: BorrowedFd<'_>,
    from_name: &OsStr,
    to_dir: BorrowedFd<'_>,
    tmp: &OsStr,
    to_name: &OsStr,
    flags: RenameFlags,
) -> Result<(), Placing> {
    nix::fcntl::renameat2(to_dir, tmp, to_dir, to_name, flags).map_err(|e| Placing::Before(e.into()))?;
    let after = |e: io::Error| Placing::After(e);
    // The source goes only once its copy is durable: a crash must never lose both.
    try_sync_dir(to_dir).map_err(after)?;
    let st = fstatat(from_dir, from_name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| after(e.into()))?;
    if is(&st, SFlag::S_IFDIR) {
        // std walks with O_NOFOLLOW and unlinkat: links inside are removed, never followed.
        std::fs::remove_dir_all(via_fd(from_dir, from_name)).map_err(after)?;
    } else {
        nix::unistd::unlinkat(from_dir, from_name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| after(e.into()))?;
    }
    sync_dir(from_dir);
    Ok(())
}

/// What the copy meets once the op's deadline has passed: nobody waits for it any more.
fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the move's deadline passed before it was placed")
}

/// Directories a copied tree may nest; deeper is refused rather than recursed into.
const MAX_DEPTH: usize = 256;

/// Whether `dir` is the directory `ancestor` or lies beneath it (walking `..` up to the root).
fn lies_within(dir: BorrowedFd<'_>, ancestor: &FileStat) -> io::Result<bool> {
    let same = |st: &FileStat| (st.st_dev, st.st_ino) == (ancestor.st_dev, ancestor.st_ino);
    let mut current = fstat(dir)?;
    let mut up = openat(dir, "..", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    for _ in 0..4096 {
        if same(&current) {
            return Ok(true);
        }
        let parent = fstat(up.as_fd())?;
        if (parent.st_dev, parent.st_ino) == (current.st_dev, current.st_ino) {
            return Ok(false); // the root is its own parent
        }
        current = parent;
        up = openat(up.as_fd(), "..", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    }
    Err(Errno::ELOOP.into())
}

/// Best-effort removal of a half-made temp copy.
fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr) {
    if nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) == Err(Errno::EISDIR) {
        let _ = std::fs::remove_dir_all(via_fd(dir, name));
    }
}

/// Copies one entry as what it is (a symlink stays a symlink), creating `to_name` in `to_dir`
/// and never opening anything that was there before.
fn copy_entry(
    from_dir: BorrowedFd<'_>,
    from_name: &OsStr,
    to_dir: BorrowedFd<'_>,
    to_name: &OsStr,
    depth: usize,
    gate: &Gate,
) -> io::Result<()> {
    if gate.is_shut() {
        return Err(deadline_passed());
    }
    let st = fstatat(from_dir, from_name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if is(&st, SFlag::S_IFLNK) {
        let target = nix::fcntl::readlinkat(from_dir, from_name)?;
        Ok(nix::unistd::symlinkat(target.as_os_str(), to_dir, to_name)?)
    } else if is(&st, SFlag::S_IFDIR) {
        if depth >= MAX_DEPTH {
            return Err(io::Error::other(format!("the tree nests more than {MAX_DEPTH} directories deep")));
        }
        copy_dir(from_dir, from_name, to_dir, to_name, depth + 1, gate)
    } else {
        copy_file(from_dir, from_name, to_dir, to_name)
    }
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn copy_dir(
    from_dir: BorrowedFd<'_>,
    from_name: &OsStr,
    to_dir: BorrowedFd<'_>,
    to_name: &OsStr,
    depth: usize,
    gate: &Gate,
) -> io::Result<()> {
    let src = open_dir(from_dir, from_name)?;
    let mode = carried_over(fstat(src.as_fd())?.st_mode);
    mkdirat(to_dir, to_name, Mode::from_bits_truncate(0o700))?;
    let dst = open_dir(to_dir, to_name)?;
    // The listing's descriptor is closed before recursing: a deep tree holds two per level.
    let names: Vec<OsString> = nix::dir::Dir::from_fd(src.try_clone()?)?
        .iter()
        .map(|e| e.map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned()))
        .collect::<nix::Result<_>>()?;
    for name in names.iter().filter(|n| *n != "." && *n != "..") {
        copy_entry(src.as_fd(), name, dst.as_fd(), name, depth, gate)?;
    }
    fchmod(dst.as_fd(), mode)?;
    Ok(nix::unistd::fsync(dst.as_fd())?)
}

/// A regular file's bytes and permission bits. Anything else that is not a directory or a
/// symlink (a FIFO, a socket, a device) is refused rather than read.
fn copy_file(
    from_dir: BorrowedFd<'_>,
    from_name: &OsStr,
    to_dir: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<()> {
    // O_NONBLOCK: a FIFO swapped in must not hang the copy; it is refused just below.
    let read = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let src = File::from(openat(from_dir, from_name, read, Mode::empty())?);
    let st = fstat(src.as_fd())?;
    if !is(&st, SFlag::S_IFREG) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} is not a regular file, directory or symlink", from_name.to_string_lossy()),
        ));
    }
    let write = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dst = File::from(openat(to_dir, to_name, write, Mode::from_bits_truncate(0o600))?);
    io::copy(&mut &src, &mut dst)?;
    fchmod(dst.as_fd(), carried_over(st.st_mode))?;
    dst.sync_all()
}
