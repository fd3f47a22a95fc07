//! Compiled components cached on disk, so neither a CLI call nor a daemon's
//! start pays for compiling a plugin again (a component with a whole Python
//! or JavaScript interpreter takes seconds to compile, milliseconds to load).
//!
//! Location: `$HUDDLE_CACHE_DIR`, else `$XDG_CACHE_HOME/huddle`, else
//! `~/.cache/huddle`: a per-user cache, not the huddle directory's `.huddle/`,
//! because an artifact depends only on the component's bytes and the machine,
//! so every huddle directory of the user shares it (the built-in plugins are
//! compiled once per machine, not once per directory), and because the
//! huddle directory may be shared through git or a network file system with
//! people whose artifacts this process must not load.
//!
//! Loading an artifact maps machine code into the process without checking
//! it (`Component::deserialize` is `unsafe`), so an entry is trusted only
//! when all of these hold, and is otherwise compiled afresh and replaced:
//! - the directory and the file belong to this user and nobody else may
//!   write them (the directory is created `0700`, files `0600`);
//! - the file starts with huddle's header, whose key equals the one asked
//!   for: the sha256 of the component's bytes, the wasmtime version and the
//!   engine's compatibility hash (compiler settings, CPU features);
//! - the artifact's length and CRC-32, recorded in the header when huddle
//!   wrote it, match the bytes read (a damaged or truncated file fails
//!   here). A checksum against damage, not a signature: the trust comes
//!   from the ownership and modes above, and a CRC reads an interpreter's
//!   37 MB artifact several times faster than a sha256 does.
//!
//! The entry is mapped, not read: its bytes are checked and handed to
//! wasmtime straight from the page cache.
//!
//! A component is known by the sha256 of its bytes, and hashing an 18 MB
//! component costs more than loading its artifact. So the cache also keeps,
//! per plugin file, the sha256 it had with its stamp (device, inode, size,
//! modification and change times, in `stamps/`): a process that finds the
//! file with the same stamp takes the recorded sha256 without reading the
//! file. A file modified less than [`SETTLE`] ago is not recorded: two
//! writes within one tick of the file system's clock leave the same stamp.
//!
//! Entries are written to a temporary file in the same directory and renamed,
//! so a reader never sees a half-written artifact. The cache only speeds
//! things up: when it cannot be read or written, the component is compiled.

use std::fs::{DirBuilder, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

pub(crate) use crate::backend::files::FileStamp;

/// First bytes of every entry; the digit is the header format (v1 had a
/// sha256 of the artifact where v2 has its CRC-32).
const MAGIC: &[u8; 16] = b"huddle-cwasm-v2\n";
/// magic, component sha256, engine key, artifact length, artifact CRC-32.
const HEADER_LEN: usize = MAGIC.len() + 32 + 32 + 8 + 4;

/// How long a file's stamp must have stood still before its sha256 is
/// recorded with it (the file systems' timestamps tick in milliseconds).
const SETTLE: Duration = Duration::from_secs(2);
const STAMP_MAGIC: &str = "huddle-stamp-v1";

impl FileStamp {
    /// Unchanged for [`SETTLE`]: a write in the same clock tick as the
    /// last one would have shown by now.
    pub(crate) fn settled(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let settle = SETTLE.as_nanos() as i128;
        now - self.mtime_ns.max(self.ctime_ns) >= settle
    }

    fn line(&self, path: &Path, sha256: &str) -> String {
        format!(
            "{STAMP_MAGIC} {} {} {} {} {} {sha256} {}\n",
            self.dev,
            self.inode,
            self.len,
            self.mtime_ns,
            self.ctime_ns,
            path.display()
        )
    }
}

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from a cache entry whose key and checksum matched.
    Cached,
    /// Compiled now (no entry, or an entry that was not trusted).
    Compiled,
    /// Already loaded in this process.
    InMemory,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Cached => "loaded from the compiled-artifact cache",
            Origin::Compiled => "compiled",
            Origin::InMemory => "already loaded",
        }
    }
}

