//! The Tether wire contract in one place: the protobuf messages of `PROTOCOL.md`, the NATS
//! subject names, and the relay's one-byte-tag frame codec. Pure: no sockets, no runtime.

pub mod digests;
pub mod enrollment;
pub mod frame;
pub mod stream;
pub mod subjects;
pub mod tiles;
pub mod token;

/// Generated protobuf types (`tether.agent.v1`, binary-compatible with `opengeni.agent.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tether.agent.v1.rs"));
}

pub use prost::Message;

/// Logical relay port of PTY channels.
pub const PTY_PORT: u32 = 7681;
/// Logical relay port of desktop channels.
pub const DESKTOP_PORT: u32 = 6080;
