//! Relay framing (`PROTOCOL.md` §7): one binary websocket message = one tag byte + one
//! protobuf body. This module knows the tags, never the sockets.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::pb;

/// One relay message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Open(pb::StreamOpen),
    OpenAck(pb::StreamOpenAck),
    Data(pb::StreamFrame),
    Close(pb::StreamClose),
    DesktopInput(pb::DesktopInput),
    /// EXT: viewer -> agent terminal resize.
    PtyResize(pb::PtyResize),
    /// EXT: relay -> producer, the channel's viewer count (sent after the OpenAck and on change).
    ViewerPresence(pb::ViewerPresence),
}

/// Why bytes are not a relay frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("empty relay message")]
    Empty,
    #[error("unknown relay frame tag {0}")]
    UnknownTag(u8),
    #[error("malformed relay frame body (tag {tag}): {source}")]
    Body { tag: u8, source: prost::DecodeError },
}

impl Frame {
    pub const TAG_OPEN: u8 = 1;
    pub const TAG_OPEN_ACK: u8 = 2;
    pub const TAG_DATA: u8 = 3;
    pub const TAG_CLOSE: u8 = 4;
    pub const TAG_DESKTOP_INPUT: u8 = 5;
    pub const TAG_PTY_RESIZE: u8 = 6;
    pub const TAG_VIEWER_PRESENCE: u8 = 7;

    pub fn tag(&self) -> u8 {
        match self {
            Frame::Open(_) => Self::TAG_OPEN,
            Frame::OpenAck(_) => Self::TAG_OPEN_ACK,
            Frame::Data(_) => Self::TAG_DATA,
            Frame::Close(_) => Self::TAG_CLOSE,
            Frame::DesktopInput(_) => Self::TAG_DESKTOP_INPUT,
            Frame::PtyResize(_) => Self::TAG_PTY_RESIZE,
            Frame::ViewerPresence(_) => Self::TAG_VIEWER_PRESENCE,
        }
    }

    /// Tag byte followed by the protobuf body.
    pub fn encode(&self) -> Bytes {
        let body_len = match self {
            Frame::Open(m) => m.encoded_len(),
            Frame::OpenAck(m) => m.encoded_len(),
            Frame::Data(m) => m.encoded_len(),
            Frame::Close(m) => m.encoded_len(),
            Frame::DesktopInput(m) => m.encoded_len(),
            Frame::PtyResize(m) => m.encoded_len(),
            Frame::ViewerPresence(m) => m.encoded_len(),
        };
        let mut buf = BytesMut::with_capacity(1 + body_len);
        buf.put_u8(self.tag());
        // Encoding into a buffer reserved to the exact length cannot fail.
        let encoded = match self {
            Frame::Open(m) => m.encode(&mut buf),
            Frame::OpenAck(m) => m.encode(&mut buf),
            Frame::Data(m) => m.encode(&mut buf),
            Frame::Close(m) => m.encode(&mut buf),
            Frame::DesktopInput(m) => m.encode(&mut buf),
            Frame::PtyResize(m) => m.encode(&mut buf),
            Frame::ViewerPresence(m) => m.encode(&mut buf),
        };
        debug_assert!(encoded.is_ok());
        buf.freeze()
    }

    /// Decodes one websocket binary message. `Bytes` fields borrow from `msg` (zero-copy).
    pub fn decode(mut msg: Bytes) -> Result<Self, FrameError> {
        if msg.is_empty() {
            return Err(FrameError::Empty);
        }
        let tag = msg[0];
        let body = msg.split_off(1);
        let wrap = |source| FrameError::Body { tag, source };
        Ok(match tag {
            Self::TAG_OPEN => Frame::Open(Message::decode(body).map_err(wrap)?),
            Self::TAG_OPEN_ACK => Frame::OpenAck(Message::decode(body).map_err(wrap)?),
            Self::TAG_DATA => Frame::Data(Message::decode(body).map_err(wrap)?),
            Self::TAG_CLOSE => Frame::Close(Message::decode(body).map_err(wrap)?),
            Self::TAG_DESKTOP_INPUT => Frame::DesktopInput(Message::decode(body).map_err(wrap)?),
            Self::TAG_PTY_RESIZE => Frame::PtyResize(Message::decode(body).map_err(wrap)?),
            Self::TAG_VIEWER_PRESENCE => Frame::ViewerPresence(Message::decode(body).map_err(wrap)?),
            other => return Err(FrameError::UnknownTag(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> pb::StreamChannel {
        pb::StreamChannel {
            channel_id: "c1".into(),
            workspace_id: "ws".into(),
            agent_id: "a".into(),
            kind: pb::StreamKind::Pty as i32,
            port: crate::PTY_PORT,
        }
    }

    #[test]
    fn every_frame_kind_round_trips() {
        let frames = vec![
            Frame::Open(pb::StreamOpen {
                channel: Some(channel()),
                token: "ogr_x.y".into(),
                role: pb::StreamRole::Agent as i32,
                resume_from_seq: 7,
            }),
            Frame::OpenAck(pb::StreamOpenAck { accepted: true, error: None, resume_from_seq: 3 }),
            Frame::Data(pb::StreamFrame {
                channel_id: "c1".into(),
                seq: 42,
                data: Bytes::from_static(b"\x1b[0mhello"),
                produced_at_ms: 1_700_000_000_000,
                delta: true,
            }),
            Frame::Close(pb::StreamClose {
                channel_id: "c1".into(),
                reason: pb::StreamCloseReason::ProcessExit as i32,
                message: "exit 0".into(),
            }),
            Frame::DesktopInput(pb::DesktopInput {
                channel_id: "c1".into(),
                event: Some(pb::desktop_input::Event::Key(pb::KeyEvent {
                    key: "ctrl+c".into(),
                    is_text: false,
                    action: pb::KeyAction::Press as i32,
                })),
            }),
            Frame::PtyResize(pb::PtyResize { cols: 100, rows: 40 }),
            Frame::ViewerPresence(pb::ViewerPresence { channel_id: "c1".into(), viewers: 2 }),
        ];
        for (i, frame) in frames.into_iter().enumerate() {
            let bytes = frame.encode();
            assert_eq!(bytes[0] as usize, i + 1, "tag of {frame:?}");
            assert_eq!(Frame::decode(bytes).unwrap(), frame);
        }
    }

    #[test]
    fn rejects_empty_unknown_and_malformed() {
        assert!(matches!(Frame::decode(Bytes::new()), Err(FrameError::Empty)));
        assert!(matches!(Frame::decode(Bytes::from_static(&[9, 1])), Err(FrameError::UnknownTag(9))));
        // Tag 3 with a truncated length-delimited field.
        let bad = Bytes::from_static(&[3, 0x1a, 0x05, b'a']);
        assert!(matches!(Frame::decode(bad), Err(FrameError::Body { tag: 3, .. })));
    }
}
