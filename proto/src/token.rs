//! Relay tokens (`PROTOCOL.md` §7): `PREFIX + P + "." + S` where P is the base64url (no pad)
//! JSON claims and S the base64url HMAC-SHA256 of P's ASCII bytes. The relay verifies them; the
//! agent, `tetherctl` and tests mint them. One implementation, so every party agrees on the bytes.
//!
//! Secrets are taken as bytes and never appear in errors; errors never echo the token either.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a producer (agent) token.
pub const PRODUCER_PREFIX: &str = "ogr_";
/// Prefix of a viewer token.
pub const VIEWER_PREFIX: &str = "ogs_";

/// Claims of an `ogr_` token: the agent may register producer channels of this workspace and agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerClaims {
    pub workspace_id: String,
    pub agent_id: String,
    /// Expiry, unix seconds.
    #[serde(deserialize_with = "unix_seconds")]
    pub exp: u64,
}

/// What a viewer may do with a desktop channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewerMode {
    /// Watch a desktop (a terminal may still be typed into).
    View,
    /// Watch and drive.
    Control,
}

/// Claims of an `ogs_` token: a viewer of one session on one logical port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewerClaims {
    pub workspace_id: String,
    pub session_id: String,
    pub viewer_id: String,
    pub lease_epoch: u64,
    pub mode: ViewerMode,
    pub port: u32,
    /// Expiry, unix seconds.
    #[serde(deserialize_with = "unix_seconds")]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_epoch: Option<u64>,
    /// EXT: when present, the channel's agent must be this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// EXT: when present, the channel must be this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// EXT: a spectator; the relay drops every input message of this viewer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// Why a token was refused. Messages never contain the token or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token does not start with {expected:?} (wrong kind of token for this role)")]
    WrongPrefix { expected: &'static str },
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {exp} (now {now}, unix seconds)")]
    Expired { exp: u64, now: u64 },
}

/// Mints an `ogr_` token.
pub fn mint_producer(secret: &[u8], claims: &ProducerClaims) -> String {
    mint(PRODUCER_PREFIX, secret, claims)
}

/// Mints an `ogs_` token.
pub fn mint_viewer(secret: &[u8], claims: &ViewerClaims) -> String {
    mint(VIEWER_PREFIX, secret, claims)
}

/// Verifies an `ogr_` token at `now_unix` (seconds) and returns its claims.
pub fn verify_producer(secret: &[u8], token: &str, now_unix: u64) -> Result<ProducerClaims, TokenError> {
    let claims: ProducerClaims = verify(PRODUCER_PREFIX, secret, token)?;
    check_exp(claims.exp, now_unix)?;
    Ok(claims)
}

