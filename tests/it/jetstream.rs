//! The JetStream backend against a real `nats-server -js` (see `nats.rs`):
//! the conformance suite, and huddle directories on several "machines"
//! sharing one stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use huddle::backend::conformance::{self, Harness};
use huddle::backend::jetstream::JetStreamLog;
use huddle::config::{BackendConfig, BackendKind, ServerUrls};
use huddle::event::DEFAULT_MAX_CONTENT_BYTES;
use huddle::log::QUARANTINE_FILE;

use crate::common::wait_until;
use crate::nats::NatsServer;

/// How long a fresh server may take before JetStream takes a stream.
const READY: Duration = Duration::from_secs(20);

pub fn backend_config(urls: &[String], stream: &str) -> BackendConfig {
    BackendConfig {
        kind: BackendKind::Jetstream,
        url: ServerUrls::Many(urls.to_vec()),
        stream: stream.into(),
        timeout_ms: 3000,
        ..BackendConfig::default()
    }
}

/// Opens the stream, creating it, once the server's JetStream is up.
pub fn open_stream(config: &BackendConfig, dir: &std::path::Path) -> JetStreamLog {
    let log = JetStreamLog::new(config, dir, DEFAULT_MAX_CONTENT_BYTES);
    wait_until(READY, || log.ensure_stream().ok()).unwrap_or_else(|| {
        panic!(
            "JetStream did not take stream {} within {READY:?}",
            config.stream
        )
    });
    log
}

struct JetStream {
    server: NatsServer,
    root: tempfile::TempDir,
    made: AtomicUsize,
}

impl JetStream {
    fn new() -> JetStream {
        JetStream {
            server: NatsServer::start(),
            root: tempfile::tempdir().expect("temporary directory"),
            made: AtomicUsize::new(0),
        }
    }
}

impl Harness for JetStream {
    type Log = JetStreamLog;

    fn create(&self) -> JetStreamLog {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.path().join(format!("machine{n}"));
        std::fs::create_dir(&dir).expect("create the machine's directory");
        open_stream(
            &backend_config(&[self.server.url()], &format!("T{n}")),
            &dir,
        )
    }

    fn reopen(&self, log: &JetStreamLog) -> JetStreamLog {
        JetStreamLog::new(log.config(), log.dir(), DEFAULT_MAX_CONTENT_BYTES)
    }

    fn append_foreign(&self, log: &JetStreamLog, entry: &[u8]) {
        log.publish_raw(entry).expect("publish a foreign message");
    }

    fn quarantined(&self, log: &JetStreamLog) -> usize {
        std::fs::read_to_string(log.dir().join(QUARANTINE_FILE))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

mod conformance_suite {
    use super::*;

    #[test]
    fn keeps_order_and_reads_back_from_every_position() {
        conformance::order(&JetStream::new());
    }

    #[test]
    fn concurrent_writers_land_exactly_once_and_next_never_repeats() {
        conformance::exactly_once_under_concurrent_writers(&JetStream::new());
    }

    #[test]
    fn of_racing_compare_and_appends_exactly_one_wins() {
        conformance::compare_and_append_races(&JetStream::new());
    }

    #[test]
    fn a_saved_position_resumes_after_a_restart_and_news_arrives() {
        conformance::resume_from_a_saved_position_after_a_restart(&JetStream::new());
    }

    #[test]
    fn malformed_entries_are_set_aside_once_and_never_numbered() {
        conformance::malformed_entries_are_quarantined(&JetStream::new());
    }
}
