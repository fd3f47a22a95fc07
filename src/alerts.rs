//! Alerts: every `error` event reaches people through the alert sinks in
//! huddle.toml, delivered by the leader.
//!
//! - **At least once.** Each sink has a cursor in `.huddle/alerts.json`: the
//!   log position up to which its alerts are delivered (or refused for good).
//!   It moves only after a delivery, so a new leader after failover neither
//!   drops nor repeats what was delivered; at most the batch in flight when
//!   the old leader died is sent again.
//! - **Never blocking appends.** Delivery runs on its own thread and reads
//!   the log without locking it.
//! - **Retries.** A transient failure (5xx, timeout, refused connection) is
//!   retried after 1 s, 2 s, 4 s ... (the daemon's retry settings); a
//!   permanent one (other 4xx, an allowlist refusal) is logged and skipped.
//! - **Duplicates merged.** Identical alerts (same actor, type and content)
//!   within `alerts.dedupe_window_secs` are sent once; the ones held back are
//!   counted and reported with the next one, or when the window closes.
//! - **Rate limit.** At most one delivery per sink per `alerts.min_interval_ms`.
//! - **Contained.** A sink that traps, times out or is misconfigured is
//!   reported in huddle's own log and in `huddle status`, never as a new
//!   `error` event (that would loop).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::log::{Cursor, FileLog, STATE_DIR};
use crate::plugin::{Alert, DeliveryError, PluginHost, PluginSpec};
use crate::workspace::Workspace;

pub const ALERTS_STATE_FILE: &str = "alerts.json";
/// Alerts per delivery call.
const MAX_BATCH: usize = 100;

/// What `.huddle/alerts.json` holds: one entry per sink.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AlertsState {
    pub sinks: Vec<SinkRecord>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SinkRecord {
    /// `<position in huddle.toml>:<plugin>`; a changed list starts afresh.
    pub sink: String,
    pub cursor: Cursor,
    pub delivered: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR).join(ALERTS_STATE_FILE)
}

pub fn load_state(dir: &Path) -> AlertsState {
    std::fs::read(state_path(dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_state(dir: &Path, state: &AlertsState) -> std::io::Result<()> {
    crate::files::write_atomic(
        &state_path(dir),
        &serde_json::to_vec_pretty(state).unwrap_or_default(),
    )
}

/// Delivery settings (from huddle.toml).
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub dedupe_window: Duration,
    pub min_interval: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

struct Sink {
    key: String,
    spec: PluginSpec,
    /// Alerts read but not yet delivered, with the cursor after the last one.
    pending: Vec<Alert>,
    pending_end: Cursor,
    read_to: Cursor,
    not_before: Instant,
    failures: u32,
    /// Held back as duplicates: key -> (window start, count held back, the alert).
    held: HashMap<(String, String, String), (Instant, u32, Alert)>,
}

/// Delivers alerts while `leading` is set; stops when `stop` is set. Events
/// in `direct` go to every sink without passing through the log (used when
/// the log cannot be written).
pub fn run_delivery(
    dir: PathBuf,
    host: Arc<PluginHost>,
    leading: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    direct: Arc<std::sync::Mutex<Vec<Event>>>,
) {
    let mut sinks: Option<Vec<Sink>> = None;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if !leading.load(Ordering::SeqCst) {
            // A follower keeps nothing in memory: the next leader reads the cursors.
            sinks = None;
            continue;
        }
        let workspace = match Workspace::open(&dir) {
            Ok(workspace) => workspace,
            Err(error) => {
                tracing::error!(%error, "alerts: cannot read huddle.toml");
                continue;
            }
        };
        let policy = workspace.config.alerts.policy(&workspace.config.daemon);
        let specs = match workspace.sink_specs() {
            Ok(specs) => specs,
            Err(error) => {
                tracing::error!(%error, "alerts: bad sink configuration");
                continue;
            }
        };
        let current = sinks.get_or_insert_with(|| start_sinks(&dir, &specs));
        if current.len() != specs.len()
            || current
                .iter()
                .zip(&specs)
                .any(|(s, spec)| s.spec.source != spec.source)
        {
            *current = start_sinks(&dir, &specs);
        }
        let log = workspace.log();
        let source = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        let urgent: Vec<Event> = direct
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        for (sink, spec) in current.iter_mut().zip(specs) {
            sink.spec = spec;
            for event in &urgent {
                sink.pending.insert(
                    0,
                    Alert {
                        event: event.clone(),
                        count: 1,
                        source: source.clone(),
                    },
                );
            }
            if let Err(error) = read_new(&log, sink, &source, &policy) {
                tracing::error!(%error, "alerts: cannot read the log");
                continue;
            }
            if !leading.load(Ordering::SeqCst) {
                break;
            }
            deliver(&dir, &host, sink, &policy);
        }
    }
}

fn start_sinks(dir: &Path, specs: &[PluginSpec]) -> Vec<Sink> {
    let state = load_state(dir);
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let key = format!("{i}:{}", spec.name());
            let cursor = state
                .sinks
                .iter()
                .find(|record| record.sink == key)
                .map_or(Cursor::START, |record| record.cursor);
            Sink {
                key,
                spec: spec.clone(),
                pending: Vec::new(),
                pending_end: cursor,
                read_to: cursor,
                not_before: Instant::now(),
                failures: 0,
                held: HashMap::new(),
            }
        })
        .collect()
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
    log: &FileLog,
    sink: &mut Sink,
    source: &str,
    policy: &DeliveryPolicy,
) -> Result<(), crate::log::StoreError> {
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
    let mut fresh = Vec::new();
    let end = log.scan(sink.read_to, |record| {
        if record.event.is_error() {
            fresh.push(record.event);
        }
        Ok(())
    })?;
    sink.read_to = end;
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
    Ok(())
}

