//! Every way a call to an agent can fail, as one typed error.
//!
//! The agent's own refusals (`AgentError` in a reply) keep their protocol code, so a caller can
//! branch on `NOT_FOUND` or `FENCED` exactly as a control plane would; transport failures are
//! mapped onto the codes the protocol reserves for them (`AGENT_OFFLINE`, `TIMEOUT`). The mapping
//! from async-nats errors lives here and nowhere else.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use async_nats::RequestErrorKind;
use tether_proto::pb;

/// A failed client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration (or an argument) cannot be used: bad id, empty scope, unreadable
    /// credentials file, a path that cannot name a file.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No NATS server of the list accepted the connection.
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },

    /// Nobody serves the agent's rpc subject (NATS "no responders"): the agent is not running,
    /// not connected, or serves another workspace/agent id.
    #[error("no agent is serving {subject} (NATS: no responders); is the agent running and connected?")]
    AgentOffline { subject: String },

    /// The agent did not reply in time.
    #[error("no reply on {subject} within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },

    /// The agent answered with an `AgentError`.
    #[error("{message}{}", format_detail(message, detail))]
    Agent { code: pb::ErrorCode, message: String, retryable: bool, detail: HashMap<String, String> },

    /// The request itself exceeds the connection's `max_payload` (refused before sending).
    #[error("request too large for this NATS connection: {0}")]
    RequestTooLarge(String),

    /// The reply does not follow the protocol (undecodable, wrong request id, wrong result kind).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// A file changed under a chunked transfer so that its pieces no longer add up.
    #[error("{path}: {message}")]
    FileChanged { path: String, message: String },

    /// A local I/O failure (reading an upload source, writing a download sink).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Any other NATS failure (subscribe, flush, broken connection).
    #[error("NATS: {0}")]
    Nats(String),
}

impl ClientError {
    /// The protocol error code this error stands for, when there is one: the agent's own code,
    /// `AGENT_OFFLINE` for no responders, `TIMEOUT`, `PAYLOAD_TOO_LARGE`, `PROTOCOL`.
    /// Local failures (configuration, connection, local I/O) have none.
    pub fn code(&self) -> Option<pb::ErrorCode> {
        match self {
            Self::Agent { code, .. } => Some(*code),
            Self::AgentOffline { .. } => Some(pb::ErrorCode::AgentOffline),
            Self::Timeout { .. } => Some(pb::ErrorCode::Timeout),
            Self::RequestTooLarge(_) => Some(pb::ErrorCode::PayloadTooLarge),
            Self::Protocol(_) => Some(pb::ErrorCode::Protocol),
            Self::InvalidArgument(_)
            | Self::Connect { .. }
            | Self::FileChanged { .. }
            | Self::Io { .. }
            | Self::Nats(_) => None,
        }
    }

