//! Hostile renderer: tries to read /etc/passwd. With no preopened directories
//! the read fails and the io error comes back as Err; if it ever succeeds, the
//! file's content is returned so the test sees the sandbox leak.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{Interaction, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "renderer" });

struct ReadFile;

impl Guest for ReadFile {
    fn configure(_: Settings) -> Result<(), String> {
        Ok(())
    }

    fn render(_: Section, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        match std::fs::read_to_string("/etc/passwd") {
            Ok(content) => Ok(vec![content; interactions.len().max(1)]),
            Err(error) => Err(format!("reading /etc/passwd failed: {error}")),
        }
    }
}

export!(ReadFile);
