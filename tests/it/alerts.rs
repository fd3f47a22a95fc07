//! Alert delivery by the leader, against a real HTTP server on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    exclusive, hostile_plugin, huddle_exe, is_root, repo_file, state_home_for, wait_for,
    HttpRecorder, HuddleDir, Tmpfs,
};

const DAEMON: &str = "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 25\nretry_initial_ms = 200\nretry_max_ms = 400\n";

fn config(sink: &str, extra_alerts: &str) -> String {
    config_sinks(&[sink], extra_alerts)
}

fn config_sinks(sinks: &[&str], extra_alerts: &str) -> String {
    let mut text = format!("{DAEMON}[alerts]\nmin_interval_ms = 100\n{extra_alerts}\n");
    for sink in sinks {
        text.push_str(&format!("[[alerts.sinks]]\n{sink}\n"));
    }
    text
}

fn webhook(server: &HttpRecorder, allow: &str) -> String {
    webhook_to(&server.url("/hook"), allow)
}

fn webhook_to(url: &str, allow: &str) -> String {
    format!(
        "plugin = \"webhook\"\nurl = \"{url}\"\nallow = [\"{allow}\"]\nformat = \"alertmanager\"\n"
    )
}

/// A webhook sink called `name` posting to `server`, allowed all of it.
fn named_webhook(name: &str, server: &HttpRecorder) -> String {
    format!("name = \"{name}\"\n{}", webhook(server, &server.url("/")))
}

/// A hostile sink from tests/plugins called `name`, allowed all of `server`.
fn hostile_sink(plugin: &str, name: &str, server: &HttpRecorder, extra: &str) -> String {
    format!(
        "plugin = {:?}\nname = \"{name}\"\nurl = \"{}\"\nallow = [\"{}\"]\n{extra}",
        hostile_plugin(plugin).display().to_string(),
        server.url("/hook"),
        server.url("/")
    )
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a daemon's standard error (huddle's own log) goes.
fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.parent().unwrap().join(format!("{name}.stderr"))
}

fn start(dir: &HuddleDir, name: &str) -> Daemon {
    start_with(dir.command(&["run", "--actor", name]), dir.path(), name)
}

fn start_with(mut command: Command, dir: &Path, name: &str) -> Daemon {
    let log = std::fs::File::create(log_file(dir, name)).unwrap();
    Daemon(command.stdout(Stdio::null()).stderr(log).spawn().unwrap())
}

fn daemon_log(dir: &HuddleDir, name: &str) -> String {
    std::fs::read_to_string(log_file(dir.path(), name)).unwrap_or_default()
}

fn status(dir: &HuddleDir) -> Value {
    serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap()
}

