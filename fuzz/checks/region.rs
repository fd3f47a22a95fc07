//! The neutraliser and the region splice of communication.md.
//!
//! The input (parts separated by 0xFF bytes, each read as UTF-8 with
//! replacement) is people's text before and after the markers, then events
//! in groups of six parts: a join flag (empty: the event starts a new
//! interaction; otherwise it joins the previous one, and is its id), the
//! heading, the actor, the type, the timestamp and the content. The first
//! byte's low bit says whether communication.md has no markers yet.
//!
//! Every field is neutralised as the host does and rendered with the stock
//! templates' structure (plugins/markdown/templates). Then:
//!
//! - neutralised content has no line break but `\n`, no control character,
//!   no marker line and no line starting (after blanks) with `#`; a
//!   one-line field has no line break or control character; the host never
//!   refuses a rendered block for a marker line;
//! - after the splice, the people's text before and after the markers is
//!   byte for byte what it was, the region is exactly the rendered blocks,
//!   and it holds exactly the K `### Interaction #N` headings and one
//!   `####` heading per event, no other line starting with `#`; splicing
//!   the same region again changes nothing;
//! - read by a CommonMark parser (plain and with GitHub's extensions), the
//!   document's headings are exactly the notes', the K interactions' and the
//!   events' (showing the heading text), the markers are its only HTML and
//!   are top-level blocks, and no text of an event opens a block of its
//!   own; likewise in the archive.

use huddle::event::Event;
use huddle::snapshot::fuzz_support::{
    has_marker_line, neutralise_event, neutralise_heading, splice,
};
use huddle::snapshot::{BEGIN_MARKER, END_MARKER};
use pulldown_cmark::{CodeBlockKind, Event as Md, Options, Parser, Tag, TagEnd};

/// More events add nothing but time.
const MAX_EVENTS: usize = 24;

struct Entry {
    heading: String,
    event: Event,
}

struct Interaction {
    number: u64,
    /// As read from the log and as the renderer receives them.
    raw: Vec<Entry>,
    safe: Vec<Entry>,
}

pub fn check(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let without_markers = flags & 1 == 1;
    let parts: Vec<String> = data
        .split(|b| *b == 0xff)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    let part = |i: usize| parts.get(i).map_or("", String::as_str);
    let before = people_text(part(0));
    let after = people_text(part(1));

    let mut interactions: Vec<Interaction> = Vec::new();
    for fields in parts
        .get(2..)
        .unwrap_or_default()
        .chunks(6)
        .take(MAX_EVENTS)
    {
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        let join = field(0);
        let entry = Entry {
            heading: field(1),
            event: Event {
                interaction: 0,
                actor: field(2),
                kind: field(3),
                content: field(5),
                timestamp: field(4),
                id: (!join.is_empty()).then_some(join.clone()),
                term: None,
                extra: Default::default(),
            },
        };
        match interactions.last_mut() {
            Some(last) if !join.is_empty() => last.raw.push(entry),
            _ => interactions.push(Interaction {
                number: interactions.len() as u64 + 1,
                raw: vec![entry],
                safe: Vec::new(),
            }),
        }
    }
    for interaction in &mut interactions {
        for entry in &interaction.raw {
            let mut event = entry.event.clone();
            event.interaction = interaction.number;
            neutralise_event(&mut event);
            check_content(&event.content);
            for field in [&event.actor, &event.kind, &event.timestamp]
                .into_iter()
                .chain(event.id.as_ref())
            {
                check_one_line(field);
            }
            let heading = neutralise_heading(&entry.heading);
            check_one_line(&heading);
            interaction.safe.push(Entry { heading, event });
        }
    }

    let blocks: Vec<String> = interactions.iter().map(communication_block).collect();
    for block in &blocks {
        assert!(!has_marker_line(block), "the host would refuse {block:?}");
    }
    let region = blocks.concat();
    let events: usize = interactions.iter().map(|i| i.raw.len()).sum();
    check_splice(&before, &after, without_markers, &blocks, &region, events);
    check_commonmark(&interactions, &region);
}

