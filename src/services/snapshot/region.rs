//! The marker region of communication.md, and the rules that keep what a
//! writer of the log chose from forging structure in the rendered files.
//!
//! People and agents read communication.md and archive.md rendered as
//! CommonMark (GitHub, editors), so the guarantee is about that parse: the
//! headings are exactly the templates' (interactions, event headings), the
//! markers stay top-level HTML comments, and no text of an event adds a block
//! of its own or raw HTML. The host neutralises every field before a renderer
//! sees it:
//!
//! - **Content** (many lines, inline markdown kept). Line breaks are
//!   normalised to LF (a lone CR, CRLF, U+2028, U+2029 and NEL end a line for
//!   some reader). Control and bidi characters are shown as `\u{…}` (see
//!   [`crate::model::visible`]). A line whose first character (after blanks) could
//!   open a block gets a backslash before that character, which markdown
//!   shows as the character itself: ATX headings (`#`), setext underlines
//!   (`===`, `---`), thematic breaks, list items (`- `, `* `, `+ `, `1. `,
//!   `1) `), fenced code (three backticks or tildes), HTML blocks (`<` and a
//!   letter, `/`, `!` or `?`), link reference and footnote definitions (`[x]:`,
//!   `[^x]`), table delimiter rows and definition lists (`|`, `:`). A `>`
//!   (block quote) is kept and the rest of the line is neutralised as a line
//!   of its own, so quotes still work but hold nothing else. Anywhere in a
//!   line, `<` before a letter, `/`, `!` or `?` is escaped (no raw HTML, which
//!   a browser-based preview would obey: an unclosed `<style>` hides the rest).
//!   Every other character is kept: emphasis, code spans and links render.
//!   Since no line opens a block, nothing is left open at the end of an event
//!   to swallow the next one.
//! - **One-line fields** (actor, type, timestamp, id, heading): line breaks
//!   and controls are shown as `\u{…}` (a field never breaks a line), the
//!   first character is escaped by the rule above (a `>` too), and every
//!   character with inline meaning is escaped (`\ ` `` ` `` `* [ ] < # ~ |`, `_`
//!   at a word boundary, `&` before an entity name), so a heading shows
//!   exactly its text.

use std::borrow::Cow;

use super::{BEGIN_MARKER, END_MARKER};
use crate::model::event::Event;
use crate::model::visible::{is_hidden, push_shown};

/// Neutralises every field of `event` a renderer sees.
pub(crate) fn neutralise_event(event: &mut Event) {
    fn replace(field: &mut String, neutralise: fn(&str) -> Cow<'_, str>) {
        if let Cow::Owned(safe) = neutralise(field) {
            *field = safe;
        }
    }
    replace(&mut event.content, neutralise);
    replace(&mut event.actor, neutralise_field);
    replace(&mut event.kind, neutralise_field);
    replace(&mut event.timestamp, neutralise_field);
    if let Some(id) = &mut event.id {
        replace(id, neutralise_field);
    }
}

/// Content: many lines; see the module comment.
pub(crate) fn neutralise(content: &str) -> Cow<'_, str> {
    if content_needs_work(content) {
        Cow::Owned(neutralised_content(content))
    } else {
        Cow::Borrowed(content)
    }
}

fn neutralised_content(content: &str) -> String {
    let mut out = String::with_capacity(content.len() + 16);
    for (i, line) in lines(content).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        neutralise_line(line, &mut out);
    }
    out
}

/// A one-line field: see the module comment.
pub(crate) fn neutralise_field(field: &str) -> Cow<'_, str> {
    if field_needs_work(field) {
        Cow::Owned(neutralised_field(field))
    } else {
        Cow::Borrowed(field)
    }
}

fn neutralised_field(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 8);
    let text = push_blanks(field, &mut out);
    let start = push_block_start(text, false, &mut out);
    let mut previous = text[..start].chars().next_back();
    let rest = &text[start..];
    let mut chars = rest.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let next = chars.peek().map(|(_, c)| *c);
        match c {
            c if is_hidden(c) || is_line_break(c) => push_shown(&mut out, c),
            '\\' | '`' | '*' | '[' | ']' | '<' | '#' | '~' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '_' if !(previous.is_some_and(char::is_alphanumeric)
                && next.is_some_and(char::is_alphanumeric)) =>
            {
                out.push_str("\\_");
            }
            '&' if starts_entity(&rest[at + 1..]) => out.push_str("\\&"),
            c => out.push(c),
        }
        previous = Some(c);
    }
    out
}

