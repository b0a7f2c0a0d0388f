//! Confined mode for commands. File ops are confined to the workspace root by the path layer;
//! this module confines what the agent's children do: every child (exec, the PTY shell, and
//! whatever they start) runs under a Landlock ruleset that lets it write only beneath the
//! workspace root and a private temp directory and read only the system's programs, libraries
//! and configuration, and under resource limits (a process cap per command and one for all
//! commands together, a default memory limit, and the memory and CPU limits a request asks
//! for). It reads of those locations only what any user could (`shared`). It may signal, and
//! connect to the Unix sockets of, only the processes of its own command (where the kernel
//! allows: see `ruleset` and `seccomp`), it cannot connect to the agent's NATS and relay ports
//! (`network`), set setuid bits or enter a user namespace (`seccomp`), it does not inherit the
//! addresses of the user's sockets (`SSH_AUTH_SOCK`, D-Bus, X11, ...), and it holds no Linux
//! capabilities, even under an agent running as root (`privileges`).
//! [`Sandbox`] is built once at startup from the configuration and what the kernel offers; it
//! installs the static part into the [`Launcher`] (and what a terminal's own ruleset is built
//! from), decides whether a command may run at all ([`Sandbox::admit`]), prepares each
//! command's limits, and reports truthfully in Hello what is enforced.

mod cgroup;
mod limits;
mod network;
mod policy;
mod privileges;
mod rules;
mod ruleset;
mod seccomp;
mod shared;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tether_proto::pb;
use tokio_util::sync::CancellationToken;

pub use cgroup::{CgroupLimits, Controller};
pub use limits::{CommandLimits, Enforcement};
pub use policy::{CommandPolicy, Confinement};
pub use rules::{Grant, Rule};

use crate::config::Config;
use crate::error::{OpError, OpResult};
use crate::process::{Launcher, PreExecHook, TerminalConfinement};
use cgroup::Cgroups;
use seccomp::CommandFilter;

/// The name of the private temp directory inside the state directory.
const TMP_DIR_NAME: &str = "tmp";

/// Variables naming the user's sockets (agents, buses, displays, container engines, the
/// service manager's notify socket), removed from a confined command's environment: they point
/// at what it may not reach (and, where a Unix socket is allowed, should not find by name).
const SOCKET_ADDRESS_VARS: &[&str] = &[
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "DBUS_SESSION_BUS_ADDRESS",
    "DBUS_SYSTEM_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "PULSE_SERVER",
    "DOCKER_HOST",
    "CONTAINER_HOST",
    "TMUX",
    "NOTIFY_SOCKET",
];

/// How a confined command is kept from named Unix sockets; mirrors `pb::UnixSocketConfinement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixSockets {
    /// Not kept (commands are not confined, or the machine offers neither way).
    Open,
    /// Landlock (ABI 9): only sockets beneath the writable paths.
    Landlock,
    /// seccomp: no Unix socket can be created, only stream and seqpacket pairs.
    Seccomp,
}

impl UnixSockets {
    pub fn to_proto(self) -> pb::UnixSocketConfinement {
        match self {
            UnixSockets::Open => pb::UnixSocketConfinement::None,
            UnixSockets::Landlock => pb::UnixSocketConfinement::Landlock,
            UnixSockets::Seccomp => pb::UnixSocketConfinement::Seccomp,
        }
    }
}

/// What the agent reports about command confinement (Hello capabilities, EXT 103..113).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCaps {
    /// Commands may run at all (false: confined mode cannot be honoured and the operator did
    /// not allow unconfined commands, so exec and pty_open answer CONSENT_REQUIRED).
    pub admitted: bool,
    pub confined: bool,
    pub landlock_abi: u32,
    pub unconfined_allowed: bool,
    pub unconfined_reason: String,
    pub memory: Enforcement,
    pub memory_high: bool,
    pub cpu: bool,
    pub max_processes: u32,
    pub processes: Enforcement,
    /// The cap on the processes of all commands together; 0 = none enforced.
    pub max_total_processes: u32,
    /// The memory limit of a command whose request sets none; 0 = none.
    pub default_memory_max: u64,
    /// Signals and abstract Unix sockets reach only the command's own processes.
    pub scoped: bool,
    pub unix_sockets: UnixSockets,
    /// Commands cannot connect to the TCP ports of the agent's NATS servers and relay.
    pub network_confined: bool,
}

