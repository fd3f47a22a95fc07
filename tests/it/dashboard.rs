//! `huddle dashboard` over plain HTTP: the JSON endpoints, the event
//! stream and its resumption, /healthz, /metrics, the token, the headers.
//! (The page in a real browser: tests/it/dashboard_browser.rs.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::common::{exclusive, stderr, wait_until, HuddleDir};
use crate::daemon::{Daemon, FAST};

/// The longest a server may take to say where it listens.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running `huddle dashboard` (or `huddle run --dashboard`), killed on drop.
pub(crate) struct Dashboard {
    child: Child,
    pub(crate) base: String,
    /// What it printed on stderr after its address.
    _stderr: std::thread::JoinHandle<()>,
}

impl Dashboard {
    pub(crate) fn start(dir: &HuddleDir, extra: &[&str]) -> Dashboard {
        let mut args = vec!["dashboard", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Dashboard::spawn(dir, &args)
    }

    /// Starts `huddle ARGS` and waits for the dashboard's address line.
    pub(crate) fn spawn(dir: &HuddleDir, args: &[&str]) -> Dashboard {
        let mut child = dir
            .command(args)
            .env_remove("HUDDLE_DASHBOARD_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start huddle dashboard");
        let pipe = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("huddle dashboard: serving on ").nth(1) {
                    let _ = tx.send(rest.trim_end_matches('/').to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(START_LIMIT)
            .unwrap_or_else(|_| panic!("huddle {args:?} did not say where it listens"));
        Dashboard {
            child,
            base,
            _stderr: reader,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .proxy(None)
        .build()
        .into()
}

/// GET with optional headers: status, headers, body.
pub(crate) fn get(url: &str, headers: &[(&str, &str)]) -> (u16, ureq::http::HeaderMap, String) {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("body of {url}: {e}"));
    (status, headers, body)
}

fn get_json(url: &str) -> Value {
    let (status, _, body) = get(url, &[]);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} is not JSON ({e}): {body}"))
}

/// An open `/api/stream`: its `huddle` events, (id, event JSON), as they come.
pub(crate) struct Stream {
    pub(crate) events: mpsc::Receiver<(String, Value)>,
    _reader: std::thread::JoinHandle<()>,
}

impl Stream {
    pub(crate) fn open(url: &str, headers: &[(&str, &str)]) -> Stream {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut request = agent.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let body = response.into_body().into_reader();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
            for line in BufReader::new(body).lines().map_while(Result::ok) {
                if line.is_empty() {
                    if kind == "huddle" {
                        let event: Value = serde_json::from_str(&data).expect("event JSON");
                        if tx.send((id.clone(), event)).is_err() {
                            return;
                        }
                    }
                    (kind, data) = (String::new(), String::new());
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("event:") {
                    kind = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
        });
        Stream {
            events: rx,
            _reader: reader,
        }
    }

    /// The next `count` events, each within `limit`.
    fn take(&self, count: usize, limit: Duration) -> Vec<(String, Value)> {
        (0..count)
            .map(|i| {
                self.events
                    .recv_timeout(limit)
                    .unwrap_or_else(|_| panic!("stream event {} of {count} did not come", i + 1))
            })
            .collect()
    }

    /// Nothing more arrives within `quiet`.
    fn assert_quiet(&self, quiet: Duration) {
        if let Ok((id, event)) = self.events.recv_timeout(quiet) {
            panic!("unexpected stream event {id}: {event}");
        }
    }
}

fn contents(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, fed)| fed["event"]["content"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn api_status_is_the_object_huddle_status_json_prints() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "next", "alice", "question", "ready?"]);
    dir.ok(&["log", "0", "bob", "error", "disk on fire"]);
    let dashboard = Dashboard::start(&dir, &[]);
    let api = get_json(&dashboard.url("/api/status"));
    let cli: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status JSON");
    // Ages are measured at each call; everything else must be the same.
    let without_ages = |mut value: Value| {
        fn strip(value: &mut Value) {
            match value {
                Value::Object(map) => {
                    map.retain(|key, _| !key.ends_with("age_secs"));
                    map.values_mut().for_each(strip);
                }
                Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut value);
        value
    };
    let keys = |value: &Value| {
        value
            .as_object()
            .map(|map| map.keys().cloned().collect::<Vec<_>>())
    };
    assert_eq!(keys(&api), keys(&cli), "the same fields, in the same order");
    assert_eq!(without_ages(api.clone()), without_ages(cli));
    assert_eq!(api["events"], 2);
    assert_eq!(api["events_by_type"]["error"], 1);
    assert_eq!(api["last_errors"][0]["content"], "disk on fire");
}

#[test]
fn api_events_pages_through_the_log_after_a_position_with_a_limit() {
    let dir = HuddleDir::new();
    for n in 1..=5 {
        dir.ok(&["log", "next", "alice", "note", &format!("event {n}")]);
    }
    let dashboard = Dashboard::start(&dir, &[]);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..3 {
        let url = match &after {
            Some(position) => dashboard.url(&format!("/api/events?after={position}&limit=2")),
            None => dashboard.url("/api/events?limit=2"),
        };
        let page = get_json(&url);
        let events = page["events"].as_array().expect("events").clone();
        assert!(events.len() <= 2, "{page}");
        for fed in &events {
            seen.push(
                fed["event"]["content"]
                    .as_str()
                    .expect("content")
                    .to_string(),
            );
        }
        after = events
            .last()
            .map(|fed| fed["position"].as_str().expect("position").to_string());
        if page["more"] == false {
            break;
        }
    }
    let expected: Vec<String> = (1..=5).map(|n| format!("event {n}")).collect();
    assert_eq!(seen, expected);

    // After the last event: nothing, and no more.
    let last = get_json(&dashboard.url(&format!(
        "/api/events?after={}",
        after.expect("a last position")
    )));
    assert_eq!(last["events"].as_array().map(Vec::len), Some(0));
    assert_eq!(last["more"], false);
}

#[test]
fn api_events_refuses_a_made_up_position_and_a_bad_limit_naming_the_field() {
    let dir = HuddleDir::new();
    dir.ok(&[
        "log",
        "next",
        "alice",
        "note",
        "a line long enough to land inside",
    ]);
    let log_before = dir.log_bytes();
    let dashboard = Dashboard::start(&dir, &[]);
    for (query, field) in [
        ("after=7-1", "after"),
        ("after=1000000-1", "after"),
        ("after=banana", "after"),
        ("after=0-5", "after"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=-3", "limit"),
    ] {
        let (status, _, body) = get(&dashboard.url(&format!("/api/events?{query}")), &[]);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(field), "{query}: {body}");
    }
    // Read-only: a position inside a line was not read as a malformed entry.
    assert_eq!(dir.log_bytes(), log_before);
    assert!(!dir.file("events.error.log").exists());
}

#[test]
fn the_stream_sends_new_events_with_their_position_as_id() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "next", "alice", "note", "before the stream"]);
    let dashboard = Dashboard::start(&dir, &[]);
    let stream = Stream::open(&dashboard.url("/api/stream"), &[]);
    // The stream starts at the head: the first event it sends is new.
    dir.ok(&["log", "next", "bob", "question", "after one"]);
    dir.ok(&["log", "0", "carol", "error", "after two"]);
    let events = stream.take(2, Duration::from_secs(5));
    assert_eq!(contents(&events), ["after one", "after two"]);
    for (id, fed) in &events {
        assert_eq!(fed["position"].as_str(), Some(id.as_str()));
    }
    // The same positions as /api/events gives.
    let page = get_json(&dashboard.url("/api/events"));
    let positions: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .skip(1)
        .map(|fed| fed["position"].as_str().expect("position"))
        .collect();
    let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(positions, ids);
}

