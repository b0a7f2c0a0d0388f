//! A cache of file content digests keyed by what `stat` says of a file, shared by the agent
//! (tree manifests) and the client (the local side of a sync): a file whose device, inode,
//! size, mtime and ctime are unchanged since it was hashed is not read again. That is what
//! makes a re-sync of an unchanged tree cost a walk of `stat` calls instead of a read of every
//! byte.
//!
//! Soundness rests on ctime: every change to a file's content or metadata sets its ctime to
//! the current time, which nobody can set back. Two changes inside one clock tick may leave the
//! same ctime, so a digest is only [`remembered`](DigestCache::remember) for a file whose ctime
//! lies at least [`RACY_WINDOW`] in the past when it was hashed (as git does for its index): a
//! later change cannot then share its ctime. The one exception is a file the caller itself has
//! just written and renamed into place ([`DigestCache::remember_written`]): its content is known.
//!
//! The file format is a header, fixed-size records and a checksum; a file that does not parse
//! is treated as empty (it is only a cache). Saving writes a temp file and renames it, without
//! fsync: losing the cache costs one re-read of the tree, never a wrong answer.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far in the past a file's ctime must lie for its digest to be remembered.
pub const RACY_WINDOW: Duration = Duration::from_millis(50);
/// Most records kept; beyond it, those not used since the cache was loaded are dropped.
pub const MAX_RECORDS: usize = 500_000;

const MAGIC: &[u8; 8] = b"TTHRDG01";
const RECORD: usize = 8 * 5 + 32;

/// The identity of a file's content as far as `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    key: StatKey,
    digest: [u8; 32],
    used: bool,
}

/// Digests by (device, inode), valid while the rest of the [`StatKey`] matches.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: Option<PathBuf>,
    records: HashMap<(u64, u64), Record>,
    dirty: bool,
}

impl DigestCache {
    /// A cache that lives in memory only.
    pub fn in_memory() -> DigestCache {
        DigestCache::default()
    }

    /// Loads the cache kept at `path` (missing or unreadable: empty); [`save`](Self::save)
    /// writes it back there.
    pub fn load(path: &Path) -> DigestCache {
        let records = std::fs::read(path).ok().and_then(|bytes| decode(&bytes)).unwrap_or_default();
        DigestCache { path: Some(path.to_owned()), records, dirty: false }
    }

    /// The digest of the file `key` describes, if known.
    pub fn get(&mut self, key: &StatKey) -> Option<[u8; 32]> {
        let record = self.records.get_mut(&(key.dev, key.ino))?;
        if record.key != *key {
            return None;
        }
        record.used = true;
        Some(record.digest)
    }

    /// Remembers the digest of a file read while it was `key`, unless its ctime is too recent
    /// to tell a later change apart (see the module doc). Returns whether it was kept.
    pub fn remember(&mut self, key: StatKey, digest: [u8; 32], hashed_at: SystemTime) -> bool {
        let now_ns = hashed_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
        if key.ctime_ns > now_ns - RACY_WINDOW.as_nanos() as i64 {
            return false;
        }
        self.insert(key, digest);
        true
    }

    /// Remembers the digest of a file the caller wrote itself and has just renamed into place.
    pub fn remember_written(&mut self, key: StatKey, digest: [u8; 32]) {
        self.insert(key, digest);
    }

    fn insert(&mut self, key: StatKey, digest: [u8; 32]) {
        let record = Record { key, digest, used: true };
        let old = self.records.insert((key.dev, key.ino), record);
        if old.is_none_or(|o| o.key != key || o.digest != digest) {
            self.dirty = true;
        }
    }

    /// How many digests are known.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Writes the cache back where it was loaded from, if it changed.
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        if self.records.len() > MAX_RECORDS {
            self.records.retain(|_, r| r.used);
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&encode(&self.records)));
        match written.and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

fn encode(records: &HashMap<(u64, u64), Record>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 16 + records.len() * RECORD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for r in records.values() {
        let k = r.key;
        for n in [k.dev, k.ino, k.size, k.mtime_ns as u64, k.ctime_ns as u64] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&r.digest);
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<HashMap<(u64, u64), Record>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
    if fnv1a(body).to_le_bytes() != sum || !body.starts_with(MAGIC) {
        return None;
    }
    let count = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?) as usize;
    let records = body.get(16..)?;
    if records.len() != count.checked_mul(RECORD)? {
        return None;
    }
    let mut map = HashMap::with_capacity(count);
    for rec in records.chunks_exact(RECORD) {
        let n = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let key = StatKey { dev: n(0), ino: n(1), size: n(2), mtime_ns: n(3) as i64, ctime_ns: n(4) as i64 };
        let digest: [u8; 32] = rec[40..72].try_into().ok()?;
        map.insert((key.dev, key.ino), Record { key, digest, used: false });
    }
    Some(map)
}

/// 64-bit FNV-1a: enough to tell a torn or foreign file from ours.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64, ctime_ns: i64) -> StatKey {
        StatKey { dev: 1, ino, size: 10, mtime_ns: 5, ctime_ns }
    }

    #[test]
    fn a_saved_cache_loads_back_and_a_changed_stat_misses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("digests");
        let mut cache = DigestCache::load(&path);
        let now = SystemTime::now();
        assert!(cache.remember(key(1, 1_000), [7; 32], now));
        cache.remember_written(key(2, i64::MAX), [8; 32]);
        cache.save().unwrap();
        let mut back = DigestCache::load(&path);
        assert_eq!(back.len(), 2);
        assert_eq!(back.get(&key(1, 1_000)), Some([7; 32]));
        assert_eq!(back.get(&key(1, 1_001)), None, "a new ctime is a new content");
        assert_eq!(back.get(&key(2, i64::MAX)), Some([8; 32]));
    }

    #[test]
    fn a_file_changed_within_the_racy_window_is_not_remembered() {
        let mut cache = DigestCache::in_memory();
        let now = SystemTime::now();
        let now_ns = now.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert!(!cache.remember(key(1, now_ns - 1_000_000), [1; 32], now));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_torn_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("digests");
        let mut cache = DigestCache::load(&path);
        cache.remember_written(key(1, 1), [1; 32]);
        cache.save().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(DigestCache::load(&path).is_empty());
    }
}
