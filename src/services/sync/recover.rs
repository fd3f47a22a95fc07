//! One sync at a time per repository, and recovery from one that was killed.
//!
//! A sync killed with `kill -9` together with the git it runs (a session or
//! a machine dying) can leave git's lock files behind, and git then refuses
//! every later command that needs them. The next sync removes the ones that
//! are provably stale, by this rule:
//!
//! * Syncs are serialised by an `flock` on `huddle-sync.lock` in the git
//!   common directory (every linked worktree shares it). Every sync writes a
//!   journal beside it (`huddle-sync.journal`) when it starts and removes it
//!   when it ends: a journal found by the next holder of the lock is the
//!   record of a sync that died.
//! * Every git command a sync runs carries the sync's token in its
//!   environment (`HUDDLE_SYNC_RUN`), and so do the processes it starts. The
//!   next sync waits until no process carrying the dead sync's token is left
//!   (an orphaned git still finishing its work, which removes its own locks);
//!   after `sync.timeout_secs` it kills them, as the dead sync would have.
//! * Private indexes (`huddle-sync.*.index` and their `.lock`), which
//!   versions before the segmented log used, are huddle's: with the dead
//!   sync's processes gone they are removed.
//! * Locks in the person's repository (the lock of the ref the log is
//!   fetched into, `config.lock`) are
//!   removed only when all of these hold: the journal shows that the dead
//!   sync was running a command that takes that very lock; the lock file was
//!   created after that command started (a lock that was there before is
//!   someone else's); and no git process is running in this repository
//!   (read from `/proc`: a git process whose directory cannot be read counts
//!   as running here). Any other lock is left alone and the git command that
//!   needs it fails naming it. Without `/proc` (not Linux) only the private
//!   indexes are cleaned.
//! * A push to a remote that is a repository on this machine runs git's
//!   receiving side there, which takes the lock of the log's ref in *that*
//!   repository (and carries the token too). The journal records that lock
//!   with the remote's directories, and it is judged by the same rule, with
//!   "no git process is running in the remote repository".

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::SyncError;

pub(super) const TOKEN_VARIABLE: &str = "HUDDLE_SYNC_RUN";
const LOCK_FILE: &str = "huddle-sync.lock";
const JOURNAL_FILE: &str = "huddle-sync.journal";
/// Prefix and suffixes of the private indexes of earlier versions.
const PRIVATE_INDEX_PREFIX: &str = "huddle-sync.";
const PRIVATE_INDEX_SUFFIXES: &[&str] = &[".index", ".index.lock"];
/// Filesystem timestamps may lag the clock by a tick: a lock created just
/// after a command started may carry a time just before it.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// What the journal says about a sync while it runs.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// The token its git commands carry in their environment.
    run: String,
    /// The command that may hold person's locks now, if any.
    in_flight: Option<InFlight>,
    /// Locks an earlier sync that died may have left, which a git process
    /// running in the repository kept from being removed: judged again by
    /// the next sync.
    #[serde(default)]
    pending: Option<InFlight>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InFlight {
    command: String,
    /// The lock files that command may create.
    locks: Vec<PathBuf>,
    /// The directories of a repository on this machine where the command's
    /// other side works (a push's receiving side): those of `locks` inside
    /// them are judged by the git processes working there.
    #[serde(default)]
    remote_roots: Vec<PathBuf>,
    /// When it started (ms since the Unix epoch).
    started_ms: u128,
}

/// The places recovery needs, from `git rev-parse`.
pub(super) struct Places {
    /// The git common directory (shared by linked worktrees).
    pub(super) common_dir: PathBuf,
    /// This work tree's git directory.
    pub(super) git_dir: PathBuf,
    /// The directory of the private indexes.
    pub(super) private_dir: PathBuf,
    /// The top of the work tree.
    pub(super) top: PathBuf,
}

impl Places {
    /// Where the repository's git processes work: the work tree and the
    /// git directories.
    fn roots(&self) -> Vec<&Path> {
        vec![&self.top, &self.git_dir, &self.common_dir]
    }
}

