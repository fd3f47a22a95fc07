//! Append benchmarks, side by side with the brief's shell appender.
//! Run with `cargo bench --bench append`; prints a table of medians.

mod support;
use support::{assert_each_once, median, ms, run, time, Mode};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};

fn main() {
    let mode = Mode::from_args();
    let sequential = mode.size(200, 3);
    let batch_len = mode.size(1000, 100);
    let batches = mode.size(200, 3);
    let writers = mode.size(16, 4);
    let per_writer = mode.size(100, 3);
    let root = tempfile::tempdir().expect("temp dir");
    let exe = env!("CARGO_BIN_EXE_huddle");
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/baseline/log_event.sh");

    let huddle_dir = init(exe, &root.path().join("cli"));
    let baseline_dir = init(exe, &root.path().join("baseline"));
    // Alternate the two so both see the same machine noise.
    let mut huddle_times = Vec::with_capacity(sequential);
    let mut baseline_times = Vec::with_capacity(sequential);
    let mut startup_times = Vec::with_capacity(sequential);
    for i in 0..sequential {
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
    let sequential_events = || (0..sequential).map(|i| ("bench".into(), format!("event {i}")));
    assert_each_once(&huddle_dir, "note", sequential_events());
    assert_each_once(&baseline_dir, "note", sequential_events());

    let batch_dir = init(exe, &root.path().join("batch"));
    let log = FileLog::new(&batch_dir, LogConfig::default());
    let started = Instant::now();
    let batched =
        |b: usize, i: usize| format!("batched event {i} of batch {b}, a line of typical length");
    for b in 0..batches {
        let batch = (0..batch_len)
            .map(|i| {
                NewEvent::new(
                    InteractionRef::Number((b * batch_len + i) as u64 / 3),
                    "bench",
                    "note",
                    batched(b, i),
                )
            })
            .collect();
        log.append_batch(batch).expect("append batch");
    }
    let batched_rate = (batches * batch_len) as f64 / started.elapsed().as_secs_f64();
    assert_each_once(
        &batch_dir,
        "note",
        (0..batches).flat_map(|b| (0..batch_len).map(move |i| ("bench".into(), batched(b, i)))),
    );

    let concurrent_dir = init(exe, &root.path().join("concurrent"));
    let concurrent_rate = concurrently(writers, per_writer, {
        let concurrent_dir = concurrent_dir.clone();
        move |w, i| {
            run(Command::new(exe).arg("--dir").arg(&concurrent_dir).args([
                "log",
                "1",
                &format!("writer {w}"),
                "note",
                &format!("event {i}"),
            ]))
        }
    });
    assert_each_once(
        &concurrent_dir,
        "note",
        (0..writers).flat_map(|w| {
            (0..per_writer).map(move |i| (format!("writer {w}"), format!("event {i}")))
        }),
    );
    let concurrent_floor = concurrently(writers, per_writer, move |_, _| {
        run(Command::new(exe).arg("--version"))
    });

    println!();
    println!("| append benchmark (durability = fsync)            | huddle          | baseline log_event.sh | ratio  |");
    println!("|--------------------------------------------------|-----------------|-----------------------|--------|");
    println!(
        "| CLI append, median of {sequential} sequential calls         | {:>12.2} ms | {:>18.2} ms | {:>5.1}x |",
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
        "| in-process batches of {batch_len}, one fdatasync each  | {:>10.0} ev/s | {:>21} | {:>6} |",
        batched_rate, "-", "-"
    );
    println!(
        "| {writers} concurrent CLI writers x {per_writer}, total            | {:>10.0} ev/s | {:>21} | {:>6} |",
        concurrent_rate, "-", "-"
    );
    println!(
        "| {writers} concurrent `huddle --version` (spawn floor)   | {:>10.0} /s   | {:>21} | {:>6} |",
        concurrent_floor, "-", "-"
    );
}

/// Runs `call(writer, i)` `per_writer` times in each of `writers` threads;
/// calls per second.
fn concurrently(
    writers: usize,
    per_writer: usize,
    call: impl Fn(usize, usize) + Send + Sync + Clone + 'static,
) -> f64 {
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let call = call.clone();
            std::thread::spawn(move || (0..per_writer).for_each(|i| call(w, i)))
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    (writers * per_writer) as f64 / started.elapsed().as_secs_f64()
}

fn init(exe: &str, dir: &Path) -> PathBuf {
    run(Command::new(exe).arg("init").arg(dir));
    dir.to_path_buf()
}
