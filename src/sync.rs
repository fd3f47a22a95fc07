//! Git sync: teams on several machines share one log through a git remote.
//!
//! A sync commits the local log, fetches, merges and pushes — without ever
//! letting git rewrite `events.log` in the work tree (git replaces files it
//! writes, and an appender could lose an event or interleave with git's
//! write). Instead:
//!
//! 1. under the log lock, `git add` the log and commit it;
//! 2. fetch the remote branch;
//! 3. if it has commits we lack: append the remote's events we do not have
//!    (by `id`; lines without one by their text) to the local log, under
//!    the lock — the log stays append-only — and make the merge commit from
//!    `git merge-tree --write-tree` with the log's entry set to the local
//!    file, which now holds both sides;
//! 4. push; if the remote moved meanwhile, go round again.
//!
//! `huddle init` (or the first sync) also registers a merge driver for
//! `events.log` in `.gitattributes` and the repository config, so a person's
//! `git merge`/`git pull` merges the log by event id too: each event once,
//! no conflict markers. Snapshot files and huddle's private state are
//! derived, per clone, and git-ignored: each clone's leader regenerates them.
//!
//! Failures retry with backoff; after `sync.attempts` failures the sync is
//! offline (an `error` event, `huddle status` says so) and local appends go
//! on as usual — they are the queue: the next sync that reaches the remote
//! pushes them, each exactly once. An authentication failure is reported as
//! such, naming the remote: refresh the credentials.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::SyncConfig;
use crate::event::{types, InteractionRef, NewEvent};
use crate::log::{EventStore, StoreError, LOG_FILE, STATE_DIR};
use crate::workspace::Workspace;

const DRIVER: &str = "huddle-events";
pub const SYNC_STATE_FILE: &str = "sync.json";
/// Files that are derived per clone and never committed.
const IGNORED: &[&str] = &[
    "communication.md",
    "communication.md.bak",
    "archive.md",
    "events.error.log",
    "events.offline.log",
    ".huddle/",
    "agent-*.checkpoint",
    "*.log.new",
];

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{dir} is not inside a git repository; `git init` it (and add a remote) to sync")]
    NotARepository { dir: String },
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
    #[error("`git {command}` failed: {message}")]
    Git { command: String, message: String },
    #[error(transparent)]
    Log(#[from] StoreError),
}

impl SyncError {
    pub fn is_authentication(&self) -> bool {
        matches!(self, SyncError::Authentication { .. })
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
    let bytes = std::fs::read(dir.join(STATE_DIR).join(SYNC_STATE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
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
            crate::event::HOST_ACTOR,
            types::ERROR,
            format!(
                "git sync is offline after {} failed attempts; events stay in the local log and are pushed when {} answers again: {error}",
                state.failures, config.remote
            ),
        );
        let _ = workspace.log().append(report);
    }
    save_state(&workspace.dir, &state);
}

fn save_state(dir: &Path, state: &SyncState) {
    let path = dir.join(STATE_DIR).join(SYNC_STATE_FILE);
    let _ = std::fs::create_dir_all(dir.join(STATE_DIR));
    let _ = std::fs::write(path, serde_json::to_vec_pretty(state).unwrap_or_default());
}

/// What one successful sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub committed: bool,
    /// Events from the remote appended to the local log.
    pub received: usize,
    pub pushed: bool,
    /// Time the log lock was held, in total.
    pub lock_held: Duration,
}

struct Repo {
    top: PathBuf,
    /// events.log relative to the top of the work tree.
    log_path: String,
    timeout: Duration,
}

impl Repo {
    fn open(dir: &Path, timeout: Duration) -> Result<Repo, SyncError> {
        let probe = Repo {
            top: dir.to_path_buf(),
            log_path: String::new(),
            timeout,
        };
        let top = probe.git(&["rev-parse", "--show-toplevel"]).map_err(|_| {
            SyncError::NotARepository {
                dir: dir.display().to_string(),
            }
        })?;
        let top = PathBuf::from(top.trim());
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let relative = dir.strip_prefix(&top).unwrap_or(Path::new(""));
        let log_path = relative.join(LOG_FILE).to_string_lossy().into_owned();
        Ok(Repo {
            top,
            log_path,
            timeout,
        })
    }