/// The status entry of the sink called `name`.
fn sink_status(dir: &HuddleDir, name: &str) -> Value {
    status(dir)["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sink| sink["sink"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `name` leads and has taken up every configured sink (a new
/// sink starts at the end of the log as the leader first finds it, so an
/// alert logged before that is, rightly, not its business).
fn leader_is(dir: &HuddleDir, name: &str) {
    let sinks = huddle::config::Config::load(dir.path())
        .unwrap()
        .alerts
        .sink_ids();
    let ready = wait_for(Duration::from_secs(10), || {
        let status = status(dir);
        status["leader"] == name
            && sinks.iter().all(|id| {
                status["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|sink| sink["sink"] == id.as_str())
            })
    });
    assert!(
        ready,
        "{name} never led with sinks {sinks:?}: {}\n{name}'s log:\n{}",
        dir.ok(&["status"]),
        daemon_log(dir, name)
    );
}

/// The leader is still `name` and heartbeating.
fn still_leading(dir: &HuddleDir, name: &str) {
    let status = status(dir);
    assert_eq!(status["leader"], name, "{status}");
    let age = status["leader_heartbeat_age_secs"].as_f64().unwrap();
    assert!(age < 2.0, "heartbeats stopped: {status}");
}

/// (summary, count) of every alert in every request (alertmanager bodies).
fn delivered(server: &HttpRecorder) -> Vec<(String, u64)> {
    server.requests().iter().flat_map(summaries).collect()
}

fn summaries(request: &crate::common::RecordedRequest) -> Vec<(String, u64)> {
    let body: Value = serde_json::from_str(&request.body).unwrap();
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
        .collect()
}

fn got(server: &HttpRecorder, summary: &str) -> bool {
    delivered(server).iter().any(|(s, _)| s == summary)
}

/// Whether a plain-text body (the hostile sinks post contents, one a line)
/// carried `content`.
fn posted(server: &HttpRecorder, content: &str) -> bool {
    server
        .requests()
        .iter()
        .any(|r| r.body.lines().any(|line| line == content))
}

fn error_events(dir: &HuddleDir) -> usize {
    dir.events().iter().filter(|e| e["type"] == "error").count()
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
        wait_for(Duration::from_secs(2), || got(
            &server,
            "disk full on the build box"
        )),
        "not delivered within 2 s: {:?}",
        server.requests()
    );
    assert!(logged.elapsed() < Duration::from_secs(2));
    // The count is recorded once the sink's call has returned.
    assert!(
        wait_for(Duration::from_secs(5), || status(&dir)["alerts"][0]
            ["delivered"]
            == 1),
        "{}",
        status(&dir)
    );
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
        status(&dir)["alerts"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("allowlist"))
    });
    assert!(reported, "{}", dir.ok(&["status"]));
    // The call that was refused has returned: had it connected, it would have by now.
    assert_eq!(server.connections(), 0, "{:?}", server.requests());
    // The sink's failure is not turned into a new error event (no alert loop).
    assert_eq!(error_events(&dir), 1);
}

#[test]
fn the_filed_allowlist_bypasses_are_refused_end_to_end() {
    let server = HttpRecorder::start();
    let port = server.addr.port();
    let sink = format!(
        "plugin = {:?}\nurl = \"http://u:p@127.0.0.1:{port}/hook/x\"\n\
         url2 = \"http://127.0.0.1:{port}/hook/..%2Fadmin\"\nallow = [\"http://127.0.0.1:{port}/hook/\"]\n",
        hostile_plugin("offallowlist").display().to_string()
    );
    let dir = HuddleDir::with_config(&config(&sink, ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "exfiltrate this"]);
    let reported = wait_for(Duration::from_secs(5), || {
        let status = &status(&dir)["alerts"][0];
        status["failed"] == 1
            && status["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("credentials") && e.contains("encoded separator"))
    });
    assert!(reported, "{}", status(&dir));
    assert_eq!(server.connections(), 0, "{:?}", server.requests());
}

#[test]
fn proxy_environment_variables_are_ignored() {
    let proxy = HttpRecorder::start();
    let server = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config(&webhook(&server, &server.url("/")), ""));
    let mut command = dir.command(&["run", "--actor", "leader"]);
    for variable in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env(variable, proxy.url(""));
    }
    command.env_remove("no_proxy").env_remove("NO_PROXY");
    let _leader = start_with(command, dir.path(), "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "straight to the hook"]);
    assert!(
        wait_for(Duration::from_secs(5), || got(
            &server,
            "straight to the hook"
        )),
        "{}",
        status(&dir)
    );
    assert_eq!(proxy.connections(), 0, "{:?}", proxy.requests());
}

