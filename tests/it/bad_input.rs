//! Bad input over every door: a table of hostile inputs through the eight
//! ways data reaches huddle — CLI arguments, standard input, huddle.toml,
//! checkpoint files, foreign log lines, git-merged lines, plugin outputs and
//! HTTP answers to sinks. Each row names its door, the input, the words the
//! error must say (the field, key or file, and the rule or limit broken) and,
//! where a command runs, its exit code (SPEC: 1 runtime failure, 2 bad usage
//! or bad input). After every row the files are checked: a refused command
//! leaves the whole directory byte-identical; a bad line in the log is
//! quarantined once with a reason naming the field while the rest renders; a
//! failed snapshot keeps communication.md and archive.md; huddle.toml is never
//! rewritten.
//!
//! Rows sharing a directory are grouped, one test per door, so the doors run
//! in parallel and the module stays fast.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use huddle::event::Event;
use huddle::plugin::{Alert, Allowlist, DeliveryError, HttpGrant, PluginSource, PluginSpec, Slot};
use serde_json::{json, Value};

use crate::common::{
    host, hostile_plugin, huddle_exe, parse_lines, plugin_cache, repo_file, stderr,
    wait_output_within, HttpRecorder, HuddleDir, OutputWithin, COMMAND_LIMIT,
};

/// The eight doors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Door {
    CliArguments,
    Stdin,
    HuddleToml,
    CheckpointFile,
    ForeignLogLine,
    GitMergedLine,
    PluginOutput,
    HttpAnswer,
}

// ---------------------------------------------------------------------------
// What "nothing lost or half-written" is checked against.

