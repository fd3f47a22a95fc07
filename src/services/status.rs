//! `huddle status`: who leads, who is alive, what went wrong, how fresh the
//! snapshot is. The JSON form is stable: fields are only ever added.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::backend::file::{StoreError, LOG_FILE, STATE_DIR};
use crate::backend::state::StateDir;
use crate::backend::{Backend, Continuity, Position, ReadMark};
use crate::model::event::Event;
use crate::model::visible::{visible, visible_entry};
use crate::services::election::{parse_time, Leadership};
use crate::services::workspace::Workspace;

pub use crate::model::names::state::SNAPSHOT as SNAPSHOT_STATE_FILE;
const LAST_ERRORS: usize = 5;
/// Leadership changes kept for the dashboard's election history.
const LAST_ELECTIONS: usize = 20;
/// The event rate is counted per minute over this many minutes.
pub const RATE_MINUTES: usize = 60;

#[derive(Debug, Serialize)]
pub struct Status {
    /// Where this status has read the log to: what came after is news (the
    /// dashboard's stream starts there).
    #[serde(skip)]
    pub read_to: Position,
    pub leader: Option<String>,
    pub term: u64,
    /// Seconds since the leader's last heartbeat (or its claim).
    pub leader_heartbeat_age_secs: Option<f64>,
    pub actors: Vec<ActorStatus>,
    pub last_errors: Vec<ErrorSummary>,
    pub events: u64,
    pub snapshot: SnapshotStatus,
    /// Alert sinks: cursor, alerts delivered, the last failure.
    pub alerts: Vec<crate::services::alerts::SinkRecord>,
    /// Set while huddle is paused after a write error (until `huddle resume`).
    pub paused: Option<crate::backend::pause::Pause>,
    /// Git sync: last success, offline or not, bytes of the log not yet pushed.
    pub sync: Option<SyncStatus>,
    /// The last time a daemon found events.log replaced or truncated.
    pub log_replaced: Option<LogReplaced>,
    /// Without a heartbeat for this long the leader is presumed gone
    /// (`daemon.leader_timeout_ms`).
    pub leader_timeout_secs: f64,
    /// Events in the log, by type.
    pub events_by_type: BTreeMap<String, u64>,
    /// The last changes of leadership (claims won, resignations), oldest first.
    pub elections: Vec<ElectionRecord>,
    /// Events per minute over the last hour by their timestamps, oldest
    /// minute first; the last is the current minute.
    pub event_rate_per_minute: Vec<u64>,
    /// Where the events are kept, whether it answers, and what waits to go there.
    pub backend: BackendStatus,
}

/// One change of leadership: a claim that won its term, or a resignation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElectionRecord {
    pub term: u64,
    pub actor: String,
    /// `claim` or `resign`.
    pub action: String,
    pub timestamp: String,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// "file" or "jetstream".
    pub kind: &'static str,
    /// JetStream: the servers and the stream.
    pub servers: Option<String>,
    pub stream: Option<String>,
    /// No server answered: what status shows is what this machine last saw.
    pub offline: bool,
    pub offline_reason: Option<String>,
    /// Events waiting in the offline queue (events.offline.log).
    pub queued: usize,
}

fn backend_status(workspace: &Workspace, unreachable: Option<String>) -> BackendStatus {
    let config = &workspace.config.backend;
    let queued = std::fs::read_to_string(workspace.dir.join(crate::backend::file::OFFLINE_FILE))
        .map(|text| text.lines().filter(|line| !line.trim().is_empty()).count())
        .unwrap_or(0);
    match config.kind {
        crate::model::config::BackendKind::File => BackendStatus {
            kind: "file",
            servers: None,
            stream: None,
            offline: false,
            offline_reason: None,
            queued,
        },
        crate::model::config::BackendKind::Jetstream => BackendStatus {
            kind: "jetstream",
            servers: Some(config.url.shown()),
            stream: Some(config.stream.clone()),
            offline: unreachable.is_some(),
            offline_reason: unreachable,
            queued,
        },
    }
}

