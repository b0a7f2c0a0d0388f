//! The first exchange on `/stream` (`PROTOCOL.md` §7): wait for the StreamOpen, check that it
//! names the same channel as the query, verify the token for the claimed role, and turn it into
//! an `Admission` the registry can act on, or a `Rejection` with a reason that is both counted
//! and told to the peer. Channel state (epoch floors, kinds) is checked later by the registry.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::Message;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::{self, TokenError, ViewerMode};

use crate::config::RelayConfig;
use crate::metrics::RejectReason;
use crate::registry::ChannelKey;

/// A refused open: counted under `reason`, and `message` goes to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection { reason, message: message.into() }
    }

    /// `StreamOpenAck{accepted:false, error{STREAM, message}}`, encoded.
    pub fn ack(&self) -> Bytes {
        Frame::OpenAck(pb::StreamOpenAck {
            accepted: false,
            error: Some(pb::AgentError {
                code: pb::ErrorCode::Stream as i32,
                message: format!("{}: {}", self.reason.label(), self.message),
                retryable: matches!(
                    self.reason,
                    RejectReason::HandshakeTimeout
                        | RejectReason::ShuttingDown
                        | RejectReason::Expired
                        | RejectReason::TooManyWaits
                        | RejectReason::ProducerLive
                ),
                detail: HashMap::from([("reason".to_owned(), self.reason.label().to_owned())]),
            }),
            resume_from_seq: 0,
        })
        .encode()
    }
}

/// What a verified viewer token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerGrant {
    /// `sessionId/viewerId`: whose input seq the relay remembers across reconnects.
    pub identity: String,
    /// `workspaceId/sessionId/viewerId`: whose waits are counted together.
    pub holder: String,
    pub lease_epoch: u64,
    pub authority_epoch: Option<u64>,
    pub mode: ViewerMode,
    pub read_only: bool,
}

/// Who the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Producer,
    Viewer(ViewerGrant),
}

/// A verified open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub key: ChannelKey,
    /// As declared by the opener (producers must declare PTY or DESKTOP).
    pub kind: pb::StreamKind,
    pub peer: Peer,
    pub resume_from_seq: u64,
}

/// Waits for the first binary message and decodes it as a StreamOpen. Text, ping and pong
/// messages before it are ignored; anything else, or nothing within `timeout`, is a rejection.
pub async fn read_open<S>(stream: &mut S, timeout: Duration) -> Result<pb::StreamOpen, Rejection>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let first = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Rejection::new(RejectReason::BadHandshake, "closed before StreamOpen"));
                }
                Some(Err(e)) => {
                    return Err(Rejection::new(RejectReason::BadHandshake, format!("socket: {e}")));
                }
            }
        }
    };
    let bytes = tokio::time::timeout(timeout, first).await.map_err(|_| {
        Rejection::new(
            RejectReason::HandshakeTimeout,
            format!("no StreamOpen within {}", humantime::format_duration(timeout)),
        )
    })??;
    match Frame::decode(bytes) {
        Ok(Frame::Open(open)) => Ok(open),
        Ok(other) => Err(Rejection::new(
            RejectReason::BadHandshake,
            format!("the first message must be StreamOpen (tag 1), got tag {}", other.tag()),
        )),
        Err(e) => Err(Rejection::new(RejectReason::BadHandshake, e.to_string())),
    }
}

