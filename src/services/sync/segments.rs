//! The log as git carries it: append-only segment files on a ref of its own.
//!
//! A commit of the log holds files `000000.jsonl`, `000001.jsonl`, … at the
//! top of its tree; read in order, they are the remote's log, one event per
//! line. Every segment but the last is full (about [`SEGMENT_BYTES`]) and
//! never changes again; a sync appends to the last one and starts a new one
//! when it is full. So a commit that adds a few events changes one blob of
//! at most a segment, and a clone that merged commit M reads, of a later
//! commit, only the segments that differ from M's, and of the one M had in
//! part only the bytes after M's length.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// A segment is closed once it holds this much: big enough that a
/// million-event log is a few hundred files, small enough that rewriting
/// the last one costs little.
pub(super) const SEGMENT_BYTES: usize = 1 << 20;
/// Digits of a segment's number in its name.
const DIGITS: usize = 6;
const SUFFIX: &str = ".jsonl";

/// One segment of a commit's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) name: String,
    pub(super) blob: String,
    pub(super) size: u64,
}

/// The name of segment number `index`.
pub(super) fn segment_name(index: usize) -> String {
    format!("{index:0DIGITS$}{SUFFIX}")
}

/// The segments of `git ls-tree -l -z` output, checked to be a huddle log:
/// files named `000000.jsonl` upwards with no gap, nothing else.
pub(super) fn parse_listing(listing: &[u8]) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        // "<mode> SP <type> SP <object> SP+ <size> TAB <path>"
        let entry = String::from_utf8_lossy(entry);
        let (info, name) = entry
            .split_once('\t')
            .ok_or_else(|| format!("git ls-tree printed {entry:?}"))?;
        let fields: Vec<&str> = info.split_whitespace().collect();
        let expected = segment_name(segments.len());
        let (["100644", "blob", blob, size], true) = (fields.as_slice(), name == expected) else {
            return Err(format!(
                "it is not a huddle log: found {name:?} ({info}) where the segment file {expected} should be"
            ));
        };
        let size = size
            .parse()
            .map_err(|_| format!("git ls-tree printed the size {size:?} for {name}"))?;
        segments.push(Segment {
            name: name.to_string(),
            blob: blob.to_string(),
            size,
        });
    }
    Ok(segments)
}

/// What to read of `theirs` to have every event of it, given that every
/// event of `merged` (an ancestor) is had: each segment to read, with the
/// bytes at its start to skip. `None` when `theirs` does not extend
/// `merged` segment by segment (a log rewritten in place): read it whole.
pub(super) fn unread<'a>(
    merged: &[Segment],
    theirs: &'a [Segment],
) -> Option<Vec<(&'a Segment, u64)>> {
    let mut plan = Vec::new();
    for (index, segment) in theirs.iter().enumerate() {
        match merged.get(index) {
            Some(had) if had.blob == segment.blob => {}
            // Only the last segment merged can have grown since.
            Some(had) if index + 1 == merged.len() && had.size <= segment.size => {
                plan.push((segment, had.size))
            }
            Some(_) => return None,
            None => plan.push((segment, 0)),
        }
    }
    (theirs.len() >= merged.len()).then_some(plan)
}

