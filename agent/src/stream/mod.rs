//! The agent's side of the stream plane (`PROTOCOL.md` §7): the producer connection to the relay
//! and the pump that keeps one channel flowing across relay restarts. What produces the bytes (a
//! PTY today, a desktop later) is behind [`pump::Endpoint`]; nothing here knows about terminals.

#[cfg(feature = "desktop")]
pub mod desktop;
#[cfg(feature = "desktop")]
pub mod frames;
pub mod link;
pub mod outbox;
pub mod pump;
#[cfg(feature = "desktop")]
pub mod tiles;
