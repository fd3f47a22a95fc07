//! `huddle run`: the coordinator. Every daemon watches the log and follows
//! the election; the leader alone appends heartbeats and keeps the snapshot
//! fresh. See [`election`] for the protocol.

pub use crate::backend::file::watcher;

mod heartbeat;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::backend::file::StoreError;
use crate::backend::{Backend, Continuity, EventStore, Position, ReadMark};
use crate::model::backoff::Backoff;
use crate::model::clock::{Clock, SystemClock};
use crate::model::config::{BackendKind, DaemonConfig};
use crate::model::event::{types, Event, InteractionRef, NewEvent};
use crate::plugin::{PluginHost, Slot};
pub use crate::services::election;
use crate::services::snapshot::Snapshotter;
use crate::services::workspace::Workspace;
use election::{campaign, follow_log, Leadership, ACTION_FIELD, RESIGN};
use heartbeat::{Heartbeat, Report};

/// How a daemon takes part.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Its name in the log.
    pub actor: String,
    /// Whether it may become leader.
    pub elect: bool,
}

struct Daemon {
    clock: Arc<dyn Clock>,
    me: String,
    elect: bool,
    config: DaemonConfig,
    sync_interval: u64,
    log: Arc<dyn Backend>,
    host: Arc<PluginHost>,
    /// Tells the alert thread whether, and until when, we lead.
    leader_lease: crate::services::alerts::LeaderLease,
    /// Alerts for the sinks that cannot go through the log (it may be unwritable).
    direct_alerts: Arc<std::sync::Mutex<Vec<Event>>>,
    /// Paused after a write error, until `huddle resume`.
    paused: bool,
    /// When the leader syncs git next (None: sync disabled).
    next_sync: Option<Instant>,
    /// A sync thread is running.
    syncing: Arc<AtomicBool>,
    dir: std::path::PathBuf,
    /// Snapshots run on their own thread, so a slow or looping plugin never
    /// holds up heartbeats.
    snapshots: SnapshotWorker,
    /// Every daemon renders this machine's snapshot, leader or not (a
    /// shared stream); else only the leader does.
    renders_locally: bool,
    cursor: Position,
    /// What `cursor` has read, to notice a replaced log.
    mark: ReadMark,
    leadership: Leadership,
    /// When this daemon last saw the leader's signs of life change, on its
    /// own monotonic clock (see `maybe_campaign`).
    leader_seen: (u64, Instant),
    /// The term we lead, while we do.
    my_term: Option<u64>,
    /// Beats for `my_term` on a thread of its own, with its own timer.
    heartbeat: Heartbeat,
    heartbeats: tokio::sync::mpsc::UnboundedReceiver<Report>,
    jitter: Duration,
    /// The log changed since the last snapshot.
    dirty: bool,
    /// Failed snapshots in a row and the pause they call for.
    snapshot_retry: Backoff,
    /// No snapshot before this, after a failure.
    snapshot_not_before: Option<Instant>,
    /// An `error` event said snapshots are offline (once per run of failures).
    snapshots_declared_offline: bool,
}

