//! huddle: a team of agents coordinating through one append-only event log.
//!
//! The library is in layers; each uses only the layers below it (the test
//! `layers::no_module_imports_from_a_layer_above_its_own` checks it):
//!
//! 1. [`model`]: events, positions, huddle.toml, text made safe to show;
//! 2. [`backend`] (the storage seam, the file log, the in-memory log, the
//!    pause and its queue, the state directory) and [`plugin`] (the
//!    WebAssembly plugin host);
//! 3. [`services`]: what every client does — post, read what an agent has
//!    not handled and ack it, status, election, snapshots, alerts, git sync;
//! 4. [`apps`]: the daemon and the demo. The CLI (`src/main.rs`) is an app
//!    too: it parses arguments, calls one service and prints.
//!
//! The modules are also reachable by their short names (`huddle::event`,
//! `huddle::log`, `huddle::snapshot`, …), the paths earlier versions had.

pub mod apps;
pub mod backend;
pub mod model;
pub mod plugin;
pub mod services;

pub use apps::{daemon, demo};
pub use backend::file as log;
pub use backend::{pause, state};
pub use model::{config, event, position, visible};
pub use services::{alerts, checkpoint, snapshot, status, sync, workspace};

pub use backend::{Backend, EventStore, Position};
pub use config::Config;
pub use event::{Event, InteractionRef, NewEvent, ValidationError};
pub use log::{FileLog, StoreError};