impl CommandCaps {
    /// Writes these facts into `caps`.
    pub fn fill(&self, caps: &mut pb::Capabilities) {
        caps.commands_confined = self.confined;
        caps.landlock_abi = self.landlock_abi;
        caps.unconfined_commands_allowed = self.unconfined_allowed;
        caps.commands_unconfined_reason = self.unconfined_reason.clone();
        caps.memory_limit = self.memory.to_proto() as i32;
        caps.memory_high_limit = self.memory_high;
        caps.cpu_limit = self.cpu;
        caps.max_processes = self.max_processes;
        caps.process_limit = self.processes.to_proto() as i32;
        caps.max_total_processes = self.max_total_processes;
        caps.default_memory_max_bytes = self.default_memory_max;
        caps.commands_scoped = self.scoped;
        caps.unix_sockets = self.unix_sockets.to_proto() as i32;
        caps.network_confined = self.network_confined;
    }
}

/// Confinement of the agent's children: see the module doc.
#[derive(Debug)]
pub struct Sandbox {
    policy: CommandPolicy,
    ruleset: Option<ruleset::BuiltRuleset>,
    /// The layer that closes the ports of the agent's servers (`network`).
    network: Option<ruleset::BuiltRuleset>,
    /// The seccomp filter (`seccomp`), with its Unix socket rules where Landlock cannot confine
    /// Unix sockets itself.
    filter: Option<Arc<CommandFilter>>,
    rules: Vec<Rule>,
    tmpdir: Option<PathBuf>,
    cgroups: Option<Arc<Cgroups>>,
    max_processes: u32,
    /// Set RLIMIT_NPROC in children (a non-root agent without a pids cgroup).
    nproc_rlimit: bool,
    /// The enforced cap on the processes of all commands together; 0 = none.
    max_total_processes: u32,
    /// The memory limit of a command whose request sets none (enforced by a memory cgroup).
    default_memory_max: Option<u64>,
}

