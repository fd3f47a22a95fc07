//! The JetStream backend against the file log, side by side in one run:
//! appends per second through the CLI and in-process batches (one atomic
//! batch publish per batch: the messages go out without waiting, one
//! acknowledgement for the batch), and how long an append on one machine
//! takes to show in another machine's communication.md (p50/p99), against
//! git sync's interval. Run with `cargo bench --bench jetstream`; a real
//! `nats-server -js` is started on 127.0.0.1 (see tests/it/nats.rs).

#[path = "../tests/it/nats.rs"]
mod nats;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{median, ms, run, time, Mode};

use huddle::backend::jetstream::JetStreamLog;
use huddle::backend::{scan, Position};
use huddle::config::{BackendConfig, BackendKind, LogConfig, ServerUrls, SyncConfig};
use huddle::event::{InteractionRef, NewEvent, DEFAULT_MAX_CONTENT_BYTES};
use huddle::log::{EventStore, FileLog};

/// How long the stream may take to become ready, and an append to show.
const DEADLINE: Duration = Duration::from_secs(30);

fn main() {
    let mode = Mode::from_args();
    let sequential = mode.size(200, 3);
    let batch_len = mode.size(1000, 10);
    let batches = mode.size(50, 2);
    let visible_rounds = mode.size(100, 3);
    let root = tempfile::tempdir().expect("temp dir");
    let exe = env!("CARGO_BIN_EXE_huddle");
    let server = nats::NatsServer::start();

    let config = BackendConfig {
        kind: BackendKind::Jetstream,
        url: ServerUrls::One(server.url()),
        stream: "BENCH".into(),
        ..BackendConfig::default()
    };
    let toml = |stream: &str| {
        format!(
            "[backend]\nkind = \"jetstream\"\nurl = \"{}\"\nstream = \"{stream}\"\n",
            server.url()
        )
    };
    let stream_dir = machine(exe, &root.path().join("stream-cli"), Some(&toml("BENCH")));
    let file_dir = machine(exe, &root.path().join("file-cli"), None);
    let reader = JetStreamLog::new(&config, &stream_dir, DEFAULT_MAX_CONTENT_BYTES);
    let ready = Instant::now();
    while reader.ensure_stream().is_err() {
        assert!(
            ready.elapsed() < DEADLINE,
            "JetStream never took the stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // CLI appends, alternated so both see the same machine noise.
    let (mut stream_times, mut file_times) = (Vec::new(), Vec::new());
    for i in 0..sequential {
        let content = format!("event {i}");
        stream_times.push(time(|| {
            run(Command::new(exe)
                .arg("--dir")
                .arg(&stream_dir)
                .args(["log", "1", "bench", "note", &content]))
        }));
        file_times.push(time(|| {
            run(Command::new(exe)
                .arg("--dir")
                .arg(&file_dir)
                .args(["log", "1", "bench", "note", &content]))
        }));
    }
    assert_eq!(
        count(&reader, "note"),
        sequential,
        "CLI appends lost or doubled"
    );
    let stream_cli = median(&mut stream_times);
    let file_cli = median(&mut file_times);

    // In-process batches.
    let batch = |b: usize| -> Vec<NewEvent> {
        (0..batch_len)
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number((b * batch_len + i) as u64 / 3 + 1),
                    "bench",
                    "batched",
                    format!("batched event {i} of batch {b}, a line of typical length"),
                )
            })
            .collect()
    };
    let started = Instant::now();
    for b in 0..batches {
        reader
            .append_batch(batch(b))
            .expect("append a batch to the stream");
    }
    let stream_batched = (batches * batch_len) as f64 / started.elapsed().as_secs_f64();
    assert_eq!(count(&reader, "batched"), batches * batch_len);
    let file_log = FileLog::new(&file_dir, LogConfig::default());
    let started = Instant::now();
    for b in 0..batches {
        file_log
            .append_batch(batch(b))
            .expect("append a batch to the file");
    }
    let file_batched = (batches * batch_len) as f64 / started.elapsed().as_secs_f64();

    // `log next` in new processes once the logs hold the batches: the first
    // reads the whole log for the highest number, later ones what is new.
    let next_calls = mode.size(20, 2);
    let log_next = |dir: &Path, i: usize| {
        time(|| {
            run(Command::new(exe).arg("--dir").arg(dir).args([
                "log",
                "next",
                "bench",
                "note",
                &format!("numbered {i}"),
            ]))
        })
    };
    let (stream_next_first, file_next_first) = (log_next(&stream_dir, 0), log_next(&file_dir, 0));
    let (mut stream_next, mut file_next) = (Vec::new(), Vec::new());
    for i in 1..=next_calls {
        stream_next.push(log_next(&stream_dir, i));
        file_next.push(log_next(&file_dir, i));
    }
    let (stream_next, file_next) = (median(&mut stream_next), median(&mut file_next));
    let log_len = sequential + batches * batch_len;

    // Append on machine A, visible in machine B's communication.md.
    let a = machine(exe, &root.path().join("machine-a"), Some(&toml("SHARED")));
    let b = machine(exe, &root.path().join("machine-b"), Some(&toml("SHARED")));
    let shared = JetStreamLog::new(
        &BackendConfig {
            stream: "SHARED".into(),
            ..config.clone()
        },
        &a,
        DEFAULT_MAX_CONTENT_BYTES,
    );
    shared.ensure_stream().expect("create the shared stream");
    run(Command::new(exe)
        .arg("--dir")
        .arg(&a)
        .args(["log", "1", "warm", "note", "up"]));
    let _daemon_b = Daemon::start(exe, &b, "daemon-b");
    wait_for_text(&b.join("communication.md"), " - up\n");
    let mut visible = Vec::with_capacity(visible_rounds);
    for i in 0..visible_rounds {
        let content = format!("seen on the other machine {i}");
        let started = Instant::now();
        run(Command::new(exe).arg("--dir").arg(&a).args([
            "log",
            &(i + 2).to_string(),
            "bench",
            "note",
            &content,
        ]));
        wait_for_text(&b.join("communication.md"), &format!(" - {content}\n"));
        visible.push(started.elapsed());
    }
    visible.sort();
    let percentile = |p: f64| visible[((visible.len() - 1) as f64 * p).round() as usize];
    let sync_interval = SyncConfig::default().interval_secs;

    println!();
    println!("| JetStream backend (nats-server {}, one node, loopback) | JetStream       | file log        |", server_version());
    println!("|------------------------------------------------------------|-----------------|-----------------|");
    println!(
        "| CLI append, median of {sequential:<4} sequential calls               | {:>12.2} ms | {:>12.2} ms |",
        ms(stream_cli),
        ms(file_cli)
    );
    println!(
        "| CLI appends per second (one after another)                 | {:>10.0} ev/s | {:>10.0} ev/s |",
        1.0 / stream_cli.as_secs_f64(),
        1.0 / file_cli.as_secs_f64()
    );
    println!(
        "| in-process batches of {batch_len:<5} (atomic batch / one fsync)    | {:>10.0} ev/s | {:>10.0} ev/s |",
        stream_batched, file_batched
    );
    println!(
        "| CLI `log next` on {log_len:<6} events, first call               | {:>12.2} ms | {:>12.2} ms |",
        ms(stream_next_first),
        ms(file_next_first)
    );
    println!(
        "| CLI `log next` on {log_len:<6} events, median of next {next_calls:<3}       | {:>12.2} ms | {:>12.2} ms |",
        ms(stream_next),
        ms(file_next)
    );
    println!(
        "| append on A -> in B's communication.md, p50 ({visible_rounds} appends)    | {:>12.1} ms | {:>15} |",
        ms(percentile(0.5)),
        "-"
    );
    println!(
        "| append on A -> in B's communication.md, p99                | {:>12.1} ms | {:>15} |",
        ms(percentile(0.99)),
        "-"
    );
    println!(
        "| git sync between machines: at least the sync interval      | {:>15} | {:>12} s |",
        "-", sync_interval
    );
}

fn server_version() -> String {
    Command::new(nats::binary())
        .arg("--version")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .trim_start_matches("nats-server: ")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// A huddle directory; with `config`, on the stream it names.
fn machine(exe: &str, dir: &Path, config: Option<&str>) -> PathBuf {
    run(Command::new(exe).arg("init").arg(dir));
    if let Some(config) = config {
        std::fs::write(dir.join("huddle.toml"), config).expect("write huddle.toml");
    }
    dir.to_path_buf()
}

fn count(log: &JetStreamLog, kind: &str) -> usize {
    let mut n = 0;
    scan(log, Position::START, |stored| {
        n += usize::from(stored.event.kind == kind);
        Ok(())
    })
    .expect("read the stream");
    n
}

/// Polls `path` (1 ms apart) until it holds `text`.
fn wait_for_text(path: &Path, text: &str) {
    let started = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|t| t.contains(text)) {
        assert!(
            started.elapsed() < DEADLINE,
            "{text:?} never showed in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Daemon(Child);

impl Daemon {
    fn start(exe: &str, dir: &Path, actor: &str) -> Daemon {
        Daemon(
            Command::new(exe)
                .arg("--dir")
                .arg(dir)
                .args(["run", "--actor", actor])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start huddle run"),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