/// Splits on every line ending some reader honours: LF, CRLF, a lone CR,
/// NEL, U+2028 and U+2029.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    // Most text is ASCII without a CR, where LF is the only line ending:
    // one vector scan says so, and memchr then finds each line's end
    // (content of many short lines would otherwise pay the full search
    // once per line).
    let only_lf = first_flagged(text.as_bytes(), |b| (b == b'\r') | (b >= 0x80)).is_none();
    let find: fn(&str) -> Option<(usize, usize)> = if only_lf {
        |text| memchr::memchr(b'\n', text.as_bytes()).map(|at| (at, 1))
    } else {
        find_line_break
    };
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match find(text) {
            Some((at, len)) => {
                let mut next = at + len;
                if text.as_bytes()[at] == b'\r' && text[next..].starts_with('\n') {
                    next += 1;
                }
                rest = Some(&text[next..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Where the first line break of `text` starts and its length in bytes.
/// Byte by byte rather than char by char: every rendered byte of a snapshot
/// passes through here. Only `\n`, `\r` and the lead bytes of NEL (C2 85),
/// U+2028 and U+2029 (E2 80 A8/A9) can start one, and a lead byte is never
/// inside another character in UTF-8.
fn find_line_break(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = first_flagged(&bytes[from..], |b| {
        (b == b'\n') | (b == b'\r') | (b == 0xC2) | (b == 0xE2)
    }) {
        let at = from + found;
        let c = text[at..].chars().next()?;
        if is_line_break(c) {
            return Some((at, c.len_utf8()));
        }
        from = at + c.len_utf8();
    }
    None
}

/// The text of `block` before its first line break and after its last
/// one, or `None` when it has none: the pieces of its first and last lines
/// a block rendered in parts shares with the parts before and after it.
pub(crate) fn outer_lines(block: &str) -> Option<(&str, &str)> {
    let (first_break, _) = find_line_break(block)?;
    let (last_break, c) = block
        .char_indices()
        .rev()
        .find(|(_, c)| is_line_break(*c))?;
    Some((&block[..first_break], &block[last_break + c.len_utf8()..]))
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Leading characters that do not count as the start of a line's text:
/// CommonMark's blanks (space, tab), and, for readers that are less strict,
/// other Unicode spaces and invisible marks.
fn is_blank(c: char) -> bool {
    c == ' '
        || c == '\t'
        || (c.is_whitespace() && !c.is_control() && !is_line_break(c))
        || matches!(c, '\u{feff}' | '\u{200b}' | '\u{2060}')
}

fn push_blanks<'a>(line: &'a str, out: &mut String) -> &'a str {
    let text = line.trim_start_matches(is_blank);
    out.push_str(&line[..line.len() - text.len()]);
    text
}

/// Bytes that may need a closer look: controls other than newline and tab,
/// DEL, non-ASCII, and `<`.
fn content_may_need_look(b: u8) -> bool {
    ((b < 0x20) & (b != b'\n') & (b != b'\t')) | (b >= 0x7f) | (b == b'<')
}

/// The same for a one-line field, with every character of inline meaning
/// and the newline.
fn field_may_need_look(b: u8) -> bool {
    ((b < 0x20) & (b != b'\t'))
        | (b >= 0x7f)
        | matches!(
            b,
            b'\\' | b'`' | b'*' | b'[' | b']' | b'<' | b'#' | b'~' | b'|' | b'_' | b'&'
        )
}

/// Where the first byte of `bytes` for which `flagged` holds is. Every
/// rendered byte of a snapshot is scanned a few times, and nearly all of it
/// is plain text: so a chunk is tested whole, without a branch per byte,
/// which the compiler turns into vector instructions (`flagged` must be
/// branch-free for that: comparisons joined with `|` and `&`).
fn first_flagged(bytes: &[u8], flagged: impl Fn(u8) -> bool) -> Option<usize> {
    const CHUNK: usize = 32;
    let mut start = 0;
    for chunk in bytes.chunks_exact(CHUNK) {
        if chunk.iter().fold(false, |any, &b| any | flagged(b)) {
            break;
        }
        start += CHUNK;
    }
    bytes[start..]
        .iter()
        .position(|&b| flagged(b))
        .map(|at| start + at)
}

/// Whether [`neutralise`] would change `content`: one pass over the bytes,
/// without allocating (most content needs nothing).
fn content_needs_work(content: &str) -> bool {
    let bytes = content.as_bytes();
    if first_flagged(bytes, content_may_need_look).is_some() && content_has_special_chars(content) {
        return true;
    }
    content.split('\n').any(|line| {
        // A letter never opens a block: the common case, decided at once.
        if line.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) {
            return false;
        }
        let mut text = line.trim_start_matches(is_blank);
        while let Some(inner) = text.strip_prefix('>') {
            text = inner.trim_start_matches(is_blank);
        }
        block_start(text, true).is_some()
    })
}

/// Controls, other line breaks, bidi characters, raw HTML.
fn content_has_special_chars(content: &str) -> bool {
    let bytes = content.as_bytes();
    let mut non_ascii = false;
    for (at, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' | b'\t' => {}
            0x00..=0x1f | 0x7f => return true,
            b'<' if bytes
                .get(at + 1)
                .is_some_and(|n| opens_html(char::from(*n))) =>
            {
                return true
            }
            0x80.. => non_ascii = true,
            _ => {}
        }
    }
    non_ascii && content.chars().any(|c| is_hidden(c) || is_line_break(c))
}

/// Whether [`neutralise_field`] would change `field`.
fn field_needs_work(field: &str) -> bool {
    let bytes = field.as_bytes();
    let first_opens = |field: &str| {
        !field
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphabetic)
            && block_start(field.trim_start_matches(is_blank), false).is_some()
    };
    if first_flagged(bytes, field_may_need_look).is_none() {
        return first_opens(field);
    }
    let mut non_ascii = false;
    for (at, &b) in bytes.iter().enumerate() {
        match b {
            0x00..=0x1f | 0x7f => return true,
            b'\\' | b'`' | b'*' | b'[' | b']' | b'<' | b'#' | b'~' | b'|' => return true,
            // Between two ASCII letters or digits it is text; anything else
            // (non-ASCII neighbours included) is left to the exact rule.
            b'_' if !(at > 0
                && bytes[at - 1].is_ascii_alphanumeric()
                && bytes.get(at + 1).is_some_and(u8::is_ascii_alphanumeric)) =>
            {
                return true
            }
            b'&' if starts_entity(&field[at + 1..]) => return true,
            0x80.. => non_ascii = true,
            _ => {}
        }
    }
    (non_ascii && field.chars().any(|c| is_hidden(c) || is_line_break(c))) || first_opens(field)
}

