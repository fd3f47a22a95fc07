//! Read benchmarks: `huddle status` and `huddle next --agent X` on a large
//! log, cold (no index yet) and warm (the index kept by the previous call),
//! and warm after one more event. Run with `cargo bench --bench reads`;
//! prints a table. `HUDDLE_BENCH_EVENTS` sets the size of the log (default
//! 1,000,000). Before the read models (issue 11) every call read the whole
//! log: about 1,000 ms for `status` and 750 ms for `next` at 1,000,000
//! events on this machine.

mod support;
use support::{fill, median, ms, output, thousands, time, Mode};

use std::process::Command;
use std::time::Duration;

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

fn main() {
    let mode = Mode::from_args();
    let samples = mode.size(21, 3);
    let exe = env!("CARGO_BIN_EXE_huddle");
    let root = tempfile::tempdir().expect("temp dir");
    let cache = mode.plugin_cache(root.path().join("cache"));
    let events: u64 = std::env::var("HUDDLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mode.size(1_000_000, 300));
    let dir = root.path().join("log");
    fill(&dir, events);
    let interactions = events.div_ceil(3);

    let huddle = |args: &[&str]| {
        let mut command = Command::new(exe);
        command
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .env("HUDDLE_CACHE_DIR", &cache);
        command
    };
    let status_events = |out: &std::process::Output| -> u64 {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        status["events"].as_u64().expect("events")
    };

    // status: cold builds the read model, warm reads what is new (nothing, then one event).
    let mut cold_status = Duration::ZERO;
    let cold = time(|| {
        let out = output(&mut huddle(&["status", "--json"]));
        assert_eq!(status_events(&out), events);
    });
    cold_status += cold;
    let mut warm_status: Vec<Duration> = (0..samples)
        .map(|_| {
            time(|| {
                let out = output(&mut huddle(&["status", "--json"]));
                assert_eq!(status_events(&out), events);
            })
        })
        .collect();

    // next: an agent that acked all but the last two interactions.
    let acked = interactions - 2;
    let run = output(&mut huddle(&[
        "ack",
        "--agent",
        "bench",
        &acked.to_string(),
    ]));
    assert!(run.status.success());
    let unread = events - (acked * 3).min(events);
    let next_lines = |out: &std::process::Output| -> u64 {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout.iter().filter(|b| **b == b'\n').count() as u64
    };
    let cold_next = time(|| {
        let out = output(&mut huddle(&["next", "--agent", "bench", "--json"]));
        assert_eq!(next_lines(&out), unread);
    });
    let mut warm_next: Vec<Duration> = (0..samples)
        .map(|_| {
            time(|| {
                let out = output(&mut huddle(&["next", "--agent", "bench", "--json"]));
                assert_eq!(next_lines(&out), unread);
            })
        })
        .collect();

    // One more event each time: the warm read then costs that event.
    let log = FileLog::new(&dir, LogConfig::default());
    let mut appended = 0u64;
    let mut after_append = |command: &[&str], check: &dyn Fn(&std::process::Output, u64)| {
        (0..samples)
            .map(|_| {
                log.append(NewEvent::new(
                    InteractionRef::Number(interactions),
                    "Agent C",
                    "note",
                    "one more",
                ))
                .expect("append");
                appended += 1;
                let seen = appended;
                time(|| check(&output(&mut huddle(command)), seen))
            })
            .collect::<Vec<Duration>>()
    };
    let mut status_after_one = after_append(&["status", "--json"], &|out, seen| {
        assert_eq!(status_events(out), events + seen)
    });
    let mut next_after_one = after_append(&["next", "--agent", "bench", "--json"], &|out, seen| {
        assert_eq!(next_lines(out), unread + seen)
    });

    println!();
    println!(
        "reads on a log of {} events ({} runs each, medians)",
        thousands(events),
        samples
    );
    println!("| call | cold (no index) | warm | warm, 1 new event | before (issue 11) |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| `huddle status --json` | {:.1} ms | {:.1} ms | {:.1} ms | ~1,000 ms |",
        ms(cold_status),
        ms(median(&mut warm_status)),
        ms(median(&mut status_after_one)),
    );
    println!(
        "| `huddle next --agent X --json` ({unread} unread) | {:.1} ms | {:.1} ms | {:.1} ms | ~750 ms |",
        ms(cold_next),
        ms(median(&mut warm_next)),
        ms(median(&mut next_after_one)),
    );
}
