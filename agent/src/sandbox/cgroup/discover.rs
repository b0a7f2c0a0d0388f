//! Finding where the agent may make per-command cgroups: which controllers (pids, memory, cpu)
//! this machine offers, in which hierarchy (the unified v2 one, or a v1 one per controller on a
//! hybrid or legacy machine), and whether the agent can create and configure cgroups there.
//! Parsing `/proc/self/mountinfo` and `/proc/self/cgroup` is pure and tested; the setup step
//! tries the real thing once at startup and keeps only what worked, with a note saying why the
//! rest did not.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::leaf::{self, AgentLeaf};
use super::{Controller, Hierarchy, Version, command, subdirs};

/// One cgroup file system mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the hierarchy mounted here (`/` unless bind-mounted or namespaced).
    pub root: String,
    pub mount_point: PathBuf,
    pub version: Version,
    /// For v1: the controllers bound to this hierarchy (from the super options).
    pub controllers: Vec<String>,
}

/// One line of `/proc/self/cgroup`: the agent's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Hierarchy id; 0 is the unified (v2) hierarchy.
    pub id: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

/// A hierarchy the agent belongs to, with its own cgroup directory there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: Version,
    pub own_dir: PathBuf,
    /// The controllers this hierarchy could give us (v2: decided later from cgroup.controllers).
    pub controllers: Vec<Controller>,
}

/// Cgroup mounts in `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, mount_point) = (*left.get(3)?, *left.get(4)?);
            let version = match *right.first()? {
                "cgroup2" => Version::V2,
                "cgroup" => Version::V1,
                _ => return None,
            };
            let controllers = match version {
                Version::V1 => right.get(2)?.split(',').map(str::to_owned).collect(),
                Version::V2 => Vec::new(),
            };
            Some(Mount {
                root: unescape(root),
                mount_point: unescape(mount_point).into(),
                version,
                controllers,
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The lines of `/proc/self/cgroup` text.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            let path = parts.next()?.to_owned();
            Some(Membership { id, controllers, path })
        })
        .collect()
}

/// Where the agent's cgroups are, per hierarchy that could host a wanted controller.
pub fn candidates(mounts: &[Mount], memberships: &[Membership]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let unified = memberships.iter().find(|m| m.id == 0 && m.controllers.is_empty());
    if let (Some(member), Some(mount)) = (unified, mounts.iter().find(|m| m.version == Version::V2))
        && let Some(own_dir) = own_dir(mount, &member.path)
    {
        out.push(Candidate { version: Version::V2, own_dir, controllers: Controller::ALL.to_vec() });
    }
    for controller in Controller::ALL {
        let name = controller.name();
        let mount =
            mounts.iter().find(|m| m.version == Version::V1 && m.controllers.iter().any(|c| c == name));
        let member = memberships.iter().find(|m| m.id != 0 && m.controllers.iter().any(|c| c == name));
        let (Some(mount), Some(member)) = (mount, member) else { continue };
        let Some(own_dir) = own_dir(mount, &member.path) else { continue };
        match out.iter_mut().find(|c| c.version == Version::V1 && c.own_dir == own_dir) {
            Some(existing) => existing.controllers.push(controller),
            None => out.push(Candidate { version: Version::V1, own_dir, controllers: vec![controller] }),
        }
    }
    out
}

/// The directory of cgroup `path` under `mount`, when the mount shows it.
fn own_dir(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" { path } else { path.strip_prefix(mount.root.as_str())? };
    Some(mount.mount_point.join(rel.trim_start_matches('/')))
}

/// What [`setup`] prepared.
#[derive(Debug, Default)]
pub struct Setup {
    pub hierarchies: Vec<Hierarchy>,
    /// Notes on what could not be used.
    pub notes: Vec<String>,
    /// The v2 leaf the agent moved itself into, if it did.
    pub leaf: Option<AgentLeaf>,
}

