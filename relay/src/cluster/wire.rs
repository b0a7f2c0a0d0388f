//! The relay-private messages between replicas. They never leave the relay's own NATS
//! subjects, so they are not part of `tether.proto` (whose numbers are shared with the control
//! plane): the link open is a small protobuf defined here with prost; down the link go the
//! relay messages themselves, and up it one-byte kinds followed by their body.
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
//!   uint32 link_version = 15;       // LINK_VERSION; an owner refuses any other
//! }
//! message OpenReply {
//!   bool accepted = 1; uint64 resume_from_seq = 2;
//!   string reason = 3; string message = 4;        // a refusal (RejectReason label)
//!   string ctl_subject = 5; string input_subject = 6;
//!   uint32 link_version = 7;        // the owner's; the viewer's replica links only to its own
//! }
//! Down (owner -> viewer's replica):  one relay message, as the producer sent it   frames
//!                                    empty                                       heartbeat
//!                                    a relay StreamClose                         close (the last)
//! Ctl (viewer's replica -> owner):   0x01 then u64 BE bytes                      credit (0 = heartbeat)
//!                                    0x02                                        bye
//! Input (viewer's replica -> owner): one relay message (Data, PtyResize, DesktopInput).
//! ```
//!
//! Frames cross as the whole relay messages the producer sent, each a NATS message of its own
//! (no copy on the owner: the client writes the producer's bytes as they are), so everything in
//! them, such as a desktop frame's `delta` flag, reaches a remote viewer exactly as a local one
//! gets it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

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
    #[prost(uint32, tag = "15")]
    pub link_version: u32,
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
    #[prost(uint32, tag = "7")]
    pub link_version: u32,
}

/// The link format both ends must share. Replicas before it (0: unset) framed the down
/// messages otherwise; mixed versions refuse to link rather than misread each other.
pub const LINK_VERSION: u32 = 2;

/// A link's heartbeat from the owner: an empty message on the down subject, where every other
/// message is one relay message as the producer sent it (a `StreamClose` ends the link).
pub const HEARTBEAT: Bytes = Bytes::new();

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
    fn ctl_messages_round_trip_and_garbage_is_refused() {
        assert_eq!(Ctl::decode(Ctl::Credit(77).encode()), Some(Ctl::Credit(77)));
        assert_eq!(Ctl::decode(Ctl::Bye.encode()), Some(Ctl::Bye));
        assert_eq!(Ctl::decode(Bytes::from_static(&[1, 2])), None);
        assert_eq!(Ctl::decode(Bytes::new()), None);
    }
}
