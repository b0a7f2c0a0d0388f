//! What a confined command may touch, as a plain list of (path, grant) rules: the workspace root
//! and the agent's private temp directory read-write; the system's programs, libraries and
//! configuration read-and-execute, but only what any user of the machine could read there;
//! `/proc` read-only; a few harmless devices. Everything else, the user's home first of all, is
//! out of reach. Kept pure (directory listings, symlinks and permissions come in through
//! functions) so the policy can be read and tested without a kernel; `ruleset` turns the list
//! into Landlock rules.
//!
//! A read location shares only what others (not the owner, not the group) may read: a root
//! agent's commands run as uid 0 and own `/etc/shadow`, `/etc/ssl/private` and the SSH host
//! keys; a non-root agent's own `0600` files under a `confine.read` path are its user's, not
//! its commands'. So every read location is walked once at startup for entries others cannot
//! read (files without o+r, directories without o+r or o+x) that the agent's children could,
//! and those are left out, as are the agent's own credential files and state directory
//! whatever their mode. Landlock cannot deny beneath a grant, so a directory holding such an
//! entry is granted entry by entry, and rules attach to the inodes present at startup: a file
//! there replaced later by a rename (`/etc/resolv.conf`, `/etc/hosts`) becomes unreadable. An
//! entry the children could not read anyway splits nothing: for an unprivileged agent
//! `/etc/shadow` is closed by its permissions already, and `/etc` stays one rule.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// What a rule allows beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// Read files, list directories, execute programs.
    ReadExec,
    /// Read files and list directories only (`/proc`).
    ReadOnly,
    /// Read and write an existing device file, including its ioctls (terminals).
    Device,
    /// Everything except creating device nodes: read, write, create, remove, rename, execute.
    ReadWrite,
}

/// One rule: `grant` beneath `path` (the path itself when it is a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub grant: Grant,
}

/// Where the system keeps programs, libraries and configuration. Missing ones are skipped.
pub const SYSTEM_READ_EXEC: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/etc"];

/// Devices a shell and ordinary programs open by name.
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    // Not /dev/pts, every terminal of the machine: a terminal's shell gets its own (Sandbox::install).
];

/// The inputs of the rule list, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct RuleInputs {
    pub workspace_root: PathBuf,
    /// The agent's private temp directory (the children's TMPDIR).
    pub tmpdir: PathBuf,
    /// Operator additions (`confine.read`, `confine.write`).
    pub extra_read: Vec<PathBuf>,
    pub extra_write: Vec<PathBuf>,
    /// Files no read rule may cover: the agent's credentials, its state directory.
    pub excluded: Vec<PathBuf>,
}

/// How the rule list sees the file system: a directory's entries (empty when it cannot be
/// read); a path with its symlinks resolved (the path itself when it cannot be resolved);
/// whether the agent's children could read a path (a directory: list or search it) if no
/// Landlock rule stood in the way; the entries beneath a directory other users could not read
/// (symlinks not followed, not descending into what it returns); and whether a path is a file
/// (not a directory) any user could read, beneath directories any user could search.
pub struct FsView<'a> {
    pub list_dir: &'a dyn Fn(&Path) -> Vec<PathBuf>,
    pub canonical: &'a dyn Fn(&Path) -> PathBuf,
    pub readable: &'a dyn Fn(&Path) -> bool,
    pub unshared_beneath: &'a dyn Fn(&Path) -> Vec<PathBuf>,
    pub shared_file: &'a dyn Fn(&Path) -> bool,
}

/// What no read rule may reach, symlinks resolved: the agent's own secrets, and what the
/// children could read in a read location although other users could not.
struct Hidden {
    secrets: Vec<PathBuf>,
    unshared: Vec<PathBuf>,
    /// The read locations, resolved: what the walk saw.
    walked: Vec<PathBuf>,
}

impl Hidden {
    /// Whether `path` is hidden when reached from the read location `named`: an unshared entry
    /// at or above `named` itself does not count (the operator named that location).
    fn covers(&self, path: &Path, named: &Path) -> bool {
        self.secrets.iter().any(|s| path.starts_with(s))
            || self.unshared.iter().any(|u| path.starts_with(u) && !named.starts_with(u))
    }

    /// Whether something hidden lies strictly beneath `path`.
    fn beneath(&self, path: &Path) -> bool {
        self.secrets.iter().chain(&self.unshared).any(|h| h != path && h.starts_with(path))
    }
}