#[test]
fn a_configured_proxy_is_used() {
    let proxy = HttpRecorder::start();
    let server = HttpRecorder::start();
    let sink = format!(
        "{}proxy = \"{}\"\n",
        webhook(&server, &server.url("/")),
        proxy.url("")
    );
    let dir = HuddleDir::with_config(&config(&sink, ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "through the proxy"]);
    let tunnelled = wait_for(Duration::from_secs(5), || {
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "CONNECT" && r.path == server.addr.to_string())
    });
    assert!(tunnelled, "{:?}", proxy.requests());
    assert_eq!(server.connections(), 0, "went around the proxy");
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
        status(&dir)["alerts"][0]["delivered"] == 1
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
fn refused_connections_are_retried_until_the_server_listens() {
    // A port nobody listens on (for now).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let dir = HuddleDir::with_config(&config(
        &webhook_to(&url, &format!("http://127.0.0.1:{port}/")),
        "",
    ));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "nobody home yet"]);
    let refused = wait_for(Duration::from_secs(5), || {
        status(&dir)["alerts"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("refused"))
    });
    assert!(refused, "{}", status(&dir));
    assert_eq!(
        status(&dir)["alerts"][0]["failed"],
        0,
        "given up: {}",
        status(&dir)
    );
    let server = HttpRecorder::start_on(port);
    assert!(
        wait_for(Duration::from_secs(5), || got(&server, "nobody home yet")),
        "{}",
        status(&dir)
    );
    assert!(wait_for(Duration::from_secs(5), || status(&dir)["alerts"]
        [0]["delivered"]
        == 1));
}

#[test]
fn a_server_that_never_answers_times_out_is_retried_and_holds_up_no_other_sink() {
    let silent = HttpRecorder::start();
    silent.set_silent(true);
    let good = HttpRecorder::start();
    // The request timeout is longer than the deadline: waiting on the
    // network is not the plugin running, so this must end as a timeout.
    let slow = format!(
        "{}timeout_ms = 4000\ndeadline_ms = 300\n",
        named_webhook("silent", &silent)
    );
    let dir = HuddleDir::with_config(&config_sinks(&[&slow, &named_webhook("good", &good)], ""));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    let logged = Instant::now();
    dir.ok(&["log", "1", "Agent A", "error", "is anyone there"]);
    assert!(
        wait_for(Duration::from_secs(2), || got(&good, "is anyone there")),
        "the good sink waited: {}",
        status(&dir)
    );
    // Long before the silent server's first timeout (4 s) has passed.
    assert!(logged.elapsed() < Duration::from_secs(2));
    assert!(
        sink_status(&dir, "silent")["last_error"].is_null() && silent.connections() <= 1,
        "the silent sink's first attempt is still waiting: {}",
        status(&dir)
    );
    let retried = wait_for(Duration::from_secs(15), || {
        silent.connections() >= 2
            && sink_status(&dir, "silent")["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("timeout"))
    });
    assert!(
        retried,
        "{} connections: {}",
        silent.connections(),
        status(&dir)
    );
    let error = sink_status(&dir, "silent")["last_error"].to_string();
    assert!(!error.contains("deadline"), "{error}");
    silent.set_silent(false);
    assert!(
        wait_for(Duration::from_secs(15), || got(&silent, "is anyone there")),
        "{}",
        status(&dir)
    );
    still_leading(&dir, "leader");
}

#[test]
fn a_redirect_to_an_off_list_url_is_not_followed() {
    let elsewhere = HttpRecorder::start();
    let allowed = HttpRecorder::start();
    allowed.set_status(302);
    allowed.set_location(&elsewhere.url("/stolen"));
    let good = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config_sinks(
        &[
            &named_webhook("redirected", &allowed),
            &named_webhook("good", &good),
        ],
        "",
    ));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "follow me"]);
    let refused = wait_for(Duration::from_secs(5), || {
        let sink = sink_status(&dir, "redirected");
        sink["failed"] == 1
            && sink["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("302"))
    });
    assert!(refused, "{}", status(&dir));
    assert_eq!(allowed.requests().len(), 1, "a redirect is not retried");
    assert_eq!(elsewhere.connections(), 0, "{:?}", elsewhere.requests());
    dir.ok(&["log", "1", "Agent A", "error", "still flowing"]);
    assert!(wait_for(Duration::from_secs(5), || got(&good, "follow me")
        && got(&good, "still flowing")));
    still_leading(&dir, "leader");
}

