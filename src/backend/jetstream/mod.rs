//! The JetStream backend: one NATS JetStream stream shared by every machine
//! of a team, each event one message.
//!
//! - **Messages**: the payload is the event's JSON, the same bytes as a line
//!   of events.log; `Nats-Msg-Id` is the event id, so a publish retried
//!   within the stream's duplicate window is stored once.
//! - **Positions** are stream sequences ([`Position::sequence`]): the
//!   position after message `n` is `sequence(n)`.
//! - **Compare-and-append** is a publish with
//!   `Nats-Expected-Last-Subject-Sequence`; a batch of events is one atomic
//!   batch publish (server 2.12 or later), all or none.
//! - **Deadlines**: the trait is synchronous and callers include the
//!   daemon's heartbeat thread, so every call runs on the backend's own
//!   small runtime and is given up after `backend.timeout_ms`. A call that
//!   gets no answer is [`StoreError::Unreachable`], which the offline queue
//!   ([`crate::backend::queue::Queued`]) turns into a queued event.
//! - **Local state**: messages that are not events are set aside in the
//!   huddle directory's events.error.log, once each on each machine. The
//!   machine's daemon keeps a copy of what it has seen ([`mirror`]), which
//!   reads fall back to while no server answers.

mod connection;
mod mirror;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{
    Backend, Conditional, Continuity, Fetch, Malformed, Position, ReadMark, StoreError, Stored,
    Subscription,
};
use crate::model::config::BackendConfig;
use crate::model::event::Event;

pub use connection::StreamCreated;
use connection::{Connection, Raw};

/// How many messages' bytes a backend keeps in memory, so that the reads of
/// several services in one process and fetches after a read cost no round
/// trip. The oldest are dropped first.
const CACHE_ENTRIES: usize = 16_384;
/// ...and at most this many bytes of them (contents may be 1 MiB each).
const CACHE_BYTES: usize = 64 << 20;

/// Messages fetched in one call (each call has its own deadline).
const READ_CHUNK: u64 = 2_000;

/// A NATS JetStream stream as the log.
pub struct JetStreamLog {
    config: BackendConfig,
    connection: Connection,
    /// Where the malformed messages seen from this machine are recorded.
    dir: PathBuf,
    max_content_bytes: usize,
    cache: Mutex<Cache>,
    mirror: mirror::Mirror,
    /// Why the last read was served from the copy, until one reaches a server.
    offline: Mutex<Option<String>>,
}

#[derive(Default)]
struct Cache {
    /// Stream sequence → the message's bytes.
    entries: BTreeMap<u64, Arc<[u8]>>,
    /// The bytes of `entries`.
    bytes: usize,
    /// The highest interaction among the events up to a sequence: `next`
    /// numbering then reads only what came after.
    highest: Option<(u64, Option<u64>)>,
}

impl JetStreamLog {
    /// A log on the stream `config` names. Nothing is contacted yet: the
    /// connection is made, and remade, in the background; calls made
    /// before it is up wait for it until their deadline.
    pub fn new(config: &BackendConfig, dir: &Path, max_content_bytes: usize) -> JetStreamLog {
        JetStreamLog {
            config: config.clone(),
            connection: Connection::new(config, dir),
            dir: dir.to_path_buf(),
            max_content_bytes,
            cache: Mutex::default(),
            mirror: mirror::Mirror::new(dir, &config.stream),
            offline: Mutex::default(),
        }
    }

    /// `served` as the server answered; or, when no server answers and
    /// this machine has a copy, what `copy` reads from it (noted, for
    /// status to say it is offline).
    fn or_copy<T>(
        &self,
        served: Result<T, StoreError>,
        copy: impl FnOnce(&mirror::Mirror) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match served {
            Err(error @ StoreError::Unreachable { .. }) if self.mirror.usable() => {
                *self.offline_note() = Some(format!(
                    "{error}; reads are served from what this machine saw"
                ));
                copy(&self.mirror)
            }
            Ok(value) => {
                *self.offline_note() = None;
                Ok(value)
            }
            Err(error) => Err(error),
        }
    }

    /// The stream's last sequence, or without a server the copy's.
    fn last_sequence(&self) -> Result<u64, StoreError> {
        self.or_copy(self.connection.last_sequence(), |copy| Ok(copy.count()))
    }