#[derive(Debug, Serialize)]
pub struct SyncStatus {
    pub remote: String,
    pub last_success: Option<String>,
    pub offline: bool,
    pub last_error: Option<String>,
    pub pending_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ActorStatus {
    pub actor: String,
    pub last_type: String,
    pub last_event_age_secs: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorSummary {
    pub actor: String,
    pub content: String,
    pub timestamp: String,
    /// Where the error event sits: an alert sink whose cursor is past it
    /// has handled it.
    #[serde(default)]
    pub at: Option<Position>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotStatus {
    /// When communication.md was last brought up to date.
    pub updated_at: Option<String>,
    pub age_secs: Option<f64>,
    /// Bytes of events.log not yet in the snapshot (the file log only:
    /// always 0 on other backends).
    pub bytes_behind: u64,
    /// Entries of the log (events, and lines set aside) not yet in the
    /// snapshot, on any backend: 0 is up to date. None before the first
    /// snapshot this version of huddle recorded.
    pub events_behind: Option<u64>,
}

impl SnapshotStatus {
    /// Whether the snapshot has everything the log held when status read it.
    pub fn up_to_date(&self) -> bool {
        self.updated_at.is_some()
            && self
                .events_behind
                .map_or(self.bytes_behind == 0, |behind| behind == 0)
    }

    /// What the snapshot lacks, for people: "12 events" or "4096 bytes".
    pub fn lag(&self) -> String {
        match self.events_behind {
            Some(1) => "1 event".to_string(),
            Some(behind) => format!("{behind} events"),
            None => format!("{} bytes", self.bytes_behind),
        }
    }
}

/// Written by the snapshotter after each successful run.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub log_offset: u64,
    /// Where the snapshot has read the log to (absent in states written
    /// before it was kept).
    #[serde(default)]
    pub read_to: Option<Position>,
    pub updated_at: String,
    /// How long the snapshots took (for `/metrics`).
    #[serde(default)]
    pub durations: DurationHistogram,
}

/// Upper bounds, in seconds, of the snapshot duration histogram's buckets.
pub const SNAPSHOT_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// A Prometheus-style histogram: counts at or under each of
/// [`SNAPSHOT_BUCKETS`] (not cumulative), with the total count and sum.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DurationHistogram {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_secs: f64,
}

impl DurationHistogram {
    pub fn observe(&mut self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        self.buckets.resize(SNAPSHOT_BUCKETS.len(), 0);
        if let Some(bucket) = SNAPSHOT_BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[bucket] += 1;
        }
        self.count += 1;
        self.sum_secs += secs;
    }
}

/// Called by the snapshotter, under its lock, after each successful run.
pub fn record_snapshot(dir: &Path, read_to: Position, took: std::time::Duration) {
    let state_dir = StateDir::of(dir);
    let mut durations = state_dir
        .load::<SnapshotState>(SNAPSHOT_STATE_FILE)
        .map(|state| state.durations)
        .unwrap_or_default();
    durations.observe(took);
    let state = SnapshotState {
        log_offset: read_to.offset,
        read_to: Some(read_to),
        updated_at: crate::model::event::now_rfc3339(),
        durations,
    };
    // Status only: a failure here, or a crash losing it, costs nothing but
    // an older "updated_at". So a cache, without fsync: a leader saves it
    // after every snapshot (five times a second under 200 ms heartbeats),
    // and those flushes slowed every other writer's on the disk.
    let _ = state_dir.save_cache(SNAPSHOT_STATE_FILE, &state);
}

pub use crate::model::names::state::LOG_REPLACED as LOG_REPLACED_FILE;

/// The last time a daemon found events.log replaced or truncated under it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogReplaced {
    pub detected_at: String,
    pub by: String,
    pub detail: String,
}

/// Records that `by` found the log replaced (for `huddle status`).
pub fn record_log_replaced(dir: &Path, by: &str, detail: &str) {
    let record = LogReplaced {
        detected_at: crate::model::event::now_rfc3339(),
        by: by.to_string(),
        detail: detail.to_string(),
    };
    // Status only: the error event in the log says it too.
    let _ = StateDir::of(dir).save(LOG_REPLACED_FILE, &record);
}

