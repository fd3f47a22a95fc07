//! The event line parser and the streaming reader over arbitrary bytes.
//!
//! The input is a log file. Every complete line is one `Event` or one
//! `Malformed` item at the right line number and offset (blank lines
//! skipped, an unterminated last line not yielded); an accepted event meets
//! every rule of `huddle log`, checked here by rules written out again, not
//! by calling the parser's own checks; and it survives re-serialisation.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use huddle::event::{Event, MAX_ACTOR_BYTES, MAX_ID_BYTES, MAX_NUMBER, MAX_TYPE_BYTES};
use huddle::log::{LogReader, Position, ScanItem};

/// Small enough that inputs of a few hundred bytes reach the content limit.
const MAX_CONTENT_BYTES: usize = 64;

pub fn check(data: &[u8]) {
    // The whole input as one line: the parser alone, newlines and all.
    if let Ok(event) = Event::from_log_line(data, MAX_CONTENT_BYTES) {
        check_accepted(&event);
    }
    check_reader(data);
}

/// What `LogReader` must yield for `data`, computed line by line.
fn check_reader(data: &[u8]) {
    let path = scratch_file(data);
    let mut reader = LogReader::open(&path, Position::START)
        .expect("open the scratch log")
        .with_max_content_bytes(MAX_CONTENT_BYTES);
    let items: Vec<ScanItem> = reader
        .by_ref()
        .map(|item| item.expect("read the scratch log"))
        .collect();

    let mut expected = items.iter();
    let mut offset = 0u64;
    let mut number = 1u64;
    let mut rest = data;
    while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
        let raw = &rest[..newline];
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !text.iter().all(u8::is_ascii_whitespace) {
            let item = expected
                .next()
                .unwrap_or_else(|| panic!("line {number} at {offset} was not yielded"));
            match (item, Event::from_log_line(text, MAX_CONTENT_BYTES)) {
                (ScanItem::Event(record), Ok(event)) => {
                    assert_eq!((record.line, record.offset), (number, offset));
                    assert_eq!(record.len, raw.len() as u64);
                    assert_eq!(record.event, event);
                    check_accepted(&record.event);
                }
                (ScanItem::Malformed(malformed), Err(reason)) => {
                    assert_eq!((malformed.line, malformed.offset), (number, offset));
                    assert_eq!(malformed.raw, raw);
                    assert_eq!(malformed.reason, reason);
                }
                (item, parsed) => panic!("line {number}: reader gave {item:?}, parser {parsed:?}"),
            }
        }
        offset += newline as u64 + 1;
        number += 1;
        rest = &rest[newline + 1..];
    }
    assert!(
        expected.next().is_none(),
        "the reader yielded more items than there are complete lines (or an unterminated one)"
    );

    // Resuming where an item starts gives the same items from there on.
    if let Some(middle) = items.get(items.len() / 2) {
        let (line, offset) = match middle {
            ScanItem::Event(record) => (record.line, record.offset),
            ScanItem::Malformed(malformed) => (malformed.line, malformed.offset),
        };
        let resumed: Vec<ScanItem> = LogReader::open(&path, Position { offset, line })
            .expect("open the scratch log")
            .with_max_content_bytes(MAX_CONTENT_BYTES)
            .map(|item| item.expect("read the scratch log"))
            .collect();
        assert_eq!(resumed, items[items.len() / 2..]);
    }
    // The cursor after the last item is just past the last complete line.
    assert_eq!(
        reader.cursor(),
        Position {
            offset,
            line: number
        }
    );
}

/// The rules of `huddle log`, written out again, and the round trip.
fn check_accepted(event: &Event) {
    assert!(event.interaction <= MAX_NUMBER, "{event:?}");
    assert!(
        event.term.is_none_or(|term| term <= MAX_NUMBER),
        "{event:?}"
    );
    assert!(
        event.actor.chars().any(|c| !c.is_whitespace()),
        "blank actor: {event:?}"
    );
    assert!(event.actor.len() <= MAX_ACTOR_BYTES, "{event:?}");
    assert!(
        event.actor.chars().all(is_visible),
        "invisible character in actor: {event:?}"
    );
    assert!(is_type_name(&event.kind), "type: {event:?}");
    assert!(event.content.len() <= MAX_CONTENT_BYTES, "{event:?}");
    assert!(!event.content.contains('\0'), "{event:?}");
    assert!(
        is_rfc3339(event.timestamp.as_bytes()),
        "timestamp: {:?}",
        event.timestamp
    );
    if let Some(id) = &event.id {
        assert!(!id.is_empty() && id.len() <= MAX_ID_BYTES, "{event:?}");
        assert!(
            id.chars().all(is_visible),
            "invisible character in id: {event:?}"
        );
    }

    let line = event.to_line();
    // One event is one line of the log, whatever its content holds.
    assert!(
        !line.contains(['\n', '\r']),
        "a serialised event spans lines: {line:?}"
    );
    let again = Event::from_log_line(line.as_bytes(), MAX_CONTENT_BYTES)
        .unwrap_or_else(|reason| panic!("{line:?} does not parse back: {reason}"));
    assert_eq!(&again, event);
    assert_eq!(again.to_line(), line);
}

fn is_type_name(kind: &str) -> bool {
    let bytes = kind.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TYPE_BYTES
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Not a control (C0, DEL, C1), line or paragraph separator, zero-width or
/// bidirectional formatting character.
fn is_visible(c: char) -> bool {
    let code = u32::from(c);
    !(code < 0x20
        || (0x7f..=0x9f).contains(&code)
        || (0x200b..=0x200f).contains(&code)
        || (0x2028..=0x202e).contains(&code)
        || (0x2060..=0x2069).contains(&code)
        || code == 0xfeff)
}

/// RFC 3339 `date-time` (section 5.6): `T` or, as its note allows, a space
/// between date and time; `T` and `Z` in either case; fields in range.
fn is_rfc3339(text: &[u8]) -> bool {
    fn number(text: &[u8], at: usize, digits: usize) -> Option<u32> {
        let field = text.get(at..at + digits)?;
        field
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| field.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    }
    let fields = (|| {
        let year = number(text, 0, 4)?;
        let month = number(text, 5, 2)?;
        let day = number(text, 8, 2)?;
        let hour = number(text, 11, 2)?;
        let minute = number(text, 14, 2)?;
        let second = number(text, 17, 2)?;
        let separators = text[4] == b'-'
            && text[7] == b'-'
            && matches!(text[10], b'T' | b't' | b' ')
            && text[13] == b':'
            && text[16] == b':';
        Some((year, month, day, hour, minute, second, separators))
    })();
    let Some((year, month, day, hour, minute, second, true)) = fields else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    match rest {
        b"Z" | b"z" => true,
        [b'+' | b'-', _, _, b':', _, _] => {
            number(rest, 1, 2).is_some_and(|h| h <= 23)
                && number(rest, 4, 2).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

/// A file holding exactly `data`, reused across calls on this thread: an
/// unlinked temporary file, opened again by name through /proc.
fn scratch_file(data: &[u8]) -> PathBuf {
    thread_local! {
        static SCRATCH: std::fs::File = tempfile::tempfile().expect("create a scratch file");
    }
    SCRATCH.with(|file| {
        let mut file = file;
        file.set_len(0).expect("truncate the scratch file");
        file.seek(SeekFrom::Start(0))
            .expect("rewind the scratch file");
        file.write_all(data).expect("write the scratch file");
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
    })
}
