//! Append benchmarks, side by side with the brief's shell appender.
//! Run with `cargo bench --bench append`; prints a table of medians.

mod support;
use support::{median, ms, run, time};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

const SEQUENTIAL: usize = 200;
const BATCH: usize = 1000;
const BATCHES: usize = 200;
const WRITERS: usize = 16;
const PER_WRITER: usize = 100;

fn main() {
    let root = tempfile::tempdir().expect("temp dir");
    let exe = env!("CARGO_BIN_EXE_huddle");
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/baseline/log_event.sh");

    let huddle_dir = init(exe, &root.path().join("cli"));
    let baseline_dir = init(exe, &root.path().join("baseline"));
    // Alternate the two so both see the same machine noise.
    let mut huddle_times = Vec::with_capacity(SEQUENTIAL);
    let mut baseline_times = Vec::with_capacity(SEQUENTIAL);
    let mut startup_times = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        // The floor: starting the same binary and doing nothing.
        startup_times.push(time(|| run(Command::new(exe).arg("--version"))));
        huddle_times.push(time(|| {
            run(Command::new(exe).arg("--dir").arg(&huddle_dir).args([
                "log",
                "1",
                "bench",
                "note",
                &format!("event {i}"),
            ]))
        }));
        baseline_times.push(time(|| {
            run(Command::new("bash")
                .arg(&baseline)
                .args(["1", "bench", "note", &format!("event {i}")])
                .current_dir(&baseline_dir))
        }));
    }
    let huddle_median = median(&mut huddle_times);
    let baseline_median = median(&mut baseline_times);
    let startup_median = median(&mut startup_times);

    let batch_dir = init(exe, &root.path().join("batch"));
    let log = FileLog::new(&batch_dir, LogConfig::default());
    let started = Instant::now();
    for b in 0..BATCHES {
        let batch = (0..BATCH)
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number((b * BATCH + i) as u64 / 3),
                    "bench",
                    "note",
                    format!("batched event {i} of batch {b}, a line of typical length"),
                )
            })
            .collect();
        log.append_batch(batch).expect("append batch");
    }
    let batched_rate = (BATCHES * BATCH) as f64 / started.elapsed().as_secs_f64();

    let concurrent_dir = init(exe, &root.path().join("concurrent"));
    let concurrent_rate = concurrently(move |w, i| {
        run(Command::new(exe).arg("--dir").arg(&concurrent_dir).args([
            "log",
            "1",
            &format!("writer {w}"),
            "note",
            &format!("event {i}"),
        ]))
    });
    let concurrent_floor = concurrently(move |_, _| run(Command::new(exe).arg("--version")));

    println!();
    println!("| append benchmark (durability = fsync)            | huddle          | baseline log_event.sh | ratio  |");
    println!("|--------------------------------------------------|-----------------|-----------------------|--------|");
    println!(
        "| CLI append, median of {SEQUENTIAL} sequential calls         | {:>12.2} ms | {:>18.2} ms | {:>5.1}x |",
        ms(huddle_median),
        ms(baseline_median),
        baseline_median.as_secs_f64() / huddle_median.as_secs_f64()
    );
    println!(
        "| `huddle --version`: process start-up floor         | {:>12.2} ms | {:>21} | {:>6} |",
        ms(startup_median),
        "-",
        "-"
    );
    println!(
        "| in-process batches of {BATCH}, one fdatasync each  | {:>10.0} ev/s | {:>21} | {:>6} |",
        batched_rate, "-", "-"
    );
    println!(
        "| {WRITERS} concurrent CLI writers x {PER_WRITER}, total            | {:>10.0} ev/s | {:>21} | {:>6} |",
        concurrent_rate, "-", "-"
    );
    println!(
        "| {WRITERS} concurrent `huddle --version` (spawn floor)   | {:>10.0} /s   | {:>21} | {:>6} |",
        concurrent_floor, "-", "-"
    );
}

/// Runs `call(writer, i)` PER_WRITER times in each of WRITERS threads; calls per second.
fn concurrently(call: impl Fn(usize, usize) + Send + Sync + Clone + 'static) -> f64 {
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let call = call.clone();
            std::thread::spawn(move || (0..PER_WRITER).for_each(|i| call(w, i)))
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    (WRITERS * PER_WRITER) as f64 / started.elapsed().as_secs_f64()
}

fn init(exe: &str, dir: &Path) -> PathBuf {
    run(Command::new(exe).arg("init").arg(dir));
    dir.to_path_buf()
}
