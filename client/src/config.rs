//! How to reach one agent: NATS servers and credentials, the agent's address, and the fencing
//! identity (scope + epoch) every request carries. Validated once, when it is built, so a bad
//! id fails before any connection is made.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tether_proto::subjects::AgentSubjects;

use crate::error::ClientError;
use crate::unique;

/// Default NATS server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default time to wait for a reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time an exec reply may take beyond the command's own `timeout_ms` (kill grace, drain,
/// transport).
pub const EXEC_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// Default number of times a call that got no reply in time is sent again (same request id).
pub const DEFAULT_RETRIES: u32 = 2;

/// NATS authentication. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A server token.
    Token(String),
    /// User and password.
    UserPassword { user: String, password: String },
    /// A `.creds` file (JWT + nkey seed), as issued for decentralised auth.
    CredsFile(PathBuf),
    /// A file holding an NKey seed (`SU...`), as `tetherctl credentials control-plane` writes it.
    NkeyFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}")
            }
            Self::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
            Self::NkeyFile(path) => f.debug_tuple("NkeyFile").field(path).finish(),
        }
    }
}

/// Everything a [`crate::Client`] needs. Build with [`ClientConfig::new`] and the `with_*`
/// methods:
///
/// ```no_run
/// # async fn demo() -> Result<(), tether_client::ClientError> {
/// use tether_client::{Client, ClientConfig, NatsAuth};
/// let config = ClientConfig::new("ws1", "laptop")?
///     .with_nats_urls(["nats://10.0.0.5:4222"])
///     .with_auth(NatsAuth::Token("s3cret".into()))
///     .with_epoch(7);
/// let client = Client::connect(config).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    nats_urls: Vec<String>,
    subjects: AgentSubjects,
    auth: NatsAuth,
    tls_ca_file: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    request_timeout: Duration,
    retries: u32,
    fence_scope: String,
    epoch: u32,
    connection_name: String,
}

impl ClientConfig {
    /// A config for agent `agent_id` of workspace `workspace_id`, with the defaults: one NATS
    /// server at [`DEFAULT_NATS_URL`], no auth, a 30 s request timeout, a fresh fence scope
    /// (`tetherctl-<pid>-<nanos>`) and epoch 0. Fails when an id is not a single NATS token.
    pub fn new(workspace_id: &str, agent_id: &str) -> Result<Self, ClientError> {
        let subjects = AgentSubjects::new(workspace_id, agent_id)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(Self {
            nats_urls: vec![DEFAULT_NATS_URL.to_owned()],
            subjects,
            auth: NatsAuth::None,
            tls_ca_file: None,
            tls_client: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retries: DEFAULT_RETRIES,
            fence_scope: unique::default_fence_scope(),
            epoch: 0,
            connection_name: "tether-client".to_owned(),
        })
    }

