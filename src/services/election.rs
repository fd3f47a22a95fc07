//! Leadership, derived from the log alone.
//!
//! - A **claim** is a `leader_election` event with `term` N and `"action": "claim"`.
//!   The first claim of a term in log order wins it; later claims of the same
//!   term lose. Candidates append a claim for N+1 with compare-and-append
//!   under the log lock, only if no claim for N+1 (and no heartbeat of the
//!   current leader) appeared since they last read: so at most one claim per
//!   term is usually written, and if two are, log order decides.
//! - A **heartbeat** from the leader is a `heartbeat` event carrying its term.
//!   (A `heartbeat` without a term is an agent saying it is alive.)
//! - A **resignation** is a `leader_election` event with `"action": "resign"`
//!   and the leader's term: the term is vacated, candidates go at once.
//! - **Fencing**: a leader acts only while no higher term exists, and every
//!   heartbeat it writes is itself a compare-and-append that fails once a
//!   higher claim is in the log (not flushed to disk: see
//!   [`leader_heartbeat`]). A paused leader that wakes up finds the
//!   higher term and steps down before doing anything.

use chrono::{DateTime, Utc};

use crate::backend::{append_unless, Backend, CasOutcome, Conditional, Position, StoreError};
use crate::model::event::{types, Event, InteractionRef, NewEvent};

pub const ACTION_FIELD: &str = "action";
pub const CLAIM: &str = "claim";
pub const RESIGN: &str = "resign";

/// Who leads, as far as the events read so far say.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leadership {
    /// The highest term claimed.
    pub term: u64,
    /// Winner of `term`, unless it resigned.
    pub leader: Option<String>,
    /// Time of the leader's last heartbeat in `term` (or of its claim), as
    /// the leader's own clock wrote it: for people to read. Whether the
    /// leader is silent is judged by when a reader saw [`Leadership::signs_of_life`]
    /// change, on its own monotonic clock.
    pub last_beat: Option<DateTime<Utc>>,
    /// Counts the leader's signs of life (its winning claim, its
    /// heartbeats): a reader notes when this number last changed.
    pub signs_of_life: u64,
}

impl Leadership {
    /// Folds one event in (events must come in log order).
    pub fn observe(&mut self, event: &Event) {
        let action = event.extra.get(ACTION_FIELD).and_then(|v| v.as_str());
        let from_leader = self.leader.as_deref() == Some(event.actor.as_str());
        match (event.kind.as_str(), event.term) {
            // First claim of a new term wins; any later claim of it loses.
            (types::LEADER_ELECTION, Some(term)) if action == Some(CLAIM) && term > self.term => {
                self.term = term;
                self.leader = Some(event.actor.clone());
                self.last_beat = parse_time(&event.timestamp);
                self.signs_of_life += 1;
            }
            (types::LEADER_ELECTION, Some(term))
                if action == Some(RESIGN) && term == self.term && from_leader =>
            {
                self.leader = None;
            }
            (types::HEARTBEAT, Some(term)) if term == self.term && from_leader => {
                self.last_beat = parse_time(&event.timestamp).or(self.last_beat);
                self.signs_of_life += 1;
            }
            _ => {}
        }
    }

    /// Seconds since the leader's last sign of life (None: no leader).
    pub fn silence(&self, now: DateTime<Utc>) -> Option<f64> {
        self.leader.as_ref()?;
        let beat = self.last_beat?;
        Some((now - beat).num_milliseconds().max(0) as f64 / 1000.0)
    }

    pub fn is_leader(&self, me: &str) -> bool {
        self.leader.as_deref() == Some(me)
    }
}

/// Reads the events appended since `cursor` into `leadership`.
pub fn follow_log(
    log: &dyn Backend,
    cursor: Position,
    leadership: &mut Leadership,
) -> Result<Position, StoreError> {
    crate::backend::scan(log, cursor, |record| {
        leadership.observe(&record.event);
        Ok(())
    })
}

/// One campaign: claims term N+1 unless, since `cursor`, someone else claimed
/// it or the current leader showed a sign of life. Returns the term won.
pub fn campaign(
    log: &dyn Backend,
    cursor: Position,
    leadership: &Leadership,
    me: &str,
) -> Result<Option<u64>, StoreError> {
    let term = leadership.term + 1;
    let current = leadership.clone();
    let claim = NewEvent::new(
        InteractionRef::Number(0),
        me,
        types::LEADER_ELECTION,
        format!("{me} claims leadership for term {term}"),
    )
    .cut_to_fit()
    .with_term(term)
    .with_field(ACTION_FIELD, CLAIM);
    let conflicts = move |event: &Event| {
        let claim_at_or_above =
            event.kind == types::LEADER_ELECTION && event.term.is_some_and(|t| t >= term);
        let leader_alive = event.kind == types::HEARTBEAT
            && event.term == Some(current.term)
            && current.leader.as_deref() == Some(event.actor.as_str());
        claim_at_or_above || leader_alive
    };
    match append_unless(log, cursor, claim, &conflicts)? {
        CasOutcome::Appended(_) => Ok(Some(term)),
        CasOutcome::Conflict(_) => Ok(None),
    }
}