/// People's text: anything, but no line that is exactly a marker (that
/// would be a region of theirs).
fn people_text(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let bare = line.trim_end_matches(['\n', '\r']);
            if bare == BEGIN_MARKER || bare == END_MARKER {
                format!(" {line}")
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// Characters that end a line for some reader.
fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn check_content(content: &str) {
    assert!(
        !content
            .chars()
            .any(|c| (c != '\n' && is_line_break(c)) || (c.is_control() && c != '\n' && c != '\t')),
        "neutralised content keeps a line break or control: {content:?}"
    );
    for line in content.split('\n') {
        let text = line.trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '\u{feff}' | '\u{200b}' | '\u{2060}')
        });
        assert!(
            !text.starts_with('#'),
            "neutralised content has a heading line: {content:?}"
        );
        assert!(
            line.trim() != BEGIN_MARKER && line.trim() != END_MARKER,
            "neutralised content has a marker line: {content:?}"
        );
    }
}

fn check_one_line(field: &str) {
    assert!(
        !field
            .chars()
            .any(|c| is_line_break(c) || (c.is_control() && c != '\t')),
        "a neutralised one-line field keeps a line break or control: {field:?}"
    );
}

/// plugins/markdown/templates/communication.md.j2, written out.
fn communication_block(interaction: &Interaction) -> String {
    let mut block = format!("### Interaction #{}\n", interaction.number);
    for entry in &interaction.safe {
        block.push_str(&format!(
            "#### {}\n - {}\n",
            entry.heading, entry.event.content
        ));
    }
    block.push('\n');
    block
}

/// plugins/markdown/templates/archive.md.j2, written out.
fn archive_block(interaction: &Interaction) -> String {
    let mut block = format!("## Interaction #{}\n", interaction.number);
    for entry in &interaction.safe {
        let e = &entry.event;
        block.push_str(&format!(
            "- [{} {} {}]\n{}\n",
            e.actor, e.kind, e.timestamp, e.content
        ));
    }
    block.push('\n');
    block
}

fn check_splice(
    before: &str,
    after: &str,
    without_markers: bool,
    blocks: &[String],
    region: &str,
    events: usize,
) {
    let mut head = before.to_string();
    if !head.is_empty() && !head.ends_with('\n') {
        head.push('\n');
    }
    // Before: no markers at all, or a region of an earlier run (the first
    // half of the blocks) between them.
    let (existing, tail) = if without_markers {
        (format!("{before}{after}"), "")
    } else {
        let old = blocks[..blocks.len() / 2].concat();
        (
            format!("{head}{BEGIN_MARKER}\n{old}{END_MARKER}\n{after}"),
            after,
        )
    };
    if without_markers {
        head = existing.clone();
        if !head.is_empty() && !head.ends_with('\n') {
            head.push('\n');
        }
    }
    let mut expected_region = region.to_string();
    if !region.is_empty() && !region.ends_with('\n') {
        expected_region.push('\n');
    }
    let spliced = splice(&existing, region);
    assert_eq!(
        spliced,
        format!("{head}{BEGIN_MARKER}\n{expected_region}{END_MARKER}\n{tail}"),
        "the people's text outside the markers changed"
    );
    assert_eq!(
        splice(&spliced, region),
        spliced,
        "splicing again changed the file"
    );

    // The region as a reader of the file finds it.
    let found = find_region(&spliced).expect("the markers are found again");
    assert_eq!(found, expected_region);
    let interaction_headings = found
        .lines()
        .filter(|line| line.starts_with("### Interaction #"))
        .count();
    assert_eq!(interaction_headings, blocks.len(), "{found:?}");
    let heading_lines = found
        .lines()
        .filter(|line| line.trim_start().starts_with('#'))
        .count();
    assert_eq!(heading_lines, blocks.len() + events, "{found:?}");
}

/// The text between the first BEGIN marker line and the first END marker
/// line after it.
fn find_region(text: &str) -> Option<String> {
    let mut lines = text.split_inclusive('\n');
    lines.find(|line| line.trim_end_matches(['\n', '\r']) == BEGIN_MARKER)?;
    let mut region = String::new();
    for line in lines {
        if line.trim_end_matches(['\n', '\r']) == END_MARKER {
            return Some(region);
        }
        region.push_str(line);
    }
    None
}

