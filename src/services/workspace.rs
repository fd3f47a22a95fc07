//! A huddle directory: `huddle init` and opening an existing one.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::backend::file::{FileLog, LOG_FILE};
use crate::backend::jetstream::JetStreamLog;
use crate::model::config::{
    settings_pairs, BackendKind, Config, ConfigError, SlotConfig, CONFIG_FILE, DEFAULT_CONFIG_TOML,
    DEFAULT_HEADING_MAPPER, DEFAULT_RENDERER,
};
use crate::model::names::{ARCHIVE_FILE, BEGIN_MARKER, COMMUNICATION_FILE, END_MARKER};
use crate::plugin::{Allowlist, HttpGrant, PluginSource, PluginSpec, Slot};

/// What `init` did with each file.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

fn communication_template() -> String {
    format!(
        "# Communication Snapshot\n\n\
         The last interactions of this huddle, regenerated from events.log.\n\
         Write your own notes above or below the markers: only the region between\n\
         them is replaced.\n\n\
         {BEGIN_MARKER}\n{END_MARKER}\n"
    )
}

/// Creates the files of a huddle directory, keeping every file that exists.
pub fn init(dir: &Path) -> std::io::Result<InitReport> {
    init_files(dir, DEFAULT_CONFIG_TOML.to_string(), true)
}

