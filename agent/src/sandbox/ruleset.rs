//! The kernel half of confinement: the rule list becomes one Landlock ruleset, built once at
//! startup in the agent (opening every path, which allocates and may fail), and applied in each
//! child between fork and exec by two plain system calls on the ruleset's file descriptor. A
//! ruleset can restrict any number of processes, so the one descriptor serves every spawn.
//!
//! The ruleset handles every file-system right this build knows (Landlock ABI 10) in
//! best-effort mode: on an older kernel the rights it does not know are simply not handled,
//! and [`kernel_abi`] tells which ABI that leaves in force. It also scopes signals and abstract
//! Unix sockets (ABI 6): a confined command can signal, and connect to abstract sockets of,
//! only the processes of its own command, never the agent, the user's other processes (X11,
//! an abstract D-Bus) or another command. From ABI 9 the file rights include connecting to a
//! named Unix socket, granted only beneath the writable paths; before that `seccomp` steps in.
//! The network layer (`network`) is a ruleset of its own, stacked on this one in each child:
//! it is the same for every command, while a terminal's shell gets a file-system ruleset of
//! its own.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope, make_bitflags,
};

use super::rules::{Grant, Rule};

/// The newest Landlock ABI this build handles.
pub const TARGET_ABI: ABI = ABI::V10;
const TARGET_ABI_VERSION: u32 = 10;
/// The first ABI with scopes (signals, abstract Unix sockets).
pub const SCOPES_ABI: u32 = 6;
/// The first ABI that confines connecting to named Unix sockets (`AccessFs::ResolveUnix`).
pub const RESOLVE_UNIX_ABI: u32 = 9;

/// A built ruleset, ready to restrict children.
#[derive(Debug, Clone)]
pub struct BuiltRuleset {
    fd: Arc<OwnedFd>,
    /// The ABI in force: the kernel's, capped at what this build handles.
    pub abi: u32,
    /// Rules actually added (paths that exist).
    pub rules_added: usize,
}

impl BuiltRuleset {
    /// Confines the calling process: `PR_SET_NO_NEW_PRIVS`, then `landlock_restrict_self`. Runs
    /// in a forked child (see `PreExecHook`): two system calls, no allocation, no lock.
    pub fn restrict(&self) -> io::Result<()> {
        restrict_self(self.fd.as_raw_fd())
    }

    /// Whether children are held to their own processes for signals and abstract sockets.
    pub fn scoped(&self) -> bool {
        self.abi >= SCOPES_ABI
    }

    /// Whether Landlock itself confines connecting to named Unix sockets.
    pub fn confines_unix_sockets(&self) -> bool {
        self.abi >= RESOLVE_UNIX_ABI
    }
}

/// Why a ruleset could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RulesetBuildError {
    #[error("{0}")]
    Unavailable(String),
    #[error("building the Landlock ruleset failed: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

/// The Landlock ABI the running kernel offers, or why it offers none.
pub fn kernel_abi() -> Result<u32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only returns
    // the ABI version (or an error); it reads and writes no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v > 0 {
        return Ok(u32::try_from(v).unwrap_or(u32::MAX));
    }
    Err(match io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            "Landlock is built into this kernel but disabled at boot (see the lsm= kernel parameter)"
                .to_owned()
        }
        Some(libc::ENOSYS) => {
            "this kernel has no Landlock (Linux 5.13 or later with CONFIG_SECURITY_LANDLOCK is needed)"
                .to_owned()
        }
        _ => format!("the Landlock version query failed: {}", io::Error::last_os_error()),
    })
}

/// Builds the ruleset for `rules`. Paths that do not exist are skipped (logged at debug).
pub fn build(rules: &[Rule]) -> Result<BuiltRuleset, RulesetBuildError> {
    let abi = kernel_abi().map_err(RulesetBuildError::Unavailable)?.min(TARGET_ABI_VERSION);
    let handled = AccessFs::from_all(TARGET_ABI);
    // Best effort: a kernel before ABI 6 leaves the scopes out (`BuiltRuleset::scoped`).
    let mut ruleset =
        Ruleset::default().handle_access(handled)?.scope(Scope::from_all(TARGET_ABI))?.create()?;
    let mut rules_added = 0;
    for rule in rules {
        let Some((fd, is_dir)) = open_path(&rule.path) else { continue };
        let mut access = grant_access(rule.grant) & handled;
        if !is_dir {
            access &= AccessFs::from_file(TARGET_ABI);
        }
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
        rules_added += 1;
    }
    finish(ruleset, abi, rules_added)
}

