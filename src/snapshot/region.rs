//! The marker region of communication.md, and the rule that keeps event
//! content from forging structure.
//!
//! Neutralisation (host side, before the renderer sees the content): every
//! content line whose first non-blank characters could be read as structure —
//! `#` (a heading, e.g. `### Interaction #999`), `<!--` or `-->` (a marker or
//! any HTML comment), `- [` (an archive entry line) — gets a backslash before
//! that character. In markdown `\#` and `\<` show the character itself, so
//! people read the same text, but no line of content can end the region or
//! start an interaction.

use std::borrow::Cow;

use super::{BEGIN_MARKER, END_MARKER};

const DANGEROUS_STARTS: [&str; 4] = ["#", "<!--", "-->", "- ["];

pub(crate) fn neutralise(content: &str) -> Cow<'_, str> {
    if !content.lines().any(is_dangerous) {
        return Cow::Borrowed(content);
    }
    let mut out = String::with_capacity(content.len() + 8);
    for (i, line) in content.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if is_dangerous(line) {
            let indent = line.len() - line.trim_start().len();
            out.push_str(&line[..indent]);
            out.push('\\');
            out.push_str(&line[indent..]);
        } else {
            out.push_str(line);
        }
    }
    Cow::Owned(out)
}

fn is_dangerous(line: &str) -> bool {
    let trimmed = line.trim_start();
    DANGEROUS_STARTS
        .iter()
        .any(|start| trimmed.starts_with(start))
}

/// True if a rendered block contains a line that would end or restart the region.
pub(crate) fn has_marker_line(block: &str) -> bool {
    block
        .lines()
        .any(|line| line.trim() == BEGIN_MARKER || line.trim() == END_MARKER)
}

/// communication.md with its region replaced by `region`; text outside the
/// markers is kept byte for byte. Without both markers (in order), the region
/// is appended at the end and the rest kept.
pub(crate) fn splice(existing: &str, region: &str) -> String {
    let mut out = String::with_capacity(existing.len() + region.len() + 64);
    if let Some((before, after)) = find_region(existing) {
        out.push_str(&existing[..before]);
        push_region(&mut out, region);
        out.push_str(&existing[after..]);
    } else {
        out.push_str(existing);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        push_region(&mut out, region);
    }
    out
}

fn push_region(out: &mut String, region: &str) {
    out.push_str(BEGIN_MARKER);
    out.push('\n');
    out.push_str(region);
    out.push_str(END_MARKER);
    out.push('\n');
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
    fn neutralises_structure_and_keeps_plain_text() {
        assert_eq!(neutralise("plain\ntext"), "plain\ntext");
        assert_eq!(
            neutralise("ok\n<!-- END COMMUNICATION -->\n  ### Interaction #999\n- [x y z]\n-->"),
            "ok\n\\<!-- END COMMUNICATION -->\n  \\### Interaction #999\n\\- [x y z]\n\\-->"
        );
        assert!(!has_marker_line(&neutralise("<!-- END COMMUNICATION -->")));
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
        // An END before any BEGIN is not a region.
        let reversed = format!("{END_MARKER}\n{BEGIN_MARKER}\n");
        assert!(splice(&reversed, "").starts_with(&reversed));
    }
}
