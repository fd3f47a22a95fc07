//! A huddle directory: `huddle init` and opening an existing one.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::backend::file::{FileLog, LOG_FILE};
use crate::model::config::{
    settings_pairs, Config, ConfigError, SlotConfig, CONFIG_FILE, DEFAULT_CONFIG_TOML,
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
    std::fs::create_dir_all(dir)?;
    let files: [(&str, String); 4] = [
        (LOG_FILE, String::new()),
        (COMMUNICATION_FILE, communication_template()),
        (ARCHIVE_FILE, String::new()),
        (CONFIG_FILE, DEFAULT_CONFIG_TOML.to_string()),
    ];
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
    pub fn backend(&self) -> std::sync::Arc<dyn crate::backend::Backend> {
        std::sync::Arc::new(self.queued_log())
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
}

fn mib(megabytes: u64) -> usize {
    usize::try_from(megabytes.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
}
