//! Alerts: every `error` event reaches people through the alert sinks in
//! huddle.toml, delivered by the leader.
//!
//! - **At least once.** Each sink has a cursor in `.huddle/alerts.json`: the
//!   log position up to which its alerts are delivered (or given up on). It
//!   moves only after a delivery, so a new leader after failover neither
//!   drops nor repeats what was delivered; at most the batch in flight when
//!   the old leader died is sent again.
//! - **A new sink starts at the end.** A sink the leader has no cursor for
//!   starts at the end of the log as it finds it (its history is not
//!   replayed), unless its config says `from = "start"`. A sink is known by
//!   its `name`, else by its plugin (`webhook`, `webhook#2`, ...), so editing
//!   its settings or reordering sinks keeps its place.
//! - **Independent.** Each sink delivers on a thread of its own: a sink
//!   that hangs, loops or waits on a silent server delays nobody else, and
//!   no sink ever blocks appends (delivery reads the log without its lock).
//! - **Retries.** The sink's own transient failures (5xx, timeouts, refused
//!   connections) are retried after 1 s, 2 s, 4 s ... (the daemon's retry
//!   settings) for as long as they last, so the alerts wait, in order; its
//!   permanent failures (other 4xx, an allowlist refusal) give up the batch.
//! - **Contained.** A sink that traps, runs out of memory, overruns its
//!   deadline, cannot be loaded or refuses its settings is tried
//!   [`CONTAINED_ATTEMPTS`] times in all with the same backoff (a deadline
//!   overrun on a loaded machine, a plugin file being replaced), then that
//!   batch is given up for that sink and later alerts flow. Every failure is
//!   reported in huddle's own log and in `huddle status` (`alerts[]`), never
//!   as a new `error` event (that would loop).
//! - **Duplicates merged.** Identical alerts (same actor, type and content)
//!   within `alerts.dedupe_window_secs` are sent once; the ones held back are
//!   counted and reported with the next one, or when the window closes.
//! - **Rate limit.** At most one delivery per sink per `alerts.min_interval_ms`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::file::STATE_DIR;
use crate::backend::{Backend, Continuity, Position, ReadMark};
use crate::model::backoff::Backoff;
use crate::model::config::SinkStart;
use crate::model::event::Event;
use crate::plugin::{Alert, DeliveryError, PluginHost, PluginSpec};
use crate::services::workspace::Workspace;

pub use crate::model::names::state::ALERTS as ALERTS_STATE_FILE;
/// Alerts per delivery call.
const MAX_BATCH: usize = 100;
/// Attempts at one batch when the sink itself fails (trap, out of memory,
/// deadline, load or configure failure) before the batch is given up.
pub const CONTAINED_ATTEMPTS: u32 = 3;
/// Longest failure message kept in `.huddle/alerts.json` (a sink chooses
/// its own messages).
const MAX_ERROR_CHARS: usize = 1000;
/// How often the coordinator and each sink look for work.
const TICK: Duration = Duration::from_millis(50);

/// What `.huddle/alerts.json` holds: one entry per configured sink.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AlertsState {
    pub sinks: Vec<SinkRecord>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SinkRecord {
    /// The sink's `name`, else its plugin (`webhook`, `webhook#2`).
    pub sink: String,
    pub cursor: Position,
    /// The id of the last event before `cursor`: where to pick up again in
    /// a log that was replaced (a cursor is a byte offset of the old file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<String>,
    pub delivered: u64,
    /// Alerts given up on: refused for good by the sink, or after
    /// [`CONTAINED_ATTEMPTS`] failed attempts.
    #[serde(default)]
    pub failed: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// The last alerts given up on, newest last (at most [`GIVEN_UP_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given_up: Vec<GivenUp>,
}

/// An alert given up on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenUp {
    /// [`error_key`] of the error: identical errors are merged into one
    /// alert, so one key stands for all of them.
    pub error: String,
    pub reason: String,
}

