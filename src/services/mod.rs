//! The application services: what the CLI, the daemon, the MCP server and
//! the dashboard do, each once, on top of the backends and the plugin host.
//! The apps parse their input, call one service and present its answer.
//! Each service owns its section of huddle.toml and its files in the state
//! directory ([`crate::backend::state`]).

pub mod alerts;
pub mod checkpoint;
pub mod election;
pub mod feed;
pub mod health;
pub mod inbox;
pub mod migrate;
pub mod plugin_slots;
pub mod plugin_trial;
pub mod post;
pub mod resume;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod workspace;
