//! `huddle.toml`: every key optional, unknown keys refused so a typo is not
//! silently ignored.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::model::backoff::Backoff;
use crate::model::event::DEFAULT_MAX_CONTENT_BYTES;

pub use crate::model::names::CONFIG_FILE;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub snapshot: SnapshotConfig,
    pub plugins: PluginsConfig,
    pub alerts: AlertsConfig,
    pub daemon: DaemonConfig,
    pub sync: SyncConfig,
    pub backend: BackendConfig,
}

/// Which log backend holds the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// events.log in the huddle directory.
    #[default]
    File,
    /// A NATS JetStream stream shared by every machine.
    Jetstream,
}

/// A secret from huddle.toml: its value is never shown by `Debug`, so no
/// log line or error that prints a config can leak it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that hands it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One server URL or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ServerUrls {
    One(String),
    Many(Vec<String>),
}

impl ServerUrls {
    pub fn list(&self) -> Vec<String> {
        match self {
            ServerUrls::One(url) => vec![url.clone()],
            ServerUrls::Many(urls) => urls.clone(),
        }
    }

    /// The servers as messages and `huddle status` show them: without any
    /// user or password a URL carries.
    pub fn shown(&self) -> String {
        self.list()
            .iter()
            .map(|text| match url::Url::parse(text) {
                Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                    let _ = url.set_username("");
                    let _ = url.set_password(None);
                    url.to_string().trim_end_matches('/').to_string()
                }
                Ok(_) => text.clone(),
                Err(_) => "(not a URL)".to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for ServerUrls {
    fn default() -> Self {
        ServerUrls::One(DEFAULT_NATS_URL.into())
    }
}

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// `[backend]`: where the events are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// JetStream: the server, or a list of servers of one cluster.
    pub url: ServerUrls,
    /// JetStream: the stream; events go on subject `huddle.<stream>.events`.
    pub stream: String,
    /// JetStream: a credentials file (relative to the huddle directory).
    pub creds: Option<std::path::PathBuf>,
    /// JetStream: a token, instead of a credentials file.
    pub token: Option<Secret>,
    /// JetStream: copies of the stream `huddle init` creates (1, or 3 on a
    /// cluster of three).
    pub replicas: usize,
    /// JetStream: how long a retried publish is recognised as one already
    /// made (the server's duplicate window), in seconds.
    pub dedupe_window_secs: u64,
    /// JetStream: the deadline of one call to the server, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendKind::File,
            url: ServerUrls::default(),
            stream: "HUDDLE".into(),
            creds: None,
            token: None,
            replicas: 1,
            dedupe_window_secs: 3600,
            timeout_ms: 5000,
        }
    }
}

impl BackendConfig {
    /// The subject the events are published on.
    pub fn subject(&self) -> String {
        format!("huddle.{}.events", self.stream)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn check(&self) -> Result<(), String> {
        let stream = &self.stream;
        // JetStream's rules for stream names; the name is also a subject token.
        if stream.is_empty()
            || stream.len() > 32
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "backend.stream = {stream:?} must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -"
            ));
        }
        let urls = self.url.list();
        if urls.is_empty() {
            return Err("backend.url must name at least one server".into());
        }
        for url in &urls {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            if !scheme_ok || url::Url::parse(url).is_err() {
                return Err(format!(
                    "backend.url {url:?} must be a nats://, tls://, ws:// or wss:// URL"
                ));
            }
        }
        if self.creds.is_some() && self.token.is_some() {
            return Err("backend.creds and backend.token are both set: give one".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(format!(
                "backend.replicas = {} is out of range: JetStream keeps 1 to 5 copies",
                self.replicas
            ));
        }
        at_least(
            "backend.dedupe_window_secs",
            self.dedupe_window_secs,
            1,
            "a retried publish must be recognised",
        )?;
        at_least(
            "backend.timeout_ms",
            self.timeout_ms,
            1,
            "0 would time out every call",
        )?;
        Ok(())
    }
}

