//! WIT `huddle:plugin@0.2.0` beside 0.1.0: rendering an interaction in
//! parts, HTTP headers and typed errors, the version in `plugins list`.

use std::io::Write;
use std::time::Duration;

use huddle::plugin::{
    Allowlist, Entry, HttpError, HttpGrant, Interaction, PluginError, PluginSpec, Section,
    MAX_OUTPUT_BYTES,
};

use crate::common::{host, repo_file, wait_output_within, HttpRecorder, HuddleDir};

const EVENTS: usize = 100_000;
const NOW: &str = "2026-11-25T14:00:31Z";

/// The content of event `n`: long enough that the whole interaction renders
/// to more than one call may return.
fn content(n: usize) -> String {
    format!("event {n:06} {}", "x".repeat(200))
}

#[test]
fn a_hundred_thousand_event_interaction_renders_in_parts_instead_of_being_left_out() {
    // One call cannot render it: it is over the limits of one call (the
    // deadline; the output limit on a faster machine; the memory limit when
    // the epoch ticker that enforces the deadline is starved by a loaded
    // machine and the call runs on until its 64 MiB are used up).
    let interaction = Interaction {
        number: 1,
        entries: (0..EVENTS)
            .map(|n| Entry {
                heading: "A → B".into(),
                event: huddle::event::NewEvent::new(
                    huddle::event::InteractionRef::Number(1),
                    "Agent A",
                    "question",
                    content(n),
                )
                .into_event(1),
            })
            .collect(),
    };
    let whole = host().render(
        &PluginSpec::builtin("markdown"),
        Section::Communication,
        std::slice::from_ref(&interaction),
    );
    assert!(
        matches!(&whole, Err(PluginError::DeadlineExceeded { .. }))
            || matches!(&whole, Err(PluginError::OutOfMemory { .. }))
            || matches!(&whole, Err(PluginError::InvalidOutput { message, .. }) if message.contains(&MAX_OUTPUT_BYTES.to_string())),
        "{whole:?}"
    );

    let dir = HuddleDir::new();
    {
        let mut log = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.file("events.log"))
                .unwrap(),
        );
        for n in 0..EVENTS {
            let line = serde_json::json!({
                "interaction": 1, "actor": "Agent A", "type": "question",
                "content": content(n), "timestamp": NOW,
            });
            writeln!(log, "{line}").unwrap();
        }
    }
    let child = dir
        .command(&["snapshot"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output_within(child, Duration::from_secs(300), "huddle snapshot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let communication = std::fs::read_to_string(dir.file("communication.md")).unwrap();
    assert_eq!(communication.matches("### Interaction #1\n").count(), 1);
    assert_eq!(
        communication.matches("\n#### A → B\n - event ").count(),
        EVENTS
    );
    let first = communication.find(&content(0)).expect("first event shown");
    let last = communication
        .find(&content(EVENTS - 1))
        .expect("last event shown");
    assert!(first < last);
    assert!(
        !dir.file("events.error.log").exists(),
        "nothing was set aside"
    );
    dir.assert_no_error_events();
}

#[test]
fn a_sink_sends_only_the_headers_its_configuration_allows() {
    let server = HttpRecorder::start();
    let mut grant = HttpGrant::new(Allowlist::parse(&[server.url("/")]).unwrap());
    grant.allow_headers = vec!["authorization".into()];
    let sent = grant
        .post_with_headers(
            &server.url("/hook"),
            "text/plain",
            &[("Authorization".into(), "Bearer s3cret".into())],
            b"x",
        )
        .unwrap();
    assert_eq!(sent.status, 200);
    let refused = grant
        .post_with_headers(
            &server.url("/hook"),
            "text/plain",
            &[("X-Forwarded-For".into(), "10.0.0.1".into())],
            b"x",
        )
        .unwrap_err();
    assert!(
        matches!(&refused, HttpError::HeaderNotAllowed { name, .. } if name == "X-Forwarded-For"),
        "{refused:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "the refused request was never sent");
    assert!(
        requests[0]
            .headers
            .contains(&("authorization".into(), "Bearer s3cret".into())),
        "{:?}",
        requests[0].headers
    );
}

#[test]
fn a_silent_server_is_a_typed_timeout() {
    let server = HttpRecorder::start();
    server.set_silent(true);
    let mut grant = HttpGrant::new(Allowlist::parse(&[server.url("/")]).unwrap());
    grant.timeout = Duration::from_millis(300);
    let failed = grant
        .post(&server.url("/hook"), "text/plain", b"x")
        .unwrap_err();
    assert!(matches!(failed, HttpError::Timeout { .. }), "{failed:?}");
}

#[test]
fn plugins_list_shows_each_plugins_wit_version() {
    let dir = HuddleDir::with_config(&format!(
        "[plugins.renderer]\nplugin = {:?}\n",
        repo_file("examples/dist/json-renderer.wasm")
            .display()
            .to_string()
    ));
    let listed = dir.ok(&["plugins", "list"]);
    let row = |slot: &str| {
        listed
            .lines()
            .find(|line| line.starts_with(slot))
            .unwrap_or_else(|| panic!("no {slot} row: {listed}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // The WIT column comes right before the sha256.
    let wit = |slot: &str| {
        let row = row(slot);
        row[row.len() - 2].clone()
    };
    assert!(listed.lines().next().unwrap().contains(" WIT "), "{listed}");
    assert_eq!(wit("heading-mapper"), "0.2.0", "{listed}");
    assert_eq!(wit("renderer"), "0.1.0", "{listed}");
    assert_eq!(wit("alert-sink"), "0.2.0", "{listed}");
}