    /// The stream's identity, or without a server the one the copy is of.
    fn identity(&self) -> Result<String, StoreError> {
        self.or_copy(self.connection.identity(), |copy| {
            Ok(copy.identity().unwrap_or_default())
        })
    }

    fn tail_file(&self) -> String {
        format!(
            "{}{}.json",
            crate::model::names::state::STREAM_TAIL_PREFIX,
            self.connection.stream()
        )
    }

    /// The highest interaction up to a sequence, as a process before this
    /// one found it on this same stream (one created at the same time).
    /// Messages never change once stored, so it stays true; a deleted one
    /// can only make it higher than needed, and numbers skipped are fine.
    fn saved_tail(&self, identity: &str) -> Option<(u64, Option<u64>)> {
        crate::backend::state::StateDir::of(&self.dir)
            .load::<SavedTail>(&self.tail_file())
            .filter(|tail| tail.identity == identity)
            .map(|tail| (tail.seen, tail.highest))
    }

    fn save_tail(&self, identity: &str, seen: u64, highest: Option<u64>) {
        let tail = SavedTail {
            identity: identity.to_string(),
            seen,
            highest,
        };
        // A cache: without it the next process reads the stream again.
        if let Err(error) =
            crate::backend::state::StateDir::of(&self.dir).save_cache(&self.tail_file(), &tail)
        {
            tracing::debug!(%error, "stream tail not kept");
        }
    }

    fn offline_note(&self) -> MutexGuard<'_, Option<String>> {
        self.offline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What it was made from, to open another handle on the same stream.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// The directory whose events.error.log records the messages set aside.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the stream if it is missing (file storage, the configured
    /// replicas and duplicate window, atomic batches allowed).
    pub fn ensure_stream(&self) -> Result<StreamCreated, StoreError> {
        self.connection.ensure_stream()
    }

    /// The servers, for messages (never the credentials).
    pub fn servers(&self) -> &str {
        self.connection.servers()
    }

    /// Whether the client is connected to a server right now.
    pub fn is_connected(&self) -> bool {
        self.connection.is_connected()
    }

    /// Publishes raw bytes as a foreign publisher would, bypassing every check.
    pub fn publish_raw(&self, payload: &[u8]) -> Result<u64, StoreError> {
        self.connection.publish_raw(payload)
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Every change to the cache is a single insert or remove.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, raws: &[Raw]) {
        let mut cache = self.cache();
        for raw in raws {
            cache.bytes += raw.payload.len();
            if let Some(replaced) = cache.entries.insert(raw.sequence, raw.payload.clone()) {
                cache.bytes -= replaced.len();
            }
        }
        while cache.entries.len() > CACHE_ENTRIES || cache.bytes > CACHE_BYTES {
            match cache.entries.pop_first() {
                Some((_, dropped)) => cache.bytes -= dropped.len(),
                None => break,
            }
        }
    }

    /// The message at `sequence`, from the cache or the server; `None` when
    /// the stream holds none there (deleted or never written).
    fn entry(&self, sequence: u64) -> Result<Option<Arc<[u8]>>, StoreError> {
        if let Some(bytes) = self.cache().entries.get(&sequence) {
            return Ok(Some(bytes.clone()));
        }
        let raw = self.or_copy(self.connection.get(sequence), |copy| {
            Ok(copy.get(sequence)?.map(|payload| Raw {
                sequence,
                payload: payload.into(),
            }))
        })?;
        if let Some(raw) = &raw {
            self.remember(std::slice::from_ref(raw));
        }
        Ok(raw.map(|raw| raw.payload))
    }

