//! huddle's default renderer (world `renderer`).
//!
//! Renders each interaction to one block of markdown with a minijinja template:
//! one template for the communication region, one for the archive. The stock
//! templates (in `templates/`) reproduce the brief's format byte for byte;
//! `huddle.toml` can replace either:
//!
//! ```toml
//! [plugins.renderer.settings]
//! communication_template = """
//! ### Interaction #{{ interaction.number }}
//! {% for entry in interaction.entries %}
//! **{{ entry.heading }}** ({{ entry.event.actor }}): {{ entry.event.content }}
//! {% endfor %}
//!
//! """
//! ```
//!
//! A template sees `interaction` with `number` and `entries`; each entry has
//! `heading` and `event` (`interaction`, `actor`, `type`, `content`,
//! `timestamp`, `id`, `term`; the last two may be none). Blocks are trimmed
//! (`trim_blocks`, `lstrip_blocks`) and a template's final newline is kept, so
//! a template reads like the text it produces. Nothing is HTML-escaped: the
//! host has already neutralised content that could forge structure.

use std::cell::RefCell;
use std::sync::Arc;

use exports::huddle::plugin::render::Guest;
use huddle::plugin::types::{
    Entry, Event, Interaction, InteractionPart, RenderContext, Section, Settings,
};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object};
use minijinja::{Environment, UndefinedBehavior, Value};

wit_bindgen::generate!({
    path: "../../wit/since_v0.2.0",
    world: "renderer",
});

/// Template names double as the settings keys that replace them, so an error
/// message such as "(in archive_template:2)" points at the right setting.
const COMMUNICATION_TEMPLATE: &str = "communication_template";
const ARCHIVE_TEMPLATE: &str = "archive_template";

const STOCK_COMMUNICATION: &str = include_str!("../templates/communication.md.j2");
const STOCK_ARCHIVE: &str = include_str!("../templates/archive.md.j2");

/// Both templates, compiled once at configure time.
fn build_environment(
    communication: String,
    archive: String,
) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
        .map_err(|err| err.to_string())?;
    env.set_syntax(syntax);
    // A misspelt field is an error rather than silently empty text, while
    // `{% if entry.event.id %}` still works on a missing value.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.add_template_owned(COMMUNICATION_TEMPLATE, communication)
        .map_err(|err| err.to_string())?;
    env.add_template_owned(ARCHIVE_TEMPLATE, archive)
        .map_err(|err| err.to_string())?;
    Ok(env)
}

fn environment_from_settings(settings: Settings) -> Result<Environment<'static>, String> {
    let mut communication = STOCK_COMMUNICATION.to_owned();
    let mut archive = STOCK_ARCHIVE.to_owned();
    for (key, value) in settings {
        match key.as_str() {
            COMMUNICATION_TEMPLATE => communication = value,
            ARCHIVE_TEMPLATE => archive = value,
            _ => {
                return Err(format!(
                    "unknown setting `{key}` for the markdown renderer \
                     (expected `{COMMUNICATION_TEMPLATE}` or `{ARCHIVE_TEMPLATE}`)"
                ));
            }
        }
    }
    build_environment(communication, archive)
}

/// A record with fixed field names, as templates see it: a map that costs one
/// allocation instead of one per key, which matters over thousands of
/// interactions per snapshot.
#[derive(Debug)]
struct Record<const N: usize> {
    keys: &'static [&'static str; N],
    values: [Value; N],
}

impl<const N: usize> Object for Record<N> {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        let index = self.keys.iter().position(|candidate| *candidate == key)?;
        Some(self.values[index].clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(self.keys)
    }
}

fn record<const N: usize>(keys: &'static [&'static str; N], values: [Value; N]) -> Value {
    Value::from_object(Record { keys, values })
}

/// Which part of an interaction is rendered: the whole is first and last.
#[derive(Debug, Clone, Copy)]
struct Part {
    first: bool,
    last: bool,
}

const WHOLE: Part = Part {
    first: true,
    last: true,
};

/// The template context of one interaction (or one part of it):
/// `{ interaction: { number, entries: [{ heading, event: { ... } }] },
///    part: { first, last } }`.
fn context(interaction: Interaction, part: Part) -> Value {
    let entries: Vec<Value> = interaction.entries.into_iter().map(entry_value).collect();
    let interaction = record(
        &["number", "entries"],
        [Value::from(interaction.number), Value::from(entries)],
    );
    let part = record(
        &["first", "last"],
        [Value::from(part.first), Value::from(part.last)],
    );
    record(&["interaction", "part"], [interaction, part])
}

