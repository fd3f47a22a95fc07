//! The `huddle` command: parses arguments, calls the library, maps errors to
//! exit codes (0 success, 1 runtime failure, 2 bad usage or bad input).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use huddle::config::ConfigError;
use huddle::event::{InteractionRef, NewEvent, ValidationError};
use huddle::log::EventStore;
use huddle::plugin::{self, CheckError, PluginHost, Slot};
use huddle::workspace::{self, Workspace};
use huddle::{demo, snapshot, StoreError};

#[derive(Parser)]
#[command(
    name = "huddle",
    version,
    about = "Coordinate a team of agents through one append-only event log"
)]
struct Cli {
    /// The huddle directory.
    #[arg(long, global = true, env = "HUDDLE_DIR", default_value = ".")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create events.log, communication.md, archive.md and a commented huddle.toml.
    Init {
        /// Directory to initialise (default: --dir).
        path: Option<PathBuf>,
    },
    /// Append one event.
    Log {
        /// Interaction number, or `next` to allocate max + 1.
        #[arg(allow_negative_numbers = true)]
        interaction: String,
        #[arg(allow_hyphen_values = true)]
        actor: String,
        /// Event type: [a-z][a-z0-9_-]*.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Text of the event; `-` reads standard input (one trailing newline is dropped).
        #[arg(allow_hyphen_values = true)]
        content: String,
    },
    /// Regenerate communication.md and archive.md from the log, once.
    Snapshot {
        /// Interactions in communication.md (default: snapshot.k in huddle.toml, else 3).
        #[arg(short, long)]
        k: Option<usize>,
    },
    /// Inspect plugins: which each slot uses, or whether a file is a plugin.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Create a demo directory, run two agents that converse, print the result.
    Demo {
        /// Where to create the demo (replaced if it is an earlier demo).
        #[arg(long, default_value = "huddle-demo")]
        out: PathBuf,
        /// Question/answer rounds per agent.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// One of the demo's agents (started by `huddle demo`).
    #[command(hide = true)]
    DemoAgent {
        #[arg(long)]
        role: demo::Role,
        #[arg(long)]
        rounds: u32,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Each slot, the plugin it uses (built-in or path) and its sha256.
    List,
    /// Which world a .wasm file implements, or exactly why it implements none.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("huddle: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// 2 for bad input (the user can fix the command), 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        cause.is::<ValidationError>()
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::Invalid(_))
            )
            || matches!(
                cause.downcast_ref::<ConfigError>(),
                Some(ConfigError::Invalid { .. })
            )
            || cause.is::<CheckError>()
    });
    if bad_input {
        2
    } else {
        1
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { path } => {
            let dir = path.unwrap_or(cli.dir);
            let report = workspace::init(&dir)
                .with_context(|| format!("cannot initialise {}", dir.display()))?;
            for path in &report.created {
                println!("created {}", path.display());
            }
            for path in &report.kept {
                println!("kept    {} (already there, left alone)", path.display());
            }
            Ok(())
        }
        Command::Log {
            interaction,
            actor,
            kind,
            content,
        } => {
            let interaction: InteractionRef = interaction.parse()?;
            let workspace = Workspace::open(&cli.dir)?;
            let content = if content == "-" {
                read_stdin_content(workspace.config.log.max_content_bytes)?
            } else {
                content
            };
            let event = workspace
                .log()
                .append(NewEvent::new(interaction, actor, kind, content))?;
            println!("{}", event.interaction);
            Ok(())
        }
        Command::Snapshot { k } => {
            let host = PluginHost::new()?;
            let outcome = snapshot::snapshot_once(&cli.dir, &host, k, true)?;
            let recent: Vec<String> = outcome.recent.iter().map(|n| format!("#{n}")).collect();
            println!(
                "communication.md: {} ({}); archive.md: {} interactions ({})",
                if recent.is_empty() {
                    "no interactions".to_string()
                } else {
                    recent.join(", ")
                },
                if outcome.communication_written {
                    "written"
                } else {
                    "unchanged"
                },
                outcome.archived,
                match outcome.archive {
                    snapshot::ArchiveWrite::Unchanged => "unchanged".to_string(),
                    snapshot::ArchiveWrite::Appended(n) => format!("{n} appended"),
                    snapshot::ArchiveWrite::Rewritten => "written".to_string(),
                }
            );
            Ok(())
        }
        Command::Plugins { command } => match command {
            PluginsCommand::List => plugins_list(&cli.dir),
            PluginsCommand::Check { file } => {
                let host = PluginHost::new()?;
                let world = plugin::check_file(&host, &file)?;
                println!("{} implements {}", file.display(), world.name());
                Ok(())
            }
        },
        Command::Demo { out, rounds } => demo::run(&out, rounds),
        Command::DemoAgent { role, rounds } => demo::agent(&cli.dir, role, rounds),
    }
}

/// Reads at most a little over `limit` bytes, so oversize input is refused by
/// validation without being held in memory whole.
fn plugins_list(dir: &std::path::Path) -> Result<()> {
    let workspace = Workspace::open(dir)?;
    let mut rows = vec![
        (
            Slot::HeadingMapper,
            workspace.slot_spec(Slot::HeadingMapper),
        ),
        (Slot::Renderer, workspace.slot_spec(Slot::Renderer)),
    ];
    rows.extend(
        workspace
            .sink_specs()?
            .into_iter()
            .map(|spec| (Slot::AlertSink, spec)),
    );
    println!("{:<15} {:<40} SHA256", "SLOT", "PLUGIN");
    for (slot, spec) in rows {
        let sha = match plugin::read_plugin(&spec) {
            Ok((_, sha)) => sha,
            Err(e) => format!("unreadable: {e}"),
        };
        println!("{:<15} {:<40} {sha}", slot.name(), spec.source.describe());
    }
    Ok(())
}

fn read_stdin_content(limit: usize) -> Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(limit as u64 + 3)
        .read_to_end(&mut bytes)
        .context("cannot read standard input")?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        ValidationError::new(
            "content",
            format!(
                "standard input is not valid UTF-8 (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}
