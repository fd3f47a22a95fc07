//! Archive blocks drafted while a cold run reads the log, and region
//! blocks drafted while huge recent interactions are read back.
//!
//! A cold run reads every event to index it. Rendering the archive from the
//! finished index then read every event back from the log a second time,
//! and did so only once the whole log was indexed. Instead, the mapper's
//! worker groups each mapped batch's events by interaction and, once an
//! interaction has had no event for a whole batch, hands it to render
//! workers while the log is still being read; its block (a draft) goes to
//! a temp file with the number of events it shows.
//!
//! Why a draft can stand in for the real block: a block depends only on its
//! interaction's visible events, in log order, and a draft shows some of
//! them (each visible event reaches at most one draft), in log order. So a
//! draft showing as many events as the finished index holds for its
//! interaction shows exactly those events, and is the block a render from
//! the index gives. Any other interaction (one that got an event after its
//! draft, one too large to hold while the log is read, one whose draft
//! failed) is rendered from the index as before.
//!
//! An interaction too large for one render call is rendered in parts
//! (`render-part`); where parts are cut depends only on the entries before
//! the cut (`PartCutter`), so its parts are drafted as its entries arrive,
//! each once an entry after it shows it is not the last. Its draft is the
//! parts' blocks in order, usable under the same count rule, and checked
//! as the whole block would be: no part may hold a marker line, nor may the
//! line two parts share (a part without a line break gives up the draft).
//! Where parts are cut depends on the neutralised contents, so the events
//! of an interaction that may need parts (half the size of a part, or more
//! entries than one call takes) are neutralised as they join it; the rest
//! are neutralised by the render workers.
//!
//! A cold run also guesses which interactions will be recent: numbers are
//! handed out one after another, so most likely the K below the highest
//! number near the log's end. Those are drafted with communication.md's
//! context instead of the archive's (the archive never takes such a draft,
//! and a wrong guess only leaves work to the render from the index), so
//! the recent blocks need not be read back from the log afterwards; those
//! drafts go to a file of their own, so the archive's drafts lie in order
//! in theirs. While the archive's drafts equal archive.md byte for byte
//! (a cold run over a directory whose archive is current), they are only
//! compared, not written (see [`DraftFile`]).
//!
//! The same drafter serves communication.md's region when its stale
//! interactions weigh a lot (a few huge ones): they are read back from the
//! log and fed to it in batches, so the workers neutralise and render
//! while the log is read, and a block is used under the same rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::{
    io_error, region, render_calls, ArchiveIsolation, Blocks, OrderedWriter, SnapshotError,
    RENDER_BATCH, RENDER_BATCH_BYTES, RENDER_BATCH_EVENTS, RENDER_WORKERS,
};
use crate::backend::files::{self, FileStamp};
use crate::model::event::Event;
use crate::plugin::{
    part_weight, Entry, Heading, Interaction, Part, PartCutter, PluginHost, PluginSpec,
    RenderContext, ENTRIES_PER_CALL, MAX_INTERACTION_BYTES, PART_BYTES,
};

/// A part's line shared with the next part is checked for a marker line
/// by joining the two pieces; a longer last line gives up the draft rather
/// than be held.
const SHARED_LINE_BYTES: usize = 4096;

/// Open interactions are evicted (left to the render from the index) once
/// they hold this much content together, largest first; one holding this
/// much alone is a huge interaction, which the render from the index takes
/// one at a time.
const OPEN_BYTES: usize = 32 * 1024 * 1024;

/// How much of the target a draft is compared with at a time.
const COMPARE_BYTES: usize = 64 * 1024;

/// Interaction numbers come from the log, but a collision costs only time
/// here, and a lookup happens for every event.
type FastHash = foldhash::fast::RandomState;

/// What the drafter was asked for.
pub(super) struct DraftPlan<'a> {
    pub host: &'a PluginHost,
    pub renderer: &'a PluginSpec,
    pub context: RenderContext,
    /// The file the blocks are for: the drafts go to a temp file beside it,
    /// and errors name it.
    pub target: &'a Path,
    /// Interactions expected to be recent, drafted with this context
    /// (communication.md's) instead: only [`Draft::recent_blocks`] gives
    /// their drafts, never [`Draft::assemble`].
    pub recent: Option<(RangeInclusive<u64>, RenderContext)>,
    /// The drafts not drafted for `recent`, in order, become the target's
    /// new contents (archive.md): while they equal what the target holds,
    /// nothing is written (see [`DraftFile`]).
    pub replaces_target: bool,
}

/// The drafts of a cold run: blocks in a temp file beside archive.md.
pub(super) struct Draft {
    /// The drafts for the plan's target.
    file: DraftFile,
    /// The drafts for `recent`, if any was written.
    recent_file: Option<DraftFile>,
    drafts: Drafts,
    isolated: Vec<ArchiveIsolation>,
    /// The file the blocks are for (see [`DraftPlan::target`]).
    target: std::path::PathBuf,
    /// See [`DraftPlan::recent`].
    recent: Option<RangeInclusive<u64>>,
}

