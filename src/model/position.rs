//! Where an entry sits in a log backend.

use serde::{Deserialize, Serialize};

/// A place in a log: where to resume reading, and what a compare-and-append
/// expects the head to be. Callers keep it, save it and hand it back; only
/// the backend that made it interprets it. The file log's is the byte offset
/// of the next line and that line's 1-based number; a sequence-numbered
/// backend (the in-memory one, JetStream) stores its sequence number in both
/// (the number of entries before this place, so the start is 0, and the
/// line is that plus one).
///
/// Serialised as `{"offset": …, "line": …}`, the form the state files have
/// always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub line: u64,
}

impl Position {
    /// The start of every log.
    pub const START: Position = Position { offset: 0, line: 1 };

    /// The place after `entries` entries of a sequence-numbered backend.
    pub fn sequence(entries: u64) -> Position {
        Position {
            offset: entries,
            line: entries + 1,
        }
    }

    /// Entries of a sequence-numbered backend before this place.
    pub fn entries_before(self) -> u64 {
        self.offset
    }
}

impl Default for Position {
    fn default() -> Self {
        Position::START
    }
}
