//! Test renderer (WIT 0.2.0): each block names the render context it was
//! given (section, K, directory) and the events it holds, so a test sees
//! that the host hands the context over; each call says through `host-log`
//! what it was asked, so a test sees the lines reach the person running it.

use exports::huddle::plugin::render::Guest;
use huddle::plugin::host_log::log;
use huddle::plugin::types::{Interaction, InteractionPart, Level, RenderContext, Section, Settings};

wit_bindgen::generate!({ path: "../../../wit/since_v0.2.0", world: "renderer" });

struct Context;

fn describe(context: &RenderContext) -> String {
    let section = match context.section {
        Section::Communication => "communication",
        Section::Archive => "archive",
    };
    format!("section={section} k={} directory={}", context.k, context.directory)
}

/// The block of an interaction, or of a slice of it: the heading with the
/// context when the slice starts it, the blank line when it ends it, so the
/// parts together equal the whole.
fn text(
    context: &RenderContext,
    number: u64,
    entries: &[huddle::plugin::types::Entry],
    first: bool,
    last: bool,
) -> String {
    let mut text = String::new();
    if first {
        text.push_str(&format!("### Interaction #{number}\n\n{}\n", describe(context)));
    }
    for entry in entries {
        text.push_str(&format!("- {}: {}\n", entry.heading, entry.event.content));
    }
    if last {
        text.push('\n');
    }
    text
}

impl Guest for Context {
    fn configure(settings: Settings) -> Result<(), String> {
        log(Level::Debug, &format!("configure: {} settings", settings.len()));
        match settings.first() {
            Some((key, _)) => Err(format!("context renderer: unknown setting `{key}` (it takes none)")),
            None => Ok(()),
        }
    }

    fn render(context: RenderContext, interactions: Vec<Interaction>) -> Result<Vec<String>, String> {
        log(
            Level::Info,
            &format!("rendering {} interactions, {}", interactions.len(), describe(&context)),
        );
        Ok(interactions
            .iter()
            .map(|i| text(&context, i.number, &i.entries, true, true))
            .collect())
    }

    fn render_part(context: RenderContext, part: InteractionPart) -> Result<String, String> {
        Ok(text(&context, part.number, &part.entries, part.first, part.last))
    }
}

export!(Context);