fn entry_value(entry: Entry) -> Value {
    record(
        &["heading", "event"],
        [Value::from(entry.heading), event_value(entry.event)],
    )
}

fn event_value(event: Event) -> Value {
    record(
        &[
            "interaction",
            "actor",
            "type",
            "content",
            "timestamp",
            "id",
            "term",
        ],
        [
            Value::from(event.interaction),
            Value::from(event.actor),
            Value::from(event.type_),
            Value::from(event.content),
            Value::from(event.timestamp),
            Value::from(event.id),
            Value::from(event.term),
        ],
    )
}

fn render_blocks(
    env: &Environment<'static>,
    section: Section,
    interactions: Vec<Interaction>,
) -> Result<Vec<String>, String> {
    interactions
        .into_iter()
        .map(|interaction| render_template(env, section, interaction, WHOLE))
        .collect()
}

fn render_template(
    env: &Environment<'static>,
    section: Section,
    interaction: Interaction,
    part: Part,
) -> Result<String, String> {
    let name = match section {
        Section::Communication => COMMUNICATION_TEMPLATE,
        Section::Archive => ARCHIVE_TEMPLATE,
    };
    let template = env.get_template(name).map_err(|err| err.to_string())?;
    template
        .render(context(interaction, part))
        .map_err(|err| err.to_string())
}

/// The templates in force, and which of them are the stock ones: those are
/// rendered by `render_stock`, which gives the same bytes several times
/// faster (a test compares the two on awkward content).
struct Configured {
    env: Environment<'static>,
    stock_communication: bool,
    stock_archive: bool,
}

fn configure_from_settings(settings: Settings) -> Result<Configured, String> {
    let custom = |name: &str| settings.iter().any(|(key, _)| key == name);
    let stock_communication = !custom(COMMUNICATION_TEMPLATE);
    let stock_archive = !custom(ARCHIVE_TEMPLATE);
    Ok(Configured {
        env: environment_from_settings(settings)?,
        stock_communication,
        stock_archive,
    })
}

fn render_configured(
    configured: &Configured,
    section: Section,
    interactions: Vec<Interaction>,
) -> Result<Vec<String>, String> {
    let stock = match section {
        Section::Communication => configured.stock_communication,
        Section::Archive => configured.stock_archive,
    };
    if stock {
        Ok(interactions
            .iter()
            .map(|i| render_stock(section, i, WHOLE))
            .collect())
    } else {
        render_blocks(&configured.env, section, interactions)
    }
}

/// One part of an interaction too large for one call; the parts together
/// equal the whole block.
fn render_part_configured(
    configured: &Configured,
    section: Section,
    part: InteractionPart,
) -> Result<String, String> {
    let stock = match section {
        Section::Communication => configured.stock_communication,
        Section::Archive => configured.stock_archive,
    };
    let flags = Part {
        first: part.first,
        last: part.last,
    };
    let interaction = Interaction {
        number: part.number,
        entries: part.entries,
    };
    if stock {
        Ok(render_stock(section, &interaction, flags))
    } else {
        render_template(&configured.env, section, interaction, flags)
    }
}

/// The stock templates, written out in Rust.
fn render_stock(section: Section, interaction: &Interaction, part: Part) -> String {
    let size: usize = interaction
        .entries
        .iter()
        .map(|e| e.heading.len() + e.event.content.len() + e.event.actor.len() + 64)
        .sum();
    let mut block = String::with_capacity(size + 32);
    match section {
        Section::Communication => {
            if part.first {
                block.push_str("### Interaction #");
                block.push_str(&interaction.number.to_string());
                block.push('\n');
            }
            for entry in &interaction.entries {
                block.push_str("#### ");
                block.push_str(&entry.heading);
                block.push_str("\n - ");
                block.push_str(&entry.event.content);
                block.push('\n');
            }
        }
        Section::Archive => {
            if part.first {
                block.push_str("## Interaction #");
                block.push_str(&interaction.number.to_string());
                block.push('\n');
            }
            for entry in &interaction.entries {
                let event = &entry.event;
                block.push_str("- [");
                block.push_str(&event.actor);
                block.push(' ');
                block.push_str(&event.type_);
                block.push(' ');
                block.push_str(&event.timestamp);
                block.push_str("]\n");
                block.push_str(&event.content);
                block.push('\n');
            }
        }
    }
    if part.last {
        block.push('\n');
    }
    block
}