    /// Whether retrying the same call may succeed (the agent's flag; offline/timeout count as
    /// retryable, everything local does not).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Agent { retryable, .. } => *retryable,
            Self::AgentOffline { .. } | Self::Timeout { .. } | Self::Nats(_) => true,
            _ => false,
        }
    }

    /// The agent is still running the first send of this very request (it answered a retry
    /// with TIMEOUT, `reason=in_progress`): ask again later for its reply.
    pub fn in_progress(&self) -> bool {
        matches!(self, Self::Agent { code: pb::ErrorCode::Timeout, detail, .. }
            if detail.get("reason").is_some_and(|r| r == "in_progress"))
    }

    /// The agent's detail map (empty for errors that did not come from the agent).
    pub fn detail(&self) -> Option<&HashMap<String, String>> {
        match self {
            Self::Agent { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// Converts an `AgentError` found in a reply. An unknown code number (a newer agent) becomes
    /// `UNSPECIFIED`; the message still says what happened.
    pub fn from_agent(error: pb::AgentError) -> Self {
        let code = pb::ErrorCode::try_from(error.code).unwrap_or(pb::ErrorCode::Unspecified);
        Self::Agent { code, message: error.message, retryable: error.retryable, detail: error.detail }
    }

    /// Maps an async-nats request failure on `subject` (after waiting `timeout`).
    pub(crate) fn from_request(err: async_nats::RequestError, subject: &str, timeout: Duration) -> Self {
        match err.kind() {
            RequestErrorKind::NoResponders => Self::AgentOffline { subject: subject.to_owned() },
            RequestErrorKind::TimedOut => Self::Timeout { subject: subject.to_owned(), timeout },
            RequestErrorKind::MaxPayloadExceeded => Self::RequestTooLarge(err.to_string()),
            RequestErrorKind::InvalidSubject => {
                Self::InvalidArgument(format!("invalid subject {subject:?}: {err}"))
            }
            RequestErrorKind::Other => Self::Nats(format!("request on {subject} failed: {err}")),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Renders an agent error's detail as ` (k=v, k=v)`, sorted so output is stable, leaving out
/// values the message already shows (agents usually name the path in the message).
fn format_detail(message: &str, detail: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> =
        detail.iter().filter(|(_, v)| !v.is_empty() && !message.contains(v.as_str())).collect();
    if pairs.is_empty() {
        return String::new();
    }
    pairs.sort();
    let mut out = String::from(" (");
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{k}={v}");
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_error(code: i32) -> pb::AgentError {
        pb::AgentError {
            code,
            message: "held epoch is newer".into(),
            retryable: true,
            detail: HashMap::from([
                ("op_epoch".to_owned(), "3".to_owned()),
                ("held_epoch".to_owned(), "5".to_owned()),
            ]),
        }
    }

    #[test]
    fn agent_errors_keep_code_flag_and_detail() {
        let err = ClientError::from_agent(agent_error(pb::ErrorCode::Fenced as i32));
        assert_eq!(err.code(), Some(pb::ErrorCode::Fenced));
        assert!(err.retryable());
        assert_eq!(err.detail().and_then(|d| d.get("held_epoch")).map(String::as_str), Some("5"));
        assert_eq!(err.to_string(), "held epoch is newer (held_epoch=5, op_epoch=3)");
    }

    #[test]
    fn detail_already_in_the_message_is_not_repeated() {
        let err = ClientError::from_agent(pb::AgentError {
            code: pb::ErrorCode::NotFound as i32,
            message: "path not found: /w/x".into(),
            retryable: false,
            detail: HashMap::from([
                ("path".to_owned(), "/w/x".to_owned()),
                ("action".to_owned(), "open".to_owned()),
            ]),
        });
        assert_eq!(err.to_string(), "path not found: /w/x (action=open)");
    }

    #[test]
    fn unknown_agent_codes_become_unspecified() {
        let err = ClientError::from_agent(agent_error(999));
        assert_eq!(err.code(), Some(pb::ErrorCode::Unspecified));
    }

    #[test]
    fn nats_failures_map_onto_protocol_codes() {
        let t = Duration::from_secs(3);
        let offline = ClientError::from_request(
            async_nats::RequestError::new(RequestErrorKind::NoResponders),
            "agent.ws.a.rpc",
            t,
        );
        assert_eq!(offline.code(), Some(pb::ErrorCode::AgentOffline));
        assert!(offline.to_string().contains("agent.ws.a.rpc"), "{offline}");

        let timeout =
            ClientError::from_request(async_nats::RequestError::new(RequestErrorKind::TimedOut), "s", t);
        assert_eq!(timeout.code(), Some(pb::ErrorCode::Timeout));
        assert!(matches!(timeout, ClientError::Timeout { timeout, .. } if timeout == t));

        let big = ClientError::from_request(
            async_nats::RequestError::new(RequestErrorKind::MaxPayloadExceeded),
            "s",
            t,
        );
        assert_eq!(big.code(), Some(pb::ErrorCode::PayloadTooLarge));

        let other = ClientError::from_request(async_nats::RequestError::new(RequestErrorKind::Other), "s", t);
        assert_eq!(other.code(), None);
    }

    #[test]
    fn local_errors_have_no_code_and_are_not_retryable() {
        let err = ClientError::InvalidArgument("x".into());
        assert_eq!(err.code(), None);
        assert!(!err.retryable());
    }
}