/// Every file and directory under `dir` (relative path, and the bytes of a
/// file; `None` for a directory).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(relative, None);
                walk(root, &path, out);
            } else {
                out.insert(relative, Some(std::fs::read(&path).expect("read file")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts two trees are the same, naming the files that differ.
fn assert_same_tree(
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    row: &str,
) {
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .collect();
    assert!(
        changed.is_empty(),
        "{row}: refused, yet these files changed: {changed:?}"
    );
}

/// The error says what is wrong, in words a person reads: no panic of
/// huddle's own (a plugin's panic message may be quoted), no Rust debug
/// dump, no backtrace.
fn assert_clear_error(out: &Output, exit: i32, says: &[&str], row: &str) {
    let message = stderr(out);
    assert_eq!(out.status.code(), Some(exit), "{row}: {message}");
    for needle in says {
        assert!(
            message.contains(needle),
            "{row}: the error should say {needle:?}; it said: {message}"
        );
    }
    for dump in [
        "thread 'main' panicked",
        "RUST_BACKTRACE",
        "wasm backtrace",
        "Os {",
        "kind: ",
        "Error {",
    ] {
        assert!(
            !message.contains(dump),
            "{row}: the error holds {dump:?}: {message}"
        );
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn quarantined(dir: &Path) -> Vec<Value> {
    match std::fs::read(dir.join("events.error.log")) {
        Ok(bytes) => parse_lines(&bytes),
        Err(_) => Vec::new(),
    }
}

/// Lines appended after `before` in events.log are huddle's own `error`
/// events (a failed snapshot or a quarantined line is reported in the
/// log): what was there is kept byte for byte.
fn assert_log_kept_plus_error_events(dir: &HuddleDir, before: &[u8], row: &str) {
    let now = dir.log_bytes();
    assert!(
        now.starts_with(before),
        "{row}: events.log was rewritten, not appended to"
    );
    for event in parse_lines(&now[before.len()..]) {
        assert_eq!(event["type"], "error", "{row}: unexpected event {event}");
        assert_eq!(event["actor"], "huddle", "{row}: unexpected event {event}");
    }
}

/// Appends raw lines to events.log as another tool would (no huddle process
/// runs meanwhile, so no lock is needed).
fn append_raw(path: &Path, lines: &[Vec<u8>]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open events.log");
    for line in lines {
        file.write_all(line).expect("append");
        file.write_all(b"\n").expect("append");
    }
}

/// huddle without a `--dir`, for the rows whose input is the `--dir` itself.
fn bare_command(state: &Path) -> Command {
    let mut command = Command::new(huddle_exe());
    command
        .env_remove("HUDDLE_DIR")
        .env("XDG_STATE_HOME", state)
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .stdin(Stdio::null());
    command
}

const NOW: &str = "2026-11-25T14:00:31Z";

// ---------------------------------------------------------------------------
// Door 1: CLI arguments.

struct CliRow {
    input: &'static str,
    args: Vec<OsString>,
    exit: i32,
    says: &'static [&'static str],
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `huddle log 1 <actor> note ok`.
fn log_actor(actor: &str) -> Vec<OsString> {
    os(&["log", "1", actor, "note", "ok"])
}

/// `huddle log 1 Agent <type> ok`.
fn log_type(kind: &str) -> Vec<OsString> {
    os(&["log", "1", "Agent A", kind, "ok"])
}

/// `huddle log <interaction> Agent note ok`.
fn log_interaction(interaction: &str) -> Vec<OsString> {
    os(&["log", interaction, "Agent A", "note", "ok"])
}

/// The CLI directory's content limit, small enough to pass over it in argv.
const SMALL_CONTENT_LIMIT: usize = 64;

fn cli_rows(dir: &HuddleDir) -> Vec<CliRow> {
    let not_wasm = dir.path().parent().unwrap().join("notes.wasm");
    let core_module = dir.path().parent().unwrap().join("core.wasm");
    let no_world = dir.path().parent().unwrap().join("empty-component.wasm");
    let broken = dir.path().parent().unwrap().join("broken-component.wasm");
    std::fs::write(&not_wasm, b"hello, not wasm").unwrap();
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    // A component (version 0x0d, layer 1) with nothing in it: valid, but of no world.
    std::fs::write(&no_world, b"\0asm\x0d\0\x01\0").unwrap();
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0\x07\x05garbage").unwrap();
    let path = |p: &Path| p.display().to_string();
    let plugins_check = |p: &Path| os(&["plugins", "check", &path(p)]);
    vec![
        CliRow {
            input: "log: empty actor",
            args: log_actor(""),
            exit: 2,
            says: &["invalid actor: must not be empty"],
        },
        CliRow {
            input: "log: blank actor",
            args: log_actor("   "),
            exit: 2,
            says: &["invalid actor: must not be empty"],
        },
        CliRow {
            input: "log: tab in actor",
            args: log_actor("Agent\tA"),
            exit: 2,
            says: &["invalid actor", "control", "'\\t'"],
        },
        CliRow {
            input: "log: newline and heading in actor",
            args: log_actor("Agent A\n## Interaction #999"),
            exit: 2,
            says: &["invalid actor", "control", "'\\n'"],
        },
        CliRow {
            input: "log: escape sequence in actor",
            args: log_actor("Agent \u{1b}[2J"),
            exit: 2,
            says: &["invalid actor", "'\\u{1b}'"],
        },
        CliRow {
            input: "log: bidi override in actor",
            args: log_actor("Agent\u{202e}A"),
            exit: 2,
            says: &["invalid actor", "bidi-override", "'\\u{202e}'"],
        },
        CliRow {
            input: "log: zero-width space in actor",
            args: log_actor("Agent\u{200b}A"),
            exit: 2,
            says: &["invalid actor", "'\\u{200b}'"],
        },
        CliRow {
            input: "log: actor of 257 bytes",
            args: log_actor(&"a".repeat(257)),
            exit: 2,
            says: &["invalid actor: is 257 bytes, over the limit of 256 bytes"],
        },
        CliRow {
            input: "log: empty type",
            args: log_type(""),
            exit: 2,
            says: &["invalid type: must match [a-z][a-z0-9_-]*"],
        },
        CliRow {
            input: "log: type starting with a digit",
            args: log_type("9note"),
            exit: 2,
            says: &["invalid type: must match [a-z][a-z0-9_-]*", "\"9note\""],
        },
        CliRow {
            input: "log: uppercase type",
            args: log_type("Note"),
            exit: 2,
            says: &["invalid type: must match [a-z][a-z0-9_-]*", "\"Note\""],
        },
        CliRow {
            input: "log: type with a space",
            args: log_type("no te"),
            exit: 2,
            says: &["invalid type: must match [a-z][a-z0-9_-]*"],
        },
        CliRow {
            input: "log: type of 65 bytes",
            args: log_type(&"a".repeat(65)),
            exit: 2,
            says: &["invalid type: is 65 bytes, over the limit of 64 bytes"],
        },
        CliRow {
            input: "log: negative interaction",
            args: log_interaction("-1"),
            exit: 2,
            says: &[
                "invalid interaction: must be a non-negative integer or `next`",
                "\"-1\"",
            ],
        },
        CliRow {
            input: "log: fractional interaction",
            args: log_interaction("1.5"),
            exit: 2,
            says: &[
                "invalid interaction: must be a non-negative integer or `next`",
                "\"1.5\"",
            ],
        },
        CliRow {
            input: "log: interaction as text",
            args: log_interaction("three"),
            exit: 2,
            says: &[
                "invalid interaction: must be a non-negative integer or `next`",
                "\"three\"",
            ],
        },
        CliRow {
            input: "log: empty interaction",
            args: log_interaction(""),
            exit: 2,
            says: &["invalid interaction: must be a non-negative integer or `next`"],
        },
        CliRow {
            input: "log: interaction 2^53",
            args: log_interaction("9007199254740992"),
            exit: 2,
            says: &["invalid interaction: must be at most 9007199254740991 (2^53 - 1)"],
        },
        CliRow {
            input: "log: interaction 2^64",
            args: log_interaction("18446744073709551616"),
            exit: 2,
            says: &["invalid interaction: must be at most 9007199254740991 (2^53 - 1)"],
        },
        CliRow {
            input: "log: content over log.max_content_bytes",
            args: os(&[
                "log",
                "1",
                "Agent A",
                "note",
                &"c".repeat(SMALL_CONTENT_LIMIT + 1),
            ]),
            exit: 2,
            says: &[
                "invalid content: is 65 bytes, over the limit of 64 bytes (log.max_content_bytes)",
            ],
        },
        CliRow {
            input: "log: content argument not UTF-8",
            args: vec![
                "log".into(),
                "1".into(),
                "Agent A".into(),
                "note".into(),
                OsString::from_vec(b"ok \xff\xfe".to_vec()),
            ],
            exit: 2,
            says: &["<CONTENT> is not valid UTF-8 (first bad byte at offset 3)"],
        },
        CliRow {
            input: "log: actor argument not UTF-8",
            args: vec![
                "log".into(),
                "1".into(),
                OsString::from_vec(b"Agent \xc3".to_vec()),
                "note".into(),
                "ok".into(),
            ],
            exit: 2,
            says: &["<ACTOR> is not valid UTF-8 (first bad byte at offset 6)"],
        },
        CliRow {
            input: "log: an argument missing",
            args: os(&["log", "1", "Agent A", "note"]),
            exit: 2,
            says: &["required arguments were not provided", "<CONTENT>"],
        },
        CliRow {
            input: "log: unknown flag",
            args: os(&["log", "--frobnicate", "1", "Agent A", "note", "ok"]),
            exit: 2,
            says: &["unexpected argument '--frobnicate'"],
        },
        CliRow {
            input: "unknown subcommand",
            args: os(&["frobnicate"]),
            exit: 2,
            says: &["unrecognized subcommand 'frobnicate'"],
        },
        CliRow {
            input: "snapshot -k negative",
            args: os(&["snapshot", "-k", "-1"]),
            exit: 2,
            says: &["invalid value '-1' for '--k <K>'"],
        },
        CliRow {
            input: "snapshot -k text",
            args: os(&["snapshot", "-k", "three"]),
            exit: 2,
            says: &["invalid value 'three' for '--k <K>'"],
        },
        CliRow {
            input: "snapshot -k beyond usize",
            args: os(&["snapshot", "-k", "99999999999999999999999"]),
            exit: 2,
            says: &["invalid value '99999999999999999999999' for '--k <K>'"],
        },
        CliRow {
            input: "ack: negative interaction",
            args: os(&["ack", "--agent", "reader", "-1"]),
            exit: 2,
            says: &["invalid value '-1' for '<INTERACTION>'"],
        },
        CliRow {
            input: "ack: interaction as text",
            args: os(&["ack", "--agent", "reader", "three"]),
            exit: 2,
            says: &["invalid value 'three' for '<INTERACTION>'"],
        },
        CliRow {
            input: "ack: interaction 2^53",
            args: os(&["ack", "--agent", "reader", "9007199254740992"]),
            exit: 2,
            says: &["invalid interaction: is 9007199254740992, over the limit of 9007199254740991"],
        },
        CliRow {
            input: "ack: agent escaping the directory",
            args: os(&["ack", "--agent", "../escape", "1"]),
            exit: 2,
            says: &["invalid agent", "[A-Za-z0-9._-]", "\"../escape\""],
        },
        CliRow {
            input: "ack: hidden agent",
            args: os(&["ack", "--agent", ".hidden", "1"]),
            exit: 2,
            says: &["invalid agent", "not starting with '.'"],
        },
        CliRow {
            input: "next: empty agent",
            args: os(&["next", "--agent", ""]),
            exit: 2,
            says: &["invalid agent: must be 1 to 64 characters"],
        },
        CliRow {
            input: "next: agent of 65 characters",
            args: os(&["next", "--agent", &"a".repeat(65)]),
            exit: 2,
            says: &["invalid agent: must be 1 to 64 characters"],
        },
        CliRow {
            input: "next: agent with a slash",
            args: os(&["next", "--agent", "team/a"]),
            exit: 2,
            says: &["invalid agent", "\"team/a\""],
        },
        CliRow {
            input: "next: agent not UTF-8",
            args: vec![
                "next".into(),
                "--agent".into(),
                OsString::from_vec(b"a\xff".to_vec()),
            ],
            exit: 2,
            says: &["--agent <AGENT> is not valid UTF-8 (first bad byte at offset 1)"],
        },
        CliRow {
            input: "heartbeat: empty actor",
            args: os(&["heartbeat", ""]),
            exit: 2,
            says: &["invalid actor: must not be empty"],
        },
        CliRow {
            input: "heartbeat: bell in actor",
            args: os(&["heartbeat", "daemon\u{7}"]),
            exit: 2,
            says: &["invalid actor", "'\\u{7}'"],
        },
        CliRow {
            input: "run: empty actor",
            args: os(&["run", "--actor", ""]),
            exit: 2,
            says: &["invalid actor: must not be empty"],
        },
        CliRow {
            input: "run: newline in actor",
            args: os(&["run", "--actor", "leader\nfake"]),
            exit: 2,
            says: &["invalid actor", "'\\n'"],
        },
        CliRow {
            input: "plugins check: missing file",
            args: os(&["plugins", "check", "/nonexistent/plugin.wasm"]),
            exit: 2,
            says: &["cannot read /nonexistent/plugin.wasm: No such file or directory"],
        },
        CliRow {
            input: "plugins check: not wasm",
            args: plugins_check(&not_wasm),
            exit: 2,
            says: &["notes.wasm is not a WebAssembly file", "\\0asm magic bytes"],
        },
        CliRow {
            input: "plugins check: a core module",
            args: plugins_check(&core_module),
            exit: 2,
            says: &[
                "core.wasm is a core WebAssembly module, not a component",
                "wasm32-wasip2",
            ],
        },
        CliRow {
            input: "plugins check: a component of no huddle world",
            args: plugins_check(&no_world),
            exit: 2,
            says: &[
                "empty-component.wasm implements none of huddle's worlds",
                "huddle:plugin/render@0.1.0",
            ],
        },
        CliRow {
            input: "plugins check: a damaged component",
            args: plugins_check(&broken),
            exit: 2,
            says: &["broken-component.wasm is not a valid component"],
        },
    ]
}

/// Rows whose input is the `--dir` itself.
struct DirRow {
    input: &'static str,
    target: PathBuf,
    args: Vec<&'static str>,
    problem: &'static str,
}

fn dir_rows(missing: &Path, file: &Path) -> Vec<DirRow> {
    let row = |input, target: &Path, args: &[&'static str], problem| DirRow {
        input,
        target: target.to_path_buf(),
        args: args.to_vec(),
        problem,
    };
    vec![
        row(
            "--dir missing: log",
            missing,
            &["log", "1", "A", "note", "x"],
            "does not exist",
        ),
        row(
            "--dir missing: snapshot",
            missing,
            &["snapshot"],
            "does not exist",
        ),
        row(
            "--dir missing: status",
            missing,
            &["status"],
            "does not exist",
        ),
        row(
            "--dir missing: ack",
            missing,
            &["ack", "--agent", "a", "1"],
            "does not exist",
        ),
        row(
            "--dir missing: next",
            missing,
            &["next", "--agent", "a"],
            "does not exist",
        ),
        row("--dir missing: run", missing, &["run"], "does not exist"),
        row(
            "--dir missing: heartbeat",
            missing,
            &["heartbeat", "a"],
            "does not exist",
        ),
        row(
            "--dir a file: log",
            file,
            &["log", "1", "A", "note", "x"],
            "is not a directory",
        ),
        row(
            "--dir a file: snapshot",
            file,
            &["snapshot"],
            "is not a directory",
        ),
    ]
}

#[test]
fn cli_arguments_are_refused_with_the_argument_and_rule_named_and_nothing_written() {
    let dir = HuddleDir::with_config(&format!(
        "[log]\nmax_content_bytes = {SMALL_CONTENT_LIMIT}\n"
    ));
    dir.ok(&["log", "1", "Agent A", "question", "already here"]);
    dir.ok(&["ack", "--agent", "reader", "1"]);
    dir.ok(&["snapshot"]);
    let rows = cli_rows(&dir);
    let outside = dir.path().parent().unwrap().to_path_buf();
    for row in &rows {
        let before = tree(&outside);
        let out = dir
            .command(&[])
            .args(&row.args)
            .output_within(COMMAND_LIMIT);
        let name = format!("{:?} {}", Door::CliArguments, row.input);
        assert_clear_error(&out, row.exit, row.says, &name);
        // The whole temp dir: nothing inside the huddle or beside it (an
        // agent named ../escape) was written.
        assert_same_tree(&before, &tree(&outside), &name);
    }

    // `--dir` itself: a directory that does not exist, or a file.
    let missing = outside.join("no-such-huddle");
    let dir_rows = dir_rows(&missing, &dir.file("events.log"));
    for DirRow {
        input,
        target,
        args,
        problem,
    } in &dir_rows
    {
        let before = tree(&outside);
        let out = bare_command(&dir.state_home())
            .arg("--dir")
            .arg(target)
            .args(args)
            .output_within(COMMAND_LIMIT);
        let name = format!("{:?} {input}", Door::CliArguments);
        let names = format!("the huddle directory {} {problem}", target.display());
        assert_clear_error(&out, 2, &[&names, "huddle init"], &name);
        assert!(!missing.exists(), "{name}: created the mistyped directory");
        assert_same_tree(&before, &tree(&outside), &name);
    }
}

// ---------------------------------------------------------------------------
// Door 2: standard input (`-` as content).

struct StdinRow {
    input: &'static str,
    stdin: Vec<u8>,
    says: &'static [&'static str],
}

fn stdin_rows() -> Vec<StdinRow> {
    vec![
        StdinRow {
            input: "invalid UTF-8",
            stdin: b"fine \xff then not".to_vec(),
            says: &[
                "invalid content: standard input is not valid UTF-8 (first bad byte at offset 5)",
            ],
        },
        StdinRow {
            input: "UTF-8 cut in the middle of a character",
            stdin: "caf\u{e9}".as_bytes()[..4].to_vec(),
            says: &[
                "invalid content: standard input is not valid UTF-8 (first bad byte at offset 3)",
            ],
        },
        StdinRow {
            input: "a UTF-16 text",
            stdin: b"\xff\xfeh\0i\0".to_vec(),
            says: &[
                "invalid content: standard input is not valid UTF-8 (first bad byte at offset 0)",
            ],
        },
        StdinRow {
            input: "a NUL byte",
            stdin: b"before\0after".to_vec(),
            says: &["invalid content: contains a NUL byte at byte 6"],
        },
        StdinRow {
            input: "one byte over the limit",
            stdin: vec![b'x'; SMALL_CONTENT_LIMIT + 1],
            says: &[
                "invalid content: is 65 bytes, over the limit of 64 bytes (log.max_content_bytes)",
            ],
        },
        StdinRow {
            input: "a mebibyte against a limit of 64 bytes",
            stdin: vec![b'x'; 1 << 20],
            says: &[
                "invalid content",
                "over the limit of 64 bytes (log.max_content_bytes)",
            ],
        },
    ]
}

#[test]
fn standard_input_is_refused_with_the_rule_named_and_nothing_written() {
    let dir = HuddleDir::with_config(&format!(
        "[log]\nmax_content_bytes = {SMALL_CONTENT_LIMIT}\n"
    ));
    dir.ok(&["log", "1", "Agent A", "question", "already here"]);
    for row in stdin_rows() {
        let before = tree(dir.path());
        let mut child = dir
            .command(&["log", "1", "Agent A", "note", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start huddle");
        let mut input = child.stdin.take().unwrap();
        let bytes = row.stdin.clone();
        // huddle may stop reading at the limit: a refused write is fine.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
        let out = wait_output_within(child, COMMAND_LIMIT, row.input);
        writer.join().unwrap();
        let name = format!("{:?} {}", Door::Stdin, row.input);
        assert_clear_error(&out, 2, row.says, &name);
        assert_same_tree(&before, &tree(dir.path()), &name);
    }
    // The limit itself is fine, and one trailing newline is not content.
    let mut at_limit = vec![b'y'; SMALL_CONTENT_LIMIT];
    at_limit.push(b'\n');
    let mut child = dir
        .command(&["log", "1", "Agent A", "note", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&at_limit).unwrap();
    let out = wait_output_within(child, COMMAND_LIMIT, "at the limit");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dir.events().last().unwrap()["content"], "y".repeat(64));
}

// ---------------------------------------------------------------------------
// Door 3: huddle.toml.

/// Which command meets the bad setting: every command reads huddle.toml, but
/// plugin and sink settings are only used by the commands that run them.
#[derive(Debug, Clone, Copy)]
enum Meets {
    /// `huddle log` refuses at once (exit 2) and writes nothing.
    Log,
    /// `huddle plugins list` (which reads the sinks) refuses (exit 2);
    /// `huddle log` still works, as the setting is not its business.
    PluginsList,
    /// `huddle snapshot` fails (exit 1): communication.md and archive.md are
    /// kept, and the failure is reported as an `error` event.
    Snapshot,
}

struct TomlRow {
    input: &'static str,
    toml: Vec<u8>,
    meets: Meets,
    says: &'static [&'static str],
}

fn toml_row(
    input: &'static str,
    toml: &str,
    meets: Meets,
    says: &'static [&'static str],
) -> TomlRow {
    TomlRow {
        input,
        toml: toml.as_bytes().to_vec(),
        meets,
        says,
    }
}

fn toml_rows() -> Vec<TomlRow> {
    use Meets::*;
    let sink = |rest: &str| {
        format!("[[alerts.sinks]]\nplugin = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n{rest}")
    };
    vec![
        toml_row("not TOML", "[log\nk = 3\n", Log, &["huddle.toml is not valid", "TOML parse error at line 1", "unclosed table"]),
        toml_row("unknown top-level key", "k = 3\n", Log, &["huddle.toml is not valid", "unknown field `k`", "`snapshot`"]),
        toml_row("a table pasted twice", "[plugins.renderer]\n\n[snapshot]\nk = 3\n\n[plugins.renderer]\nplugin = \"x.wasm\"\n", Log, &["line 6", "duplicate key", "`huddle init` writes each table once", "set the keys in that table instead of adding another"]),
        toml_row("misspelt key", "[snapshot]\nkk = 3\n", Log, &["unknown field `kk`, expected `k`"]),
        toml_row("misspelt log key", "[log]\nlock_atempts = 3\n", Log, &["unknown field `lock_atempts`"]),
        toml_row("unknown table", "[plugins.frobnicator]\nplugin = \"x\"\n", Log, &["unknown field `frobnicator`", "`heading-mapper` or `renderer`"]),
        toml_row("k as text", "[snapshot]\nk = \"three\"\n", Log, &["line 2", "k = \"three\"", "invalid type: string \"three\", expected usize"]),
        toml_row("negative k", "[snapshot]\nk = -1\n", Log, &["line 2", "k = -1", "invalid value: integer `-1`"]),
        toml_row("k as a float", "[snapshot]\nk = 2.5\n", Log, &["k = 2.5", "invalid type: floating point"]),
        toml_row("unknown durability", "[log]\ndurability = \"sometimes\"\n", Log, &["unknown variant `sometimes`, expected `fsync` or `none`"]),
        toml_row("content limit 0", "[log]\nmax_content_bytes = 0\n", Log, &["log.max_content_bytes = 0 is out of range: it must be at least 1"]),
        toml_row("negative content limit", "[log]\nmax_content_bytes = -5\n", Log, &["max_content_bytes = -5", "invalid value: integer `-5`"]),
        toml_row("no lock attempts", "[log]\nlock_attempts = 0\n", Log, &["log.lock_attempts = 0 is out of range: it must be at least 1"]),
        toml_row("heartbeat of 0 ms", "[daemon]\nheartbeat_ms = 0\n", Log, &["daemon.heartbeat_ms = 0 is out of range: it must be at least 10", "every heartbeat is an event in the log"]),
        toml_row("leader timeout under the heartbeat", "[daemon]\nheartbeat_ms = 2000\nleader_timeout_ms = 1500\n", Log, &["daemon.leader_timeout_ms = 1500 is out of range", "more than daemon.heartbeat_ms = 2000"]),
        toml_row("poll of 0 ms", "[daemon]\npoll_ms = 0\n", Log, &["daemon.poll_ms = 0 is out of range: it must be at least 1", "busy loop"]),
        toml_row("no retry attempts", "[daemon]\nretry_attempts = 0\n", Log, &["daemon.retry_attempts = 0 is out of range"]),
        toml_row("timing beyond u64", "[daemon]\nheartbeat_ms = 18446744073709551616\n", Log, &["heartbeat_ms = 18446744073709551616", "TOML parse error"]),
        toml_row("sync every 0 s", "[sync]\ninterval_secs = 0\n", Log, &["sync.interval_secs = 0 is out of range: it must be at least 1"]),
        toml_row("sync timeout 0 s", "[sync]\ntimeout_secs = 0\n", Log, &["sync.timeout_secs = 0 is out of range"]),
        toml_row("sync enabled as text", "[sync]\nenabled = \"yes\"\n", Log, &["enabled = \"yes\"", "invalid type: string \"yes\", expected a boolean"]),
        toml_row("renderer deadline 0", "[plugins.renderer]\ndeadline_ms = 0\n", Log, &["plugins.renderer.deadline_ms = 0 is out of range: it must be at least 1"]),
        toml_row("mapper memory 0", "[plugins.heading-mapper]\nmemory_mb = 0\n", Log, &["plugins.heading-mapper.memory_mb = 0 is out of range: it must be at least 1"]),
        toml_row("empty plugin name", "[plugins.renderer]\nplugin = \"\"\n", Log, &["plugins.renderer.plugin must name a built-in plugin or a .wasm file"]),
        toml_row("settings not a table", "[plugins.renderer]\nsettings = \"x\"\n", Log, &["settings = \"x\"", "invalid type: string \"x\""]),
        toml_row("sink without a plugin", "[[alerts.sinks]]\nurl = \"http://x/\"\n", Log, &["missing field `plugin`"]),
        toml_row("sink with an empty plugin", "[[alerts.sinks]]\nplugin = \"\"\n", Log, &["alerts.sinks[0].plugin must name a built-in plugin or a .wasm file"]),
        toml_row("sink timeout 0", &sink("timeout_ms = 0\n"), Log, &["alerts.sinks[0].timeout_ms = 0 is out of range: it must be at least 1"]),
        toml_row("sink memory 0", &sink("memory_mb = 0\n"), Log, &["alerts.sinks[0].memory_mb = 0 is out of range"]),
        toml_row("sink deadline 0", &sink("deadline_ms = 0\n"), Log, &["alerts.sinks[0].deadline_ms = 0 is out of range"]),
        toml_row("sink from yesterday", &sink("from = \"yesterday\"\n"), Log, &["unknown variant `yesterday`, expected `end` or `start`"]),
        toml_row("sink socks proxy", &sink("proxy = \"socks5://p:1080\"\n"), Log, &["alerts.sinks[0].proxy", "must be an http:// or https:// proxy URL"]),
        toml_row("sink proxy not a URL", &sink("proxy = \"http://\"\n"), Log, &["alerts.sinks[0].proxy", "is not a proxy URL"]),
        toml_row("sink with an empty name", &sink("name = \"\"\n"), Log, &["alerts.sinks[0].name must be 1 to 64 bytes"]),
        toml_row("sink name with a newline", &sink("name = \"ops\\nchat\"\n"), Log, &["alerts.sinks[0].name must be 1 to 64 bytes without control characters"]),
        toml_row(
            "two sinks of one name",
            &format!("{}{}", sink("name = \"ops\"\n"), "[[alerts.sinks]]\nplugin = \"stderr\"\nname = \"ops\"\n"),
            Log,
            &["alerts.sinks[0] and alerts.sinks[1] are both known as \"ops\"", "distinct `name`"],
        ),
        toml_row(
            "two unnamed sinks of one plugin are fine, the third named like the second is not",
            &format!("{}{}", sink(""), "[[alerts.sinks]]\nplugin = \"webhook\"\n[[alerts.sinks]]\nplugin = \"stderr\"\nname = \"webhook#2\"\n"),
            Log,
            &["alerts.sinks[1] and alerts.sinks[2] are both known as \"webhook#2\""],
        ),
        toml_row("allow not a list", &sink("allow = \"http://127.0.0.1:9/\"\n"), Log, &["invalid type: string \"http://127.0.0.1:9/\", expected a sequence"]),
        toml_row("allow an ftp URL", &sink("allow = [\"ftp://127.0.0.1/\"]\n"), PluginsList, &["alerts.sinks[0].allow", "allowlist entry \"ftp://127.0.0.1/\" is refused: only http:// and https:// URLs are allowed"]),
        toml_row("allow with credentials", &sink("allow = [\"http://u:p@127.0.0.1/\"]\n"), PluginsList, &["alerts.sinks[0].allow", "\"http://u:p@127.0.0.1/\" is refused", "credentials"]),
        toml_row("allow with a dot segment", &sink("allow = [\"http://127.0.0.1/hook/../admin/\"]\n"), PluginsList, &["alerts.sinks[0].allow", "dot segment"]),
        toml_row("allow with a query", &sink("allow = [\"http://127.0.0.1/hook?x=1\"]\n"), PluginsList, &["alerts.sinks[0].allow", "cannot have a query"]),
        toml_row("allow not a URL", &sink("allow = [\"hooks.slack.com\"]\n"), PluginsList, &["alerts.sinks[0].allow", "\"hooks.slack.com\" is refused: not a URL"]),
        toml_row("renderer neither built-in nor file", "[plugins.renderer]\nplugin = \"markdwn\"\n", Snapshot, &["plugin markdwn: cannot load", "no such file, and \"markdwn\" is not a built-in plugin either (built-ins: headings, markdown, webhook, stderr)"]),
        toml_row("mapper .wasm path missing", "[plugins.heading-mapper]\nplugin = \"plugins/mine.wasm\"\n", Snapshot, &["plugin mine.wasm: cannot load", "plugins/mine.wasm", "no such file"]),
        toml_row("a mapper in the renderer slot", "[plugins.renderer]\nplugin = \"headings\"\n", Snapshot, &["plugin headings: implements the huddle:plugin/heading-mapper@0.2.0 world, but this slot needs huddle:plugin/renderer (WIT 0.1.0 or 0.2.0)"]),
        toml_row("unknown mapper setting", "[plugins.heading-mapper.settings]\ncolour = \"red\"\n", Snapshot, &["plugin headings: configure refused its settings", "unknown setting `colour`"]),
        toml_row("unknown renderer setting", "[plugins.renderer.settings]\ncolour = \"red\"\n", Snapshot, &["plugin markdown: configure refused its settings", "unknown setting `colour`"]),
        toml_row("renderer template that does not parse", "[plugins.renderer.settings]\ncommunication_template = \"{% for %}\"\n", Snapshot, &["plugin markdown", "communication_template"]),
        TomlRow {
            input: "not UTF-8",
            toml: b"[snapshot]\nk = \"\xff\"\n".to_vec(),
            meets: Log,
            says: &["huddle.toml is not valid: it is not UTF-8 text (first bad byte at offset 16)"],
        },
    ]
}

#[test]
fn huddle_toml_mistakes_are_named_by_key_and_limit_and_nothing_is_written() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "already here"]);
    dir.ok(&["snapshot"]);
    for row in toml_rows() {
        let name = format!("{:?} {}", Door::HuddleToml, row.input);
        std::fs::write(dir.file("huddle.toml"), &row.toml).unwrap();
        let before = tree(dir.path());
        match row.meets {
            Meets::Log => {
                for args in [
                    &["log", "2", "Agent A", "note", "refused"][..],
                    &["snapshot"],
                    &["status"],
                ] {
                    let out = dir.run(args);
                    assert_clear_error(&out, 2, row.says, &format!("{name} ({})", args[0]));
                    assert_same_tree(&before, &tree(dir.path()), &name);
                }
            }
            Meets::PluginsList => {
                let out = dir.run(&["plugins", "list"]);
                assert_clear_error(&out, 2, row.says, &name);
                assert_same_tree(&before, &tree(dir.path()), &name);
            }
            Meets::Snapshot => {
                let log = dir.log_bytes();
                let out = dir.run(&["snapshot"]);
                assert_clear_error(&out, 1, row.says, &name);
                for kept in ["communication.md", "archive.md", "communication.md.bak"] {
                    assert_eq!(
                        before.get(Path::new(kept)),
                        Some(&Some(read(&dir.file(kept)))),
                        "{name}: {kept} changed"
                    );
                }
                assert_log_kept_plus_error_events(&dir, &log, &name);
            }
        }
        assert_eq!(
            read(&dir.file("huddle.toml")),
            row.toml,
            "{name}: huddle.toml rewritten"
        );
    }
    // With a good file again, everything works and nothing was lost.
    std::fs::write(dir.file("huddle.toml"), "").unwrap();
    dir.ok(&["log", "2", "Agent A", "note", "after the fixes"]);
    dir.ok(&["snapshot"]);
    let communication = String::from_utf8(read(&dir.file("communication.md"))).unwrap();
    assert!(communication.contains("already here") && communication.contains("after the fixes"));
}

// ---------------------------------------------------------------------------
// Door 4: checkpoint files (`agent-<id>.checkpoint`).

struct CheckpointRow {
    input: &'static str,
    bytes: Vec<u8>,
    says: &'static str,
}

fn checkpoint_rows() -> Vec<CheckpointRow> {
    let row = |input, bytes: &[u8], says| CheckpointRow {
        input,
        bytes: bytes.to_vec(),
        says,
    };
    vec![
        row(
            "garbage",
            b"garbage\n",
            "it holds \"garbage\", not a non-negative integer",
        ),
        row(
            "negative",
            b"-1\n",
            "it holds \"-1\", not a non-negative integer",
        ),
        row(
            "fractional",
            b"2.5\n",
            "it holds \"2.5\", not a non-negative integer",
        ),
        row(
            "two numbers",
            b"1 2\n",
            "it holds \"1 2\", not a non-negative integer",
        ),
        row(
            "2^53",
            b"9007199254740992\n",
            "it holds 9007199254740992, over the limit of 9007199254740991 (2^53 - 1)",
        ),
        row(
            "beyond u64",
            b"99999999999999999999999\n",
            "it holds 99999999999999999999999, over the limit of 9007199254740991",
        ),
        row("empty", b"", "it is empty"),
        row("only whitespace", b" \n\n", "it is empty"),
        row("binary", b"\x00\xff\x13\x37", "it is not text"),
        row(
            "huge",
            &b"7".repeat(1 << 20),
            "it is over the limit of 64 bytes",
        ),
        row(
            "JSON",
            b"{\"interaction\":1}\n",
            "it holds \"{\\\"interaction\\\":1}\", not a non-negative integer",
        ),
    ]
}

#[test]
fn damaged_checkpoint_files_are_named_and_left_alone() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "q1"]);
    dir.ok(&["log", "2", "Agent A", "question", "q2"]);
    let checkpoint = dir.file("agent-reader.checkpoint");
    for row in checkpoint_rows() {
        let name = format!("{:?} {}", Door::CheckpointFile, row.input);
        std::fs::write(&checkpoint, &row.bytes).unwrap();
        let before = tree(dir.path());
        let out = dir.run(&["next", "--agent", "reader"]);
        let says = [
            &format!("{} is damaged: {}", checkpoint.display(), row.says)[..],
            "huddle ack --agent reader N",
        ];
        assert_clear_error(&out, 2, &says, &name);
        assert!(out.stdout.is_empty(), "{name}: printed events anyway");
        assert_same_tree(&before, &tree(dir.path()), &name);
    }
    // A directory where the file should be: named, a runtime failure.
    std::fs::remove_file(&checkpoint).unwrap();
    std::fs::create_dir(&checkpoint).unwrap();
    let before = tree(dir.path());
    let out = dir.run(&["next", "--agent", "reader"]);
    let says = format!("cannot read {}: Is a directory", checkpoint.display());
    assert_clear_error(&out, 1, &[&says], "checkpoint is a directory");
    assert_same_tree(&before, &tree(dir.path()), "checkpoint is a directory");
    std::fs::remove_dir(&checkpoint).unwrap();

    // `ack` is the way out: it replaces a damaged file whole.
    std::fs::write(&checkpoint, b"garbage").unwrap();
    dir.ok(&["ack", "--agent", "reader", "1"]);
    assert_eq!(read(&checkpoint), b"1\n");
    let next = dir.ok(&["next", "--agent", "reader", "--json"]);
    let contents: Vec<Value> = next
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["content"].clone())
        .collect();
    assert_eq!(contents, [json!("q2")]);
}

