//! One `Config` value from three sources, in precedence order: command-line flags, then
//! `TETHER_*` environment variables, then the TOML file named by `--config`. Secrets (NATS
//! token and password) come only from the environment or from files, never from argv, and
//! are wrapped in [`Secret`] so that no `Debug` or log line can print them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use tether_proto::subjects::AgentSubjects;

/// Environment variables that carry credentials. Children of the agent never see them.
pub const SECRET_ENV_VARS: &[&str] =
    &["TETHER_NATS_TOKEN", "TETHER_NATS_PASSWORD", "TETHER_RELAY_TOKEN", "NATS_TOKEN", "NATS_PASSWORD"];

/// `tether-agent run` flags. Every one can also come from the environment (named beside it)
/// or from the config file (same name with underscores).
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL; repeat (or comma-separate) for a cluster.
    #[arg(long = "nats-url", env = "TETHER_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// Workspace id (one NATS token).
    #[arg(long, env = "TETHER_WORKSPACE_ID")]
    pub workspace_id: Option<String>,
    /// Agent id (one NATS token).
    #[arg(long, env = "TETHER_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Directory that `virtual_root` maps to [default: current directory].
    #[arg(long, env = "TETHER_WORKSPACE_ROOT")]
    pub workspace_root: Option<PathBuf>,
    /// Path prefix a control plane uses for the workspace root [default: /workspace].
    #[arg(long, env = "TETHER_VIRTUAL_ROOT")]
    pub virtual_root: Option<String>,
    /// Where the agent keeps durable state (held epochs) [default: the user's data dir].
    #[arg(long, env = "TETHER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Consent to whole-machine access: lifts path confinement to the workspace root.
    #[arg(long, env = "TETHER_WHOLE_MACHINE", num_args = 0..=1, default_missing_value = "true")]
    pub whole_machine: Option<bool>,
    /// Reject epoch 0 in enforced fence scopes.
    #[arg(long, env = "TETHER_STRICT_FENCING", num_args = 0..=1, default_missing_value = "true")]
    pub strict_fencing: Option<bool>,
    /// Enforce epochs of requests that carry no fence_scope (one session per machine).
    #[arg(long, env = "TETHER_FENCE_UNSCOPED", num_args = 0..=1, default_missing_value = "true")]
    pub fence_unscoped: Option<bool>,
    /// Heartbeat period, e.g. "5s" or "500ms" [default: 5s].
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Requests served at once; more get DRAINING (retryable) [default: 64].
    #[arg(long, env = "TETHER_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// How long shutdown waits for in-flight requests before cancelling them [default: 5s].
    #[arg(long, env = "TETHER_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Let commands run without a kernel sandbox when this kernel has no Landlock (confined mode
    /// only; without it such an agent refuses exec with CONSENT_REQUIRED).
    #[arg(long, env = "TETHER_ALLOW_UNCONFINED_COMMANDS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_unconfined_commands: Option<bool>,
    /// Let confined commands connect to the TCP ports of the agent's NATS servers and relay,
    /// which they cannot where Landlock confines TCP (Linux 6.7+).
    #[arg(long, env = "TETHER_ALLOW_AGENT_SERVER_PORTS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_agent_server_ports: Option<bool>,
    /// Extra path commands may read and execute in confined mode (repeatable, or comma-separated);
    /// replaces `confine.read` of the config file.
    #[arg(long = "confine-read", env = "TETHER_CONFINE_READ", value_delimiter = ',')]
    pub confine_read: Vec<PathBuf>,
    /// Extra path commands may read, write and create in, in confined mode (repeatable, or
    /// comma-separated); replaces `confine.write` of the config file.
    #[arg(long = "confine-write", env = "TETHER_CONFINE_WRITE", value_delimiter = ',')]
    pub confine_write: Vec<PathBuf>,
    /// Most processes one command may have at once; 0 = no cap [default: 512].
    #[arg(long, env = "TETHER_MAX_PROCESSES")]
    pub max_processes: Option<u32>,
    /// Serve even when the NATS server lets clients in without credentials (loopback
    /// development only: anyone who reaches such a server can send and answer requests).
    #[arg(long, env = "TETHER_ALLOW_UNAUTHENTICATED_NATS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_unauthenticated_nats: Option<bool>,
    /// Most processes all commands together may have at once; 0 = no cap [default: 4096].
    #[arg(long, env = "TETHER_MAX_TOTAL_PROCESSES")]
    pub max_total_processes: Option<u32>,
    /// Memory limit of a command whose request sets none, e.g. "4G"; 0 = none [default: half
    /// the machine's RAM].
    #[arg(long, env = "TETHER_DEFAULT_MEMORY_MAX", value_parser = crate::size::parse)]
    pub default_memory_max: Option<u64>,
    /// NATS user name (the password comes from TETHER_NATS_PASSWORD or --nats-password-file).
    #[arg(long, env = "TETHER_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS password.
    #[arg(long, env = "TETHER_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding the NATS token (or set TETHER_NATS_TOKEN).
    #[arg(long, env = "TETHER_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// NATS .creds file (JWT + nkey seed).
    #[arg(long, env = "TETHER_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding the agent's NKey seed (`SU...`), as `tether-agent enroll` writes it. Refused
    /// when group- or world-readable.
    #[arg(long, env = "TETHER_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server; implies TLS.
    #[arg(long, env = "TETHER_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a NATS server that verifies clients (mutual TLS); with
    /// --nats-tls-key.
    #[arg(long, env = "TETHER_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM): a secret file.
    #[arg(long, env = "TETHER_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Relay websocket URL for terminals, e.g. ws://127.0.0.1:8443/stream (the producer token
    /// comes from TETHER_RELAY_TOKEN or --relay-token-file). Without it, pty ops are unsupported.
    #[arg(long, env = "TETHER_RELAY_URL")]
    pub relay_url: Option<String>,
    /// File holding the relay producer (`ogr_`) token.
    #[arg(long, env = "TETHER_RELAY_TOKEN_FILE")]
    pub relay_token_file: Option<PathBuf>,
    /// A terminal with no viewer attached and no input (pty_write, viewer typing or resize) for
    /// this long is closed; the clock restarts when its last viewer leaves [default: 1h, min 1s].
    #[arg(long, env = "TETHER_PTY_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub pty_idle_timeout: Option<Duration>,
    /// A file change (write, mkdir, move, remove) that has not started committing within this
    /// long answers TIMEOUT and releases its fence scope [default: 30s, min 100ms].
    #[arg(long, env = "TETHER_FS_MUTATION_DEADLINE", value_parser = humantime::parse_duration)]
    pub fs_mutation_deadline: Option<Duration>,
    /// An upload (transfer_open) that receives nothing for this long is discarded with its
    /// hidden temp file; a re-run after that starts over [default: 1h, min 1s].
    #[arg(long, env = "TETHER_TRANSFER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub transfer_idle_timeout: Option<Duration>,
    /// Replies of mutating requests remembered so a retry is not run again; 0 turns request
    /// deduplication off [default: 4096].
    #[arg(long, env = "TETHER_DEDUP_MAX_ENTRIES")]
    pub dedup_max_entries: Option<usize>,
    /// How long a reply is remembered for a retry [default: 10m, min 1s].
    #[arg(long, env = "TETHER_DEDUP_TTL", value_parser = humantime::parse_duration)]
    pub dedup_ttl: Option<Duration>,
    /// Memory the remembered replies may take, e.g. "64M" [default: 64M, min 1M].
    #[arg(long, env = "TETHER_DEDUP_MAX_BYTES", value_parser = crate::size::parse)]
    pub dedup_max_bytes: Option<u64>,
    #[command(flatten)]
    pub desktop: crate::display::DesktopArgs,
    #[command(flatten)]
    pub exec: crate::ops::execution::ExecArgs,
}

