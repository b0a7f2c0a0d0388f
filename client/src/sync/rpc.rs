//! The agent ops behind a sync (tree_manifest, batch_write, batch_read) as typed calls.

use tether_proto::pb;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as OpResult;

use super::manifest::{Entry, Manifest};
use crate::client::Client;
use crate::envelope;
use crate::error::ClientError;

/// What fetching a remote manifest cost the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteScan {
    /// Manifest pages (requests).
    pub pages: u32,
    /// Files whose content the agent read for a digest.
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Digests the agent served from its cache.
    pub digests_cached: u64,
    /// The remote root did not exist.
    pub root_missing: bool,
}

impl Client {
    /// One page of the manifest of `root` (entries after `after`).
    pub async fn tree_manifest(
        &self,
        request: pb::TreeManifestRequest,
    ) -> Result<pb::TreeManifestResponse, ClientError> {
        match self.call(Op::TreeManifest(request)).await? {
            OpResult::TreeManifest(page) => Ok(page),
            other => Err(envelope::unexpected_result("tree_manifest", &other)),
        }
    }

    /// The whole manifest of `root`, page after page.
    pub async fn remote_manifest(
        &self,
        root: &str,
        excludes: &[String],
    ) -> Result<(Manifest, RemoteScan), ClientError> {
        let mut manifest = Manifest::default();
        let mut scan = RemoteScan::default();
        let mut after = String::new();
        loop {
            let request = pb::TreeManifestRequest {
                root: root.to_owned(),
                excludes: excludes.to_vec(),
                after,
                max_entries: 0,
            };
            let page = self.tree_manifest(request).await?;
            scan.pages += 1;
            scan.files_hashed += page.files_hashed;
            scan.bytes_hashed += page.bytes_hashed;
            scan.digests_cached += page.digests_cached;
            scan.root_missing |= page.root_missing;
            for e in &page.entries {
                manifest.entries.insert(e.path.clone(), Entry::from_remote(e));
            }
            if page.next_after.is_empty() {
                return Ok((manifest, scan));
            }
            after = page.next_after;
        }
    }

    /// Writes a batch of entries and removals below a root (see `BatchWriteRequest`).
    pub async fn batch_write(
        &self,
        request: pb::BatchWriteRequest,
    ) -> Result<pb::BatchWriteResponse, ClientError> {
        match self.call(Op::BatchWrite(request)).await? {
            OpResult::BatchWrite(reply) => Ok(reply),
            other => Err(envelope::unexpected_result("batch_write", &other)),
        }
    }

    /// Reads many small files below `root`; the reply may hold only a prefix of `paths`.
    pub async fn batch_read(
        &self,
        root: &str,
        paths: Vec<String>,
    ) -> Result<pb::BatchReadResponse, ClientError> {
        let op = Op::BatchRead(pb::BatchReadRequest { root: root.to_owned(), paths });
        match self.call(op).await? {
            OpResult::BatchRead(reply) => Ok(reply),
            other => Err(envelope::unexpected_result("batch_read", &other)),
        }
    }
}
