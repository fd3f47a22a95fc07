//! Snapshot benchmarks, side by side with the brief's generate_snapshot.sh.
//! Run with `cargo bench --bench snapshot`; prints a table.
//! `HUDDLE_BENCH_EVENTS` sets the size of the large log (default 1,000,000).

mod support;
use support::{fill, median, ms, run, thousands, time, Mode};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use huddle::config::{Durability, LogConfig};
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};
use huddle::plugin::PluginHost;
use huddle::snapshot::Snapshotter;

fn main() {
    let mode = Mode::from_args();
    let small_events: u64 = mode.size(3000, 30);
    let runs = mode.size(5, 1);
    let increments = mode.size(20, 5);
    let exe = env!("CARGO_BIN_EXE_huddle");
    let baseline =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/baseline/generate_snapshot.sh");
    let root = tempfile::tempdir().expect("temp dir");
    let cache = mode.plugin_cache(root.path().join("cache"));

    // 3,000 events in 1,000 interactions: huddle snapshot vs the baseline.
    let small = root.path().join("small");
    fill(&small, small_events);
    let mut huddle_times = Vec::new();
    for _ in 0..runs {
        // A changed K each run, so every run renders and writes both files;
        // the last is the baseline's K = 3, so the two outputs can be compared.
        for k in ["4", "3"] {
            huddle_times.push(time(|| {
                run(Command::new(exe)
                    .arg("--dir")
                    .arg(&small)
                    .args(["snapshot", "-k", k])
                    .env("HUDDLE_CACHE_DIR", &cache))
            }));
        }
    }
    let huddle_files = read_snapshot(&small);
    // The baseline writes the same two files over huddle's.
    let baseline_time = time(|| run(Command::new("bash").arg(&baseline).current_dir(&small)));
    let baseline_files = read_snapshot(&small);
    assert!(
        region(&huddle_files.0) == region(&baseline_files.0),
        "the communication region differs from the baseline's:\n{}\n---\n{}",
        region(&huddle_files.0),
        region(&baseline_files.0)
    );
    assert!(
        huddle_files.1 == baseline_files.1,
        "archive.md differs from the baseline's"
    );
    let huddle_small = median(&mut huddle_times);

    // The large log: cold snapshot (wall time, peak RSS), then one more event
    // and the incremental update.
    let events: u64 = std::env::var("HUDDLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mode.size(1_000_000, 300));
    let cold_runs = mode.size(3, 1);
    let large = root.path().join("large");
    fill(&large, events);
    let log_bytes = std::fs::metadata(large.join("events.log"))
        .expect("log")
        .len();
    let (cold, peak_rss_kib) = cold_snapshots(exe, &large, &cache, cold_runs);
    if let Some(last_event) = events.checked_sub(1) {
        // `fill` puts three events in each interaction, from #1 on.
        assert_shows(
            &large,
            last_event / 3 + 1,
            &format!(" - Message {last_event}: "),
        );
    }
    assert_nothing_left_out(&large);

    let host = PluginHost::with_cache_dir(cache.clone()).expect("plugin host");
    let mut snapshotter = Snapshotter::new(&large);
    let cold_outcome = snapshotter
        .update(&host, None)
        .expect("cold snapshot in process");
    assert_eq!(
        cold_outcome.new_events as u64, events,
        "a cold snapshot reads every event"
    );
    let log = FileLog::new(&large, LogConfig::default());
    let mut incremental_times = Vec::new();
    for i in 0..increments {
        let content = format!("one more question {i}");
        let appended = log
            .append(NewEvent::new(
                InteractionRef::Next,
                "Agent A",
                "question",
                content.clone(),
            ))
            .expect("append");
        let mut outcome = None;
        incremental_times.push(time(|| {
            outcome = Some(
                snapshotter
                    .update(&host, None)
                    .expect("incremental snapshot"),
            );
        }));
        let outcome = outcome.expect("the update ran");
        // Reading only the new event is what makes the update incremental.
        assert_eq!(
            outcome.new_events, 1,
            "the update read more than the new event"
        );
        assert!(
            outcome.communication_written,
            "communication.md was not rewritten"
        );
        assert_eq!(outcome.recent.last(), Some(&appended.interaction));
        assert_shows(&large, appended.interaction, &format!(" - {content}\n"));
    }
    let incremental = median(&mut incremental_times);

    // Logs of other shapes, each as large: what a cold snapshot costs must
    // not depend on how the events are grouped or how long they are.
    let shapes = [
        Shape {
            name: "3 events / interaction, 100-200 B contents",
            events: mode.size(1_000_002, 300),
            per_interaction: 3,
            content: varied_content,
        },
        Shape {
            name: "10 interactions of 100,000 events",
            events: mode.size(1_000_000, 300),
            per_interaction: mode.size(100_000, 100),
            content: varied_content,
        },
        Shape {
            name: "20 KB contents, 3 events / interaction",
            events: mode.size(50_000, 30),
            per_interaction: 3,
            content: long_content,
        },
    ];
    let mut shape_rows = Vec::new();
    for shape in &shapes {
        let dir = root.path().join("shape");
        shape.fill(&dir);
        let bytes = std::fs::metadata(dir.join("events.log"))
            .expect("log")
            .len();
        let (wall, rss_kib) = cold_snapshots(exe, &dir, &cache, cold_runs);
        // A shape whose snapshot leaves events out still gets its row, and
        // fails the bench once the table is printed.
        let left_out = left_out(&dir);
        if left_out.is_none() {
            let last = shape.events - 1;
            assert_shows(
                &dir,
                last / shape.per_interaction + 1,
                &format!(" - Event {last}: "),
            );
        }
        shape_rows.push((shape, bytes, wall, rss_kib, left_out));
        std::fs::remove_dir_all(&dir).expect("remove the shape's log");
    }

    println!();
    println!("| snapshot benchmark                                              | huddle      | baseline    | ratio    |");
    println!("|-----------------------------------------------------------------|-------------|-------------|----------|");
    println!(
        "| {small_events} events / {} interactions, `huddle snapshot` (median of {}) | {:>8.1} ms | {:>8.0} ms | {:>6.0}x |",
        thousands(small_events.div_ceil(3)),
        runs * 2,
        ms(huddle_small),
        ms(baseline_time),
        baseline_time.as_secs_f64() / huddle_small.as_secs_f64()
    );
    println!(
        "| {events} events ({:.0} MB), cold `huddle snapshot`, wall (median of {cold_runs})  | {:>8.2} s  | {:>11} | {:>8} |",
        log_bytes as f64 / 1e6,
        cold.as_secs_f64(),
        "-",
        "-"
    );
    println!(
        "| same, peak RSS                                                  | {:>8.0} MB | {:>11} | {:>8} |",
        peak_rss_kib as f64 / 1024.0,
        "-",
        "-"
    );
    println!(
        "| one more event, incremental update (median of {increments})               | {:>8.2} ms | {:>11} | {:>8} |",
        ms(incremental),
        "-",
        "-"
    );
    println!();
    println!("| cold `huddle snapshot`, other shapes (median of {cold_runs})       | events     | log        | wall      | peak RSS   |");
    println!("|------------------------------------------------------------|------------|------------|-----------|------------|");
    let mut failures = Vec::new();
    for (shape, bytes, wall, rss_kib, left_out) in shape_rows {
        println!(
            "| {:<58} | {:>10} | {:>7.0} MB | {:>7.2} s | {:>7.0} MB |{}",
            shape.name,
            thousands(shape.events),
            bytes as f64 / 1e6,
            wall.as_secs_f64(),
            rss_kib as f64 / 1024.0,
            if left_out.is_some() {
                " events left out"
            } else {
                ""
            }
        );
        if let Some(why) = left_out {
            failures.push(format!(
                "{}: the snapshot left events out: {why}",
                shape.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A log to snapshot: `events` events, `per_interaction` to an interaction
/// (from #1 on), event `i` with `content(i)`.
struct Shape {
    name: &'static str,
    events: u64,
    per_interaction: u64,
    content: fn(u64) -> String,
}

impl Shape {
    /// A fresh huddle directory at `dir` holding this log, synced to disk.
    fn fill(&self, dir: &Path) {
        huddle::workspace::init(dir).expect("init");
        let log = FileLog::new(
            dir,
            LogConfig {
                durability: Durability::None,
                ..LogConfig::default()
            },
        );
        let kinds = ["question", "answer", "followup"];
        let mut next = 0u64;
        while next < self.events {
            // Batches of about 4 MB, whatever the contents' length.
            let end = (next + 4 * 1024 * 1024 / ((self.content)(next).len() as u64 + 128))
                .clamp(next + 1, self.events);
            let batch: Vec<NewEvent> = (next..end)
                .map(|i| {
                    NewEvent::new(
                        InteractionRef::Number(i / self.per_interaction + 1),
                        if i % 3 == 1 { "Agent B" } else { "Agent A" },
                        kinds[(i % 3) as usize],
                        (self.content)(i),
                    )
                })
                .collect();
            next = end;
            log.append_batch(batch).expect("append");
        }
        std::fs::File::open(dir.join("events.log"))
            .and_then(|f| f.sync_all())
            .expect("sync the log");
    }
}

const WORDS: [&str; 16] = [
    "checking", "the", "build", "logs", "for", "failing", "test", "then", "lock", "file", "and",
    "sync", "queue", "`cargo`", "*retry*", "snapshot",
];

/// A cheap deterministic scramble of `i`, so lengths and words vary.
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ (x >> 32)
}

/// Words from `seed` on, up to exactly `len` bytes; a line break every
/// `line` bytes or so, and every 8th line a list item, which the host
/// neutralises.
fn words(seed: u64, len: usize, line: usize, out: &mut String) {
    let mut k = seed;
    let mut line_start = out.len();
    while out.len() < len {
        if out.len() - line_start >= line {
            out.push('\n');
            line_start = out.len();
            if mix(k).is_multiple_of(8) {
                out.push_str("- ");
            }
        } else if out.len() > line_start {
            out.push(' ');
        }
        out.push_str(WORDS[(mix(k) % WORDS.len() as u64) as usize]);
        k += 1;
    }
    out.truncate(len);
}

/// 100 to 200 bytes, starting with "Event {i}: ".
fn varied_content(i: u64) -> String {
    let len = 100 + (mix(i) % 101) as usize;
    let mut out = format!("Event {i}: ");
    words(i, len, 80, &mut out);
    out
}

/// 20 KB in lines of about 80 bytes, starting with "Event {i}: ".
fn long_content(i: u64) -> String {
    let mut out = format!("Event {i}: ");
    words(i, 20 * 1024, 80, &mut out);
    out
}

/// Cold `huddle snapshot` of `dir`, `runs` times (each with the index
/// files as a fresh process finds them): the median wall time and the
/// highest peak RSS (KiB).
fn cold_snapshots(exe: &str, dir: &Path, cache: &Path, runs: usize) -> (Duration, i64) {
    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        // The last run's files (a 1 GB archive for the largest shape) are
        // still being written out: a run timed meanwhile would be throttled
        // by the kernel's writeback of its predecessor's output.
        let synced = Command::new("sync").status();
        assert!(synced.is_ok_and(|s| s.success()), "sync failed");
        let (wall, rss) = time_child(
            Command::new(exe)
                .arg("--dir")
                .arg(dir)
                .arg("snapshot")
                .env("HUDDLE_CACHE_DIR", cache),
        );
        times.push(wall);
        peak = peak.max(rss);
    }
    (median(&mut times), peak)
}

/// Fails if the snapshot of `dir` left an event out (set it aside).
fn assert_nothing_left_out(dir: &Path) {
    if let Some(why) = left_out(dir) {
        panic!("the snapshot left events out: {why}");
    }
}

/// The first events the snapshot of `dir` set aside, if it set any aside.
fn left_out(dir: &Path) -> Option<String> {
    let set_aside = dir.join(huddle::backend::file::QUARANTINE_FILE);
    let held = std::fs::metadata(&set_aside).map_or(0, |m| m.len());
    (held > 0).then(|| {
        std::fs::read_to_string(&set_aside)
            .unwrap_or_default()
            .lines()
            .take(3)
            .map(|line| line.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// communication.md and archive.md of `dir`.
fn read_snapshot(dir: &Path) -> (String, String) {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    };
    (read("communication.md"), read("archive.md"))
}

/// The generated region of communication.md, markers included.
fn region(communication: &str) -> &str {
    let begin = communication
        .find("<!-- BEGIN COMMUNICATION -->")
        .expect("begin marker");
    let end_marker = "<!-- END COMMUNICATION -->";
    let end = communication.find(end_marker).expect("end marker") + end_marker.len();
    &communication[begin..end]
}

/// Fails unless communication.md of `dir` shows interaction `number` with `text`.
fn assert_shows(dir: &Path, number: u64, text: &str) {
    let (communication, _) = read_snapshot(dir);
    let region = region(&communication);
    let heading = format!("### Interaction #{number}\n");
    let shown = region
        .find(&heading)
        .is_some_and(|at| region[at..].contains(text));
    assert!(
        shown,
        "communication.md does not show {text:?} under interaction #{number}:\n{region}"
    );
}

/// Wall time and peak resident set (KiB) of a child process: its own
/// VmHWM. Not `ru_maxrss`, which Linux starts at the forking process's
/// resident set: this bench holds a few hundred MB by the time it runs the
/// later shapes, and every child reported at least that much.
fn time_child(command: &mut Command) -> (Duration, i64) {
    let watched = support::run_watching_memory(command);
    assert!(
        libc::WIFEXITED(watched.status) && libc::WEXITSTATUS(watched.status) == 0,
        "snapshot failed"
    );
    (watched.wall, watched.peak_kib as i64)
}
