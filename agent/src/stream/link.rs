//! One producer connection to the relay: dial `/stream`, send the StreamOpen with the agent's
//! `ogr_` token, and wait for the relay's answer. The token travels only inside the StreamOpen,
//! never in the URL, so it cannot end up in a proxy's access log or in our errors.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::stream::{open, stream_url};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::RelayLink;

/// A connected, accepted producer socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long dialling plus the open handshake may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a producer connection did not come up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The relay answered and said no (bad token, channel already ended, ...).
    #[error("the relay refused the channel: {}", .0.message)]
    Refused(pb::AgentError),
    /// No answer: the relay is down, unreachable or too slow.
    #[error("cannot reach the relay: {0}")]
    Unreachable(String),
}

impl LinkError {
    /// The relay will keep saying no to the same open (a retry needs a new token).
    pub fn is_permanent(&self) -> bool {
        matches!(self, LinkError::Refused(e) if !e.retryable)
    }
}

/// Opens `channel` as its producer, asking for viewer input from `resume_from_seq` on. Returns
/// the socket and the next agent-to-viewer seq the relay expects.
pub async fn open_producer(
    relay: &RelayLink,
    channel: &pb::StreamChannel,
    resume_from_seq: u64,
) -> Result<(Socket, u64), LinkError> {
    let attempt = async {
        let url = stream_url(&relay.url, channel);
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| LinkError::Unreachable(format!("{}: {e}", relay.url)))?;
        let hello = open(channel, pb::StreamRole::Agent, relay.token.expose(), resume_from_seq);
        ws.send(Message::Binary(hello.encode())).await.map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let ack = await_ack(&mut ws).await?;
        if ack.accepted {
            Ok((ws, ack.resume_from_seq))
        } else {
            let error = ack.error.unwrap_or_else(|| pb::AgentError {
                code: pb::ErrorCode::Stream as i32,
                message: "refused without a reason".into(),
                ..Default::default()
            });
            Err(LinkError::Refused(error))
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(LinkError::Unreachable(format!("no StreamOpenAck within {OPEN_TIMEOUT:?}"))))
}

async fn await_ack(ws: &mut Socket) -> Result<pb::StreamOpenAck, LinkError> {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Binary(bytes)) => {
                return match Frame::decode(bytes) {
                    Ok(Frame::OpenAck(ack)) => Ok(ack),
                    Ok(other) => Err(LinkError::Unreachable(format!(
                        "expected StreamOpenAck, got tag {}",
                        other.tag()
                    ))),
                    Err(e) => Err(LinkError::Unreachable(e.to_string())),
                };
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => return Err(LinkError::Unreachable(e.to_string())),
        }
    }
    Err(LinkError::Unreachable("the relay closed the connection during the handshake".into()))
}
