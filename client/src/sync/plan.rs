//! What `sync up` must do to make the remote tree equal the local one (pure: manifests in,
//! lists of paths out).

use ignore::gitignore::Gitignore;
use serde::Serialize;

use super::manifest::{Entry, Kind, Manifest, is_below};

/// The changes, in the order they are applied: removals first (a type change is a removal
/// then a write), then directories, files, links and mode changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpPlan {
    /// Remote paths to remove (a directory with its contents).
    pub remove: Vec<String>,
    /// Directories to create, or whose mode to set.
    pub dirs: Vec<String>,
    /// Files whose content is sent.
    pub files: Vec<String>,
    pub links: Vec<String>,
    /// Files with the right content and the wrong mode.
    pub modes: Vec<String>,
    /// Remote paths that would have been removed but are preserved.
    pub preserved: Vec<String>,
    /// Local entries that are neither file, directory nor symlink (not synced).
    pub skipped: Vec<String>,
}

impl UpPlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.dirs.is_empty()
            && self.files.is_empty()
            && self.links.is_empty()
            && self.modes.is_empty()
    }
}

/// Whether `preserve` protects `path` (or a directory above it).
pub fn preserved(preserve: &Gitignore, path: &str, entry: &Entry) -> bool {
    preserve.matched_path_or_any_parents(path, entry.kind == Kind::Dir).is_ignore()
}

/// Plans `remote` := `local`. Remote-only paths are removed only with `delete`, and never
/// when `preserve` matches them.
pub fn plan_up(local: &Manifest, remote: &Manifest, delete: bool, preserve: &Gitignore) -> UpPlan {
    let mut plan = UpPlan::default();
    let mut blocked: Vec<&str> = Vec::new();
    for (path, l) in &local.entries {
        if blocked.iter().any(|b| is_below(path, b)) {
            continue;
        }
        let r = remote.entries.get(path);
        if r.is_some_and(|r| r.same(l)) {
            continue;
        }
        if l.kind == Kind::Other {
            plan.skipped.push(path.clone());
            continue;
        }
        if let Some(r) = r.filter(|r| r.kind != l.kind) {
            if preserved(preserve, path, r) {
                plan.preserved.push(path.clone());
                blocked.push(path);
                continue;
            }
            plan.remove.push(path.clone());
        }
        let list = match (l.kind, r) {
            (Kind::Dir, _) => &mut plan.dirs,
            (Kind::Symlink, _) => &mut plan.links,
            (Kind::File, Some(r)) if r.same_content(l) => &mut plan.modes,
            _ => &mut plan.files,
        };
        list.push(path.clone());
    }
    let mut removed: Vec<&str> = Vec::new();
    for (path, r) in &remote.entries {
        if local.entries.contains_key(path) || removed.iter().any(|d| is_below(path, d)) {
            continue;
        }
        if preserved(preserve, path, r) {
            if delete {
                plan.preserved.push(path.clone());
            }
            continue;
        }
        if delete {
            plan.remove.push(path.clone());
            removed.push(path);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::local::excludes;
    use super::*;

    fn e(kind: Kind, digest: &str, mode: u32) -> Entry {
        let target = (kind == Kind::Symlink).then(|| digest.to_owned());
        let digest = (kind == Kind::File).then(|| digest.to_owned());
        Entry { kind, size: 1, mode, digest, target }
    }

    fn tree(entries: &[(&str, Entry)]) -> Manifest {
        Manifest { entries: entries.iter().map(|(p, e)| ((*p).to_owned(), e.clone())).collect() }
    }

    #[test]
    fn only_differences_are_sent_and_removals_need_delete() {
        let local = tree(&[
            ("d", e(Kind::Dir, "", 0o755)),
            ("d/same", e(Kind::File, "a", 0o644)),
            ("d/changed", e(Kind::File, "b", 0o644)),
            ("exe", e(Kind::File, "c", 0o755)),
            ("link", e(Kind::Symlink, "d/same", 0o777)),
            ("now-a-file", e(Kind::File, "f", 0o644)),
        ]);
        let remote = tree(&[
            ("d", e(Kind::Dir, "", 0o755)),
            ("d/same", e(Kind::File, "a", 0o644)),
            ("d/changed", e(Kind::File, "x", 0o644)),
            ("exe", e(Kind::File, "c", 0o644)),
            ("gone", e(Kind::Dir, "", 0o755)),
            ("gone/inside", e(Kind::File, "g", 0o644)),
            ("keep.env", e(Kind::File, "k", 0o600)),
            ("now-a-file", e(Kind::Dir, "", 0o755)),
        ]);
        let preserve = excludes(&["*.env".into()]).unwrap();
        let plan = plan_up(&local, &remote, false, &preserve);
        assert_eq!(plan.files, ["d/changed", "now-a-file"]);
        assert_eq!(plan.modes, ["exe"]);
        assert_eq!(plan.links, ["link"]);
        assert_eq!(plan.remove, ["now-a-file"], "a type change is a removal even without --delete");
        let plan = plan_up(&local, &remote, true, &preserve);
        assert_eq!(plan.remove, ["now-a-file", "gone"], "the directory's content goes with it");
        assert_eq!(plan.preserved, ["keep.env"]);
        assert!(plan_up(&local, &local, true, &preserve).is_empty());
    }
}