/// Verifies an `ogs_` token at `now_unix` (seconds) and returns its claims.
pub fn verify_viewer(secret: &[u8], token: &str, now_unix: u64) -> Result<ViewerClaims, TokenError> {
    let claims: ViewerClaims = verify(VIEWER_PREFIX, secret, token)?;
    check_exp(claims.exp, now_unix)?;
    Ok(claims)
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of every length (long keys are hashed, short ones padded).
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

fn mint<C: Serialize>(prefix: &str, secret: &[u8], claims: &C) -> String {
    // Serialising plain structs of strings and integers to JSON cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(json);
    let mut mac = mac(secret);
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{prefix}{payload}.{signature}")
}

fn verify<C: for<'de> Deserialize<'de>>(
    prefix: &'static str,
    secret: &[u8],
    token: &str,
) -> Result<C, TokenError> {
    let body = token.strip_prefix(prefix).ok_or(TokenError::WrongPrefix { expected: prefix })?;
    let (payload, signature) =
        body.rsplit_once('.').ok_or_else(|| TokenError::Malformed("no '.' before the signature".into()))?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::BadSignature)?;
    let mut mac = mac(secret);
    mac.update(payload.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| TokenError::Malformed(format!("claims are not base64url: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| TokenError::Malformed(format!("claims: {e}")))
}

fn check_exp(exp: u64, now: u64) -> Result<(), TokenError> {
    if now >= exp {
        return Err(TokenError::Expired { exp, now });
    }
    Ok(())
}

/// `exp` as unix seconds; a JavaScript minter may write it as a float, which we floor.
fn unix_seconds<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(u64),
        Float(f64),
    }
    match Num::deserialize(de)? {
        Num::Int(n) => Ok(n),
        Num::Float(f) if f.is_finite() && f >= 0.0 => Ok(f.floor() as u64),
        Num::Float(f) => Err(serde::de::Error::custom(format!("exp {f} is not a unix time"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret-bytes";
    const NOW: u64 = 1_800_000_000;

    fn producer() -> ProducerClaims {
        ProducerClaims { workspace_id: "ws1".into(), agent_id: "ag1".into(), exp: NOW + 60 }
    }

    fn viewer() -> ViewerClaims {
        ViewerClaims {
            workspace_id: "ws1".into(),
            session_id: "sess".into(),
            viewer_id: "v1".into(),
            lease_epoch: 3,
            mode: ViewerMode::View,
            port: 7681,
            exp: NOW + 60,
            subject_id: Some("user-9".into()),
            authority_epoch: None,
            agent_id: None,
            channel_id: Some("ch".into()),
            read_only: true,
        }
    }

    /// Signs an arbitrary payload string the way a minter would.
    fn sign(prefix: &str, payload: &str) -> String {
        let mut mac = mac(SECRET);
        mac.update(payload.as_bytes());
        format!("{prefix}{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn round_trips() {
        let t = mint_producer(SECRET, &producer());
        assert!(t.starts_with("ogr_"));
        assert_eq!(verify_producer(SECRET, &t, NOW).unwrap(), producer());
        let t = mint_viewer(SECRET, &viewer());
        assert!(t.starts_with("ogs_"));
        assert_eq!(verify_viewer(SECRET, &t, NOW).unwrap(), viewer());
    }

    #[test]
    fn wire_format_is_camel_case_json_and_hmac_of_the_payload() {
        let t = mint_viewer(SECRET, &viewer());
        let (payload, sig) = t["ogs_".len()..].rsplit_once('.').unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json["workspaceId"], "ws1");
        assert_eq!(json["leaseEpoch"], 3);
        assert_eq!(json["mode"], "view");
        assert_eq!(json["readOnly"], true);
        assert_eq!(json["channelId"], "ch");
        assert!(json.get("authorityEpoch").is_none());
        assert_eq!(sign("ogs_", payload), t);
        assert_eq!(URL_SAFE_NO_PAD.decode(sig).unwrap().len(), 32);
    }

    #[test]
    fn accepts_foreign_json_with_unknown_claims_and_float_exp() {
        let json = r#"{"workspaceId":"w","sessionId":"s","viewerId":"v","leaseEpoch":0,
            "mode":"control","port":6080,"exp":1800000100.5,"iat":1,"somethingNew":{"x":1}}"#;
        let t = sign("ogs_", &URL_SAFE_NO_PAD.encode(json));
        let c = verify_viewer(SECRET, &t, NOW).unwrap();
        assert_eq!(c.exp, 1_800_000_100);
        assert_eq!(c.mode, ViewerMode::Control);
        assert!(!c.read_only);
        assert_eq!(c.authority_epoch, None);
    }

    #[test]
    fn expiry_is_enforced() {
        let t = mint_producer(SECRET, &producer());
        assert_eq!(verify_producer(SECRET, &t, NOW + 59).unwrap().exp, NOW + 60);
        assert_eq!(
            verify_producer(SECRET, &t, NOW + 60),
            Err(TokenError::Expired { exp: NOW + 60, now: NOW + 60 })
        );
        let t = mint_viewer(SECRET, &viewer());
        assert!(matches!(verify_viewer(SECRET, &t, NOW + 61), Err(TokenError::Expired { .. })));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let t = mint_producer(SECRET, &producer());
        let (payload, sig) = t["ogr_".len()..].rsplit_once('.').unwrap();
        // A payload naming another agent, with the original signature.
        let mut forged = producer();
        forged.agent_id = "someone-else".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_ne!(forged_payload, payload);
        let t2 = format!("ogr_{forged_payload}.{sig}");
        assert_eq!(verify_producer(SECRET, &t2, NOW), Err(TokenError::BadSignature));
        // One signature character changed.
        let mut chars: Vec<char> = sig.chars().collect();
        chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
        let t3 = format!("ogr_{payload}.{}", chars.into_iter().collect::<String>());
        assert_eq!(verify_producer(SECRET, &t3, NOW), Err(TokenError::BadSignature));
        // Truncated signature, missing signature, another secret.
        let t4 = format!("ogr_{payload}.{}", &sig[..10]);
        assert_eq!(verify_producer(SECRET, &t4, NOW), Err(TokenError::BadSignature));
        assert!(matches!(
            verify_producer(SECRET, &format!("ogr_{payload}"), NOW),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(verify_producer(b"other", &t, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn prefix_selects_the_role() {
        let p = mint_producer(SECRET, &producer());
        let v = mint_viewer(SECRET, &viewer());
        assert_eq!(verify_viewer(SECRET, &p, NOW), Err(TokenError::WrongPrefix { expected: "ogs_" }));
        assert_eq!(verify_producer(SECRET, &v, NOW), Err(TokenError::WrongPrefix { expected: "ogr_" }));
        assert!(matches!(verify_producer(SECRET, "Bearer x.y", NOW), Err(TokenError::WrongPrefix { .. })));
        // A viewer token re-prefixed as a producer token fails on signature or claims, never passes.
        let swapped = format!("ogr_{}", &v[4..]);
        assert!(verify_producer(SECRET, &swapped, NOW).is_err());
    }

    #[test]
    fn splits_at_the_last_dot() {
        // The signature covers "abc.<payload>", so only a split at the last '.' verifies it;
        // the payload then fails to decode (malformed), which is not a signature failure.
        let payload = format!("abc.{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&producer()).unwrap()));
        let t = sign("ogr_", &payload);
        assert!(matches!(verify_producer(SECRET, &t, NOW), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn errors_never_echo_the_token() {
        let t = mint_producer(SECRET, &producer());
        let err = verify_viewer(SECRET, &t, NOW).unwrap_err().to_string();
        assert!(!err.contains(&t[4..20]), "{err}");
        let bad = format!("{}x", &t[..t.len() - 1]);
        let err = verify_producer(SECRET, &bad, NOW).unwrap_err().to_string();
        assert!(!err.contains(&t[4..20]), "{err}");
    }
}
