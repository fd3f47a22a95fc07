//! Archive blocks drafted while a cold run reads the log.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::{
    io_error, region, render_calls, ArchiveIsolation, OrderedWriter, Place, SnapshotError,
    RENDER_BATCH, RENDER_BATCH_BYTES, RENDER_BATCH_EVENTS, RENDER_WORKERS,
};
use crate::backend::files;
use crate::model::event::Event;
use crate::plugin::{Entry, Heading, Interaction, PluginHost, PluginSpec, RenderContext};

/// Open interactions are evicted (left to the render from the index) once
/// they hold this much content together, largest first; one holding this
/// much alone is a huge interaction, which the render from the index takes
/// one at a time.
const OPEN_BYTES: usize = 32 * 1024 * 1024;

/// Interaction numbers come from the log, but a collision costs only time
/// here, and a lookup happens for every event.
type FastHash = foldhash::fast::RandomState;

/// What the drafter was asked for.
pub(super) struct DraftPlan<'a> {
    pub host: &'a PluginHost,
    pub renderer: &'a PluginSpec,
    pub context: RenderContext,
    pub archive_path: &'a Path,
}

/// The drafts of a cold run: blocks in a temp file beside archive.md.
pub(super) struct Draft {
    file: tempfile::NamedTempFile,
    blocks: HashMap<u64, DraftBlock, FastHash>,
    isolated: Vec<ArchiveIsolation>,
}

#[derive(Clone, Copy)]
struct DraftBlock {
    /// Visible events the draft shows.
    events: usize,
    /// Where the block is in the file; `None` until it is written (never,
    /// for an interaction evicted or whose draft failed).
    at: Option<(u64, u64)>,
}

impl Draft {
    /// The draft of `number`, if it shows all `events` of its interaction:
    /// its offset and length in the file.
    fn usable(&self, number: u64, events: usize) -> Option<(u64, u64)> {
        self.blocks
            .get(&number)
            .filter(|block| block.events == events)
            .and_then(|block| block.at)
    }

    /// Builds archive.md's new contents from the drafts: the usable ones
    /// copied, the others handed to `render` (which must give their blocks
    /// in order, with their numbers, to the sink it is given).
    ///
    /// When every archived interaction has a usable draft and the drafts lie
    /// in order from the start of the file (a log whose interactions come
    /// one after another), the draft file itself, cut after the last
    /// archived block, is the new archive.
    pub(super) fn assemble(
        mut self,
        archived: &[(u64, usize)],
        archive_path: &Path,
        render: impl FnOnce(
            &[u64],
            &mut dyn FnMut(u64, &str) -> Result<(), SnapshotError>,
        ) -> Result<Vec<ArchiveIsolation>, SnapshotError>,
    ) -> Result<(tempfile::NamedTempFile, Vec<ArchiveIsolation>), SnapshotError> {
        // Each archived interaction's usable draft, if it has one.
        let drafted: Vec<Option<(u64, u64)>> = archived
            .iter()
            .map(|(number, events)| self.usable(*number, *events))
            .collect();
        let usable: HashSet<u64> = archived
            .iter()
            .zip(&drafted)
            .filter(|(_, range)| range.is_some())
            .map(|((number, _), _)| *number)
            .collect();
        let mut isolated: Vec<ArchiveIsolation> = std::mem::take(&mut self.isolated)
            .into_iter()
            .filter(|(number, _, _)| usable.contains(number))
            .collect();
        let redo: Vec<u64> = archived
            .iter()
            .zip(&drafted)
            .filter(|(_, range)| range.is_none())
            .map(|((number, _), _)| *number)
            .collect();

        let mut end = 0u64;
        let in_place = drafted.iter().all(|range| match range {
            Some((offset, len)) if *offset == end => {
                end += len;
                true
            }
            _ => false,
        });
        if in_place {
            self.file
                .as_file()
                .set_len(end)
                .map_err(io_error("write", archive_path))?;
            sort_as_reported(&mut isolated);
            return Ok((self.file, isolated));
        }

        let mut tmp = files::temp_beside(archive_path)
            .map_err(io_error("create a temp file for", archive_path))?;
        let mut drafts = self.file.reopen().map_err(io_error("read", archive_path))?;
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
                if let Some(range) = drafted[next] {
                    copier.add(range, &mut drafts, out)?;
                }
                next += 1;
            }
            copier.flush(&mut drafts, out)
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
        Ok((tmp, isolated))
    }
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

/// A batch of closed interactions for a render worker.
type DraftJob = (usize, Vec<Interaction>);
/// Its numbers and blocks.
type DraftDone = (
    usize,
    Vec<u64>,
    Result<crate::plugin::Rendered, SnapshotError>,
);

