//! The log store's in-process API: batches, reading from a cursor,
//! quarantine, compare-and-append.

use std::io::Write;

use huddle::config::{Durability, LogConfig};
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{CasOutcome, EventStore, FileLog, Position, ScanItem};

use crate::common::HuddleDir;

fn store(dir: &HuddleDir) -> FileLog {
    FileLog::new(dir.path(), LogConfig::default())
}

fn note(n: u64, content: &str) -> NewEvent {
    NewEvent::new(InteractionRef::Number(n), "tester", "note", content)
}

fn append_raw(dir: &HuddleDir, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.file("events.log"))
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn scan_all(log: &FileLog) -> Vec<huddle::log::Record> {
    let mut records = Vec::new();
    log.scan(Position::START, |r| {
        records.push(r);
        Ok(())
    })
    .unwrap();
    records
}

#[test]
fn batch_is_written_in_order_and_read_back_from_a_cursor() {
    let dir = HuddleDir::new();
    let log = store(&dir);
    let first = log
        .append_batch((0..10).map(|i| note(1, &format!("a{i}"))).collect())
        .unwrap();
    assert_eq!(first.len(), 10);
    let mut reader = log.read_from(Position::START).unwrap();
    let items: Vec<_> = reader.by_ref().map(|i| i.unwrap()).collect();
    assert_eq!(items.len(), 10);
    let middle = match &items[4] {
        ScanItem::Event(record) => {
            assert_eq!(record.line, 5);
            assert_eq!(record.event.content, "a4");
            Position {
                offset: record.offset,
                line: record.line,
            }
        }
        other => panic!("{other:?}"),
    };
    let end = reader.cursor();
    log.append_batch(vec![note(2, "b0"), note(2, "b1")])
        .unwrap();
    let rest: Vec<String> = log
        .read_from(middle)
        .unwrap()
        .map(|i| match i.unwrap() {
            ScanItem::Event(r) => r.event.content,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(rest, ["a4", "a5", "a6", "a7", "a8", "a9", "b0", "b1"]);
    let after_end: Vec<_> = log.read_from(end).unwrap().map(|i| i.unwrap()).collect();
    assert_eq!(after_end.len(), 2);
}

#[test]
fn a_batch_with_one_bad_event_writes_nothing() {
    let dir = HuddleDir::new();
    let log = store(&dir);
    let err = log
        .append_batch(vec![
            note(1, "fine"),
            NewEvent::new(InteractionRef::Number(1), "", "note", "x"),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("actor"), "{err}");
    assert_eq!(dir.log_bytes(), b"");
}

#[test]
fn malformed_lines_are_quarantined_once_with_one_error_event_each() {
    let dir = HuddleDir::new();
    let log = store(&dir);
    log.append(note(1, "good one")).unwrap();
    append_raw(&dir, b"this is not json\n");
    append_raw(&dir, b"{\"interaction\":\"two\",\"actor\":\"a\",\"type\":\"t\",\"content\":\"c\",\"timestamp\":\"t\"}\n");
    log.append(note(1, "good two")).unwrap();
    append_raw(&dir, br#"{"interaction":3,"actor":"x","ty"#); // torn: sealed by the next append
    log.append(note(3, "good three")).unwrap();

    for _ in 0..3 {
        let records = scan_all(&log);
        let contents: Vec<&str> = records.iter().map(|r| r.event.content.as_str()).collect();
        assert_eq!(&contents[..3], ["good one", "good two", "good three"]);
    }
    let quarantined =
        crate::common::parse_lines(&std::fs::read(dir.file("events.error.log")).unwrap());
    assert_eq!(quarantined.len(), 3, "each bad line exactly once");
    let lines: Vec<u64> = quarantined
        .iter()
        .map(|q| q["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 5]);
    assert_eq!(quarantined[0]["raw"], "this is not json");
    // The reason names the field at fault, not only the JSON type.
    assert_eq!(
        quarantined[1]["reason"],
        "invalid interaction: must be a non-negative integer, got the string \"two\""
    );
    assert_eq!(quarantined[2]["raw"], r#"{"interaction":3,"actor":"x","ty"#);
    let offset = quarantined[0]["offset"].as_u64().unwrap();
    let bytes = dir.log_bytes();
    assert!(bytes[offset as usize..].starts_with(b"this is not json\n"));

    let errors: Vec<String> = scan_all(&log)
        .into_iter()
        .filter(|r| r.event.kind == "error")
        .map(|r| r.event.content)
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    for line in [2, 3, 5] {
        assert!(
            errors.iter().any(|e| e.contains(&format!("line {line} "))),
            "{errors:?}"
        );
    }
}

#[test]
fn concurrent_readers_quarantine_a_line_once() {
    let dir = HuddleDir::new();
    append_raw(&dir, b"garbage one\ngarbage two\n");
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let log = FileLog::new(path, LogConfig::default());
                for _ in 0..5 {
                    scan_all(&log);
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
    let quarantined =
        crate::common::parse_lines(&std::fs::read(dir.file("events.error.log")).unwrap());
    assert_eq!(quarantined.len(), 2);
    let errors = scan_all(&FileLog::new(dir.path(), LogConfig::default()))
        .into_iter()
        .filter(|r| r.event.kind == "error")
        .count();
    assert_eq!(errors, 2, "one error event per quarantined line");
}

#[test]
fn unknown_fields_survive_reading() {
    let dir = HuddleDir::new();
    append_raw(
        &dir,
        br#"{"interaction":1,"actor":"other tool","type":"note","content":"c","timestamp":"2026-01-01T00:00:00Z","priority":"high","tags":["x"]}
"#,
    );
    let records = scan_all(&store(&dir));
    let event = &records[0].event;
    assert_eq!(event.extra["priority"], "high");
    assert_eq!(event.extra["tags"], serde_json::json!(["x"]));
    assert!(event.id.is_none());
}

#[test]
fn compare_and_append_refuses_when_a_conflicting_event_is_newer_than_the_cursor() {
    let dir = HuddleDir::new();
    let log = store(&dir);
    log.append(note(1, "before")).unwrap();
    let mut reader = log.read_from(Position::START).unwrap();
    reader.by_ref().for_each(drop);
    let seen_up_to = reader.cursor();
    let claim = |term| {
        NewEvent::new(
            InteractionRef::Number(0),
            "cand",
            "leader_election",
            "claim",
        )
        .with_term(term)
    };
    let is_claim_for_1 = |e: &huddle::Event| e.kind == "leader_election" && e.term == Some(1);

    match huddle::log::append_unless(&log, seen_up_to, claim(1), &is_claim_for_1).unwrap() {
        CasOutcome::Appended(event) => assert_eq!(event.term, Some(1)),
        other => panic!("{other:?}"),
    }
    log.append(note(1, "unrelated")).unwrap();
    match huddle::log::append_unless(&log, seen_up_to, claim(1), &is_claim_for_1).unwrap() {
        CasOutcome::Conflict(events) => assert_eq!(events.len(), 1),
        other => panic!("{other:?}"),
    }
    let claims = scan_all(&log)
        .into_iter()
        .filter(|r| r.event.kind == "leader_election")
        .count();
    assert_eq!(claims, 1);
}

#[test]
fn durability_none_still_appends_whole_lines() {
    let dir = HuddleDir::new();
    let log = FileLog::new(
        dir.path(),
        LogConfig {
            durability: Durability::None,
            ..LogConfig::default()
        },
    );
    log.append_batch((0..1000).map(|i| note(i, "fast")).collect())
        .unwrap();
    assert_eq!(dir.events().len(), 1000);
}

#[test]
fn a_log_replaced_while_a_writer_waits_still_gets_the_event() {
    let dir = HuddleDir::new();
    let log = store(&dir);
    log.append(note(1, "first")).unwrap();
    // Hold the lock on the current file, then replace the file (as a tool
    // that rewrites it by rename would) while a writer waits for the lock.
    let holder = std::fs::File::open(dir.file("events.log")).unwrap();
    fs4::FileExt::lock(&holder).unwrap();
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        FileLog::new(path, LogConfig::default())
            .append(note(1, "second"))
            .unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let replacement = dir.file("events.log.new");
    std::fs::copy(dir.file("events.log"), &replacement).unwrap();
    std::fs::rename(&replacement, dir.file("events.log")).unwrap();
    drop(holder);
    writer.join().unwrap();
    let contents: Vec<String> = dir
        .events()
        .iter()
        .map(|e| e["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        contents,
        ["first", "second"],
        "the event went to the file that is there now"
    );
}
