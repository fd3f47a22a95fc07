//! The engine, the linker and the per-call stores.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{Deterministic, WasiCtx, WasiCtxView, WasiView};

use super::bindings::v0_1_0 as v1;
use super::bindings::v0_2_0 as v2;
use super::cache::{ArtifactCache, FileStamp, Origin};
use super::capabilities::{HttpError, HttpResponse, HttpSession};
use super::check::{world_of, Implements, WitVersion, World};
use super::limits::{Limiter, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, MAX_TABLE_ELEMENTS};
use super::{builtin_wasm, PluginError, PluginSource, PluginSpec, BUILTINS};
use crate::model::event::Event;

/// An event as a WIT version's generated `event` record (the same fields
/// in every version so far).
macro_rules! wit_event {
    ($version:ident, $event:expr) => {{
        let event: &Event = $event;
        $version::types::Event {
            interaction: event.interaction,
            actor: event.actor.clone(),
            type_: event.kind.clone(),
            content: event.content.clone(),
            timestamp: event.timestamp.clone(),
            id: event.id.clone(),
            term: event.term,
        }
    }};
}

/// How often the epoch advances: the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Largest total text one call may return.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// Longest heading a mapper may return.
pub const MAX_HEADING_BYTES: usize = 256;
/// Plugin log lines kept per call (the rest are counted and dropped).
const MAX_LOG_LINES: usize = 1000;
const MAX_LOG_LINE_BYTES: usize = 4096;
/// Guest stderr kept to explain a trap (a Rust panic message lands there).
const STDERR_CAPTURE_BYTES: usize = 16 * 1024;

pub use v1::types::Section;

/// Content bytes (plus a per-entry allowance) in one `render-part` call.
pub const PART_BYTES: usize = 4 * 1024 * 1024;
/// Largest block one interaction may render to, all parts together.
pub const MAX_INTERACTION_BYTES: usize = 256 * 1024 * 1024;

/// What a render call is for (WIT 0.2.0 `render-context`; a 0.1.0
/// renderer gets only the section).
#[derive(Debug, Clone)]
pub struct RenderContext {
    pub section: Section,
    /// How many recent interactions communication.md shows.
    pub k: u32,
    /// The huddle directory's name.
    pub directory: String,
}

impl RenderContext {
    /// A context with only the section known.
    pub fn of(section: Section) -> RenderContext {
        RenderContext {
            section,
            k: 0,
            directory: String::new(),
        }
    }
}

/// An event with its heading, for the renderer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Shared: every event under one heading holds the same text.
    pub heading: std::sync::Arc<str>,
    pub event: Event,
}

/// One interaction and its visible events in log order.
#[derive(Debug, Clone)]
pub struct Interaction {
    pub number: u64,
    pub entries: Vec<Entry>,
}

/// An alert to deliver: an error event, possibly standing for several.
#[derive(Debug, Clone)]
pub struct Alert {
    pub event: Event,
    pub count: u32,
    pub source: String,
}

/// What one store holds: the WASI context (with nothing granted), the
/// resource limiter, the sink's HTTP grant, and what the plugin logged.
pub(crate) struct HostState {
    plugin: String,
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    http: Option<HttpSession>,
    log_lines: usize,
    /// Where `host-log` lines go instead of huddle's log (`huddle plugins test`).
    log_tap: Option<LogTap>,
}

/// A `host-log` line as the plugin wrote it (after the per-line cut).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLogLine {
    pub level: tracing::Level,
    pub message: String,
}

/// The `host-log` lines of every call made through a host since
/// [`PluginHost::tap_logs`], instead of huddle's own log.
#[derive(Debug, Clone, Default)]
pub struct LogTap(Arc<Mutex<Vec<PluginLogLine>>>);