#[test]
fn a_stream_resumed_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let dir = HuddleDir::new();
    let dashboard = Dashboard::start(&dir, &[]);
    let first = Stream::open(&dashboard.url("/api/stream"), &[]);
    for n in 1..=3 {
        dir.ok(&["log", "next", "alice", "note", &format!("event {n}")]);
    }
    let seen = first.take(3, Duration::from_secs(5));
    assert_eq!(contents(&seen), ["event 1", "event 2", "event 3"]);
    drop(first);
    // Appended while no stream is open.
    for n in 4..=6 {
        dir.ok(&["log", "next", "bob", "note", &format!("event {n}")]);
    }
    let last_id = seen[2].0.clone();
    let resumed = Stream::open(
        &dashboard.url("/api/stream"),
        &[("Last-Event-ID", last_id.as_str())],
    );
    dir.ok(&["log", "next", "carol", "note", "event 7"]);
    let rest = resumed.take(4, Duration::from_secs(5));
    assert_eq!(
        contents(&rest),
        ["event 4", "event 5", "event 6", "event 7"]
    );
    resumed.assert_quiet(Duration::from_millis(300));
}

#[test]
fn healthz_is_200_while_the_leader_beats_and_503_with_a_reason_once_it_is_killed() {
    let _heavy = exclusive();
    let dir = HuddleDir::with_config(FAST);
    let dashboard = Dashboard::start(&dir, &[]);
    let (status, _, body) = get(&dashboard.url("/healthz"), &[]);
    assert_eq!(status, 503, "no daemon yet: {body}");
    assert!(body.contains("no leader"), "{body}");
    assert_eq!(body.lines().count(), 1, "one line: {body:?}");

    let leader = Daemon::start(&dir, "only-daemon");
    let healthy = wait_until(Duration::from_secs(15), || {
        let (status, _, body) = get(&dashboard.url("/healthz"), &[]);
        (status == 200).then_some(body)
    })
    .expect("/healthz became 200 once the daemon led");
    assert!(healthy.contains("only-daemon"), "{healthy}");

    leader.signal(libc::SIGKILL);
    drop(leader);
    let (status, body) = wait_until(Duration::from_secs(15), || {
        let (status, _, body) = get(&dashboard.url("/healthz"), &[]);
        (status == 503).then_some((status, body))
    })
    .expect("/healthz became 503 once the leader was killed");
    assert_eq!(status, 503);
    assert!(
        body.contains("only-daemon") && body.contains("silent"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "one line: {body:?}");
}

#[test]
fn run_with_dashboard_serves_the_dashboard_beside_the_daemon() {
    let _heavy = exclusive();
    let dir = HuddleDir::with_config(FAST);
    let daemon = Dashboard::spawn(
        &dir,
        &[
            "run",
            "--actor",
            "leader-with-page",
            "--dashboard",
            "127.0.0.1:0",
        ],
    );
    let body = wait_until(Duration::from_secs(15), || {
        let (status, _, body) = get(&daemon.url("/healthz"), &[]);
        (status == 200).then_some(body)
    })
    .expect("the daemon's own dashboard reports it leading");
    assert!(body.contains("leader-with-page"), "{body}");
    let status = get_json(&daemon.url("/api/status"));
    assert_eq!(status["leader"], "leader-with-page");
}

#[test]
fn the_token_is_required_on_every_route_including_the_stream() {
    let dir = HuddleDir::new();
    let dashboard = Dashboard::start(&dir, &["--token", "s3cret-token"]);
    let routes = [
        "/",
        "/panel",
        "/assets/app.js",
        "/api/status",
        "/api/events",
        "/api/stream",
        "/healthz",
        "/metrics",
    ];
    for route in routes {
        let url = dashboard.url(route);
        let (status, headers, body) = get(&url, &[]);
        assert_eq!(status, 401, "{route} without a token: {body}");
        assert!(headers.contains_key("www-authenticate"), "{route}");
        let (status, _, _) = get(&url, &[("Authorization", "Bearer wrong-token")]);
        assert_eq!(status, 401, "{route} with a wrong token");
        let (status, _, _) = get(&url, &[("Authorization", "s3cret-token")]);
        assert_eq!(status, 401, "{route} with the token but not as a bearer");
    }
    // With the token: every route answers (the stream stays open, so it is
    // checked by its status and type only).
    for route in routes
        .iter()
        .filter(|r| **r != "/api/stream" && **r != "/healthz")
    {
        let (status, _, body) = get(
            &dashboard.url(route),
            &[("Authorization", "Bearer s3cret-token")],
        );
        assert_eq!(status, 200, "{route} with the token: {body}");
    }
    let (status, _, _) = get(
        &dashboard.url("/healthz"),
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert_eq!(status, 503, "/healthz answers (no leader) once authorised");
    let stream = Stream::open(
        &dashboard.url("/api/stream"),
        &[("Authorization", "Bearer s3cret-token")],
    );
    dir.ok(&["log", "next", "alice", "note", "streamed with a token"]);
    assert_eq!(
        contents(&stream.take(1, Duration::from_secs(5))),
        ["streamed with a token"]
    );

    // A browser opens /?token= once and keeps a cookie for the stream.
    let (status, headers, _) = get(&dashboard.url("/?token=wrong"), &[]);
    assert_eq!(status, 401);
    assert!(!headers.contains_key("set-cookie"));
    let (status, headers, _) = get(&dashboard.url("/?token=s3cret-token"), &[]);
    assert_eq!(status, 303);
    let cookie = headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_string();
    assert!(
        !cookie.contains("s3cret-token"),
        "the cookie is not the token: {cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value");
    let (status, _, _) = get(&dashboard.url("/api/status"), &[("Cookie", pair)]);
    assert_eq!(status, 200);
    let (status, _, _) = get(
        &dashboard.url("/api/status"),
        &[("Cookie", "huddle_dashboard_token=0000")],
    );
    assert_eq!(status, 401);
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused_at_start() {
    let dir = HuddleDir::new();
    for args in [
        vec!["dashboard", "--addr", "0.0.0.0:0"],
        vec!["run", "--actor", "d", "--dashboard", "0.0.0.0:0"],
    ] {
        let out = dir
            .command(&args)
            .env_remove("HUDDLE_DASHBOARD_TOKEN")
            .output()
            .expect("run huddle");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains("not a loopback address")
                && message.contains("--token")
                && message.contains("HUDDLE_DASHBOARD_TOKEN"),
            "{args:?}: {message}"
        );
    }
    // Nothing was written: the daemon never started.
    assert!(dir.events().is_empty());
    let out = dir
        .command(&["dashboard", "--addr", "127.0.0.1:0", "--token", "  "])
        .output()
        .expect("run huddle");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));
}

