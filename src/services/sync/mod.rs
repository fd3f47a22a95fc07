//! Git sync: teams on several machines share one log through a git remote.
//!
//! The contract: a sync touches `events.log` and nothing else of the
//! person's. It runs no porcelain that reads or writes the work tree or the
//! index (`git add`, `git commit`, `git checkout`); it builds commits with
//! plumbing and a private index (`GIT_INDEX_FILE` in the git directory,
//! found with `git rev-parse --git-path`, so linked worktrees and submodules
//! work). Whatever the person staged stays staged and uncommitted, their
//! other files — tracked, modified or untracked — are not opened, and of
//! their index only the entry for `events.log` changes, to follow the branch.
//!
//! One round:
//!
//! 1. check the checkout: the configured `sync.branch` must be checked out
//!    and no merge, rebase, cherry-pick or revert be in progress; otherwise
//!    refuse, naming both branches — the log in the work tree belongs to the
//!    checked-out branch, so syncing it into another branch, or pushing
//!    another branch's commits to the sync branch, would mix two histories;
//! 2. fetch the remote branch;
//! 3. read the committed logs whose events the file must hold: the branch's
//!    own, and the remote's when it has commits we lack. A read that fails or
//!    times out fails the sync *before* anything is merged or recorded: the
//!    remote commit does not become a parent of ours, so the next sync reads
//!    it again and no event is lost;
//! 4. under the log lock, append the events the file lacks (by `id`; lines
//!    without one by their text) — the file stays append-only and git never
//!    writes it;
//! 5. commit the file as `events.log`: on top of the branch when the remote
//!    has nothing we lack; on top of the remote when the branch can simply
//!    follow it (the branch then fast-forwards); otherwise on the branch
//!    first — so the work tree's log is the branch's and the person's own
//!    `git pull` runs on a clean log — then as a merge whose other paths
//!    come from `git merge-tree`. The branch moves only to commits that
//!    differ from it in `events.log` alone: when the remote changed other
//!    files the branch stays short of them (a conflict in them stops the
//!    sync, naming them) and the person's `git pull` brings them;
//! 6. push that commit to the sync branch; if the remote moved meanwhile,
//!    go round again.
//!
//! A sync commits only when the file holds events the target log lacks, so
//! clones whose files list the same events in different orders settle
//! instead of committing each other's order back and forth.
//!
//! The first sync registers a merge driver for `events.log` (the
//! repository's config and `info/attributes`), so a person's `git pull`
//! merges the log by event id too, and lists the derived files (snapshots,
//! huddle's state) in `info/exclude`: both live in the git directory, per
//! clone, like the driver itself; the work tree gets no `.gitattributes` or
//! `.gitignore` edits.
//!
//! Failures retry with backoff; after `sync.attempts` failures the sync is
//! offline (an `error` event, `huddle status` says so) and local appends go
//! on as usual — they are the queue: the next sync that reaches the remote
//! pushes them, each exactly once. An authentication failure is reported as
//! such, naming the remote: refresh the credentials.

mod git;
mod merge;
mod recover;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::file::{EventStore, FileLog, StoreError, LOG_FILE};
use crate::model::config::SyncConfig;
use crate::model::event::{types, InteractionRef, NewEvent};
use crate::services::workspace::Workspace;
use git::{Branch, Repo};
pub use merge::{lines_to_append, log_lines, merge_driver, merged_log, with_lines_appended};

