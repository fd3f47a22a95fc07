//! Snapshot benchmarks, side by side with the brief's generate_snapshot.sh.
//! Run with `cargo bench --bench snapshot`; prints a table.
//! `HUDDLE_BENCH_EVENTS` sets the size of the large log (default 1,000,000).

mod support;
use support::{fill, median, ms, run, time};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};
use huddle::plugin::PluginHost;
use huddle::snapshot::Snapshotter;

const SMALL_EVENTS: u64 = 3000;
const RUNS: usize = 5;

fn main() {
    let exe = env!("CARGO_BIN_EXE_huddle");
    let baseline =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/baseline/generate_snapshot.sh");
    let root = tempfile::tempdir().expect("temp dir");
    let cache = root.path().join("cache");

    // 3,000 events in 1,000 interactions: huddle snapshot vs the baseline.
    let small = root.path().join("small");
    fill(&small, SMALL_EVENTS);
    let mut huddle_times = Vec::new();
    for _ in 0..RUNS {
        // A changed K each run, so every run renders and writes both files.
        for k in ["3", "4"] {
            huddle_times.push(time(|| {
                run(Command::new(exe)
                    .arg("--dir")
                    .arg(&small)
                    .args(["snapshot", "-k", k])
                    .env("HUDDLE_CACHE_DIR", &cache))
            }));
        }
    }
    let baseline_time = time(|| run(Command::new("bash").arg(&baseline).current_dir(&small)));
    let huddle_small = median(&mut huddle_times);

    // The large log: cold snapshot (wall time, peak RSS), then one more event
    // and the incremental update.
    let events: u64 = std::env::var("HUDDLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
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

    let host = PluginHost::with_cache_dir(cache.clone()).expect("plugin host");
    let mut snapshotter = Snapshotter::new(&large);
    snapshotter
        .update(&host, None)
        .expect("cold snapshot in process");
    let log = FileLog::new(&large, LogConfig::default());
    let mut incremental_times = Vec::new();
    for i in 0..20u64 {
        log.append(NewEvent::new(
            InteractionRef::Next,
            "Agent A",
            "question",
            format!("one more question {i}"),
        ))
        .expect("append");
        incremental_times.push(time(|| {
            snapshotter
                .update(&host, None)
                .expect("incremental snapshot");
        }));
    }
    let incremental = median(&mut incremental_times);

    println!();
    println!("| snapshot benchmark                                              | huddle      | baseline    | ratio    |");
    println!("|-----------------------------------------------------------------|-------------|-------------|----------|");
    println!(
        "| {SMALL_EVENTS} events / 1,000 interactions, `huddle snapshot` (median of {}) | {:>8.1} ms | {:>8.0} ms | {:>6.0}x |",
        RUNS * 2,
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
        "| one more event, incremental update (median of 20)               | {:>8.2} ms | {:>11} | {:>8} |",
        ms(incremental),
        "-",
        "-"
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