/// An event's identity for the merge (its id, or the line's text), hashed
/// to 128 bits: sets of them stay small at a million events.
pub(super) fn key(line: &[u8]) -> u128 {
    let digest = Sha256::digest(super::merge::identity(line));
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

pub(super) type Keys = HashSet<u128>;

/// Builds the segments new lines go into, after the remote's last one.
pub(super) struct Appender {
    /// The segments kept as they are.
    pub(super) done: Vec<Segment>,
    /// The open segment's bytes.
    open: Vec<u8>,
    /// The open segment's number.
    index: usize,
    /// Lines and bytes added since the caller last reset them.
    pub(super) added: usize,
    pub(super) bytes_added: usize,
}

impl Appender {
    /// Continues `segments`: the last one is reopened (its `bytes` given)
    /// unless it is full.
    pub(super) fn after(mut segments: Vec<Segment>, last: Option<Vec<u8>>) -> Appender {
        let index = segments.len();
        match last {
            Some(bytes) if bytes.len() < SEGMENT_BYTES && !segments.is_empty() => {
                segments.pop();
                Appender {
                    done: segments,
                    open: bytes,
                    index: index - 1,
                    added: 0,
                    bytes_added: 0,
                }
            }
            _ => Appender {
                done: segments,
                open: Vec::new(),
                index,
                added: 0,
                bytes_added: 0,
            },
        }
    }

    /// Whether the last of `segments` is still open for lines.
    pub(super) fn reopens(segments: &[Segment]) -> bool {
        segments
            .last()
            .is_some_and(|last| last.size < SEGMENT_BYTES as u64)
    }

    /// Adds one line; a full segment is handed to `store` and closed.
    pub(super) fn push<E>(
        &mut self,
        line: &[u8],
        store: &mut impl FnMut(String, &[u8]) -> Result<Segment, E>,
    ) -> Result<(), E> {
        if !self.open.is_empty() && self.open.len() + line.len() + 1 > SEGMENT_BYTES {
            self.close(store)?;
        }
        if !self.open.is_empty() && !self.open.ends_with(b"\n") {
            self.open.push(b'\n');
        }
        self.open.extend_from_slice(line);
        self.open.push(b'\n');
        self.added += 1;
        self.bytes_added += line.len() + 1;
        Ok(())
    }

    fn close<E>(
        &mut self,
        store: &mut impl FnMut(String, &[u8]) -> Result<Segment, E>,
    ) -> Result<(), E> {
        let segment = store(segment_name(self.index), &self.open)?;
        self.done.push(segment);
        self.open.clear();
        self.index += 1;
        Ok(())
    }

    /// Every segment so far, the open one stored as it is now (it stays
    /// open for more lines).
    pub(super) fn store_all<E>(
        &mut self,
        store: &mut impl FnMut(String, &[u8]) -> Result<Segment, E>,
    ) -> Result<Vec<Segment>, E> {
        let mut all = self.done.clone();
        if !self.open.is_empty() {
            all.push(store(segment_name(self.index), &self.open)?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(index: usize, blob: &str, size: u64) -> Segment {
        Segment {
            name: segment_name(index),
            blob: blob.into(),
            size,
        }
    }

    #[test]
    fn a_listing_is_a_log_only_with_numbered_segments_and_no_gap() {
        let good = b"100644 blob aaa     12\t000000.jsonl\x00100644 blob bbb 3\t000001.jsonl\x00";
        assert_eq!(
            parse_listing(good).unwrap(),
            [segment(0, "aaa", 12), segment(1, "bbb", 3)]
        );
        for bad in [
            &b"100644 blob aaa 12\t000001.jsonl\0"[..],
            b"100644 blob aaa 12\tevents.log\0",
            b"040000 tree aaa -\t000000.jsonl\0",
            b"100755 blob aaa 12\t000000.jsonl\0",
        ] {
            let error = parse_listing(bad).unwrap_err();
            assert!(error.contains("000000.jsonl"), "{error}");
        }
    }

    #[test]
    fn only_the_segments_that_changed_are_read_and_the_grown_one_from_where_it_was() {
        let merged = [segment(0, "a", 10), segment(1, "b", 4)];
        let theirs = [segment(0, "a", 10), segment(1, "b2", 9), segment(2, "c", 5)];
        let plan = unread(&merged, &theirs).unwrap();
        assert_eq!(plan, [(&theirs[1], 4), (&theirs[2], 0)]);
        assert!(unread(&merged, &merged).unwrap().is_empty());
        // A closed segment rewritten, a segment shrunk, segments lost: read whole.
        let rewritten = [segment(0, "x", 10), segment(1, "b", 4)];
        assert_eq!(unread(&merged, &rewritten), None);
        assert_eq!(
            unread(&merged, &[segment(0, "a", 10), segment(1, "b3", 2)]),
            None
        );
        assert_eq!(unread(&merged, &[segment(0, "a", 10)]), None);
    }

    #[test]
    fn lines_fill_a_segment_and_then_open_the_next() {
        let mut stored = Vec::new();
        let mut store = |name: String, bytes: &[u8]| {
            stored.push((name.clone(), bytes.len()));
            Ok::<_, ()>(Segment {
                name,
                blob: format!("blob{}", stored.len()),
                size: bytes.len() as u64,
            })
        };
        let line = vec![b'x'; SEGMENT_BYTES / 4];
        let mut appender = Appender::after(vec![segment(0, "a", 5)], Some(b"1234\n".to_vec()));
        for _ in 0..4 {
            appender.push(&line, &mut store).unwrap();
        }
        let segments = appender.store_all(&mut store).unwrap();
        let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["000000.jsonl", "000001.jsonl"]);
        assert_eq!(stored[0].1, 5 + 3 * (line.len() + 1));
        assert_eq!(stored[1].1, line.len() + 1);
        assert!(stored.iter().all(|(_, size)| *size <= SEGMENT_BYTES));
    }
}
