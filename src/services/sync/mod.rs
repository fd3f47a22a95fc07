//! Git sync: teams on several machines share one log through a git remote.
//!
//! The log travels on a ref of its own, `refs/huddle/<sync.branch>`, as
//! append-only segment files (see `segments`), never on the person's
//! branch: a sync runs no command that reads or writes the work tree, the
//! index or any branch, and it works whatever is checked out, in the middle
//! of a merge or a rebase too. `events.log` stays the file people and agents
//! read; each clone keeps it, and the git directory's `info/exclude` lists
//! it with the derived files.
//!
//! One round costs what is new since the last one:
//!
//! 1. fetch the log's ref into `refs/huddle/remotes/<remote>/<branch>`;
//! 2. read of the remote's log only what this clone has not merged: the
//!    segments that differ from those of the commit it merged last, and of
//!    the one that grew only the bytes after its old length (`sync.json`
//!    keeps that commit). A read that fails or times out fails the sync
//!    *before* anything is recorded: the next sync reads it again;
//! 3. append to `events.log` the events it lacks (by `id`; lines without one
//!    by their text), under the log lock, a segment at a time;
//! 4. put the file's events that the remote's log lacks — those after the
//!    point up to which the file is known to be on the remote — on top of
//!    the remote's last segment, as a new commit whose parent is the remote's;
//! 5. push it; if another clone pushed first, go round again.
//!
//! Only after a push (or a round with nothing to push) does `sync.json`
//! move on. A sync killed in between is redone: the events the file and
//! the remote both hold are recognised by id, so nothing is sent or
//! received twice. When the remote's log does not continue the commit
//! merged last (it was replaced), or none was merged yet, the round reads
//! both logs whole.
//!
//! The first sync registers a merge driver for `events.log` (the
//! repository's config and `info/attributes`): versions before the
//! segmented log committed the file on the branch, and a person's `git
//! pull` of such history merges it by event id.
//!
//! Failures retry with backoff; after `sync.attempts` failures the sync is
//! offline (an `error` event, `huddle status` says so) and local appends go
//! on as usual — they are the queue: the next sync that reaches the remote
//! pushes them, each exactly once. An authentication failure is reported as
//! such, naming the remote: refresh the credentials.

mod git;
mod merge;
mod recover;
mod segments;

use std::io::{BufRead, Read, Seek};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::file::{EventStore, FileLog, StoreError};
use crate::model::config::SyncConfig;
use crate::model::event::{types, InteractionRef, NewEvent};
use crate::services::workspace::Workspace;
use git::Repo;
pub use merge::{lines_to_append, log_lines, merge_driver, merged_log, with_lines_appended};
use segments::{Appender, Keys};

pub use crate::model::names::state::SYNC as SYNC_STATE_FILE;
/// Rounds of fetch-merge-push before giving up on a remote that keeps moving.
const ROUNDS: usize = 5;
/// A push carries at most about this much of the log.
const PUSH_BYTES: usize = 16 << 20;
/// Message of the commits sync makes.
const EVENTS: &str = "huddle: events";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{dir} is not inside a git repository; `git init` it (and add a remote) to sync")]
    NotARepository { dir: String },
    #[error("sync.{field} = {value:?} in huddle.toml is not usable: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "cannot read {path} of the log in commit {commit}: {message}; nothing was merged from it, \
         the next sync reads it again"
    )]
    UnreadableLog {
        commit: String,
        path: String,
        message: String,
    },
    #[error(
        "git remote {remote} ({url}) refused our credentials: {message}\n\
         refresh the credentials for {url} (credential helper, token or SSH key), then start again"
    )]
    Authentication {
        remote: String,
        url: String,
        message: String,
    },
    #[error("git remote {remote} ({url}) is unreachable: {message}")]
    Unreachable {
        remote: String,
        url: String,
        message: String,
    },
    #[error(
        "another huddle sync has been running in {top} for {waited:?} (syncs of one repository \
         take turns); try again when it is done"
    )]
    Busy { top: String, waited: Duration },
    #[error("`git {command}` failed: {message}")]
    Git { command: String, message: String },
    #[error(transparent)]
    Log(#[from] StoreError),
}

impl SyncError {
    pub fn is_authentication(&self) -> bool {
        matches!(self, SyncError::Authentication { .. })
    }