/// A temp file beside a target that drafted blocks go to, in order.
///
/// A cold run over a log whose archive.md is already what it renders to (a
/// restarted daemon, a second `huddle snapshot`) wrote the whole archive to
/// a temp file, only to read both files back, find them equal and delete
/// the copy (for a 1 GB archive: 1 GB written, 2 GB read). So while every
/// byte drafted equals the target's byte at the same offset, nothing is
/// written: the draft is that much of the target, copied into the file at
/// the first difference, or when the draft is needed as a file after all.
struct DraftFile {
    file: tempfile::NamedTempFile,
    out: std::io::BufWriter<std::fs::File>,
    /// Bytes drafted so far (written or matched): where the next block goes.
    written: u64,
    /// The target, while everything drafted matches it.
    same_as: Option<SameAsTarget>,
}

/// The target a draft has matched so far, read as the draft grows.
struct SameAsTarget {
    reader: std::io::BufReader<std::fs::File>,
    /// The target when it was opened: it must be the same file, unchanged,
    /// when its bytes are taken for the draft's.
    stamp: FileStamp,
    path: std::path::PathBuf,
    scratch: Vec<u8>,
}

impl DraftFile {
    /// A new draft file beside `target`; `compare`: matched against the
    /// target while it can be (a target that cannot be opened never is).
    fn create(target: &Path, compare: bool) -> std::io::Result<DraftFile> {
        let file = files::temp_beside(target)?;
        let out = file.reopen()?;
        let same_as = if compare {
            SameAsTarget::open(target)
        } else {
            None
        };
        Ok(DraftFile {
            file,
            out: std::io::BufWriter::with_capacity(1 << 20, out),
            written: 0,
            same_as,
        })
    }

    /// The draft file in `slot`, created beside `target` (not compared)
    /// on first use.
    fn created<'a>(
        slot: &'a mut Option<DraftFile>,
        target: &Path,
    ) -> std::io::Result<&'a mut DraftFile> {
        match slot {
            Some(file) => Ok(file),
            None => Ok(slot.insert(DraftFile::create(target, false)?)),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(same_as) = &mut self.same_as {
            if same_as.continues_with(bytes) {
                self.written += bytes.len() as u64;
                return Ok(());
            }
            self.copy_matched()?;
        }
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Puts the target's bytes the draft matched so far into the file,
    /// which from then on is written as it comes.
    fn copy_matched(&mut self) -> std::io::Result<()> {
        let Some(same_as) = self.same_as.take() else {
            return Ok(());
        };
        // Nothing was written yet: the file is empty, at its start.
        let mut target = same_as.reader.into_inner();
        target.seek(SeekFrom::Start(0))?;
        let copied = std::io::copy(
            &mut std::io::Read::take(&mut target, self.written),
            self.out.get_mut(),
        )?;
        if copied != self.written || !same_as_when_opened(&same_as.path, same_as.stamp) {
            return Err(std::io::Error::other(format!(
                "{} changed while the snapshot compared it",
                same_as.path.display()
            )));
        }
        Ok(())
    }

    /// Whether the draft's first `len` bytes are exactly the target as it
    /// is now, whole: nothing to write.
    fn is_target(&self, len: u64) -> bool {
        self.same_as.as_ref().is_some_and(|same_as| {
            same_as.stamp.len() == len && same_as_when_opened(&same_as.path, same_as.stamp)
        })
    }

    /// The file holding every byte drafted, flushed.
    fn into_file(mut self) -> std::io::Result<tempfile::NamedTempFile> {
        self.copy_matched()?;
        self.out.flush()?;
        Ok(self.file)
    }
}

impl SameAsTarget {
    fn open(path: &Path) -> Option<SameAsTarget> {
        let file = std::fs::File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        meta.is_file().then(|| SameAsTarget {
            reader: std::io::BufReader::with_capacity(1 << 20, file),
            stamp: FileStamp::of(&meta),
            path: path.to_path_buf(),
            scratch: Vec::new(),
        })
    }

    /// Reads the target's next `bytes.len()` bytes: whether they are
    /// `bytes`. A piece at a time, however large the block.
    fn continues_with(&mut self, bytes: &[u8]) -> bool {
        self.scratch.resize(COMPARE_BYTES, 0);
        bytes.chunks(COMPARE_BYTES).all(|piece| {
            let theirs = &mut self.scratch[..piece.len()];
            std::io::Read::read_exact(&mut self.reader, theirs).is_ok() && theirs == piece
        })
    }
}

/// Whether `number` is among the interactions drafted for communication.md
/// (see [`DraftPlan::recent`]).
fn drafted_for_recent(recent: &Option<RangeInclusive<u64>>, number: u64) -> bool {
    recent.as_ref().is_some_and(|range| range.contains(&number))
}

/// Whether `path` is still the file stamped `stamp`, unchanged.
fn same_as_when_opened(path: &Path, stamp: FileStamp) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| FileStamp::of(&meta) == stamp)
}

/// Where each interaction's draft is in its file (the plan's, or the
/// recent one for an interaction drafted for `recent`).
#[derive(Default)]
struct Drafts {
    blocks: HashMap<u64, DraftBlock, FastHash>,
    /// Interactions drafted in parts.
    parted: HashMap<u64, PartedDraft, FastHash>,
}

#[derive(Clone, Copy)]
struct DraftBlock {
    /// Visible events the draft shows.
    events: usize,
    /// Where the block is in the file; `None` until it is written (never,
    /// for an interaction evicted, drafted in parts or whose draft failed).
    at: Option<(u64, u64)>,
}

