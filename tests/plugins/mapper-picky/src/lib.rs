//! Hostile heading mapper: misbehaves only on the events that ask for it.
//! Content holding `CTRL` gets a heading with an escape sequence, `LONG` a
//! heading of 300 bytes, `COUNT` makes the whole answer one heading short.
//! Every other event is headed by its type.

use exports::huddle::plugin::mapper::Guest;
use huddle::plugin::types::{Event, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "heading-mapper" });

struct MapperPicky;

impl Guest for MapperPicky {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn headings(events: Vec<Event>) -> Vec<Option<String>> {
        let mut headings: Vec<Option<String>> = events
            .iter()
            .map(|event| {
                Some(if event.content.contains("CTRL") {
                    format!("{}\u{1b}[2J", event.type_)
                } else if event.content.contains("LONG") {
                    "H".repeat(300)
                } else {
                    event.type_.clone()
                })
            })
            .collect();
        if events.iter().any(|event| event.content.contains("COUNT")) {
            headings.pop();
        }
        headings
    }
}

export!(MapperPicky);
