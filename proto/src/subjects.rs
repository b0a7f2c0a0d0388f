//! NATS subject names (`PROTOCOL.md` §1), built only from ids that are single NATS tokens.

use std::fmt;

/// Why an id cannot be used as a NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {id:?} is not a single NATS token (it must be non-empty, without '.', '*', '>' or whitespace)"
)]
pub struct InvalidToken {
    pub what: &'static str,
    pub id: String,
}

/// Checks that `id` can stand as one token of a NATS subject.
pub fn validate_token(what: &'static str, id: &str) -> Result<(), InvalidToken> {
    let bad = id.is_empty()
        || id.chars().any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(InvalidToken { what, id: id.to_owned() });
    }
    Ok(())
}

/// The subjects of one agent: `agent.<ws>.<id>.{rpc,hello,events}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSubjects {
    workspace_id: String,
    agent_id: String,
}

impl AgentSubjects {
    pub fn new(workspace_id: &str, agent_id: &str) -> Result<Self, InvalidToken> {
        validate_token("workspace id", workspace_id)?;
        validate_token("agent id", agent_id)?;
        Ok(Self { workspace_id: workspace_id.to_owned(), agent_id: agent_id.to_owned() })
    }

    pub fn workspace_id(&self) -> &str {
        &self.workspace_id
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Control requests (request/reply; the agent subscribes).
    pub fn rpc(&self) -> String {
        self.subject("rpc")
    }

    /// `Hello`, published on every (re)connect once the rpc subscription is live.
    pub fn hello(&self) -> String {
        self.subject("hello")
    }

    /// `AgentEvent`s: heartbeats and going_offline.
    pub fn events(&self) -> String {
        self.subject("events")
    }

    /// Prefix of the inboxes the agent's own requests take replies on (under its subjects, so
    /// its least-privilege NATS identity covers them).
    pub fn inbox_prefix(&self) -> String {
        self.subject("inbox")
    }

    /// The default subject of a long-running command's output chunks (`ExecOutput`);
    /// `exec_id` must be a single token (see [`validate_token`]).
    pub fn exec_output(&self, exec_id: &str) -> String {
        self.subject(&format!("exec.{exec_id}.out"))
    }

    fn subject(&self, leaf: &str) -> String {
        format!("agent.{}.{}.{leaf}", self.workspace_id, self.agent_id)
    }
}

impl fmt::Display for AgentSubjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent.{}.{}", self.workspace_id, self.agent_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_three_subjects() {
        let s = AgentSubjects::new("ws1", "laptop").unwrap();
        assert_eq!(s.rpc(), "agent.ws1.laptop.rpc");
        assert_eq!(s.hello(), "agent.ws1.laptop.hello");
        assert_eq!(s.events(), "agent.ws1.laptop.events");
    }

    #[test]
    fn refuses_ids_that_are_not_single_tokens() {
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb", "x\n"] {
            assert!(AgentSubjects::new(bad, "id").is_err(), "{bad:?} accepted as ws");
            assert!(AgentSubjects::new("ws", bad).is_err(), "{bad:?} accepted as agent");
        }
        assert!(AgentSubjects::new("ws-1_ok", "Agent-42").is_ok());
    }
}
