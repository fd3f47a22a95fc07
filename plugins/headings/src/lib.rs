//! huddle's default heading mapper (world `heading-mapper`).
//!
//! Maps each event type to the heading shown above it in `communication.md`,
//! or hides it. The stock table is the brief's; `huddle.toml` overrides it:
//!
//! ```toml
//! [plugins.heading-mapper.settings]
//! "type.error" = "Trouble"      # show `error` events under "Trouble"
//! "type.question" = ""          # an empty heading hides the type
//! hide = ["followup"]           # hide several types at once
//! ```
//!
//! Unquoted keys (`type.error = "Trouble"`) work too: TOML makes them a table
//! `type`, which arrives as JSON text.
//!
//! Types missing from the table are shown under their own name, so a new
//! event type is visible without touching the configuration.

use std::cell::RefCell;
use std::collections::BTreeMap;

use exports::huddle::plugin::mapper::Guest;
use huddle::plugin::types::{Event, Settings};

wit_bindgen::generate!({
    path: "../../wit/since_v0.2.0",
    world: "heading-mapper",
});

/// The brief's mapping; `None` hides the type.
const STOCK_HEADINGS: &[(&str, Option<&str>)] = &[
    ("question", Some("A → B")),
    ("answer", Some("B → A")),
    ("followup", Some("A Follow-Up")),
    ("heartbeat", None),
    ("leader_election", None),
];

/// Settings key prefix that sets one type's heading.
const TYPE_KEY_PREFIX: &str = "type.";
/// The same as a table: `[plugins.heading-mapper.settings.type]`.
const TYPE_TABLE_KEY: &str = "type";
/// Settings key that hides a list of types.
const HIDE_KEY: &str = "hide";

/// Type name to heading (`None`: hidden). Types not in the table show their own name.
// A BTreeMap rather than a HashMap: no random hash seed, so the component
// needs no `wasi:random` import.
struct HeadingTable(BTreeMap<String, Option<String>>);

impl HeadingTable {
    fn stock() -> Self {
        let table = STOCK_HEADINGS
            .iter()
            .map(|&(kind, heading)| (kind.to_owned(), heading.map(str::to_owned)))
            .collect();
        Self(table)
    }

    fn from_settings(settings: &Settings) -> Result<Self, String> {
        let mut table = Self::stock();
        let mut given_a_heading = Vec::new();
        let mut hidden = Vec::new();
        for (key, value) in settings {
            let mut set_heading = |key: &str, kind: &str, heading: &str| {
                check_type_name(key, kind)?;
                check_heading(key, heading)?;
                if heading.is_empty() {
                    hidden.push(kind.to_owned());
                } else {
                    given_a_heading.push(kind.to_owned());
                    table.0.insert(kind.to_owned(), Some(heading.to_owned()));
                }
                Ok::<(), String>(())
            };
            if let Some(kind) = key.strip_prefix(TYPE_KEY_PREFIX) {
                set_heading(key, kind, value)?;
            } else if key == TYPE_TABLE_KEY {
                // Unquoted `type.error = "..."` in TOML is a table `type`, which
                // the host passes as JSON text: {"error": "..."}.
                let headings: BTreeMap<String, String> =
                    serde_json::from_str(value).map_err(|_| {
                        format!(
                            "setting `{TYPE_TABLE_KEY}` must be a table of event type to heading, \
                             e.g. type.error = \"Trouble\", not {value}"
                        )
                    })?;
                for (kind, heading) in &headings {
                    set_heading(&format!("{TYPE_KEY_PREFIX}{kind}"), kind, heading)?;
                }
            } else if key == HIDE_KEY {
                for kind in parse_type_list(value)? {
                    check_type_name(HIDE_KEY, &kind)?;
                    hidden.push(kind);
                }
            } else {
                return Err(format!(
                    "unknown setting `{key}` for the heading mapper \
                     (expected `{TYPE_KEY_PREFIX}<event type>` or `{HIDE_KEY}`)"
                ));
            }
        }
        for kind in hidden {
            // Hiding and naming the same type is a contradiction worth reporting
            // rather than silently picking a winner.
            if given_a_heading.contains(&kind) {
                return Err(format!(
                    "event type `{kind}` is both given a heading and hidden in the heading mapper settings"
                ));
            }
            table.0.insert(kind, None);
        }
        Ok(table)
    }

    fn heading(&self, kind: &str) -> Option<String> {
        match self.0.get(kind) {
            Some(configured) => configured.clone(),
            None => Some(kind.to_owned()),
        }
    }
}

