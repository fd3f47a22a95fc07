//! `huddle mcp` driven by a real MCP client: the Python SDK (PyPI `mcp`
//! 2.x, in the virtualenv scripts/test makes) runs tests/mcp/drive.py, one
//! scenario per test, against the real binary over stdio and streamable
//! HTTP. A scenario prints `PASS NAME` last; anything else fails the test.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{
    exclusive, huddle_exe, plugin_cache, stderr, wait_output_within, HuddleDir, OutputWithin,
};

/// The longest one scenario may take (the 1,000-event ones take seconds).
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);

/// The virtualenv's python (HUDDLE_MCP_PYTHON overrides it).
fn python() -> PathBuf {
    let python = std::env::var_os("HUDDLE_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: scripts/test creates the virtualenv with the MCP SDK \
         (python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install 'mcp>=2,<3')",
        python.display()
    );
    python
}

/// Runs one scenario of drive.py against `dir`; panics with its output
/// unless it passed.
fn scenario(dir: &HuddleDir, name: &str, extra: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/drive.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(name)
        .arg("--huddle")
        .arg(huddle_exe())
        .arg("--dir")
        .arg(dir.path())
        .args(extra)
        .env_remove("HUDDLE_DIR")
        .env("XDG_STATE_HOME", dir.state_home())
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .stdin(Stdio::null())
        .output_within(SCENARIO_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.lines().last() == Some(&format!("PASS {name}")),
        "scenario {name} failed ({}):\n{stdout}\n{}",
        out.status,
        stderr(&out)
    );
    stdout
}

/// `huddle mcp --http` on a port of its own, stopped with the value.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn start(dir: &HuddleDir, extra: &[&str]) -> HttpServer {
        let mut args = vec!["mcp", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = dir
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start huddle mcp --http");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("serving MCP on ").nth(1) {
                    let _ = sender.send(url.trim().to_string());
                }
            }
        });
        let url = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("huddle mcp --http did not say where it serves within 30 s");
            }
        };
        HttpServer { child, url }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_tool_is_listed_with_its_contracted_schema() {
    scenario(&HuddleDir::new(), "schemas", &[]);
}

#[test]
fn each_tool_answers_as_the_services_and_the_cli_do() {
    scenario(&HuddleDir::new(), "tools", &[]);
}

#[test]
fn bad_input_is_a_tool_error_in_the_clis_words_and_nothing_is_written() {
    scenario(&HuddleDir::new(), "bad_input", &[]);
}

#[test]
fn a_server_pinned_to_an_actor_refuses_to_log_heartbeat_or_ack_for_another() {
    scenario(&HuddleDir::new(), "pinned", &[]);
}

#[test]
fn a_paused_huddle_names_the_pause_and_huddle_resume_and_writes_after_resume() {
    scenario(&HuddleDir::new(), "paused", &[]);
}

#[test]
fn two_stdio_clients_logging_500_events_each_write_each_once_with_unique_interactions() {
    let _heavy = exclusive();
    scenario(&HuddleDir::new(), "concurrent_stdio", &[]);
}

#[test]
fn two_http_clients_logging_500_events_each_write_each_once_with_unique_interactions() {
    let _heavy = exclusive();
    let dir = HuddleDir::new();
    let server = HttpServer::start(&dir, &[]);
    scenario(&dir, "concurrent_http", &["--url", &server.url]);
}

#[test]
fn clients_logging_beside_the_briefs_shell_appender_lose_nothing_and_next_stays_above_every_number()
{
    let _heavy = exclusive();
    let dir = HuddleDir::new();
    let script = crate::common::baseline_script("log_event.sh");
    // The shell appender runs for as long as the clients do.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shell = {
        let (path, stop) = (dir.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut written = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = Command::new("bash")
                    .arg(&script)
                    .args([
                        &format!("{}", written % 50 + 1),
                        "shell",
                        "note",
                        &format!("shell {written}"),
                    ])
                    .current_dir(&path)
                    .stdin(Stdio::null())
                    .output_within(SCENARIO_LIMIT);
                assert!(
                    out.status.success(),
                    "log_event.sh failed: {}",
                    stderr(&out)
                );
                written += 1;
            }
            written
        })
    };
    scenario(&dir, "concurrent_with_shell", &[]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = shell.join().expect("the shell appender's thread");
    assert!(
        written > 0,
        "the shell appender never ran beside the clients"
    );
    let events = dir.events();
    for i in 0..written {
        let content = format!("shell {i}");
        let copies = events
            .iter()
            .filter(|e| e["content"] == content.as_str())
            .count();
        assert_eq!(copies, 1, "{content:?} is in the log {copies} times");
    }
}

#[test]
fn the_tools_work_beside_a_running_daemon() {
    let _heavy = exclusive();
    let dir = HuddleDir::with_config(crate::daemon::FAST);
    let _daemon = crate::daemon::Daemon::start(&dir, "d1");
    crate::common::wait_until(Duration::from_secs(20), || {
        (crate::daemon::status(&dir)["leader"] == "d1").then_some(())
    })
    .expect("the daemon leads");
    scenario(&dir, "beside_daemon", &[]);
}

#[test]
fn wait_returns_within_100_ms_of_an_append_by_the_cli() {
    let _timing = exclusive();
    scenario(&HuddleDir::new(), "wait", &[]);
}

#[test]
fn a_snapshot_notifies_listen_subscribers_that_communication_md_changed() {
    scenario(&HuddleDir::new(), "resources", &[]);
}

#[test]
fn a_snapshot_notifies_legacy_resource_subscribers_that_communication_md_changed() {
    scenario(&HuddleDir::new(), "resources_legacy", &[]);
}

#[test]
fn streamable_http_serves_the_tools_on_loopback() {
    let dir = HuddleDir::new();
    let server = HttpServer::start(&dir, &[]);
    scenario(&dir, "http_tools", &["--url", &server.url]);
}

#[test]
fn streamable_http_with_a_token_refuses_every_request_without_it() {
    let dir = HuddleDir::new();
    let server = HttpServer::start(&dir, &["--token", "s3cret-token"]);
    scenario(
        &dir,
        "http_token",
        &["--url", &server.url, "--token", "s3cret-token"],
    );
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused_at_start() {
    let dir = HuddleDir::new();
    let out = dir
        .command(&["mcp", "--http", "0.0.0.0:0"])
        .env_remove("HUDDLE_MCP_TOKEN")
        .output_within(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0.0.0.0:0 is not a loopback address")
            && stderr(&out).contains("--token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn garbage_on_stdio_is_answered_and_the_server_goes_on_serving() {
    let dir = HuddleDir::new();
    let mut child = dir
        .command(&["mcp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start huddle mcp");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut stdin = child.stdin.take().expect("piped stdin");
    let requests = [
        "{this is not json".to_string(),
        r#"{"jsonrpc":"2.0","id":7,"method":"no/such/method"}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#.to_string(),
    ];
    for request in &requests {
        writeln!(stdin, "{request}").expect("write to huddle mcp");
    }
    stdin.flush().expect("flush");
    let answered = crate::common::wait_until(Duration::from_secs(30), || {
        receiver
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|line| line.contains(r#""id":1"#) && line.contains("serverInfo"))
    });
    drop(stdin);
    let out = wait_output_within(child, Duration::from_secs(30), "huddle mcp");
    assert!(
        answered.is_some_and(|line| line.contains(r#""name":"huddle""#)),
        "no answer to initialize after garbage; stderr: {}",
        stderr(&out)
    );
    // Standard input closed: the server ends cleanly.
    assert!(out.status.success(), "{}: {}", out.status, stderr(&out));
}
