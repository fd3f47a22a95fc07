//! The file log: locked appends to `events.log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::reader::{LogReader, Malformed, Position, Record, ScanItem};
use super::{offline, quarantine, tail, LOG_FILE, OFFLINE_FILE, STATE_DIR};
use super::{Continuity, ReadMark};
use crate::backend::{Backend, Conditional, EventStore, Fetch, Stored, Subscription};
use crate::model::backoff::Backoff;
use crate::model::config::{Durability, LogConfig};
use crate::model::event::{
    types, Event, InteractionRef, NewEvent, ValidationError, HOST_ACTOR, MAX_NUMBER,
};
use std::ops::ControlFlow;

/// Why an operation on the log failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bad input; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The lock stayed taken through every attempt.
    #[error(
        "could not lock {path} after {attempts} attempts over {waited:.1?}; \
         the event was kept in {queue} and will be written by the next successful append"
    )]
    LockTimeout {
        path: PathBuf,
        attempts: u32,
        waited: Duration,
        queue: PathBuf,
    },
    /// Like `LockTimeout`, but the event could not even be queued.
    #[error("could not lock {path} after {attempts} attempts, and could not queue the event in {queue}: {source}")]
    LockTimeoutNotQueued {
        path: PathBuf,
        attempts: u32,
        queue: PathBuf,
        source: std::io::Error,
    },
    /// huddle is paused after a write error; the events were queued.
    #[error("huddle is paused ({reason}); the event was queued in {queue} and will be written after `huddle resume`")]
    Paused { reason: String, queue: PathBuf },
    /// The disk refused the write; the events were queued instead.
    #[error("cannot append to {path}: {source}; the event was kept in {queue} and will be written by the next append that succeeds (or `huddle resume`)")]
    WriteRefusedQueued {
        path: PathBuf,
        source: std::io::Error,
        queue: PathBuf,
    },
    /// An I/O operation failed; the file is left as it was before the call.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True for failures that mean the disk refuses writes (full, read-only,
    /// permission denied): the daemon pauses on these.
    pub fn is_write_refused(&self) -> bool {
        match self {
            StoreError::Io { source, .. } | StoreError::WriteRefusedQueued { source, .. } => {
                is_refusal(source)
            }
            _ => false,
        }
    }
}

/// Disk full, read-only file system, permission denied, quota — also when
/// the OS error arrives wrapped (tempfile adds the path to the errors it
/// returns, keeping only their kind and the original as the inner error).
pub fn is_refusal(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC | libc::EROFS | libc::EACCES | libc::EPERM | libc::EDQUOT)
    ) || matches!(
        error.kind(),
        ErrorKind::StorageFull
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::PermissionDenied
            | ErrorKind::QuotaExceeded
    ) || error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(is_refusal)
}

/// The append-only JSONL log of one huddle directory.
#[derive(Debug, Clone)]
pub struct FileLog {
    dir: PathBuf,
    path: PathBuf,
    config: LogConfig,
}

/// The log file, exclusively locked until dropped or unlocked.
struct LockedLog {
    file: File,
}

impl Drop for LockedLog {
    fn drop(&mut self) {
        // Closing the descriptor releases the flock anyway; this is just earlier.
        let _ = fs4::FileExt::unlock(&self.file);
    }
}

impl FileLog {
    pub fn new(dir: impl Into<PathBuf>, config: LogConfig) -> FileLog {
        let dir = dir.into();
        FileLog {
            path: dir.join(LOG_FILE),
            dir,
            config,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    fn offline_path(&self) -> PathBuf {
        self.dir.join(OFFLINE_FILE)
    }

    fn open(&self) -> Result<File, StoreError> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(StoreError::io("open", &self.path))
    }

    /// Bounded wait, bounded retries with doubling pauses.
    fn lock(&self) -> Result<Result<LockedLog, Duration>, StoreError> {
        let mut file = self.open()?;
        let started = Instant::now();
        let mut backoff = self.config.lock_backoff();
        let mut attempt = 1;
        while attempt <= self.config.lock_attempts {
            if wait_for_lock(&file, self.config.lock_timeout())
                .map_err(StoreError::io("lock", &self.path))?
            {
                // If events.log was replaced (renamed over, recreated) while we
                // waited, the lock and any write would land in a file nobody
                // reads: take the lock on the file that is there now.
                if self.is_current(&file)? {
                    return Ok(Ok(LockedLog { file }));
                }
                let _ = fs4::FileExt::unlock(&file);
                file = self.open()?;
                continue;
            }
            if attempt < self.config.lock_attempts {
                sleep(backoff.fail());
            }
            attempt += 1;
        }
        Ok(Err(started.elapsed()))
    }

    /// True if `file` is still the file at `self.path`.
    fn is_current(&self, file: &File) -> Result<bool, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let held = file
            .metadata()
            .map_err(StoreError::io("read", &self.path))?;
        Ok(match std::fs::metadata(&self.path) {
            Ok(now) => now.ino() == held.ino() && now.dev() == held.dev(),
            Err(_) => false,
        })
    }

