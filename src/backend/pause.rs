//! Pausing on write errors (brief, section 6.2: "pause further operations
//! until manual intervention").
//!
//! When the daemon cannot write (disk full, read-only file system, permission
//! denied) it stops writing and records a pause; `huddle resume` lifts it.
//! The pause and the events queued meanwhile live in a spool directory
//! *outside* the huddle directory — the one place that cannot be written is
//! the huddle directory's file system — under `$XDG_STATE_HOME/huddle/<id>/`
//! (else `~/.local/state/huddle/<id>/`), where `<id>` is a hash of the
//! directory's canonical path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PAUSE_FILE: &str = "paused.json";
pub use crate::model::names::OFFLINE_FILE as SPOOL_QUEUE;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pause {
    /// What could not be written, and the OS error.
    pub reason: String,
    pub since: String,
    /// The daemon that paused.
    pub by: String,
}

/// The spool directory of a huddle directory.
pub fn spool_dir(dir: &Path) -> PathBuf {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let id = format!(
        "{:x}",
        Sha256::digest(canonical.as_os_str().as_encoded_bytes())
    );
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("huddle").join(&id[..16])
}

pub fn paused(dir: &Path) -> Option<Pause> {
    let bytes = std::fs::read(spool_dir(dir).join(PAUSE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn pause(dir: &Path, by: &str, reason: &str) -> std::io::Result<Pause> {
    let spool = spool_dir(dir);
    std::fs::create_dir_all(&spool)?;
    let pause = Pause {
        reason: reason.to_string(),
        since: crate::model::event::now_rfc3339(),
        by: by.to_string(),
    };
    crate::backend::files::write_atomic(
        &spool.join(PAUSE_FILE),
        &serde_json::to_vec_pretty(&pause).unwrap_or_default(),
    )?;
    Ok(pause)
}

/// Lifts the pause; false if there was none.
pub fn clear(dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(spool_dir(dir).join(PAUSE_FILE)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
