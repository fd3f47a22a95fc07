//! `huddle demo`: a demo directory where two agent processes converse
//! concurrently through the log, then a summary of what they wrote.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::event::{Event, InteractionRef, NewEvent};
use crate::log::{Cursor, EventStore, FileLog};
use crate::workspace::{self, Workspace};

/// Marks a directory as made by `huddle demo`, so a rerun may replace it.
const DEMO_MARK: &str = ".huddle-demo";
const ASKER: &str = "Agent A";
const ANSWERER: &str = "Agent B";
/// How long an agent waits for the other before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Asks questions in new interactions and follows up on each answer.
    Asker,
    /// Answers every question it sees.
    Answerer,
}

/// Creates `out`, runs both agents as separate processes, prints the result.
pub fn run(out: &Path, rounds: u32) -> Result<()> {
    prepare(out)?;
    let exe = std::env::current_exe().context("cannot find the huddle executable")?;
    println!("demo directory: {}", out.display());
    println!("starting two agent processes ({rounds} rounds each) ...");
    let started = Instant::now();
    let children = [Role::Asker, Role::Answerer].map(|role| {
        let name = match role {
            Role::Asker => "asker",
            Role::Answerer => "answerer",
        };
        Command::new(&exe)
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
    let elapsed = started.elapsed();
    summarise(out, elapsed)
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
    log.scan(Cursor::START, |record| {
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
        println!("  interaction #{number}");
        for event in list {
            println!("    {:<8} {:<9} {}", event.actor, event.kind, event.content);
        }
    }
    let ids: HashSet<_> = events.iter().filter_map(|e| e.id.as_ref()).collect();
    println!(
        "\n{} events in {} interactions, {} unique ids, written by two processes in {:.0?}",
        events.len(),
        by_interaction.len(),
        ids.len(),
        elapsed
    );
    Ok(())
}

/// One demo agent: converses until it has done `rounds` rounds.
pub fn agent(dir: &Path, role: Role, rounds: u32) -> Result<()> {
    let log = Workspace::open(dir)?.log();
    match role {
        Role::Asker => ask(&log, rounds),
        Role::Answerer => answer(&log, rounds),
    }
}

fn ask(log: &FileLog, rounds: u32) -> Result<()> {
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

fn answer(log: &FileLog, rounds: u32) -> Result<()> {
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
    log: &'a FileLog,
    cursor: Cursor,
    backlog: Vec<Event>,
}

impl<'a> Follower<'a> {
    fn new(log: &'a FileLog) -> Follower<'a> {
        Follower {
            log,
            cursor: Cursor::START,
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
            self.cursor = self.log.scan(self.cursor, |record| {
                backlog.push(record.event);
                Ok(())
            })?;
        }
    }
}
