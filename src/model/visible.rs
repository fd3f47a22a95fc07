//! Text from the log, made safe to show on a terminal.
//!
//! Whoever writes to the log chooses the content, actor, type and timestamp
//! of an event, and error messages quote them. Some characters are orders to
//! a terminal rather than text: escape sequences (`ESC ]52;…` sets the
//! clipboard, `ESC [2J` clears the screen), C1 controls (a terminal may read
//! U+009B as CSI), BEL, backspace, or a carriage return that overwrites what
//! was printed, and bidirectional overrides (U+202A–202E, U+2066–2069) that
//! reorder it. [`visible`] shows each of them as a `\u{…}` escape, so people
//! see that they were there and the terminal does nothing. Newlines and tabs
//! stay as they are; the CR of a CRLF is dropped (the line ends either way).
//!
//! Every human-readable printing path uses [`visible`]; `--json` output is
//! exact (JSON escapes control characters itself). The rendered markdown uses
//! the same character class (see `snapshot::region`).

use std::borrow::Cow;
use std::io::Write;

/// Characters a terminal (or an editor) may obey instead of showing: every
/// control character but newline and tab, the bidirectional formatting
/// characters, and the Unicode line and paragraph separators.
pub fn is_hidden(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Appends `c` as a visible escape: `\u{1b}`.
pub fn push_shown(out: &mut String, c: char) {
    out.extend(c.escape_unicode());
}

/// `text` with every [`is_hidden`] character shown as a `\u{…}` escape.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if is_hidden(c) {
            push_shown(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`visible`] text laid out as one entry of a listing: every line after the
/// first starts with `indent`, so a line of content cannot pass for an entry
/// of its own (`#5 [..] Agent B answer: ...` inside an event's text).
pub fn visible_entry(text: &str, indent: &str) -> String {
    visible(text).replace('\n', &format!("\n{indent}"))
}

/// A writer for huddle's own log on standard error: what goes through it is
/// made [`visible`], except the colour sequences (`ESC [ … m`) the log
/// formatter adds itself. The formatter already escapes ESC in messages and
/// fields, so an escape sequence arriving here raw is its own colouring; a CR,
/// a bidi override or another control it lets through is shown here.
pub struct VisibleWriter<W: Write>(pub W);

impl<W: Write> Write for VisibleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(keep_colours_show_the_rest(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn keep_colours_show_the_rest(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\u{1b}' {
            if let Some(len) = colour_sequence_len(rest) {
                out.push_str(&rest[..len]);
                rest = &rest[len..];
                continue;
            }
        }
        if c == '\r' && rest[1..].starts_with('\n') {
            rest = &rest[1..];
            continue;
        }
        if is_hidden(c) {
            push_shown(&mut out, c);
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// Length of an SGR sequence (`ESC [ 1;31 m`) at the start of `text`.
fn colour_sequence_len(text: &str) -> Option<usize> {
    let params = text.strip_prefix("\u{1b}[")?;
    let digits = params
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    params[digits..].starts_with('m').then_some(2 + digits + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_terminal_controls_and_keeps_text() {
        assert!(matches!(
            visible("plain\ttext\nünïcödé →"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            visible("a\u{1b}]52;c;eA==\u{7}b\u{1b}[2J\u{8}\u{7f}"),
            "a\\u{1b}]52;c;eA==\\u{7}b\\u{1b}[2J\\u{8}\\u{7f}"
        );
        assert_eq!(visible("x\u{9b}31m\u{85}"), "x\\u{9b}31m\\u{85}");
        assert_eq!(visible("ok\rforged"), "ok\\u{d}forged");
        assert_eq!(visible("line\r\nnext"), "line\nnext");
        assert_eq!(
            visible("\u{202e}evil\u{2066}\u{2069}\u{200f}\u{2028}"),
            "\\u{202e}evil\\u{2066}\\u{2069}\\u{200f}\\u{2028}"
        );
        // Joiners inside emoji are text, not controls.
        assert_eq!(visible("👩\u{200d}💻"), "👩\u{200d}💻");
    }

    #[test]
    fn an_entry_keeps_its_lines_indented() {
        assert_eq!(
            visible_entry("ok\r\n#5 [t] Agent B answer: forged\u{1b}[2J", "    "),
            "ok\n    #5 [t] Agent B answer: forged\\u{1b}[2J"
        );
    }

    #[test]
    fn the_log_writer_keeps_its_colours_only() {
        let mut out = VisibleWriter(Vec::new());
        out.write_all(b"\x1b[31mERROR\x1b[0m alert: a\rb\xe2\x80\xae \x1b]0;t\x07\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "\u{1b}[31mERROR\u{1b}[0m alert: a\\u{d}b\\u{202e} \\u{1b}]0;t\\u{7}\n"
        );
    }
}
