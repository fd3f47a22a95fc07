//! The conformance suite: what every backend must do, checked the same way
//! for each. `tests/it/conformance.rs` runs it against the file log and the
//! in-memory log; a new backend adds a [`Harness`] and one line per check.
//!
//! Each check panics with a message saying what broke.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use super::{append_unless, Backend, CasOutcome, Conditional, EventStore, Position, Stored};
use crate::model::event::{Event, InteractionRef, NewEvent};

/// How long a check waits for news from a subscription.
const NEWS_DEADLINE: Duration = Duration::from_secs(10);

/// Makes logs of one backend for the checks.
pub trait Harness: Sync {
    type Log: Backend + 'static;
    /// A new, empty log.
    fn create(&self) -> Self::Log;
    /// Another handle on the same log, as a restarted process opens it.
    fn reopen(&self, log: &Self::Log) -> Self::Log;
    /// Puts `entry` into the log as a foreign writer would, bypassing every check.
    fn append_foreign(&self, log: &Self::Log, entry: &[u8]);
    /// How many entries have been set aside as malformed.
    fn quarantined(&self, log: &Self::Log) -> usize;
}

fn note(actor: &str, content: &str) -> NewEvent {
    NewEvent::new(InteractionRef::Number(1), actor, "note", content)
}

fn next_note(actor: &str, content: &str) -> NewEvent {
    NewEvent::new(InteractionRef::Next, actor, "note", content)
}

fn read_all(log: &impl Backend, from: Position) -> (Vec<Stored>, Position) {
    let mut stored = Vec::new();
    let end = super::scan(log, from, |s| {
        stored.push(s);
        Ok(())
    })
    .expect("read the log");
    (stored, end)
}

fn ids(events: &[Stored]) -> Vec<String> {
    events
        .iter()
        .map(|s| {
            s.event
                .id
                .clone()
                .expect("events written by huddle have ids")
        })
        .collect()
}

/// Events come back in the order appended, batches whole and in order, each
/// with a position that reads back from it; reading from the end gives
/// nothing, and the head is the end.
pub fn order<H: Harness>(harness: &H) {
    let log = harness.create();
    let mut written = Vec::new();
    written.push(log.append(note("a", "one")).expect("append"));
    written.extend(
        log.append_batch(vec![
            note("b", "two"),
            note("c", "three"),
            note("a", "four"),
        ])
        .expect("append a batch"),
    );
    written.push(log.append(note("b", "five")).expect("append"));
    let (stored, end) = read_all(&log, Position::START);
    let events: Vec<&Event> = stored.iter().map(|s| &s.event).collect();
    assert_eq!(
        events,
        written.iter().collect::<Vec<_>>(),
        "events read back differ from those appended, or their order"
    );
    for pair in stored.windows(2) {
        assert_eq!(
            pair[0].next, pair[1].at,
            "an event's next position is not where the following one is"
        );
    }
    for (i, s) in stored.iter().enumerate() {
        let (from_here, _) = read_all(&log, s.at);
        assert_eq!(
            ids(&from_here),
            ids(&stored[i..]),
            "reading from an event's position"
        );
    }
    let (after_end, end_again) = read_all(&log, end);
    assert!(
        after_end.is_empty(),
        "reading from the end found {after_end:?}"
    );
    assert_eq!(end_again, end);
    assert_eq!(
        log.head().expect("head"),
        end,
        "the head is not where reading ends"
    );
    let mut fetch = log.fetcher().expect("open a fetcher");
    for s in stored.iter().rev() {
        let event = fetch.fetch(s.at).expect("fetch by position");
        assert_eq!(event, s.event, "fetch by position");
    }
}

