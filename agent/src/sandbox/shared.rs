//! What any user of the machine could read, judged by the "other" permission bits: the measure
//! of what a read location shares with confined commands (see `rules`). A root agent's
//! commands run as uid 0 and own most of the system's files, so what they may read cannot be
//! left to the permissions they would meet; instead the read locations are walked once at
//! startup (blocking: one `lstat` per entry, about 135 000 entries and half a second for
//! `/usr`, `/etc` and `/opt` of a development machine) for the entries others could not read.
//! Nothing is cached across runs: permissions change between them.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const OTHERS_READ: u32 = 0o004;
const OTHERS_SEARCH: u32 = 0o001;

/// The entries beneath `dir` (not `dir` itself) others could not read: files without o+r,
/// directories without o+r or o+x (not descended into). Symlinks are not followed: their
/// targets are judged where they lie. What the agent cannot list is skipped. A directory
/// reached twice (a bind mount of an ancestor) is walked once.
pub fn unshared_beneath(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            // lstat: a symlink is judged as itself, and skipped.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.file_type().is_symlink() {
                continue;
            }
            let wanted = if meta.is_dir() { OTHERS_READ | OTHERS_SEARCH } else { OTHERS_READ };
            if meta.mode() & wanted != wanted {
                found.push(entry.path());
            } else if meta.is_dir() && seen.insert((meta.dev(), meta.ino())) {
                pending.push(entry.path());
            }
        }
    }
    found
}

/// Whether `path` is a file (not a directory) others could read: o+r, beneath directories
/// that all have o+x.
pub fn shared_file(path: &Path) -> bool {
    let others_may = |p: &Path, bit: u32| fs::metadata(p).is_ok_and(|m| m.mode() & bit != 0);
    let is_file = fs::metadata(path).is_ok_and(|m| !m.is_dir());
    is_file && others_may(path, OTHERS_READ) && path.ancestors().skip(1).all(|a| others_may(a, OTHERS_SEARCH))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn private_files_and_directories_are_found_and_not_entered_and_links_are_not_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().canonicalize().expect("canonical");
        chmod(&top, 0o700); // the location itself is not judged
        for dir in ["pub/deep", "private", "listless", "searchless"] {
            fs::create_dir_all(top.join(dir)).expect("mkdir");
        }
        for (file, mode) in [("pub/deep/ok", 0o644), ("pub/deep/key", 0o640), ("private/inner", 0o600)] {
            fs::write(top.join(file), "x").expect("write");
            chmod(&top.join(file), mode);
        }
        chmod(&top.join("private"), 0o700);
        chmod(&top.join("listless"), 0o711);
        chmod(&top.join("searchless"), 0o744);
        symlink("/etc/shadow", top.join("pub/link")).expect("symlink");
        let mut found = unshared_beneath(&top);
        found.sort();
        let expected: Vec<PathBuf> =
            ["listless", "private", "pub/deep/key", "searchless"].iter().map(|p| top.join(p)).collect();
        assert_eq!(found, expected);

        assert!(!shared_file(&top.join("pub/deep/ok")), "beneath a 0700 directory");
        chmod(&top, 0o755);
        assert!(shared_file(&top.join("pub/deep/ok")));
        assert!(!shared_file(&top.join("pub/deep/key")), "no o+r");
        assert!(!shared_file(&top.join("pub/deep")), "a directory");
        assert!(!shared_file(&top.join("private/inner")));
        assert!(!shared_file(&top.join("missing")));
    }
}
