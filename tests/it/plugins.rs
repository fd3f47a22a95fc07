//! The plugin host: default plugins, hostile plugins contained, the HTTP
//! allowlist, swapping a plugin by configuration, `huddle plugins`.

use std::time::{Duration, Instant};

use huddle::event::Event;
use huddle::plugin::{
    Alert, Allowlist, DeliveryError, Entry, HttpGrant, Interaction, Origin, PluginError,
    PluginHost, PluginSource, PluginSpec, Section, Slot,
};
use huddle::workspace::Workspace;

use crate::common::{hostile_plugin, repo_file, stderr, HttpRecorder, HuddleDir};

use crate::common::host;

fn event(interaction: u64, actor: &str, kind: &str, content: &str) -> Event {
    huddle::event::NewEvent::new(
        huddle::event::InteractionRef::Number(interaction),
        actor,
        kind,
        content,
    )
    .into_event(interaction)
}

fn interaction(number: u64, entries: &[(&str, Event)]) -> Interaction {
    Interaction {
        number,
        entries: entries
            .iter()
            .map(|(heading, event)| Entry {
                heading: (*heading).into(),
                event: event.clone(),
            })
            .collect(),
    }
}

fn sample() -> Vec<Interaction> {
    vec![interaction(
        7,
        &[
            ("A → B", event(7, "Agent A", "question", "How do I start?")),
            ("B → A", event(7, "Agent B", "answer", "Run huddle init.")),
        ],
    )]
}

fn file_spec(path: std::path::PathBuf) -> PluginSpec {
    PluginSpec::new(PluginSource::File(path))
}

fn assert_good_render_still_works() {
    let blocks = host()
        .render(
            &PluginSpec::builtin("markdown"),
            Section::Communication,
            &sample(),
        )
        .expect("a good plugin works after a hostile one");
    assert_eq!(blocks.len(), 1);
}

#[test]
fn markdown_renders_the_brief_format() {
    let interactions = sample();
    let spec = PluginSpec::builtin("markdown");
    let communication = host()
        .render(&spec, Section::Communication, &interactions)
        .unwrap();
    assert_eq!(
        communication,
        ["### Interaction #7\n#### A → B\n - How do I start?\n#### B → A\n - Run huddle init.\n\n"]
    );
    let archive = host()
        .render(&spec, Section::Archive, &interactions)
        .unwrap();
    let question = &interactions[0].entries[0].event;
    let answer = &interactions[0].entries[1].event;
    assert_eq!(
        archive[0],
        format!(
            "## Interaction #7\n- [Agent A question {}]\nHow do I start?\n- [Agent B answer {}]\nRun huddle init.\n\n",
            question.timestamp, answer.timestamp
        )
    );
}

#[test]
fn markdown_takes_an_operator_template() {
    let mut spec = PluginSpec::builtin("markdown");
    spec.settings = vec![(
        "communication_template".into(),
        // trim_blocks is on: a newline right after a block tag is dropped.
        "#{{ interaction.number }}:{% for e in interaction.entries %} {{ e.event.actor }}{% endfor %}.\n".into(),
    )];
    let blocks = host()
        .render(&spec, Section::Communication, &sample())
        .unwrap();
    assert_eq!(blocks, ["#7: Agent A Agent B.\n"]);
    spec.settings = vec![("communication_template".into(), "{% for %}".into())];
    let err = host()
        .render(&spec, Section::Communication, &sample())
        .unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Configure { .. } | PluginError::Failed { .. }
        ),
        "{err}"
    );
}

#[test]
fn headings_map_hide_and_take_overrides() {
    let events = [
        event(1, "A", "question", "q"),
        event(1, "B", "answer", "a"),
        event(1, "A", "followup", "f"),
        event(1, "L", "heartbeat", "h"),
        event(1, "L", "leader_election", "e"),
        event(1, "A", "error", "x"),
    ];
    let spec = PluginSpec::builtin("headings");
    let headings = host().headings(&spec, &events).unwrap();
    assert_eq!(
        headings,
        [
            Some("A → B".to_string()),
            Some("B → A".to_string()),
            Some("A Follow-Up".to_string()),
            None,
            None,
            Some("error".to_string()),
        ]
    );
    let mut custom = PluginSpec::builtin("headings");
    custom.settings = vec![
        ("type.question".into(), "Ask".into()),
        ("type.error".into(), "".into()),
        ("type.heartbeat".into(), "Pulse".into()),
    ];
    let headings = host().headings(&custom, &events).unwrap();
    assert_eq!(headings[0].as_deref(), Some("Ask"));
    assert_eq!(headings[3].as_deref(), Some("Pulse"));
    assert_eq!(headings[5], None);
    custom.settings = vec![("colour".into(), "red".into())];
    let err = host().headings(&custom, &events).unwrap_err();
    assert!(
        matches!(err, PluginError::Configure { .. }) && err.to_string().contains("colour"),
        "{err}"
    );
}