/// Git sync (only when the huddle directory is inside a git repository).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Whether the leader syncs (`huddle sync` always works).
    pub enabled: bool,
    pub remote: String,
    pub branch: String,
    /// The leader syncs this often.
    pub interval_secs: u64,
    /// Attempts before the sync is declared offline.
    pub attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Timeout of one git command that talks to the remote.
    pub timeout_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            enabled: false,
            remote: "origin".into(),
            branch: "main".into(),
            interval_secs: 30,
            attempts: 5,
            retry_initial_ms: 1000,
            retry_max_ms: 8000,
            timeout_secs: 20,
        }
    }
}

impl SyncConfig {
    /// The pauses between failed syncs.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.retry_initial_ms),
            Duration::from_millis(self.retry_max_ms),
        )
    }
}

/// `huddle run`: heartbeats, election and retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The leader appends a heartbeat this often.
    pub heartbeat_ms: u64,
    /// Without a heartbeat for this long, the leader is presumed gone.
    pub leader_timeout_ms: u64,
    /// Up to this much is added to the timeout, differently by each
    /// daemon, so candidates do not all campaign at once.
    pub jitter_ms: u64,
    /// The daemon re-reads the log at least this often, even without a
    /// file-system event.
    pub poll_ms: u64,
    /// A failed operation is retried after this long, doubling each time...
    pub retry_initial_ms: u64,
    /// ...up to this pause...
    pub retry_max_ms: u64,
    /// ...and after this many failures in a row it is declared offline.
    pub retry_attempts: u32,
}

impl DaemonConfig {
    /// The pauses between failed attempts of the daemon's work (snapshots,
    /// alert deliveries).
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.retry_initial_ms),
            Duration::from_millis(self.retry_max_ms),
        )
    }

    pub fn heartbeat_every(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn leader_timeout(&self) -> Duration {
        Duration::from_millis(self.leader_timeout_ms)
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            heartbeat_ms: 2000,
            leader_timeout_ms: 10_000,
            jitter_ms: 1000,
            poll_ms: 250,
            retry_initial_ms: 1000,
            retry_max_ms: 8000,
            retry_attempts: 4,
        }
    }
}

/// When an append is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fdatasync after every append (or batch).
    #[default]
    Fsync,
    /// Leave it to the kernel: fast, but a power cut may lose recent events.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub durability: Durability,
    /// How long one attempt waits for the lock on events.log.
    pub lock_timeout_ms: u64,
    /// Attempts before giving up and queueing the event in events.offline.log.
    pub lock_attempts: u32,
    /// Pause between attempts; doubles after each.
    pub lock_backoff_ms: u64,
    pub max_content_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durability: Durability::Fsync,
            lock_timeout_ms: 2000,
            lock_attempts: 3,
            lock_backoff_ms: 50,
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
        }
    }
}

impl LogConfig {
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_timeout_ms)
    }
    /// The pauses between attempts at the lock: doubling, and never longer
    /// than one attempt's wait.
    pub fn lock_backoff(&self) -> Backoff {
        let initial = Duration::from_millis(self.lock_backoff_ms);
        Backoff::new(initial, initial.max(self.lock_timeout()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Interactions kept in communication.md.
    pub k: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig { k: 3 }
    }
}

/// The heading-mapper and renderer slots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PluginsConfig {
    pub heading_mapper: SlotConfig,
    pub renderer: SlotConfig,
}

pub const DEFAULT_HEADING_MAPPER: &str = "headings";
pub const DEFAULT_RENDERER: &str = "markdown";

/// One plugin slot: which plugin, its limits and the settings for its `configure`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotConfig {
    /// A built-in plugin name or a path to a .wasm (relative to the huddle
    /// directory); unset means the slot's default.
    pub plugin: Option<String>,
    /// CPU time one call may take, in milliseconds.
    pub deadline_ms: u64,
    /// Cap on the plugin's memory, in MiB.
    pub memory_mb: u64,
    /// Passed to the plugin's `configure` as key/value pairs.
    pub settings: toml::Table,
}

