//! The plugin slots of a huddle directory, as `huddle plugins list`,
//! `plugins warm` and `plugins check` report them: which plugin fills each
//! slot, whether it loads, and whether it accepts its settings in
//! huddle.toml. A setting a plugin refuses shows here, not as an `error`
//! event in the team's log at the next snapshot or delivery. The checks
//! live here; a client only presents the answers.

use std::path::Path;

use crate::model::config::ConfigError;
use crate::plugin::{read_plugin, PluginHost, PluginSource, Preloaded, Slot};
use crate::services::workspace::Workspace;

/// One slot of huddle.toml and the plugin in it.
#[derive(Debug)]
pub struct SlotStatus {
    pub slot: Slot,
    /// The plugin as huddle.toml names it (a file, or a built-in one).
    pub plugin: String,
    /// The WIT version it was built against, when it loads.
    pub wit: Option<&'static str>,
    /// Its sha256, or why its bytes cannot be read.
    pub sha256: Result<String, String>,
    /// Whether `configure` accepts its settings (`Err`: why not, or why it
    /// could not be loaded to ask).
    pub settings: Result<(), String>,
}

/// Every slot, with its plugin's version, checksum and verdict on its settings.
pub fn list(workspace: &Workspace, host: &PluginHost) -> Result<Vec<SlotStatus>, ConfigError> {
    Ok(workspace
        .plugin_specs()?
        .into_iter()
        .map(|(slot, spec)| SlotStatus {
            slot,
            plugin: spec.source.describe(),
            wit: host
                .wit_version(&spec, slot)
                .ok()
                .map(|version| version.number()),
            sha256: read_plugin(&spec)
                .map(|(_, sha)| sha)
                .map_err(|error| error.to_string()),
            settings: host
                .configure_only(&spec, slot)
                .map_err(|error| error.to_string()),
        })
        .collect())
}

/// A slot and what `configure` said of its settings (`Err`: why it refused).
pub type Verdict = (Slot, Result<(), String>);

/// The verdict of `configure` on its settings in every slot of huddle.toml
/// that names `file`; none when `dir` is not a huddle directory or no
/// slot names it.
pub fn configure_where_used(
    dir: &Path,
    host: &PluginHost,
    file: &Path,
) -> Result<Vec<Verdict>, ConfigError> {
    // Outside a huddle directory there are no settings to try.
    let Ok(workspace) = Workspace::open(dir) else {
        return Ok(Vec::new());
    };
    let Ok(wanted) = file.canonicalize() else {
        return Ok(Vec::new());
    };
    Ok(workspace
        .plugin_specs()?
        .into_iter()
        .filter(|(_, spec)| match &spec.source {
            PluginSource::File(path) => path.canonicalize().ok().as_ref() == Some(&wanted),
            PluginSource::Builtin(_) => false,
        })
        .map(|(slot, spec)| {
            let verdict = host
                .configure_only(&spec, slot)
                .map_err(|error| error.to_string());
            (slot, verdict)
        })
        .collect())
}

/// One slot's plugin compiled into (or loaded from) the compiled-artifact cache.
#[derive(Debug)]
pub struct Warmed {
    pub slot: Slot,
    pub plugin: String,
    pub outcome: Result<Preloaded, String>,
}

/// Compiles every slot's plugin into the cache, so the daemon's first
/// snapshot or delivery does not wait for it.
pub fn warm(workspace: &Workspace, host: &PluginHost) -> Result<Vec<Warmed>, ConfigError> {
    Ok(workspace
        .plugin_specs()?
        .into_iter()
        .map(|(slot, spec)| Warmed {
            slot,
            plugin: spec.source.describe(),
            outcome: host.preload(&spec, slot).map_err(|error| error.to_string()),
        })
        .collect())
}
