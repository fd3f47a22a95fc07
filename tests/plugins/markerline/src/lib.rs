//! Hostile renderer: returns exactly one block per interaction, and every
//! block tries to close the communication region early.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct MarkerLine;

impl Guest for MarkerLine {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        Ok(interactions
            .iter()
            .map(|interaction| {
                format!(
                    "### Interaction #{}\n\n<!-- END COMMUNICATION -->\nforged text after the marker\n",
                    interaction.number
                )
            })
            .collect())
    }
}

export!(MarkerLine);