/// One line of content.
fn neutralise_line(line: &str, out: &mut String) {
    let mut text = push_blanks(line, out);
    // A block quote is kept; what it holds is a line of its own.
    while let Some(inner) = text.strip_prefix('>') {
        out.push('>');
        text = push_blanks(inner, out);
    }
    text = &text[push_block_start(text, true, out)..];
    line_rest(text, out);
}

/// The rest of a line of content, after its start: raw HTML escaped,
/// hidden characters shown, a writer's own escapes kept. Runs of bytes that
/// need nothing are copied whole; the rest goes character by character.
fn line_rest(mut text: &str, out: &mut String) {
    while let Some(plain) = first_flagged(text.as_bytes(), |b| {
        (b == b'\\') | (b == b'<') | !(0x20..0x7f).contains(&b)
    }) {
        out.push_str(&text[..plain]);
        text = &text[plain..];
        let mut chars = text.chars();
        let Some(c) = chars.next() else { return };
        let next = chars.clone().next();
        let mut taken = c.len_utf8();
        match c {
            // Already escaped by the writer: keep the pair as it is, so the
            // backslash is not read as one more escape before it.
            '\\' => {
                out.push('\\');
                if let Some(next) = next.filter(char::is_ascii_punctuation) {
                    out.push(next);
                    taken += next.len_utf8();
                }
            }
            '<' if next.is_some_and(opens_html) => out.push_str("\\<"),
            c if is_hidden(c) => push_shown(out, c),
            c => out.push(c),
        }
        text = &text[taken..];
    }
    out.push_str(text);
}

/// How a line's text (blanks already taken off) could open a block.
enum BlockStart {
    /// By its first character: escape that.
    First(char),
    /// As an ordered list item: escape the `.` or `)` after this many digits.
    AfterDigits(usize),
}

fn block_start(text: &str, content: bool) -> Option<BlockStart> {
    let first = text.chars().next()?;
    let after = &text[first.len_utf8()..];
    // A list marker is followed by a blank or the line's end.
    let gap = |rest: &str| rest.is_empty() || rest.starts_with([' ', '\t']);
    let only = |c: char| text.chars().all(|x| x == c || x == ' ' || x == '\t');
    let delimiter_row = || {
        text.chars()
            .all(|c| matches!(c, '|' | '-' | ':' | ' ' | '\t'))
    };
    let opens = match first {
        '#' => true,
        '`' | '~' => text.chars().take_while(|c| *c == first).count() >= 3,
        '-' | '+' | '*' => gap(after) || only(first) || (first == '-' && delimiter_row()),
        '_' | '=' => only(first),
        '<' => after.chars().next().is_some_and(opens_html),
        '[' => may_define_link(text),
        // Table delimiter rows; a definition (pulldown-cmark's extension)
        // needs no blank after its `:`.
        '|' => delimiter_row(),
        ':' => true,
        '>' => !content,
        '0'..='9' => {
            let digits = text.bytes().take_while(u8::is_ascii_digit).count();
            let rest = &text[digits..];
            return (rest.starts_with(['.', ')']) && gap(&rest[1..]))
                .then_some(BlockStart::AfterDigits(digits));
        }
        _ => false,
    };
    opens.then_some(BlockStart::First(first))
}

/// Pushes the start of a line's text with the escape in place (`\#`,
/// `1\.`) if it could open a block, and returns how many bytes of `text`
/// that consumed (0 if none).
fn push_block_start(text: &str, content: bool, out: &mut String) -> usize {
    match block_start(text, content) {
        None => 0,
        Some(BlockStart::First(first)) => {
            out.push('\\');
            out.push(first);
            first.len_utf8()
        }
        Some(BlockStart::AfterDigits(digits)) => {
            out.push_str(&text[..digits]);
            out.push('\\');
            out.push_str(&text[digits..digits + 1]);
            digits + 1
        }
    }
}

/// `<` followed by this starts raw HTML (blocks of types 1-7, inline tags,
/// comments, processing instructions, declarations) or an autolink.
fn opens_html(next: char) -> bool {
    next.is_ascii_alphabetic() || matches!(next, '/' | '!' | '?')
}

