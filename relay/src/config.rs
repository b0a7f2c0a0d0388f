//! Command line, environment and secret files -> one `RelayConfig`. Secrets are read from the
//! environment or from files named on the command line, never from argv itself, and are kept in
//! a type whose `Debug` does not print them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

/// Environment variable holding the producer (`ogr_`) secret.
pub const PRODUCER_SECRET_ENV: &str = "TETHER_RELAY_PRODUCER_SECRET";
/// Environment variable holding the viewer (`ogs_`) secret.
pub const VIEWER_SECRET_ENV: &str = "TETHER_RELAY_VIEWER_SECRET";

/// An HMAC key. Its `Debug` is redacted so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Everything the relay needs to run.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub bind: SocketAddr,
    pub producer_secret: Secret,
    pub viewer_secret: Secret,
    /// How long a new connection may take to send its StreamOpen.
    pub handshake_timeout: Duration,
    /// Byte bound of each direction's replay ring, per channel.
    pub ring_bytes: usize,
    /// Bytes a viewer may leave unread before the producer is held back for it.
    pub viewer_queue_bytes: usize,
    /// How long a full viewer queue may hold the producer back before that viewer is dropped.
    pub stall_grace: Duration,
    /// How long a channel with neither producer nor viewer keeps its state.
    pub reap_after: Duration,
    /// Largest websocket message accepted.
    pub max_message_bytes: usize,
    /// Connections that may be in their handshake at once; more are refused (503) at upgrade.
    pub max_pending_opens: usize,
    /// How long shutdown waits for peers to receive their StreamClose.
    pub shutdown_grace: Duration,
    /// Average bytes per second one producer may send (0 = unlimited); faster ones are slowed.
    pub producer_rate: u64,
    /// How long a connection may take to send a request head.
    pub header_read_timeout: Duration,
    /// Connections served in full at once; more go to the overflow lane (`accept`).
    pub max_connections: usize,
    /// Of those, connections from one source address.
    pub max_connections_per_address: usize,
    /// Connections from one source address in their handshake at once.
    pub max_pending_opens_per_address: usize,
    /// Channels no producer has opened yet that one viewer token may wait on at once.
    pub max_waits_per_token: usize,
    /// Viewer input a channel without a producer holds; past it viewers are read no further.
    pub unclaimed_input_bytes: usize,
    /// How long a live producer has to answer the ping sent when another connection claims its
    /// channel; one that does not is replaced, one that does keeps the channel.
    pub producer_probe_timeout: Duration,
    /// Cluster mode: replicas sharing one NATS (`None`: the relay works alone).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl RelayConfig {
    /// Defaults for everything but the secrets (used by tests and embedders).
    pub fn with_secrets(producer_secret: Secret, viewer_secret: Secret) -> Self {
        RelayConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 8443)),
            producer_secret,
            viewer_secret,
            handshake_timeout: Duration::from_secs(5),
            ring_bytes: 4 << 20,
            viewer_queue_bytes: 1 << 20,
            stall_grace: Duration::from_secs(5),
            reap_after: Duration::from_secs(60),
            max_message_bytes: 1 << 20,
            max_pending_opens: 1024,
            shutdown_grace: Duration::from_secs(5),
            producer_rate: 32 << 20,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 4096,
            max_connections_per_address: 256,
            max_pending_opens_per_address: 32,
            max_waits_per_token: 16,
            unclaimed_input_bytes: 64 << 10,
            producer_probe_timeout: Duration::from_secs(3),
            cluster: None,
        }
    }
}