pub use crate::model::names::state::SYNC as SYNC_STATE_FILE;
/// Rounds of fetch-merge-push before giving up on a remote that keeps moving.
const ROUNDS: usize = 5;
/// Messages of the commits sync makes.
const EVENTS: &str = "huddle: events";
const MERGE: &str = "huddle: merge events";

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
        "huddle syncs branch `{expected}` (sync.branch in huddle.toml), but {checked_out} in {top}; \
         sync commits events.log only on `{expected}` and never pushes another branch to it, so it did nothing. \
         Switch back with `git switch {expected}`, or sync the branch you are on by setting \
         `branch` under [sync] in huddle.toml"
    )]
    WrongBranch {
        expected: String,
        checked_out: String,
        top: String,
    },
    #[error(
        "a git {operation} is in progress in {top}; sync does not commit in the middle of one: \
         finish or abort it, then sync again"
    )]
    OperationInProgress {
        operation: &'static str,
        top: String,
    },
    #[error(
        "cannot read {path} of commit {commit}: {message}; nothing was merged from it, \
         the next sync reads it again"
    )]
    UnreadableLog {
        commit: String,
        path: String,
        message: String,
    },
    #[error(
        "the remote's changes to {paths} conflict with this clone's commits on `{branch}`; \
         sync merges events.log only: run `git pull`, resolve, then sync again"
    )]
    Conflict { branch: String, paths: String },
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
                | SyncError::WrongBranch { .. }
                | SyncError::OperationInProgress { .. }
                | SyncError::Conflict { .. }
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
    /// Length of the log at the last push: what came after is not on the remote yet.
    pub pushed_log_bytes: u64,
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
    state.pushed_log_bytes = std::fs::metadata(workspace.dir.join(LOG_FILE)).map_or(0, |m| m.len());
    save_state(&workspace.dir, &state);
}

/// What one successful sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub committed: bool,
    /// Events from committed logs (the remote's, or the branch's own)
    /// appended to the local log.
    pub received: usize,
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
    /// The remote or the branch moved under us: fetch and try again.
    Again,
}

/// One sync (see the module docs), without retries.
pub fn sync_once(workspace: &Workspace) -> Result<SyncReport, SyncError> {
    let config = &workspace.config.sync;
    let mut repo = Repo::open(&workspace.dir, Duration::from_secs(config.timeout_secs))?;
    repo.check_config(config)?;
    repo.start_sync(config)?;
    repo.check_checkout(&config.branch)?;
    repo.register()?;
    let log = workspace.log();
    let mut report = SyncReport::default();
    for _ in 0..ROUNDS {
        if let Round::Done = round(&repo, &log, config, &mut report)? {
            if repo.recovered() {
                let reference = format!("refs/heads/{}", config.branch);
                if let Some(tip) = repo.resolve(&reference)? {
                    Branch {
                        repo: &repo,
                        reference: &reference,
                    }
                    .follow_index_if_behind(&tip)?;
                }
            }
            return Ok(report);
        }
    }
    Err(SyncError::Git {
        command: "push".into(),
        message: format!(
            "the remote (or the branch `{}`) kept moving through {ROUNDS} rounds; try again",
            config.branch
        ),
    })
}

