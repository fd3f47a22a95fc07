//! The daemon against hostile plugins and a log replaced under it: it keeps
//! leading (heartbeats on time, no second claim) and recovers by itself.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{hostile_plugin, start_skewed, wait_for, wait_until, HuddleDir};
use crate::daemon::{status, Daemon, FAST};

/// Leader heartbeats (with a term) in log order, as (actor, time).
fn leader_beats(dir: &HuddleDir) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    dir.events()
        .iter()
        .filter(|e| e["type"] == "heartbeat" && e["term"].is_u64())
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["timestamp"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn claims(dir: &HuddleDir) -> usize {
    dir.events()
        .iter()
        .filter(|e| e["type"] == "leader_election" && e["action"] == "claim")
        .count()
}

fn error_mentioning(dir: &HuddleDir, needle: &str) -> bool {
    dir.events()
        .iter()
        .any(|e| e["type"] == "error" && e["content"].as_str().is_some_and(|c| c.contains(needle)))
}

fn configure(dir: &HuddleDir, slot: &str, plugin: &str) {
    std::fs::write(
        dir.file("huddle.toml"),
        format!(
            "{FAST}[plugins.{slot}]\nplugin = {:?}\ndeadline_ms = 300\n",
            hostile_plugin(plugin).display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn every_hostile_plugin_under_the_daemon_leaves_it_leading_with_heartbeats_on_time() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let mut daemon = Daemon::start(&dir, "leader");
    assert!(
        wait_for(Duration::from_secs(10), || status(&dir)["leader"]
            == "leader"),
        "a leader is elected"
    );
    // (slot, plugin, what its error event names; None: renders fine)
    let hostile: [(&str, &str, Option<&str>); 9] = [
        ("renderer", "picky", None),
        ("renderer", "panic", Some("panic.wasm")),
        ("renderer", "loop", Some("loop.wasm")),
        ("renderer", "oom", Some("oom.wasm")),
        ("renderer", "bigoutput", Some("bigoutput.wasm")),
        ("renderer", "badoutput", Some("badoutput.wasm")),
        ("renderer", "markerline", Some("markerline.wasm")),
        ("renderer", "readfile", Some("readfile.wasm")),
        ("heading-mapper", "mapper-loop", Some("mapper-loop.wasm")),
    ];
    for (round, (slot, plugin, names)) in hostile.into_iter().enumerate() {
        configure(&dir, slot, plugin);
        let content = format!("round {round} with {plugin}");
        dir.ok(&[
            "log",
            &(round + 1).to_string(),
            "Agent A",
            "question",
            &content,
        ]);
        let contained = wait_for(Duration::from_secs(15), || match names {
            Some(name) => error_mentioning(&dir, name),
            None => std::fs::read_to_string(dir.file("communication.md"))
                .is_ok_and(|text| text.contains(&content)),
        });
        assert!(contained, "{plugin}: no snapshot outcome");
        // The daemon is alive and its heartbeats go on.
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "{plugin}: the daemon died"
        );
        let beats = leader_beats(&dir).len();
        assert!(
            wait_for(Duration::from_secs(5), || leader_beats(&dir).len()
                >= beats + 3),
            "{plugin}: heartbeats stopped"
        );
    }
    // Throughout: one leader, one claim, and no gap between its heartbeats
    // long enough for a follower to call an election (1 s).
    assert_eq!(claims(&dir), 1, "leadership was never lost");
    let beats = leader_beats(&dir);
    let worst = beats
        .windows(2)
        .map(|pair| (pair[1].1 - pair[0].1).num_milliseconds())
        .max()
        .unwrap();
    assert!(worst < 1000, "a heartbeat gap of {worst} ms");
    assert!(beats.iter().all(|(actor, _)| actor == "leader"));

    // Back to the defaults: the daemon catches up on its own.
    std::fs::write(dir.file("huddle.toml"), FAST).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(dir.file("communication.md"))
                .is_ok_and(|text| text.contains("round 8 with mapper-loop"))
        }),
        "the default plugins render again"
    );
}

#[test]
fn a_looping_renderer_never_delays_the_leaders_heartbeats() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    // A deadline far longer than the leader timeout: a snapshot on the
    // heartbeat path would cost the leadership.
    std::fs::write(
        dir.file("huddle.toml"),
        format!(
            "{FAST}[plugins.renderer]\nplugin = {:?}\ndeadline_ms = 3000\n",
            hostile_plugin("loop").display().to_string()
        ),
    )
    .unwrap();
    let _leader = Daemon::start(&dir, "leader");
    let _follower = Daemon::start(&dir, "follower");
    assert!(wait_for(Duration::from_secs(10), || status(&dir)["leader"]
        .is_string()));
    let started = Instant::now();
    for i in 1..=3 {
        dir.ok(&["log", &i.to_string(), "Agent A", "question", "spin"]);
    }
    assert!(
        wait_for(Duration::from_secs(30), || error_mentioning(
            &dir,
            "loop.wasm"
        )),
        "the looping renderer is reported"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(claims(&dir), 1, "the follower never had to take over");
    let beats = leader_beats(&dir);
    let worst = beats
        .windows(2)
        .map(|pair| (pair[1].1 - pair[0].1).num_milliseconds())
        .max()
        .unwrap();
    assert!(
        worst < 1000,
        "a heartbeat gap of {worst} ms while the renderer spun"
    );
}

