//! What the agent says about itself: the `Hello` published on every (re)connect. Capabilities
//! tell the truth: only what this build and configuration really serve is claimed.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tether_proto::pb;

use crate::config::Config;
use crate::sandbox::CommandCaps;

/// The parts of `Hello` fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Identity {
    pub machine_name: String,
    pub binary_sha256: String,
}

impl Identity {
    /// Reads the host name and hashes the running binary (blocking; call once at startup).
    pub fn detect() -> Identity {
        let machine_name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_owned());
        let binary_sha256 =
            std::env::current_exe().ok().and_then(|exe| sha256_file(&exe).ok()).unwrap_or_default();
        Identity { machine_name, binary_sha256 }
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Builds the `Hello` for `config`, with the workspace root as resolved by the path layer, the
/// server's negotiated `max_payload`, and how commands are confined and limited.
pub fn hello(
    config: &Config,
    identity: &Identity,
    workspace_root: &Path,
    max_payload: usize,
    commands: &CommandCaps,
) -> pb::Hello {
    pb::Hello {
        agent_id: config.subjects.agent_id().to_owned(),
        workspace_id: config.subjects.workspace_id().to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        os: os() as i32,
        arch: arch() as i32,
        machine_name: identity.machine_name.clone(),
        workspace_root: workspace_root.display().to_string(),
        capabilities: Some(capabilities(config, max_payload, commands)),
        update_channel: String::new(),
        resume_token: String::new(),
        binary_sha256: identity.binary_sha256.clone(),
    }
}

fn capabilities(config: &Config, max_payload: usize, commands: &CommandCaps) -> pb::Capabilities {
    let mut caps = pb::Capabilities {
        exec: commands.admitted,
        filesystem: true,
        git: false,
        pty: commands.admitted && config.relay.is_some(),
        desktop: false,
        consented_whole_machine: config.whole_machine,
        consented_screen_control: false,
        display: None,
        // Filled from the desktop the agent opened (`Desktop::fill`).
        desktop_unavailable_reason: String::new(),
        virtual_root: config.virtual_root.clone(),
        fence_scoped: true,
        max_payload: max_payload as u64,
        transfers: true,
        transfer_window: crate::ops::fs::TRANSFER_WINDOW,
        transfer_idle_ms: config.transfer_idle_timeout.as_millis() as u64,
        tree_sync: true,
        request_dedup: config.dedup.capability(),
        exec_stream: commands.admitted,
        exec_memory_bytes: config.exec.memory_bytes as u64,
        exec_spill_bytes: config.exec.spill_bytes,
        exec_window_bytes: config.exec.window_bytes,
        exec_retention_ms: config.exec.retention.as_millis() as u64,
        exec_retained: u32::try_from(config.exec.retained).unwrap_or(u32::MAX),
        ..Default::default()
    };
    commands.fill(&mut caps);
    caps
}

fn os() -> pb::Os {
    match std::env::consts::OS {
        "linux" => pb::Os::Linux,
        "macos" => pb::Os::Macos,
        "windows" => pb::Os::Windows,
        _ => pb::Os::Unspecified,
    }
}

fn arch() -> pb::Arch {
    match std::env::consts::ARCH {
        "x86_64" => pb::Arch::X8664,
        "aarch64" => pb::Arch::Aarch64,
        _ => pb::Arch::Unspecified,
    }
}