impl Default for SlotConfig {
    fn default() -> Self {
        SlotConfig {
            plugin: None,
            deadline_ms: DEFAULT_PLUGIN_DEADLINE_MS,
            memory_mb: DEFAULT_PLUGIN_MEMORY_MB,
            settings: toml::Table::new(),
        }
    }
}

pub const DEFAULT_PLUGIN_DEADLINE_MS: u64 = 2000;
pub const DEFAULT_PLUGIN_MEMORY_MB: u64 = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Identical alerts within this window are sent once, with a count.
    pub dedupe_window_secs: u64,
    /// At most one delivery per sink this often.
    pub min_interval_ms: u64,
    pub sinks: Vec<SinkConfig>,
}

impl AlertsConfig {
    /// What each sink is known by, in order: its `name`, else its `plugin`
    /// as written, with `#2`, `#3` ... for later sinks of the same plugin.
    /// Editing a sink's settings or reordering sinks of different plugins
    /// keeps every sink's delivery position.
    pub fn sink_ids(&self) -> Vec<String> {
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        self.sinks
            .iter()
            .map(|sink| match &sink.name {
                Some(name) => name.clone(),
                None => {
                    let count = seen.entry(sink.plugin.as_str()).or_insert(0);
                    *count += 1;
                    match *count {
                        1 => sink.plugin.clone(),
                        n => format!("{}#{n}", sink.plugin),
                    }
                }
            })
            .collect()
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            dedupe_window_secs: 300,
            min_interval_ms: 1000,
            sinks: vec![SinkConfig {
                plugin: "stderr".into(),
                name: None,
                from: SinkStart::End,
                proxy: None,
                allow: Vec::new(),
                allow_headers: Vec::new(),
                timeout_ms: DEFAULT_SINK_TIMEOUT_MS,
                deadline_ms: DEFAULT_PLUGIN_DEADLINE_MS,
                memory_mb: DEFAULT_PLUGIN_MEMORY_MB,
                settings: toml::Table::new(),
            }],
        }
    }
}

pub const DEFAULT_SINK_TIMEOUT_MS: u64 = 5000;

/// Where a sink huddle has not delivered through before starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkStart {
    /// At the end of the log when the leader first sees the sink: no replay.
    #[default]
    End,
    /// At the beginning: every `error` event of the log's history.
    Start,
}

/// One `[[alerts.sinks]]` table. Keys other than the ones below go to the
/// sink's `configure` (for the webhook sink: `url`, `format`).
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig {
    pub plugin: String,
    /// What the sink is known by in `.huddle/alerts.json` and status; see
    /// [`AlertsConfig::sink_ids`].
    #[serde(default)]
    pub name: Option<String>,
    /// Where a new sink starts: `"end"` (default) or `"start"`.
    #[serde(default)]
    pub from: SinkStart,
    /// An HTTP proxy for this sink's requests; without it requests go
    /// direct and proxy environment variables are ignored.
    #[serde(default)]
    pub proxy: Option<String>,
    /// URLs this sink may POST to; empty denies all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Request header names a sink built against WIT 0.2.0 may set (e.g.
    /// `["Authorization"]`); empty allows none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Timeout of one HTTP request, in milliseconds.
    #[serde(default = "default_sink_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    #[serde(flatten)]
    pub settings: toml::Table,
}

fn default_sink_timeout() -> u64 {
    DEFAULT_SINK_TIMEOUT_MS
}
fn default_deadline() -> u64 {
    DEFAULT_PLUGIN_DEADLINE_MS
}
fn default_memory() -> u64 {
    DEFAULT_PLUGIN_MEMORY_MB
}

