//! What an agent has not handled yet, and its acknowledgement: the service
//! behind `huddle next`, `huddle ack` and the MCP tools of the same names;
//! waiting for news ([`wait`], pushed by the backend's subscription) and
//! reading the log by interaction, type, actor and text ([`search`]).
//!
//! An agent's checkpoint says it handled every interaction up to N; its
//! unread events are those of interactions above N, in log order, less
//! those the heading mapper hides. Finding them costs what is unread, not
//! the whole log: the *interaction index* (`.huddle/interactions.idx`)
//! records every place where the highest interaction number seen so far
//! goes up. That running highest number only ever grows along the log, so
//! the first event above N sits at or after the first record above N, and
//! no event before that record is above N. A binary search over the records
//! finds it; the index itself is brought up to date by reading what was
//! appended since it was last kept.

use std::fs::{File, OpenOptions};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::state::StateDir;
use crate::backend::{Backend, Continuity, Position, ReadMark, StoreError};
use crate::model::event::{Event, ValidationError};
use crate::plugin::{Heading, PluginError, PluginHost, PluginSpec};
use crate::services::checkpoint::{self, CheckpointError};

use crate::model::names::state::{
    INTERACTIONS_HEADER as INDEX_HEADER, INTERACTIONS_RECORDS as INDEX_RECORDS,
};
/// offset, line, interaction: little-endian u64 each.
const RECORD_BYTES: u64 = 24;
/// Events handed to the heading mapper at once.
const MAPPER_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Directory(#[from] crate::model::config::ConfigError),
    #[error("cannot write {path}: {source}")]
    Ack {
        path: String,
        source: std::io::Error,
    },
}

impl InboxError {
    /// True when the caller can fix the request (a bad agent id or number, a
    /// damaged checkpoint, a directory that is not a huddle directory).
    pub fn is_bad_input(&self) -> bool {
        match self {
            InboxError::Invalid(_) => true,
            InboxError::Checkpoint(error) => matches!(error, CheckpointError::Damaged { .. }),
            InboxError::Directory(error) => error.is_bad_config(),
            InboxError::Store(error) => matches!(error, StoreError::Invalid(_)),
            InboxError::Plugin(_) | InboxError::Ack { .. } => false,
        }
    }
}

/// An agent's unread events.
#[derive(Debug)]
pub struct Unread {
    /// The checkpoint they were read against (none: the agent never acked).
    pub after: Option<u64>,
    pub events: Vec<Event>,
    /// Where to go on reading for more (for following the log).
    pub resume: Position,
    /// True when `limit` stopped the read before the end of the log.
    pub more: bool,
}

/// Where the heading mapper comes from: asked only when there is something
/// to map, so a caught-up agent never loads a plugin.
pub trait MapperSource {
    fn mapper(&self) -> Result<(&PluginHost, &PluginSpec), PluginError>;
}

/// A host made on first use.
pub struct LazyMapper {
    host: std::sync::OnceLock<PluginHost>,
    spec: PluginSpec,
}

impl LazyMapper {
    pub fn new(spec: PluginSpec) -> LazyMapper {
        LazyMapper {
            host: std::sync::OnceLock::new(),
            spec,
        }
    }
}

impl MapperSource for LazyMapper {
    fn mapper(&self) -> Result<(&PluginHost, &PluginSpec), PluginError> {
        if self.host.get().is_none() {
            let host = PluginHost::new().map_err(|error| PluginError::Load {
                plugin: self.spec.name(),
                source_desc: "the plugin host".into(),
                message: format!("{error:#}"),
            })?;
            let _ = self.host.set(host);
        }
        match self.host.get() {
            Some(host) => Ok((host, &self.spec)),
            None => Err(PluginError::Load {
                plugin: self.spec.name(),
                source_desc: "the plugin host".into(),
                message: "the plugin host could not be kept".into(),
            }),
        }
    }
}

impl MapperSource for (&PluginHost, &PluginSpec) {
    fn mapper(&self) -> Result<(&PluginHost, &PluginSpec), PluginError> {
        Ok((self.0, self.1))
    }
}

/// The events of interactions after `agent`'s checkpoint, in log order,
/// less the hidden ones; at most `limit` of them.
pub fn unread(
    dir: &Path,
    backend: &dyn Backend,
    mapper: &dyn MapperSource,
    agent: &str,
    limit: Option<usize>,
) -> Result<Unread, InboxError> {
    checkpoint::validate_agent(agent)?;
    let after = checkpoint::read(dir, agent)?;
    let from = match after {
        Some(done) => first_above(dir, backend, done)?,
        None => Position::START,
    };
    read_unread(backend, mapper, from, after, limit)
}

