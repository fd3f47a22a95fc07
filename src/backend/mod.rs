//! The storage seam: what every log backend offers, and what is built on it.
//!
//! A backend stores events in one total order and offers five things:
//!
//! - **append** a batch of complete events (numbered, stamped), all or none;
//! - **compare-and-append** ([`Backend::append_if_head`]): append only if no
//!   entry landed after position P, else hand back the events after P. This
//!   is the form distributed logs offer (JetStream's expected-last-sequence
//!   publish); the file log does the same check under its `flock`;
//! - **read** from an opaque [`Position`] as a stream of events, each with
//!   its position, malformed entries set aside (quarantined) once each;
//! - **fetch** single events back by position (the snapshot keeps positions,
//!   not events);
//! - **subscribe** to news of appends (the file log's is its watcher).
//!
//! Everything else is built on these, the same for every backend: numbering
//! `next` ([`EventStore`], a highest-number hint plus compare-and-append),
//! the election's claims and fenced heartbeats ([`append_unless`]). The file
//! log ([`crate::backend::file::FileLog`]) and the in-memory log ([`memory::MemoryLog`])
//! implement it; [`conformance`] is the suite every backend must pass.

pub mod conformance;
pub mod error;
pub mod file;
pub(crate) mod files;
pub mod jetstream;
pub mod memory;
mod offline;
pub mod pause;
pub mod queue;
pub mod state;

use std::ops::ControlFlow;

pub use crate::backend::error::StoreError;
pub use crate::backend::file::{Continuity, Malformed, ReadMark};
use crate::model::event::{Event, InteractionRef, NewEvent, ValidationError, MAX_NUMBER};
pub use crate::model::position::Position;

/// An event read back from a backend, with where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub event: Event,
    /// Where the event starts: fetch it back from here.
    pub at: Position,
    /// Where the entry after it starts: resume reading from here.
    pub next: Position,
}

/// The answer of a compare-and-append.
#[derive(Debug)]
pub enum Conditional {
    /// Nothing had landed after the expected head: the events were appended;
    /// `head` is the position after them.
    Appended { head: Position },
    /// Entries landed after the expected head: nothing was appended. These
    /// are the events among them (malformed entries are skipped; readers
    /// set them aside), and `head` is the position after the last of them.
    Moved { events: Vec<Stored>, head: Position },
}

/// News of appends, pushed by the backend. Each message means "there may be
/// new entries": read from your position to find them. Bursts are not
/// coalesced, so drain with [`Subscription::try_recv`] after a wake.
pub struct Subscription {
    receiver: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Whatever keeps the source alive (a file watcher); dropped with us.
    _source: Box<dyn Send>,
    kind: &'static str,
}

impl Subscription {
    pub fn new(
        receiver: tokio::sync::mpsc::UnboundedReceiver<()>,
        source: Box<dyn Send>,
        kind: &'static str,
    ) -> Subscription {
        Subscription {
            receiver,
            _source: source,
            kind,
        }
    }

    /// How news arrives (for the daemon's log): "inotify", "polling", "memory".
    pub fn describe(&self) -> &'static str {
        self.kind
    }

    /// Waits for news; `None` once the backend can send no more.
    pub async fn recv(&mut self) -> Option<()> {
        self.receiver.recv().await
    }

    /// Waits for news on a thread outside any async runtime.
    pub fn blocking_recv(&mut self) -> Option<()> {
        self.receiver.blocking_recv()
    }

    /// News already there, without waiting.
    pub fn try_recv(&mut self) -> bool {
        self.receiver.try_recv().is_ok()
    }

    /// Throws away the news already there (one read will cover them all).
    pub fn drain(&mut self) {
        while self.try_recv() {}
    }
}

/// Reads events back by position, one at a time; sequential fetches (the
/// common case) are cheap.
pub trait Fetch {
    /// The event that starts at `at`.
    fn fetch(&mut self, at: Position) -> Result<Event, StoreError> {
        self.fetch_stored(at).map(|(event, _)| event)
    }

    /// The event that starts at `at`, with its bytes as the backend stores
    /// them (for records of events set aside).
    fn fetch_stored(&mut self, at: Position) -> Result<(Event, Vec<u8>), StoreError>;
}

/// What every log backend offers (see the module docs).
pub trait Backend: Send + Sync {
    /// Largest content, in bytes, an entry may carry (`log.max_content_bytes`).
    fn max_content_bytes(&self) -> usize;