/// A sink's `proxy` setting: an http:// or https:// proxy URL.
pub fn parse_proxy(proxy: &str) -> Result<ureq::Proxy, String> {
    let scheme_ok = ["http://", "https://"].iter().any(|scheme| {
        proxy
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
    });
    if !scheme_ok {
        return Err(format!(
            "{proxy:?} must be an http:// or https:// proxy URL"
        ));
    }
    ureq::Proxy::new(proxy).map_err(|e| format!("{proxy:?} is not a proxy URL: {e}"))
}

/// Settings as the WIT's key/value pairs: strings as they are, anything else
/// (numbers, lists, tables) as JSON text.
pub fn settings_pairs(table: &toml::Table) -> Vec<(String, String)> {
    table
        .iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            (key.clone(), text)
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: String, message: String },
    /// A mistyped `--dir` must not quietly start a new huddle elsewhere.
    #[error(
        "the huddle directory {path} {problem}: create one with `huddle init {path}`, \
         or pass the right --dir"
    )]
    NoDirectory { path: String, problem: &'static str },
}

impl ConfigError {
    /// A huddle.toml the user must fix, or a directory that is not a huddle directory.
    pub fn is_bad_config(&self) -> bool {
        matches!(
            self,
            ConfigError::Invalid { .. } | ConfigError::NoDirectory { .. }
        )
    }
}

/// The smallest heartbeat period: every heartbeat is an event in the log,
/// so a period of 0 would flood it.
pub const MIN_HEARTBEAT_MS: u64 = 10;

/// `key = value` must be at least `min`.
fn at_least(key: &str, value: u64, min: u64, why: &str) -> Result<(), String> {
    if value < min {
        return Err(format!(
            "{key} = {value} is out of range: it must be at least {min} ({why})"
        ));
    }
    Ok(())
}

impl Config {
    /// Values the types allow but huddle cannot work with: a period of 0
    /// (a busy loop, a flooded log), a limit of 0 (every call or event
    /// refused), a leader timeout no longer than the heartbeat.
    fn check_ranges(&self) -> Result<(), String> {
        const PERIOD: &str = "0 would make it run in a busy loop";
        const ATTEMPT: &str = "the first attempt counts";
        let log = &self.log;
        at_least("log.lock_attempts", log.lock_attempts.into(), 1, ATTEMPT)?;
        at_least(
            "log.max_content_bytes",
            log.max_content_bytes as u64,
            1,
            "0 would refuse every event with content, and quarantine those in the log",
        )?;
        let daemon = &self.daemon;
        at_least(
            "daemon.heartbeat_ms",
            daemon.heartbeat_ms,
            MIN_HEARTBEAT_MS,
            "every heartbeat is an event in the log",
        )?;
        if daemon.leader_timeout_ms <= daemon.heartbeat_ms {
            return Err(format!(
                "daemon.leader_timeout_ms = {} is out of range: it must be more than \
                 daemon.heartbeat_ms = {}, or followers would depose a leader that is on time",
                daemon.leader_timeout_ms, daemon.heartbeat_ms
            ));
        }
        at_least("daemon.poll_ms", daemon.poll_ms, 1, PERIOD)?;
        at_least(
            "daemon.retry_initial_ms",
            daemon.retry_initial_ms,
            1,
            PERIOD,
        )?;
        at_least(
            "daemon.retry_attempts",
            daemon.retry_attempts.into(),
            1,
            ATTEMPT,
        )?;
        self.backend.check()?;
        let sync = &self.sync;
        at_least("sync.interval_secs", sync.interval_secs, 1, PERIOD)?;
        at_least("sync.attempts", sync.attempts.into(), 1, ATTEMPT)?;
        at_least("sync.retry_initial_ms", sync.retry_initial_ms, 1, PERIOD)?;
        at_least(
            "sync.timeout_secs",
            sync.timeout_secs,
            1,
            "0 would time out every git command",
        )?;
        let plugin_limits = [
            (
                "plugins.heading-mapper".to_string(),
                &self.plugins.heading_mapper,
            ),
            ("plugins.renderer".to_string(), &self.plugins.renderer),
        ]
        .into_iter()
        .map(|(key, slot)| (key, slot.deadline_ms, slot.memory_mb));
        let sink_limits = self.alerts.sinks.iter().enumerate().map(|(i, sink)| {
            (
                format!("alerts.sinks[{i}]"),
                sink.deadline_ms,
                sink.memory_mb,
            )
        });
        for (key, deadline_ms, memory_mb) in plugin_limits.chain(sink_limits) {
            at_least(
                &format!("{key}.deadline_ms"),
                deadline_ms,
                1,
                "0 would stop every call at once",
            )?;
            at_least(
                &format!("{key}.memory_mb"),
                memory_mb,
                1,
                "0 would leave the plugin no memory at all",
            )?;
        }
        for (i, sink) in self.alerts.sinks.iter().enumerate() {
            at_least(
                &format!("alerts.sinks[{i}].timeout_ms"),
                sink.timeout_ms,
                1,
                "0 would time out every request",
            )?;
        }
        Ok(())
    }

