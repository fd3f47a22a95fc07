//! What this machine has seen of the stream: a local copy its daemon keeps
//! after each snapshot, which reads fall back to while no server answers,
//! so `next`, `read`, status and the dashboard keep serving what was seen.
//! A cache, never a source of truth: nothing is appended through it, and
//! it is rebuilt when the stream it copies was recreated.
//!
//! Three files in `.huddle/`, named by the stream: the messages one after
//! the other (`mirror-NAME.log`, each followed by a newline for people), the
//! end offset of each as a little-endian u64 (`mirror-NAME.idx`, entry `n`
//! for stream sequence `n + 1`), and the identity of the stream copied
//! (`mirror-NAME.json`). A sequence the stream no longer holds (a deleted
//! message) is an empty record. The ends are written after the messages,
//! so a copy cut short by a crash holds whole messages only; the next keep
//! cuts off what the ends do not cover.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::state::StateDir;
use crate::backend::StoreError;
use crate::model::names::state::{MIRROR_ENDS, MIRROR_HEADER, MIRROR_MESSAGES, MIRROR_PREFIX};
use crate::model::names::STATE_DIR;

const END_BYTES: u64 = 8;

/// Visits a message of the copy by its sequence; says whether to go on.
pub(super) type VisitCopy<'a> =
    dyn FnMut(u64, &[u8]) -> Result<std::ops::ControlFlow<()>, StoreError> + 'a;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Header {
    /// The stream's identity (its creation time) when the copy was made.
    identity: String,
}

pub(super) struct Mirror {
    dir: PathBuf,
    messages: PathBuf,
    ends: PathBuf,
    header: String,
}

impl Mirror {
    pub(super) fn new(dir: &Path, stream: &str) -> Mirror {
        let state = dir.join(STATE_DIR);
        Mirror {
            dir: dir.to_path_buf(),
            messages: state.join(format!("{MIRROR_PREFIX}{stream}{MIRROR_MESSAGES}")),
            ends: state.join(format!("{MIRROR_PREFIX}{stream}{MIRROR_ENDS}")),
            header: format!("{MIRROR_PREFIX}{stream}{MIRROR_HEADER}"),
        }
    }

    /// The identity of the stream copied; None when there is no copy.
    pub(super) fn identity(&self) -> Option<String> {
        StateDir::of(&self.dir)
            .load::<Header>(&self.header)
            .map(|header| header.identity)
    }

    /// How many sequences the copy holds (1 to this).
    pub(super) fn count(&self) -> u64 {
        std::fs::metadata(&self.ends).map_or(0, |meta| meta.len() / END_BYTES)
    }

    /// Whether there is anything to fall back to.
    pub(super) fn usable(&self) -> bool {
        self.identity().is_some() && self.count() > 0
    }

