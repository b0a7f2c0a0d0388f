//! The one door every child process of the agent goes through. A [`Launcher`] owns what all
//! children share: the sanitised base environment (the agent's own credentials never leak into
//! a command), a session of its own per child (a fresh process group, so a timeout or a fence
//! can kill the whole tree, and no controlling terminal: a command cannot open the terminal the
//! agent was started from as `/dev/tty`, to read from it or push input into it), the user's
//! shell, and the pre-exec hooks run between fork and exec: first the per-spawn ones a caller
//! passes for one command (joining that command's cgroup, its rlimits), last the confinement
//! (confined mode's Landlock ruleset, seccomp filter and capability drop), so exec and the PTY
//! shell both get it. A terminal's shell gets its own confinement, which also lets it open its
//! terminal.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Work done in the child after fork and before exec (e.g. apply a Landlock ruleset or set a
/// resource limit). It runs in a forked copy of a multi-threaded process, so it must be
/// async-signal-safe: plain syscalls only, no allocation, no locks, no logging. Prepare
/// everything it needs (rulesets, file descriptors, values) before spawning. An `Err` aborts
/// the spawn and is returned by `spawn()`.
pub type PreExecHook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// Prepares, before the spawn (it may block and allocate), the confinement of a terminal's shell
/// whose terminal device is the path given; the hook replaces the common confinement.
pub type TerminalConfinement = Arc<dyn Fn(&Path) -> io::Result<PreExecHook> + Send + Sync>;

/// Fallback shell when neither `$SHELL` nor the passwd entry names a usable one.
const FALLBACK_SHELL: &str = "/bin/sh";

/// Substrings (upper case) that make a `NATS_*` variable look like a credential.
const CREDENTIAL_WORDS: &[&str] = &["TOKEN", "PASS", "CRED", "NKEY", "KEY", "SECRET", "SEED", "JWT", "AUTH"];

/// Spawns the agent's children: see the module doc.
#[derive(Clone)]
pub struct Launcher {
    env: BTreeMap<OsString, OsString>,
    shell: PathBuf,
    confinement: Option<(PreExecHook, TerminalConfinement)>,
    /// When confined: the workspace root every child's working directory must lie beneath.
    cwd_root: Option<Arc<[u8]>>,
}

impl Launcher {
    /// Snapshot of the agent's environment minus its secrets (see [`Launcher::from_env`]).
    pub fn from_current_env<S: AsRef<str>>(secret_names: &[S]) -> Self {
        Self::from_env(std::env::vars_os(), secret_names)
    }

    /// Base environment from `vars` minus secrets: every variable named in `secret_names`, every
    /// `TETHER_*` variable, and every `NATS_*` variable that looks like a credential (its name
    /// mentions a token, password, creds, key, seed, secret or JWT, or its value is a URL with
    /// a user part). The shell is looked up once, here.
    pub fn from_env<S: AsRef<str>>(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
        secret_names: &[S],
    ) -> Self {
        let env: BTreeMap<OsString, OsString> =
            vars.into_iter().filter(|(name, value)| !is_secret(name, value, secret_names)).collect();
        let shell = login_shell(env.get(OsStr::new("SHELL")).map(OsString::as_os_str));
        Self { env, shell, confinement: None, cwd_root: None }
    }

    /// Confines every child: `every` runs last in each child, except a terminal's shell, which
    /// runs what `terminal` prepares for its terminal instead.
    pub fn set_confinement(&mut self, every: PreExecHook, terminal: TerminalConfinement) {
        self.confinement = Some((every, terminal));
    }

    /// Sets a variable of the base environment (e.g. the sandbox's `TMPDIR` and `PATH`).
    /// Every child's working directory must lie beneath `root` (a canonical path) once the
    /// kernel has entered it. The cwd was resolved beneath the root, but the child's chdir
    /// follows the path again: a directory swapped for a symlink out in between would put the
    /// command outside. So the child checks where it landed (getcwd(2), after the chdir and
    /// before anything runs) and fails the spawn with EXDEV if that is not beneath the root.
    pub fn confine_cwd_to(&mut self, root: &Path) {
        self.cwd_root = Some(Arc::from(root.as_os_str().as_bytes()));
    }

    pub fn set_base_env(&mut self, name: &str, value: OsString) {
        self.env.insert(OsString::from(name), value);
    }

    /// Removes a variable from the base environment (a request may still set it).
    pub fn remove_base_env(&mut self, name: &str) {
        self.env.remove(OsStr::new(name));
    }

    /// The sanitised base environment every child starts from.
    pub fn base_env(&self) -> &BTreeMap<OsString, OsString> {
        &self.env
    }

