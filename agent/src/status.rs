//! `tether-agent status`: what an operator (or the person lending the machine) wants to know at
//! a glance. A running agent keeps `<state_dir>/status.json` current (at start, on every NATS
//! connect and disconnect, and with every heartbeat); `status` reads it, tells from the state
//! lock whether that agent is still running, and tries the relay's port from this machine.
//! Nothing in the file is secret: URLs lose their user and password, fence scopes are shown by
//! their log label.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

const STATUS_FILE: &str = "status.json";

/// The agent's own account of itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub workspace_id: String,
    pub agent_id: String,
    pub nats_urls: Vec<String>,
    pub nats_connected: bool,
    /// Unix seconds of the last connect or disconnect.
    pub nats_since: u64,
    pub relay_url: Option<String>,
    pub consent_screen_control: bool,
    pub whole_machine: bool,
    pub commands_confined: bool,
    pub landlock_abi: u32,
    /// (scope label, held epoch).
    pub held_epochs: Vec<(String, u32)>,
    /// Unix seconds of the last write.
    pub updated: u64,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// `nats://user:pass@host:4222` without its user and password.
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            format!("{scheme}://{}", &rest[at - scheme.len() - 3 + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Writes the status atomically (temp file, rename); failures are logged, never fatal.
pub fn write(state_dir: &Path, status: &Status) {
    let result = (|| -> std::io::Result<()> {
        let temp = state_dir.join(".status.json.tmp");
        std::fs::write(&temp, serde_json::to_vec_pretty(status)?)?;
        std::fs::rename(&temp, state_dir.join(STATUS_FILE))
    })();
    if let Err(e) = result {
        tracing::debug!(error = %e, "writing status.json failed");
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, env = "TETHER_STATE_DIR", required_unless_present = "config")]
    state_dir: Option<PathBuf>,
    /// Or the agent's config file (its state_dir, or the default for its ids).
    #[arg(long, env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the status; fails when the agent never ran on that state directory.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let state_dir = match (args.state_dir, args.config) {
        (Some(dir), _) => dir,
        (None, Some(config)) => crate::config::state_dir_of(&config)?,
        (None, None) => anyhow::bail!("give --state-dir or --config"),
    };
    let path = state_dir.join(STATUS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no agent has run on {} ({} is missing)", state_dir.display(), path.display())
    })?;
    let status: Status =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let running = crate::state_lock::StateLock::acquire(&state_dir).is_err();
    let relay = status.relay_url.as_deref().map(|url| (url.to_owned(), reachable(url)));
    if args.json {
        let mut value = serde_json::to_value(&status)?;
        value["running"] = running.into();
        value["relay_reachable"] = relay.as_ref().map(|(_, ok)| *ok).into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let ago = |t: u64| format!("{} s ago", now_unix().saturating_sub(t));
    println!("agent      {}/{} (tether-agent {})", status.workspace_id, status.agent_id, status.version);
    println!(
        "running    {}",
        if running {
            format!("yes, pid {}", status.pid)
        } else {
            format!("no (last seen {})", ago(status.updated))
        }
    );
    println!(
        "nats       {} ({} since {})",
        status.nats_urls.join(","),
        if status.nats_connected { "connected" } else { "disconnected" },
        ago(status.nats_since)
    );
    match relay {
        Some((url, ok)) => println!("relay      {url} ({})", if ok { "reachable" } else { "NOT reachable" }),
        None => println!("relay      none (no terminals or desktop stream)"),
    }
    println!(
        "consents   screen control: {}, whole machine: {}",
        yes(status.consent_screen_control),
        yes(status.whole_machine)
    );
    println!(
        "commands   {}",
        if status.commands_confined {
            format!("confined (Landlock ABI {})", status.landlock_abi)
        } else {
            "NOT confined".into()
        }
    );
    if status.held_epochs.is_empty() {
        println!("epochs     none held");
    }
    for (scope, epoch) in &status.held_epochs {
        println!("epoch      {scope}: {epoch}");
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Whether a TCP connection to the relay URL's host and port opens within 2 s.
fn reachable(url: &str) -> bool {
    let Ok(uri) = url.parse::<tokio_tungstenite::tungstenite::http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let port =
        uri.port_u16().unwrap_or(if matches!(uri.scheme_str(), Some("wss" | "https")) { 443 } else { 80 });
    use std::net::ToSocketAddrs;
    let Ok(addrs) = (host, port).to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_url("nats://user:pa@ss@host:4222"), "nats://host:4222");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        assert_eq!(redact_url("tls://t0ken@nats.example.com"), "tls://nats.example.com");
    }
}