/// Makes `<own_dir>/<base_name>` in each candidate and keeps the controllers that can be
/// configured there.
pub fn setup(candidates: Vec<Candidate>, base_name: &str) -> Setup {
    let (mut hierarchies, mut notes, mut agent_leaf) = (Vec::new(), Vec::new(), None);
    let mut taken: Vec<Controller> = Vec::new();
    // v2 first: on a hybrid machine a controller bound to v1 is absent from cgroup.controllers.
    let mut candidates = candidates;
    candidates.sort_by_key(|c| c.version != Version::V2);
    for candidate in candidates {
        let wanted: Vec<Controller> =
            candidate.controllers.iter().copied().filter(|c| !taken.contains(c)).collect();
        if wanted.is_empty() {
            continue;
        }
        remove_dead_agents(&candidate.own_dir);
        let result = match candidate.version {
            Version::V2 => setup_v2(&candidate.own_dir, base_name, &wanted, &mut agent_leaf),
            Version::V1 => setup_v1(&candidate.own_dir, base_name, &wanted),
        };
        match result {
            Ok((base, controllers, mut more)) => {
                notes.append(&mut more);
                if controllers.is_empty() {
                    let _ = fs::remove_dir(&base);
                    continue;
                }
                taken.extend(&controllers);
                let swap = controllers.contains(&Controller::Memory)
                    && base.join(Hierarchy::swap_file(candidate.version)).exists();
                hierarchies.push(Hierarchy { version: candidate.version, base, controllers, swap });
            }
            Err(e) => notes.push(format!("cgroup {}: {e}", candidate.own_dir.display())),
        }
    }
    Setup { hierarchies, notes, leaf: agent_leaf }
}

type SetupResult = io::Result<(PathBuf, Vec<Controller>, Vec<String>)>;

fn setup_v1(own_dir: &Path, base_name: &str, wanted: &[Controller]) -> SetupResult {
    let base = make_base(own_dir, base_name)?;
    let usable = wanted.iter().copied().filter(|c| base.join(c.v1_probe_file()).exists()).collect();
    Ok((base, usable, Vec::new()))
}

/// In v2 a controller reaches our command cgroups only if it is enabled in the subtree of the
/// agent's cgroup and of the base. The first is refused (EBUSY) while the agent's cgroup holds
/// processes; when it holds only the agent (a service with `Delegate=yes`), the agent moves
/// itself into a leaf beside the base (recorded in `agent_leaf`) and tries again.
fn setup_v2(
    own_dir: &Path,
    base_name: &str,
    wanted: &[Controller],
    agent_leaf: &mut Option<AgentLeaf>,
) -> SetupResult {
    let offered = fs::read_to_string(own_dir.join("cgroup.controllers"))?;
    let offered: Vec<Controller> =
        wanted.iter().copied().filter(|c| offered.split_whitespace().any(|o| o == c.name())).collect();
    if offered.is_empty() {
        return Ok((own_dir.join(base_name), Vec::new(), Vec::new()));
    }
    let mut notes = Vec::new();
    let enable =
        |dir: &Path, c: Controller| fs::write(dir.join("cgroup.subtree_control"), format!("+{}", c.name()));
    let mut enabled = Vec::new();
    for c in offered {
        let mut result = enable(own_dir, c);
        if result.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY))
            && let Some(moved) = leaf::enter(own_dir, base_name, std::process::id())?
        {
            if agent_leaf.is_none() {
                tracing::info!(leaf = %moved.dir.display(), "moved the agent into a leaf cgroup to delegate controllers to commands");
            }
            *agent_leaf = Some(moved);
            result = enable(own_dir, c);
        }
        match result {
            Ok(()) => enabled.push(c),
            Err(e) => notes.push(format!("cgroup v2 {} controller in {}: {e}", c.name(), own_dir.display())),
        }
    }
    let base = make_base(own_dir, base_name)?;
    let usable = enabled
        .into_iter()
        .filter(|&c| match enable(&base, c) {
            Ok(()) => true,
            Err(e) => {
                notes.push(format!("cgroup v2 {} controller in {}: {e}", c.name(), base.display()));
                false
            }
        })
        .collect();
    Ok((base, usable, notes))
}

