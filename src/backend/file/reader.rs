//! Streaming reader: never loads the log whole, yields complete lines only.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use crate::model::event::{Event, DEFAULT_MAX_CONTENT_BYTES};
pub use crate::model::position::Position;

/// A well-formed event and where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub line: u64,
    pub offset: u64,
    /// Length of the line in bytes, without its newline.
    pub len: u64,
    pub event: Event,
}

/// A line that is not a valid event.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub line: u64,
    pub offset: u64,
    pub reason: String,
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScanItem {
    Event(Record),
    Malformed(Malformed),
}

/// Iterates over the complete lines of a log from a cursor. An unterminated
/// last line is not yielded: it may be a write in flight, or a torn fragment
/// that the next writer will seal.
pub struct LogReader {
    input: BufReader<File>,
    next: Position,
    buf: Vec<u8>,
    max_content_bytes: usize,
}

impl LogReader {
    /// Opens `path` at `cursor`.
    pub fn open(path: &Path, cursor: Position) -> std::io::Result<LogReader> {
        LogReader::from_file(File::open(path)?, cursor)
    }

    /// Reads `file` from `cursor`. The file's position is moved, and so is
    /// that of every handle cloned from it.
    pub(crate) fn from_file(mut file: File, cursor: Position) -> std::io::Result<LogReader> {
        file.seek(SeekFrom::Start(cursor.offset))?;
        Ok(LogReader {
            input: BufReader::with_capacity(256 * 1024, file),
            next: cursor,
            buf: Vec::with_capacity(1024),
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
        })
    }

    /// Lines whose content is longer than `limit` (`log.max_content_bytes`)
    /// are malformed, as `huddle log` would have refused them.
    pub fn with_max_content_bytes(mut self, limit: usize) -> LogReader {
        self.max_content_bytes = limit;
        self
    }

    /// Where the next complete line starts: resume reading from here.
    pub fn cursor(&self) -> Position {
        self.next
    }

    /// Reads the next complete line into `self.buf` (without its newline).
    /// Returns false at the end of the complete lines.
    fn next_line(&mut self) -> std::io::Result<bool> {
        self.buf.clear();
        let read = self.input.read_until(b'\n', &mut self.buf)?;
        if read == 0 || self.buf.last() != Some(&b'\n') {
            return Ok(false);
        }
        self.buf.pop();
        Ok(true)
    }
}

impl Iterator for LogReader {
    type Item = std::io::Result<ScanItem>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let here = self.next;
            let max_content_bytes = self.max_content_bytes;
            // Most lines lie whole in the reader's buffer: parsed there,
            // they are not copied out first.
            let available = match self.input.fill_buf() {
                Ok(available) => available,
                Err(e) => return Some(Err(e)),
            };
            let (len, item) = match memchr::memchr(b'\n', available) {
                Some(end) => {
                    let item = scan_line(&available[..end], here, max_content_bytes);
                    self.input.consume(end + 1);
                    (end, item)
                }
                // The line goes on past the buffer (or is unterminated).
                None => match self.next_line() {
                    Err(e) => return Some(Err(e)),
                    Ok(false) => return None,
                    Ok(true) => (
                        self.buf.len(),
                        scan_line(&self.buf, here, max_content_bytes),
                    ),
                },
            };
            self.next = Position {
                offset: here.offset + len as u64 + 1,
                line: here.line + 1,
            };
            if let Some(item) = item {
                return Some(Ok(item));
            }
        }
    }
}

/// What the complete line `raw` (without its newline) at `here` holds;
/// `None` for a blank line, which carries nothing (skipping it is not data
/// loss).
fn scan_line(raw: &[u8], here: Position, max_content_bytes: usize) -> Option<ScanItem> {
    let line = trim_cr(raw);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match Event::from_log_line(line, max_content_bytes) {
        Ok(event) => ScanItem::Event(Record {
            line: here.line,
            offset: here.offset,
            len: raw.len() as u64,
            event,
        }),
        Err(reason) => ScanItem::Malformed(Malformed {
            line: here.line,
            offset: here.offset,
            reason,
            raw: raw.to_vec(),
        }),
    })
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
