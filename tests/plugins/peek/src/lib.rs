//! Hostile renderer: reports what it can learn of the world outside its
//! inputs — the wall clock, the monotonic clock and the randomness behind
//! `HashMap` seeds — as the text of every block. A sandbox that hands it
//! nothing real makes the output the same on every call, everywhere.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct Peek;

impl Guest for Peek {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let started = Instant::now();
        let mut spins = 0u64;
        for _ in 0..100_000 {
            spins = std::hint::black_box(spins + 1);
        }
        let elapsed = started.elapsed().as_nanos();
        let seed = RandomState::new().hash_one("huddle");
        Ok(interactions
            .iter()
            .map(|i| format!("### Interaction #{}\n\nwall={wall} elapsed={elapsed} seed={seed}\n\n", i.number))
            .collect())
    }
}

export!(Peek);
