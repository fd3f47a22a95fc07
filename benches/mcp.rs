//! `huddle mcp` benchmarks, through an MCP client (rmcp's, over stdio, as an
//! agent's would be): the round trip of `log` (p50/p99; mcp_agent_mail's
//! `send_message` takes about 119 ms mean, the aim is 2 ms p50); `next` and
//! `read` on a large log (aim: 20 ms at 1,000,000 events); and how soon a
//! `wait` wakes after an append (p99). Run with `cargo bench --bench mcp`;
//! prints a table. `HUDDLE_BENCH_EVENTS` sets the size of the large log
//! (default 1,000,000).

mod support;
use support::{fill, ms, thousands, Mode};

use std::path::Path;
use std::time::{Duration, Instant};

use huddle::config::LogConfig;
use huddle::event::{InteractionRef, NewEvent};
use huddle::log::{EventStore, FileLog};
use rmcp::model::{CallToolRequestParams, JsonObject};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};

type McpClient = RunningService<RoleClient, ()>;

async fn connect(dir: &Path, cache: &Path) -> McpClient {
    let exe = env!("CARGO_BIN_EXE_huddle");
    let transport = TokioChildProcess::new(tokio::process::Command::new(exe).configure(|c| {
        c.arg("mcp")
            .arg("--dir")
            .arg(dir)
            .env("HUDDLE_CACHE_DIR", cache)
            .env("RUST_LOG", "warn");
    }))
    .expect("start huddle mcp");
    ().serve(transport).await.expect("MCP handshake")
}

async fn call(client: &McpClient, tool: &'static str, arguments: Value) -> Value {
    let arguments: JsonObject = match arguments {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    };
    let result = client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert_ne!(result.is_error, Some(true), "{tool}: {:?}", result.content);
    result.structured_content.expect("structured answer")
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    let rank = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[rank.min(times.len() - 1)]
}

fn main() {
    let mode = Mode::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(mode));
}

async fn bench(mode: Mode) {
    let root = tempfile::tempdir().expect("temp dir");
    let cache = mode.plugin_cache(root.path().join("cache"));

    // log round trip, on a fresh huddle.
    let small = root.path().join("small");
    huddle::workspace::init(&small).expect("init");
    let client = connect(&small, &cache).await;
    let rounds = mode.size(2_000, 20);
    let mut log_times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        let written = call(
            &client,
            "log",
            json!({"interaction": "next", "actor": "bench", "type": "note", "content": format!("message {i}")}),
        )
        .await;
        log_times.push(started.elapsed());
        assert_eq!(written["interaction"], json!(i + 1));
    }
    client.cancel().await.expect("close");

    // next and read on a large log, warm (the interaction index kept).
    let events: u64 = std::env::var("HUDDLE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(mode.size(1_000_000, 300));
    let large = root.path().join("large");
    fill(&large, events);
    let interactions = events.div_ceil(3);
    let client = connect(&large, &cache).await;
    let behind = interactions.saturating_sub(10);
    call(
        &client,
        "ack",
        json!({"agent": "reader", "interaction": behind}),
    )
    .await;
    let samples = mode.size(21, 3);
    let cold_started = Instant::now();
    let unread = call(&client, "next", json!({"agent": "reader"})).await;
    let next_cold = cold_started.elapsed();
    let expected = events - (behind * 3).min(events);
    assert_eq!(
        unread["events"].as_array().map(Vec::len),
        Some(expected as usize)
    );
    let mut next_times = Vec::new();
    let mut read_times = Vec::new();
    for _ in 0..samples {
        let started = Instant::now();
        call(&client, "next", json!({"agent": "reader"})).await;
        next_times.push(started.elapsed());
        let started = Instant::now();
        let found = call(
            &client,
            "read",
            json!({"from_interaction": behind + 1, "limit": 100}),
        )
        .await;
        read_times.push(started.elapsed());
        assert_eq!(
            found["events"].as_array().map(Vec::len),
            Some(expected as usize)
        );
    }

    // wait: woken by an append made in-process, straight to the file log.
    let log = FileLog::new(&large, LogConfig::default());
    let mut wake_times = Vec::new();
    call(
        &client,
        "ack",
        json!({"agent": "waiter", "interaction": interactions}),
    )
    .await;
    for i in 0..mode.size(100, 3) {
        let waiting = {
            let peer = client.peer().clone();
            tokio::spawn(async move {
                peer.call_tool(
                    CallToolRequestParams::new("wait").with_arguments(
                        json!({"agent": "waiter", "timeout_ms": 30_000})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    ),
                )
                .await
                .map(|result| (Instant::now(), result))
            })
        };
        // Let the call block in the server; were it late, it would read the
        // event at once and the wake-up would look no slower.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let number = interactions + 1 + i as u64;
        let appended = {
            log.append(NewEvent::new(
                InteractionRef::Number(number),
                "writer",
                "question",
                "wake up",
            ))
            .expect("append");
            Instant::now()
        };
        let (returned, result) = waiting.await.expect("join").expect("wait");
        let answer = result.structured_content.expect("structured");
        assert_eq!(
            answer["events"][0]["interaction"],
            json!(number),
            "{answer}"
        );
        wake_times.push(returned.saturating_duration_since(appended));
        call(
            &client,
            "ack",
            json!({"agent": "waiter", "interaction": number}),
        )
        .await;
    }
    client.cancel().await.expect("close");

    println!();
    println!("huddle mcp over stdio (rmcp client)");
    println!(
        "log round trip ({rounds} calls): p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&mut log_times, 0.5)),
        ms(percentile(&mut log_times, 0.99))
    );
    println!(
        "on a {}-event log, {expected} events unread: next cold {:.1} ms, next p50 {:.2} ms, read p50 {:.2} ms",
        thousands(events),
        ms(next_cold),
        ms(percentile(&mut next_times, 0.5)),
        ms(percentile(&mut read_times, 0.5)),
    );
    println!(
        "wait wake-up after an append ({} rounds): p50 {:.2} ms, p99 {:.2} ms",
        wake_times.len(),
        ms(percentile(&mut wake_times, 0.5)),
        ms(percentile(&mut wake_times, 0.99))
    );
}
