//! A private sshd on a free loopback port that lets this user in with a throwaway key: the
//! baseline the benchmarks measure Tether against, since the sandbox backends Tether replaces
//! reach a machine over ssh (a command per `ssh`, files by `scp`, trees by `rsync` or tar).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Ssh {
    dir: tempfile::TempDir,
    port: u16,
    sshd: Child,
}

impl Ssh {
    /// Starts the sshd and waits until a login works; Err says why not (e.g. not installed).
    pub fn start() -> Result<Ssh, String> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"].into_iter().find(|p| Path::new(p).exists());
        let sshd = sshd.ok_or("sshd is not installed")?;
        which("ssh")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        for key in ["host", "user"] {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .map_err(|e| e.to_string())?;
            if !ok.success() {
                return Err("ssh-keygen failed".into());
            }
        }
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).map_err(|e| e.to_string())?;
        let _ = std::fs::create_dir_all("/run/sshd"); // privilege separation directory
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\nPermitRootLogin yes\n\
             PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {pid}\nSubsystem sftp internal-sftp\n",
            host = d.join("host").display(),
            auth = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| e.to_string())?;
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let ssh = Ssh { dir, port, sshd: child };
        for _ in 0..100 {
            if ssh.command("true").status().is_ok_and(|s| s.success()) {
                return Ok(ssh);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the private sshd did not let us in".into())
    }

    /// The options every client program takes, without the port (ssh says `-p`, scp `-P`).
    fn options(&self) -> Vec<String> {
        let key = self.dir.path().join("user");
        let mut args = vec!["-i".to_owned(), key.display().to_string()];
        for o in
            ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes", "LogLevel=ERROR"]
        {
            args.extend(["-o".to_owned(), o.to_owned()]);
        }
        args
    }

    /// `ssh` and its arguments up to (not including) the host.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_owned(), self.port.to_string()];
        args.extend(self.options());
        args
    }

    /// `ssh ... 127.0.0.1 <remote>`, ready to run.
    pub fn command(&self, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_args()).arg("127.0.0.1").arg(remote).stdin(Stdio::null());
        cmd
    }

    /// `ssh ...` as rsync's `-e` wants it.
    pub fn rsh(&self) -> String {
        format!("ssh {}", self.ssh_args().join(" "))
    }

    /// Time to copy `from` to `to` with `scp` (either may be `127.0.0.1:PATH`).
    pub fn scp(&self, from: &str, to: &str) -> Duration {
        let started = Instant::now();
        let ok = Command::new("scp")
            .args(["-q", "-P", &self.port.to_string()])
            .args(self.options())
            .args([from, to])
            .status()
            .expect("scp");
        assert!(ok.success(), "scp {from} {to} failed");
        started.elapsed()
    }

    /// Time for `rsync -a` over this ssh.
    pub fn rsync(&self, from: &str, to: &str) -> Duration {
        let started = Instant::now();
        let ok = Command::new("rsync").args(["-a", "-e", &self.rsh(), from, to]).status().expect("rsync");
        assert!(ok.success(), "rsync failed");
        started.elapsed()
    }

    /// Time for `tar -c LOCAL | ssh 'tar -x -C REMOTE'`.
    pub fn tar_over_ssh(&self, from: &Path, to: &Path) -> Duration {
        let started = Instant::now();
        let script = format!(
            "tar -C {} -cf - . | {} 127.0.0.1 'mkdir -p {to} && tar -C {to} -xf -'",
            from.display(),
            self.rsh(),
            to = to.display()
        );
        let ok = Command::new("sh").args(["-c", &script]).status().expect("tar | ssh | tar");
        assert!(ok.success(), "tar over ssh failed");
        started.elapsed()
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// Where `name` is on PATH, or why not.
pub fn which(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(format!("{name} is not installed"))
}
