//! `huddle init` and `huddle log` through the real binary.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use crate::common::{
    baseline_script, huddle_at, is_root, parse_lines, stderr, wait_output_within, HuddleDir,
    OutputWithin, Tmpfs, COMMAND_LIMIT,
};

#[test]
fn init_creates_files_and_keeps_existing_ones() {
    let dir = HuddleDir::new();
    for name in [
        "events.log",
        "communication.md",
        "archive.md",
        "huddle.toml",
    ] {
        assert!(dir.file(name).exists(), "{name} missing");
    }
    assert_eq!(dir.log_bytes(), b"");
    let communication = std::fs::read_to_string(dir.file("communication.md")).unwrap();
    assert!(communication.contains("<!-- BEGIN COMMUNICATION -->\n<!-- END COMMUNICATION -->\n"));

    dir.ok(&["log", "1", "Agent A", "question", "keep me"]);
    std::fs::write(dir.file("communication.md"), "my notes\n").unwrap();
    let before = dir.log_bytes();
    let out = dir.ok(&["init"]);
    assert_eq!(dir.log_bytes(), before, "init must never truncate the log");
    assert_eq!(
        std::fs::read_to_string(dir.file("communication.md")).unwrap(),
        "my notes\n"
    );
    assert_eq!(out.matches("kept").count(), 4, "{out}");
}

#[test]
fn log_appends_the_brief_fields_plus_id() {
    let dir = HuddleDir::new();
    let out = dir.ok(&[
        "log",
        "3",
        "Agent A",
        "question",
        "How do I start the MCP server?",
    ]);
    assert_eq!(out.trim(), "3");
    let events = dir.events();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["interaction"], 3);
    assert_eq!(event["actor"], "Agent A");
    assert_eq!(event["type"], "question");
    assert_eq!(event["content"], "How do I start the MCP server?");
    let timestamp = event["timestamp"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{timestamp}"
    );
    assert!(timestamp.ends_with('Z'), "UTC: {timestamp}");
    assert_eq!(event["id"].as_str().unwrap().len(), 36);
}

