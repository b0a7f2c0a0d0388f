//! Following what an agent announces: `Hello` on every (re)connect and `AgentEvent`s
//! (heartbeats, going_offline), merged into one decoded stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use prost::Message;
use tether_proto::pb;

use crate::client::Client;
use crate::error::ClientError;

/// One announcement of the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    /// Published on `agent.<ws>.<id>.hello` on every (re)connect. Boxed: a Hello is many
    /// times the size of an event.
    Hello(Box<pb::Hello>),
    /// Published on `agent.<ws>.<id>.events`: heartbeat or going_offline.
    Event(pb::AgentEvent),
}

/// The stream returned by [`Client::events`]. An undecodable message is an `Err` item; the
/// stream goes on after it. It ends only when the NATS connection is closed.
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<AgentMessage, ClientError>> + Send>>,
}

impl Stream for EventStream {
    type Item = Result<AgentMessage, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

impl Client {
    /// Subscribes to the agent's hello and events subjects. When this returns, the server has
    /// registered both subscriptions, so nothing published afterwards is missed.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let nats = self.nats();
        let hello_subject = self.subjects().hello();
        let events_subject = self.subjects().events();
        let hello =
            nats.subscribe(hello_subject.clone()).await.map_err(|e| subscribe_error(&hello_subject, &e))?;
        let events =
            nats.subscribe(events_subject.clone()).await.map_err(|e| subscribe_error(&events_subject, &e))?;
        nats.flush().await.map_err(|e| ClientError::Nats(format!("flushing subscriptions: {e}")))?;

        let hello = hello.map(|m| decode_message(&m.subject, &m.payload, "hello"));
        let events = events.map(|m| decode_message(&m.subject, &m.payload, "events"));
        Ok(EventStream { inner: Box::pin(futures::stream::select(hello, events)) })
    }
}

fn subscribe_error(subject: &str, err: &async_nats::SubscribeError) -> ClientError {
    ClientError::Nats(format!("subscribing to {subject}: {err}"))
}

/// Decodes a message of the `leaf` subject (`hello` or `events`).
pub(crate) fn decode_message(subject: &str, payload: &[u8], leaf: &str) -> Result<AgentMessage, ClientError> {
    let undecodable =
        |e: prost::DecodeError| ClientError::Protocol(format!("undecodable message on {subject}: {e}"));
    match leaf {
        "hello" => pb::Hello::decode(payload).map(|h| AgentMessage::Hello(Box::new(h))).map_err(undecodable),
        _ => pb::AgentEvent::decode(payload).map(AgentMessage::Event).map_err(undecodable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_by_subject_kind() {
        let hello = pb::Hello { agent_id: "a".into(), ..Default::default() };
        let got = decode_message("agent.w.a.hello", &hello.encode_to_vec(), "hello").unwrap();
        assert_eq!(got, AgentMessage::Hello(Box::new(hello)));

        let event = pb::AgentEvent {
            agent_id: "a".into(),
            event: Some(pb::agent_event::Event::Heartbeat(pb::Heartbeat { seq: 3, ..Default::default() })),
        };
        let got = decode_message("agent.w.a.events", &event.encode_to_vec(), "events").unwrap();
        assert_eq!(got, AgentMessage::Event(event));
    }

    #[test]
    fn garbage_is_a_protocol_error_naming_the_subject() {
        let err = decode_message("agent.w.a.events", &[0xff, 0xff], "events").unwrap_err();
        assert_eq!(err.code(), Some(pb::ErrorCode::Protocol));
        assert!(err.to_string().contains("agent.w.a.events"));
    }
}
