//! Write errors pause the daemon; `huddle resume` carries on with every
//! queued event in the log exactly once. Needs root (tmpfs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    huddle_at, huddle_exe, is_root, parse_lines, state_home_for, stderr, wait_for, Tmpfs,
};

const FAST: &str =
    "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 100\npoll_ms = 25\n";

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(dir: &Path) -> Value {
    let out = huddle_at(dir, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status must keep working while paused: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A huddle directory on a small tmpfs with a leader running.
fn setup(size: &str) -> (Tmpfs, PathBuf, Daemon) {
    let fs = Tmpfs::mount(size);
    let dir = fs.path.join("huddle");
    assert!(huddle_at(&dir, &["init"]).status.success());
    std::fs::write(dir.join("huddle.toml"), FAST).unwrap();
    let daemon = Daemon(
        Command::new(huddle_exe())
            .arg("--dir")
            .arg(&dir)
            .args(["run", "--actor", "leader"])
            .env("XDG_STATE_HOME", state_home_for(&dir))
            .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(10), || status(&dir)["leader"]
        == "leader"));
    for n in 1..=3 {
        assert!(huddle_at(
            &dir,
            &[
                "log",
                &n.to_string(),
                "Agent A",
                "question",
                &format!("before {n}")
            ]
        )
        .status
        .success());
    }
    (fs, dir, daemon)
}

/// Logs while the directory refuses writes; every one must be kept.
fn log_while_refused(dir: &Path) -> Vec<String> {
    let contents: Vec<String> = (0..3).map(|i| format!("while refused {i}")).collect();
    for content in &contents {
        let out = huddle_at(dir, &["log", "next", "Agent B", "answer", content]);
        let message = stderr(&out);
        // Either refused and queued (exit 1) or queued because paused (exit 0):
        // never lost, always said.
        assert!(
            message.contains("queued") || message.contains("kept in"),
            "{message}"
        );
    }
    contents
}

fn resume_and_check(dir: &Path, queued: &[String], _daemon: &Daemon) {
    let out = huddle_at(dir, &["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed"));
    let events = parse_lines(&std::fs::read(dir.join("events.log")).unwrap());
    for content in queued {
        let copies = events
            .iter()
            .filter(|e| e["content"] == content.as_str())
            .count();
        assert_eq!(copies, 1, "{content} must be in the log exactly once");
    }
    assert!(status(dir)["paused"].is_null());
    let last = queued.last().unwrap();
    let caught_up = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("communication.md"))
            .is_ok_and(|t| t.contains(last.as_str()))
    });
    assert!(caught_up, "the daemon resumed snapshots");
}

#[test]
fn a_snapshot_write_hitting_a_full_disk_pauses_the_daemon_until_resume() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let (fs, dir, daemon) = setup("1m");
    let filler_path = fs.path.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    // Room for the event's line in events.log (at most six pages) and
    // then three pages more for the leader's heartbeats (some 80 of them),
    // but not for the snapshot, whose new communication.md alone needs five
    // pages for the event: the snapshot write is what hits the full disk.
    let full = filler.metadata().unwrap().len();
    filler.set_len(full - 9 * 4096).unwrap();
    drop(filler);
    let big = "x".repeat(20_000);
    let out = huddle_at(&dir, &["log", "4", "Agent A", "question", &big]);
    assert!(
        out.status.success(),
        "the append itself fits and must succeed: {}",
        stderr(&out)
    );
    let paused = wait_for(Duration::from_secs(10), || {
        status(&dir)["paused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No space left on device"))
    });
    assert!(paused, "{}", status(&dir));
    let reason = status(&dir)["paused"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("communication.md") || reason.contains("archive.md"),
        "the snapshot write, not the append, hit the full disk: {reason}"
    );
    let text = String::from_utf8_lossy(&huddle_at(&dir, &["status"]).stdout).into_owned();
    assert!(
        text.contains("PAUSED") && text.contains("huddle resume"),
        "{text}"
    );
    // Now fill the disk to the last page: the log cannot take the queue.
    let mut more = std::fs::File::create(fs.path.join("filler-2")).unwrap();
    while more.write_all(&[0u8; 512]).is_ok() {}
    drop(more);
    let queued = log_while_refused(&dir);
    // Still full: resume refuses and stays paused.
    let out = huddle_at(&dir, &["resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("stays paused"), "{}", stderr(&out));
    std::fs::remove_file(&filler_path).unwrap();
    std::fs::remove_file(fs.path.join("filler-2")).unwrap();
    resume_and_check(&dir, &queued, &daemon);
    // The big event reached the log once, and the snapshot once resumed.
    let events = parse_lines(&std::fs::read(dir.join("events.log")).unwrap());
    assert_eq!(
        events
            .iter()
            .filter(|e| e["content"] == big.as_str())
            .count(),
        1
    );
    // Interaction 4 is older than the three queued ones (K = 3): archived.
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(dir.join("archive.md")).is_ok_and(|t| t.contains(&big))
        }),
        "the snapshot shows the event that hit the full disk"
    );
}

#[test]
fn a_read_only_directory_pauses_the_daemon_until_resume() {
    if !is_root() {
        eprintln!("skipped: remounting a tmpfs needs root");
        return;
    }
    let (fs, dir, daemon) = setup("4m");
    fs.remount_read_only();
    let queued = log_while_refused(&dir);
    let paused = wait_for(Duration::from_secs(10), || {
        status(&dir)["paused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Read-only file system"))
    });
    assert!(paused, "{}", status(&dir));
    fs.remount_read_write();
    resume_and_check(&dir, &queued, &daemon);
}

#[test]
fn a_permission_denied_snapshot_write_pauses_the_daemon_until_resume() {
    if !is_root() {
        eprintln!("skipped: chattr +i needs root");
        return;
    }
    // On the disk, not a tmpfs: tmpfs has no immutable flag.
    let dir = crate::common::HuddleDir::with_config(FAST);
    let _daemon = crate::daemon::Daemon::start(&dir, "leader");
    assert!(wait_for(Duration::from_secs(10), || crate::daemon::status(
        &dir
    )["leader"]
        == "leader"));
    dir.ok(&["log", "1", "Agent A", "question", "rendered before"]);
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.file("communication.md"))
            .is_ok_and(|t| t.contains("rendered before"))
    }));
    // Even root may not replace an immutable file: the snapshot's rename
    // over communication.md gets EPERM, as a permission problem would.
    let chattr = |flag: &str| {
        let out = Command::new("chattr")
            .arg(flag)
            .arg(dir.file("communication.md"))
            .output()
            .expect("run chattr");
        assert!(out.status.success(), "chattr {flag}: {}", stderr(&out));
    };
    chattr("+i");
    dir.ok(&["log", "2", "Agent A", "question", "blocked snapshot"]);
    let paused = wait_for(Duration::from_secs(10), || {
        crate::daemon::status(&dir)["paused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Operation not permitted"))
    });
    chattr("-i");
    assert!(paused, "{}", crate::daemon::status(&dir));
    let out = dir.run(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(dir.file("communication.md"))
                .is_ok_and(|t| t.contains("blocked snapshot"))
        }),
        "the daemon resumed snapshots"
    );
}
