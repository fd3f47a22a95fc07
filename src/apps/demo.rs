//! `huddle demo`: a demo directory where two agent processes converse
//! concurrently through the log, then a summary of what they wrote.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::backend::{Backend, EventStore, Position};
use crate::model::event::{Event, InteractionRef, NewEvent};
use crate::model::visible::{visible, visible_entry};
use crate::services::workspace::{self, Workspace};

/// Marks a directory as made by `huddle demo`, so a rerun may replace it.
const DEMO_MARK: &str = ".huddle-demo";
const ASKER: &str = "Agent A";
const ANSWERER: &str = "Agent B";
/// How long an agent waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Asks questions in new interactions and follows up on each answer.
    Asker,
    /// Answers every question it sees.
    Answerer,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "asker" => Ok(Role::Asker),
            "answerer" => Ok(Role::Answerer),
            other => Err(format!("{other:?} is no role: asker or answerer")),
        }
    }
}

/// Daemon timings for the demo: fast, so a failover takes a second or two.
const DEMO_CONFIG: &str =
    "[daemon]\nheartbeat_ms = 300\nleader_timeout_ms = 1500\njitter_ms = 300\npoll_ms = 50\n";

/// Creates `out`, starts two daemons and two agents as separate processes,
/// kills the leader half-way, and prints what happened.
pub fn run(out: &Path, rounds: u32) -> Result<()> {
    prepare(out)?;
    std::fs::write(out.join(crate::model::config::CONFIG_FILE), DEMO_CONFIG)?;
    let exe = std::env::current_exe().context("cannot find the huddle executable")?;
    println!("demo directory: {}", out.display());

    let mut daemons: Vec<(String, std::process::Child)> = Vec::new();
    for name in ["daemon-1", "daemon-2"] {
        let log = std::fs::File::create(out.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .arg("--dir")
            .arg(out)
            .args(["run", "--actor", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        daemons.push((name.to_string(), child));
    }
    let workspace = Workspace::open(out)?;
    let leader = wait_for_leader(&workspace, None)?;
    println!(
        "two daemons started (logs in {name}/daemon-*.log); {} was elected leader",
        visible(&leader),
        name = out.display()
    );

    println!("two agent processes converse ({rounds} rounds each) ...");
    let started = Instant::now();
    converse(&exe, out, rounds)?;
    let elapsed = started.elapsed();
    wait_for_snapshot(&workspace)?;
    println!("\ncommunication.md, kept fresh by {}:", visible(&leader));
    print_region(out)?;

    let position = daemons
        .iter()
        .position(|(name, _)| *name == leader)
        .context("the leader is not one of ours")?;
    let (_, mut killed) = daemons.remove(position);
    killed.kill().context("cannot kill the leader")?;
    let _ = killed.wait();
    let killed_at = Instant::now();
    println!("\nkilled {} (SIGKILL) ...", visible(&leader));
    let successor = wait_for_leader(&workspace, Some(&leader))?;
    println!(
        "{} took over after {:.1?} (leader timeout 1.5 s)",
        visible(&successor),
        killed_at.elapsed()
    );

    let log = workspace.backend();
    let last = log.append(NewEvent::new(
        InteractionRef::Next,
        ASKER,
        "question",
        "Is the new leader keeping the snapshot fresh?",
    ))?;
    wait_for_snapshot(&workspace)?;
    let text = std::fs::read_to_string(out.join(crate::services::snapshot::COMMUNICATION_FILE))?;
    println!(
        "a new question (interaction #{}) {} communication.md under {}",
        last.interaction,
        if text.contains(&format!("### Interaction #{}", last.interaction)) {
            "appeared in"
        } else {
            "is missing from"
        },
        visible(&successor)
    );

    for (_, child) in &mut daemons {
        // SIGTERM: the leader resigns and flushes before it exits.
        // SAFETY: signals our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
    }
    summarise(out, elapsed)
}

fn converse(exe: &Path, out: &Path, rounds: u32) -> Result<()> {
    let children = [Role::Asker, Role::Answerer].map(|role| {
        let name = match role {
            Role::Asker => "asker",
            Role::Answerer => "answerer",
        };
        Command::new(exe)
            .args(["--dir"])
            .arg(out)
            .args(["demo-agent", "--role", name, "--rounds"])
            .arg(rounds.to_string())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the {name} agent"))
    });
    for child in children {
        let status = child?.wait().context("lost an agent process")?;
        if !status.success() {
            bail!("an agent process failed ({status})");
        }
    }
    Ok(())
}

/// Waits for a leader other than `not`.
fn wait_for_leader(workspace: &Workspace, not: Option<&str>) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = crate::services::status::status(workspace)?;
        if let Some(leader) = status.leader.filter(|l| Some(l.as_str()) != not) {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!("no leader was elected within {PATIENCE:?}; see the daemon-*.log files");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_snapshot(workspace: &Workspace) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !crate::services::status::status(workspace)?
        .snapshot
        .up_to_date()
    {
        if Instant::now() > deadline {
            bail!("the snapshot did not catch up within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn print_region(out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(out.join(crate::services::snapshot::COMMUNICATION_FILE))?;
    let region = text
        .split_once(crate::services::snapshot::BEGIN_MARKER)
        .and_then(|(_, rest)| rest.split_once(crate::services::snapshot::END_MARKER))
        .map_or("", |(region, _)| region);
    // The region is neutralised markdown, but a hand-edited file may hold anything.
    for line in region.trim_matches('\n').lines() {
        println!("  | {}", visible(line));
    }
    Ok(())
}

fn prepare(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.join(DEMO_MARK).exists() {
            bail!(
                "{} exists and was not made by `huddle demo`; choose another --out",
                out.display()
            );
        }
        std::fs::remove_dir_all(out)
            .with_context(|| format!("cannot replace the old demo in {}", out.display()))?;
    }
    workspace::init(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join(DEMO_MARK), "made by huddle demo\n")?;
    Ok(())
}

fn summarise(out: &Path, elapsed: Duration) -> Result<()> {
    let log = Workspace::open(out)?.log();
    let mut events = Vec::new();
    crate::backend::scan(&log, Position::START, |record| {
        events.push(record.event);
        Ok(())
    })?;
    println!("\nthe conversation, from {}:", log.path().display());
    let mut by_interaction: Vec<(u64, Vec<&Event>)> = Vec::new();
    for event in &events {
        match by_interaction
            .iter_mut()
            .find(|(n, _)| *n == event.interaction)
        {
            Some((_, list)) => list.push(event),
            None => by_interaction.push((event.interaction, vec![event])),
        }
    }
    by_interaction.sort_by_key(|(n, _)| *n);
    for (number, list) in &by_interaction {
        let visible: Vec<&&Event> = list
            .iter()
            .filter(|e| {
                e.kind != crate::model::event::types::HEARTBEAT
                    && e.kind != crate::model::event::types::LEADER_ELECTION
            })
            .collect();
        if visible.is_empty() {
            continue;
        }
        println!("  interaction #{number}");
        for event in visible {
            let entry = format!("{:<8} {:<9} {}", event.actor, event.kind, event.content);
            println!("    {}", visible_entry(&entry, "      "));
        }
    }
    let ids: HashSet<_> = events.iter().filter_map(|e| e.id.as_ref()).collect();
    let elections = events
        .iter()
        .filter(|e| e.kind == crate::model::event::types::LEADER_ELECTION)
        .count();
    let heartbeats = events
        .iter()
        .filter(|e| e.kind == crate::model::event::types::HEARTBEAT)
        .count();
    println!(
        "\n{} events in {} interactions ({} heartbeats, {} election events), {} unique ids; \
         the agents' conversation took {:.0?}",
        events.len(),
        by_interaction.len(),
        heartbeats,
        elections,
        ids.len(),
        elapsed
    );
    Ok(())
}

/// One demo agent: converses until it has done `rounds` rounds.
pub fn agent(dir: &Path, role: Role, rounds: u32) -> Result<()> {
    let log = Workspace::open(dir)?.backend();
    match role {
        Role::Asker => ask(&log, rounds),
        Role::Answerer => answer(&log, rounds),
    }
}

fn ask(log: &dyn Backend, rounds: u32) -> Result<()> {
    let mut watcher = Follower::new(log);
    for round in 1..=rounds {
        let question = log.append(NewEvent::new(
            InteractionRef::Next,
            ASKER,
            "question",
            format!("Round {round}: what should I check next?"),
        ))?;
        let number = question.interaction;
        watcher.wait_for(|e| e.interaction == number && e.kind == "answer")?;
        log.append(NewEvent::new(
            InteractionRef::Number(number),
            ASKER,
            "followup",
            format!("Thanks, checking it now (round {round})."),
        ))?;
    }
    Ok(())
}

fn answer(log: &dyn Backend, rounds: u32) -> Result<()> {
    let mut watcher = Follower::new(log);
    for _ in 0..rounds {
        let question = watcher.wait_for(|e| e.kind == "question" && e.actor == ASKER)?;
        log.append(NewEvent::new(
            InteractionRef::Number(question.interaction),
            ANSWERER,
            "answer",
            format!(
                "Look at interaction {}'s logs first, then the lock file.",
                question.interaction
            ),
        ))?;
    }
    Ok(())
}

/// Reads new events as they are appended.
struct Follower<'a> {
    log: &'a dyn Backend,
    cursor: Position,
    backlog: Vec<Event>,
}

impl<'a> Follower<'a> {
    fn new(log: &'a dyn Backend) -> Follower<'a> {
        Follower {
            log,
            cursor: Position::START,
            backlog: Vec::new(),
        }
    }

    /// The next event (in log order) that `wanted` accepts.
    fn wait_for(&mut self, wanted: impl Fn(&Event) -> bool) -> Result<Event> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(pos) = self.backlog.iter().position(&wanted) {
                return Ok(self.backlog.remove(pos));
            }
            if Instant::now() > deadline {
                bail!("waited {PATIENCE:?} for the other agent; giving up");
            }
            std::thread::sleep(Duration::from_millis(5));
            let backlog = &mut self.backlog;
            self.cursor = crate::backend::scan(self.log, self.cursor, |record| {
                backlog.push(record.event);
                Ok(())
            })?;
        }
    }
}
