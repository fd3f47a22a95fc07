//! `/api/stream`: many clients, one reader. On news of appends, one task
//! reads what is new once and hands the batch to every stream; a stream
//! takes a batch only if it starts exactly where the stream stands, and
//! otherwise (it resumed from an older event, it fell behind, it read
//! further on its own) reads from its own cursor. So fifty open streams
//! cost one read per append, and none can skip an event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use tokio::sync::broadcast;

use crate::backend::{Backend, Subscription};
use crate::model::visible::visible;
use crate::services::feed::{self, Cursor, FedEvent};

/// Events read at once.
const BATCH: usize = 500;
/// Batches kept for streams that are slow to take them; one further behind
/// reads on its own.
const KEPT_BATCHES: usize = 256;

/// What the reader read in one go: the events from `from` up to `to`.
#[derive(Debug)]
pub(super) struct Batch {
    from: Cursor,
    to: Cursor,
    events: Vec<FedEvent>,
}

/// The one reader of the log for every stream.
pub(super) struct Hub {
    batches: broadcast::Sender<Arc<Batch>>,
}

impl Hub {
    /// Starts reading at the head, on each news from `news` (or every
    /// 500 ms without).
    pub(super) fn start(backend: Arc<dyn Backend>, news: Option<Subscription>) -> Arc<Hub> {
        let (batches, _) = broadcast::channel(KEPT_BATCHES);
        let hub = Arc::new(Hub { batches });
        let sender = hub.batches.clone();
        tokio::spawn(async move {
            let mut news = news;
            let mut cursor = {
                let backend = backend.clone();
                match tokio::task::spawn_blocking(move || feed::head(&*backend)).await {
                    Ok(Ok(head)) => head,
                    _ => Cursor::At(crate::backend::Position::START),
                }
            };
            loop {
                // Reads everything new, a batch at a time.
                loop {
                    let backend = backend.clone();
                    let read =
                        tokio::task::spawn_blocking(move || feed::read(&*backend, cursor, BATCH))
                            .await;
                    let Ok(Ok(page)) = read else {
                        // The streams read on their own meanwhile; try again on news.
                        break;
                    };
                    let more = page.more;
                    if page.cursor != cursor {
                        let batch = Batch {
                            from: cursor,
                            to: page.cursor,
                            events: page.events,
                        };
                        cursor = batch.to;
                        // No stream open: nobody to tell.
                        let _ = sender.send(Arc::new(batch));
                    }
                    if !more {
                        break;
                    }
                }
                match news.as_mut() {
                    Some(subscription) => {
                        if subscription.recv().await.is_none() {
                            return;
                        }
                        subscription.drain();
                    }
                    None => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        hub
    }
}

/// One stream: its cursor, the events it is about to send.
pub(super) struct Follower {
    backend: Arc<dyn Backend>,
    cursor: Cursor,
    batches: broadcast::Receiver<Arc<Batch>>,
    pending: VecDeque<FedEvent>,
    /// Read on our own before taking batches (at the start, after a gap).
    catch_up: bool,
}

impl Follower {
    /// A stream from `cursor`; subscribed before its first read, so no
    /// batch after that read is missed.
    pub(super) fn new(hub: &Hub, backend: Arc<dyn Backend>, cursor: Cursor) -> Follower {
        Follower {
            batches: hub.batches.subscribe(),
            backend,
            cursor,
            pending: VecDeque::new(),
            catch_up: true,
        }
    }

    /// The next event to send; `None` ends the stream.
    pub(super) async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Follower)> {
        loop {
            if let Some(fed) = self.pending.pop_front() {
                let event = match serde_json::to_string(&fed) {
                    Ok(data) => SseEvent::default()
                        .id(fed.position)
                        .event("huddle")
                        .data(data),
                    Err(error) => SseEvent::default().event("problem").data(error.to_string()),
                };
                return Some((Ok(event), self));
            }
            if self.catch_up {
                match self.read_own().await {
                    Ok(more) => self.catch_up = more,
                    Err(problem) => {
                        // Wait for news before trying again (the batch is
                        // not needed: this stream reads on its own next).
                        self.wait_batch().await?;
                        return Some((Ok(problem), self));
                    }
                }
                continue;
            }
            let batch = self.wait_batch().await?;
            self.take(batch);
        }
    }

    /// The next batch; a stream that fell behind reads on its own.
    async fn wait_batch(&mut self) -> Option<Option<Arc<Batch>>> {
        match self.batches.recv().await {
            Ok(batch) => Some(Some(batch)),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.catch_up = true;
                Some(None)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    fn take(&mut self, batch: Option<Arc<Batch>>) {
        let Some(batch) = batch else {
            return;
        };
        if batch.from == self.cursor {
            self.pending.extend(batch.events.iter().cloned());
            self.cursor = batch.to;
        } else if !covered(self.cursor, batch.to) {
            // A gap between where we stand and the batch: read it ourselves.
            self.catch_up = true;
        }
    }

    /// Reads from our own cursor; whether there is more to read.
    async fn read_own(&mut self) -> Result<bool, SseEvent> {
        let backend = self.backend.clone();
        let cursor = self.cursor;
        match tokio::task::spawn_blocking(move || feed::read(&*backend, cursor, BATCH)).await {
            Ok(Ok(page)) => {
                self.cursor = page.cursor;
                self.pending.extend(page.events);
                Ok(page.more)
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "dashboard stream: cannot read the log");
                Err(SseEvent::default()
                    .event("problem")
                    .data(visible(&error.to_string()).replace('\n', " ")))
            }
            Err(joined) => Err(SseEvent::default()
                .event("problem")
                .data(joined.to_string())),
        }
    }
}

/// Whether a stream at `cursor` has already read everything up to `to`.
fn covered(cursor: Cursor, to: Cursor) -> bool {
    match (cursor, to) {
        (Cursor::At(at), Cursor::At(to)) => at.offset >= to.offset,
        // Only a stream's first cursor is an `After`; it reads on its own first.
        _ => false,
    }
}