    /// Everything an append does once the lock is held (see the module
    /// docs). Returns how many queued events went in first.
    fn write_locked(&self, locked: &LockedLog, events: &[Event]) -> Result<usize, StoreError> {
        let flushed = self.flush_offline(locked)?;
        self.write_lines(locked, &offline::without_allocation_marks(events))?;
        Ok(flushed)
    }

    /// max + 1, computed once per lock and then counted up.
    fn allocate(&self, locked: &LockedLog, next: &mut Option<u64>) -> Result<u64, StoreError> {
        let number = match *next {
            Some(n) => n,
            None => tail::max_interaction_locked(
                &locked.file,
                &self.state_dir(),
                self.config.max_content_bytes,
            )
            .map_err(StoreError::io("read", &self.path))?
            .map_or(1, |max| max + 1),
        };
        // Numbers are never reused: past the largest exact JSON integer
        // there is no next one to hand out.
        if number > MAX_NUMBER {
            return Err(StoreError::Invalid(ValidationError::new(
                "interaction",
                format!(
                    "`next` has no number left: the log already holds interaction {MAX_NUMBER} (2^53 - 1), the largest allowed"
                ),
            )));
        }
        *next = Some(number + 1);
        Ok(number)
    }

    /// One write of every line, after sealing a torn tail. On failure the file
    /// is truncated back so no partial line remains.
    fn write_lines(&self, locked: &LockedLog, events: &[Event]) -> Result<(), StoreError> {
        let mut body = Vec::with_capacity(events.len() * 256);
        for event in events {
            // Serialising strings and integers into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, event);
            body.push(b'\n');
        }
        append_sealed(&locked.file, &self.path, &body)
    }

    fn sync(&self, file: &File) -> Result<(), StoreError> {
        match self.config.durability {
            Durability::Fsync => file
                .sync_data()
                .map_err(StoreError::io("fdatasync", &self.path)),
            Durability::None => Ok(()),
        }
    }

    /// Moves queued events (the directory's queue, then the spool's) into
    /// the log before anything newer is written.
    fn flush_offline(&self, locked: &LockedLog) -> Result<usize, StoreError> {
        let mut moved = self.flush_queue(locked, &self.offline_path())?;
        moved += self.flush_queue(
            locked,
            &crate::backend::pause::spool_dir(&self.dir).join(crate::backend::pause::SPOOL_QUEUE),
        )?;
        Ok(moved)
    }

    fn flush_queue(&self, locked: &LockedLog, queue: &Path) -> Result<usize, StoreError> {
        let queue = queue.to_path_buf();
        let Some(pending) = offline::take(&queue, &self.state_dir(), &locked.file)
            .map_err(StoreError::io("read", &queue))?
        else {
            return Ok(0);
        };
        let mut next_number = None;
        let mut events = Vec::with_capacity(pending.events.len());
        for mut event in pending.events.iter().cloned() {
            if offline::needs_allocation(&event) {
                event.interaction = self.allocate(locked, &mut next_number)?;
                event.extra.remove(offline::ALLOCATE_FIELD);
            }
            events.push(event);
        }
        self.write_lines(locked, &events)?;
        // The queue may be emptied only once its events are durable here.
        locked
            .file
            .sync_data()
            .map_err(StoreError::io("fdatasync", &self.path))?;
        pending.done().map_err(StoreError::io("empty", &queue))?;
        Ok(events.len())
    }

    /// Runs `work` with the log locked: for git sync, which must commit a
    /// consistent file and append what it merged without racing appenders.
    pub fn with_lock<T>(
        &self,
        work: impl FnOnce(&LogLock<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let locked = match self.lock()? {
            Ok(locked) => locked,
            Err(waited) => {
                return Err(StoreError::Io {
                    action: "lock",
                    path: self.path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the lock stayed taken for {waited:.1?}"),
                    ),
                })
            }
        };
        work(&LogLock { log: self, locked })
    }

    /// Writes every queued event into the log (for `huddle resume`), ignoring
    /// a pause. Returns how many were moved.
    pub fn flush_queues(&self) -> Result<usize, StoreError> {
        self.with_lock(|lock| self.flush_offline(&lock.locked))
    }

