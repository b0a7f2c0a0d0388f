//! The relay-private messages between replicas. They never leave the relay's own NATS
//! subjects, so they are not part of `tether.proto` (whose numbers are shared with the control
//! plane): the link open is a small protobuf defined here with prost, the link itself a one-byte
//! kind followed by its body.
//!
//! ```text
//! message OpenRequest {            // <prefix>.open.<key>, request
//!   string workspace_id = 1; string agent_id = 2; uint32 port = 3; string channel_id = 4;
//!   int32 kind = 5;                 // StreamKind the viewer declared
//!   uint64 resume_from_seq = 6;     // the viewer's cursor
//!   string identity = 7; string holder = 8; uint64 lease_epoch = 9;
//!   optional uint64 authority_epoch = 10; bool control = 11; bool read_only = 12;
//!   string down_subject = 13;       // where the owner sends Down messages
//!   uint64 credit = 14;             // bytes the owner may send before more credit
//! }
//! message OpenReply {
//!   bool accepted = 1; uint64 resume_from_seq = 2;
//!   string reason = 3; string message = 4;        // a refusal (RejectReason label)
//!   string ctl_subject = 5; string input_subject = 6;
//! }
//! Down (owner -> viewer's replica):  0x01 then (u32 BE length, relay message)*   frames
//!                                    0x02                                        heartbeat
//!                                    0x03 then an encoded StreamClose frame      close
//! Ctl (viewer's replica -> owner):   0x01 then u64 BE bytes                      credit (0 = heartbeat)
//!                                    0x02                                        bye
//! Input (viewer's replica -> owner): one relay message (Data, PtyResize, DesktopInput).
//! ```
//!
//! Frames cross as the whole relay messages the producer sent, so everything in them, such as a
//! desktop frame's `delta` flag, reaches a remote viewer exactly as a local one gets it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tether_proto::frame::Frame;
use tether_proto::pb;

#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenRequest {
    #[prost(string, tag = "1")]
    pub workspace_id: String,
    #[prost(string, tag = "2")]
    pub agent_id: String,
    #[prost(uint32, tag = "3")]
    pub port: u32,
    #[prost(string, tag = "4")]
    pub channel_id: String,
    #[prost(int32, tag = "5")]
    pub kind: i32,
    #[prost(uint64, tag = "6")]
    pub resume_from_seq: u64,
    #[prost(string, tag = "7")]
    pub identity: String,
    #[prost(string, tag = "8")]
    pub holder: String,
    #[prost(uint64, tag = "9")]
    pub lease_epoch: u64,
    #[prost(uint64, optional, tag = "10")]
    pub authority_epoch: Option<u64>,
    #[prost(bool, tag = "11")]
    pub control: bool,
    #[prost(bool, tag = "12")]
    pub read_only: bool,
    #[prost(string, tag = "13")]
    pub down_subject: String,
    #[prost(uint64, tag = "14")]
    pub credit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenReply {
    #[prost(bool, tag = "1")]
    pub accepted: bool,
    #[prost(uint64, tag = "2")]
    pub resume_from_seq: u64,
    #[prost(string, tag = "3")]
    pub reason: String,
    #[prost(string, tag = "4")]
    pub message: String,
    #[prost(string, tag = "5")]
    pub ctl_subject: String,
    #[prost(string, tag = "6")]
    pub input_subject: String,
}

const FRAMES: u8 = 1;
const HEARTBEAT: u8 = 2;
const CLOSE: u8 = 3;

/// A message from the owner to the viewer's replica.
#[derive(Debug, PartialEq)]
pub enum Down {
    Frames(Vec<Bytes>),
    Heartbeat,
    Close(pb::StreamClose),
}

