//! Pause and the offline queue, around any backend.
//!
//! Appends through a [`Queued`] backend never fail silently and never lose an
//! event: while huddle is paused (after a write error, until `huddle
//! resume`), and when the backend cannot take them (the lock never came, the
//! disk refuses writes), the events wait in a local queue —
//! `events.offline.log` in the huddle directory, else the spool outside it
//! (see [`crate::backend::pause`]) — and the caller gets an error saying so.
//! The next append that gets through moves the queue into the log first, in
//! order, each event exactly once; `huddle resume` does it on demand.
//!
//! Exactly once: before moving a queue, the position of the log's head is
//! noted in the state directory; after the move the queue is emptied and the
//! note removed. If a crash falls in between, the next flush finds the note
//! and skips queued events whose ids already appear after that position; the
//! note keeps that first position through any number of interrupted flushes.
//! A backend with its own duplicate detection (JetStream's message ids) gets
//! the same answer from it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::offline;
use super::{
    Backend, Conditional, Continuity, Fetch, Malformed, Position, ReadMark, StoreError, Stored,
    Subscription,
};
use crate::backend::pause;
use crate::model::event::{types, Event, InteractionRef, NewEvent, HOST_ACTOR};

pub use super::file::OFFLINE_FILE;

/// A backend whose appends wait in the offline queue when they cannot go through.
pub struct Queued<B> {
    inner: B,
    dir: PathBuf,
}

impl<B: Backend> Queued<B> {
    /// `dir` is the huddle directory: the queue and the pause are its.
    pub fn new(inner: B, dir: impl Into<PathBuf>) -> Queued<B> {
        Queued {
            inner,
            dir: dir.into(),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The huddle directory whose queue and pause these are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn local_queue(&self) -> PathBuf {
        self.dir.join(OFFLINE_FILE)
    }

    fn spool_queue(&self) -> PathBuf {
        pause::spool_dir(&self.dir).join(pause::SPOOL_QUEUE)
    }

    fn state_dir(&self) -> PathBuf {
        crate::backend::state::StateDir::of(&self.dir)
            .path()
            .to_path_buf()
    }

    /// Moves every queued event into the log, ignoring a pause (`huddle
    /// resume`). Returns how many were moved.
    pub fn flush_queues(&self) -> Result<usize, StoreError> {
        let mut moved = self.flush_queue(&self.local_queue())?;
        moved += self.flush_queue(&self.spool_queue())?;
        Ok(moved)
    }

    fn flush_queue(&self, queue: &Path) -> Result<usize, StoreError> {
        let io = |action| {
            let queue = queue.to_path_buf();
            move |source| StoreError::Io {
                action,
                path: queue,
                source,
            }
        };
        let taken = offline::take(queue, &self.state_dir(), &self.inner).map_err(|error| {
            // Reading the log for the flush found no server: that is the
            // backend's answer (the events wait), not a broken queue file.
            let unreachable = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<StoreError>())
                .is_some_and(|store| matches!(store, StoreError::Unreachable { .. }));
            if !unreachable {
                return io("read")(error);
            }
            match error
                .into_inner()
                .map(|inner| inner.downcast::<StoreError>())
            {
                Some(Ok(store)) => *store,
                _ => io("read")(std::io::Error::other("the log's server did not answer")),
            }
        })?;
        let Some(pending) = taken else {
            return Ok(0);
        };
        let wanted: Vec<bool> = pending
            .events
            .iter()
            .map(offline::needs_allocation)
            .collect();
        let moved = pending.events.len();
        if moved > 0 {
            super::append_numbered(&self.inner, pending.events.clone(), &wanted)?;
        }
        // The queue may be emptied only once its events are in the log.
        pending.done().map_err(io("empty"))?;
        Ok(moved)
    }

    /// Keeps events in a queue: the directory's if it takes them, else the
    /// spool outside the directory. Returns the queue used.
    fn enqueue(&self, events: &[Event]) -> std::io::Result<PathBuf> {
        let local = self.local_queue();
        match offline::enqueue(&local, events) {
            Ok(()) => Ok(local),
            Err(_) => {
                let spool = pause::spool_dir(&self.dir);
                std::fs::create_dir_all(&spool)?;
                let queue = spool.join(pause::SPOOL_QUEUE);
                offline::enqueue(&queue, events)?;
                Ok(queue)
            }
        }
    }

    /// What became of events the backend could not take: queued, and the
    /// error says where; any other failure is the caller's.
    fn keep(&self, events: &[Event], error: StoreError) -> StoreError {
        match error {
            StoreError::Busy {
                path,
                attempts,
                waited,
            } => {
                let mut queued = events.to_vec();
                queued.push(lock_failure_report(events, attempts, waited, &path));
                match self.enqueue(&queued) {
                    Ok(queue) => StoreError::LockTimeout {
                        path,
                        attempts,
                        waited,
                        queue,
                    },
                    Err(source) => StoreError::LockTimeoutNotQueued {
                        path,
                        attempts,
                        queue: self.local_queue(),
                        source,
                    },
                }
            }
            StoreError::Io {
                action,
                path,
                source,
            } if super::file::is_refusal(&source) => match self.enqueue(events) {
                Ok(queue) => StoreError::WriteRefusedQueued {
                    path,
                    source,
                    queue,
                },
                Err(_) => StoreError::Io {
                    action,
                    path,
                    source,
                },
            },
            unreachable @ StoreError::Unreachable { .. } => match self.enqueue(events) {
                Ok(queue) => StoreError::UnreachableQueued {
                    unreachable: unreachable.to_string(),
                    queue,
                },
                Err(_) => unreachable,
            },
            other => other,
        }
    }

    /// The guard every append passes: nothing while paused, the queue first.
    /// `queueable`: whether the events may wait in the queue (see
    /// [`may_wait`]); if not, a pause or a lock that never comes is the
    /// caller's error, and nothing is kept.
    fn before_append(&self, events: &[Event], queueable: bool) -> Result<(), StoreError> {
        for event in events {
            event.check(self.inner.max_content_bytes())?;
        }
        if let Some(pause) = pause::paused(&self.dir) {
            if !queueable {
                return Err(StoreError::PausedNotQueued {
                    reason: pause.reason,
                });
            }
            let queue = self.enqueue(events).map_err(|source| StoreError::Io {
                action: "queue the event in",
                path: self.local_queue(),
                source,
            })?;
            return Err(StoreError::Paused {
                reason: pause.reason,
                queue,
            });
        }
        self.flush_queues()
            .map_err(|error| self.keep_if(queueable, events, error))?;
        Ok(())
    }

    fn keep_if(&self, queueable: bool, events: &[Event], error: StoreError) -> StoreError {
        if queueable {
            self.keep(events, error)
        } else {
            error
        }
    }
}

/// Whether a conditional append may wait in the queue. Its condition holds
/// now, not when the queue is flushed (unconditionally, later): only events
/// whose one condition is their `next` number, allocated again when they
/// are written, may wait. An election claim or a leader's fenced heartbeat
/// must not land later, when it may depose a leader elected meanwhile.
fn may_wait(events: &[Event]) -> bool {
    events
        .iter()
        .any(|event| event.extra.contains_key(super::ALLOCATE_FIELD))
}

/// The `error` event kept with events the lock never came for.
fn lock_failure_report(events: &[Event], attempts: u32, waited: Duration, path: &Path) -> Event {
    let actor = events.first().map_or(HOST_ACTOR, |e| e.actor.as_str());
    let interaction = events.first().map_or(0, |e| e.interaction);
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    NewEvent::new(
        InteractionRef::Number(interaction),
        actor,
        types::ERROR,
        format!("Failed to acquire lock on {file} after {attempts} attempts over {waited:.1?}"),
    )
    .cut_to_fit()
    .into_event(interaction)
}

impl<B: Backend> Queued<B> {
    /// A compare-and-append of `events` through `append`, queued on
    /// failure only if they may wait (see [`may_wait`]).
    fn append_conditionally(
        &self,
        events: &[Event],
        append: impl FnOnce(&B) -> Result<Conditional, StoreError>,
    ) -> Result<Conditional, StoreError> {
        let queueable = may_wait(events);
        self.before_append(events, queueable)?;
        append(&self.inner).map_err(|error| self.keep_if(queueable, events, error))
    }
}

impl<B: Backend> Backend for Queued<B> {
    fn max_content_bytes(&self) -> usize {
        self.inner.max_content_bytes()
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.before_append(events, true)?;
        self.inner
            .append_events(events)
            .map_err(|error| self.keep(events, error))
    }

    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError> {
        self.append_conditionally(events, |inner| inner.append_if_head(head, events))
    }

