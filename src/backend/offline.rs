//! The offline queue's files (`events.offline.log`, the spool's): events
//! that could not be appended yet, and the note of a flush in progress. See
//! [`crate::backend::queue`] for how they are used.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Backend, Position};
use crate::model::event::Event;

/// The note of a flush in progress, one per queue (the queue's name + this).
const FLUSH_NOTE_SUFFIX: &str = ".flushing";
pub(crate) use crate::backend::ALLOCATE_FIELD;

/// Appends events to the queue durably.
pub(crate) fn enqueue(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut text = String::new();
    for event in events {
        text.push_str(&event.to_line());
        text.push('\n');
    }
    let mut file = OpenOptions::new().append(true).create(true).open(path)?;
    fs4::FileExt::lock(&file)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|_| file.sync_data());
    fs4::FileExt::unlock(&file)?;
    written
}

/// A queue taken for flushing: its events and the locked file to empty afterwards.
pub(crate) struct Pending {
    file: File,
    pub events: Vec<Event>,
    note: PathBuf,
}

/// Takes the queue if it has anything in it, less the events an earlier,
/// interrupted flush already wrote to `log`.
pub(crate) fn take(
    path: &Path,
    state_dir: &Path,
    log: &(impl Backend + ?Sized),
) -> std::io::Result<Option<Pending>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        _ => return Ok(None),
    }
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    fs4::FileExt::lock(&file)?;
    let mut events = Vec::new();
    for line in BufReader::new(&file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // The queue holds only lines we wrote; anything unparsable came from a
        // torn write of ours and never reached the caller as a success.
        if let Ok(event) = Event::from_line(line.as_bytes()) {
            events.push(event);
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Queues with the same file name live in different directories: tell them apart.
    let tag = if path.starts_with(state_dir.parent().unwrap_or(state_dir)) {
        "local"
    } else {
        "spool"
    };
    let note = state_dir.join(format!("{tag}-{name}{FLUSH_NOTE_SUFFIX}"));
    match read_note(&note) {
        // An earlier flush was interrupted. The note keeps the head where
        // the first interrupted flush began: rewriting it with today's head
        // would forget the events that flush wrote, and the next
        // interrupted flush would write them again.
        Some(flushed_from) => {
            let already = ids_after(log, flushed_from)?;
            events.retain(|e| e.id.as_ref().is_none_or(|id| !already.contains(id)));
        }
        // No note, or one cut short by a crash while it was written (it is
        // written before any event, so that flush wrote nothing).
        None => {
            std::fs::create_dir_all(state_dir)?;
            let head = log.head().map_err(std::io::Error::other)?;
            let text = serde_json::to_string(&head).map_err(std::io::Error::other)?;
            std::fs::write(&note, text)?;
        }
    }
    Ok(Some(Pending { file, events, note }))
}

impl Pending {
    /// Called once the events are durably in the log.
    pub(crate) fn done(self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        // Under the queue's lock: the next flush must not find this note.
        match std::fs::remove_file(&self.note) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        fs4::FileExt::unlock(&self.file)
    }
}

/// Resolves an event queued before its interaction could be allocated.
pub(crate) fn needs_allocation(event: &Event) -> bool {
    event.extra.get(ALLOCATE_FIELD) == Some(&Value::Bool(true))
}

/// Where the interrupted flush began. Notes of earlier versions hold the
/// log's length in bytes: the file log's position at that offset.
fn read_note(note: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(note).ok()?;
    serde_json::from_str(text.trim()).ok().or_else(|| {
        let offset = text.trim().parse().ok()?;
        Some(Position { offset, line: 0 })
    })
}

fn ids_after(log: &(impl Backend + ?Sized), from: Position) -> std::io::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    crate::backend::scan(log, from, |stored| {
        ids.extend(stored.event.id);
        Ok(())
    })
    .map_err(std::io::Error::other)?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{InteractionRef, NewEvent};

    fn queued(content: &str) -> Event {
        NewEvent::new(InteractionRef::Number(1), "a", "note", content).into_event(1)
    }

    /// Appends `events` to the log as a flush would.
    fn write(log: &Path, events: &[Event]) {
        let mut file = OpenOptions::new().append(true).open(log).unwrap();
        for event in events {
            writeln!(file, "{}", event.to_line()).unwrap();
        }
    }

    #[test]
    fn flushes_interrupted_twice_write_nothing_a_third_time() {
        let dir = tempfile::tempdir().unwrap();
        let (log, queue, state) = (
            dir.path().join("events.log"),
            dir.path().join("events.offline.log"),
            dir.path().join(".huddle"),
        );
        std::fs::write(&log, format!("{}\n", queued("already there").to_line())).unwrap();
        let events = [queued("first"), queued("second")];
        enqueue(&queue, &events).unwrap();
        let file_log = crate::backend::file::FileLog::new(dir.path(), Default::default());
        let open_log = || &file_log;
        // The first flush writes both events and dies before emptying the queue.
        let first = take(&queue, &state, open_log()).unwrap().unwrap();
        assert_eq!(first.events.len(), 2);
        write(&log, &first.events);
        drop(first);
        // The second finds them written and dies too, before writing anything.
        let second = take(&queue, &state, open_log()).unwrap().unwrap();
        assert!(second.events.is_empty());
        drop(second);
        // The third must still know they are in the log.
        let third = take(&queue, &state, open_log()).unwrap().unwrap();
        assert!(
            third.events.is_empty(),
            "events written by the first flush would be written again: {:?}",
            third.events
        );
        third.done().unwrap();
        assert!(take(&queue, &state, open_log()).unwrap().is_none());
    }
}
