//! The JetStream backend against a real `nats-server -js` (see `nats.rs`):
//! the conformance suite, and huddle directories on several "machines"
//! sharing one stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use huddle::backend::conformance::{self, Harness};
use huddle::backend::jetstream::JetStreamLog;
use huddle::config::{BackendConfig, BackendKind, ServerUrls};
use huddle::event::DEFAULT_MAX_CONTENT_BYTES;
use huddle::log::QUARANTINE_FILE;

use crate::common::wait_until;
use crate::nats::NatsServer;

/// How long a fresh server may take before JetStream takes a stream.
const READY: Duration = Duration::from_secs(20);

pub fn backend_config(urls: &[String], stream: &str) -> BackendConfig {
    BackendConfig {
        kind: BackendKind::Jetstream,
        url: ServerUrls::Many(urls.to_vec()),
        stream: stream.into(),
        timeout_ms: 3000,
        ..BackendConfig::default()
    }
}

/// Opens the stream, creating it, once the server's JetStream is up.
pub fn open_stream(config: &BackendConfig, dir: &std::path::Path) -> JetStreamLog {
    let log = JetStreamLog::new(config, dir, DEFAULT_MAX_CONTENT_BYTES);
    wait_until(READY, || log.ensure_stream().ok()).unwrap_or_else(|| {
        panic!(
            "JetStream did not take stream {} within {READY:?}",
            config.stream
        )
    });
    log
}

struct JetStream {
    server: NatsServer,
    root: tempfile::TempDir,
    made: AtomicUsize,
}

impl JetStream {
    fn new() -> JetStream {
        JetStream {
            server: NatsServer::start(),
            root: tempfile::tempdir().expect("temporary directory"),
            made: AtomicUsize::new(0),
        }
    }
}

impl Harness for JetStream {
    type Log = JetStreamLog;

    fn create(&self) -> JetStreamLog {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.path().join(format!("machine{n}"));
        std::fs::create_dir(&dir).expect("create the machine's directory");
        open_stream(
            &backend_config(&[self.server.url()], &format!("T{n}")),
            &dir,
        )
    }

    fn reopen(&self, log: &JetStreamLog) -> JetStreamLog {
        JetStreamLog::new(log.config(), log.dir(), DEFAULT_MAX_CONTENT_BYTES)
    }

    fn append_foreign(&self, log: &JetStreamLog, entry: &[u8]) {
        log.publish_raw(entry).expect("publish a foreign message");
    }

    fn quarantined(&self, log: &JetStreamLog) -> usize {
        std::fs::read_to_string(log.dir().join(QUARANTINE_FILE))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

mod conformance_suite {
    use super::*;

    #[test]
    fn keeps_order_and_reads_back_from_every_position() {
        conformance::order(&JetStream::new());
    }

    #[test]
    fn concurrent_writers_land_exactly_once_and_next_never_repeats() {
        conformance::exactly_once_under_concurrent_writers(&JetStream::new());
    }

    #[test]
    fn of_racing_compare_and_appends_exactly_one_wins() {
        conformance::compare_and_append_races(&JetStream::new());
    }

    #[test]
    fn a_saved_position_resumes_after_a_restart_and_news_arrives() {
        conformance::resume_from_a_saved_position_after_a_restart(&JetStream::new());
    }

    #[test]
    fn malformed_entries_are_set_aside_once_and_never_numbered() {
        conformance::malformed_entries_are_quarantined(&JetStream::new());
    }
}

// ---------------------------------------------------------------------------
// Machines: huddle directories that share one stream, each with its daemon.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use huddle::backend::scan;
use huddle::event::Event;
use huddle::Position;
use serde_json::Value;

use crate::common::{exclusive, start_skewed, wait_for, HuddleDir};
use crate::daemon::{Daemon, FAST};

const HEARTBEAT: Duration = Duration::from_millis(200);
const LEADER_TIMEOUT: Duration = Duration::from_millis(1000);
const JITTER: Duration = Duration::from_millis(150);

/// huddle.toml of a machine on `stream`: the daemon's fast settings and the backend.
fn machine_config(urls: &[String], stream: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "{FAST}[backend]\nkind = \"jetstream\"\nurl = [{}]\nstream = \"{stream}\"\ntimeout_ms = 2000\n",
        urls.join(", ")
    )
}

/// Machines sharing one stream, and a reader of the stream for the checks.
struct Team {
    machines: Vec<HuddleDir>,
    reader: JetStreamLog,
    _reader_dir: tempfile::TempDir,
}

impl Team {
    fn new(urls: &[String], stream: &str, machines: usize) -> Team {
        let reader_dir = tempfile::tempdir().expect("temporary directory");
        let reader = open_stream(&backend_config(urls, stream), reader_dir.path());
        Team {
            machines: (0..machines)
                .map(|_| HuddleDir::with_config(&machine_config(urls, stream)))
                .collect(),
            reader,
            _reader_dir: reader_dir,
        }
    }