impl Daemon {
    fn new(dir: &Path, options: DaemonOptions, clock: Arc<dyn Clock>) -> Result<Daemon> {
        let workspace = Workspace::open(dir)?;
        let host = Arc::new(PluginHost::new().context("cannot start the plugin host")?);
        // Compile the plugins now, before this daemon can lead: compiling on
        // a cold cache takes long enough to miss heartbeats.
        let plugins = workspace.plugin_specs().unwrap_or_else(|_| {
            vec![
                (
                    Slot::HeadingMapper,
                    workspace.slot_spec(Slot::HeadingMapper),
                ),
                (Slot::Renderer, workspace.slot_spec(Slot::Renderer)),
            ]
        });
        for (slot, spec) in plugins {
            match host.preload(&spec, slot) {
                Ok(ready) => tracing::debug!(
                    plugin = spec.name().as_str(),
                    "plugin {} in {} ms",
                    ready.origin.describe(),
                    ready.elapsed.as_millis()
                ),
                Err(error) => tracing::warn!(
                    %error,
                    "plugin not loaded ahead (the call that needs it will report it)"
                ),
            }
        }
        // From here on this daemon may lead: a plugin swapped in huddle.toml
        // or rebuilt in place compiles beside the one serving, not in its way.
        host.reload_in_background();
        let leader_lease = crate::services::alerts::LeaderLease::default();
        // On a shared stream every machine renders its own files; on a
        // directory's events.log, the leader renders them for everyone.
        let renders_locally = workspace.config.backend.kind == BackendKind::Jetstream;
        let snapshots =
            SnapshotWorker::start(dir, host.clone(), leader_lease.clone(), renders_locally)?;
        let log = workspace.backend();
        let (reports, heartbeats) = tokio::sync::mpsc::unbounded_channel();
        let heartbeat = {
            let dir = dir.to_path_buf();
            Heartbeat::start(
                log.clone(),
                clock.clone(),
                heartbeat::Settings {
                    me: options.actor.clone(),
                    every: workspace.config.daemon.heartbeat_every(),
                    lease: leader_lease.clone(),
                    lease_for: workspace.config.daemon.leader_timeout(),
                    paused: Box::new(move || crate::backend::pause::paused(&dir).is_some()),
                },
                reports,
            )?
        };
        let now = clock.now();
        Ok(Daemon {
            jitter: jitter(&options.actor, workspace.config.daemon.jitter_ms),
            me: options.actor,
            elect: options.elect,
            config: workspace.config.daemon.clone(),
            sync_interval: workspace.config.sync.interval_secs.max(1),
            log,
            host,
            leader_lease,
            direct_alerts: Arc::default(),
            paused: crate::backend::pause::paused(dir).is_some(),
            next_sync: workspace.config.sync.enabled.then_some(now),
            syncing: Arc::default(),
            dir: dir.to_path_buf(),
            snapshots,
            renders_locally,
            cursor: Position::START,
            mark: ReadMark::default(),
            leadership: Leadership::default(),
            leader_seen: (0, now),
            my_term: None,
            heartbeat,
            heartbeats,
            dirty: true,
            snapshot_retry: workspace.config.daemon.retry_backoff(),
            snapshot_not_before: None,
            snapshots_declared_offline: false,
            clock,
        })
    }

    fn read_log(&mut self) -> Result<()> {
        if let Continuity::Replaced(why) = self.log.continuity(&self.mark)? {
            self.rebuild_after_replacement(&why);
        }
        let before = self.cursor;
        self.cursor = follow_log(&*self.log, self.cursor, &mut self.leadership)?;
        if self.leadership.signs_of_life != self.leader_seen.0 {
            self.leader_seen = (self.leadership.signs_of_life, self.clock.now());
        }
        if self.cursor != before {
            self.dirty = true;
            self.mark = self.log.mark(self.cursor)?;
        }
        // Read from this machine's copy: no server answers, so nothing is
        // written (no flush, claim or heartbeat can reach the log).
        if let Some(why) = self.log.offline() {
            anyhow::bail!(why);
        }
        Ok(())
    }

    /// events.log is not the file we read: forget every position taken in
    /// it and read it again as it is now. The snapshot worker notices on its
    /// own and renders from scratch; alert cursors are moved by the alert
    /// thread. The leader says so in the log, and status shows it.
    fn rebuild_after_replacement(&mut self, why: &str) {
        tracing::error!(
            why,
            "events.log was replaced: rebuilding from the log as it is now"
        );
        let was_leading = self.leading();
        self.cursor = Position::START;
        self.mark = ReadMark::default();
        self.leadership = Leadership::default();
        self.leader_seen = (0, self.clock.now());
        self.dirty = true;
        crate::services::status::record_log_replaced(&self.dir, &self.me, why);
        if was_leading {
            let report = NewEvent::new(
                InteractionRef::Number(0),
                &self.me,
                types::ERROR,
                format!(
                    "events.log was replaced or truncated under the daemon ({why}); communication.md, archive.md and the alert positions are rebuilt from the log as it is now"
                ),
            )
            .cut_to_fit();
            if let Err(error) = self.log.append(report) {
                tracing::error!(%error, "cannot log that events.log was replaced");
            }
        }
    }

