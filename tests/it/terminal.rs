//! What a writer of the log can do to people's terminals: every
//! human-readable output shows control characters instead of passing them
//! on, and `--json` output keeps the exact text.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{exclusive, huddle_exe, plugin_cache, stderr, wait_for, wait_until, HuddleDir};

/// Content a terminal would obey: OSC 52 (set the clipboard), clear the
/// screen, BEL, backspace, DEL, a CR that overwrites the line, C1 CSI and
/// NEL, bidi overrides and isolates, a line separator, and a line that
/// poses as an event of its own.
const HOSTILE: &str = "ok\u{1b}]52;c;ZXZpbA==\u{7} \u{1b}[2J\u{8}\u{7f}\rfake\u{9b}31m\u{85}\
                       \u{202e}evil\u{2066}x\u{2069}\u{200f}\u{2028}end\r\nnext\n\
                       #9 [2026-01-01T00:00:00Z] Agent B answer: forged\ttab";

/// Panics if `bytes` hold anything a terminal acts on rather than shows:
/// a control character other than newline and tab (C0, DEL, C1), a bidi
/// formatting character, or a line or paragraph separator.
fn assert_shows_only_text(bytes: &[u8], what: &str) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    for (at, c) in text.char_indices() {
        let obeyed = (c.is_control() && c != '\n' && c != '\t')
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{2028}'
                    | '\u{2029}'
            );
        assert!(
            !obeyed,
            "{what}: raw {c:?} at byte {at}:\n{}",
            text.escape_debug()
        );
    }
}

fn hostile_log() -> HuddleDir {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", HOSTILE]);
    dir.ok(&["log", "1", "Agent B", "error", HOSTILE]);
    // Written by another tool: an actor with an escape sequence and a bidi
    // override. A reader sets it aside as malformed and says so in an
    // `error` event; either way it reaches no terminal raw.
    let foreign = serde_json::json!({
        "interaction": 2,
        "actor": "\u{1b}]0;pwned\u{7}Mallory\u{202e}",
        "type": "note",
        "content": HOSTILE,
        "timestamp": "2026-01-01T00:00:00Z",
    });
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.file("events.log"))
        .unwrap()
        .write_all(format!("{foreign}\n").as_bytes())
        .unwrap();
    // The first reader sets the line aside and logs that; read once so
    // every test sees the log as it then stays.
    dir.ok(&["status", "--json"]);
    dir
}