    /// Every event in the stream, in order.
    fn events(&self) -> Vec<Event> {
        let mut events = Vec::new();
        scan(&self.reader, Position::START, |stored| {
            events.push(stored.event);
            Ok(())
        })
        .expect("read the stream");
        events
    }

    fn claims(&self) -> Vec<(String, u64)> {
        self.events()
            .into_iter()
            .filter(|e| {
                e.kind == "leader_election" && e.extra.get("action") == Some(&Value::from("claim"))
            })
            .map(|e| (e.actor, e.term.unwrap_or(0)))
            .collect()
    }

    fn leader(&self) -> Option<String> {
        let status: Value =
            serde_json::from_str(&self.machines[0].ok(&["status", "--json"])).ok()?;
        status["leader"].as_str().map(String::from)
    }
}

fn read(dir: &HuddleDir, name: &str) -> String {
    std::fs::read_to_string(dir.file(name)).unwrap_or_default()
}

#[test]
fn three_machines_logging_at_once_converge_to_identical_snapshots_with_each_event_once() {
    let _machine = exclusive();
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "CONVERGE", 3);
    let _daemons: Vec<Daemon> = team
        .machines
        .iter()
        .enumerate()
        .map(|(i, dir)| Daemon::start(dir, &format!("d{i}")))
        .collect();
    const ROUNDS: usize = 6;
    // Each machine's agent asks (numbered `next`) and answers its own question.
    std::thread::scope(|scope| {
        for (i, dir) in team.machines.iter().enumerate() {
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let agent = format!("agent{i}");
                    let number =
                        dir.ok(&["log", "next", &agent, "question", &format!("q{i}-{round}")]);
                    let number = number.trim();
                    dir.ok(&["log", number, &agent, "answer", &format!("a{i}-{round}")]);
                }
            });
        }
    });
    let events = team.events();
    let agents: Vec<&Event> = events
        .iter()
        .filter(|e| e.actor.starts_with("agent"))
        .collect();
    assert_eq!(agents.len(), 3 * ROUNDS * 2, "events lost or doubled");
    let ids: HashSet<&String> = agents.iter().filter_map(|e| e.id.as_ref()).collect();
    assert_eq!(ids.len(), agents.len(), "an event appears twice");
    let contents: HashSet<&str> = agents.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(contents.len(), agents.len(), "a content appears twice");
    let questions: HashSet<u64> = agents
        .iter()
        .filter(|e| e.kind == "question")
        .map(|e| e.interaction)
        .collect();
    assert_eq!(
        questions.len(),
        3 * ROUNDS,
        "`next` handed out a number twice"
    );
    // Every machine renders the whole stream, byte for byte the same.
    let converged = wait_for(Duration::from_secs(30), || {
        let comms: Vec<String> = team
            .machines
            .iter()
            .map(|m| read(m, "communication.md"))
            .collect();
        let archives: Vec<String> = team
            .machines
            .iter()
            .map(|m| read(m, "archive.md"))
            .collect();
        comms.windows(2).all(|w| w[0] == w[1])
            && archives.windows(2).all(|w| w[0] == w[1])
            && contents.iter().all(|c| {
                comms[0].contains(&format!(" - {c}\n")) || archives[0].contains(&format!("{c}\n"))
            })
    });
    assert!(
        converged,
        "the machines' snapshots differ or miss events:\n{}",
        team.machines
            .iter()
            .map(|m| read(m, "communication.md"))
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
    for content in &contents {
        let rendered =
            read(&team.machines[0], "communication.md") + &read(&team.machines[0], "archive.md");
        assert_eq!(
            rendered.matches(&format!("{content}\n")).count(),
            1,
            "{content} is rendered other than once"
        );
    }
}

#[test]
fn killing_the_leader_daemon_with_sigkill_elects_another_within_the_timeout_and_two_heartbeats() {
    let _machine = exclusive();
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "FAILOVER", 3);
    // name -> (machine, daemon)
    let mut daemons: HashMap<String, (usize, Daemon)> = team
        .machines
        .iter()
        .enumerate()
        .map(|(i, dir)| (format!("d{i}"), (i, Daemon::start(dir, &format!("d{i}")))))
        .collect();
    for round in 0..3 {
        let leader = wait_until(Duration::from_secs(15), || team.leader())
            .unwrap_or_else(|| panic!("round {round}: no leader"));
        let before = team.claims();
        let (machine, killed) = daemons.remove(&leader).expect("the leader is one of ours");
        killed.signal(libc::SIGKILL);
        let killed_at = Instant::now();
        drop(killed);
        let fresh = wait_until(
            LEADER_TIMEOUT + HEARTBEAT * 2 + Duration::from_secs(5),
            || {
                let now = team.claims();
                (now.len() > before.len()).then(|| now[before.len()..].to_vec())
            },
        )
        .unwrap_or_else(|| panic!("round {round}: nobody took over from {leader}"));
        let took = killed_at.elapsed();
        assert_eq!(
            fresh.len(),
            1,
            "round {round}: one claim per failover: {fresh:?}"
        );
        assert_ne!(fresh[0].0, leader);
        assert_eq!(Some(fresh[0].1), before.last().map(|c| c.1 + 1));
        // Timeout + 2 heartbeats, plus this daemon's jitter and its polling.
        let bound = LEADER_TIMEOUT + HEARTBEAT * 2 + JITTER + Duration::from_millis(600);
        assert!(
            took <= bound,
            "round {round}: failover took {took:?}, more than {bound:?}"
        );
        // The machine whose daemon died gets a new one.
        let name = format!("r{round}m{machine}");
        let restarted = Daemon::start(&team.machines[machine], &name);
        daemons.insert(name, (machine, restarted));
    }
}