/// The held sync lock and this sync's journal; dropping it ends the sync.
pub(super) struct SyncRun {
    _lock: File,
    lock_path: PathBuf,
    journal: PathBuf,
    pub(super) token: String,
    /// A command was killed (timeout) with its locks possibly still held:
    /// the journal stays for the next sync to recover.
    keep_journal: std::cell::Cell<bool>,
    pending: Option<InFlight>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn io_error(action: &str, path: &Path, error: std::io::Error) -> SyncError {
    SyncError::Git {
        command: format!("{action} {}", path.display()),
        message: error.to_string(),
    }
}

impl SyncRun {
    /// Takes the repository's sync lock (waiting up to `wait` for another
    /// sync to finish), recovers from a sync that died, and starts the journal.
    pub(super) fn begin(places: &Places, wait: Duration) -> Result<SyncRun, SyncError> {
        let lock_path = places.common_dir.join(LOCK_FILE);
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        let lock = loop {
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| io_error("open", &lock_path, e))?;
            match fs4::FileExt::try_lock(&lock) {
                // The holder before us removes the file as it lets go: a
                // lock on a file no longer at the path guards nothing.
                Ok(()) if same_file(&lock, &lock_path) => break lock,
                Ok(()) => {}
                Err(fs4::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(fs4::TryLockError::WouldBlock) => {
                    return Err(SyncError::Busy {
                        top: places.top.display().to_string(),
                        waited: wait,
                    })
                }
                Err(fs4::TryLockError::Error(error)) => {
                    return Err(io_error("lock", &lock_path, error))
                }
            }
        };
        let journal = places.common_dir.join(JOURNAL_FILE);
        let previous = read_journal(&journal);
        let pending = match previous {
            Some(previous) => recover(places, previous, wait)?,
            None => None,
        };
        let run = SyncRun {
            pending,
            _lock: lock,
            lock_path,
            journal,
            token: format!("{}-{}", std::process::id(), now_ms()),
            keep_journal: std::cell::Cell::new(false),
        };
        run.write(None)?;
        Ok(run)
    }

    fn write(&self, in_flight: Option<InFlight>) -> Result<(), SyncError> {
        let journal = Journal {
            run: self.token.clone(),
            in_flight,
            pending: self.pending.clone(),
        };
        let bytes = serde_json::to_vec(&journal).unwrap_or_default();
        // Replaced by rename so a kill never leaves half a journal; no fsync:
        // the journal guards against killed processes, not power cuts.
        let mut tmp = self.journal.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &self.journal))
            .map_err(|e| io_error("write", &self.journal, e))
    }

    /// Records that `command`, which may take `locks`, is about to run;
    /// `remote_roots` are the directories of the repository on this machine
    /// its other side works in, if any.
    pub(super) fn starting(
        &self,
        command: &str,
        locks: &[&Path],
        remote_roots: &[PathBuf],
    ) -> Result<(), SyncError> {
        self.write(Some(InFlight {
            command: command.to_string(),
            locks: locks.iter().map(|p| p.to_path_buf()).collect(),
            remote_roots: remote_roots.to_vec(),
            started_ms: now_ms(),
        }))
    }

    /// Records that the command ended by itself (git released its locks),
    /// or, when we killed it, that its locks may be left.
    pub(super) fn finished(&self, killed: bool) {
        if killed {
            self.keep_journal.set(true);
        } else if !self.keep_journal.get() {
            if let Err(error) = self.write(None) {
                tracing::warn!(%error, "cannot update the sync journal");
            }
        }
    }
}

