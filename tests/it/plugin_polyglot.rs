//! The example plugins written in Python (componentize-py) and JavaScript
//! (componentize-js), committed as built by examples/build-polyglot.sh, run
//! by the real binary like any other component.

use std::time::Duration;

use crate::common::{repo_file, wait_for, HttpRecorder, HuddleDir};
use crate::daemon::{Daemon, FAST};

const PYTHON_RENDERER: &str = "examples/python-renderer/python-renderer.wasm";
const JS_SINK: &str = "examples/js-sink/js-sink.wasm";

fn plugin_path(relative: &str) -> String {
    repo_file(relative).display().to_string()
}

#[test]
fn plugins_check_accepts_the_python_renderer_and_the_js_sink_for_their_worlds() {
    let dir = HuddleDir::new();
    for (file, world) in [
        (PYTHON_RENDERER, "huddle:plugin/renderer@0.2.0"),
        (JS_SINK, "huddle:plugin/alert-sink@0.2.0"),
    ] {
        let out = dir.ok_compiling(&["plugins", "check", &plugin_path(file)]);
        assert!(out.contains(&format!("implements {world}")), "{out}");
    }
}

#[test]
fn a_snapshot_rendered_by_the_python_renderer_equals_its_expected_files_byte_for_byte() {
    let dir = HuddleDir::with_config(&format!(
        "[plugins.renderer]\nplugin = {:?}\n[plugins.renderer.settings]\nmax_chars = 60\n",
        plugin_path(PYTHON_RENDERER)
    ));
    // Fixed timestamps and ids: the expected files are exact. The contents
    // try to break the table (pipes, newlines, markup) and the length limit.
    let events = [
        (1, "Agent A", "question", "Who owns the deploy script?"),
        (
            1,
            "Agent B",
            "answer",
            "I do | since Monday, \\| kept\nsee `deploy.sh`",
        ),
        (2, "Agent A", "status", "**done** with #12 <br> [link](x)"),
        (
            2,
            "Agent C",
            "question",
            "a long question that goes on and on past the sixty characters the setting keeps",
        ),
        (3, "Agent B", "answer", "ok"),
    ];
    dir.append_fixed_events(&events);
    dir.ok_compiling(&["snapshot", "-k", "2"]);
    for name in ["communication.md", "archive.md"] {
        let rendered = std::fs::read(dir.file(name)).unwrap();
        let expected = std::fs::read(repo_file(&format!(
            "examples/python-renderer/expected/{name}"
        )))
        .unwrap();
        assert!(
            rendered == expected,
            "{name} differs from examples/python-renderer/expected/{name}:\n{}",
            String::from_utf8_lossy(&rendered)
        );
    }
    let errors: Vec<_> = dir
        .events()
        .into_iter()
        .filter(|e| e["type"] == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn an_alert_delivered_through_the_js_sink_reaches_a_real_http_server_with_its_token() {
    let server = HttpRecorder::start();
    let dir = HuddleDir::with_config(&format!(
        "{FAST}\n[alerts]\nmin_interval_ms = 100\n\n[[alerts.sinks]]\nplugin = {:?}\nname = \"js\"\n\
         url = \"{}\"\ntoken = \"s3cret\"\nallow = [\"{}\"]\nallow_headers = [\"authorization\"]\n",
        plugin_path(JS_SINK),
        server.url("/alerts"),
        server.url("/")
    ));
    // Compiling is set-up, not what this test is about.
    let warmed = dir.ok_compiling(&["plugins", "warm"]);
    assert!(warmed.contains("js-sink.wasm"), "{warmed}");
    let daemon = Daemon::start(&dir, "d");
    assert!(
        crate::daemon::leading_with_sink(&dir, "d", "js"),
        "the leader took up the sink: {}",
        daemon.log_text()
    );
    dir.ok(&["log", "4", "builder", "error", "disk full on builder"]);
    let arrived = wait_for(Duration::from_secs(30), || {
        server
            .requests()
            .iter()
            .any(|r| r.body.contains("disk full on builder"))
    });
    assert!(arrived, "nothing arrived: {}", daemon.log_text());
    let request = server
        .requests()
        .into_iter()
        .find(|r| r.body.contains("disk full on builder"))
        .unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/alerts");
    assert_eq!(request.content_type, "application/json");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("authorization").as_deref(), Some("Bearer s3cret"));
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    let alert = &body["alerts"][0];
    assert_eq!(alert["actor"], "builder", "{body}");
    assert_eq!(alert["type"], "error", "{body}");
    assert_eq!(alert["interaction"], 4, "{body}");
    assert_eq!(alert["count"], 1, "{body}");
    assert_eq!(alert["source"], "huddle", "{body}");
}