/// How long a stopping agent lets in-flight requests finish when no grace is configured.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    nats_url: Vec<String>,
    workspace_id: Option<String>,
    agent_id: Option<String>,
    workspace_root: Option<PathBuf>,
    virtual_root: Option<String>,
    state_dir: Option<PathBuf>,
    whole_machine: Option<bool>,
    strict_fencing: Option<bool>,
    fence_unscoped: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    heartbeat_interval: Option<Duration>,
    max_in_flight: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    allow_unauthenticated_nats: Option<bool>,
    nats_user: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_token_file: Option<PathBuf>,
    nats_creds: Option<PathBuf>,
    nats_nkey: Option<PathBuf>,
    nats_tls_ca: Option<PathBuf>,
    nats_tls_cert: Option<PathBuf>,
    nats_tls_key: Option<PathBuf>,
    relay_url: Option<String>,
    relay_token_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    pty_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    fs_mutation_deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    transfer_idle_timeout: Option<Duration>,
    dedup_max_entries: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    dedup_ttl: Option<Duration>,
    #[serde(default, with = "crate::size::serde_opt")]
    dedup_max_bytes: Option<u64>,
    #[serde(default)]
    confine: ConfineFile,
    #[serde(default)]
    desktop: crate::display::DesktopFile,
    #[serde(default)]
    exec: crate::ops::execution::ExecFile,
}