impl LogTap {
    /// The lines written so far, leaving none behind.
    pub fn take(&self) -> Vec<PluginLogLine> {
        std::mem::take(&mut *lock(&self.0))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v1::types::Host for HostState {}
impl v2::types::Host for HostState {}

impl HostState {
    fn log_line(&mut self, level: tracing::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE_BYTES {
            let mut end = MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        // The tap's owner shows the lines itself (`huddle plugins test`).
        if let Some(tap) = &self.log_tap {
            lock(&tap.0).push(PluginLogLine { level, message });
            return;
        }
        let plugin = self.plugin.as_str();
        match level {
            tracing::Level::DEBUG | tracing::Level::TRACE => tracing::debug!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
        }
    }

    /// A POST through the sink's grant; `Err` if it has none.
    fn post(
        &mut self,
        url: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        let Some(session) = &mut self.http else {
            return Err(HttpError::Refused(
                super::capabilities::Refusal::no_capability(url),
            ));
        };
        let outcome = session.post_with_headers(url, content_type, headers, body);
        if let Err(refused) = &outcome {
            if session.worth_logging() {
                tracing::warn!(
                    plugin = self.plugin.as_str(),
                    "HTTP request refused or failed: {refused}"
                );
            }
        }
        outcome
    }
}

impl v1::host_log::Host for HostState {
    fn log(&mut self, level: v1::types::Level, message: String) {
        let level = match level {
            v1::types::Level::Debug => tracing::Level::DEBUG,
            v1::types::Level::Info => tracing::Level::INFO,
            v1::types::Level::Warn => tracing::Level::WARN,
            v1::types::Level::Error => tracing::Level::ERROR,
        };
        self.log_line(level, message);
    }
}

impl v2::host_log::Host for HostState {
    fn log(&mut self, level: v2::types::Level, message: String) {
        let level = match level {
            v2::types::Level::Debug => tracing::Level::DEBUG,
            v2::types::Level::Info => tracing::Level::INFO,
            v2::types::Level::Warn => tracing::Level::WARN,
            v2::types::Level::Error => tracing::Level::ERROR,
        };
        self.log_line(level, message);
    }
}

impl v1::http::Host for HostState {
    fn post(
        &mut self,
        url: String,
        content_type: String,
        body: Vec<u8>,
    ) -> Result<v1::http::Response, String> {
        // 0.1.0 had no typed errors and handed over a body cut at the limit.
        match HostState::post(self, &url, &content_type, &[], &body) {
            Ok(response) => Ok(v1::http::Response {
                status: response.status,
                body: response.body,
            }),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl v2::http::Host for HostState {
    fn post(
        &mut self,
        url: String,
        content_type: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<v2::http::Response, v2::http::HttpError> {
        use v2::http::HttpError as Wit;
        match HostState::post(self, &url, &content_type, &headers, &body) {
            Ok(response) if response.truncated => Err(Wit::ResponseTooLarge(v2::http::Response {
                status: response.status,
                body: response.body,
            })),
            Ok(response) => Ok(v2::http::Response {
                status: response.status,
                body: response.body,
            }),
            Err(HttpError::Refused(refusal)) => Err(Wit::NotAllowed(refusal.to_string())),
            Err(HttpError::HeaderNotAllowed { name, .. }) => Err(Wit::HeaderNotAllowed(name)),
            Err(HttpError::TooManyRequests) => Err(Wit::TooManyRequests),
            Err(timeout @ HttpError::Timeout { .. }) => Err(Wit::Timeout(timeout.to_string())),
            Err(failed @ HttpError::Failed { .. }) => {
                Err(Wit::ConnectionFailed(failed.to_string()))
            }
        }
    }
}

/// The clock a plugin sees: always the Unix epoch, never advancing.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The "random" bytes a plugin gets, over and over.
const FIXED_RANDOM: [u8; 8] = [0x68, 0x75, 0x64, 0x64, 0x6c, 0x65, 0x2d, 0x31];

/// A compiled plugin, pre-linked for its world.
#[derive(Clone)]
enum Pre {
    /// Called through its exported interface at `version` (checked at link
    /// time by the generated bindings).
    HeadingMapper(InstancePre<HostState>, WitVersion),
    Renderer(InstancePre<HostState>, WitVersion),
    AlertSinkV1(v1::alert_sink::AlertSinkPre<HostState>),
    AlertSinkV2(v2::alert_sink::AlertSinkPre<HostState>),
}

impl Pre {
    fn version(&self) -> WitVersion {
        match self {
            Pre::HeadingMapper(_, version) | Pre::Renderer(_, version) => *version,
            Pre::AlertSinkV1(_) => WitVersion::V0_1_0,
            Pre::AlertSinkV2(_) => WitVersion::V0_2_0,
        }
    }
}

/// A plugin's sha256, and its bytes when they had to be read to know it.
type Identified = (Option<Arc<[u8]>>, String);

/// What compiles a component and links it for a world; cheap to clone, so a
/// plugin swapped under a running daemon compiles on a thread of its own.
#[derive(Clone)]
struct Compiler {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Arc<ArtifactCache>,
}

/// A pre-instance and how its component was obtained.
struct Prepared {
    pre: Pre,
    origin: Origin,
    elapsed: Duration,
    rejected: Option<String>,
}

impl Compiler {
    /// Compiles (or loads from the cache) and pre-links a plugin for `world`.
    fn prepare(
        &self,
        spec: &PluginSpec,
        wasm: Option<Arc<[u8]>>,
        sha: &str,
        world: World,
    ) -> Result<Prepared, PluginError> {
        let plugin = spec.name();
        // The bytes are read only to compile: a cached artifact needs none.
        let bytes = || match &wasm {
            Some(wasm) => Ok(wasm.clone()),
            None => read_bytes_of(spec, sha).map_err(wasmtime::Error::msg),
        };
        let loaded = self
            .cache
            .load_or_compile(&self.engine, &bytes, sha)
            .map_err(|e| PluginError::Load {
                plugin: plugin.clone(),
                source_desc: spec.source.describe(),
                message: format!("{e:#}"),
            })?;
        let component = loaded.component;
        let found = world_of(&self.engine, &component);
        let Some(Implements { version, .. }) = found.filter(|found| found.world == world) else {
            return Err(PluginError::WrongWorld {
                plugin,
                message: match found {
                    Some(other) => format!(
                        "implements the {} world, but this slot needs {}",
                        other.name(),
                        world.accepted()
                    ),
                    None => format!(
                        "implements none of huddle's worlds; this slot needs {}",
                        world.accepted()
                    ),
                },
            });
        };
        let implements = Implements { world, version };
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            plugin: plugin.clone(),
            message: format!("cannot be linked as {}: {e:#}", implements.name()),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = match (world, version) {
            (World::HeadingMapper, WitVersion::V0_1_0) => {
                v1::heading_mapper::HeadingMapperPre::new(instance_pre.clone())
                    .map_err(wrong_world)?;
                Pre::HeadingMapper(instance_pre, version)
            }
            (World::HeadingMapper, WitVersion::V0_2_0) => {
                v2::heading_mapper::HeadingMapperPre::new(instance_pre.clone())
                    .map_err(wrong_world)?;
                Pre::HeadingMapper(instance_pre, version)
            }
            (World::Renderer, WitVersion::V0_1_0) => {
                v1::renderer::RendererPre::new(instance_pre.clone()).map_err(wrong_world)?;
                Pre::Renderer(instance_pre, version)
            }
            (World::Renderer, WitVersion::V0_2_0) => {
                v2::renderer::RendererPre::new(instance_pre.clone()).map_err(wrong_world)?;
                Pre::Renderer(instance_pre, version)
            }
            (World::AlertSink, WitVersion::V0_1_0) => Pre::AlertSinkV1(
                v1::alert_sink::AlertSinkPre::new(instance_pre).map_err(wrong_world)?,
            ),
            (World::AlertSink, WitVersion::V0_2_0) => Pre::AlertSinkV2(
                v2::alert_sink::AlertSinkPre::new(instance_pre).map_err(wrong_world)?,
            ),
        };
        Ok(Prepared {
            pre,
            origin: loaded.origin,
            elapsed: loaded.elapsed,
            rejected: loaded.rejected,
        })
    }
}

/// What a slot's plugin currently is, to notice (and log) a swap.
#[derive(Default)]
struct Swaps {
    /// Per plugin source and world: the sha256 serving and its pre-instance.
    serving: HashMap<String, (String, Pre)>,
    /// Pre-instance keys being compiled in the background.
    compiling: std::collections::HashSet<String>,
    /// Pre-instance keys whose background compile failed, with the error
    /// every call of that version reports.
    failed: HashMap<String, PluginError>,
}

/// One engine for the whole process, with its linker, the on-disk cache of
/// compiled components and the pre-instances already made.
pub struct PluginHost {
    compiler: Compiler,
    pres: Arc<Mutex<HashMap<String, Pre>>>,
    file_hashes: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
    swaps: Arc<Mutex<Swaps>>,
    /// A changed plugin compiles on a thread of its own while the one it
    /// replaces keeps serving (the daemon); otherwise the call compiles it.
    background_reload: std::sync::atomic::AtomicBool,
    log_tap: Option<LogTap>,
}

/// How [`PluginHost::preload`] got a plugin ready.
#[derive(Debug, Clone)]
pub struct Preloaded {
    pub origin: Origin,
    /// Time spent loading or compiling (zero when already in memory).
    pub elapsed: Duration,
    /// Why a compiled artifact found in the cache was not trusted.
    pub rejected: Option<String>,
}

/// How a host gets the instances and linear memories of its calls.
#[derive(Clone, Copy, PartialEq)]
enum Allocation {
    /// Mapped for each call and unmapped after it: nothing is held between
    /// calls (a daemon, whose memory must stay flat).
    OnDemand,
    /// From a pool reserved once, each memory's pages kept (reset) for the
    /// next call: a call does not fault in fresh pages nor unmap them, which
    /// took about half the CPU of a cold snapshot of a 1 GB log. For a
    /// command that makes many calls and then exits.
    Pooled,
}

/// What the pool holds, sized for the calls one command makes at once (a
/// snapshot: the mapper and two render workers, each with a second part
/// on a thread of its own), each with every instance, memory and table the
/// per-call limits allow, so no plugin that runs on demand fails here.
fn pool_config() -> wasmtime::PoolingAllocationConfig {
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    let stores = 16;
    pool.total_component_instances(stores)
        .total_core_instances(stores * MAX_INSTANCES as u32)
        .total_memories(stores * MAX_MEMORIES as u32)
        .total_tables(stores * MAX_TABLES as u32)
        .max_core_instances_per_component(MAX_INSTANCES as u32)
        .max_memories_per_component(MAX_MEMORIES as u32)
        .max_tables_per_component(MAX_TABLES as u32)
        .max_memories_per_module(MAX_MEMORIES as u32)
        .max_tables_per_module(MAX_TABLES as u32)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_core_instance_size(16 << 20)
        .max_component_instance_size(16 << 20)
        // Reuse the slots last used rather than warm new ones: resident
        // memory follows the calls made at once, not all calls made.
        .max_unused_warm_slots(0)
        .linear_memory_keep_resident(8 << 20)
        // Only the pages a call dirtied are reset (Linux 6.7 or later).
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

impl PluginHost {
    /// A host whose compiled-artifact cache is in the default place.
    pub fn new() -> anyhow::Result<PluginHost> {
        PluginHost::build(None, Allocation::OnDemand)
    }

    /// A host for a command that makes many plugin calls in a row and then
    /// exits (`huddle snapshot`): its calls' memories come from a pool and
    /// keep their pages between calls. Where the pool cannot be reserved,
    /// a host like [`PluginHost::new`]'s.
    pub fn for_many_calls() -> anyhow::Result<PluginHost> {
        PluginHost::build(None, Allocation::Pooled)
    }

    /// A host whose compiled-artifact cache is in `cache_dir`.
    pub fn with_cache_dir(cache_dir: PathBuf) -> anyhow::Result<PluginHost> {
        PluginHost::build(Some(cache_dir), Allocation::OnDemand)
    }

    fn build(cache_dir: Option<PathBuf>, allocation: Allocation) -> anyhow::Result<PluginHost> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let mut engine = None;
        if allocation == Allocation::Pooled {
            let mut pooled = config.clone();
            pooled
                .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool_config()));
            engine = match Engine::new(&pooled) {
                Ok(engine) => {
                    tracing::debug!("plugin host: calls take their memories from a pool");
                    Some(engine)
                }
                Err(error) => {
                    tracing::debug!(%error, "plugin host: no pool; memories are mapped per call");
                    None
                }
            };
        }
        let engine = match engine {
            Some(engine) => engine,
            None => Engine::new(&config)?,
        };
        start_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        // A wasm32-wasip2 guest imports WASI even when it uses none of it;
        // the context below grants nothing, so every such call fails closed.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        v1::host_log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v1::http::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v1::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v2::host_log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v2::http::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v2::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;

        let cache = Arc::new(ArtifactCache::new(&engine, cache_dir));
        Ok(PluginHost {
            compiler: Compiler {
                engine,
                linker,
                cache,
            },
            pres: Arc::new(Mutex::new(HashMap::new())),
            file_hashes: Mutex::new(HashMap::new()),
            swaps: Arc::new(Mutex::new(Swaps::default())),
            background_reload: std::sync::atomic::AtomicBool::new(false),
            log_tap: None,
        })
    }

    /// From now on every `host-log` line a plugin writes through this host
    /// goes to the returned tap instead of huddle's log.
    pub fn tap_logs(&mut self) -> LogTap {
        self.log_tap.get_or_insert_with(LogTap::default).clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.compiler.engine
    }

    /// Where compiled components are cached, if anywhere.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.compiler.cache.dir()
    }

    /// From now on, a plugin whose bytes changed is compiled on a thread of
    /// its own and the version it replaces keeps serving until it is ready,
    /// so a daemon never stalls on a big component. The switch is logged.
    pub fn reload_in_background(&self) {
        self.background_reload
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A plugin's sha256 (hex), and its bytes if they had to be read to
    /// know it. A file's hash is remembered (in memory, and in the cache
    /// for later processes) with its stamp, and taken from there while the
    /// stamp stays the same: the file is then not read at all.
    fn identify(&self, spec: &PluginSpec) -> Result<Identified, PluginError> {
        let path = match &spec.source {
            PluginSource::File(path) => path,
            // Only the sha: `prepare` copies the embedded bytes if it must
            // compile (a copy of a built-in per call was megabytes per call).
            PluginSource::Builtin(name) => {
                let wasm = builtin_wasm(name).ok_or_else(|| {
                    load_error(spec, format!("there is no built-in plugin {name:?}"))
                })?;
                return Ok((None, builtin_sha256(name, wasm)));
            }
        };
        let stamp = std::fs::metadata(path)
            .map(|meta| FileStamp::of(&meta))
            .map_err(|e| file_error(spec, &e))?;
        if let Some((seen, sha)) = lock(&self.file_hashes).get(path) {
            if *seen == stamp {
                return Ok((None, sha.clone()));
            }
        }
        if let Some(sha) = self.compiler.cache.known_sha256(path, &stamp) {
            lock(&self.file_hashes).insert(path.clone(), (stamp, sha.clone()));
            return Ok((None, sha));
        }
        let wasm: Arc<[u8]> = std::fs::read(path)
            .map_err(|e| file_error(spec, &e))?
            .into();
        let sha = self.remember_file(path, stamp, &wasm);
        Ok((Some(wasm), sha))
    }

    /// The sha256 of `wasm`, read from `path` when it had `stamp`;
    /// remembered with the stamp if the file did not change meanwhile.
    fn remember_file(&self, path: &std::path::Path, stamp: FileStamp, wasm: &[u8]) -> String {
        let sha = hex_sha256(wasm);
        let unchanged = std::fs::metadata(path).is_ok_and(|meta| FileStamp::of(&meta) == stamp)
            && stamp.len() == wasm.len() as u64;
        // A stamp younger than a tick of the file system's clock could
        // also be the stamp of a write still to come: hash such a file again.
        if unchanged && stamp.settled() {
            lock(&self.file_hashes).insert(path.to_path_buf(), (stamp, sha.clone()));
            self.compiler.cache.remember_sha256(path, &stamp, &sha);
        }
        sha
    }

    fn pre(&self, spec: &PluginSpec, world: World) -> Result<Pre, PluginError> {
        self.pre_timed(spec, world).map(|(pre, _)| pre)
    }

    /// The pre-instance of a plugin for `world`: already in memory, loaded
    /// from the cache, or compiled.
    fn pre_timed(&self, spec: &PluginSpec, world: World) -> Result<(Pre, Preloaded), PluginError> {
        let (wasm, sha) = self.identify(spec)?;
        let key = format!("{sha}/{}", world.base_name());
        let slot = slot_key(spec, world);
        if let Some(pre) = lock(&self.pres).get(&key).cloned() {
            self.now_serving(spec, &slot, &sha, &pre);
            let ready = Preloaded {
                origin: Origin::InMemory,
                elapsed: Duration::ZERO,
                rejected: None,
            };
            return Ok((pre, ready));
        }
        if self
            .background_reload
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let mut swaps = lock(&self.swaps);
            if let Some(error) = swaps.failed.get(&key) {
                return Err(error.clone());
            }
            if let Some((_, serving)) = swaps.serving.get(&slot) {
                let serving = serving.clone();
                if swaps.compiling.insert(key.clone()) {
                    self.compile_in_background(spec, wasm, sha, world, key);
                }
                let ready = Preloaded {
                    origin: Origin::InMemory,
                    elapsed: Duration::ZERO,
                    rejected: None,
                };
                return Ok((serving, ready));
            }
        }
        let prepared = self.compiler.prepare(spec, wasm, &sha, world)?;
        lock(&self.pres).insert(key, prepared.pre.clone());
        self.now_serving(spec, &slot, &sha, &prepared.pre);
        let ready = Preloaded {
            origin: prepared.origin,
            elapsed: prepared.elapsed,
            rejected: prepared.rejected,
        };
        Ok((prepared.pre, ready))
    }

    /// The sha256 of the version of `spec` a call made now would run: the
    /// file's, or, while a changed file compiles in the background, the
    /// version still serving. Whatever caches a plugin's output keys it by
    /// this, so output of the previous version is never filed under the new.
    pub fn serving_sha(&self, spec: &PluginSpec, slot: super::Slot) -> Result<String, PluginError> {
        let (_, sha) = self.identify(spec)?;
        let world = world_for(slot);
        if !self
            .background_reload
            .load(std::sync::atomic::Ordering::Relaxed)
            || lock(&self.pres).contains_key(&format!("{sha}/{}", world.base_name()))
        {
            return Ok(sha);
        }
        let swaps = lock(&self.swaps);
        match swaps.serving.get(&slot_key(spec, world)) {
            Some((serving, _)) => Ok(serving.clone()),
            None => Ok(sha),
        }
    }

    /// Records which version of a slot's plugin serves; a change of version
    /// is a reload, and huddle's log names it.
    fn now_serving(&self, spec: &PluginSpec, slot: &str, sha: &str, pre: &Pre) {
        let mut swaps = lock(&self.swaps);
        let previous = swaps
            .serving
            .insert(slot.to_string(), (sha.to_string(), pre.clone()));
        if let Some((was, _)) = previous {
            if was != sha {
                tracing::info!(
                    plugin = spec.name().as_str(),
                    source = %spec.source.describe(),
                    "plugin reloaded: sha256 {} replaces {}",
                    short(sha),
                    short(&was)
                );
            }
        }
    }

    fn compile_in_background(
        &self,
        spec: &PluginSpec,
        wasm: Option<Arc<[u8]>>,
        sha: String,
        world: World,
        key: String,
    ) {
        let compiler = self.compiler.clone();
        let pres = self.pres.clone();
        let swaps = self.swaps.clone();
        let spec = spec.clone();
        tracing::info!(
            plugin = spec.name().as_str(),
            "plugin changed (sha256 {}): preparing it while the previous version keeps serving",
            short(&sha)
        );
        let work = move || {
            let outcome = compiler.prepare(&spec, wasm, &sha, world);
            let mut swaps = lock(&swaps);
            swaps.compiling.remove(&key);
            match outcome {
                Ok(prepared) => {
                    tracing::info!(
                        plugin = spec.name().as_str(),
                        "plugin sha256 {} ready ({} in {} ms); it serves from the next call",
                        short(&sha),
                        prepared.origin.describe(),
                        prepared.elapsed.as_millis()
                    );
                    lock(&pres).insert(key, prepared.pre);
                }
                Err(error) => {
                    tracing::error!(%error, "the changed plugin cannot be used");
                    swaps.failed.insert(key, error);
                }
            }
        };
        if let Err(error) = std::thread::Builder::new()
            .name("huddle-plugin-compile".into())
            .spawn(work)
        {
            tracing::error!(%error, "cannot start a thread to compile a changed plugin");
        }
    }

    /// Compiles (or loads from the cache) and links a plugin for `slot`
    /// without calling it, so the first real call pays no compile time.
    pub fn preload(&self, spec: &PluginSpec, slot: super::Slot) -> Result<Preloaded, PluginError> {
        self.pre_timed(spec, world_for(slot))
            .map(|(_, ready)| ready)
    }

    /// Instantiates a plugin for `slot` and calls only its `configure`, with
    /// the spec's settings: `plugins check` and `plugins list` catch a
    /// refused (say misspelt) setting before a snapshot or a delivery does.
    pub fn configure_only(&self, spec: &PluginSpec, slot: super::Slot) -> Result<(), PluginError> {
        let world = world_for(slot);
        let pre = self.pre(spec, world)?;
        self.call(spec, |store| {
            let outcome = match &pre {
                Pre::HeadingMapper(pre, version) | Pre::Renderer(pre, version) => {
                    let instance = pre.instantiate(&mut *store)?;
                    configure(
                        &instance,
                        &mut *store,
                        &world.export(*version),
                        &spec.settings,
                    )?
                }
                Pre::AlertSinkV1(pre) => pre
                    .instantiate(&mut *store)?
                    .huddle_plugin_sink()
                    .call_configure(&mut *store, &spec.settings)?,
                Pre::AlertSinkV2(pre) => pre
                    .instantiate(&mut *store)?
                    .huddle_plugin_sink()
                    .call_configure(&mut *store, &spec.settings)?,
            };
            Ok(outcome.map_err(Refusal::Configure))
        })
    }

    /// The component in `wasm`, the bytes of the file at `path`: loaded from
    /// the compiled-artifact cache, or compiled into it, so `plugins check`
    /// (and `plugins test`) pay for an interpreter-sized component once.
    pub(crate) fn component_of_file(
        &self,
        path: &std::path::Path,
        wasm: &[u8],
    ) -> wasmtime::Result<(wasmtime::component::Component, Preloaded)> {
        let stamp = FileStamp::of(&std::fs::metadata(path)?);
        let sha = self.remember_file(path, stamp, wasm);
        let bytes = || Ok(Arc::from(wasm));
        let loaded = self
            .compiler
            .cache
            .load_or_compile(&self.compiler.engine, &bytes, &sha)?;
        let ready = Preloaded {
            origin: loaded.origin,
            elapsed: loaded.elapsed,
            rejected: loaded.rejected,
        };
        Ok((loaded.component, ready))
    }

    /// Links a plugin for `world` without calling it (for `plugins check`).
    pub(crate) fn pre_for_check(&self, spec: &PluginSpec, world: World) -> Result<(), PluginError> {
        self.pre(spec, world).map(|_| ())
    }

    /// A fresh store with nothing granted but what `spec` says.
    fn store(&self, spec: &PluginSpec) -> (Store<HostState>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let mut wasi = WasiCtx::builder();
        // No clock and no randomness beyond what the host hands over: a
        // plugin sees the epoch and a fixed byte cycle, so the same inputs
        // give the same output on every call and every machine.
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(Deterministic::new(FIXED_RANDOM.to_vec()))
            .insecure_random(Deterministic::new(FIXED_RANDOM.to_vec()))
            .insecure_random_seed(0);
        let state = HostState {
            plugin: spec.name(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(spec.memory_bytes),
            http: spec.http.clone().map(HttpSession::new),
            log_lines: 0,
            log_tap: self.log_tap.clone(),
        };
        let mut store = Store::new(&self.compiler.engine, state);
        store.limiter(|state| &mut state.limiter);
        let ticks = spec
            .deadline
            .as_micros()
            .div_ceil(EPOCH_TICK.as_micros())
            .max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        // The deadline bounds the plugin's own running time: time it spent
        // waiting on `http.post` (bounded by the request timeout and count)
        // is given back, so a slow server is a timeout, not a runaway plugin.
        store.epoch_deadline_callback(|mut store| {
            let waited = store
                .data_mut()
                .http
                .as_mut()
                .map_or(Duration::ZERO, HttpSession::take_waited);
            let ticks = waited.as_micros().div_ceil(EPOCH_TICK.as_micros());
            Ok(match u64::try_from(ticks).unwrap_or(u64::MAX >> 1) {
                0 => wasmtime::UpdateDeadline::Interrupt,
                ticks => wasmtime::UpdateDeadline::Continue(ticks),
            })
        });
        (store, stderr)
    }

    /// Runs one call in a fresh store and turns its outcome into the typed
    /// result.
    ///
    /// wasmtime-wasi's synchronous bindings serve every WASI call a guest
    /// makes (a write to stdout or stderr, a panic message, the clock) with
    /// `Handle::block_on` whenever the calling thread is inside a tokio
    /// runtime, which panics there and would take the whole process down. A
    /// call made from async code therefore runs on a thread of its own.
    fn call<T: Send>(
        &self,
        spec: &PluginSpec,
        work: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<Result<T, Refusal>> + Send,
    ) -> Result<T, PluginError> {
        let run = || {
            let (mut store, stderr) = self.store(spec);
            let outcome = work(&mut store);
            settle(spec, &store, &stderr, outcome)
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return run();
        }
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("huddle-plugin".into())
                .spawn_scoped(scope, run);
            match worker {
                Ok(worker) => worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(error) => Err(PluginError::Trap {
                    plugin: spec.name(),
                    message: format!("cannot start a thread for the call: {error}"),
                }),
            }
        })
    }

    /// One heading (or none, to hide) per event, in one call; only their
    /// number is checked.
    pub(crate) fn headings_unchecked(
        &self,
        spec: &PluginSpec,
        events: &[Event],
    ) -> Result<Vec<Option<String>>, PluginError> {
        let Pre::HeadingMapper(pre, version) = self.pre(spec, World::HeadingMapper)? else {
            unreachable!("pre() returns the world it was asked for")
        };
        let interface = World::HeadingMapper.export(version);
        let views: Vec<EventView<'_>> = events.iter().map(EventView::of).collect();
        let headings = self.call(spec, |store| {
            let instance = pre.instantiate(&mut *store)?;
            if let Err(message) = configure(&instance, &mut *store, &interface, &spec.settings)? {
                return Ok(Err(Refusal::Configure(message)));
            }
            let headings = export::<(&[EventView<'_>],), (Vec<Option<String>>,)>(
                &instance,
                &mut *store,
                &interface,
                "headings",
            )?;
            let (headings,) = headings.call(&mut *store, (&views,))?;
            Ok(Ok(headings))
        })?;
        let invalid = |message: String| PluginError::InvalidOutput {
            plugin: spec.name(),
            message,
        };
        if headings.len() != events.len() {
            return Err(invalid(format!(
                "returned {} headings for {} events",
                headings.len(),
                events.len()
            )));
        }
        Ok(headings)
    }

    /// One heading (or none, to hide) per event, in one call; every
    /// heading is checked (length, control characters). The snapshot uses
    /// [`PluginHost::headings_isolating`], which leaves out only the events
    /// whose heading fails the check.
    pub fn headings(
        &self,
        spec: &PluginSpec,
        events: &[Event],
    ) -> Result<Vec<Option<String>>, PluginError> {
        let headings = self.headings_unchecked(spec, events)?;
        for heading in headings.iter().flatten() {
            if let Some(message) = super::isolate::heading_problem(heading) {
                return Err(PluginError::InvalidOutput {
                    plugin: spec.name(),
                    message,
                });
            }
        }
        Ok(headings)
    }

    /// One block of text per interaction, in one call, for `section`
    /// (a 0.2.0 renderer gets K = 0 and no directory name).
    pub fn render(
        &self,
        spec: &PluginSpec,
        section: Section,
        interactions: &[Interaction],
    ) -> Result<Vec<String>, PluginError> {
        self.render_in(spec, &RenderContext::of(section), interactions)
    }

    /// One block of text per interaction, in one call.
    pub fn render_in(
        &self,
        spec: &PluginSpec,
        context: &RenderContext,
        interactions: &[Interaction],
    ) -> Result<Vec<String>, PluginError> {
        let Pre::Renderer(pre, version) = self.pre(spec, World::Renderer)? else {
            unreachable!("pre() returns the world it was asked for")
        };
        let interface = World::Renderer.export(version);
        let entries: Vec<Vec<EntryView<'_>>> = interactions
            .iter()
            .map(|interaction| interaction.entries.iter().map(EntryView::of).collect())
            .collect();
        let views: Vec<InteractionView<'_>> = interactions
            .iter()
            .zip(&entries)
            .map(|(interaction, entries)| InteractionView {
                number: interaction.number,
                entries,
            })
            .collect();
        let blocks = self.call(spec, |store| {
            let instance = pre.instantiate(&mut *store)?;
            if let Err(message) = configure(&instance, &mut *store, &interface, &spec.settings)? {
                return Ok(Err(Refusal::Configure(message)));
            }
            let (blocks,) = match version {
                WitVersion::V0_1_0 => export::<
                    (Section, &[InteractionView<'_>]),
                    (Result<Vec<String>, String>,),
                >(
                    &instance, &mut *store, &interface, "render"
                )?
                .call(&mut *store, (context.section, &views))?,
                WitVersion::V0_2_0 => {
                    export::<
                        (ContextView<'_>, &[InteractionView<'_>]),
                        (Result<Vec<String>, String>,),
                    >(&instance, &mut *store, &interface, "render")?
                    .call(&mut *store, (ContextView::of(context), &views))?
                }
            };
            Ok(blocks.map_err(Refusal::Failed))
        })?;
        let invalid = |message: String| PluginError::InvalidOutput {
            plugin: spec.name(),
            message,
        };
        if blocks.len() != interactions.len() {
            return Err(invalid(format!(
                "returned {} blocks for {} interactions",
                blocks.len(),
                interactions.len()
            )));
        }
        let total: usize = blocks.iter().map(String::len).sum();
        if total > MAX_OUTPUT_BYTES {
            return Err(invalid(format!(
                "returned {total} bytes, over the limit of {MAX_OUTPUT_BYTES} bytes per call"
            )));
        }
        Ok(blocks)
    }

    /// Renders one part of an interaction too large for one `render` call
    /// (see [`PartCutter`] for where parts are cut), with the limits of
    /// one call. `Ok(None)`: the renderer is built against WIT 0.1.0.
    pub fn render_part(
        &self,
        spec: &PluginSpec,
        context: &RenderContext,
        part: &Part<'_>,
    ) -> Result<Option<String>, PluginError> {
        let Some(renderer) = self.part_renderer(spec)? else {
            return Ok(None);
        };
        self.call_render_part(spec, &renderer, context, part)
            .map(Some)
    }

    /// The renderer's instance-pre and its export, if it renders in parts.
    fn part_renderer(&self, spec: &PluginSpec) -> Result<Option<PartRenderer>, PluginError> {
        let Pre::Renderer(pre, version) = self.pre(spec, World::Renderer)? else {
            unreachable!("pre() returns the world it was asked for")
        };
        if version < WitVersion::V0_2_0 {
            return Ok(None);
        }
        Ok(Some(PartRenderer {
            pre,
            interface: World::Renderer.export(version),
        }))
    }

    fn call_render_part(
        &self,
        spec: &PluginSpec,
        renderer: &PartRenderer,
        context: &RenderContext,
        part: &Part<'_>,
    ) -> Result<String, PluginError> {
        let entries: Vec<EntryView<'_>> = part.entries.iter().map(EntryView::of).collect();
        let view = PartView {
            number: part.number,
            entries: &entries,
            first: part.first,
            last: part.last,
        };
        let PartRenderer { pre, interface } = renderer;
        let text = self.call(spec, |store| {
            let instance = pre.instantiate(&mut *store)?;
            if let Err(message) = configure(&instance, &mut *store, interface, &spec.settings)? {
                return Ok(Err(Refusal::Configure(message)));
            }
            let (text,) = export::<(ContextView<'_>, PartView<'_>), (Result<String, String>,)>(
                &instance,
                &mut *store,
                interface,
                "render-part",
            )?
            .call(&mut *store, (ContextView::of(context), view))?;
            Ok(text.map_err(Refusal::Failed))
        })?;
        if text.len() > MAX_OUTPUT_BYTES {
            return Err(PluginError::InvalidOutput {
                plugin: spec.name(),
                message: format!(
                    "returned {} bytes for part {} of interaction {}, over the limit of \
                     {MAX_OUTPUT_BYTES} bytes per call",
                    text.len(),
                    part.index + 1,
                    part.number
                ),
            });
        }
        Ok(text)
    }

    /// The WIT version a plugin was built against (loading it if needed).
    pub fn wit_version(
        &self,
        spec: &PluginSpec,
        slot: super::Slot,
    ) -> Result<WitVersion, PluginError> {
        Ok(self.pre(spec, world_for(slot))?.version())
    }

    /// Renders one interaction in parts of at most `entries_per_part`
    /// entries and [`PART_BYTES`] of content, one call each (each with its
    /// own deadline and output limit), and concatenates them: for an
    /// interaction too large for one `render` call. `Ok(None)`: the
    /// renderer is built against WIT 0.1.0, which cannot render in parts.
    pub fn render_in_parts(
        &self,
        spec: &PluginSpec,
        context: &RenderContext,
        interaction: &Interaction,
        entries_per_part: usize,
    ) -> Result<Option<String>, PluginError> {
        let Some(renderer) = self.part_renderer(spec)? else {
            return Ok(None);
        };
        let invalid = |message: String| PluginError::InvalidOutput {
            plugin: spec.name(),
            message,
        };
        let slices = part_slices(&interaction.entries, entries_per_part);
        let count = slices.len();
        let render_part = |n: usize| -> Result<String, PluginError> {
            let part = Part {
                number: interaction.number,
                index: n,
                entries: &interaction.entries[slices[n].clone()],
                first: n == 0,
                last: n + 1 == count,
            };
            self.call_render_part(spec, &renderer, context, &part)
        };
        // Two parts at a time, the second on a thread of its own: each call
        // has its own store, and a huge interaction would otherwise keep
        // one core busy while the other waits. Taken in order, so what
        // fails first in the interaction is what is reported, and at most
        // two parts are held beside the block.
        let mut block = String::new();
        let mut n = 0;
        while n < count {
            let texts = if n + 1 < count {
                std::thread::scope(|scope| {
                    let second = std::thread::Builder::new()
                        .name("huddle-part".into())
                        .spawn_scoped(scope, || render_part(n + 1));
                    let first = render_part(n);
                    match second {
                        Ok(second) => [
                            Some(first),
                            Some(
                                second
                                    .join()
                                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                            ),
                        ],
                        // No thread to be had: one part at a time.
                        Err(_) => [Some(first), None],
                    }
                })
            } else {
                [Some(render_part(n)), None]
            };
            for text in texts.into_iter().flatten() {
                let text = text?;
                if block.len() + text.len() > MAX_INTERACTION_BYTES {
                    return Err(invalid(format!(
                        "interaction {} renders to more than {MAX_INTERACTION_BYTES} bytes",
                        interaction.number
                    )));
                }
                block.push_str(&text);
                n += 1;
            }
        }
        Ok(Some(block))
    }

    /// Delivers a batch of alerts in one call. `Ok(Err(..))` is the sink's
    /// own verdict (transient or permanent); `Err` is a contained failure.
    pub fn deliver(
        &self,
        spec: &PluginSpec,
        alerts: &[Alert],
    ) -> Result<Result<(), DeliveryError>, PluginError> {
        let pre = self.pre(spec, World::AlertSink)?;
        // The same call through each version's generated types.
        macro_rules! deliver_through {
            ($version:ident, $pre:expr) => {{
                use $version::alert_sink::exports::huddle::plugin::sink::DeliveryError as Wit;
                let wit: Vec<$version::types::Alert> = alerts
                    .iter()
                    .map(|a| $version::types::Alert {
                        event: wit_event!($version, &a.event),
                        count: a.count,
                        source: a.source.clone(),
                    })
                    .collect();
                self.call(spec, |store| {
                    let bindings = $pre.instantiate(&mut *store)?;
                    let sink = bindings.huddle_plugin_sink();
                    if let Err(message) = sink.call_configure(&mut *store, &spec.settings)? {
                        return Ok(Err(Refusal::Configure(message)));
                    }
                    sink.call_deliver(&mut *store, &wit).map(Ok)
                })?
                .map_err(|e| match e {
                    Wit::Transient(m) => DeliveryError::Transient(m),
                    Wit::Permanent(m) => DeliveryError::Permanent(m),
                })
            }};
        }
        let verdict = match pre {
            Pre::AlertSinkV1(pre) => deliver_through!(v1, pre),
            Pre::AlertSinkV2(pre) => deliver_through!(v2, pre),
            Pre::HeadingMapper(..) | Pre::Renderer(..) => {
                unreachable!("pre() returns the world it was asked for")
            }
        };
        Ok(verdict)
    }
}

/// A sink's own report of a failed delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A plugin's own "no", as opposed to a trap.
enum Refusal {
    Configure(String),
    Failed(String),
}

/// Turns the outcome of a call into the typed result: a wasmtime error
/// becomes deadline / out of memory / trap; a refusal keeps its message.
fn settle<T>(
    spec: &PluginSpec,
    store: &Store<HostState>,
    stderr: &MemoryOutputPipe,
    outcome: wasmtime::Result<Result<T, Refusal>>,
) -> Result<T, PluginError> {
    let plugin = spec.name();
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Refusal::Configure(message))) => Err(PluginError::Configure { plugin, message }),
        Ok(Err(Refusal::Failed(message))) => Err(PluginError::Failed { plugin, message }),
        Err(error) => {
            if store.data().limiter.memory_exhausted {
                return Err(PluginError::OutOfMemory {
                    plugin,
                    limit_bytes: spec.memory_bytes,
                });
            }
            if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                return Err(PluginError::DeadlineExceeded {
                    plugin,
                    deadline: spec.deadline,
                });
            }
            // The trap itself, not the wasm backtrace of unnamed functions
            // wrapped around it, nor the guest's hint about RUST_BACKTRACE
            // (which cannot reach a plugin).
            let what = match error.downcast_ref::<Trap>() {
                // A trap says "wasm trap: …" itself.
                Some(trap) => trap.to_string(),
                None => format!("{error:#}"),
            };
            let said = String::from_utf8_lossy(&stderr.contents())
                .lines()
                .filter(|line| !line.starts_with("note: run with `RUST_BACKTRACE"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string();
            let message = if said.is_empty() {
                what
            } else {
                format!("{said} ({what})")
            };
            Err(PluginError::Trap { plugin, message })
        }
    }
}

/// Calls the `configure` of `interface`.
fn configure(
    instance: &wasmtime::component::Instance,
    store: &mut Store<HostState>,
    interface: &str,
    settings: &[(String, String)],
) -> wasmtime::Result<Result<(), String>> {
    let configure = export::<(&[(String, String)],), (Result<(), String>,)>(
        instance,
        &mut *store,
        interface,
        "configure",
    )?;
    let (outcome,) = configure.call(&mut *store, (settings,))?;
    Ok(outcome)
}

/// A function of an exported interface, typed with the host's own
/// parameter types. wasmtime checks them against the component's types.
fn export<Params, Results>(
    instance: &wasmtime::component::Instance,
    store: &mut Store<HostState>,
    interface: &str,
    name: &str,
) -> wasmtime::Result<wasmtime::component::TypedFunc<Params, Results>>
where
    Params: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
    Results: wasmtime::component::ComponentNamedList + wasmtime::component::Lift,
{
    let interface = instance
        .get_export_index(&mut *store, None, interface)
        .ok_or_else(|| wasmtime::format_err!("no export `{interface}`"))?;
    let func = instance
        .get_export_index(&mut *store, Some(&interface), name)
        .ok_or_else(|| wasmtime::format_err!("no function `{name}` in the export"))?;
    instance.get_typed_func::<Params, Results>(&mut *store, &func)
}

// The WIT records as borrowed views of the host's events: a batch is
// lowered into the plugin's memory straight from the events, without first
// copying every string into an owned WIT value.

/// `huddle:plugin/types.event`.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct EventView<'a> {
    interaction: u64,
    actor: &'a str,
    #[component(name = "type")]
    kind: &'a str,
    content: &'a str,
    timestamp: &'a str,
    id: Option<&'a str>,
    term: Option<u64>,
}

impl<'a> EventView<'a> {
    fn of(event: &'a Event) -> EventView<'a> {
        EventView {
            interaction: event.interaction,
            actor: &event.actor,
            kind: &event.kind,
            content: &event.content,
            timestamp: &event.timestamp,
            id: event.id.as_deref(),
            term: event.term,
        }
    }
}

/// `huddle:plugin/types.entry`.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct EntryView<'a> {
    heading: &'a str,
    event: EventView<'a>,
}

impl<'a> EntryView<'a> {
    fn of(entry: &'a Entry) -> EntryView<'a> {
        EntryView {
            heading: &entry.heading,
            event: EventView::of(&entry.event),
        }
    }
}

/// `huddle:plugin/types.interaction`.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct InteractionView<'a> {
    number: u64,
    entries: &'a [EntryView<'a>],
}

/// `huddle:plugin/types.render-context` (0.2.0).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct ContextView<'a> {
    section: v2::types::Section,
    k: u32,
    directory: &'a str,
}