    /// Lets the alert thread act as leader for one leader timeout more,
    /// or stops it at once if we do not lead.
    fn renew_lease(&self) {
        if self.leading() {
            self.leader_lease
                .grant_until(Instant::now() + Duration::from_millis(self.config.leader_timeout_ms));
        } else {
            self.leader_lease.revoke();
        }
    }

    fn leading(&self) -> bool {
        self.my_term
            .is_some_and(|term| term == self.leadership.term)
            && self.leadership.is_leader(&self.me)
    }

    /// One round: read, then act according to our role.
    fn step(&mut self) -> Result<()> {
        self.read_log()?;
        let paused = crate::backend::pause::paused(&self.dir);
        match (self.paused, &paused) {
            (false, Some(pause)) => {
                tracing::error!(
                    reason = pause.reason.as_str(),
                    "paused: not writing until `huddle resume`"
                );
                self.paused = true;
            }
            (true, None) => {
                tracing::info!("resumed");
                self.paused = false;
                self.dirty = true;
                self.snapshot_succeeded();
            }
            _ => {}
        }
        if self.paused {
            // Keep following (status, alerts), write nothing. No daemon
            // writes while paused, so no claim can replace us meanwhile.
            self.supervise_heartbeat();
            self.renew_lease();
            return Ok(());
        }
        if self.renders_locally {
            self.flush_offline_queue();
            if self.dirty {
                self.request_snapshot();
            }
        }
        if self.my_term.is_some() && !self.leading() {
            tracing::warn!(
                term = self.leadership.term,
                leader = self.leadership.leader.as_deref().unwrap_or("none"),
                "a newer term exists: stepping down"
            );
            self.my_term = None;
        }
        if self.leading() {
            self.lead()?;
        } else if self.elect {
            self.maybe_campaign()?;
        }
        self.supervise_heartbeat();
        if !self.leading() {
            self.leader_lease.revoke();
        }
        Ok(())
    }

    /// Publishes what this machine queued while no server answered, once
    /// the log reads again: without it the queue would wait for this
    /// machine's next append.
    fn flush_offline_queue(&self) {
        let queued = std::fs::metadata(self.dir.join(crate::backend::file::OFFLINE_FILE))
            .is_ok_and(|meta| meta.len() > 0);
        if !queued {
            return;
        }
        match Workspace::open(&self.dir).map(|workspace| workspace.flush_queues()) {
            Ok(Ok(moved)) if moved > 0 => tracing::info!(moved, "offline queue published"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "offline queue not published yet"),
            Err(error) => tracing::warn!(%error, "offline queue: cannot read huddle.toml"),
        }
    }

    /// The heartbeat thread beats exactly while we lead and are not paused.
    fn supervise_heartbeat(&mut self) {
        match self.my_term {
            Some(term) if self.leading() && !self.paused => self.heartbeat.lead(term, self.cursor),
            _ => {
                if self.heartbeat.beating().is_some() {
                    self.heartbeat.stop();
                }
            }
        }
    }

    /// What became of a beat.
    fn heartbeat_report(&mut self, report: Report) {
        match report {
            Report::Beat { term } => tracing::trace!(term, "heartbeat"),
            Report::Superseded { term } => {
                self.heartbeat.forget(term);
                if self.my_term == Some(term) {
                    tracing::warn!(term, "replaced while we were away: stepping down");
                    self.my_term = None;
                    self.leader_lease.revoke();
                }
            }
            Report::Failed { term, error } => {
                if error.is_write_refused() {
                    self.pause_for(&error.to_string());
                } else {
                    tracing::error!(term, %error, "heartbeat not written; retrying");
                }
            }
        }
    }