/// The draft of an interaction rendered in parts.
#[derive(Default)]
struct PartedDraft {
    /// Parts sent to be rendered.
    sent: usize,
    /// Where the parts written so far are in the file, in order.
    pieces: Vec<(u64, u64)>,
    /// Their bytes together.
    bytes: usize,
    /// The text after the last line break of the last part written
    /// (`Err`: none, or too long to hold).
    last_line: Option<Result<String, ()>>,
    /// A part failed, or a check of the joined block did: no draft.
    failed: bool,
}

impl Drafts {
    /// The draft of `number`, if it shows all `events` of its interaction:
    /// where its pieces are in the file (one, or one per part).
    fn usable(&self, number: u64, events: usize) -> Option<&[(u64, u64)]> {
        let block = self.blocks.get(&number).filter(|b| b.events == events)?;
        match self.parted.get(&number) {
            Some(parted) => {
                (!parted.failed && parted.pieces.len() == parted.sent).then_some(&parted.pieces[..])
            }
            None => block.at.as_ref().map(std::slice::from_ref),
        }
    }

    /// Takes the next rendered block or part of `number`, written at
    /// `offset`; `false` when it is of no use (its interaction's draft has
    /// failed), so need not be written.
    fn accept(&mut self, number: u64, offset: u64, block: &str) -> bool {
        let Some(parted) = self.parted.get_mut(&number) else {
            if let Some(drafted) = self.blocks.get_mut(&number) {
                drafted.at = Some((offset, block.len() as u64));
            }
            return true;
        };
        if parted.failed {
            return false;
        }
        parted.bytes += block.len();
        let outer = region::outer_lines(block);
        let joined_ok = match (&parted.last_line, outer) {
            (_, _) if parted.bytes > MAX_INTERACTION_BYTES => false,
            (None, _) => true,
            (Some(Ok(before)), Some((first, _))) => {
                let mut shared = String::with_capacity(before.len() + first.len());
                shared.push_str(before);
                shared.push_str(first);
                super::block_problem(&shared).is_none()
            }
            (Some(_), _) => false,
        };
        if !joined_ok {
            parted.failed = true;
            return false;
        }
        parted.last_line = Some(match outer {
            Some((_, last)) if last.len() <= SHARED_LINE_BYTES => Ok(last.to_string()),
            _ => Err(()),
        });
        parted.pieces.push((offset, block.len() as u64));
        true
    }
}

impl Draft {
    /// Builds archive.md's new contents from the drafts: the usable ones
    /// copied, the others handed to `render` (which must give their blocks
    /// in order, with their numbers, to the sink it is given).
    ///
    /// When every archived interaction has a usable draft and the drafts lie
    /// in order from the start of the file (a log whose interactions come
    /// one after another), the draft file itself, cut after the last
    /// archived block, is the new archive; `None` when that is exactly
    /// what `archive_path` holds (nothing to write).
    pub(super) fn assemble(
        self,
        archived: &[(u64, usize)],
        archive_path: &Path,
        render: impl FnOnce(
            &[u64],
            &mut dyn FnMut(u64, &str) -> Result<(), SnapshotError>,
        ) -> Result<Vec<ArchiveIsolation>, SnapshotError>,
    ) -> Result<(Option<tempfile::NamedTempFile>, Vec<ArchiveIsolation>), SnapshotError> {
        let Draft {
            file,
            drafts,
            mut isolated,
            recent,
            ..
        } = self;
        // Each archived interaction's usable draft, if it has one (one
        // drafted for communication.md is not).
        let mut drafted: Vec<Option<&[(u64, u64)]>> = archived
            .iter()
            .map(|(number, events)| {
                drafts
                    .usable(*number, *events)
                    .filter(|_| !drafted_for_recent(&recent, *number))
            })
            .collect();
        let usable: HashSet<u64> = archived
            .iter()
            .zip(&drafted)
            .filter(|(_, range)| range.is_some())
            .map(|((number, _), _)| *number)
            .collect();
        isolated.retain(|(number, _, _)| usable.contains(number));
        let in_place_end = in_place_end(&drafted);
        if in_place_end.is_some_and(|end| file.is_target(end)) {
            tracing::debug!("snapshot: the drafts are archive.md as it is; nothing written");
            sort_as_reported(&mut isolated);
            return Ok((None, isolated));
        }
        let file = match file.into_file() {
            Ok(file) => file,
            Err(error) => {
                // archive.md changed since the drafts matched it (or copying
                // what they matched failed): no draft can be trusted, so
                // every interaction is rendered from the index (which
                // reports again what it leaves out).
                tracing::debug!(%error, "snapshot: the drafts are lost; the archive is rendered from the index");
                drafted.iter_mut().for_each(|pieces| *pieces = None);
                isolated.clear();
                files::temp_beside(archive_path)
                    .map_err(io_error("create a temp file for", archive_path))?
            }
        };
        let redo: Vec<u64> = archived
            .iter()
            .zip(&drafted)
            .filter(|(_, range)| range.is_none())
            .map(|((number, _), _)| *number)
            .collect();

        if let (Some(end), true) = (in_place_end, redo.is_empty()) {
            file.as_file()
                .set_len(end)
                .map_err(io_error("write", archive_path))?;
            sort_as_reported(&mut isolated);
            return Ok((Some(file), isolated));
        }

        let mut tmp = files::temp_beside(archive_path)
            .map_err(io_error("create a temp file for", archive_path))?;
        let mut drafted_file = file.reopen().map_err(io_error("read", archive_path))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let mut copier = RangeCopier {
            pending: None,
            path: archive_path,
        };
        let mut next = 0usize;
        // Copies the usable drafts of the archived interactions before
        // `below` (all of them for `None`).
        let mut copy_until = |below: Option<u64>,
                              out: &mut std::io::BufWriter<&mut std::fs::File>|
         -> Result<(), SnapshotError> {
            while let Some((number, _)) = archived.get(next) {
                if below.is_some_and(|below| *number >= below) {
                    break;
                }
                for piece in drafted[next].unwrap_or_default() {
                    copier.add(*piece, &mut drafted_file, out)?;
                }
                next += 1;
            }
            copier.flush(&mut drafted_file, out)
        };
        let rendered = render(&redo, &mut |number, block| {
            copy_until(Some(number), &mut out)?;
            out.write_all(block.as_bytes())
                .map_err(io_error("write", archive_path))
        })?;
        copy_until(None, &mut out)?;
        out.flush().map_err(io_error("write", archive_path))?;
        drop(out);
        isolated.extend(rendered);
        sort_as_reported(&mut isolated);
        Ok((Some(tmp), isolated))
    }
}

