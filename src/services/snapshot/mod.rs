//! communication.md and archive.md, generated from the log.
//!
//! Interactions are grouped by number, ordered numerically, events in log
//! order. The K most recent interactions with a visible event go between the
//! markers of communication.md; all older ones go to archive.md. Headings
//! come from the heading-mapper plugin, text from the renderer plugin; the
//! host neutralises content first (see [`region`]) and checks what comes back
//! before anything is written.
//!
//! A [`Snapshotter`] keeps an index (per interaction: the offset, length and
//! heading of each visible event) and the blocks it rendered, so that after
//! one more event only what changed is re-rendered, and archive.md is
//! extended with the new blocks rather than re-rendered when that gives the
//! same bytes (a copy plus the blocks, renamed over it, up to 16 MiB: never
//! half a block after a crash; past that, appended in place). Memory
//! holds the index, never the archive: the archive is rendered in batches
//! straight into its file. A cold run drafts the archive's blocks while it
//! reads the log ([`draft`]). A cold run and any sequence of incremental
//! runs over the same log give byte-identical files.

mod draft;
mod region;
pub use region::inside_region;

/// The communication region as it is in communication.md now (`None`:
/// no file, or no markers in it).
pub fn current_region(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(COMMUNICATION_FILE)).ok()?;
    inside_region(&text).map(str::to_string)
}

/// The region rules as pure functions, public for the `region` fuzz target
/// and the replay of its corpus in `cargo test` (`fuzz/checks/region.rs`).
/// huddle itself applies them inside [`Snapshotter`].
pub mod fuzz_support {
    use crate::model::event::Event;

    /// Neutralises every field of `event` a renderer sees.
    pub fn neutralise_event(event: &mut Event) {
        super::region::neutralise_event(event);
    }

    /// A heading from the heading mapper, as the renderer receives it.
    pub fn neutralise_heading(heading: &str) -> String {
        super::region::neutralise_field(heading).into_owned()
    }

    /// Whether the host refuses a rendered block for holding a marker line.
    pub fn has_marker_line(block: &str) -> bool {
        super::region::has_marker_line(block)
    }

    /// communication.md (`existing`) with its region replaced by `region`.
    pub fn splice(existing: &str, region: &str) -> String {
        super::region::splice(existing, region)
    }
}

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use crate::backend::file::{LOG_FILE, STATE_DIR};
use crate::backend::files;
use crate::backend::{
    Backend, Continuity, EventStore, Fetch, Malformed, Position, ReadMark, StoreError,
};
use crate::model::config::ConfigError;
use crate::model::event::{types, Event, InteractionRef, NewEvent, HOST_ACTOR};
use crate::plugin::{
    Entry, Heading, Interaction, PluginError, PluginHost, PluginSpec, RenderContext,
    Rendered as Blocks, Section, Slot,
};
use crate::services::workspace::Workspace;
use std::sync::Arc;

/// The region between these two lines of communication.md belongs to huddle;
/// everything outside it belongs to people and is kept byte for byte.
pub use crate::model::names::{BEGIN_MARKER, END_MARKER};

pub use crate::model::names::{ARCHIVE_FILE, BACKUP_FILE, COMMUNICATION_FILE};

/// Events per heading-mapper call (and log bytes, whichever comes first:
/// the batch is copied into the plugin's memory, capped at 64 MiB by default,
/// and held twice more while queued).
const MAPPER_BATCH: usize = 4096;
const MAPPER_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Interactions per renderer call (and content bytes, whichever comes first).
const RENDER_BATCH: usize = 2048;
const RENDER_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Events per archive job handed to a render worker.
const RENDER_BATCH_EVENTS: usize = 8192;
/// Stale recent interactions weighing this much together are drafted by
/// the render workers as they are read back (see `draft_region`).
const REGION_DRAFT_BYTES: usize = 2 * RENDER_BATCH_BYTES;
/// Region blocks up to this size are kept from one run to the next.
const KEPT_BLOCK_BYTES: usize = 8 * 1024 * 1024;
/// An archive job weighing this much (a huge interaction, which a job
/// never splits) waits until no other such job is being rendered.
const HEAVY_JOB_BYTES: usize = 4 * RENDER_BATCH_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Log(#[from] StoreError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("plugin {plugin}: invalid output: {message}")]
    InvalidOutput { plugin: String, message: String },
    #[error("no longer allowed to write the snapshot (another daemon leads); nothing was written")]
    Fenced,
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// The disk refused a write (full, read-only, permission denied).
    pub fn is_write_refused(&self) -> bool {
        match self {
            SnapshotError::Io { source, .. } => crate::backend::file::is_refusal(source),
            SnapshotError::Log(store) => store.is_write_refused(),
            _ => false,
        }
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a snapshot run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Interactions in communication.md, ascending.
    pub recent: Vec<u64>,
    /// Interactions in archive.md.
    pub archived: usize,
    pub communication_written: bool,
    pub archive: ArchiveWrite,
    /// Events read from the log in this run.
    pub new_events: usize,
    /// Events a plugin could not handle, left out of the files this run.
    pub isolated: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveWrite {
    Unchanged,
    Appended(usize),
    Rewritten,
}

/// Where one visible event is, and its heading. Kept small: the index
/// holds one per visible event of the log.
#[derive(Debug, Clone, Copy)]
struct EventRef {
    /// The `offset` of the event's position (the fetch needs no line number).
    offset: u64,
    heading: u32,
    /// About what rendering it costs: its content's length plus a bit
    /// ([`render_weight`]), so that archive batches are cut by size before
    /// any event is read back (in the padding: the ref stays 16 bytes).
    weight: u32,
}

impl EventRef {
    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            line: 0,
        }
    }
}

/// Events grouped into interactions as the snapshot hands them to a
/// renderer: the events `headings` shows (one entry per event, `None`
/// hides it), by interaction number, in log order, every field neutralised.
/// For running a renderer outside a huddle directory (`huddle plugins test`).
pub fn interactions_of(events: Vec<Event>, headings: Vec<Option<String>>) -> Vec<Interaction> {
    let mut grouped: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
    for (mut event, heading) in events.into_iter().zip(headings) {
        let Some(heading) = heading else { continue };
        region::neutralise_event(&mut event);
        grouped.entry(event.interaction).or_default().push(Entry {
            heading: region::neutralise_field(&heading).into(),
            event,
        });
    }
    grouped
        .into_iter()
        .map(|(number, entries)| Interaction { number, entries })
        .collect()
}