    /// The user's login shell: `$SHELL` if absolute and executable, else the passwd entry's
    /// shell (unless it is nologin/false), else `/bin/sh`.
    pub fn shell(&self) -> PathBuf {
        self.shell.clone()
    }

    /// Replaces the login shell (and `SHELL` in the base environment), e.g. with one a confined
    /// command can execute.
    pub fn set_shell(&mut self, shell: PathBuf) {
        self.env.insert(OsString::from("SHELL"), shell.clone().into_os_string());
        self.shell = shell;
    }

    /// A command for `program args` in `cwd`, with the base environment plus `extra_env`, its
    /// own session, the `per_spawn` hooks then the confinement,
    /// stdin/stdout/stderr piped, and no kill on drop (the caller owns the group's lifetime
    /// through [`kill_group`]).
    pub fn command(
        &self,
        program: &OsStr,
        args: &[OsString],
        cwd: &Path,
        extra_env: &HashMap<String, String>,
        per_spawn: &[PreExecHook],
    ) -> tokio::process::Command {
        let hooks = self.hooks(per_spawn, self.common_confinement());
        let mut std_cmd = self.build(program, args, cwd, extra_env, hooks);
        std_cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.kill_on_drop(false);
        cmd
    }

    /// The command of a terminal's shell, whose terminal device is `tty`: a new session, the
    /// `per_spawn` hooks (the cgroup of its `sandbox::CommandLimits`), and the confinement
    /// prepared for this terminal (blocking: it builds a ruleset). Stdio is left to
    /// the caller.
    pub fn terminal_command(
        &self,
        program: &OsStr,
        args: &[OsString],
        cwd: &Path,
        extra_env: &HashMap<String, String>,
        tty: &Path,
        per_spawn: &[PreExecHook],
    ) -> io::Result<std::process::Command> {
        let confine = match &self.confinement {
            Some((_, terminal)) => Some(terminal(tty)?),
            None => None,
        };
        Ok(self.build(program, args, cwd, extra_env, self.hooks(per_spawn, confine)))
    }

    /// The confinement every child but a terminal's shell gets.
    fn common_confinement(&self) -> Option<PreExecHook> {
        self.confinement.as_ref().map(|(every, _)| every.clone())
    }

    /// The hooks of one child, in the order they run.
    fn hooks(&self, per_spawn: &[PreExecHook], confine: Option<PreExecHook>) -> Vec<PreExecHook> {
        per_spawn.iter().cloned().chain(confine).collect()
    }

    fn build(
        &self,
        program: &OsStr,
        args: &[OsString],
        cwd: &Path,
        extra_env: &HashMap<String, String>,
        hooks: Vec<PreExecHook>,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).env_clear().envs(&self.env).envs(extra_env);
        // The child enters its cwd itself (first thing in the hook below) rather than through
        // `current_dir`, so a cwd gone by then is told apart from a missing program.
        let cwd_c = match CString::new(cwd.as_os_str().as_bytes()) {
            Ok(c) => Some(c),
            Err(_) => {
                cmd.current_dir(cwd);
                None
            }
        };
        let cwd_root = self.cwd_root.clone();
        // SAFETY: the closure runs in the child between fork and exec. It only calls chdir(2)
        // and getcwd(2) (a stack buffer), setsid(2), signal(2) and the hooks, whose contract
        // (`PreExecHook`) is to be async-signal-safe; iterating the Vec built above neither
        // allocates nor locks.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(cwd) = &cwd_c {
                    enter_cwd(cwd)?;
                }
                if let Some(root) = &cwd_root {
                    cwd_beneath(root)?;
                }
                nix::unistd::setsid()?;
                default_signal_dispositions();
                hooks.iter().try_for_each(|hook| hook())
            });
        }
        cmd
    }
}

