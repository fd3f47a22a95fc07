//! Hostile renderer: returns one block more than it was given interactions
//! (the marker-line refusal has a plugin of its own, `markerline`).

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct BadOutput;

impl Guest for BadOutput {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        let mut blocks: Vec<String> = interactions
            .iter()
            .map(|interaction| format!("### Interaction #{}\n\n", interaction.number))
            .collect();
        blocks.push("### Interaction #999999\n\n".to_owned());
        Ok(blocks)
    }
}

export!(BadOutput);
