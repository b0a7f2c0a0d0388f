//! `tetherctl enrollment create` and `tetherctl credentials control-plane`: per-identity NATS
//! credentials (a fresh NKey user each) and their least-privilege entries in the nats-server
//! authorization file (`nats_config`). The agent's seed and relay token leave only inside the
//! bundle, printed once on stdout and never logged; a control plane's seed goes to a 0600 file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tether_proto::enrollment::Bundle;
use tether_proto::token::{self, ProducerClaims};

use super::mint::{PRODUCER_SECRET_ENV, expiry, secret};
use super::nats_config::{self, Identity};

#[derive(Debug, Subcommand)]
pub enum EnrollmentCommand {
    /// Create an agent's NATS identity and print the one line that enrolls it
    /// (`tether-agent enroll <bundle>`); the relay token comes from TETHER_RELAY_PRODUCER_SECRET.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long, env = "TETHER_WORKSPACE_ID")]
    workspace_id: String,
    #[arg(long, env = "TETHER_AGENT_ID")]
    agent_id: String,
    /// The NATS URL(s) the agent will dial (repeatable).
    #[arg(long = "nats-url", required = true)]
    nats_urls: Vec<String>,
    /// The relay's /stream URL, for terminals and the desktop stream.
    #[arg(long)]
    relay_url: Option<String>,
    /// The agent may take screen control (desktop input).
    #[arg(long)]
    consent_screen_control: bool,
    /// The agent serves the whole machine, not only its workspace root.
    #[arg(long)]
    whole_machine: bool,
    /// How long the bundle may be used to enroll; the relay token lives 30 days longer.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    expires: Duration,
    /// The nats-server authorization file to add the agent's entry to (created if missing).
    #[arg(long)]
    server_config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Add a control-plane identity of a workspace and write its NKey seed to a 0600 file
    /// (use it with `tetherctl --nats-nkey FILE`).
    ControlPlane {
        #[arg(long, env = "TETHER_WORKSPACE_ID")]
        workspace_id: String,
        #[arg(long)]
        server_config: PathBuf,
        /// Where to write the seed (must not exist yet).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

/// Relay tokens of enrolled agents outlive the bundle by this much.
const RELAY_TOKEN_MARGIN: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn enrollment(command: EnrollmentCommand) -> anyhow::Result<()> {
    let EnrollmentCommand::Create(args) = command;
    let relay_token = match &args.relay_url {
        Some(_) => {
            let claims = ProducerClaims {
                workspace_id: args.workspace_id.clone(),
                agent_id: args.agent_id.clone(),
                exp: expiry(args.expires + RELAY_TOKEN_MARGIN),
            };
            Some(token::mint_producer(&secret(PRODUCER_SECRET_ENV)?, &claims))
        }
        None => None,
    };
    // Checked by the same rules the agent applies, before anything is written.
    tether_proto::subjects::AgentSubjects::new(&args.workspace_id, &args.agent_id)?;
    let key = nkeys::KeyPair::new_user();
    let identity =
        Identity::Agent { workspace_id: args.workspace_id.clone(), agent_id: args.agent_id.clone() };
    nats_config::upsert(&args.server_config, &identity, &key.public_key())?;
    let bundle = Bundle {
        workspace_id: args.workspace_id,
        agent_id: args.agent_id,
        nats_urls: args.nats_urls,
        nkey_seed: key.seed().context("encoding the NKey seed")?,
        relay_url: args.relay_url,
        relay_token,
        consent_screen_control: args.consent_screen_control,
        whole_machine: args.whole_machine,
        expires_at: expiry(args.expires),
    };
    eprintln!(
        "added agent {}/{} to {} (reload nats-server: nats-server --signal reload); on the machine, run:",
        bundle.workspace_id,
        bundle.agent_id,
        args.server_config.display()
    );
    println!("tether-agent enroll {}", bundle.encode());
    Ok(())
}

pub fn credentials(command: CredentialsCommand) -> anyhow::Result<()> {
    let CredentialsCommand::ControlPlane { workspace_id, server_config, output } = command;
    tether_proto::subjects::AgentSubjects::new(&workspace_id, "control-plane")?;
    let key = nkeys::KeyPair::new_user();
    write_private(&output, &key.seed().context("encoding the NKey seed")?)?;
    nats_config::upsert(
        &server_config,
        &Identity::ControlPlane { workspace_id: workspace_id.clone() },
        &key.public_key(),
    )?;
    eprintln!(
        "added a control plane of workspace {workspace_id} to {}; its seed is in {} (tetherctl --nats-nkey {})",
        server_config.display(),
        output.display(),
        output.display()
    );
    Ok(())
}

/// Creates `path` readable by its owner only, with `content`; refuses to replace a file.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    tether_proto::enrollment::write_secret_file(path, content)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))
}