impl Down {
    pub fn encode(&self) -> Bytes {
        match self {
            Down::Frames(msgs) => {
                let len: usize = msgs.iter().map(|m| m.len() + 4).sum();
                let mut out = BytesMut::with_capacity(1 + len);
                out.put_u8(FRAMES);
                for m in msgs {
                    out.put_u32(u32::try_from(m.len()).unwrap_or(u32::MAX));
                    out.put_slice(m);
                }
                out.freeze()
            }
            Down::Heartbeat => Bytes::from_static(&[HEARTBEAT]),
            Down::Close(close) => {
                let frame = Frame::Close(close.clone()).encode();
                let mut out = BytesMut::with_capacity(1 + frame.len());
                out.put_u8(CLOSE);
                out.put_slice(&frame);
                out.freeze()
            }
        }
    }

    /// `None` for anything malformed.
    pub fn decode(mut payload: Bytes) -> Option<Down> {
        if payload.is_empty() {
            return None;
        }
        match payload.get_u8() {
            FRAMES => {
                let mut msgs = Vec::new();
                while payload.remaining() >= 4 {
                    let len = payload.get_u32() as usize;
                    if payload.remaining() < len {
                        return None;
                    }
                    msgs.push(payload.split_to(len));
                }
                payload.is_empty().then_some(Down::Frames(msgs))
            }
            HEARTBEAT => Some(Down::Heartbeat),
            CLOSE => match Frame::decode(payload) {
                Ok(Frame::Close(close)) => Some(Down::Close(close)),
                _ => None,
            },
            _ => None,
        }
    }
}

const CREDIT: u8 = 1;
const BYE: u8 = 2;

/// A message from the viewer's replica to the owner.
#[derive(Debug, PartialEq)]
pub enum Ctl {
    /// More bytes the owner may send (0: only a heartbeat).
    Credit(u64),
    /// The viewer left.
    Bye,
}

impl Ctl {
    pub fn encode(&self) -> Bytes {
        match self {
            Ctl::Credit(n) => {
                let mut out = BytesMut::with_capacity(9);
                out.put_u8(CREDIT);
                out.put_u64(*n);
                out.freeze()
            }
            Ctl::Bye => Bytes::from_static(&[BYE]),
        }
    }

    pub fn decode(mut payload: Bytes) -> Option<Ctl> {
        if payload.is_empty() {
            return None;
        }
        match payload.get_u8() {
            CREDIT if payload.remaining() == 8 => Some(Ctl::Credit(payload.get_u64())),
            BYE => Some(Ctl::Bye),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_messages_round_trip_and_garbage_is_refused() {
        let frames = Down::Frames(vec![Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"c")]);
        assert_eq!(Down::decode(frames.encode()), Some(frames));
        assert_eq!(Down::decode(Down::Heartbeat.encode()), Some(Down::Heartbeat));
        let close = pb::StreamClose { channel_id: "c".into(), reason: 2, message: "m".into() };
        assert_eq!(Down::decode(Down::Close(close.clone()).encode()), Some(Down::Close(close)));
        assert_eq!(Down::decode(Bytes::from_static(&[1, 0, 0, 0, 9, 1])), None);
        assert_eq!(Down::decode(Bytes::new()), None);
        assert_eq!(Ctl::decode(Ctl::Credit(77).encode()), Some(Ctl::Credit(77)));
        assert_eq!(Ctl::decode(Ctl::Bye.encode()), Some(Ctl::Bye));
        assert_eq!(Ctl::decode(Bytes::from_static(&[1, 2])), None);
    }

    #[test]
    fn a_desktop_delta_frame_crosses_with_its_flag() {
        let frame = |seq, delta| {
            Frame::Data(pb::StreamFrame {
                channel_id: "d".into(),
                seq,
                data: Bytes::from_static(b"TTI1\0\x08\0\x08\0\0"),
                produced_at_ms: 1,
                delta,
            })
            .encode()
        };
        let down = Down::Frames(vec![frame(4, false), frame(5, true)]);
        let Some(Down::Frames(msgs)) = Down::decode(down.encode()) else { panic!("frames") };
        let flags: Vec<(u64, bool)> = msgs
            .into_iter()
            .map(|m| match Frame::decode(m) {
                Ok(Frame::Data(f)) => (f.seq, f.delta),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(flags, [(4, false), (5, true)]);
    }
}
