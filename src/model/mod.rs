//! The model: what huddle's data is, with no I/O beyond parsing — events and
//! their rules, positions in a log, huddle.toml, and text made safe to show.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod event;
pub mod names;
pub mod position;
pub mod visible;
