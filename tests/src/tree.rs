//! Directory trees for the sync tests and benchmark: build one, compare two byte for byte
//! (kinds, permission bits, symlink targets, contents), and a library client for an agent.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tether_client::{Client, ClientConfig};

use crate::{Agent, Nats};

/// A `tether-client` library client for `agent`, in fence scope `scope` at `epoch`.
pub async fn client(nats: &Nats, agent: &Agent, scope: &str, epoch: u32) -> Client {
    let config = ClientConfig::new(&agent.ws, &agent.id)
        .expect("client config")
        .with_fence_scope(scope)
        .expect("fence scope")
        .with_epoch(epoch)
        .with_request_timeout(Duration::from_secs(120));
    Client::from_nats(nats.client().await, &config)
}

/// Deterministic bytes that no compression or pattern shortcut could fake; `seed` varies them.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `content` at `root/rel` (parents created) with `mode`.
pub fn put(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, content).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// What a tree holds, as comparable values: path -> (kind, mode, content or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, (char, u32, Vec<u8>)>) {
    let Ok(read) = std::fs::read_dir(dir) else { return };
    for entry in read.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            out.insert(rel, ('l', 0, target.to_string_lossy().as_bytes().to_vec()));
        } else if meta.is_dir() {
            out.insert(rel.clone(), ('d', mode, Vec::new()));
            walk(&path, &rel, out);
        } else {
            out.insert(rel, ('f', mode, std::fs::read(&path).expect("read")));
        }
    }
}

/// Fails with the first difference between two trees (contents summarised by length).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (x, y) = (snapshot(a), snapshot(b));
    let keys_x: Vec<_> = x.keys().collect();
    let keys_y: Vec<_> = y.keys().collect();
    assert_eq!(keys_x, keys_y, "the trees {} and {} hold different paths", a.display(), b.display());
    for (path, (kind, mode, content)) in &x {
        let (kind2, mode2, content2) = &y[path];
        assert_eq!((kind, mode), (kind2, mode2), "{path}: kind or mode differs");
        assert!(
            content == content2,
            "{path}: content differs ({} vs {} bytes)",
            content.len(),
            content2.len()
        );
    }
}
