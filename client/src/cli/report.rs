//! How a failure reaches the user: one line on stderr, `tetherctl: <ERROR_CODE_NAME>: message`
//! (just `tetherctl: message` for local failures that have no protocol code), and exit status 1.
//! With `--json` the same facts are also printed on stdout as `{"error": {...}}`.

use std::process::ExitCode;

use serde_json::json;
use tether_client::ClientError;

/// Exit status of a failed command (exec passes its child's status instead).
pub const FAILURE: u8 = 1;

/// Prints `err` and returns the failure exit code.
pub fn print_error(err: &anyhow::Error, json: bool) -> ExitCode {
    let client_error = find_client_error(err);
    let code = client_error.and_then(ClientError::code);
    eprintln!("{}", error_line(err, code.map(|c| c.as_str_name())));
    if json {
        let detail = client_error.and_then(ClientError::detail).cloned().unwrap_or_default();
        let value = json!({
            "error": {
                "code": code.map(|c| c.as_str_name()),
                "message": format!("{err:#}"),
                "retryable": client_error.is_some_and(ClientError::retryable),
                "detail": detail,
            }
        });
        println!("{value}");
    }
    ExitCode::from(FAILURE)
}

/// The `ClientError` behind `err`, if any (it may be wrapped in context).
pub fn find_client_error(err: &anyhow::Error) -> Option<&ClientError> {
    err.chain().find_map(|cause| cause.downcast_ref::<ClientError>())
}

/// `tetherctl: CODE: message` with the whole context chain as the message.
pub fn error_line(err: &anyhow::Error, code_name: Option<&str>) -> String {
    match code_name {
        Some(name) => format!("tetherctl: {name}: {err:#}"),
        None => format!("tetherctl: {err:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tether_client::pb;

    #[test]
    fn agent_errors_print_their_code_name_and_context() {
        let err = anyhow::Error::new(ClientError::Agent {
            code: pb::ErrorCode::NotFound,
            message: "no such file: /w/x".into(),
            retryable: false,
            detail: HashMap::new(),
        })
        .context("reading /w/x");
        let code = find_client_error(&err).and_then(ClientError::code);
        assert_eq!(code, Some(pb::ErrorCode::NotFound));
        assert_eq!(
            error_line(&err, code.map(|c| c.as_str_name())),
            "tetherctl: ERROR_CODE_NOT_FOUND: reading /w/x: no such file: /w/x"
        );
    }

    #[test]
    fn offline_agent_is_agent_offline() {
        let err = anyhow::Error::new(ClientError::AgentOffline { subject: "agent.w.a.rpc".into() });
        let code = find_client_error(&err).and_then(ClientError::code);
        let line = error_line(&err, code.map(|c| c.as_str_name()));
        assert!(line.starts_with("tetherctl: ERROR_CODE_AGENT_OFFLINE: "), "{line}");
        assert!(line.contains("agent.w.a.rpc"), "{line}");
    }

    #[test]
    fn local_errors_have_no_code() {
        let err = anyhow::anyhow!("missing --workspace-id");
        assert!(find_client_error(&err).is_none());
        assert_eq!(error_line(&err, None), "tetherctl: missing --workspace-id");
    }
}