// ---------------------------------------------------------------------------
// Door 5: foreign log lines (appended raw, as another tool would).

struct LineRow {
    input: &'static str,
    line: Vec<u8>,
    /// The quarantine reason starts with this (the field, or what the line is).
    reason: &'static str,
}

/// A foreign event in interaction 2 (which nothing valid uses), with one
/// change; `row` keeps every line distinct.
fn foreign_event(row: usize, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut event = serde_json::Map::new();
    event.insert("interaction".into(), json!(2));
    event.insert("actor".into(), json!("Shell Agent"));
    event.insert("type".into(), json!("note"));
    event.insert("content".into(), json!("from a shell script"));
    event.insert("timestamp".into(), json!(NOW));
    event.insert("row".into(), json!(row));
    change(&mut event);
    Value::Object(event).to_string().into_bytes()
}

fn foreign_rows() -> Vec<LineRow> {
    let mut rows = Vec::new();
    let mut set = |input: &'static str, field: &'static str, value: Value, reason: &'static str| {
        let n = rows.len();
        rows.push(LineRow {
            input,
            line: foreign_event(n, |e| {
                e.insert(field.to_string(), value);
            }),
            reason,
        });
    };
    set(
        "interaction as a string",
        "interaction",
        json!("2"),
        "invalid interaction: must be a non-negative integer, got the string \"2\"",
    );
    set(
        "negative interaction",
        "interaction",
        json!(-2),
        "invalid interaction: must be a non-negative integer, got the number -2",
    );
    set(
        "fractional interaction",
        "interaction",
        json!(2.5),
        "invalid interaction: must be a non-negative integer, got the number 2.5",
    );
    set(
        "null interaction",
        "interaction",
        Value::Null,
        "invalid interaction: must be a non-negative integer, got null",
    );
    set(
        "interaction 2^53",
        "interaction",
        json!(9_007_199_254_740_992u64),
        "invalid interaction: is 9007199254740992, over the limit of 9007199254740991",
    );
    set(
        "interaction 2^64 - 1",
        "interaction",
        json!(u64::MAX),
        "invalid interaction: is 18446744073709551615, over the limit",
    );
    set(
        "actor a number",
        "actor",
        json!(5),
        "invalid actor: must be a string, got the number 5",
    );
    set(
        "actor empty",
        "actor",
        json!(""),
        "invalid actor: must not be empty",
    );
    set(
        "actor blank",
        "actor",
        json!("  \t "),
        "invalid actor: must not be empty",
    );
    set(
        "actor with NUL",
        "actor",
        json!("Shell\u{0}Agent"),
        "invalid actor: must not contain control",
    );
    set(
        "actor with a newline and a heading",
        "actor",
        json!("Shell\n## Interaction #999"),
        "invalid actor: must not contain control",
    );
    set(
        "actor with a bidi override",
        "actor",
        json!("Shell\u{202e}Agent"),
        "invalid actor: must not contain control",
    );
    set(
        "actor with a line separator",
        "actor",
        json!("Shell\u{2028}Agent"),
        "invalid actor: must not contain control",
    );
    set(
        "actor of 257 bytes",
        "actor",
        json!("a".repeat(257)),
        "invalid actor: is 257 bytes, over the limit of 256 bytes",
    );
    set(
        "type an array",
        "type",
        json!(["note"]),
        "invalid type: must be a string, got an array",
    );
    set(
        "type empty",
        "type",
        json!(""),
        "invalid type: must match [a-z][a-z0-9_-]*",
    );
    set(
        "type uppercase",
        "type",
        json!("Note"),
        "invalid type: must match [a-z][a-z0-9_-]*",
    );
    set(
        "type with a newline",
        "type",
        json!("note\n## Interaction #9"),
        "invalid type: must match [a-z][a-z0-9_-]*",
    );
    set(
        "type of 65 bytes",
        "type",
        json!("t".repeat(65)),
        "invalid type: is 65 bytes, over the limit of 64 bytes",
    );
    set(
        "type of 257 bytes",
        "type",
        json!("t".repeat(257)),
        "invalid type: is 257 bytes, over the limit of 64 bytes",
    );
    set(
        "content an object",
        "content",
        json!({"text": "hi"}),
        "invalid content: must be a string, got an object",
    );
    set(
        "content with NUL",
        "content",
        json!("a\u{0}b"),
        "invalid content: contains a NUL byte at byte 1",
    );
    set(
        "content over the limit",
        "content",
        json!("c".repeat(65)),
        "invalid content: is 65 bytes, over the limit of 64 bytes (log.max_content_bytes)",
    );
    set(
        "timestamp a number",
        "timestamp",
        json!(1_764_000_000),
        "invalid timestamp: must be a string, got the number 1764000000",
    );
    set(
        "timestamp \"yesterday\"",
        "timestamp",
        json!("yesterday"),
        "invalid timestamp: must be an RFC 3339 date and time",
    );
    set(
        "timestamp empty",
        "timestamp",
        json!(""),
        "invalid timestamp: must be an RFC 3339 date and time",
    );
    set(
        "id a number",
        "id",
        json!(7),
        "invalid id: must be a string, got the number 7",
    );
    set(
        "id of 129 bytes",
        "id",
        json!("i".repeat(129)),
        "invalid id: must be 1 to 128 bytes, got 129 bytes",
    );
    set(
        "id with a control character",
        "id",
        json!("id\u{1b}x"),
        "invalid id: must not contain control characters",
    );
    set(
        "term a string",
        "term",
        json!("3"),
        "invalid term: must be a non-negative integer, got the string \"3\"",
    );
    set(
        "term 2^53",
        "term",
        json!(9_007_199_254_740_992u64),
        "invalid term: is 9007199254740992, over the limit",
    );
    for field in ["interaction", "actor", "type", "content", "timestamp"] {
        let n = rows.len();
        rows.push(LineRow {
            input: "a required field missing",
            line: foreign_event(n, |e| {
                e.remove(field);
            }),
            reason: match field {
                "interaction" => "invalid interaction: missing",
                "actor" => "invalid actor: missing",
                "type" => "invalid type: missing",
                "content" => "invalid content: missing",
                _ => "invalid timestamp: missing",
            },
        });
    }
    let raw = |input, line: &[u8], reason| LineRow {
        input,
        line: line.to_vec(),
        reason,
    };
    rows.extend([
        raw("not JSON", b"this line is not json", "not JSON: expected"),
        raw("a torn JSON line", br#"{"interaction":2,"actor":"x","ty"#, "not JSON: EOF while parsing"),
        raw("a JSON array", b"[2, \"Shell\", \"note\"]", "not an event: an array, where an event is a JSON object"),
        raw("a JSON string", b"\"an event\"", "not an event: the string \"an event\""),
        raw("a lone surrogate escape", br#"{"interaction":2,"actor":"x","type":"note","content":"\ud800","timestamp":"2026-11-25T14:00:31Z"}"#, "not JSON: unexpected end of hex escape"),
        raw("bytes that are not UTF-8", b"{\"interaction\":2,\"actor\":\"x\xff\",\"type\":\"note\",\"content\":\"c\",\"timestamp\":\"2026-11-25T14:00:31Z\"}", "not UTF-8 text (first bad byte at byte 27 of the line)"),
        raw("a conflict marker", b"<<<<<<< HEAD", "not JSON"),
    ]);
    rows
}

/// Interaction numbers of the communication headings.
fn headings(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix("### Interaction #"))
        .map(|n| n.parse().unwrap())
        .collect()
}