/// Whether a line starting with `[` could be a link reference definition
/// (`[label]: url`, which hides the line and captures links elsewhere) or a
/// footnote definition (`[^1]: text`, which moves the text and may hold
/// blocks). A label ends at the first unescaped `]`; if the line has none,
/// the label may go on to the next line, so that counts as possible too.
/// `[text](url)`, the common case, stays a link.
fn may_define_link(text: &str) -> bool {
    if text.starts_with("[^") {
        return true;
    }
    let mut escaped = false;
    for (at, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ']' => return text[at + 1..].starts_with(':'),
            // Not a valid label, but readers differ: take the safe side.
            '[' => return true,
            _ => {}
        }
    }
    true
}

/// Whether `&` followed by `rest` is an entity or numeric character
/// reference (`&amp;`, `&#35;`, `&#x23;`), which markdown would decode.
fn starts_entity(rest: &str) -> bool {
    let name = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'#')
        .count();
    name > 0 && rest[name..].starts_with(';')
}

/// True if a rendered block contains a line that would end or restart the
/// region, for the region parser or for a CommonMark reader (which also ends
/// a line at a lone CR).
pub(crate) fn has_marker_line(block: &str) -> bool {
    // Both markers start with "<!--": without it no line can be one, and
    // the check of every rendered byte is one substring search.
    const COMMON: &str = "<!--";
    debug_assert!(BEGIN_MARKER.starts_with(COMMON) && END_MARKER.starts_with(COMMON));
    if memchr::memmem::find(block.as_bytes(), COMMON.as_bytes()).is_none() {
        return false;
    }
    lines(block).any(|line| line.trim() == BEGIN_MARKER || line.trim() == END_MARKER)
}

/// communication.md with its region replaced by `region`; text outside the
/// markers is kept byte for byte. Without both markers (in order), the region
/// is appended at the end and the rest kept.
pub(crate) fn splice(existing: &str, region: &str) -> String {
    splice_blocks(existing, &[region])
}

/// [`splice`] with a region made of `blocks`, joined as they go in: the
/// region is not built apart first (the blocks of a few huge interactions
/// weigh hundreds of megabytes).
pub(crate) fn splice_blocks(existing: &str, blocks: &[&str]) -> String {
    let region_len: usize = blocks.iter().map(|b| b.len()).sum();
    let mut out = String::with_capacity(existing.len() + region_len + 64);
    let (before, after) = match find_region(existing) {
        Some((before, after)) => (&existing[..before], Some(&existing[after..])),
        None => (existing, None),
    };
    write_spliced(before, after, blocks, |piece| {
        out.push_str(piece);
        Ok::<_, std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    out
}

/// The people's text of a communication.md, around huddle's region.
#[derive(Debug, Default)]
pub(crate) struct Outside {
    /// Everything before the BEGIN marker line (the whole file when it has
    /// no region).
    pub(crate) before: String,
    /// Everything after the END marker line; `None` when the file has no
    /// region, which then goes at the end.
    pub(crate) after: Option<String>,
}

impl Outside {
    /// Whether the file had its region.
    pub(crate) fn had_region(&self) -> bool {
        self.after.is_some()
    }
}

/// The text around the region of the communication.md at `path`, read a
/// line at a time: the region itself (huge when a few interactions are) is
/// skipped, never held. A missing file has no text and no region; a file
/// that is not UTF-8 outside its region is an error, as when read whole.
pub(crate) fn read_outside(path: &std::path::Path) -> std::io::Result<Outside> {
    use std::io::BufRead;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Outside::default()),
        Err(error) => return Err(error),
    };
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut line = Vec::new();
    // Before the BEGIN line, inside the region, after the END line.
    let mut part = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let bare = trim_line_ends(&line);
        match part {
            0 if bare == BEGIN_MARKER.as_bytes() => part = 1,
            0 => before.extend_from_slice(&line),
            1 if bare == END_MARKER.as_bytes() => part = 2,
            1 => {}
            _ => after.extend_from_slice(&line),
        }
    }
    match part {
        2 => Ok(Outside {
            before: text(before)?,
            after: Some(text(after)?),
        }),
        // A BEGIN line with no END after it is no region: the whole file
        // is people's text (read whole: such a file is not huddle's output).
        _ => Ok(Outside {
            before: text(std::fs::read(path)?)?,
            after: None,
        }),
    }
}

/// A line without the `\n` and `\r` characters at its end, as
/// [`find_region`] compares marker lines.
fn trim_line_ends(mut line: &[u8]) -> &[u8] {
    while let Some(rest) = line
        .strip_suffix(b"\n")
        .or_else(|| line.strip_suffix(b"\r"))
    {
        line = rest;
    }
    line
}