impl Sandbox {
    /// Builds the sandbox for `config` (blocking; once at startup): the private temp directory,
    /// the Landlock ruleset (confined mode only) and the cgroup hierarchies. What the kernel
    /// cannot provide is recorded, not fatal: [`Sandbox::admit`] and the capabilities say so.
    pub fn setup(config: &Config, workspace_root: &Path) -> anyhow::Result<Sandbox> {
        let agent_name = format!("{}.{}", config.subjects.workspace_id(), config.subjects.agent_id());
        let (cgroups, notes) = Cgroups::discover(&agent_name);
        for note in &notes {
            tracing::info!("{note}");
        }
        let max_processes = config.confine.max_processes;
        let pids_cgroup = cgroups.as_ref().is_some_and(|c| c.has(Controller::Pids));
        let nproc_rlimit = max_processes > 0 && !pids_cgroup && !nix::unistd::getuid().is_root();
        let max_total_processes = cap_total_processes(cgroups.as_deref(), config.confine.max_total_processes);
        let memory_cgroup = cgroups.as_ref().is_some_and(|c| c.has(Controller::Memory));
        let default_memory_max = limits::default_memory_max(memory_cgroup, config.confine.default_memory_max);
        tracing::info!(
            max_total_processes,
            default_memory_max,
            "limits of all commands together and by default"
        );
        let mut sandbox = Sandbox {
            policy: CommandPolicy {
                confinement: Confinement::WholeMachine,
                allow_unconfined: config.confine.allow_unconfined_commands,
            },
            ruleset: None,
            network: None,
            filter: None,
            rules: Vec::new(),
            tmpdir: None,
            cgroups,
            max_processes,
            nproc_rlimit,
            max_total_processes,
            default_memory_max,
        };
        if config.whole_machine {
            return Ok(sandbox);
        }
        let tmpdir = private_tmpdir(&config.state_dir)?;
        let mut excluded = config.secret_files.clone();
        excluded.push(config.state_dir.clone());
        let inputs = rules::RuleInputs {
            workspace_root: workspace_root.to_owned(),
            tmpdir: tmpdir.clone(),
            extra_read: config.confine.read.clone(),
            extra_write: config.confine.write.clone(),
            excluded,
        };
        let fs = rules::FsView {
            list_dir: &list_dir,
            canonical: &canonical,
            readable: &readable,
            unshared_beneath: &shared::unshared_beneath,
            shared_file: &shared::shared_file,
        };
        let started = std::time::Instant::now();
        let rules = rules::rules(&inputs, &fs);
        sandbox.policy.confinement = match ruleset::build(&rules) {
            Ok(built) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::info!(abi = built.abi, rules = built.rules_added, elapsed_ms, scoped = built.scoped(), tmpdir = %tmpdir.display(), "commands run under Landlock");
                let abi = built.abi;
                sandbox.filter = command_filter(!built.confines_unix_sockets());
                if config.confine.allow_agent_server_ports {
                    tracing::info!(
                        "confined commands may connect to the agent's NATS and relay ports, as configured"
                    );
                } else {
                    sandbox.network = network_layer(config, abi)?;
                }
                sandbox.ruleset = Some(built);
                sandbox.tmpdir = Some(tmpdir);
                sandbox.rules = rules;
                Confinement::Landlock { abi }
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmpdir);
                tracing::warn!(error = %e, allowed = sandbox.policy.allow_unconfined, "commands cannot be confined");
                Confinement::Unavailable { reason: e.to_string() }
            }
        };
        Ok(sandbox)
    }

    /// A sandbox that confines nothing and limits nothing, deciding admission by `policy` only
    /// (tests and tools).
    pub fn from_policy(policy: CommandPolicy) -> Sandbox {
        Sandbox {
            policy,
            ruleset: None,
            network: None,
            filter: None,
            rules: Vec::new(),
            tmpdir: None,
            cgroups: None,
            max_processes: 0,
            nproc_rlimit: false,
            max_total_processes: 0,
            default_memory_max: None,
        }
    }

    /// Gives every child of `launcher` the sandbox: the Landlock (and seccomp) pre-exec hook —
    /// for a terminal's shell one that also grants its terminal device —, `TMPDIR`, a `PATH`
    /// without the directories the sandbox cannot execute from, a login shell it can execute,
    /// and no socket addresses.
    pub fn install(&self, launcher: &mut Launcher) {
        let Some(built) = &self.ruleset else { return };
        let (rules, network, filter) = (self.rules.clone(), self.network.clone(), self.filter.clone());
        let terminal: TerminalConfinement = Arc::new(move |tty: &Path| {
            let mut rules = rules.clone();
            rules.push(Rule { path: tty.to_owned(), grant: Grant::Device });
            let built = ruleset::build(&rules)
                .map_err(|e| io::Error::other(format!("confining the terminal's shell: {e}")))?;
            Ok(confining_hook(built, network.clone(), filter.clone()))
        });
        launcher.set_confinement(
            confining_hook(built.clone(), self.network.clone(), self.filter.clone()),
            terminal,
        );
        for name in SOCKET_ADDRESS_VARS {
            launcher.remove_base_env(name);
        }
        if let Some(tmpdir) = &self.tmpdir {
            launcher.set_base_env("TMPDIR", tmpdir.as_os_str().to_owned());
        }
        let executable = rules::Executable::new(&self.rules, &canonical);
        if let Some(path) = launcher.base_env().get(&OsString::from("PATH")).cloned() {
            launcher.set_base_env("PATH", executable.path_var(&path));
        }
        let may_exec = |p: &Path| executable.allows(p);
        let shell = rules::confined_shell(&launcher.shell(), &may_exec, &crate::process::is_executable);
        if shell != launcher.shell() {
            tracing::info!(
                from = %launcher.shell().display(), to = %shell.display(),
                "the login shell is out of a confined command's reach; terminals use this one"
            );
            launcher.set_shell(shell);
        }
    }

    /// Whether a command may start now; see [`CommandPolicy::admit`]. Every op that starts a
    /// process (exec, pty) calls this first.
    pub fn admit(&self) -> OpResult<()> {
        self.policy.admit()
    }

    /// Prepares the limits of one command: the process cap, what `policy` asks for, and the
    /// default memory limit where it asks for none (blocking: creates the command's cgroups).
    /// Limits the machine cannot enforce are ignored, as the capabilities say. What the command
    /// leaves running after it exits is killed when `until` fires (its fence scope advanced
    /// past its epoch, or the agent stops).
    pub fn limits(
        &self,
        policy: Option<&pb::OperationResourcePolicy>,
        until: CancellationToken,
    ) -> OpResult<CommandLimits> {
        let mut wanted = limits::requested(policy);
        wanted.pids_max = (self.max_processes > 0).then_some(u64::from(self.max_processes));
        wanted.memory_max = wanted.memory_max.or(self.default_memory_max);
        let has = |c| self.cgroups.as_ref().is_some_and(|g| g.has(c));
        let mut out = CommandLimits::none();
        if !has(Controller::Memory) {
            out.address_space = wanted.memory_max.take();
            wanted.memory_high = None;
        }
        if self.nproc_rlimit
            && let Some(cap) = wanted.pids_max
        {
            out.processes = Some(limits::user_task_count(nix::unistd::getuid().as_raw()) + cap);
        }
        if let Some(cgroups) = &self.cgroups {
            if !cgroups.memory_high() {
                wanted.memory_high = None;
            }
            let cgroup = cgroups.create(&wanted, until).map_err(|e| cgroup_error(&e))?;
            out.cgroup = Some(cgroup);
        }
        Ok(out)
    }

    /// What Hello says about commands.
    pub fn capabilities(&self) -> CommandCaps {
        let has = |c| self.cgroups.as_ref().is_some_and(|g| g.has(c));
        let processes = match (self.max_processes, has(Controller::Pids), self.nproc_rlimit) {
            (0, ..) => Enforcement::None,
            (_, true, _) => Enforcement::Cgroup,
            (_, false, true) => Enforcement::Rlimit,
            (_, false, false) => Enforcement::None,
        };
        let unix_sockets = match &self.ruleset {
            Some(built) if built.confines_unix_sockets() => UnixSockets::Landlock,
            Some(_) if self.filter.as_ref().is_some_and(|f| f.refuses_unix_sockets()) => UnixSockets::Seccomp,
            _ => UnixSockets::Open,
        };
        CommandCaps {
            scoped: self.ruleset.as_ref().is_some_and(ruleset::BuiltRuleset::scoped),
            unix_sockets,
            network_confined: self.network.is_some(),
            confined: self.policy.confined(),
            landlock_abi: self.policy.landlock_abi(),
            admitted: self.policy.admit().is_ok(),
            unconfined_allowed: self.policy.allow_unconfined,
            unconfined_reason: self.policy.unconfined_reason(),
            memory: if has(Controller::Memory) { Enforcement::Cgroup } else { Enforcement::Rlimit },
            memory_high: self.cgroups.as_ref().is_some_and(|g| g.memory_high()),
            cpu: has(Controller::Cpu),
            max_processes: if processes == Enforcement::None { 0 } else { self.max_processes },
            processes,
            max_total_processes: self.max_total_processes,
            default_memory_max: self.default_memory_max.unwrap_or(0),
        }
    }

    /// Where the cgroup hierarchies are, for the startup log.
    pub fn describe_cgroups(&self) -> String {
        self.cgroups.as_ref().map_or_else(|| "none".to_owned(), |c| c.describe())
    }

    /// At shutdown: removes emptied cgroups and the private temp directory.
    pub fn shutdown(&self) {
        if let Some(cgroups) = &self.cgroups {
            cgroups.shutdown();
        }
        if let Some(tmpdir) = &self.tmpdir
            && let Err(e) = fs::remove_dir_all(tmpdir)
        {
            tracing::debug!(error = %e, "removing the private temp directory");
        }
    }
}

