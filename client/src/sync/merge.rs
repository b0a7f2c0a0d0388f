//! The three-way merge behind `sync down` (pure: manifests in, decisions out).
//!
//! For every path, the baseline (the tree as it was pushed), the local tree and the remote
//! tree are compared by [`Entry::same`]: a side that still equals the baseline did not change
//! it. Changed only remotely: take the remote version (or delete locally). Changed only
//! locally: keep it. Changed on both sides to the same thing: nothing to do. Changed on both
//! sides differently: a conflict, which keeps the local version and saves the remote one beside
//! it, unless a preference settles it. Without a baseline the merge is a mirror: every
//! difference takes the remote version, and local-only paths are extras (removed only when the
//! caller asks).

use std::collections::BTreeSet;

use serde::Serialize;

use super::manifest::{Entry, Manifest};

/// How conflicts are settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Prefer {
    /// Keep local, save the remote version beside it, report the conflict.
    #[default]
    Neither,
    /// The local version wins; nothing is saved.
    Local,
    /// The remote version wins (including its deletions).
    Remote,
}

/// Why a path is in conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Changed on both sides, differently.
    BothChanged,
    /// Absent from the baseline, added on both sides, differently.
    BothAdded,
    /// Changed locally, deleted remotely.
    DeletedRemotely,
    /// Deleted locally, changed remotely.
    DeletedLocally,
}

/// One conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub path: String,
    pub kind: ConflictKind,
    /// Settled by a preference (nothing is saved beside, it is only reported).
    pub resolved: bool,
}

/// What to do to the local tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergePlan {
    /// Paths whose remote entry replaces (or creates) the local one.
    pub take: Vec<String>,
    /// Local paths to remove (a directory only once empty).
    pub delete: Vec<String>,
    /// Local-only paths of a mirror (no baseline): removed only with `--delete`.
    pub extras: Vec<String>,
    pub conflicts: Vec<Conflict>,
}

fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