/// Writers on separate handles, at once: every event lands exactly once,
/// and `next` hands out every number once.
pub fn exactly_once_under_concurrent_writers<H: Harness>(harness: &H) {
    const WRITERS: usize = 4;
    const EACH: usize = 40;
    let log = harness.create();
    let written: Vec<Vec<Event>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let mine = harness.reopen(&log);
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let event = if i % 2 == 0 {
                                next_note(&format!("w{w}"), &format!("{i}"))
                            } else {
                                note(&format!("w{w}"), &format!("{i}"))
                            };
                            mine.append(event).expect("append under contention")
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    });
    let (stored, _) = read_all(&log, Position::START);
    assert_eq!(stored.len(), WRITERS * EACH, "events lost or duplicated");
    let read_ids: HashSet<String> = ids(&stored).into_iter().collect();
    assert_eq!(read_ids.len(), WRITERS * EACH, "an event appears twice");
    for event in written.iter().flatten() {
        let id = event.id.as_ref().expect("id");
        assert!(
            read_ids.contains(id),
            "{event:?} was acknowledged but is not in the log"
        );
        let found = stored.iter().find(|s| s.event.id.as_ref() == Some(id));
        assert_eq!(
            found.map(|s| &s.event),
            Some(event),
            "an event reads back changed"
        );
    }
    // Each writer's events in its own order.
    for mine in &written {
        let order: Vec<&String> = stored
            .iter()
            .filter(|s| s.event.actor == mine[0].actor)
            .filter_map(|s| s.event.id.as_ref())
            .collect();
        assert_eq!(
            order,
            mine.iter()
                .filter_map(|e| e.id.as_ref())
                .collect::<Vec<_>>()
        );
    }
    // `next` is the highest number before it plus one, so never reused.
    let mut highest: Option<u64> = None;
    for s in &stored {
        let numbered = s.event.content.parse::<usize>().is_ok_and(|i| i % 2 == 0);
        if numbered {
            assert_eq!(
                s.event.interaction,
                highest.map_or(1, |h| h + 1),
                "`next` gave {:?} after {highest:?}",
                s.event
            );
        }
        highest = highest.max(Some(s.event.interaction));
    }
}

