//! The log as a feed for clients that follow it from afar (the dashboard's
//! `/api/events` and `/api/stream`): pages of events, each with a position
//! token, and "the events after this token" to resume without missing any.
//!
//! A token names the place where an event starts, so resuming after it
//! needs no guess about what follows (the next entry may be malformed, or
//! not written yet). A token from a client is checked before it is read
//! from: an event must start exactly there, or a made-up place in the
//! middle of a line would be read (and set aside) as a malformed entry.

use std::ops::ControlFlow;

use serde::Serialize;

use crate::backend::{Backend, Position, StoreError};
use crate::model::event::{Event, ValidationError};

/// Events handed out at once when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most a client may ask for at once.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event and where it starts, as a token for resuming after it.
#[derive(Debug, Clone, Serialize)]
pub struct FedEvent {
    pub position: String,
    pub event: Event,
}

/// Where a reader of the feed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Read from here, this entry included (the start, the head).
    At(Position),
    /// Read after the event that starts here (a token a client handed back).
    After(Position),
}

/// The answer of [`read`].
#[derive(Debug, Serialize)]
pub struct Page {
    pub events: Vec<FedEvent>,
    /// True when the limit stopped the read before the end of the log.
    pub more: bool,
    /// Where to go on (not serialised: clients resume with the last token).
    #[serde(skip)]
    pub cursor: Cursor,
}

/// The token of a position: `OFFSET-LINE`.
pub fn token(at: Position) -> String {
    format!("{}-{}", at.offset, at.line)
}

/// Reads a token back; refuses anything that is not one, naming `field`.
pub fn parse_token(field: &'static str, text: &str) -> Result<Position, ValidationError> {
    let bad = || {
        ValidationError::new(
            field,
            format!(
                "{:?} is not a position (OFFSET-LINE, as the feed hands out)",
                text.chars().take(64).collect::<String>()
            ),
        )
    };
    let (offset, line) = text.trim().split_once('-').ok_or_else(bad)?;
    let offset: u64 = offset.parse().map_err(|_| bad())?;
    let line: u64 = line.parse().map_err(|_| bad())?;
    // Every entry takes at least one byte (its newline), and lines count from 1.
    if line == 0 || line - 1 > offset {
        return Err(bad());
    }
    Ok(Position { offset, line })
}

/// Checks how many events a client asks for (1 to [`MAX_LIMIT`]).
pub fn validate_limit(limit: usize) -> Result<(), ValidationError> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ValidationError::new(
            "limit",
            format!("is {limit}, must be 1 to {MAX_LIMIT}"),
        ));
    }
    Ok(())
}

/// Where new events will start: a stream that begins now reads from here.
pub fn head(backend: &dyn Backend) -> Result<Cursor, StoreError> {
    backend.head().map(Cursor::At)
}

/// Checks a client's token against the log: an event must start there.
pub fn after_token(
    backend: &dyn Backend,
    field: &'static str,
    text: &str,
) -> Result<Cursor, FeedError> {
    let at = parse_token(field, text)?;
    let no_event = || {
        ValidationError::new(
            field,
            format!("no event of this log starts at {}", token(at)),
        )
    };
    let checked = backend.remaining(at).and_then(|remaining| {
        if remaining == 0 {
            return Ok(false);
        }
        match backend.fetcher()?.fetch(at) {
            Ok(_) => Ok(true),
            Err(StoreError::Io { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    });
    match checked {
        Ok(true) => Ok(Cursor::After(at)),
        // Read from this machine's copy, which may not hold it yet: checked
        // by reading from it once a server answers.
        Ok(false) if backend.offline().is_some() => Ok(Cursor::After(at)),
        Ok(false) => Err(no_event().into()),
        // Not checkable while no server answers: a follower reads from it
        // once one does, as it would from a token checked a moment before.
        Err(StoreError::Unreachable { .. }) => Ok(Cursor::After(at)),
        Err(error) => Err(error.into()),
    }
}

/// Checks a client's place to read from (a head handed out earlier): the
/// head now, or a place where an event starts.
pub fn from_token(
    backend: &dyn Backend,
    field: &'static str,
    text: &str,
) -> Result<Cursor, FeedError> {
    let at = parse_token(field, text)?;
    match backend.head() {
        Ok(head) if head == at => return Ok(Cursor::At(at)),
        Ok(_) => {}
        Err(StoreError::Unreachable { .. }) => return Ok(Cursor::At(at)),
        Err(error) => return Err(error.into()),
    }
    match after_token(backend, field, text)? {
        Cursor::After(at) | Cursor::At(at) => Ok(Cursor::At(at)),
    }
}

/// Up to `limit` events from `cursor`, in log order.
pub fn read(backend: &dyn Backend, cursor: Cursor, limit: usize) -> Result<Page, FeedError> {
    validate_limit(limit)?;
    let (from, skip) = match cursor {
        Cursor::At(at) => (at, None),
        Cursor::After(at) => (at, Some(at)),
    };
    let mut events = Vec::new();
    let mut more = false;
    // Where the read stopped: after the last entry, or at the one it broke on.
    let end = backend.read(from, &mut |stored| {
        if skip == Some(stored.at) {
            return Ok(ControlFlow::Continue(()));
        }
        if events.len() == limit {
            more = true;
            return Ok(ControlFlow::Break(()));
        }
        events.push(FedEvent {
            position: token(stored.at),
            event: stored.event,
        });
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(Page {
        events,
        more,
        cursor: Cursor::At(end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryLog;
    use crate::backend::EventStore;
    use crate::model::event::{InteractionRef, NewEvent};

    fn log_with(contents: &[&str]) -> MemoryLog {
        let log = MemoryLog::new();
        for content in contents {
            log.append(NewEvent::new(InteractionRef::Next, "a", "note", *content))
                .expect("append");
        }
        log
    }

    fn contents(page: &Page) -> Vec<&str> {
        page.events
            .iter()
            .map(|fed| fed.event.content.as_str())
            .collect()
    }

    #[test]
    fn pages_resume_after_the_last_token_on_a_sequence_backend_too() {
        let log = log_with(&["1", "2", "3", "4", "5"]);
        let first = read(&log, Cursor::At(Position::START), 2).expect("read");
        assert_eq!((contents(&first), first.more), (vec!["1", "2"], true));
        let last = &first.events[1].position;
        let after = after_token(&log, "after", last).expect("a token it handed out");
        let rest = read(&log, after, 10).expect("read");
        assert_eq!((contents(&rest), rest.more), (vec!["3", "4", "5"], false));
        // The cursor after a read is where new events will start.
        log.append(NewEvent::new(InteractionRef::Next, "a", "note", "6"))
            .expect("append");
        let new = read(&log, rest.cursor, 10).expect("read");
        assert_eq!(contents(&new), vec!["6"]);
    }

    #[test]
    fn a_token_past_the_end_or_malformed_is_refused_naming_the_field() {
        let log = log_with(&["1"]);
        for bad in ["9-10", "x", "1-", "-1", "3-0", "2-9"] {
            let error = after_token(&log, "after", bad).expect_err(bad);
            assert!(error.to_string().contains("after"), "{bad}: {error}");
        }
    }
}
