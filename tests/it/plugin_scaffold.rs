//! `huddle plugins new`: every world in every language gives a project that
//! builds with its own `build.sh`, unchanged, that `huddle plugins check`
//! accepts for its world at 0.2.0, whose `configure` refuses a misspelt
//! setting by name, and whose skeleton works in a real huddle directory
//! (renders a snapshot, maps headings, delivers to a real HTTP server).
//!
//! The build tools are the ones scripts/test installs: Rust's wasm32-wasip2
//! target, with the crates from the local registry (offline: the default
//! plugins use the same ones); componentize-py in target/mcp-venv, put first
//! on PATH; componentize-js in target/polyglot-npm, linked as the project's
//! node_modules where `npm ci` would install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    exclusive, huddle_outside, is_root, wait_for, wait_until, HttpRecorder, HuddleDir,
    OutputWithin, Tmpfs, COMMAND_LIMIT, COMPILE_LIMIT,
};
use crate::daemon::{status, Daemon, FAST};

/// A first Rust build compiles the bindings generator; on a loaded machine
/// that and an interpreter's snapshot take minutes, not hours.
const BUILD_LIMIT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug)]
enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    fn arg(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

/// A generated project in a temporary directory of its own.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    name: String,
    world: &'static str,
}

impl Project {
    fn wasm(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.name))
    }

    fn wasm_text(&self) -> String {
        self.wasm().display().to_string()
    }
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `huddle plugins new` run where a user would: in an empty directory.
fn new_project(world: &'static str, lang: Lang) -> Project {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("my-{}-{world}", lang.arg());
    let out = huddle_outside(
        tmp.path(),
        &[
            "plugins",
            "new",
            &name,
            "--world",
            world,
            "--lang",
            lang.arg(),
        ],
    )
    .output_within(COMMAND_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plugins new: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("created {name}: a {world} in ")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("huddle plugins check {name}.wasm")),
        "{stdout}"
    );
    Project {
        dir: tmp.path().join(&name),
        _tmp: tmp,
        name,
        world,
    }
}

/// The Rust projects share one target directory, so the bindings generator
/// is compiled once for all of them (and kept between runs).
fn rust_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-scaffold-wasm")
}

/// Runs the project's `./build.sh` as its README says, with the tools where
/// scripts/test installs them; returns the built component.
fn build(project: &Project, lang: Lang) -> PathBuf {
    let mut command = Command::new("./build.sh");
    command.current_dir(&project.dir).stdin(Stdio::null());
    match lang {
        Lang::Rust => {
            command
                .env("CARGO_TARGET_DIR", rust_target_dir())
                .env("CARGO_NET_OFFLINE", "true")
                // The README's command, not this test run's build settings.
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET");
        }
        Lang::Python => {
            let venv_bin = repo_path("target/mcp-venv/bin");
            assert!(
                venv_bin.join("componentize-py").exists(),
                "componentize-py is not in target/mcp-venv: run examples/build-polyglot.sh --tools \
                 (scripts/test does)"
            );
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![venv_bin];
            paths.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(paths).unwrap());
        }
        Lang::Js => {
            let modules = repo_path("target/polyglot-npm/node_modules");
            assert!(
                modules.join(".bin/componentize-js").exists(),
                "componentize-js is not in target/polyglot-npm: run examples/build-polyglot.sh \
                 --tools (scripts/test does)"
            );
            std::os::unix::fs::symlink(&modules, project.dir.join("node_modules")).unwrap();
        }
    }
    let started = Instant::now();
    let out = command.output_within(BUILD_LIMIT);
    assert!(
        out.status.success(),
        "{} {}: ./build.sh failed: {}\n{}\n{}",
        lang.arg(),
        project.world,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = project.wasm();
    let size = std::fs::metadata(&wasm)
        .unwrap_or_else(|e| panic!("build.sh did not write {}: {e}", wasm.display()))
        .len();
    eprintln!(
        "{} {}: built in {:.1} s, {size} bytes",
        lang.arg(),
        project.world,
        started.elapsed().as_secs_f64()
    );
    wasm
}

