//! git through its command line: the files sync keeps in the git directory,
//! and the plumbing it reads and builds the log's commits with.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recover::{Places, SyncRun, TOKEN_VARIABLE};
use super::segments::{self, Segment};
use super::SyncError;
use crate::backend::file::LOG_FILE;
use crate::model::config::SyncConfig;
use crate::model::names;

const DRIVER: &str = "huddle-events";
/// Files in the huddle directory that are derived per clone and never
/// committed (patterns relative to the huddle directory).
const IGNORED: &[&str] = &[
    names::LOG_FILE,
    names::COMMUNICATION_FILE,
    names::BACKUP_FILE,
    names::ARCHIVE_FILE,
    names::QUARANTINE_FILE,
    names::OFFLINE_FILE,
    names::STATE_DIR_PATTERN,
    names::CHECKPOINT_PATTERN,
    "*.log.new",
];
/// Every segment is a plain file in the log's commits.
const SEGMENT_MODE: &str = "100644";

/// A git command that did not succeed: what ran and what it said.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) command: String,
    pub(super) message: String,
    /// It ran past the timeout and was killed: its locks may be left.
    pub(super) timed_out: bool,
}

impl From<Failed> for SyncError {
    fn from(failed: Failed) -> SyncError {
        SyncError::Git {
            command: failed.command,
            message: failed.message,
        }
    }
}

/// `text` with the glob characters of gitignore/gitattributes patterns escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// An `info/attributes` line giving the log the merge driver. The pattern is
/// anchored at the top of the work tree and C-quoted, the only way a
/// gitattributes pattern can hold a space.
fn attributes_line(log_path: &str) -> String {
    let pattern = format!("/{}", glob_escape(log_path));
    let mut quoted = String::from("\"");
    for c in pattern.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\t' => quoted.push_str("\\t"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    format!("{quoted} merge={DRIVER}")
}

/// `info/exclude` lines for the derived files of the huddle directory at
/// `dir_path` (relative to the top, "" for the top itself).
fn exclude_lines(dir_path: &str) -> Vec<String> {
    let prefix = if dir_path.is_empty() {
        "/".to_string()
    } else {
        format!("/{}/", glob_escape(dir_path))
    };
    IGNORED
        .iter()
        .map(|entry| format!("{prefix}{entry}"))
        .collect()
}

