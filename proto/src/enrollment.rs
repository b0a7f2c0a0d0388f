//! The enrollment bundle: everything an agent needs to join a workspace (ids, NATS URLs, its own
//! NKey seed, its relay producer token, the consents the operator chose), in one line a person
//! pastes into `tether-agent enroll`. It holds secrets: `tetherctl enrollment create` prints it
//! once and neither side ever logs it.
//!
//! Text form: `tether1.<payload length>.<payload>.<check>`, where payload is the base64url JSON
//! of [`Bundle`] and check the first 16 bytes of its SHA-256, base64url. The length tells a
//! truncated paste from an altered one; the check catches any change. It is a checksum, not a
//! signature: whoever holds a bundle holds its secrets anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "tether1";

/// What an agent is enrolled with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub workspace_id: String,
    pub agent_id: String,
    pub nats_urls: Vec<String>,
    /// The agent's NKey user seed (`SU...`): a secret.
    pub nkey_seed: String,
    #[serde(default)]
    pub relay_url: Option<String>,
    /// The agent's relay producer (`ogr_`) token: a secret.
    #[serde(default)]
    pub relay_token: Option<String>,
    #[serde(default)]
    pub consent_screen_control: bool,
    #[serde(default)]
    pub whole_machine: bool,
    /// Unix seconds after which the bundle is refused.
    pub expires_at: u64,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("workspace_id", &self.workspace_id)
            .field("agent_id", &self.agent_id)
            .field("nats_urls", &self.nats_urls)
            .field("relay_url", &self.relay_url)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a bundle was refused; each says what happened, never the bundle's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("this is not a Tether enrollment bundle (it should start with `{PREFIX}.`)")]
    NotABundle,
    #[error("the bundle is truncated: {got} of its {want} characters arrived (copy the whole line)")]
    Truncated { got: usize, want: usize },
    #[error("the bundle was altered: its checksum does not match (copy it again, unchanged)")]
    Altered,
    #[error("the bundle expired {ago} s ago: ask for a new one (`tetherctl enrollment create`)")]
    Expired { ago: u64 },
}

impl Bundle {
    /// The one-line text form.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(&json);
        format!("{PREFIX}.{}.{payload}.{}", payload.len(), check(payload.as_bytes()))
    }

    /// Parses and checks a pasted bundle against the clock (`now`, unix seconds).
    pub fn decode(text: &str, now: u64) -> Result<Bundle, BundleError> {
        let text = text.trim();
        let rest =
            text.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')).ok_or(BundleError::NotABundle)?;
        let (len, rest) = rest.split_once('.').ok_or(BundleError::NotABundle)?;
        let want: usize = len.parse().map_err(|_| BundleError::NotABundle)?;
        let (payload, sum) = match rest.rsplit_once('.') {
            Some((payload, sum)) if payload.len() >= want => (payload, sum),
            _ => return Err(BundleError::Truncated { got: rest.len().min(want), want }),
        };
        let expected = check(payload.as_bytes());
        if payload.len() == want && sum.len() < expected.len() && expected.starts_with(sum) {
            return Err(BundleError::Truncated {
                got: want + 1 + sum.len(),
                want: want + 1 + expected.len(),
            });
        }
        if payload.len() != want || sum != expected {
            return Err(BundleError::Altered);
        }
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| BundleError::Altered)?;
        let bundle: Bundle = serde_json::from_slice(&json).map_err(|_| BundleError::Altered)?;
        if now > bundle.expires_at {
            return Err(BundleError::Expired { ago: now - bundle.expires_at });
        }
        Ok(bundle)
    }
}

/// Creates `path` readable by its owner only (0600) holding `content` and a newline, synced;
/// refuses to replace an existing file. How both ends of an enrollment write its secrets.
pub fn write_secret_file(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{content}")?;
    file.sync_all()
}

fn check(payload: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(payload)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        Bundle {
            workspace_id: "ws1".into(),
            agent_id: "laptop".into(),
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            nkey_seed: "SUAEXAMPLESEED".into(),
            relay_url: Some("ws://127.0.0.1:8443/stream".into()),
            relay_token: Some("ogr_x.y".into()),
            consent_screen_control: true,
            whole_machine: false,
            expires_at: 1000,
        }
    }

    #[test]
    fn a_bundle_round_trips_and_every_damage_is_named() {
        let text = bundle().encode();
        assert_eq!(Bundle::decode(&format!("  {text}\n"), 999).unwrap(), bundle());
        assert_eq!(Bundle::decode(&text, 1010), Err(BundleError::Expired { ago: 10 }));
        assert!(matches!(Bundle::decode(&text[..text.len() - 30], 999), Err(BundleError::Truncated { .. })));
        assert_eq!(Bundle::decode("ssh-rsa AAAA", 999), Err(BundleError::NotABundle));
        // One character of the payload changed (a valid base64url character either way).
        let at = text.len() / 2;
        let swapped = if &text[at..=at] == "A" { "B" } else { "A" };
        let altered = format!("{}{swapped}{}", &text[..at], &text[at + 1..]);
        assert_eq!(Bundle::decode(&altered, 999), Err(BundleError::Altered));
    }

    #[test]
    fn debug_never_shows_the_secrets() {
        let shown = format!("{:?}", bundle());
        assert!(!shown.contains("SUAEXAMPLESEED") && !shown.contains("ogr_"), "{shown}");
    }
}
