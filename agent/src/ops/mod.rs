//! One module per op family. Each takes a decoded request and returns the response message or
//! an `OpError`; none of them knows about NATS, fencing or reply envelopes.

pub mod desktop;
pub mod exec;
pub mod execution;
pub mod fs;
pub mod metrics;
pub mod pty;
pub mod tree;