fn deliver(dir: &Path, host: &PluginHost, sink: &mut Sink, policy: &DeliveryPolicy) {
    if sink.pending.is_empty() || Instant::now() < sink.not_before {
        if sink.pending.is_empty() && sink.failures == 0 {
            // Nothing to send, but the cursor may still move past non-error events.
            record(dir, sink, None, 0);
        }
        return;
    }
    let batch: Vec<Alert> = sink.pending.iter().take(MAX_BATCH).cloned().collect();
    let outcome = host.deliver(&sink.spec, &batch);
    let sent = batch.len();
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(DeliveryError::Permanent(reason))) => {
            tracing::error!(sink = sink.key.as_str(), %reason, "alert delivery refused for good; skipping these alerts");
            Some((reason, false))
        }
        Ok(Err(DeliveryError::Transient(reason))) => Some((reason, true)),
        // Trap, deadline, bad configuration: contained, retried like a transient failure.
        Err(failure) => Some((failure.to_string(), true)),
    };
    match error {
        Some((reason, true)) => {
            sink.failures += 1;
            let pause =
                crate::config::backoff(policy.retry_initial, policy.retry_max, sink.failures);
            sink.not_before = Instant::now() + pause;
            tracing::warn!(sink = sink.key.as_str(), %reason, retry_in = ?pause, "alert delivery failed");
            record(dir, sink, Some(reason), 0);
        }
        permanent => {
            sink.pending.drain(..sent);
            sink.failures = 0;
            sink.not_before = Instant::now() + policy.min_interval;
            let delivered = if permanent.is_none() { sent as u64 } else { 0 };
            record(dir, sink, permanent.map(|(reason, _)| reason), delivered);
        }
    }
}

/// Persists the sink's cursor: everything before it is delivered (or refused
/// for good) once nothing is pending.
fn record(dir: &Path, sink: &Sink, error: Option<String>, delivered: u64) {
    let mut state = load_state(dir);
    let index = match state.sinks.iter().position(|r| r.sink == sink.key) {
        Some(index) => index,
        None => {
            state.sinks.push(SinkRecord {
                sink: sink.key.clone(),
                ..SinkRecord::default()
            });
            state.sinks.len() - 1
        }
    };
    let entry = &mut state.sinks[index];
    let cursor = if sink.pending.is_empty() {
        sink.pending_end
    } else {
        entry.cursor
    };
    let unchanged = entry.cursor == cursor && delivered == 0 && error.is_none();
    if unchanged {
        return;
    }
    entry.cursor = cursor;
    entry.delivered += delivered;
    if let Some(error) = error {
        entry.last_error = Some(error);
        entry.last_error_at = Some(crate::event::now_rfc3339());
    }
    if let Err(error) = save_state(dir, &state) {
        tracing::error!(%error, "alerts: cannot save the delivery cursor");
    }
}