    /// Reads `huddle.toml` from `dir`; a missing file means every default.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let invalid = |message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            invalid(format!(
                "it is not UTF-8 text (first bad byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        Config::parse(text).map_err(invalid)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string();
            if message.contains("duplicate key") {
                // The usual cause: a snippet pasted at the end of the file
                // `huddle init` wrote, which already has every table.
                format!(
                    "{}\n(a table or key appears twice: `huddle init` writes each table once, \
                     with its keys commented out; set the keys in that table instead of adding \
                     another)",
                    message.trim_end()
                )
            } else {
                message
            }
        })?;
        config.check_ranges()?;
        for (slot, cfg) in [
            ("heading-mapper", &config.plugins.heading_mapper),
            ("renderer", &config.plugins.renderer),
        ] {
            if cfg.plugin.as_deref() == Some("") {
                return Err(format!(
                    "plugins.{slot}.plugin must name a built-in plugin or a .wasm file"
                ));
            }
        }
        for (i, sink) in config.alerts.sinks.iter().enumerate() {
            if sink.plugin.is_empty() {
                return Err(format!(
                    "alerts.sinks[{i}].plugin must name a built-in plugin or a .wasm file"
                ));
            }
            if let Some(name) = &sink.name {
                if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                    return Err(format!(
                        "alerts.sinks[{i}].name must be 1 to 64 bytes without control characters"
                    ));
                }
            }
            if let Some(proxy) = &sink.proxy {
                parse_proxy(proxy).map_err(|e| format!("alerts.sinks[{i}].proxy: {e}"))?;
            }
            for (j, name) in sink.allow_headers.iter().enumerate() {
                let token = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(format!(
                        "alerts.sinks[{i}].allow_headers[{j}] must be an HTTP header name                          (1 to 64 letters, digits or !#$%&'*+-.^_`|~)"
                    ));
                }
            }
        }
        let ids = config.alerts.sink_ids();
        for (i, id) in ids.iter().enumerate() {
            if let Some(first) = ids[..i].iter().position(|other| other == id) {
                return Err(format!(
                    "alerts.sinks[{first}] and alerts.sinks[{i}] are both known as {id:?}: \
                     give one of them a distinct `name`"
                ));
            }
        }
        Ok(config)
    }
}

/// The commented `huddle.toml` that `huddle init` writes: every setting with
/// its default. A test checks that it parses to `Config::default()`.
pub const DEFAULT_CONFIG_TOML: &str = r####"# huddle.toml: settings for this huddle directory.
# Every key is optional; the values below are the defaults.
# Uncomment a line to change it.

[log]
# "fsync": fdatasync after every append (or batch; the leader's heartbeats
# excepted); "none": leave it to the kernel.
# durability = "fsync"
# How long one attempt waits for the lock on events.log, in milliseconds.
# lock_timeout_ms = 2000
# Attempts before the event is queued in events.offline.log and the command fails.
# lock_attempts = 3
# Pause between attempts in milliseconds; doubles after each attempt.
# lock_backoff_ms = 50
# Largest accepted event content, in bytes.
# max_content_bytes = 1048576

