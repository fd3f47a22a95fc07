//! Agent checkpoints: `agent-<id>.checkpoint` holds the last interaction an
//! agent has handled, written atomically, so after a restart it resumes
//! exactly where it acked.

use std::path::{Path, PathBuf};

use crate::event::ValidationError;

/// Agent ids become file names: keep them to a safe alphabet.
pub fn validate_agent(id: &str) -> Result<(), ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "agent",
            format!(
                "must be 1 to 64 characters of [A-Za-z0-9._-], not starting with '.', got {id:?}"
            ),
        ))
    }
}

pub fn path(dir: &Path, agent: &str) -> PathBuf {
    dir.join(format!("agent-{agent}.checkpoint"))
}

/// The last interaction `agent` acked, if any.
pub fn read(dir: &Path, agent: &str) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(path(dir, agent)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} does not hold an interaction number: {:?}",
                    path(dir, agent).display(),
                    text.trim()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records that `agent` handled everything up to `interaction` (temp file,
/// fsync, rename, fsync the directory).
pub fn ack(dir: &Path, agent: &str, interaction: u64) -> std::io::Result<()> {
    crate::files::write_atomic(&path(dir, agent), format!("{interaction}\n").as_bytes())
}