#[test]
fn every_response_carries_a_strict_content_security_policy() {
    let dir = HuddleDir::new();
    let open = Dashboard::start(&dir, &[]);
    let guarded = Dashboard::start(&dir, &["--token", "t0ken"]);
    let cases = [
        (open.url("/"), &[][..]),
        (open.url("/panel"), &[][..]),
        (open.url("/assets/app.js"), &[][..]),
        (open.url("/assets/app.css"), &[][..]),
        (open.url("/api/status"), &[][..]),
        (open.url("/api/events?limit=0"), &[][..]),
        (open.url("/healthz"), &[][..]),
        (open.url("/metrics"), &[][..]),
        (open.url("/no-such-page"), &[][..]),
        (open.url("/"), &[("Host", "attacker.example")][..]),
        (guarded.url("/"), &[][..]),
    ];
    for (url, headers) in cases {
        let (status, response, _) = get(&url, headers);
        let policy = response
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{url} ({status}) has no CSP"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(policy.contains(directive), "{url}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{url}: {policy}");
        assert_eq!(
            response
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{url}"
        );
    }
}

#[test]
fn a_page_asked_for_under_another_host_name_is_refused_on_loopback_without_a_token() {
    let dir = HuddleDir::new();
    let dashboard = Dashboard::start(&dir, &[]);
    let (status, _, _) = get(
        &dashboard.url("/api/status"),
        &[("Host", "rebound.example:7777")],
    );
    assert_eq!(status, 421);
    for host in ["localhost:7777", "127.0.0.1", "[::1]:80"] {
        let (status, _, body) = get(&dashboard.url("/api/status"), &[("Host", host)]);
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[test]
fn metrics_are_prometheus_text_with_every_name_prefixed_huddle() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "next", "alice", "question", "q"]);
    dir.ok(&["log", "0", "bob", "error", "e1"]);
    dir.ok(&["log", "0", "bob", "error", "e2"]);
    dir.ok(&["snapshot"]);
    let dashboard = Dashboard::start(&dir, &[]);
    let (status, headers, body) = get(&dashboard.url("/metrics"), &[]);
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
    let sample = regex_lite_sample();
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split(' ');
            let (kind, name) = (words.next(), words.next());
            assert!(matches!(kind, Some("HELP" | "TYPE")), "{line}");
            assert!(name.is_some_and(|n| n.starts_with("huddle_")), "{line}");
        } else {
            assert!(sample(line), "not a sample line: {line:?}");
        }
    }
    for expected in [
        "huddle_events 3",
        "huddle_appends_total{type=\"error\"} 2",
        "huddle_appends_total{type=\"question\"} 1",
        "huddle_leader_term 0",
        "huddle_snapshot_duration_seconds_count 1",
        "huddle_snapshot_duration_seconds_bucket{le=\"+Inf\"} 1",
        "huddle_snapshot_bytes_behind 0",
        "huddle_sync_offline 0",
        "huddle_quarantined_lines 0",
        "huddle_paused 0",
    ] {
        assert!(
            body.lines().any(|l| l == expected),
            "{expected} missing:\n{body}"
        );
    }
    for family in [
        "huddle_alert_deliveries_total",
        "huddle_alert_failures_total",
        "huddle_sync_bytes_not_pushed",
        "huddle_leader_heartbeat_age_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{body}"
        );
    }
}

