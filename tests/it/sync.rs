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

/// `git` that may fail: its output, for the caller to judge.
fn git_output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git")
}

/// Where huddle keeps a clone's pause and spool: beside the clone, so the
/// clone's `git status` shows only what sync and the test did.
fn state_home(dir: &Path) -> PathBuf {
    let name = dir.file_name().unwrap().to_string_lossy();
    dir.with_file_name(format!(".{name}.state"))
}

fn huddle_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(huddle_exe());
    command
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env("XDG_STATE_HOME", state_home(dir))
        .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache());
    command
}

fn huddle(dir: &Path, args: &[&str]) -> std::process::Output {
    huddle_command(dir, args).output().expect("huddle")
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
    let clones = (0..n).map(|i| clone(root, &remote, i)).collect();
    (remote, clones)
}

/// Clone number `i` of `remote`, on `main`, initialised, with a git identity.
fn clone(root: &Path, remote: &Path, i: usize) -> PathBuf {
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

/// How many lines of a clone's log have exactly this content, duplicates included.
fn count(lines: &HashMap<String, usize>, content: &str) -> usize {
    lines
        .iter()
        .filter(|(line, _)| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| event["content"] == content)
        })
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn three_clones_converge_with_every_event_once() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 3);
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
    // The log travels on its own ref, each event once; no branch carries it,
    // and each clone's git sees nothing of sync's but the config it wrote.
    let travelled = remote_log(&remote);
    assert_eq!(travelled, first, "the remote's log");
    assert!(!git_output(&remote, &["cat-file", "-e", "main:events.log"])
        .status
        .success());
    for clone in &clones {
        assert_eq!(git(clone, &["status", "--porcelain"]), "?? huddle.toml\n");
    }
}

/// Two clones that have each logged an event ("first" in the first, "from
/// b" in the second) and synced it, in that order.
fn synced_pair(root: &Path) -> (PathBuf, Vec<PathBuf>) {
    let (remote, clones) = clones(root, 2);
    ok(&clones[0], &["log", "1", "agent", "note", "first"]);
    ok(&clones[0], &["sync"]);
    ok(&clones[1], &["log", "1", "agent", "note", "from b"]);
    ok(&clones[1], &["sync"]);
    (remote, clones)
}

/// That each of `contents` is exactly once in every clone's log and in the
/// remote's.
fn each_once_in(clones: &[&PathBuf], remote: &Path, contents: &[&str]) {
    let logs = clones
        .iter()
        .map(|clone| (clone.display().to_string(), lines(clone)));
    for (name, events) in logs.chain([("the remote".to_string(), remote_log(remote))]) {
        for content in contents {
            assert_eq!(count(&events, content), 1, "{content} in {name}");
        }
    }
}

/// Every line of the remote's log (its segments in order), with how often
/// it occurs.
fn remote_log(remote: &Path) -> HashMap<String, usize> {
    let names = git(remote, &["ls-tree", "--name-only", "refs/huddle/main"]);
    let mut counts = HashMap::new();
    for (i, name) in names.lines().enumerate() {
        assert_eq!(name, format!("{i:06}.jsonl"), "segment names");
        let text = git(remote, &["show", &format!("refs/huddle/main:{name}")]);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            *counts.entry(line.to_string()).or_default() += 1;
        }
    }
    counts
}

