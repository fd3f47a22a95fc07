//! Hostile renderer: `render` allocates and touches memory until allocation
//! fails (which aborts, a trap). The host's memory limit must stop it first.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

const CHUNK_BYTES: usize = 1 << 20;
const PAGE_BYTES: usize = 1 << 16;

struct Oom;

impl Guest for Oom {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, _: Vec<Interaction>) -> Result<Vec<String>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            // Write every page so the memory is really committed, not just reserved.
            for page in chunk.chunks_mut(PAGE_BYTES) {
                page[0] = 1;
            }
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

export!(Oom);
