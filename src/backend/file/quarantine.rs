//! `events.error.log`: malformed lines set aside, once each.
//!
//! Each entry is one JSON line: `line`, `offset`, `reason`, `raw` (the line as
//! text, invalid UTF-8 replaced) and `raw_sha256` (of the exact bytes). A line
//! is identified by its byte offset and the hash of its bytes; in an
//! append-only log that pair never changes, so re-reading the log never
//! quarantines a line twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::reader::Malformed;

pub use crate::model::names::QUARANTINE_FILE;

#[derive(Serialize, Deserialize)]
struct Entry {
    line: u64,
    offset: u64,
    reason: String,
    raw: String,
    raw_sha256: String,
    quarantined_at: String,
}

fn raw_digest(raw: &[u8]) -> String {
    format!("{:x}", Sha256::digest(raw))
}

/// Appends the lines not yet quarantined and returns them. The error log is
/// locked meanwhile, so concurrent readers agree on which of them is first.
pub(crate) fn quarantine(dir: &Path, lines: &[Malformed]) -> std::io::Result<Vec<Malformed>> {
    if lines.is_empty() {
        return Ok(Vec::new());
    }
    let path = dir.join(QUARANTINE_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)?;
    fs4::FileExt::lock(&file)?;
    let known = known_entries(&file)?;
    let mut fresh = Vec::new();
    let mut text = String::new();
    for line in lines {
        let digest = raw_digest(&line.raw);
        if known.contains(&(line.offset, digest.clone())) {
            continue;
        }
        let entry = Entry {
            line: line.line,
            offset: line.offset,
            reason: line.reason.clone(),
            raw: String::from_utf8_lossy(&line.raw).into_owned(),
            raw_sha256: digest,
            quarantined_at: crate::model::event::now_rfc3339(),
        };
        text.push_str(&serde_json::to_string(&entry).unwrap_or_default());
        text.push('\n');
        fresh.push(line.clone());
    }
    if !fresh.is_empty() {
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
    }
    fs4::FileExt::unlock(&file)?;
    Ok(fresh)
}

fn known_entries(file: &File) -> std::io::Result<HashSet<(u64, String)>> {
    let mut known = HashSet::new();
    for line in BufReader::new(file).lines() {
        // An entry we cannot parse was not written by us; it identifies nothing.
        if let Ok(entry) = serde_json::from_str::<Entry>(&line?) {
            known.insert((entry.offset, entry.raw_sha256));
        }
    }
    Ok(known)
}
