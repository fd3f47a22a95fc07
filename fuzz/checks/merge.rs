//! The merge by id over two arbitrary logs.
//!
//! The input is the local log, a NUL byte, then the remote log. The merged
//! log must be the union of both (every event of each side, an event being
//! its `id` or, for a line without one, its text), hold each event once,
//! keep the local log byte for byte at its start and each side's order, and
//! merging again must add nothing.

use std::collections::HashSet;

use huddle::sync::{lines_to_append, merged_log};

pub fn check(data: &[u8]) {
    let (local, remote) = match data.iter().position(|b| *b == 0) {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (data, &[][..]),
    };
    let merged = merged_log(local, remote);
    let fresh = lines_to_append(local, remote);

    // The local log is kept as it was; what follows is sealed and complete.
    assert!(merged.starts_with(local));
    if !fresh.is_empty() {
        assert!(merged.ends_with(b"\n"));
    } else {
        assert_eq!(merged, local, "nothing to append, yet the log changed");
    }

    let local_lines = lines(local);
    let remote_lines = lines(remote);
    let merged_lines = lines(&merged);
    // The lines of the result are the local ones, then the appended ones:
    // read back from the file, each appended line is what was appended.
    let appended = &merged_lines[local_lines.len().min(merged_lines.len())..];
    assert_eq!(&merged_lines[..local_lines.len()], &local_lines[..]);
    assert_eq!(
        appended,
        &fresh[..],
        "the appended lines do not read back as appended"
    );

    // The appended lines are the remote's, in the remote's order, each new
    // to the local log and each once.
    let mut remote_rest = remote_lines.iter();
    for line in &fresh {
        assert!(
            remote_rest.any(|candidate| candidate == line),
            "{line:?} is not a remote line in the remote's order"
        );
    }
    let local_events: HashSet<Identity> = local_lines.iter().map(|l| identity(l)).collect();
    let mut appended_events = HashSet::new();
    for line in &fresh {
        let event = identity(line);
        assert!(
            !local_events.contains(&event),
            "{event:?} was already local"
        );
        assert!(
            appended_events.insert(event.clone()),
            "{event:?} appended twice"
        );
    }

    // Union: every event of either side is in the result.
    let merged_events: HashSet<Identity> = merged_lines.iter().map(|l| identity(l)).collect();
    for line in local_lines.iter().chain(&remote_lines) {
        assert!(
            merged_events.contains(&identity(line)),
            "{line:?} was lost in the merge"
        );
    }
    // Merging again adds nothing, and changes nothing.
    assert!(
        lines_to_append(&merged, remote).is_empty(),
        "a second merge appends again"
    );
    assert_eq!(merged_log(&merged, remote), merged);
}

/// What makes two lines the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Identity {
    Id(String),
    Text(Vec<u8>),
}

/// A JSON object with a string `id` is that event; any other line is its
/// text. Duplicate keys: the last one counts, as for the event parser.
fn identity(line: &[u8]) -> Identity {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(object)) => match object.get("id") {
            Some(serde_json::Value::String(id)) => Identity::Id(id.clone()),
            _ => Identity::Text(line.to_vec()),
        },
        _ => Identity::Text(line.to_vec()),
    }
}

/// The lines of a log as a reader sees them: split at `\n`, one `\r` before
/// it dropped, blank lines skipped; an unterminated last line counts (the
/// merge seals it).
fn lines(log: &[u8]) -> Vec<&[u8]> {
    log.split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .collect()
}