/// The `[confine]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfineFile {
    #[serde(default)]
    read: Vec<PathBuf>,
    #[serde(default)]
    write: Vec<PathBuf>,
    max_processes: Option<u32>,
    max_total_processes: Option<u32>,
    #[serde(default, with = "crate::size::serde_opt")]
    default_memory_max: Option<u64>,
    allow_unconfined_commands: Option<bool>,
    allow_agent_server_ports: Option<bool>,
}

/// Default cap on the processes of one command: room for a parallel build, not for a fork bomb.
pub const DEFAULT_MAX_PROCESSES: u32 = 512;
/// Default cap on the processes of all commands together: well below the kernel's default
/// `pid_max` (32768 on small machines), so commands cannot take every pid the host has.
pub const DEFAULT_MAX_TOTAL_PROCESSES: u32 = 4096;

/// How commands are confined (see `sandbox`). Paths are absolute, `~/` already expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfineConfig {
    /// Extra paths commands may read and execute beneath.
    pub read: Vec<PathBuf>,
    /// Extra paths commands may read, write and create beneath.
    pub write: Vec<PathBuf>,
    /// Most processes per command; 0 = no cap.
    pub max_processes: u32,
    /// Most processes of all commands together; 0 = no cap.
    pub max_total_processes: u32,
    /// Memory limit of a command whose request sets none; 0 = none, `None` = half the RAM.
    pub default_memory_max: Option<u64>,
    /// Run commands without Landlock when the kernel has none, instead of refusing them.
    pub allow_unconfined_commands: bool,
    /// Let commands connect to the ports of the agent's NATS servers and relay.
    pub allow_agent_server_ports: bool,
}

/// A credential. `Debug` and `Display` print a placeholder, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the agent authenticates to NATS.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(Secret),
    UserPassword {
        user: String,
        password: Secret,
    },
    CredsFile(PathBuf),
    /// An NKey seed: the server knows the public key and checks a signature of its nonce.
    Nkey(Secret),
}

/// Where terminals stream: the relay's `/stream` URL and the agent's producer token.
#[derive(Debug, Clone)]
pub struct RelayLink {
    pub url: String,
    pub token: Secret,
}

/// Everything `serve` needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_urls: Vec<String>,
    pub subjects: AgentSubjects,
    pub workspace_root: PathBuf,
    pub virtual_root: String,
    pub state_dir: PathBuf,
    pub whole_machine: bool,
    pub strict_fencing: bool,
    pub fence_unscoped: bool,
    pub heartbeat_interval: Duration,
    pub max_in_flight: usize,
    pub shutdown_grace: Duration,
    pub nats_auth: NatsAuth,
    /// Serve even when the NATS server admits clients without credentials.
    pub allow_unauthenticated_nats: bool,
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub nats_tls_client: Option<(PathBuf, PathBuf)>,
    pub relay: Option<RelayLink>,
    pub pty_idle_timeout: Duration,
    pub fs_mutation_deadline: Duration,
    pub transfer_idle_timeout: Duration,
    /// Bounds of the reply cache that deduplicates retried requests.
    pub dedup: crate::dedup::DedupLimits,
    pub confine: ConfineConfig,
    /// The desktop: screen-control consent and the managed virtual display.
    pub desktop: crate::display::DesktopConfig,
    /// Long-running commands: output kept, flow-control window, retention.
    pub exec: crate::ops::execution::ExecSettings,
    /// Files holding the agent's credentials (token, password, creds): never readable by commands.
    pub secret_files: Vec<PathBuf>,
}