/// Groups mapped events into interactions and drafts their blocks; runs on
/// the mapper's worker thread.
pub(super) struct Drafter {
    open: BTreeMap<u64, Open>,
    open_weight: usize,
    /// Interactions drafted or evicted: later events of theirs are not
    /// drafted (their draft would show too few events to be used).
    blocks: HashMap<u64, DraftBlock, FastHash>,
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
    file: tempfile::NamedTempFile,
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
    /// Drafting stopped (a write failed): the rest is rendered from the index.
    stopped: bool,
    archive_path: std::path::PathBuf,
}

struct Open {
    entries: Vec<Entry>,
    weight: usize,
    /// The batch that brought its last event.
    touched: u64,
}

impl Drafter {
    /// Starts the render workers in `scope`.
    pub(super) fn start<'scope, 'env: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        plan: &'env DraftPlan<'env>,
    ) -> Result<Drafter, SnapshotError> {
        let file = files::temp_beside(plan.archive_path)
            .map_err(io_error("create a temp file for", plan.archive_path))?;
        let out = file
            .reopen()
            .map_err(io_error("write", plan.archive_path))?;
        let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<DraftJob>(RENDER_WORKERS * 2);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<DraftDone>();
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        for _ in 0..RENDER_WORKERS {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            let worker = std::thread::Builder::new().name("huddle-draft".into());
            let started = worker.spawn_scoped(scope, move || loop {
                let job = job_rx.lock().map(|rx| rx.recv());
                let Ok(Ok((seq, mut interactions))) = job else {
                    return;
                };
                for entry in interactions.iter_mut().flat_map(|i| i.entries.iter_mut()) {
                    region::neutralise_event(&mut entry.event);
                }
                let blocks = render_calls(plan.host, plan.renderer, &plan.context, &interactions);
                let numbers = interactions.iter().map(|i| i.number).collect();
                drop(interactions);
                if done_tx.send((seq, numbers, blocks)).is_err() {
                    return;
                }
            });
            // No thread to be had: no drafts (the index renders everything).
            started.map_err(io_error("start a render worker for", plan.archive_path))?;
        }
        Ok(Drafter {
            open: BTreeMap::new(),
            open_weight: 0,
            blocks: HashMap::default(),
            headings: HashMap::default(),
            batch: 0,
            pending: Vec::new(),
            pending_events: 0,
            pending_weight: 0,
            sent: 0,
            job_tx: Some(job_tx),
            done_rx,
            writer: OrderedWriter::default(),
            out: std::io::BufWriter::with_capacity(1 << 20, out),
            file,
            written: 0,
            stopped: false,
            archive_path: plan.archive_path.to_path_buf(),
        })
    }

    /// Takes one mapped batch: its events join their open interactions,
    /// and those that got none in this batch are drafted.
    pub(super) fn add(&mut self, places: &[Place], events: Vec<Event>, headings: &[Heading]) {
        self.batch += 1;
        for ((place, event), heading) in places.iter().zip(events).zip(headings) {
            let number = event.interaction;
            let Heading::Shown(heading) = heading else {
                continue;
            };
            let open = match self.open.get_mut(&number) {
                Some(open) => open,
                None if self.blocks.contains_key(&number) => continue,
                None => self.open.entry(number).or_insert(Open {
                    entries: Vec::with_capacity(4),
                    weight: 0,
                    touched: 0,
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
            open.entries.push(Entry { heading, event });
            open.weight += place.weight as usize;
            open.touched = self.batch;
            self.open_weight += place.weight as usize;
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
                self.blocks.insert(
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
        let Some(open) = self.open.remove(&number) else {
            return;
        };
        self.open_weight -= open.weight;
        self.blocks.insert(
            number,
            DraftBlock {
                events: open.entries.len(),
                at: None,
            },
        );
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

    fn send_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let job = (self.sent, std::mem::take(&mut self.pending));
        self.pending_events = 0;
        self.pending_weight = 0;
        let Some(job_tx) = &self.job_tx else { return };
        // A failed send means the workers are gone: the index renders what
        // they did not.
        if job_tx.send(job).is_ok() {
            self.sent += 1;
        }
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
        let blocks = blocks.unwrap_or_default();
        let Drafter {
            writer,
            out,
            written,
            blocks: drafted,
            stopped,
            ..
        } = self;
        let result = writer.accept((seq, numbers, Ok(blocks)), &mut |number, block| {
            if *stopped {
                return Ok(());
            }
            if let Err(error) = out.write_all(block.as_bytes()) {
                tracing::debug!(%error, "snapshot: cannot write a drafted block; the rest is rendered from the index");
                *stopped = true;
                return Ok(());
            }
            if let Some(drafted) = drafted.get_mut(&number) {
                drafted.at = Some((*written, block.len() as u64));
            }
            *written += block.len() as u64;
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
        if let Err(error) = self.out.flush() {
            tracing::debug!(%error, path = %self.archive_path.display(), "snapshot: cannot write the drafted blocks");
            return None;
        }
        Some(Draft {
            file: self.file,
            blocks: self.blocks,
            isolated: std::mem::take(&mut self.writer.isolated),
        })
    }
}
