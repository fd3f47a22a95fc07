//! Lines written by other tools (the brief's shell appender, a git merge, a
//! hand edit) meet the rules of `huddle log` or are quarantined; and no
//! single event, foreign or not, makes a whole snapshot fail.

use std::io::Write as _;

use serde_json::{json, Value};

use crate::common::{hostile_plugin, stderr, HuddleDir};

/// Appends lines to events.log as another tool would (no lock needed: no
/// huddle process runs meanwhile).
fn append_raw(dir: &HuddleDir, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.file("events.log"))
        .expect("open events.log");
    for line in lines {
        file.write_all(line.as_bytes()).expect("append");
        file.write_all(b"\n").expect("append");
    }
}

fn foreign(interaction: Value, actor: &str, kind: &str, content: &str, timestamp: &str) -> String {
    json!({
        "interaction": interaction,
        "actor": actor,
        "type": kind,
        "content": content,
        "timestamp": timestamp,
    })
    .to_string()
}

const NOW: &str = "2026-11-25T14:00:31Z";

fn quarantined(dir: &HuddleDir) -> Vec<Value> {
    match std::fs::read(dir.file("events.error.log")) {
        Ok(bytes) => crate::common::parse_lines(&bytes),
        Err(_) => Vec::new(),
    }
}

fn read(dir: &HuddleDir, name: &str) -> String {
    std::fs::read_to_string(dir.file(name)).unwrap_or_default()
}

/// Each foreign line that breaks a rule of `huddle log`, with the field its
/// quarantine reason must name.
fn rule_breakers() -> Vec<(String, &'static str)> {
    vec![
        (
            foreign(json!(2), "Agent A", &"t".repeat(257), "long type", NOW),
            "type",
        ),
        (
            foreign(json!(2), "Agent A", &"a".repeat(65), "type over 64", NOW),
            "type",
        ),
        (foreign(json!(2), "", "note", "empty actor", NOW), "actor"),
        (
            foreign(json!(2), "   ", "note", "blank actor", NOW),
            "actor",
        ),
        (foreign(json!(2), "Agent A", "", "empty type", NOW), "type"),
        (
            foreign(json!(2), "Agent\u{0}A", "note", "NUL in actor", NOW),
            "actor",
        ),
        (
            foreign(
                json!(2),
                "Agent A\n## Interaction #999",
                "note",
                "newline in actor",
                NOW,
            ),
            "actor",
        ),
        (
            foreign(json!(2), "Agent\u{202e}A", "note", "bidi override", NOW),
            "actor",
        ),
        (
            foreign(json!(2), &"x".repeat(257), "note", "actor over 256", NOW),
            "actor",
        ),
        (
            foreign(json!(2), "Agent A", "Note", "capital type", NOW),
            "type",
        ),
        (
            foreign(json!(2), "Agent A", "note", "yesterday", "yesterday"),
            "timestamp",
        ),
        (
            foreign(json!(2), "Agent A", "note", "no time", ""),
            "timestamp",
        ),
        (
            foreign(json!(2), "Agent A", "note", "NUL\u{0}content", NOW),
            "content",
        ),
        (
            foreign(json!(u64::MAX), "Agent A", "note", "2^64 - 1", NOW),
            "interaction",
        ),
        (
            foreign(
                json!(9_007_199_254_740_992u64),
                "Agent A",
                "note",
                "2^53",
                NOW,
            ),
            "interaction",
        ),
        (
            json!({"interaction": 2, "actor": "A", "type": "heartbeat", "content": "c",
                   "timestamp": NOW, "term": 9_007_199_254_740_993u64})
            .to_string(),
            "term",
        ),
        (
            json!({"interaction": 2, "actor": "A", "type": "note", "content": "c",
                   "timestamp": NOW, "id": "x".repeat(129)})
            .to_string(),
            "id",
        ),
    ]
}