#[test]
fn a_sigstopped_leader_writes_nothing_to_the_stream_once_it_wakes() {
    let _machine = exclusive();
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "STOPPED", 2);
    let first = Daemon::start(&team.machines[0], "first");
    assert!(
        wait_for(Duration::from_secs(15), || team.leader().as_deref()
            == Some("first")),
        "first leads"
    );
    let second = Daemon::start(&team.machines[1], "second");
    first.signal(libc::SIGSTOP);
    assert!(
        wait_for(Duration::from_secs(15), || team.leader().as_deref()
            == Some("second")),
        "second takes over"
    );
    team.machines[1].ok(&[
        "log",
        "1",
        "Agent A",
        "error",
        "something broke while first slept",
    ]);
    let logged_before_waking = first.log_text().len();
    first.signal(libc::SIGCONT);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let woke = first.log_text()[logged_before_waking..].to_string();
            woke.contains("stepping down") || woke.contains("replaced while we were away")
        }),
        "the woken leader never noticed it was replaced:\n{}",
        first.log_text()
    );
    // Give it the time it would need to act, then look at what it wrote.
    std::thread::sleep(LEADER_TIMEOUT);
    let events = team.events();
    let takeover = events
        .iter()
        .position(|e| e.kind == "leader_election" && e.actor == "second")
        .expect("second's claim");
    let stale: Vec<&Event> = events[takeover..]
        .iter()
        .filter(|e| e.actor == "first")
        .collect();
    assert!(
        stale.is_empty(),
        "the fenced leader wrote to the stream: {stale:?}"
    );
    assert_eq!(team.leader().as_deref(), Some("second"));
    drop(second);
}

#[test]
fn with_clocks_an_hour_ahead_and_30s_behind_no_healthy_leader_is_deposed_and_failover_is_in_time() {
    let _machine = exclusive();
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "SKEWED", 3);
    let mut ahead = start_skewed(&team.machines[0], "ahead", "+1h");
    assert!(
        wait_for(Duration::from_secs(15), || team.leader().as_deref()
            == Some("ahead")),
        "the daemon an hour ahead leads"
    );
    let _behind = start_skewed(&team.machines[1], "behind", "-30s");
    let _plain = Daemon::start(&team.machines[2], "plain");
    let watch = |who: &str, claims: usize| {
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let now = team.claims();
            assert_eq!(
                now.len(),
                claims,
                "healthy leader {who} was deposed: {now:?}"
            );
            std::thread::sleep(HEARTBEAT);
        }
    };
    watch("ahead", 1);
    let _ = ahead.0.kill();
    let _ = ahead.0.wait();
    let killed = Instant::now();
    let fresh = wait_until(Duration::from_secs(8), || {
        let now = team.claims();
        (now.len() > 1).then(|| now[1].clone())
    })
    .expect("no failover from the leader an hour ahead");
    let bound = LEADER_TIMEOUT + HEARTBEAT * 2 + JITTER + Duration::from_millis(600);
    assert!(
        killed.elapsed() <= bound,
        "failover took {:?}",
        killed.elapsed()
    );
    // Whoever leads now (30 s behind, or on time) is never deposed either.
    watch(&fresh.0, 2);
}