/// A component and how it was obtained.
pub(crate) struct Loaded {
    pub component: Component,
    pub origin: Origin,
    pub elapsed: Duration,
    /// Why an entry on disk was not used (absent when there was none).
    pub rejected: Option<String>,
}

pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    /// sha256 of the wasmtime version and the engine's compatibility hash.
    engine_key: [u8; 32],
    /// The component loaded last, by sha256: `plugins check` inspects a
    /// component and then links it, and must not load it twice.
    last: std::sync::Mutex<Option<(String, Component)>>,
}

impl ArtifactCache {
    /// `dir`, or else the default location.
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> ArtifactCache {
        let dir = dir
            .or_else(|| std::env::var_os("HUDDLE_CACHE_DIR").map(PathBuf::from))
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("huddle")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/huddle")));
        // The compatibility hash covers the target, the compiler's flags,
        // the engine's features and the wasmtime version (its
        // `module_version`). It is only `Hash`: feed it to a hasher that
        // forwards the bytes into sha256, so the key is stable across runs.
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache {
            dir,
            engine_key: hasher.0.finalize().into(),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The sha256 recorded for the file at `path` with this stamp, if any
    /// (and if the record may be trusted, like an entry).
    pub(crate) fn known_sha256(&self, path: &Path, stamp: &FileStamp) -> Option<String> {
        let (record, absolute) = self.stamp_record(path)?;
        let dir = record.parent()?;
        private_to_me(dir, "the stamps directory").ok()?;
        let meta = std::fs::symlink_metadata(&record).ok()?;
        if !meta.is_file() || owned_and_unwritable_by_others(&meta, "the stamp").is_err() {
            return None;
        }
        let text = std::fs::read_to_string(&record).ok()?;
        let sha = text
            .split(' ')
            .nth(6)
            .filter(|sha| sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))?;
        (text == stamp.line(&absolute, sha)).then(|| sha.to_string())
    }

    /// Records that the file at `path`, with this (settled) stamp, has
    /// this sha256. Best effort: without a record the file is hashed again.
    pub(crate) fn remember_sha256(&self, path: &Path, stamp: &FileStamp, sha256: &str) {
        let Some((record, absolute)) = self.stamp_record(path) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let dir = record.parent().ok_or(std::io::ErrorKind::NotFound)?;
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            private_to_me(dir, "the stamps directory").map_err(std::io::Error::other)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .tempfile_in(dir)?;
            tmp.write_all(stamp.line(&absolute, sha256).as_bytes())?;
            tmp.persist(&record).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(error) = write() {
            tracing::debug!(record = %record.display(), "cannot record a plugin's sha256: {error}");
        }
    }

    /// The record of `path`, named by the sha256 of its absolute path, and
    /// that path.
    fn stamp_record(&self, path: &Path) -> Option<(PathBuf, PathBuf)> {
        use std::os::unix::ffi::OsStrExt;
        let dir = self.dir.as_ref()?;
        let absolute = std::path::absolute(path).ok()?;
        let name = hex(&Sha256::digest(absolute.as_os_str().as_bytes())[..20]);
        Some((dir.join("stamps").join(name), absolute))
    }

    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let engine = hex(&self.engine_key[..8]);
        Some(dir.join(format!("{sha256}-{engine}.cwasm")))
    }

