//! What a writer of the log can do to the rendered files: communication.md
//! and archive.md are read as CommonMark, and whatever text an event holds,
//! the parse shows exactly the templates' structure.

use std::collections::BTreeMap;
use std::io::Write;

use pulldown_cmark::{CodeBlockKind, Event as Md, Options, Parser, Tag, TagEnd};
use serde_json::Value;

use huddle::snapshot::{BEGIN_MARKER, END_MARKER};

use crate::common::HuddleDir;

/// What a CommonMark reader sees of a document's structure.
#[derive(Debug, Default)]
struct Shape {
    /// `### text` for each heading, in order.
    headings: Vec<String>,
    /// Lines of HTML blocks at the top level.
    top_level_html: Vec<String>,
    /// Raw HTML anywhere else: inline, or a block inside a container.
    other_html: Vec<String>,
    /// The text of each top-level list item up to its first line break.
    items: Vec<String>,
    /// Blocks no template writes: nested lists, fenced code, tables,
    /// footnotes, definition lists.
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
                shape.top_level_html.push(html.trim_end().to_string())
            }
            Md::Html(html) | Md::InlineHtml(html) => shape.other_html.push(html.to_string()),
            _ => {}
        }
    }
    shape
}

/// CommonMark as GitHub extends it, plus pulldown-cmark's definition lists.
fn extended() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_GFM
        | Options::ENABLE_DEFINITION_LIST
}

/// A small deterministic generator, so a failure can be replayed by seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// Pieces of content: every block construct CommonMark and GFM have, each
/// line ending some reader honours, control and bidi characters.
const CONTENT: &[&str] = &[
    "# x",
    "### Interaction #999",
    "#### B → A",
    "Interaction #998\n===",
    "ok\n\nInteraction #998\n===",
    "ok\r### Interaction #999",
    "text\n---",
    "***",
    "- - -",
    "___",
    "- # x",
    "* # x",
    "+ # x",
    "1. # x",
    "1) # x",
    "> # x",
    "> ### x",
    ">> > # x",
    ">",
    "```",
    "~~~",
    "````rust",
    "    # indented",
    "\t# tab",
    " \t  # mixed",
    "<style>",
    "x\n\n<style>",
    "x <style> y",
    "<script>",
    "<!--",
    "-->",
    "<!-- END COMMUNICATION -->",
    "<!-- BEGIN COMMUNICATION -->",
    "<div>",
    "</div>",
    "<?php",
    "<!DOCTYPE html>",
    "<![CDATA[",
    "<a href=x>",
    "[x]: /url",
    "[^1]: # x",
    "[x]:\n/url",
    "[multi\nline]: /u",
    "| a | b |\n|---|---|",
    ":--|--:",
    "--|--",
    ": def",
    "\r",
    "\r\n",
    "\u{2028}# x",
    "\u{2029}",
    "\u{85}# x",
    "\u{b}",
    "\u{c}",
    "\u{1b}[2J",
    "\u{1b}]52;c;eA==\u{7}",
    "\u{9b}31m",
    "\u{202e}",
    "\u{2066}",
    "\u{feff}# x",
    "\u{a0}# x",
    "\u{3000}# x",
    "\\",
    "\\\n",
    "`",
    "``",
    "*",
    "_",
    "&amp;",
    "&#35;",
    "\\<b>",
    "\\\\<b>",
    "  ",
    "\n",
    "\n\n",
    "plain text",
    "**bold**",
    "`code <b>`",
    "[link](http://x)",
    "ü →",
    "=",
    "-",
    "1.",
    "12)",
    "9999999999.",
    "$$",
    "{#id}",
    "- [Agent B answer 2026-01-01T00:00:00Z]",
    "    ",
];

