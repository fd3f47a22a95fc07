//! Daemon benchmarks: append-to-snapshot latency under `huddle run`, the
//! leader's heartbeat lateness while it snapshots the large log cold,
//! failover time (also of leaders whose wall clock is skewed), whether
//! skewed leaders stay leaders for five minutes, and the
//! leader's memory as it follows a log growing live. Run with
//! `cargo bench --bench daemon`; prints a table. `HUDDLE_BENCH_EVENTS` sets
//! the size of the large log and of the live growth (default 1,000,000).

mod support;
use support::{fill, ms, output, Mode};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

const CONFIG: &str =
    "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 50\n";
const HEARTBEAT: Duration = Duration::from_millis(200);
const LEADER_TIMEOUT: Duration = Duration::from_millis(1000);
/// libfaketime, preloaded directly (as tests/it/daemon_hostile.rs does).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// The target for a daemon that followed the large log's growth live.
const RSS_LIMIT_MB: f64 = 128.0;

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
    let mut lateness = Vec::new();
    let mut cold_snapshot = Duration::ZERO;
    for events in [mode.size(1_000u64, 30), large] {
        let dir = root.path().join(format!("latency-{events}"));
        fill(&dir, events);
        std::fs::write(dir.join("huddle.toml"), CONFIG).expect("config");
        // The leader's heartbeats while it snapshots the log cold.
        let beats = HeartbeatWatch::start(&dir);
        let started = Instant::now();
        let leader = start(exe, &dir, "bench-leader", &cache);
        wait_for_leader(exe, &dir, None);
        beats.wait_for(MIN_BEATS);
        let gaps = beats.lateness();
        if events == large {
            cold_snapshot = started.elapsed();
            lateness = gaps;
        }
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

    let skewed: Vec<(&str, Vec<Duration>)> = [("+1h", "an hour ahead"), ("-30s", "30 s behind")]
        .into_iter()
        .map(|(offset, says)| {
            let rounds = (0..mode.size(5, 1))
                .map(|round| {
                    let dir = root.path().join(format!("skewed{offset}-{round}"));
                    skewed_failover(exe, &dir, &cache, offset)
                })
                .collect::<Vec<_>>();
            (says, rounds)
        })
        .collect();

    let soak = mode.size(Duration::from_secs(300), Duration::from_secs(3));
    let soaked = skewed_soak(exe, root.path(), &cache, soak);

    let grown = mode.size(large, 3_000);
    let memory = follow_growth(exe, &root.path().join("growth"), &cache, grown);

    lateness.sort();
    let late_p99 = percentile(&lateness, 99);

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
    println!(
        "| heartbeat lateness during a cold snapshot of {large} events ({} gaps, {:.1} s) | {:>7.1} ms | {:>7.1} ms |",
        lateness.len(),
        cold_snapshot.as_secs_f64(),
        ms(percentile(&lateness, 50)),
        ms(late_p99),
    );
    println!(
        "|   (max {:.1} ms; lateness = gap between the leader's heartbeats as a reader of the log sees them arrive, minus heartbeat_ms) |",
        ms(lateness.last().copied().unwrap_or_default())
    );
    let bound = LEADER_TIMEOUT + 2 * HEARTBEAT;
    for (says, mut rounds) in skewed {
        rounds.sort();
        println!(
            "| failover: kill -9 of a leader whose clock is {says} (x{}) | {:>7.0} ms | {:>7.0} ms |",
            rounds.len(),
            ms(percentile(&rounds, 50)),
            ms(*rounds.last().expect("rounds"))
        );
        assert!(
            rounds.iter().all(|r| *r <= bound),
            "failover after killing a leader whose clock is {says} took {rounds:?}, over {bound:?}"
        );
    }
    for (says, begun, leading) in &soaked {
        println!(
            "| a healthy leader whose clock is {says}, 2 followers, {} s: terms begun after its | {begun:>10} | {:>10} |",
            soak.as_secs(),
            leading.as_deref().unwrap_or("no leader")
        );
        assert!(
            *begun == 0 && leading.as_deref() == Some("skewed"),
            "a healthy leader whose clock is {says} was deposed: {begun} terms began, {leading:?} leads"
        );
    }
    println!(
        "| leader RSS following {grown} appends live: start / end |  {:>6.1} MB |  {:>6.1} MB |",
        memory.start_mb, memory.end_mb
    );
    println!(
        "| leader peak RSS (VmHWM) / growth per event      |  {:>6.1} MB | {:>6.0} B/ev |",
        memory.peak_mb,
        (memory.end_mb - memory.start_mb) * 1024.0 * 1024.0 / grown as f64
    );
    println!("  (leader_timeout_ms = 1000, heartbeat_ms = 200, jitter_ms = 150, poll_ms = 50)");
    if mode == Mode::Measure {
        assert!(
            late_p99 <= Duration::from_millis(50),
            "heartbeat lateness p99 {late_p99:?} during the cold snapshot is over 50 ms"
        );
        assert!(
            memory.peak_mb <= RSS_LIMIT_MB,
            "the leader's peak RSS {:.1} MB after following {grown} appends is over {RSS_LIMIT_MB} MB",
            memory.peak_mb
        );
    }
}

