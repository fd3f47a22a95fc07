//! The backend conformance suite (`huddle::backend::conformance`), run
//! against every backend: the file log, the in-memory log, and the
//! in-memory log behind the pause and offline queue wrapper.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use huddle::backend::conformance::{self, Harness};
use huddle::backend::memory::MemoryLog;
use huddle::backend::queue::Queued;
use huddle::config::LogConfig;
use huddle::log::{FileLog, LOG_FILE, QUARANTINE_FILE};

struct Files {
    root: tempfile::TempDir,
    made: AtomicUsize,
}

impl Files {
    fn new() -> Files {
        Files {
            root: tempfile::tempdir().expect("temporary directory"),
            made: AtomicUsize::new(0),
        }
    }
}

impl Harness for Files {
    type Log = FileLog;

    fn create(&self) -> FileLog {
        let dir: PathBuf = self
            .root
            .path()
            .join(format!("log{}", self.made.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).expect("create the log's directory");
        FileLog::new(dir, LogConfig::default())
    }

    fn reopen(&self, log: &FileLog) -> FileLog {
        FileLog::new(log.dir(), log.config().clone())
    }

    fn append_foreign(&self, log: &FileLog, entry: &[u8]) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log.dir().join(LOG_FILE))
            .expect("open the log as a shell appender does");
        file.write_all(&[entry, b"\n"].concat())
            .expect("append a foreign line");
    }

    fn quarantined(&self, log: &FileLog) -> usize {
        std::fs::read_to_string(log.dir().join(QUARANTINE_FILE))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

struct Memory;

impl Harness for Memory {
    type Log = MemoryLog;

    fn create(&self) -> MemoryLog {
        MemoryLog::new()
    }

    fn reopen(&self, log: &MemoryLog) -> MemoryLog {
        log.clone()
    }

    fn append_foreign(&self, log: &MemoryLog, entry: &[u8]) {
        log.append_raw(entry);
    }

    fn quarantined(&self, log: &MemoryLog) -> usize {
        log.quarantined().len()
    }
}

macro_rules! suite {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn keeps_order_and_reads_back_from_every_position() {
                conformance::order(&$harness);
            }

            #[test]
            fn concurrent_writers_land_exactly_once_and_next_never_repeats() {
                conformance::exactly_once_under_concurrent_writers(&$harness);
            }

            #[test]
            fn of_racing_compare_and_appends_exactly_one_wins() {
                conformance::compare_and_append_races(&$harness);
            }

            #[test]
            fn a_saved_position_resumes_after_a_restart_and_news_arrives() {
                conformance::resume_from_a_saved_position_after_a_restart(&$harness);
            }

            #[test]
            fn malformed_entries_are_set_aside_once_and_never_numbered() {
                conformance::malformed_entries_are_quarantined(&$harness);
            }
        }
    };
}

suite!(file, Files::new());
suite!(memory, Memory);

/// The in-memory log behind the pause and offline queue wrapper: the
/// wrapper must be invisible while nothing is paused or refused.
struct QueuedMemory {
    root: tempfile::TempDir,
    made: AtomicUsize,
}

impl QueuedMemory {
    fn new() -> QueuedMemory {
        QueuedMemory {
            root: tempfile::tempdir().expect("temporary directory"),
            made: AtomicUsize::new(0),
        }
    }
}

impl Harness for QueuedMemory {
    type Log = Queued<MemoryLog>;

    fn create(&self) -> Queued<MemoryLog> {
        let dir = self
            .root
            .path()
            .join(format!("dir{}", self.made.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).expect("create the queue's directory");
        Queued::new(MemoryLog::new(), dir)
    }

    fn reopen(&self, log: &Queued<MemoryLog>) -> Queued<MemoryLog> {
        Queued::new(log.inner().clone(), log.dir())
    }

    fn append_foreign(&self, log: &Queued<MemoryLog>, entry: &[u8]) {
        log.inner().append_raw(entry);
    }

    fn quarantined(&self, log: &Queued<MemoryLog>) -> usize {
        log.inner().quarantined().len()
    }
}

suite!(queued_memory, QueuedMemory::new());
