//! Hostile renderer: `render` never returns. The host's CPU deadline must stop it.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct Loop;

impl Guest for Loop {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, _: Vec<Interaction>) -> Result<Vec<String>, String> {
        // black_box keeps the optimiser from proving anything about the loop.
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

export!(Loop);
