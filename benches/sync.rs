//! Git sync benchmark: 10,000 new events from one clone to another through a
//! bare remote. Prints wall time and how long the log lock was held.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use huddle::config::{Durability, LogConfig};
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};
use huddle::workspace::Workspace;
use support::{events, ms, run, thousands, Mode};

fn git(dir: &Path, args: &[&str]) {
    run(Command::new("git").current_dir(dir).args(args));
}

fn main() {
    let mode = Mode::from_args();
    let new_events: u64 = mode.size(10_000, 30);
    let runs = mode.size(5, 1);
    // The merge driver git runs is the huddle executable, not this bench.
    std::env::set_var("HUDDLE_EXE", env!("CARGO_BIN_EXE_huddle"));
    let mut push_times = Vec::new();
    let mut pull_times = Vec::new();
    let mut locks = Vec::new();
    for _ in 0..runs {
        let root = tempfile::tempdir().expect("temp dir");
        let remote = root.path().join("remote.git");
        git(
            root.path(),
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                remote.to_str().unwrap(),
            ],
        );
        let clones: Vec<_> = ["a", "b"]
            .iter()
            .map(|name| {
                let clone = root.path().join(name);
                git(
                    root.path(),
                    &[
                        "clone",
                        "-q",
                        remote.to_str().unwrap(),
                        clone.to_str().unwrap(),
                    ],
                );
                git(&clone, &["config", "user.email", "bench@example.com"]);
                git(&clone, &["config", "user.name", "bench"]);
                git(&clone, &["checkout", "-q", "-B", "main"]);
                huddle::workspace::init(&clone).expect("init");
                clone
            })
            .collect();
        // A common starting point, then 10,000 new events in clone a.
        let a = Workspace::open(&clones[0]).expect("a");
        let b = Workspace::open(&clones[1]).expect("b");
        huddle::sync::sync_once(&a).expect("first sync a");
        huddle::sync::sync_once(&b).expect("first sync b");
        let log = FileLog::new(
            &clones[0],
            LogConfig {
                durability: Durability::None,
                ..LogConfig::default()
            },
        );
        let batch = (0..new_events)
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number(i / 3 + 1),
                    "bench",
                    "note",
                    format!("event {i} of the sync benchmark"),
                )
            })
            .collect();
        let written = log.append_batch(batch).expect("append");

        let started = Instant::now();
        let pushed = huddle::sync::sync_once(&a).expect("push");
        push_times.push(started.elapsed());
        let started = Instant::now();
        let pulled = huddle::sync::sync_once(&b).expect("pull");
        pull_times.push(started.elapsed());
        assert!(pushed.pushed, "clone a pushed nothing");
        assert_eq!(pulled.received as u64, new_events);
        // Each event written in a is now in b, exactly once.
        let mut in_b: HashMap<String, usize> = HashMap::new();
        for id in events(&clones[1]).into_iter().filter_map(|e| e.id) {
            *in_b.entry(id).or_default() += 1;
        }
        let wrong = written
            .iter()
            .map(|e| e.id.as_ref().expect("huddle gives each event an id"))
            .filter(|id| in_b.get(*id) != Some(&1))
            .count();
        assert_eq!(wrong, 0, "events of a missing from b or there twice");
        locks.push(pushed.lock_held.max(pulled.lock_held));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!();
    println!(
        "| git sync of {new_events} new events between two clones (median of {runs}) | time       |"
    );
    println!("|--------------------------------------------------------------|------------|");
    println!(
        "| clone a: commit + fetch + push                               | {:>7.1} ms |",
        ms(median(&mut push_times))
    );
    println!(
        "| clone b: commit + fetch + merge (append {}) + push       | {:>7.1} ms |",
        thousands(new_events),
        ms(median(&mut pull_times))
    );
    println!(
        "| longest time the log lock was held in one sync               | {:>7.1} ms |",
        ms(median(&mut locks))
    );
}
