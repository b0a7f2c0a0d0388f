//! What a confined command may touch, as a plain list of (path, grant) rules: the workspace root
//! and the agent's private temp directory read-write; the system's programs, libraries and
//! configuration read-and-execute, minus the credential files the agent's user could otherwise
//! hand out (`/etc/shadow` to a root agent, SSH host keys, the agent's own secrets); `/proc`
//! read-only; a few harmless devices. Everything else, the user's home first of all, is out of
//! reach. Kept pure (directory listings, symlinks and permissions come in through functions) so
//! the policy can be read and tested without a kernel; `ruleset` turns the list into Landlock
//! rules.
//!
//! Landlock cannot deny beneath a grant, so a directory holding a secret is granted entry by
//! entry, and rules attach to the inodes present at startup: a file there replaced later by a
//! rename (`/etc/resolv.conf`, `/etc/hosts`) becomes unreadable. So only a secret the agent's
//! user can really read splits its directory: for an unprivileged agent `/etc/shadow` is closed
//! by its permissions already, and `/etc` stays one rule.

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

/// System files holding credentials, never readable by a confined command (root could).
const SYSTEM_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/security/opasswd",
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
/// read), a path with its symlinks resolved (the path itself when it cannot be resolved), and
/// whether the agent's children could read a path (a directory: list or search it) if no
/// Landlock rule stood in the way.
pub struct FsView<'a> {
    pub list_dir: &'a dyn Fn(&Path) -> Vec<PathBuf>,
    pub canonical: &'a dyn Fn(&Path) -> PathBuf,
    pub readable: &'a dyn Fn(&Path) -> bool,
}

/// The rules for `inputs`. A read-only location that holds an excluded path the children could
/// read is granted entry by entry, leaving the excluded ones out; one they could not read
/// anyway splits nothing. Every path is compared with its symlinks resolved,
/// at every depth: Landlock follows a symlink to the inode it names, so a link to a directory
/// holding a secret (`current -> releases/1.2`) must be split like the directory itself.
pub fn rules(inputs: &RuleInputs, fs: &FsView<'_>) -> Vec<Rule> {
    let list_dir = fs.list_dir;
    let mut excluded: Vec<PathBuf> = SYSTEM_SECRETS.iter().map(PathBuf::from).collect();
    excluded.extend(ssh_host_keys(list_dir));
    excluded.extend(inputs.excluded.iter().cloned());
    let excluded: Vec<PathBuf> =
        excluded.iter().filter(|p| (fs.readable)(p)).map(|p| (fs.canonical)(p)).collect();

    let mut rules = Vec::new();
    let mut split = std::collections::HashSet::new();
    let read_exec = SYSTEM_READ_EXEC.iter().map(PathBuf::from).chain(inputs.extra_read.iter().cloned());
    for top in read_exec {
        for path in expand_excluding(&top, &excluded, fs, &mut split) {
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

/// `path` (symlinks resolved) as one path when nothing excluded lies beneath it; otherwise its
/// entries, each resolved and expanded the same way, without the excluded ones. `split` holds
/// the directories already expanded, so a symlink loop or a second route to one directory
/// ends there.
fn expand_excluding(
    path: &Path,
    excluded: &[PathBuf],
    fs: &FsView<'_>,
    split: &mut std::collections::HashSet<PathBuf>,
) -> Vec<PathBuf> {
    let path = (fs.canonical)(path);
    if excluded.contains(&path) {
        return Vec::new();
    }
    if !excluded.iter().any(|e| e.starts_with(&path)) {
        return vec![path];
    }
    if !split.insert(path.clone()) {
        return Vec::new();
    }
    (fs.list_dir)(&path).iter().flat_map(|entry| expand_excluding(entry, excluded, fs, split)).collect()
}

/// The SSH daemon's private host keys (`/etc/ssh/ssh_host_*_key`; the `.pub` halves stay readable).
fn ssh_host_keys(list_dir: &dyn Fn(&Path) -> Vec<PathBuf>) -> Vec<PathBuf> {
    list_dir(Path::new("/etc/ssh"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(OsStr::to_string_lossy).unwrap_or_default();
            name.starts_with("ssh_host_") && name.ends_with("_key")
        })
        .collect()
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
            Some("/etc") => &["passwd", "shadow", "gshadow", "ssh", "ssl", "sudoers", "tether"],
            Some("/etc/ssh") => &["ssh_config", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"],
            Some("/etc/tether") => &["agent.toml", "nats.token"],
            _ => &[],
        };
        names.iter().map(|n| path.join(n)).collect()
    }

    /// `/bin` and `/lib` are symlinks into `/usr`, as on a merged-/usr system.
    fn canonical(p: &Path) -> PathBuf {
        for link in ["/bin", "/lib"] {
            if let Ok(rest) = p.strip_prefix(link) {
                let target = Path::new("/usr").join(&link[1..]);
                return if rest.as_os_str().is_empty() { target } else { target.join(rest) };
            }
        }
        p.to_owned()
    }

    /// As a root agent sees it: everything readable.
    fn view() -> FsView<'static> {
        FsView { list_dir: &fake_fs, canonical: &canonical, readable: &|_| true }
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
    fn system_locations_are_read_exec_without_their_secrets() {
        let read = granted(&rules(&inputs(), &view()), Grant::ReadExec);
        for kept in [
            "/usr",
            "/usr/bin",
            "/lib64",
            "/opt",
            "/srv/data",
            "/etc/passwd",
            "/etc/ssl",
            "/etc/ssh/ssh_config",
        ] {
            assert!(read.contains(&kept.to_owned()), "{kept} missing from {read:?}");
        }
        assert!(read.contains(&"/etc/ssh/ssh_host_ed25519_key.pub".to_owned()));
        assert!(read.contains(&"/etc/tether/agent.toml".to_owned()));
        for secret in ["/etc", "/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/tether"] {
            assert!(!read.contains(&secret.to_owned()), "{secret} must not be granted: {read:?}");
        }
        assert!(!read.iter().any(|p| p.ends_with("_key") || p.ends_with("nats.token")), "{read:?}");
    }

    #[test]
    fn an_unprivileged_agent_gets_etc_whole_and_a_readable_token_splits_only_its_way_down() {
        let none = |_: &Path| false;
        let fs = FsView { list_dir: &fake_fs, canonical: &canonical, readable: &none };
        let read = granted(&rules(&inputs(), &fs), Grant::ReadExec);
        assert!(read.contains(&"/etc".to_owned()), "{read:?}");
        assert!(!read.iter().any(|p| p.starts_with("/etc/")), "/etc is one rule: {read:?}");

        let token_only = |p: &Path| p == Path::new("/etc/tether/nats.token");
        let fs = FsView { list_dir: &fake_fs, canonical: &canonical, readable: &token_only };
        let read = granted(&rules(&inputs(), &fs), Grant::ReadExec);
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
        let fs = FsView { list_dir: &list, canonical: &canonical, readable: &|_| true };
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