    /// Keeps events in a queue: the directory's if it takes them, else the
    /// spool outside the directory. Returns the queue used.
    fn enqueue(&self, events: &[Event]) -> std::io::Result<PathBuf> {
        let local = self.offline_path();
        match offline::enqueue(&local, events) {
            Ok(()) => Ok(local),
            Err(_) => {
                let spool = crate::backend::pause::spool_dir(&self.dir);
                std::fs::create_dir_all(&spool)?;
                let queue = spool.join(crate::backend::pause::SPOOL_QUEUE);
                offline::enqueue(&queue, events)?;
                Ok(queue)
            }
        }
    }

    /// Keeps events that could not be appended, plus an `error` event saying
    /// why, in the offline queue.
    fn enqueue_after_lock_failure(&self, events: &[Event], waited: Duration) -> StoreError {
        let mut queued = events.to_vec();
        let actor = events.first().map_or(HOST_ACTOR, |e| e.actor.as_str());
        let interaction = queued.first().map_or(0, |e| e.interaction);
        queued.push(
            NewEvent::new(
                InteractionRef::Number(interaction),
                actor,
                types::ERROR,
                format!(
                    "Failed to acquire lock on {} after {} attempts over {waited:.1?}",
                    LOG_FILE, self.config.lock_attempts
                ),
            )
            .cut_to_fit()
            .fitted(self.config.max_content_bytes)
            .into_event(interaction),
        );
        match self.enqueue(&queued) {
            Ok(queue) => StoreError::LockTimeout {
                path: self.path.clone(),
                attempts: self.config.lock_attempts,
                waited,
                queue,
            },
            Err(source) => StoreError::LockTimeoutNotQueued {
                path: self.path.clone(),
                attempts: self.config.lock_attempts,
                queue: self.offline_path(),
                source,
            },
        }
    }

    /// The log's lines from `cursor`, events and malformed lines alike, as
    /// they are (nothing is set aside).
    pub fn read_from(&self, cursor: Position) -> Result<LogReader, StoreError> {
        LogReader::open(&self.path, cursor)
            .map(|reader| reader.with_max_content_bytes(self.config.max_content_bytes))
            .map_err(StoreError::io("read", &self.path))
    }