#[test]
fn a_huge_response_is_read_only_up_to_its_limit() {
    let huge = HttpRecorder::start();
    huge.set_status(503);
    // A body that never ends.
    huge.set_body_bytes(usize::MAX);
    let good = HttpRecorder::start();
    let huge_sink = format!(
        "{}timeout_ms = 3000
",
        named_webhook("huge", &huge)
    );
    let dir = HuddleDir::with_config(&config_sinks(
        &[&huge_sink, &named_webhook("good", &good)],
        "",
    ));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "answer briefly"]);
    assert!(wait_for(Duration::from_secs(5), || got(
        &good,
        "answer briefly"
    )));
    // Reading the endless body would last until the 3 s timeout; a bounded
    // read returns at once, so the 503 is retried after each backoff.
    let retried = wait_for(Duration::from_secs(4), || {
        huge.requests().len() >= 3
            && sink_status(&dir, "huge")["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("HTTP 503"))
    });
    assert!(
        retried,
        "{} requests: {}",
        huge.requests().len(),
        status(&dir)
    );
    let error = sink_status(&dir, "huge")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.chars().count() <= 1001,
        "{} chars",
        error.chars().count()
    );
    dir.ok(&["log", "1", "Agent A", "error", "still flowing"]);
    assert!(wait_for(Duration::from_secs(5), || got(
        &good,
        "still flowing"
    )));
    still_leading(&dir, "leader");
}

/// A hostile sink beside a good one: the hostile one's batch fails alone
/// (reported in status and huddle's log, never as an error event) and
/// later alerts still reach both.
fn a_hostile_sink_fails_alone(plugin: &str, extra: &str, trigger: &str, expected: &str) {
    let hostile = HttpRecorder::start();
    let good = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config_sinks(
        &[
            &hostile_sink(plugin, "hostile", &hostile, extra),
            &named_webhook("good", &good),
        ],
        "",
    ));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    let logged = Instant::now();
    dir.ok(&["log", "1", "Agent A", "error", trigger]);
    assert!(
        wait_for(Duration::from_secs(3), || got(&good, trigger)),
        "the good sink waited: {}",
        status(&dir)
    );
    assert!(logged.elapsed() < Duration::from_secs(3));
    let given_up = wait_for(Duration::from_secs(10), || {
        let sink = sink_status(&dir, "hostile");
        sink["failed"] == 1
            && sink["last_error"].as_str().is_some_and(|e| {
                e.contains(expected)
                    && e.contains(&format!(
                        "after {} attempts",
                        huddle::alerts::CONTAINED_ATTEMPTS
                    ))
            })
    });
    assert!(given_up, "{}", status(&dir));
    assert!(
        daemon_log(&dir, "leader").contains(expected),
        "not in huddle's log: {}",
        daemon_log(&dir, "leader")
    );
    dir.ok(&["log", "1", "Agent A", "error", "later alert"]);
    assert!(wait_for(Duration::from_secs(5), || got(
        &good,
        "later alert"
    )));
    if plugin != "sink-hang-configure" {
        assert!(
            wait_for(Duration::from_secs(5), || posted(&hostile, "later alert")),
            "the hostile sink is stuck: {}",
            status(&dir)
        );
        assert!(!posted(&hostile, trigger));
    }
    assert_eq!(
        error_events(&dir),
        2,
        "a sink failure became an error event"
    );
    still_leading(&dir, "leader");
}

#[test]
fn a_sink_that_traps_fails_its_batch_and_later_alerts_flow() {
    a_hostile_sink_fails_alone(
        "sink-trap",
        "",
        "please trap now",
        "hostile sink panicked on purpose",
    );
}

#[test]
fn a_sink_that_loops_in_deliver_fails_its_batch_and_later_alerts_flow() {
    a_hostile_sink_fails_alone(
        "sink-loop",
        "deadline_ms = 300\n",
        "loop for ever",
        "deadline of 300ms exceeded",
    );
}

