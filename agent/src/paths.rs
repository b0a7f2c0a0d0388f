//! Path mapping and confinement (`PROTOCOL.md` §4).
//!
//! A request's path is first mapped lexically (virtual root, `~`, relative) and, when the
//! agent is confined, refused with CONSENT_REQUIRED if it lies outside the workspace root.
//! Then every open goes through `openat2(RESOLVE_BENEATH)` from a descriptor of the root, so
//! a symlink pointing out — even one swapped in between check and use — fails in the kernel
//! (EXDEV) instead of escaping. Whole-machine mode uses the same code with `/` as the base
//! and no RESOLVE_BENEATH, so there is one code path.
//!
//! RESOLVE_BENEATH refuses every absolute symlink, even one naming a place inside the root,
//! which §4 allows. So a confined EXDEV is retried by `walk_beneath`: one component at a time
//! from the root's descriptor with O_NOFOLLOW, each symlink read through the descriptor it was
//! found by, absolute targets re-anchored at the root only when they name a place under it.
//! Every open is one name, O_NOFOLLOW, relative to a descriptor already beneath the root, so a
//! component swapped for a link mid-walk is read as that link and checked, never followed.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

use crate::error::{OpError, OpResult};

/// Symlinks one resolution may follow before it is ELOOP, as the kernel's MAXSYMLINKS.
const MAX_HOPS: u32 = 40;

/// The agent's view of the filesystem: where the workspace is and what it may touch.
#[derive(Debug)]
pub struct Paths {
    root: PathBuf,
    virtual_root: String,
    home: Option<PathBuf>,
    confined: bool,
    /// `root` when confined, `/` otherwise: every open starts here.
    base: PathBuf,
    base_fd: OwnedFd,
}

/// A resolved path: where it is, and how to reach it beneath the base.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The absolute path, as reported back to clients.
    pub abs: PathBuf,
    /// The same path relative to the base (`.` for the base itself).
    rel: PathBuf,
}

impl Resolved {
    /// The final component, or None for the base itself (the root when confined).
    pub fn file_name(&self) -> Option<&OsStr> {
        if self.rel == Path::new(".") { None } else { self.rel.file_name() }
    }
}

