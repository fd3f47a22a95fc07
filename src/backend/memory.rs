//! A log held in memory: the reference backend of the conformance suite, and
//! a log for tests and embedders that need no files.
//!
//! Entries are kept as the lines a file log would hold, so a foreign entry
//! (bytes another writer put there) can be malformed and is then set aside,
//! as the file log quarantines a bad line. Positions are sequence numbers.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::{
    Backend, Conditional, Continuity, Fetch, Malformed, Position, ReadMark, Stored, Subscription,
};
use crate::backend::file::StoreError;
use crate::model::event::{Event, DEFAULT_MAX_CONTENT_BYTES};

#[derive(Default)]
struct Inner {
    entries: Vec<Vec<u8>>,
    /// Sequence numbers of the entries set aside as malformed, once each.
    quarantined: BTreeSet<u64>,
    subscribers: Vec<UnboundedSender<()>>,
}

/// An in-memory log. Clones share the same log, as handles of one file do.
#[derive(Clone)]
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    max_content_bytes: usize,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog::new()
    }
}

impl MemoryLog {
    pub fn new() -> MemoryLog {
        MemoryLog {
            inner: Arc::default(),
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
        }
    }

    pub fn with_max_content_bytes(mut self, limit: usize) -> MemoryLog {
        self.max_content_bytes = limit;
        self
    }

    /// Puts bytes in the log as another writer might: any entry, well formed or not.
    pub fn append_raw(&self, entry: &[u8]) {
        let mut inner = self.lock();
        inner.entries.push(entry.to_vec());
        notify(&mut inner);
    }

    /// Entries set aside as malformed, by sequence number.
    pub fn quarantined(&self) -> Vec<u64> {
        self.lock().quarantined.iter().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the entries as they were:
        // every change is one push.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn parse(&self, entry: &[u8]) -> Result<Event, String> {
        Event::from_log_line(entry, self.max_content_bytes)
    }

    fn push(&self, inner: &mut Inner, events: &[Event]) -> Position {
        inner.entries.extend(
            super::without_allocation_marks(events)
                .iter()
                .map(|event| event.to_line().into_bytes()),
        );
        notify(inner);
        Position::sequence(inner.entries.len() as u64)
    }
}

fn notify(inner: &mut Inner) {
    inner.subscribers.retain(|tx| tx.send(()).is_ok());
}

fn check(events: &[Event], limit: usize) -> Result<(), StoreError> {
    for event in events {
        event.check(limit)?;
    }
    Ok(())
}

impl Backend for MemoryLog {
    fn max_content_bytes(&self) -> usize {
        self.max_content_bytes
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        check(events, self.max_content_bytes)?;
        let mut inner = self.lock();
        self.push(&mut inner, events);
        Ok(())
    }

    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError> {
        check(events, self.max_content_bytes)?;
        let mut inner = self.lock();
        let from = head.entries_before() as usize;
        if from >= inner.entries.len() {
            let head = self.push(&mut inner, events);
            return Ok(Conditional::Appended { head });
        }
        let mut moved = Vec::new();
        for (seq, entry) in inner.entries.iter().enumerate().skip(from) {
            if let Ok(event) = self.parse(entry) {
                moved.push(Stored {
                    event,
                    at: Position::sequence(seq as u64),
                    next: Position::sequence(seq as u64 + 1),
                });
            }
        }
        Ok(Conditional::Moved {
            events: moved,
            head: Position::sequence(inner.entries.len() as u64),
        })
    }

    fn read_entries(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(Position, Vec<Malformed>), StoreError> {
        let mut seq = from.entries_before();
        let mut fresh = Vec::new();
        loop {
            // Not held while visiting: a visitor may append.
            let entry = {
                let mut inner = self.lock();
                let Some(entry) = inner.entries.get(seq as usize).cloned() else {
                    return Ok((Position::sequence(seq), fresh));
                };
                match self.parse(&entry) {
                    Ok(event) => event,
                    Err(reason) => {
                        if inner.quarantined.insert(seq) {
                            fresh.push(Malformed {
                                line: seq + 1,
                                offset: seq,
                                reason,
                                raw: entry,
                            });
                        }
                        seq += 1;
                        continue;
                    }
                }
            };
            let stored = Stored {
                event: entry,
                at: Position::sequence(seq),
                next: Position::sequence(seq + 1),
            };
            if visit(stored)?.is_break() {
                return Ok((Position::sequence(seq), fresh));
            }
            seq += 1;
        }
    }

    fn head(&self) -> Result<Position, StoreError> {
        Ok(Position::sequence(self.lock().entries.len() as u64))
    }

    fn remaining(&self, from: Position) -> Result<u64, StoreError> {
        let len = self.lock().entries.len() as u64;
        Ok(len.saturating_sub(from.entries_before()))
    }

    fn set_aside(&self, entries: &[Malformed]) -> Result<Vec<Malformed>, StoreError> {
        let mut inner = self.lock();
        Ok(entries
            .iter()
            .filter(|entry| inner.quarantined.insert(entry.offset))
            .cloned()
            .collect())
    }

    fn quarantine_report(&self, entry: &Malformed) -> String {
        format!(
            "Set aside malformed entry {} of the in-memory log: {}",
            entry.offset, entry.reason
        )
    }

    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError> {
        let inner = self.lock();
        let highest = inner
            .entries
            .iter()
            .filter_map(|entry| self.parse(entry).ok())
            .map(|event| event.interaction)
            .max();
        Ok((Position::sequence(inner.entries.len() as u64), highest))
    }

    fn fetcher(&self) -> Result<Box<dyn Fetch + '_>, StoreError> {
        Ok(Box::new(MemoryFetch { log: self }))
    }

    fn subscribe(&self) -> Result<Subscription, StoreError> {
        let (tx, rx) = unbounded_channel();
        self.lock().subscribers.push(tx);
        Ok(Subscription::new(rx, Box::new(()), "memory"))
    }

    fn mark(&self, at: Position) -> Result<ReadMark, StoreError> {
        Ok(ReadMark::unhashed(at))
    }

    fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError> {
        // Entries are never removed: what was read is still there.
        let len = self.lock().entries.len() as u64;
        Ok(if mark.offset <= len {
            Continuity::Same
        } else {
            Continuity::Replaced(format!(
                "the log holds {len} entries, fewer than the {} read",
                mark.offset
            ))
        })
    }
}

struct MemoryFetch<'a> {
    log: &'a MemoryLog,
}

impl Fetch for MemoryFetch<'_> {
    fn fetch_stored(&mut self, at: Position) -> Result<(Event, Vec<u8>), StoreError> {
        let entry = self
            .log
            .lock()
            .entries
            .get(at.entries_before() as usize)
            .cloned();
        let missing = |why: String| StoreError::Io {
            action: "fetch from",
            path: "memory".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, why),
        };
        let entry = entry.ok_or_else(|| missing(format!("no entry at {}", at.offset)))?;
        let event = self
            .log
            .parse(&entry)
            .map_err(|why| missing(format!("entry {} is malformed: {why}", at.offset)))?;
        Ok((event, entry))
    }
}
