//! Where `tetherctl shell` gets its relay viewer token, settled before anything remote happens:
//! a missing secret or an unreadable token file must fail the command before a PTY is opened,
//! never after (that would leave a remote shell running with nobody attached).
//!
//! A token is a credential, so the ways to pass one are, in order: `--token-file PATH`, the
//! environment (`TETHER_RELAY_VIEWER_TOKEN`), and `--token` (kept for compatibility; a command
//! line is readable by every local user through `ps` and /proc, so it earns a warning). With
//! none of them, a token for exactly the opened channel is minted from the relay's viewer
//! secret (`TETHER_RELAY_VIEWER_SECRET`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tether_client::pb;
use tether_proto::token::{VIEWER_PREFIX, ViewerMode};

use super::mint::{VIEWER_SECRET_ENV, channel_viewer_token};

/// Environment variable with a ready-made viewer token.
pub const TOKEN_ENV: &str = "TETHER_RELAY_VIEWER_TOKEN";

#[derive(Args)]
pub struct TokenArgs {
    /// Read the viewer (ogs_) token from this file (surrounding whitespace is ignored). With
    /// TETHER_RELAY_VIEWER_TOKEN, the way to pass a token; without either, one is minted from
    /// TETHER_RELAY_VIEWER_SECRET.
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// A viewer (ogs_) token on the command line. Discouraged: other local users can read it
    /// (ps); use TETHER_RELAY_VIEWER_TOKEN or --token-file.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

/// Never prints the token itself (a `?args` in a log line must not leak it).
impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The secrets the environment holds (kept apart so tests need not touch the process env).
#[derive(Default)]
pub struct EnvSecrets {
    pub token: Option<String>,
    pub viewer_secret: Option<Vec<u8>>,
}

impl EnvSecrets {
    pub fn from_env() -> Self {
        let get = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self { token: get(TOKEN_ENV), viewer_secret: get(VIEWER_SECRET_ENV).map(String::into_bytes) }
    }
}

/// How the shell authenticates to the relay.
pub enum ViewerCredential {
    /// A token the operator gave (checked to be a viewer token).
    Token(String),
    /// The relay's viewer secret: the token is minted once the channel is known.
    Secret(Vec<u8>),
}

impl std::fmt::Debug for ViewerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
        }
    }
}

impl ViewerCredential {
    /// Picks the credential from the flags and the environment; errors name what to set and
    /// never echo a token or secret.
    pub fn resolve(args: &TokenArgs, env: EnvSecrets) -> anyhow::Result<Self> {
        if let Some(path) = &args.token_file {
            return Self::given(read_token_file(path)?, &format!("the token in {}", path.display()));
        }
        if let Some(token) = &args.token {
            eprintln!(
                "tetherctl: warning: --token is visible to other local users (ps); \
                 prefer {TOKEN_ENV} or --token-file"
            );
            return Self::given(token.trim().to_owned(), "--token");
        }
        if let Some(token) = env.token {
            return Self::given(token.trim().to_owned(), TOKEN_ENV);
        }
        match env.viewer_secret {
            Some(secret) => Ok(Self::Secret(secret)),
            None => bail!(
                "no relay viewer token: set {TOKEN_ENV} or pass --token-file, or set \
                 {VIEWER_SECRET_ENV} (the relay's viewer secret) to mint one"
            ),
        }
    }

    fn given(token: String, source: &str) -> anyhow::Result<Self> {
        if token.is_empty() {
            bail!("{source} is empty");
        }
        if !token.starts_with(VIEWER_PREFIX) {
            bail!("{source} is not a relay viewer token (those start with {VIEWER_PREFIX})");
        }
        Ok(Self::Token(token))
    }

    /// The token to present for `channel` (minted for exactly that channel from a secret).
    pub fn token_for(&self, channel: &pb::StreamChannel, session_id: &str, ttl: Duration) -> String {
        self.token_with_mode(channel, session_id, ttl, ViewerMode::Control)
    }

    /// [`Self::token_for`], minted with `mode` (a given token is presented as it is).
    pub fn token_with_mode(
        &self,
        channel: &pb::StreamChannel,
        session_id: &str,
        ttl: Duration,
        mode: ViewerMode,
    ) -> String {
        match self {
            Self::Token(token) => token.clone(),
            Self::Secret(secret) => channel_viewer_token(secret, channel, session_id, ttl, mode),
        }
    }
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the viewer token from {}", path.display()))?;
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    const TOKEN: &str = "ogs_claims.signature";

    fn token_args(extra: &[&str]) -> TokenArgs {
        let mut argv = vec!["tetherctl", "shell", "--relay-url", "ws://r/stream"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Shell(args) => args.token,
            other => panic!("parsed {other:?}"),
        }
    }

    fn env(token: Option<&str>, secret: Option<&str>) -> EnvSecrets {
        EnvSecrets { token: token.map(str::to_owned), viewer_secret: secret.map(|s| s.as_bytes().to_vec()) }
    }

    #[test]
    fn a_token_file_beats_the_environment_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let args = token_args(&["--token-file", path.to_str().unwrap()]);
        let got = ViewerCredential::resolve(&args, env(Some("ogs_other.x"), Some("s"))).unwrap();
        assert!(matches!(got, ViewerCredential::Token(t) if t == TOKEN));
    }

    #[test]
    fn the_environment_token_beats_the_secret_and_the_secret_is_the_fallback() {
        let got = ViewerCredential::resolve(&token_args(&[]), env(Some(TOKEN), Some("s"))).unwrap();
        assert!(matches!(got, ViewerCredential::Token(t) if t == TOKEN));
        let got = ViewerCredential::resolve(&token_args(&[]), env(None, Some("s"))).unwrap();
        assert!(matches!(got, ViewerCredential::Secret(s) if s == b"s"));
    }

    #[test]
    fn without_any_source_the_error_names_every_way_and_no_secret() {
        let err = ViewerCredential::resolve(&token_args(&[]), env(None, None)).unwrap_err().to_string();
        for name in [TOKEN_ENV, "--token-file", VIEWER_SECRET_ENV] {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn bad_tokens_are_refused_without_being_echoed() {
        let err =
            ViewerCredential::resolve(&token_args(&["--token", "ogr_producer.secret"]), env(None, None))
                .unwrap_err()
                .to_string();
        assert!(err.contains("ogs_") && !err.contains("ogr_producer"), "{err}");
        let err = ViewerCredential::resolve(&token_args(&[]), env(Some("  "), None)).unwrap_err().to_string();
        assert!(err.contains(TOKEN_ENV), "{err}");
        let missing = token_args(&["--token-file", "/nonexistent/token"]);
        let err = format!("{:#}", ViewerCredential::resolve(&missing, env(None, Some("s"))).unwrap_err());
        assert!(err.contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let shown = format!("{:?}", token_args(&["--token", TOKEN]));
        assert!(!shown.contains("claims") && shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn token_and_token_file_are_exclusive() {
        let argv = ["tetherctl", "shell", "--relay-url", "u", "--token", TOKEN, "--token-file", "f"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