fn check_commonmark(interactions: &[Interaction], region: &str) {
    let document = splice(
        &format!("# Notes\n\nours\n{BEGIN_MARKER}\n{END_MARKER}\n\n## After\n"),
        region,
    );
    let archive: String = interactions.iter().map(archive_block).collect();
    let mut headings = vec!["# Notes".to_string()];
    let mut archive_headings = Vec::new();
    let mut items = Vec::new();
    for interaction in interactions {
        headings.push(format!("### Interaction #{}", interaction.number));
        archive_headings.push(format!("## Interaction #{}", interaction.number));
        for entry in &interaction.raw {
            headings.push(format!(
                "#### {}",
                shown(&entry.heading).trim_matches([' ', '\t'])
            ));
            let e = &entry.event;
            items.push(format!(
                "[{} {} {}]",
                shown(&e.actor),
                shown(&e.kind),
                shown(&e.timestamp)
            ));
        }
    }
    headings.push("## After".to_string());
    for options in [Options::empty(), gfm()] {
        let seen = shape(&document, options);
        assert_eq!(seen.headings, headings, "{document:?}");
        assert_eq!(
            seen.top_level_html,
            [BEGIN_MARKER, END_MARKER],
            "{document:?}"
        );
        assert_eq!(seen.other_html, 0, "{document:?}");
        assert_eq!(seen.items.len(), items.len(), "{document:?}");
        assert!(seen.foreign_blocks.is_empty(), "{seen:?} {document:?}");
        let seen = shape(&archive, options);
        assert_eq!(seen.headings, archive_headings, "{archive:?}");
        assert_eq!(seen.items, items, "{archive:?}");
        assert_eq!(seen.other_html, 0, "{archive:?}");
        assert!(seen.foreign_blocks.is_empty(), "{seen:?} {archive:?}");
    }
}

/// A one-line field as people should read it: its text, with every
/// character that would break the line or act on a terminal shown as a
/// `\u{…}` escape (a tab is neither).
fn shown(field: &str) -> String {
    let mut out = String::new();
    for c in field.chars() {
        let hidden = (c.is_control() && c != '\t')
            || is_line_break(c)
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if hidden {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn gfm() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_GFM
        | Options::ENABLE_DEFINITION_LIST
}

/// What a CommonMark reader sees of a document's structure.
#[derive(Debug, Default)]
struct Shape {
    /// `### text` for each heading, in order.
    headings: Vec<String>,
    /// HTML blocks at the top level, one per line.
    top_level_html: Vec<String>,
    /// Raw HTML anywhere else (inline, or a block inside a container).
    other_html: usize,
    /// The text of each top-level list item up to its first line break or
    /// nested block.
    items: Vec<String>,
    /// Lists inside other blocks, fenced code, tables, footnotes, definitions.
    foreign_blocks: Vec<String>,
}

fn shape(text: &str, options: Options) -> Shape {
    let mut shape = Shape::default();
    let mut depth = 0usize;
    let mut heading: Option<String> = None;
    let mut item: Option<String> = None;
    let mut html_at_top = false;
    for event in Parser::new_ext(text, options) {
        match event {
            Md::Start(tag) => {
                // A block nested in an item (a quote the content kept, under
                // an indented line) ends the item's first line: a tight list
                // has no paragraph end or line break to say so.
                if !matches!(
                    tag,
                    Tag::Paragraph
                        | Tag::Emphasis
                        | Tag::Strong
                        | Tag::Strikethrough
                        | Tag::Link { .. }
                        | Tag::Image { .. }
                ) {
                    shape.items.extend(item.take());
                }
                match &tag {
                    Tag::Heading { .. } => heading = Some(String::new()),
                    Tag::Item if depth == 1 => item = Some(String::new()),
                    Tag::HtmlBlock => html_at_top = depth == 0,
                    Tag::List(_) if depth > 0 => shape.foreign_blocks.push(format!("{tag:?}")),
                    Tag::CodeBlock(CodeBlockKind::Fenced(_))
                    | Tag::Table(_)
                    | Tag::FootnoteDefinition(_)
                    | Tag::DefinitionList => shape.foreign_blocks.push(format!("{tag:?}")),
                    _ => {}
                }
                depth += 1;
            }
            Md::End(tag) => {
                depth -= 1;
                if let (TagEnd::Heading(level), Some(text)) = (tag, heading.take()) {
                    let text = text.trim_matches([' ', '\t']);
                    shape
                        .headings
                        .push(format!("{} {text}", "#".repeat(level as usize)));
                }
                if matches!(tag, TagEnd::Paragraph | TagEnd::Item) {
                    shape.items.extend(item.take());
                }
            }
            Md::Text(t) | Md::Code(t) => {
                for open in [&mut heading, &mut item].into_iter().flatten() {
                    open.push_str(&t);
                }
            }
            Md::SoftBreak | Md::HardBreak => shape.items.extend(item.take()),
            Md::Html(html) if html_at_top && depth == 1 => {
                for line in html.lines() {
                    shape.top_level_html.push(line.trim_end().to_string());
                }
            }
            Md::Html(_) | Md::InlineHtml(_) => shape.other_html += 1,
            _ => {}
        }
    }
    shape
}