/// Runs a hostile renderer and checks the typed error, the time it took and
/// that the host still serves a good plugin.
fn contained(name: &str, spec: PluginSpec) -> PluginError {
    // Compiling is not the plugin's doing: time only the call.
    host()
        .preload(&spec, Slot::Renderer)
        .expect("the plugin loads");
    let deadline = spec.deadline;
    let started = Instant::now();
    let err = host()
        .render(&spec, Section::Communication, &sample())
        .expect_err("a hostile plugin must fail");
    let took = started.elapsed();
    assert!(
        took < deadline + Duration::from_secs(1),
        "{name} took {took:?}"
    );
    assert_eq!(err.plugin(), format!("{name}.wasm"), "{err}");
    assert_good_render_still_works();
    err
}

#[test]
fn an_infinite_loop_hits_the_deadline() {
    let mut spec = file_spec(hostile_plugin("loop"));
    spec.deadline = Duration::from_millis(300);
    let err = contained("loop", spec);
    assert!(matches!(err, PluginError::DeadlineExceeded { .. }), "{err}");
    assert!(
        err.to_string().contains("deadline of 300ms exceeded"),
        "{err}"
    );
}

#[test]
fn a_mapper_loop_hits_the_deadline_too() {
    let mut spec = file_spec(hostile_plugin("mapper-loop"));
    spec.deadline = Duration::from_millis(200);
    // Compiling is not the plugin's doing: time only the call.
    host()
        .preload(&spec, Slot::HeadingMapper)
        .expect("the plugin loads");
    let started = Instant::now();
    let err = host()
        .headings(&spec, &[event(1, "a", "question", "q")])
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert!(matches!(err, PluginError::DeadlineExceeded { .. }), "{err}");
}