    /// Errors that retrying a moment later cannot fix: a person must act.
    fn needs_a_person(&self) -> bool {
        matches!(
            self,
            SyncError::Authentication { .. }
                | SyncError::NotARepository { .. }
                | SyncError::Config { .. }
        )
    }
}

/// What `huddle status` shows about sync (`.huddle/sync.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub remote: String,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub offline: bool,
    /// Consecutive failures.
    pub failures: u32,
    /// How much of events.log the remote's log holds: what comes after may
    /// not be on the remote yet.
    pub pushed_log_bytes: u64,
    /// The commit of the remote's log whose every event events.log holds
    /// (the next sync reads only what came after it).
    #[serde(default)]
    pub merged: Option<String>,
}

pub fn load_state(dir: &Path) -> Option<SyncState> {
    crate::backend::state::StateDir::of(dir).load(SYNC_STATE_FILE)
}

/// Counts a failed periodic sync; past `sync.attempts` the sync is offline
/// (one `error` event when it goes offline).
pub fn record_failure(workspace: &Workspace, error: &str) {
    let config = &workspace.config.sync;
    let mut state = load_state(&workspace.dir).unwrap_or_default();
    state.remote = config.remote.clone();
    state.failures += 1;
    state.last_error = Some(error.to_string());
    if state.failures >= config.attempts && !state.offline {
        state.offline = true;
        let report = NewEvent::new(
            InteractionRef::Number(0),
            crate::model::event::HOST_ACTOR,
            types::ERROR,
            format!(
                "git sync is offline after {} failed attempts with {}; events stay in the local log and the next sync that succeeds pushes them: {error}",
                state.failures, config.remote
            ),
        )
        .cut_to_fit();
        let _ = workspace.backend().append(report);
    }
    save_state(&workspace.dir, &state);
}

fn save_state(dir: &Path, state: &SyncState) {
    let states = crate::backend::state::StateDir::of(dir);
    if let Err(error) = states.save(SYNC_STATE_FILE, state) {
        let path = states.file(SYNC_STATE_FILE);
        tracing::warn!(path = %path.display(), %error, "cannot record the sync state");
    }
}

/// Records a successful sync: online, nothing pending.
pub fn record_success(workspace: &Workspace) {
    let mut state = load_state(&workspace.dir).unwrap_or_default();
    if state.offline {
        tracing::info!(
            remote = workspace.config.sync.remote.as_str(),
            "git sync is back online"
        );
    }
    state.remote = workspace.config.sync.remote.clone();
    state.last_success = Some(crate::model::event::now_rfc3339());
    state.offline = false;
    state.failures = 0;
    save_state(&workspace.dir, &state);
}

/// Records where the file and the remote's log agree: the commit merged,
/// and how much of the file the remote's log holds.
fn record_merged(dir: &Path, merged: Option<String>, pushed_log_bytes: u64) {
    let mut state = load_state(dir).unwrap_or_default();
    state.merged = merged;
    state.pushed_log_bytes = pushed_log_bytes;
    save_state(dir, &state);
}

/// What one successful sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub committed: bool,
    /// Events from the remote's log appended to the local log.
    pub received: usize,
    /// Events of the local log put on the remote's.
    pub sent: usize,
    pub pushed: bool,
    /// Time the log lock was held, in total.
    pub lock_held: Duration,
}

/// Registers the merge driver for the log and the ignore rules for the
/// derived files, in this clone's git directory (idempotent).
pub fn register(dir: &Path) -> Result<(), SyncError> {
    Repo::open(dir, Duration::from_secs(10))?.register()
}

/// Checks the remote answers and accepts our credentials.
pub fn check_remote(dir: &Path, config: &SyncConfig) -> Result<(), SyncError> {
    let repo = Repo::open(dir, Duration::from_secs(config.timeout_secs))?;
    repo.check_config(config)?;
    repo.git(&["ls-remote", "--heads", &config.remote])
        .map(|_| ())
        .map_err(|failed| repo.remote_error(&config.remote, failed.message))
}

/// One sync, retried with backoff; records the outcome for `huddle status`
/// and logs an `error` event when the sync goes offline.
pub fn sync(workspace: &Workspace) -> Result<SyncReport, SyncError> {
    let config = &workspace.config.sync;
    let mut backoff = config.retry_backoff();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sync_once(workspace) {
            Ok(report) => {
                record_success(workspace);
                return Ok(report);
            }
            Err(error) => {
                record_failure(workspace, &error.to_string());
                if error.needs_a_person() || attempt >= config.attempts {
                    return Err(error);
                }
                std::thread::sleep(backoff.fail());
            }
        }
    }
}

