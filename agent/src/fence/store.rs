//! Where held epochs live on disk: one small file per fence scope in `<state_dir>/fence/`,
//! named by a digest of the scope, so an advance rewrites one file whatever the number of
//! scopes (the whole-map `fence.json` of earlier versions is migrated once, then removed).
//! Every write is temp file + fsync + rename + directory fsync: a crash leaves the old or the
//! new epoch, never neither.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const DIR_NAME: &str = "fence";
/// The single-file state of earlier versions.
const LEGACY_FILE: &str = "fence.json";
const TMP_SUFFIX: &str = ".tmp";

/// One scope's record, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    scope: String,
    held: u32,
}

/// A scope's held epoch as loaded, with when it last advanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub held: u32,
    pub advanced_at: SystemTime,
}

/// The per-scope epoch files of one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) `<state_dir>/fence`, migrating a legacy `fence.json`, and loads every
    /// scope. A corrupt record is an error: starting over from zero would let a stale control
    /// plane in.
    pub fn open(state_dir: &Path) -> anyhow::Result<(Store, HashMap<String, Held>)> {
        let dir = state_dir.join(DIR_NAME);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = Store { dir };
        store.migrate(&state_dir.join(LEGACY_FILE))?;
        let scopes = store.load()?;
        Ok((store, scopes))
    }

    /// Durably records `held` for `scope`.
    pub fn write(&self, scope: &str, held: u32) -> io::Result<()> {
        let bytes =
            serde_json::to_vec(&Record { scope: scope.to_owned(), held }).map_err(io::Error::other)?;
        let path = self.path_of(scope);
        let tmp = path.with_extension(&TMP_SUFFIX[1..]);
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets `scope` (its next request starts from epoch 0). Missing is fine.
    pub fn remove(&self, scope: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path_of(scope)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file of `scope`: any string may be a scope, so the name is a digest of it.
    fn path_of(&self, scope: &str) -> PathBuf {
        let digest = Sha256::digest(scope.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    fn load(&self) -> anyhow::Result<HashMap<String, Held>> {
        let mut scopes = HashMap::new();
        for entry in
            std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?
        {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                // A write that crashed before its rename: the previous record still stands.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let record: Record = serde_json::from_slice(&bytes).with_context(|| {
                format!("fence state {} is corrupt; refusing to forget held epochs", path.display())
            })?;
            let advanced_at =
                std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::now());
            scopes.insert(record.scope, Held { held: record.held, advanced_at });
        }
        Ok(scopes)
    }

    /// Moves a legacy `fence.json` into per-scope files (keeping the higher epoch where a
    /// crashed migration already wrote one), then removes it.
    fn migrate(&self, legacy: &Path) -> anyhow::Result<()> {
        let bytes = match std::fs::read(legacy) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", legacy.display())),
        };
        let old: HashMap<String, u32> = serde_json::from_slice(&bytes).with_context(|| {
            format!("fence state {} is corrupt; refusing to forget held epochs", legacy.display())
        })?;
        let current = self.load()?;
        for (scope, held) in old {
            let held = current.get(&scope).map_or(held, |h| h.held.max(held));
            self.write(&scope, held).with_context(|| format!("migrating {}", legacy.display()))?;
        }
        std::fs::remove_file(legacy).with_context(|| format!("removing {}", legacy.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_of(scopes: &HashMap<String, Held>) -> HashMap<&str, u32> {
        scopes.iter().map(|(s, h)| (s.as_str(), h.held)).collect()
    }

    #[test]
    fn records_survive_a_reopen_and_removals_forget() {
        let dir = tempfile::tempdir().unwrap();
        let (store, scopes) = Store::open(dir.path()).unwrap();
        assert!(scopes.is_empty());
        store.write("a/b c", 7).unwrap();
        store.write("", 3).unwrap();
        store.write("a/b c", 9).unwrap();
        let (store, scopes) = Store::open(dir.path()).unwrap();
        assert_eq!(held_of(&scopes), HashMap::from([("a/b c", 9), ("", 3)]));
        store.remove("a/b c").unwrap();
        store.remove("never").unwrap();
        assert_eq!(held_of(&Store::open(dir.path()).unwrap().1), HashMap::from([("", 3)]));
    }

    #[test]
    fn a_legacy_map_is_migrated_keeping_the_higher_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.write("s1", 12).unwrap();
        std::fs::write(dir.path().join(LEGACY_FILE), br#"{"s1": 10, "s2": 4}"#).unwrap();
        let (_, scopes) = Store::open(dir.path()).unwrap();
        assert_eq!(held_of(&scopes), HashMap::from([("s1", 12), ("s2", 4)]));
        assert!(!dir.path().join(LEGACY_FILE).exists());
    }

    #[test]
    fn corrupt_records_refuse_to_open_and_crashed_temps_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.write("s1", 5).unwrap();
        std::fs::write(dir.path().join(DIR_NAME).join("0123.tmp"), b"{half").unwrap();
        assert_eq!(held_of(&Store::open(dir.path()).unwrap().1), HashMap::from([("s1", 5)]));
        std::fs::write(dir.path().join(DIR_NAME).join("0123.json"), b"{half").unwrap();
        assert!(Store::open(dir.path()).is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEGACY_FILE), b"{not json").unwrap();
        assert!(Store::open(dir.path()).is_err());
    }
}