/// `tether-relay`: pairs agent producer channels with viewers over websockets.
///
/// Secrets come from TETHER_RELAY_PRODUCER_SECRET and TETHER_RELAY_VIEWER_SECRET, or from the
/// files named by --producer-secret-file / --viewer-secret-file; never from the command line.
#[derive(Debug, Parser)]
#[command(name = "tether-relay", version)]
pub struct Cli {
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, env = "TETHER_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "TETHER_RELAY_BIND", default_value = "0.0.0.0:8443")]
    pub bind: SocketAddr,
    /// File holding the producer (ogr_) token secret.
    #[arg(long, env = "TETHER_RELAY_PRODUCER_SECRET_FILE")]
    pub producer_secret_file: Option<PathBuf>,
    /// File holding the viewer (ogs_) token secret.
    #[arg(long, env = "TETHER_RELAY_VIEWER_SECRET_FILE")]
    pub viewer_secret_file: Option<PathBuf>,
    /// How long a connection may take to send its StreamOpen.
    #[arg(long, env = "TETHER_RELAY_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Replay ring size per channel and direction (bytes; K/KiB/M/MiB suffixes allowed).
    #[arg(long, env = "TETHER_RELAY_RING_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub ring_bytes: usize,
    /// Bytes a viewer may leave unread before the producer waits for it.
    #[arg(long, env = "TETHER_RELAY_VIEWER_QUEUE_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub viewer_queue_bytes: usize,
    /// How long a viewer with a full queue may hold the producer back before it is dropped.
    #[arg(long, env = "TETHER_RELAY_STALL_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stall_grace: Duration,
    /// How long a channel with no producer and no viewer keeps its buffers.
    #[arg(long, env = "TETHER_RELAY_REAP_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reap_after: Duration,
    /// Largest websocket message accepted (bytes).
    #[arg(long, env = "TETHER_RELAY_MAX_MESSAGE_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_message_bytes: usize,
    /// Connections that may be in their handshake (before a verified StreamOpen) at once; more
    /// are refused with 503. With --max-message-bytes, bounds what unauthenticated peers hold.
    #[arg(long, env = "TETHER_RELAY_MAX_PENDING_OPENS", default_value_t = 1024)]
    pub max_pending_opens: usize,
    /// How long shutdown waits for peers to take their StreamClose.
    #[arg(long, env = "TETHER_RELAY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Average bytes per second one producer may send (0 = unlimited); a faster one is slowed
    /// down (its socket is read more slowly), never dropped.
    #[arg(long, env = "TETHER_RELAY_PRODUCER_RATE", default_value = "32MiB", value_parser = parse_bytes)]
    pub producer_rate: usize,
    /// How long a TCP connection may take to send its HTTP request head (the websocket upgrade
    /// included); slower or idle connections are closed.
    #[arg(long, env = "TETHER_RELAY_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Connections served at once (viewers, producers, HTTP). Connections over this or the
    /// per-address cap get /healthz and /metrics only (64 at a time), then are closed.
    #[arg(long, env = "TETHER_RELAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections served at once from one source address (an IPv6 /64 counts as one). Behind
    /// a reverse proxy every connection comes from the proxy: raise it to --max-connections.
    #[arg(long, env = "TETHER_RELAY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,
    /// Connections from one source address that may be in their handshake at once.
    #[arg(long, env = "TETHER_RELAY_MAX_PENDING_OPENS_PER_ADDRESS", default_value_t = 32)]
    pub max_pending_opens_per_address: usize,
    /// Channels no producer has opened yet that one viewer token may wait on at once; more
    /// are refused (retryable) until a producer arrives or a wait ends.
    #[arg(long, env = "TETHER_RELAY_MAX_WAITS_PER_TOKEN", default_value_t = 16)]
    pub max_waits_per_token: usize,
    /// Viewer input a channel holds while it has no producer (bytes); past it the relay stops
    /// reading that channel's viewers until a producer takes the input.
    #[arg(long, env = "TETHER_RELAY_UNCLAIMED_INPUT_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub unclaimed_input_bytes: usize,
    /// How long a producer has to answer a ping when another connection opens its channel: one
    /// that answers keeps the channel (the newcomer is refused, retryable), one that does not
    /// is presumed dead and replaced.
    #[arg(long, env = "TETHER_RELAY_PRODUCER_PROBE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub producer_probe_timeout: Duration,
    /// Join a cluster of relay replicas through this NATS (comma-separated URLs): a viewer may
    /// then land on any replica, whichever holds the producer. Without it the relay works alone.
    #[arg(long, env = "TETHER_RELAY_NATS_URL")]
    pub nats_url: Option<String>,
    /// Subject prefix of the relay's own NATS subjects (one or more dot-separated tokens).
    #[arg(long, env = "TETHER_RELAY_NATS_PREFIX", default_value = "relay")]
    pub nats_prefix: String,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long, env = "TETHER_RELAY_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding an NKey seed to authenticate to NATS with.
    #[arg(long, env = "TETHER_RELAY_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(long, env = "TETHER_RELAY_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server with; makes TLS required.
    #[arg(long, env = "TETHER_RELAY_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
}