/// How a round ended.
enum Round {
    Done,
    /// The push was turned down: fetch and try again. `Some` holds git's
    /// line when the remote itself refused to update its ref (`[remote
    /// rejected]`: a lock held by another push, a hook) rather than finding
    /// that another clone pushed first.
    Again(Option<String>),
}

/// One sync (see the module docs), without retries.
pub fn sync_once(workspace: &Workspace) -> Result<SyncReport, SyncError> {
    let config = &workspace.config.sync;
    let mut repo = Repo::open(&workspace.dir, Duration::from_secs(config.timeout_secs))?;
    repo.check_config(config)?;
    repo.start_sync(config)?;
    repo.register()?;
    let log = workspace.log();
    let mut report = SyncReport::default();
    let mut refused = None;
    for _ in 0..ROUNDS {
        match round(&repo, &workspace.dir, &log, config, &mut report)? {
            Round::Done => return Ok(report),
            Round::Again(why) => refused = why,
        }
    }
    let log_ref = git::log_ref(&config.branch);
    let message = match refused {
        // A push killed on the remote's side (a remote on this machine,
        // killed with the sync) leaves the ref's lock there for good.
        Some(line) => format!(
            "the remote refused to update its log ({log_ref}) in each of {ROUNDS} rounds: \
             {line}; a lock file left in the remote repository by a killed push \
             ({log_ref}.lock) does this: remove it if no push is under way"
        ),
        None => {
            format!("the remote's log ({log_ref}) kept moving through {ROUNDS} rounds; try again")
        }
    };
    Err(SyncError::Git {
        command: "push".into(),
        message,
    })
}

fn round(
    repo: &Repo,
    dir: &Path,
    log: &FileLog,
    config: &SyncConfig,
    report: &mut SyncReport,
) -> Result<Round, SyncError> {
    let state = load_state(dir).unwrap_or_default();
    let theirs = repo.fetch_log(&config.remote, &config.branch)?;
    let their_segments = match &theirs {
        Some(commit) => repo.segments(commit)?,
        None => Vec::new(),
    };
    // What of their log is new to this clone: after the commit merged last,
    // when their log still continues it and so does the file.
    let unread = match (&state.merged, &theirs) {
        (Some(merged), Some(theirs)) if merged == theirs => Some(Vec::new()),
        (Some(merged), Some(theirs)) if repo.is_ancestor(merged, theirs).unwrap_or(false) => repo
            .segments(merged)
            .ok()
            .and_then(|had| segments::unread(&had, &their_segments)),
        _ => None,
    }
    .filter(|_| continues_at(log.path(), state.pushed_log_bytes));
    let (unread, from) = match unread {
        Some(unread) => (unread, state.pushed_log_bytes),
        None => (their_segments.iter().map(|s| (s, 0)).collect(), 0),
    };

    // Events of the file that may also be among theirs: those after `from`.
    let mut ours = Keys::new();
    let mut lines = LogLines::open(log.path(), from)?;
    while let Some(line) = lines.next_line()? {
        ours.insert(segments::key(merge::without_cr(line)));
    }
    let mut known = Keys::new();
    let mut their_last = None;
    for (segment, skip) in unread {
        let commit = theirs.as_deref().unwrap_or_default();
        let bytes = repo.read_segment(commit, segment)?;
        let fresh: Vec<&[u8]> = merge::raw_lines(&bytes[skip as usize..])
            .filter(|line| {
                let key = segments::key(merge::without_cr(line));
                known.insert(key) && !ours.contains(&key)
            })
            .collect();
        if !fresh.is_empty() {
            let started = Instant::now();
            let appended = log.with_lock(|lock| lock.append_raw_lines(&fresh));
            report.lock_held += started.elapsed();
            appended?;
            report.received += fresh.len();
        }
        if their_segments.last() == Some(segment) {
            their_last = Some(bytes);
        }
    }
    drop(ours);

    // The file's events their log lacks go on top of their last segment,
    // pushed a few segments per commit: one push of a whole large log
    // could outlast `sync.timeout_secs` and never get through.
    let mut store = |name: String, bytes: &[u8]| repo.write_segment(name, bytes);
    let mut appender: Option<Appender> = None;
    let mut parent = theirs;
    let mut lines = LogLines::open(log.path(), from)?;
    loop {
        let at_end = match lines.next_line()? {
            Some(line) => {
                if known.insert(segments::key(merge::without_cr(line))) {
                    let appender = match &mut appender {
                        Some(appender) => appender,
                        None => {
                            let last = match (their_last.take(), their_segments.last()) {
                                (Some(bytes), _) => Some(bytes),
                                (None, Some(last)) if Appender::reopens(&their_segments) => Some(
                                    repo.read_segment(parent.as_deref().unwrap_or_default(), last)?,
                                ),
                                _ => None,
                            };
                            appender.insert(Appender::after(their_segments.clone(), last))
                        }
                    };
                    appender.push(line, &mut store)?;
                }
                false
            }
            None => true,
        };
        let Some(batch) = appender.as_mut().filter(|batch| {
            if at_end {
                batch.added > 0
            } else {
                batch.bytes_added >= PUSH_BYTES
            }
        }) else {
            if at_end {
                break;
            }
            continue;
        };
        let segments = batch.store_all(&mut store)?;
        let commit = repo.commit_segments(&segments, parent.as_deref(), EVENTS)?;
        report.committed = true;
        match repo.push_log(&config.remote, &commit, &config.branch) {
            Ok(_) => {
                repo.track_pushed(&config.remote, &config.branch, &commit)?;
                report.pushed = true;
                report.sent += batch.added;
                batch.added = 0;
                batch.bytes_added = 0;
                record_merged(dir, Some(commit.clone()), lines.end());
                parent = Some(commit);
            }
            Err(failed)
                if ["rejected", "fetch first", "non-fast-forward"]
                    .iter()
                    .any(|needle| failed.message.contains(needle)) =>
            {
                let refused = failed
                    .message
                    .lines()
                    .find(|line| line.contains("[remote rejected]"))
                    .map(|line| line.trim().to_string());
                return Ok(Round::Again(refused));
            }
            Err(failed) => return Err(repo.remote_error(&config.remote, failed.message)),
        }
        if at_end {
            break;
        }
    }
    // Every line up to here is on the remote: pushed, or known to be there.
    record_merged(dir, parent, lines.end());
    Ok(Round::Done)
}

