//! communication.md and archive.md, generated from the log.

/// The region between these two lines of communication.md belongs to huddle;
/// everything outside it belongs to people and is kept byte for byte.
pub const BEGIN_MARKER: &str = "<!-- BEGIN COMMUNICATION -->";
pub const END_MARKER: &str = "<!-- END COMMUNICATION -->";

pub const COMMUNICATION_FILE: &str = "communication.md";
pub const ARCHIVE_FILE: &str = "archive.md";