fn load_log_replaced(dir: &Path) -> Option<LogReplaced> {
    StateDir::of(dir).load(LOG_REPLACED_FILE)
}

use crate::model::names::state::STATUS_MODEL;

/// What `huddle status` derives from the events, kept up to date by reading
/// only what was appended since it was last kept (`.huddle/status-model.json`,
/// a cache: rebuilt from the whole log when missing, or when the log it was
/// built from is gone).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StatusModel {
    /// [`MODEL_VERSION`] of the code that kept it: an older model lacks
    /// what was added since, so it is built again.
    #[serde(default)]
    version: u32,
    mark: ReadMark,
    read_to: Position,
    leadership: Leadership,
    /// Each actor's last event: its type and timestamp.
    actors: BTreeMap<String, (String, String)>,
    /// The last errors, oldest first.
    errors: VecDeque<ErrorSummary>,
    events: u64,
    by_type: BTreeMap<String, u64>,
    elections: VecDeque<ElectionRecord>,
    /// Events per minute (minutes since the epoch, by the events' own
    /// timestamps), the last [`RATE_MINUTES`] up to the latest seen.
    per_minute: BTreeMap<i64, u64>,
}

const MODEL_VERSION: u32 = 2;

impl StatusModel {
    fn load(state: &StateDir, backend: &dyn Backend) -> Result<StatusModel, StoreError> {
        Ok(match state.load::<StatusModel>(STATUS_MODEL) {
            Some(model)
                if model.version == MODEL_VERSION
                    && backend.continuity(&model.mark)? == Continuity::Same =>
            {
                model
            }
            _ => StatusModel {
                version: MODEL_VERSION,
                ..StatusModel::default()
            },
        })
    }

    fn observe(&mut self, event: Event, at: Position) {
        self.events += 1;
        let before = (self.leadership.term, self.leadership.leader.clone());
        self.leadership.observe(&event);
        let action = if self.leadership.term != before.0 {
            Some("claim")
        } else if self.leadership.leader.is_none() && before.1.is_some() {
            Some("resign")
        } else {
            None
        };
        if let Some(action) = action {
            self.elections.push_back(ElectionRecord {
                term: self.leadership.term,
                actor: event.actor.clone(),
                action: action.to_string(),
                timestamp: event.timestamp.clone(),
            });
            if self.elections.len() > LAST_ELECTIONS {
                self.elections.pop_front();
            }
        }
        if let Some(minute) = parse_time(&event.timestamp).map(|t| t.timestamp().div_euclid(60)) {
            let latest = self
                .per_minute
                .keys()
                .next_back()
                .copied()
                .unwrap_or(minute);
            if minute > latest - RATE_MINUTES as i64 {
                *self.per_minute.entry(minute).or_default() += 1;
                let keep_from = minute.max(latest) - RATE_MINUTES as i64 + 1;
                self.per_minute = self.per_minute.split_off(&keep_from);
            }
        }
        match self.by_type.get_mut(&event.kind) {
            Some(count) => *count += 1,
            None => {
                self.by_type.insert(event.kind.clone(), 1);
            }
        }
        if event.is_error() {
            self.errors.push_back(ErrorSummary {
                actor: event.actor.clone(),
                content: event.content.clone(),
                timestamp: event.timestamp.clone(),
                at: Some(at),
            });
            if self.errors.len() > LAST_ERRORS {
                self.errors.pop_front();
            }
        }
        self.actors
            .insert(event.actor, (event.kind, event.timestamp));
    }

    /// Reads what was appended since, and keeps the model if it moved.
    fn catch_up(&mut self, state: &StateDir, backend: &dyn Backend) -> Result<(), StoreError> {
        let read_to = crate::backend::scan(backend, self.read_to, |stored| {
            self.observe(stored.event, stored.at);
            Ok(())
        })?;
        if read_to != self.read_to {
            self.read_to = read_to;
            self.mark = backend.mark(read_to)?;
            // A cache: failing to keep it costs the next call a longer read.
            if let Err(error) = state.save_cache(STATUS_MODEL, self) {
                tracing::debug!(%error, "status model not kept");
            }
        }
        Ok(())
    }
}

