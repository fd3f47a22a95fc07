//! Hostile renderer: `render` panics, which traps the instance.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct Panic;

impl Guest for Panic {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, _: Vec<Interaction>) -> Result<Vec<String>, String> {
        panic!("hostile plugin panicked on purpose");
    }
}

export!(Panic);
