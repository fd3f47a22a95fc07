//! {{name}}: a huddle renderer (world `renderer` of huddle:plugin@0.2.0).
//!
//! Each interaction becomes a heading and one list item per visible event:
//!
//! ```text
//! ### Interaction #1
//!
//! - **A → B** from Agent A: Who owns the deploy script?
//! - **B → A** from Agent B: I do
//! ```
//!
//! Settings (`[plugins.renderer.settings]` in huddle.toml):
//! - `show_time = true` adds each event's timestamp to its line.

use std::cell::Cell;

// The generated bindings: `exports::...::render::Guest` is the trait to
// implement, `huddle::plugin::types` holds the records the host passes in.
use exports::huddle::plugin::render::Guest;
use huddle::plugin::host_log;
use huddle::plugin::types::{
    Entry, Interaction, InteractionPart, Level, RenderContext, Section, Settings,
};

wit_bindgen::generate!({
    // Relative to Cargo.toml: the WIT `huddle plugins new` copied in.
    path: "wit",
    world: "renderer",
});

const PLUGIN: &str = "{{name}}";

thread_local! {
    // The host calls configure() once per instance, before any render.
    static SHOW_TIME: Cell<bool> = const { Cell::new(false) };
}

fn head(context: &RenderContext, number: u64) -> String {
    let level = match context.section {
        Section::Communication => "###",
        Section::Archive => "##",
    };
    format!("{level} Interaction #{number}\n\n")
}

fn line(entry: &Entry) -> String {
    let event = &entry.event;
    let time = if SHOW_TIME.get() {
        format!(" at {}", event.timestamp)
    } else {
        String::new()
    };
    // Later lines indented: a multi-line content stays inside its list item.
    let content = event.content.replace('\n', "\n  ");
    format!(
        "- **{}** from {}{time}: {content}\n",
        entry.heading, event.actor
    )
}

/// The blank line keeps blocks apart once the host joins them.
const TAIL: &str = "\n";

struct Renderer;

impl Guest for Renderer {
    fn configure(settings: Settings) -> Result<(), String> {
        for (key, value) in settings {
            match (key.as_str(), value.as_str()) {
                // TOML booleans arrive as JSON text: "true" or "false".
                ("show_time", "true") => SHOW_TIME.set(true),
                ("show_time", "false") => SHOW_TIME.set(false),
                ("show_time", other) => {
                    return Err(format!(
                        "{PLUGIN}: `show_time` must be true or false, not {other}"
                    ));
                }
                // Refusing unknown keys turns a typo in huddle.toml into a clear error.
                _ => return Err(format!("{PLUGIN}: unknown setting `{key}`")),
            }
        }
        host_log::log(
            Level::Debug,
            &format!("{PLUGIN}: show_time = {}", SHOW_TIME.get()),
        );
        Ok(())
    }

    /// One block per interaction, in the order given; a block depends only
    /// on its interaction and the context (the host caches blocks).
    fn render(
        context: RenderContext,
        interactions: Vec<Interaction>,
    ) -> Result<Vec<String>, String> {
        let blocks = interactions
            .iter()
            .map(|interaction| {
                let mut block = head(&context, interaction.number);
                interaction
                    .entries
                    .iter()
                    .for_each(|entry| block.push_str(&line(entry)));
                block.push_str(TAIL);
                block
            })
            .collect();
        Ok(blocks)
    }

    /// An interaction too large for one call, in slices: the parts joined
    /// must equal what render() returns for the whole interaction.
    fn render_part(context: RenderContext, part: InteractionPart) -> Result<String, String> {
        let mut text = if part.first {
            head(&context, part.number)
        } else {
            String::new()
        };
        part.entries
            .iter()
            .for_each(|entry| text.push_str(&line(entry)));
        if part.last {
            text.push_str(TAIL);
        }
        Ok(text)
    }
}

export!(Renderer);
