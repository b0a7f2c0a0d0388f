//! From global flags and environment to a connected `Client`. Secrets (password, token) come
//! from the environment only and are never echoed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use tether_client::{Client, ClientConfig, DEFAULT_NATS_URL, NatsAuth};

/// Environment variable holding the NATS password (used with --nats-user).
pub const PASSWORD_ENV: &str = "TETHER_NATS_PASSWORD";
/// Environment variable holding the NATS token.
pub const TOKEN_ENV: &str = "TETHER_NATS_TOKEN";

#[derive(Debug, Args)]
pub struct ConnArgs {
    /// NATS server URL; repeat (or separate with commas) for several.
    #[arg(long = "nats-url", env = "TETHER_NATS_URL", value_delimiter = ',', default_value = DEFAULT_NATS_URL, global = true)]
    pub nats_urls: Vec<String>,

    /// Workspace id of the agent.
    #[arg(long, env = "TETHER_WORKSPACE_ID", global = true)]
    pub workspace_id: Option<String>,

    /// Agent id.
    #[arg(long, env = "TETHER_AGENT_ID", global = true)]
    pub agent_id: Option<String>,

    /// NATS user (the password is read from TETHER_NATS_PASSWORD).
    #[arg(long, env = "TETHER_NATS_USER", global = true)]
    pub nats_user: Option<String>,

    /// NATS credentials file (.creds).
    #[arg(long, env = "TETHER_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,

    /// File holding an NKey seed (`tetherctl credentials control-plane` writes one).
    #[arg(long, env = "TETHER_NATS_NKEY", global = true)]
    pub nats_nkey: Option<PathBuf>,

    /// CA certificate (PEM) to verify the NATS server; implies TLS.
    #[arg(long, env = "TETHER_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "TETHER_NATS_TLS_CERT", global = true, requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "TETHER_NATS_TLS_KEY", global = true, requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,

    /// Fence scope to send (default: a fresh one per invocation).
    #[arg(long, env = "TETHER_FENCE_SCOPE", global = true)]
    pub fence_scope: Option<String>,

    /// Epoch to send (default 0: unfenced).
    #[arg(long, env = "TETHER_EPOCH", global = true)]
    pub epoch: Option<u32>,

    /// How long to wait for a reply, e.g. 30s, 500ms, 2m (plain numbers are seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// Times a request that got no reply within --timeout is sent again, with the same request
    /// id (the agent answers a retry from its reply cache; nothing runs twice).
    #[arg(long, env = "TETHER_RETRIES", default_value_t = tether_client::DEFAULT_RETRIES, global = true)]
    pub retries: u32,
}

/// Secrets taken from the environment (kept apart so tests need not touch the process env).
#[derive(Default)]
pub struct Secrets {
    pub password: Option<String>,
    pub token: Option<String>,
}

impl Secrets {
    fn from_env() -> Self {
        let get = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self { password: get(PASSWORD_ENV), token: get(TOKEN_ENV) }
    }
}