/// Kills what agents that died without cleaning up (SIGKILL, a crash, a power cut of the
/// service manager only) left in `own_dir`, and removes their cgroups: the `tether-<pid>-*`
/// directories of pids that no longer run (the base with its command cgroups and, on v2, the
/// agent's own leaf `tether-<pid>-*-agent`). Their commands' processes, running or left running
/// on purpose, would otherwise outlive the agent that answered for them. Blocking: the kill
/// waits (bounded) for them to die.
fn remove_dead_agents(own_dir: &Path) {
    let dead = dead_agent_dirs(own_dir);
    if dead.is_empty() {
        return;
    }
    let cgroups: Vec<PathBuf> = dead.iter().flat_map(|d| subdirs(d)).chain(dead.iter().cloned()).collect();
    let killed = command::kill_members(&cgroups);
    if killed > 0 {
        tracing::warn!(killed, dir = %own_dir.display(), "killed processes left by the commands of an agent that died");
    }
    // Command cgroups first: a cgroup with children cannot be removed.
    for dir in command::remove_dirs(cgroups) {
        tracing::warn!(dir = %dir.display(), "a dead agent's cgroup still holds processes; it stays");
    }
}

/// The `tether-<pid>-*` directories in `own_dir` whose pid no longer runs.
fn dead_agent_dirs(own_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(own_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            agent_pid(&name)
                .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect()
}

/// The agent pid in a `tether-<pid>-<name>` directory name.
fn agent_pid(dir_name: &str) -> Option<u32> {
    dir_name.strip_prefix("tether-")?.split('-').next()?.parse().ok()
}

fn make_base(own_dir: &Path, name: &str) -> io::Result<PathBuf> {
    let base = own_dir.join(name);
    match fs::create_dir(&base) {
        Ok(()) => Ok(base),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(base),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 8:1 / /mnt/my\\040disk rw - ext4 /dev/sda1 rw";

    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/";

    #[test]
    fn a_hybrid_machine_offers_v1_controllers_beside_the_unified_hierarchy() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(mounts.len(), 5, "{mounts:?}");
        assert_eq!(mounts[0].controllers, ["rw", "cpu", "cpuacct"]);
        let got = candidates(&mounts, &parse_proc_cgroup(HYBRID_CGROUP));
        assert_eq!(
            got,
            [
                Candidate {
                    version: Version::V2,
                    own_dir: "/sys/fs/cgroup/unified".into(),
                    controllers: Controller::ALL.to_vec()
                },
                Candidate {
                    version: Version::V1,
                    own_dir: "/sys/fs/cgroup/pids".into(),
                    controllers: vec![Controller::Pids]
                },
                Candidate {
                    version: Version::V1,
                    own_dir: "/sys/fs/cgroup/memory/process_api/abc".into(),
                    controllers: vec![Controller::Memory]
                },
                Candidate {
                    version: Version::V1,
                    own_dir: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    controllers: vec![Controller::Cpu]
                },
            ]
        );
    }

    #[test]
    fn a_pure_v2_machine_under_systemd_uses_the_service_cgroup() {
        let mounts = parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate");
        let members = parse_proc_cgroup("0::/system.slice/tether-agent.service\n");
        let got = candidates(&mounts, &members);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].own_dir, Path::new("/sys/fs/cgroup/system.slice/tether-agent.service"));
    }

    #[test]
    fn only_tether_agent_directories_carry_a_pid() {
        assert_eq!(agent_pid("tether-4242-ws1.agent-7"), Some(4242));
        assert_eq!(agent_pid("tether-4242-ws1.agent-7-agent"), Some(4242));
        assert_eq!(agent_pid("tether-agent"), None);
        assert_eq!(agent_pid("system.slice"), None);
    }

    /// The directories a later agent takes for a dead agent's: `tether-<pid>-*` of a pid that
    /// no longer runs (its base and its v2 leaf), never a running agent's nor anything else.
    #[test]
    fn only_a_dead_agents_base_and_leaf_are_taken_for_dead() {
        let own = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("true").spawn().expect("true runs");
        let dead = child.id();
        child.wait().expect("reaped");
        let me = std::process::id();
        let dirs = [
            format!("tether-{dead}-ws1.a/cmd-0"),
            leaf::leaf_name(&format!("tether-{dead}-ws1.a")),
            format!("tether-{dead}-ws1.b/cmd-2"),
            format!("tether-{me}-ws1.c/cmd-0"),
            leaf::leaf_name(&format!("tether-{me}-ws1.c")),
            "system.slice".to_owned(),
        ];
        for dir in &dirs {
            fs::create_dir_all(own.path().join(dir)).expect("mkdir");
        }
        let mut taken: Vec<String> = dead_agent_dirs(own.path())
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        taken.sort();
        let mut expected = [
            format!("tether-{dead}-ws1.a"),
            format!("tether-{dead}-ws1.a-agent"),
            format!("tether-{dead}-ws1.b"),
        ];
        expected.sort();
        assert_eq!(taken, expected);
    }

    /// On the real cgroup file systems of this machine (a v1 pids hierarchy, the v2 unified
    /// one, whichever are mounted): a process left in a dead agent's command cgroup, even one
    /// in a session of its own, is killed and the dead agent's directories removed, while a
    /// running agent's stay.
    #[test]
    fn a_dead_agents_commands_are_killed_and_its_cgroups_removed() {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let mounts = parse_mountinfo(&read("/proc/self/mountinfo"));
        let members = parse_proc_cgroup(&read("/proc/self/cgroup"));
        let mut tried = Vec::new();
        for candidate in candidates(&mounts, &members) {
            let wanted =
                candidate.version == Version::V2 || candidate.controllers.contains(&Controller::Pids);
            if wanted && kill_in_dead_agents_dir(&candidate.own_dir, candidate.version) {
                tried.push(candidate.version);
            }
        }
        println!(
            "dead agents' commands killed on cgroup {tried:?} (none: no hierarchy this test may write to)"
        );
    }

    /// One run of the test above in `own_dir`; false when no cgroup can be made there.
    fn kill_in_dead_agents_dir(own_dir: &Path, version: Version) -> bool {
        let mut child = std::process::Command::new("true").spawn().expect("true runs");
        let dead = child.id();
        child.wait().expect("reaped");
        let test = format!("unit{}", std::process::id());
        let (dead_base, live_base) = (
            own_dir.join(format!("tether-{dead}-{test}")),
            own_dir.join(format!("tether-{}-{test}", std::process::id())),
        );
        if let Err(e) = fs::create_dir(&dead_base) {
            println!("cannot make a cgroup in {} ({version:?}): {e}", own_dir.display());
            return false;
        }
        let command = dead_base.join("cmd-0");
        fs::create_dir(&command).expect("command cgroup");
        fs::create_dir(&live_base).expect("a live agent's base");
        // A sleeper in a session of its own: no process group or parent ties it to anything.
        let mut sleeper =
            std::process::Command::new("setsid").args(["sleep", "60"]).spawn().expect("setsid sleep");
        fs::write(command.join("cgroup.procs"), sleeper.id().to_string())
            .expect("into the dead agent's cgroup");

        remove_dead_agents(own_dir);
        let status = sleeper.wait().expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{version:?}"
        );
        assert!(!dead_base.exists(), "{version:?}: the dead agent's cgroups are removed");
        assert!(live_base.exists(), "{version:?}: a running agent's stay");
        fs::remove_dir(&live_base).expect("clean up");
        true
    }

    #[test]
    fn a_namespaced_mount_root_is_stripped_and_an_unrelated_one_is_unusable() {
        let mount = Mount {
            root: "/ns".into(),
            mount_point: "/sys/fs/cgroup".into(),
            version: Version::V2,
            controllers: vec![],
        };
        assert_eq!(own_dir(&mount, "/ns/job"), Some(PathBuf::from("/sys/fs/cgroup/job")));
        assert_eq!(own_dir(&mount, "/elsewhere"), None);
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
    }
}