impl Draft {
    /// The blocks drafted for communication.md (see [`DraftPlan::recent`])
    /// of `interactions` (number, visible events) that show all their
    /// events and left none out, read back from their file; the others
    /// are left to the render from the index.
    pub(super) fn recent_blocks(
        &self,
        interactions: &[(u64, usize)],
    ) -> Result<HashMap<u64, String>, SnapshotError> {
        use std::os::unix::fs::FileExt;
        let target = &self.target;
        let Some(recent_file) = &self.recent_file else {
            return Ok(HashMap::new());
        };
        let left_out: HashSet<u64> = self.isolated.iter().map(|(number, _, _)| *number).collect();
        let mut blocks = HashMap::new();
        for (number, events) in interactions {
            if !drafted_for_recent(&self.recent, *number) || left_out.contains(number) {
                continue;
            }
            let Some(pieces) = self.drafts.usable(*number, *events) else {
                continue;
            };
            let mut bytes = Vec::new();
            for (offset, len) in pieces {
                let start = bytes.len();
                bytes.resize(start + *len as usize, 0);
                recent_file
                    .file
                    .as_file()
                    .read_exact_at(&mut bytes[start..], *offset)
                    .map_err(io_error("read the drafted blocks for", target))?;
            }
            // Each piece was a whole string when written.
            if let Ok(block) = String::from_utf8(bytes) {
                blocks.insert(*number, block);
            }
        }
        Ok(blocks)
    }
}

/// Where the last archived draft ends, when every archived interaction
/// has a usable draft and they lie one after another from the file's
/// start (a log whose interactions come one after another): the draft file,
/// cut there, is the new archive.
fn in_place_end(drafted: &[Option<&[(u64, u64)]>]) -> Option<u64> {
    let mut end = 0u64;
    let in_place = drafted.iter().all(|pieces| {
        pieces.is_some_and(|pieces| {
            pieces.iter().all(|(offset, len)| {
                let next = *offset == end;
                end += len;
                next
            })
        })
    });
    in_place.then_some(end)
}

/// In the order a render from the index finds them: by interaction (the
/// drafts' come as their batches finished), then entry.
fn sort_as_reported(isolated: &mut [ArchiveIsolation]) {
    isolated.sort_by_key(|(number, _, _)| *number);
}

/// Copies byte ranges of the draft file, joining adjacent ones into one copy.
struct RangeCopier<'a> {
    pending: Option<(u64, u64)>,
    /// The archive the copies are for, for error messages.
    path: &'a Path,
}

impl RangeCopier<'_> {
    fn add(
        &mut self,
        (offset, len): (u64, u64),
        from: &mut std::fs::File,
        out: &mut std::io::BufWriter<&mut std::fs::File>,
    ) -> Result<(), SnapshotError> {
        match &mut self.pending {
            Some((start, pending_len)) if *start + *pending_len == offset => {
                *pending_len += len;
                Ok(())
            }
            _ => {
                self.flush(from, out)?;
                self.pending = Some((offset, len));
                Ok(())
            }
        }
    }

    fn flush(
        &mut self,
        from: &mut std::fs::File,
        out: &mut std::io::BufWriter<&mut std::fs::File>,
    ) -> Result<(), SnapshotError> {
        let Some((offset, len)) = self.pending.take() else {
            return Ok(());
        };
        let path = self.path;
        let failed = |source| io_error("copy drafted blocks for", path)(source);
        from.seek(SeekFrom::Start(offset)).map_err(failed)?;
        let copied =
            std::io::copy(&mut std::io::Read::take(&mut *from, len), out).map_err(failed)?;
        if copied != len {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the draft file ended {} bytes early", len - copied),
            )));
        }
        Ok(())
    }
}

/// Work for a render worker, in the order it was sent.
type DraftJob = (usize, DraftWork);