    /// The compiled component for `wasm`, from the cache or freshly compiled.
    /// `wasm` gives the component's bytes, read only to compile.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &dyn Fn() -> wasmtime::Result<std::sync::Arc<[u8]>>,
        sha256: &str,
    ) -> wasmtime::Result<Loaded> {
        let started = Instant::now();
        if let Some((sha, component)) = &*self.lock_last() {
            if sha == sha256 {
                return Ok(Loaded {
                    component: component.clone(),
                    origin: Origin::InMemory,
                    elapsed: started.elapsed(),
                    rejected: None,
                });
            }
        }
        let loaded = self.load_or_compile_anew(engine, wasm, sha256, started)?;
        *self.lock_last() = Some((sha256.to_string(), loaded.component.clone()));
        Ok(loaded)
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, Option<(String, Component)>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn load_or_compile_anew(
        &self,
        engine: &Engine,
        wasm: &dyn Fn() -> wasmtime::Result<std::sync::Arc<[u8]>>,
        sha256: &str,
        started: Instant,
    ) -> wasmtime::Result<Loaded> {
        let entry = self.entry(sha256);
        let mut rejected = None;
        if let Some(path) = &entry {
            match self.read_trusted(path, sha256) {
                Ok(Some(entry)) => {
                    // SAFETY: the bytes are an artifact this user's huddle
                    // wrote (owner and mode checked) for exactly this
                    // component and engine (key checked), unchanged since
                    // (checksum checked); wasmtime checks its own header too.
                    match unsafe { Component::deserialize(engine, &entry[HEADER_LEN..]) } {
                        Ok(component) => {
                            return Ok(Loaded {
                                component,
                                origin: Origin::Cached,
                                elapsed: started.elapsed(),
                                rejected: None,
                            })
                        }
                        Err(error) => rejected = Some(format!("{error:#}")),
                    }
                }
                Ok(None) => {}
                Err(reason) => rejected = Some(reason),
            }
        }
        if let (Some(reason), Some(path)) = (&rejected, &entry) {
            tracing::warn!(
                entry = %path.display(),
                "compiled-artifact cache entry not used, compiling again: {reason}"
            );
        }
        let component = Component::new(engine, &*wasm()?)?;
        if let Some(path) = entry {
            if let Err(error) = self.store(&path, sha256, &component) {
                tracing::debug!(entry = %path.display(), "cannot write the compiled-artifact cache: {error:#}");
            }
        }
        Ok(Loaded {
            component,
            origin: Origin::Compiled,
            elapsed: started.elapsed(),
            rejected,
        })
    }

    /// The artifact in `path`, if it may be trusted; `Ok(None)` if there is
    /// no entry, `Err` saying why an entry is refused.
    fn read_trusted(&self, path: &Path, sha256: &str) -> Result<Option<memmap2::Mmap>, String> {
        let dir = path.parent().ok_or("the entry has no directory")?;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("cannot open it: {error}")),
        };
        private_to_me(dir, "its directory")?;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        owned_and_unwritable_by_others(&meta, "it")?;
        // SAFETY: only this user may write the file (checked above), and
        // huddle never writes an entry in place: a new one is renamed over
        // it, which leaves this mapping on the old, unchanged file.
        let bytes =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map it: {e}"))?;
        let Some((header, artifact)) = bytes.split_at_checked(HEADER_LEN) else {
            return Err(format!(
                "it is {} bytes, shorter than huddle's header",
                bytes.len()
            ));
        };
        let (magic, rest) = header.split_at(MAGIC.len());
        if magic != MAGIC {
            if magic.starts_with(b"huddle-cwasm-v") {
                return Err(format!(
                    "it is in another version of huddle's header ({})",
                    String::from_utf8_lossy(magic).trim_end()
                ));
            }
            return Err("it does not start with huddle's header".into());
        }
        let (component_sha, rest) = rest.split_at(32);
        let (engine_key, rest) = rest.split_at(32);
        let (length, artifact_crc) = rest.split_at(8);
        if hex(component_sha) != sha256 {
            return Err(format!(
                "it was compiled from another component (sha256 {}), not {sha256}",
                hex(component_sha)
            ));
        }
        if engine_key != self.engine_key {
            return Err("it was compiled by another wasmtime or engine configuration".into());
        }
        let length = u64::from_le_bytes(length.try_into().map_err(|_| "bad length field")?);
        if length != artifact.len() as u64 {
            return Err(format!(
                "its header announces {length} bytes of artifact but {} follow",
                artifact.len()
            ));
        }
        if crc32fast::hash(artifact).to_le_bytes() != artifact_crc {
            return Err("its checksum does not match its bytes (damaged)".into());
        }
        Ok(Some(bytes))
    }

    fn store(&self, path: &Path, sha256: &str, component: &Component) -> anyhow::Result<()> {
        let artifact = component.serialize()?;
        let dir = path
            .parent()
            .ok_or_else(|| anyhow::anyhow!("the entry has no directory"))?;
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        private_to_me(dir, "the cache directory").map_err(anyhow::Error::msg)?;
        let component_sha = unhex(sha256).ok_or_else(|| anyhow::anyhow!("bad sha256 {sha256}"))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&component_sha);
        header.extend_from_slice(&self.engine_key);
        header.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(&artifact).to_le_bytes());
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)?;
        {
            let mut file = OpenOptions::new()
                .write(true)
                .mode(0o600)
                .open(tmp.path())?;
            file.write_all(&header)?;
            file.write_all(&artifact)?;
            file.sync_all()?;
        }
        tmp.persist(path)?;
        Ok(())
    }
}

