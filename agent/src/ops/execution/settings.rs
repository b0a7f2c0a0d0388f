//! The configuration of long-running commands: `tether-agent run` flags (also in the
//! environment) and the config file's `[exec]` table, resolved into [`ExecSettings`].

use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Least output kept in memory per execution.
pub const MIN_MEMORY: u64 = 8 << 20;

/// `tether-agent run` flags of long-running commands.
#[derive(Debug, Default, Clone, Args)]
pub struct ExecArgs {
    /// Output of one long-running command kept in memory [default: 8M, min 8M].
    #[arg(long, env = "TETHER_EXEC_MEMORY", value_parser = crate::size::parse)]
    pub exec_memory: Option<u64>,
    /// Further output of one long-running command kept in the state directory before the
    /// oldest is dropped (readers are told how much); 0 = none [default: 256M].
    #[arg(long, env = "TETHER_EXEC_SPILL", value_parser = crate::size::parse)]
    pub exec_spill: Option<u64>,
    /// Unacknowledged output an attached reader may fall behind before the command's pipes
    /// stop being read [default: 8M, at most --exec-memory].
    #[arg(long, env = "TETHER_EXEC_WINDOW", value_parser = crate::size::parse)]
    pub exec_window: Option<u64>,
    /// How long an ended long-running command is kept for late readers [default: 1h].
    #[arg(long, env = "TETHER_EXEC_RETENTION", value_parser = humantime::parse_duration)]
    pub exec_retention: Option<Duration>,
    /// How many ended long-running commands are kept [default: 256].
    #[arg(long, env = "TETHER_EXEC_RETAINED")]
    pub exec_retained: Option<usize>,
}

/// The config file's `[exec]` table: the same settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecFile {
    #[serde(default, with = "crate::size::serde_opt")]
    memory: Option<u64>,
    #[serde(default, with = "crate::size::serde_opt")]
    spill: Option<u64>,
    #[serde(default, with = "crate::size::serde_opt")]
    window: Option<u64>,
    #[serde(default, with = "crate::config::humantime_serde_opt")]
    retention: Option<Duration>,
    retained: Option<usize>,
}

/// Sizes and retention of long-running commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// Output of one execution kept in memory (at least 8 MiB).
    pub memory_bytes: usize,
    /// More output kept in spill files before the oldest is dropped; 0 = none.
    pub spill_bytes: u64,
    /// Default flow-control window of an attachment.
    pub window_bytes: u64,
    /// How long an ended execution is kept.
    pub retention: Duration,
    /// How many ended executions are kept.
    pub retained: usize,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            memory_bytes: MIN_MEMORY as usize,
            spill_bytes: 256 << 20,
            window_bytes: 8 << 20,
            retention: Duration::from_secs(3600),
            retained: 256,
        }
    }
}

impl ExecSettings {
    /// Flags over the file over the defaults.
    pub fn resolve(args: ExecArgs, file: ExecFile) -> anyhow::Result<ExecSettings> {
        let d = ExecSettings::default();
        let memory = args.exec_memory.or(file.memory).unwrap_or(MIN_MEMORY);
        if memory < MIN_MEMORY {
            anyhow::bail!("exec memory must be at least 8M");
        }
        let memory_bytes =
            usize::try_from(memory).map_err(|_| anyhow::anyhow!("exec memory is too large"))?;
        let window_bytes = args.exec_window.or(file.window).unwrap_or(d.window_bytes).clamp(64 << 10, memory);
        Ok(ExecSettings {
            memory_bytes,
            spill_bytes: args.exec_spill.or(file.spill).unwrap_or(d.spill_bytes),
            window_bytes,
            retention: args.exec_retention.or(file.retention).unwrap_or(d.retention),
            retained: args.exec_retained.or(file.retained).unwrap_or(d.retained),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_memory_has_a_floor() {
        let file: ExecFile = toml::from_str("memory = \"16M\"\nretention = \"10m\"\nretained = 3").unwrap();
        let args = ExecArgs { exec_spill: Some(0), ..Default::default() };
        let s = ExecSettings::resolve(args, file).unwrap();
        assert_eq!((s.memory_bytes, s.spill_bytes, s.retained), (16 << 20, 0, 3));
        assert_eq!(s.retention, Duration::from_secs(600));
        let small = ExecArgs { exec_memory: Some(1 << 20), ..Default::default() };
        assert!(ExecSettings::resolve(small, ExecFile::default()).is_err());
    }
}
