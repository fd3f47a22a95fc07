//! `huddle snapshot` and the incremental snapshotter.

use std::io::Write;
use std::time::SystemTime;

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};
use huddle::snapshot::{snapshot_once, ArchiveWrite, Snapshotter, BEGIN_MARKER, END_MARKER};

use crate::common::{host, hostile_plugin, is_root, stderr, HuddleDir, Tmpfs};

/// Runs `huddle snapshot -k K` on `dir` with the debug log on, which must
/// succeed; returns what it logged.
fn snapshot_logging_debug(dir: &HuddleDir, k: &str) -> String {
    let out = dir
        .command(&["snapshot", "-k", k])
        .env("RUST_LOG", "huddle=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

/// An event of type `note` by "agent" in interaction `n`.
fn note(n: u64, content: String) -> NewEvent {
    NewEvent::new(InteractionRef::Number(n), "agent", "note", content)
}

fn read(dir: &HuddleDir, name: &str) -> String {
    std::fs::read_to_string(dir.file(name)).unwrap_or_default()
}

/// The text between the markers.
fn region(text: &str) -> &str {
    let start = text.find(BEGIN_MARKER).expect("BEGIN marker") + BEGIN_MARKER.len() + 1;
    let end = text.find(END_MARKER).expect("END marker");
    &text[start..end]
}

/// Interaction numbers of the headings at the start of a line.
fn headings(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .map(|n| n.parse().unwrap_or_else(|_| panic!("heading {prefix}{n}")))
        .collect()
}

fn conversation(dir: &HuddleDir, interactions: u64) {
    for n in 1..=interactions {
        dir.ok(&[
            "log",
            &n.to_string(),
            "Agent A",
            "question",
            &format!("question {n}"),
        ]);
        dir.ok(&[
            "log",
            &n.to_string(),
            "Agent B",
            "answer",
            &format!("answer {n}"),
        ]);
    }
}

#[test]
fn k_splits_recent_from_archive() {
    let dir = HuddleDir::new();
    conversation(&dir, 5);
    for (k, recent, archived) in [
        (0, vec![], vec![1, 2, 3, 4, 5]),
        (1, vec![5], vec![1, 2, 3, 4]),
        (3, vec![3, 4, 5], vec![1, 2]),
        (9, vec![1, 2, 3, 4, 5], vec![]),
    ] {
        dir.ok(&["snapshot", "-k", &k.to_string()]);
        let communication = read(&dir, "communication.md");
        assert_eq!(
            headings(region(&communication), "### Interaction #"),
            recent,
            "k={k}"
        );
        assert_eq!(
            headings(&read(&dir, "archive.md"), "## Interaction #"),
            archived,
            "k={k}"
        );
    }
    // The default K is 3, from huddle.toml.
    dir.ok(&["snapshot"]);
    assert_eq!(
        headings(region(&read(&dir, "communication.md")), "### Interaction #"),
        [3, 4, 5]
    );
    let region_text = region(&read(&dir, "communication.md")).to_string();
    assert!(
        region_text.starts_with(
            "### Interaction #3\n#### A → B\n - question 3\n#### B → A\n - answer 3\n\n"
        ),
        "{region_text}"
    );
}

#[test]
fn hidden_events_and_late_events_land_in_the_right_place() {
    let dir = HuddleDir::new();
    conversation(&dir, 4);
    dir.ok(&["log", "6", "leader", "heartbeat", "only hidden events here"]);
    dir.ok(&["snapshot", "-k", "2"]);
    assert_eq!(
        headings(region(&read(&dir, "communication.md")), "### Interaction #"),
        [3, 4]
    );
    assert!(!read(&dir, "communication.md").contains("only hidden"));
    // A late event for an archived interaction: archive.md shows it in place.
    dir.ok(&["log", "1", "Agent A", "followup", "late follow-up"]);
    dir.ok(&["snapshot", "-k", "2"]);
    let archive = read(&dir, "archive.md");
    assert_eq!(headings(&archive, "## Interaction #"), [1, 2]);
    let one = &archive[..archive.find("## Interaction #2").unwrap()];
    assert!(one.contains("late follow-up"), "{archive}");
}

#[test]
fn text_outside_the_markers_is_kept_byte_for_byte() {
    let dir = HuddleDir::new();
    conversation(&dir, 2);
    let before = "# Our notes\r\n\nDon't touch this — ünïcödé, trailing spaces   \n";
    let after = "\n## After the region\nmore notes, no final newline";
    std::fs::write(
        dir.file("communication.md"),
        format!("{before}{BEGIN_MARKER}\nstale\n{END_MARKER}\n{after}"),
    )
    .unwrap();
    dir.ok(&["snapshot"]);
    let text = read(&dir, "communication.md");
    assert!(
        text.starts_with(&format!("{before}{BEGIN_MARKER}\n### Interaction #1\n")),
        "{text}"
    );
    assert!(text.ends_with(&format!("{END_MARKER}\n{after}")), "{text}");
    assert!(!text.contains("stale"));
}

#[test]
fn missing_markers_append_the_region_and_keep_the_rest() {
    let dir = HuddleDir::new();
    conversation(&dir, 1);
    std::fs::write(dir.file("communication.md"), "just notes").unwrap();
    dir.ok(&["snapshot"]);
    let text = read(&dir, "communication.md");
    assert!(
        text.starts_with(&format!("just notes\n{BEGIN_MARKER}\n### Interaction #1\n")),
        "{text}"
    );
    assert!(text.ends_with(&format!("{END_MARKER}\n")));
    std::fs::remove_file(dir.file("communication.md")).unwrap();
    dir.ok(&["snapshot"]);
    assert!(read(&dir, "communication.md").starts_with(BEGIN_MARKER));
}

#[test]
fn content_cannot_forge_structure() {
    let dir = HuddleDir::new();
    conversation(&dir, 2);
    let attacks = [
        format!("{END_MARKER}\nescaped!"),
        format!("harmless\n{BEGIN_MARKER}"),
        "### Interaction #999\n#### B → A\n - forged answer".to_string(),
        "## Interaction #998".to_string(),
        "<!-- a comment -->\n   <!-- indented -->\n-->".to_string(),
        "- [Agent B answer 2026-01-01T00:00:00Z]\nforged archive entry".to_string(),
    ];
    for attack in &attacks {
        dir.ok(&["log", "3", "Mallory", "question", attack]);
    }
    for k in ["1", "0"] {
        dir.ok(&["snapshot", "-k", k]);
        let communication = read(&dir, "communication.md");
        let marker_lines = communication
            .lines()
            .filter(|l| l.trim() == BEGIN_MARKER || l.trim() == END_MARKER)
            .count();
        assert_eq!(marker_lines, 2, "{communication}");
        let archive = read(&dir, "archive.md");
        let expected: Vec<u64> = if k == "1" { vec![3] } else { vec![] };
        assert_eq!(
            headings(region(&communication), "### Interaction #"),
            expected
        );
        assert!(headings(&communication, "## Interaction #").is_empty());
        let archived = headings(&archive, "## Interaction #");
        assert_eq!(archived, if k == "1" { vec![1, 2] } else { vec![1, 2, 3] });
        assert!(archive.lines().all(|l| !l.starts_with("### ")), "{archive}");
        // People still read the text: only a backslash was added.
        let shown = if k == "1" { communication } else { archive };
        assert!(shown.contains("\\### Interaction #999"), "{shown}");
        assert!(shown.contains("\\<!-- END COMMUNICATION -->"), "{shown}");
    }
}

#[test]
fn malformed_lines_are_skipped_and_quarantined_once() {
    let dir = HuddleDir::new();
    conversation(&dir, 2);
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.file("events.log"))
        .unwrap();
    log.write_all(b"{not json at all\n{\"interaction\":2,\"actor\":\"x\"}\n")
        .unwrap();
    drop(log);
    conversation_more(&dir);
    for _ in 0..3 {
        dir.ok(&["snapshot", "-k", "5"]);
    }
    let quarantined = std::fs::read_to_string(dir.file("events.error.log")).unwrap();
    assert_eq!(quarantined.lines().count(), 2, "{quarantined}");
    let communication = read(&dir, "communication.md");
    assert_eq!(
        headings(region(&communication), "### Interaction #"),
        [0, 1, 2, 3]
    );
    assert_eq!(
        communication.matches("Quarantined malformed line").count(),
        2,
        "{communication}"
    );
}

fn conversation_more(dir: &HuddleDir) {
    dir.ok(&["log", "3", "Agent A", "question", "after the damage"]);
}

#[test]
fn a_second_run_changes_nothing_and_output_is_deterministic() {
    let dir = HuddleDir::new();
    conversation(&dir, 6);
    dir.ok(&["snapshot"]);
    let stamp = |name: &str| {
        std::fs::metadata(dir.file(name))
            .unwrap()
            .modified()
            .unwrap()
    };
    let (c, a): (SystemTime, SystemTime) = (stamp("communication.md"), stamp("archive.md"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = dir.ok(&["snapshot"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(stamp("communication.md"), c);
    assert_eq!(stamp("archive.md"), a);

    let other = HuddleDir::new();
    std::fs::copy(dir.file("events.log"), other.file("events.log")).unwrap();
    other.ok(&["snapshot"]);
    assert_eq!(
        read(&other, "communication.md"),
        read(&dir, "communication.md")
    );
    assert_eq!(read(&other, "archive.md"), read(&dir, "archive.md"));
}

fn use_renderer(dir: &HuddleDir, wasm: &std::path::Path) {
    std::fs::write(
        dir.file("huddle.toml"),
        format!(
            "[plugins.renderer]\nplugin = {:?}\ndeadline_ms = 300\n",
            wasm.display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn a_hostile_renderer_leaves_both_files_untouched() {
    let dir = HuddleDir::new();
    conversation(&dir, 5);
    dir.ok(&["snapshot"]);
    dir.ok(&["log", "6", "Agent A", "question", "one more"]);
    let communication = read(&dir, "communication.md");
    let archive = read(&dir, "archive.md");
    for hostile in ["loop", "panic", "badoutput", "oom"] {
        use_renderer(&dir, &hostile_plugin(hostile));
        let out = dir.run(&["snapshot"]);
        assert_eq!(out.status.code(), Some(1), "{hostile}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{hostile}.wasm")),
            "{}",
            stderr(&out)
        );
        assert_eq!(read(&dir, "communication.md"), communication, "{hostile}");
        assert_eq!(read(&dir, "archive.md"), archive, "{hostile}");
    }
    let errors = dir.events().iter().filter(|e| e["type"] == "error").count();
    assert_eq!(errors, 4, "one error event per failed snapshot");

    // A damaged communication.md is restored from the last good snapshot.
    std::fs::write(dir.file("communication.md"), "truncated by a crash").unwrap();
    use_renderer(&dir, &hostile_plugin("panic"));
    assert_eq!(dir.run(&["snapshot"]).status.code(), Some(1));
    assert_eq!(
        read(&dir, "communication.md"),
        read(&dir, "communication.md.bak")
    );
    assert!(read(&dir, "communication.md").contains("### Interaction #5"));

    // The default renderer back: the snapshot catches up.
    std::fs::write(dir.file("huddle.toml"), "").unwrap();
    dir.ok(&["snapshot"]);
    assert!(read(&dir, "communication.md").contains("one more"));
}

#[test]
fn a_full_disk_leaves_both_files_untouched() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let fs = Tmpfs::mount("256k");
    let path = fs.path.join("huddle");
    let log = FileLog::new(&path, LogConfig::default());
    huddle::workspace::init(&path).unwrap();
    let events = (1..=40)
        .flat_map(|n| {
            [
                NewEvent::new(
                    InteractionRef::Number(n),
                    "Agent A",
                    "question",
                    "q".repeat(300),
                ),
                NewEvent::new(
                    InteractionRef::Number(n),
                    "Agent B",
                    "answer",
                    "a".repeat(300),
                ),
            ]
        })
        .collect();
    log.append_batch(events).unwrap();
    snapshot_once(&path, host(), Some(3), None).unwrap();
    let communication = std::fs::read(path.join("communication.md")).unwrap();
    let archive = std::fs::read(path.join("archive.md")).unwrap();
    log.append(NewEvent::new(
        InteractionRef::Number(1),
        "Agent A",
        "followup",
        "late, forces a rewrite",
    ))
    .unwrap();
    let mut filler = std::fs::File::create(fs.path.join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    let err = snapshot_once(&path, host(), Some(3), None).unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert_eq!(
        std::fs::read(path.join("communication.md")).unwrap(),
        communication
    );
    assert_eq!(std::fs::read(path.join("archive.md")).unwrap(), archive);
    let leftovers: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

/// A small deterministic generator, so a failure can be replayed by seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn incremental_equals_cold_on_random_logs() {
    const LOGS: u64 = 100;
    // How often the incremental snapshotter took each shortcut, over all logs.
    let (mut appended, mut archive_unchanged) = (0, 0);
    for seed in 1..=LOGS {
        let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
        let incremental = HuddleDir::new();
        let log = FileLog::new(incremental.path(), LogConfig::default());
        let k = rng.below(5) as usize;
        let mut snapshotter = Snapshotter::new(incremental.path());
        let mut top = 1u64;
        let mut total = 0usize;
        let rounds = 2 + rng.below(5);
        for round in 0..rounds {
            let count = 1 + rng.below(12);
            let events: Vec<NewEvent> = (0..count)
                .map(|i| {
                    let n = match rng.below(10) {
                        0..=5 => top,
                        6 => {
                            top += 1;
                            top
                        }
                        7 => top + 1 + rng.below(3), // a gap
                        _ => 1 + rng.below(top),     // late event
                    };
                    let kind = [
                        "question",
                        "answer",
                        "followup",
                        "heartbeat",
                        "error",
                        "note",
                    ][rng.below(6) as usize];
                    let content = match rng.below(6) {
                        0 => format!("{END_MARKER}\n### Interaction #{}", rng.below(100)),
                        1 => format!("multi\nline {round}.{i}\n- [x y z]"),
                        _ => format!("event {round}.{i}"),
                    };
                    NewEvent::new(InteractionRef::Number(n), "agent", kind, content)
                })
                .collect();
            log.append_batch(events).unwrap();
            total += count as usize;
            let outcome = snapshotter.update(host(), Some(k)).unwrap();
            // The incremental path ran: it read only this round's events.
            assert_eq!(
                outcome.new_events, count as usize,
                "seed {seed}, round {round}: {outcome:?}"
            );
            match outcome.archive {
                ArchiveWrite::Appended(_) => appended += 1,
                ArchiveWrite::Unchanged => archive_unchanged += 1,
                ArchiveWrite::Rewritten => {}
            }

            let cold = HuddleDir::new();
            std::fs::copy(incremental.file("events.log"), cold.file("events.log")).unwrap();
            let cold_outcome = snapshot_once(cold.path(), host(), Some(k), None).unwrap();
            assert_eq!(
                cold_outcome.new_events, total,
                "a cold run reads everything"
            );
            for name in ["communication.md", "archive.md"] {
                assert_eq!(
                    read(&incremental, name),
                    read(&cold, name),
                    "seed {seed}, round {round}, k {k}: {name} differs"
                );
            }
        }
    }
    // The comparisons above covered appends to the archive and runs that
    // left it alone, not only rewrites.
    assert!(appended > 10, "only {appended} appends");
    assert!(
        archive_unchanged > 10,
        "only {archive_unchanged} unchanged archives"
    );
}

/// A cold run drafts archive blocks while it reads the log, a mapper batch
/// (4,096 events) at a time, and renders from the index only what no draft
/// shows whole. On a log read in several batches, where interactions get
/// events long after their draft was made, interleave, hold hidden events,
/// and one is too large to hold while reading (over 16 MiB), a cold run must
/// write what incremental runs write (they render the archive from the index).
#[test]
fn a_cold_run_that_drafts_while_reading_equals_incremental_runs() {
    let incremental = HuddleDir::new();
    let log = FileLog::new(incremental.path(), LogConfig::default());
    let k = 4;
    let mut snapshotter = Snapshotter::new(incremental.path());
    // The first run is a cold one too: keep it small, so that the archive
    // compared below is rendered from the index.
    log.append_batch(vec![NewEvent::new(
        InteractionRef::Number(1),
        "agent",
        "question",
        "first",
    )])
    .unwrap();
    snapshotter.update(host(), Some(k)).unwrap();

    let huge_content = "h".repeat(10 * 1024);
    let mut number = 1u64;
    let mut events = Vec::new();
    for i in 0..14_000u64 {
        let event = |n: u64, kind: &str, content: String| {
            NewEvent::new(InteractionRef::Number(n), "agent", kind, content)
        };
        if i % 3 == 0 {
            number += 1;
        }
        events.push(event(
            number,
            ["question", "answer", "followup"][(i % 3) as usize],
            format!("event {i}\n- item"),
        ));
        match i {
            // Late events, batches after their interaction's draft.
            _ if i % 997 == 0 && number > 3_000 => {
                events.push(event(number - 2_500, "answer", format!("late {i}")))
            }
            _ if i % 501 == 0 => events.push(event(number, "heartbeat", format!("beat {i}"))),
            // Two interactions taking turns for a while.
            6_000..=6_300 => events.push(event(100_000 + i % 2, "note", format!("turn {i}"))),
            // One interaction of 1,800 events of 10 KB (18 MiB).
            8_000..=9_799 => events.push(event(200_000, "note", format!("{i} {huge_content}"))),
            _ => {}
        }
        if events.len() >= 2_000 {
            log.append_batch(std::mem::take(&mut events)).unwrap();
            snapshotter.update(host(), Some(k)).unwrap();
        }
    }
    events.push(NewEvent::new(
        InteractionRef::Number(200_000),
        "agent",
        "answer",
        "late to the huge one",
    ));
    // The recent ones: everything above goes to the archive.
    for n in 300_000..300_005 {
        events.push(NewEvent::new(
            InteractionRef::Number(n),
            "agent",
            "question",
            "recent",
        ));
    }
    log.append_batch(events).unwrap();
    let last = snapshotter.update(host(), Some(k)).unwrap();
    assert!(last.archived > 4_000, "{last:?}");

    let archive = cold_run_writes_what_incremental_runs_wrote(&incremental, &HuddleDir::new(), k);
    for shown in [
        "late 12961",
        "turn 6299",
        "9799 hhh",
        "late to the huge one",
        "event 13000",
    ] {
        assert!(archive.contains(shown), "{shown} is not in archive.md");
    }
}

/// Copies `incremental`'s log into `cold`, runs a cold snapshot there and
/// checks that it writes the files the incremental runs wrote; returns its
/// archive.md.
fn cold_run_writes_what_incremental_runs_wrote(
    incremental: &HuddleDir,
    cold: &HuddleDir,
    k: usize,
) -> String {
    std::fs::copy(incremental.file("events.log"), cold.file("events.log")).unwrap();
    let outcome = snapshot_once(cold.path(), host(), Some(k), None).unwrap();
    assert_eq!(outcome.archive, ArchiveWrite::Rewritten);
    for name in ["communication.md", "archive.md"] {
        assert!(
            read(incremental, name) == read(cold, name),
            "{name} of the cold run differs from the incremental runs'"
        );
    }
    read(cold, "archive.md")
}

/// Interactions too large for one render call are drafted in parts while a
/// cold run reads the log. The archive template shows each part's size,
/// first entry and flags, so a part cut elsewhere or flagged wrongly changes
/// archive.md. Parts cut by entry count (20,000 events, with small
/// interactions in between), one ending exactly on a cut (16,384: the part
/// held back is the last), parts cut by size (events of 10 KB), one just
/// over the count (8,193): a cold run writes what incremental runs write.
#[test]
fn a_cold_run_that_drafts_parts_of_huge_interactions_equals_incremental_runs() {
    const PARTS_TEMPLATE: &str = concat!(
        "[plugins.renderer.settings]\n",
        "archive_template = '''\n",
        "{% if part.first %}## {{ interaction.number }}\n{% endif %}",
        "[part of {{ interaction.entries | length }} from {{ interaction.entries[0].event.content }}",
        "{% if part.last %}, last{% endif %}]\n",
        "{% for entry in interaction.entries %}{{ entry.event.content }}\n{% endfor %}",
        "'''\n",
    );
    let incremental = HuddleDir::with_config(PARTS_TEMPLATE);
    let log = FileLog::new(incremental.path(), LogConfig::default());
    let k = 4;
    let mut snapshotter = Snapshotter::new(incremental.path());
    log.append_batch(vec![note(1, "first".into())]).unwrap();
    snapshotter.update(host(), Some(k)).unwrap();

    let long = "x".repeat(10 * 1024);
    let mut events = Vec::new();
    for i in 0..20_000u64 {
        events.push(note(2, format!("a {i}")));
        if i % 1_000 == 999 {
            for j in 0..3 {
                events.push(note(10_000 + i, format!("small {i} {j}")));
            }
        }
    }
    events.extend((0..16_384u64).map(|i| note(3, format!("b {i}"))));
    events.extend((0..700u64).map(|i| note(4, format!("c {i} {long}"))));
    events.extend((0..8_193u64).map(|i| note(5, format!("e {i}"))));
    events.extend((300_000..300_005).map(|n| note(n, "recent".into())));
    for batch in events.chunks(2_000) {
        log.append_batch(batch.to_vec()).unwrap();
        snapshotter.update(host(), Some(k)).unwrap();
    }

    let cold = HuddleDir::with_config(PARTS_TEMPLATE);
    let archive = cold_run_writes_what_incremental_runs_wrote(&incremental, &cold, k);
    for part in [
        "## 2\n[part of 8192 from a 0]\n",
        "[part of 3616 from a 16384, last]\n",
        "[part of 8192 from b 8192, last]\n",
        "[part of 1 from e 8192, last]\n",
        "## 10999\n[part of 3 from small 999 0, last]\n",
    ] {
        assert!(archive.contains(part), "{part:?} is not in archive.md");
    }
    assert_eq!(
        archive.matches("from c ").count(),
        2,
        "two parts of 10 KB events"
    );
}

/// The parts of an interaction drafted in parts are checked as the whole
/// block is: here every part but the last ends in `<!-- END ` and every
/// part but the first starts with `COMMUNICATION -->`, so only the line two
/// parts share is a marker line. The render from the index leaves that
/// interaction out; the cold run, which drafts its parts while reading,
/// must too, and report it.
#[test]
fn a_marker_line_two_drafted_parts_make_together_leaves_the_interaction_out() {
    const JOINING_TEMPLATE: &str = concat!(
        "[plugins.renderer.settings]\n",
        "archive_template = '''\n",
        "{% if not part.first %}COMMUNICATION -->\n{% endif %}",
        "{% for entry in interaction.entries %}{{ entry.event.content }}\n{% endfor %}",
        "{% if not part.last %}<!-- END {% endif %}\n",
        "'''\n",
    );
    let incremental = HuddleDir::with_config(JOINING_TEMPLATE);
    let log = FileLog::new(incremental.path(), LogConfig::default());
    let k = 2;
    let mut snapshotter = Snapshotter::new(incremental.path());
    // One event, then the rest: the archive is rendered from the index.
    log.append_batch(vec![note(1, "before".into())]).unwrap();
    snapshotter.update(host(), Some(k)).unwrap();
    let mut events: Vec<NewEvent> = (0..10_000u64)
        .map(|i| note(2, format!("joined {i}")))
        .collect();
    events.extend((3..7).map(|n| note(n, format!("after {n}"))));
    log.append_batch(events).unwrap();
    snapshotter.update(host(), Some(k)).unwrap();
    let archive = read(&incremental, "archive.md");
    assert!(
        archive.contains("before\n") && archive.contains("after 3\n"),
        "{archive}"
    );
    assert!(
        !archive.contains("joined"),
        "the interaction with the marker line is shown"
    );

    let cold = HuddleDir::with_config(JOINING_TEMPLATE);
    std::fs::copy(incremental.file("events.log"), cold.file("events.log")).unwrap();
    snapshot_once(cold.path(), host(), Some(k), None).unwrap();

    let archive = read(&cold, "archive.md");
    assert!(
        archive.contains("before\n") && archive.contains("after 3\n"),
        "{archive}"
    );
    assert!(
        !archive.contains("joined"),
        "the cold run shows the interaction with the marker line"
    );
    assert!(
        archive.contains("10000 events of interaction 2")
            && archive.contains("it contains a marker line"),
        "the cold run does not report the interaction it left out: {archive}"
    );
}

/// Recent interactions too large for one render call, read back from the
/// log for communication.md, are neutralised and rendered (in parts) by the
/// render workers while the log is read (the debug log says how many). The
/// template shows each part's size, first entry and flags, and every entry:
/// parts cut by count (20,000 and exactly 16,384 events) and by size (700
/// events of 10 KB) must come out as the cut rule makes them, every event
/// once, in order, and a cold run must write what incremental runs write.
/// The log ends with interaction 1, all of it (100 KB), so the cold run
/// expects the wrong interactions to be recent (0 and 1) and drafts 1 whole
/// for communication.md: 1 must reach the archive rendered for it.
#[test]
fn huge_recent_interactions_are_rendered_in_parts_by_the_workers_while_read_back() {
    const PARTS_TEMPLATE: &str = concat!(
        "[plugins.renderer.settings]\n",
        "communication_template = '''\n",
        "{% if part.first %}## {{ interaction.number }}\n{% endif %}",
        "[part of {{ interaction.entries | length }} from {{ interaction.entries[0].event.content[:8] }}",
        "{% if part.last %}, last{% endif %}]\n",
        "{% for entry in interaction.entries %}{{ entry.event.content[:12] }}\n{% endfor %}",
        "'''\n",
    );
    let incremental = HuddleDir::with_config(PARTS_TEMPLATE);
    let log = FileLog::new(incremental.path(), LogConfig::default());
    let k = 3;
    let long = "x".repeat(10 * 1024);
    let mut events: Vec<NewEvent> = (0..20_000u64)
        .map(|i| note(2, format!("a {i:05}")))
        .collect();
    events.extend((0..16_384u64).map(|i| note(3, format!("b {i:05}"))));
    events.extend((0..700u64).map(|i| note(4, format!("c {i:05} {long}"))));
    let kilobyte = "k".repeat(1024);
    events.extend((0..100u64).map(|i| note(1, format!("late {i:03} {kilobyte}"))));
    let mut snapshotter = Snapshotter::new(incremental.path());
    for batch in events.chunks(5_000) {
        log.append_batch(batch.to_vec()).unwrap();
        snapshotter.update(host(), Some(k)).unwrap();
    }

    let cold = HuddleDir::with_config(PARTS_TEMPLATE);
    std::fs::copy(incremental.file("events.log"), cold.file("events.log")).unwrap();
    let debug_log = snapshot_logging_debug(&cold, "3");
    assert!(
        debug_log.contains("drafted the region's blocks while reading them back drafted=3 stale=3"),
        "{}",
        debug_log
    );
    let communication = read(&cold, "communication.md");
    for name in ["communication.md", "archive.md"] {
        assert!(
            read(&cold, name) == read(&incremental, name),
            "{name} of the cold run differs from the incremental runs'"
        );
    }
    let archive = read(&cold, "archive.md");
    assert!(
        archive.contains("late 099 ") && !archive.contains("[part of"),
        "interaction 1 is not in archive.md as the archive renders it"
    );
    let region = region(&communication);
    for part in [
        "## 2\n[part of 8192 from a 00000]\n",
        "[part of 8192 from a 08192]\n",
        "[part of 3616 from a 16384, last]\n",
        "## 3\n[part of 8192 from b 00000]\n",
        "[part of 8192 from b 08192, last]\n",
        "## 4\n[part of ",
    ] {
        assert!(region.contains(part), "{part:?} is not in the region");
    }
    let parts_of_4: Vec<&str> = region
        .lines()
        .filter(|line| line.starts_with("[part of ") && line.contains(" from c "))
        .collect();
    assert_eq!(parts_of_4.len(), 2, "700 events of 10 KB: {parts_of_4:?}");
    assert!(
        parts_of_4[1].ends_with(", last]") && !parts_of_4[0].ends_with(", last]"),
        "{parts_of_4:?}"
    );
    for (prefix, count) in [("a ", 20_000), ("b ", 16_384), ("c ", 700)] {
        let shown: Vec<&str> = region.lines().filter(|l| l.starts_with(prefix)).collect();
        let expected: Vec<String> = (0..count).map(|i| format!("{prefix}{i:05}")).collect();
        assert!(
            shown
                .iter()
                .map(|line| line.get(..7))
                .eq(expected.iter().map(|e| Some(e.as_str()))),
            "the events of {prefix:?} are not each shown once, in order"
        );
    }
    assert!(!region.contains("late "), "interaction 1 is not recent");
}

/// The region's huge interactions are checked as the archive's are: a
/// marker line made by the line two parts share leaves the interaction out
/// of communication.md, drafted or not, and the run reports it.
#[test]
fn a_marker_line_two_parts_of_a_recent_interaction_make_together_leaves_it_out() {
    const JOINING_TEMPLATE: &str = concat!(
        "[plugins.renderer.settings]\n",
        "communication_template = '''\n",
        "{% if not part.first %}COMMUNICATION -->\n{% endif %}",
        "{% for entry in interaction.entries %}{{ entry.event.content[:12] }}\n{% endfor %}",
        "{% if not part.last %}<!-- END {% endif %}\n",
        "'''\n",
    );
    let dir = HuddleDir::with_config(JOINING_TEMPLATE);
    let log = FileLog::new(dir.path(), LogConfig::default());
    let pad = "p".repeat(1024);
    let mut events = vec![note(1, "before".into())];
    events.extend((0..10_000u64).map(|i| note(2, format!("joined {i} {pad}"))));
    log.append_batch(events).unwrap();

    let debug_log = snapshot_logging_debug(&dir, "2");
    // Expected recent (the log ends with interaction 2): interaction 2's
    // draft is refused while the log is read, then again as it is read
    // back; the render from the index leaves it out and reports it.
    for line in [
        "drafted the recent interactions while reading the log drafted=1 recent=2",
        "drafted the region's blocks while reading them back drafted=0 stale=1",
    ] {
        assert!(debug_log.contains(line), "{}", debug_log);
    }
    let communication = read(&dir, "communication.md");
    assert!(communication.contains("before\n"), "{communication}");
    assert!(
        !communication.contains("joined"),
        "the interaction with the marker line is shown"
    );
    let log_text = read(&dir, "events.log");
    assert!(
        log_text.contains("10000 events of interaction 2")
            && log_text.contains("it contains a marker line"),
        "the run does not report the interaction it left out"
    );
}

/// A cold run expects the K interactions below the highest number near the
/// log's end to be recent, and drafts them with communication.md's template
/// while it reads the log (the debug log says so) instead of the archive's:
/// with templates that tell the two apart, each file holds only its own
/// template's text, parts included (9,000 events), and the files are what
/// incremental runs write.
#[test]
fn a_cold_run_drafts_the_interactions_it_expects_to_be_recent_with_the_region_template() {
    const TWO_TEMPLATES: &str = concat!(
        "[plugins.renderer.settings]\n",
        "communication_template = '''\n",
        "{% if part.first %}## {{ interaction.number }}\n{% endif %}",
        "{% for entry in interaction.entries %}recent {{ entry.event.content }}\n{% endfor %}",
        "'''\n",
        "archive_template = '''\n",
        "{% if part.first %}## {{ interaction.number }}\n{% endif %}",
        "{% for entry in interaction.entries %}archived {{ entry.event.content }}\n{% endfor %}",
        "'''\n",
    );
    let incremental = HuddleDir::with_config(TWO_TEMPLATES);
    let log = FileLog::new(incremental.path(), LogConfig::default());
    let mut events: Vec<NewEvent> = (1..=5u64)
        .flat_map(|n| (0..3).map(move |i| (n, i)))
        .map(|(n, i)| note(n, format!("small {n} {i}")))
        .collect();
    events.extend((0..9_000u64).map(|i| note(6, format!("big {i}"))));
    let mut snapshotter = Snapshotter::new(incremental.path());
    for batch in events.chunks(2_000) {
        log.append_batch(batch.to_vec()).unwrap();
        snapshotter.update(host(), Some(3)).unwrap();
    }

    let cold = HuddleDir::with_config(TWO_TEMPLATES);
    std::fs::copy(incremental.file("events.log"), cold.file("events.log")).unwrap();
    let debug_log = snapshot_logging_debug(&cold, "3");
    assert!(
        debug_log
            .contains("drafted the recent interactions while reading the log drafted=3 recent=3"),
        "{}",
        debug_log
    );
    for name in ["communication.md", "archive.md"] {
        assert!(
            read(&cold, name) == read(&incremental, name),
            "{name} of the cold run differs from the incremental runs'"
        );
    }
    let communication = read(&cold, "communication.md");
    let region = region(&communication);
    assert_eq!(headings(region, "## "), vec![4, 5, 6]);
    assert!(region.contains("recent big 8999\n") && !region.contains("archived"));
    let archive = read(&cold, "archive.md");
    assert_eq!(headings(&archive, "## "), vec![1, 2, 3]);
    assert!(archive.contains("archived small 3 2\n") && !archive.contains("recent"));
}

/// A cold run compares the archive it drafts with archive.md as it goes:
/// an archive.md the log renders to is left as it is, and no copy of it is
/// written (its debug log says so); one that differs anywhere (a byte
/// edited in the middle, text added at the end, cut short, emptied) is
/// rewritten to what a cold run in a fresh directory writes, also when an
/// interaction that got a late event is rendered from the index.
#[test]
fn a_cold_run_writes_no_copy_of_a_current_archive_and_rewrites_one_that_differs() {
    const NOTHING_WRITTEN: &str = "the drafts are archive.md as it is; nothing written";
    let dir = HuddleDir::new();
    let log = FileLog::new(dir.path(), LogConfig::default());
    // More events than one mapper batch, so interactions are drafted
    // while later ones are still being read.
    let events: Vec<NewEvent> = (0..6_000u64)
        .map(|i| {
            NewEvent::new(
                InteractionRef::Number(i / 3 + 1),
                "agent",
                ["question", "answer", "followup"][(i % 3) as usize],
                format!("event {i}\n- item {i}"),
            )
        })
        .collect();
    log.append_batch(events).unwrap();
    let fresh_cold_archive = || {
        let fresh = HuddleDir::new();
        std::fs::copy(dir.file("events.log"), fresh.file("events.log")).unwrap();
        fresh.ok(&["snapshot", "-k", "3"]);
        read(&fresh, "archive.md")
    };
    let expected = fresh_cold_archive();
    assert!(expected.len() > 100_000, "{}", expected.len());

    let out = dir.ok(&["snapshot", "-k", "3"]);
    assert!(
        out.contains("archive.md: 1997 interactions (written)"),
        "{out}"
    );
    assert!(read(&dir, "archive.md") == expected);
    let stamp = || {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.file("archive.md")).unwrap();
        (meta.ino(), meta.modified().unwrap())
    };
    let before = stamp();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let debug_log = snapshot_logging_debug(&dir, "3");
    assert!(debug_log.contains(NOTHING_WRITTEN), "{debug_log}");
    assert_eq!(stamp(), before, "archive.md was written");

    type Edit = fn(&mut Vec<u8>);
    let edits: [(&str, Edit); 4] = [
        ("a byte edited in the middle", |bytes| {
            let middle = bytes.len() / 2;
            bytes[middle] = if bytes[middle] == b'x' { b'y' } else { b'x' };
        }),
        ("text added at the end", |bytes| {
            bytes.extend_from_slice(b"\nnotes of a person\n")
        }),
        ("cut short", |bytes| bytes.truncate(bytes.len() - 1_000)),
        ("emptied", |bytes| bytes.clear()),
    ];
    for (edit, apply) in edits {
        let mut bytes = std::fs::read(dir.file("archive.md")).unwrap();
        apply(&mut bytes);
        std::fs::write(dir.file("archive.md"), &bytes).unwrap();
        let debug_log = snapshot_logging_debug(&dir, "3");
        assert!(!debug_log.contains(NOTHING_WRITTEN), "{edit}: {debug_log}");
        assert!(
            read(&dir, "archive.md") == expected,
            "{edit}: archive.md differs from a fresh cold run's"
        );
    }

    // A late event: its interaction's draft shows too few events, so the
    // archive is put together from the drafts and a render from the index.
    log.append(NewEvent::new(
        InteractionRef::Number(2),
        "agent",
        "answer",
        "late to the second",
    ))
    .unwrap();
    let expected = fresh_cold_archive();
    assert!(expected.contains("late to the second"));
    for edit in ["none", "text added at the end"] {
        if edit != "none" {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.file("archive.md"))
                .unwrap();
            file.write_all(b"\nnotes of a person\n").unwrap();
        }
        dir.ok(&["snapshot", "-k", "3"]);
        assert!(
            read(&dir, "archive.md") == expected,
            "{edit}: archive.md differs from a fresh cold run's"
        );
    }
}

/// `huddle snapshot` takes its plugins' memories from a pool and keeps
/// their pages from call to call (its debug log says so); over many calls
/// (12,000 events, contents up to 8 KB) it writes the same files as a run
/// whose memories are mapped per call, as the daemon's are: nothing one
/// call leaves in a memory reaches the next.
#[test]
fn the_snapshot_command_takes_plugin_memories_from_a_pool_and_writes_the_same_files() {
    let pooled = HuddleDir::new();
    let log = FileLog::new(pooled.path(), LogConfig::default());
    let events: Vec<NewEvent> = (0..12_000u64)
        .map(|i| {
            let content = format!("event {i} {}", "y".repeat(((i * 7919) % 16) as usize * 512));
            let kind = ["question", "answer", "followup"][(i % 3) as usize];
            NewEvent::new(InteractionRef::Number(i / 3 + 1), "agent", kind, content)
        })
        .collect();
    for batch in events.chunks(1_000) {
        log.append_batch(batch.to_vec()).unwrap();
    }
    let mapped_per_call = HuddleDir::new();
    std::fs::copy(
        pooled.file("events.log"),
        mapped_per_call.file("events.log"),
    )
    .unwrap();

    let debug_log = snapshot_logging_debug(&pooled, "3");
    assert!(
        debug_log.contains("calls take their memories from a pool"),
        "{}",
        debug_log
    );
    snapshot_once(mapped_per_call.path(), host(), Some(3), None).unwrap();

    for name in ["communication.md", "archive.md"] {
        assert!(
            read(&pooled, name) == read(&mapped_per_call, name),
            "{name} differs between pooled and per-call memories"
        );
    }
    assert!(read(&pooled, "archive.md").contains("event 11990 "));
}

/// A region block over 8 MiB is not kept between runs (it would sit in
/// memory beside the archive's batches), so the next run must bring it back:
/// after every incremental update the files are what a cold run writes.
#[test]
fn a_region_holding_a_block_too_large_to_keep_equals_a_cold_run_after_each_incremental_update() {
    let incremental = HuddleDir::new();
    let log = FileLog::new(incremental.path(), LogConfig::default());
    let filler = "w".repeat(9 * 1024);
    let huge: Vec<NewEvent> = (0..1000)
        .map(|i| {
            NewEvent::new(
                InteractionRef::Number(1),
                "agent",
                "note",
                format!("part {i}: {filler}"),
            )
        })
        .collect();
    log.append_batch(huge).unwrap();
    let mut snapshotter = Snapshotter::new(incremental.path());
    for round in 0..3 {
        log.append(NewEvent::new(
            InteractionRef::Number(2),
            "agent",
            "question",
            format!("small, round {round}"),
        ))
        .unwrap();
        snapshotter.update(host(), Some(3)).unwrap();
        let communication = read(&incremental, "communication.md");
        assert!(
            communication.len() > 8 * 1024 * 1024,
            "{}",
            communication.len()
        );
        assert!(communication.contains("part 999: "));
        let cold = HuddleDir::new();
        std::fs::copy(incremental.file("events.log"), cold.file("events.log")).unwrap();
        snapshot_once(cold.path(), host(), Some(3), None).unwrap();
        for name in ["communication.md", "archive.md"] {
            assert!(
                read(&incremental, name) == read(&cold, name),
                "round {round}: {name} differs from a cold run's"
            );
        }
    }
}

#[test]
fn interactions_are_ordered_numerically_past_nine() {
    let dir = HuddleDir::new();
    for n in [10, 2, 11, 1, 9, 100, 12, 3, 4, 5, 6, 7, 8] {
        dir.ok(&[
            "log",
            &n.to_string(),
            "Agent A",
            "question",
            &format!("q{n}"),
        ]);
    }
    dir.ok(&["snapshot", "-k", "3"]);
    // As text, 100 would come before 11 and 10 before 2.
    assert_eq!(
        headings(region(&read(&dir, "communication.md")), "### Interaction #"),
        [11, 12, 100]
    );
    assert_eq!(
        headings(&read(&dir, "archive.md"), "## Interaction #"),
        (1..=10).collect::<Vec<u64>>()
    );
}

#[test]
fn the_archive_is_extended_with_new_blocks_and_rerendered_only_when_an_archived_interaction_changes(
) {
    use std::os::unix::fs::MetadataExt;
    let dir = HuddleDir::new();
    conversation(&dir, 5);
    let archive_path = dir.file("archive.md");
    let inode = || std::fs::metadata(&archive_path).unwrap().ino();
    let cold = |dir: &HuddleDir| {
        let other = HuddleDir::new();
        std::fs::copy(dir.file("events.log"), other.file("events.log")).unwrap();
        other.ok(&["snapshot", "-k", "2"]);
        read(&other, "archive.md")
    };
    let mut snapshotter = Snapshotter::new(dir.path());
    let first = snapshotter.update(host(), Some(2)).unwrap();
    assert_eq!(first.archive, ArchiveWrite::Rewritten);
    let (before, first_inode) = (read(&dir, "archive.md"), inode());

    // Interaction 6 pushes 4 into the archive: one block added at the end,
    // nothing re-rendered.
    dir.ok(&["log", "6", "Agent A", "question", "six"]);
    let second = snapshotter.update(host(), Some(2)).unwrap();
    assert_eq!(second.archive, ArchiveWrite::Appended(1));
    let after = read(&dir, "archive.md");
    assert!(after.starts_with(&before), "{after}");
    assert!(
        after[before.len()..].starts_with("## Interaction #4\n"),
        "{after}"
    );
    // Small archives are extended by a copy renamed over them (a kill never
    // leaves half a block): the bytes are the old file's plus one block.
    assert_eq!(after, cold(&dir));
    assert_ne!(inode(), first_inode, "extended by replacing the file");

    // Nothing new for the archive: the file is left alone.
    dir.ok(&["log", "6", "Agent B", "answer", "six too"]);
    let third = snapshotter.update(host(), Some(2)).unwrap();
    assert_eq!(third.archive, ArchiveWrite::Unchanged);
    assert_eq!(read(&dir, "archive.md"), after);
    // Compared with the file that is there when the rewrite starts: the
    // first one is gone since the copy replaced it, and its inode number
    // may have been given to a later file.
    let before_rewrite = inode();

    // A late event for an archived interaction: the archive is rewritten.
    dir.ok(&["log", "1", "Agent A", "followup", "late"]);
    let fourth = snapshotter.update(host(), Some(2)).unwrap();
    assert_eq!(fourth.archive, ArchiveWrite::Rewritten);
    assert_ne!(inode(), before_rewrite, "rewritten by replacing the file");
    assert_eq!(read(&dir, "archive.md"), cold(&dir));
    assert!(read(&dir, "archive.md").contains("late"));
}

#[test]
fn archive_template_replaces_the_archive_format_only() {
    let dir = HuddleDir::with_config(concat!(
        "[plugins.renderer.settings]\n",
        "archive_template = '''\n",
        "== {{ interaction.number }} ==\n",
        "{% for entry in interaction.entries %}\n",
        "* {{ entry.event.actor }} said ({{ entry.event.type }}): {{ entry.event.content }}\n",
        "{% endfor %}\n",
        "'''\n",
    ));
    conversation(&dir, 3);
    // Fields reach a custom template neutralised too.
    dir.ok(&["log", "1", "# Mallory", "note", "## forged\n- [x]"]);
    dir.ok(&["snapshot", "-k", "1"]);
    assert_eq!(
        read(&dir, "archive.md"),
        concat!(
            "== 1 ==\n",
            "* Agent A said (question): question 1\n",
            "* Agent B said (answer): answer 1\n",
            "* \\# Mallory said (note): \\## forged\n\\- [x]\n",
            "== 2 ==\n",
            "* Agent A said (question): question 2\n",
            "* Agent B said (answer): answer 2\n",
        )
    );
    // The communication template is still the stock one.
    let communication = read(&dir, "communication.md");
    assert!(
        region(&communication).starts_with("### Interaction #3\n#### A → B\n - question 3\n"),
        "{communication}"
    );
}

#[test]
fn a_template_without_a_final_newline_keeps_one_region() {
    let dir = HuddleDir::with_config(
        "[plugins.renderer.settings]\ncommunication_template = \"#{{ interaction.number }}\"\n",
    );
    conversation(&dir, 2);
    for _ in 0..2 {
        dir.ok(&["log", "next", "Agent A", "question", "more"]);
        dir.ok(&["snapshot"]);
    }
    let text = read(&dir, "communication.md");
    assert_eq!(text.matches(BEGIN_MARKER).count(), 1, "{text}");
    assert_eq!(text.matches(END_MARKER).count(), 1, "{text}");
    assert_eq!(
        region(&text),
        "#2#3#4\n",
        "the END marker is a line of its own: {text}"
    );
}

#[test]
fn an_interaction_too_large_for_the_renderer_is_reported_once_not_once_per_event() {
    // Each event renders alone, but the whole interaction does not fit in
    // the renderer's 4 MiB: it is left out as one problem.
    let dir = HuddleDir::with_config("[plugins.renderer]\nmemory_mb = 4\n");
    let log = FileLog::new(dir.path(), LogConfig::default());
    log.append(NewEvent::new(
        InteractionRef::Number(1),
        "Agent A",
        "question",
        "a small interaction that renders",
    ))
    .unwrap();
    let big_events = 3000;
    let content = "x".repeat(2000);
    log.append_batch(
        (0..big_events)
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number(2),
                    "Agent B",
                    "answer",
                    format!("{i} {content}"),
                )
            })
            .collect(),
    )
    .unwrap();

    let out = dir.run(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let communication = read(&dir, "communication.md");
    assert!(communication.contains("a small interaction that renders"));
    assert!(!communication.contains(&content), "interaction 2 rendered");

    let reports: Vec<String> = dir
        .events()
        .into_iter()
        .filter(|e| e["type"] == "error" && e["interaction"] == 0)
        .map(|e| e["content"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(
        reports[0].starts_with(&format!("{big_events} events of interaction 2 ")),
        "{}",
        reports[0]
    );
    let set_aside = std::fs::read_to_string(dir.file("events.error.log")).unwrap();
    assert_eq!(set_aside.lines().count(), big_events);

    // Regenerating reports nothing again.
    dir.ok(&["snapshot"]);
    let again = dir
        .events()
        .into_iter()
        .filter(|e| e["type"] == "error" && e["interaction"] == 0)
        .count();
    assert_eq!(again, 1);
}
