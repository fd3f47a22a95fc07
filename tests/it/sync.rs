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
    assert_eq!(count(&merged, "pushed by another clone"), 1, "{merged:?}");
    assert_eq!(
        count(&merged, "before a manual pull"),
        1,
        "the local event survives the pull: {merged:?}"
    );
    assert!(merged.values().all(|&n| n == 1));
    // What the pull committed holds both events too (the driver's output).
    let committed = git(&clones[0], &["show", "HEAD:events.log"]);
    for content in ["pushed by another clone", "before a manual pull"] {
        let copies = committed.lines().filter(|l| l.contains(content)).count();
        assert_eq!(copies, 1, "{content} in the merge commit:\n{committed}");
    }
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

/// The index as `git ls-files -s` shows it (mode, object, stage, path), minus the log.
fn index_without_log(clone: &Path) -> Vec<String> {
    git(clone, &["ls-files", "-s"])
        .lines()
        .filter(|l| !l.ends_with("\tevents.log"))
        .map(str::to_string)
        .collect()
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
fn sync_commits_only_events_log_and_leaves_staging_and_other_files_alone() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    std::fs::write(a.join("code.txt"), "v1\n").unwrap();
    git(a, &["add", "code.txt"]);
    git(a, &["commit", "-qm", "code"]);
    let before = git(a, &["rev-parse", "HEAD"]).trim().to_string();
    ok(b, &["log", "1", "agent", "note", "from b"]);
    ok(b, &["sync"]);
    // A person mid-work: a staged new file, an unstaged edit, an untracked file.
    std::fs::write(a.join("code.txt"), "v2, not staged\n").unwrap();
    std::fs::write(a.join("staged.txt"), "staged, not committed\n").unwrap();
    git(a, &["add", "staged.txt"]);
    std::fs::write(a.join("scratch.txt"), "untracked\n").unwrap();
    let index_before = index_without_log(a);
    let files = ["code.txt", "staged.txt", "scratch.txt", "huddle.toml"];
    let files_before: Vec<_> = files.iter().map(|f| snapshot(&a.join(f))).collect();
    ok(a, &["log", "1", "agent", "note", "from a"]);

    ok(a, &["sync"]);

    assert_eq!(
        git(a, &["diff", "--cached", "--name-only"]),
        "staged.txt\n",
        "what the person staged stays staged, and nothing else is"
    );
    assert_eq!(index_without_log(a), index_before);
    for (file, before) in files.iter().zip(&files_before) {
        assert_eq!(&snapshot(&a.join(file)), before, "{file} was touched");
    }
    // The log is committed and git sees the file as the branch has it; the
    // derived files are ignored; the person's changes show as they were.
    assert_eq!(
        status(a),
        [
            " M code.txt",
            "?? huddle.toml",
            "?? scratch.txt",
            "A  staged.txt"
        ],
    );
    // Sync's commits change events.log only: from the person's commit to the
    // branch, and nowhere in any history does the staged or untracked work appear.
    assert_eq!(
        git(a, &["diff", "--name-only", &before, "HEAD"]),
        "events.log\n"
    );
    let touched: std::collections::BTreeSet<String> =
        git(a, &["log", "--all", "--format=", "--name-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
    assert_eq!(
        touched.into_iter().collect::<Vec<_>>(),
        ["code.txt", "events.log"]
    );
    assert_eq!(git(&remote, &["show", "main:code.txt"]), "v1\n");
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
fn sync_leaves_local_edits_alone_when_the_remote_changed_other_files() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 1);
    let a = &clones[0];
    std::fs::write(a.join("shared.txt"), "v1\n").unwrap();
    git(a, &["add", "shared.txt"]);
    git(a, &["commit", "-qm", "shared"]);
    ok(a, &["log", "1", "agent", "note", "first"]);
    ok(a, &["sync"]);
    // Another person clones, changes shared.txt and pushes it with git.
    let b = &clone(root.path(), &remote, 1);
    std::fs::write(b.join("shared.txt"), "v2 from b\n").unwrap();
    git(b, &["commit", "-qam", "b's change"]);
    git(b, &["push", "-q", "origin", "main"]);
    ok(b, &["log", "1", "agent", "note", "from b"]);
    ok(b, &["sync"]);
    // Meanwhile a edits shared.txt without committing.
    std::fs::write(a.join("shared.txt"), "a's edit in progress\n").unwrap();
    let edit = snapshot(&a.join("shared.txt"));
    let head = git(a, &["rev-parse", "HEAD"]).trim().to_string();
    let index = index_without_log(a);
    ok(a, &["log", "1", "agent", "note", "from a"]);

    ok(a, &["sync"]);

    assert_eq!(
        snapshot(&a.join("shared.txt")),
        edit,
        "the edit was overwritten"
    );
    // The branch takes the events and nothing else (following the remote
    // would change shared.txt under the person); the index is the person's.
    assert_eq!(
        git(a, &["diff", "--name-only", &head, "HEAD"]),
        "events.log\n"
    );
    assert_eq!(index_without_log(a), index);
    assert_eq!(status(a), [" M shared.txt", "?? huddle.toml"]);
    // The events went both ways all the same, each once.
    let mine = lines(a);
    assert_eq!(count(&mine, "from b"), 1);
    assert_eq!(count(&mine, "from a"), 1);
    assert_eq!(git(&remote, &["show", "main:shared.txt"]), "v2 from b\n");
    ok(b, &["sync"]);
    let theirs = lines(b);
    assert_eq!(count(&theirs, "from a"), 1);
    assert_eq!(count(&theirs, "first"), 1);
    assert_eq!(
        std::fs::read_to_string(b.join("shared.txt")).unwrap(),
        "v2 from b\n"
    );
    // The person's own pull, when they choose, is a fast-forward on a clean log.
    git(a, &["checkout", "--", "shared.txt"]);
    git(a, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(
        std::fs::read_to_string(a.join("shared.txt")).unwrap(),
        "v2 from b\n"
    );
    let mine = lines(a);
    assert_eq!(count(&mine, "from b"), 1);
    assert_eq!(count(&mine, "from a"), 1);
}

#[test]
fn sync_on_another_branch_or_a_detached_head_refuses_and_pushes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 1);
    let a = &clones[0];
    ok(a, &["log", "1", "agent", "note", "on main"]);
    ok(a, &["sync"]);
    git(a, &["switch", "-q", "-c", "feature"]);
    std::fs::write(a.join("feature.txt"), "work in progress\n").unwrap();
    git(a, &["add", "feature.txt"]);
    git(a, &["commit", "-qm", "feature work"]);
    ok(a, &["log", "1", "agent", "note", "while on feature"]);
    let remote_refs = git(&remote, &["for-each-ref"]);
    let local_refs = git(a, &["for-each-ref", "refs/heads"]);
    let log = std::fs::read(a.join("events.log")).unwrap();

    let out = huddle(a, &["sync"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    for needle in ["`main`", "`feature`", "git switch main", "sync.branch"] {
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }
    // Not retried: one refusal is one failure, short of the two that mean offline.
    let status: Value = serde_json::from_str(&ok(a, &["status", "--json"])).unwrap();
    assert_eq!(status["sync"]["offline"], false, "{status}");
    assert_eq!(std::fs::read(a.join("events.log")).unwrap(), log);
    git(a, &["checkout", "-q", "--detach"]);
    let out = huddle(a, &["sync"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("detached") && message.contains("`main`"),
        "{message}"
    );

    assert_eq!(
        git(&remote, &["for-each-ref"]),
        remote_refs,
        "the remote moved"
    );
    assert_eq!(git(a, &["for-each-ref", "refs/heads"]), local_refs);
    // The log gained nothing but huddle's own report that sync needs a person.
    let now = std::fs::read(a.join("events.log")).unwrap();
    assert!(now.starts_with(&log));
    let reports = crate::common::parse_lines(&now[log.len()..]);
    assert!(
        reports.iter().all(|event| event["actor"] == "huddle"
            && event["type"] == "error"
            && event["content"]
                .as_str()
                .is_some_and(|text| text.contains("git switch main"))),
        "{reports:?}"
    );
    // Back on the sync branch, the events go, and the feature's commit does not.
    git(a, &["switch", "-q", "main"]);
    ok(a, &["sync"]);
    assert!(git(&remote, &["show", "main:events.log"]).contains("while on feature"));
    assert!(
        !git_output(&remote, &["cat-file", "-e", "main:feature.txt"])
            .status
            .success()
    );
}

#[test]
fn sync_refuses_while_a_merge_rebase_cherry_pick_or_revert_is_under_way() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 1);
    let a = &clones[0];
    ok(a, &["log", "1", "agent", "note", "first"]);
    ok(a, &["sync"]);
    // Commits a sync would push, and a clean tree for the operations to start.
    std::fs::write(a.join("code.txt"), "base\n").unwrap();
    git(a, &["add", "code.txt"]);
    git(a, &["commit", "-qm", "base"]);
    git(a, &["switch", "-q", "-c", "other"]);
    std::fs::write(a.join("code.txt"), "other\n").unwrap();
    git(a, &["commit", "-qam", "other"]);
    git(a, &["switch", "-q", "main"]);
    std::fs::write(a.join("code.txt"), "main\n").unwrap();
    git(a, &["commit", "-qam", "main"]);
    let remote_refs = git(&remote, &["for-each-ref"]);
    let local_refs = git(a, &["for-each-ref", "refs/heads"]);
    // Each operation stops on the conflict in code.txt.
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

        let out = huddle(a, &["sync"]);

        assert_eq!(out.status.code(), Some(1), "{operation}");
        let message = stderr(&out);
        assert!(
            message.contains(&format!("a git {operation} is in progress")),
            "{operation}: {message}"
        );
        assert_eq!(git(&remote, &["for-each-ref"]), remote_refs, "{operation}");
        assert_eq!(git(a, &["for-each-ref", "refs/heads"]), local_refs);
        assert_eq!(git(a, &["ls-files", "-s"]), index, "{operation}: the index");
        git(a, abort);
    }
    // With the operations over, the same sync pushes.
    ok(a, &["sync"]);
    assert_eq!(
        remote_ref(&remote, "main"),
        git(a, &["rev-parse", "main"]).trim()
    );
}