/// Appends a heartbeat for `term` unless a higher term was claimed since
/// `cursor` (fencing). Returns false if the leader has been replaced.
/// `cursor` moves past everything the check read (and the beat), so the
/// next beat checks only what came after.
pub fn leader_heartbeat(
    log: &dyn Backend,
    cursor: &mut Position,
    me: &str,
    term: u64,
) -> Result<bool, StoreError> {
    let beat = NewEvent::new(
        InteractionRef::Number(0),
        me,
        types::HEARTBEAT,
        format!("leader {me} alive (term {term})"),
    )
    .cut_to_fit()
    .with_term(term)
    .fitted(log.max_content_bytes());
    beat.validate(log.max_content_bytes())?;
    let beat = beat.into_event(0);
    let superseded = |event: &Event| {
        event.kind == types::LEADER_ELECTION
            && event.term.is_some_and(|t| t > term)
            && event.extra.get(ACTION_FIELD).and_then(|v| v.as_str()) == Some(CLAIM)
    };
    loop {
        // Not flushed: a heartbeat lost in a crash is no loss, and one
        // waiting for a slow flush would leave a healthy leader silent.
        match log.append_if_head_volatile(*cursor, std::slice::from_ref(&beat))? {
            Conditional::Appended { head } => {
                *cursor = head;
                return Ok(true);
            }
            Conditional::Moved { events, head } => {
                *cursor = head;
                if events.iter().any(|stored| superseded(&stored.event)) {
                    return Ok(false);
                }
            }
        }
    }
}

/// What one campaign round came to (`huddle campaign`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    Won(u64),
    /// Lost: `wanted` was asked for and `claimed` is the highest term already claimed.
    TermTaken {
        claimed: u64,
    },
    Lost,
}

/// One election round from the whole log: claims the next term (or exactly
/// `wanted`, which must be the next one).
pub fn campaign_once(
    log: &dyn Backend,
    me: &str,
    wanted: Option<u64>,
) -> Result<Round, StoreError> {
    let mut leadership = Leadership::default();
    let cursor = follow_log(log, Position::START, &mut leadership)?;
    if wanted.is_some_and(|wanted| wanted != leadership.term + 1) {
        return Ok(Round::TermTaken {
            claimed: leadership.term,
        });
    }
    Ok(match campaign(log, cursor, &leadership, me)? {
        Some(term) => Round::Won(term),
        None => Round::Lost,
    })
}

pub fn parse_time(timestamp: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(timestamp)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(actor: &str, term: u64) -> Event {
        NewEvent::new(
            InteractionRef::Number(0),
            actor,
            types::LEADER_ELECTION,
            "claim",
        )
        .with_term(term)
        .with_field(ACTION_FIELD, CLAIM)
        .into_event(0)
    }

    #[test]
    fn first_claim_of_a_term_wins() {
        let mut state = Leadership::default();
        state.observe(&claim("a", 1));
        state.observe(&claim("b", 1));
        assert_eq!(state.leader.as_deref(), Some("a"));
        state.observe(&claim("b", 2));
        assert_eq!((state.term, state.leader.as_deref()), (2, Some("b")));
        // A stale claim for an old term changes nothing.
        state.observe(&claim("a", 2));
        state.observe(&claim("a", 1));
        assert_eq!(state.leader.as_deref(), Some("b"));
    }

    #[test]
    fn resignation_vacates_only_the_leaders_own_term() {
        let mut state = Leadership::default();
        state.observe(&claim("a", 3));
        let resign = |actor: &str, term| {
            NewEvent::new(
                InteractionRef::Number(0),
                actor,
                types::LEADER_ELECTION,
                "resign",
            )
            .with_term(term)
            .with_field(ACTION_FIELD, RESIGN)
            .into_event(0)
        };
        state.observe(&resign("b", 3));
        assert!(state.is_leader("a"));
        state.observe(&resign("a", 2));
        assert!(state.is_leader("a"));
        state.observe(&resign("a", 3));
        assert_eq!(state.leader, None);
    }
}