/// The directory belongs to this user and only this user may write it.
fn private_to_me(dir: &Path, what: &str) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot stat {what}: {e}"))?;
    owned_and_unwritable_by_others(&meta, what)
}

fn owned_and_unwritable_by_others(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if meta.uid() != me {
        return Err(format!(
            "{what} belongs to uid {}, not to this user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} may be written by others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_in(dir: &Path) -> ArtifactCache {
        let engine = Engine::default();
        ArtifactCache::new(&engine, Some(dir.join("cache")))
    }

    fn stamp_of(path: &Path) -> FileStamp {
        FileStamp::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn a_recorded_sha256_is_found_for_the_same_file_and_stamp_only() {
        let temp = tempfile::tempdir().unwrap();
        let cache = cache_in(temp.path());
        let plugin = temp.path().join("plugin.wasm");
        std::fs::write(&plugin, b"first version").unwrap();
        let first = stamp_of(&plugin);
        let sha = "a".repeat(64);
        assert_eq!(cache.known_sha256(&plugin, &first), None);
        cache.remember_sha256(&plugin, &first, &sha);
        assert_eq!(cache.known_sha256(&plugin, &first), Some(sha.clone()));
        // Rewritten in place with as many bytes: another stamp, no answer.
        std::fs::write(&plugin, b"other version").unwrap();
        let second = stamp_of(&plugin);
        assert_ne!(first, second);
        assert_eq!(cache.known_sha256(&plugin, &second), None);
        // Another path with the same stamp is another file.
        let elsewhere = temp.path().join("elsewhere.wasm");
        assert_eq!(cache.known_sha256(&elsewhere, &first), None);
    }

    #[test]
    fn a_record_others_may_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let cache = cache_in(temp.path());
        let plugin = temp.path().join("plugin.wasm");
        std::fs::write(&plugin, b"bytes").unwrap();
        let stamp = stamp_of(&plugin);
        let sha = "b".repeat(64);
        cache.remember_sha256(&plugin, &stamp, &sha);
        let (record, _) = cache.stamp_record(&plugin).unwrap();
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.known_sha256(&plugin, &stamp), None);
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(cache.known_sha256(&plugin, &stamp), Some(sha));
        let stamps = record.parent().unwrap();
        std::fs::set_permissions(stamps, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(cache.known_sha256(&plugin, &stamp), None);
    }

    #[test]
    fn a_file_written_just_now_is_not_settled_an_old_one_is() {
        let temp = tempfile::tempdir().unwrap();
        let plugin = temp.path().join("plugin.wasm");
        std::fs::write(&plugin, b"bytes").unwrap();
        let fresh = stamp_of(&plugin);
        assert!(!fresh.settled());
        let old = FileStamp {
            mtime_ns: fresh.mtime_ns - 3_000_000_000,
            ctime_ns: fresh.ctime_ns - 3_000_000_000,
            ..fresh
        };
        assert!(old.settled());
        let touched_back = FileStamp {
            mtime_ns: fresh.mtime_ns - 3_000_000_000,
            ..fresh
        };
        assert!(!touched_back.settled(), "a recent change time counts");
    }
}