    /// Streams the log from `cursor`, sets malformed lines aside in
    /// `events.error.log` (once each, with an `error` event for each newly
    /// quarantined line) and hands every good record to `visit`. Returns the
    /// cursor to resume from.
    pub fn scan(
        &self,
        cursor: Position,
        mut visit: impl FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<Position, StoreError> {
        let mut reader = match LogReader::open(&self.path, cursor) {
            Ok(reader) => reader.with_max_content_bytes(self.config.max_content_bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cursor),
            Err(e) => return Err(StoreError::io("read", &self.path)(e)),
        };
        let mut malformed = Vec::new();
        for item in reader.by_ref() {
            match item.map_err(StoreError::io("read", &self.path))? {
                ScanItem::Event(record) => visit(record)?,
                ScanItem::Malformed(line) => malformed.push(line),
            }
        }
        self.quarantine(&malformed)?;
        Ok(reader.cursor())
    }

    /// Quarantines lines not quarantined before and logs one `error` event per
    /// newly quarantined line. Returns the newly quarantined lines.
    pub fn quarantine(&self, lines: &[Malformed]) -> Result<Vec<Malformed>, StoreError> {
        self.set_aside(lines, |line| {
            format!(
                "Quarantined malformed line {} of {LOG_FILE} (byte offset {}) into {}: {}",
                line.line,
                line.offset,
                quarantine::QUARANTINE_FILE,
                line.reason
            )
        })
    }

    /// Records lines in `events.error.log` that are not recorded there yet,
    /// and logs one `error` event, worded by `report`, per newly recorded
    /// line. Returns the newly recorded lines.
    pub fn set_aside(
        &self,
        lines: &[Malformed],
        report: impl Fn(&Malformed) -> String,
    ) -> Result<Vec<Malformed>, StoreError> {
        let fresh = quarantine::quarantine(&self.dir, lines).map_err(StoreError::io(
            "write",
            &self.dir.join(quarantine::QUARANTINE_FILE),
        ))?;
        if !fresh.is_empty() {
            let reports = fresh
                .iter()
                .map(|line| {
                    NewEvent::new(
                        InteractionRef::Number(0),
                        HOST_ACTOR,
                        types::ERROR,
                        report(line),
                    )
                    .cut_to_fit()
                })
                .collect();
            match self.append_batch(reports) {
                Ok(_) => {}
                // Queued (paused, the lock never came, the disk refused):
                // the reports reach the log with the queue. Reading must go
                // on: `huddle status` works while paused.
                Err(
                    queued @ (StoreError::Paused { .. }
                    | StoreError::LockTimeout { .. }
                    | StoreError::WriteRefusedQueued { .. }),
                ) => {
                    tracing::warn!(error = %queued, "quarantine reports queued");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(fresh)
    }
}

impl FileLog {
    /// The write both appends share (see the module docs): nothing while
    /// paused, a bounded wait for the lock (in both cases the events wait in
    /// the queue), then under the lock `check` (a compare-and-append's
    /// condition: an answer stops the write), the queue's events and these,
    /// and the sync outside the lock. Returns the answer, or how many lines
    /// went in with the file's length after them.
    fn write_guarded(
        &self,
        events: &[Event],
        check: impl FnOnce(&LockedLog) -> Result<Option<Conditional>, StoreError>,
    ) -> Result<Result<(u64, u64), Conditional>, StoreError> {
        for event in events {
            event.check(self.config.max_content_bytes)?;
        }
        if let Some(pause) = crate::backend::pause::paused(&self.dir) {
            // Paused: nothing goes to the log until `huddle resume`.
            let queue = self
                .enqueue(events)
                .map_err(StoreError::io("queue the event in", &self.offline_path()))?;
            return Err(StoreError::Paused {
                reason: pause.reason,
                queue,
            });
        }
        let attempt = self.lock().and_then(|lock| match lock {
            Ok(locked) => {
                if let Some(answer) = check(&locked)? {
                    return Ok(Err(answer));
                }
                let torn = ends_torn(&locked.file, &self.path)?;
                let flushed = self.write_locked(&locked, events)?;
                let lines = u64::from(torn) + flushed as u64 + events.len() as u64;
                Ok(Ok((locked, lines)))
            }
            Err(waited) => Err(self.enqueue_after_lock_failure(events, waited)),
        });
        let (locked, lines) = match attempt {
            Ok(Ok(written)) => written,
            Ok(Err(answer)) => return Ok(Err(answer)),
            Err(StoreError::Io {
                source,
                path,
                action,
            }) if is_refusal(&source) => {
                // Nothing reached the log: keep the events where they can wait.
                return match self.enqueue(events) {
                    Ok(queue) => Err(StoreError::WriteRefusedQueued {
                        path,
                        source,
                        queue,
                    }),
                    Err(_) => Err(StoreError::Io {
                        action,
                        path,
                        source,
                    }),
                };
            }
            Err(error) => return Err(error),
        };
        let len = locked
            .file
            .metadata()
            .map_err(StoreError::io("read", &self.path))?
            .len();
        // Unlock before the sync: concurrent writers then share one flush
        // instead of each waiting behind the other's.
        let file = locked
            .file
            .try_clone()
            .map_err(StoreError::io("sync", &self.path))?;
        drop(locked);
        self.sync(&file)?;
        Ok(Ok((lines, len)))
    }
}

impl Backend for FileLog {
    fn max_content_bytes(&self) -> usize {
        self.config.max_content_bytes
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.write_guarded(events, |_| Ok(None)).map(drop)
    }

    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError> {
        // The condition, under the lock: no complete line after `head` (an
        // unterminated fragment there is a dead writer's, sealed by this
        // write, and no entry). Malformed lines found are set aside after
        // the lock is released: setting aside appends reports.
        let mut malformed = Vec::new();
        let written = self.write_guarded(events, |locked| {
            let mut reader = LogReader::from_file(
                locked
                    .file
                    .try_clone()
                    .map_err(StoreError::io("read", &self.path))?,
                head,
            )
            .map_err(StoreError::io("read", &self.path))?
            .with_max_content_bytes(self.config.max_content_bytes);
            let mut moved = Vec::new();
            for item in reader.by_ref() {
                match item.map_err(StoreError::io("read", &self.path))? {
                    ScanItem::Event(record) => moved.push(stored(record)),
                    ScanItem::Malformed(line) => malformed.push(line),
                }
            }
            let end = reader.cursor();
            Ok((end != head).then_some(Conditional::Moved {
                events: moved,
                head: end,
            }))
        })?;
        self.quarantine(&malformed)?;
        Ok(match written {
            Err(moved) => moved,
            Ok((lines, len)) => Conditional::Appended {
                head: Position {
                    offset: len,
                    line: head.line + lines,
                },
            },
        })
    }

    fn read(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<Position, StoreError> {
        let mut reader = match LogReader::open(&self.path, from) {
            Ok(reader) => reader.with_max_content_bytes(self.config.max_content_bytes),
            // No log yet: nothing to read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(from),
            Err(e) => return Err(StoreError::io("read", &self.path)(e)),
        };
        let mut malformed = Vec::new();
        let end = loop {
            let here = reader.cursor();
            let Some(item) = reader.next() else {
                break reader.cursor();
            };
            match item.map_err(StoreError::io("read", &self.path))? {
                ScanItem::Event(record) => {
                    if visit(stored(record))?.is_break() {
                        break here;
                    }
                }
                ScanItem::Malformed(line) => malformed.push(line),
            }
        };
        self.quarantine(&malformed)?;
        Ok(end)
    }

    fn head(&self) -> Result<Position, StoreError> {
        self.highest_interaction().map(|(head, _)| head)
    }

    fn remaining(&self, from: Position) -> Result<u64, StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.len().saturating_sub(from.offset)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io("read", &self.path)(e)),
        }
    }

    fn set_aside(
        &self,
        entries: &[Malformed],
        report: &dyn Fn(&Malformed) -> String,
    ) -> Result<Vec<Malformed>, StoreError> {
        FileLog::set_aside(self, entries, report)
    }

    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError> {
        tail::highest_interaction(&self.path, &self.state_dir(), self.config.max_content_bytes)
            .map_err(StoreError::io("read", &self.path))
    }

    fn fetcher(&self) -> Result<Box<dyn Fetch + '_>, StoreError> {
        Ok(Box::new(
            super::fetch::FileFetch::open(&self.path, self.config.max_content_bytes)
                .map_err(StoreError::io("open", &self.path))?,
        ))
    }

    fn subscribe(&self) -> Result<Subscription, StoreError> {
        super::watcher::subscribe(&self.dir).map_err(|error| StoreError::Io {
            action: "watch",
            path: self.dir.clone(),
            source: std::io::Error::other(error),
        })
    }

    fn mark(&self, at: Position) -> Result<ReadMark, StoreError> {
        FileLog::mark(self, at)
    }

    fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError> {
        FileLog::continuity(self, mark)
    }
}

fn stored(record: Record) -> Stored {
    Stored {
        at: Position {
            offset: record.offset,
            line: record.line,
        },
        next: Position {
            offset: record.offset + record.len + 1,
            line: record.line + 1,
        },
        event: record.event,
    }
}

/// The log, locked (see [`FileLog::with_lock`]).
pub struct LogLock<'a> {
    log: &'a FileLog,
    locked: LockedLog,
}