fn round(
    repo: &Repo,
    log: &FileLog,
    config: &SyncConfig,
    report: &mut SyncReport,
) -> Result<Round, SyncError> {
    let branch_ref = format!("refs/heads/{}", config.branch);
    let theirs = repo.fetch(&config.remote, &config.branch)?;
    let ours = repo.resolve(&branch_ref)?;
    let remote_ahead = match (&theirs, &ours) {
        (Some(theirs), Some(ours)) => !repo.is_ancestor(theirs, ours)?,
        (Some(_), None) => true,
        (None, _) => false,
    };
    // Every event of these logs must be in the file before anything is
    // committed on top of them; an unreadable one stops the sync here.
    let our_log = match &ours {
        Some(commit) => repo.read_log(commit)?,
        None => None,
    };
    let their_log = match &theirs {
        Some(commit) if remote_ahead => repo.read_log(commit)?,
        _ => None,
    };

    let started = Instant::now();
    let locked = log.with_lock(|lock| {
        let mut file = std::fs::read(log.path()).map_err(|source| StoreError::Io {
            action: "read",
            path: log.path().to_path_buf(),
            source,
        })?;
        let mut appended = 0;
        for committed in [&our_log, &their_log].into_iter().flatten() {
            let fresh = lines_to_append(&file, committed);
            lock.append_raw_lines(&fresh)?;
            appended += fresh.len();
            file = with_lines_appended(file, &fresh);
        }
        Ok((file, appended))
    });
    report.lock_held += started.elapsed();
    let (file, appended) = locked?;
    report.received += appended;

    // Whether the file holds events that a committed log lacks.
    let news_for = |committed: &Option<Vec<u8>>| {
        !lines_to_append(committed.as_deref().unwrap_or_default(), &file).is_empty()
    };
    // A commit of the file as the log, on a tree (or on nothing), with
    // these parents; the file's blob is written once.
    let blob = std::cell::OnceCell::new();
    let commit_file = |tree: Option<&str>, parents: &[&str], message: &str| {
        if blob.get().is_none() {
            let _ = blob.set(repo.write_blob(&file)?);
        }
        let blob = blob.get().map_or("", String::as_str);
        repo.commit_tree(&repo.tree_with_log(tree, blob)?, parents, message)
    };
    let branch = Branch {
        repo,
        reference: &branch_ref,
    };
    let publish = match theirs.as_deref() {
        Some(theirs) if remote_ahead => {
            let behind = match &ours {
                Some(ours) => repo.is_ancestor(ours, theirs)?,
                None => true,
            };
            let their_tree = repo.tree(theirs)?;
            if behind && repo.changes_only_log(&repo.tree_of(ours.as_deref())?, &their_tree)? {
                // The branch follows the remote, with our events on top.
                let commit = if news_for(&their_log) {
                    report.committed = true;
                    Some(commit_file(Some(&their_tree), &[theirs], EVENTS)?)
                } else {
                    None
                };
                if !branch.advance(commit.as_deref().unwrap_or(theirs), ours.as_deref())? {
                    return Ok(Round::Again);
                }
                commit
            } else {
                // The branch cannot simply follow (the remote changed other
                // files, or both sides have commits). First the file goes on
                // the branch, so the work tree's log is the branch's and the
                // person's own `git pull` runs on a clean log.
                let mut ours = ours;
                if let (Some(base), true) = (ours.as_deref(), news_for(&our_log)) {
                    report.committed = true;
                    let commit = commit_file(Some(&repo.tree(base)?), &[base], EVENTS)?;
                    if !branch.advance(&commit, Some(base))? {
                        return Ok(Round::Again);
                    }
                    ours = Some(commit);
                }
                match ours.as_deref() {
                    Some(ours) if !repo.is_ancestor(ours, theirs)? => {
                        // A merge: other paths from a three-way merge, the log
                        // from the file. The branch takes it only if that
                        // changes nothing but the log.
                        let merged = repo.merge_trees(ours, theirs, &config.branch)?;
                        let commit = commit_file(Some(&merged), &[ours, theirs], MERGE)?;
                        report.committed = true;
                        if repo
                            .changes_only_log(&repo.tree_of(Some(ours))?, &repo.tree(&commit)?)?
                            && !branch.advance(&commit, Some(ours))?
                        {
                            return Ok(Round::Again);
                        }
                        Some(commit)
                    }
                    _ if news_for(&their_log) => {
                        // Still behind, in other files only: our events go
                        // on top of the remote; the branch waits for `git pull`.
                        report.committed = true;
                        Some(commit_file(Some(&their_tree), &[theirs], EVENTS)?)
                    }
                    _ => None,
                }
            }
        }
        _ => {
            // The remote has nothing we lack: commit what the branch's log
            // lacks, push what the remote lacks.
            let mut tip = ours.clone();
            if news_for(&our_log) {
                report.committed = true;
                let parents: Vec<&str> = ours.as_deref().into_iter().collect();
                let commit =
                    commit_file(repo.tree_of(ours.as_deref())?.as_deref(), &parents, EVENTS)?;
                if !branch.advance(&commit, ours.as_deref())? {
                    return Ok(Round::Again);
                }
                tip = Some(commit);
            }
            tip.filter(|tip| theirs.as_ref() != Some(tip))
        }
    };

    let Some(commit) = publish else {
        return Ok(Round::Done);
    };
    match repo.push(&config.remote, &commit, &config.branch) {
        Ok(_) => {
            report.pushed = true;
            Ok(Round::Done)
        }
        Err(failed)
            if ["rejected", "fetch first", "non-fast-forward"]
                .iter()
                .any(|needle| failed.message.contains(needle)) =>
        {
            Ok(Round::Again)
        }
        Err(failed) => Err(repo.remote_error(&config.remote, failed.message)),
    }
}