/// Gives every signal its default action in a forked child. A signal the agent ignores would
/// stay ignored across exec (handlers are reset by exec, SIG_IGN is not): an agent started
/// under `nohup` (SIGHUP ignored) made every command deaf to `exec_signal` HUP and to a
/// terminal's close. Async-signal-safe: signal(2) only.
fn default_signal_dispositions() {
    for signal in 1..libc::SIGRTMIN() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: SIG_DFL is a valid disposition for every catchable signal.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

/// What a child reports when its working directory is gone by the time it enters it (ENOENT
/// would read as a missing program): ESTALE, which chdir(2) to a path never returns locally.
pub const CWD_GONE: i32 = libc::ESTALE;

/// chdir(2) in a forked child; a missing directory is [`CWD_GONE`].
fn enter_cwd(cwd: &CStr) -> io::Result<()> {
    // SAFETY: `cwd` is a valid C string.
    if unsafe { libc::chdir(cwd.as_ptr()) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Err(io::Error::from_raw_os_error(CWD_GONE)),
        _ => Err(e),
    }
}

/// Fails with EXDEV unless the calling process's working directory is `root` or beneath it.
/// Runs in a forked child: a stack buffer and the getcwd(2) syscall only, no allocation.
fn cwd_beneath(root: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is writable for its whole length; getcwd NUL-terminates what it writes.
    let got = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
    if got.is_null() {
        let e = io::Error::last_os_error();
        // ENOENT: the directory was removed since the chdir.
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => io::Error::from_raw_os_error(CWD_GONE),
            _ => e,
        });
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let cwd = &buf[..len];
    let beneath = cwd.starts_with(root) && (cwd.len() == root.len() || cwd.get(root.len()) == Some(&b'/'));
    if beneath { Ok(()) } else { Err(io::Error::from_raw_os_error(libc::EXDEV)) }
}

impl fmt::Debug for Launcher {
    // Values are never printed: the user's own environment may hold secrets too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher")
            .field("env_vars", &self.env.len())
            .field("shell", &self.shell)
            .field("confined", &self.confinement.is_some())
            .finish()
    }
}