/// Compare-and-append, flushed or not (heartbeats): of writers expecting
/// the same head, exactly one appends; the others get the events after the
/// head, the winner's among them, and nothing of theirs is written. Built
/// on it, one claim per round wins.
pub fn compare_and_append_races<H: Harness>(harness: &H) {
    const RACERS: usize = 4;
    let log = harness.create();
    log.append(note("a", "before")).expect("append");
    let head = log.head().expect("head");
    let claims: Vec<Event> = (0..RACERS)
        .map(|r| note(&format!("r{r}"), "claim").into_event(0))
        .collect();
    let outcomes: Vec<Conditional> = std::thread::scope(|scope| {
        let handles: Vec<_> = claims
            .iter()
            .enumerate()
            .map(|(r, claim)| {
                let mine = harness.reopen(&log);
                // Half race with the unflushed form heartbeats use: the
                // same condition, the same single winner.
                scope.spawn(move || {
                    let claim = std::slice::from_ref(claim);
                    if r % 2 == 0 {
                        mine.append_if_head(head, claim)
                    } else {
                        mine.append_if_head_volatile(head, claim)
                    }
                    .expect("compare-and-append")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("racer"))
            .collect()
    });
    let winners: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Conditional::Appended { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{} compare-and-appends at one head succeeded",
        winners.len()
    );
    let winner = &claims[winners[0]];
    let (stored, end) = read_all(&log, head);
    assert_eq!(stored.len(), 1, "losers wrote: {stored:?}");
    assert_eq!(&stored[0].event, winner);
    for outcome in &outcomes {
        match outcome {
            Conditional::Appended { head } => assert_eq!(*head, end, "the winner's head"),
            Conditional::Moved { events, head } => {
                assert_eq!(*head, end, "a loser's head");
                assert_eq!(events.len(), 1);
                assert_eq!(&events[0].event, winner, "a loser was not shown the winner");
            }
        }
    }
    // A stale head with nothing conflicting moves on and appends.
    let stale = Position::START;
    let is_claim = |e: &Event| e.content == "claim" && e.actor == "nobody";
    match append_unless(&log, stale, note("x", "late"), &is_claim).expect("append_unless") {
        CasOutcome::Appended(_) => {}
        CasOutcome::Conflict(events) => panic!("nothing conflicted, yet {events:?}"),
    }
    // Rounds of claims: exactly one per round.
    for round in 0..3 {
        let seen = log.head().expect("head");
        let term = format!("term {round}");
        let results: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..RACERS)
                .map(|r| {
                    let mine = harness.reopen(&log);
                    let term = term.clone();
                    scope.spawn(move || {
                        let conflicts = |e: &Event| e.content == term;
                        matches!(
                            append_unless(&mine, seen, note(&format!("r{r}"), &term), &conflicts)
                                .expect("claim"),
                            CasOutcome::Appended(_)
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("claimer"))
                .collect()
        });
        assert_eq!(
            results.iter().filter(|won| **won).count(),
            1,
            "round {round}: winners {results:?}"
        );
    }
}

/// A reader saves its position (as JSON, as the state files do), the
/// process restarts, and reading from the saved position gives exactly what
/// was appended since; a subscription on the new handle hears of appends
/// made through another handle.
pub fn resume_from_a_saved_position_after_a_restart<H: Harness>(harness: &H) {
    let log = harness.create();
    log.append_batch(vec![note("a", "1"), note("a", "2")])
        .expect("append");
    let (_, saved) = read_all(&log, Position::START);
    let saved = serde_json::to_string(&saved).expect("positions serialise");

    let restarted = harness.reopen(&log);
    let mut news = restarted.subscribe().expect("subscribe");
    let writer = harness.reopen(&log);
    let later = writer
        .append_batch(vec![note("b", "3"), next_note("b", "4")])
        .expect("append after the restart");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(news.blocking_recv());
    });
    assert_eq!(
        rx.recv_timeout(NEWS_DEADLINE),
        Ok(Some(())),
        "no news of an append within {NEWS_DEADLINE:?}"
    );
    let saved: Position = serde_json::from_str(&saved).expect("positions deserialise");
    let (fresh, _) = read_all(&restarted, saved);
    let events: Vec<Event> = fresh.into_iter().map(|s| s.event).collect();
    assert_eq!(events, later, "reading from the saved position");
    let mark = restarted.mark(saved).expect("mark");
    assert_eq!(
        restarted.continuity(&mark).expect("continuity"),
        super::Continuity::Same
    );
}

/// Foreign entries that are not events (broken JSON, a missing field, a
/// number beyond 2^53 - 1) are set aside once each, never returned, and
/// never counted by `next`; the events around them read as usual.
pub fn malformed_entries_are_quarantined<H: Harness>(harness: &H) {
    let log = harness.create();
    let first = log.append(next_note("a", "first")).expect("append");
    harness.append_foreign(&log, b"{not json");
    harness.append_foreign(
        &log,
        br#"{"interaction":18446744073709551615,"actor":"x","type":"note","content":"c","timestamp":"2026-01-01T00:00:00Z"}"#,
    );
    harness.append_foreign(
        &log,
        br#"{"interaction":3,"type":"note","content":"no actor","timestamp":"2026-01-01T00:00:00Z"}"#,
    );
    let foreign_good = br#"{"interaction":5,"actor":"shell","type":"note","content":"from a shell","timestamp":"2026-01-01T00:00:00Z"}"#;
    harness.append_foreign(&log, foreign_good);
    let last = log.append(next_note("b", "last")).expect("append");
    assert_eq!(first.interaction, 1);
    assert_eq!(
        last.interaction, 6,
        "`next` counted a malformed entry, or missed the foreign event"
    );
    let (stored, _) = read_all(&log, Position::START);
    let contents: Vec<&str> = stored.iter().map(|s| s.event.content.as_str()).collect();
    assert_eq!(contents, ["first", "from a shell", "last"]);
    assert_eq!(
        harness.quarantined(&log),
        3,
        "each malformed entry set aside once"
    );
    let _ = read_all(&harness.reopen(&log), Position::START);
    assert_eq!(
        harness.quarantined(&log),
        3,
        "a second read set entries aside again"
    );
}
