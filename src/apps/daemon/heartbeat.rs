//! The leader's heartbeat: a thread of its own with its own timer, so that
//! nothing else the daemon does (reading a large log, a snapshot, a plugin
//! call, a sync, a lock retry elsewhere) can make a heartbeat late. The
//! daemon's loop tells it when to lead and when to stop; it tells the loop
//! what became of each beat.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::backend::{Backend, Position, StoreError};
use crate::model::backoff::Backoff;
use crate::model::clock::Clock;
use crate::services::alerts::LeaderLease;
use crate::services::election::leader_heartbeat;

/// How soon a leading thread notices an order while no beat is due.
const ORDER_POLL: Duration = Duration::from_millis(10);

/// What the heartbeat thread tells the daemon's loop.
#[derive(Debug)]
pub enum Report {
    /// A heartbeat of `term` is in the log.
    Beat { term: u64 },
    /// A higher term was claimed: no more beats for `term`.
    Superseded { term: u64 },
    /// The beat could not be written; the next is tried after a backoff.
    Failed { term: u64, error: StoreError },
}

enum Order {
    /// Beat for `term` at once and every interval after, fenced from `from`.
    Lead { term: u64, from: Position },
    /// Stop beating; the sender learns when no beat can follow.
    Stop(Sender<()>),
}

/// How the heartbeat thread is set up.
pub struct Settings {
    pub me: String,
    pub every: Duration,
    /// Granted after each beat that lands: the leader's other work may go
    /// on for this long without another.
    pub lease: LeaderLease,
    pub lease_for: Duration,
    /// True while huddle is paused: nothing is written then.
    pub paused: Box<dyn Fn() -> bool + Send>,
}

/// The handle on the heartbeat thread.
pub struct Heartbeat {
    orders: Option<Sender<Order>>,
    thread: Option<JoinHandle<()>>,
    /// The term it beats for, as far as the daemon asked.
    beating: Option<u64>,
}

impl Heartbeat {
    pub fn start(
        log: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
    ) -> Result<Heartbeat> {
        let (orders, received) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("huddle-heartbeat".into())
            .spawn(move || beat_loop(&*log, &*clock, settings, received, reports))
            .context("cannot start the heartbeat thread")?;
        Ok(Heartbeat {
            orders: Some(orders),
            thread: Some(thread),
            beating: None,
        })
    }

    /// Beats for `term` from now on (the first beat at once), unless it
    /// already does.
    pub fn lead(&mut self, term: u64, from: Position) {
        if self.beating == Some(term) {
            return;
        }
        if let Some(orders) = &self.orders {
            if orders.send(Order::Lead { term, from }).is_ok() {
                self.beating = Some(term);
            }
        }
    }

    /// Stops beating; returns once no beat can follow (at most one beat in
    /// progress is waited for).
    pub fn stop(&mut self) {
        self.beating = None;
        let (done, stopped) = mpsc::channel();
        let sent = self
            .orders
            .as_ref()
            .is_some_and(|orders| orders.send(Order::Stop(done)).is_ok());
        if sent {
            // The thread ends its beat and answers; if it is gone, so are its beats.
            let _ = stopped.recv();
        }
    }

    /// The thread stopped beating on its own (a newer term).
    pub fn forget(&mut self, term: u64) {
        if self.beating == Some(term) {
            self.beating = None;
        }
    }

    pub fn beating(&self) -> Option<u64> {
        self.beating
    }