impl<'a> ContextView<'a> {
    fn of(context: &'a RenderContext) -> ContextView<'a> {
        ContextView {
            section: match context.section {
                Section::Communication => v2::types::Section::Communication,
                Section::Archive => v2::types::Section::Archive,
            },
            k: context.k,
            directory: &context.directory,
        }
    }
}

/// One part of an interaction rendered in parts (`render-part`, 0.2.0).
pub struct Part<'a> {
    pub number: u64,
    /// Which part, from 0 (for error messages).
    pub index: usize,
    pub entries: &'a [Entry],
    /// The part starts the interaction.
    pub first: bool,
    /// The part ends it.
    pub last: bool,
}

/// A renderer able to render in parts: its instance-pre and export.
struct PartRenderer {
    pre: InstancePre<HostState>,
    interface: String,
}

/// Where an interaction rendered in parts is cut: a part ends after
/// `entries_per_part` entries or once its entries' content, headings and
/// fields reach [`PART_BYTES`]. Fed one entry at a time, so a reader of the
/// log can cut parts as the entries arrive, where [`part_slices`] does.
pub struct PartCutter {
    entries_per_part: usize,
    entries: usize,
    bytes: usize,
}

impl PartCutter {
    pub fn new(entries_per_part: usize) -> PartCutter {
        PartCutter {
            entries_per_part: entries_per_part.max(1),
            entries: 0,
            bytes: 0,
        }
    }