/// A push killed on the remote's side (a remote on this machine, killed
/// with the sync) leaves the remote's ref lock behind, and the remote then
/// refuses every push: that is named, not retried as a remote that keeps
/// moving, and nothing is lost.
#[test]
fn a_lock_left_in_the_remote_is_named_and_the_event_stays_for_the_next_sync() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let lock = remote.join("refs/huddle/main.lock");
    std::fs::write(&lock, "").unwrap();
    ok(
        &clones[0],
        &["log", "1", "agent", "note", "behind the lock"],
    );
    let out = huddle(&clones[0], &["sync"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the remote refused to update its log")
            && stderr.contains("[remote rejected]")
            && stderr.contains("refs/huddle/main.lock"),
        "{stderr}"
    );
    assert!(!stderr.contains("kept moving"), "{stderr}");

    std::fs::remove_file(&lock).unwrap();
    ok(&clones[0], &["sync"]);
    ok(&clones[1], &["sync"]);
    each_once_in(&[&clones[0], &clones[1]], &remote, &["behind the lock"]);
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
        .env("XDG_STATE_HOME", state_home(&clones[0]))
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
    // And what the leader pushes reaches the other clone. The leader appends
    // what it pulled before it pushes, so the other clone syncs until the
    // event comes (or the deadline passes).
    let pushed = crate::common::wait_for(std::time::Duration::from_secs(15), || {
        ok(&clones[1], &["sync"]);
        count(&lines(&clones[1]), "from the daemon's clone") == 1
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(arrived, "the leader did not pull the other clone's event");
    assert!(pushed, "the leader did not push its clone's event");
}

/// The commit a ref of the bare remote names.
fn remote_ref(remote: &Path, name: &str) -> String {
    git(remote, &["rev-parse", name]).trim().to_string()
}

/// Content and modification time of a file.
fn snapshot(path: &Path) -> (Vec<u8>, std::time::SystemTime) {
    let bytes = std::fs::read(path).unwrap();
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    (bytes, modified)
}

/// `git status --porcelain`, one entry per line, sorted.
fn status(clone: &Path) -> Vec<String> {
    let mut entries: Vec<String> = git(clone, &["status", "--porcelain", "--untracked-files=all"])
        .lines()
        .map(str::to_string)
        .collect();
    entries.sort();
    entries
}

#[test]
fn sync_leaves_branches_the_index_and_every_file_but_events_log_alone() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    std::fs::write(a.join("code.txt"), "v1\n").unwrap();
    git(a, &["add", "code.txt"]);
    git(a, &["commit", "-qm", "code"]);
    git(a, &["push", "-q", "origin", "main"]);
    let before = git(a, &["rev-parse", "HEAD"]).trim().to_string();
    ok(b, &["log", "1", "agent", "note", "from b"]);
    ok(b, &["sync"]);
    // A person mid-work: a staged new file, an unstaged edit, an untracked file.
    std::fs::write(a.join("code.txt"), "v2, not staged\n").unwrap();
    std::fs::write(a.join("staged.txt"), "staged, not committed\n").unwrap();
    git(a, &["add", "staged.txt"]);
    std::fs::write(a.join("scratch.txt"), "untracked\n").unwrap();
    let index_before = git(a, &["ls-files", "-s"]);
    let files = ["code.txt", "staged.txt", "scratch.txt", "huddle.toml"];
    let files_before: Vec<_> = files.iter().map(|f| snapshot(&a.join(f))).collect();
    let branches = git(a, &["for-each-ref", "refs/heads", "refs/remotes"]);
    let remote_branches = git(&remote, &["for-each-ref", "refs/heads"]);
    ok(a, &["log", "1", "agent", "note", "from a"]);

    ok(a, &["sync"]);

    assert_eq!(git(a, &["ls-files", "-s"]), index_before, "the index");
    assert_eq!(
        git(a, &["diff", "--cached", "--name-only"]),
        "staged.txt\n",
        "what the person staged stays staged, and nothing else is"
    );
    for (file, before) in files.iter().zip(&files_before) {
        assert_eq!(&snapshot(&a.join(file)), before, "{file} was touched");
    }
    assert_eq!(git(a, &["rev-parse", "HEAD"]).trim(), before);
    assert_eq!(
        git(a, &["for-each-ref", "refs/heads", "refs/remotes"]),
        branches
    );
    assert_eq!(
        git(&remote, &["for-each-ref", "refs/heads"]),
        remote_branches
    );
    // events.log and the derived files are ignored; the person's changes
    // show as they were.
    assert_eq!(
        status(a),
        [
            " M code.txt",
            "?? huddle.toml",
            "?? scratch.txt",
            "A  staged.txt"
        ],
    );
    // No history but the log's own ref holds anything of sync's, and the
    // staged or untracked work appears nowhere.
    let touched: std::collections::BTreeSet<String> =
        git(&remote, &["log", "--branches", "--format=", "--name-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
    assert_eq!(touched.into_iter().collect::<Vec<_>>(), ["code.txt"]);
    assert_eq!(
        git(&remote, &["ls-tree", "--name-only", "refs/huddle/main"]),
        "000000.jsonl\n"
    );
    assert!(huddle_leftovers(&a.join(".git")).is_empty());
    let mine = lines(a);
    assert_eq!(count(&mine, "from a"), 1);
    assert_eq!(count(&mine, "from b"), 1);
    ok(b, &["sync"]);
    let theirs = lines(b);
    assert_eq!(count(&theirs, "from a"), 1);
    assert_eq!(count(&theirs, "from b"), 1);
}

#[test]
fn sync_carries_events_on_any_branch_or_a_detached_head_and_moves_no_branch() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "on main"]);
    ok(a, &["sync"]);
    git(a, &["switch", "-q", "-c", "feature"]);
    std::fs::write(a.join("feature.txt"), "work in progress\n").unwrap();
    git(a, &["add", "feature.txt"]);
    git(a, &["commit", "-qm", "feature work"]);
    let remote_branches = git(&remote, &["for-each-ref", "refs/heads"]);
    let local_branches = git(a, &["for-each-ref", "refs/heads", "refs/remotes"]);

    ok(a, &["log", "1", "agent", "note", "while on feature"]);
    ok(a, &["sync"]);
    git(a, &["checkout", "-q", "--detach"]);
    let head = git(a, &["rev-parse", "HEAD"]);
    ok(a, &["log", "1", "agent", "note", "while detached"]);
    ok(a, &["sync"]);

    assert_eq!(
        git(&remote, &["for-each-ref", "refs/heads"]),
        remote_branches
    );
    assert_eq!(
        git(a, &["for-each-ref", "refs/heads", "refs/remotes"]),
        local_branches
    );
    assert_eq!(git(a, &["rev-parse", "HEAD"]), head, "HEAD moved");
    let travelled = remote_log(&remote);
    for content in ["on main", "while on feature", "while detached"] {
        assert_eq!(count(&travelled, content), 1, "{content}");
    }
    // The feature's work went nowhere.
    let everything = git(&remote, &["log", "--all", "--format=", "--name-only"]);
    assert!(!everything.contains("feature.txt"), "{everything}");
    ok(b, &["sync"]);
    let theirs = lines(b);
    for content in ["on main", "while on feature", "while detached"] {
        assert_eq!(count(&theirs, content), 1, "{content}");
    }
}

