//! Every file name of a huddle directory, in one place (SPEC.md, "Files in a
//! huddle directory"), and those of huddle's private state directory.

/// The append-only event log.
pub const LOG_FILE: &str = "events.log";
/// Events waiting to be appended (the offline queue).
pub const OFFLINE_FILE: &str = "events.offline.log";
/// Lines and events set aside, with the reason.
pub const QUARANTINE_FILE: &str = "events.error.log";
/// The settings.
pub const CONFIG_FILE: &str = "huddle.toml";
/// The K most recent interactions, between the markers.
pub const COMMUNICATION_FILE: &str = "communication.md";
/// communication.md as it was before the last snapshot.
pub const BACKUP_FILE: &str = "communication.md.bak";
/// Every older interaction.
pub const ARCHIVE_FILE: &str = "archive.md";
/// The lines around huddle's region of communication.md; the rest of the
/// file is people's.
pub const BEGIN_MARKER: &str = "<!-- BEGIN COMMUNICATION -->";
pub const END_MARKER: &str = "<!-- END COMMUNICATION -->";
/// An agent's checkpoint: this prefix, the agent id, [`CHECKPOINT_SUFFIX`].
pub const CHECKPOINT_PREFIX: &str = "agent-";
pub const CHECKPOINT_SUFFIX: &str = ".checkpoint";
/// huddle's private state (indexes, cursors, read models): safe to delete.
pub const STATE_DIR: &str = ".huddle";

/// Git patterns (relative to the huddle directory) of the files above that
/// are derived per clone, besides the single files.
pub const STATE_DIR_PATTERN: &str = ".huddle/";
pub const CHECKPOINT_PATTERN: &str = "agent-*.checkpoint";

/// Files in the state directory, each owned by one service or backend.
pub mod state {
    /// The alert sinks' cursors and counts (alerts).
    pub const ALERTS: &str = "alerts.json";
    /// Git sync's last success, offline state and merged commit (sync).
    pub const SYNC: &str = "sync.json";
    /// When the snapshot was last brought up to date (snapshot).
    pub const SNAPSHOT: &str = "snapshot.json";
    /// The last time a daemon found the log replaced (daemon, for status).
    pub const LOG_REPLACED: &str = "log_replaced.json";
    /// `huddle status`'s read model (status).
    pub const STATUS_MODEL: &str = "status-model.json";
    /// The interaction index's header and records (inbox).
    pub const INTERACTIONS_HEADER: &str = "interactions.json";
    pub const INTERACTIONS_RECORDS: &str = "interactions.idx";
    /// The highest interaction number and where it was read to (file log).
    pub const TAIL: &str = "tail.json";
    /// The highest interaction number of a JetStream stream and where it
    /// was read to, named by the stream: `next` in a new process reads only
    /// what came after.
    pub const STREAM_TAIL_PREFIX: &str = "tail-";
    /// What this machine has seen of a JetStream stream, named by the
    /// stream: its messages, the end of each, and the stream it copies.
    pub const MIRROR_PREFIX: &str = "mirror-";
    pub const MIRROR_MESSAGES: &str = ".log";
    pub const MIRROR_ENDS: &str = ".idx";
    pub const MIRROR_HEADER: &str = ".json";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_git_patterns_name_the_same_files() {
        assert_eq!(STATE_DIR_PATTERN, format!("{STATE_DIR}/"));
        assert_eq!(
            CHECKPOINT_PATTERN,
            format!("{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}")
        );
    }
}
