//! Typed async client for Tether agents over NATS (PROTOCOL.md), and the library behind the
//! `tetherctl` CLI.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tether_client::ClientError> {
//! use tether_client::{Client, ClientConfig, WriteOptions, pb};
//!
//! let client = Client::connect(ClientConfig::new("ws1", "laptop")?).await?;
//! client.ping(1).await?;
//! let out = client
//!     .exec(pb::ExecRequest { command: vec!["uname".into(), "-a".into()], ..Default::default() })
//!     .await?;
//! client.write_file("notes/big.bin", vec![0u8; 20 << 20].into(), WriteOptions::default()).await?;
//! let back = client.read_file("notes/big.bin").await?;
//! # let _ = (out, back); Ok(()) }
//! ```
//!
//! Every request carries a unique request id, the client's epoch and its fence scope (a fresh
//! one per client unless configured); failures are one [`ClientError`] whose
//! [`code`](ClientError::code) is the protocol's error code.

mod client;
mod config;
mod download;
mod envelope;
mod error;
mod events;
mod execution;
mod pipeline;
pub mod sync;
mod transfer;
mod unique;
mod upload;
pub mod viewer;

pub use client::{Client, exec_reply_timeout};
pub use config::{
    ClientConfig, DEFAULT_NATS_URL, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES, EXEC_TIMEOUT_MARGIN, NatsAuth,
};
pub use download::{GetOptions, partial_path};
pub use envelope::{build_request, op_name, open_response};
pub use error::ClientError;
pub use events::{AgentMessage, EventStream};
pub use execution::{AttachFrom, OutputEvent, OutputStream, SILENCE, StdinWriter};
pub use sync::{
    DownOptions, DownReport, Prefer, SyncError, UpOptions, UpReport, snapshot, sync_down, sync_up,
};
pub use transfer::{READ_AHEAD, WriteOptions, chunk_size, plan_chunks, temp_upload_path, write_chunk_size};
pub use upload::{
    MAX_WINDOW, Precondition, Progress, PutOptions, TARGET_IN_FLIGHT, TransferReport, derive_transfer_id,
    gaps, window_for,
};
pub use viewer::{InputSlot, Viewer, ViewerConfig, ViewerError, ViewerEvent, ViewerInput};

/// The protobuf types of the wire contract (re-exported from `tether-proto`).
pub use tether_proto::pb;
/// The op and result enums of the envelope, for [`Client::call`].
pub use tether_proto::pb::control_request::Op;
pub use tether_proto::pb::control_response::Result as OpResult;