#[derive(Default)]
struct Index {
    mapper_key: String,
    cursor: Position,
    /// Visible events per interaction, in log order.
    interactions: BTreeMap<u64, Vec<EventRef>>,
    /// Each heading as the renderer receives it (neutralised), by id.
    headings: Vec<Arc<str>>,
    /// The mapper's headings as it gave them, to their ids (looked up
    /// for every event read).
    heading_ids: HashMap<String, u32, foldhash::fast::RandomState>,
}

impl Index {
    fn heading_id(&mut self, heading: String) -> u32 {
        if let Some(id) = self.heading_ids.get(&heading) {
            return *id;
        }
        let id = self.headings.len() as u32;
        self.headings
            .push(region::neutralise_field(&heading).into());
        self.heading_ids.insert(heading, id);
        id
    }

    /// One interaction with its visible events read back from the log and
    /// every field a renderer sees neutralised.
    fn interaction(
        &self,
        fetcher: &mut dyn Fetch,
        number: u64,
    ) -> Result<Interaction, SnapshotError> {
        let refs = &self.interactions[&number];
        let mut entries = Vec::with_capacity(refs.len());
        for event_ref in refs {
            let mut event = fetcher.fetch(event_ref.position())?;
            region::neutralise_event(&mut event);
            entries.push(Entry {
                heading: self.headings[event_ref.heading as usize].clone(),
                event,
            });
        }
        Ok(Interaction { number, entries })
    }
}

#[derive(Default)]
struct Rendered {
    renderer_key: String,
    k: usize,
    /// Communication blocks by interaction, with the event count they show.
    blocks: HashMap<u64, (usize, String)>,
    archive: Option<ArchiveState>,
}

/// What archive.md holds, as far as this snapshotter wrote it.
#[derive(Clone, Copy)]
struct ArchiveState {
    /// Highest interaction in the file.
    upto: Option<u64>,
    /// The file's length after the last write.
    len: u64,
    /// An interaction already in the file got a new event.
    dirty: bool,
}

/// Generates the snapshot files of one huddle directory, incrementally.
pub struct Snapshotter {
    dir: PathBuf,
    index: Index,
    rendered: Rendered,
    /// Events left out in the current run, to report once it is written.
    isolated: Vec<IsolatedEvent>,
    /// What the index has read of the log, to notice a replaced log.
    mark: ReadMark,
    /// Told how far a long read has gone (the CLI draws a bar).
    pub progress: Option<Arc<dyn Progress>>,
    /// Asked just before anything is written: false means this process may
    /// no longer write the files (a leader replaced while a snapshot ran).
    fence: Option<Fence>,
    /// The backend the runs read, with what it was opened from: kept while
    /// `[backend]` and `[log]` stay the same (on JetStream a new handle is
    /// a new connection; huddle.toml is read again at every run).
    backend: Option<(String, Arc<dyn Backend>)>,
}

/// Reports on a long read of the log, in the backend's units (bytes of the
/// file log), from a snapshot thread.
pub trait Progress: Send + Sync {
    /// A read of `total` units starts; called only when it is long.
    fn start(&self, total: u64);
    fn advance(&self, units: u64);
    fn finish(&self);
}

/// Below this much to read, no progress is reported.
const PROGRESS_ABOVE: u64 = 32 * 1024 * 1024;

