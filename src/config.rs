//! `huddle.toml`: every key optional, unknown keys refused so a typo is not
//! silently ignored.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::event::DEFAULT_MAX_CONTENT_BYTES;

pub const CONFIG_FILE: &str = "huddle.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub snapshot: SnapshotConfig,
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
    pub fn lock_backoff(&self) -> Duration {
        Duration::from_millis(self.lock_backoff_ms)
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads `huddle.toml` from `dir`; a missing file means every default.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.log.lock_attempts == 0 {
            return Err("log.lock_attempts must be at least 1".into());
        }
        Ok(config)
    }
}

/// The commented `huddle.toml` that `huddle init` writes: every setting with
/// its default. A test checks that it parses to `Config::default()`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# huddle.toml: settings for this huddle directory.
# Every key is optional; the values below are the defaults.
# Uncomment a line to change it.

[log]
# "fsync": fdatasync after every append (or batch); "none": leave it to the kernel.
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
"#;

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
                Some(rest) if rest.contains(" = ") => rest,
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
    fn unknown_keys_are_refused() {
        let err = Config::parse("[log]\nlock_atempts = 3\n").unwrap_err();
        assert!(err.contains("lock_atempts"), "{err}");
    }
}