enum DraftWork {
    /// Closed interactions, rendered whole; their events are neutralised
    /// already, or not yet.
    Blocks(Vec<Interaction>, Neutralised, DraftFor),
    /// A part of an interaction rendered in parts.
    Part(PartJob),
}

struct PartJob {
    number: u64,
    index: usize,
    entries: Vec<Entry>,
    first: bool,
    last: bool,
    drafted_for: DraftFor,
}

/// Which of the plan's contexts a job is rendered with.
#[derive(Clone, Copy, PartialEq)]
enum DraftFor {
    /// [`DraftPlan::context`].
    Plan,
    /// [`DraftPlan::recent`]'s.
    Recent,
}

impl DraftPlan<'_> {
    fn context_for(&self, drafted_for: DraftFor) -> &RenderContext {
        match (drafted_for, &self.recent) {
            (DraftFor::Recent, Some((_, context))) => context,
            _ => &self.context,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Neutralised {
    Already,
    NotYet,
}

/// What a worker did: the numbers its blocks are for, and the blocks (an
/// error, or `None` for a part, leaves those interactions without a draft).
type DraftDone = (usize, Vec<u64>, Option<Result<Blocks, SnapshotError>>);

/// Groups mapped events into interactions and drafts their blocks; runs on
/// the mapper's worker thread.
pub(super) struct Drafter {
    open: BTreeMap<u64, Open>,
    open_weight: usize,
    /// Interactions drafted or evicted: later events of theirs are not
    /// drafted (their draft would show too few events to be used).
    drafts: Drafts,
    /// The renderer renders interactions too large for one call in parts
    /// (WIT 0.2.0 or later): those are drafted in parts.
    in_parts: bool,
    /// Headings as the mapper gave them, neutralised.
    headings: HashMap<String, Arc<str>, FastHash>,
    batch: u64,
    pending: Vec<Interaction>,
    pending_events: usize,
    pending_weight: usize,
    sent: usize,
    job_tx: Option<SyncSender<DraftJob>>,
    done_rx: Receiver<DraftDone>,
    writer: OrderedWriter,
    /// The drafts for the plan's target.
    file: DraftFile,
    /// The drafts for `recent`, from the first one written.
    recent_file: Option<DraftFile>,
    /// Drafting stopped (a write failed): the rest is rendered from the index.
    stopped: bool,
    /// See [`DraftPlan::target`].
    target: std::path::PathBuf,
    /// See [`DraftPlan::recent`].
    recent: Option<RangeInclusive<u64>>,
}

/// An interaction still getting events.
struct Open {
    /// Its entries not sent yet: all of them, or, drafted in parts, those
    /// of the part being filled.
    entries: Vec<Entry>,
    /// What the entries held here weigh (see `part_weight`).
    weight: usize,
    /// Its entries so far, and what they weigh together, sent or not.
    count: usize,
    total_weight: usize,
    /// Its events are neutralised as they come (it may need parts).
    neutralised: bool,
    /// The batch that brought its last event.
    touched: u64,
    /// Drafted in parts, once it is too large for one call (boxed: few are).
    parts: Option<Box<Parting>>,
}

struct Parting {
    cutter: PartCutter,
    /// A full part not sent yet: if no entry follows, it is the last one.
    held: Option<(Vec<Entry>, usize)>,
    /// What the entries of the part being filled weigh.
    filling_weight: usize,
}

/// A part to send: the entries, what they weigh, whether it is the last.
type ReadyPart = (Vec<Entry>, usize, bool);

impl Drafter {
    /// Starts the render workers in `scope`.
    pub(super) fn start<'scope, 'env: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        plan: &'env DraftPlan<'env>,
    ) -> Result<Drafter, SnapshotError> {
        let file = DraftFile::create(plan.target, plan.replaces_target)
            .map_err(io_error("create a temp file for", plan.target))?;
        let in_parts = plan
            .host
            .wit_version(plan.renderer, crate::plugin::Slot::Renderer)
            .is_ok_and(|version| version >= crate::plugin::WitVersion::V0_2_0);
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<DraftJob>(RENDER_WORKERS * 2);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<DraftDone>();
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        for _ in 0..RENDER_WORKERS {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            let worker = std::thread::Builder::new().name("huddle-draft".into());
            let started = worker.spawn_scoped(scope, move || loop {
                let job = job_rx.lock().map(|rx| rx.recv());
                let Ok(Ok((seq, work))) = job else {
                    return;
                };
                let done = match work {
                    DraftWork::Blocks(mut interactions, neutralised, drafted_for) => {
                        if neutralised == Neutralised::NotYet {
                            for entry in interactions.iter_mut().flat_map(|i| i.entries.iter_mut())
                            {
                                region::neutralise_event(&mut entry.event);
                            }
                        }
                        let blocks = render_calls(
                            plan.host,
                            plan.renderer,
                            plan.context_for(drafted_for),
                            &interactions,
                        );
                        let numbers = interactions.iter().map(|i| i.number).collect();
                        drop(interactions);
                        (seq, numbers, Some(blocks))
                    }
                    DraftWork::Part(job) => (seq, vec![job.number], render_part(plan, job)),
                };
                if done_tx.send(done).is_err() {
                    return;
                }
            });
            // No thread to be had: no drafts (the index renders everything).
            started.map_err(io_error("start a render worker for", plan.target))?;
        }
        Ok(Drafter {
            open: BTreeMap::new(),
            open_weight: 0,
            drafts: Drafts::default(),
            in_parts,
            headings: HashMap::default(),
            batch: 0,
            pending: Vec::new(),
            pending_events: 0,
            pending_weight: 0,
            sent: 0,
            job_tx: Some(job_tx),
            done_rx,
            writer: OrderedWriter::default(),
            file,
            recent_file: None,
            stopped: false,
            target: plan.target.to_path_buf(),
            recent: plan.recent.as_ref().map(|(range, _)| range.clone()),
        })
    }

    /// Takes one mapped batch: its events join their open interactions,
    /// and those that got none in this batch are drafted.
    pub(super) fn add(&mut self, events: Vec<Event>, headings: &[Heading]) {
        self.batch += 1;
        for (mut event, heading) in events.into_iter().zip(headings) {
            let number = event.interaction;
            let Heading::Shown(heading) = heading else {
                continue;
            };
            let open = match self.open.get_mut(&number) {
                Some(open) => open,
                None if self.drafts.blocks.contains_key(&number) => continue,
                None => self.open.entry(number).or_insert(Open {
                    entries: Vec::with_capacity(4),
                    weight: 0,
                    count: 0,
                    total_weight: 0,
                    neutralised: false,
                    touched: 0,
                    parts: None,
                }),
            };
            let heading = match self.headings.get(heading) {
                Some(neutralised) => neutralised.clone(),
                None => {
                    let neutralised: Arc<str> = region::neutralise_field(heading).into();
                    self.headings.insert(heading.clone(), neutralised.clone());
                    neutralised
                }
            };
            if open.neutralised {
                region::neutralise_event(&mut event);
            }
            let entry = Entry { heading, event };
            let weight = part_weight(&entry);
            open.count += 1;
            open.total_weight += weight;
            open.weight += weight;
            open.touched = self.batch;
            self.open_weight += weight;
            let ready = match &mut open.parts {
                Some(parting) => parting
                    .take(entry, weight, &mut open.entries)
                    .into_iter()
                    .collect(),
                None => {
                    open.entries.push(entry);
                    let may_need_parts =
                        open.count > ENTRIES_PER_CALL || open.total_weight >= PART_BYTES / 2;
                    if self.in_parts && !open.neutralised && may_need_parts {
                        self.open_weight -= open.weight;
                        open.neutralise();
                        self.open_weight += open.weight;
                    }
                    let oversized = open.count > ENTRIES_PER_CALL || open.total_weight > PART_BYTES;
                    if open.neutralised && oversized {
                        Parting::start(open)
                    } else {
                        Vec::new()
                    }
                }
            };
            for part in ready {
                self.send_part(number, part);
            }
        }
        self.evict_over_budget();
        let quiet: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, open)| open.touched < self.batch)
            .map(|(number, _)| *number)
            .collect();
        for number in quiet {
            self.close(number);
        }
        self.write_done();
    }

    /// Leaves the largest open interactions to the render from the index
    /// while the open ones hold too much, and any huge one.
    fn evict_over_budget(&mut self) {
        loop {
            let largest = self
                .open
                .iter()
                .max_by_key(|(_, open)| open.weight)
                .map(|(number, open)| (*number, open.weight));
            let Some((number, weight)) = largest else {
                return;
            };
            if self.open_weight <= OPEN_BYTES && weight < super::HEAVY_JOB_BYTES {
                return;
            }
            if let Some(open) = self.open.remove(&number) {
                self.open_weight -= open.weight;
                self.drafts.blocks.insert(
                    number,
                    DraftBlock {
                        events: 0,
                        at: None,
                    },
                );
            }
        }
    }

    fn close(&mut self, number: u64) {
        let Some(mut open) = self.open.remove(&number) else {
            return;
        };
        self.open_weight -= open.weight;
        self.drafts.blocks.insert(
            number,
            DraftBlock {
                events: open.count,
                at: None,
            },
        );
        if let Some(parting) = &mut open.parts {
            if let Some(last) = parting.finish(&mut open.entries) {
                self.send_part(number, last);
            }
            return;
        }
        let drafted_for = self.drafted_for(number);
        if open.neutralised || drafted_for == DraftFor::Recent {
            let neutralised = if open.neutralised {
                Neutralised::Already
            } else {
                Neutralised::NotYet
            };
            let interaction = Interaction {
                number,
                entries: open.entries,
            };
            self.send((
                self.sent,
                DraftWork::Blocks(vec![interaction], neutralised, drafted_for),
            ));
            return;
        }
        self.pending_events += open.entries.len();
        self.pending_weight += open.weight;
        self.pending.push(Interaction {
            number,
            entries: open.entries,
        });
        if self.pending.len() >= RENDER_BATCH
            || self.pending_events >= RENDER_BATCH_EVENTS
            || self.pending_weight >= RENDER_BATCH_BYTES
        {
            self.send_pending();
        }
    }

    /// Sends the next part of `number` to be rendered.
    fn send_part(&mut self, number: u64, (entries, weight, last): ReadyPart) {
        if let Some(open) = self.open.get_mut(&number) {
            open.weight -= weight;
            self.open_weight -= weight;
        }
        let drafted_for = self.drafted_for(number);
        let parted = self.drafts.parted.entry(number).or_default();
        let job = PartJob {
            number,
            index: parted.sent,
            entries,
            first: parted.sent == 0,
            last,
            drafted_for,
        };
        parted.sent += 1;
        if !self.send((self.sent, DraftWork::Part(job))) {
            if let Some(parted) = self.drafts.parted.get_mut(&number) {
                parted.failed = true;
            }
        }
    }

    fn send_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let interactions = std::mem::take(&mut self.pending);
        self.pending_events = 0;
        self.pending_weight = 0;
        self.send((
            self.sent,
            DraftWork::Blocks(interactions, Neutralised::NotYet, DraftFor::Plan),
        ));
    }

    fn drafted_for(&self, number: u64) -> DraftFor {
        if drafted_for_recent(&self.recent, number) {
            DraftFor::Recent
        } else {
            DraftFor::Plan
        }
    }

    /// Hands a job to the render workers; `false` when they are gone (the
    /// index renders what they did not).
    fn send(&mut self, job: DraftJob) -> bool {
        let Some(job_tx) = &self.job_tx else {
            return false;
        };
        let sent = job_tx.send(job).is_ok();
        if sent {
            self.sent += 1;
        }
        sent
    }

    /// Writes the blocks rendered so far, in order.
    fn write_done(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.accept(done);
        }
    }

    fn accept(&mut self, (seq, numbers, blocks): DraftDone) {
        // A failed render leaves its interactions without a draft; the
        // render from the index meets the same failure and reports it.
        let blocks = match blocks {
            Some(Ok(blocks)) => blocks,
            Some(Err(_)) | None => {
                for number in &numbers {
                    if let Some(parted) = self.drafts.parted.get_mut(number) {
                        parted.failed = true;
                    }
                }
                Blocks::default()
            }
        };
        let Drafter {
            writer,
            file,
            recent_file,
            drafts,
            stopped,
            target,
            recent,
            ..
        } = self;
        let result = writer.accept((seq, numbers, Ok(blocks)), &mut |number, block| {
            if *stopped {
                return Ok(());
            }
            let file = if drafted_for_recent(recent, number) {
                match DraftFile::created(recent_file, target) {
                    Ok(file) => file,
                    Err(error) => {
                        tracing::debug!(%error, "snapshot: cannot draft the recent blocks; they are rendered from the index");
                        *stopped = true;
                        return Ok(());
                    }
                }
            } else {
                &mut *file
            };
            if !drafts.accept(number, file.written, block) {
                return Ok(());
            }
            if let Err(error) = file.write(block.as_bytes()) {
                tracing::debug!(%error, "snapshot: cannot write a drafted block; the rest is rendered from the index");
                *stopped = true;
            }
            Ok(())
        });
        debug_assert!(result.is_ok(), "the sink never fails");
    }

    /// Drafts what is still open, waits for every draft and returns them.
    pub(super) fn finish(mut self) -> Option<Draft> {
        let open: Vec<u64> = self.open.keys().copied().collect();
        for number in open {
            self.close(number);
        }
        self.send_pending();
        self.job_tx = None;
        while self.writer.next < self.sent {
            match self.done_rx.recv() {
                Ok(done) => self.accept(done),
                Err(_) => break,
            }
        }
        if self.stopped || self.writer.next < self.sent {
            return None;
        }
        let flushed = [Some(&mut self.file), self.recent_file.as_mut()]
            .into_iter()
            .flatten()
            .try_for_each(|file| file.out.flush());
        if let Err(error) = flushed {
            tracing::debug!(%error, path = %self.target.display(), "snapshot: cannot write the drafted blocks");
            return None;
        }
        Some(Draft {
            file: self.file,
            recent_file: self.recent_file,
            drafts: self.drafts,
            isolated: std::mem::take(&mut self.writer.isolated),
            target: self.target,
            recent: self.recent,
        })
    }
}

