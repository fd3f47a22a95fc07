//! Reading single events of the file log back by position.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::backend::Fetch;
use crate::model::event::Event;
use crate::model::position::Position;

/// Sequential fetches (the common case) are served from one buffer without
/// seeking.
pub(crate) struct FileFetch {
    path: PathBuf,
    reader: BufReader<File>,
    /// Where the buffer's reader stands in the file.
    offset: u64,
    line: Vec<u8>,
    max_content_bytes: usize,
}

impl FileFetch {
    pub(crate) fn open(path: &Path, max_content_bytes: usize) -> std::io::Result<FileFetch> {
        Ok(FileFetch {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(256 * 1024, File::open(path)?),
            offset: 0,
            line: Vec::new(),
            max_content_bytes,
        })
    }

    fn error(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            action: "read",
            path: self.path.clone(),
            source,
        }
    }
}

impl FileFetch {
    /// Reads the complete line at `at` into `self.line` (without its newline).
    fn read_line_at(&mut self, at: Position) -> Result<(), StoreError> {
        if at.offset != self.offset {
            let delta = at.offset as i64 - self.offset as i64;
            self.reader
                .seek_relative(delta)
                .map_err(|e| self.error(e))?;
            self.offset = at.offset;
        }
        self.line.clear();
        let read = self
            .reader
            .read_until(b'\n', &mut self.line)
            .map_err(|e| self.error(e))?;
        self.offset += read as u64;
        if self.line.pop() != Some(b'\n') {
            return Err(self.error(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no complete line at byte {}", at.offset),
            )));
        }
        Ok(())
    }

    fn parse_line(&self, at: Position) -> Result<Event, StoreError> {
        let text = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        Event::from_log_line(text, self.max_content_bytes).map_err(|why| {
            self.error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the line at byte {} is no event: {why}", at.offset),
            ))
        })
    }
}

impl Fetch for FileFetch {
    fn fetch(&mut self, at: Position) -> Result<Event, StoreError> {
        self.read_line_at(at)?;
        self.parse_line(at)
    }

    fn fetch_stored(&mut self, at: Position) -> Result<(Event, Vec<u8>), StoreError> {
        self.read_line_at(at)?;
        Ok((self.parse_line(at)?, self.line.clone()))
    }
}
