//! `tether-agent service`: runs an enrolled agent as a service of the machine's own manager, a
//! systemd unit on Linux (a user unit by default, a system unit running as a named user with
//! `--system`) or a LaunchAgent on macOS. The unit names only the config file: every secret
//! stays in the files `enroll` wrote, never on a command line. `--print` shows exactly what
//! `install` would write, and where.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// How long the manager waits for a stopping agent: well beyond its default drain grace, so
/// in-flight requests get their replies before anything is killed.
const STOP_TIMEOUT_SECS: u64 = crate::config::DEFAULT_SHUTDOWN_GRACE.as_secs() + 25;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the unit and enable and start it (`--print`: only show it).
    Install(InstallArgs),
    /// Stop, disable and remove the unit.
    Uninstall(Which),
    Start(Which),
    Stop(Which),
    Status(Which),
}

#[derive(Debug, Args)]
pub struct Which {
    /// The enrollment's name (as `tether-agent enroll` chose it: WS-AGENT, or its --name).
    #[arg(long)]
    name: String,
    /// A system unit instead of the user's own.
    #[arg(long)]
    system: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    which: Which,
    /// The agent's config file [default: the enrollment's agent.toml].
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --system: the user the agent runs as [default: the caller, via $SUDO_USER or $USER].
    #[arg(long)]
    user: Option<String>,
    /// Print the unit and its path; write nothing.
    #[arg(long)]
    print: bool,
}

impl InstallArgs {
    /// A user service for the enrollment `name` running `config`.
    pub fn for_enrollment(name: &str, config: &Path) -> InstallArgs {
        InstallArgs {
            which: Which { name: name.to_owned(), system: false },
            config: Some(config.to_owned()),
            user: None,
            print: false,
        }
    }
}

/// A unit to write: its path and content.
#[derive(Debug, PartialEq, Eq)]
pub struct Unit {
    pub path: PathBuf,
    pub content: String,
}

/// The systemd unit running `binary run --config config`.
pub fn systemd_unit(name: &str, binary: &Path, config: &Path, system_user: Option<&str>) -> String {
    let (user_line, wanted_by) = match system_user {
        Some(user) => (format!("User={user}\n"), "multi-user.target"),
        None => (String::new(), "default.target"),
    };
    format!(
        "[Unit]\n\
         Description=Tether agent ({name})\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         StartLimitIntervalSec=300\n\
         StartLimitBurst=10\n\
         \n\
         [Service]\n\
         Type=simple\n\
         {user_line}\
         ExecStart=\"{binary}\" run --config \"{config}\"\n\
         Restart=always\n\
         RestartSec=2\n\
         KillMode=mixed\n\
         TimeoutStopSec={STOP_TIMEOUT_SECS}\n\
         \n\
         [Install]\n\
         WantedBy={wanted_by}\n",
        binary = binary.display(),
        config = config.display(),
    )
}

/// The macOS LaunchAgent running `binary run --config config`.
pub fn launchd_plist(name: &str, binary: &Path, config: &Path) -> String {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{label}</string>
  <key>ProgramArguments</key>
  <array>
    <string>{binary}</string>
    <string>run</string>
    <string>--config</string>
    <string>{config}</string>
  </array>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><true/>
  <key>ExitTimeOut</key><integer>{STOP_TIMEOUT_SECS}</integer>
</dict>
</plist>
"#,
        label = escape(&launchd_label(name)),
        binary = escape(&binary.display().to_string()),
        config = escape(&config.display().to_string()),
    )
}

fn unit_name(name: &str) -> String {
    format!("tether-agent-{name}.service")
}

fn launchd_label(name: &str) -> String {
    format!("dev.tether.agent.{name}")
}

