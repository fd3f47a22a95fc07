//! `huddle next` and `huddle status` read only what is new, through caches
//! in `.huddle/` (the interaction index, the status read model). Whatever
//! the caches hold — kept, deleted, damaged, or built from a log that was
//! since replaced — the answers are those of a full read of the log.

use serde_json::Value;

use crate::common::HuddleDir;

/// The ids `huddle next --json` prints, in order.
fn next_ids(dir: &HuddleDir, agent: &str) -> Vec<String> {
    let out = dir.ok(&["next", "--agent", agent, "--json"]);
    out.lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("next --json prints JSON lines");
            event["id"].as_str().expect("id").to_string()
        })
        .collect()
}

/// What a full read says `huddle next` must print: every event of an
/// interaction above `acked`, in log order (none of these types is hidden).
fn expected_ids(dir: &HuddleDir, acked: Option<u64>) -> Vec<String> {
    dir.events()
        .into_iter()
        .filter(|e| acked.is_none_or(|n| e["interaction"].as_u64().expect("number") > n))
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

fn status_events(dir: &HuddleDir) -> u64 {
    let status: Value =
        serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status --json is JSON");
    status["events"].as_u64().expect("events")
}

/// A small xorshift generator: the test prints its seed on failure.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn next_after_an_ack_prints_every_later_interactions_events_in_log_order_however_numbers_arrive() {
    let dir = HuddleDir::new();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut acked = None;
    for round in 0..16 {
        // Numbers arrive in any order: new ones, late ones for old interactions, `next`.
        for _ in 0..4 {
            let number = match random.below(4) {
                0 => "next".to_string(),
                1 => (random.below(3) + 1).to_string(),
                _ => (random.below(20) + 1).to_string(),
            };
            dir.ok(&["log", &number, "Agent A", "note", &format!("round {round}")]);
        }
        if random.below(3) == 0 {
            // Near the highest number, where the index's places are.
            let highest = dir
                .events()
                .iter()
                .filter_map(|e| e["interaction"].as_u64())
                .max()
                .unwrap_or(0);
            let n = highest.saturating_sub(random.below(4));
            dir.ok(&["ack", "--agent", "a", &n.to_string()]);
            acked = Some(n);
        }
        assert_eq!(
            next_ids(&dir, "a"),
            expected_ids(&dir, acked),
            "round {round}, acked {acked:?}"
        );
    }
}

#[test]
fn the_interaction_index_deleted_damaged_or_built_from_a_replaced_log_gives_the_same_answers() {
    let dir = HuddleDir::new();
    for n in [1, 2, 3, 4, 5, 6] {
        dir.ok(&[
            "log",
            &n.to_string(),
            "Agent A",
            "note",
            &format!("event {n}"),
        ]);
    }
    dir.ok(&["ack", "--agent", "a", "3"]);
    assert_eq!(next_ids(&dir, "a"), expected_ids(&dir, Some(3)));

    // Deleted.
    std::fs::remove_file(dir.file(".huddle/interactions.idx")).expect("the index exists");
    std::fs::remove_file(dir.file(".huddle/interactions.json")).expect("its header exists");
    assert_eq!(next_ids(&dir, "a"), expected_ids(&dir, Some(3)));

    // Damaged: the records cut short, the header garbage.
    let records = dir.file(".huddle/interactions.idx");
    let len = std::fs::metadata(&records).expect("index").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&records)
        .and_then(|f| f.set_len(len / 2 + 3))
        .expect("cut the index");
    assert_eq!(next_ids(&dir, "a"), expected_ids(&dir, Some(3)));
    std::fs::write(dir.file(".huddle/interactions.json"), b"{ not json").expect("header");
    assert_eq!(next_ids(&dir, "a"), expected_ids(&dir, Some(3)));

    // The log replaced by a shorter, different one (a checkout, a restore).
    let other = HuddleDir::new();
    for n in [9, 1, 8] {
        other.ok(&[
            "log",
            &n.to_string(),
            "Agent B",
            "note",
            &format!("other {n}"),
        ]);
    }
    std::fs::copy(other.file("events.log"), dir.file("events.log.new")).expect("copy");
    std::fs::rename(dir.file("events.log.new"), dir.file("events.log")).expect("replace");
    let after = next_ids(&dir, "a");
    assert_eq!(after, expected_ids(&dir, Some(3)));
    assert_eq!(after.len(), 2, "interactions 9 and 8 of the new log");

    // And then it grows again.
    dir.ok(&["log", "2", "Agent A", "note", "late"]);
    dir.ok(&["log", "10", "Agent A", "note", "new"]);
    assert_eq!(next_ids(&dir, "a"), expected_ids(&dir, Some(3)));
}

