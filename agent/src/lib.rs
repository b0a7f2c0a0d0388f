//! `tether-agent` as a library: the daemon's parts, so the binary, the tests and later tools
//! share one code path. `serve` owns NATS; `dispatch` routes a decoded request through the
//! fence to one op family in `ops`; ops know nothing of NATS.

pub mod config;
pub mod dedup;
pub mod dispatch;
pub mod display;
pub mod enroll;
pub mod error;
pub mod fence;
pub mod hello;
pub mod open_nats;
pub mod ops;
pub mod paths;
pub mod placement;
pub mod process;
pub mod sandbox;
pub mod serve;
pub mod service;
pub mod size;
pub mod state_lock;
pub mod status;
pub mod stream;

pub use error::{OpError, OpResult};
