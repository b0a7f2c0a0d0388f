//! `tetherctl mint-token`: producer (`ogr_`) and viewer (`ogs_`) tokens for operators, signed
//! with the relay's secrets from the environment, and the viewer token `tetherctl shell` mints
//! for itself. The format is `tether_proto::token`'s, the one the relay verifies. Every viewer
//! token gets a fresh viewerId: the relay tells live viewers apart by sessionId/viewerId, and of
//! two viewers sharing one, one would have its input dropped as a repeat.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tether_client::pb;
use tether_client::viewer::new_viewer_id;
use tether_proto::token::{self, ProducerClaims, ViewerClaims, ViewerMode};

/// Environment variable with the relay's producer secret.
pub const PRODUCER_SECRET_ENV: &str = "TETHER_RELAY_PRODUCER_SECRET";
/// Environment variable with the relay's viewer secret.
pub const VIEWER_SECRET_ENV: &str = "TETHER_RELAY_VIEWER_SECRET";

#[derive(Debug, Args)]
pub struct MintArgs {
    #[command(subcommand)]
    kind: TokenKind,
    /// How long the token is valid, e.g. 1h, 30d.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    ttl: Duration,
}

#[derive(Debug, Subcommand)]
enum TokenKind {
    /// An `ogr_` token for the agent (--workspace-id, --agent-id), from TETHER_RELAY_PRODUCER_SECRET.
    Producer,
    /// An `ogs_` token for a viewer of the workspace, from TETHER_RELAY_VIEWER_SECRET.
    Viewer {
        /// Logical port: 7681 terminals, 6080 desktop.
        #[arg(long, default_value_t = tether_proto::PTY_PORT)]
        port: u32,
        /// "control" may drive a desktop; on terminals both modes type.
        #[arg(long, value_parser = ["view", "control"], default_value = "control")]
        mode: String,
        /// A spectator: the relay drops everything this viewer sends.
        #[arg(long)]
        read_only: bool,
        /// Only this channel (default: any channel of the agent on that port).
        #[arg(long)]
        channel: Option<String>,
        /// Session id claim (whose input the relay deduplicates after a resume).
        #[arg(long, default_value = "tetherctl")]
        session: String,
        /// Lease epoch claim; a newer one fences viewers holding an older one.
        #[arg(long, default_value_t = 0)]
        lease_epoch: u64,
    },
}

/// Prints the token on stdout.
pub fn run(args: MintArgs, workspace_id: Option<&str>, agent_id: Option<&str>) -> anyhow::Result<()> {
    let ws = workspace_id.context("missing --workspace-id (or TETHER_WORKSPACE_ID)")?;
    let agent = agent_id.context("missing --agent-id (or TETHER_AGENT_ID)")?;
    let exp = expiry(args.ttl);
    let token = match args.kind {
        TokenKind::Producer => {
            let claims = ProducerClaims { workspace_id: ws.into(), agent_id: agent.into(), exp };
            token::mint_producer(&secret(PRODUCER_SECRET_ENV)?, &claims)
        }
        TokenKind::Viewer { port, mode, read_only, channel, session, lease_epoch } => {
            let claims = ViewerClaims {
                lease_epoch,
                mode: if mode == "view" { ViewerMode::View } else { ViewerMode::Control },
                channel_id: channel,
                read_only,
                ..viewer_claims(ws, agent, port, &session, args.ttl)
            };
            token::mint_viewer(&secret(VIEWER_SECRET_ENV)?, &claims)
        }
    };
    println!("{token}");
    Ok(())
}

/// A viewer token of `mode` for exactly `channel`, valid for `ttl`, signed with `secret`.
pub fn channel_viewer_token(
    secret: &[u8],
    channel: &pb::StreamChannel,
    session_id: &str,
    ttl: Duration,
    mode: ViewerMode,
) -> String {
    let claims = ViewerClaims {
        channel_id: Some(channel.channel_id.clone()),
        mode,
        ..viewer_claims(&channel.workspace_id, &channel.agent_id, channel.port, session_id, ttl)
    };
    token::mint_viewer(secret, &claims)
}

/// A control viewer of any channel of `agent` on `port`, valid for `ttl`, with a viewerId of its
/// own (the relay tells live viewers apart by sessionId/viewerId).
fn viewer_claims(ws: &str, agent: &str, port: u32, session_id: &str, ttl: Duration) -> ViewerClaims {
    ViewerClaims {
        workspace_id: ws.into(),
        session_id: session_id.into(),
        viewer_id: new_viewer_id("tetherctl"),
        lease_epoch: 0,
        mode: ViewerMode::Control,
        port,
        exp: expiry(ttl),
        subject_id: None,
        authority_epoch: None,
        agent_id: Some(agent.into()),
        channel_id: None,
        read_only: false,
    }
}

pub(super) fn secret(env: &str) -> anyhow::Result<Vec<u8>> {
    match std::env::var(env) {
        Ok(s) if !s.is_empty() => Ok(s.into_bytes()),
        _ => bail!("{env} is not set: it holds the relay secret that signs these tokens"),
    }
}

pub(super) fn expiry(ttl: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    now + ttl.as_secs().max(1)
}