[snapshot]
# Interactions shown in communication.md; older ones go to archive.md.
# k = 3

[daemon]
# The leader appends a heartbeat this often (milliseconds).
# heartbeat_ms = 2000
# Without a heartbeat for this long the leader is presumed gone and eligible daemons campaign.
# leader_timeout_ms = 10000
# Up to this much is added to the timeout, differently by each daemon, against stampedes.
# jitter_ms = 1000
# The log is re-read at least this often even without a file-system event.
# poll_ms = 250
# Failed operations retry after 1 s, 2 s, 4 s ... up to retry_max_ms; after
# retry_attempts failures in a row the operation is declared offline (an error event).
# retry_initial_ms = 1000
# retry_max_ms = 8000
# retry_attempts = 4

# Plugin slots. `plugin` is a built-in name or a path to a .wasm component
# (relative to this directory); a change takes effect at the next snapshot.
# deadline_ms bounds the CPU time of one call, memory_mb the plugin's memory.
[plugins.heading-mapper]
# plugin = "headings"
# deadline_ms = 2000
# memory_mb = 64
# Settings for the plugin's configure(); for "headings": a heading per type,
# an empty heading hides the type.
# [plugins.heading-mapper.settings]
# "type.question" = "A → B"
# "type.heartbeat" = ""

[plugins.renderer]
# plugin = "markdown"
# deadline_ms = 2000
# memory_mb = 64
# For "markdown": minijinja templates that replace the stock ones.
# [plugins.renderer.settings]
# communication_template = "### Interaction #{{ interaction.number }}\n..."
# archive_template = "## Interaction #{{ interaction.number }}\n..."

[sync]
# Git sync of events.log through a remote (the directory must be in a git repository).
# enabled = false          # true: the leader syncs every interval_secs; `huddle sync` works either way
# remote = "origin"
# branch = "main"
# interval_secs = 30
# attempts = 5             # failures (with backoff) before the sync is declared offline
# retry_initial_ms = 1000
# retry_max_ms = 8000
# timeout_secs = 20        # one git command that talks to the remote

[alerts]
# Identical alerts (same actor, type, content) within this window are sent once, with a count.
# dedupe_window_secs = 300
# At most one delivery per sink this often (milliseconds).
# min_interval_ms = 1000

# Alert sinks: the leader delivers every `error` event through each of them.
# The default is one "stderr" sink (alerts in huddle's own log). A webhook:
# [[alerts.sinks]]
# plugin = "webhook"                   # a built-in name or a path to a .wasm
# url = "http://127.0.0.1:9099/hook"
# allow = ["http://127.0.0.1:9099/"]   # URLs this sink may call; empty denies all
# format = "slack"                     # or "alertmanager"
# timeout_ms = 5000                    # one HTTP request
# name = "ops-chat"                    # what status calls it (default: the plugin)
# from = "end"                         # a new sink starts at the end of the log; "start" replays it
# proxy = "http://proxy.internal:3128" # default: direct; proxy environment variables are ignored
# deadline_ms = 2000
# memory_mb = 64

