//! The highest interaction number in the log, kept in `.huddle/tail.json` so
//! that `next` scans only the lines appended since the last allocation.
//!
//! The index is a cache, trusted only while it still describes the file: the
//! same inode, no shorter than the indexed offset, and the same bytes just
//! before that offset. Anything else (a git merge rewrote the log, say) means
//! a full rescan.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reader::{LogReader, ScanItem};
use crate::model::event::{Event, MAX_NUMBER};
use crate::model::position::Position;

use crate::model::names::state::TAIL as INDEX_FILE;
/// How many bytes before the indexed offset must match.
const FINGERPRINT_BYTES: u64 = 64;

#[derive(Debug, Default, Serialize, Deserialize)]
struct TailIndex {
    inode: u64,
    offset: u64,
    /// The number of the line at `offset` (0 in indexes of versions that
    /// did not count lines: those are rebuilt).
    #[serde(default)]
    line: u64,
    fingerprint: Vec<u8>,
    max_interaction: Option<u64>,
}

fn index_path(state_dir: &Path) -> PathBuf {
    state_dir.join(INDEX_FILE)
}

fn fingerprint(file: &File, offset: u64) -> std::io::Result<Vec<u8>> {
    let start = offset.saturating_sub(FINGERPRINT_BYTES);
    let mut bytes = vec![0u8; (offset - start) as usize];
    file.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

/// The highest interaction number among the complete lines of the log at
/// `path`, and the position after them, using and refreshing the index in
/// `state_dir`. No lock is needed: a compare-and-append at that position
/// fails if anything was appended since.
pub(crate) fn highest_interaction(
    path: &Path,
    state_dir: &Path,
    max_content_bytes: usize,
) -> std::io::Result<(Position, Option<u64>)> {
    match File::open(path) {
        Ok(file) => highest_in(&file, state_dir, max_content_bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Position::START, None)),
        Err(e) => Err(e),
    }
}

/// How much of the log's end [`highest_near_end`] reads.
const NEAR_END_BYTES: u64 = 64 * 1024;

/// The highest interaction number among the complete lines in the last
/// [`NEAR_END_BYTES`] of the log at `path` (a guess; see
/// `Backend::highest_interaction_near_end`).
pub(crate) fn highest_near_end(path: &Path, max_content_bytes: usize) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut offset = len.saturating_sub(NEAR_END_BYTES);
    if offset > 0 {
        // Skip the end of a line that started earlier.
        file.seek(SeekFrom::Start(offset)).ok()?;
        let mut cut = Vec::new();
        BufReader::new(&file).read_until(b'\n', &mut cut).ok()?;
        offset += cut.len() as u64;
    }
    // The reader's own rules: complete lines only, malformed ones skipped.
    LogReader::from_file(file, Position { offset, line: 0 })
        .ok()?
        .with_max_content_bytes(max_content_bytes)
        .filter_map(|item| match item {
            Ok(ScanItem::Event(record)) => Some(record.event.interaction),
            _ => None,
        })
        .max()
}

fn highest_in(
    file: &File,
    state_dir: &Path,
    max_content_bytes: usize,
) -> std::io::Result<(Position, Option<u64>)> {
    let meta = file.metadata()?;
    let len = meta.len();
    let cached = std::fs::read(index_path(state_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<TailIndex>(&bytes).ok())
        .filter(|index| {
            index.inode == meta.ino()
                && index.line > 0
                // Written by a version that counted numbers it now refuses.
                && index.max_interaction.is_none_or(|max| max <= MAX_NUMBER)
                && index.offset <= len
                && fingerprint(file, index.offset).is_ok_and(|fp| fp == index.fingerprint)
        })
        .unwrap_or(TailIndex {
            line: 1,
            ..TailIndex::default()
        });

    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(cached.offset))?;
    let mut max = cached.max_interaction;
    let mut at = Position {
        offset: cached.offset,
        line: cached.line,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        at = Position {
            offset: at.offset + read as u64,
            line: at.line + 1,
        };
        // Malformed lines have no number (the reader quarantines them):
        // the same rules as the reader's, or a foreign line holding
        // 2^64 - 1 would make every later `next` hand out the same number.
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if let Ok(event) = Event::from_log_line(text, max_content_bytes) {
            max = max.max(Some(event.interaction));
        }
    }

    if at.offset != cached.offset || cached.inode != meta.ino() {
        let index = TailIndex {
            inode: meta.ino(),
            offset: at.offset,
            line: at.line,
            fingerprint: fingerprint(file, at.offset)?,
            max_interaction: max,
        };
        // The index is only a cache: failing to save it costs a rescan next time.
        let _ = save(state_dir, &index);
    }
    Ok((at, max))
}

fn save(state_dir: &Path, index: &TailIndex) -> std::io::Result<()> {
    let Some(dir) = state_dir.parent() else {
        return Ok(());
    };
    crate::backend::state::StateDir::of(dir).save_cache(INDEX_FILE, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(interaction: u64, content: &str) -> String {
        format!(
            "{{\"interaction\":{interaction},\"actor\":\"a\",\"type\":\"note\",\"content\":\"{content}\",\"timestamp\":\"2026-11-25T14:00:31Z\"}}\n"
        )
    }

    #[test]
    fn the_highest_number_near_the_end_ignores_a_cut_first_line_and_a_line_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let filler = "f".repeat(1000);
        let mut log = String::new();
        // Interaction 900 only before the last 64 KiB: not counted.
        log.push_str(&line(900, "early"));
        for _ in 0..100 {
            log.push_str(&line(7, &filler));
        }
        log.push_str(&line(8, "last complete"));
        // A torn last line holding a higher number is not counted either.
        log.push_str("{\"interaction\":99,\"actor\":\"a\"");
        std::fs::write(&path, &log).unwrap();
        assert_eq!(highest_near_end(&path, usize::MAX), Some(8));

        std::fs::write(&path, line(3, "one") + &line(2, "two")).unwrap();
        assert_eq!(highest_near_end(&path, usize::MAX), Some(3));
        std::fs::write(&path, "").unwrap();
        assert_eq!(highest_near_end(&path, usize::MAX), None);
        assert_eq!(
            highest_near_end(&dir.path().join("missing"), usize::MAX),
            None
        );
    }
}
