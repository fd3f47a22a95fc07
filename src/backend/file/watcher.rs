//! File-system notifications for events.log.
//!
//! The directory is watched, not the file (editors and `git` replace files,
//! which ends a watch on the file itself), and only events naming events.log
//! wake the daemon, so its own snapshot writes do not. A rescan signal (the
//! kernel queue overflowed) also wakes it: it re-reads from its cursor
//! anyway. Where inotify is unavailable or out of watches, a polling watcher
//! takes over; the daemon also re-reads on a timer as a safety net.

use std::path::Path;
use std::time::Duration;

use notify::{Event, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::LOG_FILE;
use crate::backend::Subscription;

/// Keeps the watch alive while held.
pub struct ActiveWatcher {
    _watcher: Box<dyn Watcher + Send>,
    kind: &'static str,
}

impl ActiveWatcher {
    pub fn describe(&self) -> &'static str {
        self.kind
    }
}

/// Watches `dir`; the receiver gets a message whenever events.log may have changed.
pub fn watch(dir: &Path) -> notify::Result<(ActiveWatcher, UnboundedReceiver<()>)> {
    let (tx, rx) = unbounded_channel();
    let handler = move |result: notify::Result<Event>| {
        let relevant = match &result {
            Ok(event) => {
                event.need_rescan()
                    || event
                        .paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| n == LOG_FILE))
            }
            // An error from the watcher may mean lost events: re-read.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    };
    let native = RecommendedWatcher::new(handler.clone(), notify::Config::default())
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|_| w));
    let watcher = match native {
        Ok(watcher) => ActiveWatcher {
            _watcher: Box::new(watcher),
            kind: "inotify",
        },
        Err(error) => {
            tracing::warn!(%error, "inotify unavailable; polling events.log instead");
            let config = notify::Config::default().with_poll_interval(Duration::from_millis(100));
            let mut poll = PollWatcher::new(handler, config)?;
            poll.watch(&dir.join(LOG_FILE), RecursiveMode::NonRecursive)?;
            ActiveWatcher {
                _watcher: Box::new(poll),
                kind: "polling",
            }
        }
    };
    Ok((watcher, rx))
}

/// The file log's subscription: its watcher.
pub(crate) fn subscribe(dir: &Path) -> notify::Result<Subscription> {
    let (watcher, receiver) = watch(dir)?;
    let kind = watcher.kind;
    Ok(Subscription::new(receiver, Box::new(watcher), kind))
}