/// Sends `signal` to every process of group `pgid`. A group that no longer exists is not an
/// error. Refuses pgid 0 and 1, which would mean the agent's own group or every process.
pub fn kill_group(pgid: Pid, signal: Signal) -> io::Result<()> {
    if pgid.as_raw() <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether any process is left in group `pgid`. Zombies count: a member reparented to an init
/// that does not reap keeps the group alive.
pub fn group_alive(pgid: Pid) -> bool {
    pgid.as_raw() > 1 && !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

fn is_secret<S: AsRef<str>>(name: &OsStr, value: &OsStr, secret_names: &[S]) -> bool {
    let name = name.to_string_lossy();
    if secret_names.iter().any(|s| s.as_ref() == name) {
        return true;
    }
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("TETHER_") {
        return true;
    }
    if upper.starts_with("NATS_") {
        let value = value.to_string_lossy();
        let url_with_user = value.contains("://") && value.contains('@');
        return url_with_user || CREDENTIAL_WORDS.iter().any(|w| upper.contains(w));
    }
    false
}

fn login_shell(env_shell: Option<&OsStr>) -> PathBuf {
    if let Some(shell) = env_shell.map(Path::new).filter(|p| usable_shell(p)) {
        return shell.to_path_buf();
    }
    // getpwuid_r: a local file read on most machines, done once per Launcher.
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid())
        && usable_shell(&user.shell)
    {
        return user.shell;
    }
    PathBuf::from(FALLBACK_SHELL)
}

/// Absolute, an executable file, and not one of the shells that refuse logins.
fn usable_shell(path: &Path) -> bool {
    let refuses = matches!(path.file_name().and_then(OsStr::to_str), Some("nologin" | "false"));
    path.is_absolute() && !refuses && is_executable(path)
}

/// An existing regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn secrets_are_dropped_and_the_rest_kept() {
        let l = Launcher::from_env(
            vars(&[
                ("PATH", "/usr/bin:/bin"),
                ("HOME", "/root"),
                ("TETHER_NATS_TOKEN", "t"),
                ("TETHER_WORKSPACE_ID", "w"),
                ("NATS_PASSWORD", "p"),
                ("NATS_CREDS", "/x.creds"),
                ("NATS_NKEY_SEED", "SU..."),
                ("NATS_URL", "nats://user:pw@host:4222"),
                ("NATS_SERVER", "nats://host:4222"),
                ("MY_API_KEY", "k"),
                ("GITHUB_TOKEN", "g"),
            ]),
            &["MY_API_KEY"],
        );
        let names: Vec<_> = l.base_env().keys().map(|k| k.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["GITHUB_TOKEN", "HOME", "NATS_SERVER", "PATH"]);
    }

    #[test]
    fn shell_prefers_env_then_passwd_then_bin_sh() {
        let l = Launcher::from_env(vars(&[("SHELL", "/bin/sh")]), &[] as &[&str]);
        assert_eq!(l.shell(), Path::new("/bin/sh"));
        for bad in ["sh", "/no/such/shell", "/etc/passwd", "/usr/sbin/nologin"] {
            let l = Launcher::from_env(vars(&[("SHELL", bad)]), &[] as &[&str]);
            assert_ne!(l.shell(), Path::new(bad));
            assert!(l.shell().is_absolute() && is_executable(&l.shell()), "{:?}", l.shell());
        }
    }

    #[tokio::test]
    async fn command_gets_own_group_and_only_sanitised_env() {
        let path = std::env::var("PATH").unwrap_or_default();
        let l = Launcher::from_env(vars(&[("PATH", &path), ("TETHER_NATS_TOKEN", "sekrit")]), &[] as &[&str]);
        let extra = HashMap::from([("EXTRA".to_owned(), "1".to_owned())]);
        let cmd = l.command(
            OsStr::new("sh"),
            &["-c".into(), "cut -d' ' -f5 /proc/$$/stat; env".into()],
            Path::new("/"),
            &extra,
            &[],
        );
        let out = cmd.into_std().output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let pgid: i32 = lines.next().unwrap().trim().parse().unwrap();
        assert_ne!(pgid, nix::unistd::getpgrp().as_raw());
        let env: Vec<_> = lines.collect();
        assert!(env.contains(&"EXTRA=1"), "{env:?}");
        assert!(!text.contains("sekrit"), "{env:?}");
    }

    #[test]
    fn per_spawn_hooks_run_in_the_child_before_the_confinement_and_can_fail_the_spawn() {
        let mut l = Launcher::from_env(std::env::vars_os(), &[] as &[&str]);
        let refuse: TerminalConfinement = Arc::new(|_: &Path| unreachable!("no terminal here"));
        l.set_confinement(Arc::new(|| Err(io::Error::from_raw_os_error(libc::EACCES))), refuse);
        let first: PreExecHook = Arc::new(|| Err(io::Error::from_raw_os_error(libc::EPERM)));
        let cmd = l.command(OsStr::new("true"), &[], Path::new("/"), &HashMap::new(), &[first]);
        let err = cmd.into_std().status().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let cmd = l.command(OsStr::new("true"), &[], Path::new("/"), &HashMap::new(), &[]);
        assert_eq!(cmd.into_std().status().unwrap_err().raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn a_terminal_gets_the_confinement_prepared_for_its_device_instead_of_the_common_one() {
        let mut l = Launcher::from_env(std::env::vars_os(), &[] as &[&str]);
        let seen = Arc::new(std::sync::Mutex::new(PathBuf::new()));
        let seen_by_terminal = seen.clone();
        l.set_confinement(
            Arc::new(|| Err(io::Error::from_raw_os_error(libc::EACCES))),
            Arc::new(move |tty: &Path| {
                *seen_by_terminal.lock().unwrap() = tty.to_owned();
                Ok(Arc::new(|| Err(io::Error::from_raw_os_error(libc::EPERM))))
            }),
        );
        let none = HashMap::new();
        let cmd = l.command(OsStr::new("true"), &[], Path::new("/"), &none, &[]);
        assert_eq!(cmd.into_std().status().unwrap_err().raw_os_error(), Some(libc::EACCES));
        let tty = Path::new("/dev/pts/7");
        let mut cmd = l.terminal_command(OsStr::new("true"), &[], Path::new("/"), &none, tty, &[]).unwrap();
        assert_eq!(cmd.status().unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(*seen.lock().unwrap(), tty);
    }

    #[test]
    fn every_command_leads_a_session_of_its_own_without_a_terminal() {
        let l = Launcher::from_env(std::env::vars_os(), &[] as &[&str]);
        // Session id, process group and pid, then whether /dev/tty opens.
        let script =
            "cut -d' ' -f5,6 /proc/$$/stat; echo $$; (: </dev/tty) 2>/dev/null && echo tty || echo no-tty";
        let cmd =
            l.command(OsStr::new("sh"), &["-c".into(), script.into()], Path::new("/"), &HashMap::new(), &[]);
        let out = cmd.into_std().output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words.len(), 4, "{text}");
        assert_eq!(
            (words[0], words[1]),
            (words[2], words[2]),
            "process group and session are the child's own"
        );
        assert_eq!(words[3], "no-tty", "no controlling terminal");
    }

    #[test]
    fn kill_group_refuses_own_and_ignores_missing() {
        assert!(kill_group(Pid::from_raw(0), Signal::SIGTERM).is_err());
        assert!(kill_group(Pid::from_raw(1), Signal::SIGTERM).is_err());
        // A pid far above pid_max: no such group.
        assert!(kill_group(Pid::from_raw(i32::MAX - 7), Signal::SIGKILL).is_ok());
        assert!(!group_alive(Pid::from_raw(i32::MAX - 7)));
    }
}
