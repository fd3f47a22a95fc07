//! `huddle resume`: lift a pause once the log takes writes again.

use crate::backend::StoreError;
use crate::services::workspace::Workspace;

#[derive(Debug, PartialEq, Eq)]
pub enum Resumed {
    NotPaused,
    /// The queued events are in the log, in order, and the pause is lifted.
    Resumed {
        moved: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("still cannot write (paused since {since} because: {reason}); huddle stays paused: {source}")]
    StillRefused {
        since: String,
        reason: String,
        source: StoreError,
    },
    #[error("cannot lift the pause: {0}")]
    Lift(std::io::Error),
}

/// Writes the queued events, then lifts the pause: only once the queue is
/// in the log is the cause fixed.
pub fn resume(workspace: &Workspace) -> Result<Resumed, ResumeError> {
    let Some(pause) = crate::backend::pause::paused(&workspace.dir) else {
        return Ok(Resumed::NotPaused);
    };
    let moved = workspace
        .flush_queues()
        .map_err(|source| ResumeError::StillRefused {
            since: pause.since.clone(),
            reason: pause.reason.clone(),
            source,
        })?;
    crate::backend::pause::clear(&workspace.dir).map_err(ResumeError::Lift)?;
    Ok(Resumed::Resumed { moved })
}