#[test]
fn a_conflict_outside_the_log_stops_the_sync_and_names_the_path() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 1);
    let a = &clones[0];
    std::fs::write(a.join("shared.txt"), "v1\n").unwrap();
    git(a, &["add", "shared.txt"]);
    git(a, &["commit", "-qm", "shared"]);
    ok(a, &["sync"]);
    let b = &clone(root.path(), &remote, 1);
    std::fs::write(b.join("shared.txt"), "b's version\n").unwrap();
    git(b, &["commit", "-qam", "b's change"]);
    git(b, &["push", "-q", "origin", "main"]);
    ok(b, &["log", "1", "agent", "note", "from b"]);
    ok(b, &["sync"]);
    std::fs::write(a.join("shared.txt"), "a's version\n").unwrap();
    git(a, &["commit", "-qam", "a's change"]);
    ok(a, &["log", "1", "agent", "note", "from a"]);
    let head = git(a, &["rev-parse", "HEAD"]);
    let remote_head = remote_ref(&remote, "main");

    let out = huddle(a, &["sync"]);

    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("shared.txt") && message.contains("git pull"),
        "{message}"
    );
    // The branch took a's events (so the person's pull runs on a clean
    // log), nothing else; the remote has nothing new; shared.txt is a's.
    assert_eq!(
        git(a, &["diff", "--name-only", head.trim(), "HEAD"]),
        "events.log\n"
    );
    assert_eq!(status(a), ["?? huddle.toml"]);
    assert_eq!(remote_ref(&remote, "main"), remote_head);
    assert_eq!(
        std::fs::read_to_string(a.join("shared.txt")).unwrap(),
        "a's version\n"
    );
    // Once the person has merged, the events go both ways, each once.
    assert!(!git_output(
        a,
        &["pull", "-q", "--no-rebase", "--no-edit", "origin", "main"]
    )
    .status
    .success());
    assert_eq!(
        git(a, &["diff", "--name-only", "--diff-filter=U"]),
        "shared.txt\n",
        "the pull stops on shared.txt alone: the driver merged the log"
    );
    std::fs::write(a.join("shared.txt"), "both\n").unwrap();
    git(a, &["commit", "-qam", "resolved"]);
    ok(a, &["sync"]);
    ok(b, &["sync"]);
    for clone in [a, b] {
        let events = lines(clone);
        assert_eq!(count(&events, "from a"), 1, "{}", clone.display());
        assert_eq!(count(&events, "from b"), 1, "{}", clone.display());
    }
}