/// Adds the `lines` that `path` lacks, atomically; leaves it alone otherwise
/// (the file is the person's too: its bytes are kept as they are).
fn ensure_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let mut text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    let missing: Vec<&String> = lines
        .iter()
        .filter(|line| {
            !text
                .split(|b| *b == b'\n')
                .any(|have| have.strip_suffix(b"\r").unwrap_or(have) == line.as_bytes())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    for line in missing {
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::backend::files::write_atomic(path, &text)
}

/// What git said, without the progress meters `--progress` asks for
/// (lines it rewrites with `\r`, and the summaries that end them).
fn without_progress(stderr: &str) -> String {
    const METERS: &[&str] = &[
        "Enumerating objects",
        "Counting objects",
        "Compressing objects",
        "Writing objects",
        "Receiving objects",
        "Resolving deltas",
        "Total ",
        "Delta compression",
        "Unpacking objects",
    ];
    stderr
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|line| {
            let said = line.strip_prefix("remote:").map_or(*line, str::trim);
            !said.is_empty() && !METERS.iter().any(|meter| said.starts_with(meter))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything a pipe gives until it closes, calling `touch` at each read.
fn read_touching(pipe: Option<impl std::io::Read>, touch: impl Fn()) -> Vec<u8> {
    let mut all = Vec::new();
    let Some(mut pipe) = pipe else {
        return all;
    };
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => {
                all.extend_from_slice(&chunk[..n]);
                touch();
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return all,
        }
    }
}

/// What a git command printed and how it exited.
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

pub(super) struct Repo {
    /// The top of the work tree (a linked worktree's or a submodule's own).
    top: PathBuf,
    /// The huddle directory relative to `top` ("" when it is the top).
    dir_path: String,
    /// events.log relative to `top`.
    log_path: String,
    timeout: Duration,
    /// The sync under way (its lock, journal and token), when this is one.
    run: Option<SyncRun>,
    /// The lock files of the person's repository sync's commands take.
    locks: Option<Locks>,
}

/// Lock files git takes in the person's repository for sync's commands.
pub(super) struct Locks {
    /// The ref the fetched log is kept under here.
    tracking: PathBuf,
    config: PathBuf,
}

impl Repo {
    pub(super) fn open(dir: &Path, timeout: Duration) -> Result<Repo, SyncError> {
        let probe = Repo {
            top: dir.to_path_buf(),
            dir_path: String::new(),
            log_path: String::new(),
            timeout,
            run: None,
            locks: None,
        };
        let not_a_repository = || SyncError::NotARepository {
            dir: dir.display().to_string(),
        };
        let top = probe
            .git(&["rev-parse", "--show-toplevel"])
            .map_err(|_| not_a_repository())?;
        let top = PathBuf::from(top.trim_end_matches('\n'));
        if top.as_os_str().is_empty() {
            return Err(not_a_repository());
        }
        let top = top.canonicalize().unwrap_or(top);
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let relative = dir.strip_prefix(&top).unwrap_or(Path::new(""));
        let dir_path = relative.to_string_lossy().into_owned();
        if dir_path.contains(['\n', '\r']) {
            return Err(SyncError::Git {
                command: "rev-parse --show-toplevel".into(),
                message: format!(
                    "the huddle directory {dir_path:?} has a line break in its path, \
                     which git's attribute and ignore files cannot name; rename it"
                ),
            });
        }
        let log_path = relative.join(LOG_FILE).to_string_lossy().into_owned();
        Ok(Repo {
            top,
            dir_path,
            log_path,
            timeout,
            run: None,
            locks: None,
        })
    }

    /// Starts a sync: takes the repository's sync lock and recovers from a
    /// sync that died (see `recover`).
    pub(super) fn start_sync(&mut self, config: &SyncConfig) -> Result<(), SyncError> {
        let names = [
            format!("{}.lock", tracking_ref(&config.remote, &config.branch)),
            "config.lock".to_string(),
            // Where versions before the segmented log kept private indexes.
            "huddle-sync.index".to_string(),
        ];
        let mut args = vec![
            "rev-parse",
            "--path-format=absolute",
            "--git-dir",
            "--git-common-dir",
        ];
        for name in &names {
            args.extend(["--git-path", name]);
        }
        let out = self.git(&args)?;
        let canonical = |path: &str| {
            let path = PathBuf::from(path);
            path.canonicalize().unwrap_or(path)
        };
        let paths: Vec<PathBuf> = out.lines().map(canonical).collect();
        let [git_dir, common_dir, tracking, config_lock, private] = <[PathBuf; 5]>::try_from(paths)
            .map_err(|paths| SyncError::Git {
                command: args.join(" "),
                message: format!("expected 5 paths, got {paths:?}"),
            })?;
        let places = Places {
            common_dir,
            git_dir,
            private_dir: private.parent().unwrap_or(&self.top).to_path_buf(),
            top: self.top.clone(),
        };
        self.locks = Some(Locks {
            tracking,
            config: config_lock,
        });
        self.run = Some(SyncRun::begin(&places, self.timeout)?);
        Ok(())
    }

    /// Runs a git command that may take the person's `locks`, recording it
    /// in the sync's journal first, so that if this sync dies the next one
    /// knows which locks the command could have left.
    fn git_taking(
        &self,
        locks: impl Fn(&Locks) -> Vec<&Path>,
        args: &[&str],
    ) -> Result<String, Failed> {
        self.git_taking_also_in(locks, None, args)
    }

    /// `git_taking`, for a command whose other side may also take a lock in
    /// a repository on this machine (a push's receiving side).
    fn git_taking_also_in(
        &self,
        locks: impl Fn(&Locks) -> Vec<&Path>,
        remote: Option<&LocalRemote>,
        args: &[&str],
    ) -> Result<String, Failed> {
        let (Some(run), Some(all)) = (&self.run, &self.locks) else {
            return self.git(args);
        };
        let mut taken = locks(all);
        let mut remote_roots: &[PathBuf] = &[];
        if let Some(remote) = remote {
            taken.push(&remote.log_lock);
            remote_roots = &remote.roots;
        }
        run.starting(&args.join(" "), &taken, remote_roots)
            .map_err(|error| Failed {
                command: args.join(" "),
                message: error.to_string(),
                timed_out: false,
            })?;
        let result = self.git(args);
        run.finished(result.as_ref().is_err_and(|failed| failed.timed_out));
        result
    }

    /// Runs git in the work tree, with prompts off and a timeout. `Err` only
    /// when it could not run or timed out; a non-zero exit is in `Ran`.
    fn run(
        &self,
        args: &[&str],
        env: &[(&str, &OsStr)],
        stdin: Option<Vec<u8>>,
    ) -> Result<Ran, Failed> {
        let shown = args.join(" ");
        let failed = |message: String| Failed {
            command: shown.clone(),
            message,
            timed_out: false,
        };
        let mut command = Command::new("git");
        // No automatic gc or maintenance: it would run detached, outlive the
        // sync, and hold locks a later sync must not take for stale.
        command
            .current_dir(&self.top)
            .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_LITERAL_PATHSPECS", "1")
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(run) = &self.run {
            command.env(TOKEN_VARIABLE, &run.token);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
        // Feed and read while waiting (a full pipe would stall git). The
        // timeout counts from git's last output, not from its start: a
        // fetch of a large log that keeps reporting progress is working,
        // one that says nothing for the whole timeout is stuck.
        let pid = child.id();
        let started = Instant::now();
        let last_output = Arc::new(AtomicU64::new(0));
        let touch = {
            let last_output = last_output.clone();
            move || last_output.store(started.elapsed().as_millis() as u64, Ordering::Relaxed)
        };
        let input = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let feeder = std::thread::spawn(move || {
                if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
                    // A git that exits early closes the pipe; its exit status says why.
                    let _ = pipe.write_all(&bytes);
                }
            });
            let errors = {
                let touch = touch.clone();
                std::thread::spawn(move || read_touching(stderr, touch))
            };
            let out = read_touching(stdout, touch);
            let err = errors.join().unwrap_or_default();
            let _ = feeder.join();
            let _ = tx.send(child.wait().map(|status| (status, out, err)));
        });
        let (status, stdout, stderr) = loop {
            let idle = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last_output.load(Ordering::Relaxed)));
            match rx.recv_timeout(self.timeout.saturating_sub(idle)) {
                Ok(result) => break result.map_err(|e| failed(e.to_string()))?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let idle = started
                        .elapsed()
                        .saturating_sub(Duration::from_millis(last_output.load(Ordering::Relaxed)));
                    if idle < self.timeout {
                        continue;
                    }
                    // SAFETY: signals the git process we started; the waiting
                    // thread has not reaped it, since it has not finished.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    return Err(Failed {
                        timed_out: true,
                        ..failed(format!(
                            "timed out: no word from git for {:?}",
                            self.timeout
                        ))
                    });
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(failed("the thread waiting for git ended".into()))
                }
            }
        };
        let out = std::process::Output {
            status,
            stdout,
            stderr,
        };
        Ok(Ran {
            code: out.status.code(),
            stderr: {
                let message = without_progress(&String::from_utf8_lossy(&out.stderr));
                if message.is_empty() {
                    out.status.to_string()
                } else {
                    message
                }
            },
            stdout: out.stdout,
        })
    }

    /// Runs git; its stdout if it succeeded.
    fn git_bytes(
        &self,
        args: &[&str],
        env: &[(&str, &OsStr)],
        stdin: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Failed> {
        let ran = self.run(args, env, stdin)?;
        if ran.code == Some(0) {
            Ok(ran.stdout)
        } else {
            Err(Failed {
                command: args.join(" "),
                message: ran.stderr,
                timed_out: false,
            })
        }
    }

    pub(super) fn git(&self, args: &[&str]) -> Result<String, Failed> {
        self.git_bytes(args, &[], None)
            .map(|out| String::from_utf8_lossy(&out).into_owned())
    }

    /// Stdout of a command that prints one name (an object id, a path).
    fn name(&self, args: &[&str]) -> Result<String, SyncError> {
        Ok(self.git(args)?.trim_end_matches('\n').to_string())
    }

    pub(super) fn remote_error(&self, remote: &str, message: String) -> SyncError {
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

    /// Paths in the git directory, as git resolves them: per worktree or
    /// shared, wherever the git directory of a submodule or a linked
    /// worktree lives.
    fn git_paths(&self, names: &[&str]) -> Result<Vec<PathBuf>, SyncError> {
        let mut args = vec!["rev-parse", "--path-format=absolute"];
        for name in names {
            args.extend(["--git-path", name]);
        }
        let out = self.git(&args)?;
        let paths: Vec<PathBuf> = out.lines().map(PathBuf::from).collect();
        if paths.len() != names.len() {
            return Err(SyncError::Git {
                command: args.join(" "),
                message: format!("expected {} paths, got {out:?}", names.len()),
            });
        }
        Ok(paths)
    }

    pub(super) fn check_config(&self, config: &SyncConfig) -> Result<(), SyncError> {
        if config.remote.is_empty() || config.remote.starts_with('-') {
            return Err(SyncError::Config {
                field: "remote",
                value: config.remote.clone(),
                reason: "name a git remote (`git remote -v` lists them)".into(),
            });
        }
        let valid_branch = !config.branch.starts_with('-')
            && self
                .git(&["check-ref-format", &log_ref(&config.branch)])
                .is_ok()
            && self
                .git(&[
                    "check-ref-format",
                    &tracking_ref(&config.remote, &config.branch),
                ])
                .is_ok();
        if !valid_branch {
            return Err(SyncError::Config {
                field: "branch",
                value: config.branch.clone(),
                reason: "not a valid ref name (see `git check-ref-format`)".into(),
            });
        }
        Ok(())
    }

    /// The merge driver in the config, the log's attribute and the derived
    /// files' ignore rules in `info/`: all in this clone's git directory.
    pub(super) fn register(&self) -> Result<(), SyncError> {
        // The driver is the huddle executable. A program that links the
        // library (a benchmark, say) is not: it names the executable in HUDDLE_EXE.
        let exe = std::env::var_os("HUDDLE_EXE")
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "huddle".into());
        let settings = [
            (
                format!("merge.{DRIVER}.name"),
                "huddle: merge events.log by event id".to_string(),
            ),
            (
                format!("merge.{DRIVER}.driver"),
                format!("'{exe}' merge-driver %O %A %B"),
            ),
        ];
        for (key, value) in &settings {
            // Only a changed value is written: the config is the person's file too.
            let current = self.git(&["config", "--get", key]).unwrap_or_default();
            if current.trim_end_matches('\n') != value {
                self.git_taking(|locks| vec![&locks.config], &["config", key, value])?;
            }
        }
        let [attributes, exclude] =
            <[PathBuf; 2]>::try_from(self.git_paths(&["info/attributes", "info/exclude"])?)
                .map_err(|_| SyncError::Git {
                    command: "rev-parse --git-path".into(),
                    message: "expected two paths".into(),
                })?;
        let written = |path: &Path, error: std::io::Error| SyncError::Git {
            command: format!("write {}", path.display()),
            message: error.to_string(),
        };
        ensure_lines(&attributes, &[attributes_line(&self.log_path)])
            .map_err(|e| written(&attributes, e))?;
        ensure_lines(&exclude, &exclude_lines(&self.dir_path)).map_err(|e| written(&exclude, e))
    }

    /// Pushes `commit` to the log's ref on the remote; git refuses when the
    /// remote's ref is not an ancestor of it (another clone pushed first).
    /// When the remote is a repository on this machine, its receiving side
    /// (`git-receive-pack`, started by the push) takes the lock of the log's
    /// ref there: the journal records it, so that if this sync is killed
    /// together with its git commands the next sync removes it by the rule
    /// of the locks here (see `recover`), instead of every later push being
    /// refused.
    pub(super) fn push_log(
        &self,
        remote: &str,
        commit: &str,
        branch: &str,
    ) -> Result<String, Failed> {
        let local = self
            .run
            .as_ref()
            .and_then(|_| self.local_remote(remote, branch));
        self.git_taking_also_in(
            |_| Vec::new(),
            local.as_ref(),
            &[
                "push",
                "--progress",
                remote,
                &format!("{commit}:{}", log_ref(branch)),
            ],
        )
    }

    /// The remote, when its URL is a repository on this machine: where the
    /// lock of the log's ref is there, and the directories its git
    /// processes work in. `None` for a remote elsewhere, or one that cannot
    /// be read (the push then says what is wrong).
    fn local_remote(&self, remote: &str, branch: &str) -> Option<LocalRemote> {
        let url = self.git(&["ls-remote", "--get-url", remote]).ok()?;
        let path = self.top.join(local_path(url.trim_end_matches('\n'))?);
        let path = path.canonicalize().ok()?;
        let lock = format!("{}.lock", log_ref(branch));
        let out = self
            .git(&[
                "-C",
                path.to_str()?,
                "rev-parse",
                "--path-format=absolute",
                "--git-dir",
                "--git-path",
                &lock,
            ])
            .ok()?;
        let mut lines = out.lines().map(PathBuf::from);
        let (git_dir, log_lock) = (lines.next()?, lines.next()?);
        let git_dir = git_dir.canonicalize().unwrap_or(git_dir);
        let log_lock = match (log_lock.parent(), log_lock.file_name()) {
            (Some(parent), Some(name)) => parent
                .canonicalize()
                .map_or_else(|_| log_lock.clone(), |parent| parent.join(name)),
            _ => log_lock,
        };
        Some(LocalRemote {
            log_lock,
            roots: vec![path, git_dir],
        })
    }

    /// Fetches the log's ref from the remote into this clone's tracking ref;
    /// its commit, or `None` when the remote has no log yet.
    pub(super) fn fetch_log(
        &self,
        remote: &str,
        branch: &str,
    ) -> Result<Option<String>, SyncError> {
        let tracking = tracking_ref(remote, branch);
        match self.git_taking(
            |locks| vec![&locks.tracking],
            &[
                "fetch",
                "--progress",
                "--no-tags",
                remote,
                &format!("+{}:{tracking}", log_ref(branch)),
            ],
        ) {
            Ok(_) => self.resolve(&tracking),
            Err(failed) if failed.message.contains("couldn't find remote ref") => Ok(None),
            Err(failed) => Err(self.remote_error(remote, failed.message)),
        }
    }

    /// Points the tracking ref at a commit we pushed: its objects stay
    /// reachable here, and the next fetch starts from it.
    pub(super) fn track_pushed(
        &self,
        remote: &str,
        branch: &str,
        commit: &str,
    ) -> Result<(), SyncError> {
        let tracking = tracking_ref(remote, branch);
        self.git_taking(
            |locks| vec![&locks.tracking],
            &["update-ref", "-m", "huddle: pushed", &tracking, commit],
        )?;
        Ok(())
    }

    /// The commit a ref names, or `None` if there is no such ref.
    pub(super) fn resolve(&self, reference: &str) -> Result<Option<String>, SyncError> {
        let spec = format!("{reference}^{{commit}}");
        let ran = self.run(&["rev-parse", "--verify", "-q", &spec], &[], None)?;
        match ran.code {
            Some(0) => Ok(Some(
                String::from_utf8_lossy(&ran.stdout).trim().to_string(),
            )),
            Some(1) => Ok(None),
            _ => Err(SyncError::Git {
                command: format!("rev-parse --verify -q {spec}"),
                message: ran.stderr,
            }),
        }
    }

    pub(super) fn is_ancestor(&self, ancestor: &str, of: &str) -> Result<bool, SyncError> {
        let ran = self.run(&["merge-base", "--is-ancestor", ancestor, of], &[], None)?;
        match ran.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(SyncError::Git {
                command: format!("merge-base --is-ancestor {ancestor} {of}"),
                message: ran.stderr,
            }),
        }
    }

    /// The segments of the log in `commit`, in order; an error if the
    /// commit cannot be read or is not a huddle log — never "no events".
    pub(super) fn segments(&self, commit: &str) -> Result<Vec<Segment>, SyncError> {
        let unreadable = |message: String| SyncError::UnreadableLog {
            commit: commit.to_string(),
            path: "its list of segments".into(),
            message,
        };
        let listing = self
            .git_bytes(&["ls-tree", "-l", "-z", commit], &[], None)
            .map_err(|failed| unreadable(failed.message))?;
        segments::parse_listing(&listing).map_err(unreadable)
    }

    /// The bytes of one segment of the log in `commit`.
    pub(super) fn read_segment(
        &self,
        commit: &str,
        segment: &Segment,
    ) -> Result<Vec<u8>, SyncError> {
        let bytes = self
            .git_bytes(&["cat-file", "blob", &segment.blob], &[], None)
            .map_err(|failed| SyncError::UnreadableLog {
                commit: commit.to_string(),
                path: segment.name.clone(),
                message: failed.message,
            })?;
        if bytes.len() as u64 != segment.size {
            return Err(SyncError::UnreadableLog {
                commit: commit.to_string(),
                path: segment.name.clone(),
                message: format!(
                    "git gave {} bytes of a blob of {} bytes",
                    bytes.len(),
                    segment.size
                ),
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a segment named `name`.
    pub(super) fn write_segment(&self, name: String, bytes: &[u8]) -> Result<Segment, SyncError> {
        let out = self.git_bytes(&["hash-object", "-w", "--stdin"], &[], Some(bytes.to_vec()))?;
        Ok(Segment {
            name,
            blob: String::from_utf8_lossy(&out).trim().to_string(),
            size: bytes.len() as u64,
        })
    }

    /// A commit of the log made of `segments`, on `parent` (none for the
    /// first). No index is involved, the person's or a private one.
    pub(super) fn commit_segments(
        &self,
        segments: &[Segment],
        parent: Option<&str>,
        message: &str,
    ) -> Result<String, SyncError> {
        let mut listing = Vec::new();
        for segment in segments {
            listing.extend_from_slice(
                format!("{SEGMENT_MODE} blob {}\t{}\n", segment.blob, segment.name).as_bytes(),
            );
        }
        let tree = self.git_bytes(&["mktree"], &[], Some(listing))?;
        let tree = String::from_utf8_lossy(&tree).trim().to_string();
        let mut args = vec!["commit-tree", tree.as_str()];
        if let Some(parent) = parent {
            args.extend(["-p", parent]);
        }
        args.extend(["-m", message]);
        self.name(&args)
    }
}

/// A remote that is a repository on this machine (see `Repo::push_log`).
struct LocalRemote {
    /// The lock file of the log's ref in it.
    log_lock: PathBuf,
    /// Its directory and its git directory.
    roots: Vec<PathBuf>,
}

/// The path a remote's URL names when it is a repository on this machine,
/// by git's rule: a `file://` URL, or one with neither a scheme (`://`) nor
/// the `host:` of scp-like syntax before its first slash.
fn local_path(url: &str) -> Option<&str> {
    if let Some(path) = url.strip_prefix("file://") {
        return Some(path);
    }
    if url.is_empty() || url.contains("://") {
        return None;
    }
    let before_slash = url.split('/').next().unwrap_or(url);
    (!before_slash.contains(':')).then_some(url)
}

/// The ref the log travels under, on the remote and in every clone.
pub(super) fn log_ref(branch: &str) -> String {
    format!("refs/huddle/{branch}")
}

/// Where a clone keeps the log it last fetched from (or pushed to) `remote`.
pub(super) fn tracking_ref(remote: &str, branch: &str) -> String {
    format!("refs/huddle/remotes/{remote}/{branch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_of_this_machine_are_local_paths() {
        assert_eq!(local_path("/srv/team.git"), Some("/srv/team.git"));
        assert_eq!(local_path("../team.git"), Some("../team.git"));
        assert_eq!(local_path("file:///srv/team.git"), Some("/srv/team.git"));
        assert_eq!(local_path("./a:b"), Some("./a:b"));
        assert_eq!(local_path("git@example.com:team.git"), None);
        assert_eq!(local_path("example.com:/srv/team.git"), None);
        assert_eq!(local_path("https://example.com/team.git"), None);
        assert_eq!(local_path("ssh://example.com/srv/team.git"), None);
        assert_eq!(local_path(""), None);
    }

    #[test]
    fn patterns_name_exactly_the_huddle_directory() {
        assert_eq!(
            attributes_line("events.log"),
            "\"/events.log\" merge=huddle-events"
        );
        assert_eq!(
            attributes_line("team a/[x]*/\"q\"\\/events.log"),
            "\"/team a/\\\\[x]\\\\*/\\\"q\\\"\\\\\\\\/events.log\" merge=huddle-events"
        );
        assert_eq!(exclude_lines("")[0], "/events.log");
        assert_eq!(exclude_lines("")[1], "/communication.md");
        assert_eq!(exclude_lines("a b/c?")[7], "/a b/c\\?/agent-*.checkpoint");
        assert_eq!(exclude_lines("end ")[1], "/end /communication.md");
    }
}