/// A Prometheus sample line: `huddle_name{label="value",...} number`.
fn regex_lite_sample() -> impl Fn(&str) -> bool {
    |line: &str| {
        let Some((series, value)) = line.rsplit_once(' ') else {
            return false;
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        let labels_ok = name_end == series.len()
            || (series.ends_with('}')
                && series[name_end + 1..series.len() - 1]
                    .split(',')
                    .all(|pair| {
                        pair.split_once('=').is_some_and(|(key, quoted)| {
                            !key.is_empty()
                                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                                && quoted.len() >= 2
                                && quoted.starts_with('"')
                                && quoted.ends_with('"')
                        })
                    }));
        name.starts_with("huddle_")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && labels_ok
            && (value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN")
    }
}

#[test]
fn hostile_strings_from_the_log_are_escaped_in_the_served_html() {
    let dir = HuddleDir::new();
    let actor = r#"<img src=x onerror="alert(1)">"#;
    let content = "<script>alert(2)</script> **bold** [click](javascript:alert(3))";
    dir.ok(&["log", "next", actor, "question", content]);
    dir.ok(&["log", "0", actor, "error", content]);
    dir.ok(&["snapshot"]);
    let dashboard = Dashboard::start(&dir, &[]);
    for route in ["/", "/panel"] {
        let (status, _, html) = get(&dashboard.url(route), &[]);
        assert_eq!(status, 200);
        for raw in [
            "<img src=x",
            "<script>alert",
            "href=\"javascript:",
            "onerror=\"alert",
        ] {
            assert!(
                !html.contains(raw),
                "{route} holds {raw:?} unescaped:\n{html}"
            );
        }
        assert!(
            html.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"),
            "{route}:\n{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
            "{route}:\n{html}"
        );
    }
}

#[test]
fn the_sample_alerting_rules_use_only_metrics_the_dashboard_serves() {
    let rules = std::fs::read_to_string(crate::common::repo_file(
        "examples/prometheus/huddle-rules.yml",
    ))
    .expect("the sample rules");
    let dir = HuddleDir::new();
    dir.ok(&["log", "0", "bob", "error", "e"]);
    let dashboard = Dashboard::start(&dir, &[]);
    let (_, _, metrics) = get(&dashboard.url("/metrics"), &[]);
    let served: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    let mut used = 0;
    for expr in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
    {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("huddle_") {
                continue;
            }
            used += 1;
            let family = word.strip_suffix("_bucket").unwrap_or(word);
            assert!(
                served.contains(&family),
                "the rules use {word}, which /metrics does not serve ({served:?})"
            );
        }
    }
    assert!(used >= 8, "the rules use {used} metrics");
}

#[test]
fn run_with_dashboard_on_a_taken_port_fails_before_the_daemon_writes_anything() {
    let dir = HuddleDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let out = dir.run(&["run", "--actor", "never-leads", "--dashboard", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
    assert!(dir.events().is_empty(), "the daemon never started");
}

#[test]
fn an_exported_dashboard_token_does_not_stop_a_plain_huddle_run() {
    let _heavy = exclusive();
    let dir = HuddleDir::with_config(FAST);
    let mut daemon = dir
        .command(&["run", "--actor", "plain-daemon"])
        .env("HUDDLE_DASHBOARD_TOKEN", "exported-for-the-dashboard")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start huddle run");
    let led = wait_until(Duration::from_secs(15), || {
        let status: Value =
            serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status JSON");
        (status["leader"] == "plain-daemon").then_some(())
    });
    let _ = daemon.kill();
    let out = daemon.wait_with_output().expect("the daemon's output");
    assert!(led.is_some(), "the daemon never led: {}", stderr(&out));
}
