//! Which of huddle's worlds a component implements: `huddle plugins check`
//! and the host's guard against a plugin put in the wrong slot.

use std::path::Path;

use wasmtime::component::Component;
use wasmtime::Engine;

/// A world of the WIT package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    HeadingMapper,
    Renderer,
    AlertSink,
}

/// A released version of the WIT package the host serves. Each is frozen:
/// a component built against any of them keeps working unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WitVersion {
    V0_1_0,
    V0_2_0,
}

impl WitVersion {
    /// Oldest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_1_0, WitVersion::V0_2_0];
    pub const LATEST: WitVersion = WitVersion::V0_2_0;

    pub fn number(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => "0.1.0",
            WitVersion::V0_2_0 => "0.2.0",
        }
    }
}

impl World {
    /// The world's name without its package version.
    pub fn base_name(self) -> &'static str {
        match self {
            World::HeadingMapper => "huddle:plugin/heading-mapper",
            World::Renderer => "huddle:plugin/renderer",
            World::AlertSink => "huddle:plugin/alert-sink",
        }
    }

    /// The world at a version, e.g. `huddle:plugin/renderer@0.2.0`.
    pub fn name_at(self, version: WitVersion) -> String {
        format!("{}@{}", self.base_name(), version.number())
    }

    /// What a slot of this world accepts, for messages.
    pub fn accepted(self) -> String {
        let versions: Vec<&str> = WitVersion::ALL.iter().map(|v| v.number()).collect();
        format!("{} (WIT {})", self.base_name(), versions.join(" or "))
    }

    /// The interface a component of this world exports, at a version.
    pub(crate) fn export(self, version: WitVersion) -> String {
        let interface = match self {
            World::HeadingMapper => "mapper",
            World::Renderer => "render",
            World::AlertSink => "sink",
        };
        format!("huddle:plugin/{interface}@{}", version.number())
    }

    const ALL: [World; 3] = [World::HeadingMapper, World::Renderer, World::AlertSink];
}

/// A world at a version: what a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Implements {
    pub world: World,
    pub version: WitVersion,
}

impl Implements {
    pub fn name(self) -> String {
        self.world.name_at(self.version)
    }
}

/// The world (and version) whose interface `component` exports, if any.
pub(crate) fn world_of(engine: &Engine, component: &Component) -> Option<Implements> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    WitVersion::ALL.into_iter().rev().find_map(|version| {
        World::ALL
            .into_iter()
            .find(|world| exports.iter().any(|name| *name == world.export(version)))
            .map(|world| Implements { world, version })
    })
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
         export one of huddle:plugin/mapper, huddle:plugin/render, huddle:plugin/sink at \
         version 0.2.0 (or 0.1.0), e.g. huddle:plugin/render@0.2.0 or huddle:plugin/render@0.1.0"
    )]
    NoWorld { path: String, exports: String },
    #[error("{path} exports {world} but cannot be linked: {message}")]
    Unlinkable {
        path: String,
        world: String,
        message: String,
    },
}

/// What [`check_file`] found, and how it got the compiled component.
#[derive(Debug, Clone)]
pub struct Checked {
    pub implements: Implements,
    pub ready: super::Preloaded,
}

/// Reads a file and says which world it implements, or exactly why it does not.
pub fn check_file(host: &super::PluginHost, path: &Path) -> Result<Checked, CheckError> {
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
    let (component, ready) =
        host.component_of_file(path, &bytes)
            .map_err(|e| CheckError::Invalid {
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
    host.pre_for_check(&spec, world.world)
        .map_err(|e| CheckError::Unlinkable {
            path: shown,
            world: world.name(),
            message: e.to_string(),
        })?;
    Ok(Checked {
        implements: world,
        ready,
    })
}
