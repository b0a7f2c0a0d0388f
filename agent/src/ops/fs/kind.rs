//! What a file is, as the wire names it (`PROTOCOL.md` §5 FsEntryKind, with the EXT kinds for
//! special files), and the refusal every op that reads or writes content gives anything that
//! is not a regular file: a FIFO, a socket or a device has no content to replace, and opening
//! one may block or act on hardware.

use std::path::Path;

use nix::sys::stat::{FileStat, SFlag};
use tether_proto::pb::FsEntryKind;

use crate::error::OpError;

pub fn kind_of(st: &FileStat) -> FsEntryKind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FsEntryKind::File,
        SFlag::S_IFDIR => FsEntryKind::Directory,
        SFlag::S_IFLNK => FsEntryKind::Symlink,
        SFlag::S_IFIFO => FsEntryKind::Fifo,
        SFlag::S_IFSOCK => FsEntryKind::Socket,
        SFlag::S_IFBLK => FsEntryKind::BlockDevice,
        SFlag::S_IFCHR => FsEntryKind::CharDevice,
        _ => FsEntryKind::Unspecified,
    }
}

/// The words for a kind in messages.
fn described(kind: FsEntryKind) -> &'static str {
    match kind {
        FsEntryKind::File => "a regular file",
        FsEntryKind::Directory => "a directory",
        FsEntryKind::Symlink => "a symlink",
        FsEntryKind::Fifo => "a FIFO",
        FsEntryKind::Socket => "a socket",
        FsEntryKind::BlockDevice => "a block device",
        FsEntryKind::CharDevice => "a character device",
        FsEntryKind::Unspecified => "a file of an unknown type",
    }
}

/// `path` is `kind`, where only a regular file will do: an OS error naming both.
pub fn not_regular(path: &Path, kind: FsEntryKind, action: &str) -> OpError {
    OpError::os(format!("cannot {action} {}: it is {}, not a regular file", path.display(), described(kind)))
        .with("path", path.display())
        .with("kind", kind.as_str_name())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::fcntl::AtFlags;
    use nix::sys::stat::{Mode, fstat, fstatat};
    use nix::unistd::mkfifoat;

    use super::*;

    #[test]
    fn special_files_are_named_as_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let fd = nix::fcntl::open(dir.path(), nix::fcntl::OFlag::O_PATH, Mode::empty()).unwrap();
        mkfifoat(fd.as_fd(), "fifo", Mode::from_bits_truncate(0o600)).unwrap();
        let socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let at = |name| fstatat(fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(kind_of(&at("fifo")), FsEntryKind::Fifo);
        assert_eq!(kind_of(&at("sock")), FsEntryKind::Socket);
        assert_eq!(
            kind_of(&fstat(std::fs::File::open("/dev/null").unwrap().as_fd()).unwrap()),
            FsEntryKind::CharDevice
        );
        assert_eq!(kind_of(&at(".")), FsEntryKind::Directory);
        drop(socket);
        let err = not_regular(Path::new("/r/fifo"), FsEntryKind::Fifo, "write");
        assert!(err.message.contains("a FIFO"), "{err:?}");
        assert_eq!(err.detail["kind"], "FS_ENTRY_KIND_FIFO");
    }
}