#[test]
fn sync_in_the_middle_of_a_merge_rebase_cherry_pick_or_revert_leaves_it_as_it_was() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 1);
    let a = &clones[0];
    ok(a, &["log", "1", "agent", "note", "first"]);
    ok(a, &["sync"]);
    // A clean tree for the operations to start, and a conflict for each to stop on.
    std::fs::write(a.join("code.txt"), "base\n").unwrap();
    git(a, &["add", "code.txt"]);
    git(a, &["commit", "-qm", "base"]);
    git(a, &["switch", "-q", "-c", "other"]);
    std::fs::write(a.join("code.txt"), "other\n").unwrap();
    git(a, &["commit", "-qam", "other"]);
    git(a, &["switch", "-q", "main"]);
    std::fs::write(a.join("code.txt"), "main\n").unwrap();
    git(a, &["commit", "-qam", "main"]);
    let remote_branches = git(&remote, &["for-each-ref", "refs/heads"]);
    let operations: [(&str, &[&str], &[&str]); 4] = [
        ("merge", &["merge", "-q", "other"], &["merge", "--abort"]),
        ("rebase", &["rebase", "-q", "other"], &["rebase", "--abort"]),
        (
            "cherry-pick",
            &["cherry-pick", "other"],
            &["cherry-pick", "--abort"],
        ),
        (
            "revert",
            &["revert", "--no-edit", "main~1"],
            &["revert", "--abort"],
        ),
    ];
    for (operation, start, abort) in operations {
        assert!(
            !git_output(a, start).status.success(),
            "{operation} should stop on the conflict"
        );
        let index = git(a, &["ls-files", "-s"]);
        let work = std::fs::read(a.join("code.txt")).unwrap();
        let refs = git(a, &["for-each-ref", "refs/heads"]);
        let head = git(a, &["rev-parse", "HEAD"]);
        ok(
            a,
            &["log", "1", "agent", "note", &format!("during {operation}")],
        );

        ok(a, &["sync"]);

        assert_eq!(git(a, &["ls-files", "-s"]), index, "{operation}: the index");
        assert_eq!(
            std::fs::read(a.join("code.txt")).unwrap(),
            work,
            "{operation}"
        );
        assert_eq!(git(a, &["for-each-ref", "refs/heads"]), refs, "{operation}");
        assert_eq!(git(a, &["rev-parse", "HEAD"]), head, "{operation}");
        assert_eq!(
            count(&remote_log(&remote), &format!("during {operation}")),
            1,
            "{operation}"
        );
        // git still knows the operation under way, and ends it as usual.
        git(a, abort);
    }
    assert_eq!(
        git(&remote, &["for-each-ref", "refs/heads"]),
        remote_branches
    );
}

/// Files huddle left in a git directory (a journal or a lock, say).
fn huddle_leftovers(git_dir: &Path) -> Vec<String> {
    std::fs::read_dir(git_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("huddle"))
        .collect()
}

