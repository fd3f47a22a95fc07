//! Snapshot benchmarks, side by side with the brief's generate_snapshot.sh.
//! Run with `cargo bench --bench snapshot`; prints a table.
//! `HUDDLE_BENCH_EVENTS` sets the size of the large log (default 1,000,000).

mod support;
use support::{fill, median, ms, run, thousands, time, Mode};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use huddle::config::LogConfig;
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
    let large = root.path().join("large");
    fill(&large, events);
    let log_bytes = std::fs::metadata(large.join("events.log"))
        .expect("log")
        .len();
    let (cold, peak_rss_kib) = time_child(
        Command::new(exe)
            .arg("--dir")
            .arg(&large)
            .arg("snapshot")
            .env("HUDDLE_CACHE_DIR", &cache),
    );
    if let Some(last_event) = events.checked_sub(1) {
        // `fill` puts three events in each interaction, from #1 on.
        assert_shows(
            &large,
            last_event / 3 + 1,
            &format!(" - Message {last_event}: "),
        );
    }

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
        "| {events} events ({:.0} MB), cold `huddle snapshot`, wall          | {:>8.2} s  | {:>11} | {:>8} |",
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

/// Wall time and peak resident set (KiB) of a child process.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also reports its rusage"
)]
fn time_child(command: &mut Command) -> (Duration, i64) {
    let started = Instant::now();
    let child = command.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals above.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "snapshot failed"
    );
    (started.elapsed(), usage.ru_maxrss)
}
