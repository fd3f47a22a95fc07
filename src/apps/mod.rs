//! The apps: long-running and composite programs built on the services. The
//! CLI in `src/main.rs` belongs here too.

pub mod daemon;
pub mod dashboard;
pub mod demo;
pub mod guard;
pub mod mcp;

/// An error and its causes, each said once: many errors quote their source
/// in their own message (`cannot read X: No such file`), and printing the
/// chain as it is would repeat it. The CLI and the MCP server word failures
/// with it alike.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let part = error.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        cause = error.source();
    }
    text
}