impl Open {
    /// Neutralises the events held so far, from now on those to come too;
    /// what they weigh is what they weigh neutralised.
    fn neutralise(&mut self) {
        let mut weight = 0;
        for entry in &mut self.entries {
            region::neutralise_event(&mut entry.event);
            weight += part_weight(entry);
        }
        self.total_weight = self.total_weight - self.weight + weight;
        self.weight = weight;
        self.neutralised = true;
    }
}

impl Parting {
    /// Starts drafting `open` in parts: cuts its entries so far as they
    /// came; returns the parts known not to be the last.
    fn start(open: &mut Open) -> Vec<ReadyPart> {
        let mut parting = Box::new(Parting {
            cutter: PartCutter::new(ENTRIES_PER_CALL),
            held: None,
            filling_weight: 0,
        });
        let mut ready = Vec::new();
        for entry in std::mem::take(&mut open.entries) {
            let weight = part_weight(&entry);
            ready.extend(parting.take(entry, weight, &mut open.entries));
        }
        open.parts = Some(parting);
        ready
    }

    /// Takes the next entry into `filling` (the part being filled); returns
    /// the part held back, which this entry shows is not the last.
    fn take(&mut self, entry: Entry, weight: usize, filling: &mut Vec<Entry>) -> Option<ReadyPart> {
        let ready = self
            .held
            .take()
            .map(|(entries, weight)| (entries, weight, false));
        let ends = self.cutter.ends_part(&entry);
        filling.push(entry);
        self.filling_weight += weight;
        if ends {
            self.held = Some((
                std::mem::take(filling),
                std::mem::take(&mut self.filling_weight),
            ));
        }
        ready
    }

