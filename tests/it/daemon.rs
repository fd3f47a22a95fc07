//! `huddle run`, election, fencing, checkpoints, status: real processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{huddle_exe, stderr, wait_until, HuddleDir};

pub(crate) const FAST: &str =
    "[daemon]\nheartbeat_ms = 200\nleader_timeout_ms = 1000\njitter_ms = 150\npoll_ms = 25\n";
const HEARTBEAT: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(1000);

pub(crate) struct Daemon {
    name: String,
    pub(crate) child: Child,
}

impl Daemon {
    pub(crate) fn start(dir: &HuddleDir, name: &str) -> Daemon {
        let child = dir
            .command(&["run", "--actor", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start huddle run");
        Daemon {
            name: name.to_string(),
            child,
        }
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
        // Let the new leader settle before the next kill.
        std::thread::sleep(HEARTBEAT * 2);
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
            .map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap())
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
    first.signal(libc::SIGCONT);
    std::thread::sleep(TIMEOUT * 2);
    let events = dir.events();
    let takeover = events
        .iter()
        .position(|e| e["type"] == "leader_election" && e["actor"] == "second")
        .unwrap();
    let stale: Vec<&Value> = events[takeover..]
        .iter()
        .filter(|e| e["actor"] == "first" && e["type"] == "heartbeat")
        .collect();
    assert!(
        stale.is_empty(),
        "the fenced leader kept beating: {stale:?}"
    );
    assert_eq!(status(&dir)["leader"], "second");
    drop(second);
}

#[test]
fn graceful_shutdown_resigns_and_another_takes_over_at_once() {
    let dir = HuddleDir::with_config(
        &FAST.replace("leader_timeout_ms = 1000", "leader_timeout_ms = 30000"),
    );
    let first = Daemon::start(&dir, "first");
    wait_until(Duration::from_secs(10), || {
        (status(&dir)["leader"] == "first").then_some(())
    })
    .expect("first leads");
    let _second = Daemon::start(&dir, "second");
    std::thread::sleep(Duration::from_millis(300));
    first.signal(libc::SIGTERM);
    // Far sooner than the 30 s timeout: the resignation hands over.
    wait_until(Duration::from_secs(5), || {
        (status(&dir)["leader"] == "second").then_some(())
    })
    .expect("second takes over");
    assert!(dir
        .events()
        .iter()
        .any(|e| e["action"] == "resign" && e["actor"] == "first"));
}

#[test]
fn checkpoints_survive_a_restart() {
    let dir = HuddleDir::new();
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
    let rest = dir.ok(&["next", "--agent", "b", "--json"]);
    let numbers: Vec<u64> = rest
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["interaction"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, [3, 4]);
    let out = dir.run(&["ack", "--agent", "../escape", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
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
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(300));
    dir.ok(&["log", "2", "Agent A", "question", "after 1"]);
    dir.ok(&["log", "3", "Agent B", "answer", "after 2"]);
    let lines = reader.join().unwrap();
    let _ = follower.kill();
    let _ = follower.wait();
    let contents: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(contents, ["before", "after 1", "after 2"]);
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
                        .output()
                        .unwrap();
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
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("was elected leader"), "{text}");
    assert!(text.contains("took over after"), "{text}");
    assert!(text.contains("appeared in communication.md"), "{text}");
    assert!(text.contains("### Interaction #3"), "{text}");
}