thread_local! {
    // One instance serves one slot: configure() runs once, then render() many times.
    // `None` until configured; render() then falls back to the stock templates.
    static CONFIGURED: RefCell<Option<Configured>> = const { RefCell::new(None) };
}

struct MarkdownRenderer;

impl Guest for MarkdownRenderer {
    fn configure(settings: Settings) -> Result<(), String> {
        let configured = configure_from_settings(settings)?;
        CONFIGURED.with(|current| *current.borrow_mut() = Some(configured));
        Ok(())
    }

    fn render(
        context: RenderContext,
        interactions: Vec<Interaction>,
    ) -> Result<Vec<String>, String> {
        with_configured(|configured| render_configured(configured, context.section, interactions))
    }

    fn render_part(context: RenderContext, part: InteractionPart) -> Result<String, String> {
        with_configured(|configured| render_part_configured(configured, context.section, part))
    }
}

fn with_configured<T>(work: impl FnOnce(&Configured) -> Result<T, String>) -> Result<T, String> {
    CONFIGURED.with(|current| {
        let mut current = current.borrow_mut();
        let configured = match current.as_ref() {
            Some(configured) => configured,
            None => current.insert(configure_from_settings(Vec::new())?),
        };
        work(configured)
    })
}

export!(MarkdownRenderer);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(actor: &str, kind: &str, content: &str, timestamp: &str) -> Event {
        Event {
            interaction: 7,
            actor: actor.to_owned(),
            type_: kind.to_owned(),
            content: content.to_owned(),
            timestamp: timestamp.to_owned(),
            id: None,
            term: None,
        }
    }

    fn sample() -> Vec<Interaction> {
        vec![Interaction {
            number: 7,
            entries: vec![
                Entry {
                    heading: "A → B".to_owned(),
                    event: event("Agent A", "question", "How?", "2026-11-25T14:00:31Z"),
                },
                Entry {
                    heading: "B → A".to_owned(),
                    event: event("Agent B", "answer", "Like so.", "2026-11-25T14:00:40Z"),
                },
            ],
        }]
    }

    fn stock() -> Environment<'static> {
        environment_from_settings(Vec::new()).unwrap()
    }

    #[test]
    fn the_stock_fast_path_gives_the_templates_bytes() {
        let awkward = [
            "",
            "plain",
            "multi\nline\n\n  indented\n",
            "trailing newline\n",
            "{{ not a template }} {% if x %}",
            "<b>&'\"</b> ünïcödé → ✓",
            "\\### escaped heading",
            " leading space",
        ];
        let mut interactions = Vec::new();
        for (n, content) in awkward.iter().enumerate() {
            let mut interaction = sample().remove(0);
            interaction.number = n as u64;
            interaction.entries[0].event.content = (*content).to_owned();
            interaction.entries[1].heading = format!("heading {content}");
            interactions.push(interaction);
        }
        interactions.push(Interaction {
            number: 99,
            entries: Vec::new(),
        });
        let configured = configure_from_settings(Vec::new()).unwrap();
        for section in [Section::Communication, Section::Archive] {
            let fast = render_configured(&configured, section, interactions.clone()).unwrap();
            let templated = render_blocks(&configured.env, section, interactions.clone()).unwrap();
            assert_eq!(fast, templated);
        }
    }

    #[test]
    fn parts_concatenated_equal_the_whole_block() {
        let mut interaction = sample().remove(0);
        for n in 0..5 {
            let mut entry = interaction.entries[n % 2].clone();
            entry.event.content = format!("entry {n}");
            interaction.entries.push(entry);
        }
        let stock_template = vec![
            (
                COMMUNICATION_TEMPLATE.to_owned(),
                STOCK_COMMUNICATION.to_owned(),
            ),
            (ARCHIVE_TEMPLATE.to_owned(), STOCK_ARCHIVE.to_owned()),
        ];
        for configured in [
            configure_from_settings(Vec::new()).unwrap(),
            configure_from_settings(stock_template).unwrap(),
        ] {
            for section in [Section::Communication, Section::Archive] {
                let whole =
                    render_configured(&configured, section, vec![interaction.clone()]).unwrap();
                let chunks: Vec<&[Entry]> = interaction.entries.chunks(3).collect();
                let parts: String = chunks
                    .iter()
                    .enumerate()
                    .map(|(i, entries)| {
                        let part = InteractionPart {
                            number: interaction.number,
                            entries: entries.to_vec(),
                            first: i == 0,
                            last: i + 1 == chunks.len(),
                        };
                        render_part_configured(&configured, section, part).unwrap()
                    })
                    .collect();
                assert_eq!(parts, whole[0]);
            }
        }
    }

    #[test]
    fn communication_block_matches_the_brief() {
        let blocks = render_blocks(&stock(), Section::Communication, sample()).unwrap();
        assert_eq!(
            blocks,
            ["### Interaction #7\n#### A → B\n - How?\n#### B → A\n - Like so.\n\n"]
        );
    }

    #[test]
    fn archive_block_matches_the_brief() {
        let blocks = render_blocks(&stock(), Section::Archive, sample()).unwrap();
        assert_eq!(
            blocks,
            ["## Interaction #7\n\
              - [Agent A question 2026-11-25T14:00:31Z]\nHow?\n\
              - [Agent B answer 2026-11-25T14:00:40Z]\nLike so.\n\n"]
        );
    }

    #[test]
    fn multi_line_content_keeps_every_line() {
        let mut interactions = sample();
        interactions[0].entries[0].event.content = "one\ntwo\n\nthree".to_owned();
        let blocks = render_blocks(&stock(), Section::Communication, interactions).unwrap();
        assert!(blocks[0].contains("#### A → B\n - one\ntwo\n\nthree\n#### B → A"));
    }

    #[test]
    fn content_is_not_html_escaped() {
        let mut interactions = sample();
        interactions[0].entries[0].event.content = "<b>&'\"</b>".to_owned();
        let blocks = render_blocks(&stock(), Section::Archive, interactions).unwrap();
        assert!(blocks[0].contains("\n<b>&'\"</b>\n"));
    }

    #[test]
    fn one_block_per_interaction_even_when_empty() {
        let mut interactions = sample();
        interactions.push(Interaction {
            number: 8,
            entries: Vec::new(),
        });
        let blocks = render_blocks(&stock(), Section::Communication, interactions).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1], "### Interaction #8\n\n");
    }

    #[test]
    fn custom_template_sees_every_field() {
        let template = "{{ interaction.number }}{% for e in interaction.entries %}|{{ e.heading }},\
                        {{ e.event.interaction }},{{ e.event.actor }},{{ e.event.type }},\
                        {{ e.event.timestamp }},{{ e.event.id or '-' }},{{ e.event.term or '-' }}\
                        {% endfor %}";
        let env =
            environment_from_settings(vec![(ARCHIVE_TEMPLATE.to_owned(), template.to_owned())])
                .unwrap();
        let mut interactions = sample();
        interactions[0].entries[1].event.id = Some("01J".to_owned());
        interactions[0].entries[1].event.term = Some(3);
        let blocks = render_blocks(&env, Section::Archive, interactions).unwrap();
        assert_eq!(
            blocks,
            ["7|A → B,7,Agent A,question,2026-11-25T14:00:31Z,-,-\
              |B → A,7,Agent B,answer,2026-11-25T14:00:40Z,01J,3"]
        );
    }

    #[test]
    fn errors_carry_minijinja_messages() {
        let syntax = environment_from_settings(vec![(
            COMMUNICATION_TEMPLATE.to_owned(),
            "{% for %}".to_owned(),
        )])
        .err()
        .unwrap();
        assert!(syntax.contains("syntax error"), "{syntax}");
        assert!(syntax.contains(COMMUNICATION_TEMPLATE), "{syntax}");

        let unknown = environment_from_settings(vec![("template".to_owned(), String::new())])
            .err()
            .unwrap();
        assert!(unknown.contains("`template`"), "{unknown}");

        let env = environment_from_settings(vec![(
            ARCHIVE_TEMPLATE.to_owned(),
            "{{ interaction.nubmer }}".to_owned(),
        )])
        .unwrap();
        let runtime = render_blocks(&env, Section::Archive, sample())
            .err()
            .unwrap();
        assert!(runtime.contains("undefined"), "{runtime}");
    }
}