    /// The last part, once the interaction is closed: the part being
    /// filled, or else the one held back.
    fn finish(&mut self, filling: &mut Vec<Entry>) -> Option<ReadyPart> {
        if !filling.is_empty() {
            return Some((
                std::mem::take(filling),
                std::mem::take(&mut self.filling_weight),
                true,
            ));
        }
        self.held
            .take()
            .map(|(entries, weight)| (entries, weight, true))
    }
}

/// Renders one part for the drafts; `None` when it fails or holds a marker
/// line (the render from the index then meets the same and reports it).
fn render_part(plan: &DraftPlan<'_>, job: PartJob) -> Option<Result<Blocks, SnapshotError>> {
    let part = Part {
        number: job.number,
        index: job.index,
        entries: &job.entries,
        first: job.first,
        last: job.last,
    };
    let text = plan
        .host
        .render_part(plan.renderer, plan.context_for(job.drafted_for), &part)
        .ok()
        .flatten()?;
    drop(job);
    if super::block_problem(&text).is_some() {
        return None;
    }
    Some(Ok(Blocks {
        blocks: vec![text],
        isolated: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("archive.md");
        std::fs::write(&target, bytes).unwrap();
        (dir, target)
    }

    fn drafted(target: &Path, blocks: &[&[u8]]) -> DraftFile {
        let mut file = DraftFile::create(target, true).unwrap();
        for block in blocks {
            file.write(block).unwrap();
        }
        file
    }

    fn bytes_of(file: DraftFile) -> Vec<u8> {
        std::fs::read(file.into_file().unwrap().path()).unwrap()
    }

    #[test]
    fn a_draft_equal_to_its_target_writes_nothing_and_is_the_target_only_whole() {
        let (_dir, target) = target_with(b"abcdef");
        let file = drafted(&target, &[b"abc", b"def"]);
        assert_eq!(std::fs::metadata(file.file.path()).unwrap().len(), 0);
        assert!(file.is_target(6));
        assert!(!file.is_target(5), "a draft cut short is not the target");
        assert_eq!(bytes_of(file), b"abcdef");

        // A draft that is only the target's start.
        let file = drafted(&target, &[b"abc"]);
        assert!(!file.is_target(3));
        assert_eq!(bytes_of(file), b"abc");
    }

    #[test]
    fn a_draft_that_differs_from_its_target_holds_the_matched_bytes_then_its_own() {
        let (_dir, target) = target_with(b"abcdef");
        for (blocks, expected) in [
            (&[&b"ab"[..], b"cX", b"yz"][..], &b"abcXyz"[..]),
            (&[b"abcdef", b"gh"], b"abcdefgh"),
            (&[b"Xbc", b"def"], b"Xbcdef"),
            (&[b"abc", b"", b"d"], b"abcd"),
        ] {
            let file = drafted(&target, blocks);
            assert!(!file.is_target(expected.len() as u64), "{blocks:?}");
            assert_eq!(bytes_of(file), expected, "{blocks:?}");
        }
        // A block larger than one comparison, differing in a later piece.
        let long: Vec<u8> = (0..3 * COMPARE_BYTES + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        let (_dir, target) = target_with(&long);
        let mut changed = long.clone();
        changed[2 * COMPARE_BYTES + 3] ^= 1;
        assert_eq!(bytes_of(drafted(&target, &[&changed])), changed);
        assert_eq!(
            bytes_of(drafted(&target, &[&long[..10], &long[10..]])),
            long
        );
    }

    #[test]
    fn a_target_changed_after_the_draft_matched_it_never_stands_in_for_the_draft() {
        let (_dir, target) = target_with(b"abcdef");
        let mut file = drafted(&target, &[b"abc", b"def"]);
        // Same length, other bytes: only its stamp tells (a later
        // modification time, whatever the clock's tick).
        std::fs::write(&target, b"abcdeX").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let written = std::fs::File::options().write(true).open(&target).unwrap();
        written.set_modified(later).unwrap();
        assert!(!file.is_target(6));
        assert!(file.write(b"more").is_err(), "the draft took changed bytes");

        let file = drafted(&target, &[b"abcdeX"]);
        std::fs::remove_file(&target).unwrap();
        std::fs::write(&target, b"abcdeX").unwrap();
        assert!(!file.is_target(6), "another file at the same path");
        assert!(file.into_file().is_err());
    }

    #[test]
    fn a_draft_without_a_target_to_compare_with_writes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("archive.md");
        let file = drafted(&missing, &[b"abc", b"def"]);
        assert!(!file.is_target(6));
        assert_eq!(
            std::fs::metadata(file.file.path()).unwrap().len(),
            0,
            "still buffered"
        );
        assert_eq!(bytes_of(file), b"abcdef");

        let (_dir, target) = target_with(b"abcdef");
        let mut file = DraftFile::create(&target, false).unwrap();
        file.write(b"abcdef").unwrap();
        assert!(
            !file.is_target(6),
            "a draft not compared is never the target"
        );
        assert_eq!(bytes_of(file), b"abcdef");
    }
}
