//! Which of huddle's worlds a component implements: `huddle plugins check`
//! and the host's guard against a plugin put in the wrong slot.

use std::path::Path;

use wasmtime::component::Component;
use wasmtime::Engine;

/// A world of the WIT package, at a version the host serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    HeadingMapper,
    Renderer,
    AlertSink,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::HeadingMapper => "huddle:plugin/heading-mapper@0.1.0",
            World::Renderer => "huddle:plugin/renderer@0.1.0",
            World::AlertSink => "huddle:plugin/alert-sink@0.1.0",
        }
    }

    /// The interface a component of this world exports.
    fn export(self) -> &'static str {
        match self {
            World::HeadingMapper => "huddle:plugin/mapper@0.1.0",
            World::Renderer => "huddle:plugin/render@0.1.0",
            World::AlertSink => "huddle:plugin/sink@0.1.0",
        }
    }

    const ALL: [World; 3] = [World::HeadingMapper, World::Renderer, World::AlertSink];
}

/// The world whose interface `component` exports, if any.
pub(crate) fn world_of(engine: &Engine, component: &Component) -> Option<World> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    World::ALL
        .into_iter()
        .find(|world| exports.iter().any(|name| name == world.export()))
}

/// Why a file is not a usable plugin.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm { path: String },
    #[error(
        "{path} is a core WebAssembly module, not a component; build it for the \
         wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { path: String },
    #[error("{path} is not a valid component: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path} implements none of huddle's worlds: it exports [{exports}], but a plugin must \
         export one of huddle:plugin/mapper@0.1.0, huddle:plugin/render@0.1.0, huddle:plugin/sink@0.1.0"
    )]
    NoWorld { path: String, exports: String },
    #[error("{path} exports {world} but cannot be linked: {message}")]
    Unlinkable {
        path: String,
        world: &'static str,
        message: String,
    },
}

/// Reads a file and says which world it implements, or exactly why it does not.
pub fn check_file(host: &super::PluginHost, path: &Path) -> Result<World, CheckError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CheckError::Read {
        path: shown.clone(),
        source,
    })?;
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(CheckError::NotWasm { path: shown });
    }
    // Bytes 4..8: version 1 with layer 0 is a core module; layer 1 a component.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(CheckError::CoreModule { path: shown });
    }
    let engine = host.engine();
    let component = Component::new(engine, &bytes).map_err(|e| CheckError::Invalid {
        path: shown.clone(),
        message: format!("{e:#}"),
    })?;
    let Some(world) = world_of(engine, &component) else {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        return Err(CheckError::NoWorld {
            path: shown,
            exports: exports.join(", "),
        });
    };
    let spec = super::PluginSpec::new(super::PluginSource::File(path.to_path_buf()));
    host.pre_for_check(&spec, world)
        .map_err(|e| CheckError::Unlinkable {
            path: shown,
            world: world.name(),
            message: e.to_string(),
        })?;
    Ok(world)
}