/// Builds the network layer: TCP connect handled, and granted on the `open` ports only. Call
/// only where the kernel offers Landlock ABI 4 (`network::NETWORK_ABI`).
pub fn build_network(open: impl Iterator<Item = u16>) -> Result<BuiltRuleset, RulesetBuildError> {
    let abi = kernel_abi().map_err(RulesetBuildError::Unavailable)?.min(TARGET_ABI_VERSION);
    let mut ruleset = Ruleset::default().handle_access(AccessNet::ConnectTcp)?.create()?;
    let mut rules_added = 0;
    for port in open {
        ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
        rules_added += 1;
    }
    finish(ruleset, abi, rules_added)
}

fn finish(ruleset: RulesetCreated, abi: u32, rules_added: usize) -> Result<BuiltRuleset, RulesetBuildError> {
    let fd: Option<OwnedFd> = ruleset.into();
    let fd = fd.ok_or_else(|| {
        RulesetBuildError::Unavailable("the kernel did not create a Landlock ruleset".into())
    })?;
    Ok(BuiltRuleset { fd: Arc::new(fd), abi, rules_added })
}

/// The Landlock rights of a grant.
pub fn grant_access(grant: Grant) -> BitFlags<AccessFs> {
    match grant {
        Grant::ReadExec => AccessFs::from_read(TARGET_ABI),
        Grant::ReadOnly => make_bitflags!(AccessFs::{ReadFile | ReadDir}),
        Grant::Device => make_bitflags!(AccessFs::{ReadFile | WriteFile | Truncate | IoctlDev}),
        // Device nodes made inside the workspace would reach raw disks and memory: never granted.
        Grant::ReadWrite => {
            AccessFs::from_all(TARGET_ABI) & !make_bitflags!(AccessFs::{MakeChar | MakeBlock})
        }
    }
}

/// An `O_PATH` descriptor of `path` (symlinks followed) and whether it is a directory.
fn open_path(path: &Path) -> Option<(PathFd, bool)> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "confine rule skipped");
            return None;
        }
    };
    match PathFd::new(path) {
        Ok(fd) => Some((fd, meta.is_dir())),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "confine rule skipped");
            None
        }
    }
}

/// Runs in the forked child: see [`BuiltRuleset::hook`].
fn restrict_self(ruleset_fd: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only changes this (child) process's flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: landlock_restrict_self takes a descriptor the child inherited (kept open by the
    // `Arc<OwnedFd>` the hook holds) and flags 0; it touches no memory of ours.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset_fd, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_never_allow_device_nodes_and_read_grants_never_write() {
        for grant in [Grant::ReadExec, Grant::ReadOnly, Grant::Device, Grant::ReadWrite] {
            let access = grant_access(grant);
            assert!(
                !access.contains(AccessFs::MakeChar) && !access.contains(AccessFs::MakeBlock),
                "{grant:?}"
            );
            assert_eq!(
                access & handled_subset(),
                access,
                "{grant:?} grants a right the ruleset does not handle"
            );
        }
        for grant in [Grant::ReadExec, Grant::ReadOnly] {
            assert!((grant_access(grant) & AccessFs::from_write(TARGET_ABI)).is_empty(), "{grant:?}");
        }
        assert!(
            grant_access(Grant::ReadWrite).contains(AccessFs::MakeReg | AccessFs::Execute | AccessFs::Refer)
        );
    }

    #[test]
    fn named_unix_sockets_are_handled_and_reachable_only_beneath_writable_paths() {
        assert!(handled_subset().contains(AccessFs::ResolveUnix), "ABI 9 socket connects are handled");
        assert!(grant_access(Grant::ReadWrite).contains(AccessFs::ResolveUnix));
        for grant in [Grant::ReadExec, Grant::ReadOnly, Grant::Device] {
            assert!(!grant_access(grant).contains(AccessFs::ResolveUnix), "{grant:?}");
        }
    }

    fn handled_subset() -> BitFlags<AccessFs> {
        AccessFs::from_all(TARGET_ABI)
    }
}