/// Checks an open against the query and the token. `now_unix` is seconds since the epoch.
pub fn admit(
    query: &HashMap<String, String>,
    open: &pb::StreamOpen,
    config: &RelayConfig,
    now_unix: u64,
) -> Result<Admission, Rejection> {
    let key = key_from_query(query)?;
    let channel = open
        .channel
        .as_ref()
        .ok_or_else(|| Rejection::new(RejectReason::BadHandshake, "StreamOpen has no channel"))?;
    // No frame can carry the last seq of the space: a cursor there would wedge the channel.
    check(open.resume_from_seq != u64::MAX, RejectReason::BadHandshake, || {
        "resume_from_seq is at the end of the seq space".to_owned()
    })?;
    let same = channel.workspace_id == key.workspace_id
        && channel.agent_id == key.agent_id
        && channel.port == key.port
        && channel.channel_id == key.channel_id;
    if !same {
        return Err(Rejection::new(
            RejectReason::QueryMismatch,
            format!(
                "StreamOpen names ws={:?} agent={:?} port={} channel={:?}, the URL ws={:?} agent={:?} port={} channel={:?}",
                channel.workspace_id,
                channel.agent_id,
                channel.port,
                channel.channel_id,
                key.workspace_id,
                key.agent_id,
                key.port,
                key.channel_id
            ),
        ));
    }
    let kind = pb::StreamKind::try_from(channel.kind).unwrap_or(pb::StreamKind::Unspecified);
    let peer = match pb::StreamRole::try_from(open.role) {
        Ok(pb::StreamRole::Agent) => {
            if kind == pb::StreamKind::Unspecified {
                return Err(Rejection::new(
                    RejectReason::BadKind,
                    "a producer must declare kind PTY or DESKTOP",
                ));
            }
            let claims = token::verify_producer(config.producer_secret.bytes(), &open.token, now_unix)
                .map_err(token_rejection)?;
            check(claims.workspace_id == key.workspace_id, RejectReason::WorkspaceMismatch, || {
                format!("token is for workspace {:?}", claims.workspace_id)
            })?;
            check(claims.agent_id == key.agent_id, RejectReason::AgentMismatch, || {
                format!("token is for agent {:?}", claims.agent_id)
            })?;
            Peer::Producer
        }
        Ok(pb::StreamRole::Client) => {
            let c = token::verify_viewer(config.viewer_secret.bytes(), &open.token, now_unix)
                .map_err(token_rejection)?;
            check(c.workspace_id == key.workspace_id, RejectReason::WorkspaceMismatch, || {
                format!("token is for workspace {:?}", c.workspace_id)
            })?;
            check(c.port == key.port, RejectReason::PortMismatch, || {
                format!("token is for port {}", c.port)
            })?;
            if let Some(agent) = &c.agent_id {
                check(*agent == key.agent_id, RejectReason::AgentMismatch, || {
                    format!("token is for agent {agent:?}")
                })?;
            }
            if let Some(ch) = &c.channel_id {
                check(*ch == key.channel_id, RejectReason::ChannelMismatch, || {
                    format!("token is for channel {ch:?}")
                })?;
            }
            Peer::Viewer(ViewerGrant {
                identity: format!("{}/{}", c.session_id, c.viewer_id),
                holder: format!("{}/{}/{}", c.workspace_id, c.session_id, c.viewer_id),
                lease_epoch: c.lease_epoch,
                authority_epoch: c.authority_epoch,
                mode: c.mode,
                read_only: c.read_only,
            })
        }
        _ => {
            return Err(Rejection::new(
                RejectReason::BadRole,
                format!("role {} is neither AGENT nor CLIENT", open.role),
            ));
        }
    };
    Ok(Admission { key, kind, peer, resume_from_seq: open.resume_from_seq })
}

fn check(ok: bool, reason: RejectReason, message: impl FnOnce() -> String) -> Result<(), Rejection> {
    if ok { Ok(()) } else { Err(Rejection::new(reason, message())) }
}

fn token_rejection(e: TokenError) -> Rejection {
    let reason = match e {
        TokenError::WrongPrefix { .. } => RejectReason::WrongTokenKind,
        TokenError::Malformed(_) => RejectReason::MalformedToken,
        TokenError::BadSignature => RejectReason::BadSignature,
        TokenError::Expired { .. } => RejectReason::Expired,
    };
    Rejection::new(reason, e.to_string())
}