#[test]
fn foreign_lines_breaking_the_log_rules_are_quarantined_once_and_the_rest_renders() {
    let dir = HuddleDir::new();
    dir.ok(&[
        "log",
        "1",
        "Agent A",
        "question",
        "before the foreign lines",
    ]);
    // Contents that no quarantine reason could quote, to look for in the files.
    let breakers: Vec<(String, &str)> = rule_breakers()
        .into_iter()
        .enumerate()
        .map(|(i, (line, field))| {
            let mut value: Value = serde_json::from_str(&line).unwrap();
            let content = value["content"].as_str().unwrap().to_string();
            value["content"] = format!("breaker-{i}-{content}").into();
            (value.to_string(), field)
        })
        .collect();
    let lines: Vec<String> = breakers.iter().map(|(line, _)| line.clone()).collect();
    append_raw(&dir, &lines);
    append_raw(
        &dir,
        &[foreign(
            json!(3),
            "Shell Agent",
            "answer",
            "a good foreign line",
            NOW,
        )],
    );
    dir.ok(&["log", "4", "Agent B", "answer", "after the foreign lines"]);

    for _ in 0..2 {
        let out = dir.run(&["snapshot"]);
        assert!(out.status.success(), "snapshot failed: {}", stderr(&out));
    }
    let communication = read(&dir, "communication.md");
    for kept in [
        "before the foreign lines",
        "a good foreign line",
        "after the foreign lines",
    ] {
        assert!(
            communication.contains(kept),
            "{kept} missing:\n{communication}"
        );
    }
    for (line, _) in &breakers {
        let content = serde_json::from_str::<Value>(line).unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !communication.contains(&content) && !read(&dir, "archive.md").contains(&content),
            "a line breaking the rules was rendered: {line}"
        );
    }

    // Quarantined once each (two snapshots ran), with a reason naming the field.
    let entries = quarantined(&dir);
    assert_eq!(entries.len(), breakers.len(), "{entries:#?}");
    for ((line, field), entry) in breakers.iter().zip(&entries) {
        assert_eq!(entry["raw"].as_str().unwrap(), line);
        let reason = entry["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!("invalid {field}:")),
            "{line}: reason {reason:?} should name {field}"
        );
    }
    let reports = dir
        .events()
        .into_iter()
        .filter(|e| e["type"] == "error" && e["content"].as_str().unwrap().contains("Quarantined"))
        .count();
    assert_eq!(
        reports,
        breakers.len(),
        "one error event per quarantined line"
    );

    // `next` never hands out a line that breaks the rules.
    let next = dir.ok(&["next", "--agent", "reader", "--json"]);
    let contents: Vec<String> = next
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        contents.contains(&"a good foreign line".to_string()),
        "{contents:?}"
    );
    for (line, _) in &breakers {
        let content = serde_json::from_str::<Value>(line).unwrap()["content"].clone();
        assert!(
            !contents.iter().any(|c| *c == content),
            "next showed {line}"
        );
    }
}

#[test]
fn next_never_reuses_a_number_after_a_foreign_line_holding_2_to_the_64() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "5", "Agent A", "question", "q"]);
    append_raw(
        &dir,
        &[foreign(json!(u64::MAX), "Shell", "note", "huge", NOW)],
    );
    let first: u64 = dir
        .ok(&["log", "next", "Agent A", "note", "one"])
        .trim()
        .parse()
        .unwrap();
    let second: u64 = dir
        .ok(&["log", "next", "Agent A", "note", "two"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        (first, second),
        (6, 7),
        "numbers continue after 5, each once"
    );
}

