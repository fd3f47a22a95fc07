//! Dashboard benchmarks, on a large log served by `huddle run --dashboard`
//! (the dashboard in the leader's process, the case where it could slow
//! the snapshots): `/api/status` and the page (median, p99), and the
//! append-to-snapshot latency with 0 and with 50 open event streams. Run
//! with `cargo bench --bench dashboard`; prints a table.
//! `HUDDLE_BENCH_EVENTS` sets the size of the log (default 1,000,000).
//! Target: the page and `/api/status` in 20 ms or less; the streams add no
//! measurable latency.

mod support;
use support::{fill, median, ms, thousands, Mode};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

const CONFIG: &str =
    "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 50\n";
const STREAMS: usize = 50;
const TARGET: Duration = Duration::from_millis(20);

fn main() {
    let mode = Mode::from_args();
    let requests = mode.size(200, 5);
    let probes = mode.size(100, 3);
    let exe = env!("CARGO_BIN_EXE_huddle");
    let root = tempfile::tempdir().expect("temp dir");
    let cache = mode.plugin_cache(root.path().join("cache"));
    let events: u64 = std::env::var("HUDDLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mode.size(1_000_000, 300));
    let dir = root.path().join("log");
    fill(&dir, events);
    std::fs::write(dir.join("huddle.toml"), CONFIG).expect("config");

    let server = Server::start(exe, &dir, &cache);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .proxy(None)
        .build()
        .into();
    let get = |path: &str| -> String {
        agent
            .get(&format!("{}{path}", server.base))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .body_mut()
            .read_to_string()
            .expect("body")
    };
    // The leader has taken the log in: snapshot up to date, status model built.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&get("/api/status")).expect("status JSON");
        if status["leader"] == "bench-leader" && status["snapshot"]["bytes_behind"] == 0 {
            assert!(status["events"].as_u64().expect("events") >= events);
            break;
        }
        assert!(Instant::now() < deadline, "the leader never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let timed = |path: &str, check: &dyn Fn(&str)| -> Vec<Duration> {
        let mut times: Vec<Duration> = (0..requests)
            .map(|_| {
                let started = Instant::now();
                let body = get(path);
                let took = started.elapsed();
                check(&body);
                took
            })
            .collect();
        times.sort_unstable();
        times
    };
    let status_times = timed("/api/status", &|body| {
        let status: serde_json::Value = serde_json::from_str(body).expect("status JSON");
        assert!(status["events"].as_u64().expect("events") >= events);
    });
    let page_times = timed("/", &|body| {
        assert!(body.contains("id=\"leader\"") && body.contains("bench-leader"));
    });

    let quiet = latency(&dir, probes);
    let streams = Streams::open(&server.base, STREAMS);
    let busy = latency(&dir, probes);
    // Every stream saw every probe (and the warm-up) after it opened.
    streams.wait_for_each(probes + 1, "question");

    println!();
    println!(
        "dashboard on a log of {} events (`huddle run --dashboard`; {requests} requests, {probes} appends)",
        thousands(events)
    );
    println!("| measure | median | p99 | target |");
    println!("|---|---:|---:|---|");
    for (name, times) in [
        ("`GET /api/status`", &status_times),
        ("`GET /` (the page)", &page_times),
    ] {
        let p99 = percentile(times, 99);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | ≤ {} ms {} |",
            ms(median(&mut times.clone())),
            ms(p99),
            TARGET.as_millis(),
            if p99 <= TARGET { "(met)" } else { "(missed)" }
        );
    }
    for (name, times) in [
        ("append → communication.md, 0 streams open", &quiet),
        ("append → communication.md, 50 streams open", &busy),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | |",
            ms(median(&mut times.clone())),
            ms(percentile(times, 99))
        );
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// `huddle run --dashboard 127.0.0.1:0`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(exe: &str, dir: &Path, cache: &Path) -> Server {
        let mut child = Command::new(exe)
            .arg("--dir")
            .arg(dir)
            .args([
                "run",
                "--actor",
                "bench-leader",
                "--dashboard",
                "127.0.0.1:0",
            ])
            .env("HUDDLE_CACHE_DIR", cache)
            .env_remove("HUDDLE_DASHBOARD_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start huddle run --dashboard");
        let pipe = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("huddle dashboard: serving on ").nth(1) {
                    let _ = tx.send(rest.trim_end_matches('/').to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the dashboard's address");
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open `/api/stream`s, each counting the events of each type it receives.
struct Streams {
    received: Vec<Arc<AtomicUsize>>,
}

impl Streams {
    fn open(base: &str, count: usize) -> Streams {
        let received = (0..count)
            .map(|_| {
                let seen = Arc::new(AtomicUsize::new(0));
                let agent: ureq::Agent = ureq::Agent::config_builder().proxy(None).build().into();
                let response = agent
                    .get(&format!("{base}/api/stream"))
                    .call()
                    .expect("open a stream");
                let body = response.into_body().into_reader();
                let counter = seen.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(body).lines().map_while(Result::ok) {
                        if line.starts_with("data:") && line.contains("\"type\":\"question\"") {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                seen
            })
            .collect();
        Streams { received }
    }

    fn wait_for_each(&self, count: usize, kind: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .received
            .iter()
            .any(|seen| seen.load(Ordering::SeqCst) < count)
        {
            assert!(
                Instant::now() < deadline,
                "a stream missed `{kind}` events: {:?} of {count}",
                self.received
                    .iter()
                    .map(|seen| seen.load(Ordering::SeqCst))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Appends `samples` events, one at a time, and times each until it shows
/// in communication.md (sorted).
fn latency(dir: &Path, samples: usize) -> Vec<Duration> {
    let log = FileLog::new(dir, LogConfig::default());
    let warm_up = format!("warm-up {:?}", Instant::now());
    log.append(NewEvent::new(
        InteractionRef::Next,
        "bench",
        "question",
        warm_up.clone(),
    ))
    .expect("append");
    shown(dir, &warm_up, Instant::now());
    let mut times: Vec<Duration> = (0..samples)
        .map(|i| {
            let marker = format!("latency probe {i} {:?}", Instant::now());
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
        .collect();
    times.sort_unstable();
    times
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
