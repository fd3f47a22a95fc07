//! Git sync with real git: clones of a bare repository on this machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{baseline_script, huddle_exe, stderr, HttpRecorder};

const QUICK: &str =
    "[sync]\nattempts = 2\nretry_initial_ms = 10\nretry_max_ms = 20\ntimeout_secs = 10\n";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn huddle(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(huddle_exe())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env("XDG_STATE_HOME", dir.join(".state-home"))
        .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
        .output()
        .expect("huddle")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = huddle(dir, args);
    assert!(out.status.success(), "huddle {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare remote and `n` clones, each a huddle directory with a git identity.
fn clones(root: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
    let remote = root.join("remote.git");
    git(
        root,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            remote.to_str().unwrap(),
        ],
    );
    let clones: Vec<PathBuf> = (0..n)
        .map(|i| {
            let clone = root.join(format!("clone{i}"));
            git(
                root,
                &[
                    "clone",
                    "-q",
                    remote.to_str().unwrap(),
                    clone.to_str().unwrap(),
                ],
            );
            git(
                &clone,
                &["config", "user.email", &format!("c{i}@example.com")],
            );
            git(&clone, &["config", "user.name", &format!("clone {i}")]);
            git(&clone, &["checkout", "-q", "-B", "main"]);
            ok(&clone, &["init"]);
            std::fs::write(clone.join("huddle.toml"), QUICK).unwrap();
            clone
        })
        .collect();
    (remote, clones)
}

/// Every line of a clone's log, with how often it occurs.
fn lines(clone: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(clone.join("events.log")).unwrap();
    assert!(
        !text.contains("<<<<<<<") && !text.contains(">>>>>>>"),
        "conflict markers in {}",
        clone.display()
    );
    let mut counts = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

#[test]
fn three_clones_converge_with_every_event_once() {
    let root = tempfile::tempdir().unwrap();
    let (_remote, clones) = clones(root.path(), 3);
    let script = baseline_script("log_event.sh");
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut written = 0;
    for round in 0..12 {
        let clone = &clones[(next() % 3) as usize];
        for i in 0..(1 + next() % 3) {
            ok(
                clone,
                &[
                    "log",
                    &format!("{}", round % 4 + 1),
                    "agent",
                    "note",
                    &format!("r{round} e{i}"),
                ],
            );
            written += 1;
        }
        if next() % 2 == 0 {
            // Lines written by another tool, without an id.
            let status = Command::new("bash")
                .arg(&script)
                .args(["9", "shell", "note", &format!("shell r{round}")])
                .current_dir(clone)
                .status()
                .unwrap();
            assert!(status.success());
            written += 1;
        }
        ok(clone, &["sync"]);
    }
    // Everyone syncs twice: the last changes reach every clone.
    for _ in 0..2 {
        for clone in &clones {
            ok(clone, &["sync"]);
        }
    }
    let first = lines(&clones[0]);
    assert_eq!(first.len(), written, "every event exactly once");
    assert!(first.values().all(|&n| n == 1), "duplicates: {first:?}");
    for clone in &clones[1..] {
        assert_eq!(lines(clone), first, "{} differs", clone.display());
    }
    // People's own `git pull` merges the log through the driver, without conflicts.
    ok(
        &clones[0],
        &["log", "5", "agent", "note", "before a manual pull"],
    );
    git(&clones[0], &["commit", "-qam", "local"]);
    ok(
        &clones[1],
        &["log", "5", "agent", "note", "pushed by another clone"],
    );
    ok(&clones[1], &["sync"]);
    git(
        &clones[0],
        &["pull", "-q", "--no-rebase", "--no-edit", "origin", "main"],
    );
    let merged = lines(&clones[0]);
    assert!(merged.keys().any(|l| l.contains("pushed by another clone")));
    assert!(merged.values().all(|&n| n == 1));
}

#[test]
fn an_unreachable_remote_means_offline_and_nothing_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    ok(&clones[0], &["log", "1", "agent", "note", "before"]);
    ok(&clones[0], &["sync"]);
    let moved = root.path().join("moved.git");
    std::fs::rename(&remote, &moved).unwrap();
    ok(&clones[0], &["log", "1", "agent", "note", "while offline"]);
    let out = huddle(&clones[0], &["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&ok(&clones[0], &["status", "--json"])).unwrap();
    assert_eq!(status["sync"]["offline"], true, "{status}");
    assert!(status["sync"]["pending_bytes"].as_u64().unwrap() > 0);
    assert!(ok(&clones[0], &["status"]).contains("OFFLINE"));
    // Appends keep working offline.
    ok(&clones[0], &["log", "2", "agent", "note", "still offline"]);
    std::fs::rename(&moved, &remote).unwrap();
    ok(&clones[0], &["sync"]);
    ok(&clones[1], &["sync"]);
    let theirs = lines(&clones[1]);
    for content in ["before", "while offline", "still offline"] {
        let copies = theirs
            .keys()
            .filter(|l| l.contains(&format!("\"content\":\"{content}\"")))
            .count();
        assert_eq!(copies, 1, "{content}");
    }
    assert!(
        theirs.keys().any(|l| l.contains("git sync is offline")),
        "the offline error event travels too"
    );
    let status: Value = serde_json::from_str(&ok(&clones[0], &["status", "--json"])).unwrap();
    assert_eq!(status["sync"]["offline"], false);
}

#[test]
fn a_remote_that_answers_401_is_an_authentication_error() {
    let server = HttpRecorder::start();
    server.set_status(401);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("clone");
    std::fs::create_dir(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    git(&dir, &["config", "user.email", "x@example.com"]);
    git(&dir, &["config", "user.name", "x"]);
    git(&dir, &["remote", "add", "origin", &server.url("/team.git")]);
    ok(&dir, &["init"]);
    std::fs::write(dir.join("huddle.toml"), format!("{QUICK}enabled = true\n")).unwrap();
    ok(&dir, &["log", "1", "agent", "note", "hello"]);
    let out = huddle(&dir, &["sync"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("origin") && message.contains("refresh the credentials"),
        "{message}"
    );
    // The daemon refuses to start with bad credentials.
    let out = huddle(&dir, &["run", "--actor", "d"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("refresh the credentials"),
        "{}",
        stderr(&out)
    );
    assert!(!server.requests().is_empty(), "git did talk to the server");
}

#[test]
fn the_leader_syncs_on_its_own() {
    let root = tempfile::tempdir().unwrap();
    let (_remote, clones) = clones(root.path(), 2);
    let config = format!(
        "{QUICK}enabled = true\ninterval_secs = 1\n[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\npoll_ms = 25\n"
    );
    std::fs::write(clones[0].join("huddle.toml"), config).unwrap();
    ok(
        &clones[0],
        &["log", "1", "agent", "note", "from the daemon's clone"],
    );
    let mut daemon = Command::new(huddle_exe())
        .arg("--dir")
        .arg(&clones[0])
        .args(["run", "--actor", "leader"])
        .env("XDG_STATE_HOME", clones[0].join(".state-home"))
        .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ok(
        &clones[1],
        &["log", "1", "agent", "note", "from the other clone"],
    );
    ok(&clones[1], &["sync"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut arrived = false;
    while std::time::Instant::now() < deadline && !arrived {
        arrived = lines(&clones[0])
            .keys()
            .any(|l| l.contains("from the other clone"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // And what the leader pushed reaches the other clone.
    ok(&clones[1], &["sync"]);
    let pushed = lines(&clones[1])
        .keys()
        .any(|l| l.contains("from the daemon's clone"));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(arrived, "the leader did not pull the other clone's event");
    assert!(pushed, "the leader did not push its clone's event");
}