/// That git ignores the log and the derived files here, and gives the log
/// the merge driver (for history from before the segmented log).
fn assert_registered(dir: &Path) {
    assert_eq!(
        git(dir, &["check-attr", "merge", "--", "events.log"]),
        "events.log: merge: huddle-events\n"
    );
    git(dir, &["check-ignore", "-q", "events.log"]);
    git(dir, &["check-ignore", "-q", "communication.md"]);
    git(dir, &["check-ignore", "-q", ".huddle/"]);
}

#[test]
fn sync_works_in_a_linked_worktree() {
    let root = tempfile::tempdir().unwrap();
    let (_remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    git(a, &["commit", "-q", "--allow-empty", "-m", "start"]);
    ok(b, &["log", "1", "agent", "note", "from b, first"]);
    ok(b, &["sync"]);
    ok(a, &["sync"]);
    // main moves to a linked worktree; the main one works on another branch.
    git(a, &["switch", "-q", "-c", "elsewhere"]);
    let linked = root.path().join("linked");
    git(
        a,
        &["worktree", "add", "-q", linked.to_str().unwrap(), "main"],
    );
    ok(&linked, &["init"]);
    std::fs::write(linked.join("huddle.toml"), QUICK).unwrap();
    ok(b, &["log", "1", "agent", "note", "from b, second"]);
    ok(b, &["sync"]);
    ok(
        &linked,
        &["log", "1", "agent", "note", "from the linked worktree"],
    );

    ok(&linked, &["sync"]);

    let here = lines(&linked);
    assert_eq!(count(&here, "from b, second"), 1);
    assert_eq!(count(&here, "from the linked worktree"), 1);
    ok(b, &["sync"]);
    assert_eq!(count(&lines(b), "from the linked worktree"), 1);
    assert!(
        linked.join(".git").is_file(),
        "a linked worktree's .git is a file"
    );
    assert_registered(&linked);
    let private = PathBuf::from(git(&linked, &["rev-parse", "--absolute-git-dir"]).trim());
    assert!(huddle_leftovers(&private).is_empty(), "{private:?}");
    assert!(huddle_leftovers(&a.join(".git")).is_empty());
    assert_eq!(git(&linked, &["status", "--porcelain"]), "?? huddle.toml\n");
}

#[test]
fn sync_works_in_a_submodule() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 1);
    let b = &clones[0];
    git(b, &["commit", "-q", "--allow-empty", "-m", "start"]);
    git(b, &["push", "-q", "origin", "main"]);
    ok(b, &["log", "1", "agent", "note", "from b, first"]);
    ok(b, &["sync"]);
    let superproject = root.path().join("super");
    std::fs::create_dir(&superproject).unwrap();
    git(&superproject, &["init", "-q", "-b", "main"]);
    git(
        &superproject,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "-b",
            "main",
            remote.to_str().unwrap(),
            "team",
        ],
    );
    let team = superproject.join("team");
    git(&team, &["config", "user.email", "team@example.com"]);
    git(&team, &["config", "user.name", "team"]);
    git(&team, &["switch", "-q", "main"]);
    ok(&team, &["init"]);
    std::fs::write(team.join("huddle.toml"), QUICK).unwrap();
    let super_index = git(&superproject, &["ls-files", "-s"]);
    ok(b, &["log", "1", "agent", "note", "from b, second"]);
    ok(b, &["sync"]);
    ok(&team, &["log", "1", "agent", "note", "from the submodule"]);

    ok(&team, &["sync"]);

    let here = lines(&team);
    assert_eq!(count(&here, "from b, second"), 1);
    assert_eq!(count(&here, "from the submodule"), 1);
    ok(b, &["sync"]);
    assert_eq!(count(&lines(b), "from the submodule"), 1);
    assert!(team.join(".git").is_file(), "a submodule's .git is a file");
    assert_registered(&team);
    let private = PathBuf::from(git(&team, &["rev-parse", "--absolute-git-dir"]).trim());
    assert!(
        private.starts_with(superproject.join(".git/modules")),
        "{private:?}"
    );
    assert!(huddle_leftovers(&private).is_empty(), "{private:?}");
    assert_eq!(git(&superproject, &["ls-files", "-s"]), super_index);
}

/// The git the shims below hand over to.
fn real_git() -> String {
    let real = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    String::from_utf8(real.stdout).unwrap().trim().to_string()
}

