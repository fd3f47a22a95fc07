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
            .env("XDG_STATE_HOME", self.state_home())
            .env("HUDDLE_CACHE_DIR", plugin_cache())
            .stdin(Stdio::null());
        command
    }

    /// Where this directory's pause and spool live (kept inside the temp dir).
    pub fn state_home(&self) -> PathBuf {
        self._tmp.path().join("state")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output_within(COMMAND_LIMIT)
    }

    /// Runs huddle on a command that may compile a 12-18 MB component (a
    /// whole interpreter) in a debug build: given [`COMPILE_LIMIT`].
    pub fn run_compiling(&self, args: &[&str]) -> Output {
        self.command(args).output_within(COMPILE_LIMIT)
    }

    /// [`HuddleDir::run_compiling`], insisting on success; returns stdout.
    pub fn ok_compiling(&self, args: &[&str]) -> String {
        let out = self.run_compiling(args);
        assert!(
            out.status.success(),
            "huddle {args:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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

    /// Appends `(interaction, actor, type, content)` events with fixed
    /// timestamps and ids, written as huddle would, so rendered files are exact.
    pub fn append_fixed_events(&self, events: &[(u64, &str, &str, &str)]) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.file("events.log"))
            .expect("open events.log");
        for (n, (interaction, actor, kind, content)) in events.iter().enumerate() {
            let line = serde_json::json!({
                "interaction": interaction, "actor": actor, "type": kind,
                "content": content, "timestamp": format!("2026-11-25T14:00:{n:02}Z"),
                "id": format!("evt-{n}"),
            });
            writeln!(log, "{line}").expect("append to events.log");
        }
    }

    /// Fails naming them if the log holds `error` events (a plugin failed).
    pub fn assert_no_error_events(&self) {
        let errors: Vec<_> = self
            .events()
            .into_iter()
            .filter(|e| e["type"] == "error")
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
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

/// huddle run from `cwd` outside any huddle directory (no `--dir`, no
/// `HUDDLE_DIR`), as a plugin author runs `plugins new`, `check` and `test`,
/// with the tests' shared compiled-plugin cache.
pub fn huddle_outside(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(huddle_exe());
    command
        .current_dir(cwd)
        .args(args)
        .env_remove("HUDDLE_DIR")
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .stdin(Stdio::null());
    command
}

/// Runs huddle on a directory that is not a `HuddleDir` (one on a tmpfs, say).
pub fn huddle_at(dir: &Path, args: &[&str]) -> Output {
    Command::new(huddle_exe())
        .env("XDG_STATE_HOME", state_home_for(dir))
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output_within(COMMAND_LIMIT)
}

/// The longest any one command of a test may take before the test fails
/// (instead of hanging): far beyond what any of them needs.
pub const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The longest a command that compiles a 12-18 MB component (a whole
/// interpreter) may take in a debug build of huddle.
pub const COMPILE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `Command::output` with a deadline: a command still running at `limit`
/// is killed and the test fails, naming it.
pub trait OutputWithin {
    fn output_within(&mut self, limit: std::time::Duration) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: std::time::Duration) -> Output {
        let child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {self:?}: {e}"));
        wait_output_within(child, limit, &format!("{self:?}"))
    }
}

/// `Child::wait_with_output` with a deadline: a child still running at
/// `limit` is killed and the test fails, naming `what`.
pub fn wait_output_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    use std::io::Read;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().expect("read stdout"),
        stderr: stderr.join().expect("read stderr"),
    }
}

/// A state home for a directory on a test file system: two levels up, off
/// that file system (a full or read-only tmpfs must not hold the spool).
pub fn state_home_for(dir: &Path) -> PathBuf {
    dir.parent()
        .and_then(Path::parent)
        .unwrap_or(dir)
        .join("state")
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
        self.remount("remount,ro");
    }

    pub fn remount_read_write(&self) {
        self.remount("remount,rw");
    }

    /// Remounts, retrying while a process briefly holds a file open for
    /// writing (the kernel then refuses a read-only remount as "busy").
    fn remount(&self, options: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = Command::new("mount")
                .args(["-o", options])
                .arg(&self.path)
                .output()
                .expect("run mount");
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mount -o {options} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// A real HTTP server on 127.0.0.1 that records every request and answers
/// with the status the test sets (and, if set, a `location` header or a
/// body of a given size), or holds connections without a word while
/// silent. Stops when dropped.
pub struct HttpRecorder {
    pub addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<RecordedRequest>>>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    reply: std::sync::Arc<std::sync::Mutex<Reply>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone, Default)]
struct Reply {
    location: Option<String>,
    body_bytes: Option<usize>,
    silent: bool,
}

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: String,
    /// Every header line as received, name lower-cased: (name, value).
    pub headers: Vec<(String, String)>,
    /// When the whole request had arrived.
    pub received_at: std::time::Instant,
}

impl HttpRecorder {
    pub fn start() -> HttpRecorder {
        HttpRecorder::start_on(0)
    }

