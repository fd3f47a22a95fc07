//! The plugin host: heading mapping, rendering and alert sinks run as
//! sandboxed WebAssembly components (WIT package `huddle:plugin`, in `wit/`).
//!
//! The host owns correctness, plugins own presentation. Each call gets a fresh
//! `Store` from a cached pre-instance (a trap poisons an instance), a CPU
//! deadline (epoch interruption), a memory cap, and WASI with nothing granted:
//! no preopened directories, no environment, no sockets, no inherited stdio.
//! Plugins log through the `host-log` import into huddle's own log, and alert
//! sinks reach the network only through the `http` import, only to URLs on
//! their allowlist.

mod bindings;
mod builtin;
mod cache;
mod capabilities;
mod check;
mod host;
mod isolate;
mod limits;
pub mod scaffold;

pub use builtin::{builtin_wasm, BUILTINS};
pub use cache::Origin;
pub use capabilities::{
    Allowlist, HttpError, HttpGrant, HttpResponse, HttpSession, Reason, Refusal,
    MAX_REQUESTS_PER_CALL,
};
pub use check::{check_file, CheckError, Checked, Implements, WitVersion, World};
pub use host::{
    hex_sha256, part_weight, read_plugin, Alert, DeliveryError, Entry, Interaction, LogTap, Part,
    PartCutter, PluginHost, PluginLogLine, Preloaded, RenderContext, Section,
    MAX_INTERACTION_BYTES, MAX_OUTPUT_BYTES, PART_BYTES,
};
pub use isolate::{Heading, IsolatedEntry, Rendered, ENTRIES_PER_CALL, FAILED_CALL_BUDGET};
pub use scaffold::ScaffoldError;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The three kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    HeadingMapper,
    Renderer,
    AlertSink,
}

impl Slot {
    pub const ALL: [Slot; 3] = [Slot::HeadingMapper, Slot::Renderer, Slot::AlertSink];

    /// The slot's name in huddle.toml and its WIT world.
    pub fn name(self) -> &'static str {
        match self {
            Slot::HeadingMapper => "heading-mapper",
            Slot::Renderer => "renderer",
            Slot::AlertSink => "alert-sink",
        }
    }
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A default plugin compiled into huddle.
    Builtin(&'static str),
    /// A `.wasm` file named in huddle.toml.
    File(PathBuf),
}

impl PluginSource {
    /// A built-in name, or else a path (relative paths from `base`).
    pub fn resolve(name_or_path: &str, base: &Path) -> PluginSource {
        match BUILTINS.iter().find(|(name, _)| *name == name_or_path) {
            Some((name, _)) => PluginSource::Builtin(name),
            None => PluginSource::File(base.join(name_or_path)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PluginSource::Builtin(name) => format!("{name} (built-in)"),
            PluginSource::File(path) => path.display().to_string(),
        }
    }
}

/// Everything the host needs to run one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub source: PluginSource,
    /// Passed to the plugin's `configure`.
    pub settings: Vec<(String, String)>,
    /// CPU time one call may take.
    pub deadline: Duration,
    /// Cap on the plugin's linear memory.
    pub memory_bytes: usize,
    /// HTTP capability (alert sinks only); `None` denies every request.
    pub http: Option<HttpGrant>,
}

pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);
pub const DEFAULT_MEMORY_BYTES: usize = 64 * 1024 * 1024;

impl PluginSpec {
    pub fn builtin(name: &'static str) -> PluginSpec {
        PluginSpec::new(PluginSource::Builtin(name))
    }

    pub fn new(source: PluginSource) -> PluginSpec {
        PluginSpec {
            source,
            settings: Vec::new(),
            deadline: DEFAULT_DEADLINE,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            http: None,
        }
    }

    /// A short name for messages: the built-in name or the file name.
    pub fn name(&self) -> String {
        match &self.source {
            PluginSource::Builtin(name) => (*name).to_string(),
            PluginSource::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
        }
    }
}

/// What went wrong in a plugin call. Every variant names the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: cannot load {source_desc}: {message}")]
    Load {
        plugin: String,
        source_desc: String,
        message: String,
    },
    #[error("plugin {plugin}: {message}")]
    WrongWorld { plugin: String, message: String },
    #[error("plugin {plugin}: deadline of {deadline:?} exceeded")]
    DeadlineExceeded { plugin: String, deadline: Duration },
    #[error("plugin {plugin}: out of memory (limit {limit_bytes} bytes)")]
    OutOfMemory { plugin: String, limit_bytes: usize },
    #[error("plugin {plugin}: trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin}: configure refused its settings: {message}")]
    Configure { plugin: String, message: String },
    #[error("plugin {plugin}: returned an error: {message}")]
    Failed { plugin: String, message: String },
    #[error("plugin {plugin}: invalid output: {message}")]
    InvalidOutput { plugin: String, message: String },
}

impl PluginError {
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Load { plugin, .. }
            | PluginError::WrongWorld { plugin, .. }
            | PluginError::DeadlineExceeded { plugin, .. }
            | PluginError::OutOfMemory { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Configure { plugin, .. }
            | PluginError::Failed { plugin, .. }
            | PluginError::InvalidOutput { plugin, .. } => plugin,
        }
    }
}
