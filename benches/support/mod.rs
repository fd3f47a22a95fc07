//! Helpers shared by the benchmarks: timing, medians, and a filled log.
#![allow(dead_code, reason = "each bench uses a different subset")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use huddle::config::{Durability, LogConfig};
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

/// Runs a command and insists on success.
pub fn run(command: &mut Command) {
    let out = command.output().expect("spawn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn time(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

pub fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A huddle directory with `events` events, three per interaction, synced
/// to disk (so the kernel's writeback does not disturb what is measured).
pub fn fill(dir: &Path, events: u64) {
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
    while next < events {
        let batch: Vec<NewEvent> = (next..(next + 10_000).min(events))
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number(i / 3 + 1),
                    if i % 3 == 1 { "Agent B" } else { "Agent A" },
                    kinds[(i % 3) as usize],
                    format!(
                        "Message {i}: checking the build logs for the failing test, then the lock file and the sync queue."
                    ),
                )
            })
            .collect();
        next += batch.len() as u64;
        log.append_batch(batch).expect("append");
    }
    std::fs::File::open(dir.join("events.log"))
        .and_then(|f| f.sync_all())
        .expect("sync the log");
}