/// Keeps what this machine has seen: on JetStream its copy of the stream
/// (what reads fall back to without a server), and status's read model.
/// The daemon calls it after each snapshot, so that reads and `status`
/// keep serving what was seen here when the backend stops answering, and
/// `status` answers at once. Through the caller's `backend` (the snapshot
/// worker's), so that it opens no connection of its own.
pub fn keep_what_was_seen(workspace: &Workspace, backend: &dyn Backend) -> Result<(), StoreError> {
    backend.keep_local_copy()?;
    let state = StateDir::of(&workspace.dir);
    StatusModel::load(&state, backend)?.catch_up(&state, backend)
}

pub fn status(workspace: &Workspace) -> Result<Status, StoreError> {
    status_from(workspace, &*workspace.backend())
}

/// [`status`] through a backend the caller keeps open (a server: the
/// dashboard, `huddle mcp`), so that no call connects anew.
pub fn status_from(workspace: &Workspace, backend: &dyn Backend) -> Result<Status, StoreError> {
    let now = Utc::now();
    let age = |timestamp: &str| {
        parse_time(timestamp).map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    };
    let state = StateDir::of(&workspace.dir);
    let caught_up = StatusModel::load(&state, backend).and_then(|mut model| {
        model.catch_up(&state, backend)?;
        Ok(model)
    });
    // Without a server, status still says what this machine last saw.
    let (model, unreachable) = match caught_up {
        Ok(model) => (model, backend.offline()),
        Err(StoreError::Unreachable { reason, .. }) => (
            state.load::<StatusModel>(STATUS_MODEL).unwrap_or_default(),
            Some(reason),
        ),
        Err(error) => return Err(error),
    };
    let StatusModel {
        leadership,
        actors,
        errors,
        events,
        by_type,
        elections,
        per_minute,
        read_to,
        ..
    } = model;
    let this_minute = now.timestamp().div_euclid(60);
    let event_rate_per_minute = (0..RATE_MINUTES as i64)
        .rev()
        .map(|ago| per_minute.get(&(this_minute - ago)).copied().unwrap_or(0))
        .collect();
    let errors: Vec<ErrorSummary> = errors.into();
    let log_len = std::fs::metadata(workspace.dir.join(LOG_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let state: Option<SnapshotState> =
        std::fs::read(workspace.dir.join(STATE_DIR).join(SNAPSHOT_STATE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(Status {
        read_to,
        leader: leadership.leader.clone(),
        term: leadership.term,
        leader_heartbeat_age_secs: leadership.silence(now),
        actors: actors
            .into_iter()
            .map(|(actor, (last_type, timestamp))| ActorStatus {
                actor,
                last_type,
                last_event_age_secs: age(&timestamp),
            })
            .collect(),
        last_errors: errors,
        events,
        snapshot: SnapshotStatus {
            age_secs: state.as_ref().and_then(|s| age(&s.updated_at)),
            bytes_behind: log_len.saturating_sub(state.as_ref().map_or(0, |s| s.log_offset)),
            events_behind: state
                .as_ref()
                .and_then(|s| s.read_to)
                .map(|snapshot| read_to.line.saturating_sub(snapshot.line)),
            updated_at: state.map(|s| s.updated_at),
        },
        alerts: crate::services::alerts::load_state(&workspace.dir).sinks,
        paused: crate::backend::pause::paused(&workspace.dir),
        log_replaced: load_log_replaced(&workspace.dir),
        backend: backend_status(workspace, unreachable),
        sync: crate::services::sync::load_state(&workspace.dir).map(|state| SyncStatus {
            remote: state.remote,
            last_success: state.last_success,
            offline: state.offline,
            last_error: state.last_error,
            pending_bytes: log_len.saturating_sub(state.pushed_log_bytes),
        }),
        leader_timeout_secs: workspace.config.daemon.leader_timeout().as_secs_f64(),
        events_by_type: by_type,
        elections: elections.into(),
        event_rate_per_minute,
    })
}

/// For people: every text that came from the log or a state file (names,
/// errors, a remote server's answer) is shown with [`visible`], so a
/// terminal shows an escape sequence instead of obeying it. `--json` prints
/// the exact values.
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(pause) = &self.paused {
            writeln!(
                f,
                "PAUSED:   since {} by {}: {}\n          fix the cause, then run `huddle resume`",
                visible(&pause.since),
                visible(&pause.by),
                visible_entry(&pause.reason, "          ")
            )?;
        }
        match (&self.leader, self.leader_heartbeat_age_secs) {
            (Some(leader), Some(age)) => writeln!(
                f,
                "leader:   {} (term {}), last heartbeat {age:.1}s ago",
                visible(leader),
                self.term
            )?,
            _ => writeln!(f, "leader:   none (last term {})", self.term)?,
        }
        if let (Some(servers), Some(stream)) = (&self.backend.servers, &self.backend.stream) {
            writeln!(
                f,
                "backend:  jetstream stream {} on {}: {}; {} events queued",
                visible(stream),
                visible(servers),
                if self.backend.offline {
                    "OFFLINE (showing what this machine last saw)"
                } else {
                    "online"
                },
                self.backend.queued
            )?;
        }
        writeln!(f, "events:   {}", self.events)?;
        if let Some(replaced) = &self.log_replaced {
            writeln!(
                f,
                "log:      events.log was found replaced at {} by {}: {}; derived state was rebuilt",
                replaced.detected_at, replaced.by, replaced.detail
            )?;
        }
        match (&self.snapshot.updated_at, self.snapshot.age_secs) {
            (Some(_), Some(age)) if self.snapshot.up_to_date() => {
                writeln!(f, "snapshot: up to date (written {age:.1}s ago)")?
            }
            (Some(_), Some(age)) => writeln!(
                f,
                "snapshot: {} of the log not yet in it (last written {age:.1}s ago)",
                self.snapshot.lag()
            )?,
            _ => writeln!(f, "snapshot: never written")?,
        }
        if let Some(sync) = &self.sync {
            writeln!(
                f,
                "sync:     {} {}; last success {}; {} bytes not pushed yet{}",
                visible(&sync.remote),
                if sync.offline { "OFFLINE" } else { "online" },
                visible(sync.last_success.as_deref().unwrap_or("never")),
                sync.pending_bytes,
                sync.last_error
                    .as_ref()
                    .filter(|_| sync.offline)
                    .map(|e| format!(" ({})", visible_entry(e, "          ")))
                    .unwrap_or_default()
            )?;
        }
        writeln!(f, "actors:")?;
        for actor in &self.actors {
            let age = actor
                .last_event_age_secs
                .map_or("?".into(), |a| format!("{a:.1}s"));
            writeln!(
                f,
                "  {:<24} last {:<16} {age} ago",
                visible_entry(&actor.actor, "    "),
                visible_entry(&actor.last_type, "    ")
            )?;
        }
        for sink in &self.alerts {
            write!(
                f,
                "alerts:   sink {}: {} delivered",
                visible(&sink.sink),
                sink.delivered
            )?;
            match (&sink.last_error, &sink.last_error_at) {
                (Some(error), Some(at)) => writeln!(
                    f,
                    "; last failure at {}: {}",
                    visible(at),
                    visible_entry(error, "          ")
                )?,
                _ => writeln!(f)?,
            }
        }
        if self.last_errors.is_empty() {
            writeln!(f, "errors:   none")?;
        } else {
            writeln!(f, "last errors:")?;
            for error in &self.last_errors {
                let entry = format!("{} {}: {}", error.timestamp, error.actor, error.content);
                writeln!(f, "  {}", visible_entry(&entry, "    "))?;
            }
        }
        Ok(())
    }
}
