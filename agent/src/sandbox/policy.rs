//! Whether a command may run at all, decided in one place for every op that starts one (exec
//! today, the PTY shell next). In confined mode a command runs only inside the kernel sandbox;
//! when the kernel cannot provide it, the agent refuses rather than run the command with the
//! run of the machine, unless the operator said otherwise. Pure: the facts (consent, what the
//! kernel offered, the operator's choice) are gathered at startup and passed in.

use tether_proto::pb::ErrorCode;

use crate::error::{OpError, OpResult};

/// How the children of this agent are confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// The owner consented to whole-machine access: commands are not sandboxed, by consent.
    WholeMachine,
    /// Children run under a Landlock ruleset of this ABI version.
    Landlock { abi: u32 },
    /// Confined mode, but no sandbox can be applied; `reason` says why.
    Unavailable { reason: String },
}

/// The admission decision for commands: see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    pub confinement: Confinement,
    /// The operator allowed unconfined commands (`--allow-unconfined-commands`).
    pub allow_unconfined: bool,
}

impl CommandPolicy {
    /// Ok when a command may be started now; CONSENT_REQUIRED, saying why and how to change
    /// it, when confined mode cannot be honoured.
    pub fn admit(&self) -> OpResult<()> {
        match &self.confinement {
            Confinement::WholeMachine | Confinement::Landlock { .. } => Ok(()),
            Confinement::Unavailable { .. } if self.allow_unconfined => Ok(()),
            Confinement::Unavailable { reason } => Err(OpError::new(
                ErrorCode::ConsentRequired,
                format!(
                    "commands cannot be confined to the workspace on this machine ({reason}); the \
                     operator may allow unconfined commands (--allow-unconfined-commands) or consent \
                     to whole-machine access (--whole-machine)"
                ),
            )
            .with("reason", reason)),
        }
    }

    /// Whether children run inside the sandbox.
    pub fn confined(&self) -> bool {
        matches!(self.confinement, Confinement::Landlock { .. })
    }

    /// The Landlock ABI applied to children, 0 when none is.
    pub fn landlock_abi(&self) -> u32 {
        match self.confinement {
            Confinement::Landlock { abi } => abi,
            _ => 0,
        }
    }

    /// Why children are not confined (empty when they are).
    pub fn unconfined_reason(&self) -> String {
        match &self.confinement {
            Confinement::WholeMachine => "whole-machine access was consented".to_owned(),
            Confinement::Landlock { .. } => String::new(),
            Confinement::Unavailable { reason } => reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(confinement: Confinement, allow_unconfined: bool) -> CommandPolicy {
        CommandPolicy { confinement, allow_unconfined }
    }

    #[test]
    fn without_landlock_commands_are_refused_unless_the_operator_allowed_them() {
        let missing = Confinement::Unavailable { reason: "this kernel has no Landlock".into() };
        let err = policy(missing.clone(), false).admit().unwrap_err();
        assert_eq!(err.code, ErrorCode::ConsentRequired);
        assert!(err.message.contains("this kernel has no Landlock"), "{}", err.message);
        assert!(err.message.contains("--allow-unconfined-commands"), "{}", err.message);
        assert_eq!(err.detail["reason"], "this kernel has no Landlock");

        let allowed = policy(missing, true);
        assert_eq!(allowed.admit(), Ok(()));
        assert!(!allowed.confined());
        assert_eq!(allowed.landlock_abi(), 0);
        assert_eq!(allowed.unconfined_reason(), "this kernel has no Landlock");
    }

    #[test]
    fn landlock_and_whole_machine_admit() {
        let confined = policy(Confinement::Landlock { abi: 7 }, false);
        assert_eq!(confined.admit(), Ok(()));
        assert!(confined.confined());
        assert_eq!(confined.landlock_abi(), 7);
        assert_eq!(confined.unconfined_reason(), "");

        let whole = policy(Confinement::WholeMachine, false);
        assert_eq!(whole.admit(), Ok(()));
        assert!(!whole.confined());
        assert_eq!(whole.landlock_abi(), 0);
    }
}
