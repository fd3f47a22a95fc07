//! Compiled components cached on disk, so a CLI call does not pay for
//! compiling a plugin each time.
//!
//! Key: the wasm's sha256 and a hash of the engine's compatibility hash
//! (wasmtime version, compiler settings, CPU features). Location:
//! `$HUDDLE_CACHE_DIR`, else `$XDG_CACHE_HOME/huddle`, else `~/.cache/huddle`.
//! Entries are written to a temp file and renamed, so a reader never sees a
//! half-written artifact. The cache is only an accelerator: any failure to
//! read or write it falls back to compiling.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use wasmtime::component::Component;
use wasmtime::Engine;

pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ArtifactCache {
    /// `dir`, or else the default location.
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> ArtifactCache {
        let dir = dir
            .or_else(|| std::env::var_os("HUDDLE_CACHE_DIR").map(PathBuf::from))
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("huddle")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/huddle")));
        // DefaultHasher::new() uses fixed keys: stable for one build of huddle,
        // which is all a cache key needs (wasmtime re-checks on load anyway).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn entry(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.engine_key)))
    }

    /// The compiled component for `wasm`, from the cache or freshly compiled.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<Component> {
        let entry = self.entry(sha256);
        if let Some(path) = &entry {
            if path.exists() {
                // SAFETY: deserialising runs no code from the file, but trusts it
                // to be a wasmtime artifact. Only huddle writes this directory,
                // atomically, from components it compiled itself; wasmtime
                // checks the header, version and engine compatibility.
                if let Ok(component) = unsafe { Component::deserialize_file(engine, path) } {
                    return Ok(component);
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Some(path) = entry {
            let _ = store(&path, &component);
        }
        Ok(component)
    }
}

fn store(path: &std::path::Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let dir = path.parent().ok_or_else(|| anyhow::anyhow!("no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path)?;
    Ok(())
}
