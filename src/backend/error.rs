//! Why an operation on a log failed: one error type for every backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::event::ValidationError;

/// Why an operation on the log failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The lock stayed taken through every attempt; nothing was written
    /// (a [`crate::backend::queue::Queued`] log keeps the events in its
    /// queue and answers `LockTimeout`).
    #[error("could not lock {path} after {attempts} attempts over {waited:.1?}")]
    Busy {
        path: PathBuf,
        attempts: u32,
        waited: Duration,
    },
    /// The lock stayed taken through every attempt; the events were queued.
    #[error(
        "could not lock {path} after {attempts} attempts over {waited:.1?}; \
         the event was kept in {queue} and will be written by the next successful append"
    )]
    LockTimeout {
        path: PathBuf,
        attempts: u32,
        waited: Duration,
        queue: PathBuf,
    },
    /// Like `LockTimeout`, but the event could not even be queued.
    #[error("could not lock {path} after {attempts} attempts, and could not queue the event in {queue}: {source}")]
    LockTimeoutNotQueued {
        path: PathBuf,
        attempts: u32,
        queue: PathBuf,
        source: std::io::Error,
    },
    /// huddle is paused, and the append could not wait in the queue (a
    /// conditional append: an election claim, a leader's heartbeat).
    #[error("huddle is paused ({reason}); nothing was written, and this append cannot wait in the queue")]
    PausedNotQueued { reason: String },
    /// huddle is paused after a write error; the events were queued.
    #[error("huddle is paused ({reason}); the event was queued in {queue} and will be written after `huddle resume`")]
    Paused { reason: String, queue: PathBuf },
    /// The disk refused the write; the events were queued instead.
    #[error("cannot append to {path}: {source}; the event was kept in {queue} and will be written by the next append that succeeds (or `huddle resume`)")]
    WriteRefusedQueued {
        path: PathBuf,
        source: std::io::Error,
        queue: PathBuf,
    },
    /// No server of a networked backend answered within the deadline;
    /// nothing was written (a [`crate::backend::queue::Queued`] log keeps
    /// the events in its queue and answers `UnreachableQueued`).
    #[error("cannot reach the log's server ({server}): {reason}")]
    Unreachable { server: String, reason: String },
    /// No server answered; the events were queued. `unreachable` is what
    /// [`StoreError::Unreachable`] said.
    #[error(
        "{unreachable}; the event was kept in {queue} \
         and will be published by the next append that reaches the server"
    )]
    UnreachableQueued { unreachable: String, queue: PathBuf },
    /// The server of a networked backend answered, and refused.
    #[error("the log's server ({server}) refused to {action}: {reason}")]
    Server {
        server: String,
        action: &'static str,
        reason: String,
    },
    /// An I/O operation failed; the file is left as it was before the call.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True for failures that mean the disk refuses writes (full, read-only,
    /// permission denied): the daemon pauses on these.
    pub fn is_write_refused(&self) -> bool {
        match self {
            StoreError::Io { source, .. } | StoreError::WriteRefusedQueued { source, .. } => {
                is_refusal(source)
            }
            _ => false,
        }
    }
}

/// Disk full, read-only file system, permission denied, quota — also when
/// the OS error arrives wrapped (tempfile adds the path to the errors it
/// returns, keeping only their kind and the original as the inner error).
pub fn is_refusal(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC | libc::EROFS | libc::EACCES | libc::EPERM | libc::EDQUOT)
    ) || matches!(
        error.kind(),
        ErrorKind::StorageFull
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::PermissionDenied
            | ErrorKind::QuotaExceeded
    ) || error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(is_refusal)
}
