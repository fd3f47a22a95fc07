//! Hostile renderer: the first block is 100 MiB of text (the others are empty,
//! so the block count is right and only the size is wrong).

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

const BIG_BLOCK_BYTES: usize = 100 * 1024 * 1024;

struct BigOutput;

impl Guest for BigOutput {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        let mut blocks = vec![String::new(); interactions.len().max(1)];
        blocks[0] = "x".repeat(BIG_BLOCK_BYTES);
        Ok(blocks)
    }
}

export!(BigOutput);
