//! `huddle run`, election, fencing, checkpoints, status: real processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    huddle_exe, stderr, wait_for, wait_output_within, wait_until, HuddleDir, OutputWithin,
    COMMAND_LIMIT,
};

pub(crate) const FAST: &str =
    "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 25\n";
const HEARTBEAT: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(1000);

pub(crate) struct Daemon {
    name: String,
    pub(crate) child: Child,
    /// Where its log (stderr, at debug level) goes.
    log: std::path::PathBuf,
}

impl Daemon {
    pub(crate) fn start(dir: &HuddleDir, name: &str) -> Daemon {
        Daemon::start_with(dir, name, &[])
    }

    pub(crate) fn start_with(dir: &HuddleDir, name: &str, extra: &[&str]) -> Daemon {
        let log = dir
            .path()
            .with_file_name(format!("daemon-{name}-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("daemon log file");
        let mut args = vec!["run", "--actor", name];
        args.extend_from_slice(extra);
        let child = dir
            .command(&args)
            .env("RUST_LOG", "huddle=debug")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start huddle run");
        Daemon {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// What the daemon has logged so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Claims in log order: (actor, term).
fn claims(dir: &HuddleDir) -> Vec<(String, u64)> {
    dir.events()
        .iter()
        .filter(|e| e["type"] == "leader_election" && e["action"] == "claim")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["term"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn status(dir: &HuddleDir) -> Value {
    serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status --json")
}

/// Waits (30 s at most) until `leader` leads and has taken up the alert
/// sink named `sink`: a new sink starts at the end of the log as the leader
/// first takes it up, so alerts logged before would not reach it.
pub(crate) fn leading_with_sink(dir: &HuddleDir, leader: &str, sink: &str) -> bool {
    wait_for(Duration::from_secs(30), || {
        let status = status(dir);
        status["leader"] == leader
            && status["alerts"]
                .as_array()
                .is_some_and(|sinks| sinks.iter().any(|s| s["sink"] == sink))
    })
}

#[test]
fn three_daemons_elect_exactly_one_leader() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let daemons: Vec<Daemon> = (1..=3)
        .map(|i| Daemon::start(&dir, &format!("d{i}")))
        .collect();
    let leader = wait_until(Duration::from_secs(10), || {
        status(&dir)["leader"].as_str().map(String::from)
    })
    .expect("a leader is elected");
    std::thread::sleep(TIMEOUT * 2);
    let claims = claims(&dir);
    assert_eq!(claims, [(leader.clone(), 1)], "one claim, one term");
    // Only the leader beats with a term.
    let beaters: std::collections::BTreeSet<String> = dir
        .events()
        .iter()
        .filter(|e| e["type"] == "heartbeat" && e["term"].is_u64())
        .map(|e| e["actor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        beaters.into_iter().collect::<Vec<_>>(),
        std::slice::from_ref(&leader)
    );
    let status = status(&dir);
    assert_eq!(status["term"], 1);
    assert!(
        status["leader_heartbeat_age_secs"].as_f64().unwrap() < 1.0,
        "{status}"
    );
    assert!(daemons.iter().any(|d| d.name == leader));
}

#[test]
fn killing_the_leader_elects_exactly_one_new_leader_twenty_times() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let mut daemons: Vec<Daemon> = (1..=3)
        .map(|i| Daemon::start(&dir, &format!("d{i}")))
        .collect();
    wait_until(Duration::from_secs(10), || {
        status(&dir)["leader"].as_str().map(String::from)
    })
    .expect("first leader");
    let mut failovers = Vec::new();
    for round in 0..20 {
        let before = claims(&dir);
        let (old_leader, old_term) = before.last().cloned().unwrap();
        let index = daemons
            .iter()
            .position(|d| d.name == old_leader)
            .expect("leader is ours");
        let killed = daemons.remove(index);
        killed.signal(libc::SIGKILL);
        let killed_at = Instant::now();
        drop(killed);
        let new_claims = wait_until(TIMEOUT + HEARTBEAT * 2 + Duration::from_secs(3), || {
            let now = claims(&dir);
            (now.len() > before.len()).then_some(now)
        })
        .unwrap_or_else(|| panic!("round {round}: no new leader"));
        let took = killed_at.elapsed();
        let fresh = &new_claims[before.len()..];
        assert_eq!(
            fresh.len(),
            1,
            "round {round}: exactly one claim: {fresh:?}"
        );
        assert_eq!(fresh[0].1, old_term + 1);
        assert_ne!(fresh[0].0, old_leader);
        failovers.push(took);
        daemons.push(Daemon::start(&dir, &format!("d{}", round + 4)));
        // The new leader has settled once it beats in its term.
        let (new_leader, new_term) = fresh[0].clone();
        assert!(
            wait_for(Duration::from_secs(5), || dir.events().iter().any(|e| {
                e["type"] == "heartbeat"
                    && e["actor"] == new_leader.as_str()
                    && e["term"] == new_term
            })),
            "round {round}: the new leader never beat"
        );
    }
    failovers.sort();
    let worst = *failovers.last().unwrap();
    // The claim lands at most T + jitter after the last heartbeat, plus polling.
    assert!(
        worst <= TIMEOUT + HEARTBEAT * 2 + Duration::from_millis(500),
        "worst failover {worst:?}: {failovers:?}"
    );
}

#[test]
fn five_candidates_racing_for_a_term_give_exactly_one_winner() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::new();
    for round in 1..=100u64 {
        let racers: Vec<Child> = (0..5)
            .map(|i| {
                dir.command(&[
                    "campaign",
                    "--actor",
                    &format!("c{i}"),
                    "--term",
                    &round.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let outcomes: Vec<String> = racers
            .into_iter()
            .map(|c| {
                String::from_utf8(wait_output_within(c, COMMAND_LIMIT, "campaign").stdout).unwrap()
            })
            .collect();
        let winners = outcomes.iter().filter(|o| o.starts_with("won")).count();
        assert_eq!(winners, 1, "round {round}: {outcomes:?}");
        let terms: Vec<u64> = claims(&dir).iter().map(|(_, t)| *t).collect();
        assert_eq!(terms, (1..=round).collect::<Vec<_>>(), "one claim per term");
    }
}

#[test]
fn a_paused_leader_that_wakes_up_does_no_leader_work() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let first = Daemon::start(&dir, "first");
    wait_until(Duration::from_secs(10), || {
        (status(&dir)["leader"] == "first").then_some(())
    })
    .expect("first leads");
    let second = Daemon::start(&dir, "second");
    first.signal(libc::SIGSTOP);
    wait_until(Duration::from_secs(10), || {
        (status(&dir)["leader"] == "second").then_some(())
    })
    .expect("second takes over");
    // Work a leader would do: a snapshot and an alert for an error event.
    dir.ok(&[
        "log",
        "1",
        "Agent A",
        "error",
        "something broke while first slept",
    ]);
    let logged_before_waking = first.log_text().len();
    first.signal(libc::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let woke = first.log_text()[logged_before_waking..].to_string();
            woke.contains("stepping down") || woke.contains("replaced while we were away")
        }),
        "the woken leader never noticed it was replaced:\n{}",
        first.log_text()
    );
    // Give it the time it would need to act, then look at what it did.
    std::thread::sleep(TIMEOUT);
    let woke = first.log_text()[logged_before_waking..].to_string();
    // No new leader work begins after waking: no snapshot is started (one
    // already writing when the stop came may finish; one still rendering
    // ends unwritten) and the alert thread does nothing (it logs from
    // huddle::alerts).
    assert!(
        !woke
            .lines()
            .any(|l| l.contains("snapshot started") || l.contains("huddle::alerts")),
        "the fenced leader did leader work after waking:\n{woke}"
    );
    let events = dir.events();
    let takeover = events
        .iter()
        .position(|e| e["type"] == "leader_election" && e["actor"] == "second")
        .unwrap();
    let stale: Vec<&Value> = events[takeover..]
        .iter()
        .filter(|e| e["actor"] == "first")
        .collect();
    assert!(
        stale.is_empty(),
        "the fenced leader wrote to the log: {stale:?}"
    );
    assert_eq!(status(&dir)["leader"], "second");
    drop(second);
}

#[test]
fn sigint_brings_the_snapshot_up_to_date_then_resigns_and_another_takes_over_at_once() {
    let dir = HuddleDir::with_config(
        &FAST.replace("leader_timeout_ms = 1000", "leader_timeout_ms = 30000"),
    );
    let first = Daemon::start(&dir, "first");
    wait_until(Duration::from_secs(10), || {
        (status(&dir)["leader"] == "first").then_some(())
    })
    .expect("first leads");
    let second = Daemon::start(&dir, "second");
    assert!(
        wait_for(Duration::from_secs(10), || second
            .log_text()
            .contains("watching")),
        "second is following the log"
    );
    dir.ok(&[
        "log",
        "1",
        "Agent A",
        "question",
        "logged just before the interrupt",
    ]);
    first.signal(libc::SIGINT);
    let mut first = first;
    let exited = wait_until(Duration::from_secs(10), || first.child.try_wait().unwrap());
    assert!(exited.is_some_and(|s| s.success()), "first exits cleanly");
    let events = dir.events();
    let resigned = events
        .iter()
        .position(|e| e["action"] == "resign" && e["actor"] == "first")
        .expect("first resigned");
    // The final snapshot came before the resignation: the last event is in it.
    assert!(
        std::fs::read_to_string(dir.file("communication.md"))
            .unwrap()
            .contains("logged just before the interrupt"),
        "no final snapshot"
    );
    assert!(
        !events[..resigned]
            .iter()
            .any(|e| e["type"] == "leader_election" && e["actor"] == "second"),
        "second claimed before first resigned"
    );
    // Far sooner than the 30 s timeout: the resignation hands over.
    wait_until(Duration::from_secs(5), || {
        (status(&dir)["leader"] == "second").then_some(())
    })
    .expect("second takes over");
}

#[test]
fn a_no_elect_daemon_follows_but_never_leads() {
    let dir = HuddleDir::with_config(FAST);
    let observer = Daemon::start_with(&dir, "observer", &["--no-elect"]);
    assert!(
        wait_for(Duration::from_secs(10), || observer
            .log_text()
            .contains("watching")),
        "the observer runs"
    );
    // Far past the leader timeout with no leader at all: it never campaigns.
    std::thread::sleep(TIMEOUT * 3);
    assert!(claims(&dir).is_empty(), "{:?}", claims(&dir));
    let leader = Daemon::start(&dir, "leader");
    assert!(wait_for(Duration::from_secs(10), || status(&dir)["leader"]
        == "leader"));
    drop(leader);
    // The leader is gone for good: still the observer never claims.
    std::thread::sleep(TIMEOUT * 3);
    assert!(claims(&dir).iter().all(|(actor, _)| actor == "leader"));
}

#[test]
fn checkpoints_survive_an_agent_killed_mid_follow_and_a_daemon_restart() {
    let dir = HuddleDir::with_config(FAST);
    let daemon = Daemon::start(&dir, "leader");
    for n in 1..=4 {
        dir.ok(&[
            "log",
            &n.to_string(),
            "Agent A",
            "question",
            &format!("q{n}"),
        ]);
    }
    dir.ok(&["heartbeat", "Agent B"]);
    let all = dir.ok(&["next", "--agent", "b"]);
    assert_eq!(all.lines().count(), 4, "heartbeats are hidden: {all}");
    dir.ok(&["ack", "--agent", "b", "2"]);
    assert_eq!(
        std::fs::read_to_string(dir.file("agent-b.checkpoint")).unwrap(),
        "2\n"
    );
    // The agent dies mid-follow, the daemon is killed and restarted.
    let mut follower = dir
        .command(&["next", "--agent", "b", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines_within(&mut follower, 2, Duration::from_secs(10));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let _ = follower.kill();
    let _ = follower.wait();
    drop(daemon);
    let _daemon = Daemon::start(&dir, "leader-again");
    let rest = dir.ok(&["next", "--agent", "b", "--json"]);
    let numbers: Vec<u64> = rest
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["interaction"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, [3, 4], "resumes after the checkpoint");
}

#[test]
fn an_agent_name_cannot_write_outside_the_directory() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "q"]);
    let parent = dir.path().parent().unwrap().to_path_buf();
    let listing = |path: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (parent_before, inside_before) = (listing(&parent), listing(dir.path()));
    for agent in [
        "../escape",
        "/tmp/escape",
        "a/b",
        "..",
        ".",
        "",
        "a\nb",
        "-x",
    ] {
        for args in [
            vec!["ack", "--agent", agent, "1"],
            vec!["next", "--agent", agent],
        ] {
            let out = dir.run(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("agent"), "{args:?}: {}", stderr(&out));
        }
    }
    assert_eq!(
        listing(&parent),
        parent_before,
        "nothing written beside the directory"
    );
    assert_eq!(listing(dir.path()), inside_before, "no checkpoint written");
    assert!(!std::path::Path::new("/tmp/escape.checkpoint").exists());
    assert!(!std::path::Path::new("/tmp/agent-escape.checkpoint").exists());
}

/// Reads `count` lines from a child's stdout, waiting at most `limit`.
fn read_lines_within(child: &mut Child, count: usize, limit: Duration) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    while lines.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

#[test]
fn next_follow_streams_new_events() {
    let dir = HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "before"]);
    let mut follower = dir
        .command(&["next", "--agent", "f", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let content = |line: String| {
        serde_json::from_str::<Value>(&line).unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The first line is printed once the follower watches the directory.
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first event");
    assert_eq!(content(first), "before");
    dir.ok(&["log", "2", "Agent A", "question", "after 1"]);
    dir.ok(&["log", "3", "Agent B", "answer", "after 2"]);
    let mut rest = Vec::new();
    for _ in 0..2 {
        rest.push(content(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("a streamed event"),
        ));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(rest, ["after 1", "after 2"]);
}

#[test]
fn the_watcher_keeps_up_with_sixteen_writers() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let _leader = Daemon::start(&dir, "leader");
    wait_until(Duration::from_secs(10), || {
        (status(&dir)["leader"] == "leader").then_some(())
    })
    .expect("leader");
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let out = Command::new(huddle_exe())
                        .arg("--dir")
                        .arg(&path)
                        .args([
                            "log",
                            "next",
                            &format!("w{w}"),
                            "question",
                            &format!("w{w} e{i}"),
                        ])
                        .output_within(COMMAND_LIMIT);
                    assert!(out.status.success());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    // 320 interactions: the last three must show up without any other nudge.
    let shown = wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(dir.file("communication.md")).unwrap_or_default();
        text.contains("### Interaction #320").then_some(text)
    });
    assert!(shown.is_some(), "the snapshot did not catch up");
    let status = status(&dir);
    let behind = wait_until(Duration::from_secs(3), || {
        let s = self::status(&dir);
        (s["snapshot"]["bytes_behind"] == 0).then_some(s)
    });
    assert!(behind.is_some(), "{status}");
}

#[test]
fn the_demo_runs_daemons_and_survives_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(huddle_exe())
        .current_dir(tmp.path())
        .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
        .args(["demo", "--rounds", "3"])
        .output_within(COMMAND_LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("was elected leader"), "{text}");
    assert!(text.contains("took over after"), "{text}");
    assert!(text.contains("appeared in communication.md"), "{text}");
    assert!(text.contains("### Interaction #3"), "{text}");
}

#[test]
fn failed_snapshots_back_off_then_declare_snapshots_offline_once_then_recover() {
    let _machine = crate::common::exclusive();
    let panic_renderer = crate::common::hostile_plugin("panic");
    let config = format!(
        "{}retry_initial_ms = 200\nretry_max_ms = 800\nretry_attempts = 3\n[plugins.renderer]\nplugin = {:?}\n",
        FAST,
        panic_renderer.display().to_string()
    );
    let dir = HuddleDir::with_config(&config);
    let _leader = Daemon::start(&dir, "leader");
    assert!(wait_for(Duration::from_secs(10), || status(&dir)["leader"]
        == "leader"));
    dir.ok(&["log", "1", "Agent A", "question", "cannot be rendered yet"]);
    let offline = |dir: &HuddleDir| -> Vec<Value> {
        dir.events()
            .into_iter()
            .filter(|e| {
                e["type"] == "error"
                    && e["content"].as_str().is_some_and(|c| {
                        c.starts_with("Snapshots are offline after 3 failed attempts")
                    })
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(20), || !offline(&dir).is_empty()),
        "snapshots declared offline"
    );
    // Each failure logged one rolled-back error; the pauses between them
    // grow (200 ms, 400 ms, 800 ms ...).
    let failures: Vec<chrono::DateTime<chrono::Utc>> = dir
        .events()
        .iter()
        .filter(|e| {
            e["type"] == "error"
                && e["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("Snapshot failed and was rolled back"))
        })
        .map(|e| e["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(failures.len() >= 3, "{failures:?}");
    let gaps: Vec<i64> = failures
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(gaps[0] >= 190 && gaps[1] >= 390, "backoff gaps {gaps:?}");
    // Declared once, however long it stays broken.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(offline(&dir).len(), 1);
    // A working renderer again: the next retry brings the files up to date.
    std::fs::write(
        dir.file("huddle.toml"),
        format!("{FAST}retry_initial_ms = 200\nretry_max_ms = 800\n"),
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(dir.file("communication.md"))
                .is_ok_and(|t| t.contains("cannot be rendered yet"))
        }),
        "snapshots recover on their own"
    );
}

/// A leader killed mid-snapshot leaves its temp file; the next daemon
/// removes it as it starts, before it leads or even if it never does (it may
/// be stopped before the leader timeout lets it claim), but not while
/// another snapshot writer holds the lock: that writer's temp files are live.
#[test]
fn a_starting_daemon_removes_killed_snapshots_temp_files_even_if_it_never_leads_but_not_a_live_writers(
) {
    let dir = HuddleDir::with_config(FAST);
    let abandoned = [".archive.md.Ab12Cd.tmp", ".communication.md.Xy34Zw.tmp"];
    let other = ".notes.md.Ab12Cd.tmp";
    for name in abandoned.iter().chain([&other]) {
        std::fs::write(dir.file(name), "half of something").unwrap();
    }
    std::fs::create_dir_all(dir.file(".huddle")).unwrap();
    let lock = std::fs::File::create(dir.file(".huddle/snapshot.lock")).unwrap();
    fs4::FileExt::lock(&lock).expect("hold the snapshot lock as a live writer would");
    let observer = Daemon::start_with(&dir, "observer", &["--no-elect"]);
    assert!(
        wait_for(Duration::from_secs(10), || observer
            .log_text()
            .contains("a snapshot writer is at work")),
        "the observer never looked for temp files: {}",
        observer.log_text()
    );
    for name in abandoned {
        assert!(
            dir.file(name).exists(),
            "{name} was removed while a writer held the lock"
        );
    }
    drop(observer);
    drop(lock);
    let observer = Daemon::start_with(&dir, "observer2", &["--no-elect"]);
    assert!(
        wait_for(Duration::from_secs(10), || abandoned
            .iter()
            .all(|name| !dir.file(name).exists())),
        "a killed snapshot's temp files were left: {}",
        observer.log_text()
    );
    assert!(
        dir.file(other).exists(),
        "{other} is not a snapshot's temp file, yet it was removed"
    );
}
