//! The OS side of one terminal: a pseudo-terminal pair from portable-pty, a child spawned
//! through the agent's one [`Launcher`] (sanitised environment, a new session, the pre-exec
//! hooks that confine and limit it) with the PTY as its controlling terminal, and two threads that move
//! bytes between the master and async channels (PTY reads and writes block). In confined mode
//! the shell may open its own terminal device by name (`/dev/pts/N`), no other: the launcher
//! prepares a confinement for this terminal before the spawn.
//!
//! The slave side is closed in the agent right after the spawn: if the agent kept it open, the
//! master would never report EOF when the shell exits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use nix::unistd::Pid;
use portable_pty::{MasterPty, PtySize, native_pty_system};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use crate::process::{Launcher, PreExecHook};

/// Largest output chunk read from the master at once.
const READ_CHUNK: usize = 16 * 1024;
/// Output chunks buffered between the reader thread and the pump.
const OUTPUT_QUEUE: usize = 64;
/// Input writes buffered between the pump/pty_write and the writer thread.
const INPUT_QUEUE: usize = 256;

/// What to run in the terminal.
pub struct Spec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: HashMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    /// Pre-exec steps of this terminal's limits (cgroup, rlimits), run before its confinement.
    pub hooks: Vec<PreExecHook>,
}

/// A running terminal: the master (for resizes), the child, and the byte channels.
pub struct Terminal {
    pub master: Box<dyn MasterPty + Send>,
    pub child: Child,
    /// The child's pid, which is also its session and process group id.
    pub pgid: Pid,
    /// Everything the child writes to the terminal, in chunks; closed at EOF.
    pub output: mpsc::Receiver<Bytes>,
    /// Bytes to type into the terminal.
    pub input: mpsc::Sender<Bytes>,
    /// Fires when the reader thread has seen EOF and handed over its last chunk.
    pub drained: oneshot::Receiver<()>,
}

impl Terminal {
    /// Opens a PTY of `cols` x `rows` and starts `spec` in it. Blocking (a confined terminal's
    /// ruleset is built here): call it off the async workers, inside the runtime.
    pub fn spawn(launcher: &Launcher, spec: Spec) -> io::Result<Terminal> {
        let size = PtySize { rows: spec.rows, cols: spec.cols, pixel_width: 0, pixel_height: 0 };
        let pair = native_pty_system().openpty(size).map_err(io::Error::other)?;
        let tty_path =
            pair.master.tty_name().ok_or_else(|| io::Error::other("the new PTY has no device name"))?;
        // The child's stdio: the slave, opened without becoming the agent's controlling tty.
        let tty = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&tty_path)?;
        let mut cmd = launcher.terminal_command(
            &spec.program,
            &spec.args,
            &spec.cwd,
            &spec.env,
            Path::new(&tty_path),
            &spec.hooks,
        )?;
        cmd.stdin(Stdio::from(tty.try_clone()?))
            .stdout(Stdio::from(tty.try_clone()?))
            .stderr(Stdio::from(tty));
        // SAFETY: runs in the child after setsid(); ioctl(2) is async-signal-safe and nothing
        // here allocates. Stdin (fd 0) is the slave, which becomes the controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let child = cmd.spawn()?;
        // `cmd` holds the slave copies until dropped; drop both it and portable-pty's slave now.
        drop(cmd);
        drop(pair.slave);
        let pid =
            child.id().and_then(|id| i32::try_from(id).ok()).ok_or_else(|| io::Error::other("no pid"))?;
        let reader = pair.master.try_clone_reader().map_err(io::Error::other)?;
        let writer = pair.master.take_writer().map_err(io::Error::other)?;
        let (output, drained) = spawn_reader(reader)?;
        let input = spawn_writer(writer)?;
        Ok(Terminal { master: pair.master, child, pgid: Pid::from_raw(pid), output, input, drained })
    }
}

/// Sets the terminal size (the kernel then sends SIGWINCH to the foreground process group).
pub fn resize(master: &dyn MasterPty, cols: u16, rows: u16) -> io::Result<()> {
    let size = PtySize { rows: rows.max(1), cols: cols.max(1), pixel_width: 0, pixel_height: 0 };
    master.resize(size).map_err(io::Error::other)
}

/// The reader thread: master -> chunks, until EOF (EIO once every slave holder is gone).
fn spawn_reader(
    mut reader: Box<dyn Read + Send>,
) -> io::Result<(mpsc::Receiver<Bytes>, oneshot::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let (drained_tx, drained_rx) = oneshot::channel();
    std::thread::Builder::new().name("pty-read".into()).spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: the slave side is closed for good.
                Err(_) => break,
            }
        }
        drop(tx);
        let _ = drained_tx.send(());
    })?;
    Ok((rx, drained_rx))
}

/// The writer thread: chunks -> master, in order, until the sender side is gone.
fn spawn_writer(mut writer: Box<dyn Write + Send>) -> io::Result<mpsc::Sender<Bytes>> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(INPUT_QUEUE);
    std::thread::Builder::new().name("pty-write".into()).spawn(move || {
        while let Some(data) = rx.blocking_recv() {
            if writer.write_all(&data).and_then(|()| writer.flush()).is_err() {
                break;
            }
        }
    })?;
    Ok(tx)
}