impl Drop for SyncRun {
    fn drop(&mut self) {
        if !self.keep_journal.get() && self.pending.is_none() {
            // Both go while the lock is held: a sync that opened the lock
            // file meanwhile sees it is gone and opens it afresh.
            let _ = std::fs::remove_file(&self.journal);
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

fn read_journal(path: &Path) -> Option<Journal> {
    let bytes = std::fs::read(path).ok()?;
    // A journal that cannot be read is still the record of a dead sync;
    // its in-flight command is unknown, so no person's lock is touched.
    Some(serde_json::from_slice(&bytes).unwrap_or(Journal {
        run: String::new(),
        in_flight: None,
        pending: None,
    }))
}

/// Recovers from the sync `previous` records; returns the locks it may have
/// left that are still there because a git process runs in the repository.
fn recover(
    places: &Places,
    previous: Journal,
    wait: Duration,
) -> Result<Option<InFlight>, SyncError> {
    let records: Vec<InFlight> = [previous.pending, previous.in_flight]
        .into_iter()
        .flatten()
        .collect();
    if !previous.run.is_empty() {
        let mut roots = places.roots();
        for record in &records {
            roots.extend(record.remote_roots.iter().map(PathBuf::as_path));
        }
        wait_for_processes_of(&previous.run, &roots, wait)?;
    }
    remove_private_indexes(&places.private_dir);
    let mut git_running = None;
    let mut left = Vec::new();
    for in_flight in records {
        let kept = remove_stale(places, &in_flight, &mut git_running)?;
        if !kept.is_empty() {
            left.push(InFlight {
                locks: kept,
                ..in_flight
            });
        }
    }
    // Of two records, the earlier start is the safe one to judge by.
    Ok(left.into_iter().reduce(|mut a, b| {
        a.started_ms = a.started_ms.min(b.started_ms);
        a.command = format!("{}; {}", a.command, b.command);
        a.locks.extend(b.locks);
        a.remote_roots.extend(b.remote_roots);
        a
    }))
}

/// Removes the locks `in_flight` may have left that are provably stale;
/// returns those kept only because a git process runs in the repository
/// (this one, or the remote on this machine the lock is in).
/// `git_running` caches the answer for this repository.
fn remove_stale(
    places: &Places,
    in_flight: &InFlight,
    git_running: &mut Option<bool>,
) -> Result<Vec<PathBuf>, SyncError> {
    let remote: Vec<&Path> = in_flight
        .remote_roots
        .iter()
        .map(PathBuf::as_path)
        .collect();
    let mut git_running_in_remote = None;
    let mut kept = Vec::new();
    for lock in &in_flight.locks {
        let Ok(metadata) = std::fs::symlink_metadata(lock) else {
            continue;
        };
        let created_ms = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis());
        if created_ms + CLOCK_SLACK.as_millis() < in_flight.started_ms {
            tracing::warn!(lock = %lock.display(), "a git lock older than the killed sync's `{}` is not huddle's: left alone", in_flight.command);
            continue;
        }
        let in_remote = remote.iter().any(|root| lock.starts_with(root));
        let running = if in_remote {
            *git_running_in_remote.get_or_insert_with(|| git_running_in(&remote))
        } else {
            *git_running.get_or_insert_with(|| git_running_in(&places.roots()))
        };
        if running {
            let repository = if in_remote {
                remote[0]
            } else {
                places.top.as_path()
            };
            tracing::warn!(lock = %lock.display(), "a git process is running in {}: the lock a killed sync may have left stays until a later sync", repository.display());
            kept.push(lock.clone());
            continue;
        }
        match std::fs::remove_file(lock) {
            Ok(()) => tracing::info!(
                lock = %lock.display(),
                "removed the lock a killed sync's `{}` left", in_flight.command
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("remove", lock, error)),
        }
    }
    Ok(kept)
}

fn remove_private_indexes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PRIVATE_INDEX_PREFIX)
            && PRIVATE_INDEX_SUFFIXES.iter().any(|s| name.ends_with(s))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Waits until no process carrying `token` works under `roots` (this
/// repository and a remote on this machine the dead sync pushed to); after
/// `wait`, kills those left (they are git commands of a dead sync) and waits
/// for them to go.
fn wait_for_processes_of(token: &str, roots: &[&Path], wait: Duration) -> Result<(), SyncError> {
    let deadline = Instant::now() + wait;
    let mut killed_at = None;
    loop {
        let left: Vec<libc::pid_t> = processes_carrying(token)
            .into_iter()
            .filter(|pid| works_in(*pid, roots))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        match killed_at {
            None if Instant::now() >= deadline => {
                for pid in &left {
                    // SAFETY: a process that carries the dead sync's token
                    // is a git command huddle started (or one git started).
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
                killed_at = Some(Instant::now());
            }
            Some(at) if at.elapsed() > Duration::from_secs(10) => {
                return Err(SyncError::Git {
                    command: "recover from a killed sync".into(),
                    message: format!(
                        "git processes {left:?} of a sync that died do not exit; \
                         sync waits for them to release git's locks"
                    ),
                });
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes (not zombies) whose environment holds `HUDDLE_SYNC_RUN=token`.
#[cfg(target_os = "linux")]
fn processes_carrying(token: &str) -> Vec<libc::pid_t> {
    let entry = format!("{TOKEN_VARIABLE}={token}");
    live_processes()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|variable| variable == entry.as_bytes())
            })
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn processes_carrying(_token: &str) -> Vec<libc::pid_t> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn live_processes() -> impl Iterator<Item = libc::pid_t> {
    let own = std::process::id() as libc::pid_t;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(move |pid| *pid != own)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ...": comm may hold spaces and parentheses.
                stat.rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next())
                    .is_some_and(|state| state != "Z" && state != "X")
            })
        })
}

/// Whether a git process is running in a repository (its directory under
/// one of its `roots`); one whose directory cannot be read counts as
/// running there. Without `/proc`: assume one is.
#[cfg(target_os = "linux")]
fn git_running_in(roots: &[&Path]) -> bool {
    live_processes().any(|pid| {
        let is_git = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "git" || comm.starts_with("git-"));
        is_git && works_in(pid, roots)
    })
}

/// Whether process `pid` works in a repository: its directory is under one
/// of its `roots`, or cannot be read.
fn works_in(pid: libc::pid_t, roots: &[&Path]) -> bool {
    match std::fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => roots.iter().any(|root| cwd.starts_with(root)),
        Err(_) => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn git_running_in(_roots: &[&Path]) -> bool {
    true
}