/// Caps the processes of all commands together at `max` where a pids cgroup holds them all;
/// returns the cap enforced (0: none, logged).
fn cap_total_processes(cgroups: Option<&Cgroups>, max: u32) -> u32 {
    if max == 0 {
        return 0;
    }
    match cgroups.map(|c| c.cap_total_processes(u64::from(max))) {
        Some(Ok(true)) => max,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot cap the processes of all commands together");
            0
        }
        _ => {
            tracing::info!("no pids cgroup: the processes of all commands together are not capped");
            0
        }
    }
}

/// The pre-exec step that confines a child: the file-system ruleset, the network layer, the
/// seccomp filter, then the child drops every capability it holds (see `privileges`). Only
/// system calls on values prepared here (see `PreExecHook`); any failure aborts the spawn: a
/// child never runs unconfined by accident.
fn confining_hook(
    fs: ruleset::BuiltRuleset,
    network: Option<ruleset::BuiltRuleset>,
    filter: Option<Arc<CommandFilter>>,
) -> PreExecHook {
    let drop = privileges::CapabilityDrop::new();
    Arc::new(move || {
        fs.restrict()?;
        if let Some(network) = &network {
            network.restrict()?;
        }
        if let Some(filter) = &filter {
            filter.apply()?;
        }
        drop.apply()
    })
}

