//! git through its command line: the checks of the checkout, the files
//! sync keeps in the git directory, and the plumbing it builds commits with.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::recover::{Places, SyncRun, PRIVATE_INDEX_PREFIX, TOKEN_VARIABLE};
use super::SyncError;
use crate::backend::file::LOG_FILE;
use crate::model::config::SyncConfig;
use crate::model::names;

const DRIVER: &str = "huddle-events";
/// Files in the huddle directory that are derived per clone and never
/// committed (patterns relative to the huddle directory).
const IGNORED: &[&str] = &[
    names::COMMUNICATION_FILE,
    names::BACKUP_FILE,
    names::ARCHIVE_FILE,
    names::QUARANTINE_FILE,
    names::OFFLINE_FILE,
    names::STATE_DIR_PATTERN,
    names::CHECKPOINT_PATTERN,
    "*.log.new",
];
/// Files git keeps while an operation that owns the index is under way.
const OPERATIONS: &[(&str, &str)] = &[
    ("MERGE_HEAD", "merge"),
    ("CHERRY_PICK_HEAD", "cherry-pick"),
    ("REVERT_HEAD", "revert"),
    ("rebase-merge", "rebase"),
    ("rebase-apply", "rebase (or am)"),
];
/// The log is a plain file in every commit sync makes.
const LOG_MODE: &str = "100644";

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
    index: PathBuf,
    head: PathBuf,
    branch: PathBuf,
    tracking: PathBuf,
    config: PathBuf,
}

/// A private index in the git directory (git accepts an empty file as an
/// empty index), removed with the lock file git may leave beside it.
struct TempIndex(tempfile::NamedTempFile);

impl Drop for TempIndex {
    fn drop(&mut self) {
        let mut lock = self.0.path().as_os_str().to_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
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
            "index.lock".to_string(),
            "HEAD.lock".to_string(),
            format!("refs/heads/{}.lock", config.branch),
            format!("refs/remotes/{}/{}.lock", config.remote, config.branch),
            "config.lock".to_string(),
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
        let [git_dir, common_dir, index, head, branch, tracking, config_lock, private] =
            <[PathBuf; 8]>::try_from(paths).map_err(|paths| SyncError::Git {
                command: args.join(" "),
                message: format!("expected 8 paths, got {paths:?}"),
            })?;
        let places = Places {
            common_dir,
            git_dir,
            private_dir: private.parent().unwrap_or(&self.top).to_path_buf(),
            top: self.top.clone(),
        };
        self.locks = Some(Locks {
            index,
            head,
            branch,
            tracking,
            config: config_lock,
        });
        self.run = Some(SyncRun::begin(&places, self.timeout)?);
        Ok(())
    }

    /// Whether this sync found the journal of one that died.
    pub(super) fn recovered(&self) -> bool {
        self.run.as_ref().is_some_and(|run| run.recovered)
    }