/// Reads on from `from` (an earlier [`Unread::resume`]): the events above
/// `after` appended since, less the hidden ones.
pub fn read_unread(
    backend: &dyn Backend,
    mapper: &dyn MapperSource,
    from: Position,
    after: Option<u64>,
    limit: Option<usize>,
) -> Result<Unread, InboxError> {
    let wanted = |event: &Event| after.is_none_or(|done| event.interaction > done);
    let (events, resume, more) = read_visible(
        backend,
        mapper,
        from,
        &wanted,
        true,
        limit.unwrap_or(usize::MAX),
    )?;
    Ok(Unread {
        after,
        events,
        resume,
        more,
    })
}

/// Reads from `from` the events `wanted` keeps, in log order, at most
/// `limit` of them, leaving out those the heading mapper hides when `hide`
/// (asking it in batches). Returns them, where to go on reading, and
/// whether `limit` stopped the read with events left over.
fn read_visible(
    backend: &dyn Backend,
    mapper: &dyn MapperSource,
    from: Position,
    wanted: &dyn Fn(&Event) -> bool,
    hide: bool,
    limit: usize,
) -> Result<(Vec<Event>, Position, bool), InboxError> {
    let mut events = Vec::new();
    let mut pending: Vec<(Event, Position)> = Vec::new();
    let mut resume = from;
    let mut more = false;
    let mut failure: Option<InboxError> = None;
    let end = backend.read(from, &mut |stored| {
        if !wanted(&stored.event) {
            return Ok(ControlFlow::Continue(()));
        }
        if !hide {
            if events.len() == limit {
                more = true;
                return Ok(ControlFlow::Break(()));
            }
            resume = stored.next;
            events.push(stored.event);
            return Ok(ControlFlow::Continue(()));
        }
        pending.push((stored.event, stored.next));
        if pending.len() < MAPPER_BATCH {
            return Ok(ControlFlow::Continue(()));
        }
        match keep_visible(mapper, &mut pending, &mut events, &mut resume, limit) {
            Ok(true) => Ok(ControlFlow::Continue(())),
            Ok(false) => {
                more = true;
                Ok(ControlFlow::Break(()))
            }
            Err(error) => {
                failure = Some(error);
                Ok(ControlFlow::Break(()))
            }
        }
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    if !more {
        if keep_visible(mapper, &mut pending, &mut events, &mut resume, limit)? {
            // Everything read was taken, hidden or not wanted.
            resume = end;
        } else {
            more = true;
        }
    }
    Ok((events, resume, more))
}

/// Moves the visible events of `pending` to `events`, up to `limit` in
/// all, and `resume` past each one taken. False once `limit` is reached
/// with events left over.
fn keep_visible(
    mapper: &dyn MapperSource,
    pending: &mut Vec<(Event, Position)>,
    events: &mut Vec<Event>,
    resume: &mut Position,
    limit: usize,
) -> Result<bool, InboxError> {
    if pending.is_empty() {
        return Ok(true);
    }
    let batch: Vec<Event> = pending.iter().map(|(event, _)| event.clone()).collect();
    let (host, spec) = mapper.mapper()?;
    // An event the mapper cannot handle is shown: only the mapper's own
    // "hide" leaves an event out.
    let headings = host.headings_isolating(spec, &batch)?;
    for ((event, next), heading) in pending.drain(..).zip(headings) {
        if heading == Heading::Hidden {
            *resume = next;
            continue;
        }
        if events.len() == limit {
            return Ok(false);
        }
        events.push(event);
        *resume = next;
    }
    Ok(true)
}

/// Records that `agent` handled every interaction up to `interaction`.
pub fn ack(dir: &Path, agent: &str, interaction: u64) -> Result<u64, InboxError> {
    checkpoint::validate_agent(agent)?;
    crate::model::event::validate_number("interaction", interaction)?;
    crate::services::workspace::require_directory(dir)?;
    checkpoint::ack(dir, agent, interaction).map_err(|source| InboxError::Ack {
        path: checkpoint::path(dir, agent).display().to_string(),
        source,
    })?;
    Ok(interaction)
}

/// The longest [`wait`] may last.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks how long a caller asks to wait, in milliseconds (at most [`MAX_WAIT`]).
pub fn wait_timeout(timeout_ms: u64) -> Result<std::time::Duration, ValidationError> {
    let limit = MAX_WAIT.as_millis();
    if u128::from(timeout_ms) > limit {
        return Err(ValidationError::new(
            "timeout_ms",
            format!("is {timeout_ms}, over the limit of {limit}"),
        ));
    }
    Ok(std::time::Duration::from_millis(timeout_ms))
}

/// `agent`'s unread events as soon as there are any, or none once `timeout`
/// has passed. News of appends is pushed by the backend's subscription, taken
/// out before the first read so that no append falls in between.
pub async fn wait(
    dir: std::path::PathBuf,
    backend: std::sync::Arc<dyn Backend>,
    mapper: std::sync::Arc<dyn MapperSource + Send + Sync>,
    agent: String,
    timeout: std::time::Duration,
) -> Result<Unread, InboxError> {
    checkpoint::validate_agent(&agent)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut news = backend.subscribe()?;
    // Reads are file I/O: kept off the async workers.
    let first = {
        let (backend, mapper) = (backend.clone(), mapper.clone());
        tokio::task::spawn_blocking(move || unread(&dir, &*backend, &*mapper, &agent, None))
            .await
            .map_err(joined)??
    };
    let mut unread = first;
    while unread.events.is_empty() {
        match tokio::time::timeout_at(deadline, news.recv()).await {
            Ok(Some(())) => news.drain(),
            // Timed out, or the backend can send no more news.
            Ok(None) | Err(_) => break,
        }
        let (backend, mapper) = (backend.clone(), mapper.clone());
        let (resume, after) = (unread.resume, unread.after);
        unread = tokio::task::spawn_blocking(move || {
            read_unread(&*backend, &*mapper, resume, after, None)
        })
        .await
        .map_err(joined)??;
    }
    Ok(unread)
}

fn joined(error: tokio::task::JoinError) -> InboxError {
    InboxError::Store(StoreError::Io {
        action: "read",
        path: "the log (reader task ended)".into(),
        source: std::io::Error::other(error.to_string()),
    })
}

/// What [`search`] looks for. Every condition given must hold.
#[derive(Debug, Default, Clone)]
pub struct Query {
    /// Interactions from this number on.
    pub from_interaction: Option<u64>,
    /// Interactions up to this number.
    pub to_interaction: Option<u64>,
    /// Only these types, hidden ones included; without it, the types the
    /// heading mapper hides are left out, as in [`unread`].
    pub types: Option<Vec<String>>,
    pub actor: Option<String>,
    /// Content containing this text (case-sensitive).
    pub text: Option<String>,
    /// At most this many events (default [`Query::DEFAULT_LIMIT`]).
    pub limit: Option<usize>,
}

impl Query {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 10_000;

    /// Refuses a query that cannot be answered, naming the field: the same
    /// rules as the log's own fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        use crate::model::event::{validate_actor, validate_number, validate_type};
        if let Some(from) = self.from_interaction {
            validate_number("from_interaction", from)?;
        }
        if let Some(to) = self.to_interaction {
            validate_number("to_interaction", to)?;
        }
        if let (Some(from), Some(to)) = (self.from_interaction, self.to_interaction) {
            if from > to {
                return Err(ValidationError::new(
                    "to_interaction",
                    format!("is {to}, below from_interaction {from}"),
                ));
            }
        }
        for kind in self.types.iter().flatten() {
            validate_type(kind)?;
        }
        if let Some(actor) = &self.actor {
            validate_actor(actor)?;
        }
        if let Some(limit) = self.limit {
            validate_limit(limit)?;
        }
        Ok(())
    }

    fn matches(&self, event: &Event) -> bool {
        self.from_interaction
            .is_none_or(|from| event.interaction >= from)
            && self.to_interaction.is_none_or(|to| event.interaction <= to)
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.contains(&event.kind))
            && self
                .actor
                .as_ref()
                .is_none_or(|actor| *actor == event.actor)
            && self
                .text
                .as_ref()
                .is_none_or(|text| event.content.contains(text.as_str()))
    }
}