/// Installs `script` as `git` in `shim_dir`; the PATH that puts it first.
fn shim_path(shim_dir: &Path, script: &str) -> String {
    std::fs::create_dir_all(shim_dir).unwrap();
    let path = shim_dir.join("git");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        shim_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A `git` first on PATH that fails every read of one object: with an error
/// the first time, by hanging past the sync's timeout the second, and lets
/// everything through afterwards. Counts the reads in `counter`.
fn git_that_fails_to_read(shim_dir: &Path, object: &str, counter: &Path) -> String {
    let real = real_git();
    let script = format!(
        "#!/bin/sh\n\
         for arg in \"$@\"; do\n\
           if [ \"$arg\" = {object} ]; then\n\
             n=$(( $(cat '{counter}' 2>/dev/null || echo 0) + 1 ))\n\
             echo $n > '{counter}'\n\
             if [ $n -eq 1 ]; then echo 'fatal: simulated: cannot read object {object}' >&2; exit 128; fi\n\
             if [ $n -eq 2 ]; then exec sleep 60; fi\n\
           fi\n\
         done\n\
         exec '{real}' \"$@\"\n",
        counter = counter.display()
    );
    shim_path(shim_dir, &script)
}

#[test]
fn a_remote_log_that_cannot_be_read_is_not_merged_and_arrives_once_at_the_next_sync() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let (a, b) = (&clones[0], &clones[1]);
    let their_commit = remote_ref(&remote, "refs/huddle/main");
    let their_log = git(&remote, &["rev-parse", "refs/huddle/main:000000.jsonl"])
        .trim()
        .to_string();
    ok(a, &["log", "1", "agent", "note", "from a"]);
    // Two attempts, each read failing (an error, then a timeout).
    std::fs::write(
        a.join("huddle.toml"),
        "[sync]\nattempts = 2\nretry_initial_ms = 10\nretry_max_ms = 20\ntimeout_secs = 3\n",
    )
    .unwrap();
    let counter = root.path().join("reads");
    let path = git_that_fails_to_read(&root.path().join("shim"), &their_log, &counter);
    let merged = || {
        let state: Value =
            serde_json::from_slice(&std::fs::read(a.join(".huddle/sync.json")).unwrap()).unwrap();
        state["merged"].as_str().unwrap().to_string()
    };
    let merged_before = merged();
    let reads = || {
        std::fs::read_to_string(&counter)
            .unwrap()
            .trim()
            .to_string()
    };

    let out = huddle_command(a, &["sync"])
        .env("PATH", &path)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("cannot read 000000.jsonl of the log") && message.contains("timed out"),
        "{message}"
    );
    assert_eq!(reads(), "2", "both attempts read the remote's log");
    assert_eq!(count(&lines(a), "from b"), 0);
    // Nothing recorded the remote commit as merged, and nothing was pushed on it.
    assert_eq!(merged(), merged_before);
    assert_ne!(merged(), their_commit);
    assert_eq!(remote_ref(&remote, "refs/huddle/main"), their_commit);
    // The next sync, with the usual timeout, through the same git.
    std::fs::write(a.join("huddle.toml"), QUICK).unwrap();

    let out = huddle_command(a, &["sync"])
        .env("PATH", &path)
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(reads(), "3");
    let mine = lines(a);
    assert_eq!(count(&mine, "from b"), 1);
    assert_eq!(count(&mine, "from a"), 1);
    ok(b, &["sync"]);
    let theirs = lines(b);
    assert_eq!(count(&theirs, "from a"), 1);
    assert_eq!(count(&theirs, "from b"), 1);
}

#[test]
fn clones_holding_the_same_events_in_different_orders_stop_committing() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "from a"]);
    ok(a, &["sync"]);
    ok(b, &["log", "1", "agent", "note", "from b"]);
    // b's file lists b's event first, a's second; a's file the other way round.
    ok(b, &["sync"]);
    ok(a, &["sync"]);
    assert_ne!(
        std::fs::read(a.join("events.log")).unwrap(),
        std::fs::read(b.join("events.log")).unwrap(),
        "the two files should differ in order for this test to mean anything"
    );
    let settled = remote_ref(&remote, "refs/huddle/main");
    for _ in 0..2 {
        for clone in [a, b] {
            let out = ok(clone, &["sync"]);
            assert!(out.contains("nothing to push"), "{out}");
            assert_eq!(
                git(clone, &["rev-parse", "refs/huddle/remotes/origin/main"]).trim(),
                settled
            );
        }
    }
    assert_eq!(
        remote_ref(&remote, "refs/huddle/main"),
        settled,
        "a sync with nothing new committed"
    );
}

