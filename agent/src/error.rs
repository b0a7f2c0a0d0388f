//! The agent's one error type for operations. Every failure an op can meet becomes an
//! `OpError` (code, message, retryable, detail) here, and only here it becomes the wire's
//! `AgentError`. Constructors name the situations; `from_io` is the single place an
//! `io::Error` is classified.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;

use tether_proto::pb::{AgentError, ErrorCode};

/// A failed operation, ready to be sent as `AgentError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    pub detail: HashMap<String, String>,
}

pub type OpResult<T> = Result<T, OpError>;

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retryable: false, detail: HashMap::new() }
    }

    /// Adds one `detail` entry.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.detail.insert(key.to_owned(), value.to_string());
        self
    }

    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Protocol, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    pub fn os(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Os, message)
    }

    pub fn not_found(what: &str, path: &Path) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found: {}", path.display()))
            .with("path", path.display())
    }

    /// A path outside what the enrollment consented to.
    pub fn consent_required(path: &Path) -> Self {
        Self::new(
            ErrorCode::ConsentRequired,
            format!(
                "{} is outside the workspace root and whole-machine access was not consented",
                path.display()
            ),
        )
        .with("path", path.display())
    }

    /// The agent is shutting down or saturated; the caller may retry (elsewhere or later).
    pub fn draining(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Draining, message).retryable()
    }

    /// Work that was cancelled before it finished (shutdown); the dispatcher turns it into
    /// FENCED when the cancel came from an epoch advance.
    pub fn cancelled() -> Self {
        Self::draining("operation cancelled: the agent is shutting down")
    }

    pub fn fenced(scope: &str, op_epoch: u32, held_epoch: u32) -> Self {
        Self::new(
            ErrorCode::Fenced,
            // The scope travels in `detail` only: messages are logged, scope names are not.
            format!("epoch {op_epoch} is older than the held epoch {held_epoch} of its fence scope"),
        )
        .retryable()
        .with("op_epoch", op_epoch)
        .with("held_epoch", held_epoch)
        .with("fence_scope", scope)
    }

    pub fn payload_too_large(message: impl Into<String>, encoded_bytes: usize, max_payload: usize) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
            .with("encoded_bytes", encoded_bytes)
            .with("max_payload", max_payload)
    }

    /// Classifies an OS error met while doing `action` on `path`.
    pub fn from_io(err: &io::Error, action: &str, path: &Path) -> Self {
        if err.kind() == io::ErrorKind::NotFound {
            return Self::not_found("path", path).with("action", action);
        }
        let mut e = Self::os(format!("{action} {}: {err}", path.display())).with("path", path.display());
        if let Some(errno) = err.raw_os_error() {
            e = e.with("errno", errno);
        }
        e
    }

    pub fn into_proto(self) -> AgentError {
        AgentError {
            code: self.code as i32,
            message: self.message,
            retryable: self.retryable,
            detail: self.detail,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.message)
    }
}

impl std::error::Error for OpError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_not_found_is_not_found_and_others_carry_errno() {
        let p = Path::new("/x/y");
        let nf = OpError::from_io(&io::Error::from(io::ErrorKind::NotFound), "open", p);
        assert_eq!(nf.code, ErrorCode::NotFound);
        assert_eq!(nf.detail["path"], "/x/y");
        let eisdir = OpError::from_io(&io::Error::from_raw_os_error(libc::EISDIR), "read", p);
        assert_eq!(eisdir.code, ErrorCode::Os);
        assert_eq!(eisdir.detail["errno"], libc::EISDIR.to_string());
    }

    #[test]
    fn fenced_is_retryable_with_epochs() {
        let e = OpError::fenced("s1", 3, 5).into_proto();
        assert_eq!(e.code, ErrorCode::Fenced as i32);
        assert!(e.retryable);
        assert_eq!(e.detail["op_epoch"], "3");
        assert_eq!(e.detail["held_epoch"], "5");
        assert_eq!(e.detail["fence_scope"], "s1");
    }
}