/// Checks how many events a caller asks for at once (1 to [`Query::MAX_LIMIT`]).
pub fn validate_limit(limit: usize) -> Result<(), ValidationError> {
    if limit == 0 || limit > Query::MAX_LIMIT {
        return Err(ValidationError::new(
            "limit",
            format!("is {limit}, must be 1 to {}", Query::MAX_LIMIT),
        ));
    }
    Ok(())
}

/// The answer of [`search`].
#[derive(Debug)]
pub struct Found {
    pub events: Vec<Event>,
    /// True when `limit` stopped the read before the end of the log.
    pub more: bool,
}

/// Events matching `query`, in log order. With `from_interaction`, reading
/// starts where the interaction index says the first such event can be, so
/// catching up on the last interactions of a long log costs what is read.
pub fn search(
    dir: &Path,
    backend: &dyn Backend,
    mapper: &dyn MapperSource,
    query: &Query,
) -> Result<Found, InboxError> {
    query.validate()?;
    let limit = query.limit.unwrap_or(Query::DEFAULT_LIMIT);
    let from = match query.from_interaction {
        Some(from) if from > 0 => first_above(dir, backend, from - 1)?,
        _ => Position::START,
    };
    // Types asked for by name are shown even if the mapper hides them.
    let hide = query.types.is_none();
    let (events, _, more) = read_visible(
        backend,
        mapper,
        from,
        &|event| query.matches(event),
        hide,
        limit,
    )?;
    Ok(Found { events, more })
}