/// A `git` first on PATH that, inside a sync (the sync's token in its
/// environment), stops dead holding `lock` when it runs `subcommand`: it
/// creates the lock as git does and sleeps until killed, the state a
/// `kill -9` of huddle and its git at that moment leaves. Other runs, and
/// the test's own git, go through.
fn git_that_stops_holding(shim_dir: &Path, subcommand: &str, lock: &str) -> String {
    let real = real_git();
    let lock_path = format!("\"$('{real}' rev-parse --path-format=absolute --git-path '{lock}')\"");
    let script = format!(
        "#!/bin/sh\n\
         if [ -n \"$HUDDLE_SYNC_RUN\" ]; then\n\
           for arg in \"$@\"; do\n\
             if [ \"$arg\" = {subcommand} ]; then\n\
               : > {lock_path}\n\
               exec sleep 60\n\
             fi\n\
           done\n\
         fi\n\
         exec '{real}' \"$@\"\n"
    );
    shim_path(shim_dir, &script)
}

/// Runs `huddle sync` in `clone` through the PATH `path`, and kills it and
/// every process it started (its process group) once `lock` exists.
fn kill_sync_once_it_holds(clone: &Path, path: &str, lock: &Path) {
    use std::os::unix::process::CommandExt;
    let mut child = huddle_command(clone, &["sync"])
        .env("PATH", path)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = crate::common::wait_for(std::time::Duration::from_secs(20), || lock.exists());
    // SAFETY: signals the process group of the child this test spawned.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    child.wait().unwrap();
    assert!(held, "the sync never took {}", lock.display());
}

fn git_path(clone: &Path, name: &str) -> PathBuf {
    PathBuf::from(
        git(
            clone,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        )
        .trim(),
    )
}

/// A sync (remote ahead, local events to push: it fetches, pushes, points
/// its tracking ref at what it pushed) killed with its git while git holds
/// each lock in turn: the next sync removes the lock and finishes the job,
/// every event once on both sides and on the remote.
#[test]
fn a_sync_killed_while_git_holds_any_of_its_locks_is_finished_by_the_next_one() {
    let tracking = "refs/huddle/remotes/origin/main.lock";
    for subcommand in ["fetch", "update-ref"] {
        let root = tempfile::tempdir().unwrap();
        let (remote, clones) = synced_pair(root.path());
        let (a, b) = (&clones[0], &clones[1]);
        ok(a, &["log", "1", "agent", "note", "from a"]);
        let path = git_that_stops_holding(&root.path().join("shim"), subcommand, tracking);
        let lock_file = git_path(a, tracking);
        kill_sync_once_it_holds(a, &path, &lock_file);
        assert!(lock_file.exists(), "{subcommand}");

        let out = huddle(a, &["sync"]);

        assert!(
            out.status.success(),
            "{subcommand} killed holding {tracking}: {}",
            stderr(&out)
        );
        assert!(!lock_file.exists(), "{subcommand}: the lock is still there");
        assert!(
            huddle_leftovers(&git_path(a, "")).is_empty(),
            "{subcommand}: {:?}",
            huddle_leftovers(&git_path(a, ""))
        );
        ok(b, &["sync"]);
        each_once_in(&[a, b], &remote, &["first", "from a", "from b"]);
        assert_eq!(git(a, &["status", "--porcelain"]), "?? huddle.toml\n");
    }
}

