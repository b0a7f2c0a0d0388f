//! What both ends of a relay connection agree on before the first byte (`PROTOCOL.md` §7): the
//! `/stream` URL that names a channel, and the StreamOpen that must match it. The agent (as a
//! producer) and `tetherctl` (as a viewer) build both from here, so they cannot disagree.

use crate::frame::Frame;
use crate::pb;

/// `base?ws=&agent=&port=&channel=` for `channel`; `base` is the relay's `/stream` URL.
pub fn stream_url(base: &str, channel: &pb::StreamChannel) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("ws", &channel.workspace_id)
        .append_pair("agent", &channel.agent_id)
        .append_pair("port", &channel.port.to_string())
        .append_pair("channel", &channel.channel_id)
        .finish();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{query}")
}

/// The opening message of a connection to `channel`.
pub fn open(channel: &pb::StreamChannel, role: pb::StreamRole, token: &str, resume_from_seq: u64) -> Frame {
    Frame::Open(pb::StreamOpen {
        channel: Some(channel.clone()),
        token: token.to_owned(),
        role: role as i32,
        resume_from_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_channel_and_escapes_its_parts() {
        let ch = pb::StreamChannel {
            channel_id: "pty-1&x=y".into(),
            workspace_id: "ws 1".into(),
            agent_id: "a1".into(),
            kind: pb::StreamKind::Pty as i32,
            port: 7681,
        };
        assert_eq!(
            stream_url("ws://127.0.0.1:8443/stream", &ch),
            "ws://127.0.0.1:8443/stream?ws=ws+1&agent=a1&port=7681&channel=pty-1%26x%3Dy"
        );
        assert!(stream_url("wss://r/stream?region=eu", &ch).starts_with("wss://r/stream?region=eu&ws="));
    }
}
