//! Noticing that events.log was replaced or truncated under a reader.
//!
//! The log is append-only, but people and tools can still swap the file: a
//! `git checkout` or `git stash` of it, a restore from a backup. A reader that
//! keeps a byte offset would then read from the middle of another file, or
//! (if the new one is shorter) never read anything again. A [`ReadMark`]
//! remembers what the reader saw — how far it read, and a hash of the bytes
//! just before that point (and the inode, for messages) — and
//! [`FileLog::continuity`] says whether the file at the path still holds what
//! was read. A new file that starts with the same bytes (git writing a merged
//! log, which only appends) is a continuation, not a replacement.
//!
//! The check is O(1): a `stat` and one read of at most [`HASHED_BYTES`]. A
//! rewrite that keeps the length and those last bytes but changes earlier
//! ones is not noticed; nothing huddle or git does to the file looks like that.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FileLog, Position, StoreError};

/// Bytes before the mark that must still be the same.
pub const HASHED_BYTES: u64 = 4096;

/// What a reader saw of the log up to its cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    pub inode: u64,
    pub offset: u64,
    /// sha256 (hex) of the `HASHED_BYTES` bytes before `offset`; empty when
    /// unknown (a position saved without a mark), and then only the length
    /// is checked.
    pub tail_sha256: String,
}

impl ReadMark {
    /// A mark for a position whose bytes were never hashed.
    pub fn unhashed(cursor: Position) -> ReadMark {
        ReadMark {
            inode: 0,
            offset: cursor.offset,
            tail_sha256: String::new(),
        }
    }
}

/// Whether the log is still the file a reader read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuity {
    /// Same file, at least as long: keep reading from the cursor.
    Same,
    /// Another file, a shorter one, or other bytes before the cursor: every
    /// position derived from the old file is meaningless now.
    Replaced(String),
}

fn tail_sha256(file: &File, offset: u64) -> std::io::Result<String> {
    let start = offset.saturating_sub(HASHED_BYTES);
    let mut bytes = vec![0u8; (offset - start) as usize];
    file.read_exact_at(&mut bytes, start)?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

impl FileLog {
    /// The mark of the log as it is now, read up to `cursor`.
    pub fn mark(&self, cursor: Position) -> Result<ReadMark, StoreError> {
        let read = |source| StoreError::Io {
            action: "read",
            path: self.path().to_path_buf(),
            source,
        };
        let file = match File::open(self.path()) {
            Ok(file) => file,
            // No log yet: nothing has been read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cursor.offset == 0 => {
                return Ok(ReadMark::default())
            }
            Err(e) => return Err(read(e)),
        };
        let meta = file.metadata().map_err(read)?;
        if meta.len() < cursor.offset {
            // The file is already shorter: `continuity` says so next time.
            return Ok(ReadMark::unhashed(cursor));
        }
        Ok(ReadMark {
            inode: meta.ino(),
            offset: cursor.offset,
            tail_sha256: tail_sha256(&file, cursor.offset).map_err(read)?,
        })
    }

    /// Whether the log at the path is still the one `mark` describes.
    pub fn continuity(&self, mark: &ReadMark) -> Result<Continuity, StoreError> {
        if mark.offset == 0 {
            // Nothing read yet: any file is a fine start.
            return Ok(Continuity::Same);
        }
        let file = match File::open(self.path()) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Continuity::Replaced(format!(
                    "{} is gone (it had {} bytes)",
                    self.path().display(),
                    mark.offset
                )))
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path: self.path().to_path_buf(),
                    source,
                })
            }
        };
        let meta = file.metadata().map_err(|source| StoreError::Io {
            action: "read",
            path: self.path().to_path_buf(),
            source,
        })?;
        // Another inode alone is no reason: git writes a merged log as a new
        // file, and one that still starts with what was read extends it.
        if meta.len() < mark.offset {
            return Ok(Continuity::Replaced(format!(
                "{} was truncated to {} bytes ({} had been read)",
                self.path().display(),
                meta.len(),
                mark.offset
            )));
        }
        if mark.tail_sha256.is_empty() {
            return Ok(Continuity::Same);
        }
        let now = tail_sha256(&file, mark.offset).map_err(|source| StoreError::Io {
            action: "read",
            path: self.path().to_path_buf(),
            source,
        })?;
        if now != mark.tail_sha256 {
            return Ok(Continuity::Replaced(format!(
                "{} was rewritten: the bytes before offset {} changed (inode {}, was {})",
                self.path().display(),
                mark.offset,
                meta.ino(),
                mark.inode
            )));
        }
        Ok(Continuity::Same)
    }
}