/// Where to start reading for events of interactions above `done`: no
/// event before this place is one.
fn first_above(dir: &Path, backend: &dyn Backend, done: u64) -> Result<Position, StoreError> {
    match InteractionIndex::open(&StateDir::of(dir), backend) {
        Ok(index) => index.first_above(done),
        // The index is a cache: without it, read the whole log.
        Err(IndexError::Cache(error)) => {
            tracing::debug!(%error, "interaction index unavailable; reading the whole log");
            Ok(Position::START)
        }
        Err(IndexError::Store(error)) => Err(error),
    }
}

#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("interaction index: {0}")]
    Cache(#[from] std::io::Error),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexHeader {
    /// What the index was built from, up to `read_to`.
    mark: ReadMark,
    read_to: Position,
    highest: Option<u64>,
    /// Complete records in the records file; bytes past them are a torn save.
    records: u64,
}

/// The running highest interaction number, at each place it goes up.
struct InteractionIndex {
    /// Locked while held: concurrent readers take turns keeping it.
    records: File,
    count: u64,
    read_to: Position,
}

impl InteractionIndex {
    /// Opens the index and brings it up to date with the log.
    fn open(state: &StateDir, backend: &dyn Backend) -> Result<InteractionIndex, IndexError> {
        std::fs::create_dir_all(state.path())?;
        let records = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(state.file(INDEX_RECORDS))?;
        fs4::FileExt::lock(&records)?;
        let len = records.metadata()?.len();
        let header = state
            .load::<IndexHeader>(INDEX_HEADER)
            .filter(|header| header.records * RECORD_BYTES <= len);
        let mut header = match header {
            Some(header) if backend.continuity(&header.mark)? == Continuity::Same => header,
            // Another log, or none kept: build it again.
            _ => IndexHeader::default(),
        };
        let mut fresh = Vec::new();
        let mut highest = header.highest;
        let read_to = crate::backend::scan(backend, header.read_to, |stored| {
            let number = stored.event.interaction;
            if highest.is_none_or(|h| number > h) {
                highest = Some(number);
                fresh.extend_from_slice(&stored.at.offset.to_le_bytes());
                fresh.extend_from_slice(&stored.at.line.to_le_bytes());
                fresh.extend_from_slice(&number.to_le_bytes());
            }
            Ok(())
        })?;
        let count = header.records + fresh.len() as u64 / RECORD_BYTES;
        if read_to != header.read_to || header.records * RECORD_BYTES != len {
            records.set_len(header.records * RECORD_BYTES)?;
            records.write_all_at(&fresh, header.records * RECORD_BYTES)?;
            header = IndexHeader {
                mark: backend.mark(read_to)?,
                read_to,
                highest,
                records: count,
            };
            state.save_cache(INDEX_HEADER, &header)?;
        }
        Ok(InteractionIndex {
            records,
            count,
            read_to,
        })
    }

    fn record(&self, i: u64) -> std::io::Result<(Position, u64)> {
        let mut bytes = [0u8; RECORD_BYTES as usize];
        self.records.read_exact_at(&mut bytes, i * RECORD_BYTES)?;
        let field = |n: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[n * 8..n * 8 + 8]);
            u64::from_le_bytes(word)
        };
        Ok((
            Position {
                offset: field(0),
                line: field(1),
            },
            field(2),
        ))
    }

    /// The place of the first record above `done`, or where the index
    /// ends when there is none (the log may have grown since).
    fn first_above(&self, done: u64) -> Result<Position, StoreError> {
        let read = |error| StoreError::Io {
            action: "read",
            path: INDEX_RECORDS.into(),
            source: error,
        };
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = low + (high - low) / 2;
            let (_, highest) = self.record(middle).map_err(read)?;
            if highest > done {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        if low == self.count {
            return Ok(self.read_to);
        }
        self.record(low).map(|(at, _)| at).map_err(read)
    }
}

impl Drop for InteractionIndex {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.records);
    }
}