fn communication(dir: &HuddleDir) -> String {
    std::fs::read_to_string(dir.file("communication.md")).unwrap_or_default()
}

#[test]
fn a_log_replaced_by_a_shorter_one_under_the_daemon_is_noticed_and_everything_rebuilt() {
    let _machine = crate::common::exclusive();
    let server = crate::common::HttpRecorder::start();
    let dir = HuddleDir::with_config(&format!(
        "{FAST}[alerts]\nmin_interval_ms = 50\n[[alerts.sinks]]\nplugin = \"webhook\"\nurl = \"{}\"\nallow = [\"{}\"]\nfrom = \"start\"\n",
        server.url("/hook"),
        server.url("/")
    ));
    let _daemon = Daemon::start(&dir, "leader");
    assert!(wait_for(Duration::from_secs(10), || status(&dir)["leader"]
        == "leader"));
    let delivered = |needle: &str| {
        server
            .requests()
            .iter()
            .filter(|r| r.body.contains(needle))
            .count()
    };
    for i in 1..=20 {
        let kind = if i == 3 || i == 12 {
            "error"
        } else {
            "question"
        };
        dir.ok(&[
            "log",
            &i.to_string(),
            "Agent A",
            kind,
            &format!("event {i}"),
        ]);
    }
    assert!(
        wait_for(Duration::from_secs(10), || delivered("event 12") == 1
            && delivered("event 3") == 1),
        "the error before the rewind is delivered"
    );
    assert!(
        wait_for(Duration::from_secs(10), || communication(&dir)
            .contains("event 20")),
        "the snapshot reaches event 20"
    );
    // A `git checkout` of an older events.log: a new file, renamed over,
    // holding the log as it was when interaction 5 had just been logged.
    let text = String::from_utf8(dir.log_bytes()).unwrap();
    let mut kept = String::new();
    for line in text.lines() {
        kept.push_str(line);
        kept.push('\n');
        if line.contains("\"event 5\"") {
            break;
        }
    }
    // The restored file already holds an error no reader has seen: it
    // arrives with the replacement itself, whenever the daemon notices.
    let scratch = HuddleDir::new();
    scratch.ok(&[
        "log",
        "5",
        "Agent C",
        "error",
        "an error inside the restored file",
    ]);
    kept.push_str(&String::from_utf8(scratch.log_bytes()).unwrap());
    let staged = dir.file("events.log.restore");
    std::fs::write(&staged, &kept).unwrap();
    std::fs::rename(&staged, dir.file("events.log")).unwrap();
    dir.ok(&["log", "6", "Agent B", "answer", "after the rewind"]);
    dir.ok(&["log", "6", "Agent B", "error", "an error after the rewind"]);

    assert!(
        wait_for(Duration::from_secs(10), || {
            let text = communication(&dir);
            text.contains("after the rewind") && !text.contains("event 20")
        }),
        "communication.md follows the log as it now is:\n{}",
        communication(&dir)
    );
    let archive = std::fs::read_to_string(dir.file("archive.md")).unwrap();
    assert!(!archive.contains("event 19"), "{archive}");
    let status: Value = status(&dir);
    let replaced = &status["log_replaced"];
    assert!(
        replaced["detail"]
            .as_str()
            .is_some_and(|d| d.contains("events.log")),
        "{status}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || error_mentioning(
            &dir,
            "replaced or truncated"
        )
        .then_some(()))
        .is_some(),
        "an error event says the log was replaced"
    );
    // Alerts go on from the new log: the error logged after the rewind
    // arrives, and the one delivered before is not sent again.
    assert!(
        wait_for(Duration::from_secs(10), || delivered(
            "an error after the rewind"
        ) == 1),
        "alerts after the rewind are delivered: {:?}",
        server
            .requests()
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        wait_for(Duration::from_secs(10), || delivered(
            "an error inside the restored file"
        ) == 1),
        "the error that came with the restored file is delivered"
    );
    // "event 3" is in the restored file too: read before, not sent again.
    assert_eq!(
        delivered("event 3"),
        1,
        "an error read before is not sent again"
    );
    assert_eq!(delivered("event 12"), 1);
}