    /// Ends the thread after stopping its beats.
    pub fn shut_down(&mut self) {
        self.stop();
        self.orders = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn beat_loop(
    log: &dyn Backend,
    clock: &dyn Clock,
    settings: Settings,
    orders: Receiver<Order>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
) {
    // (term, fencing cursor) while leading.
    let mut leading: Option<(u64, Position)> = None;
    let mut due = clock.now();
    // A beat that could not be written is tried again soon, well within a
    // heartbeat interval at first.
    let mut retry = Backoff::new(
        (settings.every / 8).max(Duration::from_millis(1)),
        settings.every,
    );
    loop {
        // Orders first: a stop must win over a beat that is due. Idle, the
        // thread just waits for one.
        let order = match leading {
            None => match orders.recv() {
                Ok(order) => Some(order),
                Err(_) => return,
            },
            Some(_) => match orders.try_recv() {
                Ok(order) => Some(order),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            },
        };
        match order {
            Some(Order::Lead { term, from }) => {
                leading = Some((term, from));
                due = clock.now();
                retry.reset();
                continue;
            }
            Some(Order::Stop(done)) => {
                leading = None;
                let _ = done.send(());
                continue;
            }
            None => {}
        }
        if let Some((term, cursor)) = &mut leading {
            let term = *term;
            let now = clock.now();
            if now >= due {
                if (settings.paused)() {
                    // The daemon stops us once it reads the pause; meanwhile
                    // nothing is written, and we look again next interval.
                    due = now + settings.every;
                } else {
                    match leader_heartbeat(log, cursor, &settings.me, term) {
                        Ok(true) => {
                            settings
                                .lease
                                .grant_until(Instant::now() + settings.lease_for);
                            retry.reset();
                            // Keep the cadence from the schedule, not from
                            // when the write ended: a slow write does not
                            // push every later beat back.
                            due += settings.every;
                            let after = clock.now();
                            if due <= after {
                                due = after + settings.every;
                            }
                            let _ = reports.send(Report::Beat { term });
                        }
                        Ok(false) => {
                            settings.lease.revoke();
                            leading = None;
                            let _ = reports.send(Report::Superseded { term });
                        }
                        Err(error) => {
                            due = clock.now() + retry.fail();
                            let _ = reports.send(Report::Failed { term, error });
                        }
                    }
                }
            }
        }
        if leading.is_some() {
            let wait = due.saturating_duration_since(clock.now()).min(ORDER_POLL);
            clock.sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryLog;
    use crate::backend::EventStore;
    use crate::model::clock::ManualClock;
    use crate::model::event::{types, InteractionRef, NewEvent};
    use crate::services::election::{ACTION_FIELD, CLAIM};

    const EVERY: Duration = Duration::from_millis(200);
    /// Real time allowed for the thread to do what is due (it needs far less).
    const LIMIT: Duration = Duration::from_secs(10);

    fn beats(log: &MemoryLog) -> usize {
        let mut count = 0;
        crate::backend::scan(log, Position::START, |stored| {
            count += usize::from(stored.event.kind == types::HEARTBEAT);
            Ok(())
        })
        .unwrap();
        count
    }

    #[test]
    fn beats_on_the_clocks_schedule_and_stop_at_a_newer_claim() {
        let log = Arc::new(MemoryLog::new());
        let clock = ManualClock::new();
        let lease = LeaderLease::default();
        let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let mut heartbeat = Heartbeat::start(
            log.clone(),
            clock.clone(),
            Settings {
                me: "leader".into(),
                every: EVERY,
                lease: lease.clone(),
                lease_for: Duration::from_secs(60),
                paused: Box::new(|| false),
            },
            reports_tx,
        )
        .unwrap();
        heartbeat.lead(1, Position::START);
        assert!(clock.wait_for_sleepers(1, LIMIT));
        assert_eq!(beats(&log), 1, "the first beat comes at once");
        assert!(lease.holds());
        for beat in 2..=6 {
            // Not a moment early...
            clock.advance(EVERY - Duration::from_millis(1));
            assert!(clock.wait_for_sleepers(1, LIMIT));
            assert_eq!(beats(&log), beat - 1);
            // ...and on time.
            clock.advance(Duration::from_millis(1));
            assert!(clock.wait_for_sleepers(1, LIMIT));
            assert_eq!(beats(&log), beat);
        }
        // Another daemon claims term 2: the next beat is fenced off.
        log.append(
            NewEvent::new(
                InteractionRef::Number(0),
                "other",
                types::LEADER_ELECTION,
                "claim",
            )
            .with_term(2)
            .with_field(ACTION_FIELD, CLAIM),
        )
        .unwrap();
        clock.advance(EVERY);
        let deadline = Instant::now() + LIMIT;
        let superseded = loop {
            match reports.try_recv() {
                Ok(Report::Superseded { term }) => break Some(term),
                Ok(_) => {}
                Err(_) if Instant::now() > deadline => break None,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        assert_eq!(superseded, Some(1), "the thread saw the newer claim");
        assert_eq!(beats(&log), 6);
        assert!(!lease.holds(), "a replaced leader keeps no lease");
        // Idle, the thread waits for orders, not for the clock: it ends at once.
        heartbeat.forget(1);
        heartbeat.shut_down();
        assert_eq!(beats(&log), 6);
    }
}
