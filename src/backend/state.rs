//! huddle's private state under `.huddle/`: one place that names it and one
//! routine that loads and saves it.
//!
//! Two kinds of files live there. *Records* (sync state, alert cursors) are
//! saved durably: temp file, fsync, rename, fsync the directory. *Caches*
//! (indexes and read models that a read can rebuild, the snapshot's
//! freshness for status) are saved by rename alone: after a crash one may
//! be missing or cut short, which costs a rebuild (or an older figure) and
//! nothing else, so the reads that keep them pay no fsync.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::model::names::STATE_DIR;

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory of the huddle directory `dir`.
    pub fn of(dir: &Path) -> StateDir {
        StateDir {
            path: dir.join(STATE_DIR),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the state file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The state file `name`, if it is there and parses: a file huddle did
    /// not write, or one cut short, counts as missing.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let bytes = std::fs::read(self.file(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Saves a record, atomically and durably.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        crate::backend::files::write_state(&self.file(name), &bytes)
    }

    /// Saves a cache: atomically (a reader sees the old file or the new
    /// one), not durably.
    pub fn save_cache<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        self.save_cache_bytes(name, &bytes)
    }

    /// Like [`StateDir::save_cache`], for bytes already encoded.
    pub fn save_cache_bytes(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.path)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.path)?;
        tmp.write_all(bytes)?;
        tmp.persist(self.file(name)).map_err(|e| e.error)?;
        Ok(())
    }
}