    /// Brings the copy up to `last` with the messages `fetch` hands over
    /// (every sequence after the copy's end, in order, each at most once;
    /// deleted ones missing). Starts over when the stream is not the one
    /// copied. Serialised between processes by a lock on the ends file.
    pub(super) fn keep(
        &self,
        identity: &str,
        fetch: impl FnOnce(
            u64,
            &mut dyn FnMut(u64, &[u8]) -> Result<(), StoreError>,
        ) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        std::fs::create_dir_all(self.dir.join(STATE_DIR))
            .map_err(StoreError::io("create", &self.dir.join(STATE_DIR)))?;
        let mut ends = open_for_update(&self.ends)?;
        fs4::FileExt::lock(&ends).map_err(StoreError::io("lock", &self.ends))?;
        let mut messages = open_for_update(&self.messages)?;
        if self.identity().as_deref() != Some(identity) {
            ends.set_len(0)
                .map_err(StoreError::io("empty", &self.ends))?;
            messages
                .set_len(0)
                .map_err(StoreError::io("empty", &self.messages))?;
            StateDir::of(&self.dir)
                .save_cache(
                    &self.header,
                    &Header {
                        identity: identity.to_string(),
                    },
                )
                .map_err(StoreError::io(
                    "record the stream copied in",
                    &self.dir.join(STATE_DIR).join(&self.header),
                ))?;
        }
        let ends_len = ends
            .metadata()
            .map_err(StoreError::io("read", &self.ends))?
            .len();
        let count = ends_len / END_BYTES;
        // A torn end entry, and messages past the last whole end: cut off.
        ends.set_len(count * END_BYTES)
            .map_err(StoreError::io("repair", &self.ends))?;
        let mut end = self.end_of(&mut ends, count)?;
        messages
            .set_len(end)
            .map_err(StoreError::io("repair", &self.messages))?;
        messages
            .seek(SeekFrom::End(0))
            .map_err(StoreError::io("seek", &self.messages))?;
        let mut written_messages = BufWriter::new(&messages);
        let mut new_ends: Vec<u8> = Vec::new();
        let mut next = count + 1;
        let mut write_error = None;
        fetch(count, &mut |sequence, bytes| {
            if sequence < next {
                return Ok(());
            }
            // Deleted messages: empty records keep sequence n at entry n - 1.
            while next < sequence {
                end += 1;
                new_ends.extend_from_slice(&end.to_le_bytes());
                next += 1;
                if let Err(error) = written_messages.write_all(b"\n") {
                    write_error.get_or_insert(error);
                }
            }
            end += bytes.len() as u64 + 1;
            new_ends.extend_from_slice(&end.to_le_bytes());
            next += 1;
            if let Err(error) = written_messages
                .write_all(bytes)
                .and_then(|_| written_messages.write_all(b"\n"))
            {
                write_error.get_or_insert(error);
            }
            Ok(())
        })?;
        if let Some(error) = write_error {
            return Err(StoreError::io("write", &self.messages)(error));
        }
        written_messages
            .flush()
            .map_err(StoreError::io("write", &self.messages))?;
        drop(written_messages);
        ends.seek(SeekFrom::End(0))
            .map_err(StoreError::io("seek", &self.ends))?;
        ends.write_all(&new_ends)
            .map_err(StoreError::io("write", &self.ends))?;
        Ok(next - 1)
    }

