//! The application services: what the CLI, the daemon, the MCP server and
//! the dashboard do, each once, on top of the backends and the plugin host.
//! The apps parse their input, call one service and present its answer.

pub mod election;
pub mod inbox;
pub mod post;
pub mod resume;
