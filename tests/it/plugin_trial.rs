//! `huddle plugins test`: a plugin run once outside any huddle directory,
//! with its output, its host-log lines and any trap; and the render
//! context reaching a 0.2.0 renderer in a real snapshot.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{
    hostile_plugin, huddle_outside, repo_file, HttpRecorder, HuddleDir, OutputWithin, COMMAND_LIMIT,
};

/// An empty directory named `name`, holding no huddle.toml.
struct Outside {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Outside {
    fn named(name: &str) -> Outside {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join(name);
        std::fs::create_dir(&path).expect("create the directory");
        Outside { _tmp: tmp, path }
    }

    /// `huddle plugins test ARGS` run from inside the directory.
    fn plugins_test(&self, args: &[&str]) -> Output {
        huddle_outside(&self.path, &["plugins", "test"])
            .args(args)
            .output_within(COMMAND_LIMIT)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, text).expect("write a file");
        path
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn shown(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn context_renderer() -> PathBuf {
    hostile_plugin("context")
}

#[test]
fn plugins_test_renders_the_sample_events_with_the_context_given_and_prints_host_log_lines_on_stderr(
) {
    let outside = Outside::named("team-notes");
    let plugin = context_renderer();
    let out = outside.plugins_test(&[shown(&plugin), "--k", "7", "--section", "archive"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // The sample's visible events, grouped, with the context of the options
    // and the directory the command ran in.
    for expected in [
        "### Interaction #1\n\nsection=archive k=7 directory=team-notes\n",
        "Can you review the parser change before the release?",
        "### Interaction #2\n",
        "### Interaction #0\n",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("alive"),
        "the heartbeat the default mapper hides was rendered:\n{stdout}"
    );
    assert!(
        stderr.contains(
            "host-log info: rendering 3 interactions, section=archive k=7 directory=team-notes"
        ),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("rendering 3 interactions").count(),
        1,
        "a host-log line shown twice (also through huddle's log):\n{stderr}"
    );
    assert!(
        stderr.contains("implements huddle:plugin/renderer@0.2.0"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("host-log"),
        "host-log lines mixed into the output:\n{stdout}"
    );
    assert!(
        !outside.path.join("huddle.toml").exists() && !outside.path.join("events.log").exists(),
        "plugins test made a huddle directory"
    );
}

#[test]
fn a_0_2_0_renderer_receives_k_and_the_directory_name_in_a_real_snapshot() {
    let dir = HuddleDir::with_config(&format!(
        "[snapshot]\nk = 4\n\n[plugins.renderer]\nplugin = \"{}\"\n",
        shown(&context_renderer())
    ));
    // More interactions than K: the first go to the archive.
    for n in 1..=5 {
        dir.ok(&[
            "log",
            "next",
            "Agent A",
            "question",
            &format!("question {n}"),
        ]);
    }
    let out = dir.run(&["snapshot"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // In a huddle directory, host-log lines join huddle's own log, naming
    // the plugin; debug lines only when asked for.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rendering") && stderr.contains("plugin=\"context.wasm\""),
        "{stderr}"
    );
    assert!(!stderr.contains("configure: 0 settings"), "{stderr}");
    dir.ok(&["log", "next", "Agent A", "question", "question 6"]);
    let out = dir
        .command(&["snapshot"])
        .env("RUST_LOG", "huddle=debug")
        .output_within(COMMAND_LIMIT);
    assert!(
        text(&out.stderr).contains("configure: 0 settings"),
        "{}",
        text(&out.stderr)
    );
    let communication = std::fs::read_to_string(dir.file("communication.md")).unwrap();
    let archive = std::fs::read_to_string(dir.file("archive.md")).unwrap();
    assert!(
        communication.contains("section=communication k=4 directory=huddle\n- "),
        "{communication}"
    );
    assert!(
        archive.contains("section=archive k=4 directory=huddle\n- "),
        "{archive}"
    );
}

#[test]
fn plugins_test_shows_a_mappers_heading_for_every_event_with_the_settings_given() {
    let outside = Outside::named("mapper");
    let events = outside.write(
        "events.jsonl",
        concat!(
            r#"{"interaction":4,"actor":"Ann","type":"answer","content":"yes","timestamp":"2026-05-01T12:00:00Z"}"#,
            "\n\n",
            r#"{"interaction":4,"actor":"Bob","type":"heartbeat","content":"alive","timestamp":"2026-05-01T12:00:01Z","term":2}"#,
            "\n",
        ),
    );
    let out = outside.plugins_test(&[
        shown(&repo_file("plugins/dist/headings.wasm")),
        "--settings",
        "type.answer=Reply",
        "--events",
        shown(&events),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "#4 answer (Ann) -> \"Reply\"\n#4 heartbeat (Bob) -> (hidden)\n"
    );
}

#[test]
fn plugins_test_delivers_the_error_events_through_a_sink_to_an_allowed_server_only() {
    let server = HttpRecorder::start();
    let outside = Outside::named("sink");
    let webhook = repo_file("plugins/dist/webhook.wasm");
    assert_delivers_the_sample_error(&outside, &webhook, &server);
    let setting = format!("url={}", server.url("/hook"));
    // Without --allow the allowlist is empty, as in huddle.toml: refused,
    // said so, and nothing reaches the server.
    let out = outside.plugins_test(&[shown(&webhook), "--settings", &setting]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the sink refused the batch of 1 alert(s): permanent")
            && stderr.contains("allowlist is empty"),
        "{stderr}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn plugins_test_reports_a_trap_with_the_plugins_panic_message_and_fails() {
    let outside = Outside::named("trap");
    let out = outside.plugins_test(&[shown(&hostile_plugin("panic"))]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("trapped") && stderr.contains("hostile plugin panicked on purpose"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn plugins_test_names_a_setting_configure_refuses() {
    let outside = Outside::named("settings");
    let out = outside.plugins_test(&[
        shown(&repo_file("plugins/dist/webhook.wasm")),
        "--settings",
        "urll=http://127.0.0.1:9/",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("configure refused its settings") && stderr.contains("`urll`"),
        "{stderr}"
    );
}

#[test]
fn plugins_test_refuses_bad_input_naming_the_file_line_field_or_argument() {
    let outside = Outside::named("bad");
    let plugin = context_renderer();
    let events = outside.write(
        "events.jsonl",
        concat!(
            r#"{"interaction":1,"actor":"Ann","type":"question","content":"fine","timestamp":"2026-05-01T12:00:00Z"}"#,
            "\n",
            r#"{"interaction":1,"actor":"Ann","type":"bad type!","content":"x","timestamp":"2026-05-01T12:00:00Z"}"#,
            "\n",
        ),
    );
    let out = outside.plugins_test(&[shown(&plugin), "--events", shown(&events)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("events.jsonl, line 2") && stderr.contains("type"),
        "{stderr}"
    );
    let empty = outside.write("empty.jsonl", "\n\n");
    let out = outside.plugins_test(&[shown(&plugin), "--events", shown(&empty)]);
    assert!(
        text(&out.stderr).contains("holds no event"),
        "{}",
        text(&out.stderr)
    );
    let out = outside.plugins_test(&[shown(&plugin), "--settings", "no-equals-sign"]);
    assert!(
        text(&out.stderr).contains("`no-equals-sign`: expected KEY=VALUE"),
        "{}",
        text(&out.stderr)
    );
    let not_wasm = outside.write("plugin.wasm", "not a component");
    let out = outside.plugins_test(&[shown(&not_wasm)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("plugin.wasm"),
        "{}",
        text(&out.stderr)
    );
}

/// The walk-throughs of examples/README.md end with `plugins test` on the
/// Python renderer and the JavaScript sink: what they say it prints.
#[test]
fn plugins_test_runs_the_python_renderer_and_the_js_sink_as_the_guide_says() {
    let outside = Outside::named("polyglot");
    let python = repo_file("examples/python-renderer/python-renderer.wasm");
    let out = outside.plugins_test(&[shown(&python), "--settings", "max_chars=40"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("host-log debug: python-renderer: max_chars = 40"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("| --- | --- | --- | --- |"),
        "{}",
        text(&out.stdout)
    );
    let server = HttpRecorder::start();
    let js = repo_file("examples/js-sink/js-sink.wasm");
    assert_delivers_the_sample_error(&outside, &js, &server);
}

/// `plugins test SINK --settings url=… --allow …` delivers the sample's one
/// error event to `server`, once, and says so.
fn assert_delivers_the_sample_error(outside: &Outside, sink: &Path, server: &HttpRecorder) {
    let setting = format!("url={}", server.url("/hook"));
    let out = outside.plugins_test(&[
        shown(sink),
        "--settings",
        &setting,
        "--allow",
        &server.url("/"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "delivered 1 alert(s)\n");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let body = &requests[0].body;
    assert!(
        body.contains("Failed to acquire lock on events.log"),
        "{body}"
    );
}