#[test]
fn content_from_stdin_keeps_newlines_and_markdown() {
    let dir = HuddleDir::new();
    let text = "line one\n<!-- END COMMUNICATION -->\n### Interaction #999\n";
    let mut child = dir
        .command(&["log", "1", "Agent B", "answer", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(wait_output_within(child, COMMAND_LIMIT, "huddle log -")
        .status
        .success());
    // One trailing newline (the one a shell pipe adds) is dropped.
    assert_eq!(dir.events()[0]["content"], text.strip_suffix('\n').unwrap());
}

#[test]
fn next_allocates_distinct_numbers_across_processes() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::new();
    dir.ok(&["log", "41", "seed", "note", "start above 40"]);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                (0..15)
                    .map(|i| {
                        let out = Command::new(crate::common::huddle_exe())
                            .arg("--dir")
                            .arg(&path)
                            .args(["log", "next", &format!("w{w}"), "question", &format!("{i}")])
                            .output_within(COMMAND_LIMIT);
                        assert!(out.status.success(), "{}", stderr(&out));
                        String::from_utf8(out.stdout)
                            .unwrap()
                            .trim()
                            .parse::<u64>()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut numbers: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (42..42 + 90).collect::<Vec<_>>());
    // The numbers printed are the numbers written.
    let mut logged: Vec<u64> = dir.events()[1..]
        .iter()
        .map(|e| e["interaction"].as_u64().unwrap())
        .collect();
    logged.sort_unstable();
    assert_eq!(logged, numbers);
}

#[test]
fn sixteen_writers_and_the_shell_appender_lose_and_interleave_nothing() {
    let _machine = crate::common::exclusive();
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 500;
    const SHELL_COPIES: usize = 2;
    const PER_SHELL: usize = 100;
    let dir = HuddleDir::new();
    let script = baseline_script("log_event.sh");
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let path = dir.path().to_path_buf();
        handles.push(std::thread::spawn(move || {
            for i in 0..PER_WRITER {
                let out = Command::new(crate::common::huddle_exe())
                    .arg("--dir")
                    .arg(&path)
                    .args(["log", &format!("{}", i % 7), &format!("writer {w}"), "note"])
                    .arg(format!("w{w}-e{i}"))
                    .output_within(COMMAND_LIMIT);
                assert!(out.status.success(), "{}", stderr(&out));
            }
        }));
    }
    for s in 0..SHELL_COPIES {
        let path = dir.path().to_path_buf();
        let script = script.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..PER_SHELL {
                let status = Command::new("bash")
                    .arg(&script)
                    .args(["5", &format!("shell {s}"), "note", &format!("s{s}-e{i}")])
                    .current_dir(&path)
                    .status()
                    .unwrap();
                assert!(status.success(), "log_event.sh failed");
            }
        }));
    }
    for handle in handles {
        handle.join().unwrap();
    }
    let events = dir.events(); // panics on any line that is not one JSON object
    let mut seen: HashMap<String, usize> = HashMap::new();
    for event in &events {
        *seen
            .entry(event["content"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        events.len(),
        WRITERS * PER_WRITER + SHELL_COPIES * PER_SHELL
    );
    for w in 0..WRITERS {
        for i in 0..PER_WRITER {
            assert_eq!(seen.get(&format!("w{w}-e{i}")), Some(&1), "w{w}-e{i}");
        }
    }
    for s in 0..SHELL_COPIES {
        for i in 0..PER_SHELL {
            assert_eq!(seen.get(&format!("s{s}-e{i}")), Some(&1), "s{s}-e{i}");
        }
    }
}

#[test]
fn torn_tail_is_sealed_and_the_next_events_are_intact() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "before the crash"]);
    let fragment = br#"{"interaction":1,"actor":"Agent B","type":"ans"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.file("events.log"))
        .unwrap()
        .write_all(fragment)
        .unwrap();
    dir.ok(&["log", "1", "Agent A", "followup", "after the crash"]);
    dir.ok(&["log", "2", "Agent A", "question", "and more"]);
    let bytes = dir.log_bytes();
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[1].as_bytes(),
        fragment,
        "the fragment stays a line of its own"
    );
    for line in [lines[0], lines[2], lines[3]] {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

/// Bad input: exit 2, a message naming the field, and the log byte-identical.
#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = HuddleDir::with_config("[log]\nmax_content_bytes = 64\n");
    dir.ok(&["log", "1", "Agent A", "question", "a good event first"]);
    let before = dir.log_bytes();
    let long_actor = "a".repeat(257);
    let long_type = "t".repeat(65);
    let oversize = "x".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["log", "abc", "A", "question", "c"], "interaction"),
        (vec!["log", "-1", "A", "question", "c"], "interaction"),
        (vec!["log", "1.5", "A", "question", "c"], "interaction"),
        (vec!["log", "", "A", "question", "c"], "interaction"),
        (vec!["log", "1e3", "A", "question", "c"], "interaction"),
        (
            vec!["log", "99999999999999999999", "A", "question", "c"],
            "interaction",
        ),
        (vec!["log", " 7", "A", "question", "c"], "interaction"),
        (vec!["log", "1", "", "question", "c"], "actor"),
        (vec!["log", "1", "   ", "question", "c"], "actor"),
        (vec!["log", "1", "Agent\u{7}A", "question", "c"], "actor"),
        (vec!["log", "1", "Agent\nA", "question", "c"], "actor"),
        (
            vec!["log", "1", "Agent\u{1b}[31mA", "question", "c"],
            "actor",
        ),
        (vec!["log", "1", &long_actor, "question", "c"], "actor"),
        (vec!["log", "1", "A", "Question", "c"], "type"),
        (vec!["log", "1", "A", "1question", "c"], "type"),
        (vec!["log", "1", "A", "", "c"], "type"),
        (vec!["log", "1", "A", "two words", "c"], "type"),
        (vec!["log", "1", "A", "question\n", "c"], "type"),
        (vec!["log", "1", "A", "ty.pe", "c"], "type"),
        (vec!["log", "1", "A", &long_type, "c"], "type"),
        (vec!["log", "1", "A", "question", &oversize], "content"),
        (vec!["log", "1", "A", "question"], "CONTENT"),
        (vec!["log"], "INTERACTION"),
        (
            vec!["log", "1", "A", "question", "c", "extra"],
            "unexpected argument",
        ),
        (vec!["log", "--bogus", "1", "A", "question", "c"], "--bogus"),
    ];
    assert!(cases.len() >= 20);
    for (args, needle) in &cases {
        let out = dir.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: message should name {needle}: {}",
            stderr(&out)
        );
        assert_eq!(dir.log_bytes(), before, "{args:?} changed the log");
    }
    let oversize_message = stderr(&dir.run(&["log", "1", "A", "question", &oversize]));
    assert!(
        oversize_message.contains("64 bytes"),
        "names the limit: {oversize_message}"
    );

    // Standard input: invalid UTF-8, a NUL byte, oversize.
    for (stdin, needle) in [
        (&b"caf\xc3\x28 invalid"[..], "UTF-8"),
        (b"nul \0 byte", "NUL"),
        (&[b'y'; 200][..], "64 bytes"),
    ] {
        let mut child = dir
            .command(&["log", "1", "A", "answer", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = wait_output_within(child, COMMAND_LIMIT, "huddle log -");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert_eq!(dir.log_bytes(), before);
    }

    // Invalid UTF-8 in an argument.
    let out = dir
        .command(&["log", "1"])
        .arg(std::ffi::OsStr::from_bytes(b"bad\xffactor"))
        .args(["question", "c"])
        .output_within(COMMAND_LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(dir.log_bytes(), before);
}

#[test]
fn lock_held_too_long_queues_the_event_and_the_next_append_flushes_it() {
    let dir = HuddleDir::with_config(
        "[log]\nlock_timeout_ms = 100\nlock_attempts = 2\nlock_backoff_ms = 10\n",
    );
    dir.ok(&["log", "1", "Agent A", "question", "first"]);
    // Hold the flock from this process, as a stuck writer would.
    let holder = std::fs::File::open(dir.file("events.log")).unwrap();
    fs4::FileExt::lock(&holder).unwrap();
    let out = dir.run(&["log", "1", "Agent B", "answer", "while locked"]);
    drop(holder);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("could not lock") && message.contains("events.offline.log"),
        "{message}"
    );
    assert_eq!(
        dir.events().len(),
        1,
        "nothing reached the log while it was locked"
    );
    let queued = parse_lines(&std::fs::read(dir.file("events.offline.log")).unwrap());
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0]["content"], "while locked");
    assert_eq!(queued[1]["type"], "error");
    assert!(queued[1]["content"]
        .as_str()
        .unwrap()
        .contains("Failed to acquire lock"));

    dir.ok(&["log", "next", "Agent A", "question", "after"]);
    let events = dir.events();
    let contents: Vec<&str> = events
        .iter()
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents[0], "first");
    assert_eq!(contents[1], "while locked");
    assert!(contents[2].contains("Failed to acquire lock"));
    assert_eq!(contents[3], "after");
    assert_eq!(events[3]["interaction"], 2);
    assert_eq!(
        std::fs::metadata(dir.file("events.offline.log"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn read_only_directory_gives_a_clear_error_and_no_partial_line() {
    if is_root() {
        let fs = Tmpfs::mount("1m");
        let dir = fs.path.join("huddle");
        let run = |args: &[&str]| huddle_at(&dir, args);
        assert!(run(&["init"]).status.success());
        assert!(run(&["log", "1", "A", "question", "before"])
            .status
            .success());
        let before = std::fs::read(dir.join("events.log")).unwrap();
        fs.remount_read_only();
        let out = run(&["log", "1", "A", "question", "refused"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let message = stderr(&out);
        assert!(
            message.contains("events.log") && message.contains("Read-only file system"),
            "{message}"
        );
        assert_eq!(std::fs::read(dir.join("events.log")).unwrap(), before);
    } else {
        use std::os::unix::fs::PermissionsExt;
        let dir = HuddleDir::new();
        dir.ok(&["log", "1", "A", "question", "before"]);
        let before = dir.log_bytes();
        let set_mode = |path: &std::path::Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set_mode(&dir.file("events.log"), 0o444);
        set_mode(dir.path(), 0o555);
        let out = dir.run(&["log", "1", "A", "question", "refused"]);
        set_mode(dir.path(), 0o755);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("events.log") && stderr(&out).contains("Permission denied"));
        assert_eq!(dir.log_bytes(), before);
    }
}

#[test]
fn full_file_system_gives_a_clear_error_and_no_partial_line() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let fs = Tmpfs::mount("64k");
    let dir = fs.path.join("huddle");
    let run = |args: &[&str]| huddle_at(&dir, args);
    assert!(run(&["init"]).status.success());
    assert!(run(&["log", "1", "A", "question", "before"])
        .status
        .success());
    let before = std::fs::read(dir.join("events.log")).unwrap();
    // Fill every free block, so the append below gets a short write: the
    // first bytes fit in the log's last page, the rest find no space.
    let mut filler = std::fs::File::create(fs.path.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.write_all(&[0u8; 1]);
    let content = "z".repeat(12_000);
    let out = run(&["log", "1", "A", "answer", &content]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("events.log") && message.contains("No space left on device"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(dir.join("events.log")).unwrap(),
        before,
        "no partial line"
    );
}

#[test]
fn huddle_dir_names_the_directory_and_dir_overrides_it() {
    let by_env = HuddleDir::new();
    let by_flag = HuddleDir::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env_dir: &std::path::Path, with_flag: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(crate::common::huddle_exe());
        command
            .current_dir(elsewhere.path())
            .env("HUDDLE_DIR", env_dir)
            .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache());
        if let Some(flag) = with_flag {
            command.arg("--dir").arg(flag);
        }
        command.args(args).output_within(COMMAND_LIMIT)
    };
    let out = run(
        &["log", "1", "Agent A", "note", "via HUDDLE_DIR"],
        by_env.path(),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &["log", "1", "Agent A", "note", "via --dir"],
        by_env.path(),
        Some(by_flag.path()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let contents = |dir: &HuddleDir| -> Vec<String> {
        dir.events()
            .iter()
            .map(|e| e["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(contents(&by_env), ["via HUDDLE_DIR"]);
    assert_eq!(contents(&by_flag), ["via --dir"]);
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing written in the current directory"
    );
}