impl LogLock<'_> {
    /// Appends complete lines as they are (events from another clone, with
    /// their ids and fields), in one write, durably.
    pub fn append_raw_lines(&self, lines: &[&[u8]]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        for line in lines {
            body.extend_from_slice(line);
            body.push(b'\n');
        }
        let (file, path) = (&self.locked.file, &self.log.path);
        append_sealed(file, path, &body)?;
        file.sync_data().map_err(StoreError::io("fdatasync", path))
    }
}

/// Appends `body` (complete lines) to the locked log in one write, after a
/// newline if the file ends in a torn line; on failure the file is truncated
/// back, so no partial line remains.
fn append_sealed(file: &File, path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let old_len = file.metadata().map_err(StoreError::io("read", path))?.len();
    let mut buf = Vec::with_capacity(body.len() + 1);
    if old_len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, old_len - 1)
            .map_err(StoreError::io("read", path))?;
        if last[0] != b'\n' {
            buf.push(b'\n');
        }
    }
    buf.extend_from_slice(body);
    if let Err(source) = (&mut &*file).write_all(&buf) {
        // Best effort: if even the truncate fails, the reader quarantines
        // the fragment and the next writer seals it.
        let _ = file.set_len(old_len);
        return Err(StoreError::Io {
            action: "append to",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Whether the file ends in an unterminated line (a writer died mid-line).
fn ends_torn(file: &File, path: &Path) -> Result<bool, StoreError> {
    let len = file.metadata().map_err(StoreError::io("read", path))?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)
        .map_err(StoreError::io("read", path))?;
    Ok(last[0] != b'\n')
}

/// Polls for the lock until `timeout`. flock has no timed wait, and a blocked
/// flock cannot be cancelled without signals, so we poll with short, growing pauses.
fn wait_for_lock(file: &File, timeout: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut polls = Backoff::new(Duration::from_micros(20), Duration::from_millis(2));
    loop {
        match fs4::FileExt::try_lock(file) {
            Ok(()) => return Ok(true),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        sleep(polls.fail().min(deadline - now));
    }
}