/// Actors `huddle log` accepts: no control characters, not blank, at most
/// 256 bytes; hostile all the same. The ASCII ones go through `huddle log`
/// too; the others only in foreign lines, which a reader may set aside.
const ACTORS: &[&str] = &[
    "Agent A",
    "> x",
    "# x",
    "<!--",
    "```",
    "-->",
    "- [x]",
    "1. x",
    "[x]: /u",
    "a]b",
    "*a*",
    "_a_",
    "`",
    "\\",
    "&amp;",
    "<style>",
    "<!-- END COMMUNICATION -->",
    "\u{202e}rtl",
    "x\u{2028}## Interaction #999",
    "ü →",
    "=",
    "---",
    "|a|",
    ":x",
    "~~~",
    "[^1]: x",
    " x ",
    "\u{a0}# x",
];

/// Types that match `[a-z][a-z0-9_-]*`; unknown ones are shown by name.
const TYPES: &[&str] = &[
    "question", "answer", "followup", "note", "x_", "a__b", "h1", "style", "script", "z-9",
];

fn hostile_content(rng: &mut Rng) -> String {
    let mut text = String::new();
    for _ in 0..1 + rng.below(5) {
        text.push_str(rng.pick(&["", "\n", " ", "\r\n", "\n\n"]));
        text.push_str(rng.pick(CONTENT));
    }
    text
}

/// The stock heading mapper's table.
fn heading(kind: &str) -> &str {
    match kind {
        "question" => "A → B",
        "answer" => "B → A",
        "followup" => "A Follow-Up",
        other => other,
    }
}