/// Where the unit of `which` lives and what it holds.
fn render(args: &InstallArgs) -> anyhow::Result<Unit> {
    let name = &args.which.name;
    if name.is_empty() || name.contains(['/', '\0', ' ']) {
        bail!("service name {name:?} must be a plain name");
    }
    let binary = std::env::current_exe().context("locating tether-agent")?;
    let config = match &args.config {
        Some(config) => std::path::absolute(config)?,
        None => directories::BaseDirs::new()
            .context("no home directory")?
            .config_dir()
            .join("tether")
            .join(name)
            .join("agent.toml"),
    };
    if !config.is_file() {
        bail!("no config file at {} (enroll first, or give --config)", config.display());
    }
    if cfg!(target_os = "macos") {
        let home = directories::BaseDirs::new().context("no home directory")?.home_dir().to_owned();
        let path = home.join("Library/LaunchAgents").join(format!("{}.plist", launchd_label(name)));
        return Ok(Unit { path, content: launchd_plist(name, &binary, &config) });
    }
    let user = match (args.which.system, &args.user) {
        (false, _) => None,
        (true, Some(user)) => Some(user.clone()),
        (true, None) => Some(
            std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .context("--system needs --user (no $SUDO_USER or $USER)")?,
        ),
    };
    Ok(Unit { path: unit_path(&args.which)?, content: systemd_unit(name, &binary, &config, user.as_deref()) })
}

fn unit_path(which: &Which) -> anyhow::Result<PathBuf> {
    Ok(if which.system {
        PathBuf::from("/etc/systemd/system").join(unit_name(&which.name))
    } else {
        directories::BaseDirs::new()
            .context("no home directory")?
            .config_dir()
            .join("systemd/user")
            .join(unit_name(&which.name))
    })
}

/// Runs one `service` command.
pub fn run(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Install(args) => {
            let unit = render(&args)?;
            if args.print {
                println!("# {}\n{}", unit.path.display(), unit.content);
                return Ok(());
            }
            if let Some(dir) = unit.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&unit.path, &unit.content)
                .with_context(|| format!("writing {}", unit.path.display()))?;
            manager(&args.which, &["daemon-reload"])?;
            manager(&args.which, &["enable", "--now", &unit_name(&args.which.name)])?;
            println!("installed and started {}", unit.path.display());
            if !args.which.system {
                println!("to keep it running while you are logged out: loginctl enable-linger $USER");
            }
            Ok(())
        }
        ServiceCommand::Uninstall(which) => {
            let _ = manager(&which, &["disable", "--now", &unit_name(&which.name)]);
            let path = unit_path(&which)?;
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            manager(&which, &["daemon-reload"])
        }
        ServiceCommand::Start(which) => manager(&which, &["start", &unit_name(&which.name)]),
        ServiceCommand::Stop(which) => manager(&which, &["stop", &unit_name(&which.name)]),
        ServiceCommand::Status(which) => manager(&which, &["status", "--no-pager", &unit_name(&which.name)]),
    }
}

fn manager(which: &Which, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("systemctl");
    if !which.system {
        cmd.arg("--user");
    }
    let status = cmd.args(args).status().context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_name_only_the_config_restart_always_and_outwait_the_drain() {
        let unit = systemd_unit(
            "acme-laptop",
            Path::new("/opt/tether agent"),
            Path::new("/home/u/agent.toml"),
            None,
        );
        assert!(
            unit.contains("ExecStart=\"/opt/tether agent\" run --config \"/home/u/agent.toml\"\n"),
            "{unit}"
        );
        assert!(unit.contains("Restart=always") && unit.contains("StartLimitBurst=10"), "{unit}");
        assert!(unit.contains("WantedBy=default.target") && !unit.contains("User="), "{unit}");
        let system = systemd_unit("x", Path::new("/b"), Path::new("/c"), Some("tether"));
        assert!(system.contains("User=tether\n") && system.contains("WantedBy=multi-user.target"));
        let plist = launchd_plist("a&b", Path::new("/b"), Path::new("/c"));
        assert!(
            plist.contains("<string>dev.tether.agent.a&amp;b</string>")
                && plist.contains("<key>KeepAlive</key><true/>")
        );
    }
}
