//! The apps: long-running and composite programs built on the services. The
//! CLI in `src/main.rs` belongs here too.

pub mod daemon;
pub mod demo;