    /// The messages after `after` up to `last`, in order: from the cache
    /// when it holds them all, else fetched in chunks.
    fn entries_between(
        &self,
        after: u64,
        last: u64,
        visit: &mut dyn FnMut(u64, Arc<[u8]>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut next = after + 1;
        while next <= last {
            let cached: Vec<(u64, Arc<[u8]>)> = {
                let cache = self.cache();
                cache
                    .entries
                    .range(next..=last)
                    .map_while({
                        let mut expected = next;
                        move |(seq, bytes)| {
                            let contiguous = *seq == expected;
                            expected += 1;
                            contiguous.then(|| (*seq, bytes.clone()))
                        }
                    })
                    .collect()
            };
            let chunk = if cached.is_empty() {
                let end = last.min(next + READ_CHUNK - 1);
                let raws = self.connection.fetch_range(next, end)?;
                self.remember(&raws);
                if raws.is_empty() {
                    // Nothing left there: deleted messages up to `end`.
                    next = end + 1;
                    continue;
                }
                raws.into_iter()
                    .map(|raw| (raw.sequence, raw.payload))
                    .collect()
            } else {
                cached
            };
            for (seq, bytes) in chunk {
                next = seq + 1;
                if visit(seq, bytes)?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn parse(&self, bytes: &[u8]) -> Result<Event, String> {
        Event::from_log_line(bytes, self.max_content_bytes)
    }

    /// The events after `head`, for a compare-and-append that lost.
    fn moved_since(&self, head: Position) -> Result<Conditional, StoreError> {
        let last = self.connection.last_sequence()?;
        let mut events = Vec::new();
        self.entries_between(head.entries_before(), last, &mut |seq, bytes| {
            if let Ok(event) = self.parse(&bytes) {
                events.push(stored(event, seq));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(Conditional::Moved {
            events,
            head: Position::sequence(last),
        })
    }

    fn check(&self, events: &[Event]) -> Result<(), StoreError> {
        for event in events {
            event.check(self.max_content_bytes)?;
        }
        Ok(())
    }
}

/// What [`JetStreamLog::saved_tail`] keeps in the state directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedTail {
    identity: String,
    seen: u64,
    highest: Option<u64>,
}

fn stored(event: Event, seq: u64) -> Stored {
    Stored {
        event,
        at: Position::sequence(seq - 1),
        next: Position::sequence(seq),
    }
}

impl Backend for JetStreamLog {
    fn max_content_bytes(&self) -> usize {
        self.max_content_bytes
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.check(events)?;
        if events.is_empty() {
            return Ok(());
        }
        let events = crate::backend::without_allocation_marks(events);
        self.connection.publish(&events, None).map(|_| ())
    }

    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError> {
        self.check(events)?;
        let written = crate::backend::without_allocation_marks(events);
        match self
            .connection
            .publish(&written, Some(head.entries_before()))?
        {
            Some(last) => Ok(Conditional::Appended {
                head: Position::sequence(last),
            }),
            None => self.moved_since(head),
        }
    }

    fn read_entries(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(Position, Vec<Malformed>), StoreError> {
        let mut broken_at = None;
        let mut malformed = Vec::new();
        let mut handle = |seq: u64, bytes: &[u8]| {
            match self.parse(bytes) {
                Ok(event) => {
                    if visit(stored(event, seq))?.is_break() {
                        broken_at = Some(Position::sequence(seq - 1));
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Err(reason) => malformed.push(Malformed {
                    line: seq,
                    offset: seq,
                    reason,
                    raw: bytes.to_vec(),
                }),
            }
            Ok(ControlFlow::Continue(()))
        };
        // Handled so far: a server lost midway, the copy goes on from there.
        let mut handled = from.entries_before();
        let served = self.connection.last_sequence().and_then(|last| {
            // A visitor may append: the cache lock is not held while visiting.
            self.entries_between(from.entries_before(), last, &mut |seq, bytes| {
                let flow = handle(seq, &bytes)?;
                handled = seq;
                Ok(flow)
            })?;
            Ok(last)
        });
        let last = self.or_copy(served, |copy| {
            copy.read(handled, &mut |seq, bytes| handle(seq, bytes))?;
            Ok(copy.count())
        })?;
        let resume = broken_at.unwrap_or(Position::sequence(last.max(from.entries_before())));
        let fresh = self.set_aside(&malformed)?;
        Ok((resume, fresh))
    }

    fn quarantine_report(&self, entry: &Malformed) -> String {
        format!(
            "Set aside message {} of JetStream stream {} (not an event): {}",
            entry.offset,
            self.connection.stream(),
            entry.reason
        )
    }

    fn head(&self) -> Result<Position, StoreError> {
        let last = self.last_sequence()?;
        Ok(Position::sequence(last))
    }

    fn remaining(&self, from: Position) -> Result<u64, StoreError> {
        let last = self.last_sequence()?;
        Ok(last.saturating_sub(from.entries_before()))
    }

    fn set_aside(&self, entries: &[Malformed]) -> Result<Vec<Malformed>, StoreError> {
        crate::backend::file::quarantine_entries(&self.dir, entries)
            .map_err(StoreError::io("record set-aside messages in", &self.dir))
    }

    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError> {
        let last = self.last_sequence()?;
        let identity = self.identity()?;
        let known = self.cache().highest;
        let (from, mut highest) = match known.or_else(|| self.saved_tail(&identity)) {
            Some((seen, highest)) if seen <= last => (seen, highest),
            _ => (0, None),
        };
        // Through read_entries: from this machine's copy when no server answers.
        let (end, _) = self.read_entries(Position::sequence(from), &mut |stored| {
            highest = highest.max(Some(stored.event.interaction));
            Ok(ControlFlow::Continue(()))
        })?;
        self.cache().highest = Some((end.entries_before(), highest));
        if end.entries_before() != from {
            self.save_tail(&identity, end.entries_before(), highest);
        }
        Ok((end, highest))
    }

    fn fetcher(&self) -> Result<Box<dyn Fetch + '_>, StoreError> {
        Ok(Box::new(JetStreamFetch { log: self }))
    }

    fn subscribe(&self) -> Result<Subscription, StoreError> {
        self.connection.subscribe()
    }

    fn mark(&self, at: Position) -> Result<ReadMark, StoreError> {
        Ok(ReadMark {
            inode: 0,
            offset: at.offset,
            tail_sha256: self.identity()?,
        })
    }

    fn offline(&self) -> Option<String> {
        self.offline_note().clone()
    }

    /// Brings this machine's copy of the stream up to the stream's end
    /// (the daemon, after each snapshot: what was just read is cached).
    fn keep_local_copy(&self) -> Result<(), StoreError> {
        let identity = self.connection.identity()?;
        let last = self.connection.last_sequence()?;
        self.mirror
            .keep(&identity, |after, put| {
                self.entries_between(after, last, &mut |sequence, bytes| {
                    put(sequence, &bytes)?;
                    Ok(ControlFlow::Continue(()))
                })
            })
            .map(|_| ())
    }

    fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError> {
        let identity = match self.connection.identity() {
            // Offline, what was read from the stream copied is still read:
            // a recreated stream shows once a server answers.
            Err(error @ StoreError::Unreachable { .. }) => {
                return self.or_copy(Err(error), |copy| {
                    Ok(match copy.identity() {
                        Some(copied)
                            if mark.tail_sha256.is_empty() || mark.tail_sha256 == copied =>
                        {
                            Continuity::Same
                        }
                        copied => Continuity::Replaced(format!(
                            "this machine's copy is of stream {} as created {}, not {}",
                            self.connection.stream(),
                            copied.unwrap_or_default(),
                            mark.tail_sha256
                        )),
                    })
                });
            }
            identity => identity?,
        };
        if !mark.tail_sha256.is_empty() && mark.tail_sha256 != identity {
            return Ok(Continuity::Replaced(format!(
                "stream {} was recreated ({} then, {identity} now)",
                self.connection.stream(),
                mark.tail_sha256
            )));
        }
        let last = self.connection.last_sequence()?;
        Ok(if mark.offset <= last {
            Continuity::Same
        } else {
            Continuity::Replaced(format!(
                "stream {} ends at message {last}, before the {} read",
                self.connection.stream(),
                mark.offset
            ))
        })
    }
}

struct JetStreamFetch<'a> {
    log: &'a JetStreamLog,
}

impl Fetch for JetStreamFetch<'_> {
    fn fetch_stored(&mut self, at: Position) -> Result<(Event, Vec<u8>), StoreError> {
        let seq = at.entries_before() + 1;
        let missing = |why: String| StoreError::Server {
            server: self.log.servers().to_string(),
            action: "fetch a message",
            reason: why,
        };
        let bytes = self
            .log
            .entry(seq)?
            .ok_or_else(|| missing(format!("the stream holds no message {seq}")))?;
        let event = self
            .log
            .parse(&bytes)
            .map_err(|why| missing(format!("message {seq} is not an event: {why}")))?;
        Ok((event, bytes.to_vec()))
    }
}