#[test]
fn a_sink_that_hangs_in_configure_fails_alone() {
    a_hostile_sink_fails_alone(
        "sink-hang-configure",
        "deadline_ms = 300\n",
        "configure never returns",
        "deadline of 300ms exceeded",
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
    // What is checked is the merging, not how fast: on a machine loaded by
    // the whole suite, the held-back count (sent when the 2 s window
    // closes) once took over 6 s to arrive.
    let all_counted = wait_for(Duration::from_secs(20), || {
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
fn min_interval_ms_spaces_the_deliveries_of_a_sink() {
    let server = HttpRecorder::start();
    let mut text = config(&webhook(&server, &server.url("/")), "");
    text = text.replace("min_interval_ms = 100", "min_interval_ms = 1000");
    let dir = HuddleDir::with_config(&text);
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    for i in 0..6 {
        dir.ok(&["log", "1", "Agent A", "error", &format!("paced {i}")]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let all = wait_for(Duration::from_secs(10), || {
        (0..6).all(|i| got(&server, &format!("paced {i}")))
    });
    assert!(all, "{:?}", delivered(&server));
    let requests = server.requests();
    assert!(
        requests.len() >= 2 && requests.len() < 6,
        "six alerts over 1.5 s must go in 2 to 5 deliveries: {}",
        requests.len()
    );
    for pair in requests.windows(2) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(
            gap >= Duration::from_millis(1000),
            "deliveries {gap:?} apart"
        );
    }
}

#[test]
fn a_new_sink_starts_at_the_end_of_the_log_unless_from_start() {
    let fresh = HttpRecorder::start();
    let replay = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config_sinks(
        &[
            &named_webhook("fresh", &fresh),
            &format!("{}from = \"start\"\n", named_webhook("replay", &replay)),
        ],
        "",
    ));
    dir.ok(&["log", "1", "Agent A", "error", "history"]);
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "2", "Agent A", "error", "news"]);
    assert!(wait_for(Duration::from_secs(5), || got(&fresh, "news")
        && got(&replay, "news")
        && got(&replay, "history")));
    // "history" precedes "news" in the log: had the fresh sink read it, it
    // would have sent it by now.
    assert!(!got(&fresh, "history"), "{:?}", delivered(&fresh));
}

#[test]
fn reordering_and_editing_sinks_keeps_their_place() {
    let hook = HttpRecorder::start();
    let ntfy = HttpRecorder::start();
    let ntfy_sink = format!(
        "plugin = {:?}\nurl = \"{}\"\nallow = [\"{}\"]\n",
        repo_file("examples/dist/ntfy-sink.wasm")
            .display()
            .to_string(),
        ntfy.url("/ntfy"),
        ntfy.url("/")
    );
    let webhook_sink = webhook(&hook, &hook.url("/"));
    let dir = HuddleDir::with_config(&config_sinks(&[&webhook_sink, &ntfy_sink], ""));
    let ntfy_got = |content: &str| {
        ntfy.requests()
            .iter()
            .filter(|r| r.body.contains(content))
            .count()
    };
    let hook_got = |content: &str| {
        delivered(&hook)
            .iter()
            .filter(|(s, _)| s == content)
            .count()
    };
    {
        let _leader = start(&dir, "leader");
        leader_is(&dir, "leader");
        dir.ok(&["log", "1", "Agent A", "error", "first"]);
        assert!(wait_for(Duration::from_secs(5), || {
            let status = status(&dir);
            status["alerts"][0]["delivered"] == 1 && status["alerts"][1]["delivered"] == 1
        }));
    }
    // Swapped, and the webhook's settings edited.
    let edited = format!("{webhook_sink}timeout_ms = 4000\n");
    std::fs::write(
        dir.file("huddle.toml"),
        config_sinks(&[&ntfy_sink, &edited], ""),
    )
    .unwrap();
    dir.ok(&["log", "1", "Agent A", "error", "second"]);
    let _leader = start(&dir, "again");
    leader_is(&dir, "again");
    dir.ok(&["log", "1", "Agent A", "error", "third"]);
    assert!(wait_for(Duration::from_secs(5), || hook_got("third") == 1
        && ntfy_got("third") == 1));
    for content in ["first", "second", "third"] {
        assert_eq!(
            hook_got(content),
            1,
            "webhook, {content}: {:?}",
            delivered(&hook)
        );
        assert_eq!(
            ntfy_got(content),
            1,
            "ntfy, {content}: {:?}",
            ntfy.requests()
        );
    }
}

#[test]
fn a_sink_removed_and_added_back_starts_afresh() {
    let a = HttpRecorder::start();
    let b = HttpRecorder::start();
    let both = config_sinks(&[&named_webhook("a", &a), &named_webhook("b", &b)], "");
    let dir = HuddleDir::with_config(&both);
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    std::fs::write(
        dir.file("huddle.toml"),
        config_sinks(&[&named_webhook("b", &b)], ""),
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || sink_status(&dir, "a").is_null()),
        "a removed sink is forgotten: {}",
        status(&dir)
    );
    dir.ok(&["log", "1", "Agent A", "error", "while a was away"]);
    assert!(wait_for(Duration::from_secs(5), || got(
        &b,
        "while a was away"
    )));
    std::fs::write(dir.file("huddle.toml"), &both).unwrap();
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "a is back"]);
    assert!(wait_for(Duration::from_secs(5), || got(&a, "a is back")));
    assert!(!got(&a, "while a was away"), "{:?}", delivered(&a));
}