/// `hide` takes a JSON list of types (how the host passes a TOML array); a
/// single bare type name is accepted too, as `hide = "heartbeat"` means that.
fn parse_type_list(value: &str) -> Result<Vec<String>, String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(value) {
        return Ok(list);
    }
    if !value.is_empty() && !value.starts_with('[') {
        return Ok(vec![value.to_owned()]);
    }
    Err(format!(
        "setting `{HIDE_KEY}` must be a list of event types, e.g. [\"heartbeat\", \"error\"], not {value}"
    ))
}

/// Same rule as the host applies to event types: `[a-z][a-z0-9_-]*`.
fn check_type_name(key: &str, kind: &str) -> Result<(), String> {
    let mut chars = kind.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if starts_well && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "setting `{key}`: `{kind}` is not an event type (expected [a-z][a-z0-9_-]*)"
        ))
    }
}

/// A heading is one line of text: a newline in it would forge markdown structure.
fn check_heading(key: &str, heading: &str) -> Result<(), String> {
    if heading.chars().any(char::is_control) {
        Err(format!(
            "setting `{key}`: a heading must be one line without control characters"
        ))
    } else {
        Ok(())
    }
}

thread_local! {
    // One instance serves one slot: configure() runs once, then headings() many times.
    static TABLE: RefCell<HeadingTable> = RefCell::new(HeadingTable::stock());
}

struct HeadingMapper;

impl Guest for HeadingMapper {
    fn configure(settings: Settings) -> Result<(), String> {
        let table = HeadingTable::from_settings(&settings)?;
        TABLE.with(|current| *current.borrow_mut() = table);
        Ok(())
    }

    fn headings(events: Vec<Event>) -> Vec<Option<String>> {
        TABLE.with(|table| {
            let table = table.borrow();
            events
                .iter()
                .map(|event| table.heading(&event.type_))
                .collect()
        })
    }
}

export!(HeadingMapper);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    #[test]
    fn stock_table_is_the_briefs() {
        let table = HeadingTable::stock();
        assert_eq!(table.heading("question").as_deref(), Some("A → B"));
        assert_eq!(table.heading("answer").as_deref(), Some("B → A"));
        assert_eq!(table.heading("followup").as_deref(), Some("A Follow-Up"));
        assert_eq!(table.heading("heartbeat"), None);
        assert_eq!(table.heading("leader_election"), None);
        assert_eq!(table.heading("error").as_deref(), Some("error"));
    }

    #[test]
    fn settings_override_show_and_hide() {
        let table = HeadingTable::from_settings(&settings(&[
            ("type.error", "Trouble"),
            ("type.question", ""),
            ("type.heartbeat", "Beat"),
            ("hide", r#"["followup", "note"]"#),
        ]))
        .unwrap();
        assert_eq!(table.heading("error").as_deref(), Some("Trouble"));
        assert_eq!(table.heading("question"), None);
        assert_eq!(table.heading("heartbeat").as_deref(), Some("Beat"));
        assert_eq!(table.heading("followup"), None);
        assert_eq!(table.heading("note"), None);
        assert_eq!(table.heading("answer").as_deref(), Some("B → A"));
    }

    #[test]
    fn a_type_table_works_like_dotted_keys() {
        let table = HeadingTable::from_settings(&settings(&[(
            "type",
            r#"{"error": "Trouble", "answer": ""}"#,
        )]))
        .unwrap();
        assert_eq!(table.heading("error").as_deref(), Some("Trouble"));
        assert_eq!(table.heading("answer"), None);
        let err = HeadingTable::from_settings(&settings(&[("type", r#"{"error": 1}"#)]))
            .err()
            .unwrap();
        assert!(err.contains("`type`"), "{err}");
    }

    #[test]
    fn hide_accepts_a_single_bare_type() {
        let table = HeadingTable::from_settings(&settings(&[("hide", "answer")])).unwrap();
        assert_eq!(table.heading("answer"), None);
    }

    #[test]
    fn bad_settings_are_refused_with_the_key_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("colour", "red")], "`colour`"),
            (&[("type.", "x")], "`type.`"),
            (&[("type.Error", "x")], "`type.Error`"),
            (&[("type.error", "two\nlines")], "`type.error`"),
            (&[("hide", "[1, 2]")], "`hide`"),
            (&[("hide", r#"["Bad Type"]"#)], "`hide`"),
            (&[("type.error", "E"), ("hide", r#"["error"]"#)], "`error`"),
        ];
        for (pairs, named) in cases {
            let err = HeadingTable::from_settings(&settings(pairs))
                .err()
                .unwrap_or_else(|| panic!("{pairs:?} was accepted"));
            assert!(err.contains(named), "{err:?} should name {named}");
        }
    }
}