/// Hands the pieces of communication.md to `write` in order: the people's
/// text `before` and `after` the region (`after` is `None` when the file
/// had no region, which then goes at the end) around a region made of
/// `blocks`.
pub(crate) fn write_spliced<E>(
    before: &str,
    after: Option<&str>,
    blocks: &[&str],
    mut write: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    write(before)?;
    if after.is_none() && !before.is_empty() && !before.ends_with('\n') {
        write("\n")?;
    }
    write(BEGIN_MARKER)?;
    write("\n")?;
    let mut ends_with_newline = true;
    for block in blocks.iter().filter(|block| !block.is_empty()) {
        write(block)?;
        ends_with_newline = block.ends_with('\n');
    }
    // A template without a final newline must not glue the END marker to
    // its last line: the marker would no longer be found, nor be a comment
    // of its own for a markdown reader.
    if !ends_with_newline {
        write("\n")?;
    }
    write(END_MARKER)?;
    write("\n")?;
    if let Some(after) = after {
        write(after)?;
    }
    Ok(())
}

/// What lies between the marker lines of communication.md, if it has them.
pub fn inside_region(text: &str) -> Option<&str> {
    let (start, end) = find_region(text)?;
    let region = &text[start..end];
    let body_start = region.find('\n')? + 1;
    let body_end = region.rfind(END_MARKER)?;
    region.get(body_start..body_end.max(body_start))
}