#[test]
fn killing_the_leader_mid_delivery_repeats_at_most_its_batch_in_flight() {
    // Failover timing: the first must stay leader until it is killed.
    let _serial = exclusive();
    let slow_failover =
        |text: String| text.replace("leader_timeout_ms = 1000", "leader_timeout_ms = 3000");
    let server = HttpRecorder::start();
    let allow = server.url("/");
    let dir = HuddleDir::with_config(&slow_failover(config(
        &webhook_to(&server.url("/first"), &allow),
        "",
    )));
    let first = start(&dir, "first");
    leader_is(&dir, "first");
    let _second = start(&dir, "second");
    for i in 0..10 {
        dir.ok(&["log", "3", "Agent A", "error", &format!("failure {i}")]);
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(first); // SIGKILL, possibly in the middle of a delivery
                 // From here on deliveries come from the second daemon: send them to
                 // another path, so each request says which leader sent it. The second
                 // cannot lead before leader_timeout_ms (3 s) after the first's last heartbeat.
    let moved = slow_failover(config(&webhook_to(&server.url("/second"), &allow), ""));
    let staged = dir.file("huddle.toml.new");
    std::fs::write(&staged, moved).unwrap();
    std::fs::rename(&staged, dir.file("huddle.toml")).unwrap();
    assert_eq!(
        status(&dir)["leader"],
        "first",
        "the second took over before the test could tell the leaders apart"
    );
    for i in 10..20 {
        dir.ok(&["log", "3", "Agent A", "error", &format!("failure {i}")]);
    }
    let all = wait_for(Duration::from_secs(15), || {
        (0..20).all(|i| got(&server, &format!("failure {i}")))
    });
    assert!(all, "{:?}", delivered(&server));
    let batches = |path: &str| -> Vec<Vec<String>> {
        server
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| summaries(r).into_iter().map(|(s, _)| s).collect())
            .collect()
    };
    let (by_first, by_second) = (batches("/first"), batches("/second"));
    for (leader, batches) in [("first", &by_first), ("second", &by_second)] {
        let sent: Vec<&String> = batches.iter().flatten().collect();
        let mut unique = sent.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            sent.len(),
            "the {leader} leader repeated itself: {batches:?}"
        );
    }
    let in_flight = by_first.last().cloned().unwrap_or_default();
    let repeated: Vec<&String> = by_second
        .iter()
        .flatten()
        .filter(|s| by_first.iter().flatten().any(|f| f == *s))
        .collect();
    assert!(
        repeated.iter().all(|s| in_flight.contains(s)),
        "{repeated:?} sent again, but only the batch in flight ({in_flight:?}) may be"
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

#[test]
fn a_plugins_host_log_lines_reach_huddles_log() {
    // The default sink writes each alert through the `host-log` import.
    let dir = HuddleDir::new();
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "seen in huddle's own log"]);
    let logged = wait_for(Duration::from_secs(5), || {
        daemon_log(&dir, "leader").lines().any(|line| {
            line.contains("Agent A")
                && line.contains("seen in huddle's own log")
                && line.contains("plugin=\"stderr\"")
        })
    });
    assert!(logged, "{}", daemon_log(&dir, "leader"));
}