    /// Takes the next entry; `true` when the part ends with it.
    pub fn ends_part(&mut self, entry: &Entry) -> bool {
        self.entries += 1;
        self.bytes += part_weight(entry);
        if self.entries >= self.entries_per_part || self.bytes >= PART_BYTES {
            self.entries = 0;
            self.bytes = 0;
            return true;
        }
        false
    }
}

/// What an entry weighs against [`PART_BYTES`]: its content and heading,
/// and the rest of its fields, roughly.
#[inline]
pub fn part_weight(entry: &Entry) -> usize {
    entry.event.content.len() + entry.heading.len() + 128
}

/// The parts `entries` are rendered in (see [`PartCutter`]): the last part
/// is what is left after the last cut, or the last cut part if nothing is.
fn part_slices(entries: &[Entry], entries_per_part: usize) -> Vec<std::ops::Range<usize>> {
    let mut cutter = PartCutter::new(entries_per_part);
    let mut slices = Vec::new();
    let mut start = 0;
    for (i, entry) in entries.iter().enumerate() {
        if cutter.ends_part(entry) {
            slices.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() || slices.is_empty() {
        slices.push(start..entries.len());
    }
    slices
}

/// `huddle:plugin/types.interaction-part` (0.2.0).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct PartView<'a> {
    number: u64,
    entries: &'a [EntryView<'a>],
    first: bool,
    last: bool,
}