/// See [`Snapshotter::with_fence`].
pub type Fence = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl Snapshotter {
    /// What a renderer is told about the call (WIT 0.2.0): the section, K
    /// and the directory's name. K is part of the renderer's cache key.
    fn render_context(&self, section: Section) -> RenderContext {
        RenderContext {
            section,
            k: u32::try_from(self.rendered.k).unwrap_or(u32::MAX),
            directory: self
                .dir
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    pub fn new(dir: impl Into<PathBuf>) -> Snapshotter {
        Snapshotter {
            dir: dir.into(),
            index: Index::default(),
            rendered: Rendered::default(),
            isolated: Vec::new(),
            mark: ReadMark::default(),
            progress: None,
            fence: None,
            backend: None,
        }
    }

    /// The backend of `workspace`: the handle of the last run while its
    /// settings are unchanged, else a new one.
    pub fn backend(&mut self, workspace: &Workspace) -> Arc<dyn Backend> {
        let config = &workspace.config;
        let key = format!(
            "{:?} {:?} {:?}",
            config.backend,
            config.log,
            config.backend.token.as_ref().map(|t| t.expose())
        );
        match &self.backend {
            Some((kept, backend)) if *kept == key => backend.clone(),
            _ => {
                let backend = workspace.backend();
                self.backend = Some((key, backend.clone()));
                backend
            }
        }
    }

    /// Writes only while `fence` says so: a run that finds it false when
    /// the files are rendered writes nothing and fails with
    /// [`SnapshotError::Fenced`].
    pub fn with_fence(mut self, fence: Fence) -> Snapshotter {
        self.fence = Some(fence);
        self
    }

    /// Brings both files up to date with the log; `k` overrides huddle.toml.
    /// On failure the files stay as they were, one `error` event is logged,
    /// and the error is returned.
    pub fn update(
        &mut self,
        host: &PluginHost,
        k: Option<usize>,
    ) -> Result<Outcome, SnapshotError> {
        let workspace = Workspace::open(&self.dir)?;
        let lock = self.lock()?;
        self.remove_abandoned_temps();
        let result = self.try_update(&workspace, host, k);
        if result.is_err() {
            // Under the lock: no other snapshot writer may see, or sweep,
            // the restore's temp file.
            self.restore_backup();
        }
        drop(lock);
        if let Err(SnapshotError::Fenced) = &result {
            // Nothing was written and nothing went wrong: not ours to write.
            return result;
        }
        if let Err(error) = &result {
            // What we hold in memory may be half-applied: start cold next time.
            self.index = Index::default();
            self.rendered = Rendered::default();
            let report = NewEvent::new(
                InteractionRef::Number(0),
                HOST_ACTOR,
                types::ERROR,
                format!("Snapshot failed and was rolled back (files left as they were): {error}"),
            )
            .cut_to_fit();
            // If the log is not writable either, the caller still gets the error.
            let _ = self.backend(&workspace).append(report);
        }
        result
    }

    /// Serialises snapshot writers (a daemon and a `huddle snapshot`, say).
    fn lock(&self) -> Result<File, SnapshotError> {
        let (file, path) = self.lock_file()?;
        fs4::FileExt::lock(&file).map_err(io_error("lock", &path))?;
        Ok(file)
    }

    fn lock_file(&self) -> Result<(File, PathBuf), SnapshotError> {
        let state = self.dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(io_error("create", &state))?;
        let path = state.join("snapshot.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        Ok((file, path))
    }

    /// Removes the temp files a killed snapshot writer left, if no writer
    /// is at work now. A daemon calls it as it starts, leader or not: the
    /// next leader may be a while coming, and a follower that stops before
    /// then must not leave a killed leader's litter in the directory.
    /// Returns false when a writer holds the lock (its temp files are live).
    pub fn remove_abandoned_temps_if_idle(&self) -> Result<bool, SnapshotError> {
        let (file, path) = self.lock_file()?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {
                self.remove_abandoned_temps();
                Ok(true)
            }
            Err(fs4::TryLockError::WouldBlock) => Ok(false),
            Err(fs4::TryLockError::Error(error)) => Err(io_error("lock", &path)(error)),
        }
    }

    /// A snapshot writer killed mid-write (kill -9, a crash) leaves its temp
    /// file behind, as large as the archive; every writer of these files
    /// holds the snapshot lock, so under it any such file is abandoned.
    fn remove_abandoned_temps(&self) {
        for name in [COMMUNICATION_FILE, BACKUP_FILE, ARCHIVE_FILE] {
            if let Err(error) = files::remove_abandoned_temps(&self.dir.join(name)) {
                tracing::warn!(%error, file = name, "cannot remove temp files left by a killed snapshot");
            }
        }
    }

    fn restore_backup(&self) {
        let communication = self.dir.join(COMMUNICATION_FILE);
        let backup = self.dir.join(BACKUP_FILE);
        let damaged = std::fs::read_to_string(&communication).map_or(true, |text| !is_good(&text));
        if damaged && backup.exists() {
            if let Ok(bytes) = std::fs::read(&backup) {
                let _ = files::replace_if_changed(&communication, &bytes);
            }
        }
    }

    fn try_update(
        &mut self,
        workspace: &Workspace,
        host: &PluginHost,
        k: Option<usize>,
    ) -> Result<Outcome, SnapshotError> {
        let started = std::time::Instant::now();
        let k = k.unwrap_or(workspace.config.snapshot.k);
        let mapper = workspace.slot_spec(Slot::HeadingMapper);
        let renderer = workspace.slot_spec(Slot::Renderer);
        let mapper_key = plugin_key(host, &mapper, Slot::HeadingMapper)?;
        let renderer_key = plugin_key(host, &renderer, Slot::Renderer)?;
        if self.index.mapper_key != mapper_key {
            self.index = Index {
                mapper_key,
                ..Index::default()
            };
            self.rendered = Rendered::default();
        }
        if self.rendered.renderer_key != renderer_key || self.rendered.k != k {
            self.rendered = Rendered {
                renderer_key,
                k,
                ..Rendered::default()
            };
        }

        self.isolated.clear();
        let log = self.backend(workspace);
        if let Continuity::Replaced(why) = log.continuity(&self.mark)? {
            // Every offset in the index points into the old file: start cold.
            tracing::warn!(%why, "events.log was replaced: rebuilding the snapshot from scratch");
            self.index = Index {
                mapper_key: std::mem::take(&mut self.index.mapper_key),
                ..Index::default()
            };
            self.rendered = Rendered {
                renderer_key: std::mem::take(&mut self.rendered.renderer_key),
                k,
                ..Rendered::default()
            };
        }
        let phase = std::time::Instant::now();
        let archive_path = workspace.dir.join(ARCHIVE_FILE);
        // A cold run drafts the archive's blocks as it reads the log (see
        // [`draft`]): every event is read once, and both cores are busy.
        let cold = self.index.interactions.is_empty() && self.rendered.archive.is_none();
        // Interaction numbers are handed out one after another, so the
        // recent ones are most likely the K below the highest number near
        // the log's end: those are drafted for communication.md instead. A
        // wrong guess costs only time (their archive blocks are rendered
        // from the index, the recent ones drafted as they are read back).
        let expected_recent = (cold && k > 0)
            .then(|| log.highest_interaction_near_end())
            .flatten()
            .map(|highest| highest.saturating_sub(k as u64 - 1)..=highest);
        let draft_plan = cold.then(|| draft::DraftPlan {
            host,
            renderer: &renderer,
            context: self.render_context(Section::Archive),
            target: &archive_path,
            recent: expected_recent
                .map(|range| (range, self.render_context(Section::Communication))),
            replaces_target: true,
        });
        let (new_events, draft) =
            self.index_new_events(&*log, host, &mapper, draft_plan.as_ref())?;
        tracing::debug!(new_events, elapsed = ?phase.elapsed(), "snapshot: indexed the new events");
        self.mark = log.mark(self.index.cursor)?;

        let keys: Vec<u64> = self.index.interactions.keys().copied().collect();
        let split = keys.len().saturating_sub(k);
        let (archived, recent) = keys.split_at(split);

        let mut fetcher = log.fetcher()?;

        // Render everything first: a failure here leaves both files untouched.
        let phase = std::time::Instant::now();
        let communication_path = workspace.dir.join(COMMUNICATION_FILE);
        self.render_region(
            host,
            &renderer,
            &mut *fetcher,
            recent,
            &communication_path,
            draft.as_ref(),
        )?;
        tracing::debug!(elapsed = ?phase.elapsed(), "snapshot: rendered the region");

        // communication.md goes straight into a temp file (kept until the
        // archive is rendered too): it is as large as the region's blocks,
        // and need not sit in memory beside them, nor the old one either
        // (only the people's text around its region is read).
        let outside = region::read_outside(&communication_path)
            .map_err(io_error("read", &communication_path))?;
        let blocks: Vec<&str> = recent
            .iter()
            .map(|number| self.rendered.blocks[number].1.as_str())
            .collect();
        let mut spliced = files::temp_beside(&communication_path)
            .map_err(io_error("create a temp file for", &communication_path))?;
        {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, spliced.as_file_mut());
            region::write_spliced(
                &outside.before,
                outside.after.as_deref(),
                &blocks,
                |piece| out.write_all(piece.as_bytes()),
            )
            .and_then(|()| out.flush())
            .map_err(io_error("write", &communication_path))?;
        }
        // A huge interaction's block is not kept for the next run: it would
        // sit in memory beside the archive's batches (and, in the daemon,
        // for good); the next run renders it again if it is still recent.
        self.rendered
            .blocks
            .retain(|_, (_, block)| block.len() <= KEPT_BLOCK_BYTES);

        let plan = self.plan_archive(&archive_path, archived);
        let pending_archive = match plan {
            ArchivePlan::Unchanged => PendingArchive::Unchanged,
            // Both render into a file, never into memory: a daemon that
            // fell behind may archive hundreds of thousands of events at once.
            ArchivePlan::Append(ref from) => {
                let blocks =
                    self.render_archive_to_temp(host, &renderer, &*log, from, &archive_path)?;
                PendingArchive::Append(blocks, from.len())
            }
            ArchivePlan::Rewrite => match draft {
                Some(draft) => {
                    match self.archive_from_draft(
                        draft,
                        host,
                        &renderer,
                        &*log,
                        archived,
                        &archive_path,
                    )? {
                        Some(tmp) => PendingArchive::Rewrite(tmp),
                        None => PendingArchive::Unchanged,
                    }
                }
                None => PendingArchive::Rewrite(self.render_archive_to_temp(
                    host,
                    &renderer,
                    &*log,
                    archived,
                    &archive_path,
                )?),
            },
        };

        tracing::debug!(elapsed = ?phase.elapsed(), "snapshot: rendered the archive");
        if self.fence.as_ref().is_some_and(|may_write| !may_write()) {
            return Err(SnapshotError::Fenced);
        }
        // Now write: archive first, then communication.md (with its .bak).
        let archive = match pending_archive {
            PendingArchive::Unchanged => ArchiveWrite::Unchanged,
            PendingArchive::Append(blocks, count) => {
                extend_archive(&archive_path, blocks)?;
                ArchiveWrite::Appended(count)
            }
            PendingArchive::Rewrite(tmp) => {
                let written = files::commit_if_changed(tmp, &archive_path)
                    .map_err(io_error("replace", &archive_path))?;
                if written {
                    ArchiveWrite::Rewritten
                } else {
                    ArchiveWrite::Unchanged
                }
            }
        };
        let archive_len = std::fs::metadata(&archive_path)
            .map(|m| m.len())
            .unwrap_or(0);
        self.rendered.archive = Some(ArchiveState {
            upto: archived.last().copied(),
            len: archive_len,
            dirty: false,
        });

        // communication.md.bak is always a good snapshot: the one about to be
        // replaced, then (once the new one is in place) the new one.
        let communication_written = !files::same_contents(spliced.path(), &communication_path)
            .map_err(io_error("read", &communication_path))?;
        let backup = workspace.dir.join(BACKUP_FILE);
        if communication_written {
            if outside.had_region() {
                files::copy_if_changed(&communication_path, &backup)
                    .map_err(io_error("write", &backup))?;
            }
            files::commit(spliced, &communication_path)
                .map_err(io_error("replace", &communication_path))?;
        }
        // Also when communication.md is already current: a run killed
        // between the two writes left the backup one snapshot behind.
        files::copy_if_changed(&communication_path, &backup).map_err(io_error("write", &backup))?;

        crate::services::status::record_snapshot(
            &workspace.dir,
            self.index.cursor,
            started.elapsed(),
        );
        let isolated = self.isolated.len();
        self.report_isolated(&*log, &mut *fetcher)?;
        Ok(Outcome {
            recent: recent.to_vec(),
            archived: archived.len(),
            communication_written,
            archive,
            new_events,
            isolated,
        })
    }

    /// Reads the events appended since the last run, asks the mapper for their
    /// headings (in batches) and records the visible ones; with a
    /// `draft_plan`, also drafts the archive's blocks.
    fn index_new_events(
        &mut self,
        log: &dyn Backend,
        host: &PluginHost,
        mapper: &PluginSpec,
        draft_plan: Option<&draft::DraftPlan<'_>>,
    ) -> Result<(usize, Option<draft::Draft>), SnapshotError> {
        let unread = log.remaining(self.index.cursor)?;
        let bar = self
            .progress
            .clone()
            .filter(|_| unread > PROGRESS_ABOVE)
            .inspect(|bar| bar.start(unread));
        // This thread parses the log while a worker asks the mapper for
        // headings, batch by batch (results come back in order: one worker).
        let mut count = 0usize;
        let mut failure: Option<SnapshotError> = None;
        let mut scanned = Ok(self.index.cursor);
        let draft_plan = draft_plan.filter(|_| unread > 0);
        let draft = std::thread::scope(|scope| {
            let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<MapperJob>(2);
            let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<Mapped, PluginError>>();
            let drafter = draft_plan.and_then(|plan| {
                draft::Drafter::start(scope, plan)
                    .inspect_err(|error| {
                        tracing::debug!(%error, "snapshot: not drafting the archive");
                    })
                    .ok()
            });
            let dir = &self.dir;
            let mapper_worker = std::thread::Builder::new()
                .name("huddle-map".into())
                .spawn_scoped(scope, move || {
                    let mut drafter = drafter;
                    for (places, events) in job_rx {
                        let mapped = host.headings_isolating(mapper, &events);
                        // The events are freed here or by the render workers,
                        // not by the parser, the busiest thread.
                        if let (Ok(headings), Some(drafter)) = (&mapped, &mut drafter) {
                            drafter.add(events, headings);
                        }
                        if done_tx
                            .send(mapped.map(|headings| (places, headings)))
                            .is_err()
                        {
                            return None;
                        }
                    }
                    drafter.and_then(draft::Drafter::finish)
                });
            let mapper_worker = match mapper_worker {
                Ok(worker) => worker,
                Err(error) => {
                    failure = Some(io_error("start the heading mapper's thread for", dir)(
                        error,
                    ));
                    return None;
                }
            };
            let mut places = Vec::with_capacity(MAPPER_BATCH);
            let mut events = Vec::with_capacity(MAPPER_BATCH);
            let mut batch_bytes = 0;
            let start = self.index.cursor;
            scanned = crate::backend::scan(&*log, start, |record| {
                let len = record.next.offset - record.at.offset;
                places.push(Place {
                    line: record.at.line,
                    offset: record.at.offset,
                    interaction: record.event.interaction,
                    weight: u32::try_from(render_weight(&record.event)).unwrap_or(u32::MAX),
                });
                events.push(record.event);
                batch_bytes += len;
                if events.len() == MAPPER_BATCH || batch_bytes >= MAPPER_BATCH_BYTES {
                    count += events.len();
                    if let Some(bar) = &bar {
                        bar.advance(batch_bytes);
                    }
                    batch_bytes = 0;
                    let job = (std::mem::take(&mut places), std::mem::take(&mut events));
                    // A closed channel means the worker stopped; its result says why.
                    let _ = job_tx.send(job);
                    while let Ok(done) = done_rx.try_recv() {
                        self.apply_mapped(done, &mut failure);
                    }
                }
                Ok(())
            });
            count += events.len();
            if !events.is_empty() {
                let _ = job_tx.send((places, events));
            }
            drop(job_tx);
            for done in done_rx {
                self.apply_mapped(done, &mut failure);
            }
            mapper_worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let cursor = scanned?;
        if let Some(error) = failure {
            return Err(error);
        }
        if let Some(bar) = bar {
            bar.finish();
        }
        self.index.cursor = cursor;
        Ok((count, draft))
    }

    /// archive.md's new contents from a cold run's drafts, rendering from
    /// the index only the interactions no draft shows whole; `None` when
    /// archive.md already holds exactly them.
    fn archive_from_draft(
        &mut self,
        draft: draft::Draft,
        host: &PluginHost,
        renderer: &PluginSpec,
        log: &dyn Backend,
        archived: &[u64],
        archive_path: &Path,
    ) -> Result<Option<tempfile::NamedTempFile>, SnapshotError> {
        let counts = self.event_counts(archived);
        let (tmp, isolated) = draft.assemble(&counts, archive_path, |redo, sink| {
            self.render_archive(host, renderer, log, redo, sink)
        })?;
        self.note_isolated_archive(isolated);
        Ok(tmp)
    }

    /// Records the visible events of one mapped batch.
    fn apply_mapped(
        &mut self,
        mapped: Result<Mapped, PluginError>,
        failure: &mut Option<SnapshotError>,
    ) {
        if failure.is_some() {
            return;
        }
        let (places, headings) = match mapped {
            Ok(mapped) => mapped,
            Err(error) => {
                *failure = Some(error.into());
                return;
            }
        };
        for (place, heading) in places.into_iter().zip(headings) {
            let heading = match heading {
                Heading::Shown(heading) => heading,
                Heading::Hidden => continue,
                Heading::Isolated(reason) => {
                    self.isolated.push(IsolatedEvent {
                        line: Some(place.line),
                        at: EventRef {
                            offset: place.offset,
                            heading: 0,
                            weight: place.weight,
                        },
                        interaction: place.interaction,
                        reason,
                    });
                    continue;
                }
            };
            if let Some(archive) = &mut self.rendered.archive {
                if archive.upto.is_some_and(|upto| place.interaction <= upto) {
                    archive.dirty = true;
                }
            }
            let heading = self.index.heading_id(heading);
            self.index
                .interactions
                .entry(place.interaction)
                .or_default()
                .push(EventRef {
                    offset: place.offset,
                    heading,
                    weight: place.weight,
                });
        }
    }

    /// The text between the markers: one block per recent interaction,
    /// re-rendering only those whose events changed.
    /// Brings the blocks of the `recent` interactions up to date (those
    /// whose event count changed are rendered again) and drops the others.
    /// The stale ones are read back and rendered a bounded batch at a time,
    /// so a few huge interactions are never all in memory at once.
    fn render_region(
        &mut self,
        host: &PluginHost,
        renderer: &PluginSpec,
        fetcher: &mut dyn Fetch,
        recent: &[u64],
        communication_path: &Path,
        cold_draft: Option<&draft::Draft>,
    ) -> Result<(), SnapshotError> {
        let mut stale: Vec<u64> = recent
            .iter()
            .copied()
            .filter(|n| {
                let count = self.index.interactions[n].len();
                self.rendered
                    .blocks
                    .get(n)
                    .is_none_or(|(shown, _)| *shown != count)
            })
            .collect();
        let context = self.render_context(Section::Communication);
        if let Some(draft) = cold_draft {
            let drafted = draft.recent_blocks(&self.event_counts(&stale))?;
            tracing::debug!(
                drafted = drafted.len(),
                recent = stale.len(),
                "snapshot: drafted the recent interactions while reading the log"
            );
            self.take_region_blocks(&mut stale, drafted);
        }
        // Every interaction this plan drafts is for the region: all are
        // "recent", so `recent_blocks` gives each one whole draft.
        let plan = draft::DraftPlan {
            host,
            renderer,
            context: context.clone(),
            target: communication_path,
            recent: Some((0..=u64::MAX, context.clone())),
            replaces_target: false,
        };
        let drafted = self.draft_region(&plan, fetcher, &stale)?;
        self.take_region_blocks(&mut stale, drafted);
        let mut start = 0;
        while start < stale.len() {
            let mut end = start;
            let mut weight = 0usize;
            while end < stale.len() && (end == start || weight < RENDER_BATCH_BYTES) {
                weight += self.index.interactions[&stale[end]]
                    .iter()
                    .map(|r| r.weight as usize)
                    .sum::<usize>();
                end += 1;
            }
            let batch = &stale[start..end];
            let interactions = batch
                .iter()
                .map(|n| self.index.interaction(fetcher, *n))
                .collect::<Result<Vec<_>, _>>()?;
            let rendered =
                host.render_isolating(renderer, &context, &interactions, &block_problem)?;
            drop(interactions);
            self.note_isolated(batch, &rendered);
            for (number, block) in batch.iter().zip(rendered.blocks) {
                let count = self.index.interactions[number].len();
                self.rendered.blocks.insert(*number, (count, block));
            }
            start = end;
        }
        self.rendered
            .blocks
            .retain(|n, _| recent.binary_search(n).is_ok());
        Ok(())
    }

    /// The blocks of the `stale` recent interactions, drafted as they are
    /// read back from the log when they weigh enough for the render
    /// workers to pay off (a few huge interactions: read, neutralised and
    /// rendered in parts on one thread, they leave the other core idle).
    /// This thread reads; the workers neutralise and render. What no draft
    /// shows whole (a failed or refused part, a block that left an event
    /// out) is left to the render from the index, which meets the same and
    /// reports it.
    fn draft_region(
        &self,
        plan: &draft::DraftPlan<'_>,
        fetcher: &mut dyn Fetch,
        stale: &[u64],
    ) -> Result<HashMap<u64, String>, SnapshotError> {
        let weight: usize = stale
            .iter()
            .flat_map(|number| &self.index.interactions[number])
            .map(|event_ref| event_ref.weight as usize)
            .sum();
        if weight < REGION_DRAFT_BYTES {
            return Ok(HashMap::new());
        }
        // The drafter takes headings as the mapper gave them.
        let mut given: Vec<Option<&str>> = vec![None; self.index.headings.len()];
        for (heading, id) in &self.index.heading_ids {
            if let Some(slot) = given.get_mut(*id as usize) {
                *slot = Some(heading.as_str());
            }
        }
        let Some(given) = given.into_iter().collect::<Option<Vec<&str>>>() else {
            return Ok(HashMap::new());
        };
        let draft = std::thread::scope(|scope| -> Result<_, SnapshotError> {
            let mut drafter = match draft::Drafter::start(scope, plan) {
                Ok(drafter) => drafter,
                Err(error) => {
                    tracing::debug!(%error, "snapshot: not drafting the region");
                    return Ok(None);
                }
            };
            for number in stale {
                for refs in self.index.interactions[number].chunks(MAPPER_BATCH) {
                    let mut events = Vec::with_capacity(refs.len());
                    let mut headings = Vec::with_capacity(refs.len());
                    for event_ref in refs {
                        events.push(fetcher.fetch(event_ref.position())?);
                        headings.push(Heading::Shown(
                            given[event_ref.heading as usize].to_string(),
                        ));
                    }
                    drafter.add(events, &headings);
                }
            }
            Ok(drafter.finish())
        })?;
        let Some(draft) = draft else {
            return Ok(HashMap::new());
        };
        let blocks = draft.recent_blocks(&self.event_counts(stale))?;
        tracing::debug!(
            drafted = blocks.len(),
            stale = stale.len(),
            "snapshot: drafted the region's blocks while reading them back"
        );
        Ok(blocks)
    }

    /// Each of `numbers` with its visible events in the index.
    fn event_counts(&self, numbers: &[u64]) -> Vec<(u64, usize)> {
        numbers
            .iter()
            .map(|number| (*number, self.index.interactions[number].len()))
            .collect()
    }

    /// Keeps the region's `drafted` blocks; what is still `stale` is what
    /// they do not cover.
    fn take_region_blocks(&mut self, stale: &mut Vec<u64>, drafted: HashMap<u64, String>) {
        stale.retain(|number| !drafted.contains_key(number));
        for (number, block) in drafted {
            let count = self.index.interactions[&number].len();
            self.rendered.blocks.insert(number, (count, block));
        }
    }

    fn plan_archive(&self, path: &Path, archived: &[u64]) -> ArchivePlan {
        let Some(state) = self.rendered.archive else {
            return ArchivePlan::Rewrite;
        };
        let on_disk = std::fs::metadata(path).map(|m| m.len()).ok();
        if state.dirty || on_disk != Some(state.len) {
            return ArchivePlan::Rewrite;
        }
        let first_new = match state.upto {
            Some(upto) => archived.partition_point(|n| *n <= upto),
            None => 0,
        };
        // Everything up to `upto` must be exactly what the file holds.
        if state.upto.is_some() && archived.get(first_new.wrapping_sub(1)) != state.upto.as_ref() {
            return ArchivePlan::Rewrite;
        }
        if first_new == archived.len() {
            ArchivePlan::Unchanged
        } else {
            ArchivePlan::Append(archived[first_new..].to_vec())
        }
    }

    /// Renders the archive blocks of `numbers` into a temp file beside
    /// `archive_path`.
    fn render_archive_to_temp(
        &mut self,
        host: &PluginHost,
        renderer: &PluginSpec,
        log: &dyn Backend,
        numbers: &[u64],
        archive_path: &Path,
    ) -> Result<tempfile::NamedTempFile, SnapshotError> {
        let mut tmp = files::temp_beside(archive_path)
            .map_err(io_error("create a temp file for", archive_path))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let isolated = self.render_archive(host, renderer, log, numbers, &mut |_, block| {
            out.write_all(block.as_bytes())
                .map_err(io_error("write", archive_path))
        })?;
        out.flush().map_err(io_error("write", archive_path))?;
        drop(out);
        self.note_isolated_archive(isolated);
        Ok(tmp)
    }

    /// Renders archive blocks in bounded batches, handing each to `sink` in
    /// order. Two workers each read their batch's events back from the log
    /// and render it, while this thread plans the batches and writes, so a
    /// cold snapshot of a large log uses both cores; at most a few batches
    /// are in flight, so memory does not grow with the archive.
    fn render_archive(
        &self,
        host: &PluginHost,
        renderer: &PluginSpec,
        log: &dyn Backend,
        numbers: &[u64],
        sink: &mut dyn FnMut(u64, &str) -> Result<(), SnapshotError>,
    ) -> Result<Vec<ArchiveIsolation>, SnapshotError> {
        type Rendered = (usize, Vec<u64>, Result<Blocks, SnapshotError>);
        let (job_tx, job_rx) =
            std::sync::mpsc::sync_channel::<(usize, Vec<u64>)>(RENDER_WORKERS * 2);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Rendered>();
        let job_rx = std::sync::Mutex::new(job_rx);
        let index = &self.index;
        let context = &self.render_context(Section::Archive);
        std::thread::scope(|scope| {
            let mut workers = 0;
            for _ in 0..RENDER_WORKERS {
                let (job_rx, done_tx) = (&job_rx, done_tx.clone());
                let worker = std::thread::Builder::new().name("huddle-archive".into());
                let started = worker.spawn_scoped(scope, move || {
                    let mut fetcher = match log.fetcher() {
                        Ok(fetcher) => fetcher,
                        Err(error) => {
                            let _ = done_tx.send((usize::MAX, Vec::new(), Err(error.into())));
                            return;
                        }
                    };
                    loop {
                        let job = job_rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((seq, batch))) = job else { return };
                        let blocks = render_archive_batch(
                            index,
                            context,
                            host,
                            renderer,
                            &mut *fetcher,
                            &batch,
                        );
                        if done_tx.send((seq, batch, blocks)).is_err() {
                            return;
                        }
                    }
                });
                match started {
                    Ok(_) => workers += 1,
                    // One worker does the job alone, only slower.
                    Err(error) if workers > 0 => {
                        tracing::debug!(%error, "snapshot: one archive worker fewer");
                    }
                    Err(error) => {
                        return Err(io_error(
                            "start a thread to render the archive of",
                            &self.dir,
                        )(error));
                    }
                }
            }
            drop(done_tx);

            let mut writer = OrderedWriter::default();
            let mut sent = 0usize;
            let mut heavy_in_flight: Option<usize> = None;
            let mut batch = Vec::new();
            let mut events = 0usize;
            // Cut by size too: a worker holds its whole batch's blocks until
            // they are written, so long contents would fill memory.
            let mut weight = 0usize;
            for (i, number) in numbers.iter().enumerate() {
                batch.push(*number);
                let refs = &index.interactions[number];
                events += refs.len();
                weight += refs.iter().map(|r| r.weight as usize).sum::<usize>();
                let last = i + 1 == numbers.len();
                if last
                    || batch.len() >= RENDER_BATCH
                    || events >= RENDER_BATCH_EVENTS
                    || weight >= RENDER_BATCH_BYTES
                {
                    // A job several times the usual weight is a huge
                    // interaction: its worker holds all its events and its
                    // whole block. One at a time, or two of them would
                    // double the peak.
                    let heavy = weight >= HEAVY_JOB_BYTES;
                    if heavy {
                        while heavy_in_flight.is_some_and(|seq| writer.next <= seq) {
                            match done_rx.recv() {
                                Ok(done) => writer.accept(done, sink)?,
                                Err(_) => break,
                            }
                        }
                    }
                    if job_tx.send((sent, std::mem::take(&mut batch))).is_err() {
                        break;
                    }
                    if heavy {
                        heavy_in_flight = Some(sent);
                    }
                    sent += 1;
                    events = 0;
                    weight = 0;
                    while let Ok(done) = done_rx.try_recv() {
                        writer.accept(done, sink)?;
                    }
                }
            }
            drop(job_tx);
            while writer.next < sent {
                match done_rx.recv() {
                    Ok(done) => writer.accept(done, sink)?,
                    Err(_) => break,
                }
            }
            Ok(writer.isolated)
        })
    }

    /// Records the entries the renderer left out of communication.md.
    fn note_isolated(&mut self, numbers: &[u64], rendered: &Blocks) {
        let found = rendered
            .isolated
            .iter()
            .filter_map(|isolated| {
                let number = *numbers.get(isolated.interaction)?;
                Some((number, isolated.entry, isolated.reason.clone()))
            })
            .collect();
        self.note_isolated_archive(found);
    }

    /// Records left-out entries given as (interaction, entry, reason); a
    /// whole interaction left out counts each of its events.
    fn note_isolated_archive(&mut self, found: Vec<ArchiveIsolation>) {
        for (number, entry, reason) in found {
            let Some(refs) = self.index.interactions.get(&number) else {
                continue;
            };
            let chosen: Vec<EventRef> = match entry {
                Some(entry) => refs.get(entry).copied().into_iter().collect(),
                None => refs.clone(),
            };
            for at in chosen {
                self.isolated.push(IsolatedEvent {
                    line: None,
                    at,
                    interaction: number,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Sets the events left out this run aside in events.error.log (once
    /// each, however often the files are regenerated) with one `error`
    /// event for each newly left out, or one for all the events of an
    /// interaction left out for the same reason (an interaction too large
    /// for the renderer is one problem, not one per event).
    fn report_isolated(
        &mut self,
        log: &dyn Backend,
        fetcher: &mut dyn Fetch,
    ) -> Result<(), SnapshotError> {
        let isolated = std::mem::take(&mut self.isolated);
        let mut messages = Vec::new();
        for group in
            isolated.chunk_by(|a, b| a.interaction == b.interaction && a.reason == b.reason)
        {
            let mut lines = Vec::with_capacity(group.len());
            for isolated in group {
                let (_, raw) = fetcher.fetch_stored(isolated.at.position())?;
                lines.push(Malformed {
                    line: isolated.line.unwrap_or(0),
                    offset: isolated.at.offset,
                    reason: format!(
                        "left out of the snapshot (interaction {}): {}",
                        isolated.interaction, isolated.reason
                    ),
                    raw,
                });
            }
            let fresh = log.set_aside(&lines)?;
            match fresh.as_slice() {
                [] => {}
                [line] => messages.push(format!(
                    "An event a plugin cannot handle was left out of the snapshot (byte offset {} of {LOG_FILE}; the rest renders) and recorded in {}: {}",
                    line.offset,
                    crate::backend::file::QUARANTINE_FILE,
                    line.reason
                )),
                [first, .., last] => messages.push(format!(
                    "{} events of interaction {} a plugin cannot handle were left out of the snapshot (byte offsets {} to {} of {LOG_FILE}; the rest renders) and recorded in {}: {}",
                    fresh.len(),
                    group[0].interaction,
                    first.offset,
                    last.offset,
                    crate::backend::file::QUARANTINE_FILE,
                    first.reason
                )),
            }
        }
        crate::backend::append_reports(log, messages)?;
        Ok(())
    }
}

/// An interaction number, the entry left out (`None`: all of them) and why.
type ArchiveIsolation = (u64, Option<usize>, String);

/// An event a plugin could not handle, left out of this run's files.
struct IsolatedEvent {
    /// Its line number, when known.
    line: Option<u64>,
    at: EventRef,
    interaction: u64,
    reason: String,
}

/// What the host checks in every rendered block.
fn block_problem(block: &str) -> Option<String> {
    region::has_marker_line(block)
        .then(|| "it contains a marker line; it would break communication.md".to_string())
}

/// Reads one archive batch back from the log and renders it.
fn render_archive_batch(
    index: &Index,
    context: &RenderContext,
    host: &PluginHost,
    renderer: &PluginSpec,
    fetcher: &mut dyn Fetch,
    numbers: &[u64],
) -> Result<Blocks, SnapshotError> {
    let interactions = numbers
        .iter()
        .map(|number| index.interaction(fetcher, *number))
        .collect::<Result<Vec<_>, _>>()?;
    render_calls(host, renderer, context, &interactions)
}

/// Renders neutralised interactions in calls of at most
/// [`RENDER_BATCH_BYTES`] of content, so long events do not overflow the
/// plugin's memory.
fn render_calls(
    host: &PluginHost,
    renderer: &PluginSpec,
    context: &RenderContext,
    interactions: &[Interaction],
) -> Result<Blocks, SnapshotError> {
    let mut rendered = Blocks {
        blocks: Vec::with_capacity(interactions.len()),
        isolated: Vec::new(),
    };
    let mut start = 0;
    while start < interactions.len() {
        let mut end = start;
        let mut bytes = 0usize;
        while end < interactions.len() && (end == start || bytes < RENDER_BATCH_BYTES) {
            bytes += interactions[end]
                .entries
                .iter()
                .map(|e| render_weight(&e.event))
                .sum::<usize>();
            end += 1;
        }
        let part =
            host.render_isolating(renderer, context, &interactions[start..end], &block_problem)?;
        rendered.blocks.extend(part.blocks);
        rendered
            .isolated
            .extend(part.isolated.into_iter().map(|mut isolated| {
                isolated.interaction += start;
                isolated
            }));
        start = end;
    }
    Ok(rendered)
}

/// Where an event sits, kept while the mapper decides about it.
struct Place {
    line: u64,
    offset: u64,
    interaction: u64,
    weight: u32,
}

/// What an event weighs in a render call: its content and the rest of its
/// fields, roughly.
fn render_weight(event: &Event) -> usize {
    event.content.len() + 128
}
type MapperJob = (Vec<Place>, Vec<Event>);
type Mapped = (Vec<Place>, Vec<Heading>);

/// Worker threads rendering archive batches.
const RENDER_WORKERS: usize = 2;

/// Puts rendered batches back in order before they reach the file.
#[derive(Default)]
struct OrderedWriter {
    next: usize,
    /// Batches rendered ahead of their turn: their numbers and blocks.
    waiting: BTreeMap<usize, (Vec<u64>, Vec<String>)>,
    isolated: Vec<ArchiveIsolation>,
}

impl OrderedWriter {
    fn accept(
        &mut self,
        (seq, numbers, blocks): (usize, Vec<u64>, Result<Blocks, SnapshotError>),
        sink: &mut dyn FnMut(u64, &str) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let blocks = blocks?;
        for isolated in blocks.isolated {
            if let Some(number) = numbers.get(isolated.interaction) {
                self.isolated
                    .push((*number, isolated.entry, isolated.reason));
            }
        }
        self.waiting.insert(seq, (numbers, blocks.blocks));
        while let Some((numbers, blocks)) = self.waiting.remove(&self.next) {
            for (number, block) in numbers.iter().zip(&blocks) {
                sink(*number, block)?;
            }
            self.next += 1;
        }
        Ok(())
    }
}

enum ArchivePlan {
    Unchanged,
    Append(Vec<u64>),
    Rewrite,
}

enum PendingArchive {
    Unchanged,
    /// The new blocks, to add at the end of archive.md.
    Append(tempfile::NamedTempFile, usize),
    Rewrite(tempfile::NamedTempFile),
}

/// A communication.md worth keeping: it has its region.
fn is_good(text: &str) -> bool {
    text.contains(BEGIN_MARKER) && text.contains(END_MARKER)
}

/// Up to this size archive.md is extended by a copy renamed over it; past
/// it, in place (see [`extend_archive`]).
const ARCHIVE_COPY_LIMIT: u64 = 16 * 1024 * 1024;

/// Adds the new blocks at the end of archive.md.
///
/// Up to [`ARCHIVE_COPY_LIMIT`], atomically: a copy extended and renamed
/// over it, since appending in place leaves half a block behind when the
/// writer is killed mid-write (a write that spans pages stops at a page
/// boundary on SIGKILL). Past the limit a copy would cost a snapshot
/// hundreds of milliseconds per moved interaction (a 1M-event archive is
/// some 250 MB), so the blocks are appended in place with one write and an
/// fdatasync: a kill inside that write, a window of microseconds, can leave
/// a partial last block, which the next snapshot repairs (it finds the file
/// not at the length it wrote and rewrites the archive).
fn extend_archive(path: &Path, mut blocks: tempfile::NamedTempFile) -> Result<(), SnapshotError> {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_error("read", path)(e)),
    };
    let blocks = blocks.as_file_mut();
    blocks
        .seek(std::io::SeekFrom::Start(0))
        .map_err(io_error("read back the new blocks of", path))?;
    if size > ARCHIVE_COPY_LIMIT {
        return append_in_place(path, blocks);
    }
    let mut tmp = files::temp_beside(path).map_err(io_error("create a temp file for", path))?;
    match File::open(path) {
        Ok(mut old) => {
            std::io::copy(&mut old, tmp.as_file_mut()).map_err(io_error("copy", path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("read", path)(e)),
    }
    std::io::copy(blocks, tmp.as_file_mut()).map_err(io_error("write", path))?;
    files::commit(tmp, path).map_err(io_error("replace", path))
}

fn append_in_place(path: &Path, blocks: &mut File) -> Result<(), SnapshotError> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error("open", path))?;
    let before = file.metadata().map_err(io_error("read", path))?.len();
    if let Err(e) = std::io::copy(blocks, &mut file).and_then(|_| file.sync_data()) {
        let _ = file.set_len(before);
        return Err(io_error("append to", path)(e));
    }
    Ok(())
}

/// What identifies a plugin's behaviour: its code and its settings. The
/// code is the version that serves now (while a changed plugin compiles in
/// the daemon, the previous one), so blocks are filed under what made them.
fn plugin_key(host: &PluginHost, spec: &PluginSpec, slot: Slot) -> Result<String, SnapshotError> {
    let sha = host.serving_sha(spec, slot)?;
    Ok(format!("{sha}:{:?}", spec.settings))
}

/// `huddle snapshot`: a cold run over the whole log.
pub fn snapshot_once(
    dir: &Path,
    host: &PluginHost,
    k: Option<usize>,
    progress: Option<Arc<dyn Progress>>,
) -> Result<Outcome, SnapshotError> {
    let mut snapshotter = Snapshotter::new(dir);
    snapshotter.progress = progress;
    snapshotter.update(host, k)
}