#[test]
fn alerts_reach_the_sinks_directly_while_paused() {
    if !is_root() {
        eprintln!("skipped: remounting a tmpfs needs root");
        return;
    }
    let server = HttpRecorder::start();
    let fs = Tmpfs::mount("4m");
    let dir = fs.path.join("huddle");
    let init = Command::new(huddle_exe())
        .arg("--dir")
        .arg(&dir)
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success());
    std::fs::write(
        dir.join("huddle.toml"),
        config(&webhook(&server, &server.url("/")), ""),
    )
    .unwrap();
    let huddle = |args: &[&str]| {
        let out = Command::new(huddle_exe())
            .env("XDG_STATE_HOME", state_home_for(&dir))
            .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let mut command = Command::new(huddle_exe());
    command
        .env("XDG_STATE_HOME", state_home_for(&dir))
        .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
        .arg("--dir")
        .arg(&dir)
        .args(["run", "--actor", "leader"]);
    // The daemon's log lives off the file system about to turn read-only.
    let _leader = start_with(command, &fs.path, "leader");
    assert!(wait_for(Duration::from_secs(10), || {
        let status = huddle(&["status", "--json"]);
        status["leader"] == "leader" && status["alerts"][0]["sink"] == "webhook"
    }));
    fs.remount_read_only();
    let alerted = wait_for(Duration::from_secs(10), || {
        delivered(&server)
            .iter()
            .any(|(s, _)| s.contains("huddle paused") && s.contains("Read-only file system"))
    });
    assert!(alerted, "{:?}", delivered(&server));
    fs.remount_read_write();
}

#[test]
fn an_alert_refused_for_good_shows_as_failed_with_the_reason_beside_its_error_on_the_dashboard() {
    let refused = HttpRecorder::start();
    refused.set_status(400);
    let accepted = HttpRecorder::start();
    let dir = HuddleDir::with_config(&config_sinks(
        &[
            &named_webhook("refusing", &refused),
            &named_webhook("accepting", &accepted),
        ],
        "",
    ));
    let _leader = start(&dir, "leader");
    leader_is(&dir, "leader");
    dir.ok(&["log", "1", "Agent A", "error", "the build is red"]);
    let settled = wait_for(Duration::from_secs(10), || {
        sink_status(&dir, "refusing")["failed"] == 1
            && sink_status(&dir, "accepting")["delivered"] == 1
    });
    assert!(settled, "{}", dir.ok(&["status", "--json"]));

    let page = crate::dashboard::Dashboard::start(&dir, &[]);
    let html = ureq::get(&page.url("/"))
        .call()
        .expect("the page")
        .into_body()
        .read_to_string()
        .expect("the page's text");
    let deliveries = html
        .split("the build is red")
        .nth(1)
        .and_then(|rest| rest.split("</ul>").next())
        .expect("the error with its deliveries");
    assert!(
        deliveries
            .contains("refusing: <span class=\"failed\">failed: refused for good by the sink")
            && deliveries.contains("400"),
        "{deliveries}"
    );
    assert!(deliveries.contains("accepting: delivered"), "{deliveries}");
}
