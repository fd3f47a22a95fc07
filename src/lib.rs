//! huddle: a team of agents coordinating through one append-only event log.
//!
//! The library is what the CLI, the daemon, the tests and the MCP server share:
//! - [`event`]: the event model and validation,
//! - [`log`]: the log store (locked appends, streaming reads, quarantine, offline queue),
//! - [`config`]: the settings file huddle.toml,
//! - [`workspace`]: creating a huddle directory,
//! - [`snapshot`]: communication.md and archive.md,
//! - [`demo`]: the README's first command,
//! - [`visible`]: text from the log made safe for terminals.

pub mod alerts;
pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod event;
mod files;
pub mod log;
pub mod pause;
pub mod plugin;
pub mod position;
pub mod services;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod sync;
pub mod visible;
pub mod workspace;

pub use backend::{Backend, EventStore, Position};
pub use config::Config;
pub use event::{Event, InteractionRef, NewEvent, ValidationError};
pub use log::{FileLog, StoreError};
