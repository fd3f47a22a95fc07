//! {{name}}: a huddle heading mapper (world `heading-mapper` of
//! huddle:plugin@0.2.0).
//!
//! Gives each event the heading shown above it (the table below; other types
//! under their own name), or hides it.
//!
//! Settings (`[plugins.heading-mapper.settings]` in huddle.toml):
//! - `hide = ["heartbeat", "leader_election"]`: the event types to hide
//!   (these two by default, as huddle does; `hide = []` shows everything).

use std::cell::RefCell;

// The generated bindings: `exports::...::mapper::Guest` is the trait to
// implement, `huddle::plugin::types` holds the records the host passes in.
use exports::huddle::plugin::mapper::Guest;
use huddle::plugin::host_log;
use huddle::plugin::types::{Event, Level, Settings};

wit_bindgen::generate!({
    // Relative to Cargo.toml: the WIT `huddle plugins new` copied in.
    path: "wit",
    world: "heading-mapper",
});

const PLUGIN: &str = "{{name}}";

/// Event type to heading; types not listed show under their own name.
const HEADINGS: &[(&str, &str)] = &[
    ("question", "Question"),
    ("answer", "Answer"),
    ("followup", "Follow-up"),
    ("error", "Error"),
];

const HIDDEN_BY_DEFAULT: &[&str] = &["heartbeat", "leader_election"];

thread_local! {
    // The host calls configure() once per instance, before any headings().
    static HIDDEN: RefCell<Vec<String>> =
        RefCell::new(HIDDEN_BY_DEFAULT.iter().map(|kind| kind.to_string()).collect());
}

fn heading_of(kind: &str) -> String {
    HEADINGS
        .iter()
        .find(|(listed, _)| *listed == kind)
        .map_or_else(|| kind.to_owned(), |(_, heading)| heading.to_string())
}

struct Mapper;

impl Guest for Mapper {
    fn configure(settings: Settings) -> Result<(), String> {
        for (key, value) in settings {
            match key.as_str() {
                // TOML lists arrive as JSON text.
                "hide" => {
                    let kinds: Vec<String> = serde_json::from_str(&value).map_err(|_| {
                        format!(
                            "{PLUGIN}: `hide` must be a list of event types, \
                             e.g. [\"heartbeat\"], not {value}"
                        )
                    })?;
                    HIDDEN.set(kinds);
                }
                // Refusing unknown keys turns a typo in huddle.toml into a clear error.
                _ => return Err(format!("{PLUGIN}: unknown setting `{key}`")),
            }
        }
        HIDDEN.with_borrow(|hidden| {
            host_log::log(Level::Debug, &format!("{PLUGIN}: hiding {hidden:?}"));
        });
        Ok(())
    }

    /// Exactly one answer per event, in order: its heading, or None to hide it.
    fn headings(events: Vec<Event>) -> Vec<Option<String>> {
        HIDDEN.with_borrow(|hidden| {
            events
                .iter()
                .map(|event| {
                    if hidden.contains(&event.type_) {
                        None
                    } else {
                        Some(heading_of(&event.type_))
                    }
                })
                .collect()
        })
    }
}

export!(Mapper);
