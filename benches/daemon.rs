//! Daemon benchmarks: append-to-snapshot latency under `huddle run`, and
//! failover time. Run with `cargo bench --bench daemon`; prints a table.
//! `HUDDLE_BENCH_EVENTS` sets the size of the large log (default 1,000,000).

mod support;
use support::{fill, ms, output, Mode};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

const CONFIG: &str =
    "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 50\n";

fn main() {
    let mode = Mode::from_args();
    let samples = mode.size(100, 3);
    let failover_rounds = mode.size(20, 2);
    let exe = env!("CARGO_BIN_EXE_huddle");
    let root = tempfile::tempdir().expect("temp dir");
    let cache = mode.plugin_cache(root.path().join("cache"));
    let large: u64 = std::env::var("HUDDLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mode.size(1_000_000, 300));

    let mut rows = Vec::new();
    for events in [mode.size(1_000u64, 30), large] {
        let dir = root.path().join(format!("latency-{events}"));
        fill(&dir, events);
        std::fs::write(dir.join("huddle.toml"), CONFIG).expect("config");
        let leader = start(exe, &dir, "bench-leader", &cache);
        wait_for_leader(exe, &dir, None);
        let mut latencies = latency(&dir, samples);
        drop(leader);
        latencies.sort();
        rows.push((
            events,
            percentile(&latencies, 50),
            percentile(&latencies, 99),
        ));
    }

    let dir = root.path().join("failover");
    huddle::workspace::init(&dir).expect("init");
    std::fs::write(dir.join("huddle.toml"), CONFIG).expect("config");
    let mut daemons: Vec<(String, Daemon)> = (0..3)
        .map(|i| (format!("d{i}"), start(exe, &dir, &format!("d{i}"), &cache)))
        .collect();
    let mut leader = wait_for_leader(exe, &dir, None);
    let mut failovers = Vec::new();
    for round in 0..failover_rounds {
        let index = daemons
            .iter()
            .position(|(name, _)| *name == leader)
            .expect("leader is ours");
        let (_, leader_daemon) = daemons.remove(index);
        let old_term = current_term(&dir);
        let killed = chrono::Utc::now();
        drop(leader_daemon);
        let (successor, first_beat) = first_heartbeat_after(&dir, old_term);
        assert!(
            daemons.iter().any(|(name, _)| *name == successor),
            "the new term's leader {successor} is not one of the surviving daemons"
        );
        // A new term that began before the kill is not a failover: the
        // figure would be meaningless.
        let failover = (first_beat - killed).to_std().unwrap_or_else(|_| {
            panic!("{successor} began term > {old_term} before {leader} was killed")
        });
        failovers.push(failover);
        let name = format!("d{}", round + 3);
        daemons.push((name.clone(), start(exe, &dir, &name, &cache)));
        leader = successor;
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(daemons);
    failovers.sort();

    println!();
    println!(
        "| daemon benchmark                                         | p50        | p99 / max  |"
    );
    println!(
        "|----------------------------------------------------------|------------|------------|"
    );
    for (events, p50, p99) in rows {
        println!(
            "| append -> communication.md, {events:>8} events in the log | {:>7.1} ms | {:>7.1} ms |",
            ms(p50),
            ms(p99)
        );
    }
    println!(
        "| failover: kill -9 leader -> new leader's heartbeat (x{failover_rounds}) | {:>7.0} ms | {:>7.0} ms |",
        ms(percentile(&failovers, 50)),
        ms(*failovers.last().expect("failovers"))
    );
    println!("  (leader_timeout_ms = 1000, heartbeat_ms = 200, jitter_ms = 150, poll_ms = 50)");
}

/// Appends `samples` events, one at a time, and times each until it shows
/// in communication.md.
fn latency(dir: &Path, samples: usize) -> Vec<Duration> {
    let log = FileLog::new(dir, LogConfig::default());
    // Warm-up: the first `next` builds the tail index (one scan of the log),
    // and the daemon snapshots it before the first probe.
    let warm_up = format!("warm-up {}", std::process::id());
    log.append(NewEvent::new(
        InteractionRef::Next,
        "bench",
        "question",
        warm_up.clone(),
    ))
    .expect("append");
    shown(dir, &warm_up, Instant::now());
    (0..samples)
        .map(|i| {
            let marker = format!("latency probe {i} {}", std::process::id());
            let started = Instant::now();
            log.append(NewEvent::new(
                InteractionRef::Next,
                "bench",
                "question",
                marker.clone(),
            ))
            .expect("append");
            shown(dir, &marker, started)
        })
        .collect()
}

/// Waits until communication.md shows `content`; the time since `started`.
fn shown(dir: &Path, content: &str, started: Instant) -> Duration {
    let communication = dir.join("communication.md");
    let line = format!("\n - {content}\n");
    loop {
        if std::fs::read_to_string(&communication).is_ok_and(|t| t.contains(&line)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the snapshot never showed {content:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A `huddle run`, killed (SIGKILL) and reaped when dropped, so a failed
/// check leaves no daemon behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(exe: &str, dir: &Path, name: &str, cache: &Path) -> Daemon {
    let child = Command::new(exe)
        .arg("--dir")
        .arg(dir)
        .args(["run", "--actor", name])
        .env("HUDDLE_CACHE_DIR", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start huddle run");
    Daemon(child)
}

/// Waits for a leader (other than `not`) whose snapshot is up to date.
fn wait_for_leader(exe: &str, dir: &Path, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = output(
            Command::new(exe)
                .arg("--dir")
                .arg(dir)
                .args(["status", "--json"]),
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        if let Some(leader) = status["leader"].as_str() {
            if Some(leader) != not && status["snapshot"]["bytes_behind"] == 0 {
                return leader.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn current_term(dir: &Path) -> u64 {
    let mut term = 0;
    FileLog::new(dir, LogConfig::default())
        .scan(huddle::Position::START, |r| {
            if r.event.kind == "leader_election" {
                term = term.max(r.event.term.unwrap_or(0));
            }
            Ok(())
        })
        .expect("scan");
    term
}

/// The first leader heartbeat of a term above `old_term`: its actor and time.
fn first_heartbeat_after(dir: &Path, old_term: u64) -> (String, chrono::DateTime<chrono::Utc>) {
    let log = FileLog::new(dir, LogConfig::default());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut found = None;
        log.scan(huddle::Position::START, |r| {
            let e = r.event;
            if found.is_none() && e.kind == "heartbeat" && e.term.is_some_and(|t| t > old_term) {
                let at = chrono::DateTime::parse_from_rfc3339(&e.timestamp).expect("timestamp");
                found = Some((e.actor, at.with_timezone(&chrono::Utc)));
            }
            Ok(())
        })
        .expect("scan");
        if let Some(found) = found {
            return found;
        }
        assert!(Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