#[test]
fn allocating_forever_is_out_of_memory() {
    let mut spec = file_spec(hostile_plugin("oom"));
    spec.memory_bytes = 32 * 1024 * 1024;
    let err = contained("oom", spec);
    assert!(
        matches!(
            err,
            PluginError::OutOfMemory {
                limit_bytes: 33554432,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_panic_is_a_trap_with_its_message() {
    let err = contained("panic", file_spec(hostile_plugin("panic")));
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("hostile plugin panicked on purpose"),
        "{err}"
    );
}

#[test]
fn a_hundred_megabytes_of_output_is_refused() {
    // Under the default 64 MiB cap the plugin cannot even build its output.
    let err = contained("bigoutput", file_spec(hostile_plugin("bigoutput")));
    assert!(matches!(err, PluginError::OutOfMemory { .. }), "{err}");
    // With room to build it, the host refuses to take it.
    let mut roomy = file_spec(hostile_plugin("bigoutput"));
    roomy.memory_bytes = 512 * 1024 * 1024;
    roomy.deadline = Duration::from_secs(10);
    let err = contained("bigoutput", roomy);
    assert!(matches!(err, PluginError::InvalidOutput { .. }), "{err}");
    assert!(err.to_string().contains("over the limit"), "{err}");
}

#[test]
fn reading_a_file_fails_inside_the_sandbox() {
    let err = contained("readfile", file_spec(hostile_plugin("readfile")));
    assert!(matches!(err, PluginError::Failed { .. }), "{err}");
    assert!(
        !err.to_string().contains("root:"),
        "the plugin read /etc/passwd: {err}"
    );
}

#[test]
fn wrong_block_count_is_invalid_output() {
    let err = contained("badoutput", file_spec(hostile_plugin("badoutput")));
    assert!(matches!(err, PluginError::InvalidOutput { .. }), "{err}");
    assert!(
        err.to_string().contains("2 blocks for 1 interactions"),
        "{err}"
    );
}

#[test]
fn a_renderer_in_the_mapper_slot_is_refused_by_world() {
    let err = host()
        .headings(&file_spec(repo_file("plugins/dist/markdown.wasm")), &[])
        .unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("renderer"), "{err}");
}

fn alert() -> Alert {
    Alert {
        event: event(3, "Agent A", "error", "disk full on builder"),
        count: 1,
        source: "team".into(),
    }
}

fn sink(plugin: &str, allow: &[String], settings: &[(&str, String)]) -> PluginSpec {
    let mut spec = PluginSpec::new(PluginSource::resolve(plugin, std::path::Path::new("/")));
    spec.http = Some(HttpGrant::new(Allowlist::parse(allow).unwrap()));
    spec.settings = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    spec
}

#[test]
fn a_url_off_the_allowlist_is_never_called() {
    let server = HttpRecorder::start();
    let allowed = server.url("/allowed/");
    let hook = server.url("/allowed/hook");
    let forbidden = server.url("/forbidden");
    let verdict = host()
        .deliver(
            &sink(
                &hostile_plugin("offallowlist").display().to_string(),
                std::slice::from_ref(&allowed),
                &[("url", forbidden.clone())],
            ),
            &[alert()],
        )
        .expect("contained");
    match verdict {
        Err(DeliveryError::Permanent(message)) => {
            assert!(
                message.contains("not on this sink's allowlist"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Empty allowlist: denied too.
    let verdict = host()
        .deliver(
            &sink(
                &hostile_plugin("offallowlist").display().to_string(),
                &[],
                &[("url", hook.clone())],
            ),
            &[alert()],
        )
        .unwrap();
    assert!(
        matches!(verdict, Err(DeliveryError::Permanent(ref m)) if m.contains("empty")),
        "{verdict:?}"
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // The same plugin, to an allowed URL, does reach the server.
    let verdict = host()
        .deliver(
            &sink(
                &hostile_plugin("offallowlist").display().to_string(),
                &[allowed],
                &[("url", hook)],
            ),
            &[alert()],
        )
        .unwrap();
    assert_eq!(verdict, Ok(()));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/allowed/hook");
}

#[test]
fn webhook_posts_slack_and_alertmanager_bodies() {
    let server = HttpRecorder::start();
    let allow = vec![server.url("/")];
    let slack = sink("webhook", &allow, &[("url", server.url("/slack"))]);
    assert_eq!(host().deliver(&slack, &[alert()]).unwrap(), Ok(()));
    let am = sink(
        "webhook",
        &allow,
        &[
            ("url", server.url("/am")),
            ("format", "alertmanager".into()),
        ],
    );
    assert_eq!(host().deliver(&am, &[alert()]).unwrap(), Ok(()));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("disk full on builder"),
        "{body}"
    );
    assert_eq!(requests[0].content_type, "application/json");
    assert_eq!(requests[0].method, "POST");
    let body: serde_json::Value = serde_json::from_str(&requests[1].body).unwrap();
    assert_eq!(body[0]["labels"]["alertname"], "HuddleError");
    assert_eq!(body[0]["annotations"]["summary"], "disk full on builder");

    server.set_status(503);
    let verdict = host().deliver(&slack, &[alert()]).unwrap();
    assert!(
        matches!(verdict, Err(DeliveryError::Transient(_))),
        "{verdict:?}"
    );
    server.set_status(404);
    let verdict = host().deliver(&slack, &[alert()]).unwrap();
    assert!(
        matches!(verdict, Err(DeliveryError::Permanent(_))),
        "{verdict:?}"
    );
}

#[test]
fn the_example_sink_works_by_path() {
    let server = HttpRecorder::start();
    let spec = sink(
        &repo_file("examples/dist/ntfy-sink.wasm")
            .display()
            .to_string(),
        &[server.url("/")],
        &[("url", server.url("/ntfy"))],
    );
    assert_eq!(host().deliver(&spec, &[alert()]).unwrap(), Ok(()));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].body.contains("disk full on builder"),
        "{:?}",
        requests[0]
    );
}

#[test]
fn a_plugin_named_in_huddle_toml_replaces_the_default_without_a_rebuild() {
    let dir = HuddleDir::new();
    let workspace = Workspace::open(dir.path()).unwrap();
    let stock = host()
        .render(
            &workspace.slot_spec(Slot::Renderer),
            Section::Communication,
            &sample(),
        )
        .unwrap();
    assert!(stock[0].starts_with("### Interaction #7"), "{stock:?}");

    let json = repo_file("examples/dist/json-renderer.wasm");
    std::fs::write(
        dir.file("huddle.toml"),
        format!(
            "[plugins.renderer]\nplugin = {:?}\n",
            json.display().to_string()
        ),
    )
    .unwrap();
    let workspace = Workspace::open(dir.path()).unwrap();
    let swapped = host()
        .render(
            &workspace.slot_spec(Slot::Renderer),
            Section::Communication,
            &sample(),
        )
        .unwrap();
    assert!(
        swapped[0].contains("```json") && swapped[0].contains("\"number\": 7"),
        "{swapped:?}"
    );

    let listed = dir.ok(&["plugins", "list"]);
    assert!(listed.contains(&json.display().to_string()), "{listed}");
    assert!(listed.contains("headings (built-in)"), "{listed}");
    // The sha256 of the file's bytes, computed here, not by huddle.
    use sha2::Digest as _;
    let sha = format!("{:x}", sha2::Sha256::digest(std::fs::read(&json).unwrap()));
    assert!(listed.contains(&sha), "{listed}");
    let builtin_sha = format!(
        "{:x}",
        sha2::Sha256::digest(std::fs::read(repo_file("plugins/dist/headings.wasm")).unwrap())
    );
    assert!(listed.contains(&builtin_sha), "{listed}");
}

#[test]
fn a_second_host_loads_the_compiled_artifact_instead_of_compiling() {
    let cache = tempfile::tempdir().unwrap();
    let first = PluginHost::with_cache_dir(cache.path().to_path_buf()).unwrap();
    let markdown = PluginSpec::builtin("markdown");
    let compiled = first.preload(&markdown, Slot::Renderer).unwrap();
    assert_eq!(compiled.origin, Origin::Compiled);
    let entries: Vec<std::path::PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "one compiled artifact");

    let second = PluginHost::with_cache_dir(cache.path().to_path_buf()).unwrap();
    let loaded = second.preload(&markdown, Slot::Renderer).unwrap();
    assert_eq!(loaded.origin, Origin::Cached, "{loaded:?}");
    let blocks = second
        .render(&markdown, Section::Archive, &sample())
        .unwrap();
    assert!(blocks[0].starts_with("## Interaction #7"), "{blocks:?}");
}

#[test]
fn plugins_check_names_the_world_or_the_reason() {
    let dir = HuddleDir::new();
    for (file, world) in [
        (
            "plugins/dist/headings.wasm",
            "huddle:plugin/heading-mapper@0.2.0",
        ),
        ("plugins/dist/markdown.wasm", "huddle:plugin/renderer@0.2.0"),
        (
            "plugins/dist/webhook.wasm",
            "huddle:plugin/alert-sink@0.2.0",
        ),
        // Built against 0.1.0 and kept so: older plugins keep working.
        (
            "examples/dist/ntfy-sink.wasm",
            "huddle:plugin/alert-sink@0.1.0",
        ),
        (
            "tests/plugins/dist/mapper-picky.wasm",
            "huddle:plugin/heading-mapper@0.1.0",
        ),
        (
            "examples/dist/json-renderer.wasm",
            "huddle:plugin/renderer@0.1.0",
        ),
    ] {
        let out = dir.ok(&["plugins", "check", &repo_file(file).display().to_string()]);
        assert!(out.contains(world), "{out}");
    }
    let core = dir.file("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.file("notes.wasm");
    std::fs::write(&text, b"hello").unwrap();
    for (path, needle) in [
        (&core, "core WebAssembly module"),
        (&text, "not a WebAssembly file"),
    ] {
        let out = dir.run(&["plugins", "check", &path.display().to_string()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}

/// The offallowlist sink asked to POST to `url`: the host's verdict.
fn offallowlist_to(allow: &[String], url: &str) -> Result<(), DeliveryError> {
    host()
        .deliver(
            &sink(
                &hostile_plugin("offallowlist").display().to_string(),
                allow,
                &[("url", url.to_string())],
            ),
            &[alert()],
        )
        .expect("contained")
}

#[test]
fn allowlist_bypasses_are_refused_before_any_connection() {
    let server = HttpRecorder::start();
    let port = server.addr.port();
    let allow = vec![format!("http://127.0.0.1:{port}/hook/")];
    for bypass in [
        format!("http://u:p@127.0.0.1:{port}/hook/x"),
        format!("http://u@127.0.0.1:{port}/hook/x"),
        format!("http://127.0.0.1:{port}/hook/..%2Fadmin"),
        format!("http://127.0.0.1:{port}/hook/..%2fadmin"),
        format!("http://127.0.0.1:{port}/hook/..%5Cadmin"),
        format!("http://127.0.0.1:{port}/hook/../admin"),
        format!("http://127.0.0.1:{port}/hook/%2e%2e/admin"),
        format!("http://127.0.0.1:{port}/hook/.%2E/admin"),
        format!("http://127.0.0.1:{port}/hook/./x"),
        format!("http://127.0.0.1:{port}/hook\\..\\admin"),
        format!("http://127.0.0.1:{port}/hook/x;param"),
        format!("http://127.0.0.1:{port}/hook/x%3Bparam"),
        format!("http://127.0.0.1:{port}/hook//x"),
        format!("http://127.0.0.1:{port}/hook/x#fragment"),
        format!("http://127.0.0.1:{port}/hook/.\t./admin"),
        format!("http://127.0.0.1:{port}/hook/x%00"),
        format!("http://127.0.0.1:{port}/hook/%252e%252e/admin"),
        format!("http://127.0.0.1:{port}/hook/\u{ff0e}\u{ff0e}/admin"),
        format!("http://127.0.0.1:{port}/hookx"),
        format!("http://127.0.0.1:{port}/admin"),
        format!("http://localhost:{port}/hook/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook/x"),
        format!("http://127.0.0.1:{port}@127.0.0.1:{port}/hook/x"),
        format!("https://127.0.0.1:{port}/hook/x"),
    ] {
        match offallowlist_to(&allow, &bypass) {
            Err(DeliveryError::Permanent(message)) => {
                assert!(message.contains("is not allowed"), "{bypass}: {message}")
            }
            other => panic!("{bypass}: {other:?}"),
        }
    }
    assert_eq!(server.connections(), 0, "{:?}", server.requests());
    // Equal spellings of the allowed prefix do reach the server.
    for same in [
        format!("http://127.0.0.1:{port}/hook/x"),
        format!("HTTP://127.1:{port}/%68ook/x"),
    ] {
        assert_eq!(offallowlist_to(&allow, &same), Ok(()), "{same}");
    }
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/hook/x", "/%68ook/x"]);
}

#[test]
fn a_redirect_is_handed_to_the_sink_not_followed() {
    let elsewhere = HttpRecorder::start();
    let allowed = HttpRecorder::start();
    allowed.set_status(307);
    allowed.set_location(&elsewhere.url("/stolen"));
    let allow = vec![allowed.url("/")];
    // The raw sink sees the 307 itself...
    assert_eq!(offallowlist_to(&allow, &allowed.url("/hook")), Ok(()));
    // ...and the webhook counts it as a refusal, not a delivery.
    let webhook = sink("webhook", &allow, &[("url", allowed.url("/hook"))]);
    let verdict = host().deliver(&webhook, &[alert()]).unwrap();
    assert!(
        matches!(verdict, Err(DeliveryError::Permanent(ref m)) if m.contains("307")),
        "{verdict:?}"
    );
    assert_eq!(allowed.requests().len(), 2);
    assert_eq!(elsewhere.connections(), 0, "{:?}", elsewhere.requests());
}

#[test]
fn a_huge_response_body_is_cut_at_the_limit() {
    let server = HttpRecorder::start();
    server.set_body_bytes(usize::MAX);
    let mut grant = HttpGrant::new(Allowlist::parse(&[server.url("/")]).unwrap());
    grant.timeout = Duration::from_secs(3);
    let started = Instant::now();
    let response = grant
        .post(&server.url("/hook"), "text/plain", b"hi")
        .expect("answered");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "read until the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(response.status, 200);
    assert!(response.truncated);
    assert_eq!(
        response.body.len() as u64,
        huddle::plugin::HttpGrant::new(Allowlist::default()).max_response_bytes
    );
}

#[test]
fn waiting_on_a_silent_server_is_a_timeout_not_a_deadline() {
    let server = HttpRecorder::start();
    server.set_silent(true);
    let mut spec = sink(
        "webhook",
        &[server.url("/")],
        &[("url", server.url("/hook"))],
    );
    if let Some(grant) = &mut spec.http {
        grant.timeout = Duration::from_millis(700);
    }
    spec.deadline = Duration::from_millis(200);
    host().preload(&spec, Slot::AlertSink).unwrap();
    let started = Instant::now();
    let verdict = host().deliver(&spec, &[alert()]).expect("contained");
    let took = started.elapsed();
    match verdict {
        Err(DeliveryError::Transient(message)) => {
            assert!(message.to_lowercase().contains("timeout"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(server.connections(), 1);
}

#[test]
fn one_call_makes_a_bounded_number_of_requests() {
    let server = HttpRecorder::start();
    let grant = HttpGrant::new(Allowlist::parse(&[server.url("/")]).unwrap());
    let mut session = huddle::plugin::HttpSession::new(grant);
    for _ in 0..huddle::plugin::MAX_REQUESTS_PER_CALL {
        assert_eq!(
            session
                .post(&server.url("/hook"), "text/plain", b"x")
                .unwrap()
                .status,
            200
        );
    }
    let refused = session
        .post(&server.url("/hook"), "text/plain", b"x")
        .unwrap_err();
    assert_eq!(refused, huddle::plugin::HttpError::TooManyRequests);
    assert!(refused.to_string().contains("not allowed"), "{refused}");
    assert_eq!(
        server.requests().len() as u32,
        huddle::plugin::MAX_REQUESTS_PER_CALL
    );
}

#[test]
fn hostile_sinks_are_contained_with_typed_errors() {
    let server = HttpRecorder::start();
    let allow = vec![server.url("/")];
    let trigger = |content: &str| Alert {
        event: event(3, "Agent A", "error", content),
        count: 1,
        source: "team".into(),
    };
    for (plugin, content) in [
        ("sink-trap", "trap"),
        ("sink-loop", "loop"),
        ("sink-hang-configure", "anything"),
    ] {
        let mut spec = sink(
            &hostile_plugin(plugin).display().to_string(),
            &allow,
            &[("url", server.url("/hook"))],
        );
        spec.deadline = Duration::from_millis(300);
        host().preload(&spec, Slot::AlertSink).unwrap();
        let started = Instant::now();
        let err = host()
            .deliver(&spec, &[trigger(content)])
            .expect_err("contained");
        assert!(
            started.elapsed() < Duration::from_millis(1300),
            "{plugin} took {:?}",
            started.elapsed()
        );
        match plugin {
            "sink-trap" => assert!(
                matches!(err, PluginError::Trap { .. })
                    && err.to_string().contains("hostile sink panicked on purpose"),
                "{err}"
            ),
            _ => assert!(
                matches!(err, PluginError::DeadlineExceeded { .. }),
                "{plugin}: {err}"
            ),
        }
        if plugin != "sink-hang-configure" {
            // The same plugin, given an alert it does not choke on, delivers.
            assert_eq!(host().deliver(&spec, &[trigger("fine")]).unwrap(), Ok(()));
        }
    }
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn webhook_escapes_slack_control_sequences() {
    let server = HttpRecorder::start();
    let slack = sink(
        "webhook",
        &[server.url("/")],
        &[("url", server.url("/slack"))],
    );
    let hostile = Alert {
        event: event(
            3,
            "<!here>",
            "error",
            "<!channel> fix at <https://evil.example|the docs> & ping <@U024BE7LH>",
        ),
        count: 1,
        source: "team".into(),
    };
    assert_eq!(host().deliver(&slack, &[hostile]).unwrap(), Ok(()));
    let body: serde_json::Value = serde_json::from_str(&server.requests()[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert_eq!(
        text,
        "huddle error in team from &lt;!here&gt;: &lt;!channel&gt; fix at \
         &lt;https://evil.example|the docs&gt; &amp; ping &lt;@U024BE7LH&gt;"
    );
}

#[test]
fn plugins_check_and_list_call_configure_with_the_slots_settings_and_name_a_misspelt_one() {
    let json = repo_file("examples/dist/json-renderer.wasm")
        .display()
        .to_string();
    let config = |settings: &str| {
        format!("[plugins.renderer]\nplugin = {json:?}\n[plugins.renderer.settings]\n{settings}\n")
    };
    let dir = HuddleDir::with_config(&config("headng = true"));
    let checked = dir.run(&["plugins", "check", &json]);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{said}");
    assert!(
        said.contains("implements huddle:plugin/renderer@0.1.0"),
        "{said}"
    );
    assert!(said.contains("unknown setting `headng`"), "{said}");
    let listed = dir.run(&["plugins", "list"]);
    let said = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.status.success(), "{said}");
    assert!(said.contains("unknown setting `headng`"), "{said}");

    std::fs::write(dir.file("huddle.toml"), config("heading = true")).unwrap();
    let said = dir.ok(&["plugins", "check", &json]);
    assert!(
        said.contains("renderer: configure accepts its settings"),
        "{said}"
    );
    let said = dir.ok(&["plugins", "list"]);
    assert!(!said.contains("unknown setting"), "{said}");
}