/// Builds the client config; fails with a message naming the missing flag or the conflict.
pub fn config(args: &ConnArgs, secrets: Secrets) -> anyhow::Result<ClientConfig> {
    let Some(workspace_id) = args.workspace_id.as_deref() else {
        bail!("missing --workspace-id (or TETHER_WORKSPACE_ID)");
    };
    let Some(agent_id) = args.agent_id.as_deref() else {
        bail!("missing --agent-id (or TETHER_AGENT_ID)");
    };
    let mut config = ClientConfig::new(workspace_id, agent_id)?
        .with_nats_urls(args.nats_urls.iter().filter(|u| !u.is_empty()).cloned())
        .with_auth(auth(args, secrets)?)
        .with_request_timeout(args.timeout)
        .with_retries(args.retries)
        .with_connection_name("tetherctl");
    if let Some(scope) = &args.fence_scope {
        config = config.with_fence_scope(scope.clone())?;
    }
    if let Some(epoch) = args.epoch {
        config = config.with_epoch(epoch);
    }
    if let Some(ca) = &args.nats_tls_ca {
        config = config.with_tls_ca_file(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        config = config.with_tls_client_cert(cert.clone(), key.clone());
    }
    Ok(config)
}

fn auth(args: &ConnArgs, secrets: Secrets) -> anyhow::Result<NatsAuth> {
    let chosen = [
        args.nats_user.is_some(),
        secrets.token.is_some(),
        args.nats_creds.is_some(),
        args.nats_nkey.is_some(),
    ];
    if chosen.iter().filter(|c| **c).count() > 1 {
        bail!("choose one NATS authentication: --nats-user, {TOKEN_ENV}, --nats-creds or --nats-nkey");
    }
    if let Some(path) = &args.nats_nkey {
        return Ok(NatsAuth::NkeyFile(path.clone()));
    }
    if let Some(user) = &args.nats_user {
        let Some(password) = secrets.password else {
            bail!("--nats-user needs the password in {PASSWORD_ENV}");
        };
        return Ok(NatsAuth::UserPassword { user: user.clone(), password });
    }
    if secrets.password.is_some() {
        bail!("{PASSWORD_ENV} is set but --nats-user (TETHER_NATS_USER) is not");
    }
    if let Some(token) = secrets.token {
        return Ok(NatsAuth::Token(token));
    }
    Ok(args.nats_creds.clone().map_or(NatsAuth::None, NatsAuth::CredsFile))
}

/// Connects as the flags and environment say.
pub async fn connect(args: &ConnArgs) -> anyhow::Result<Client> {
    let config = config(args, Secrets::from_env())?;
    Ok(Client::connect(config).await?)
}

/// Parses `30`, `1.5s`, `500ms`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn args(extra: &[&str]) -> ConnArgs {
        let mut argv = vec!["tetherctl", "--workspace-id", "ws", "--agent-id", "a"];
        argv.extend_from_slice(extra);
        argv.push("ping");
        Cli::try_parse_from(argv).unwrap().conn
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn flags_reach_the_config() {
        let c = config(
            &args(&[
                "--nats-url",
                "nats://a:1",
                "--nats-url",
                "nats://b:2",
                "--epoch",
                "7",
                "--fence-scope",
                "s1",
            ]),
            Secrets::default(),
        )
        .unwrap();
        assert_eq!(c.nats_urls(), ["nats://a:1", "nats://b:2"]);
        assert_eq!(c.epoch(), 7);
        assert_eq!(c.fence_scope(), "s1");
        assert_eq!(c.subjects().rpc(), "agent.ws.a.rpc");
    }

    #[test]
    fn password_comes_from_the_environment_and_needs_a_user() {
        let secrets = || Secrets { password: Some("pw".into()), token: None };
        let c = config(&args(&["--nats-user", "bob"]), secrets()).unwrap();
        assert_eq!(c.auth(), &NatsAuth::UserPassword { user: "bob".into(), password: "pw".into() });
        let err = config(&args(&[]), secrets()).unwrap_err().to_string();
        assert!(err.contains("--nats-user") && !err.contains("pw"), "{err}");
        let err = config(&args(&["--nats-user", "bob"]), Secrets::default()).unwrap_err().to_string();
        assert!(err.contains(PASSWORD_ENV), "{err}");
    }

    #[test]
    fn conflicting_auth_is_refused_without_echoing_secrets() {
        let secrets = Secrets { password: Some("pw".into()), token: Some("tok-secret".into()) };
        let err = config(&args(&["--nats-user", "bob"]), secrets).unwrap_err().to_string();
        assert!(err.contains("choose one") && !err.contains("tok-secret"), "{err}");
    }

    #[test]
    fn missing_ids_name_the_flag() {
        let cli = Cli::try_parse_from(["tetherctl", "ping"]).unwrap();
        // The environment of the test process may set the ids; only check when it does not.
        if cli.conn.workspace_id.is_none() {
            let err = config(&cli.conn, Secrets::default()).unwrap_err().to_string();
            assert!(err.contains("--workspace-id"), "{err}");
        }
    }

    #[test]
    fn there_is_no_secret_flag() {
        for flag in ["--nats-password", "--password", "--nats-token", "--token"] {
            assert!(Cli::try_parse_from(["tetherctl", flag, "x", "ping"]).is_err(), "{flag} accepted");
        }
    }
}