/// The seccomp filter, or none (logged) where the machine cannot take it.
fn command_filter(refuse_unix_sockets: bool) -> Option<Arc<CommandFilter>> {
    match CommandFilter::new(refuse_unix_sockets) {
        Ok(filter) => {
            if refuse_unix_sockets {
                tracing::info!(
                    "this Landlock cannot confine Unix sockets: commands may not create any (seccomp)"
                );
            }
            Some(Arc::new(filter))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "confined commands may set setuid bits, create user namespaces and use io_uring{}",
                if refuse_unix_sockets { ", and connect to any named Unix socket they can reach" } else { "" }
            );
            None
        }
    }
}

/// The layer closing the ports of the agent's servers, or none (logged) where this Landlock
/// (`abi`) cannot confine TCP. A URL whose port cannot be told is an error: the agent would not
/// know what to close.
fn network_layer(config: &Config, abi: u32) -> anyhow::Result<Option<ruleset::BuiltRuleset>> {
    if abi < network::NETWORK_ABI {
        tracing::warn!(
            abi,
            "this Landlock cannot confine TCP: confined commands can connect to the agent's NATS and relay ports"
        );
        return Ok(None);
    }
    let relay_url = config.relay.as_ref().map(|r| r.url.as_str());
    let closed = network::agent_server_ports(&config.nats_urls, relay_url)?;
    let started = std::time::Instant::now();
    match ruleset::build_network(network::open_ports(&closed)) {
        Ok(built) => {
            tracing::info!(
                ?closed,
                rules = built.rules_added,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "confined commands cannot connect to the agent's server ports"
            );
            Ok(Some(built))
        }
        Err(e) => {
            tracing::warn!(error = %e, "confined commands can connect to the agent's NATS and relay ports");
            Ok(None)
        }
    }
}

fn cgroup_error(err: &io::Error) -> OpError {
    let e = OpError::os(format!("cannot set up the command's cgroup: {err}"));
    match err.raw_os_error() {
        Some(errno) => e.with("errno", errno),
        None => e,
    }
}

/// `<state_dir>/tmp`, emptied of what an earlier run left and made private (0700).
fn private_tmpdir(state_dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let dir = state_dir.join(TMP_DIR_NAME);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("clearing {}", dir.display())),
    }
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Absolute: children run in other directories than the agent.
    dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Whether the agent's children could read `path` (a directory: list or search it) under plain
/// file permissions. They run with the agent's uid and gids, and keep only the capabilities it
/// made ambient; `AT_EACCESS` checks the agent's effective ids and capabilities, so where the
/// two differ this errs towards "readable", which only splits more.
fn readable(path: &Path) -> bool {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use nix::unistd::{AccessFlags, faccessat};
    let can = |mode| faccessat(AT_FDCWD, path, mode, AtFlags::AT_EACCESS).is_ok();
    can(AccessFlags::R_OK) || (path.is_dir() && can(AccessFlags::X_OK))
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).collect()
}
