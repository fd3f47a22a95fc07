//! Helpers shared by the integration tests: a huddle directory in a temp dir,
//! the real binary, and small assertions on the log.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn huddle_exe() -> &'static str {
    env!("CARGO_BIN_EXE_huddle")
}

/// `../shared/baseline/<name>` beside the repository (as in CI).
pub fn baseline_script(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/baseline")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: the tests compare against the brief's scripts in ../shared/baseline",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh, initialised huddle directory that disappears with the value.
pub struct HuddleDir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl HuddleDir {
    pub fn new() -> HuddleDir {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("huddle");
        let dir = HuddleDir { _tmp: tmp, path };
        dir.ok(&["init"]);
        dir
    }

    /// An initialised directory whose huddle.toml is `config`.
    pub fn with_config(config: &str) -> HuddleDir {
        let dir = HuddleDir::new();
        std::fs::write(dir.path.join("huddle.toml"), config).expect("write huddle.toml");
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(huddle_exe());
        command
            .arg("--dir")
            .arg(&self.path)
            .args(args)
            .env_remove("HUDDLE_DIR")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run huddle")
    }

    /// Runs huddle and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "huddle {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file("events.log")).expect("read events.log")
    }

    /// Every line of events.log parsed as JSON; panics on a line that is not.
    pub fn events(&self) -> Vec<Value> {
        parse_lines(&self.log_bytes())
    }
}

pub fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("log is UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "log does not end with a newline"
    );
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
        })
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tmpfs mounted for one test (root only), unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("temp dir");
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs failed");
        Tmpfs {
            path,
            _parent: parent,
        }
    }

    pub fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount read-only failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