    fn lead(&mut self) -> Result<()> {
        if self.my_term.is_none() {
            return Ok(());
        }
        if self.dirty {
            self.request_snapshot();
        }
        self.maybe_sync();
        Ok(())
    }

    /// The leader syncs git every `sync.interval_secs`, on a thread of its
    /// own (the network must not hold up heartbeats); a failure counts
    /// towards offline mode and the next interval tries again.
    fn maybe_sync(&mut self) {
        let Some(due) = self.next_sync else { return };
        let now = self.clock.now();
        if now < due || self.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        self.next_sync = Some(now + Duration::from_secs(self.sync_interval));
        let (dir, busy) = (self.dir.clone(), self.syncing.clone());
        std::thread::spawn(move || {
            match Workspace::open(&dir) {
                Ok(workspace) => match crate::services::sync::sync_once(&workspace) {
                    Ok(_) => crate::services::sync::record_success(&workspace),
                    Err(error) => {
                        tracing::warn!(%error, "git sync failed");
                        crate::services::sync::record_failure(&workspace, &error.to_string());
                    }
                },
                Err(error) => tracing::error!(%error, "git sync: cannot read huddle.toml"),
            }
            busy.store(false, Ordering::SeqCst);
        });
    }

    /// Hands a snapshot to the worker unless one is running or a failure
    /// asked us to wait.
    fn request_snapshot(&mut self) {
        if self.snapshots.busy
            || self
                .snapshot_not_before
                .is_some_and(|t| self.clock.now() < t)
        {
            return;
        }
        if self.snapshots.request() {
            self.dirty = false;
        }
    }

    /// What the snapshot worker reported: success resets the backoff; a
    /// write error pauses; any other failure backs off, and after
    /// `retry_attempts` failures in a row an `error` event says snapshots
    /// are offline.
    fn snapshot_done(&mut self, result: SnapshotResult) {
        self.snapshots.busy = false;
        match result {
            Ok(()) => {
                if self.snapshot_retry.failures() > 0 {
                    tracing::info!("snapshot works again");
                }
                self.snapshot_succeeded();
            }
            Err((error, true)) => {
                self.dirty = true;
                self.pause_for(&error);
            }
            Err((error, false)) => {
                self.dirty = true;
                let pause = self.snapshot_retry.fail();
                self.snapshot_not_before = Some(self.clock.now() + pause);
                tracing::error!(%error, retry_in = ?pause, "snapshot failed");
                let failures = self.snapshot_retry.failures();
                if failures >= self.config.retry_attempts && !self.snapshots_declared_offline {
                    self.snapshots_declared_offline = true;
                    let report = NewEvent::new(
                        InteractionRef::Number(0),
                        &self.me,
                        types::ERROR,
                        format!(
                            "Snapshots are offline after {failures} failed attempts; retrying every {pause:?}: {error}"
                        ),
                    )
                    .cut_to_fit();
                    if let Err(e) = self.log.append(report) {
                        tracing::error!(error = %e, "cannot log that snapshots are offline");
                    }
                }
            }
        }
    }

    fn snapshot_succeeded(&mut self) {
        self.snapshot_retry.reset();
        self.snapshot_not_before = None;
        self.snapshots_declared_offline = false;
    }

