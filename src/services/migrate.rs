//! Moving a huddle to another backend: `huddle migrate --to jetstream`
//! copies events.log into the stream `[backend]` names.
//!
//! Each event once, in order, however often it is run: the ids already in
//! the stream are read first and those events skipped (an event without an
//! id is known by its whole line), so a migration cut short is finished by
//! running it again, and one run twice copies nothing the second time. This
//! does not lean on the server's duplicate window, which may have passed.

use std::collections::HashSet;

use crate::backend::jetstream::StreamCreated;
use crate::backend::{scan, Backend, Position, StoreError};
use crate::model::event::Event;
use crate::services::workspace::Workspace;

/// Events published per atomic batch.
const BATCH: usize = 500;

#[derive(Debug)]
pub struct Migrated {
    pub stream: StreamCreated,
    /// Events published now.
    pub copied: usize,
    /// Events of events.log that the stream already held.
    pub present: usize,
}

fn key(event: &Event) -> String {
    event.id.clone().unwrap_or_else(|| event.to_line())
}

/// Copies the directory's events.log into its JetStream stream, creating
/// the stream if it is missing.
pub fn to_jetstream(workspace: &Workspace) -> Result<Migrated, StoreError> {
    let target = workspace.jetstream();
    let stream = target.ensure_stream()?;
    let mut present_keys = HashSet::new();
    scan(&target, Position::START, |stored| {
        present_keys.insert(key(&stored.event));
        Ok(())
    })?;
    let source = workspace.log();
    let mut pending: Vec<Event> = Vec::new();
    let mut copied = 0;
    let mut present = 0;
    scan(&source, Position::START, |stored| {
        if present_keys.insert(key(&stored.event)) {
            pending.push(stored.event);
        } else {
            present += 1;
        }
        if pending.len() >= BATCH {
            target.append_events(&pending)?;
            copied += pending.len();
            pending.clear();
        }
        Ok(())
    })?;
    if !pending.is_empty() {
        target.append_events(&pending)?;
        copied += pending.len();
    }
    Ok(Migrated {
        stream,
        copied,
        present,
    })
}