/// `huddle plugins check NAME.wasm` in the project's directory, outside any
/// huddle directory: the README's command.
fn assert_checked(project: &Project) {
    let file = format!("{}.wasm", project.name);
    let out =
        huddle_outside(&project.dir, &["plugins", "check", &file]).output_within(COMPILE_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plugins check: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // One line: the world, then how the component was obtained
    // ("(compiled in N ms)" or "(loaded from the compiled-artifact cache …)").
    let expected = format!("{file} implements huddle:plugin/{}@0.2.0 (", project.world);
    let line = stdout.trim_end();
    assert!(
        line.starts_with(&expected) && !line.contains('\n'),
        "{line:?} is not {expected:?}…"
    );
    // The README's next command, `huddle plugins test NAME.wasm`, runs it
    // on the sample events; a sink without `--allow` is refused for good.
    let mut args = vec!["plugins", "test", file.as_str()];
    if project.world == "alert-sink" {
        args.extend(["--settings", "url=http://127.0.0.1:9/hook"]);
    }
    let out = huddle_outside(&project.dir, &args).output_within(COMPILE_LIMIT);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if project.world == "alert-sink" {
        assert!(
            !out.status.success()
                && stderr.contains("the sink refused the batch of 1 alert(s): permanent"),
            "plugins test: {stderr}"
        );
    } else {
        assert!(
            out.status.success() && stdout.contains("#1"),
            "plugins test: {}\n{stdout}\n{stderr}",
            out.status
        );
    }
}

/// Generates, builds and checks one project; the build and the first
/// compile load the machine, so they do not run beside timing-bound tests.
fn built(world: &'static str, lang: Lang) -> Project {
    let _heavy = exclusive();
    let project = new_project(world, lang);
    build(&project, lang);
    assert_checked(&project);
    project
}

/// `plugins check` in a huddle directory whose huddle.toml gives the plugin
/// a setting it does not know: refused, naming the key.
fn assert_misspelt_setting_refused(project: &Project, config: &str, key: &str) {
    let dir = HuddleDir::with_config(config);
    let out = dir.run_compiling(&["plugins", "check", &project.wasm_text()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a misspelt setting passed: {stdout}");
    assert!(
        stdout.contains(&format!("{}: unknown setting `{key}`", project.name)),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The communication region of communication.md, markers excluded.
fn communication_region(dir: &HuddleDir) -> String {
    let text = std::fs::read_to_string(dir.file("communication.md")).unwrap();
    let begin = "<!-- BEGIN COMMUNICATION -->\n";
    let start = text.find(begin).expect("begin marker") + begin.len();
    let end = text.find("<!-- END COMMUNICATION -->").expect("end marker");
    text[start..end].to_owned()
}

fn renderer_case(lang: Lang) {
    let project = built("renderer", lang);
    let slot = |settings: &str| {
        format!(
            "[plugins.renderer]\nplugin = {:?}\n[plugins.renderer.settings]\n{settings}\n",
            project.wasm_text()
        )
    };
    assert_misspelt_setting_refused(&project, &slot("shwo_time = true"), "shwo_time");

    let dir = HuddleDir::with_config(&slot("show_time = true"));
    // The configured settings are accepted where the slot uses them.
    let checked = dir.ok_compiling(&["plugins", "check", &project.wasm_text()]);
    assert!(
        checked.contains("renderer: configure accepts its settings"),
        "{checked}"
    );
    dir.append_fixed_events(&[
        (1, "Agent A", "question", "Who owns the deploy script?"),
        (1, "Agent B", "answer", "I do\nsince Monday"),
        (1, "Agent B", "heartbeat", "alive"),
        (2, "Agent A", "status", "deployed"),
    ]);
    dir.ok_compiling(&["snapshot", "-k", "1"]);
    assert_eq!(
        communication_region(&dir),
        "### Interaction #2\n\
         \n\
         - **status** from Agent A at 2026-11-25T14:00:03Z: deployed\n\
         \n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.file("archive.md")).unwrap(),
        "## Interaction #1\n\
         \n\
         - **A → B** from Agent A at 2026-11-25T14:00:00Z: Who owns the deploy script?\n\
         - **B → A** from Agent B at 2026-11-25T14:00:01Z: I do\n  since Monday\n\
         \n"
    );
    dir.assert_no_error_events();
}

fn heading_mapper_case(lang: Lang) {
    let project = built("heading-mapper", lang);
    let slot = |settings: &str| {
        format!(
            "[plugins.heading-mapper]\nplugin = {:?}\n[plugins.heading-mapper.settings]\n{settings}\n",
            project.wasm_text()
        )
    };
    assert_misspelt_setting_refused(&project, &slot("hdie = [\"note\"]"), "hdie");

    let dir = HuddleDir::with_config(&slot("hide = [\"note\"]"));
    dir.append_fixed_events(&[
        (1, "Agent A", "question", "Is the build green?"),
        (1, "Agent B", "note", "a private scribble"),
        (1, "Agent B", "answer", "Yes"),
        (1, "Agent C", "status", "deploying"),
    ]);
    dir.ok_compiling(&["snapshot"]);
    // The stock renderer puts each heading above its event: the table's
    // headings, a type outside it under its own name, `note` hidden.
    assert_eq!(
        communication_region(&dir),
        "### Interaction #1\n\
         #### Question\n - Is the build green?\n\
         #### Answer\n - Yes\n\
         #### status\n - deploying\n\
         \n"
    );
    dir.assert_no_error_events();
}

fn alert_sink_case(lang: Lang) {
    let project = built("alert-sink", lang);
    let server = HttpRecorder::start();
    let sink = |extra: &str| {
        format!(
            "{FAST}\n[alerts]\nmin_interval_ms = 100\n\n[[alerts.sinks]]\nplugin = {:?}\n\
             name = \"new\"\nurl = \"{}\"\nallow = [\"{}\"]\n{extra}",
            project.wasm_text(),
            server.url("/alerts"),
            server.url("/")
        )
    };
    assert_misspelt_setting_refused(&project, &sink("colour = \"red\"\n"), "colour");

    let dir = HuddleDir::with_config(&sink(""));
    dir.ok_compiling(&["plugins", "warm"]);
    let daemon = Daemon::start(&dir, "d");
    assert!(
        crate::daemon::leading_with_sink(&dir, "d", "new"),
        "the leader took up the sink: {}",
        daemon.log_text()
    );
    let sink_record = || {
        status(&dir)["alerts"]
            .as_array()
            .and_then(|sinks| sinks.iter().find(|sink| sink["sink"] == "new").cloned())
            .unwrap_or_default()
    };
    let requests_with = |text: &str| {
        server
            .requests()
            .into_iter()
            .filter(|r| r.body.contains(text))
            .collect::<Vec<_>>()
    };

    // 503 is transient: the same alert comes again, and gets through once
    // the server answers 200.
    server.set_status(503);
    dir.ok(&["log", "4", "builder", "error", "disk full on builder"]);
    let retried = wait_for(Duration::from_secs(30), || {
        requests_with("disk full on builder").len() >= 2
    });
    assert!(retried, "a 503 was not retried: {}", daemon.log_text());
    server.set_status(200);
    let delivered = wait_for(Duration::from_secs(30), || sink_record()["delivered"] == 1);
    assert!(delivered, "{}\n{}", sink_record(), daemon.log_text());
    let request = requests_with("disk full on builder").pop().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/alerts");
    assert_eq!(request.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    let alerts = body["alerts"].as_array().expect("an alerts list");
    assert_eq!(alerts.len(), 1, "{body}");
    let alert = &alerts[0];
    assert_eq!(alert["actor"], "builder", "{body}");
    assert_eq!(alert["type"], "error", "{body}");
    assert_eq!(alert["content"], "disk full on builder", "{body}");
    assert_eq!(alert["interaction"], 4, "{body}");
    assert_eq!(alert["count"], 1, "{body}");
    assert_eq!(alert["source"], "huddle", "{body}");
    assert!(alert["timestamp"].as_str().is_some(), "{body}");

    // 404 is permanent: given up after one request, with the sink's reason.
    server.set_status(404);
    dir.ok(&["log", "5", "builder", "error", "lost the lease"]);
    let given_up = wait_until(Duration::from_secs(30), || {
        let record = sink_record();
        (record["failed"] == 1).then_some(record)
    })
    .unwrap_or_else(|| panic!("a 404 was not given up: {}", daemon.log_text()));
    let reason = given_up["given_up"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.starts_with("refused for good by the sink") && reason.contains("HTTP 404"),
        "{given_up}"
    );
    assert_eq!(requests_with("lost the lease").len(), 1, "{given_up}");
}

#[test]
fn a_new_rust_renderer_builds_as_generated_passes_check_and_renders_a_snapshot() {
    renderer_case(Lang::Rust);
}

#[test]
fn a_new_python_renderer_builds_as_generated_passes_check_and_renders_a_snapshot() {
    renderer_case(Lang::Python);
}

#[test]
fn a_new_js_renderer_builds_as_generated_passes_check_and_renders_a_snapshot() {
    renderer_case(Lang::Js);
}

#[test]
fn a_new_rust_heading_mapper_builds_as_generated_passes_check_and_maps_headings() {
    heading_mapper_case(Lang::Rust);
}

#[test]
fn a_new_python_heading_mapper_builds_as_generated_passes_check_and_maps_headings() {
    heading_mapper_case(Lang::Python);
}

#[test]
fn a_new_js_heading_mapper_builds_as_generated_passes_check_and_maps_headings() {
    heading_mapper_case(Lang::Js);
}

#[test]
fn a_new_rust_alert_sink_builds_as_generated_passes_check_and_delivers_over_http() {
    alert_sink_case(Lang::Rust);
}

#[test]
fn a_new_python_alert_sink_builds_as_generated_passes_check_and_delivers_over_http() {
    alert_sink_case(Lang::Python);
}

#[test]
fn a_new_js_alert_sink_builds_as_generated_passes_check_and_delivers_over_http() {
    alert_sink_case(Lang::Js);
}

/// Entries of `dir`, sorted, as names.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn plugins_new(cwd: &Path, args: &[&str]) -> std::process::Output {
    huddle_outside(cwd, &["plugins", "new"])
        .args(args)
        .output_within(COMMAND_LIMIT)
}

#[test]
fn plugins_new_refuses_a_bad_name_an_unknown_world_or_language_and_an_occupied_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let refused = |args: &[&str], says: &[&str]| {
        let out = plugins_new(cwd, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for text in says {
            assert!(
                stderr.contains(text),
                "{args:?} should say {text:?}: {stderr}"
            );
        }
    };
    let rule =
        "lowercase ASCII letters, digits and '-', starting with a letter, at most 64 characters";
    let long = "a".repeat(65);
    for (name, problem) in [
        ("My-Plugin", "it starts with 'M'"),
        ("my_plugin", "'_' (character 3) is not allowed"),
        ("../escape", "it starts with '.'"),
        ("a/b", "'/' (character 2) is not allowed"),
        ("", "it is empty"),
        (long.as_str(), "it is 65 characters long"),
    ] {
        refused(
            &[name, "--world", "renderer", "--lang", "rust"],
            &["NAME ", "is not a plugin name", problem, rule],
        );
    }
    refused(
        &["ok", "--world", "exporter", "--lang", "rust"],
        &["'--world <WORLD>'", "renderer, heading-mapper, alert-sink"],
    );
    refused(
        &["ok", "--world", "renderer", "--lang", "go"],
        &["'--lang <LANG>'", "rust, python, js"],
    );
    refused(&["ok", "--lang", "rust"], &["--world <WORLD>"]);
    assert!(listing(cwd).is_empty(), "{:?}", listing(cwd));

    // An existing directory with something in it is left exactly as it was.
    std::fs::create_dir(cwd.join("taken")).unwrap();
    std::fs::write(cwd.join("taken/notes.txt"), "mine").unwrap();
    refused(
        &["taken", "--world", "renderer", "--lang", "python"],
        &[
            "taken already exists and is not an empty directory",
            "nothing was written",
        ],
    );
    assert_eq!(listing(&cwd.join("taken")), ["notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(cwd.join("taken/notes.txt")).unwrap(),
        "mine"
    );
    // So is a file, and a link to an empty directory.
    std::fs::write(cwd.join("file"), "mine").unwrap();
    refused(
        &["file", "--world", "renderer", "--lang", "js"],
        &["file already exists"],
    );
    std::fs::create_dir(cwd.join("empty-target")).unwrap();
    std::os::unix::fs::symlink(cwd.join("empty-target"), cwd.join("link")).unwrap();
    refused(
        &["link", "--world", "renderer", "--lang", "js"],
        &["link already exists"],
    );
    assert!(listing(&cwd.join("empty-target")).is_empty());
    for out in [".", "..", "/", "taken/.."] {
        refused(
            &["ok", "--world", "renderer", "--lang", "rust", "--out", out],
            &["does not name a directory to create"],
        );
    }
    // --out names another place; an empty directory there is filled.
    refused(
        &[
            "other",
            "--world",
            "alert-sink",
            "--lang",
            "rust",
            "--out",
            "taken",
        ],
        &["taken already exists"],
    );
    assert_eq!(
        listing(cwd),
        ["empty-target", "file", "link", "taken"],
        "no staging directory is left behind"
    );

    let out = plugins_new(
        cwd,
        &[
            "fresh",
            "--world",
            "alert-sink",
            "--lang",
            "rust",
            "--out",
            "empty-target",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listing(&cwd.join("empty-target")),
        [
            ".gitignore",
            "Cargo.toml",
            "README.md",
            "build.sh",
            "src",
            "wit"
        ]
    );
    let manifest = std::fs::read_to_string(cwd.join("empty-target/Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"fresh\""), "{manifest}");
    // A missing parent is made.
    let out = plugins_new(
        cwd,
        &[
            "deep",
            "--world",
            "heading-mapper",
            "--lang",
            "python",
            "--out",
            "a/b/deep",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listing(&cwd.join("a/b/deep")),
        [".gitignore", "README.md", "app.py", "build.sh", "wit"]
    );
    assert_eq!(listing(&cwd.join("a/b")), ["deep"]);
}

#[test]
fn plugins_new_on_a_full_disk_leaves_no_half_written_project() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    // The JavaScript project's lock alone is over 100 KiB.
    let fs = Tmpfs::mount("64k");
    let out = plugins_new(&fs.path, &["sink", "--world", "alert-sink", "--lang", "js"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the new project to") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(listing(&fs.path).is_empty(), "{:?}", listing(&fs.path));
}

/// examples/js-renderer is what `plugins new js-renderer --world renderer
/// --lang js` writes, file for file (plus its built component): a template
/// that changes without the example (or the other way round) fails here.
#[test]
fn the_js_renderer_example_is_exactly_what_plugins_new_writes() {
    let temp = tempfile::tempdir().unwrap();
    let out = plugins_new(
        temp.path(),
        &["js-renderer", "--world", "renderer", "--lang", "js"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = temp.path().join("js-renderer");
    let example = repo_path("examples/js-renderer");
    let written = files_below(&generated);
    // The built component is committed beside the sources; node_modules is
    // what a local `npm ci` leaves (ignored by git).
    let committed: Vec<String> = files_below(&example)
        .into_iter()
        .filter(|name| name != "js-renderer.wasm" && !name.starts_with("node_modules"))
        .collect();
    assert_eq!(
        written, committed,
        "the example's files are not the template's"
    );
    for name in &written {
        assert_eq!(
            std::fs::read(generated.join(name)).unwrap(),
            std::fs::read(example.join(name)).unwrap(),
            "{name} differs from what plugins new writes"
        );
    }
}

/// Every file below `dir`, as sorted paths relative to it.
fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}