    fn maybe_campaign(&mut self) -> Result<()> {
        // Silence is the time since this daemon saw the leader's last sign
        // of life arrive, on its own monotonic clock, as leases do: the
        // heartbeat's timestamp comes from the leader's wall clock, which
        // may run ahead (a dead leader would look alive for as long) or
        // behind (a live one would look dead), or jump (NTP, a resumed
        // laptop). A leader already in the log when we start gets a full
        // timeout from our start.
        let timeout = Duration::from_millis(self.config.leader_timeout_ms) + self.jitter;
        let due = match self.leadership.leader {
            None => true,
            Some(_) => {
                self.clock
                    .now()
                    .saturating_duration_since(self.leader_seen.1)
                    > timeout
            }
        };
        if !due {
            return Ok(());
        }
        let lost = self
            .leadership
            .leader
            .clone()
            .map(|leader| (leader, self.leadership.term));
        if let Some(term) = campaign(&*self.log, self.cursor, &self.leadership, &self.me)? {
            self.read_log()?;
            if self.leadership.is_leader(&self.me) && self.leadership.term == term {
                tracing::info!(term, "elected leader");
                if let Some((old, old_term)) = lost {
                    // People should know the coordinator died (it did not resign).
                    let report = NewEvent::new(
                        InteractionRef::Number(0),
                        &self.me,
                        types::ERROR,
                        format!(
                            "Leader {old} (term {old_term}) stopped sending heartbeats; {} elected for term {term}",
                            self.me
                        ),
                    )
                    .cut_to_fit();
                    self.log.append(report)?;
                }
                self.my_term = Some(term);
                // The first beat at once, then every interval on its own thread.
                self.heartbeat.lead(term, self.cursor);
                self.dirty = true;
                self.lead()?;
            }
        }
        // Next time another daemon may be quicker: a fresh jitter per round.
        self.jitter = jitter(
            &format!("{}{}", self.me, self.leadership.term),
            self.config.jitter_ms,
        );
        Ok(())
    }

    /// Stops writing after a write error and tells people through the
    /// sinks directly: the log may not take the alert.
    fn pause_for(&mut self, reason: &str) {
        if self.paused {
            return;
        }
        self.paused = true;
        tracing::error!(reason, "write error: pausing until `huddle resume`");
        if let Err(error) = crate::backend::pause::pause(&self.dir, &self.me, reason) {
            tracing::error!(%error, "cannot record the pause");
        }
        let alert = NewEvent::new(
            InteractionRef::Number(0),
            &self.me,
            types::ERROR,
            format!("huddle paused: {reason}. Fix the cause, then run `huddle resume`."),
        )
        .into_event(0);
        if let Ok(mut direct) = self.direct_alerts.lock() {
            direct.push(alert);
        }
    }

    fn resign(&mut self) {
        // No beat may follow the resignation.
        self.heartbeat.stop();
        let Some(term) = self.my_term.take() else {
            return;
        };
        let resign = NewEvent::new(
            InteractionRef::Number(0),
            &self.me,
            types::LEADER_ELECTION,
            format!("{} resigns leadership of term {term}", self.me),
        )
        .cut_to_fit()
        .with_term(term)
        .with_field(ACTION_FIELD, RESIGN);
        match self.log.append(resign) {
            Ok(_) => tracing::info!(term, "resigned"),
            Err(error) => tracing::error!(%error, "could not resign"),
        }
    }
}

/// A snapshot's outcome as the daemon needs it: on failure, the message and
/// whether the disk refused a write (which pauses).
type SnapshotResult = Result<(), (String, bool)>;

/// The thread that owns the [`Snapshotter`]: one snapshot at a time, on
/// request, each result sent back to the daemon's loop.
struct SnapshotWorker {
    requests: Option<std::sync::mpsc::Sender<()>>,
    results: tokio::sync::mpsc::UnboundedReceiver<SnapshotResult>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A request is being worked on.
    busy: bool,
}

