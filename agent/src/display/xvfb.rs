//! The managed virtual display: Xvfb started by the agent (no TCP listener, `-noreset` so it
//! does not reset when its last client leaves), ready once a real X connection succeeds, and
//! stopped with the agent. Xvfb dies with the agent even on SIGKILL (PR_SET_PDEATHSIG from a
//! keeper thread that lives exactly as long as Xvfb), and the next start reclaims whatever a
//! crash left: a stale lock or socket when nothing answers on it, or an Xvfb the pid file in
//! the state directory says is ours.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::VirtualSpec;

/// How long Xvfb gets to answer its first connection.
const READY_WITHIN: Duration = Duration::from_secs(15);
/// How long a stopping Xvfb gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running Xvfb; dropping it stops it.
pub struct Xvfb {
    pid: i32,
    name: String,
    pid_file: PathBuf,
    exited: mpsc::Receiver<()>,
}

fn lock_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{number}-lock"))
}

fn socket_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X11-unix/X{number}"))
}

/// Whether an X server completes the connection setup on `number`'s socket.
pub fn answers(number: u32) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket_path(number)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    // Connection setup: little-endian, protocol 11.0, no authorisation.
    let setup = [b'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut status = [0u8; 1];
    stream.write_all(&setup).is_ok() && stream.read_exact(&mut status).is_ok() && status[0] == 1
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_xvfb(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "Xvfb")
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// SIGTERM, then SIGKILL after the grace; returns once `pid` is gone (or the grace ran out).
fn terminate(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Makes `number` free for a new Xvfb, or explains why it is not.
fn reclaim(number: u32, pid_file: &Path) -> anyhow::Result<()> {
    let (lock, socket) = (lock_path(number), socket_path(number));
    let locked_by = read_pid(&lock);
    if answers(number) {
        let ours = read_pid(pid_file);
        match locked_by {
            Some(pid) if Some(pid) == ours && is_xvfb(pid) => {
                tracing::info!(pid, display = number, "stopping the Xvfb a previous run of this agent left");
                terminate(pid);
            }
            _ => bail!(
                "display :{number} is served by another X server (lock pid {locked_by:?}); choose another \
                 with --virtual-display"
            ),
        }
    } else if let Some(pid) = locked_by.filter(|&pid| alive(pid) && is_xvfb(pid)) {
        // An Xvfb that does not answer (wedged, or still starting): only ours may be stopped.
        if read_pid(pid_file) != Some(pid) {
            bail!("display :{number} is locked by a running Xvfb (pid {pid}) that is not this agent's");
        }
        terminate(pid);
    }
    for stale in [&lock, &socket] {
        match std::fs::remove_file(stale) {
            Ok(()) => tracing::info!(path = %stale.display(), "removed a stale X lock or socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing stale {}", stale.display())),
        }
    }
    Ok(())
}

impl Xvfb {
    /// Starts Xvfb for `spec` and returns once it answers an X connection.
    pub fn start(spec: &VirtualSpec, state_dir: &Path) -> anyhow::Result<Xvfb> {
        let pid_file = state_dir.join("xvfb.pid");
        reclaim(spec.number, &pid_file)?;
        let log_path = state_dir.join("xvfb.log");
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("Xvfb");
        cmd.arg(spec.name())
            .args(["-screen", "0", &format!("{}x{}x24", spec.width, spec.height)])
            .args(["-nolisten", "tcp", "-noreset"])
            // Only what Xvfb needs: PATH (it runs xkbcomp); never the agent's secrets.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch only this child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent died between fork and prctl: do not outlive it.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        // The keeper thread spawns Xvfb and waits for it: PDEATHSIG follows the thread that
        // forked the child, so that thread must live exactly as long as Xvfb.
        let (started_tx, started) = mpsc::channel();
        let (exited_tx, exited) = mpsc::channel();
        std::thread::Builder::new().name("tether-xvfb".into()).spawn(move || {
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(child.id() as i32));
                    let status = child.wait();
                    tracing::info!(?status, "Xvfb exited");
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
            let _ = exited_tx.send(());
        })?;
        let pid = started
            .recv()
            .context("the Xvfb keeper thread died")?
            .context("starting Xvfb (is it installed? apt-get install xvfb)")?;
        let xvfb = Xvfb { pid, name: spec.name(), pid_file, exited };
        std::fs::write(&xvfb.pid_file, pid.to_string())
            .with_context(|| format!("writing {}", xvfb.pid_file.display()))?;
        let deadline = Instant::now() + READY_WITHIN;
        while !answers(spec.number) {
            if xvfb.exited.try_recv().is_ok() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("Xvfb exited at start: {}", log.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
            }
            if Instant::now() >= deadline {
                bail!("Xvfb did not answer on {} within {READY_WITHIN:?}", spec.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(display = %xvfb.name, pid, geometry = %format!("{}x{}", spec.width, spec.height), "virtual display ready");
        Ok(xvfb)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if self.exited.recv_timeout(STOP_GRACE).is_err() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = self.exited.recv_timeout(STOP_GRACE);
        }
        let _ = std::fs::remove_file(&self.pid_file);
        tracing::info!(display = %self.name, "virtual display stopped");
    }
}
