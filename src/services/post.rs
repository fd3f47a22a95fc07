//! Posting events: `huddle log`, `huddle heartbeat`, and the MCP tools of
//! the same names.

use crate::backend::{Backend, EventStore, StoreError};
use crate::model::event::{types, Event, InteractionRef, NewEvent};

/// Appends one event and returns it as written (number, id, time). A paused
/// huddle answers [`StoreError::Paused`]: the event waits in the queue.
pub fn post(
    log: &dyn Backend,
    interaction: InteractionRef,
    actor: impl Into<String>,
    kind: impl Into<String>,
    content: impl Into<String>,
) -> Result<Event, StoreError> {
    log.append(NewEvent::new(interaction, actor, kind, content))
}

/// An agent says it is alive.
pub fn heartbeat(log: &dyn Backend, actor: impl Into<String>) -> Result<Event, StoreError> {
    log.append(
        NewEvent::new(InteractionRef::Number(0), actor, types::HEARTBEAT, "alive").cut_to_fit(),
    )
}
