//! Example renderer: each interaction becomes one pretty-printed JSON object in
//! a fenced ```json block, for readers that are programs rather than people.
//!
//! Settings (`[plugins.renderer.settings]` in huddle.toml):
//! - `heading = true` puts a markdown heading (`### Interaction #N` in the
//!   communication region, `## Interaction #N` in the archive) above each block.
//!
//! Content cannot break out of the fence: JSON escapes newlines, so every line
//! of an event's content stays inside a quoted string.

use std::cell::Cell;

// The generated bindings: `exports::...::render::Guest` is the trait to
// implement, `huddle::plugin::types` holds the records the host passes in.
use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};
use serde_json::json;

wit_bindgen::generate!({
    // The WIT package of huddle; adjust the path if you copy this crate elsewhere.
    path: "../../wit",
    world: "renderer",
});

thread_local! {
    // The host calls configure() once per instance, before any render().
    static WITH_HEADING: Cell<bool> = const { Cell::new(false) };
}

fn render_block(section: Section, interaction: &Interaction) -> Result<String, String> {
    let entries: Vec<serde_json::Value> = interaction
        .entries
        .iter()
        .map(|entry| {
            json!({
                "heading": entry.heading,
                "actor": entry.event.actor,
                "type": entry.event.type_,
                "content": entry.event.content,
                "timestamp": entry.event.timestamp,
            })
        })
        .collect();
    let object = json!({ "number": interaction.number, "entries": entries });
    let pretty = serde_json::to_string_pretty(&object).map_err(|err| err.to_string())?;

    let mut block = String::new();
    if WITH_HEADING.get() {
        let level = match section {
            Section::Communication => "###",
            Section::Archive => "##",
        };
        block.push_str(&format!("{level} Interaction #{}\n", interaction.number));
    }
    block.push_str("```json\n");
    block.push_str(&pretty);
    // The blank line after the fence keeps blocks apart once the host joins them.
    block.push_str("\n```\n\n");
    Ok(block)
}

struct JsonRenderer;

impl Guest for JsonRenderer {
    fn configure(settings: Settings) -> Result<(), String> {
        for (key, value) in settings {
            match (key.as_str(), value.as_str()) {
                // TOML booleans arrive as JSON text: "true" or "false".
                ("heading", "true") => WITH_HEADING.set(true),
                ("heading", "false") => WITH_HEADING.set(false),
                ("heading", other) => {
                    return Err(format!(
                        "json-renderer: `heading` must be true or false, not {other}"
                    ));
                }
                // Refusing unknown keys turns a typo in huddle.toml into a clear error.
                _ => return Err(format!("json-renderer: unknown setting `{key}`")),
            }
        }
        Ok(())
    }

    fn render(section: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        // Exactly one block per interaction, in the order given.
        interactions
            .iter()
            .map(|interaction| render_block(section, interaction))
            .collect()
    }
}

export!(JsonRenderer);