/// Alerts given up on that each sink's record remembers.
pub const GIVEN_UP_KEPT: usize = 50;

/// What identifies an error for its alert: its actor and content (alerts
/// merge identical errors), hashed so a record stays small.
pub fn error_key(actor: &str, content: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(actor.as_bytes());
    hash.update([0]);
    hash.update(content.as_bytes());
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR).join(ALERTS_STATE_FILE)
}

pub fn load_state(dir: &Path) -> AlertsState {
    crate::backend::state::StateDir::of(dir)
        .load(ALERTS_STATE_FILE)
        .unwrap_or_default()
}

fn save_state(dir: &Path, state: &AlertsState) -> std::io::Result<()> {
    crate::backend::state::StateDir::of(dir).save(ALERTS_STATE_FILE, state)
}

/// Sinks of this process read, change and write alerts.json one at a time.
fn state_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    lock(&LOCK)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Delivery settings (from huddle.toml).
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub dedupe_window: Duration,
    pub min_interval: Duration,
    /// The pauses between failed deliveries of a batch.
    pub retry: Backoff,
}

impl DeliveryPolicy {
    pub fn from_config(config: &crate::model::config::Config) -> DeliveryPolicy {
        let (alerts, daemon) = (&config.alerts, &config.daemon);
        DeliveryPolicy {
            dedupe_window: Duration::from_secs(alerts.dedupe_window_secs),
            min_interval: Duration::from_millis(alerts.min_interval_ms),
            retry: daemon.retry_backoff(),
        }
    }
}

/// One configured sink: what it is known by, where a new one starts, and
/// how to run it.
#[derive(Debug, Clone)]
pub struct SinkSetup {
    pub id: String,
    pub from: SinkStart,
    pub spec: PluginSpec,
}

/// Every sink of huddle.toml, in order.
pub fn configured_sinks(
    workspace: &Workspace,
) -> Result<Vec<SinkSetup>, crate::model::config::ConfigError> {
    let specs = workspace.sink_specs()?;
    let alerts = &workspace.config.alerts;
    Ok(alerts
        .sink_ids()
        .into_iter()
        .zip(&alerts.sinks)
        .zip(specs)
        .map(|((id, config), spec)| SinkSetup {
            id,
            from: config.from,
            spec,
        })
        .collect())
}

/// What the coordinator and a sink's thread share.
struct Shared {
    id: String,
    /// The sink's current spec and policy (huddle.toml may change).
    setup: Mutex<(PluginSpec, DeliveryPolicy)>,
    /// Alerts that cannot go through the log, delivered first.
    urgent: Mutex<Vec<Event>>,
    stop: AtomicBool,
}

struct Worker {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// Whether this process may do the leader's work, and until when.
///
/// The daemon grants it for a leader timeout after each heartbeat that
/// lands (and while paused, when no daemon writes), and revokes it when it
/// steps down. A leader stopped (SIGSTOP) past its lease does no leader work
/// when it wakes, even before it has read the log and seen its successor:
/// by then another daemon may have taken over.
#[derive(Debug, Clone, Default)]
pub struct LeaderLease(Arc<Mutex<Option<Instant>>>);

impl LeaderLease {
    pub fn grant_until(&self, until: Instant) {
        *lock(&self.0) = Some(until);
    }

    pub fn revoke(&self) {
        *lock(&self.0) = None;
    }