/// Byte range from the start of the BEGIN marker line to just after the END
/// marker line (including its newline, if any).
fn find_region(text: &str) -> Option<(usize, usize)> {
    let mut offset = 0;
    let mut begin = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if begin.is_none() && bare == BEGIN_MARKER {
            begin = Some(offset);
        } else if let (Some(start), true) = (begin, bare == END_MARKER) {
            return Some((start, offset + line.len()));
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_spliced_a_line_at_a_time_is_the_text_spliced_whole() {
        let b = BEGIN_MARKER;
        let e = END_MARKER;
        let existings = [
            String::new(),
            "people's notes, no newline".to_string(),
            "notes\n".to_string(),
            format!("# Team\r\n{b}\r\nold\r\n{e}\r\nafter\r\n"),
            format!("{b}\nold region\n{e}"),
            format!("top\n{b}\r\r\n{e}\n{b}\nsecond\n{e}\ntail"),
            format!("before\n{b}\nno end marker\n"),
            format!("{e}\n{b}\nx\n{e}\n"),
            format!("  {b}\nnot a marker line\n{e}\n"),
        ];
        let block_sets: [&[&str]; 4] = [&[], &["### 1\n- a\n"], &["one", "", "two"], &["x\n", "y"]];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("communication.md");
        for existing in &existings {
            std::fs::write(&path, existing).unwrap();
            let outside = read_outside(&path).unwrap();
            assert_eq!(
                outside.had_region(),
                find_region(existing).is_some(),
                "{existing:?}"
            );
            for blocks in block_sets {
                let mut streamed = String::new();
                write_spliced(&outside.before, outside.after.as_deref(), blocks, |piece| {
                    streamed.push_str(piece);
                    Ok::<_, ()>(())
                })
                .unwrap();
                assert_eq!(
                    streamed,
                    splice_blocks(existing, blocks),
                    "{existing:?} {blocks:?}"
                );
            }
        }
        let missing = read_outside(&dir.path().join("none.md")).unwrap();
        assert!(missing.before.is_empty() && !missing.had_region());
        std::fs::write(&path, b"\xff\n").unwrap();
        assert!(
            read_outside(&path).is_err(),
            "text outside the region must be UTF-8"
        );
    }
    use pulldown_cmark::{CodeBlockKind, Event as Md, Options, Parser, Tag, TagEnd};

    /// The rest of a line as neutralise_line wrote it character by
    /// character, before runs were copied whole: the reference.
    fn line_rest_char_by_char(text: &str, out: &mut String) {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                // Already escaped by the writer: keep the pair as it is, so the
                // backslash is not read as one more escape before it.
                '\\' => {
                    out.push('\\');
                    if let Some(&next) = chars.peek().filter(|n| n.is_ascii_punctuation()) {
                        out.push(next);
                        chars.next();
                    }
                }
                '<' if chars.peek().is_some_and(|n| opens_html(*n)) => out.push_str("\\<"),
                c if is_hidden(c) => push_shown(out, c),
                c => out.push(c),
            }
        }
    }

    /// Splits on line breaks the slow, obvious way: the reference.
    fn lines_char_by_char(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if is_line_break(c) {
                out.push(&text[start..at]);
                start = at + c.len_utf8();
                if c == '\r' && chars.peek().is_some_and(|(_, n)| *n == '\n') {
                    chars.next();
                    start += 1;
                }
            }
        }
        out.push(&text[start..]);
        out
    }

    #[test]
    fn the_fast_paths_give_the_character_by_character_bytes() {
        let pieces = [
            "plain",
            "\\",
            "\\#",
            "\\\\",
            "\\é",
            "<",
            "<a",
            "</",
            "<!--",
            "<3",
            "\n",
            "\r",
            "\r\n",
            "\u{85}",
            "\u{2028}",
            "\u{2029}",
            "\t",
            "\u{1b}",
            "\u{7f}",
            "\u{202e}",
            "é",
            "€",
            "→",
            " ",
            "- ",
            "# ",
            "\u{c2}\u{a0}",
            "✓\u{2028}x",
        ];
        let mut texts = Vec::new();
        for a in pieces {
            texts.push(a.to_string());
            for b in pieces {
                texts.push(format!("{a}{b}"));
                for c in pieces {
                    texts.push(format!("{a}x{b}{c}"));
                }
            }
        }
        for text in &texts {
            assert_eq!(
                lines(text).collect::<Vec<_>>(),
                lines_char_by_char(text),
                "{text:?}"
            );
            let mut reference = String::new();
            line_rest_char_by_char(text, &mut reference);
            let mut fast = String::new();
            line_rest(text, &mut fast);
            assert_eq!(fast, reference, "{text:?}");
            let reference_marker = lines_char_by_char(text)
                .iter()
                .any(|line| line.trim() == BEGIN_MARKER || line.trim() == END_MARKER);
            assert_eq!(has_marker_line(text), reference_marker, "{text:?}");
        }
        let marker = format!("x\n {BEGIN_MARKER} \r\ny");
        assert!(has_marker_line(&marker));
    }

    #[test]
    fn plain_text_and_inline_markdown_stay_as_they_are() {
        for text in [
            "plain\ntext",
            "**bold** at the start, *emphasis*, `code`, [a link](http://x) and ![img](y)",
            "[link](url) first, [ref][x] too",
            "1.5 litres, 2) later, -x, +1, *ok*, _ok_, `#` and \\# x",
            "a < b, x <= y, <3, 5 > 4 & 'quotes'",
            "  indented\tand\ttabs",
            "ünïcödé → ✓ 👩\u{200d}💻",
            "\\# already escaped \\<b>",
            "--> -- ---x",
            "> a quote\n> > nested",
        ] {
            assert_eq!(neutralise(text), text);
        }
    }

    #[test]
    fn every_block_start_is_escaped() {
        let cases = [
            ("### Interaction #999", "\\### Interaction #999"),
            ("  #### B → A", "  \\#### B → A"),
            ("\t# tab", "\t\\# tab"),
            ("\u{a0}\u{feff}# spaces", "\u{a0}\u{feff}\\# spaces"),
            ("Interaction #998\n===", "Interaction #998\n\\==="),
            ("x\n---", "x\n\\---"),
            ("- - -", "\\- - -"),
            ("***", "\\***"),
            ("___", "\\___"),
            ("- # x", "\\- # x"),
            ("* item", "\\* item"),
            ("+ item", "\\+ item"),
            ("-", "\\-"),
            ("1. # x", "1\\. # x"),
            ("12) x", "12\\) x"),
            ("3.", "3\\."),
            ("> # x", "> \\# x"),
            (">> > ### x", ">> > \\### x"),
            ("> - [x]", "> \\- [x]"),
            ("```rust", "\\```rust"),
            ("~~~", "\\~~~"),
            ("<style>", "\\<style>"),
            ("x\n\n<script>", "x\n\n\\<script>"),
            ("<!-- END COMMUNICATION -->", "\\<!-- END COMMUNICATION -->"),
            ("</div>", "\\</div>"),
            ("<?php", "\\<?php"),
            ("[x]: /url", "\\[x]: /url"),
            ("[multi\nline]: /url", "\\[multi\nline]: /url"),
            ("[^1]: # x", "\\[^1]: # x"),
            ("|---|---|", "\\|---|---|"),
            ("--|--", "\\--|--"),
            (":-:|", "\\:-:|"),
            (": definition", "\\: definition"),
            (":x", "\\:x"),
            (
                "- [Agent B answer 2026-01-01T00:00:00Z]",
                "\\- [Agent B answer 2026-01-01T00:00:00Z]",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(neutralise(text), expected, "{text:?}");
        }
    }

    #[test]
    fn raw_html_is_escaped_anywhere_in_a_line() {
        assert_eq!(
            neutralise("x <style> y </div> <!-- c --> <?p <!D"),
            "x \\<style> y \\</div> \\<!-- c --> \\<?p \\<!D"
        );
        // A writer's own escape stays one: `\<b>` is literal, `\\<b>` is not.
        assert_eq!(neutralise("\\<b> \\\\<b>"), "\\<b> \\\\\\<b>");
    }

    #[test]
    fn line_breaks_are_normalised_and_controls_shown() {
        assert_eq!(
            neutralise("ok\r### Interaction #999"),
            "ok\n\\### Interaction #999"
        );
        assert_eq!(
            neutralise("a\r\nb\u{2028}# c\u{2029}d\u{85}e"),
            "a\nb\n\\# c\nd\ne"
        );
        assert_eq!(
            neutralise("\u{1b}[2J\u{7}\u{0}\u{b}# x \u{202e}"),
            "\\u{1b}[2J\\u{7}\\u{0}\\u{b}# x \\u{202e}"
        );
    }

    #[test]
    fn fields_stay_one_line_and_show_their_text() {
        let cases = [
            ("Agent A", "Agent A"),
            ("2026-11-25T14:00:31.123Z", "2026-11-25T14:00:31.123Z"),
            ("A Follow-Up", "A Follow-Up"),
            ("leader_election", "leader_election"),
            ("x\n## Interaction #999", "x\\u{a}\\#\\# Interaction \\#999"),
            ("a\rb\u{2028}c", "a\\u{d}b\\u{2028}c"),
            ("> x", "\\> x"),
            ("# x", "\\# x"),
            ("- x", "\\- x"),
            ("1. x", "1\\. x"),
            ("<!--", "\\<!--"),
            ("-->", "-->"),
            ("```", "\\`\\`\\`"),
            ("a]: /u \"t", "a\\]: /u \"t"),
            (
                "*b* _i_ ~s~ `c` \\ | &amp; & x",
                "\\*b\\* \\_i\\_ \\~s\\~ \\`c\\` \\\\ \\| \\&amp; & x",
            ),
            ("foo ##", "foo \\#\\#"),
        ];
        for (field, expected) in cases {
            assert_eq!(neutralise_field(field), expected, "{field:?}");
        }
    }

    #[test]
    fn marker_lines_are_found_at_any_line_break() {
        assert!(has_marker_line(&format!("x\n  {END_MARKER}  \ny")));
        assert!(has_marker_line(&format!("x\r{END_MARKER}")));
        assert!(has_marker_line(&format!("x\u{2028}{BEGIN_MARKER}")));
        assert!(!has_marker_line(&format!("x {END_MARKER}")));
        assert!(!has_marker_line(&neutralise(&format!(
            "a\r{END_MARKER}\n{BEGIN_MARKER}"
        ))));
    }

    /// The stock templates (plugins/markdown/templates), written out here so
    /// that thousands of cases run in milliseconds; tests/it/markdown.rs
    /// checks the same with the real plugin and the binary.
    fn render(number: u64, entries: &[(String, Event)], archive: bool) -> String {
        let mut block = String::new();
        if archive {
            block.push_str(&format!("## Interaction #{number}\n"));
            for (_, e) in entries {
                block.push_str(&format!(
                    "- [{} {} {}]\n{}\n",
                    e.actor, e.kind, e.timestamp, e.content
                ));
            }
        } else {
            block.push_str(&format!("### Interaction #{number}\n"));
            for (heading, e) in entries {
                block.push_str(&format!("#### {heading}\n - {}\n", e.content));
            }
        }
        block.push('\n');
        block
    }

    /// What a CommonMark reader sees of a document's structure.
    #[derive(Debug, Default)]
    struct Shape {
        /// `### text` for each heading, in order.
        headings: Vec<String>,
        /// Lines of HTML blocks at the top level.
        top_level_html: Vec<String>,
        /// Raw HTML anywhere else (inline, or a block inside a container).
        other_html: usize,
        /// The text of each top-level list item up to its first line break.
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
                        // Readers differ on a trailing tab; nobody sees it.
                        let text = text.trim_matches(is_markdown_blank);
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
                Md::Html(_) | Md::InlineHtml(_) => shape.other_html += 1,
                _ => {}
            }
        }
        shape
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
    }

    /// Pieces of hostile text: every block construct, line ending and
    /// control character the module comment lists.
    const HOSTILE: &[&str] = &[
        "# x",
        "### Interaction #999",
        "#### B → A",
        "Interaction #998\n===",
        "ok\n\nInteraction #998\n===",
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
        "\u{2028}",
        "\u{2029}",
        "\u{85}",
        "\u{b}",
        "\u{c}",
        "\u{1b}[2J",
        "\u{1b}]52;c;eA==\u{7}",
        "\u{9b}",
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
        "x",
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
        "\t",
    ];

    fn hostile(rng: &mut Rng) -> String {
        let mut text = String::new();
        for _ in 0..1 + rng.below(6) {
            text.push_str(["", "\n", " ", "\r\n", "\n\n"][rng.below(5)]);
            text.push_str(HOSTILE[rng.below(HOSTILE.len())]);
        }
        text
    }

    #[test]
    fn generated_hostile_text_never_forges_the_rendered_structure() {
        let notes_before = "# Notes\n\nours\n";
        let notes_after = "\n## After\n";
        for seed in 1..=3000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let interactions: Vec<(u64, Vec<(String, Event)>)> = (1..=1 + rng.below(3) as u64)
                .map(|number| {
                    let entries = (0..1 + rng.below(3))
                        .map(|_| {
                            let mut event = Event::from_line(
                                br#"{"interaction":1,"actor":"a","type":"t","content":"","timestamp":"2026-01-01T00:00:00Z"}"#,
                            )
                            .unwrap();
                            event.content = hostile(&mut rng);
                            event.actor = hostile(&mut rng);
                            event.kind = hostile(&mut rng);
                            event.timestamp = hostile(&mut rng);
                            (hostile(&mut rng), event)
                        })
                        .collect();
                    (number, entries)
                })
                .collect();
            let mut region = String::new();
            let mut archive = String::new();
            let mut headings = vec!["# Notes".to_string()];
            let mut archive_headings = Vec::new();
            let mut entries = Vec::new();
            for (number, raw) in &interactions {
                let safe: Vec<(String, Event)> = raw
                    .iter()
                    .map(|(heading, event)| {
                        let mut event = event.clone();
                        neutralise_event(&mut event);
                        (neutralise_field(heading).into_owned(), event)
                    })
                    .collect();
                region.push_str(&render(*number, &safe, false));
                archive.push_str(&render(*number, &safe, true));
                headings.push(format!("### Interaction #{number}"));
                archive_headings.push(format!("## Interaction #{number}"));
                for (heading, event) in raw {
                    headings.push(format!(
                        "#### {}",
                        one_line(heading).trim_matches(is_markdown_blank)
                    ));
                    entries.push(format!(
                        "[{} {} {}]",
                        one_line(&event.actor),
                        one_line(&event.kind),
                        one_line(&event.timestamp)
                    ));
                }
            }
            headings.push("## After".to_string());
            let document = splice(
                &format!("{notes_before}{BEGIN_MARKER}\n{END_MARKER}\n{notes_after}"),
                &region,
            );
            for options in [Options::empty(), gfm()] {
                let seen = shape(&document, options);
                assert_eq!(seen.headings, headings, "seed {seed}: {document:?}");
                assert_eq!(
                    seen.top_level_html,
                    [BEGIN_MARKER, END_MARKER],
                    "seed {seed}: {document:?}"
                );
                assert_eq!(seen.other_html, 0, "seed {seed}: {document:?}");
                assert_eq!(seen.items.len(), entries.len(), "seed {seed}: {document:?}");
                assert!(
                    seen.foreign_blocks.is_empty(),
                    "seed {seed}: {seen:?} {document:?}"
                );
                let seen = shape(&archive, options);
                assert_eq!(seen.headings, archive_headings, "seed {seed}: {archive:?}");
                assert_eq!(seen.items, entries, "seed {seed}: {archive:?}");
                assert_eq!(seen.other_html, 0, "seed {seed}: {archive:?}");
                assert!(
                    seen.foreign_blocks.is_empty(),
                    "seed {seed}: {seen:?} {archive:?}"
                );
            }
        }
    }

    #[test]
    fn the_fast_checks_never_skip_a_change() {
        let mut rng = Rng(7);
        let mut texts: Vec<String> = HOSTILE.iter().map(|t| t.to_string()).collect();
        texts.extend((0..20_000).map(|_| hostile(&mut rng)));
        // Short strings over an alphabet of every character the rules look at.
        let alphabet: Vec<char> = "ab1 _&;#.-)>:|*`~[]<=+^!/?\\\n\r\t\u{a0}é\u{2028}\u{1b}"
            .chars()
            .collect();
        texts.extend((0..50_000).map(|_| {
            (0..rng.below(8))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect::<String>()
        }));
        texts.extend(
            [
                "a_b",
                "a_",
                "_a",
                "é_é",
                "x&y",
                "x&amp;",
                "2026-01-01T00:00:00Z",
                "01a2-b",
            ]
            .map(String::from),
        );
        for text in &texts {
            if !content_needs_work(text) {
                assert_eq!(neutralised_content(text), *text, "{text:?}");
            }
            if !field_needs_work(text) {
                assert_eq!(neutralised_field(text), *text, "{text:?}");
            }
        }
    }

    fn gfm() -> Options {
        Options::ENABLE_TABLES
            | Options::ENABLE_FOOTNOTES
            | Options::ENABLE_STRIKETHROUGH
            | Options::ENABLE_TASKLISTS
            | Options::ENABLE_GFM
            | Options::ENABLE_DEFINITION_LIST
    }

    /// What a reader sees of a one-line field: its text with every hidden
    /// character and line break as a `\u{…}` escape.
    fn one_line(field: &str) -> String {
        let mut out = String::new();
        for c in field.chars() {
            if is_hidden(c) || is_line_break(c) {
                push_shown(&mut out, c);
            } else {
                out.push(c);
            }
        }
        out
    }

    fn is_markdown_blank(c: char) -> bool {
        c == ' ' || c == '\t'
    }

    #[test]
    fn splices_between_markers_and_keeps_the_rest() {
        let text = format!("notes\n{BEGIN_MARKER}\nold\n{END_MARKER}\nmore notes\n");
        assert_eq!(
            splice(&text, "new\n"),
            format!("notes\n{BEGIN_MARKER}\nnew\n{END_MARKER}\nmore notes\n")
        );
        assert_eq!(
            splice("no markers", "r\n"),
            format!("no markers\n{BEGIN_MARKER}\nr\n{END_MARKER}\n")
        );
        // A region without a final newline still ends with the marker on a line of its own.
        let once = splice("notes\n", "no newline");
        assert_eq!(
            once,
            format!("notes\n{BEGIN_MARKER}\nno newline\n{END_MARKER}\n")
        );
        assert_eq!(
            splice(&once, "again\r"),
            format!("notes\n{BEGIN_MARKER}\nagain\r\n{END_MARKER}\n")
        );
        // An END before any BEGIN is not a region.
        let reversed = format!("{END_MARKER}\n{BEGIN_MARKER}\n");
        assert!(splice(&reversed, "").starts_with(&reversed));
    }
}