fn key_from_query(query: &HashMap<String, String>) -> Result<ChannelKey, Rejection> {
    let field = |name: &str| -> Result<String, Rejection> {
        match query.get(name) {
            Some(v) if !v.is_empty() && v.len() <= 256 => Ok(v.clone()),
            _ => Err(Rejection::new(
                RejectReason::QueryMismatch,
                format!("the URL needs ?ws=&agent=&port=&channel= ({name:?} is missing, empty or too long)"),
            )),
        }
    };
    let port = field("port")?;
    let port = port
        .parse()
        .map_err(|_| Rejection::new(RejectReason::QueryMismatch, format!("port {port:?} is not a number")))?;
    Ok(ChannelKey {
        workspace_id: field("ws")?,
        agent_id: field("agent")?,
        port,
        channel_id: field("channel")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use tether_proto::token::{ProducerClaims, ViewerClaims};

    const NOW: u64 = 1_800_000_000;

    fn config() -> RelayConfig {
        RelayConfig::with_secrets(Secret::new("prod"), Secret::new("view"))
    }

    fn query() -> HashMap<String, String> {
        [("ws", "w"), ("agent", "a"), ("port", "7681"), ("channel", "c")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn open(role: pb::StreamRole, token: String) -> pb::StreamOpen {
        pb::StreamOpen {
            channel: Some(pb::StreamChannel {
                channel_id: "c".into(),
                workspace_id: "w".into(),
                agent_id: "a".into(),
                kind: pb::StreamKind::Pty as i32,
                port: 7681,
            }),
            token,
            role: role as i32,
            resume_from_seq: 9,
        }
    }

    fn producer_token(ws: &str) -> String {
        token::mint_producer(
            b"prod",
            &ProducerClaims { workspace_id: ws.into(), agent_id: "a".into(), exp: NOW + 60 },
        )
    }

    fn viewer_claims() -> ViewerClaims {
        ViewerClaims {
            workspace_id: "w".into(),
            session_id: "s".into(),
            viewer_id: "v".into(),
            lease_epoch: 2,
            mode: ViewerMode::View,
            port: 7681,
            exp: NOW + 60,
            subject_id: None,
            authority_epoch: Some(4),
            agent_id: None,
            channel_id: None,
            read_only: false,
        }
    }

    fn reason(r: Result<Admission, Rejection>) -> RejectReason {
        r.unwrap_err().reason
    }

    #[test]
    fn a_cursor_at_the_end_of_the_seq_space_is_refused() {
        for role in [pb::StreamRole::Agent, pb::StreamRole::Client] {
            let token = match role {
                pb::StreamRole::Agent => producer_token("w"),
                _ => token::mint_viewer(b"view", &viewer_claims()),
            };
            let at_end = pb::StreamOpen { resume_from_seq: u64::MAX, ..open(role, token) };
            assert_eq!(
                reason(admit(&query(), &at_end, &config(), NOW)),
                RejectReason::BadHandshake,
                "{role:?}"
            );
        }
    }

    #[test]
    fn admits_a_producer_and_a_viewer() {
        let a = admit(&query(), &open(pb::StreamRole::Agent, producer_token("w")), &config(), NOW).unwrap();
        assert_eq!(a.peer, Peer::Producer);
        assert_eq!(a.resume_from_seq, 9);
        assert_eq!(a.key.port, 7681);
        let t = token::mint_viewer(b"view", &viewer_claims());
        let a = admit(&query(), &open(pb::StreamRole::Client, t), &config(), NOW).unwrap();
        let Peer::Viewer(g) = a.peer else { panic!("viewer expected") };
        assert_eq!((g.identity.as_str(), g.lease_epoch, g.authority_epoch), ("s/v", 2, Some(4)));
    }

    #[test]
    fn rejects_each_mismatch_with_its_own_reason() {
        let cfg = config();
        let p = |o| reason(admit(&query(), &o, &cfg, NOW));
        assert_eq!(p(open(pb::StreamRole::Agent, producer_token("other"))), RejectReason::WorkspaceMismatch);
        let forged = format!("{}x", producer_token("w"));
        assert_eq!(p(open(pb::StreamRole::Agent, forged)), RejectReason::BadSignature);
        let viewer = token::mint_viewer(b"view", &viewer_claims());
        assert_eq!(p(open(pb::StreamRole::Agent, viewer.clone())), RejectReason::WrongTokenKind);
        assert_eq!(p(open(pb::StreamRole::Client, producer_token("w"))), RejectReason::WrongTokenKind);
        assert_eq!(p(open(pb::StreamRole::Unspecified, viewer.clone())), RejectReason::BadRole);
        // The producer secret does not sign viewer tokens.
        let wrong_secret = token::mint_viewer(b"prod", &viewer_claims());
        assert_eq!(p(open(pb::StreamRole::Client, wrong_secret)), RejectReason::BadSignature);
        let expired = token::mint_viewer(b"view", &ViewerClaims { exp: NOW, ..viewer_claims() });
        assert_eq!(p(open(pb::StreamRole::Client, expired)), RejectReason::Expired);
        let port = token::mint_viewer(b"view", &ViewerClaims { port: 6080, ..viewer_claims() });
        assert_eq!(p(open(pb::StreamRole::Client, port)), RejectReason::PortMismatch);
        let chan =
            token::mint_viewer(b"view", &ViewerClaims { channel_id: Some("x".into()), ..viewer_claims() });
        assert_eq!(p(open(pb::StreamRole::Client, chan)), RejectReason::ChannelMismatch);
        let agent =
            token::mint_viewer(b"view", &ViewerClaims { agent_id: Some("b".into()), ..viewer_claims() });
        assert_eq!(p(open(pb::StreamRole::Client, agent)), RejectReason::AgentMismatch);
        let mut o = open(pb::StreamRole::Client, viewer.clone());
        o.channel.as_mut().unwrap().channel_id = "other".into();
        assert_eq!(p(o), RejectReason::QueryMismatch);
        let mut o = open(pb::StreamRole::Agent, producer_token("w"));
        o.channel.as_mut().unwrap().kind = pb::StreamKind::Unspecified as i32;
        assert_eq!(p(o), RejectReason::BadKind);
        let mut q = query();
        q.insert("port".into(), "http".into());
        assert_eq!(
            reason(admit(&q, &open(pb::StreamRole::Client, viewer), &cfg, NOW)),
            RejectReason::QueryMismatch
        );
    }

    #[test]
    fn rejection_ack_carries_stream_error() {
        let ack = Rejection::new(RejectReason::Expired, "token expired").ack();
        let Frame::OpenAck(ack) = Frame::decode(ack).unwrap() else { panic!("not an ack") };
        assert!(!ack.accepted);
        let err = ack.error.unwrap();
        assert_eq!(err.code, pb::ErrorCode::Stream as i32);
        assert!(err.message.contains("token expired"), "{}", err.message);
        assert_eq!(err.detail["reason"], "expired");
    }
}