/// Files huddle left in a git directory (a private index, say).
fn huddle_leftovers(git_dir: &Path) -> Vec<String> {
    std::fs::read_dir(git_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("huddle"))
        .collect()
}

/// That git gives the log the merge driver and ignores the derived files here.
fn assert_registered(dir: &Path) {
    assert_eq!(
        git(dir, &["check-attr", "merge", "--", "events.log"]),
        "events.log: merge: huddle-events\n"
    );
    git(dir, &["check-ignore", "-q", "communication.md"]);
    git(dir, &["check-ignore", "-q", ".huddle/"]);
}

#[test]
fn sync_works_in_a_linked_worktree() {
    let root = tempfile::tempdir().unwrap();
    let (_remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
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

/// A `git` first on PATH that fails every read of one object: with an error
/// the first time, by hanging past the sync's timeout the second, and lets
/// everything through afterwards. Counts the reads in `counter`.
fn git_that_fails_to_read(shim_dir: &Path, object: &str, counter: &Path) -> String {
    let real = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    std::fs::create_dir_all(shim_dir).unwrap();
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

#[test]
fn a_remote_log_that_cannot_be_read_is_not_merged_and_arrives_once_at_the_next_sync() {
    let root = tempfile::tempdir().unwrap();
    let (remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "first"]);
    ok(a, &["sync"]);
    ok(b, &["log", "1", "agent", "note", "from b"]);
    ok(b, &["sync"]);
    let their_commit = remote_ref(&remote, "main");
    let their_log = git(b, &["rev-parse", "main:events.log"]).trim().to_string();
    ok(a, &["log", "1", "agent", "note", "from a"]);
    // Two attempts, each read failing (an error, then a timeout).
    std::fs::write(
        a.join("huddle.toml"),
        "[sync]\nattempts = 2\nretry_initial_ms = 10\nretry_max_ms = 20\ntimeout_secs = 3\n",
    )
    .unwrap();
    let counter = root.path().join("reads");
    let path = git_that_fails_to_read(&root.path().join("shim"), &their_log, &counter);
    let head = git(a, &["rev-parse", "main"]);
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
        message.contains("cannot read events.log") && message.contains("timed out"),
        "{message}"
    );
    assert_eq!(reads(), "2", "both attempts read the remote's log");
    assert_eq!(count(&lines(a), "from b"), 0);
    // Nothing recorded the remote commit as merged: not the branch, not the remote.
    assert_eq!(git(a, &["rev-parse", "main"]), head);
    assert!(
        !git_output(a, &["merge-base", "--is-ancestor", &their_commit, "main"])
            .status
            .success()
    );
    assert_eq!(remote_ref(&remote, "main"), their_commit);
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
fn clones_holding_the_same_events_stop_committing() {
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
    let settled = remote_ref(&remote, "main");
    for _ in 0..2 {
        for clone in [a, b] {
            ok(clone, &["sync"]);
            assert_eq!(git(clone, &["rev-parse", "main"]).trim(), settled);
        }
    }
    assert_eq!(
        remote_ref(&remote, "main"),
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
    let real = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap().trim().to_string();
    std::fs::create_dir_all(shim_dir).unwrap();
    // The person's index is the one without GIT_INDEX_FILE; the private
    // index's lock is beside GIT_INDEX_FILE.
    let lock_path = if lock == "<private>" {
        "\"$GIT_INDEX_FILE.lock\"".to_string()
    } else {
        format!("\"$('{real}' rev-parse --path-format=absolute --git-path '{lock}')\"")
    };
    let wanted = if lock == "<private>" {
        "[ -n \"$GIT_INDEX_FILE\" ]"
    } else if lock == "index.lock" {
        "[ -z \"$GIT_INDEX_FILE\" ]"
    } else {
        "true"
    };
    let script = format!(
        "#!/bin/sh\n\
         if [ -n \"$HUDDLE_SYNC_RUN\" ] && {wanted}; then\n\
           for arg in \"$@\"; do\n\
             if [ \"$arg\" = {subcommand} ]; then\n\
               : > {lock_path}\n\
               exec sleep 60\n\
             fi\n\
           done\n\
         fi\n\
         exec '{real}' \"$@\"\n"
    );
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

/// A sync (remote ahead, local events to commit: it fetches, moves the
/// branch and the index entry, commits on a private index, pushes) killed
/// with its git while git holds each lock in turn: the next sync removes
/// the lock and finishes the job, every event once on both sides.
#[test]
fn a_sync_killed_while_git_holds_any_of_its_locks_is_finished_by_the_next_one() {
    let cases = [
        ("fetch", "refs/remotes/origin/main.lock"),
        ("update-ref", "refs/heads/main.lock"),
        ("update-ref", "HEAD.lock"),
        ("update-index", "index.lock"),
        ("read-tree", "<private>"),
        ("push", "refs/remotes/origin/main.lock"),
    ];
    for (subcommand, lock) in cases {
        let root = tempfile::tempdir().unwrap();
        let (_remote, clones) = clones(root.path(), 2);
        let (a, b) = (&clones[0], &clones[1]);
        ok(a, &["log", "1", "agent", "note", "first"]);
        ok(a, &["sync"]);
        ok(b, &["log", "1", "agent", "note", "from b"]);
        ok(b, &["sync"]);
        ok(a, &["log", "1", "agent", "note", "from a"]);
        let path = git_that_stops_holding(&root.path().join("shim"), subcommand, lock);
        let lock_file = if lock == "<private>" {
            // Whichever private index the killed sync made: found by name.
            PathBuf::new()
        } else {
            git_path(a, lock)
        };
        if lock == "<private>" {
            let git_dir = git_path(a, "");
            let private_lock = || {
                std::fs::read_dir(&git_dir).unwrap().any(|entry| {
                    let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                    name.starts_with("huddle-sync.") && name.ends_with(".index.lock")
                })
            };
            use std::os::unix::process::CommandExt;
            let mut child = huddle_command(a, &["sync"])
                .env("PATH", &path)
                .process_group(0)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let held = crate::common::wait_for(std::time::Duration::from_secs(20), private_lock);
            // SAFETY: signals the process group of the child this test spawned.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            child.wait().unwrap();
            assert!(held, "the sync never took a private index's lock");
            assert!(private_lock());
        } else {
            kill_sync_once_it_holds(a, &path, &lock_file);
            assert!(lock_file.exists(), "{subcommand}: {lock}");
        }

        let out = huddle(a, &["sync"]);

        assert!(
            out.status.success(),
            "{subcommand} killed holding {lock}: {}",
            stderr(&out)
        );
        if lock != "<private>" {
            assert!(!lock_file.exists(), "{subcommand}: {lock} is still there");
        }
        assert!(
            huddle_leftovers(&git_path(a, "")).is_empty(),
            "{subcommand}: {lock}: {:?}",
            huddle_leftovers(&git_path(a, ""))
        );
        ok(b, &["sync"]);
        for clone in [a, b] {
            let events = lines(clone);
            for content in ["first", "from a", "from b"] {
                assert_eq!(
                    count(&events, content),
                    1,
                    "{subcommand}: {lock}: {content}"
                );
            }
        }
        // The branch holds the log and the person's git works again.
        assert_eq!(
            git(a, &["show", "main:events.log"]).as_bytes(),
            std::fs::read(a.join("events.log")).unwrap()
        );
        let refresh = git_output(a, &["update-index", "--refresh"]);
        assert!(
            refresh.status.success(),
            "{subcommand}: {lock}: {}{}",
            String::from_utf8_lossy(&refresh.stdout),
            stderr(&refresh)
        );
        assert_eq!(git(a, &["status", "--porcelain"]), "?? huddle.toml\n");
    }
}

/// Locks sync may not take for stale stay: one that was there before the
/// killed command started (someone else's), and one the killed command
/// could have left while a git process works in the repository.
#[test]
fn a_lock_the_killed_sync_did_not_leave_or_a_live_git_may_hold_stays() {
    let root = tempfile::tempdir().unwrap();
    let (_remote, clones) = clones(root.path(), 2);
    let (a, b) = (&clones[0], &clones[1]);
    ok(a, &["log", "1", "agent", "note", "first"]);
    ok(a, &["sync"]);
    ok(b, &["log", "1", "agent", "note", "from b"]);
    ok(b, &["sync"]);
    ok(a, &["log", "1", "agent", "note", "from a"]);
    let branch_lock = git_path(a, "refs/heads/main.lock");
    let tracking_lock = git_path(a, "refs/remotes/origin/main.lock");

    // Someone's branch lock from before; the sync dies in its fetch.
    std::fs::write(&branch_lock, "").unwrap();
    let two_seconds_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&branch_lock)
        .unwrap()
        .set_modified(two_seconds_ago)
        .unwrap();
    let path = git_that_stops_holding(
        &root.path().join("shim"),
        "fetch",
        "refs/remotes/origin/main.lock",
    );
    kill_sync_once_it_holds(a, &path, &tracking_lock);

    let out = huddle(a, &["sync"]);

    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refs/heads/main.lock"),
        "{}",
        stderr(&out)
    );
    assert!(branch_lock.exists(), "someone else's lock was removed");
    assert!(!tracking_lock.exists(), "the killed fetch's lock stays");
    std::fs::remove_file(&branch_lock).unwrap();

    // The sync dies holding the branch's lock while a git process runs here.
    let path = git_that_stops_holding(
        &root.path().join("shim2"),
        "update-ref",
        "refs/heads/main.lock",
    );
    kill_sync_once_it_holds(a, &path, &branch_lock);
    let mut live_git = Command::new("git")
        .current_dir(a)
        .args(["hash-object", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let out = huddle(a, &["sync"]);

    assert!(!out.status.success());
    assert!(branch_lock.exists(), "a lock removed while git ran here");
    drop(live_git.stdin.take());
    live_git.wait().unwrap();

    ok(a, &["sync"]);

    assert!(!branch_lock.exists());
    ok(b, &["sync"]);
    for clone in [a, b] {
        let events = lines(clone);
        for content in ["first", "from a", "from b"] {
            assert_eq!(count(&events, content), 1, "{content}");
        }
    }
}
