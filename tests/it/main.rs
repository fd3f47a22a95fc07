//! One integration-test binary (every file under tests/ would link its own,
//! and with wasmtime inside that costs seconds each). A module per area.

mod alerts;
mod bad_input;
mod common;
mod conformance;
mod crash;
mod daemon;
mod daemon_hostile;
mod dashboard;
mod dashboard_browser;
mod foreign_lines;
mod fuzz_corpus;
mod jetstream;
mod layers;
mod log_cli;
mod log_store;
mod mcp;
mod nats;
mod pause;
mod plugin_cache;
mod plugin_polyglot;
mod plugin_scaffold;
mod plugin_trial;
mod plugin_wit;
mod plugins;
mod queue;
mod reads;
mod rendered;
mod sandbox;
mod snapshot;
mod sync;
mod terminal;