    /// NATS servers to try (any of them; the client fails over between them). An empty list
    /// keeps the current one.
    pub fn with_nats_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        if !urls.is_empty() {
            self.nats_urls = urls;
        }
        self
    }

    /// NATS credentials.
    pub fn with_auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// A client certificate and its key (PEM) for a server that verifies clients (mutual TLS).
    pub fn with_tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }

    /// Trust this CA (PEM) for the server's certificate, and require TLS.
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// How long to wait for a reply (per request; exec adds its own timeout, see
    /// [`crate::Client::exec`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many times a call that got no reply within its timeout (or was answered "in
    /// progress") is sent again, byte for byte with the same request id, so an agent that
    /// deduplicates (Capabilities.request_dedup) answers it from its reply cache instead of
    /// running it twice. 0 = never retry (use it with agents that do not announce
    /// request_dedup when a call must not run twice). Default [`DEFAULT_RETRIES`].
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The fence scope to send (PROTOCOL.md §3). Must not be empty: an empty scope would put
    /// the client in the agent's shared default scope.
    pub fn with_fence_scope(mut self, scope: impl Into<String>) -> Result<Self, ClientError> {
        let scope = scope.into();
        if scope.is_empty() {
            return Err(ClientError::InvalidArgument("the fence scope must not be empty".into()));
        }
        self.fence_scope = scope;
        Ok(self)
    }

    /// The epoch to send (0 = unfenced unless the agent is strict).
    pub fn with_epoch(mut self, epoch: u32) -> Self {
        self.epoch = epoch;
        self
    }

    /// The connection name NATS shows in its monitoring (default `tether-client`).
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    pub fn nats_urls(&self) -> &[String] {
        &self.nats_urls
    }

    pub fn subjects(&self) -> &AgentSubjects {
        &self.subjects
    }

    pub fn auth(&self) -> &NatsAuth {
        &self.auth
    }

    pub fn tls_ca_file(&self) -> Option<&PathBuf> {
        self.tls_ca_file.as_ref()
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }

    pub fn fence_scope(&self) -> &str {
        &self.fence_scope
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The async-nats options for this config (auth, TLS, name). Reads the creds file.
    pub async fn connect_options(&self) -> Result<async_nats::ConnectOptions, ClientError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.connection_name)
            .request_timeout(Some(self.request_timeout))
            // Replies come under the workspace's own inbox prefix, the one a control-plane
            // identity of this workspace may subscribe to (README "Enrollment").
            .custom_inbox_prefix(format!("_INBOX.{}", self.subjects.workspace_id()));
        options = match &self.auth {
            NatsAuth::None => options,
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|e| {
                ClientError::InvalidArgument(format!("cannot use NATS creds file {}: {e}", path.display()))
            })?,
            NatsAuth::NkeyFile(path) => {
                let seed = std::fs::read_to_string(path).map_err(|e| {
                    ClientError::InvalidArgument(format!(
                        "cannot read NKey seed file {}: {e}",
                        path.display()
                    ))
                })?;
                options.nkey(seed.trim().to_owned())
            }
        };
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_ones() {
        let c = ClientConfig::new("ws", "a").unwrap();
        assert_eq!(c.nats_urls(), [DEFAULT_NATS_URL]);
        assert_eq!(c.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(c.epoch(), 0);
        assert!(c.fence_scope().starts_with("tetherctl-"));
        assert_eq!(c.subjects().rpc(), "agent.ws.a.rpc");
    }

    #[test]
    fn ids_that_are_not_tokens_are_refused() {
        assert!(matches!(ClientConfig::new("w.s", "a"), Err(ClientError::InvalidArgument(_))));
        assert!(matches!(ClientConfig::new("ws", ""), Err(ClientError::InvalidArgument(_))));
    }

    #[test]
    fn empty_scope_is_refused_and_empty_url_list_ignored() {
        let c = ClientConfig::new("ws", "a").unwrap();
        assert!(c.clone().with_fence_scope("").is_err());
        let c = c.with_nats_urls(Vec::<String>::new());
        assert_eq!(c.nats_urls(), [DEFAULT_NATS_URL]);
        let c = c.with_nats_urls(["nats://a:1", "nats://b:2"]);
        assert_eq!(c.nats_urls().len(), 2);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = ClientConfig::new("ws", "a")
            .unwrap()
            .with_auth(NatsAuth::UserPassword { user: "bob".into(), password: "hunter2".into() });
        let shown = format!("{c:?}");
        assert!(shown.contains("bob") && !shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", NatsAuth::Token("tok-123".into()));
        assert!(!shown.contains("tok-123"));
    }

    #[tokio::test]
    async fn missing_creds_file_is_a_clear_error() {
        let c = ClientConfig::new("ws", "a")
            .unwrap()
            .with_auth(NatsAuth::CredsFile("/nonexistent/x.creds".into()));
        let err = c.connect_options().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("/nonexistent/x.creds"), "{err}");
    }
}
