//! `tether-agent enroll <bundle>`: turns the line an operator sent (`tetherctl enrollment
//! create`) into this machine's configuration. The bundle is checked first (expired, truncated
//! or altered: refused, nothing written); then its identity is tried against the NATS server
//! (the agent publishes to and receives on its own subjects, which is what its permissions
//! allow); only then are the files written: a config file and the credentials beside it, each
//! 0600 in a 0700 directory of their own per enrollment (`--name`), replacing an earlier
//! enrollment of that name as a whole.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use tether_proto::enrollment::Bundle;
use tether_proto::subjects::AgentSubjects;

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The bundle `tetherctl enrollment create` printed (or `-` to read it from stdin, which
    /// keeps it out of the shell history and the process list).
    bundle: String,
    /// This enrollment's name (a second workspace can be enrolled beside it) [default: WS-AGENT].
    #[arg(long)]
    name: Option<String>,
    /// Where enrollments live [default: the user's config dir, e.g. ~/.config/tether].
    #[arg(long, env = "TETHER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// The directory the agent lends [default: ~/tether/NAME].
    #[arg(long)]
    workspace_root: Option<PathBuf>,
    /// Also install and start the service (`tether-agent service install --name NAME`).
    #[arg(long)]
    service: bool,
}

/// Where an enrollment went.
#[derive(Debug)]
pub struct Enrolled {
    pub config_file: PathBuf,
    pub workspace_root: PathBuf,
}

/// Checks the bundle and the identity, then writes the enrollment.
pub async fn enroll(args: EnrollArgs) -> anyhow::Result<Enrolled> {
    let text = match args.bundle.as_str() {
        "-" => std::io::read_to_string(std::io::stdin()).context("reading the bundle from stdin")?,
        text => text.to_owned(),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let bundle =
        Bundle::decode(&text, now).context("the enrollment bundle was refused; nothing was written")?;
    let subjects = AgentSubjects::new(&bundle.workspace_id, &bundle.agent_id)?;
    let name = args.name.unwrap_or_else(|| format!("{}-{}", bundle.workspace_id, bundle.agent_id));
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        bail!("enrollment name {name:?} must be a plain file name");
    }
    try_identity(&bundle, &subjects).await?;

    let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
    let base = match args.config_dir {
        Some(dir) => dir,
        None => directories::BaseDirs::new().context("no home directory")?.config_dir().join("tether"),
    };
    let workspace_root = args.workspace_root.unwrap_or_else(|| home.join("tether").join(&name));
    std::fs::create_dir_all(&workspace_root)
        .with_context(|| format!("creating the workspace root {}", workspace_root.display()))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&base)?;
    let dir = base.join(&name);
    let staging = base.join(format!(".{name}.new"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    write_private(&staging.join("nats.nk"), &bundle.nkey_seed)?;
    if let Some(token) = &bundle.relay_token {
        write_private(&staging.join("relay.token"), token)?;
    }
    write_private(&staging.join("agent.toml"), &config_text(&bundle, &dir, &workspace_root)?)?;
    // Replace an earlier enrollment of the same name whole: set the old aside, move the new in.
    let old = base.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old)?;
    }
    std::fs::rename(&staging, &dir).with_context(|| format!("moving the enrollment to {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    let config_file = dir.join("agent.toml");
    if args.service {
        crate::service::run(crate::service::ServiceCommand::Install(
            crate::service::InstallArgs::for_enrollment(&name, &config_file),
        ))?;
    }
    Ok(Enrolled { config_file, workspace_root })
}

/// The config file of an enrollment living in `dir`.
fn config_text(bundle: &Bundle, dir: &Path, workspace_root: &Path) -> anyhow::Result<String> {
    let mut table = toml::Table::new();
    let mut set = |key: &str, value: toml::Value| {
        table.insert(key.to_owned(), value);
    };
    set("workspace_id", bundle.workspace_id.clone().into());
    set("agent_id", bundle.agent_id.clone().into());
    set("nats_url", bundle.nats_urls.iter().cloned().map(toml::Value::from).collect::<Vec<_>>().into());
    set("nats_nkey", path_value(&dir.join("nats.nk"))?);
    set("workspace_root", path_value(workspace_root)?);
    set("whole_machine", bundle.whole_machine.into());
    if let Some(url) = &bundle.relay_url {
        set("relay_url", url.clone().into());
        set("relay_token_file", path_value(&dir.join("relay.token"))?);
    }
    if bundle.consent_screen_control {
        let mut desktop = toml::Table::new();
        desktop.insert("consent_screen_control".into(), true.into());
        table.insert("desktop".into(), desktop.into());
    }
    Ok(format!(
        "# Written by `tether-agent enroll`; run with `tether-agent run --config <this file>`.\n{table}"
    ))
}

fn path_value(path: &Path) -> anyhow::Result<toml::Value> {
    Ok(path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?.to_owned().into())
}

/// Connects with the bundle's identity and sends a message to itself on its own subjects.
async fn try_identity(bundle: &Bundle, subjects: &AgentSubjects) -> anyhow::Result<()> {
    let urls: Vec<async_nats::ServerAddr> = bundle
        .nats_urls
        .iter()
        .map(|u| u.parse().with_context(|| format!("bad NATS url {u:?} in the bundle")))
        .collect::<anyhow::Result<_>>()?;
    let client = async_nats::ConnectOptions::with_nkey(bundle.nkey_seed.clone())
        .custom_inbox_prefix(subjects.inbox_prefix())
        .connection_timeout(Duration::from_secs(10))
        .connect(urls)
        .await
        .with_context(|| {
            format!("connecting to NATS at {} with the enrolled identity", bundle.nats_urls.join(","))
        })?;
    let subject = format!("{}.enroll-check", subjects.inbox_prefix());
    let mut echo = client.subscribe(subject.clone()).await?;
    client.publish(subject, "enroll".into()).await?;
    client.flush().await?;
    match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => bail!(
            "the NATS server did not deliver the agent's own message back: its permissions for {subjects}.> are missing (was the server reloaded after `tetherctl enrollment create`?)"
        ),
    }
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    tether_proto::enrollment::write_secret_file(path, content)
        .with_context(|| format!("creating {}", path.display()))
}