/// After `snapshot`, each row's line is in events.error.log exactly once,
/// with the line number it has in events.log and a reason naming the field;
/// the good events render and no row does.
fn assert_quarantined_once_and_rest_rendered(
    dir: &Path,
    huddle_ok: &dyn Fn(&[&str]) -> String,
    door: Door,
    rows: &[LineRow],
    good: &[&str],
) {
    let entries = quarantined(dir);
    let log = read(&dir.join("events.log"));
    let line_numbers: Vec<&[u8]> = log.split(|b| *b == b'\n').collect();
    for row in rows {
        let name = format!("{door:?} {}", row.input);
        let raw = String::from_utf8_lossy(&row.line);
        let found: Vec<&Value> = entries.iter().filter(|e| e["raw"] == *raw).collect();
        assert_eq!(
            found.len(),
            1,
            "{name}: quarantined {} times: {raw}",
            found.len()
        );
        let reason = found[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(row.reason),
            "{name}: reason {reason:?} should start with {:?}",
            row.reason
        );
        let line = found[0]["line"].as_u64().unwrap() as usize;
        assert_eq!(
            line_numbers[line - 1],
            &row.line[..],
            "{name}: wrong line number"
        );
    }
    let communication = String::from_utf8(read(&dir.join("communication.md"))).unwrap();
    for kept in good {
        assert_eq!(
            communication.matches(kept).count(),
            1,
            "{kept:?} should render once:\n{communication}"
        );
    }
    let shown = headings(&communication);
    assert!(
        shown.iter().all(|n| [0, 1, 3, 4].contains(n)),
        "a bad line was rendered: interactions {shown:?}\n{communication}"
    );
    assert!(read(&dir.join("archive.md")).is_empty());
    // `next` hands out the good events only.
    let next = huddle_ok(&["next", "--agent", "reader", "--json"]);
    for line in next.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        assert!(
            event.get("row").is_none() && event["interaction"] != 2,
            "next showed {event}"
        );
    }
    for kept in good {
        assert!(next.contains(kept), "next lacks {kept}");
    }
}