    /// Appends complete events in order, all or none.
    fn append_events(&self, events: &[Event]) -> Result<(), StoreError>;

    /// Appends `events` only if no entry landed after `head`.
    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError>;

    /// [`Backend::append_if_head`] for entries whose loss in a crash costs
    /// nothing, a leader's heartbeat (a leader that crashed is not alive
    /// anyway): the backend need not wait until they are durable, so a disk
    /// slow to flush (a second, under other writers' fsyncs) does not
    /// silence a healthy leader. Readers see them as soon as they are written.
    fn append_if_head_volatile(
        &self,
        head: Position,
        events: &[Event],
    ) -> Result<Conditional, StoreError> {
        self.append_if_head(head, events)
    }

    /// Visits the events from `from`, in order, until the end or until
    /// `visit` breaks; malformed entries are skipped and set aside (see
    /// [`Backend::set_aside`]). Returns where to resume — after the last
    /// entry read, or at the entry `visit` broke on — and the entries newly
    /// set aside, for [`Backend::read`] to report.
    fn read_entries(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(Position, Vec<Malformed>), StoreError>;

    /// [`Backend::read_entries`], with one `error` event appended for each
    /// entry newly set aside (through `self`, so a paused huddle queues them).
    fn read(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<Position, StoreError> {
        let (end, fresh) = self.read_entries(from, visit)?;
        report_set_aside(self, &fresh, &|entry| self.quarantine_report(entry))?;
        Ok(end)
    }

    /// The text of the `error` event for a malformed entry set aside on read.
    fn quarantine_report(&self, entry: &Malformed) -> String;

    /// Where the next entry will start, as far as is known now.
    fn head(&self) -> Result<Position, StoreError>;

    /// How much is left to read after `from`, in the backend's own units
    /// (the file log's bytes, a sequence's entries): for progress reports
    /// and for how far behind a reader is.
    fn remaining(&self, from: Position) -> Result<u64, StoreError>;

    /// Records `entries` (malformed entries, events a plugin cannot handle)
    /// in the backend's quarantine, once each however often it is asked.
    /// Returns the newly recorded ones; reporting them is the caller's
    /// ([`append_reports`]).
    fn set_aside(&self, entries: &[Malformed]) -> Result<Vec<Malformed>, StoreError>;

    /// The highest interaction number among the events before the returned
    /// position (no number when there are none). A backend may keep a hint
    /// so that this costs only what is new; it must not guess.
    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError>;

    /// The highest interaction number among the last events of the log,
    /// when the backend can tell without reading the whole log; `None`
    /// otherwise. A guess for optimisations (a cold snapshot drafts the
    /// interactions it expects to be recent for communication.md): callers
    /// must stay correct whatever it returns.
    fn highest_interaction_near_end(&self) -> Option<u64> {
        None
    }

    /// Opens a reader of single events by position.
    fn fetcher(&self) -> Result<Box<dyn Fetch + '_>, StoreError>;

    /// Why the last reads were served from this machine's copy of the log
    /// rather than the log itself (no server answered); None when they
    /// were not. Only networked backends keep such a copy.
    fn offline(&self) -> Option<String> {
        None
    }

    /// Brings this machine's copy of the log up to the log's end, for
    /// [`Backend::offline`] reads; nothing to do for a log that is local.
    fn keep_local_copy(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// News of appends from now on.
    fn subscribe(&self) -> Result<Subscription, StoreError>;

    /// What a reader saw up to `at`, to tell later whether the log it reads
    /// is still the same one ([`Backend::continuity`]).
    fn mark(&self, at: Position) -> Result<ReadMark, StoreError>;

    /// Whether the log still holds what was read up to `mark`.
    fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError>;
}

/// Appends one `error` event for each entry set aside.
fn report_set_aside(
    backend: &(impl Backend + ?Sized),
    fresh: &[Malformed],
    report: &dyn Fn(&Malformed) -> String,
) -> Result<(), StoreError> {
    append_reports(backend, fresh.iter().map(report).collect())
}

/// Appends one `error` event from huddle (interaction 0) per message.
pub fn append_reports(
    backend: &(impl Backend + ?Sized),
    messages: Vec<String>,
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let reports = messages
        .into_iter()
        .map(|message| {
            NewEvent::new(
                InteractionRef::Number(0),
                crate::model::event::HOST_ACTOR,
                crate::model::event::types::ERROR,
                message,
            )
            .cut_to_fit()
        })
        .collect();
    match backend.append_batch(reports) {
        Ok(_) => Ok(()),
        // Queued (paused, the lock never came, the disk refused): the
        // reports reach the log with the queue. Reading must go on:
        // `huddle status` works while paused.
        Err(
            queued @ (StoreError::Paused { .. }
            | StoreError::LockTimeout { .. }
            | StoreError::WriteRefusedQueued { .. }
            | StoreError::UnreachableQueued { .. }),
        ) => {
            tracing::warn!(error = %queued, "reports of entries set aside are queued");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Reads every event from `from` to the end. Returns where to resume.
pub fn scan(
    backend: &(impl Backend + ?Sized),
    from: Position,
    mut visit: impl FnMut(Stored) -> Result<(), StoreError>,
) -> Result<Position, StoreError> {
    backend.read(from, &mut |stored| {
        visit(stored).map(|()| ControlFlow::Continue(()))
    })
}

/// The answer of [`append_unless`].
#[derive(Debug)]
pub enum CasOutcome {
    Appended(Event),
    /// Not appended: these events after the position conflicted.
    Conflict(Vec<Event>),
}

/// Appends `event` unless an event after `seen` `conflicts` with it: the
/// election's primitive (a claim loses to a newer claim or a live leader's
/// heartbeat; a heartbeat is fenced by a newer claim). Built on
/// compare-and-append: events that do not conflict move the expected head
/// on, and the append is tried again.
pub fn append_unless(
    backend: &(impl Backend + ?Sized),
    mut seen: Position,
    event: NewEvent,
    conflicts: &dyn Fn(&Event) -> bool,
) -> Result<CasOutcome, StoreError> {
    let event = event.fitted(backend.max_content_bytes());
    event.validate(backend.max_content_bytes())?;
    let event = event.into_event(0);
    loop {
        match backend.append_if_head(seen, std::slice::from_ref(&event))? {
            Conditional::Appended { .. } => return Ok(CasOutcome::Appended(event)),
            Conditional::Moved { events, head } => {
                let conflicting: Vec<Event> = events
                    .into_iter()
                    .map(|stored| stored.event)
                    .filter(|event| conflicts(event))
                    .collect();
                if !conflicting.is_empty() {
                    return Ok(CasOutcome::Conflict(conflicting));
                }
                seen = head;
            }
        }
    }
}

/// Writing events as people and agents hand them over: checked, content
/// cut where allowed, stamped with an id and the time, and `next` resolved
/// to the highest interaction number plus one. The same for every backend.
pub trait EventStore {
    /// Appends one event and returns it as written.
    fn append(&self, event: NewEvent) -> Result<Event, StoreError>;
    /// Appends events in order, all or none.
    fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError>;
}

impl<B: Backend + ?Sized> EventStore for B {
    fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        let mut written = self.append_batch(vec![event])?;
        Ok(written.remove(0))
    }

    fn append_batch(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError> {
        let limit = self.max_content_bytes();
        let events: Vec<NewEvent> = events.into_iter().map(|e| e.fitted(limit)).collect();
        for event in &events {
            event.validate(limit)?;
        }
        let wanted: Vec<bool> = events
            .iter()
            .map(|event| event.interaction == InteractionRef::Next)
            .collect();
        let written: Vec<Event> = events.into_iter().map(stamp).collect();
        append_numbered(self, written, &wanted)
    }
}

/// Appends `events` in order, all or none, those `wanted` numbered `next`:
/// the highest interaction number so far plus one, appended only if nobody
/// appended since that number was read; otherwise their numbers are counted
/// in and the append is tried again.
pub(crate) fn append_numbered(
    backend: &(impl Backend + ?Sized),
    mut written: Vec<Event>,
    wanted: &[bool],
) -> Result<Vec<Event>, StoreError> {
    if !wanted.contains(&true) {
        backend.append_events(&written)?;
        return Ok(written);
    }
    let (mut head, mut highest) = match backend.highest_interaction() {
        Ok(known) => known,
        // Nothing before the start: always a true answer. The append below
        // then fails or queues as any other would (numbered again when the
        // queue is written), or, if the server is back, moves on from there.
        Err(StoreError::Unreachable { .. }) => (Position::START, None),
        Err(error) => return Err(error),
    };
    loop {
        let mut last = highest;
        for (event, next) in written.iter_mut().zip(wanted) {
            if *next {
                event.interaction = allocate(last)?;
                last = Some(event.interaction);
                event.extra.insert(ALLOCATE_FIELD.into(), true.into());
            }
        }
        match backend.append_if_head(head, &written)? {
            Conditional::Appended { .. } => {
                return Ok(without_allocation_marks(&written).into_owned())
            }
            Conditional::Moved {
                events,
                head: moved,
            } => {
                highest = events
                    .iter()
                    .map(|stored| stored.event.interaction)
                    .fold(highest, |max, n| Some(max.map_or(n, |m| m.max(n))));
                head = moved;
            }
        }
    }
}

/// Extra field on an event whose interaction number was allocated against
/// an expected head: a backend that keeps it for later (an offline queue)
/// keeps the field, and the number is allocated again when the event is
/// written; a backend that writes it drops the field.
pub(crate) const ALLOCATE_FIELD: &str = "huddle_allocate_interaction";

/// The events as a backend writes them: without allocation marks.
pub(crate) fn without_allocation_marks(events: &[Event]) -> std::borrow::Cow<'_, [Event]> {
    if !events.iter().any(|e| e.extra.contains_key(ALLOCATE_FIELD)) {
        return std::borrow::Cow::Borrowed(events);
    }
    let mut events = events.to_vec();
    for event in &mut events {
        event.extra.remove(ALLOCATE_FIELD);
    }
    std::borrow::Cow::Owned(events)
}

/// A new event as it will be written; a `next` event holds 0 until
/// [`append_numbered`] numbers it.
fn stamp(event: NewEvent) -> Event {
    let number = match event.interaction {
        InteractionRef::Number(n) => n,
        InteractionRef::Next => 0,
    };
    event.into_event(number)
}

/// The first number `next` may hand out after `highest`. Numbers are never
/// reused: past the largest exact JSON integer there is no next one.
fn allocate(highest: Option<u64>) -> Result<u64, StoreError> {
    let number = highest.map_or(1, |max| max.saturating_add(1));
    if number > MAX_NUMBER {
        return Err(StoreError::Invalid(ValidationError::new(
            "interaction",
            format!(
                "`next` has no number left: the log already holds interaction {MAX_NUMBER} (2^53 - 1), the largest allowed"
            ),
        )));
    }
    Ok(number)
}

/// A shared backend is a backend: `Workspace::backend()` hands out an
/// `Arc<dyn Backend>`, and services take any `&impl Backend`.
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn max_content_bytes(&self) -> usize {
        (**self).max_content_bytes()
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        (**self).append_events(events)
    }

    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError> {
        (**self).append_if_head(head, events)
    }

    fn append_if_head_volatile(
        &self,
        head: Position,
        events: &[Event],
    ) -> Result<Conditional, StoreError> {
        (**self).append_if_head_volatile(head, events)
    }

    fn read_entries(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(Position, Vec<Malformed>), StoreError> {
        (**self).read_entries(from, visit)
    }

    fn quarantine_report(&self, entry: &Malformed) -> String {
        (**self).quarantine_report(entry)
    }

    fn head(&self) -> Result<Position, StoreError> {
        (**self).head()
    }

    fn remaining(&self, from: Position) -> Result<u64, StoreError> {
        (**self).remaining(from)
    }

    fn set_aside(&self, entries: &[Malformed]) -> Result<Vec<Malformed>, StoreError> {
        (**self).set_aside(entries)
    }

    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError> {
        (**self).highest_interaction()
    }

    fn highest_interaction_near_end(&self) -> Option<u64> {
        (**self).highest_interaction_near_end()
    }

    fn fetcher(&self) -> Result<Box<dyn Fetch + '_>, StoreError> {
        (**self).fetcher()
    }

    fn offline(&self) -> Option<String> {
        (**self).offline()
    }

    fn keep_local_copy(&self) -> Result<(), StoreError> {
        (**self).keep_local_copy()
    }

    fn subscribe(&self) -> Result<Subscription, StoreError> {
        (**self).subscribe()
    }

    fn mark(&self, at: Position) -> Result<ReadMark, StoreError> {
        (**self).mark(at)
    }

    fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError> {
        (**self).continuity(mark)
    }
}
