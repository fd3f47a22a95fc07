//! Agent checkpoints: `agent-<id>.checkpoint` holds the last interaction an
//! agent has handled, written atomically, so after a restart it resumes
//! exactly where it acked.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model::event::{ValidationError, MAX_NUMBER};

/// A checkpoint is one number and a newline; anything longer was not
/// written by huddle, and is not read whole.
const MAX_CHECKPOINT_BYTES: u64 = 64;

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
    use crate::model::names::{CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX};
    dir.join(format!("{CHECKPOINT_PREFIX}{agent}{CHECKPOINT_SUFFIX}"))
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file holds something huddle never writes (a hand edit, another
    /// tool, a disk fault): the agent's place is unknown, so nothing is
    /// guessed.
    #[error(
        "{path} is damaged: {problem}; a checkpoint holds one interaction number \
         (0 to {MAX_NUMBER}). Set it with `huddle ack --agent {agent} N`, or delete \
         the file to start from the first interaction"
    )]
    Damaged {
        path: String,
        agent: String,
        problem: String,
    },
}

/// The last interaction `agent` acked, if any.
pub fn read(dir: &Path, agent: &str) -> Result<Option<u64>, CheckpointError> {
    let path = path(dir, agent);
    let shown = path.display().to_string();
    let read_error = |source| CheckpointError::Read {
        path: shown.clone(),
        source,
    };
    let mut bytes = Vec::new();
    match std::fs::File::open(&path) {
        Ok(file) => file
            .take(MAX_CHECKPOINT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let damaged = |problem: String| CheckpointError::Damaged {
        path: shown.clone(),
        agent: agent.to_string(),
        problem,
    };
    if bytes.len() as u64 > MAX_CHECKPOINT_BYTES {
        return Err(damaged(format!(
            "it is over the limit of {MAX_CHECKPOINT_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| damaged("it is not text (it holds bytes that are not UTF-8)".into()))?
        .trim();
    if text.is_empty() {
        return Err(damaged("it is empty".into()));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(damaged(format!(
            "it holds {text:?}, not a non-negative integer"
        )));
    }
    match text.parse::<u64>() {
        Ok(number) if number <= MAX_NUMBER => Ok(Some(number)),
        _ => Err(damaged(format!(
            "it holds {text}, over the limit of {MAX_NUMBER} (2^53 - 1)"
        ))),
    }
}

/// Records that `agent` handled everything up to `interaction` (temp file,
/// fsync, rename, fsync the directory).
pub fn ack(dir: &Path, agent: &str, interaction: u64) -> std::io::Result<()> {
    crate::backend::files::write_atomic(&path(dir, agent), format!("{interaction}\n").as_bytes())
}
