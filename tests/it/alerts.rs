//! Alert delivery by the leader, against a real HTTP server on 127.0.0.1.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{repo_file, wait_for, HttpRecorder, HuddleDir};

const DAEMON: &str = "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 25\nretry_initial_ms = 200\nretry_max_ms = 400\n";

fn config(sink: &str, extra_alerts: &str) -> String {
    format!("{DAEMON}[alerts]\nmin_interval_ms = 100\n{extra_alerts}\n[[alerts.sinks]]\n{sink}\n")
}

fn webhook(server: &HttpRecorder, allow: &str) -> String {
    format!(
        "plugin = \"webhook\"\nurl = \"{}\"\nallow = [\"{allow}\"]\nformat = \"alertmanager\"\n",
        server.url("/hook")
    )
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &HuddleDir, name: &str) -> Daemon {
    Daemon(
        dir.command(&["run", "--actor", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn leader_is(dir: &HuddleDir, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap();
        if status["leader"] == name {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{name} never led");
}

/// (summary, count) of every alert in every request (alertmanager bodies).
fn delivered(server: &HttpRecorder) -> Vec<(String, u64)> {
    server
        .requests()
        .iter()
        .flat_map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body.as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let count = a["annotations"]["count"].as_str().map_or_else(
                        || a["annotations"]["count"].as_u64().unwrap_or(1),
                        |c| c.parse().unwrap_or(1),
                    );
                    (
                        a["annotations"]["summary"].as_str().unwrap().to_string(),
                        count,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn an_error_event_reaches_the_webhook_within_two_seconds() {
    let server = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config(&webhook(&server, &server.url("/")), ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    let logged = Instant::now();
    dir.ok(&["log", "4", "Agent A", "error", "disk full on the build box"]);
    assert!(
        wait_for(Duration::from_secs(2), || delivered(&server)
            .iter()
            .any(|(s, _)| s == "disk full on the build box")),
        "not delivered within 2 s: {:?}",
        server.requests()
    );
    assert!(logged.elapsed() < Duration::from_secs(2));
    let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["alerts"][0]["delivered"], 1, "{status}");
}

#[test]
fn a_url_off_the_allowlist_is_never_called_and_status_says_why() {
    let server = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config(&webhook(&server, "http://127.0.0.1:1/"), ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&[
        "log",
        "1",
        "Agent A",
        "error",
        "should not leave the machine",
    ]);
    let reported = wait_for(Duration::from_secs(5), || {
        let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap();
        status["alerts"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("allowlist"))
    });
    assert!(reported, "{}", dir.ok(&["status"]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // The sink's failure is not turned into a new error event (no alert loop).
    let errors = dir.events().iter().filter(|e| e["type"] == "error").count();
    assert_eq!(errors, 1);
}

#[test]
fn server_errors_are_retried_until_the_server_recovers() {
    let server = HttpRecorder::start();
    server.set_status(500);
    let dir = HuddleDir::with_config(&config(&webhook(&server, &server.url("/")), ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "flaky receiver"]);
    assert!(
        wait_for(Duration::from_secs(5), || server.requests().len() >= 3),
        "retried: {:?}",
        server.requests().len()
    );
    server.set_status(200);
    let recovered = wait_for(Duration::from_secs(5), || {
        let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap();
        status["alerts"][0]["delivered"] == 1
    });
    assert!(recovered, "{}", dir.ok(&["status"]));
    let settled = server.requests().len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        server.requests().len(),
        settled,
        "no more retries once delivered"
    );
}

#[test]
fn identical_alerts_are_merged_with_a_count() {
    let server = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config(
        &webhook(&server, &server.url("/")),
        "dedupe_window_secs = 2\n",
    ));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    for _ in 0..6 {
        dir.ok(&["log", "2", "Agent A", "error", "same failure again"]);
    }
    dir.ok(&["log", "2", "Agent A", "error", "a different failure"]);
    let all_counted = wait_for(Duration::from_secs(6), || {
        let got = delivered(&server);
        let same: u64 = got
            .iter()
            .filter(|(s, _)| s == "same failure again")
            .map(|(_, c)| c)
            .sum();
        same == 6 && got.iter().any(|(s, _)| s == "a different failure")
    });
    assert!(all_counted, "{:?}", delivered(&server));
    let same: Vec<_> = delivered(&server)
        .into_iter()
        .filter(|(s, _)| s == "same failure again")
        .collect();
    assert!(
        same.len() <= 2,
        "six identical alerts sent {} times: {same:?}",
        same.len()
    );
    let different = delivered(&server)
        .into_iter()
        .filter(|(s, _)| s == "a different failure")
        .count();
    assert_eq!(different, 1, "a distinct alert is sent once");
}

#[test]
fn killing_the_leader_mid_delivery_loses_nothing() {
    let server = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config(&webhook(&server, &server.url("/")), ""));
    let first = start(&dir, "first");
    leader_is(&dir, "first");
    let _second = start(&dir, "second");
    for i in 0..10 {
        dir.ok(&["log", "3", "Agent A", "error", &format!("failure {i}")]);
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(first); // SIGKILL, possibly in the middle of a delivery
    for i in 10..20 {
        dir.ok(&["log", "3", "Agent A", "error", &format!("failure {i}")]);
    }
    let all = wait_for(Duration::from_secs(10), || {
        let got = delivered(&server);
        (0..20).all(|i| got.iter().any(|(s, _)| *s == format!("failure {i}")))
    });
    assert!(all, "{:?}", delivered(&server));
    let got = delivered(&server);
    let repeated = (0..20)
        .filter(|i| {
            got.iter()
                .filter(|(s, _)| *s == format!("failure {i}"))
                .count()
                > 1
        })
        .count();
    let largest_batch = server
        .requests()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        })
        .max()
        .unwrap();
    assert!(
        repeated <= largest_batch,
        "{repeated} repeated, more than one batch in flight"
    );
}

#[test]
fn the_example_sink_works_by_path() {
    let server = HttpRecorder::start();
    let sink = format!(
        "plugin = {:?}\nurl = \"{}\"\nallow = [\"{}\"]\n",
        repo_file("examples/dist/ntfy-sink.wasm")
            .display()
            .to_string(),
        server.url("/ntfy"),
        server.url("/")
    );
    let dir = HuddleDir::with_config(&config(&sink, ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "from the example sink"]);
    assert!(wait_for(Duration::from_secs(3), || server
        .requests()
        .iter()
        .any(
            |r| r.path == "/ntfy" && r.body.contains("from the example sink")
        )));
}
