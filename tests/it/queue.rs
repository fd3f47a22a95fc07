//! The pause and offline queue wrapper around a backend other than the file
//! log (the in-memory one): while paused, appends wait in the queue and say
//! so; `resume` moves them in, in order, `next` numbered then, exactly once.

use huddle::backend::memory::MemoryLog;
use huddle::backend::queue::Queued;
use huddle::backend::{Backend, EventStore, Position};
use huddle::event::{InteractionRef, NewEvent};
use huddle::StoreError;

fn contents(log: &impl Backend) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    huddle::backend::scan(log, Position::START, |stored| {
        seen.push((stored.event.interaction, stored.event.content));
        Ok(())
    })
    .expect("read");
    seen
}

/// Removes the pause and the spool of `dir` when dropped.
struct Spool<'a>(&'a std::path::Path);

impl Drop for Spool<'_> {
    fn drop(&mut self) {
        let _ = huddle::pause::clear(self.0);
        let _ = std::fs::remove_dir_all(huddle::pause::spool_dir(self.0));
    }
}

#[test]
fn a_paused_memory_log_queues_appends_and_resume_writes_them_once_numbered_then() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let _spool = Spool(dir.path());
    let memory = MemoryLog::new();
    let log = Queued::new(memory.clone(), dir.path());
    let first = log
        .append(NewEvent::new(InteractionRef::Next, "a", "note", "first"))
        .expect("append");
    assert_eq!(first.interaction, 1);

    huddle::pause::pause(dir.path(), "test", "the disk is full").expect("pause");
    for (number, content) in [
        (InteractionRef::Next, "queued next"),
        (InteractionRef::Number(9), "queued nine"),
    ] {
        match log.append(NewEvent::new(number, "a", "note", content)) {
            Err(StoreError::Paused { reason, queue }) => {
                assert_eq!(reason, "the disk is full");
                assert_eq!(queue, dir.path().join("events.offline.log"));
            }
            other => panic!("a paused append answered {other:?}"),
        }
    }
    assert_eq!(
        contents(&memory),
        [(1, "first".to_string())],
        "nothing reached the log"
    );
    // Another writer, not paused, goes on meanwhile.
    memory
        .append(NewEvent::new(InteractionRef::Next, "b", "note", "direct"))
        .expect("append");

    huddle::pause::clear(dir.path()).expect("lift the pause");
    assert_eq!(log.flush_queues().expect("flush"), 2);
    assert_eq!(log.flush_queues().expect("flush again"), 0, "flushed twice");
    assert_eq!(
        contents(&memory),
        [
            (1, "first".to_string()),
            (2, "direct".to_string()),
            (3, "queued next".to_string()),
            (9, "queued nine".to_string()),
        ],
        "the queue in order after what was there, `next` numbered when written"
    );
    // The next append goes straight through.
    let after = log
        .append(NewEvent::new(InteractionRef::Next, "a", "note", "after"))
        .expect("append");
    assert_eq!(after.interaction, 10);
}

#[test]
fn an_append_made_while_events_wait_in_the_queue_writes_them_first() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let _spool = Spool(dir.path());
    let memory = MemoryLog::new();
    let log = Queued::new(memory.clone(), dir.path());
    huddle::pause::pause(dir.path(), "test", "read-only").expect("pause");
    let _ = log.append(NewEvent::new(
        InteractionRef::Number(1),
        "a",
        "note",
        "waited",
    ));
    huddle::pause::clear(dir.path()).expect("lift the pause");
    log.append(NewEvent::new(InteractionRef::Number(1), "a", "note", "new"))
        .expect("append");
    assert_eq!(
        contents(&memory),
        [(1, "waited".to_string()), (1, "new".to_string())]
    );
}

#[test]
fn an_election_claim_made_while_paused_is_refused_and_never_lands_later() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let _spool = Spool(dir.path());
    let memory = MemoryLog::new();
    let log = Queued::new(memory.clone(), dir.path());
    let seen = log.head().expect("head");
    huddle::pause::pause(dir.path(), "test", "read-only").expect("pause");
    let claim = NewEvent::new(
        InteractionRef::Number(0),
        "candidate",
        "leader_election",
        "claim",
    )
    .with_term(1);
    match huddle::backend::append_unless(&log, seen, claim, &|_| false) {
        Err(StoreError::PausedNotQueued { reason }) => assert_eq!(reason, "read-only"),
        other => panic!("a claim while paused answered {other:?}"),
    }
    huddle::pause::clear(dir.path()).expect("lift the pause");
    assert_eq!(
        log.flush_queues().expect("flush"),
        0,
        "the claim was queued"
    );
    assert!(contents(&memory).is_empty(), "the claim landed after all");
}
