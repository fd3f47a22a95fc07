//! The MCP tools: their schemas (a contract, like the CLI's command names),
//! their arguments, and the service each one calls.
//!
//! Arguments are checked here, not by the SDK against the schema, so that a
//! bad value gets the CLI's own message (the same validation code) as a tool
//! error the agent can read and act on.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use serde_json::{json, Value};

use crate::model::event::{InteractionRef, ValidationError};

/// The tools, with their input schemas. `pinned` is the `--actor` speaker:
/// the fields naming who speaks become optional, defaulting to it.
pub fn list(pinned: Option<&str>) -> Vec<Tool> {
    let speaker = |what: &str| -> Value {
        let description = match pinned {
            Some(actor) => format!(
                "{what} This server speaks only for {actor:?}: leave it out, or give exactly that."
            ),
            None => what.to_string(),
        };
        json!({ "type": "string", "description": description })
    };
    let required = |fields: &[&str], speaker_field: &str| -> Value {
        fields
            .iter()
            .filter(|field| pinned.is_none() || **field != speaker_field)
            .map(|field| Value::String((*field).into()))
            .collect()
    };
    let agent_doc = "Your agent id: 1 to 64 characters of [A-Za-z0-9._-], not starting with '.'. \
                     Your checkpoint (the last interaction you handled) is kept under this id.";
    let limit = json!({
        "type": "integer", "minimum": 1, "maximum": crate::services::inbox::Query::MAX_LIMIT,
        "description": "At most this many events; `more` in the answer says whether others follow.",
    });
    vec![
        tool(
            "log",
            "Append one event to the huddle's log and return it as written (its interaction \
             number, unique id and timestamp). Use interaction \"next\" to open a new interaction \
             (the highest number so far plus one, allocated atomically), or the number of an \
             existing interaction to answer in it.",
            json!({
                "type": "object",
                "properties": {
                    "interaction": {
                        "description": "The interaction number (a non-negative integer), or \"next\" for a new one.",
                        "oneOf": [
                            { "type": "integer", "minimum": 0, "maximum": crate::model::event::MAX_NUMBER },
                            { "type": "string", "enum": ["next"] }
                        ]
                    },
                    "actor": speaker("Who speaks (not empty, no control characters)."),
                    "type": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_-]*$",
                        "description": "The kind of event, e.g. question, answer, decision, status, error."
                    },
                    "content": {
                        "type": "string",
                        "description": "Free text: any UTF-8, markdown, newlines (at most the configured limit, 1 MiB by default)."
                    }
                },
                "required": required(&["interaction", "actor", "type", "content"], "actor"),
                "additionalProperties": false
            }),
        ),
        tool(
            "next",
            "The events of the interactions after your checkpoint, in log order, without the \
             hidden types (heartbeats, elections). Handle them, then call `ack` with the highest \
             interaction you handled. Returns {after, events, more}.",
            json!({
                "type": "object",
                "properties": {
                    "agent": { "type": "string", "description": agent_doc },
                    "limit": limit
                },
                "required": ["agent"],
                "additionalProperties": false
            }),
        ),
        tool(
            "ack",
            "Record that you handled every interaction up to `interaction`: `next` and `wait` \
             then show only later ones. Returns {agent, checkpoint}.",
            json!({
                "type": "object",
                "properties": {
                    "agent": speaker(agent_doc),
                    "interaction": {
                        "type": "integer", "minimum": 0, "maximum": crate::model::event::MAX_NUMBER,
                        "description": "The highest interaction number you handled."
                    }
                },
                "required": required(&["agent", "interaction"], "agent"),
                "additionalProperties": false
            }),
        ),
        tool(
            "wait",
            "Block until there are events after your checkpoint, then return them as `next` \
             does; or return an empty list once timeout_ms has passed (timed_out: true). Use it \
             instead of polling `next`.",
            json!({
                "type": "object",
                "properties": {
                    "agent": { "type": "string", "description": agent_doc },
                    "timeout_ms": {
                        "type": "integer", "minimum": 0,
                        "maximum": crate::services::inbox::MAX_WAIT.as_millis() as u64,
                        "description": "How long to wait at most, in milliseconds (at most 60000)."
                    }
                },
                "required": ["agent", "timeout_ms"],
                "additionalProperties": false
            }),
        ),
        tool(
            "read",
            "Read events from the log, for catching up and searching, in log order. Every \
             condition given must hold. Without `types`, hidden types (heartbeats, elections) \
             are left out. Returns {events, more}; to go on, ask again from a later interaction.",
            json!({
                "type": "object",
                "properties": {
                    "from_interaction": { "type": "integer", "minimum": 0, "description": "Interactions from this number on." },
                    "to_interaction": { "type": "integer", "minimum": 0, "description": "Interactions up to this number." },
                    "types": {
                        "type": "array",
                        "items": { "type": "string", "pattern": "^[a-z][a-z0-9_-]*$" },
                        "description": "Only events of these types (hidden ones included when named)."
                    },
                    "actor": { "type": "string", "description": "Only events by this actor." },
                    "text": { "type": "string", "description": "Only events whose content contains this text (case-sensitive)." },
                    "limit": {
                        "type": "integer", "minimum": 1, "maximum": crate::services::inbox::Query::MAX_LIMIT,
                        "description": "At most this many events (default 100)."
                    }
                },
                "additionalProperties": false
            }),
        ),
        tool(
            "heartbeat",
            "Say that you are alive: `status` lists you among the actors with the age of your \
             last event.",
            json!({
                "type": "object",
                "properties": { "actor": speaker("Who is alive.") },
                "required": required(&["actor"], "actor"),
                "additionalProperties": false
            }),
        ),
        tool(
            "status",
            "The huddle's state: leader, term, leader heartbeat age, actors, last errors, event \
             count, snapshot freshness, alerts, pause, sync (the object of `huddle status --json`).",
            json!({ "type": "object", "properties": {}, "additionalProperties": false }),
        ),
    ]
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let schema = match schema {
        Value::Object(object) => object,
        _ => JsonObject::new(),
    };
    Tool::new(name, description, Arc::new(schema))
}