impl Paths {
    pub fn new(
        workspace_root: &Path,
        virtual_root: &str,
        home: Option<PathBuf>,
        confined: bool,
    ) -> std::io::Result<Paths> {
        let root = workspace_root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "workspace root is not a directory",
            ));
        }
        let base = if confined { root.clone() } else { PathBuf::from("/") };
        let base_fd =
            nix::fcntl::open(&base, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        let virtual_root = single_slashes(virtual_root).trim_end_matches('/').to_owned();
        Ok(Paths { root, virtual_root, home, confined, base, base_fd })
    }

    pub fn workspace_root(&self) -> &Path {
        &self.root
    }

    pub fn virtual_root(&self) -> &str {
        &self.virtual_root
    }

    pub fn confined(&self) -> bool {
        self.confined
    }

    /// Maps `raw` to an absolute, lexically normalised path (no I/O). Runs of slashes count
    /// as one, as they do for the kernel, before the virtual root is matched: `/workspace//x`
    /// is `/workspace/x`, not the absolute `/x` a join of `/x` onto the root would make.
    pub fn map(&self, raw: &str) -> PathBuf {
        let raw = single_slashes(raw);
        let raw = raw.as_str();
        let joined = if raw.is_empty() || raw == self.virtual_root {
            self.root.clone()
        } else if let Some(rest) = raw.strip_prefix(&self.virtual_root).and_then(|r| r.strip_prefix('/')) {
            self.root.join(rest)
        } else if let (Some(home), true) = (&self.home, raw == "~" || raw.starts_with("~/")) {
            home.join(raw.trim_start_matches('~').trim_start_matches('/'))
        } else if raw.starts_with('/') {
            PathBuf::from(raw)
        } else {
            self.root.join(raw)
        };
        normalize(&joined)
    }

    /// Maps `raw` and checks it against the consent, before any I/O. A NUL names no file: such
    /// a path is malformed, whatever lexical `..` would otherwise make of the component
    /// holding it (`x\0y/..` is not the directory it would normalise to).
    pub fn resolve(&self, raw: &str) -> OpResult<Resolved> {
        if raw.contains('\0') {
            return Err(OpError::protocol("a path may not contain NUL").with("path", raw.escape_debug()));
        }
        self.resolve_abs(self.map(raw))
    }

    /// Checks an already mapped absolute path against the consent (no second mapping: a root
    /// that itself lies under the virtual root must not be mapped twice).
    pub fn resolve_abs(&self, abs: PathBuf) -> OpResult<Resolved> {
        let abs = normalize(&abs);
        let rel = match abs.strip_prefix(&self.base) {
            Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
            Ok(rel) => rel.to_owned(),
            Err(_) => return Err(OpError::consent_required(&abs)),
        };
        Ok(Resolved { abs, rel })
    }

    fn how(&self, flags: OFlag, mode: Mode) -> OpenHow {
        let mut resolve = ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if self.confined {
            resolve |= ResolveFlag::RESOLVE_BENEATH;
        }
        OpenHow::new().flags(flags | OFlag::O_CLOEXEC).mode(mode).resolve(resolve)
    }

    /// Opens `rel` (relative to the base) beneath the base. Symlinks are followed only while
    /// they stay beneath it.
    fn open_rel(&self, rel: &Path, flags: OFlag, mode: Mode, abs: &Path) -> OpResult<OwnedFd> {
        self.open_beneath(rel, flags, mode).map_err(|e| self.errno(e, "open", abs))
    }

    /// The kernel's resolution first; a confined EXDEV (an absolute symlink, or a real escape)
    /// is decided by `walk_beneath`.
    fn open_beneath(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        match openat2(self.base_fd.as_fd(), rel, self.how(flags, mode)) {
            Err(Errno::EXDEV) if self.confined => self.walk_beneath(rel, flags, mode),
            other => other,
        }
    }

    /// Resolves `rel` by hand beneath the root, one component at a time (see the module doc).
    /// `..` pops the directories walked (never above the root), so every descriptor was
    /// reached from the root by single-name O_NOFOLLOW opens. An escape is EXDEV.
    fn walk_beneath(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
        let mut todo: VecDeque<OsString> = VecDeque::new();
        push_front(&mut todo, rel);
        let mut walked: Vec<OwnedFd> = Vec::new();
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                walked.pop().ok_or(Errno::EXDEV)?;
                continue;
            }
            let dir = walked.last().map_or(self.base_fd.as_fd(), AsFd::as_fd);
            let last = todo.is_empty();
            let probe_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let (probe, st) = match openat(dir, name.as_os_str(), probe_flags, Mode::empty()) {
                Ok(probe) => {
                    let st = fstat(probe.as_fd())?;
                    (probe, st)
                }
                Err(Errno::ENOENT) if last => match open_final(dir, &name, flags, mode, None) {
                    // Something appeared under us (a symlink, say): look again.
                    Err(Errno::EAGAIN) if hops < MAX_HOPS => {
                        hops += 1;
                        todo.push_front(name);
                        continue;
                    }
                    opened => return opened,
                },
                Err(e) => return Err(e),
            };
            let follow = !(last && flags.contains(OFlag::O_NOFOLLOW));
            if is(&st, SFlag::S_IFLNK) && follow {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(Errno::ELOOP);
                }
                if last && flags.contains(OFlag::O_CREAT | OFlag::O_EXCL) {
                    return Err(Errno::EEXIST);
                }
                let target = nix::fcntl::readlinkat(probe.as_fd(), "")?;
                if self.push_link(Path::new(&target), &mut todo)? {
                    walked.clear();
                }
            } else if last {
                match open_final(dir, &name, flags, mode, Some(&st)) {
                    Err(Errno::EAGAIN) if hops < MAX_HOPS => {
                        hops += 1;
                        todo.push_front(name);
                    }
                    opened => return opened,
                }
            } else if is(&st, SFlag::S_IFDIR) {
                walked.push(probe);
            } else {
                return Err(Errno::ENOTDIR);
            }
        }
        // The path ended at a directory walked (the root, or after `..`).
        let dir = walked.last().map_or(self.base_fd.as_fd(), AsFd::as_fd);
        openat(dir, ".", flags | OFlag::O_CLOEXEC, mode)
    }

    /// Queues a symlink's target in front of what is left of the walk. An absolute target
    /// must name the root or a place under it (true: the walk restarts at the root); anything
    /// else is EXDEV.
    fn push_link(&self, target: &Path, todo: &mut VecDeque<OsString>) -> Result<bool, Errno> {
        if target.as_os_str().is_empty() {
            return Err(Errno::ENOENT); // as the kernel says of an empty link
        }
        if !target.is_absolute() {
            push_front(todo, target);
            return Ok(false);
        }
        let mut parts = target.components().filter(|c| !matches!(c, Component::RootDir | Component::CurDir));
        for want in self.root.components().filter(|c| matches!(c, Component::Normal(_))) {
            if parts.next() != Some(want) {
                return Err(Errno::EXDEV);
            }
        }
        push_front(todo, &parts.collect::<PathBuf>());
        Ok(true)
    }

    /// Opens the resolved path itself, following symlinks that stay inside the consent.
    pub fn open(&self, r: &Resolved, flags: OFlag, mode: Mode) -> OpResult<OwnedFd> {
        self.open_rel(&r.rel, flags, mode, &r.abs)
    }

    /// Opens the directory holding `r` (O_PATH), for `*at` calls on its final component.
    /// The base itself has no parent in reach: an OS error naming it.
    pub fn open_parent(&self, r: &Resolved) -> OpResult<(OwnedFd, OsString)> {
        let name = r.file_name().ok_or_else(|| {
            OpError::os(format!("{} is the root of what this agent may touch", r.abs.display()))
                .with("path", r.abs.display())
        })?;
        let parent = r.rel.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let abs_parent = r.abs.parent().unwrap_or(&r.abs);
        let fd = self.open_rel(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty(), abs_parent)?;
        Ok((fd, name.to_owned()))
    }

    /// Creates every missing directory of `r` (like `mkdir -p`), each beneath the base.
    pub fn create_dirs(&self, r: &Resolved, mode: Mode) -> OpResult<()> {
        let mut prefix = PathBuf::new();
        for part in r.rel.components() {
            let Component::Normal(name) = part else { continue };
            let parent_fd = self.open_dir_rel(&prefix)?;
            prefix.push(name);
            match nix::sys::stat::mkdirat(parent_fd.as_fd(), name, mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(self.errno(e, "create directory", &self.base.join(&prefix))),
            }
        }
        self.open_dir_rel(&prefix).map(drop)
    }

    fn open_dir_rel(&self, rel: &Path) -> OpResult<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let abs = self.base.join(rel);
        self.open_rel(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty(), &abs)
    }

    /// Resolves a process working directory: confined like any path, and it must exist and be
    /// a directory (a missing cwd is NOT_FOUND naming it, never "executable not found").
    pub fn resolve_cwd(&self, raw: &str) -> OpResult<PathBuf> {
        let r = self.resolve(raw)?;
        match self.open_beneath(&r.rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()) {
            Ok(_) => Ok(r.abs),
            Err(Errno::ENOENT) => Err(OpError::not_found("working directory", &r.abs)),
            Err(Errno::ENOTDIR) => {
                Err(OpError::os(format!("working directory {} is not a directory", r.abs.display()))
                    .with("path", r.abs.display())
                    .with("errno", Errno::ENOTDIR as i32))
            }
            Err(e) => Err(self.errno(e, "open working directory", &r.abs)),
        }
    }

    /// Classifies an errno met on `path`. EXDEV (and ELOOP) from a confined open mean the
    /// resolution tried to leave the root.
    pub fn errno(&self, e: Errno, action: &str, path: &Path) -> OpError {
        if self.confined && matches!(e, Errno::EXDEV) {
            return OpError::consent_required(path).with("reason", "a symlink along the path leads outside");
        }
        OpError::from_io(&std::io::Error::from(e), action, path)
    }
}