const LINES_CONFIG: &str = "[log]\nmax_content_bytes = 64\n[snapshot]\nk = 10\n";

#[test]
fn foreign_log_lines_are_quarantined_once_with_the_field_named_and_the_rest_renders() {
    let dir = HuddleDir::with_config(LINES_CONFIG);
    dir.ok(&["log", "1", "Agent A", "question", "logged before"]);
    let rows = foreign_rows();
    let lines: Vec<Vec<u8>> = rows.iter().map(|r| r.line.clone()).collect();
    append_raw(&dir.file("events.log"), &lines);
    append_raw(
        &dir.file("events.log"),
        &[
            json!({"interaction": 3, "actor": "Shell Agent", "type": "answer",
                 "content": "a good foreign line", "timestamp": NOW})
            .to_string()
            .into_bytes(),
        ],
    );
    dir.ok(&["log", "4", "Agent B", "answer", "logged after"]);
    let log = dir.log_bytes();
    for _ in 0..2 {
        let out = dir.run(&["snapshot"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_log_kept_plus_error_events(&dir, &log, "foreign lines");
    assert_quarantined_once_and_rest_rendered(
        dir.path(),
        &|args| dir.ok(args),
        Door::ForeignLogLine,
        &rows,
        &["logged before", "a good foreign line", "logged after"],
    );
    assert_eq!(quarantined(dir.path()).len(), rows.len());
    // (The log holds a line that is not UTF-8: read only what huddle added.)
    let reports = parse_lines(&dir.log_bytes()[log.len()..])
        .into_iter()
        .filter(|e| e["type"] == "error" && e["content"].as_str().unwrap().contains("Quarantined"))
        .count();
    assert_eq!(reports, rows.len(), "one error event per quarantined line");
    // `log next` counts past none of them.
    assert_eq!(dir.ok(&["log", "next", "Agent A", "note", "n"]).trim(), "5");
}

// ---------------------------------------------------------------------------
// Door 6: git-merged lines (the merge driver, and a sync through a remote).

fn merged_rows() -> Vec<LineRow> {
    let row = |input, line: &[u8], reason| LineRow {
        input,
        line: line.to_vec(),
        reason,
    };
    vec![
        row("conflict marker (ours)", b"<<<<<<< HEAD", "not JSON"),
        row("conflict separator", b"=======", "not JSON"),
        row("conflict marker (theirs)", b">>>>>>> origin/main", "not JSON"),
        row(
            "interaction as a string",
            br#"{"interaction":"3","actor":"Remote","type":"note","content":"c","timestamp":"2026-11-25T14:00:31Z","id":"m1"}"#,
            "invalid interaction: must be a non-negative integer",
        ),
        row(
            "uppercase type",
            br#"{"interaction":2,"actor":"Remote","type":"Note","content":"c","timestamp":"2026-11-25T14:00:31Z","id":"m2"}"#,
            "invalid type: must match",
        ),
        row(
            "actor missing",
            br#"{"interaction":2,"type":"note","content":"c","timestamp":"2026-11-25T14:00:31Z","id":"m3"}"#,
            "invalid actor: missing",
        ),
        row(
            "timestamp \"later\"",
            br#"{"interaction":2,"actor":"Remote","type":"note","content":"c","timestamp":"later","id":"m4"}"#,
            "invalid timestamp",
        ),
        row(
            "a torn line",
            br#"{"interaction":2,"actor":"Remote","ty"#,
            "not JSON",
        ),
    ]
}

/// The event line of a fresh event, as huddle writes it (with an id).
fn event_line(interaction: u64, actor: &str, kind: &str, content: &str) -> Vec<u8> {
    huddle::event::NewEvent::new(
        huddle::event::InteractionRef::Number(interaction),
        actor,
        kind,
        content,
    )
    .into_event(interaction)
    .to_line()
    .into_bytes()
}

#[test]
fn lines_merged_by_the_merge_driver_are_quarantined_on_read_and_good_ones_kept_once() {
    let dir = HuddleDir::with_config(LINES_CONFIG);
    dir.ok(&["log", "1", "Agent A", "question", "ours one"]);
    dir.ok(&["log", "3", "Agent A", "question", "ours three"]);
    let ours = dir.log_bytes();
    let rows = merged_rows();
    // Theirs: our lines (shared history), a new event twice, the bad lines.
    let remote_event = event_line(4, "Agent R", "answer", "theirs four");
    let mut theirs = ours.clone();
    let mut add = |line: &[u8]| {
        theirs.extend_from_slice(line);
        theirs.push(b'\n');
    };
    add(&remote_event);
    for row in &rows {
        add(&row.line);
    }
    add(&remote_event);
    let work = tempfile::tempdir().unwrap();
    let (base, theirs_path) = (work.path().join("base"), work.path().join("theirs"));
    std::fs::write(&base, b"").unwrap();
    std::fs::write(&theirs_path, &theirs).unwrap();

    // A side that cannot be read: named, and ours is left as it was.
    let missing = work.path().join("gone");
    let out = dir.run(&[
        "merge-driver",
        base.to_str().unwrap(),
        dir.file("events.log").to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    let says = format!(
        "cannot read {}: No such file or directory",
        missing.display()
    );
    assert_clear_error(
        &out,
        1,
        &[&says],
        "GitMergedLine merge driver without theirs",
    );
    assert_eq!(dir.log_bytes(), ours);

    dir.ok(&[
        "merge-driver",
        base.to_str().unwrap(),
        dir.file("events.log").to_str().unwrap(),
        theirs_path.to_str().unwrap(),
    ]);
    let merged = dir.log_bytes();
    assert!(merged.starts_with(&ours), "our lines are kept as they were");
    let count = |needle: &[u8]| {
        merged
            .split(|b| *b == b'\n')
            .filter(|line| *line == needle)
            .count()
    };
    assert_eq!(count(&remote_event), 1, "the new event arrives once");
    for row in &rows {
        assert_eq!(count(&row.line), 1, "{}: merged once", row.input);
    }
    let out = dir.run(&["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_quarantined_once_and_rest_rendered(
        dir.path(),
        &|args| dir.ok(args),
        Door::GitMergedLine,
        &rows,
        &["ours one", "ours three", "theirs four"],
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output_within(COMMAND_LIMIT);
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A huddle directory cloned from `remote`, run with its own state home.
struct Clone {
    path: PathBuf,
}

impl Clone {
    fn new(root: &Path, remote: &Path, name: &str) -> Clone {
        git(root, &["clone", "-q", remote.to_str().unwrap(), name]);
        let path = root.join(name);
        git(
            &path,
            &["config", "user.email", &format!("{name}@example.com")],
        );
        git(&path, &["config", "user.name", name]);
        git(&path, &["checkout", "-q", "-B", "main"]);
        let clone = Clone { path };
        clone.ok(&["init"]);
        std::fs::write(
            clone.path.join("huddle.toml"),
            format!(
                "{LINES_CONFIG}[sync]\nattempts = 2\nretry_initial_ms = 10\nretry_max_ms = 20\n"
            ),
        )
        .unwrap();
        clone
    }

    fn ok(&self, args: &[&str]) -> String {
        let state = self.path.with_extension("state");
        let out = bare_command(&state)
            .arg("--dir")
            .arg(&self.path)
            .args(args)
            .output_within(COMMAND_LIMIT);
        assert!(out.status.success(), "huddle {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Bad lines one clone logs and the other receives through a sync.
fn sync_rows() -> Vec<LineRow> {
    vec![
        LineRow {
            input: "NUL in the actor, through sync",
            line: foreign_event(100, |e| {
                e.insert("actor".into(), json!("A\u{0}"));
            }),
            reason: "invalid actor: must not contain control",
        },
        LineRow {
            input: "interaction 2^53, through sync",
            line: foreign_event(101, |e| {
                e.insert("interaction".into(), json!(9_007_199_254_740_992u64));
            }),
            reason: "invalid interaction: is 9007199254740992, over the limit",
        },
        LineRow {
            input: "not JSON, through sync",
            line: b"garbage from clone a".to_vec(),
            reason: "not JSON",
        },
        LineRow {
            input: "content missing, through sync",
            line: foreign_event(102, |e| {
                e.remove("content");
            }),
            reason: "invalid content: missing",
        },
    ]
}

#[test]
fn bad_lines_arriving_through_a_sync_are_quarantined_on_read_and_good_ones_kept_once() {
    let root = tempfile::tempdir().unwrap();
    let remote = root.path().join("remote.git");
    git(
        root.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            remote.to_str().unwrap(),
        ],
    );
    let a = Clone::new(root.path(), &remote, "a");
    let b = Clone::new(root.path(), &remote, "b");
    a.ok(&["log", "1", "Agent A", "question", "from a"]);
    let rows = sync_rows();
    let lines: Vec<Vec<u8>> = rows.iter().map(|r| r.line.clone()).collect();
    append_raw(&a.path.join("events.log"), &lines);
    append_raw(
        &a.path.join("events.log"),
        &[json!({"interaction": 3, "actor": "Shell", "type": "answer",
                 "content": "good line without an id", "timestamp": NOW})
        .to_string()
        .into_bytes()],
    );
    a.ok(&["sync"]);
    b.ok(&["log", "4", "Agent B", "answer", "from b"]);
    b.ok(&["sync"]);
    b.ok(&["sync"]);
    a.ok(&["sync"]);
    for clone in [&a, &b] {
        let log = read(&clone.path.join("events.log"));
        for row in &rows {
            let copies = log
                .split(|b| *b == b'\n')
                .filter(|line| *line == &row.line[..])
                .count();
            assert_eq!(copies, 1, "{}: {} copies", row.input, copies);
        }
        clone.ok(&["snapshot"]);
        assert_quarantined_once_and_rest_rendered(
            &clone.path,
            &|args| clone.ok(args),
            Door::GitMergedLine,
            &rows,
            &["from a", "good line without an id", "from b"],
        );
    }
}

// ---------------------------------------------------------------------------
// Door 7: plugin outputs.

enum PluginOutcome {
    /// The plugin fails on every input: the snapshot fails (exit 1), the
    /// files stay as they were, no event is blamed.
    FailsTheSnapshot(&'static [&'static str]),
    /// The plugin fails on one event only: that event is left out with the
    /// reason (once, in events.error.log), the rest renders.
    LeavesOut {
        content: &'static str,
        reason: &'static [&'static str],
    },
}

struct PluginRow {
    input: &'static str,
    /// huddle.toml for the row (`{plugin}` is replaced by the plugin's path).
    toml: String,
    /// Events logged before the row's snapshot, in interaction 2.
    events: &'static [(&'static str, &'static str)],
    outcome: PluginOutcome,
}

fn slot_toml(slot: &str, plugin: &str, extra: &str) -> String {
    format!(
        "[plugins.{slot}]\nplugin = {:?}\n{extra}",
        hostile_plugin(plugin).display().to_string()
    )
}

fn mapper_heading(heading: &str) -> String {
    format!(
        "[plugins.heading-mapper.settings]\n\"type.proposal\" = {}\n",
        toml::Value::String(heading.to_string())
    )
}

fn plugin_rows() -> Vec<PluginRow> {
    use PluginOutcome::*;
    const PLAIN: &[(&str, &str)] = &[("answer", "a plain answer")];
    const PROPOSAL: &[(&str, &str)] = &[
        ("proposal", "the proposal the mapper cannot head"),
        ("answer", "a plain answer"),
    ];
    vec![
        PluginRow {
            input: "renderer returns one block too many",
            toml: slot_toml("renderer", "badoutput", ""),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin badoutput.wasm: invalid output", "blocks for"]),
        },
        PluginRow {
            input: "renderer forges a marker line in every block",
            toml: slot_toml("renderer", "markerline", ""),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin markerline.wasm: invalid output", "marker line"]),
        },
        PluginRow {
            input: "renderer builds 100 MB of output under the 64 MiB cap",
            toml: slot_toml("renderer", "bigoutput", ""),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin bigoutput.wasm: out of memory (limit 67108864 bytes)"]),
        },
        PluginRow {
            input: "renderer loops",
            toml: slot_toml("renderer", "loop", "deadline_ms = 300\n"),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin loop.wasm: deadline of 300ms exceeded"]),
        },
        PluginRow {
            input: "renderer allocates forever",
            toml: slot_toml("renderer", "oom", "memory_mb = 16\n"),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin oom.wasm: out of memory (limit 16777216 bytes)"]),
        },
        PluginRow {
            input: "renderer panics",
            toml: slot_toml("renderer", "panic", ""),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin panic.wasm: trapped", "hostile plugin panicked on purpose"]),
        },
        PluginRow {
            input: "mapper loops",
            toml: slot_toml("heading-mapper", "mapper-loop", "deadline_ms = 200\n"),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin mapper-loop.wasm: deadline of 200ms exceeded"]),
        },
        PluginRow {
            input: "a renderer in the mapper slot",
            toml: format!(
                "[plugins.heading-mapper]\nplugin = {:?}\n",
                repo_file("plugins/dist/markdown.wasm").display().to_string()
            ),
            events: PLAIN,
            outcome: FailsTheSnapshot(&["plugin markdown.wasm: implements the huddle:plugin/renderer@0.2.0 world, but this slot needs huddle:plugin/heading-mapper (WIT 0.1.0 or 0.2.0)"]),
        },
        PluginRow {
            input: "mapper heading with a bell (refused by the stock mapper's configure)",
            toml: mapper_heading("Proposal\u{7}"),
            events: PROPOSAL,
            outcome: FailsTheSnapshot(&["plugin headings: configure refused its settings: setting `type.proposal`", "control characters"]),
        },
        PluginRow {
            input: "mapper heading with a newline",
            toml: mapper_heading("Proposal\n### Interaction #999"),
            events: PROPOSAL,
            outcome: FailsTheSnapshot(&["setting `type.proposal`: a heading must be one line"]),
        },
        PluginRow {
            input: "picky renderer traps on one event",
            toml: slot_toml("renderer", "picky", "deadline_ms = 300\n"),
            events: &[("answer", "PANIC here"), ("answer", "a plain answer")],
            outcome: LeavesOut {
                content: "PANIC here",
                reason: &["left out of the snapshot (interaction 2)", "plugin picky.wasm: trapped", "asked to panic"],
            },
        },
        PluginRow {
            input: "picky renderer loops on one event",
            toml: slot_toml("renderer", "picky", "deadline_ms = 300\n"),
            events: &[("answer", "LOOP here"), ("answer", "a plain answer")],
            outcome: LeavesOut {
                content: "LOOP here",
                reason: &["left out of the snapshot (interaction 2)", "plugin picky.wasm: deadline of 300ms exceeded"],
            },
        },
        PluginRow {
            input: "picky renderer forges a marker for one event",
            toml: slot_toml("renderer", "picky", "deadline_ms = 300\n"),
            events: &[("answer", "MARKER here"), ("answer", "a plain answer")],
            outcome: LeavesOut {
                content: "MARKER here",
                reason: &["left out of the snapshot (interaction 2)", "plugin picky.wasm: invalid output", "marker line"],
            },
        },
        PluginRow {
            input: "mapper heading of 300 bytes",
            toml: mapper_heading(&"H".repeat(300)),
            events: PROPOSAL,
            outcome: LeavesOut {
                content: "the proposal the mapper cannot head",
                reason: &["plugin headings: invalid output: a heading of 300 bytes is over the limit of 256"],
            },
        },
        PluginRow {
            input: "mapper heading with a bidi override",
            toml: mapper_heading("Proposal\u{202e}"),
            events: PROPOSAL,
            outcome: LeavesOut {
                content: "the proposal the mapper cannot head",
                reason: &["plugin headings: invalid output: the heading contains the control character '\\u{202e}'"],
            },
        },
        PluginRow {
            input: "mapper heading with a line separator",
            toml: mapper_heading("Pro\u{2028}posal"),
            events: PROPOSAL,
            outcome: LeavesOut {
                content: "the proposal the mapper cannot head",
                reason: &["the heading contains the control character '\\u{2028}'"],
            },
        },
    ]
}

fn run_plugin_row(row: &PluginRow) {
    let name = format!("{:?} {}", Door::PluginOutput, row.input);
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "rendered before"]);
    dir.ok(&["snapshot"]);
    for (kind, content) in row.events {
        dir.ok(&["log", "2", "Agent B", kind, content]);
    }
    std::fs::write(dir.file("huddle.toml"), &row.toml).unwrap();
    let before = tree(dir.path());
    let log = dir.log_bytes();
    let out = dir.run(&["snapshot"]);
    match &row.outcome {
        PluginOutcome::FailsTheSnapshot(says) => {
            assert_clear_error(&out, 1, says, &name);
            for kept in ["communication.md", "archive.md", "communication.md.bak"] {
                assert_eq!(
                    before.get(Path::new(kept)),
                    Some(&Some(read(&dir.file(kept)))),
                    "{name}: {kept} changed"
                );
            }
            assert!(
                quarantined(dir.path()).is_empty(),
                "{name}: an event was blamed"
            );
            assert_log_kept_plus_error_events(&dir, &log, &name);
        }
        PluginOutcome::LeavesOut { content, reason } => {
            assert!(out.status.success(), "{name}: {}", stderr(&out));
            // A second run reports nothing new.
            dir.ok(&["snapshot"]);
            let communication = String::from_utf8(read(&dir.file("communication.md"))).unwrap();
            assert!(
                communication.contains("rendered before"),
                "{name}:\n{communication}"
            );
            assert!(
                communication.contains("a plain answer"),
                "{name}:\n{communication}"
            );
            assert!(!communication.contains(content), "{name}:\n{communication}");
            assert_eq!(
                communication.matches("<!-- END COMMUNICATION -->").count(),
                1,
                "{name}"
            );
            let entries = quarantined(dir.path());
            assert_eq!(entries.len(), 1, "{name}: {entries:#?}");
            assert!(
                entries[0]["raw"].as_str().unwrap().contains(content),
                "{name}"
            );
            let said = entries[0]["reason"].as_str().unwrap();
            for needle in *reason {
                assert!(
                    said.contains(needle),
                    "{name}: reason {said:?} lacks {needle:?}"
                );
            }
            assert_log_kept_plus_error_events(&dir, &log, &name);
        }
    }
    assert_eq!(
        read(&dir.file("huddle.toml")),
        row.toml.as_bytes(),
        "{name}: huddle.toml rewritten"
    );
}

#[test]
fn plugins_that_fail_on_everything_fail_the_snapshot_and_keep_the_files() {
    for row in plugin_rows()
        .iter()
        .filter(|r| matches!(r.outcome, PluginOutcome::FailsTheSnapshot(_)))
    {
        run_plugin_row(row);
    }
}

#[test]
fn plugins_that_fail_on_one_event_leave_it_out_with_a_reason_and_the_rest_renders() {
    for row in plugin_rows()
        .iter()
        .filter(|r| matches!(r.outcome, PluginOutcome::LeavesOut { .. }))
    {
        run_plugin_row(row);
    }
}

// ---------------------------------------------------------------------------
// Door 8: HTTP answers to sinks (the stock webhook sink, called directly).

/// What the server at the sink's URL does.
enum Server {
    Status(u16),
    Redirect(u16),
    StatusWithHugeBody(u16),
    Silent,
    /// A raw TCP listener that answers with bytes that are not HTTP.
    Junk(&'static [u8]),
    /// Accepts and closes without a word.
    HangsUp,
    /// Nothing listens on the port.
    Closed,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Delivered,
    Transient,
    Permanent,
}

struct HttpRow {
    input: &'static str,
    server: Server,
    verdict: Verdict,
    /// `{url}` stands for the sink's URL.
    says: &'static [&'static str],
}

fn http_rows() -> Vec<HttpRow> {
    use Server::*;
    use Verdict::*;
    let row = |input, server, verdict, says| HttpRow {
        input,
        server,
        verdict,
        says,
    };
    vec![
        row(
            "400 Bad Request",
            Status(400),
            Permanent,
            &["webhook answered HTTP 400"],
        ),
        row(
            "401 Unauthorized",
            Status(401),
            Permanent,
            &["webhook answered HTTP 401"],
        ),
        row(
            "404 Not Found",
            Status(404),
            Permanent,
            &["webhook answered HTTP 404"],
        ),
        row(
            "410 Gone",
            Status(410),
            Permanent,
            &["webhook answered HTTP 410"],
        ),
        row(
            "408 Request Timeout",
            Status(408),
            Transient,
            &["webhook answered HTTP 408"],
        ),
        row(
            "429 Too Many Requests",
            Status(429),
            Transient,
            &["webhook answered HTTP 429"],
        ),
        row(
            "500 Internal Server Error",
            Status(500),
            Transient,
            &["webhook answered HTTP 500"],
        ),
        row(
            "503 Service Unavailable",
            Status(503),
            Transient,
            &["webhook answered HTTP 503"],
        ),
        row(
            "301 to another server, not followed",
            Redirect(301),
            Permanent,
            &["webhook answered HTTP 301"],
        ),
        row(
            "307 to another server, not followed",
            Redirect(307),
            Permanent,
            &["webhook answered HTTP 307"],
        ),
        row(
            "500 with an endless body, read to a bound",
            StatusWithHugeBody(500),
            Transient,
            &["webhook answered HTTP 500"],
        ),
        row(
            "200 with an endless body, read to a bound",
            StatusWithHugeBody(200),
            Delivered,
            &[],
        ),
        row(
            "no answer at all",
            Silent,
            Transient,
            &["POST {url} failed", "timeout"],
        ),
        row(
            "junk that is not HTTP",
            Junk(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
            Transient,
            &["POST {url} failed"],
        ),
        row(
            "binary junk",
            Junk(b"\x00\xff\xfe\x13\x37\r\n\r\n"),
            Transient,
            &["POST {url} failed"],
        ),
        row(
            "a status line with no status",
            Junk(b"HTTP/1.1 abc\r\n\r\n"),
            Transient,
            &["POST {url} failed"],
        ),
        row(
            "hangs up without a word",
            HangsUp,
            Transient,
            &["POST {url} failed"],
        ),
        row(
            "nothing listening",
            Closed,
            Transient,
            &["POST {url} failed"],
        ),
    ]
}

fn alert() -> Alert {
    Alert {
        event: Event {
            interaction: 3,
            actor: "Agent A".into(),
            kind: "error".into(),
            content: "disk full on builder".into(),
            timestamp: NOW.into(),
            id: Some("bad-input-alert".into()),
            term: None,
            extra: Default::default(),
        },
        count: 1,
        source: "team".into(),
    }
}

/// A listener that answers each connection with `reply` (or, if `None`,
/// closes it at once), after reading what the client sent.
fn raw_server(
    reply: Option<&'static [u8]>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let Some(reply) = reply else {
                drop(stream);
                continue;
            };
            stream.set_nonblocking(false).ok();
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .ok();
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = stream.write_all(reply);
        }
    });
    (addr, stop)
}

#[test]
fn http_answers_to_a_sink_get_a_typed_verdict_naming_the_url_or_status() {
    for row in http_rows() {
        let name = format!("{:?} {}", Door::HttpAnswer, row.input);
        let elsewhere = HttpRecorder::start();
        let recorder = HttpRecorder::start();
        let mut raw_server_stop = None;
        let url = match row.server {
            Server::Status(code) => {
                recorder.set_status(code);
                recorder.url("/hook")
            }
            Server::Redirect(code) => {
                recorder.set_status(code);
                recorder.set_location(&elsewhere.url("/stolen"));
                recorder.url("/hook")
            }
            Server::StatusWithHugeBody(code) => {
                recorder.set_status(code);
                recorder.set_body_bytes(usize::MAX);
                recorder.url("/hook")
            }
            Server::Silent => {
                recorder.set_silent(true);
                recorder.url("/hook")
            }
            Server::Junk(bytes) => {
                let (addr, stop) = raw_server(Some(bytes));
                raw_server_stop = Some(stop);
                format!("http://{addr}/hook")
            }
            Server::HangsUp => {
                let (addr, stop) = raw_server(None);
                raw_server_stop = Some(stop);
                format!("http://{addr}/hook")
            }
            Server::Closed => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                format!("http://127.0.0.1:{port}/hook")
            }
        };
        let allow = url.trim_end_matches("hook").to_string();
        let mut grant = HttpGrant::new(Allowlist::parse(&[allow]).unwrap());
        grant.timeout = Duration::from_millis(700);
        let spec = PluginSpec {
            settings: vec![("url".into(), url.clone())],
            http: Some(grant),
            ..PluginSpec::new(PluginSource::Builtin("webhook"))
        };
        host().preload(&spec, Slot::AlertSink).unwrap();
        let started = Instant::now();
        let verdict = host()
            .deliver(&spec, &[alert()])
            .unwrap_or_else(|e| panic!("{name}: the sink itself failed: {e}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{name}: took {took:?}");
        let (kind, message) = match &verdict {
            Ok(()) => (Verdict::Delivered, String::new()),
            Err(DeliveryError::Transient(m)) => (Verdict::Transient, m.clone()),
            Err(DeliveryError::Permanent(m)) => (Verdict::Permanent, m.clone()),
        };
        assert_eq!(kind, row.verdict, "{name}: {verdict:?}");
        for needle in row.says {
            let needle = needle.replace("{url}", &url);
            assert!(
                message.contains(&needle),
                "{name}: {message:?} lacks {needle:?}"
            );
        }
        // A bounded message: an endless body is not pasted into the verdict.
        assert!(
            message.len() < 1024,
            "{name}: a message of {} bytes",
            message.len()
        );
        assert_eq!(
            elsewhere.connections(),
            0,
            "{name}: a redirect was followed"
        );
        if let Some(stop) = raw_server_stop {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn the_table_covers_every_door_with_more_than_sixty_rows() {
    let dir = HuddleDir::new();
    let counts: BTreeMap<Door, usize> = [
        (
            Door::CliArguments,
            cli_rows(&dir).len() + dir_rows(dir.path(), dir.path()).len(),
        ),
        (Door::Stdin, stdin_rows().len()),
        (Door::HuddleToml, toml_rows().len()),
        // And a directory where the file should be.
        (Door::CheckpointFile, checkpoint_rows().len() + 1),
        (Door::ForeignLogLine, foreign_rows().len()),
        // The merge driver's rows, its missing side, and the sync's rows.
        (
            Door::GitMergedLine,
            merged_rows().len() + 1 + sync_rows().len(),
        ),
        (Door::PluginOutput, plugin_rows().len()),
        (Door::HttpAnswer, http_rows().len()),
    ]
    .into_iter()
    .collect();
    eprintln!("bad-input rows per door: {counts:?}");
    assert_eq!(counts.len(), 8);
    assert!(counts.values().all(|n| *n >= 4), "{counts:?}");
    assert!(counts.values().sum::<usize>() > 60, "{counts:?}");
}