impl Config {
    /// Merges flags/env (`args`, already merged by clap) over the config file, reading secrets
    /// through `env` (the process environment in production).
    pub fn resolve(args: RunArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let nats_urls = if args.nats_url.is_empty() { file.nats_url } else { args.nats_url };
        let nats_urls =
            if nats_urls.is_empty() { vec!["nats://127.0.0.1:4222".to_owned()] } else { nats_urls };
        let workspace_id = args
            .workspace_id
            .or(file.workspace_id)
            .context("--workspace-id (TETHER_WORKSPACE_ID) is required")?;
        let agent_id = args.agent_id.or(file.agent_id).context("--agent-id (TETHER_AGENT_ID) is required")?;
        let subjects = AgentSubjects::new(&workspace_id, &agent_id)?;
        let workspace_root = match args.workspace_root.or(file.workspace_root) {
            Some(root) => root,
            None => std::env::current_dir().context("reading the current directory")?,
        };
        let virtual_root = args.virtual_root.or(file.virtual_root).unwrap_or_else(|| "/workspace".to_owned());
        if !virtual_root.starts_with('/') || virtual_root.len() < 2 || virtual_root.ends_with('/') {
            bail!(
                "virtual root {virtual_root:?} must be an absolute path other than / without a trailing slash"
            );
        }
        let state_dir = match args.state_dir.or(file.state_dir) {
            Some(dir) => dir,
            None => default_state_dir(&subjects)?,
        };
        let token_file = args.nats_token_file.or(file.nats_token_file);
        let password_file = args.nats_password_file.or(file.nats_password_file);
        let creds = args.nats_creds.or(file.nats_creds);
        let nkey = args.nats_nkey.or(file.nats_nkey);
        let relay_token_file = args.relay_token_file.or(file.relay_token_file);
        let nats_tls_client = match (
            args.nats_tls_cert.or(file.nats_tls_cert),
            args.nats_tls_key.or(file.nats_tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!(
                "a NATS client certificate needs its key, and a key its certificate (nats_tls_cert, nats_tls_key)"
            ),
        };
        let tls_key = nats_tls_client.as_ref().map(|(_, key)| key.clone());
        let secret_files = [&token_file, &password_file, &creds, &nkey, &tls_key, &relay_token_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let nats_auth = nats_auth(
            env("TETHER_NATS_TOKEN"),
            token_file,
            args.nats_user.or(file.nats_user),
            env("TETHER_NATS_PASSWORD"),
            password_file,
            creds,
            nkey,
        )?;
        let confine = confine_config(
            ConfineFile {
                read: args.confine_read,
                write: args.confine_write,
                max_processes: args.max_processes,
                max_total_processes: args.max_total_processes,
                default_memory_max: args.default_memory_max,
                allow_unconfined_commands: args.allow_unconfined_commands,
                allow_agent_server_ports: args.allow_agent_server_ports,
            },
            file.confine,
            env("HOME").map(PathBuf::from),
        )?;
        let max_in_flight = args.max_in_flight.or(file.max_in_flight).unwrap_or(64);
        if max_in_flight == 0 {
            bail!("max-in-flight must be at least 1");
        }
        let relay =
            relay_link(args.relay_url.or(file.relay_url), env("TETHER_RELAY_TOKEN"), relay_token_file)?;
        Ok(Config {
            nats_urls,
            subjects,
            workspace_root,
            virtual_root,
            state_dir,
            whole_machine: args.whole_machine.or(file.whole_machine).unwrap_or(false),
            strict_fencing: args.strict_fencing.or(file.strict_fencing).unwrap_or(false),
            fence_unscoped: args.fence_unscoped.or(file.fence_unscoped).unwrap_or(false),
            heartbeat_interval: args
                .heartbeat_interval
                .or(file.heartbeat_interval)
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_millis(100)),
            max_in_flight,
            shutdown_grace: args.shutdown_grace.or(file.shutdown_grace).unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            nats_auth,
            allow_unauthenticated_nats: args
                .allow_unauthenticated_nats
                .or(file.allow_unauthenticated_nats)
                .unwrap_or(false),
            nats_tls_ca: args.nats_tls_ca.or(file.nats_tls_ca),
            nats_tls_client,
            relay,
            pty_idle_timeout: args
                .pty_idle_timeout
                .or(file.pty_idle_timeout)
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_secs(1)),
            fs_mutation_deadline: args
                .fs_mutation_deadline
                .or(file.fs_mutation_deadline)
                .unwrap_or(crate::ops::fs::DEFAULT_MUTATION_DEADLINE)
                .max(Duration::from_millis(100)),
            transfer_idle_timeout: args
                .transfer_idle_timeout
                .or(file.transfer_idle_timeout)
                .unwrap_or(crate::ops::fs::TRANSFER_IDLE)
                .max(Duration::from_secs(1)),
            dedup: crate::dedup::DedupLimits {
                max_entries: args
                    .dedup_max_entries
                    .or(file.dedup_max_entries)
                    .unwrap_or(crate::dedup::DEFAULT_MAX_ENTRIES),
                ttl: args
                    .dedup_ttl
                    .or(file.dedup_ttl)
                    .unwrap_or(crate::dedup::DEFAULT_TTL)
                    .max(Duration::from_secs(1)),
                max_bytes: args
                    .dedup_max_bytes
                    .or(file.dedup_max_bytes)
                    .map_or(crate::dedup::DEFAULT_MAX_BYTES, |b| usize::try_from(b).unwrap_or(usize::MAX))
                    .max(1 << 20),
            },
            confine,
            desktop: crate::display::DesktopConfig::resolve(args.desktop, file.desktop)?,
            exec: crate::ops::execution::ExecSettings::resolve(args.exec, file.exec)?,
            secret_files,
        })
    }
}