/// Opens the final, non-symlink component of a manual walk without following anything. When
/// it was probed (`seen`), what is opened must be the same inode, else EAGAIN: look again.
fn open_final(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
    mode: Mode,
    seen: Option<&FileStat>,
) -> Result<OwnedFd, Errno> {
    let follows = !flags.contains(OFlag::O_NOFOLLOW);
    let fd = match openat(dir, name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode) {
        Err(Errno::ELOOP) if follows => return Err(Errno::EAGAIN),
        // With O_DIRECTORY a symlink is ENOTDIR, not ELOOP: one swapped in since the probe
        // (the probe saw a directory, or sees a symlink now).
        Err(Errno::ENOTDIR)
            if follows
                && flags.contains(OFlag::O_DIRECTORY)
                && (seen.is_some_and(|st| is(st, SFlag::S_IFDIR)) || is_symlink(dir, name)) =>
        {
            return Err(Errno::EAGAIN);
        }
        opened => opened?,
    };
    match seen {
        Some(seen) => {
            let now = fstat(fd.as_fd())?;
            if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino) { Ok(fd) } else { Err(Errno::EAGAIN) }
        }
        None => Ok(fd),
    }
}

fn is_symlink(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| is(&st, SFlag::S_IFLNK))
}

/// Whether `st` describes a file of `kind` (`S_IFDIR`, `S_IFLNK`, ...).
pub(crate) fn is(st: &FileStat, kind: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// Queues `path`'s components (`..` kept, `.` dropped) in front of `todo`, in order.
fn push_front(todo: &mut VecDeque<OsString>, path: &Path) {
    for part in path.components().rev() {
        match part {
            Component::Normal(name) => todo.push_front(name.to_owned()),
            Component::ParentDir => todo.push_front("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// `raw` with every run of `/` made one.
fn single_slashes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// A path through an open directory descriptor, for std calls on one final component.
pub fn via_fd(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// Lexically removes `.` and `..` (`..` at `/` stays at `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use tether_proto::pb::ErrorCode;

    use super::*;

    fn paths(root: &Path, confined: bool) -> Paths {
        Paths::new(root, "/workspace", Some(PathBuf::from("/home/me")), confined).unwrap()
    }

    #[test]
    fn maps_in_protocol_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let p = paths(&root, false);
        assert_eq!(p.map(""), root);
        assert_eq!(p.map("/workspace"), root);
        assert_eq!(p.map("/workspace/a/b"), root.join("a/b"));
        assert_eq!(p.map("/workspacex"), PathBuf::from("/workspacex"));
        assert_eq!(p.map("~"), PathBuf::from("/home/me"));
        assert_eq!(p.map("~/x"), PathBuf::from("/home/me/x"));
        assert_eq!(p.map("~bob"), root.join("~bob"));
        assert_eq!(p.map("/etc/./hosts"), PathBuf::from("/etc/hosts"));
        assert_eq!(p.map("a/../b"), root.join("b"));
        assert_eq!(p.map("/../.."), PathBuf::from("/"));
        for doubled in ["/workspace//a/b", "//workspace/a/b", "/workspace///a//b/", "/workspace/a/b//"] {
            assert_eq!(p.map(doubled), root.join("a/b"), "{doubled}");
        }
        assert_eq!(p.map("/workspace//"), root);
        assert_eq!(p.map("~//x"), PathBuf::from("/home/me/x"));
        let doubled_virtual_root = Paths::new(&root, "//workspace//", None, false).unwrap();
        assert_eq!(doubled_virtual_root.map("/workspace/a"), root.join("a"));
    }

    #[test]
    fn confined_refuses_every_kind_of_escape() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let root = dir.path().canonicalize().unwrap();
        symlink(outside.path().join("secret"), root.join("file-link")).unwrap();
        symlink(outside.path(), root.join("dir-link")).unwrap();
        let p = paths(&root, true);

        for raw in ["/etc/hosts", "/workspace/../x", "../x", "~/x"] {
            assert_eq!(p.resolve(raw).unwrap_err().code, ErrorCode::ConsentRequired, "{raw}");
        }
        for raw in ["file-link", "dir-link/secret"] {
            let r = p.resolve(raw).unwrap();
            let err = p.open(&r, OFlag::O_RDONLY, Mode::empty()).unwrap_err();
            assert_eq!(err.code, ErrorCode::ConsentRequired, "{raw}");
        }
        let r = p.resolve("dir-link/new").unwrap();
        assert_eq!(p.open_parent(&r).unwrap_err().code, ErrorCode::ConsentRequired);
    }

    #[test]
    fn whole_machine_allows_what_confinement_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let root = dir.path().canonicalize().unwrap();
        symlink(outside.path().join("secret"), root.join("file-link")).unwrap();
        let p = paths(&root, false);
        let r = p.resolve("file-link").unwrap();
        p.open(&r, OFlag::O_RDONLY, Mode::empty()).unwrap();
        let r = p.resolve(&outside.path().join("secret").display().to_string()).unwrap();
        p.open(&r, OFlag::O_RDONLY, Mode::empty()).unwrap();
    }

    #[test]
    fn symlinks_inside_the_root_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), "x").unwrap();
        symlink("real", root.join("alias")).unwrap();
        let p = paths(&root, true);
        let r = p.resolve("alias/f").unwrap();
        p.open(&r, OFlag::O_RDONLY, Mode::empty()).unwrap();
    }

    #[test]
    fn absolute_symlinks_are_followed_only_while_they_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("real/deep")).unwrap();
        std::fs::write(root.join("real/f"), "x").unwrap();
        symlink(root.join("real"), root.join("abs")).unwrap();
        symlink(root.join("real/f"), root.join("abs-file")).unwrap();
        symlink("../../abs/f", root.join("real/deep/rel-to-abs")).unwrap();
        symlink(&root, root.join("real/to-root")).unwrap();
        symlink(root.join("../nowhere/../").join(root.file_name().unwrap()), root.join("dotdot-in")).unwrap();
        symlink(outside.path().join("secret"), root.join("abs-out")).unwrap();
        symlink(root.join("real/.."), root.join("up")).unwrap();
        symlink(root.join("loop"), root.join("loop")).unwrap();
        symlink("to-root/../x", root.join("real/esc")).unwrap();
        let p = paths(&root, true);
        let open = |raw: &str, flags: OFlag| {
            let mode =
                if flags.contains(OFlag::O_CREAT) { Mode::from_bits_truncate(0o644) } else { Mode::empty() };
            p.open(&p.resolve(raw).unwrap(), flags, mode)
        };
        let read = |raw: &str| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(open(raw, OFlag::O_RDONLY)?), &mut s)
                .unwrap();
            Ok::<_, OpError>(s)
        };

        for raw in ["abs/f", "abs-file", "real/deep/rel-to-abs", "abs/to-root/abs/f", "up/real/f"] {
            assert_eq!(read(raw).unwrap(), "x", "{raw}");
        }
        open("abs/new", OFlag::O_WRONLY | OFlag::O_CREAT).unwrap();
        assert!(root.join("real/new").is_file());
        let (parent, name) = p.open_parent(&p.resolve("abs/deep/x").unwrap()).unwrap();
        assert_eq!(name, "x");
        let deep = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.join("real/deep")).unwrap());
        assert_eq!(nix::sys::stat::fstat(parent).unwrap().st_ino, deep);
        assert_eq!(p.resolve_cwd("abs/deep").unwrap(), root.join("abs/deep"));
        let exists = open("abs-file", OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL).unwrap_err();
        assert_eq!(exists.detail.get("errno"), Some(&(Errno::EEXIST as i32).to_string()), "{exists:?}");

        for raw in ["abs-out", "dotdot-in/real/f", "abs/esc"] {
            assert_eq!(read(raw).unwrap_err().code, ErrorCode::ConsentRequired, "{raw}");
        }
        assert_eq!(read("loop").unwrap_err().code, ErrorCode::Os);
    }

    #[test]
    fn cwd_must_exist_and_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        let p = paths(&root, true);
        assert_eq!(p.resolve_cwd("").unwrap(), root);
        let missing = p.resolve_cwd("/workspace/nope").unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound);
        assert!(missing.message.contains("working directory") && missing.message.contains("nope"));
        assert_eq!(p.resolve_cwd("file").unwrap_err().code, ErrorCode::Os);
        assert_eq!(p.resolve_cwd("/tmp").unwrap_err().code, ErrorCode::ConsentRequired);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_the_probe_is_looked_at_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        let base = std::fs::File::open(&root).unwrap();
        let seen =
            nix::sys::stat::fstatat(base.as_fd(), "d", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        std::fs::remove_dir(root.join("d")).unwrap();
        symlink("/tmp", root.join("d")).unwrap();
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let swapped = open_final(base.as_fd(), OsStr::new("d"), flags, Mode::empty(), Some(&seen));
        assert_eq!(swapped.err(), Some(Errno::EAGAIN), "not ENOTDIR: the walk looks again and sees the link");
    }

    #[test]
    fn create_dirs_stays_beneath_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        let p = paths(&root, true);
        p.create_dirs(&p.resolve("a/b/c").unwrap(), Mode::from_bits_truncate(0o755)).unwrap();
        assert!(root.join("a/b/c").is_dir());
        let err = p.create_dirs(&p.resolve("out/x").unwrap(), Mode::from_bits_truncate(0o755)).unwrap_err();
        assert_eq!(err.code, ErrorCode::ConsentRequired);
        assert!(!outside.path().join("x").exists());
    }
}