impl Cli {
    /// Resolves secrets (`env` looks a variable up) and checks the numbers make sense.
    pub fn into_config(self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<RelayConfig> {
        let producer_secret = secret(
            "producer",
            env(PRODUCER_SECRET_ENV),
            PRODUCER_SECRET_ENV,
            self.producer_secret_file.as_deref(),
        )?;
        let viewer_secret =
            secret("viewer", env(VIEWER_SECRET_ENV), VIEWER_SECRET_ENV, self.viewer_secret_file.as_deref())?;
        let counts = [
            ("--ring-bytes", self.ring_bytes),
            ("--viewer-queue-bytes", self.viewer_queue_bytes),
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-pending-opens", self.max_pending_opens),
            ("--max-connections", self.max_connections),
            ("--max-connections-per-address", self.max_connections_per_address),
            ("--max-pending-opens-per-address", self.max_pending_opens_per_address),
            ("--max-waits-per-token", self.max_waits_per_token),
            ("--unclaimed-input-bytes", self.unclaimed_input_bytes),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            bail!("{flag} must be positive");
        }
        let durations = [
            ("--handshake-timeout", self.handshake_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--producer-probe-timeout", self.producer_probe_timeout),
        ];
        if let Some((flag, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            bail!("{flag} must be positive");
        }
        let cluster = match &self.nats_url {
            None => None,
            Some(url) => Some(crate::cluster::ClusterConfig::new(
                url,
                &self.nats_prefix,
                self.nats_creds.clone(),
                self.nats_nkey.clone(),
                self.nats_token_file.as_deref(),
                self.nats_tls_ca.clone(),
            )?),
        };
        Ok(RelayConfig {
            cluster,
            bind: self.bind,
            producer_secret,
            viewer_secret,
            handshake_timeout: self.handshake_timeout,
            ring_bytes: self.ring_bytes,
            viewer_queue_bytes: self.viewer_queue_bytes,
            stall_grace: self.stall_grace,
            reap_after: self.reap_after,
            max_message_bytes: self.max_message_bytes,
            max_pending_opens: self.max_pending_opens,
            shutdown_grace: self.shutdown_grace,
            producer_rate: self.producer_rate as u64,
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_pending_opens_per_address: self.max_pending_opens_per_address,
            max_waits_per_token: self.max_waits_per_token,
            unclaimed_input_bytes: self.unclaimed_input_bytes,
            producer_probe_timeout: self.producer_probe_timeout,
        })
    }
}

fn secret(
    what: &str,
    from_env: Option<String>,
    env_name: &str,
    file: Option<&Path>,
) -> anyhow::Result<Secret> {
    let value = match (from_env.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(path)) => bail!(
            "the {what} secret is given twice ({env_name} and --{what}-secret-file {}); set only one",
            path.display()
        ),
        (Some(v), None) => v.into_bytes(),
        (None, Some(path)) => {
            let mut bytes = std::fs::read(path)
                .with_context(|| format!("reading the {what} secret file {}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        (None, None) => bail!("no {what} secret: set {env_name} or pass --{what}-secret-file"),
    };
    if value.is_empty() {
        bail!("the {what} secret is empty");
    }
    Ok(Secret(value))
}

/// Parses a byte count: `1048576`, `64K`, `64KiB`, `4M`, `4MiB`, `1G`, `1GiB`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a byte count (e.g. 65536, 64KiB, 4MiB)"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown byte unit {other:?} (use K/KiB, M/MiB or G/GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["tether-relay"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn secrets_come_from_env_or_files_never_both() {
        let env = env_with(&[(PRODUCER_SECRET_ENV, "p"), (VIEWER_SECRET_ENV, "v")]);
        let c = cli(&["--bind", "127.0.0.1:0"]).into_config(&env).unwrap();
        assert_eq!(c.producer_secret.bytes(), b"p");
        assert_eq!(c.viewer_secret.bytes(), b"v");
        assert_eq!(c.bind.port(), 0);
        assert!(!format!("{c:?}").contains("\"p\""));

        let dir = std::env::temp_dir().join(format!("tether-relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("viewer");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let env = env_with(&[(PRODUCER_SECRET_ENV, "p")]);
        let c = cli(&["--viewer-secret-file", file.to_str().unwrap()]).into_config(&env).unwrap();
        assert_eq!(c.viewer_secret.bytes(), b"from-file");

        let env = env_with(&[(PRODUCER_SECRET_ENV, "p"), (VIEWER_SECRET_ENV, "v")]);
        let err = cli(&["--viewer-secret-file", file.to_str().unwrap()]).into_config(&env).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
        let err = cli(&[]).into_config(env_with(&[(PRODUCER_SECRET_ENV, "p")])).unwrap_err();
        assert!(err.to_string().contains(VIEWER_SECRET_ENV), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn defaults_match_the_contract() {
        let env = env_with(&[(PRODUCER_SECRET_ENV, "p"), (VIEWER_SECRET_ENV, "v")]);
        let c = cli(&[]).into_config(env).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0:8443");
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.ring_bytes, 4 << 20);
        let defaults = RelayConfig::with_secrets(Secret::new("p"), Secret::new("v"));
        assert_eq!(
            (c.header_read_timeout, c.max_connections, c.max_connections_per_address),
            (defaults.header_read_timeout, defaults.max_connections, defaults.max_connections_per_address)
        );
        assert_eq!(
            (c.max_waits_per_token, c.unclaimed_input_bytes, c.producer_probe_timeout),
            (defaults.max_waits_per_token, defaults.unclaimed_input_bytes, defaults.producer_probe_timeout)
        );
        let env = env_with(&[(PRODUCER_SECRET_ENV, "p"), (VIEWER_SECRET_ENV, "v")]);
        let err = cli(&["--max-connections-per-address", "0"]).into_config(env).unwrap_err();
        assert!(err.to_string().contains("--max-connections-per-address"), "{err}");
    }

    #[test]
    fn byte_counts_parse() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("4M"), Ok(4 << 20));
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }
}