    /// Runs git, with prompts off and a timeout; stdout on success.
    fn git(&self, args: &[&str]) -> Result<String, (String, String)> {
        self.git_with(args, &[])
    }

    fn git_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String, (String, String)> {
        let mut command = Command::new("git");
        command
            .current_dir(&self.top)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let shown = args.join(" ");
        let child = command
            .spawn()
            .map_err(|e| (shown.clone(), e.to_string()))?;
        // Read the output while waiting (a full pipe would stall git), and
        // give up after the timeout.
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(self.timeout) {
            Ok(result) => result.map_err(|e| (shown.clone(), e.to_string()))?,
            Err(_) => {
                // SAFETY: signals the git process we started; the waiting
                // thread has not reaped it, since it has not finished.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                return Err((shown, format!("timed out after {:?}", self.timeout)));
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err((
                shown,
                if message.is_empty() {
                    out.status.to_string()
                } else {
                    message
                },
            ))
        }
    }

    fn plain(&self, args: &[&str]) -> Result<String, SyncError> {
        self.git(args)
            .map_err(|(command, message)| SyncError::Git { command, message })
    }

    fn remote_error(&self, remote: &str, message: String) -> SyncError {
        let url = self
            .git(&["remote", "get-url", remote])
            .map(|u| u.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let lower = message.to_lowercase();
        let auth = [
            "authentication failed",
            "could not read username",
            "terminal prompts disabled",
            "error: 401",
            "error: 403",
            "permission denied (publickey)",
            "invalid credentials",
            "access denied",
        ]
        .iter()
        .any(|needle| lower.contains(needle));
        if auth {
            SyncError::Authentication {
                remote: remote.into(),
                url,
                message,
            }
        } else {
            SyncError::Unreachable {
                remote: remote.into(),
                url,
                message,
            }
        }
    }
}

/// Registers the merge driver and the ignore rules (idempotent).
pub fn register(dir: &Path) -> Result<(), SyncError> {
    let repo = Repo::open(dir, Duration::from_secs(10))?;
    // The driver is the huddle executable. A program that links the library
    // (a benchmark, say) is not: it names the executable in HUDDLE_EXE.
    let exe = std::env::var_os("HUDDLE_EXE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "huddle".into());
    repo.plain(&[
        "config",
        &format!("merge.{DRIVER}.name"),
        "huddle: merge events.log by event id",
    ])?;
    repo.plain(&[
        "config",
        &format!("merge.{DRIVER}.driver"),
        &format!("'{exe}' merge-driver %O %A %B"),
    ])?;
    let attributes = dir.join(".gitattributes");
    let line = format!("{LOG_FILE} merge={DRIVER}");
    ensure_lines(&attributes, &[line.as_str()]).map_err(|e| SyncError::Git {
        command: "write .gitattributes".into(),
        message: e.to_string(),
    })?;
    ensure_lines(&dir.join(".gitignore"), IGNORED).map_err(|e| SyncError::Git {
        command: "write .gitignore".into(),
        message: e.to_string(),
    })
}

fn ensure_lines(path: &Path, lines: &[&str]) -> std::io::Result<()> {
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    let missing: Vec<&&str> = lines
        .iter()
        .filter(|l| !text.lines().any(|have| have.trim() == **l))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for line in missing {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Checks the remote answers and accepts our credentials.
pub fn check_remote(dir: &Path, config: &SyncConfig) -> Result<(), SyncError> {
    let repo = Repo::open(dir, Duration::from_secs(config.timeout_secs))?;
    repo.git(&["ls-remote", "--heads", &config.remote])
        .map(|_| ())
        .map_err(|(_, message)| repo.remote_error(&config.remote, message))
}

/// Event identity for merging: the id, or the whole line for lines without one.
fn identity(line: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    match serde_json::from_slice::<IdOnly>(line) {
        Ok(IdOnly { id: Some(id) }) => [b"id:".as_slice(), id.as_bytes()].concat(),
        _ => [b"line:".as_slice(), line].concat(),
    }
}

/// Lines of `theirs` whose events are not in `ours`, in their order.
fn unseen<'a>(ours: &[u8], theirs: &'a [u8]) -> Vec<&'a [u8]> {
    let known: HashSet<Vec<u8>> = complete_lines(ours).map(identity).collect();
    let mut seen = HashSet::new();
    complete_lines(theirs)
        .filter(|line| {
            let id = identity(line);
            !known.contains(&id) && seen.insert(id)
        })
        .collect()
}

fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

/// `huddle merge-driver %O %A %B`: writes into A every event of A, then the
/// events of B that A lacks. Never conflicts.
pub fn merge_driver(ours: &Path, theirs: &Path) -> std::io::Result<()> {
    let mine = std::fs::read(ours)?;
    let other = std::fs::read(theirs)?;
    let mut merged = mine.clone();
    if !merged.is_empty() && !merged.ends_with(b"\n") {
        merged.push(b'\n');
    }
    for line in unseen(&mine, &other) {
        merged.extend_from_slice(line);
        merged.push(b'\n');
    }
    std::fs::write(ours, merged)
}

/// One sync, retried with backoff; records the outcome for `huddle status`
/// and logs an `error` event when the sync goes offline.
pub fn sync(workspace: &Workspace) -> Result<SyncReport, SyncError> {
    let config = &workspace.config.sync;
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
                let hopeless =
                    error.is_authentication() || matches!(error, SyncError::NotARepository { .. });
                if hopeless || attempt >= config.attempts {
                    return Err(error);
                }
                std::thread::sleep(crate::config::backoff(
                    Duration::from_millis(config.retry_initial_ms),
                    Duration::from_millis(config.retry_max_ms),
                    attempt,
                ));
            }
        }
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
    state.last_success = Some(crate::event::now_rfc3339());
    state.offline = false;
    state.failures = 0;
    state.pushed_log_bytes = std::fs::metadata(workspace.dir.join(LOG_FILE)).map_or(0, |m| m.len());
    save_state(&workspace.dir, &state);
}

/// One round: commit, fetch, merge, push (see the module docs).
pub fn sync_once(workspace: &Workspace) -> Result<SyncReport, SyncError> {
    let config = &workspace.config.sync;
    let repo = Repo::open(&workspace.dir, Duration::from_secs(config.timeout_secs))?;
    register(&workspace.dir)?;
    let log = workspace.log();
    let mut report = SyncReport::default();
    let branch_ref = format!("refs/remotes/{}/{}", config.remote, config.branch);

    for _round in 0..5 {
        // 1. Stage the log as it stands (the lock keeps appenders out of
        // git's read), then commit outside the lock.
        let started = Instant::now();
        let staged = log.with_lock(|_| {
            Ok(repo.git(&["add", "--", &repo.log_path, ".gitattributes", ".gitignore"]))
        })?;
        report.lock_held += started.elapsed();
        staged.map_err(|(command, message)| SyncError::Git { command, message })?;
        if repo.git(&["diff", "--cached", "--quiet"]).is_err() {
            repo.plain(&["commit", "-q", "--no-verify", "-m", "huddle: events"])?;
            report.committed = true;
        }

        // 2. Fetch.
        if let Err((_, message)) = repo.git(&[
            "fetch",
            "-q",
            &config.remote,
            &format!("+{}:{branch_ref}", config.branch),
        ]) {
            let missing_branch = message.contains("couldn't find remote ref");
            if !missing_branch {
                return Err(repo.remote_error(&config.remote, message));
            }
        }
        let remote_head = repo
            .git(&["rev-parse", "--verify", "-q", &branch_ref])
            .ok()
            .map(|s| s.trim().to_string());

        // 3. Merge what the remote has and we lack.
        if let Some(theirs) = &remote_head {
            let behind = repo
                .git(&["merge-base", "--is-ancestor", theirs, "HEAD"])
                .is_err();
            if behind {
                report.received += merge(&repo, &log, theirs, &mut report.lock_held)?;
            }
        }

        // 4. Push; a remote that moved meanwhile means another round.
        match repo.git(&[
            "push",
            "-q",
            &config.remote,
            &format!("HEAD:refs/heads/{}", config.branch),
        ]) {
            Ok(_) => {
                report.pushed = true;
                return Ok(report);
            }
            Err((_, message))
                if message.contains("rejected") || message.contains("fetch first") =>
            {
                continue
            }
            Err((_, message)) => return Err(repo.remote_error(&config.remote, message)),
        }
    }
    Err(SyncError::Git {
        command: "push".into(),
        message: "the remote kept moving; try again".into(),
    })
}

/// Appends the remote's unseen events to the local log and records a merge
/// commit whose log is the local file. Returns how many events arrived.
fn merge(
    repo: &Repo,
    log: &crate::log::FileLog,
    theirs: &str,
    lock_held: &mut Duration,
) -> Result<usize, SyncError> {
    let their_log = repo
        .git(&["show", &format!("{theirs}:{}", repo.log_path)])
        .unwrap_or_default()
        .into_bytes();
    // The tree of a plain three-way merge (other files, if any), written
    // without touching the work tree or the index.
    let merged_tree = repo.plain(&[
        "merge-tree",
        "--write-tree",
        "--allow-unrelated-histories",
        "HEAD",
        theirs,
    ])?;
    let merged_tree = merged_tree
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();

    let started = Instant::now();
    let (received, blob) = log.with_lock(|locked| {
        let ours = std::fs::read(log.path()).map_err(|source| StoreError::Io {
            action: "read",
            path: log.path().to_path_buf(),
            source,
        })?;
        let fresh = unseen(&ours, &their_log);
        locked.append_raw_lines(&fresh)?;
        let blob = repo.git(&["hash-object", "-w", "--", &repo.log_path]);
        Ok((fresh.len(), blob))
    })?;
    *lock_held += started.elapsed();
    let blob = blob.map_err(|(command, message)| SyncError::Git { command, message })?;

    // Tree = the three-way merge with the log replaced by the local file.
    let index = repo.top.join(".git").join("huddle-merge-index");
    let index_env = [("GIT_INDEX_FILE", index.to_str().unwrap_or_default())];
    let step = |args: &[&str]| {
        repo.git_with(args, &index_env)
            .map_err(|(command, message)| SyncError::Git { command, message })
    };
    step(&["read-tree", &merged_tree])?;
    step(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("100644,{},{}", blob.trim(), repo.log_path),
    ])?;
    let tree = step(&["write-tree"])?;
    let _ = std::fs::remove_file(&index);
    let old_head = repo.plain(&["rev-parse", "HEAD"])?;
    let commit = repo.plain(&[
        "commit-tree",
        tree.trim(),
        "-p",
        old_head.trim(),
        "-p",
        theirs,
        "-m",
        "huddle: merge events",
    ])?;
    repo.plain(&["update-ref", "HEAD", commit.trim(), old_head.trim()])?;
    // The index follows HEAD; files other than the log that the remote
    // changed are checked out (the log itself is never rewritten by git).
    repo.plain(&["read-tree", "HEAD"])?;
    let changed = repo.plain(&["diff", "--name-only", old_head.trim(), commit.trim()])?;
    for path in changed.lines().filter(|p| *p != repo.log_path) {
        repo.plain(&["checkout", commit.trim(), "--", path])?;
    }
    Ok(received)
}