/// Merges the confinement settings: flags/env (`given`) over the file; a non-empty path list
/// replaces the file's list, as `nats_url` does. Paths must be absolute or start with `~/`.
fn confine_config(
    given: ConfineFile,
    file: ConfineFile,
    home: Option<PathBuf>,
) -> anyhow::Result<ConfineConfig> {
    let pick = |given: Vec<PathBuf>, file: Vec<PathBuf>| if given.is_empty() { file } else { given };
    let expand = |paths: Vec<PathBuf>| -> anyhow::Result<Vec<PathBuf>> {
        paths.into_iter().map(|p| absolute_confine_path(p, home.as_deref())).collect()
    };
    Ok(ConfineConfig {
        read: expand(pick(given.read, file.read))?,
        write: expand(pick(given.write, file.write))?,
        max_processes: given.max_processes.or(file.max_processes).unwrap_or(DEFAULT_MAX_PROCESSES),
        max_total_processes: given
            .max_total_processes
            .or(file.max_total_processes)
            .unwrap_or(DEFAULT_MAX_TOTAL_PROCESSES),
        default_memory_max: given.default_memory_max.or(file.default_memory_max),
        allow_unconfined_commands: given
            .allow_unconfined_commands
            .or(file.allow_unconfined_commands)
            .unwrap_or(false),
        allow_agent_server_ports: given
            .allow_agent_server_ports
            .or(file.allow_agent_server_ports)
            .unwrap_or(false),
    })
}