fn load_error(spec: &PluginSpec, message: String) -> PluginError {
    PluginError::Load {
        plugin: spec.name(),
        source_desc: spec.source.describe(),
        message,
    }
}

/// A plugin file that cannot be read. A name that is neither a file nor a
/// built-in is most often a misspelt built-in: list them.
fn file_error(spec: &PluginSpec, error: &std::io::Error) -> PluginError {
    let mut message = error.to_string();
    if error.kind() == std::io::ErrorKind::NotFound {
        let builtins: Vec<&str> = BUILTINS.iter().map(|(name, _)| *name).collect();
        message = format!(
            "no such file, and {:?} is not a built-in plugin either (built-ins: {})",
            spec.name(),
            builtins.join(", ")
        );
    }
    load_error(spec, message)
}

/// The bytes of a plugin whose sha256 is known to be `sha`: read again,
/// and refused if the file changed since (they would be compiled under the
/// old version's key).
fn read_bytes_of(spec: &PluginSpec, sha: &str) -> Result<Arc<[u8]>, String> {
    let (wasm, now) = read_plugin(spec).map_err(|e| e.to_string())?;
    if now != sha {
        return Err(format!(
            "the file changed while it was being loaded (sha256 {} instead of {}); the next call loads the new version",
            short(&now),
            short(sha)
        ));
    }
    Ok(wasm)
}