    /// Where the record of `sequence` ends (0 for sequence 0).
    fn end_of(&self, ends: &mut File, sequence: u64) -> Result<u64, StoreError> {
        if sequence == 0 {
            return Ok(0);
        }
        let mut bytes = [0u8; END_BYTES as usize];
        ends.seek(SeekFrom::Start((sequence - 1) * END_BYTES))
            .and_then(|_| ends.read_exact(&mut bytes))
            .map_err(StoreError::io("read", &self.ends))?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Visits the messages after `after` up to the copy's end, in order
    /// (deleted ones skipped), until the visitor says stop.
    pub(super) fn read(&self, after: u64, visit: &mut VisitCopy<'_>) -> Result<(), StoreError> {
        let count = self.count();
        if after >= count {
            return Ok(());
        }
        let mut ends_file = File::open(&self.ends).map_err(StoreError::io("open", &self.ends))?;
        let mut start = self.end_of(&mut ends_file, after)?;
        let mut ends = BufReader::new(ends_file);
        let mut messages =
            File::open(&self.messages).map_err(StoreError::io("open", &self.messages))?;
        messages
            .seek(SeekFrom::Start(start))
            .map_err(StoreError::io("seek", &self.messages))?;
        let mut messages = BufReader::new(messages);
        let mut record = Vec::new();
        for sequence in after + 1..=count {
            let mut bytes = [0u8; END_BYTES as usize];
            ends.read_exact(&mut bytes)
                .map_err(StoreError::io("read", &self.ends))?;
            let end = u64::from_le_bytes(bytes);
            let length = end
                .checked_sub(start)
                .filter(|length| *length >= 1)
                .ok_or_else(|| StoreError::Io {
                    action: "read",
                    path: self.ends.clone(),
                    source: std::io::Error::other(format!(
                        "record {sequence} ends at {end}, before it starts ({start})"
                    )),
                })?;
            record.resize(length as usize, 0);
            messages
                .read_exact(&mut record)
                .map_err(StoreError::io("read", &self.messages))?;
            start = end;
            // The last byte is the newline; an empty record is a deleted message.
            let message = &record[..record.len() - 1];
            if !message.is_empty() && visit(sequence, message)?.is_break() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The message at `sequence`; None when the copy does not hold it.
    pub(super) fn get(&self, sequence: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut found = None;
        self.read(sequence.saturating_sub(1), &mut |at, bytes| {
            if at == sequence {
                found = Some(bytes.to_vec());
            }
            Ok(std::ops::ControlFlow::Break(()))
        })?;
        Ok(found)
    }
}

/// Opens one of the copy's files to read and extend, creating it if missing.
fn open_for_update(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(StoreError::io("open", path))
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;

    fn keep(mirror: &Mirror, identity: &str, messages: &[(u64, &str)]) -> u64 {
        mirror
            .keep(identity, |after, put| {
                for (sequence, text) in messages.iter().filter(|(s, _)| *s > after) {
                    put(*sequence, text.as_bytes())?;
                }
                Ok(())
            })
            .expect("keep")
    }

    fn read_all(mirror: &Mirror, after: u64) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        mirror
            .read(after, &mut |sequence, bytes| {
                seen.push((sequence, String::from_utf8_lossy(bytes).into_owned()));
                Ok(ControlFlow::Continue(()))
            })
            .expect("read");
        seen
    }

    #[test]
    fn a_copy_grows_in_order_skips_deleted_messages_and_reads_from_any_sequence() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mirror = Mirror::new(dir.path(), "S");
        assert!(!mirror.usable());
        assert_eq!(
            keep(&mirror, "id1", &[(1, "a"), (2, "b\nwith a newline")]),
            2
        );
        // Sequence 4 deleted on the server: an empty record keeps the places.
        assert_eq!(keep(&mirror, "id1", &[(3, "c"), (5, "e")]), 5);
        assert!(mirror.usable());
        assert_eq!(
            read_all(&mirror, 0),
            [
                (1, "a".to_string()),
                (2, "b\nwith a newline".to_string()),
                (3, "c".to_string()),
                (5, "e".to_string())
            ]
        );
        assert_eq!(read_all(&mirror, 3), [(5, "e".to_string())]);
        assert_eq!(
            mirror.get(2).expect("get").as_deref(),
            Some(&b"b\nwith a newline"[..])
        );
        assert_eq!(mirror.get(4).expect("get"), None);
        assert_eq!(mirror.get(6).expect("get"), None);
    }

    #[test]
    fn a_copy_cut_short_by_a_crash_is_repaired_and_a_recreated_stream_starts_it_over() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mirror = Mirror::new(dir.path(), "S");
        keep(&mirror, "id1", &[(1, "a"), (2, "b")]);
        // A crash after the messages were written, before their ends: bytes
        // no end covers, and a torn end.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&mirror.messages)
            .and_then(|mut f| f.write_all(b"torn message\n"))
            .expect("append");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&mirror.ends)
            .and_then(|mut f| f.write_all(&[1, 2, 3]))
            .expect("append");
        assert_eq!(mirror.count(), 2);
        assert_eq!(keep(&mirror, "id1", &[(3, "c")]), 3);
        assert_eq!(
            read_all(&mirror, 1),
            [(2, "b".to_string()), (3, "c".to_string())]
        );
        // Another stream under the same name: the copy starts over.
        assert_eq!(keep(&mirror, "id2", &[(1, "x")]), 1);
        assert_eq!(read_all(&mirror, 0), [(1, "x".to_string())]);
        assert_eq!(mirror.identity().as_deref(), Some("id2"));
    }
}