/// The rules for `inputs`. A read location holding something hidden (see the module doc) is
/// granted entry by entry, leaving the hidden ones out. Every path is compared with its
/// symlinks resolved, at every depth: Landlock follows a symlink to the inode it names, so a
/// link to a directory holding a secret (`current -> releases/1.2`) must be split like the
/// directory itself, and a link out of the read locations is granted only to a file any user
/// could read (`/etc/resolv.conf` into `/run`), never to a directory the walk did not see.
pub fn rules(inputs: &RuleInputs, fs: &FsView<'_>) -> Vec<Rule> {
    let read_exec: Vec<PathBuf> = SYSTEM_READ_EXEC
        .iter()
        .map(PathBuf::from)
        .chain(inputs.extra_read.iter().cloned())
        .map(|p| (fs.canonical)(&p))
        .collect();
    let visible = |p: &PathBuf| (fs.readable)(p);
    let mut walked: Vec<PathBuf> = Vec::new();
    let mut unshared = Vec::new();
    for top in &read_exec {
        // Already seen, unless the earlier walk stopped above it (a location named inside a
        // directory others cannot read).
        let seen = walked.iter().any(|w| top.starts_with(w))
            && !unshared.iter().any(|u: &PathBuf| top.starts_with(u));
        if !seen {
            unshared.extend((fs.unshared_beneath)(top).into_iter().filter(visible));
            walked.push(top.clone());
        }
    }
    let secrets = inputs.excluded.iter().filter(|p| visible(p)).map(|p| (fs.canonical)(p)).collect();
    let hidden = Hidden { secrets, unshared, walked };

    let mut rules = Vec::new();
    let mut split = std::collections::HashSet::new();
    for top in &read_exec {
        for path in expand(top, top, &hidden, fs, &mut split) {
            rules.push(Rule { path, grant: Grant::ReadExec });
        }
    }
    rules.push(Rule { path: "/proc".into(), grant: Grant::ReadOnly });
    rules.extend(DEVICES.iter().map(|d| Rule { path: d.into(), grant: Grant::Device }));
    let read_write = [&inputs.workspace_root, &inputs.tmpdir].into_iter().chain(&inputs.extra_write);
    rules.extend(read_write.map(|p| Rule { path: p.clone(), grant: Grant::ReadWrite }));
    let mut seen = std::collections::HashSet::new();
    rules.retain(|r| seen.insert((r.path.clone(), r.grant)));
    rules
}

/// `path` (symlinks resolved), reached from the read location `named`, as one path when
/// nothing hidden lies beneath it; otherwise its entries, each resolved and expanded the same
/// way, without the hidden ones. `split` holds the directories already expanded, so a symlink
/// loop or a second route to one directory ends there.
fn expand(
    path: &Path,
    named: &Path,
    hidden: &Hidden,
    fs: &FsView<'_>,
    split: &mut std::collections::HashSet<PathBuf>,
) -> Vec<PathBuf> {
    let path = (fs.canonical)(path);
    if hidden.covers(&path, named) {
        return Vec::new();
    }
    if !hidden.walked.iter().any(|w| path.starts_with(w)) {
        return if (fs.shared_file)(&path) { vec![path] } else { Vec::new() };
    }
    if !hidden.beneath(&path) {
        return vec![path];
    }
    if !split.insert(path.clone()) {
        return Vec::new();
    }
    (fs.list_dir)(&path).iter().flat_map(|entry| expand(entry, named, hidden, fs, split)).collect()
}

/// Where a confined command may execute from: beneath a read-exec or read-write rule.
pub struct Executable<'a> {
    roots: Vec<PathBuf>,
    canonical: &'a dyn Fn(&Path) -> PathBuf,
}

impl<'a> Executable<'a> {
    /// `canonical` resolves symlinks (`/bin` -> `/usr/bin`); the rules are resolved once, here.
    pub fn new(rules: &[Rule], canonical: &'a dyn Fn(&Path) -> PathBuf) -> Self {
        let roots = rules
            .iter()
            .filter(|r| matches!(r.grant, Grant::ReadExec | Grant::ReadWrite))
            .map(|r| canonical(&r.path))
            .collect();
        Executable { roots, canonical }
    }

