//! Git sync benchmark: 10,000 new events from one clone to another through a
//! bare remote. Prints wall time and how long the log lock was held. Then a
//! 1,000,000-event log: a sync that sends one new event, one that brings it
//! in, and a fresh clone pulling all of it, each as a `huddle sync`
//! process, with the peak RSS of its largest process (huddle or a git it ran).

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use huddle::config::{Durability, LogConfig};
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};
use huddle::workspace::Workspace;
use support::{events, fill, median, ms, run, thousands, Mode};

fn git(dir: &Path, args: &[&str]) {
    run(Command::new("git").current_dir(dir).args(args));
}

fn main() {
    let mode = Mode::from_args();
    let new_events: u64 = mode.size(10_000, 30);
    let runs = mode.size(5, 1);
    // The merge driver sync registers is the huddle executable, not this bench.
    std::env::set_var("HUDDLE_EXE", env!("CARGO_BIN_EXE_huddle"));
    large(mode);
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
    println!();
    println!(
        "| git sync of {new_events} new events between two clones (median of {runs}) | time       |"
    );
    println!("|--------------------------------------------------------------|------------|");
    println!(
        "| clone a: fetch + commit + push                               | {:>7.1} ms |",
        ms(median(&mut push_times))
    );
    println!(
        "| clone b: fetch + read + append {} to events.log          | {:>7.1} ms |",
        thousands(new_events),
        ms(median(&mut pull_times))
    );
    println!(
        "| longest time the log lock was held in one sync               | {:>7.1} ms |",
        ms(median(&mut locks))
    );
}

/// A clone of `remote` at `path`, on `main`, with a git identity.
fn clone_of(root: &Path, remote: &Path, name: &str) -> std::path::PathBuf {
    let clone = root.join(name);
    git(
        root,
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
    clone
}

/// What one `huddle sync` process cost.
struct Cost {
    time: Duration,
    /// Peak RSS of the largest process of the command: huddle or a git it
    /// ran. Measured by GNU time, which is small: a process spawned straight
    /// from this bench would be charged the bench's own resident set
    /// (`ru_maxrss` starts at the forking process's, see `support::Watched`).
    peak_kb: u64,
}

/// Runs `huddle sync` in `dir` and measures it.
fn measured_sync(dir: &Path) -> Cost {
    let report = tempfile::NamedTempFile::new().expect("temp file");
    let started = Instant::now();
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(env!("CARGO_BIN_EXE_huddle"))
        .arg("--dir")
        .arg(dir)
        .arg("sync")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run /usr/bin/time (Debian package `time`)");
    let time = started.elapsed();
    assert!(status.success(), "huddle sync in {} failed", dir.display());
    let peak_kb = std::fs::read_to_string(report.path())
        .ok()
        .and_then(|text| text.lines().last()?.trim().parse().ok())
        .expect("GNU time's report");
    Cost { time, peak_kb }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The 1M-event log: one new event, then a fresh clone pulling everything.
fn large(mode: Mode) {
    let size: u64 = mode.size(1_000_000, 2_000);
    let runs = mode.size(7, 1);
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
    let a = clone_of(root.path(), &remote, "a");
    let b = clone_of(root.path(), &remote, "b");
    fill(&a, size);
    huddle::workspace::init(&b).expect("init b");
    huddle::sync::sync_once(&Workspace::open(&a).expect("a")).expect("first sync a");
    huddle::sync::sync_once(&Workspace::open(&b).expect("b")).expect("first sync b");
    let mut one = Vec::new();
    let mut sent = Vec::new();
    for i in 0..runs {
        let log = FileLog::new(&a, LogConfig::default());
        log.append(NewEvent::new(
            InteractionRef::Number(1),
            "bench",
            "note",
            format!("one new event, run {i}"),
        ))
        .expect("append");
        sent.push(measured_sync(&a));
        one.push(measured_sync(&b));
        let in_b = events(&b);
        assert_eq!(in_b.len() as u64, size + i + 1, "b lacks the new event");
    }
    // A fresh clone with an empty log pulls every event.
    let c = clone_of(root.path(), &remote, "c");
    huddle::workspace::init(&c).expect("init c");
    let pull = measured_sync(&c);
    assert_eq!(events(&c).len() as u64, size + runs, "c lacks events");

    let events = thousands(size);
    println!();
    println!("| git sync on a {events}-event log | time | peak RSS (largest process: huddle or its git) |");
    println!("|---|---:|---:|");
    for (what, costs) in [
        ("sends one new event", &mut sent),
        ("brings in one new event", &mut one),
    ] {
        costs.sort_by_key(|cost| cost.time);
        let typical = &costs[costs.len() / 2];
        println!(
            "| {what} (median of {runs}) | {:.1} ms | {:.1} MB |",
            ms(typical.time),
            mb(typical.peak_kb)
        );
    }
    println!(
        "| fresh clone pulls {events} new events | {:.1} ms | {:.1} MB |",
        ms(pull.time),
        mb(pull.peak_kb)
    );
}