    fn append_if_head_volatile(
        &self,
        head: Position,
        events: &[Event],
    ) -> Result<Conditional, StoreError> {
        self.append_conditionally(events, |inner| inner.append_if_head_volatile(head, events))
    }

    fn read_entries(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(Position, Vec<Malformed>), StoreError> {
        self.inner.read_entries(from, visit)
    }

    fn head(&self) -> Result<Position, StoreError> {
        self.inner.head()
    }

    fn remaining(&self, from: Position) -> Result<u64, StoreError> {
        self.inner.remaining(from)
    }

    fn set_aside(&self, entries: &[Malformed]) -> Result<Vec<Malformed>, StoreError> {
        self.inner.set_aside(entries)
    }

    fn quarantine_report(&self, entry: &Malformed) -> String {
        self.inner.quarantine_report(entry)
    }

    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError> {
        self.inner.highest_interaction()
    }

    fn highest_interaction_near_end(&self) -> Option<u64> {
        self.inner.highest_interaction_near_end()
    }

    fn fetcher(&self) -> Result<Box<dyn Fetch + '_>, StoreError> {
        self.inner.fetcher()
    }

    fn offline(&self) -> Option<String> {
        self.inner.offline()
    }

    fn keep_local_copy(&self) -> Result<(), StoreError> {
        self.inner.keep_local_copy()
    }

    fn subscribe(&self) -> Result<Subscription, StoreError> {
        self.inner.subscribe()
    }

    fn mark(&self, at: Position) -> Result<ReadMark, StoreError> {
        self.inner.mark(at)
    }

    fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError> {
        self.inner.continuity(mark)
    }
}