#[test]
fn next_refuses_rather_than_reuses_when_numbers_run_out() {
    let dir = HuddleDir::new();
    // The largest allowed number, written by another tool.
    append_raw(
        &dir,
        &[foreign(
            json!(9_007_199_254_740_991u64),
            "Shell",
            "note",
            "last",
            NOW,
        )],
    );
    let before = dir.log_bytes();
    let out = dir.run(&["log", "next", "Agent A", "note", "one more"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no number left"), "{}", stderr(&out));
    assert_eq!(dir.log_bytes(), before, "nothing written");
}

#[test]
fn log_refuses_numbers_beyond_what_json_readers_hold_exactly() {
    let dir = HuddleDir::new();
    for number in [
        "9007199254740992",
        "18446744073709551615",
        "99999999999999999999",
    ] {
        let out = dir.run(&["log", number, "Agent A", "note", "big"]);
        assert_eq!(out.status.code(), Some(2), "{number}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("interaction") && stderr(&out).contains("9007199254740991"),
            "{number}: {}",
            stderr(&out)
        );
    }
    dir.ok(&[
        "log",
        "9007199254740991",
        "Agent A",
        "note",
        "largest allowed",
    ]);
    assert_eq!(dir.events().len(), 1);
}

#[test]
fn a_mapper_heading_over_the_limit_leaves_out_only_that_event() {
    // The stock mapper echoes a configured heading; one type gets a heading
    // of 300 bytes, over the host's limit of 256.
    let dir = HuddleDir::with_config(&format!(
        "[plugins.heading-mapper.settings]\n\"type.proposal\" = \"{}\"\n",
        "H".repeat(300)
    ));
    dir.ok(&["log", "1", "Agent A", "question", "kept question"]);
    dir.ok(&[
        "log",
        "1",
        "Agent B",
        "proposal",
        "the proposal the mapper cannot head",
    ]);
    dir.ok(&["log", "2", "Agent B", "answer", "kept answer"]);
    dir.ok(&["snapshot"]);
    let communication = read(&dir, "communication.md");
    assert!(communication.contains("kept question"), "{communication}");
    assert!(communication.contains("kept answer"), "{communication}");
    assert!(!communication.contains("the proposal the mapper cannot head"));
    let entries = quarantined(&dir);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let reason = entries[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("left out of the snapshot") && reason.contains("300 bytes"),
        "{reason}"
    );
    assert!(entries[0]["raw"]
        .as_str()
        .unwrap()
        .contains("the proposal the mapper cannot head"));
    // Reported once, however often the snapshot is regenerated.
    dir.ok(&["snapshot"]);
    assert_eq!(quarantined(&dir).len(), 1);
    let reports: Vec<Value> = dir
        .events()
        .into_iter()
        .filter(|e| e["type"] == "error" && e["content"].as_str().unwrap().contains("left out"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
}

fn use_renderer(dir: &HuddleDir, name: &str, deadline_ms: u64) {
    std::fs::write(
        dir.file("huddle.toml"),
        format!(
            "[plugins.renderer]\nplugin = {:?}\ndeadline_ms = {deadline_ms}\n[snapshot]\nk = 2\n",
            hostile_plugin(name).display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn events_a_renderer_traps_loops_or_forges_markers_on_are_left_out_and_the_rest_renders() {
    let dir = HuddleDir::new();
    use_renderer(&dir, "picky", 300);
    // Interactions 1-3 go to the archive, 4-5 to communication.md (k = 2).
    dir.ok(&["log", "1", "Agent A", "question", "archived fine"]);
    dir.ok(&["log", "1", "Agent B", "answer", "PANIC in the archive"]);
    dir.ok(&["log", "2", "Agent A", "question", "LOOP in the archive"]);
    dir.ok(&["log", "3", "Agent A", "question", "archived fine too"]);
    dir.ok(&["log", "4", "Agent A", "question", "recent fine"]);
    dir.ok(&["log", "4", "Agent B", "answer", "MARKER recent"]);
    dir.ok(&["log", "5", "Agent A", "question", "PANIC recent"]);
    dir.ok(&["log", "5", "Agent B", "answer", "recent fine too"]);
    let out = dir.run(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let communication = read(&dir, "communication.md");
    let archive = read(&dir, "archive.md");
    for kept in ["recent fine", "recent fine too"] {
        assert!(communication.contains(kept), "{kept}:\n{communication}");
    }
    for kept in ["archived fine", "archived fine too"] {
        assert!(archive.contains(kept), "{kept}:\n{archive}");
    }
    for left_out in ["PANIC", "LOOP", "MARKER"] {
        assert!(
            !communication.contains(left_out),
            "{left_out}:\n{communication}"
        );
        assert!(!archive.contains(left_out), "{left_out}:\n{archive}");
    }
    // The region is intact: exactly one pair of markers.
    assert_eq!(
        communication.matches("<!-- END COMMUNICATION -->").count(),
        1
    );
    let reasons: Vec<String> = quarantined(&dir)
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("asked to panic")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("deadline")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("marker line")),
        "{reasons:#?}"
    );
}

#[test]
fn a_renderer_that_fails_on_everything_fails_the_snapshot_and_keeps_the_files() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "q"]);
    dir.ok(&["snapshot"]);
    let communication = read(&dir, "communication.md");
    dir.ok(&["log", "2", "Agent A", "question", "q2"]);
    use_renderer(&dir, "markerline", 2000);
    let out = dir.run(&["snapshot"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("marker line"), "{}", stderr(&out));
    assert_eq!(read(&dir, "communication.md"), communication);
    assert!(
        quarantined(&dir).is_empty(),
        "nothing is blamed on the events"
    );
}

#[test]
fn events_a_mapper_heads_badly_or_miscounts_are_left_out_and_the_rest_renders() {
    let dir = HuddleDir::with_config(&format!(
        "[plugins.heading-mapper]\nplugin = {:?}\n",
        hostile_plugin("mapper-picky").display().to_string()
    ));
    dir.ok(&["log", "1", "Agent A", "question", "kept one"]);
    dir.ok(&[
        "log",
        "1",
        "Agent B",
        "answer",
        "CTRL heading with an escape sequence",
    ]);
    dir.ok(&[
        "log",
        "2",
        "Agent A",
        "question",
        "LONG heading of 300 bytes",
    ]);
    dir.ok(&["log", "2", "Agent B", "answer", "kept two"]);
    dir.ok(&[
        "log",
        "3",
        "Agent A",
        "question",
        "COUNT makes the answer one short",
    ]);
    dir.ok(&["log", "3", "Agent B", "answer", "kept three"]);
    let out = dir.run(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let communication = read(&dir, "communication.md");
    for kept in ["kept one", "kept two", "kept three"] {
        assert!(communication.contains(kept), "{kept}:\n{communication}");
    }
    for left_out in ["CTRL", "LONG", "COUNT"] {
        assert!(
            !communication.contains(left_out),
            "{left_out}:\n{communication}"
        );
    }
    assert!(
        !communication.contains('\u{1b}'),
        "no escape sequence reached the file"
    );
    let reasons: Vec<String> = quarantined(&dir)
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("control character")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("300 bytes")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("headings for")),
        "{reasons:#?}"
    );
}