fn claims_by(dir: &HuddleDir) -> Vec<String> {
    dir.events()
        .iter()
        .filter(|e| e["type"] == "leader_election" && e["action"] == "claim")
        .map(|e| e["actor"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_leader_whose_clock_runs_an_hour_ahead_is_replaced_in_time_after_kill_9() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let mut ahead = start_skewed(&dir, "ahead", "+1h");
    assert!(
        wait_for(Duration::from_secs(10), || status(&dir)["leader"]
            == "ahead"),
        "the skewed daemon leads"
    );
    let _follower = Daemon::start(&dir, "follower");
    // The follower has seen the leader's heartbeats arrive.
    let beats = leader_beats(&dir).len();
    assert!(wait_for(Duration::from_secs(5), || leader_beats(&dir)
        .len()
        >= beats + 3));
    let stamped = leader_beats(&dir).last().unwrap().1;
    assert!(
        stamped > chrono::Utc::now() + chrono::Duration::minutes(50),
        "the leader's clock runs ahead: {stamped}"
    );
    ahead.0.kill().unwrap();
    ahead.0.wait().unwrap();
    let killed = Instant::now();
    // Its heartbeats are stamped an hour ahead: judged by their timestamps
    // it would look alive for an hour. Timeout 1 s + 2 heartbeats + jitter.
    assert!(
        wait_for(Duration::from_secs(5), || claims_by(&dir)
            .contains(&"follower".to_string())),
        "no failover: {:?}",
        claims_by(&dir)
    );
    assert!(
        killed.elapsed() < Duration::from_millis(1000 + 2 * 200 + 150 + 600),
        "failover took {:?}",
        killed.elapsed()
    );
}

#[test]
fn a_healthy_leader_whose_clock_is_behind_is_never_deposed() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let mut behind = start_skewed(&dir, "behind", "-30s");
    assert!(wait_for(Duration::from_secs(10), || status(&dir)["leader"]
        == "behind"));
    let _follower = Daemon::start(&dir, "follower");
    // Every heartbeat looks 30 s old to the follower's wall clock; judged by
    // timestamps it would depose the leader at once, again and again.
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert_eq!(claims_by(&dir), ["behind"], "a healthy leader was deposed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stamped = leader_beats(&dir).last().unwrap().1;
    assert!(
        stamped < chrono::Utc::now() - chrono::Duration::seconds(20),
        "the leader's clock is behind: {stamped}"
    );
    behind.0.kill().unwrap();
    behind.0.wait().unwrap();
}

/// `huddle run` in `dir` as `name` under strace, every `fdatasync` it makes
/// held for `delay` before it returns: a disk slow to flush (other
/// writers' fsyncs, a busy device). strace's own record of the calls it
/// held goes to `record`.
struct SlowFlushes {
    strace: std::process::Child,
}

impl SlowFlushes {
    fn start(
        dir: &HuddleDir,
        name: &str,
        delay: Duration,
        record: &std::path::Path,
    ) -> SlowFlushes {
        let huddle = dir.command(&["run", "--actor", name]);
        let strace = std::process::Command::new("strace")
            .args(["-f", "--seccomp-bpf", "-e", "trace=fdatasync", "-e"])
            .arg(format!("inject=fdatasync:delay_exit={}", delay.as_micros()))
            .arg("-o")
            .arg(record)
            .arg(huddle.get_program())
            .args(huddle.get_args())
            .envs(huddle.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("HUDDLE_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("strace is missing: run scripts/test, which installs it");
        SlowFlushes { strace }
    }
}

impl Drop for SlowFlushes {
    fn drop(&mut self) {
        // Killing strace would leave huddle running untraced: kill it first.
        let pid = self.strace.id();
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            for child in children.split_whitespace() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", child])
                    .status();
            }
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

/// A leader whose every flush to disk takes 1.5 s, longer than the leader
/// timeout: its heartbeats do not wait for a flush (one lost in a crash is
/// no loss), so a follower, which judges it by when its heartbeats arrive,
/// never deposes it. The flushes were held: strace reports the claim's.
/// (With 200 ms heartbeats and a 1 s timeout, a five-minute soak of
/// skewed leaders lost its leader three times to flushes of about a second
/// on this machine's disk.)
#[test]
fn a_leader_whose_disk_flushes_take_longer_than_the_leader_timeout_is_never_deposed() {
    let _machine = crate::common::exclusive();
    let dir = HuddleDir::with_config(FAST);
    let record = dir
        .path()
        .with_file_name(format!("strace-{}.txt", std::process::id()));
    let _leader = SlowFlushes::start(&dir, "slowdisk", Duration::from_millis(1500), &record);
    assert!(
        wait_for(Duration::from_secs(20), || status(&dir)["leader"]
            == "slowdisk"),
        "the slow-disk daemon never led"
    );
    // Its claim waits for its flush (a claim is kept durable); its first
    // heartbeats follow.
    assert!(
        wait_for(Duration::from_secs(10), || leader_beats(&dir).len() >= 2),
        "the slow-disk leader never beat"
    );
    let _follower = Daemon::start(&dir, "follower");
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert_eq!(
            claims_by(&dir),
            ["slowdisk"],
            "a healthy leader was deposed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let beats = leader_beats(&dir).len();
    assert!(beats >= 20, "only {beats} heartbeats");
    let held = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(held.contains("(DELAYED)"), "no flush was held: {held}");
}