/// `~/rest` under `home`; any other path must already be absolute.
fn absolute_confine_path(path: PathBuf, home: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Ok(rest) = path.strip_prefix("~") {
        let home =
            home.with_context(|| format!("confine path {} names ~ but HOME is not set", path.display()))?;
        return Ok(home.join(rest));
    }
    if !path.is_absolute() {
        bail!("confine path {} must be absolute (or start with ~/)", path.display());
    }
    Ok(path)
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// The state directory a config file sets (or the default for its ids).
pub fn state_dir_of(config_file: &Path) -> anyhow::Result<PathBuf> {
    let file = load_file(config_file)?;
    if let Some(dir) = file.state_dir {
        return Ok(dir);
    }
    let ws = file.workspace_id.context("the config file names no workspace_id")?;
    let agent = file.agent_id.context("the config file names no agent_id")?;
    default_state_dir(&AgentSubjects::new(&ws, &agent)?)
}

fn default_state_dir(subjects: &AgentSubjects) -> anyhow::Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("dev", "tether", "tether-agent")
        .context("no home directory to keep state in; pass --state-dir")?;
    Ok(dirs.data_dir().join(format!("{}.{}", subjects.workspace_id(), subjects.agent_id())))
}

fn read_secret_file(path: &Path) -> anyhow::Result<Secret> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading secret file {}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        bail!("secret file {} is empty", path.display());
    }
    Ok(Secret(value))
}

/// A secret file only its owner may read (an NKey seed): group- or world-readable, it is
/// refused with the command that fixes it.
pub fn read_private_secret_file(path: &Path) -> anyhow::Result<Secret> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading secret file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "secret file {} is readable by others (mode {mode:03o}); fix it with: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    read_secret_file(path)
}

fn relay_link(
    url: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
) -> anyhow::Result<Option<RelayLink>> {
    let Some(url) = url.filter(|u| !u.is_empty()) else { return Ok(None) };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        bail!("relay URL {url:?} must start with ws:// or wss://");
    }
    let token = match (token_env.filter(|t| !t.is_empty()), token_file) {
        (Some(t), _) => Secret(t),
        // The producer token is a credential of this agent alone, like its NKey seed.
        (None, Some(path)) => read_private_secret_file(&path)?,
        (None, None) => {
            bail!("--relay-url needs a producer token: set TETHER_RELAY_TOKEN or --relay-token-file")
        }
    };
    if !token.expose().starts_with(tether_proto::token::PRODUCER_PREFIX) {
        bail!(
            "the relay token must be a producer token (it starts with {})",
            tether_proto::token::PRODUCER_PREFIX
        );
    }
    Ok(Some(RelayLink { url, token }))
}

fn nats_auth(
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    user: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
) -> anyhow::Result<NatsAuth> {
    let token = match (token_env.filter(|t| !t.is_empty()), token_file) {
        (Some(t), _) => Some(Secret(t)),
        (None, Some(path)) => Some(read_secret_file(&path)?),
        (None, None) => None,
    };
    let password = match (password_env.filter(|p| !p.is_empty()), password_file) {
        (Some(p), _) => Some(Secret(p)),
        (None, Some(path)) => Some(read_secret_file(&path)?),
        (None, None) => None,
    };
    let chosen =
        [token.is_some(), user.is_some(), creds.is_some(), nkey.is_some()].iter().filter(|x| **x).count();
    if chosen > 1 {
        bail!("choose one NATS auth method: token, user+password, creds file or NKey seed file");
    }
    if let Some(path) = nkey {
        return Ok(NatsAuth::Nkey(read_private_secret_file(&path)?));
    }
    Ok(match (token, user, password, creds) {
        (Some(token), ..) => NatsAuth::Token(token),
        (None, Some(user), Some(password), _) => NatsAuth::UserPassword { user, password },
        (None, Some(user), None, _) => {
            bail!("NATS user {user:?} needs a password: set TETHER_NATS_PASSWORD or --nats-password-file")
        }
        (None, None, Some(_), _) => bail!("a NATS password was given without --nats-user"),
        (None, None, None, Some(creds)) => NatsAuth::CredsFile(creds),
        (None, None, None, None) => NatsAuth::None,
    })
}

/// Lets the config file write durations as "5s" or "250ms".
pub(crate) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn base_args() -> RunArgs {
        RunArgs {
            workspace_id: Some("ws".into()),
            agent_id: Some("a1".into()),
            state_dir: Some("/tmp/state".into()),
            ..RunArgs::default()
        }
    }

    #[test]
    fn flags_override_the_file_and_the_file_fills_the_rest() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"workspace_id = "file-ws"