[backend]
# Where the events are kept: "file" (events.log here) or "jetstream" (a NATS
# JetStream stream every machine shares; each renders its own snapshots).
# kind = "file"
# url = "nats://127.0.0.1:4222"   # or a list of the servers of one cluster
# stream = "HUDDLE"               # events on subject huddle.<stream>.events
# creds = "team.creds"            # or token = "..."; never logged, never printed
# replicas = 1                    # copies of the stream `huddle init` creates
# dedupe_window_secs = 3600       # a publish retried within this is stored once
# timeout_ms = 5000               # deadline of one call to the server
"####;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_defaults() {
        let config = Config::parse(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(config.log.lock_attempts, LogConfig::default().lock_attempts);
        assert_eq!(config.snapshot.k, 3);
        // Uncommenting every line must give the same values.
        let uncommented: String = DEFAULT_CONFIG_TOML
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::parse(&uncommented).unwrap();
        assert_eq!(config.log.lock_timeout_ms, 2000);
        assert_eq!(config.log.durability, Durability::Fsync);
        assert_eq!(config.log.max_content_bytes, DEFAULT_MAX_CONTENT_BYTES);
    }

    #[test]
    fn sinks_are_known_by_name_or_plugin_not_position() {
        let config = Config::parse(
            "[[alerts.sinks]]\nplugin = \"webhook\"\nurl = \"http://a/\"\n\
             [[alerts.sinks]]\nplugin = \"stderr\"\n\
             [[alerts.sinks]]\nplugin = \"webhook\"\nurl = \"http://b/\"\n\
             [[alerts.sinks]]\nplugin = \"webhook\"\nname = \"ops\"\nfrom = \"start\"\n",
        )
        .unwrap();
        assert_eq!(
            config.alerts.sink_ids(),
            ["webhook", "stderr", "webhook#2", "ops"]
        );
        assert_eq!(config.alerts.sinks[3].from, SinkStart::Start);
        assert_eq!(config.alerts.sinks[0].from, SinkStart::End);
        // Host keys are not passed on to the plugin.
        assert!(!config.alerts.sinks[3].settings.contains_key("name"));
        assert!(!config.alerts.sinks[3].settings.contains_key("from"));
    }

    #[test]
    fn bad_sink_settings_are_named() {
        for (sink, needle) in [
            ("plugin = \"stderr\"\nname = \"\"", "alerts.sinks[1].name"),
            (
                "plugin = \"stderr\"\nname = \"stderr\"",
                "both known as \"stderr\": give one of them a distinct `name`",
            ),
            (
                "plugin = \"webhook\"\nproxy = \"socks5://p:1080\"",
                "alerts.sinks[1].proxy",
            ),
            ("plugin = \"webhook\"\nfrom = \"yesterday\"", "yesterday"),
        ] {
            let text = format!("[[alerts.sinks]]\nplugin = \"stderr\"\n[[alerts.sinks]]\n{sink}\n");
            let err = Config::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{sink}: {err}");
        }
        assert!(Config::parse(
            "[[alerts.sinks]]\nplugin = \"webhook\"\nproxy = \"http://proxy.internal:3128\"\n"
        )
        .is_ok());
    }

    #[test]
    fn backend_secrets_never_show_and_bad_keys_are_named() {
        let config = Config::parse(
            "[backend]\nkind = \"jetstream\"\nurl = [\"nats://a:4222\", \"nats://b:4222\"]\ntoken = \"s3cret-token\"\n",
        )
        .unwrap();
        assert_eq!(config.backend.kind, BackendKind::Jetstream);
        assert_eq!(config.backend.url.list().len(), 2);
        assert_eq!(
            config.backend.token.as_ref().map(Secret::expose),
            Some("s3cret-token")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        let with_password =
            Config::parse("[backend]\nurl = [\"nats://bob:s3cret@a:4222\", \"nats://b:4222\"]\n")
                .unwrap();
        assert_eq!(
            with_password.backend.url.shown(),
            "nats://a:4222,nats://b:4222"
        );
        for (text, needle) in [
            (
                "[backend]\nkind = \"jetstream\"\npasword = \"x\"\n",
                "pasword",
            ),
            ("[backend]\nkind = \"kafka\"\n", "kafka"),
            ("[backend]\nstream = \"a.b\"\n", "backend.stream"),
            ("[backend]\nurl = \"http://x\"\n", "backend.url"),
            ("[backend]\nreplicas = 7\n", "backend.replicas"),
            (
                "[backend]\ncreds = \"a.creds\"\ntoken = \"t\"\n",
                "backend.creds",
            ),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains("s3cret"));
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[log]\nlock_atempts = 3\n").unwrap_err();
        assert!(err.contains("lock_atempts"), "{err}");
    }
}
