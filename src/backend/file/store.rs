//! The file log: locked appends to `events.log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::reader::{LogReader, Malformed, Position, Record, ScanItem};
use super::{quarantine, tail, LOG_FILE, STATE_DIR};
use super::{Continuity, ReadMark};
pub use crate::backend::error::StoreError;
use crate::backend::{Backend, Conditional, Fetch, Stored, Subscription};
use crate::model::backoff::Backoff;
use crate::model::config::{Durability, LogConfig};
use crate::model::event::Event;
use std::ops::ControlFlow;

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

    /// The log's lines from `cursor`, events and malformed lines alike, as
    /// they are (nothing is set aside).
    pub fn read_from(&self, cursor: Position) -> Result<LogReader, StoreError> {
        LogReader::open(&self.path, cursor)
            .map(|reader| reader.with_max_content_bytes(self.config.max_content_bytes))
            .map_err(StoreError::io("read", &self.path))
    }

    /// Streams the log from `cursor`, sets malformed lines aside in
    /// `events.error.log` (once each, with an `error` event for each newly
    /// quarantined line, appended to this log directly) and hands every
    /// good record to `visit`. Returns the cursor to resume from.
    pub fn scan(
        &self,
        cursor: Position,
        mut visit: impl FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<Position, StoreError> {
        Backend::read(self, cursor, &mut |stored| {
            visit(Record {
                line: stored.at.line,
                offset: stored.at.offset,
                len: stored.next.offset - stored.at.offset - 1,
                event: stored.event,
            })
            .map(|()| ControlFlow::Continue(()))
        })
    }
}

impl FileLog {
    /// The write both appends share (see the module docs): a bounded wait
    /// for the lock, then under the lock `check` (a compare-and-append's
    /// condition: an answer stops the write), the write, and the sync
    /// outside the lock. Returns the answer, or how many lines went in with
    /// the file's length after them.
    fn write_guarded(
        &self,
        events: &[Event],
        flush: Flush,
        check: impl FnOnce(&LockedLog) -> Result<Option<Conditional>, StoreError>,
    ) -> Result<Result<(u64, u64), Conditional>, StoreError> {
        for event in events {
            event.check(self.config.max_content_bytes)?;
        }
        let locked = match self.lock()? {
            Ok(locked) => locked,
            Err(waited) => {
                return Err(StoreError::Busy {
                    path: self.path.clone(),
                    attempts: self.config.lock_attempts,
                    waited,
                })
            }
        };
        if let Some(answer) = check(&locked)? {
            return Ok(Err(answer));
        }
        let torn = ends_torn(&locked.file, &self.path)?;
        self.write_lines(&locked, &crate::backend::without_allocation_marks(events))?;
        let lines = u64::from(torn) + events.len() as u64;
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
        if flush == Flush::AsConfigured {
            self.sync(&file)?;
        }
        Ok(Ok((lines, len)))
    }

    /// [`Backend::append_if_head`], flushing as `flush` says.
    fn append_if_head_flushing(
        &self,
        head: Position,
        events: &[Event],
        flush: Flush,
    ) -> Result<Conditional, StoreError> {
        // The condition, under the lock: no complete line after `head` (an
        // unterminated fragment there is a dead writer's, sealed by this
        // write, and no entry). Malformed lines are left to readers to set aside.
        let written = self.write_guarded(events, flush, |locked| {
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
                    ScanItem::Malformed(_) => {}
                }
            }
            let end = reader.cursor();
            Ok((end != head).then_some(Conditional::Moved {
                events: moved,
                head: end,
            }))
        })?;
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
}

/// Whether an append waits for `log.durability`'s flush.
#[derive(Clone, Copy, PartialEq)]
enum Flush {
    AsConfigured,
    /// Entries whose loss in a crash costs nothing (see
    /// [`Backend::append_if_head_volatile`]).
    Skip,
}

impl Backend for FileLog {
    fn max_content_bytes(&self) -> usize {
        self.config.max_content_bytes
    }

    fn append_events(&self, events: &[Event]) -> Result<(), StoreError> {
        self.write_guarded(events, Flush::AsConfigured, |_| Ok(None))
            .map(drop)
    }

    fn append_if_head(&self, head: Position, events: &[Event]) -> Result<Conditional, StoreError> {
        self.append_if_head_flushing(head, events, Flush::AsConfigured)
    }

    fn append_if_head_volatile(
        &self,
        head: Position,
        events: &[Event],
    ) -> Result<Conditional, StoreError> {
        self.append_if_head_flushing(head, events, Flush::Skip)
    }

    fn read_entries(
        &self,
        from: Position,
        visit: &mut dyn FnMut(Stored) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(Position, Vec<Malformed>), StoreError> {
        let mut reader = match LogReader::open(&self.path, from) {
            Ok(reader) => reader.with_max_content_bytes(self.config.max_content_bytes),
            // No log yet: nothing to read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((from, Vec::new())),
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
        let fresh = self.set_aside(&malformed)?;
        Ok((end, fresh))
    }

    fn quarantine_report(&self, line: &Malformed) -> String {
        format!(
            "Quarantined malformed line {} of {LOG_FILE} (byte offset {}) into {}: {}",
            line.line,
            line.offset,
            quarantine::QUARANTINE_FILE,
            line.reason
        )
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

    fn set_aside(&self, entries: &[Malformed]) -> Result<Vec<Malformed>, StoreError> {
        quarantine::quarantine(&self.dir, entries).map_err(StoreError::io(
            "write",
            &self.dir.join(quarantine::QUARANTINE_FILE),
        ))
    }

    fn highest_interaction(&self) -> Result<(Position, Option<u64>), StoreError> {
        tail::highest_interaction(&self.path, &self.state_dir(), self.config.max_content_bytes)
            .map_err(StoreError::io("read", &self.path))
    }

    fn highest_interaction_near_end(&self) -> Option<u64> {
        tail::highest_near_end(&self.path, self.config.max_content_bytes)
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