/// Decides every path of `local` and `remote` against `base` (None: mirror).
pub fn merge(base: Option<&Manifest>, local: &Manifest, remote: &Manifest, prefer: Prefer) -> MergePlan {
    let mut plan = MergePlan::default();
    let paths: BTreeSet<&String> = local.entries.keys().chain(remote.entries.keys()).collect();
    for path in paths {
        let (l, r) = (local.entries.get(path), remote.entries.get(path));
        if same(l, r) {
            continue;
        }
        let Some(base) = base else {
            match r {
                Some(_) => plan.take.push(path.clone()),
                None => plan.extras.push(path.clone()),
            }
            continue;
        };
        let b = base.entries.get(path);
        let take_remote = |plan: &mut MergePlan| match r {
            Some(_) => plan.take.push(path.clone()),
            None => plan.delete.push(path.clone()),
        };
        if same(l, b) {
            take_remote(&mut plan);
        } else if same(r, b) {
            // Changed only locally: kept.
        } else {
            let kind = match (b, l, r) {
                (None, _, _) => ConflictKind::BothAdded,
                (Some(_), Some(_), None) => ConflictKind::DeletedRemotely,
                (Some(_), None, Some(_)) => ConflictKind::DeletedLocally,
                _ => ConflictKind::BothChanged,
            };
            let resolved = prefer != Prefer::Neither;
            if prefer == Prefer::Remote {
                take_remote(&mut plan);
            }
            plan.conflicts.push(Conflict { path: path.clone(), kind, resolved });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::manifest::Kind;
    use super::*;

    fn file(digest: &str) -> Entry {
        Entry { kind: Kind::File, size: 1, mode: 0o644, digest: Some(digest.into()), target: None }
    }

    fn tree(entries: &[(&str, Option<Entry>)]) -> Manifest {
        let mut m = Manifest::default();
        for (path, e) in entries {
            if let Some(e) = e {
                m.entries.insert((*path).to_owned(), e.clone());
            }
        }
        m
    }

    /// The plan for one path given its baseline, local and remote entries.
    fn one(b: Option<Entry>, l: Option<Entry>, r: Option<Entry>, prefer: Prefer) -> MergePlan {
        let (base, local, remote) = (tree(&[("p", b)]), tree(&[("p", l)]), tree(&[("p", r)]));
        merge(Some(&base), &local, &remote, prefer)
    }

    fn took(plan: &MergePlan) -> bool {
        plan.take == ["p"]
    }
    fn deleted(plan: &MergePlan) -> bool {
        plan.delete == ["p"]
    }
    fn untouched(plan: &MergePlan) -> bool {
        plan.take.is_empty() && plan.delete.is_empty()
    }
    fn conflict(plan: &MergePlan) -> Option<ConflictKind> {
        plan.conflicts.first().map(|c| c.kind)
    }

    #[test]
    fn every_combination_of_three_versions_is_decided_as_specified() {
        let (a, b, c) = (Some(file("a")), Some(file("b")), Some(file("c")));
        type Case = (Option<Entry>, Option<Entry>, Option<Entry>, &'static str);
        let cases: Vec<Case> = vec![
            (a.clone(), a.clone(), a.clone(), "unchanged"),
            (a.clone(), a.clone(), b.clone(), "remote changed"),
            (a.clone(), b.clone(), a.clone(), "local changed"),
            (a.clone(), b.clone(), b.clone(), "same change"),
            (a.clone(), b.clone(), c.clone(), "both changed"),
            (a.clone(), a.clone(), None, "remote deleted"),
            (a.clone(), None, a.clone(), "local deleted"),
            (a.clone(), None, None, "both deleted"),
            (a.clone(), b.clone(), None, "changed here, deleted there"),
            (a.clone(), None, b.clone(), "deleted here, changed there"),
            (None, None, a.clone(), "remote added"),
            (None, a.clone(), None, "local added"),
            (None, a.clone(), a.clone(), "both added the same"),
            (None, a.clone(), b.clone(), "both added differently"),
        ];
        for (b0, l, r, name) in cases {
            let plan = one(b0.clone(), l.clone(), r.clone(), Prefer::Neither);
            let expect_ok = match name {
                "unchanged"
                | "local changed"
                | "same change"
                | "local deleted"
                | "both deleted"
                | "local added"
                | "both added the same" => untouched(&plan) && plan.conflicts.is_empty(),
                "remote changed" | "remote added" => took(&plan) && plan.conflicts.is_empty(),
                "remote deleted" => deleted(&plan) && plan.conflicts.is_empty(),
                "both changed" => untouched(&plan) && conflict(&plan) == Some(ConflictKind::BothChanged),
                "changed here, deleted there" => {
                    untouched(&plan) && conflict(&plan) == Some(ConflictKind::DeletedRemotely)
                }
                "deleted here, changed there" => {
                    untouched(&plan) && conflict(&plan) == Some(ConflictKind::DeletedLocally)
                }
                "both added differently" => {
                    untouched(&plan) && conflict(&plan) == Some(ConflictKind::BothAdded)
                }
                _ => unreachable!(),
            };
            assert!(expect_ok, "{name}: {plan:?}");
            if !plan.conflicts.is_empty() {
                let remote_wins = one(b0.clone(), l.clone(), r.clone(), Prefer::Remote);
                assert!(remote_wins.conflicts[0].resolved, "{name}");
                assert!(
                    if r.is_some() { took(&remote_wins) } else { deleted(&remote_wins) },
                    "{name}: {remote_wins:?}"
                );
                let local_wins = one(b0, l, r, Prefer::Local);
                assert!(local_wins.conflicts[0].resolved && untouched(&local_wins), "{name}: {local_wins:?}");
            }
        }
    }

    #[test]
    fn a_mode_change_is_a_change_and_a_mirror_takes_every_difference() {
        let exe = Entry { mode: 0o755, ..file("a") };
        assert!(took(&one(Some(file("a")), Some(file("a")), Some(exe.clone()), Prefer::Neither)));
        let local = tree(&[("x", Some(file("a"))), ("only-here", Some(file("z")))]);
        let remote = tree(&[("x", Some(file("b"))), ("only-there", Some(file("y")))]);
        let plan = merge(None, &local, &remote, Prefer::Neither);
        assert_eq!(plan.take, ["only-there", "x"]);
        assert_eq!(plan.extras, ["only-here"]);
        assert!(plan.delete.is_empty() && plan.conflicts.is_empty());
    }
}