    /// Whether a confined command could execute `path`.
    pub fn allows(&self, path: &Path) -> bool {
        let path = (self.canonical)(path);
        self.roots.iter().any(|root| path.starts_with(root))
    }

    /// `PATH` for confined children: the entries a confined command could not execute from
    /// (e.g. `~/.cargo/bin`) are dropped, so a shell finds the system's `python3` instead of
    /// failing on a shim in the home directory. Relative entries (the working directory) stay.
    pub fn path_var(&self, path: &OsStr) -> OsString {
        let kept = std::env::split_paths(path).filter(|entry| entry.is_relative() || self.allows(entry));
        std::env::join_paths(kept).unwrap_or_default()
    }
}

/// The login shell for confined children: the user's own when they could execute it; else the
/// same shell from the system's locations (a `zsh` installed under the home directory becomes
/// `/usr/bin/zsh`); else `/bin/sh`. Without this a terminal's shell would fail to start.
pub fn confined_shell(
    shell: &Path,
    may_exec: &dyn Fn(&Path) -> bool,
    is_executable: &dyn Fn(&Path) -> bool,
) -> PathBuf {
    if may_exec(shell) {
        return shell.to_owned();
    }
    let mut system = shell
        .file_name()
        .into_iter()
        .flat_map(|name| ["/usr/bin", "/bin"].into_iter().map(move |dir| Path::new(dir).join(name)));
    system
        .find(|candidate| may_exec(candidate) && is_executable(candidate))
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_fs(path: &Path) -> Vec<PathBuf> {
        let names: &[&str] = match path.to_str() {
            Some("/etc") => &[
                "passwd",
                "shadow",
                "gshadow",
                "ssh",
                "ssl",
                "sudoers",
                "tether",
                "resolv.conf",
                "alt",
                "key-link",
                "certs-key",
            ],
            Some("/etc/ssh") => &["ssh_config", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"],
            Some("/etc/ssl") => &["certs", "private"],
            Some("/etc/ssl/private") => &["key", "README"],
            Some("/etc/tether") => &["agent.toml", "nats.token"],
            Some("/srv/data") => &["readme", "keys"],
            _ => &[],
        };
        names.iter().map(|n| path.join(n)).collect()
    }

    /// What others cannot read in the fake tree.
    const UNSHARED: &[&str] = &[
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssl/private",
        "/etc/ssl/private/key",
        "/srv/data/keys",
    ];

    /// As the walk finds them: strictly beneath `top`, not inside another one found.
    fn unshared_beneath(top: &Path) -> Vec<PathBuf> {
        let beneath = |p: &Path| p != top && p.starts_with(top);
        let found = UNSHARED.iter().map(Path::new).filter(|p| beneath(p));
        let outermost = |p: &&Path| {
            !UNSHARED.iter().any(|q| beneath(Path::new(q)) && *p != Path::new(q) && p.starts_with(q))
        };
        found.filter(outermost).map(Path::to_owned).collect()
    }

    /// `/bin` and `/lib` are symlinks into `/usr`, as on a merged-/usr system; `/etc` holds
    /// links to a shared file in `/run`, a directory in `/var`, a private file in `/root` and
    /// a file in `/etc/ssl/private`.
    fn canonical(p: &Path) -> PathBuf {
        for link in ["/bin", "/lib"] {
            if let Ok(rest) = p.strip_prefix(link) {
                let target = Path::new("/usr").join(&link[1..]);
                return if rest.as_os_str().is_empty() { target } else { target.join(rest) };
            }
        }
        let target = match p.to_str() {
            Some("/etc/resolv.conf") => "/run/resolv.conf",
            Some("/etc/alt") => "/var/lib/thing",
            Some("/etc/key-link") => "/root/key",
            Some("/etc/certs-key") => "/etc/ssl/private/key",
            _ => return p.to_owned(),
        };
        PathBuf::from(target)
    }

    fn view_with(readable: &dyn Fn(&Path) -> bool) -> FsView<'_> {
        FsView {
            list_dir: &fake_fs,
            canonical: &canonical,
            readable,
            unshared_beneath: &unshared_beneath,
            shared_file: &|p| p == Path::new("/run/resolv.conf"),
        }
    }

    /// As a root agent sees it: everything readable.
    fn view() -> FsView<'static> {
        view_with(&|_| true)
    }

    fn inputs() -> RuleInputs {
        RuleInputs {
            workspace_root: "/home/me/sandbox".into(),
            tmpdir: "/home/me/.local/share/tether-agent/ws.a/tmp".into(),
            extra_read: vec!["/srv/data".into()],
            extra_write: vec!["/var/cache/build".into()],
            excluded: vec!["/etc/tether/nats.token".into()],
        }
    }

    fn granted(rules: &[Rule], grant: Grant) -> Vec<String> {
        rules.iter().filter(|r| r.grant == grant).map(|r| r.path.display().to_string()).collect()
    }

    #[test]
    fn the_root_and_tmpdir_are_writable_and_nothing_else_is() {
        let rules = rules(&inputs(), &view());
        assert_eq!(
            granted(&rules, Grant::ReadWrite),
            ["/home/me/sandbox", "/home/me/.local/share/tether-agent/ws.a/tmp", "/var/cache/build"]
        );
        assert_eq!(granted(&rules, Grant::ReadOnly), ["/proc"]);
        assert_eq!(granted(&rules, Grant::Device).len(), DEVICES.len());
        assert!(!rules.iter().any(|r| r.path == Path::new("/home/me") || r.path == Path::new("/tmp")));
    }

    #[test]
    fn read_locations_share_only_what_others_could_read_and_never_the_agents_secrets() {
        let read = granted(&rules(&inputs(), &view()), Grant::ReadExec);
        for kept in [
            "/usr",
            "/usr/bin",
            "/lib64",
            "/opt",
            "/srv/data/readme",
            "/etc/passwd",
            "/etc/ssl/certs",
            "/etc/ssh/ssh_config",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/etc/tether/agent.toml",
        ] {
            assert!(read.contains(&kept.to_owned()), "{kept} missing from {read:?}");
        }
        for hidden in [
            "/etc",
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/sudoers",
            "/etc/ssh",
            "/etc/ssl",
            "/etc/ssl/private",
            "/etc/tether",
            "/srv/data",
            "/srv/data/keys",
        ] {
            assert!(!read.contains(&hidden.to_owned()), "{hidden} must not be granted: {read:?}");
        }
        assert!(!read.iter().any(|p| p.ends_with("_key") || p.ends_with("nats.token")), "{read:?}");
    }

    #[test]
    fn a_link_out_of_the_read_locations_reaches_only_a_file_anyone_could_read() {
        let read = granted(&rules(&inputs(), &view()), Grant::ReadExec);
        assert!(read.contains(&"/run/resolv.conf".to_owned()), "{read:?}");
        for hidden in ["/var/lib/thing", "/root/key", "/etc/ssl/private/key"] {
            assert!(!read.contains(&hidden.to_owned()), "{hidden} must not be granted: {read:?}");
        }
    }

    #[test]
    fn a_location_named_inside_a_private_directory_is_granted_with_only_its_shared_entries() {
        let inputs = RuleInputs { extra_read: vec!["/etc/ssl/private".into()], ..inputs() };
        let read = granted(&rules(&inputs, &view()), Grant::ReadExec);
        assert!(read.contains(&"/etc/ssl/private/README".to_owned()), "{read:?}");
        for hidden in ["/etc/ssl/private", "/etc/ssl/private/key"] {
            assert!(!read.contains(&hidden.to_owned()), "{hidden} must not be granted: {read:?}");
        }
    }

    #[test]
    fn an_unprivileged_agent_gets_etc_whole_and_a_readable_token_splits_only_its_way_down() {
        let read = granted(&rules(&inputs(), &view_with(&|_| false)), Grant::ReadExec);
        assert!(read.contains(&"/etc".to_owned()) && read.contains(&"/srv/data".to_owned()), "{read:?}");
        assert!(!read.iter().any(|p| p.starts_with("/etc/")), "/etc is one rule: {read:?}");

        let token_only = |p: &Path| p == Path::new("/etc/tether/nats.token");
        let read = granted(&rules(&inputs(), &view_with(&token_only)), Grant::ReadExec);
        for kept in ["/etc/passwd", "/etc/shadow", "/etc/ssh", "/etc/sudoers", "/etc/tether/agent.toml"] {
            assert!(read.contains(&kept.to_owned()), "{kept} missing from {read:?}");
        }
        for split in ["/etc", "/etc/tether", "/etc/tether/nats.token"] {
            assert!(!read.contains(&split.to_owned()), "{split} must not be granted: {read:?}");
        }
    }

    #[test]
    fn a_secret_reached_through_a_symlinked_location_is_still_excluded() {
        let list = |p: &Path| -> Vec<PathBuf> {
            match p.to_str() {
                Some("/usr") => vec!["/usr/lib".into(), "/usr/bin".into()],
                Some("/usr/lib") => vec!["/usr/lib/tether".into(), "/usr/lib/python3".into()],
                _ => fake_fs(p),
            }
        };
        let fs = FsView { list_dir: &list, ..view() };
        let inputs = RuleInputs { excluded: vec!["/lib/tether".into()], ..inputs() };
        let read = granted(&rules(&inputs, &fs), Grant::ReadExec);
        assert!(
            read.contains(&"/usr/lib/python3".to_owned()) && read.contains(&"/usr/bin".to_owned()),
            "{read:?}"
        );
        let covering = ["/usr", "/usr/lib", "/lib"];
        assert!(
            !read.iter().any(|p| covering.contains(&p.as_str()) || p.starts_with("/usr/lib/tether")),
            "{read:?}"
        );
        assert_eq!(read.iter().filter(|p| *p == "/usr/bin").count(), 1, "no duplicates: {read:?}");
    }

    /// A real tree where the token sits behind a symlinked release directory, the way a
    /// versioned install lays it out: `opt/tether/current -> releases/1.2` holds `token`, and a
    /// `self -> .` loop hangs beside it.
    #[test]
    fn a_secret_behind_a_symlinked_subdirectory_is_not_granted_through_the_link() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().canonicalize().expect("canonical tempdir");
        let opt = top.join("opt");
        let release = opt.join("tether/releases/1.2");
        std::fs::create_dir_all(release.join("bin")).expect("mkdir");
        std::fs::create_dir_all(opt.join("other")).expect("mkdir");
        std::fs::write(release.join("token"), "secret").expect("token");
        symlink("releases/1.2", opt.join("tether/current")).expect("symlink");
        symlink(".", opt.join("tether/self")).expect("symlink");
        let fs = FsView {
            list_dir: &crate::sandbox::list_dir,
            canonical: &crate::sandbox::canonical,
            readable: &|_| true,
            unshared_beneath: &crate::sandbox::shared::unshared_beneath,
            shared_file: &crate::sandbox::shared::shared_file,
        };
        let inputs = RuleInputs {
            extra_read: vec![opt.clone()],
            excluded: vec![opt.join("tether/current/token")],
            ..inputs()
        };
        let read: Vec<PathBuf> =
            rules(&inputs, &fs).into_iter().filter(|r| r.grant == Grant::ReadExec).map(|r| r.path).collect();
        let token = release.join("token");
        let covering: Vec<&PathBuf> =
            read.iter().filter(|p| token.starts_with(crate::sandbox::canonical(p))).collect();
        assert!(covering.is_empty(), "rules reaching the token: {covering:?}");
        for kept in [release.join("bin"), opt.join("other")] {
            let reached = read.iter().any(|p| kept.starts_with(crate::sandbox::canonical(p)));
            assert!(reached, "{} missing from {read:?}", kept.display());
        }
    }

    #[test]
    fn a_shell_under_the_home_directory_is_swapped_for_the_system_one() {
        let rules = rules(&inputs(), &view());
        let executable = Executable::new(&rules, &canonical);
        let may = |p: &Path| executable.allows(p);
        let everywhere = |_: &Path| true;
        let nowhere = |_: &Path| false;
        assert_eq!(confined_shell(Path::new("/usr/bin/zsh"), &may, &everywhere), Path::new("/usr/bin/zsh"));
        let home_zsh = Path::new("/home/u/.nix-profile/bin/zsh");
        assert_eq!(confined_shell(home_zsh, &may, &everywhere), Path::new("/usr/bin/zsh"));
        assert_eq!(confined_shell(home_zsh, &may, &nowhere), Path::new("/bin/sh"));
    }

    #[test]
    fn path_keeps_only_directories_a_confined_command_can_execute_from() {
        let rules = rules(&inputs(), &view());
        let path =
            OsStr::new("/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/home/me/sandbox/bin:.:/snap/bin");
        let kept = Executable::new(&rules, &canonical).path_var(path);
        assert_eq!(kept, OsStr::new("/usr/local/bin:/usr/bin:/bin:/home/me/sandbox/bin:."));
    }
}