    /// Runs a git command that may take the person's `locks`, recording it
    /// in the sync's journal first, so that if this sync dies the next one
    /// knows which locks the command could have left.
    fn git_taking(
        &self,
        locks: impl Fn(&Locks) -> Vec<&Path>,
        args: &[&str],
    ) -> Result<String, Failed> {
        let (Some(run), Some(all)) = (&self.run, &self.locks) else {
            return self.git(args);
        };
        run.starting(&args.join(" "), &locks(all))
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
        // Feed and read while waiting (a full pipe would stall git), and
        // give up after the timeout.
        let pid = child.id();
        let input = child.stdin.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
                // A git that exits early closes the pipe; its exit status says why.
                let _ = pipe.write_all(&bytes);
            }
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(self.timeout) {
            Ok(result) => result.map_err(|e| failed(e.to_string()))?,
            Err(_) => {
                // SAFETY: signals the git process we started; the waiting
                // thread has not reaped it, since it has not finished.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                return Err(Failed {
                    timed_out: true,
                    ..failed(format!("timed out after {:?}", self.timeout))
                });
            }
        };
        Ok(Ran {
            code: out.status.code(),
            stderr: {
                let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
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
                .git(&["check-ref-format", &format!("refs/heads/{}", config.branch)])
                .is_ok();
        if !valid_branch {
            return Err(SyncError::Config {
                field: "branch",
                value: config.branch.clone(),
                reason: "not a valid branch name (see `git check-ref-format`)".into(),
            });
        }
        Ok(())
    }

    /// Refuses unless `branch` is checked out with no operation under way.
    pub(super) fn check_checkout(&self, branch: &str) -> Result<(), SyncError> {
        let names: Vec<&str> = OPERATIONS.iter().map(|(name, _)| *name).collect();
        let top = self.top.display().to_string();
        for (path, (_, operation)) in self.git_paths(&names)?.iter().zip(OPERATIONS) {
            if path.exists() {
                return Err(SyncError::OperationInProgress { operation, top });
            }
        }
        let ran = self.run(&["symbolic-ref", "-q", "HEAD"], &[], None)?;
        let checked_out = match ran.code {
            Some(0) => {
                let head = String::from_utf8_lossy(&ran.stdout).trim().to_string();
                if head == format!("refs/heads/{branch}") {
                    return Ok(());
                }
                let name = head.strip_prefix("refs/heads/").unwrap_or(&head);
                format!("branch `{name}` is checked out")
            }
            Some(1) => {
                let at = self
                    .name(&["rev-parse", "--short", "HEAD"])
                    .unwrap_or_else(|_| "?".into());
                format!("HEAD is detached (at {at})")
            }
            _ => {
                return Err(SyncError::Git {
                    command: "symbolic-ref -q HEAD".into(),
                    message: ran.stderr,
                })
            }
        };
        Err(SyncError::WrongBranch {
            expected: branch.to_string(),
            checked_out,
            top,
        })
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

    /// Pushes `commit` to the remote's `branch` (git updates the
    /// remote-tracking branch on success).
    pub(super) fn push(&self, remote: &str, commit: &str, branch: &str) -> Result<String, Failed> {
        self.git_taking(
            |locks| vec![&locks.tracking],
            &[
                "push",
                "-q",
                remote,
                &format!("{commit}:refs/heads/{branch}"),
            ],
        )
    }

    /// Fetches the remote branch; its commit, or `None` if it has no such branch.
    pub(super) fn fetch(&self, remote: &str, branch: &str) -> Result<Option<String>, SyncError> {
        let tracking = format!("refs/remotes/{remote}/{branch}");
        match self.git_taking(
            |locks| vec![&locks.tracking],
            &["fetch", "-q", remote, &format!("+{branch}:{tracking}")],
        ) {
            Ok(_) => self.resolve(&tracking),
            Err(failed) if failed.message.contains("couldn't find remote ref") => Ok(None),
            Err(failed) => Err(self.remote_error(remote, failed.message)),
        }
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

    /// The log as committed in `commit`: `None` if the commit has no log;
    /// an error if it has one that cannot be read (missing object, git
    /// failing or timing out) — never "no events".
    pub(super) fn read_log(&self, commit: &str) -> Result<Option<Vec<u8>>, SyncError> {
        let unreadable = |message: String| SyncError::UnreadableLog {
            commit: commit.to_string(),
            path: self.log_path.clone(),
            message,
        };
        let listing = self
            .git_bytes(
                &["ls-tree", "-z", "--full-tree", commit, "--", &self.log_path],
                &[],
                None,
            )
            .map_err(|failed| unreadable(failed.message))?;
        let entry = listing.split(|b| *b == 0).next().unwrap_or_default();
        if entry.is_empty() {
            return Ok(None);
        }
        // "<mode> SP <type> SP <object> TAB <path>"
        let entry = String::from_utf8_lossy(entry);
        let (info, _path) = entry.split_once('\t').unwrap_or((&entry, ""));
        let fields: Vec<&str> = info.split(' ').collect();
        let [_mode, "blob", object] = fields.as_slice() else {
            return Err(unreadable(format!(
                "it is not a file in that commit ({info})"
            )));
        };
        self.git_bytes(&["cat-file", "blob", *object], &[], None)
            .map(Some)
            .map_err(|failed| unreadable(failed.message))
    }

    pub(super) fn write_blob(&self, bytes: &[u8]) -> Result<String, SyncError> {
        let out = self.git_bytes(&["hash-object", "-w", "--stdin"], &[], Some(bytes.to_vec()))?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    pub(super) fn tree(&self, commit: &str) -> Result<String, SyncError> {
        self.name(&["rev-parse", &format!("{commit}^{{tree}}")])
    }

    /// The tree of `commit`, or `None` for an unborn branch.
    pub(super) fn tree_of(&self, commit: Option<&str>) -> Result<Option<String>, SyncError> {
        commit.map(|commit| self.tree(commit)).transpose()
    }

    /// A fresh private index, with a unique name where git keeps
    /// `huddle-sync.index` for this work tree.
    fn temp_index(&self) -> Result<TempIndex, SyncError> {
        let place = self.git_paths(&["huddle-sync.index"])?.remove(0);
        let dir = place.parent().unwrap_or(&self.top);
        tempfile::Builder::new()
            .prefix(PRIVATE_INDEX_PREFIX)
            .suffix(".index")
            .tempfile_in(dir)
            .map(TempIndex)
            .map_err(|error| SyncError::Git {
                command: format!("create a private index in {}", dir.display()),
                message: error.to_string(),
            })
    }

    /// `tree` (or an empty tree) with the log replaced by `blob`, built in a
    /// private index: the person's index is not read or written.
    pub(super) fn tree_with_log(
        &self,
        tree: Option<&str>,
        blob: &str,
    ) -> Result<String, SyncError> {
        let index = self.temp_index()?;
        let env = [("GIT_INDEX_FILE", index.0.path().as_os_str())];
        match tree {
            Some(tree) => self.git_bytes(&["read-tree", tree], &env, None)?,
            None => self.git_bytes(&["read-tree", "--empty"], &env, None)?,
        };
        self.git_bytes(
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("{LOG_MODE},{blob},{}", self.log_path),
            ],
            &env,
            None,
        )?;
        let out = self.git_bytes(&["write-tree"], &env, None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    pub(super) fn commit_tree(
        &self,
        tree: &str,
        parents: &[&str],
        message: &str,
    ) -> Result<String, SyncError> {
        let mut args = vec!["commit-tree", tree];
        for parent in parents {
            args.extend(["-p", parent]);
        }
        args.extend(["-m", message]);
        self.name(&args)
    }

    /// Whether going from tree `from` (`None`: nothing) to `to` changes the
    /// log and nothing else.
    pub(super) fn changes_only_log(
        &self,
        from: &Option<String>,
        to: &str,
    ) -> Result<bool, SyncError> {
        let paths = match from {
            Some(from) => self.git_bytes(
                &[
                    "diff-tree",
                    "-r",
                    "-z",
                    "--name-only",
                    "--no-renames",
                    from,
                    to,
                ],
                &[],
                None,
            )?,
            None => self.git_bytes(&["ls-tree", "-r", "-z", "--name-only", to], &[], None)?,
        };
        Ok(paths
            .split(|b| *b == 0)
            .filter(|path| !path.is_empty())
            .all(|path| path == self.log_path.as_bytes()))
    }

    /// The tree of a three-way merge of the two commits, written without
    /// touching the work tree or the index. A conflict in the log does not
    /// matter (the caller replaces it); one anywhere else is the person's.
    pub(super) fn merge_trees(
        &self,
        ours: &str,
        theirs: &str,
        branch: &str,
    ) -> Result<String, SyncError> {
        let args = [
            "merge-tree",
            "--write-tree",
            "--name-only",
            "-z",
            "--allow-unrelated-histories",
            ours,
            theirs,
        ];
        let ran = self.run(&args, &[], None)?;
        if !matches!(ran.code, Some(0 | 1)) {
            return Err(SyncError::Git {
                command: args.join(" "),
                message: ran.stderr,
            });
        }
        // "<tree> NUL (<conflicted path> NUL)* NUL <messages>"
        let mut fields = ran.stdout.split(|b| *b == 0);
        let tree = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        let conflicts: Vec<String> = fields
            .take_while(|path| !path.is_empty())
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .filter(|path| *path != self.log_path)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !conflicts.is_empty() {
            return Err(SyncError::Conflict {
                branch: branch.to_string(),
                paths: conflicts.join(", "),
            });
        }
        if ran.code == Some(1) && tree.is_empty() {
            return Err(SyncError::Git {
                command: args.join(" "),
                message: ran.stderr,
            });
        }
        Ok(tree)
    }
}

/// The checked-out sync branch.
pub(super) struct Branch<'a> {
    pub(super) repo: &'a Repo,
    pub(super) reference: &'a str,
}

impl Branch<'_> {
    /// Moves the branch from `old` (`None`: it must not exist yet) to `new`,
    /// and the person's index entry for the log with it. `false` if the
    /// branch moved meanwhile (the person committed): nothing changed.
    pub(super) fn advance(&self, new: &str, old: Option<&str>) -> Result<bool, SyncError> {
        if old == Some(new) {
            return Ok(true);
        }
        let args = [
            "update-ref",
            "-m",
            "huddle sync",
            self.reference,
            new,
            old.unwrap_or(""),
        ];
        if let Err(failed) = self
            .repo
            .git_taking(|locks| vec![&locks.branch, &locks.head], &args)
        {
            return if self.repo.resolve(self.reference)?.as_deref() != old {
                Ok(false)
            } else {
                Err(failed.into())
            };
        }
        self.follow_index(new);
        Ok(true)
    }

    /// [`Branch::follow_index`] if the index entry for the log is not the
    /// log of `commit`: a sync killed between moving the branch and the
    /// entry left it behind.
    pub(super) fn follow_index_if_behind(&self, commit: &str) -> Result<(), SyncError> {
        let repo = self.repo;
        let blob = |spec: String| -> Result<Option<String>, SyncError> {
            let ran = repo.run(&["rev-parse", "--verify", "-q", &spec], &[], None)?;
            Ok((ran.code == Some(0))
                .then(|| String::from_utf8_lossy(&ran.stdout).trim().to_string()))
        };
        let committed = blob(format!("{commit}:{}", repo.log_path))?;
        if committed.is_some() && blob(format!(":{}", repo.log_path))? != committed {
            self.follow_index(commit);
        }
        Ok(())
    }

    /// Points the person's index entry for the log at the log of `commit`
    /// (where the branch now is), so `git status` and `git commit` see the
    /// branch's log and not an older one. Only that entry changes. A failure
    /// (the person's git holds the index lock) costs nothing but a stale
    /// entry: it is reported, not fatal.
    pub(super) fn follow_index(&self, commit: &str) {
        let repo = self.repo;
        let spec = format!("{commit}:{}", repo.log_path);
        let result = repo
            .name(&["rev-parse", "--verify", "-q", &spec])
            .and_then(|blob| {
                repo.git_taking(
                    |locks| vec![&locks.index],
                    &[
                        "update-index",
                        "--add",
                        "--cacheinfo",
                        &format!("{LOG_MODE},{blob},{}", repo.log_path),
                    ],
                )
                .map_err(SyncError::from)
            });
        if let Err(error) = result {
            tracing::warn!(%error, "the index entry of {} still shows the previous commit's log", repo.log_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(exclude_lines("")[0], "/communication.md");
        assert_eq!(exclude_lines("a b/c?")[6], "/a b/c\\?/agent-*.checkpoint");
        assert_eq!(exclude_lines("end ")[0], "/end /communication.md");
    }
}