/// Whether `offset` is where a line of the file starts (or its end): a
/// file that was replaced or cut short since is read whole instead.
fn continues_at(path: &Path, offset: u64) -> bool {
    if offset == 0 {
        return true;
    }
    let mut byte = [0u8];
    std::fs::File::open(path)
        .and_then(|mut file| {
            file.seek(std::io::SeekFrom::Start(offset - 1))?;
            file.read_exact(&mut byte)
        })
        .is_ok_and(|()| byte[0] == b'\n')
}

/// The complete, non-blank lines of the file from a byte on (each without
/// its `\n`, a `\r` before it kept), streamed. A line still being written
/// is left for the next sync.
struct LogLines<'a> {
    path: &'a Path,
    reader: Option<std::io::BufReader<std::fs::File>>,
    line: Vec<u8>,
    /// Where the last complete line read ends.
    end: u64,
}

impl<'a> LogLines<'a> {
    fn open(path: &'a Path, from: u64) -> Result<LogLines<'a>, SyncError> {
        let reader = match std::fs::File::open(path) {
            Ok(mut file) => {
                file.seek(std::io::SeekFrom::Start(from))
                    .map_err(StoreError::io("read", path))?;
                Some(std::io::BufReader::with_capacity(1 << 16, file))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && from == 0 => None,
            Err(error) => return Err(StoreError::io("read", path)(error).into()),
        };
        Ok(LogLines {
            path,
            reader,
            line: Vec::new(),
            end: from,
        })
    }

    fn next_line(&mut self) -> Result<Option<&[u8]>, SyncError> {
        let Some(reader) = &mut self.reader else {
            return Ok(None);
        };
        loop {
            self.line.clear();
            let read = reader
                .read_until(b'\n', &mut self.line)
                .map_err(StoreError::io("read", self.path))?;
            if read == 0 || !self.line.ends_with(b"\n") {
                self.reader = None;
                return Ok(None);
            }
            self.end += read as u64;
            if !merge::is_blank(&self.line[..read - 1]) {
                return Ok(Some(&self.line[..read - 1]));
            }
        }
    }

    fn end(&self) -> u64 {
        self.end
    }
}