agent_id = "file-agent"
virtual_root = "/work"
heartbeat_interval = "250ms"
whole_machine = true
nats_url = ["nats://a:1", "nats://b:2"]"#
        )
        .unwrap();
        let args = RunArgs {
            config: Some(file.path().to_owned()),
            workspace_id: Some("flag-ws".into()),
            whole_machine: Some(false),
            ..RunArgs::default()
        };
        let c = Config::resolve(args, no_env).unwrap();
        assert_eq!(c.subjects.workspace_id(), "flag-ws");
        assert_eq!(c.subjects.agent_id(), "file-agent");
        assert_eq!(c.virtual_root, "/work");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert!(!c.whole_machine, "the flag said false");
        assert_eq!(c.nats_urls, ["nats://a:1", "nats://b:2"]);
    }

    #[test]
    fn confine_settings_merge_flags_over_the_file_and_expand_home() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            r#"[confine]
read = ["~/.cargo", "/srv/data"]
write = ["/var/cache/build"]
max_processes = 64
max_total_processes = 300
default_memory_max = "2G"
allow_unconfined_commands = true
allow_agent_server_ports = true"#
        )
        .unwrap();
        let args = RunArgs {
            config: Some(file.path().to_owned()),
            confine_write: vec!["/scratch".into()],
            nats_token_file: Some("/etc/tether/token".into()),
            ..base_args()
        };
        let env = |k: &str| match k {
            "HOME" => Some("/home/me".to_owned()),
            _ => None,
        };
        let err = Config::resolve(args, env).unwrap_err().to_string();
        assert!(err.contains("/etc/tether/token"), "the token file is read: {err}");

        let args = RunArgs {
            config: Some(file.path().to_owned()),
            confine_write: vec!["/scratch".into()],
            ..base_args()
        };
        let c = Config::resolve(args, env).unwrap();
        assert_eq!(c.confine.read, [PathBuf::from("/home/me/.cargo"), PathBuf::from("/srv/data")]);
        assert_eq!(c.confine.write, [PathBuf::from("/scratch")], "the flag replaces the file's list");
        assert_eq!(c.confine.max_processes, 64);
        assert_eq!((c.confine.max_total_processes, c.confine.default_memory_max), (300, Some(2 << 30)));
        assert!(c.confine.allow_unconfined_commands);
        assert!(c.confine.allow_agent_server_ports);

        let args = RunArgs {
            config: Some(file.path().to_owned()),
            max_processes: Some(0),
            default_memory_max: Some(0),
            allow_unconfined_commands: Some(false),
            allow_agent_server_ports: Some(false),
            ..base_args()
        };
        let c = Config::resolve(args, env).unwrap();
        assert_eq!(c.confine.max_processes, 0);
        assert_eq!(c.confine.default_memory_max, Some(0), "0 (none) given as a flag wins over the file");
        assert!(!c.confine.allow_unconfined_commands && !c.confine.allow_agent_server_ports);
    }

    #[test]
    fn confine_paths_must_be_absolute_and_default_to_nothing_extra() {
        let c = Config::resolve(base_args(), no_env).unwrap();
        let defaults = ConfineConfig {
            max_processes: DEFAULT_MAX_PROCESSES,
            max_total_processes: DEFAULT_MAX_TOTAL_PROCESSES,
            ..Default::default()
        };
        assert_eq!(c.confine, defaults);
        let args = RunArgs { confine_read: vec!["relative/dir".into()], ..base_args() };
        let err = Config::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.contains("relative/dir") && err.contains("absolute"), "{err}");
        let args = RunArgs { confine_read: vec!["~/x".into()], ..base_args() };
        assert!(Config::resolve(args, no_env).is_err(), "~ without HOME");
    }

    #[test]
    fn secret_files_are_remembered_so_commands_cannot_read_them() {
        let mut token = tempfile::NamedTempFile::new().unwrap();
        writeln!(token, "tok").unwrap();
        let args = RunArgs { nats_token_file: Some(token.path().to_owned()), ..base_args() };
        let c = Config::resolve(args, no_env).unwrap();
        assert_eq!(c.secret_files, [token.path().to_owned()]);
    }

    #[test]
    fn dedup_limits_come_from_flags_over_the_file_with_floors() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "dedup_max_entries = 10\ndedup_ttl = \"2m\"\ndedup_max_bytes = \"8M\"").unwrap();
        let args =
            RunArgs { config: Some(file.path().to_owned()), dedup_max_entries: Some(0), ..base_args() };
        let c = Config::resolve(args, no_env).unwrap();
        let want =
            crate::dedup::DedupLimits { max_entries: 0, ttl: Duration::from_secs(120), max_bytes: 8 << 20 };
        assert_eq!(c.dedup, want);
        let args = RunArgs { dedup_ttl: Some(Duration::ZERO), dedup_max_bytes: Some(1), ..base_args() };
        let c = Config::resolve(args, no_env).unwrap();
        assert_eq!((c.dedup.ttl, c.dedup.max_bytes), (Duration::from_secs(1), 1 << 20));
        assert_eq!(Config::resolve(base_args(), no_env).unwrap().dedup, crate::dedup::DedupLimits::default());
    }

    #[test]
    fn the_packaged_example_config_parses() {
        let file: FileConfig = toml::from_str(include_str!("../../packaging/agent.example.toml")).unwrap();
        assert_eq!(file.agent_id.as_deref(), Some("my-laptop"));
        assert_eq!(file.heartbeat_interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn defaults_are_confined_unscoped_and_local() {
        let c = Config::resolve(base_args(), no_env).unwrap();
        assert!(!c.whole_machine && !c.strict_fencing && !c.fence_unscoped);
        assert_eq!(c.virtual_root, "/workspace");
        assert_eq!(c.nats_urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
    }

    #[test]
    fn ids_must_be_single_tokens() {
        let args = RunArgs { agent_id: Some("a.b".into()), ..base_args() };
        let err = Config::resolve(args, no_env).unwrap_err().to_string();
        assert!(err.contains("a.b"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_and_never_print() {
        let env = |k: &str| (k == "TETHER_NATS_TOKEN").then(|| "s3cret-token".to_owned());
        let c = Config::resolve(base_args(), env).unwrap();
        assert!(matches!(&c.nats_auth, NatsAuth::Token(t) if t.expose() == "s3cret-token"));
        assert!(!format!("{c:?}").contains("s3cret-token"));
    }

    #[test]
    fn a_relay_needs_a_producer_token_from_env_or_file() {
        let args = || RunArgs { relay_url: Some("ws://127.0.0.1:1/stream".into()), ..base_args() };
        let err = Config::resolve(args(), no_env).unwrap_err().to_string();
        assert!(err.contains("TETHER_RELAY_TOKEN"), "{err}");
        let env = |k: &str| (k == "TETHER_RELAY_TOKEN").then(|| "ogs_viewer.token".to_owned());
        assert!(Config::resolve(args(), env).is_err(), "a viewer token is refused");
        let env = |k: &str| (k == "TETHER_RELAY_TOKEN").then(|| "ogr_claims.sig".to_owned());
        let c = Config::resolve(args(), env).unwrap();
        let relay = c.relay.as_ref().unwrap();
        assert_eq!(relay.token.expose(), "ogr_claims.sig");
        assert!(!format!("{c:?}").contains("ogr_claims"));
        let bad = RunArgs { relay_url: Some("http://x".into()), ..base_args() };
        assert!(Config::resolve(bad, env).is_err());
        assert!(Config::resolve(base_args(), env).unwrap().relay.is_none());
    }

    #[test]
    fn user_needs_a_password_and_methods_are_exclusive() {
        let args = RunArgs { nats_user: Some("bob".into()), ..base_args() };
        assert!(Config::resolve(args, no_env).is_err());
        let env = |k: &str| match k {
            "TETHER_NATS_TOKEN" => Some("t".to_owned()),
            _ => None,
        };
        let args = RunArgs { nats_creds: Some("/x.creds".into()), ..base_args() };
        assert!(Config::resolve(args, env).is_err());
    }
}
