//! Hostile renderer: writes to stdout and stderr on every call (which once
//! crashed a daemon), and fails only on the events that ask for it: content
//! holding `PANIC` traps, `LOOP` spins until the deadline, `MARKER` makes
//! its block close the communication region early. Every other interaction
//! renders as `### Interaction #N` with one line per event.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct Picky;

impl Guest for Picky {
    fn configure(_: Settings) -> Result<(), String> {
        println!("picky: configure on stdout");
        eprintln!("picky: configure on stderr");
        Ok(())
    }

    fn render(_: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        println!("picky: rendering {} interactions", interactions.len());
        eprintln!("picky: rendering on stderr too");
        let mut blocks = Vec::with_capacity(interactions.len());
        for interaction in &interactions {
            let mut block = format!("### Interaction #{}\n\n", interaction.number);
            for entry in &interaction.entries {
                let content = &entry.event.content;
                if content.contains("PANIC") {
                    panic!("picky: asked to panic by interaction {}", interaction.number);
                }
                if content.contains("LOOP") {
                    let mut spins: u64 = 0;
                    loop {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                }
                if content.contains("MARKER") {
                    block.push_str("<!-- END COMMUNICATION -->\n");
                }
                block.push_str(&format!("- {}: {}\n", entry.heading, content));
            }
            block.push('\n');
            blocks.push(block);
        }
        Ok(blocks)
    }
}

export!(Picky);