#[test]
fn a_three_node_cluster_losing_a_node_mid_run_loses_no_acknowledged_event_and_duplicates_none() {
    let _machine = exclusive();
    let mut nodes = NatsServer::cluster();
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let config = BackendConfig {
        replicas: 3,
        ..backend_config(&urls, "REPLICATED")
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let reader = open_stream(&config, dir.path());
    const WRITERS: usize = 3;
    const EACH: usize = 60;
    let acknowledged: Vec<Vec<Event>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = JetStreamLog::new(&config, dir.path(), DEFAULT_MAX_CONTENT_BYTES);
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..EACH {
                        // Stamped once: a retry is the same event, with the same id.
                        let event = huddle::NewEvent::new(
                            huddle::InteractionRef::Number(1),
                            format!("w{w}"),
                            "note",
                            format!("{w}-{i}"),
                        )
                        .into_event(1);
                        let deadline = Instant::now() + Duration::from_secs(60);
                        loop {
                            match huddle::Backend::append_events(&log, std::slice::from_ref(&event))
                            {
                                Ok(()) => break,
                                Err(error) => {
                                    assert!(
                                        Instant::now() < deadline,
                                        "never acknowledged: {error}"
                                    );
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                            }
                        }
                        acked.push(event);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    acked
                })
            })
            .collect();
        // Mid-run, one node dies and comes back.
        std::thread::sleep(Duration::from_millis(600));
        nodes[0].kill();
        std::thread::sleep(Duration::from_secs(2));
        nodes[0].restart();
        writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect()
    });
    let mut stored = Vec::new();
    let read_all = wait_until(Duration::from_secs(30), || {
        stored.clear();
        scan(&reader, Position::START, |s| {
            stored.push(s.event);
            Ok(())
        })
        .ok()
    });
    assert!(
        read_all.is_some(),
        "the stream could not be read after the restart"
    );
    let mut seen = HashSet::new();
    for event in &stored {
        assert!(seen.insert(event.id.clone()), "{event:?} is stored twice");
    }
    for (w, acked) in acknowledged.iter().enumerate() {
        assert_eq!(acked.len(), EACH);
        let order: Vec<&Event> = stored
            .iter()
            .filter(|e| e.actor == format!("w{w}"))
            .collect();
        assert_eq!(
            order.iter().map(|e| &e.id).collect::<Vec<_>>(),
            acked.iter().map(|e| &e.id).collect::<Vec<_>>(),
            "writer {w}: acknowledged events missing, doubled or out of order"
        );
    }
}

