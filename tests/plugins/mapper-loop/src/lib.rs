//! Hostile heading mapper: `headings` never returns. The host's CPU deadline
//! for the mapper slot must stop it.

use exports::huddle::plugin::mapper::Guest;
use huddle::plugin::types::{Event, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "heading-mapper" });

struct MapperLoop;

impl Guest for MapperLoop {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn headings(_: Vec<Event>) -> Vec<Option<String>> {
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

export!(MapperLoop);