/// A tool's arguments, checked one field at a time.
pub struct Args {
    map: JsonObject,
}

impl Args {
    /// Refuses fields the tool does not take: a misspelt optional field
    /// would otherwise be ignored silently.
    pub fn new(arguments: Option<JsonObject>, known: &[&str]) -> Result<Args, ValidationError> {
        let map = arguments.unwrap_or_default();
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(ValidationError::new(
                "arguments",
                format!(
                    "unknown field {unknown:?}; this tool takes {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        Ok(Args { map })
    }

    pub fn string(&self, field: &'static str) -> Result<Option<String>, ValidationError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(ValidationError::new(
                field,
                format!("must be a string, got {other}"),
            )),
        }
    }

    pub fn required_string(&self, field: &'static str) -> Result<String, ValidationError> {
        self.string(field)?.ok_or_else(|| missing(field))
    }

    pub fn integer(&self, field: &'static str) -> Result<Option<u64>, ValidationError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) if number.as_u64().is_some() => {
                let value = number.as_u64().unwrap_or_default();
                crate::model::event::validate_number(field, value)?;
                Ok(Some(value))
            }
            Some(other) => Err(ValidationError::new(
                field,
                format!("must be a non-negative integer, got {other}"),
            )),
        }
    }

    pub fn required_integer(&self, field: &'static str) -> Result<u64, ValidationError> {
        self.integer(field)?.ok_or_else(|| missing(field))
    }

    pub fn count(&self, field: &'static str) -> Result<Option<usize>, ValidationError> {
        self.integer(field)?
            .map(|n| {
                usize::try_from(n).map_err(|_| {
                    ValidationError::new(field, format!("is {n}, too large for this machine"))
                })
            })
            .transpose()
    }

    pub fn strings(&self, field: &'static str) -> Result<Option<Vec<String>>, ValidationError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(ValidationError::new(
                        field,
                        format!("must be a list of strings, found {other}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(ValidationError::new(
                field,
                format!("must be a list of strings, got {other}"),
            )),
        }
    }

    /// An interaction number or `next`, through the CLI's own parser: a
    /// JSON number is read as the text it stands for, so `-1`, `1.5` or a
    /// number past 2^53 get the words `huddle log` uses.
    pub fn interaction(&self) -> Result<InteractionRef, ValidationError> {
        let text = match self.map.get("interaction") {
            None | Some(Value::Null) => return Err(missing("interaction")),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        let interaction: InteractionRef = text.parse()?;
        if let InteractionRef::Number(number) = interaction {
            crate::model::event::validate_number("interaction", number)?;
        }
        Ok(interaction)
    }
}

fn missing(field: &'static str) -> ValidationError {
    ValidationError::new(field, "is required")
}

/// The speaker a call names, held to the `--actor` the server was started
/// with: one agent cannot speak for another.
pub fn speaker(
    given: Option<String>,
    field: &'static str,
    pinned: Option<&str>,
) -> Result<String, ValidationError> {
    match (given, pinned) {
        (Some(given), Some(pinned)) if given != pinned => Err(ValidationError::new(
            field,
            format!(
                "this server speaks only for {pinned:?} (huddle mcp --actor); it cannot act as {given:?}"
            ),
        )),
        (Some(given), _) => Ok(given),
        (None, Some(pinned)) => Ok(pinned.to_string()),
        (None, None) => Err(missing(field)),
    }
}