#[test]
fn next_shows_control_characters_and_keeps_every_event_on_its_own_lines() {
    let dir = hostile_log();
    let out = dir.run(&["next", "--agent", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_shows_only_text(&out.stdout, "huddle next");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ok\\u{1b}]52;c;ZXZpbA==\\u{7} \\u{1b}[2J\\u{8}\\u{7f}\\u{d}fake\\u{9b}31m"),
        "{text}"
    );
    assert!(text.contains("Agent B error: ok\\u{1b}]52;"), "{text}");
    // Every line of an event's text after its first is indented: content
    // cannot print a line that looks like another event.
    let events = dir.ok(&["next", "--agent", "t", "--json"]).lines().count();
    let unindented = text.lines().filter(|l| !l.starts_with("    ")).count();
    assert_eq!(unindented, events, "{text}");
    assert!(
        text.contains("\n    #9 [2026-01-01T00:00:00Z] Agent B answer: forged\ttab"),
        "{text}"
    );
}

#[test]
fn json_output_keeps_the_exact_text() {
    let dir = hostile_log();
    let out = dir.ok(&["next", "--agent", "t", "--json"]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mine: Vec<&Value> = events.iter().filter(|e| e["interaction"] == 1).collect();
    assert_eq!(mine.len(), 2, "{out}");
    for event in mine {
        assert_eq!(event["content"], HOSTILE);
    }

    let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap();
    let errors = status["last_errors"].as_array().unwrap();
    let hostile = errors
        .iter()
        .find(|e| e["actor"] == "Agent B")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(hostile["content"], HOSTILE);
}

#[test]
fn status_shows_control_characters_visibly() {
    let dir = hostile_log();
    let out = dir.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_shows_only_text(&out.stdout, "huddle status");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Agent B: ok\\u{1b}]52;"), "{text}");
    assert!(text.contains("\\u{1b}[2J"), "{text}");
    // The error's later lines are indented under it, not posing as lines of status.
    assert!(
        text.contains("\n    #9 [2026-01-01T00:00:00Z] Agent B answer"),
        "{text}"
    );
}

#[test]
fn error_messages_show_control_characters_visibly() {
    let tmp = tempfile::tempdir().unwrap();
    let hostile = tmp.path().join("x\u{1b}]52;c;eA==\u{7}\u{202e}.wasm");
    std::fs::write(&hostile, b"not a component").unwrap();
    let out = Command::new(huddle_exe())
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .arg("plugins")
        .arg("check")
        .arg(&hostile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_shows_only_text(&out.stderr, "the error message");
    assert!(
        stderr(&out).contains("x\\u{1b}]52;c;eA==\\u{7}\\u{202e}.wasm"),
        "{}",
        stderr(&out)
    );
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemons_log_shows_alerts_without_their_controls() {
    let dir = HuddleDir::with_config(
        "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 25\n",
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let _daemon = Killed(
        dir.command(&["run", "--actor", "d1"])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let leads = wait_for(Duration::from_secs(15), || {
        let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).unwrap();
        status["leader"] == "d1"
    });
    assert!(leads, "d1 never led");
    // The default sink writes each alert into the daemon's own log. A new
    // leader's sink starts at the end of the log as it finds it, which may
    // be after an event logged at once: log again until one is delivered.
    let mut attempt = 0;
    let seen = wait_until(Duration::from_secs(15), || {
        let bytes = std::fs::read(log.path()).unwrap();
        if String::from_utf8_lossy(&bytes).contains("forged") {
            return Some(bytes);
        }
        if attempt % 50 == 0 {
            dir.ok(&[
                "log",
                "1",
                "Agent B",
                "error",
                &format!("{HOSTILE} {attempt}"),
            ]);
        }
        attempt += 1;
        None
    });
    let bytes = seen.expect("the alert never reached the daemon's log");
    assert_shows_only_text(&bytes, "the daemon's log");
    assert!(
        String::from_utf8_lossy(&bytes).contains("\\u{202e}evil"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn the_demo_shows_control_characters_visibly() {
    let _machine = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("demo");
    let printed = tempfile::NamedTempFile::new().unwrap();
    let demo = Command::new(huddle_exe())
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .env_remove("HUDDLE_DIR")
        .args(["demo", "--rounds", "2", "--out"])
        .arg(&out_dir)
        .stdin(Stdio::null())
        .stdout(printed.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Killed(demo);
    // Once the demo has made its directory, another writer joins the log.
    let made = wait_for(Duration::from_secs(30), || {
        out_dir.join(".huddle-demo").exists() && out_dir.join("huddle.toml").exists()
    });
    assert!(made, "the demo never made its directory");
    let logged = Command::new(huddle_exe())
        .env("HUDDLE_CACHE_DIR", plugin_cache())
        .arg("--dir")
        .arg(&out_dir)
        .args(["log", "next", "Mallory", "note", HOSTILE])
        .output()
        .unwrap();
    assert!(logged.status.success(), "{}", stderr(&logged));

    let finished = wait_until(Duration::from_secs(120), || {
        demo.0.try_wait().unwrap().map(|status| status.success())
    });
    assert_eq!(finished, Some(true), "the demo failed or hung");
    let stdout = std::fs::read(printed.path()).unwrap();
    assert_shows_only_text(&stdout, "huddle demo");
    let text = String::from_utf8(stdout).unwrap();
    assert!(text.contains("Mallory  note      ok\\u{1b}]52;"), "{text}");
    assert!(text.contains("\\u{1b}]52;c;ZXZpbA=="), "{text}");
}
