//! A huddle directory: `huddle init` and opening an existing one.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, CONFIG_FILE, DEFAULT_CONFIG_TOML};
use crate::log::{FileLog, LOG_FILE};
use crate::snapshot::{ARCHIVE_FILE, BEGIN_MARKER, COMMUNICATION_FILE, END_MARKER};

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

/// An existing huddle directory with its configuration loaded.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub dir: PathBuf,
    pub config: Config,
}

impl Workspace {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Workspace, ConfigError> {
        let dir = dir.into();
        let config = Config::load(&dir)?;
        Ok(Workspace { dir, config })
    }

    pub fn log(&self) -> FileLog {
        FileLog::new(&self.dir, self.config.log.clone())
    }
}
