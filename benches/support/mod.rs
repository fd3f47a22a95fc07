//! Helpers shared by the benchmarks: the mode, timing, medians, commands with
//! a deadline, and a filled log.
#![allow(dead_code, reason = "each bench uses a different subset")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use huddle::config::{Durability, LogConfig};
use huddle::event::{Event, InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

/// What a bench run is for. `cargo bench` passes `--bench` to every bench
/// binary, libtest or not: then it measures at full size and prints its
/// table. Run any other way (`cargo test --bench NAME`, as `scripts/test`
/// does), it checks: the same code paths and the same assertions on tiny
/// sizes, so the checks run on every test run without the minutes the
/// measurements take. libtest and criterion draw the same line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Measure,
    Check,
}

impl Mode {
    pub fn from_args() -> Mode {
        let mode = if std::env::args().skip(1).any(|arg| arg == "--bench") {
            Mode::Measure
        } else {
            Mode::Check
        };
        if mode == Mode::Check {
            println!(
                "quick mode (checks only, tiny sizes; `cargo bench` measures): \
                 the figures below say nothing about speed"
            );
        }
        mode
    }

    /// `measure` when measuring, `check` when only checking.
    pub fn size<T>(self, measure: T, check: T) -> T {
        match self {
            Mode::Measure => measure,
            Mode::Check => check,
        }
    }

    /// Where huddle keeps compiled plugins: `fresh` when measuring, as the
    /// tables have always been measured. When checking, one directory kept
    /// in cargo's target directory across runs and benches, since compiling
    /// the default plugins in a debug build takes longer than all the checks.
    pub fn plugin_cache(self, fresh: PathBuf) -> PathBuf {
        match self {
            Mode::Measure => fresh,
            Mode::Check => Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-plugin-cache"),
        }
    }
}

/// The longest one command may take before the bench fails instead of
/// hanging: far beyond what any of them needs, even at full size.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// Runs a command to the end, within COMMAND_LIMIT, and returns its output.
///
/// The deadline is kept by a watchdog thread rather than by polling, so the
/// wait itself adds no latency to what a bench times.
pub fn output(command: &mut Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let timed_out = Arc::new(AtomicBool::new(false));
    let (finished, wait_for_finish) = mpsc::channel::<()>();
    {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if wait_for_finish.recv_timeout(COMMAND_LIMIT) == Err(mpsc::RecvTimeoutError::Timeout) {
                timed_out.store(true, Ordering::SeqCst);
                // SAFETY: kill(2) with a pid and a signal number touches no memory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {command:?}: {e}"));
    drop(finished);
    assert!(
        !timed_out.load(Ordering::SeqCst),
        "{command:?} did not finish within {COMMAND_LIMIT:?}"
    );
    out
}

/// Runs a command and insists on success.
pub fn run(command: &mut Command) {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every event in the log of `dir`, in log order.
pub fn events(dir: &Path) -> Vec<Event> {
    let mut events = Vec::new();
    FileLog::new(dir, LogConfig::default())
        .scan(huddle::Position::START, |record| {
            events.push(record.event);
            Ok(())
        })
        .expect("read the log");
    events
}

/// Fails unless the events of `kind` in the log of `dir` are exactly
/// `expected` (actor, content), each once, in any order.
pub fn assert_each_once(
    dir: &Path,
    kind: &str,
    expected: impl IntoIterator<Item = (String, String)>,
) {
    // Found minus expected, per (actor, content): all zero when each is there once.
    let mut surplus: BTreeMap<(String, String), i64> = BTreeMap::new();
    for key in expected {
        *surplus.entry(key).or_default() -= 1;
    }
    for event in events(dir).into_iter().filter(|e| e.kind == kind) {
        *surplus.entry((event.actor, event.content)).or_default() += 1;
    }
    let wrong: Vec<_> = surplus.into_iter().filter(|(_, n)| *n != 0).collect();
    assert!(
        wrong.is_empty(),
        "{}: {} `{kind}` events are missing (-1) or there more than once (+n), e.g. {:?}",
        dir.display(),
        wrong.len(),
        &wrong[..wrong.len().min(5)]
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

/// 10000 as "10,000", as the tables have always written sizes.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
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

/// What [`run_watching_memory`] saw of a child process.
pub struct Watched {
    pub wall: Duration,
    pub status: i32,
    /// The child's own peak resident set (VmHWM, KiB), read every 2 ms
    /// until it exits: the high-water mark of its memory after exec.
    pub peak_kib: u64,
    /// `ru_maxrss` of the child (KiB): the largest of its processes, but
    /// never less than this bench's own resident set when it forked,
    /// which Linux carries over into the child's count. Not a measure of
    /// the child alone.
    pub maxrss_kib: u64,
}

/// Runs `command` to its end, watching its memory.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also reports its rusage"
)]
pub fn run_watching_memory(command: &mut Command) -> Watched {
    let started = Instant::now();
    let child = command.spawn().expect("spawn the measured command");
    let pid = child.id() as libc::pid_t;
    let mut peak_kib = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = text
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, writing into the two locals above.
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if done == pid {
            return Watched {
                wall: started.elapsed(),
                status,
                peak_kib,
                maxrss_kib: usage.ru_maxrss as u64,
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