/// A plugin's bytes and their sha256 (hex), without an engine: enough for
/// `huddle plugins list`.
pub fn read_plugin(spec: &PluginSpec) -> Result<(Arc<[u8]>, String), PluginError> {
    match &spec.source {
        PluginSource::Builtin(name) => {
            let wasm = builtin_wasm(name)
                .ok_or_else(|| load_error(spec, format!("there is no built-in plugin {name:?}")))?;
            Ok((Arc::from(wasm), builtin_sha256(name, wasm)))
        }
        PluginSource::File(path) => {
            let wasm = std::fs::read(path).map_err(|e| file_error(spec, &e))?;
            let sha = hex_sha256(&wasm);
            Ok((wasm.into(), sha))
        }
    }
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Built-ins never change within a process: hash each once.
fn builtin_sha256(name: &str, wasm: &[u8]) -> String {
    static HASHES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut hashes = lock(HASHES.get_or_init(Default::default));
    hashes
        .entry(name.to_string())
        .or_insert_with(|| hex_sha256(wasm))
        .clone()
}

fn world_for(slot: super::Slot) -> World {
    match slot {
        super::Slot::HeadingMapper => World::HeadingMapper,
        super::Slot::Renderer => World::Renderer,
        super::Slot::AlertSink => World::AlertSink,
    }
}

/// What a plugin serves as: a directory has one mapper and one renderer,
/// whatever file they come from; its sinks are told apart by their source.
fn slot_key(spec: &PluginSpec, world: World) -> String {
    match world {
        World::AlertSink => format!("{}/{}", spec.source.describe(), world.base_name()),
        World::HeadingMapper | World::Renderer => world.base_name().to_string(),
    }
}

/// The first 12 hex digits of a sha256, enough to tell versions apart in a log.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// A poisoned mutex here only guards caches: keep using the data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Advances the engine's epoch forever; one thread per engine.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("huddle-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .ok();
}