/// What a reader sees of a one-line field: hidden characters and line
/// breaks as `\u{…}` escapes.
fn shown(field: &str) -> String {
    let mut out = String::new();
    for c in field.chars() {
        if huddle::visible::is_hidden(c) || matches!(c, '\n' | '\r' | '\u{85}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn str_of<'a>(event: &'a Value, field: &str) -> &'a str {
    event[field].as_str().unwrap_or_default()
}

/// Checks both files against the log: the headings are exactly the
/// interactions' and events' headings, the markers are the only HTML and
/// stay top-level comments, every event is one top-level list item, and the
/// people's text around the region is unchanged.
fn check_rendered(dir: &HuddleDir, k: usize, before: &str, after: &str, context: &str) {
    let mut interactions: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for event in readable_events(dir, context) {
        let number = event["interaction"].as_u64().unwrap();
        interactions.entry(number).or_default().push(event);
    }
    let numbers: Vec<u64> = interactions.keys().copied().collect();
    let (archived, recent) = numbers.split_at(numbers.len().saturating_sub(k));

    let mut headings = vec!["# Notes".to_string()];
    let mut items = 0;
    for number in recent {
        headings.push(format!("### Interaction #{number}"));
        for event in &interactions[number] {
            headings.push(format!("#### {}", shown(heading(str_of(event, "type")))));
            items += 1;
        }
    }
    headings.push("## After".to_string());
    let mut archive_headings = Vec::new();
    let mut entries = Vec::new();
    for number in archived {
        archive_headings.push(format!("## Interaction #{number}"));
        for event in &interactions[number] {
            entries.push(format!(
                "[{} {} {}]",
                shown(str_of(event, "actor")),
                shown(str_of(event, "type")),
                shown(str_of(event, "timestamp"))
            ));
        }
    }

    let communication = std::fs::read_to_string(dir.file("communication.md")).unwrap();
    let archive = std::fs::read_to_string(dir.file("archive.md")).unwrap();
    assert!(
        communication.starts_with(&format!("{before}{BEGIN_MARKER}\n")),
        "{context}: the notes before the region changed:\n{communication}"
    );
    assert!(
        communication.ends_with(&format!("\n{END_MARKER}\n{after}")),
        "{context}: the notes after the region changed:\n{communication}"
    );
    for options in [Options::empty(), extended()] {
        let seen = shape(&communication, options);
        assert_eq!(seen.headings, headings, "{context}:\n{communication}");
        assert_eq!(
            seen.top_level_html,
            [BEGIN_MARKER, END_MARKER],
            "{context}:\n{communication}"
        );
        assert!(seen.other_html.is_empty(), "{context}: {seen:?}");
        assert_eq!(seen.items.len(), items, "{context}:\n{communication}");
        assert!(seen.foreign_blocks.is_empty(), "{context}: {seen:?}");

        let seen = shape(&archive, options);
        assert_eq!(seen.headings, archive_headings, "{context}:\n{archive}");
        assert_eq!(seen.items, entries, "{context}:\n{archive}");
        assert!(seen.other_html.is_empty(), "{context}: {seen:?}");
        assert!(seen.foreign_blocks.is_empty(), "{context}: {seen:?}");
    }
}

/// The events of the log that a reader takes: every line but those set
/// aside in events.error.log. Only foreign lines with non-ASCII in the
/// actor may be set aside (a reader may refuse line separators or bidi
/// characters in names); everything else this test writes is valid.
fn readable_events(dir: &HuddleDir, context: &str) -> Vec<Value> {
    let quarantined: Vec<u64> = std::fs::read_to_string(dir.file("events.error.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let log = dir.log_bytes();
    let mut events = Vec::new();
    let mut offset = 0u64;
    for line in log.split_inclusive(|b| *b == b'\n') {
        let event: Value = serde_json::from_slice(line).unwrap();
        if quarantined.contains(&offset) {
            assert!(
                !str_of(&event, "actor").is_ascii(),
                "{context}: a valid line was set aside: {event}"
            );
        } else {
            events.push(event);
        }
        offset += line.len() as u64;
    }
    events
}

#[test]
fn hostile_text_in_any_field_never_forges_the_rendered_structure() {
    const ROUNDS: u64 = 12;
    let dir = HuddleDir::new();
    // People's notes, with CRLF and a heading of their own on each side.
    let before = "# Notes\r\n\nOurs — ünïcödé, kept byte for byte.\n";
    let after = "\n## After\nmore notes, no final newline";
    std::fs::write(
        dir.file("communication.md"),
        format!("{before}{BEGIN_MARKER}\n{END_MARKER}\n{after}"),
    )
    .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let ascii_actors: Vec<&str> = ACTORS.iter().copied().filter(|a| a.is_ascii()).collect();
    let mut top = 1u64;
    for round in 0..ROUNDS {
        // Lines appended raw, as another tool (or a git merge) would.
        let mut foreign = String::new();
        for _ in 0..12 {
            let interaction = match rng.below(4) {
                0 => {
                    top += 1;
                    top
                }
                1 => 1 + rng.below(top as usize) as u64,
                _ => top,
            };
            let line = serde_json::json!({
                "interaction": interaction,
                "actor": rng.pick(ACTORS),
                "type": rng.pick(TYPES),
                "content": hostile_content(&mut rng),
                "timestamp": "2026-01-01T00:00:00Z",
            });
            foreign.push_str(&format!("{line}\n"));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.file("events.log"))
            .unwrap()
            .write_all(foreign.as_bytes())
            .unwrap();
        // And through `huddle log`, content as an argument and on stdin.
        let content = hostile_content(&mut rng);
        let (actor, kind) = (rng.pick(&ascii_actors), rng.pick(TYPES));
        dir.ok(&["log", &top.to_string(), actor, kind, &content]);
        let mut child = dir
            .command(&["log", "next", rng.pick(&ascii_actors), rng.pick(TYPES), "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let piped = hostile_content(&mut rng);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(piped.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "huddle log - failed on {piped:?}");
        top = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();

        let k = rng.below(5);
        // A reader reports each line it sets aside with an `error` event,
        // appended after that run read the log: the next run shows it.
        for _ in 0..3 {
            let before_run = dir.log_bytes().len();
            dir.ok(&["snapshot", "-k", &k.to_string()]);
            if dir.log_bytes().len() == before_run {
                break;
            }
        }
        check_rendered(&dir, k, before, after, &format!("round {round}, k {k}"));
    }
}
