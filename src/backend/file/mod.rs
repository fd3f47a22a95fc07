//! The log store: the one place that writes `events.log`.
//!
//! On disk the log is JSON Lines, append-only, never rewritten. Writers take an
//! exclusive `flock` on `events.log` itself, so the brief's shell appender
//! (`flock events.log ... >> events.log`) interoperates. Every append:
//!
//! 1. takes the lock (bounded wait, bounded retries; on failure the event is
//!    kept in `events.offline.log` and the caller gets an error),
//! 2. flushes events queued in `events.offline.log` by earlier failures,
//! 3. seals a torn tail (a writer died mid-line) with a newline so the
//!    fragment stays a line of its own, to be quarantined by readers,
//! 4. writes all its lines with one `write`, truncating back on failure so no
//!    partial line remains,
//! 5. releases the lock, then `fdatasync`s (outside the lock, so concurrent
//!    writers share the flush instead of queueing behind each other's).
//!
//! Readers take no lock: they stream complete lines only (an unterminated
//! last line may be a write in flight) and quarantine malformed lines into
//! `events.error.log`, once each.

mod continuity;
mod fetch;
mod quarantine;
mod reader;
mod store;
mod tail;
pub mod watcher;

pub use crate::backend::error::is_refusal;
pub use crate::backend::{append_unless, Backend, CasOutcome, EventStore};
pub use continuity::{Continuity, ReadMark};
pub(crate) use quarantine::quarantine as quarantine_entries;
pub use quarantine::QUARANTINE_FILE;
pub use reader::{LogReader, Malformed, Position, Record, ScanItem};
pub use store::{FileLog, LogLock, StoreError};

/// huddle's private state (indexes and cursors); safe to delete.
pub use crate::model::names::STATE_DIR;
/// File names inside a huddle directory (SPEC.md, "Files in a huddle directory").
pub use crate::model::names::{LOG_FILE, OFFLINE_FILE};