#[test]
fn status_counts_what_a_full_read_counts_with_its_model_kept_deleted_damaged_or_stale() {
    let dir = HuddleDir::new();
    for i in 0..5 {
        dir.ok(&["log", "next", "Agent A", "note", &format!("{i}")]);
    }
    assert_eq!(status_events(&dir), 5);
    dir.ok(&["heartbeat", "Agent B"]);
    dir.ok(&["log", "1", "Agent C", "error", "boom"]);
    assert_eq!(status_events(&dir), 7);
    let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).expect("JSON");
    let actors: Vec<&str> = status["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .map(|a| a["actor"].as_str().expect("actor"))
        .collect();
    assert_eq!(actors, ["Agent A", "Agent B", "Agent C"]);
    assert_eq!(status["last_errors"][0]["content"], "boom");

    std::fs::remove_file(dir.file(".huddle/status-model.json")).expect("the model exists");
    assert_eq!(status_events(&dir), 7);
    std::fs::write(dir.file(".huddle/status-model.json"), b"\x00garbage").expect("damage");
    assert_eq!(status_events(&dir), 7);

    // Replaced by a shorter log: the count is the new log's.
    let other = HuddleDir::new();
    other.ok(&["log", "1", "Agent D", "note", "only"]);
    std::fs::copy(other.file("events.log"), dir.file("events.log.new")).expect("copy");
    std::fs::rename(dir.file("events.log.new"), dir.file("events.log")).expect("replace");
    assert_eq!(status_events(&dir), 1);
    dir.ok(&["log", "2", "Agent D", "note", "two"]);
    assert_eq!(status_events(&dir), 2);
}

#[test]
fn concurrent_next_calls_all_print_the_same_unread_events() {
    let dir = HuddleDir::new();
    for n in 1..=30 {
        dir.ok(&["log", &n.to_string(), "Agent A", "note", "x"]);
    }
    dir.ok(&["ack", "--agent", "a", "10"]);
    let expected = expected_ids(&dir, Some(10));
    // No index yet: eight readers build it at once.
    let answers: Vec<Vec<String>> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| next_ids(&dir, "a")))
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    for answer in answers {
        assert_eq!(answer, expected);
    }
}

#[test]
fn status_counts_the_events_the_snapshot_lacks_and_says_up_to_date_once_it_has_them() {
    let dir = HuddleDir::new();
    let snapshot = |dir: &HuddleDir| -> Value {
        let status: Value =
            serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status --json is JSON");
        status["snapshot"].clone()
    };
    dir.ok(&["log", "next", "alice", "question", "ready?"]);
    assert_eq!(
        snapshot(&dir)["events_behind"],
        Value::Null,
        "never snapshotted"
    );
    dir.ok(&["snapshot"]);
    assert_eq!(snapshot(&dir)["events_behind"], 0);
    assert!(dir.ok(&["status"]).contains("snapshot: up to date"));
    for content in ["one", "two", "three"] {
        dir.ok(&["log", "1", "bob", "answer", content]);
    }
    let behind = snapshot(&dir);
    assert_eq!(behind["events_behind"], 3, "{behind}");
    assert!(behind["bytes_behind"].as_u64() > Some(0), "{behind}");
    let shown = dir.ok(&["status"]);
    assert!(
        shown.contains("snapshot: 3 events of the log not yet in it"),
        "{shown}"
    );
    dir.ok(&["snapshot"]);
    let caught_up = snapshot(&dir);
    assert_eq!(caught_up["events_behind"], 0, "{caught_up}");
    assert_eq!(caught_up["bytes_behind"], 0, "{caught_up}");
}