impl SnapshotWorker {
    fn start(
        dir: &Path,
        host: Arc<PluginHost>,
        lease: crate::services::alerts::LeaderLease,
        renders_locally: bool,
    ) -> Result<SnapshotWorker> {
        let (request_tx, request_rx) = std::sync::mpsc::channel::<()>();
        let (result_tx, result_rx) = tokio::sync::mpsc::unbounded_channel();
        // A leader stopped mid-snapshot and replaced meanwhile must not
        // write when it wakes: the files are written only under the lease.
        // Files of this machine alone are this daemon's to write, leader or not.
        let fence: crate::services::snapshot::Fence = if renders_locally {
            Arc::new(|| true)
        } else {
            Arc::new(move || lease.holds())
        };
        let mut snapshotter = Snapshotter::new(dir).with_fence(fence);
        snapshotter.progress = None;
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("huddle-snapshot".into())
            .spawn(move || {
                match snapshotter.remove_abandoned_temps_if_idle() {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        "a snapshot writer is at work: its temp files are left to it"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "cannot remove temp files left by a killed snapshot")
                    }
                }
                for () in request_rx {
                    tracing::debug!("snapshot started");
                    let started = Instant::now();
                    let result = match snapshotter.update(&host, None) {
                        Ok(outcome) => {
                            tracing::debug!(took = ?started.elapsed(), new_events = outcome.new_events, archive = ?outcome.archive, isolated = outcome.isolated, "snapshot");
                            keep_what_was_seen(&dir, &mut snapshotter);
                            Ok(())
                        }
                        Err(crate::services::snapshot::SnapshotError::Fenced) => {
                            tracing::info!("snapshot not written: no longer the leader");
                            Ok(())
                        }
                        Err(error) => Err((error.to_string(), error.is_write_refused())),
                    };
                    release_freed_memory();
                    if result_tx.send(result).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the snapshot thread")?;
        Ok(SnapshotWorker {
            requests: Some(request_tx),
            results: result_rx,
            thread: Some(thread),
            busy: false,
        })
    }

    /// Asks for a snapshot; false if the worker is gone.
    fn request(&mut self) -> bool {
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|requests| requests.send(()).is_ok());
        self.busy = sent;
        sent
    }