/// Watches the log from its end for the leader heartbeats (events of type
/// `heartbeat` with a term), noting when each arrives on this process's
/// monotonic clock: what a follower sees, including a slow write.
struct HeartbeatWatch {
    stop: Arc<AtomicBool>,
    /// Heartbeats seen so far.
    count: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<Instant>>>,
}

impl HeartbeatWatch {
    fn start(dir: &Path) -> HeartbeatWatch {
        let log = FileLog::new(dir, LogConfig::default());
        let mut cursor = log.scan(huddle::Position::START, |_| Ok(())).expect("scan");
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (stop, count) = (stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let mut beats = 0;
                    cursor = log
                        .scan(cursor, |r| {
                            beats +=
                                usize::from(r.event.kind == "heartbeat" && r.event.term.is_some());
                            Ok(())
                        })
                        .expect("scan");
                    let now = Instant::now();
                    seen.extend(std::iter::repeat_n(now, beats));
                    count.store(seen.len(), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
                seen
            })
        };
        HeartbeatWatch {
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// Waits until `beats` heartbeats have arrived: a snapshot shorter than
    /// a few heartbeat intervals (a small log) still yields gaps to measure.
    fn wait_for(&self, beats: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count.load(Ordering::SeqCst) < beats {
            assert!(
                Instant::now() < deadline,
                "fewer than {beats} heartbeats within 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Each gap between heartbeats minus the interval (zero if early).
    fn lateness(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.take().expect("thread").join().expect("watcher");
        seen.windows(2)
            .map(|pair| (pair[1] - pair[0]).saturating_sub(HEARTBEAT))
            .collect()
    }
}

impl Drop for HeartbeatWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A leader whose wall clock is off by `offset` (libfaketime; monotonic time
/// left alone), two healthy daemons that know it, then kill -9 of the
/// leader: the time until another daemon's first heartbeat arrives.
fn skewed_failover(exe: &str, dir: &Path, cache: &Path, offset: &str) -> Duration {
    let skewed = start_skewed_leader(exe, dir, cache, offset);
    let others = [start(exe, dir, "d1", cache), start(exe, dir, "d2", cache)];
    // Long enough for both to have read the leader and its heartbeats.
    std::thread::sleep(2 * LEADER_TIMEOUT);
    assert_eq!(
        current_leader(dir).as_deref(),
        Some("skewed"),
        "a healthy skewed leader was deposed"
    );
    let old_term = current_term(dir);
    let killed = Instant::now();
    drop(skewed);
    let (successor, _) = first_heartbeat_after(dir, old_term);
    let failover = killed.elapsed();
    assert_ne!(successor, "skewed");
    drop(others);
    failover
}

/// A fresh directory at `dir` led by a daemon named "skewed" whose wall
/// clock is off by `offset` (libfaketime; its monotonic clock is true).
fn start_skewed_leader(exe: &str, dir: &Path, cache: &Path, offset: &str) -> Daemon {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/test, which installs faketime"
    );
    huddle::workspace::init(dir).expect("init");
    std::fs::write(dir.join("huddle.toml"), CONFIG).expect("config");
    let mut command = Command::new(exe);
    command
        .arg("--dir")
        .arg(dir)
        .args(["run", "--actor", "skewed"])
        .env("HUDDLE_CACHE_DIR", cache)
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let skewed = Daemon(command.spawn().expect("start the skewed daemon"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while current_leader(dir).as_deref() != Some("skewed") {
        assert!(Instant::now() < deadline, "the skewed daemon never led");
        std::thread::sleep(Duration::from_millis(10));
    }
    skewed
}

/// Healthy skewed leaders, each with two followers in a directory of its
/// own, all running at once for `watch`: for each skew, the terms begun
/// after the skewed daemon took the lead (any is a healthy leader deposed)
/// and who leads at the end.
fn skewed_soak(
    exe: &str,
    root: &Path,
    cache: &Path,
    watch: Duration,
) -> Vec<(&'static str, u64, Option<String>)> {
    let runs: Vec<_> = [("+1h", "an hour ahead"), ("-30s", "30 s behind")]
        .into_iter()
        .map(|(offset, says)| {
            let dir = root.join(format!("soak{offset}"));
            let leader = start_skewed_leader(exe, &dir, cache, offset);
            let followers = [start(exe, &dir, "f1", cache), start(exe, &dir, "f2", cache)];
            let term = current_term(&dir);
            (says, dir, term, leader, followers)
        })
        .collect();
    std::thread::sleep(watch);
    runs.into_iter()
        .map(|(says, dir, term, leader, followers)| {
            let begun = current_term(&dir) - term;
            let leading = current_leader(&dir);
            drop((leader, followers));
            (says, begun, leading)
        })
        .collect()
}

/// The actor leading as far as the log says (first claim of the highest term).
fn current_leader(dir: &Path) -> Option<String> {
    let mut leader: Option<(u64, String)> = None;
    FileLog::new(dir, LogConfig::default())
        .scan(huddle::Position::START, |r| {
            let e = r.event;
            let claim = e.extra.get("action").and_then(|a| a.as_str()) == Some("claim");
            if e.kind == "leader_election" && claim {
                if let Some(term) = e
                    .term
                    .filter(|t| leader.as_ref().is_none_or(|(l, _)| t > l))
                {
                    leader = Some((term, e.actor));
                }
            }
            Ok(())
        })
        .expect("scan");
    leader.map(|(_, actor)| actor)
}

struct Memory {
    start_mb: f64,
    end_mb: f64,
    peak_mb: f64,
}

/// One leader on an empty log; `events` appended in batches of 1,000
/// (interactions of 3 events of about 330 bytes, as in the soak) as fast as
/// the writer goes, the leader following. Its RSS at the start, at the end
/// once the snapshot is up to date, and its peak, from /proc.
fn follow_growth(exe: &str, dir: &Path, cache: &Path, events: u64) -> Memory {
    huddle::workspace::init(dir).expect("init");
    std::fs::write(dir.join("huddle.toml"), CONFIG).expect("config");
    let leader = start(exe, dir, "bench-leader", cache);
    wait_for_leader(exe, dir, None);
    let pid = leader.0.id();
    let start_mb = rss(pid, "VmRSS");
    let log = FileLog::new(dir, LogConfig::default());
    let padding = "x".repeat(160);
    let mut next = 0u64;
    while next < events {
        let batch: Vec<NewEvent> = (next..(next + 1_000).min(events))
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number(i / 3 + 1),
                    ["agent-1", "agent-2", "agent-3", "agent-4"][(i % 4) as usize],
                    ["question", "answer", "note"][(i % 3) as usize],
                    format!("Message {i}: {padding}"),
                )
            })
            .collect();
        next += batch.len() as u64;
        log.append_batch(batch).expect("append");
    }
    wait_for_leader(exe, dir, None);
    let memory = Memory {
        start_mb,
        end_mb: rss(pid, "VmRSS"),
        peak_mb: rss(pid, "VmHWM"),
    };
    drop(leader);
    memory
}

/// A line of /proc/PID/status, in MB.
fn rss(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb / 1024.0
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

/// Heartbeats watched at least, whatever the snapshot's length.
const MIN_BEATS: usize = 4;

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
