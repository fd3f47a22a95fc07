//! The `huddle` command: parses arguments, calls the library, maps errors to
//! exit codes (0 success, 1 runtime failure, 2 bad usage or bad input).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: a snapshot allocates and frees a
/// few strings per event on several threads, and glibc's arenas made that a
/// fifth of a cold snapshot's time. Built without transparent huge pages
/// (`no_thp`), which would count whole 2 MiB pages in a daemon's RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v3), which libmimalloc-sys does
/// not name: how long freed memory stays with the process before mimalloc
/// returns it (1,000 ms by default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A daemon's memory must stay flat as the log grows: freed pages go back to
/// the system within 50 ms instead of a second (a second's worth of batches
/// freed while following appends held the leader's peak within 2 MB of its
/// 128 MB budget).
fn return_freed_memory_sooner() {
    // SAFETY: sets one of mimalloc's runtime options; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 50) };
}

use huddle::config::ConfigError;
use huddle::event::{InteractionRef, ValidationError};
use huddle::log::Backend;
use huddle::plugin::{self, CheckError, PluginHost, Slot};
use huddle::services::{election, inbox, plugin_slots, post, resume};
use huddle::visible::{visible, visible_entry, VisibleWriter};
use huddle::workspace::{self, Workspace};
use huddle::{checkpoint, daemon, demo, snapshot, status, StoreError};

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
        /// Where the events are kept: `file` (events.log) or `jetstream`.
        #[arg(long, value_enum, default_value = "file")]
        backend: InitBackend,
        /// JetStream: the server (nats://HOST:PORT); required with --backend jetstream.
        #[arg(long, required_if_eq("backend", "jetstream"))]
        url: Option<String>,
        /// JetStream: the stream (default HUDDLE).
        #[arg(long)]
        stream: Option<String>,
        /// JetStream: copies of the stream when it is created (default 1).
        #[arg(long)]
        replicas: Option<usize>,
    },
    /// Copy this directory's events.log into another backend, each event once (safe to re-run).
    Migrate {
        /// The backend to copy to, as `[backend]` in huddle.toml names it.
        #[arg(long, value_enum)]
        to: MigrateTarget,
    },
    /// Append one event.
    Log {
        /// Interaction number, or `next` to allocate max + 1.
        #[arg(allow_negative_numbers = true, value_parser = Utf8Text)]
        interaction: String,
        #[arg(allow_hyphen_values = true, value_parser = Utf8Text)]
        actor: String,
        /// Event type: [a-z][a-z0-9_-]*.
        #[arg(value_name = "TYPE", value_parser = Utf8Text)]
        kind: String,
        /// Text of the event; `-` reads standard input (one trailing newline is dropped).
        #[arg(allow_hyphen_values = true, value_parser = Utf8Text)]
        content: String,
    },
    /// Regenerate communication.md and archive.md from the log, once.
    Snapshot {
        /// Interactions in communication.md (default: snapshot.k in huddle.toml, else 3).
        // Negative numbers are taken as values, so `-k -1` is refused as a
        // bad value of -k rather than as an unknown flag `-1`.
        #[arg(short, long, allow_negative_numbers = true)]
        k: Option<usize>,
    },
    /// The daemon: watch the log, elect a leader, heartbeat, keep snapshots fresh.
    Run {
        /// This daemon's name in the log (default: huddle-<host>-<pid>).
        #[arg(long, value_parser = Utf8Text)]
        actor: Option<String>,
        /// Follow the election but never become leader.
        #[arg(long)]
        no_elect: bool,
        /// Also serve the dashboard on this address (e.g. 127.0.0.1:7777).
        #[arg(long, value_name = "ADDR")]
        dashboard: Option<std::net::SocketAddr>,
        /// Bearer token for the dashboard (required off loopback; ignored
        /// without --dashboard, so an exported HUDDLE_DASHBOARD_TOKEN does
        /// not stop a plain `huddle run`).
        #[arg(long, env = "HUDDLE_DASHBOARD_TOKEN", hide_env_values = true)]
        dashboard_token: Option<String>,
    },
    /// Announce that an agent is alive.
    Heartbeat {
        #[arg(value_parser = Utf8Text)]
        actor: String,
    },
    /// Print the events of interactions after an agent's checkpoint.
    Next {
        #[arg(long, value_parser = Utf8Text)]
        agent: String,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
        /// Keep streaming new events as they arrive.
        #[arg(long)]
        follow: bool,
    },
    /// Record that an agent handled every interaction up to N.
    Ack {
        #[arg(long, value_parser = Utf8Text)]
        agent: String,
        #[arg(allow_negative_numbers = true)]
        interaction: u64,
    },
    /// Leader, term, heartbeat age, actors, last errors, event count, snapshot freshness.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Lift a pause after a write error: write the queued events, resume the daemon.
    Resume,
    /// Sync events.log with the git remote once: commit, fetch, merge by event id, push.
    Sync,
    /// Serve the huddle to agents over MCP: stdio by default, or streamable HTTP.
    Mcp {
        /// Speak only for this actor: `log`, `heartbeat` and `ack` refuse any other.
        #[arg(long, value_parser = Utf8Text)]
        actor: Option<String>,
        /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8765), at /mcp.
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// Bearer token every HTTP request must carry (required off loopback).
        #[arg(long, env = "HUDDLE_MCP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Serve a live health page, JSON, an event stream, /healthz and /metrics over HTTP.
    Dashboard {
        /// Where to listen; any address but loopback needs --token.
        #[arg(long, value_name = "ADDR", default_value = huddle::apps::dashboard::DEFAULT_ADDR)]
        addr: std::net::SocketAddr,
        /// Bearer token every request must carry (required off loopback).
        #[arg(long, env = "HUDDLE_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// git merge driver for events.log (registered by `huddle sync`): %O %A %B.
    #[command(hide = true)]
    MergeDriver {
        base: PathBuf,
        ours: PathBuf,
        theirs: PathBuf,
    },
    /// One election round (used by tests and scripts).
    #[command(hide = true)]
    Campaign {
        #[arg(long)]
        actor: String,
        /// Claim exactly this term (lose if it is already claimed).
        #[arg(long)]
        term: Option<u64>,
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

/// A text argument. clap's own check only says "invalid UTF-8 was detected
/// in one or more arguments"; this one names the argument and the byte.
#[derive(Clone)]
struct Utf8Text;

impl clap::builder::TypedValueParser for Utf8Text {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        use std::os::unix::ffi::OsStrExt;
        std::str::from_utf8(value.as_bytes())
            .map(str::to_string)
            .map_err(|bad| {
                let arg = arg.map_or_else(|| "an argument".to_string(), |arg| arg.to_string());
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidUtf8,
                    format!(
                        "{arg} is not valid UTF-8 (first bad byte at offset {})\n",
                        bad.valid_up_to()
                    ),
                )
                .with_cmd(cmd)
            })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InitBackend {
    File,
    Jetstream,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MigrateTarget {
    Jetstream,
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Each slot, the plugin it uses (built-in or path) and its sha256.
    List,
    /// Which world a .wasm file implements, or exactly why it implements none.
    Check { file: PathBuf },
    /// Compile every configured plugin into the compiled-artifact cache now,
    /// so no later command or daemon start pays for it.
    Warm,
    /// Run a plugin once, outside any huddle directory, on sample events
    /// (or --events FILE): prints its output on stdout, and its host-log
    /// lines and any trap on stderr.
    Test {
        file: PathBuf,
        /// A setting for configure, KEY=VALUE, as in huddle.toml (repeatable).
        #[arg(long = "settings", value_name = "KEY=VALUE", num_args = 1.., value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// Events to use instead of the sample: JSON Lines, as in events.log.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// A URL prefix an alert sink may POST to (repeatable); none denies all.
        #[arg(long, value_name = "URL")]
        allow: Vec<String>,
        /// The section a renderer renders.
        #[arg(long, value_enum, default_value_t = SectionArg::Communication)]
        section: SectionArg,
        /// K, the number of recent interactions, in the render context.
        #[arg(long, default_value_t = 3)]
        k: u32,
        /// CPU time the call may take.
        #[arg(long, default_value_t = 2000)]
        deadline_ms: u64,
        /// Cap on the plugin's memory.
        #[arg(long, default_value_t = 64)]
        memory_mb: usize,
    },
    /// Write a new plugin project into ./NAME: the WIT, a working skeleton,
    /// its build script and a README; it builds and passes `plugins check` as is.
    New {
        /// Lowercase ASCII letters, digits and '-', starting with a letter, at most 64 characters.
        #[arg(value_parser = Utf8Text)]
        name: String,
        /// The world (slot) the plugin implements.
        #[arg(long, value_enum)]
        world: NewWorld,
        /// The language of the skeleton.
        #[arg(long, value_enum)]
        lang: NewLang,
        /// Where to write the project instead of ./NAME: a directory that does not exist
        /// or is empty (not --dir, which names a huddle directory and is not used here).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SectionArg {
    Communication,
    Archive,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    huddle::services::plugin_trial::parse_setting(text).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NewWorld {
    Renderer,
    HeadingMapper,
    AlertSink,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NewLang {
    Rust,
    Python,
    Js,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `huddle log` is on every agent's hot path: it logs nothing, so it
    // skips setting up the subscriber.
    if !matches!(
        cli.command,
        Command::Log { .. } | Command::Heartbeat { .. } | Command::Ack { .. }
    ) {
        init_tracing();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Errors quote what they refused, and that may come from the log.
            eprintln!("huddle: {}", visible(&message(&err)));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// The error and its causes, each said once (worded as the MCP server words them).
fn message(err: &anyhow::Error) -> String {
    huddle::apps::error_text(err.as_ref())
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rmcp=warn,async_nats=warn")
            }),
        )
        // Alerts and errors quote the log: shown, not obeyed, by a terminal.
        .with_writer(|| VisibleWriter(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// 2 for bad input (the user can fix the command), 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        cause.is::<ValidationError>()
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::Invalid(_))
            )
            || cause.downcast_ref::<ConfigError>().is_some_and(is_bad_config)
            // Transparent: the chain goes on past the config error it holds.
            || matches!(
                cause.downcast_ref::<snapshot::SnapshotError>(),
                Some(snapshot::SnapshotError::Config(config)) if is_bad_config(config)
            )
            || matches!(
                cause.downcast_ref::<checkpoint::CheckpointError>(),
                Some(checkpoint::CheckpointError::Damaged { .. })
            )
            || cause.is::<CheckError>()
            || cause
                .downcast_ref::<plugin::ScaffoldError>()
                .is_some_and(plugin::ScaffoldError::is_bad_input)
            || cause
                .downcast_ref::<inbox::InboxError>()
                .is_some_and(inbox::InboxError::is_bad_input)
    });
    if bad_input {
        2
    } else {
        1
    }
}

/// A huddle.toml the user must fix, or a --dir that is not a huddle directory.
fn is_bad_config(error: &ConfigError) -> bool {
    error.is_bad_config()
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            path,
            backend,
            url,
            stream,
            replicas,
        } => {
            let dir = path.unwrap_or(cli.dir);
            let report = match (backend, url) {
                (InitBackend::Jetstream, Some(url)) => {
                    let settings = workspace::JetStreamInit {
                        url,
                        stream,
                        replicas,
                    };
                    let (report, created) = match workspace::init_jetstream(&dir, &settings) {
                        Ok(done) => done,
                        // Bad input keeps its exit code (2).
                        Err(workspace::InitError::Config(config)) => return Err(config.into()),
                        Err(error) => {
                            return Err(anyhow::Error::new(error)
                                .context(format!("cannot initialise {}", dir.display())))
                        }
                    };
                    let config = Workspace::open(&dir)?.config.backend;
                    println!(
                        "stream {} on {}: {}",
                        visible(&config.stream),
                        visible(&config.url.shown()),
                        match created {
                            huddle::backend::jetstream::StreamCreated::Created => "created",
                            huddle::backend::jetstream::StreamCreated::Existed => {
                                "already there, used as it is"
                            }
                        }
                    );
                    report
                }
                _ => workspace::init(&dir)
                    .with_context(|| format!("cannot initialise {}", dir.display()))?,
            };
            for path in &report.created {
                println!("created {}", visible(&path.display().to_string()));
            }
            for path in &report.kept {
                println!(
                    "kept    {} (already there, left alone)",
                    visible(&path.display().to_string())
                );
            }
            Ok(())
        }
        Command::Migrate {
            to: MigrateTarget::Jetstream,
        } => {
            let workspace = Workspace::open(&cli.dir)?;
            let migrated = huddle::services::migrate::to_jetstream(&workspace)?;
            println!(
                "stream {}: {} events copied, {} already there",
                visible(&workspace.config.backend.stream),
                migrated.copied,
                migrated.present
            );
            if workspace.config.backend.kind != huddle::config::BackendKind::Jetstream {
                println!("set [backend] kind = \"jetstream\" in huddle.toml to use it");
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
            match post::post(&*workspace.backend(), interaction, actor, kind, content) {
                Ok(event) => println!("{}", event.interaction),
                // Paused: the event is safe in the queue; that is not a failure.
                // Paused, or no server of the stream reachable: the event
                // is safe in the queue; that is not a failure.
                Err(
                    queued @ (StoreError::Paused { .. } | StoreError::UnreachableQueued { .. }),
                ) => {
                    eprintln!("huddle: {}", visible(&queued.to_string()))
                }
                Err(error) => return Err(error.into()),
            }
            Ok(())
        }
        Command::Snapshot { k } => {
            let host = PluginHost::for_many_calls()?;
            let progress: std::sync::Arc<dyn snapshot::Progress> =
                std::sync::Arc::new(ReadingBar(indicatif::ProgressBar::hidden()));
            let outcome = snapshot::snapshot_once(&cli.dir, &host, k, Some(progress))?;
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
        Command::Run {
            actor,
            no_elect,
            dashboard,
            dashboard_token,
        } => {
            let actor = actor.unwrap_or_else(default_actor);
            huddle::event::NewEvent::new(InteractionRef::Number(0), actor.clone(), "heartbeat", "")
                .validate(usize::MAX)?;
            return_freed_memory_sooner();
            if let Some(addr) = dashboard {
                serve_dashboard_beside_daemon(&cli.dir, addr, dashboard_token)?;
            }
            daemon::run(
                &cli.dir,
                daemon::DaemonOptions {
                    actor,
                    elect: !no_elect,
                },
            )
        }
        Command::Heartbeat { actor } => {
            post::heartbeat(&*Workspace::open(&cli.dir)?.backend(), actor)?;
            Ok(())
        }
        Command::Next {
            agent,
            json,
            follow,
        } => next(&cli.dir, &agent, json, follow),
        Command::Ack { agent, interaction } => {
            inbox::ack(&cli.dir, &agent, interaction)?;
            Ok(())
        }
        Command::Status { json } => {
            let status = status::status(&Workspace::open(&cli.dir)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            Ok(())
        }
        Command::Sync => {
            let workspace = Workspace::open(&cli.dir)?;
            let report = huddle::sync::sync(&workspace)?;
            println!(
                "synced with {}: {} events received, {}",
                visible(&workspace.config.sync.remote),
                report.received,
                if report.pushed {
                    "pushed"
                } else {
                    "nothing to push"
                }
            );
            Ok(())
        }
        Command::Mcp { actor, http, token } => huddle::apps::mcp::run(
            &cli.dir,
            huddle::apps::mcp::McpOptions { actor, http, token },
        ),
        Command::Dashboard { addr, token } => huddle::apps::dashboard::run(
            &cli.dir,
            huddle::apps::dashboard::DashboardOptions { addr, token },
        ),
        Command::MergeDriver {
            base: _,
            ours,
            theirs,
        } => huddle::sync::merge_driver(&ours, &theirs).context("merge driver"),
        Command::Resume => {
            match resume::resume(&Workspace::open(&cli.dir)?)? {
                resume::Resumed::NotPaused => println!("huddle is not paused"),
                resume::Resumed::Resumed { moved } => println!(
                    "resumed: {moved} queued events written to the log; the daemon carries on"
                ),
            }
            Ok(())
        }
        Command::Campaign { actor, term } => {
            let log = Workspace::open(&cli.dir)?.backend();
            match election::campaign_once(&*log, &actor, term)? {
                election::Round::Won(term) => println!("won term {term}"),
                election::Round::TermTaken { claimed } => {
                    println!("lost (term {claimed} is already claimed)")
                }
                election::Round::Lost => println!("lost"),
            }
            Ok(())
        }
        Command::Plugins { command } => match command {
            PluginsCommand::List => plugins_list(&cli.dir),
            PluginsCommand::Warm => plugins_warm(&cli.dir),
            PluginsCommand::Test {
                file,
                settings,
                events,
                allow,
                section,
                k,
                deadline_ms,
                memory_mb,
            } => {
                let directory = cli
                    .dir
                    .canonicalize()
                    .ok()
                    .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                let trial = huddle::services::plugin_trial::Trial {
                    plugin: file,
                    settings,
                    events,
                    allow,
                    section: match section {
                        SectionArg::Communication => plugin::Section::Communication,
                        SectionArg::Archive => plugin::Section::Archive,
                    },
                    k,
                    directory,
                    deadline: std::time::Duration::from_millis(deadline_ms),
                    memory_bytes: memory_mb.saturating_mul(1024 * 1024),
                };
                plugins_test(&trial)
            }
            PluginsCommand::New {
                name,
                world,
                lang,
                out,
            } => {
                let slot = match world {
                    NewWorld::Renderer => Slot::Renderer,
                    NewWorld::HeadingMapper => Slot::HeadingMapper,
                    NewWorld::AlertSink => Slot::AlertSink,
                };
                let language = match lang {
                    NewLang::Rust => plugin::scaffold::Language::Rust,
                    NewLang::Python => plugin::scaffold::Language::Python,
                    NewLang::Js => plugin::scaffold::Language::Js,
                };
                let dir = out.unwrap_or_else(|| PathBuf::from(&name));
                let created = plugin::scaffold::create(&dir, &name, slot, language)?;
                println!("{}", visible(&created.to_string()));
                Ok(())
            }
            PluginsCommand::Check { file } => {
                let host = PluginHost::new()?;
                let checked = plugin::check_file(&host, &file)?;
                println!(
                    "{} implements {} ({} in {} ms)",
                    visible(&file.display().to_string()),
                    checked.implements.name(),
                    checked.ready.origin.describe(),
                    checked.ready.elapsed.as_millis()
                );
                if let Some(reason) = &checked.ready.rejected {
                    println!("(the cached artifact was not used: {})", visible(reason));
                }
                configure_where_used(&cli.dir, &host, &file)
            }
        },
        Command::Demo { out, rounds } => demo::run(&out, rounds),
        Command::DemoAgent { role, rounds } => demo::agent(&cli.dir, role, rounds),
    }
}

/// `huddle run --dashboard ADDR`: the dashboard on its own threads; the
/// options are checked and the address taken before the daemon starts,
/// and a dashboard that stops takes the process down with a message.
fn serve_dashboard_beside_daemon(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    token: Option<String>,
) -> Result<()> {
    let options = huddle::apps::dashboard::DashboardOptions { addr, token };
    let listener = huddle::apps::dashboard::bind(&options)?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            if let Err(error) = huddle::apps::dashboard::run_on(&dir, listener, options) {
                eprintln!("huddle: dashboard: {}", visible(&message(&error)));
                std::process::exit(1);
            }
        })
        .context("cannot start the dashboard's thread")?;
    Ok(())
}

/// Reads at most a little over `limit` bytes, so oversize input is refused by
/// validation without being held in memory whole.
fn default_actor() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    format!(
        "huddle-{}-{}",
        if host.is_empty() { "local" } else { host },
        std::process::id()
    )
}

/// `huddle next`: visible events of interactions after the agent's checkpoint.
fn next(dir: &std::path::Path, agent: &str, json: bool, follow: bool) -> Result<()> {
    use std::io::Write as _;
    checkpoint::validate_agent(agent)?;
    let workspace = Workspace::open(dir)?;
    let log = workspace.backend();
    let mapper = inbox::LazyMapper::new(workspace.slot_spec(Slot::HeadingMapper));
    // --follow is pushed by the backend's subscription, not a polling loop;
    // subscribed before the first read, so no append falls in between.
    let mut news = if follow {
        Some(
            log.subscribe()
                .context("cannot watch the huddle directory")?,
        )
    } else {
        None
    };
    let mut unread = inbox::unread(dir, &*log, &mapper, agent, None)?;
    let stdout = std::io::stdout();
    loop {
        let mut out = stdout.lock();
        for event in &unread.events {
            if json {
                writeln!(out, "{}", event.to_line())?;
            } else {
                let entry = format!(
                    "#{} [{}] {} {}: {}",
                    event.interaction, event.timestamp, event.actor, event.kind, event.content
                );
                writeln!(out, "{}", visible_entry(&entry, "    "))?;
            }
        }
        out.flush()?;
        drop(out);
        let Some(news) = news.as_mut() else {
            return Ok(());
        };
        if news.blocking_recv().is_none() {
            return Ok(());
        }
        // A burst of appends: read them in one go.
        news.drain();
        unread = inbox::read_unread(&*log, &mapper, unread.resume, unread.after, None)?;
    }
}

/// The bar `huddle snapshot` draws while it reads a long log (only on a terminal).
struct ReadingBar(indicatif::ProgressBar);

impl snapshot::Progress for ReadingBar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "reading events.log {bar:40} {bytes}/{total_bytes} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.0
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }

    fn advance(&self, units: u64) {
        self.0.inc(units);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn plugins_list(dir: &std::path::Path) -> Result<()> {
    let workspace = Workspace::open(dir)?;
    let host = PluginHost::new()?;
    let slots = plugin_slots::list(&workspace, &host)?;
    println!("{:<15} {:<40} {:<6} SHA256", "SLOT", "PLUGIN", "WIT");
    for status in &slots {
        let sha = match &status.sha256 {
            Ok(sha) => sha.clone(),
            Err(error) => format!("unreadable: {error}"),
        };
        println!(
            "{:<15} {:<40} {:<6} {}",
            status.slot.name(),
            visible(&status.plugin),
            status.wit.unwrap_or("?"),
            visible(&sha)
        );
        if let Err(error) = &status.settings {
            println!("{:<15} ! {}", "", visible(error));
        }
    }
    let refused = slots.iter().filter(|s| s.settings.is_err()).count();
    if refused > 0 {
        anyhow::bail!(
            "{refused} plugin(s) refused their settings in huddle.toml or could not be loaded"
        );
    }
    Ok(())
}

/// `plugins check FILE` in a huddle directory: the verdict of `configure`
/// on its settings in every slot of huddle.toml that names FILE.
fn configure_where_used(
    dir: &std::path::Path,
    host: &PluginHost,
    file: &std::path::Path,
) -> Result<()> {
    let verdicts = plugin_slots::configure_where_used(dir, host, file)?;
    for (slot, verdict) in &verdicts {
        match verdict {
            Ok(()) => println!(
                "{}: configure accepts its settings in huddle.toml",
                slot.name()
            ),
            Err(error) => println!("{}: {}", slot.name(), visible(error)),
        }
    }
    let refused = verdicts.iter().filter(|(_, v)| v.is_err()).count();
    if refused > 0 {
        anyhow::bail!("the plugin refused its settings in huddle.toml in {refused} slot(s)");
    }
    Ok(())
}

/// `huddle plugins test`: the output on stdout, the rest on stderr, so the
/// output can be kept or compared.
fn plugins_test(trial: &huddle::services::plugin_trial::Trial) -> Result<()> {
    use huddle::services::plugin_trial::TrialOutput;
    let report = huddle::services::plugin_trial::run(trial)?;
    for line in &report.log {
        eprintln!(
            "host-log {}: {}",
            line.level.as_str().to_ascii_lowercase(),
            visible(&line.message)
        );
    }
    eprintln!(
        "{} implements {}; the call took {} ms",
        visible(&trial.plugin.display().to_string()),
        report.implements.name(),
        report.took.as_millis()
    );
    match report.outcome? {
        TrialOutput::Headings(mapped) => {
            for (event, heading) in mapped {
                let shown = heading.map_or("(hidden)".to_string(), |h| format!("{h:?}"));
                println!(
                    "#{} {} ({}) -> {}",
                    event.interaction,
                    visible(&event.kind),
                    visible(&event.actor),
                    visible(&shown)
                );
            }
        }
        TrialOutput::Rendered { text, .. } => print!("{}", visible(&text)),
        TrialOutput::Delivered { alerts } => println!("delivered {alerts} alert(s)"),
        TrialOutput::Refused { alerts, verdict } => {
            anyhow::bail!("the sink refused the batch of {alerts} alert(s): {verdict}")
        }
    }
    Ok(())
}

fn plugins_warm(dir: &std::path::Path) -> Result<()> {
    let workspace = Workspace::open(dir)?;
    let host = PluginHost::new()?;
    let warmed = plugin_slots::warm(&workspace, &host)?;
    for slot in &warmed {
        let plugin = visible(&slot.plugin);
        match &slot.outcome {
            Ok(ready) => {
                println!(
                    "{:<15} {plugin}: {} in {} ms",
                    slot.slot.name(),
                    ready.origin.describe(),
                    ready.elapsed.as_millis()
                );
                if let Some(reason) = &ready.rejected {
                    println!(
                        "{:<15} (the cached artifact was not used: {})",
                        "",
                        visible(reason)
                    );
                }
            }
            Err(error) => println!("{:<15} {plugin}: {}", slot.slot.name(), visible(error)),
        }
    }
    if let Some(cache) = host.cache_dir() {
        println!("cache: {}", visible(&cache.display().to_string()));
    }
    let failed = warmed.iter().filter(|s| s.outcome.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} plugin(s) could not be compiled");
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