    /// Waits for the snapshot in progress, at most `limit`.
    fn wait(&mut self, limit: Duration) -> Option<SnapshotResult> {
        if !self.busy {
            return None;
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.results.try_recv() {
                Ok(result) => {
                    self.busy = false;
                    return Some(result);
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the thread finish its current snapshot and end.
    fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keeps what this machine has seen as current as the snapshot, off the
/// heartbeat's thread: what reads, `status` and the dashboard serve when
/// the backend stops answering.
fn keep_what_was_seen(dir: &Path, snapshotter: &mut Snapshotter) {
    let kept = Workspace::open(dir)
        .map_err(|error| error.to_string())
        .and_then(|workspace| {
            // The snapshotter's own backend: no connection of its own.
            let backend = snapshotter.backend(&workspace);
            crate::services::status::keep_what_was_seen(&workspace, &*backend)
                .map_err(|e| e.to_string())
        });
    if let Err(error) = kept {
        tracing::debug!(%error, "what was seen is not kept");
    }
}

/// The daemon runs for days and its snapshot thread keeps an index that
/// grows with the log, while every thread allocates and frees in bursts:
/// with glibc's default of an arena per thread (up to 8 per core), the free
/// space left between long-lived allocations in each arena adds up, and the
/// leader's resident memory grew about 150 bytes per event followed where
/// it held about 50. One arena keeps it to what is held; the threads'
/// allocation caches keep contention low.
fn one_allocator_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter; called before the
    // daemon starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the memory a snapshot freed back to the system. The snapshot
/// index's small, long-lived allocations sit among the many short-lived ones
/// of each run (events read, rendered blocks); glibc returns the free pages
/// between them only when asked.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages no allocation uses; it reads
    // and writes nothing of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A pause in [0, max_ms) that differs between daemons and between rounds.
fn jitter(seed: &str, max_ms: u64) -> Duration {
    if max_ms == 0 {
        return Duration::ZERO;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    Instant::now().hash(&mut hasher);
    Duration::from_millis(hasher.finish() % max_ms)
}

/// How long a stopping leader waits for its final snapshot.
const SHUTDOWN_SNAPSHOT_LIMIT: Duration = Duration::from_secs(30);

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(dir: &Path, options: DaemonOptions) -> Result<()> {
    one_allocator_arena();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(dir, options, Arc::new(SystemClock)))
}

async fn run_async(dir: &Path, options: DaemonOptions, clock: Arc<dyn Clock>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut daemon = Daemon::new(dir, options, clock)?;
    if daemon.next_sync.is_some() {
        let workspace = Workspace::open(dir)?;
        match crate::services::sync::check_remote(dir, &workspace.config.sync) {
            Ok(()) => tracing::info!(
                remote = workspace.config.sync.remote.as_str(),
                "git remote answers"
            ),
            // Bad credentials stop start-up: nothing would ever sync.
            Err(error) if error.is_authentication() => return Err(error.into()),
            Err(error) => tracing::warn!(%error, "git remote unreachable: starting offline"),
        }
    }
    // News of appends from the backend: the file log's watcher, or the
    // stream's subscription (appends from every machine).
    let mut changes = daemon
        .log
        .subscribe()
        .context("cannot follow the log's appends")?;
    tracing::info!(
        dir = %dir.display(),
        actor = daemon.me.as_str(),
        role = if daemon.elect { "candidate" } else { "follower (--no-elect)" },
        watching = changes.describe(),
        "huddle run: watching events.log"
    );
    let stop_alerts = Arc::new(AtomicBool::new(false));
    let alerts = {
        let (dir, host, leading, stop, direct) = (
            dir.to_path_buf(),
            daemon.host.clone(),
            daemon.leader_lease.clone(),
            stop_alerts.clone(),
            daemon.direct_alerts.clone(),
        );
        std::thread::Builder::new()
            .name("huddle-alerts".into())
            .spawn(move || crate::services::alerts::run_delivery(dir, host, leading, stop, direct))
            .context("cannot start the alert thread")?
    };
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let tick = Duration::from_millis(daemon.config.poll_ms.max(10));
    loop {
        if let Err(error) = daemon.step() {
            let refused = error.chain().any(|cause| {
                cause
                    .downcast_ref::<StoreError>()
                    .is_some_and(StoreError::is_write_refused)
            });
            if refused {
                daemon.pause_for(&format!("{error:#}"));
            } else {
                tracing::error!(error = %format!("{error:#}"), "daemon step failed; retrying");
            }
        }
        tokio::select! {
            Some(result) = daemon.snapshots.results.recv() => daemon.snapshot_done(result),
            Some(report) = daemon.heartbeats.recv() => {
                daemon.heartbeat_report(report);
                while let Ok(report) = daemon.heartbeats.try_recv() {
                    daemon.heartbeat_report(report);
                }
            }
            _ = changes.recv() => {
                // Coalesce a burst of writes into one round.
                changes.drain();
            }
            _ = tokio::time::sleep(tick) => {}
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = daemon.read_log();
    if daemon.leading() && !daemon.paused {
        // The final snapshot: let the one in progress finish, then bring
        // the files up to date with everything read, then resign.
        let limit = SHUTDOWN_SNAPSHOT_LIMIT;
        if let Some(result) = daemon.snapshots.wait(limit) {
            daemon.snapshot_done(result);
        }
        if daemon.dirty && !daemon.snapshots.busy && daemon.snapshots.request() {
            if let Some(result) = daemon.snapshots.wait(limit) {
                daemon.snapshot_done(result);
            }
        }
        daemon.resign();
    }
    daemon.heartbeat.shut_down();
    daemon.snapshots.stop();
    daemon.leader_lease.revoke();
    stop_alerts.store(true, Ordering::SeqCst);
    let _ = alerts.join();
    drop(changes);
    Ok(())
}