/// Where a new huddle on JetStream keeps its events.
#[derive(Debug, Clone)]
pub struct JetStreamInit {
    pub url: String,
    pub stream: Option<String>,
    pub replicas: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create the files of {dir}: {source}")]
    Files { dir: String, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{path} was already there and keeps its events in `{kind}`; \
         set [backend] kind = \"jetstream\" in it (or `huddle migrate --to jetstream` first)"
    )]
    OtherBackend { path: String, kind: &'static str },
    #[error("cannot create the stream: {0}")]
    Stream(#[from] crate::backend::StoreError),
}

/// `huddle init --backend jetstream`: the files of a huddle directory (no
/// events.log: the events are in the stream), a huddle.toml that names the
/// stream, and the stream itself if it is missing.
pub fn init_jetstream(
    dir: &Path,
    settings: &JetStreamInit,
) -> Result<(InitReport, crate::backend::jetstream::StreamCreated), InitError> {
    let quote = |text: &str| toml::Value::String(text.to_string()).to_string();
    let mut config = format!(
        "{DEFAULT_CONFIG_TOML}kind = \"jetstream\"\nurl = {}\n",
        quote(&settings.url)
    );
    if let Some(stream) = &settings.stream {
        config.push_str(&format!("stream = {}\n", quote(stream)));
    }
    if let Some(replicas) = settings.replicas {
        config.push_str(&format!("replicas = {replicas}\n"));
    }
    // Refused before anything is written: a bad URL or stream name.
    Config::parse(&config).map_err(|message| ConfigError::Invalid {
        path: dir.join(CONFIG_FILE).display().to_string(),
        message,
    })?;
    let report = init_files(dir, config, false).map_err(|source| InitError::Files {
        dir: dir.display().to_string(),
        source,
    })?;
    let workspace = Workspace::open(dir)?;
    if workspace.config.backend.kind != BackendKind::Jetstream {
        return Err(InitError::OtherBackend {
            path: dir.join(CONFIG_FILE).display().to_string(),
            kind: "events.log",
        });
    }
    let created = workspace.jetstream().ensure_stream()?;
    Ok((report, created))
}

fn init_files(dir: &Path, config: String, with_log: bool) -> std::io::Result<InitReport> {
    std::fs::create_dir_all(dir)?;
    let mut files: Vec<(&str, String)> = vec![
        (COMMUNICATION_FILE, communication_template()),
        (ARCHIVE_FILE, String::new()),
        (CONFIG_FILE, config),
    ];
    if with_log {
        files.insert(0, (LOG_FILE, String::new()));
    }
    let mut report = InitReport::default();
    for (name, content) in files {
        let path = dir.join(name);
        // create_new: an existing file is never truncated, not even by a race.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                file.write_all(content.as_bytes())?;
                file.sync_all()?;
                report.created.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => report.kept.push(path),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Refuses a huddle directory that does not exist or is not a directory,
/// rather than creating files there: a mistyped `--dir` would otherwise
/// start a second, empty huddle.
pub fn require_directory(dir: &Path) -> Result<(), ConfigError> {
    let problem = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => "is not a directory",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(source) => {
            return Err(ConfigError::Read {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    Err(ConfigError::NoDirectory {
        path: dir.display().to_string(),
        problem,
    })
}

/// An existing huddle directory with its configuration loaded.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub dir: PathBuf,
    pub config: Config,
}

impl Workspace {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Workspace, ConfigError> {
        let dir = dir.into();
        require_directory(&dir)?;
        let config = Config::load(&dir)?;
        Ok(Workspace { dir, config })
    }

    /// The log, behind the storage seam: what the services read and write.
    /// `[backend] kind` chooses it; either way appends that cannot go
    /// through wait in this directory's offline queue.
    pub fn backend(&self) -> std::sync::Arc<dyn crate::backend::Backend> {
        match self.config.backend.kind {
            BackendKind::File => std::sync::Arc::new(self.queued_log()),
            BackendKind::Jetstream => std::sync::Arc::new(crate::backend::queue::Queued::new(
                self.jetstream(),
                &self.dir,
            )),
        }
    }

    /// The JetStream stream `[backend]` names (whatever `kind` says).
    pub fn jetstream(&self) -> JetStreamLog {
        JetStreamLog::new(
            &self.config.backend,
            &self.dir,
            self.config.log.max_content_bytes,
        )
    }

    /// Moves the events of the offline queue into the log, whichever backend
    /// holds it (`huddle resume`). Returns how many were moved.
    pub fn flush_queues(&self) -> Result<usize, crate::backend::StoreError> {
        match self.config.backend.kind {
            BackendKind::File => self.queued_log().flush_queues(),
            BackendKind::Jetstream => {
                crate::backend::queue::Queued::new(self.jetstream(), &self.dir).flush_queues()
            }
        }
    }

    /// The log behind its pause and offline queue (what [`Workspace::backend`] gives).
    pub fn queued_log(&self) -> crate::backend::queue::Queued<FileLog> {
        crate::backend::queue::Queued::new(self.log(), &self.dir)
    }

    /// The file log itself, for what only it has (git sync, its queue).
    pub fn log(&self) -> FileLog {
        FileLog::new(&self.dir, self.config.log.clone())
    }

    /// The plugin configured for the heading-mapper or renderer slot.
    pub fn slot_spec(&self, slot: Slot) -> PluginSpec {
        let (cfg, default) = match slot {
            Slot::HeadingMapper => (&self.config.plugins.heading_mapper, DEFAULT_HEADING_MAPPER),
            Slot::Renderer | Slot::AlertSink => (&self.config.plugins.renderer, DEFAULT_RENDERER),
        };
        self.spec(cfg.plugin.as_deref().unwrap_or(default), cfg)
    }

    fn spec(&self, plugin: &str, cfg: &SlotConfig) -> PluginSpec {
        PluginSpec {
            settings: settings_pairs(&cfg.settings),
            deadline: Duration::from_millis(cfg.deadline_ms),
            memory_bytes: mib(cfg.memory_mb),
            ..PluginSpec::new(PluginSource::resolve(plugin, &self.dir))
        }
    }

    /// Every configured alert sink, with its HTTP grant.
    pub fn sink_specs(&self) -> Result<Vec<PluginSpec>, ConfigError> {
        self.config
            .alerts
            .sinks
            .iter()
            .enumerate()
            .map(|(i, sink)| {
                let allow =
                    Allowlist::parse(&sink.allow).map_err(|message| ConfigError::Invalid {
                        path: self.dir.join(CONFIG_FILE).display().to_string(),
                        message: format!("alerts.sinks[{i}].allow: {message}"),
                    })?;
                let mut grant = HttpGrant::new(allow);
                grant.timeout = Duration::from_millis(sink.timeout_ms);
                grant.allow_headers = sink
                    .allow_headers
                    .iter()
                    .map(|name| name.to_ascii_lowercase())
                    .collect();
                grant.proxy = match &sink.proxy {
                    Some(proxy) => {
                        Some(crate::model::config::parse_proxy(proxy).map_err(|message| {
                            ConfigError::Invalid {
                                path: self.dir.join(CONFIG_FILE).display().to_string(),
                                message: format!("alerts.sinks[{i}].proxy: {message}"),
                            }
                        })?)
                    }
                    None => None,
                };
                Ok(PluginSpec {
                    settings: settings_pairs(&sink.settings),
                    deadline: Duration::from_millis(sink.deadline_ms),
                    memory_bytes: mib(sink.memory_mb),
                    http: Some(grant),
                    ..PluginSpec::new(PluginSource::resolve(&sink.plugin, &self.dir))
                })
            })
            .collect()
    }

    /// Every plugin this directory runs, with its slot: the heading mapper,
    /// the renderer, then each alert sink.
    pub fn plugin_specs(&self) -> Result<Vec<(Slot, PluginSpec)>, ConfigError> {
        let mut plugins = vec![
            (Slot::HeadingMapper, self.slot_spec(Slot::HeadingMapper)),
            (Slot::Renderer, self.slot_spec(Slot::Renderer)),
        ];
        plugins.extend(
            self.sink_specs()?
                .into_iter()
                .map(|spec| (Slot::AlertSink, spec)),
        );
        Ok(plugins)
    }
}

fn mib(megabytes: u64) -> usize {
    usize::try_from(megabytes.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}