    pub fn holds(&self) -> bool {
        lock(&self.0).is_some_and(|until| Instant::now() < until)
    }
}

/// Delivers alerts while `leading` holds; stops when `stop` is set. Events
/// in `direct` go to every sink without passing through the log (used when
/// the log cannot be written).
pub fn run_delivery(
    dir: PathBuf,
    host: Arc<PluginHost>,
    leading: LeaderLease,
    stop: Arc<AtomicBool>,
    direct: Arc<Mutex<Vec<Event>>>,
) {
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // Stopped workers still inside a plugin call: a sink gets no second
    // thread until its first has finished, or both would deliver.
    let mut stopping: Vec<Worker> = Vec::new();
    let mut last_problem = String::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        stopping.retain(|worker| !worker.thread.is_finished());
        if !leading.holds() {
            // A follower keeps nothing: the next leader reads the cursors.
            for (_, worker) in workers.drain() {
                worker.shared.stop.store(true, Ordering::SeqCst);
                stopping.push(worker);
            }
            continue;
        }
        let configured = Workspace::open(&dir)
            .map_err(|e| e.to_string())
            .and_then(|workspace| {
                let setups = configured_sinks(&workspace).map_err(|e| e.to_string())?;
                Ok((workspace, setups))
            });
        let (workspace, setups) = match configured {
            Ok(configured) => configured,
            Err(problem) => {
                // Said once, not every tick.
                if problem != last_problem {
                    tracing::error!(%problem, "alerts: cannot use huddle.toml; sinks keep their last settings");
                    last_problem = problem;
                }
                continue;
            }
        };
        last_problem.clear();
        let policy = DeliveryPolicy::from_config(&workspace.config);
        workers.retain(|id, worker| {
            let ended = worker.thread.is_finished();
            if ended {
                tracing::error!(
                    sink = id.as_str(),
                    "alert sink thread ended; starting it again"
                );
            }
            !ended
        });

        let removed: Vec<String> = workers
            .keys()
            .filter(|id| !setups.iter().any(|s| &s.id == *id))
            .cloned()
            .collect();
        for id in removed {
            if let Some(worker) = workers.remove(&id) {
                tracing::info!(
                    sink = id.as_str(),
                    "alert sink removed from huddle.toml: forgetting its delivery position"
                );
                worker.shared.stop.store(true, Ordering::SeqCst);
                stopping.push(worker);
                forget(&dir, &id);
            }
        }
        for worker in workers.values() {
            if let Some(setup) = setups.iter().find(|s| s.id == worker.shared.id) {
                *lock(&worker.shared.setup) = (setup.spec.clone(), policy.clone());
            }
        }
        let to_start: Vec<&SinkSetup> = setups
            .iter()
            .filter(|s| !workers.contains_key(&s.id))
            .filter(|s| !stopping.iter().any(|w| w.shared.id == s.id))
            .collect();
        if !to_start.is_empty() {
            let log = workspace.backend();
            match register(&dir, &log, &setups) {
                Ok(cursors) => {
                    for setup in to_start {
                        let cursor = cursors
                            .get(&setup.id)
                            .cloned()
                            .unwrap_or((Position::START, None));
                        match start_worker(&dir, &host, &leading, &log, setup, &policy, cursor) {
                            Ok(worker) => {
                                workers.insert(setup.id.clone(), worker);
                            }
                            Err(error) => {
                                tracing::error!(sink = setup.id.as_str(), %error, "alerts: cannot start a thread for the sink");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "alerts: cannot take up the sinks; trying again")
                }
            }
        }
        if workers.is_empty() {
            continue;
        }
        let urgent: Vec<Event> = direct
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for event in urgent {
            for worker in workers.values() {
                lock(&worker.shared.urgent).push(event.clone());
            }
        }
    }
    // Threads inside a plugin call end with the call (it has a deadline);
    // nobody waits for them.
    for worker in workers.values().chain(&stopping) {
        worker.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn start_worker(
    dir: &Path,
    host: &Arc<PluginHost>,
    leading: &LeaderLease,
    log: &Arc<dyn Backend>,
    setup: &SinkSetup,
    policy: &DeliveryPolicy,
    (cursor, after_id): (Position, Option<String>),
) -> std::io::Result<Worker> {
    let shared = Arc::new(Shared {
        id: setup.id.clone(),
        setup: Mutex::new((setup.spec.clone(), policy.clone())),
        urgent: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let sink = Sink {
        key: setup.id.clone(),
        pending: Vec::new(),
        pending_end: cursor,
        pending_end_id: after_id.clone(),
        read_to: cursor,
        read_to_id: after_id,
        mark: ReadMark::unhashed(cursor),
        read_errors: RecentlyRead::default(),
        not_before: Instant::now(),
        retry: policy.retry.clone(),
        contained_failures: 0,
        held: HashMap::new(),
    };
    let thread = {
        let (dir, host, leading, shared, log) = (
            dir.to_path_buf(),
            host.clone(),
            leading.clone(),
            shared.clone(),
            log.clone(),
        );
        std::thread::Builder::new()
            .name(format!("huddle-sink-{}", setup.id))
            .spawn(move || run_sink(dir, host, leading, shared, log, sink))?
    };
    Ok(Worker { shared, thread })
}

/// Every configured sink's cursor from alerts.json. A sink seen for the
/// first time gets a record at once — at the end of the log, or at its
/// start if configured so — so a later leader starts where this one did.
/// Records of sinks no longer configured are dropped.
fn register(
    dir: &Path,
    log: &Arc<dyn Backend>,
    all: &[SinkSetup],
) -> Result<HashMap<String, (Position, Option<String>)>, crate::backend::file::StoreError> {
    let _guard = state_lock();
    let mut state = load_state(dir);
    let mut records = Vec::new();
    let mut end_of_log = None;
    let mut changed = false;
    for (position, setup) in all.iter().enumerate() {
        // Before sinks had ids they were known as `<position>:<plugin>`.
        let legacy = format!("{position}:{}", setup.spec.name());
        let found = state
            .sinks
            .iter()
            .position(|r| r.sink == setup.id)
            .or_else(|| state.sinks.iter().position(|r| r.sink == legacy));
        let record = match found {
            Some(index) => {
                let mut record = state.sinks.swap_remove(index);
                changed |= record.sink != setup.id;
                record.sink = setup.id.clone();
                record
            }
            None => {
                let cursor = match setup.from {
                    SinkStart::Start => Position::START,
                    SinkStart::End => match end_of_log {
                        Some(end) => end,
                        None => *end_of_log.insert(crate::backend::scan(
                            &**log,
                            Position::START,
                            |_| Ok(()),
                        )?),
                    },
                };
                tracing::info!(sink = setup.id.as_str(), from = ?setup.from, offset = cursor.offset, "new alert sink");
                changed = true;
                SinkRecord {
                    sink: setup.id.clone(),
                    cursor,
                    ..SinkRecord::default()
                }
            }
        };
        records.push(record);
    }
    for record in &state.sinks {
        tracing::info!(
            sink = record.sink.as_str(),
            "forgetting the delivery position of a sink no longer configured"
        );
        changed = true;
    }
    let cursors = records
        .iter()
        .map(|r| (r.sink.clone(), (r.cursor, r.after_id.clone())))
        .collect();
    // A sink whose record could not be saved would deliver without ever
    // saving its cursor: it is taken up at a later tick instead.
    if changed {
        save_state(dir, &AlertsState { sinks: records }).map_err(|source| {
            crate::backend::file::StoreError::Io {
                action: "save the delivery cursors in",
                path: state_path(dir),
                source,
            }
        })?;
    }
    Ok(cursors)
}

/// Drops the record of a sink no longer configured.
fn forget(dir: &Path, id: &str) {
    let _guard = state_lock();
    let mut state = load_state(dir);
    let before = state.sinks.len();
    state.sinks.retain(|record| record.sink != id);
    if state.sinks.len() != before {
        if let Err(error) = save_state(dir, &state) {
            tracing::error!(%error, "alerts: cannot save the delivery cursors");
        }
    }
}

struct Sink {
    key: String,
    /// Alerts read but not yet delivered, with the cursor after the last one
    /// (and the id of the event before that cursor).
    pending: Vec<Alert>,
    pending_end: Position,
    pending_end_id: Option<String>,
    read_to: Position,
    read_to_id: Option<String>,
    /// What `read_to` has read, to notice a replaced log.
    mark: ReadMark,
    /// The error events read in this process, to skip when a replaced log
    /// is read again from its start.
    read_errors: RecentlyRead,
    not_before: Instant,
    /// Failed attempts in a row, and the pause they call for.
    retry: Backoff,
    /// Of those, the sink's own failures at the current batch.
    contained_failures: u32,
    /// Held back as duplicates: key -> (window start, count held back, the alert).
    held: HashMap<(String, String, String), (Instant, u32, Alert)>,
}

fn run_sink(
    dir: PathBuf,
    host: Arc<PluginHost>,
    leading: LeaderLease,
    shared: Arc<Shared>,
    log: Arc<dyn Backend>,
    mut sink: Sink,
) {
    let source = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        if !leading.holds() {
            continue;
        }
        let (spec, policy) = lock(&shared.setup).clone();
        let urgent = std::mem::take(&mut *lock(&shared.urgent));
        for event in urgent {
            sink.pending.insert(
                0,
                Alert {
                    event,
                    count: 1,
                    source: source.clone(),
                },
            );
        }
        if let Err(error) = read_new(&log, &mut sink, &source, &policy) {
            tracing::error!(sink = sink.key.as_str(), %error, "alerts: cannot read the log");
            continue;
        }
        if shared.stop.load(Ordering::SeqCst) || !leading.holds() {
            return;
        }
        deliver(&dir, &host, &spec, &mut sink, &policy);
    }
}

fn identity(event: &Event) -> (String, String, String) {
    (
        event.actor.clone(),
        event.kind.clone(),
        event.content.clone(),
    )
}

/// Reads error events after the sink's read position into its pending list,
/// merging duplicates.
fn read_new(
    log: &Arc<dyn Backend>,
    sink: &mut Sink,
    source: &str,
    policy: &DeliveryPolicy,
) -> Result<(), crate::backend::file::StoreError> {
    let now = Instant::now();
    // Windows that closed: report what they held back.
    let closed: Vec<_> = sink
        .held
        .iter()
        .filter(|(_, (start, held, _))| {
            now.duration_since(*start) >= policy.dedupe_window && *held > 0
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in closed {
        if let Some((_, held, mut alert)) = sink.held.remove(&key) {
            alert.count = held;
            sink.pending.push(alert);
        }
    }
    sink.held
        .retain(|_, (start, _, _)| now.duration_since(*start) < policy.dedupe_window);
    if sink.pending.len() >= MAX_BATCH {
        return Ok(());
    }
    // After a replacement, the error events this sink already read are
    // skipped while the new log is read again from its start.
    let mut already_read: Option<HashSet<String>> = None;
    if let Continuity::Replaced(why) = log.continuity(&sink.mark)? {
        let (restart, id) = if sink.read_errors.is_empty() {
            // Nothing read in this process (a restart): place the saved
            // position by the id of the event before it, else the end.
            position_after(log, sink.read_to_id.as_deref())?
        } else {
            already_read = Some(sink.read_errors.iter().cloned().collect());
            (Position::START, None)
        };
        tracing::warn!(
            sink = sink.key.as_str(),
            %why,
            offset = restart.offset,
            "alerts: events.log was replaced; reading it again, skipping the error events already read"
        );
        sink.read_to = restart;
        sink.read_to_id = id.clone();
        sink.pending_end = restart;
        sink.pending_end_id = id;
    }
    let mut fresh = Vec::new();
    let mut last_id = sink.read_to_id.clone();
    let end = crate::backend::scan(&**log, sink.read_to, |record| {
        last_id = record.event.id.clone();
        if record.event.is_error() {
            let key = read_key(&record.event);
            if already_read
                .as_ref()
                .is_some_and(|read| read.contains(&key))
            {
                return Ok(());
            }
            sink.read_errors.push(key);
            fresh.push(record.event);
        }
        Ok(())
    })?;
    sink.read_to = end;
    sink.read_to_id = last_id;
    sink.mark = log.mark(end)?;
    for event in fresh {
        let key = identity(&event);
        // Not sent yet: merge into the pending one.
        if let Some(same) = sink.pending.iter_mut().find(|a| identity(&a.event) == key) {
            same.count += 1;
            continue;
        }
        match sink.held.get_mut(&key) {
            // Sent within the window: hold it back and count it.
            Some((_, held, _)) => *held += 1,
            None => {
                let alert = Alert {
                    event,
                    count: 1,
                    source: source.to_string(),
                };
                sink.held.insert(key, (now, 0, alert.clone()));
                sink.pending.push(alert);
            }
        }
    }
    sink.pending_end = end;
    sink.pending_end_id = sink.read_to_id.clone();
    Ok(())
}

/// What identifies an error event a sink has read: its id, else its text.
fn read_key(event: &Event) -> String {
    match &event.id {
        Some(id) => id.clone(),
        None => format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            event.actor, event.kind, event.timestamp, event.content
        ),
    }
}

/// The most recent identities of error events a sink has read, bounded.
#[derive(Default)]
struct RecentlyRead {
    keys: std::collections::VecDeque<String>,
}

/// Error events remembered per sink for reading a replaced log again.
const REMEMBERED_ERRORS: usize = 100_000;

impl RecentlyRead {
    fn push(&mut self, key: String) {
        if self.keys.len() == REMEMBERED_ERRORS {
            self.keys.pop_front();
        }
        self.keys.push_back(key);
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &String> {
        self.keys.iter()
    }
}

/// Where to go on in a replaced log: just after the event with `id`, or at
/// the end when it is not there (the old log's history cannot be placed in
/// the new one; alerts appended from now on are delivered).
fn position_after(
    log: &Arc<dyn Backend>,
    id: Option<&str>,
) -> Result<(Position, Option<String>), crate::backend::file::StoreError> {
    let mut found = None;
    let mut last = None;
    let end = crate::backend::scan(&**log, Position::START, |record| {
        let next = record.next;
        if id.is_some() && record.event.id.as_deref() == id {
            found = Some(next);
        }
        last = record.event.id;
        Ok(())
    })?;
    Ok(match found {
        Some(cursor) => (cursor, id.map(str::to_string)),
        None => (end, last),
    })
}

/// What became of one delivery attempt.
enum Outcome {
    Delivered,
    /// Try the same batch again later.
    Retry(String),
    /// The batch is given up for this sink.
    GiveUp(String),
}

fn deliver(
    dir: &Path,
    host: &PluginHost,
    spec: &PluginSpec,
    sink: &mut Sink,
    policy: &DeliveryPolicy,
) {
    if sink.pending.is_empty() || Instant::now() < sink.not_before {
        if sink.pending.is_empty() && sink.retry.failures() == 0 {
            // Nothing to send, but the cursor may still move past non-error events.
            record(dir, sink, None, 0, Vec::new());
        }
        return;
    }
    let batch: Vec<Alert> = sink.pending.iter().take(MAX_BATCH).cloned().collect();
    let sent = batch.len();
    let outcome = match host.deliver(spec, &batch) {
        Ok(Ok(())) => Outcome::Delivered,
        Ok(Err(DeliveryError::Permanent(reason))) => {
            Outcome::GiveUp(format!("refused for good by the sink: {reason}"))
        }
        Ok(Err(DeliveryError::Transient(reason))) => Outcome::Retry(reason),
        Err(failure) => {
            sink.contained_failures += 1;
            if sink.contained_failures >= CONTAINED_ATTEMPTS {
                Outcome::GiveUp(format!(
                    "gave up on {sent} alert(s) after {} attempts: {failure}",
                    sink.contained_failures
                ))
            } else {
                Outcome::Retry(format!(
                    "attempt {} of {CONTAINED_ATTEMPTS}: {failure}",
                    sink.contained_failures
                ))
            }
        }
    };
    match outcome {
        Outcome::Retry(reason) => {
            let reason = bounded(&reason);
            if sink.retry.failures() == 0 {
                // A new run of failures follows the settings of the moment.
                sink.retry = policy.retry.clone();
            }
            let pause = sink.retry.fail();
            sink.not_before = Instant::now() + pause;
            tracing::warn!(sink = sink.key.as_str(), %reason, retry_in = ?pause, "alert delivery failed");
            record(dir, sink, Some(reason), 0, Vec::new());
        }
        Outcome::Delivered | Outcome::GiveUp(_) => {
            let batch: Vec<Alert> = sink.pending.drain(..sent).collect();
            sink.retry.reset();
            sink.contained_failures = 0;
            sink.not_before = Instant::now() + policy.min_interval;
            match outcome {
                Outcome::GiveUp(reason) => {
                    let reason = bounded(&reason);
                    tracing::error!(sink = sink.key.as_str(), %reason, "alerts not delivered through this sink");
                    let given_up = batch
                        .iter()
                        .map(|alert| GivenUp {
                            error: error_key(&alert.event.actor, &alert.event.content),
                            reason: reason.clone(),
                        })
                        .collect();
                    record(dir, sink, Some(reason), 0, given_up);
                }
                _ => record(dir, sink, None, sent as u64, Vec::new()),
            }
        }
    }
}

/// A failure message fit for status: one line, control characters shown as
/// escapes, cut at [`MAX_ERROR_CHARS`].
fn bounded(reason: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in reason.chars() {
        let shown: Vec<char> = if c.is_control() {
            c.escape_default().collect()
        } else {
            vec![c]
        };
        if count + shown.len() > MAX_ERROR_CHARS {
            out.push('…');
            break;
        }
        count += shown.len();
        out.extend(shown);
    }
    out
}

/// Persists the sink's cursor: everything before it is delivered (or given
/// up on) once nothing is pending.
fn record(dir: &Path, sink: &Sink, error: Option<String>, delivered: u64, given_up: Vec<GivenUp>) {
    let failed = given_up.len() as u64;
    let _guard = state_lock();
    let mut state = load_state(dir);
    // No record: the sink was removed from huddle.toml meanwhile.
    let Some(entry) = state.sinks.iter_mut().find(|r| r.sink == sink.key) else {
        return;
    };
    let cursor = if sink.pending.is_empty() {
        sink.pending_end
    } else {
        entry.cursor
    };
    let unchanged = entry.cursor == cursor && delivered == 0 && failed == 0 && error.is_none();
    if unchanged {
        return;
    }
    if sink.pending.is_empty() {
        entry.after_id = sink.pending_end_id.clone();
    }
    entry.cursor = cursor;
    entry.delivered += delivered;
    entry.failed += failed;
    entry.given_up.extend(given_up);
    let over = entry.given_up.len().saturating_sub(GIVEN_UP_KEPT);
    entry.given_up.drain(..over);
    if let Some(error) = error {
        entry.last_error = Some(error);
        entry.last_error_at = Some(crate::model::event::now_rfc3339());
    }
    if let Err(error) = save_state(dir, &state) {
        tracing::error!(%error, "alerts: cannot save the delivery cursor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_are_one_bounded_line() {
        let long = format!("a\u{1b}[2J\nb{}", "x".repeat(5000));
        let shown = bounded(&long);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.starts_with("a\\u{1b}[2J\\nb"), "{shown}");
        assert_eq!(shown.chars().count(), MAX_ERROR_CHARS + 1);
    }
}