#[test]
fn with_the_server_stopped_ten_seconds_reads_serve_what_was_seen_status_and_the_dashboard_say_offline_events_are_queued_then_published_once_in_order_and_a_stream_opened_meanwhile_misses_none(
) {
    let _machine = exclusive();
    let mut server = NatsServer::start();
    let team = Team::new(&[server.url()], "OUTAGE", 2);
    let _daemons: Vec<Daemon> = team
        .machines
        .iter()
        .enumerate()
        .map(|(i, dir)| Daemon::start(dir, &format!("d{i}")))
        .collect();
    let page = crate::dashboard::Dashboard::start(&team.machines[0], &[]);
    let logging = std::sync::atomic::AtomicBool::new(true);
    let (written, queued, streams): (Vec<Vec<String>>, _, _) = std::thread::scope(|scope| {
        let writers: Vec<_> = team
            .machines
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let logging = &logging;
                scope.spawn(move || {
                    let mut contents = Vec::new();
                    let mut n = 0;
                    // Their own deadline too: should the main thread panic
                    // in the scope, the writers still end and the test fails
                    // instead of hanging.
                    let deadline = std::time::Instant::now() + Duration::from_secs(120);
                    while logging.load(std::sync::atomic::Ordering::SeqCst)
                        && std::time::Instant::now() < deadline
                    {
                        let content = format!("m{i}-{n}");
                        let interaction = if n % 2 == 0 {
                            "next".to_string()
                        } else {
                            "1".to_string()
                        };
                        let out =
                            dir.run(&["log", &interaction, &format!("agent{i}"), "note", &content]);
                        let said = String::from_utf8_lossy(&out.stderr).into_owned();
                        assert!(
                            out.status.success(),
                            "huddle log failed during the outage: {said}"
                        );
                        if !said.is_empty() {
                            assert!(said.contains("events.offline.log"), "{said}");
                        }
                        contents.push(content);
                        n += 1;
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    contents
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        server.kill();
        let stopped = Instant::now();
        // Something is queued while the server is down.
        assert!(
            wait_for(Duration::from_secs(9), || team
                .machines
                .iter()
                .all(|m| read(m, "events.offline.log").lines().count() > 0)),
            "nothing was queued while the server was down"
        );
        // Status says so, and serves what this machine saw.
        let status: Value = serde_json::from_str(&team.machines[0].ok(&["status", "--json"]))
            .expect("status --json");
        assert_eq!(status["backend"]["offline"], true, "{status}");
        assert!(status["backend"]["queued"].as_u64() > Some(0), "{status}");
        assert!(status["events"].as_u64() > Some(0), "{status}");
        let shown = team.machines[0].ok(&["status"]);
        assert!(shown.contains("OFFLINE"), "{shown}");
        // `next` serves what this machine saw of the stream, the other
        // machine's events included.
        let unread = team.machines[0].ok(&["next", "--agent", "watcher", "--json"]);
        let seen: Vec<Value> = unread
            .lines()
            .map(|line| serde_json::from_str(line).expect("next --json prints JSON lines"))
            .collect();
        assert!(
            seen.iter().any(|event| event["actor"] == "agent1"),
            "no event of the other machine in what `next` served offline: {unread}"
        );
        // The dashboard's events too.
        let (code, _, served) = crate::dashboard::get(&page.url("/api/events?limit=10000"), &[]);
        assert_eq!(code, 200, "{served}");
        assert!(served.contains(r#""actor":"agent1""#), "{served}");
        // The dashboard says so too.
        let (code, _, html) = crate::dashboard::get(&page.url("/"), &[]);
        assert_eq!(code, 200, "{html}");
        let backend = html
            .split(r#"<dd id="backend""#)
            .nth(1)
            .and_then(|rest| rest.split("</dd>").next())
            .expect("the backend's line");
        assert!(
            backend.contains("OFFLINE") && !backend.contains(" 0 events queued"),
            "{backend}"
        );
        // A stream opened now delivers what is queued once it is published.
        let queued: Vec<String> = team
            .machines
            .iter()
            .flat_map(|m| {
                read(m, "events.offline.log")
                    .lines()
                    .map(|line| {
                        let event: Value = serde_json::from_str(line).expect("a queued event");
                        event["content"].as_str().unwrap_or_default().to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        // Both ways a stream starts: from the page's place, as its script
        // does, and from "now".
        let from = html
            .split(r#"data-from=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the page's place in the log");
        let streams = [
            crate::dashboard::Stream::open(&page.url(&format!("/api/stream?from={from}")), &[]),
            crate::dashboard::Stream::open(&page.url("/api/stream"), &[]),
        ];
        std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
        server.restart();
        std::thread::sleep(Duration::from_secs(2));
        logging.store(false, std::sync::atomic::Ordering::SeqCst);
        let written = writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect();
        (written, queued, streams)
    });
    assert!(
        wait_for(Duration::from_secs(30), || team
            .machines
            .iter()
            .all(|m| read(m, "events.offline.log").trim().is_empty())),
        "the offline queues were never published"
    );
    let events = team.events();
    for (i, contents) in written.iter().enumerate() {
        let published: Vec<&str> = events
            .iter()
            .filter(|e| e.actor == format!("agent{i}"))
            .map(|e| e.content.as_str())
            .collect();
        assert_eq!(
            published,
            contents.iter().map(String::as_str).collect::<Vec<_>>(),
            "machine {i}: events lost, doubled or out of order"
        );
    }
    let numbered: Vec<u64> = events
        .iter()
        .filter(|e| e.actor.starts_with("agent") && e.interaction > 1)
        .map(|e| e.interaction)
        .collect();
    let distinct: HashSet<&u64> = numbered.iter().collect();
    let twice: Vec<String> = events
        .iter()
        .filter(|e| {
            e.actor.starts_with("agent")
                && e.interaction > 1
                && numbered.iter().filter(|n| **n == e.interaction).count() > 1
        })
        .map(|e| format!("{} {} {}", e.interaction, e.actor, e.content))
        .collect();
    assert_eq!(
        distinct.len(),
        numbered.len(),
        "`next` gave a number twice: {twice:?}"
    );
    // The streams opened during the outage: from where the page stood,
    // every event once and in the log's order, the queued ones included.
    let last_id = events
        .last()
        .and_then(|e| e.id.clone())
        .expect("the last event has an id");
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e.id.as_deref().unwrap_or_default())
        .collect();
    for (which, stream) in ["from the page's place", "from now"].iter().zip(&streams) {
        let mut streamed: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while streamed.last().map(|fed| &fed["event"]["id"]) != Some(&Value::from(last_id.as_str()))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match stream.events.recv_timeout(left) {
                Ok((_, fed)) => streamed.push(fed),
                Err(_) => panic!(
                    "the stream {which} opened during the outage stopped after {} events, before the log's last",
                    streamed.len()
                ),
            }
        }
        let streamed_ids: Vec<&str> = streamed
            .iter()
            .map(|fed| fed["event"]["id"].as_str().unwrap_or_default())
            .collect();
        let first = ids
            .iter()
            .position(|id| *id == streamed_ids[0])
            .expect("the stream's first event is in the log");
        assert_eq!(
            streamed_ids,
            ids[first..],
            "the stream {which} skipped, doubled or reordered events"
        );
        let streamed_contents: HashSet<&str> = streamed
            .iter()
            .map(|fed| fed["event"]["content"].as_str().unwrap_or_default())
            .collect();
        for content in &queued {
            assert!(
                streamed_contents.contains(content.as_str()),
                "{content:?}, queued during the outage, never came on the stream {which}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Set-up, moving, and the clients unchanged on the stream.

#[test]
fn init_with_the_jetstream_backend_creates_the_stream_once_and_names_it_in_huddle_toml() {
    let server = NatsServer::start();
    let root = tempfile::tempdir().expect("temporary directory");
    let init = |name: &str| {
        let dir = root.path().join(name);
        let out = crate::common::huddle_at(
            root.path(),
            &[
                "init",
                dir.to_str().expect("utf-8 path"),
                "--backend",
                "jetstream",
                "--url",
                &server.url(),
                "--stream",
                "SETUP",
            ],
        );
        assert!(out.status.success(), "{}", crate::common::stderr(&out));
        (dir, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // JetStream may still be starting: the first init waits for nothing else.
    wait_until(READY, || {
        open_stream(&backend_config(&[server.url()], "PROBE"), root.path());
        Some(())
    });
    let (first, said) = init("first");
    assert!(
        said.contains("stream SETUP on nats://127.0.0.1:") && said.contains(": created"),
        "{said}"
    );
    let (_second, said) = init("second");
    assert!(said.contains("already there"), "{said}");
    assert!(
        !first.join("events.log").exists(),
        "a JetStream huddle has no events.log"
    );
    let config = huddle::Config::load(&first).expect("huddle.toml parses");
    assert_eq!(config.backend.kind, BackendKind::Jetstream);
    assert_eq!(config.backend.stream, "SETUP");
    let out = crate::common::huddle_at(
        root.path(),
        &[
            "init",
            "bad",
            "--backend",
            "jetstream",
            "--url",
            "http://example.invalid",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "a bad URL is bad input");
    assert!(crate::common::stderr(&out).contains("backend.url"));
    assert!(
        !root.path().join("bad").exists(),
        "nothing written for a bad URL"
    );
}

#[test]
fn migrate_copies_events_log_into_the_stream_each_event_once_in_order_and_again_copies_nothing() {
    let server = NatsServer::start();
    let dir = HuddleDir::new();
    for i in 0..30 {
        dir.ok(&[
            "log",
            "next",
            "Agent A",
            "question",
            &format!("question {i}"),
        ]);
    }
    // A line without an id, as the brief's shell appender writes.
    {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.file("events.log"))
            .expect("open events.log");
        writeln!(
            log,
            r#"{{"interaction":31,"actor":"shell","type":"note","content":"no id","timestamp":"2026-01-01T00:00:00Z"}}"#
        )
        .expect("append a line");
    }
    let from_file: Vec<Value> = dir.events();
    let config = format!(
        "[backend]\nurl = \"{}\"\nstream = \"MOVED\"\n",
        server.url()
    );
    std::fs::write(dir.file("huddle.toml"), &config).expect("write huddle.toml");
    wait_until(READY, || {
        open_stream(&backend_config(&[server.url()], "PROBE"), dir.path());
        Some(())
    });
    let said = dir.ok(&["migrate", "--to", "jetstream"]);
    assert!(said.contains("31 events copied, 0 already there"), "{said}");
    assert!(said.contains("kind = \"jetstream\""), "{said}");
    // Interrupted or repeated: nothing twice.
    let again = dir.ok(&["migrate", "--to", "jetstream"]);
    assert!(
        again.contains("0 events copied, 31 already there"),
        "{again}"
    );
    let reader = JetStreamLog::new(
        &backend_config(&[server.url()], "MOVED"),
        dir.path(),
        DEFAULT_MAX_CONTENT_BYTES,
    );
    let mut in_stream = Vec::new();
    scan(&reader, Position::START, |s| {
        in_stream.push(serde_json::to_value(&s.event).expect("event as JSON"));
        Ok(())
    })
    .expect("read the stream");
    assert_eq!(in_stream, from_file, "the stream differs from events.log");
}

#[test]
fn the_cli_and_the_mcp_server_work_unchanged_on_the_jetstream_backend() {
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "CLIENTS", 2);
    let (here, there) = (&team.machines[0], &team.machines[1]);
    assert_eq!(
        here.ok(&["log", "next", "Agent A", "question", "Who reviews?"])
            .trim(),
        "1"
    );
    assert_eq!(
        there.ok(&["log", "1", "Agent B", "answer", "I do."]).trim(),
        "1"
    );
    assert_eq!(
        there
            .ok(&["log", "next", "Agent B", "decision", "Ship it."])
            .trim(),
        "2"
    );
    here.ok(&["heartbeat", "Agent A"]);
    let unread = here.ok(&["next", "--agent", "agent-a", "--json"]);
    let contents: Vec<String> = unread
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON event")["content"].to_string())
        .collect();
    assert_eq!(contents, ["\"Who reviews?\"", "\"I do.\"", "\"Ship it.\""]);
    here.ok(&["ack", "--agent", "agent-a", "1"]);
    let after = here.ok(&["next", "--agent", "agent-a", "--json"]);
    assert_eq!(after.lines().count(), 1, "{after}");
    there.ok(&["snapshot"]);
    assert!(read(there, "communication.md").contains(" - Who reviews?\n"));
    let status: Value = serde_json::from_str(&here.ok(&["status", "--json"])).expect("status");
    assert_eq!(status["backend"]["kind"], "jetstream");
    assert_eq!(status["backend"]["offline"], false);
    assert_eq!(status["events"], 4);
    // The MCP server, as an agent's client drives it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use rmcp::model::CallToolRequestParams;
        use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
        use rmcp::ServiceExt;
        let transport = TokioChildProcess::new(
            tokio::process::Command::new(crate::common::huddle_exe()).configure(|c| {
                c.arg("mcp")
                    .arg("--dir")
                    .arg(there.path())
                    .env("XDG_STATE_HOME", there.state_home())
                    .env("HUDDLE_CACHE_DIR", crate::common::plugin_cache())
                    .env("RUST_LOG", "warn");
            }),
        )
        .expect("start huddle mcp");
        let client = ().serve(transport).await.expect("MCP handshake");
        let call = |tool: &'static str, arguments: Value| {
            let arguments = match arguments {
                Value::Object(map) => map,
                _ => Default::default(),
            };
            client.call_tool(CallToolRequestParams::new(tool).with_arguments(arguments))
        };
        let logged = call(
            "log",
            serde_json::json!({"interaction": "next", "actor": "Agent C", "type": "question", "content": "Over MCP?"}),
        )
        .await
        .expect("log");
        assert_ne!(logged.is_error, Some(true), "{:?}", logged.content);
        assert_eq!(logged.structured_content.expect("the event")["interaction"], 3);
        let unread = call("next", serde_json::json!({"agent": "agent-c"}))
            .await
            .expect("next");
        let events = unread.structured_content.expect("next's answer")["events"].clone();
        assert_eq!(events.as_array().map(Vec::len), Some(4), "{events}");
        let status = call("status", serde_json::json!({})).await.expect("status");
        assert_eq!(status.structured_content.expect("status")["backend"]["kind"], "jetstream");
        client.cancel().await.expect("close the MCP session");
    });
    // The other machine sees what was logged over MCP.
    let from_mcp = here.ok(&["next", "--agent", "agent-a", "--json"]);
    assert!(from_mcp.contains("Over MCP?"), "{from_mcp}");
}

#[test]
fn status_on_the_jetstream_backend_counts_the_events_this_machines_snapshot_lacks() {
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "BEHIND", 2);
    let (here, there) = (&team.machines[0], &team.machines[1]);
    here.ok(&["log", "next", "alice", "question", "ready?"]);
    here.ok(&["snapshot"]);
    let snapshot = |dir: &HuddleDir| -> Value {
        let status: Value = serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status");
        status["snapshot"].clone()
    };
    assert_eq!(snapshot(here)["events_behind"], 0);
    // Logged on the other machine: in the stream, not yet in this snapshot.
    there.ok(&["log", "1", "bob", "answer", "yes"]);
    there.ok(&["log", "1", "bob", "note", "and more"]);
    let behind = snapshot(here);
    assert_eq!(behind["events_behind"], 2, "{behind}");
    let shown = here.ok(&["status"]);
    assert!(
        shown.contains("snapshot: 2 events of the log not yet in it"),
        "{shown}"
    );
    here.ok(&["snapshot"]);
    assert_eq!(snapshot(here)["events_behind"], 0);
}

#[test]
fn next_in_a_new_process_reads_only_what_came_after_the_tail_kept_for_the_same_stream() {
    let server = NatsServer::start();
    let team = Team::new(&[server.url()], "TAIL", 1);
    let dir = &team.machines[0];
    assert_eq!(dir.ok(&["log", "next", "a", "note", "first"]).trim(), "1");
    // This one read message 1, and keeps what it found.
    assert_eq!(dir.ok(&["log", "next", "a", "note", "second"]).trim(), "2");
    let tail_path = dir.file(".huddle/tail-TAIL.json");
    let mut tail: Value =
        serde_json::from_str(&read(dir, ".huddle/tail-TAIL.json")).expect("the kept tail");
    assert_eq!(
        (tail["seen"].as_u64(), tail["highest"].as_u64()),
        (Some(1), Some(1))
    );
    // Had the next process read the stream from the start, it would say 2.
    tail["highest"] = 1000.into();
    std::fs::write(&tail_path, tail.to_string()).expect("write the tail");
    assert_eq!(
        dir.ok(&["log", "next", "a", "note", "second"]).trim(),
        "1001"
    );
    // A tail kept for another stream of the same name is not trusted.
    let mut tail: Value =
        serde_json::from_str(&read(dir, ".huddle/tail-TAIL.json")).expect("the kept tail");
    tail["identity"] = "created at another time".into();
    tail["highest"] = 5000.into();
    std::fs::write(&tail_path, tail.to_string()).expect("write the tail");
    assert_eq!(
        dir.ok(&["log", "next", "a", "note", "third"]).trim(),
        "1002"
    );
}

#[test]
fn a_publish_retried_with_the_same_event_is_stored_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = open_stream(&backend_config(&[server.url()], "RETRIED"), dir.path());
    let events: Vec<Event> = (0..3)
        .map(|i| {
            huddle::NewEvent::new(
                huddle::InteractionRef::Number(1),
                "a",
                "note",
                format!("{i}"),
            )
            .into_event(1)
        })
        .collect();
    use huddle::Backend;
    log.append_events(&events[..1]).expect("publish one");
    log.append_events(&events[..1]).expect("publish it again");
    log.append_events(&events)
        .expect("a batch holding it again");
    log.append_events(&events).expect("the whole batch again");
    let mut stored = Vec::new();
    scan(&log, Position::START, |s| {
        stored.push(s.event);
        Ok(())
    })
    .expect("read");
    assert_eq!(stored, events, "a retried publish was stored twice");
}

#[test]
fn a_conditional_batch_holding_an_event_stored_already_is_still_refused_when_the_head_moved() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = open_stream(&backend_config(&[server.url()], "PARTLY"), dir.path());
    let event = |content: &str| {
        huddle::NewEvent::new(huddle::InteractionRef::Number(1), "a", "note", content).into_event(1)
    };
    let (stored_before, other, mine) = (event("stored"), event("other"), event("mine"));
    use huddle::backend::Conditional;
    use huddle::Backend;
    // A retry whose first event the server already holds (its
    // acknowledgement was lost), expecting the head before that event...
    log.append_events(std::slice::from_ref(&stored_before))
        .expect("publish one");
    // ...while another writer appended meanwhile: the rest must not go in.
    log.append_events(std::slice::from_ref(&other))
        .expect("another writer");
    let moved = log
        .append_if_head(
            Position::sequence(1),
            &[stored_before.clone(), mine.clone()],
        )
        .expect("a conditional publish");
    assert!(
        matches!(moved, Conditional::Moved { .. }),
        "appended after a moved head: {moved:?}"
    );
    // Expecting the true head, the event not stored yet goes in once, the
    // other is not stored again.
    let appended = log
        .append_if_head(
            Position::sequence(2),
            &[stored_before.clone(), mine.clone()],
        )
        .expect("a conditional publish at the head");
    assert!(
        matches!(appended, Conditional::Appended { .. }),
        "{appended:?}"
    );
    let mut stored = Vec::new();
    scan(&log, Position::START, |s| {
        stored.push(s.event);
        Ok(())
    })
    .expect("read");
    assert_eq!(stored, [stored_before, other, mine]);
}

#[test]
fn a_token_is_used_but_never_shown_and_a_wrong_one_is_refused_not_queued() {
    const TOKEN: &str = "s3cret-team-token";
    let server = NatsServer::start_with(&["--auth", TOKEN]);
    let url = server.url();
    let config = |token: &str| {
        format!("[backend]\nkind = \"jetstream\"\nurl = \"{url}\"\nstream = \"AUTH\"\ntoken = \"{token}\"\ntimeout_ms = 2000\n")
    };
    let dir = HuddleDir::with_config(&config(TOKEN));
    let stream = BackendConfig {
        token: Some(huddle::config::Secret::new(TOKEN)),
        ..backend_config(std::slice::from_ref(&url), "AUTH")
    };
    open_stream(&stream, dir.path());
    let out = dir.run(&["log", "next", "Agent A", "note", "with the token"]);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["next", "--agent", "a", "--json"],
    ] {
        let out = dir.run(args);
        assert!(out.status.success());
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            crate::common::stderr(&out)
        );
        assert!(
            !said.contains(TOKEN),
            "huddle {args:?} showed the token:\n{said}"
        );
    }
    std::fs::write(dir.file("huddle.toml"), config("wrong-token")).expect("write huddle.toml");
    let out = dir.run(&["log", "next", "Agent A", "note", "with a wrong token"]);
    let said = crate::common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("authorization violation"), "{said}");
    assert!(!said.contains("wrong-token"), "{said}");
    assert!(
        read(&dir, "events.offline.log").is_empty(),
        "an event was queued behind credentials that will never work"
    );
}

/// Connections the server has accepted since it started (its monitoring
/// endpoint's `total_connections`).
fn connections_accepted(monitor: u16) -> u64 {
    let (status, _, body) = crate::dashboard::get(&format!("http://127.0.0.1:{monitor}/varz"), &[]);
    assert_eq!(status, 200, "{body}");
    let varz: Value = serde_json::from_str(&body).expect("varz is JSON");
    varz["total_connections"]
        .as_u64()
        .expect("varz has total_connections")
}

/// The daemon's snapshot thread reads the stream through one connection for
/// as long as `[backend]` stays the same: ten snapshots open none (each
/// opened two or three before, and keeping the local copy one more).
#[test]
fn a_daemons_snapshots_reuse_one_connection_to_the_server() {
    use huddle::Backend;
    let _machine = exclusive();
    let monitor = crate::nats::free_port();
    let server = NatsServer::start_with(&["-m", &monitor.to_string()]);
    let team = Team::new(&[server.url()], "CONNECTIONS", 1);
    let dir = &team.machines[0];
    let _daemon = Daemon::start(dir, "d0");
    // Appends through the test's own open handle: a `huddle log` process
    // would open a connection of its own each time.
    let snapshot_shows = |n: u64| {
        let content = format!("question {n} for the snapshot");
        team.reader
            .append_events(&[huddle::NewEvent::new(
                huddle::InteractionRef::Number(n),
                "Agent A",
                "question",
                content.clone(),
            )
            .into_event(n)])
            .expect("append through the reader");
        assert!(
            wait_for(Duration::from_secs(20), || read(dir, "communication.md")
                .contains(&content)),
            "the daemon never snapshotted {content}"
        );
    };
    snapshot_shows(1);
    let before = connections_accepted(monitor);
    for n in 2..=11 {
        snapshot_shows(n);
    }
    let opened = connections_accepted(monitor) - before;
    assert!(
        opened <= 1,
        "ten snapshots opened {opened} connections to the server"
    );
}