    /// A recorder on a given port of 127.0.0.1 (0: any free port).
    pub fn start_on(port: u16) -> HttpRecorder {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let recorder = HttpRecorder {
            addr,
            requests: Default::default(),
            status: std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200)),
            reply: Default::default(),
            connections: Default::default(),
            stop: Default::default(),
        };
        let (requests, status, reply, connections, stop) = (
            recorder.requests.clone(),
            recorder.status.clone(),
            recorder.reply.clone(),
            recorder.connections.clone(),
            recorder.stop.clone(),
        );
        std::thread::spawn(move || {
            // Connections held without an answer while silent.
            let mut held = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        continue;
                    }
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let reply = reply.lock().unwrap().clone();
                if reply.silent {
                    held.push(stream);
                    continue;
                }
                stream.set_nonblocking(false).ok();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .ok();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let (mut length, mut content_type) = (0usize, String::new());
                let mut headers = Vec::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    let lower = header.to_ascii_lowercase();
                    if let Some((name, value)) = header.split_once(':') {
                        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
                    }
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if let Some(v) = lower.strip_prefix("content-type:") {
                        content_type = v.trim().to_string();
                    }
                }
                let mut body = vec![0u8; length];
                // A client killed mid-request (the leader, in a failover test)
                // delivered nothing: do not count a torn request.
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                requests.lock().unwrap().push(RecordedRequest {
                    method,
                    path,
                    content_type,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    headers,
                    received_at: std::time::Instant::now(),
                });
                let code = status.load(Ordering::SeqCst);
                let location = reply
                    .location
                    .map(|l| format!("location: {l}\r\n"))
                    .unwrap_or_default();
                let length = reply.body_bytes.unwrap_or(2);
                let head = format!(
                    "HTTP/1.1 {code} Status\r\n{location}content-length: {length}\r\nconnection: close\r\n\r\n"
                );
                let mut stream = stream;
                if std::io::Write::write_all(&mut stream, head.as_bytes()).is_err() {
                    continue;
                }
                match reply.body_bytes {
                    None => {
                        let _ = std::io::Write::write_all(&mut stream, b"ok");
                    }
                    // Written in pieces until done or the client hangs up.
                    Some(mut left) => {
                        let chunk = vec![b'x'; 64 * 1024];
                        while left > 0 {
                            let n = left.min(chunk.len());
                            if std::io::Write::write_all(&mut stream, &chunk[..n]).is_err() {
                                break;
                            }
                            left -= n;
                        }
                    }
                }
            }
        });
        recorder
    }

    /// Answers with a `location` header (set the status to 3xx too).
    pub fn set_location(&self, location: &str) {
        self.reply.lock().unwrap().location = Some(location.to_string());
    }

    /// Answers with a body of `bytes` bytes instead of "ok".
    pub fn set_body_bytes(&self, bytes: usize) {
        self.reply.lock().unwrap().body_bytes = Some(bytes);
    }

    /// While silent, connections are accepted and held without reading or
    /// answering anything (a server that never answers).
    pub fn set_silent(&self, silent: bool) {
        self.reply.lock().unwrap().silent = silent;
    }

    /// Connections accepted so far, answered or not.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A component from `tests/plugins/dist/` (built by plugins/build.sh).
pub fn hostile_plugin(name: &str) -> PathBuf {
    repo_file(&format!("tests/plugins/dist/{name}.wasm"))
}

pub fn repo_file(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.exists(),
        "{} is missing; run plugins/build.sh",
        path.display()
    );
    path
}

/// One plugin host for the whole test binary, as in the daemon: one engine.
pub fn host() -> &'static huddle::plugin::PluginHost {
    static HOST: std::sync::OnceLock<huddle::plugin::PluginHost> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        huddle::plugin::PluginHost::with_cache_dir(plugin_cache()).expect("plugin host")
    })
}

/// The compiled-plugin cache every huddle process of the test runs shares,
/// filled once with the default plugins: compiling is set-up, not what a
/// test measures (daemons would otherwise all compile at start on a fresh
/// machine). It lives in cargo's target directory and is kept from run to
/// run (entries are keyed by the component's sha256 and the engine), so no
/// run leaves hundreds of megabytes behind in the system's temp directory.
pub fn plugin_cache() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let host = huddle::plugin::PluginHost::with_cache_dir(cache.clone()).expect("plugin host");
        for (name, slot) in [
            ("headings", huddle::plugin::Slot::HeadingMapper),
            ("markdown", huddle::plugin::Slot::Renderer),
            ("webhook", huddle::plugin::Slot::AlertSink),
            ("stderr", huddle::plugin::Slot::AlertSink),
        ] {
            host.preload(&huddle::plugin::PluginSpec::builtin(name), slot)
                .expect("default plugin compiles");
        }
    });
    cache
}

/// Serialises the tests that load the machine (many processes at once) with
/// the ones whose outcome depends on timing (failover within a bound, a
/// leader that must not be replaced while its heartbeats are on time), so
/// they measure huddle and not tests fighting over two cores. Every other
/// test still runs in parallel.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `probe` until it finds something or `limit` passes.
pub fn wait_until<T>(
    limit: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Polls `done` until it holds or `limit` passes; whether it held.
pub fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    wait_until(limit, || done().then_some(())).is_some()
}

/// libfaketime (Debian's `faketime` package; scripts/test installs it),
/// preloaded into huddle itself so that killing the child kills the daemon
/// (the `faketime` wrapper would stay between them).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A daemon whose wall clock is shifted; killed when dropped.
pub struct Skewed(pub std::process::Child);

impl Drop for Skewed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `huddle run` in `dir` as `name`, its wall clock shifted by `offset`
/// ("+1h", "-30s") and its monotonic clock left alone, as NTP or a wrong
/// clock would leave them.
pub fn start_skewed(dir: &HuddleDir, name: &str, offset: &str) -> Skewed {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/test, which installs faketime"
    );
    Skewed(
        dir.command(&["run", "--actor", name])
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start huddle run"),
    )
}