/// A push to a remote on this machine runs git's receiving side there,
/// which takes the lock of the log's ref in the remote: a sync killed with
/// its git at that moment (the remote's `reference-transaction` hook holds
/// the receiving side there, lock taken) leaves the lock in the remote, and
/// the next sync removes it and sends the event, instead of being refused.
#[test]
fn a_sync_killed_while_the_remote_holds_its_ref_lock_is_finished_by_the_next_one() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "from a"]);
    let hook = remote.join("hooks/reference-transaction");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        "#!/bin/sh\n\
         if [ -n \"$HUDDLE_SYNC_RUN\" ] && [ \"$1\" = prepared ]; then exec sleep 60; fi\n\
         cat >/dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = remote.join("refs/huddle/main.lock");
    let path = std::env::var("PATH").unwrap_or_default();

    kill_sync_once_it_holds(a, &path, &lock);

    assert!(lock.exists(), "the killed push left no lock in the remote");
    std::fs::remove_file(&hook).unwrap();
    let out = huddle(a, &["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!lock.exists(), "the lock is still in the remote");
    ok(b, &["sync"]);
    each_once_in(&[a, b], &remote, &["first", "from a", "from b"]);
}

/// Locks sync may not take for stale stay: one that was there before the
/// killed command started (someone else's), and one the killed command
/// could have left while a git process works in the repository.
#[test]
fn a_lock_the_killed_sync_did_not_leave_or_a_live_git_may_hold_stays() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "from a"]);
    let tracking = "refs/huddle/remotes/origin/main.lock";
    let tracking_lock = git_path(a, tracking);

    // The sync dies in its fetch; the lock found afterwards is older than
    // that fetch: someone else's, taken before it.
    let path = git_that_stops_holding(&root.path().join("shim"), "fetch", tracking);
    kill_sync_once_it_holds(a, &path, &tracking_lock);
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&tracking_lock)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();

    let out = huddle(a, &["sync"]);

    assert!(!out.status.success());
    assert!(stderr(&out).contains(tracking), "{}", stderr(&out));
    assert!(tracking_lock.exists(), "someone else's lock was removed");
    std::fs::remove_file(&tracking_lock).unwrap();

    // The sync dies holding the lock while a git process runs here.
    let path = git_that_stops_holding(&root.path().join("shim2"), "update-ref", tracking);
    kill_sync_once_it_holds(a, &path, &tracking_lock);
    let mut live_git = Command::new("git")
        .current_dir(a)
        .args(["hash-object", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let out = huddle(a, &["sync"]);

    assert!(!out.status.success());
    assert!(tracking_lock.exists(), "a lock removed while git ran here");
    drop(live_git.stdin.take());
    live_git.wait().unwrap();

    ok(a, &["sync"]);

    assert!(!tracking_lock.exists());
    ok(b, &["sync"]);
    each_once_in(&[a, b], &remote, &["first", "from a", "from b"]);
}

/// A `git` first on PATH that records the arguments of every command a sync
/// runs (one line each) in `record`, then runs it.
fn git_that_records(shim_dir: &Path, record: &Path) -> String {
    let real = real_git();
    let script = format!(
        "#!/bin/sh\n\
         if [ -n \"$HUDDLE_SYNC_RUN\" ]; then echo \"$*\" >> '{}'; fi\n\
         exec '{real}' \"$@\"\n",
        record.display()
    );
    shim_path(shim_dir, &script)
}

/// Appends `n` events of about 1 KB straight to a clone's log, as another
/// tool writing the file would.
fn append_kilobyte_events(clone: &Path, n: usize, tag: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(clone.join("events.log"))
        .unwrap();
    let filler = "x".repeat(900);
    for i in 0..n {
        writeln!(
            file,
            r#"{{"interaction":{},"actor":"bulk","type":"note","content":"{tag} {i} {filler}","timestamp":"2026-11-25T14:00:31Z","id":"{tag}-{i}"}}"#,
            i + 1
        )
        .unwrap();
    }
}

/// The size of each segment of the remote's log at `commit`, in order.
fn segment_sizes(remote: &Path, commit: &str) -> Vec<u64> {
    git(remote, &["ls-tree", "-l", commit])
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_sync_reads_and_writes_only_the_segment_that_changed() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    // About 3 MB: the remote's log is three segments of at most 1 MiB.
    append_kilobyte_events(a, 3000, "bulk");
    ok(a, &["sync"]);
    ok(b, &["sync"]);
    let sizes = segment_sizes(&remote, "refs/huddle/main");
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert!(sizes.iter().all(|&size| size <= 1 << 20), "{sizes:?}");
    assert_eq!(lines(b).len(), 3000);
    let last_before = git(&remote, &["rev-parse", "refs/huddle/main:000002.jsonl"]);
    let record = root.path().join("commands");
    let path = git_that_records(&root.path().join("shim"), &record);

    ok(a, &["log", "1", "agent", "note", "one more"]);
    let out = huddle_command(a, &["sync"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = std::fs::read_to_string(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    let out = huddle_command(b, &["sync"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let received = std::fs::read_to_string(&record).unwrap();

    // The sender read the open segment (to add to it) and wrote it back:
    // no other segment was read or written.
    let written: Vec<&str> = sent.lines().filter(|l| l.contains("hash-object")).collect();
    assert_eq!(written.len(), 1, "{sent}");
    let read: Vec<&str> = sent.lines().filter(|l| l.contains("cat-file")).collect();
    assert_eq!(read.len(), 1, "{sent}");
    assert!(read[0].ends_with(last_before.trim()), "{sent}");
    let last_after = git(&remote, &["rev-parse", "refs/huddle/main:000002.jsonl"]);
    assert_ne!(last_after, last_before);
    for closed in ["000000.jsonl", "000001.jsonl"] {
        assert_eq!(
            git(
                &remote,
                &["rev-parse", &format!("refs/huddle/main:{closed}")]
            ),
            git(
                &remote,
                &["rev-parse", &format!("refs/huddle/main~1:{closed}")]
            ),
        );
    }
    // The receiver read one blob, the segment that grew.
    let reads: Vec<&str> = received
        .lines()
        .filter(|l| l.contains("cat-file"))
        .collect();
    assert_eq!(reads.len(), 1, "{received}");
    assert!(reads[0].ends_with(last_after.trim()), "{received}");
    let theirs = lines(b);
    assert_eq!(count(&theirs, "one more"), 1);
    assert_eq!(theirs.len(), 3001);
}

#[test]
fn a_sync_killed_after_its_push_before_recording_it_sends_and_receives_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "from a"]);
    // What a sync records only once its push went through: as if it was
    // killed between the two, the record is put back as it was before.
    let record = a.join(".huddle/sync.json");
    let before = std::fs::read(&record).unwrap();
    let out = ok(a, &["sync"]);
    assert!(out.contains("1 events received, pushed"), "{out}");
    let pushed = remote_ref(&remote, "refs/huddle/main");
    std::fs::write(&record, &before).unwrap();

    let out = ok(a, &["sync"]);

    assert!(out.contains("0 events received, nothing to push"), "{out}");
    assert_eq!(remote_ref(&remote, "refs/huddle/main"), pushed);
    ok(b, &["sync"]);
    each_once_in(&[a, b], &remote, &["first", "from a", "from b"]);
}

#[test]
fn a_remote_whose_log_was_replaced_gets_every_event_again_once() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["sync"]);
    // Someone replaces the remote's log with a new one holding one event of
    // its own and one a clone already has.
    let stranger = root.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    git(&stranger, &["init", "-q"]);
    let first = lines(a)
        .into_keys()
        .find(|line| line.contains("\"first\""))
        .unwrap();
    let foreign = r#"{"interaction":7,"actor":"stranger","type":"note","content":"from the stranger","timestamp":"2026-11-25T14:00:31Z","id":"stranger-1"}"#;
    std::fs::write(
        stranger.join("000000.jsonl"),
        format!("{first}\n{foreign}\n"),
    )
    .unwrap();
    git(&stranger, &["add", "000000.jsonl"]);
    git(
        &stranger,
        &[
            "-c",
            "user.name=s",
            "-c",
            "user.email=s@example.com",
            "commit",
            "-qm",
            "new log",
        ],
    );
    git(
        &stranger,
        &[
            "push",
            "-q",
            "--force",
            remote.to_str().unwrap(),
            "HEAD:refs/huddle/main",
        ],
    );

    ok(a, &["sync"]);
    ok(b, &["sync"]);

    each_once_in(&[a, b], &remote, &["first", "from b", "from the stranger"]);
}

#[test]
fn a_large_first_sync_is_pushed_16_mib_per_commit() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    // About 20 MB: more than one push's worth.
    append_kilobyte_events(a, 20_000, "large");

    ok(a, &["sync"]);

    let commits = git(&remote, &["rev-list", "--count", "refs/huddle/main"]);
    assert_eq!(commits.trim(), "2", "one commit per 16 MiB pushed");
    let first_bytes: u64 = segment_sizes(&remote, "refs/huddle/main~1").iter().sum();
    assert!(
        (16 << 20..17 << 20).contains(&first_bytes),
        "the first push carried {first_bytes} bytes"
    );
    ok(b, &["sync"]);
    assert_eq!(lines(b).len(), 20_000);
    assert_eq!(remote_log(&remote).len(), 20_000);
}

#[test]
fn a_git_command_that_keeps_reporting_progress_outlives_the_timeout() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = synced_pair(root.path());
    let a = &clones[0];
    let real = real_git();
    // Every fetch says something every 300 ms for 3 s before it starts:
    // three times the timeout, never silent for as long as it.
    let script = format!(
        "#!/bin/sh\n\
         for arg in \"$@\"; do\n\
           if [ \"$arg\" = fetch ]; then\n\
             for i in 1 2 3 4 5 6 7 8 9 10; do echo \"Counting objects: $i\" >&2; sleep 0.3; done\n\
           fi\n\
         done\n\
         exec '{real}' \"$@\"\n"
    );
    let path = shim_path(&root.path().join("shim"), &script);
    std::fs::write(
        a.join("huddle.toml"),
        "[sync]\nattempts = 1\ntimeout_secs = 1\n",
    )
    .unwrap();
    ok(a, &["log", "1", "agent", "note", "from a"]);

    let out = huddle_command(a, &["sync"])
        .env("PATH", &path)
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", stderr(&out));
    each_once_in(&[a], &remote, &["first", "from b", "from a"]);
}
