//! The event model: what one line of `events.log` holds, and the rules a new
//! event must satisfy before anything is written.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Types huddle itself writes.
pub mod types {
    pub const ERROR: &str = "error";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const LEADER_ELECTION: &str = "leader_election";
}

/// The actor name huddle uses for events it writes about itself.
pub const HOST_ACTOR: &str = "huddle";

/// Longest accepted actor name, in bytes.
pub const MAX_ACTOR_BYTES: usize = 256;
/// Longest accepted type name, in bytes.
pub const MAX_TYPE_BYTES: usize = 64;
/// Default limit on content, in bytes (`log.max_content_bytes` in huddle.toml).
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 1024 * 1024;
/// Largest interaction number or term: the largest integer a JSON consumer
/// that reads numbers as doubles (JavaScript, jq) holds exactly, 2^53 - 1.
pub const MAX_NUMBER: u64 = (1 << 53) - 1;
/// Longest accepted event id, in bytes (huddle writes 36-byte UUIDs).
pub const MAX_ID_BYTES: usize = 128;

/// One line of the log. The first five fields are the brief's and are required;
/// `id` and `term` are written by huddle; any other field is kept as it was read.
///
/// Deserialisation is written by hand (below) rather than with
/// `#[serde(flatten)]`, which buffers every field of every line and made
/// reading a large log twice as slow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub interaction: u64,
    pub actor: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Fields written by other tools or later versions: kept, never dropped.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

/// A key of an event object; known keys without allocating.
enum Field {
    Interaction,
    Actor,
    Type,
    Content,
    Timestamp,
    Id,
    Term,
    Other(String),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
        struct FieldVisitor;
        impl serde::de::Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Field, E> {
                Ok(match name {
                    "interaction" => Field::Interaction,
                    "actor" => Field::Actor,
                    "type" => Field::Type,
                    "content" => Field::Content,
                    "timestamp" => Field::Timestamp,
                    "id" => Field::Id,
                    "term" => Field::Term,
                    other => Field::Other(other.to_string()),
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> serde::de::Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        use serde::de::Error;
        let mut interaction = None;
        let mut actor = None;
        let mut kind = None;
        let mut content = None;
        let mut timestamp = None;
        let mut id = None;
        let mut term = None;
        let mut extra = Map::new();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Interaction => interaction = Some(map.next_value::<u64>()?),
                Field::Actor => actor = Some(map.next_value::<String>()?),
                Field::Type => kind = Some(map.next_value::<String>()?),
                Field::Content => content = Some(map.next_value::<String>()?),
                Field::Timestamp => timestamp = Some(map.next_value::<String>()?),
                Field::Id => id = map.next_value::<Option<String>>()?,
                Field::Term => term = map.next_value::<Option<u64>>()?,
                Field::Other(name) => {
                    extra.insert(name, map.next_value::<Value>()?);
                }
            }
        }
        Ok(Event {
            interaction: interaction.ok_or_else(|| A::Error::missing_field("interaction"))?,
            actor: actor.ok_or_else(|| A::Error::missing_field("actor"))?,
            kind: kind.ok_or_else(|| A::Error::missing_field("type"))?,
            content: content.ok_or_else(|| A::Error::missing_field("content"))?,
            timestamp: timestamp.ok_or_else(|| A::Error::missing_field("timestamp"))?,
            id,
            term,
            extra,
        })
    }
}

impl Event {
    /// The JSON line for this event, without the trailing newline.
    pub fn to_line(&self) -> String {
        // Serialising a struct of strings and integers into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one log line (without its newline), checking that the five
    /// required fields are present with the right JSON types.
    pub fn from_line(line: &[u8]) -> Result<Event, String> {
        // The whole line is checked for UTF-8 once, so the parser need not
        // check each string again (`from_slice` would).
        let text = std::str::from_utf8(line).map_err(|bad| not_utf8(&bad))?;
        serde_json::from_str::<Event>(text).map_err(|error| explain_bad_line(text, &error))
    }

    /// Parses one log line and checks it against the rules of `huddle log`:
    /// a line written by another tool that breaks them is malformed, exactly
    /// like one that is not JSON, so nothing downstream (plugins, the
    /// rendered files, `next`) ever sees an event `huddle log` would refuse.
    pub fn from_log_line(line: &[u8], max_content_bytes: usize) -> Result<Event, String> {
        let event = Event::from_line(line)?;
        event
            .check(max_content_bytes)
            .map_err(|error| error.to_string())?;
        Ok(event)
    }

    /// The rules every event in the log meets, whoever wrote it.
    pub fn check(&self, max_content_bytes: usize) -> Result<(), ValidationError> {
        validate_number("interaction", self.interaction)?;
        validate_actor(&self.actor)?;
        validate_type(&self.kind)?;
        validate_content(&self.content, max_content_bytes)?;
        validate_timestamp(&self.timestamp)?;
        if let Some(term) = self.term {
            validate_number("term", term)?;
        }
        if let Some(id) = &self.id {
            validate_id(id)?;
        }
        Ok(())
    }

    pub fn is_error(&self) -> bool {
        self.kind == types::ERROR
    }
}

/// Which interaction a new event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InteractionRef {
    Number(u64),
    /// Allocate max + 1 under the lock.
    Next,
}

impl std::str::FromStr for InteractionRef {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "next" {
            return Ok(InteractionRef::Next);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::new(
                "interaction",
                format!("must be a non-negative integer or `next`, got {s:?}"),
            ));
        }
        match s.parse::<u64>() {
            Ok(number) if number <= MAX_NUMBER => Ok(InteractionRef::Number(number)),
            _ => Err(ValidationError::new(
                "interaction",
                format!(
                    "must be at most {MAX_NUMBER} (2^53 - 1), got {}",
                    shorten(s)
                ),
            )),
        }
    }
}

/// An event as a caller asks for it, before it has an id, a timestamp or a number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub interaction: InteractionRef,
    pub actor: String,
    pub kind: String,
    pub content: String,
    pub term: Option<u64>,
    /// Extra fields written as they are (huddle's own, e.g. an election `action`).
    pub extra: Map<String, Value>,
    /// See [`NewEvent::cut_to_fit`].
    fits_by_cutting: bool,
}

impl NewEvent {
    pub fn new(
        interaction: InteractionRef,
        actor: impl Into<String>,
        kind: impl Into<String>,
        content: impl Into<String>,
    ) -> NewEvent {
        NewEvent {
            interaction,
            actor: actor.into(),
            kind: kind.into(),
            content: content.into(),
            term: None,
            extra: Map::new(),
            fits_by_cutting: false,
        }
    }

    /// For the events huddle writes about itself (reports, heartbeats,
    /// election claims): content over `log.max_content_bytes` is cut to fit
    /// (marked with "…") instead of refused. A report quotes what went wrong
    /// (a plugin's message, a foreign line's reason) at whatever length; a
    /// report refused for its length would be lost, and fail the work it
    /// reports on.
    pub fn cut_to_fit(mut self) -> NewEvent {
        self.fits_by_cutting = true;
        self
    }

    /// Applies [`NewEvent::cut_to_fit`], if asked for, against `max_content_bytes`.
    pub fn fitted(mut self, max_content_bytes: usize) -> NewEvent {
        if self.fits_by_cutting {
            cut_content(&mut self.content, max_content_bytes);
        }
        self
    }

    pub fn with_field(mut self, name: &str, value: impl Into<Value>) -> NewEvent {
        self.extra.insert(name.to_string(), value.into());
        self
    }

    pub fn with_term(mut self, term: u64) -> NewEvent {
        self.term = Some(term);
        self
    }

    /// Checks every rule of SPEC.md's "Event" section.
    pub fn validate(&self, max_content_bytes: usize) -> Result<(), ValidationError> {
        if let InteractionRef::Number(number) = self.interaction {
            validate_number("interaction", number)?;
        }
        validate_actor(&self.actor)?;
        validate_type(&self.kind)?;
        validate_content(&self.content, max_content_bytes)?;
        if let Some(term) = self.term {
            validate_number("term", term)?;
        }
        Ok(())
    }

    /// Stamps the event with its number, a fresh id and the current time.
    pub fn into_event(self, interaction: u64) -> Event {
        Event {
            interaction,
            actor: self.actor,
            kind: self.kind,
            content: self.content,
            timestamp: now_rfc3339(),
            id: Some(new_event_id()),
            term: self.term,
            extra: self.extra,
        }
    }
}

/// Why a line is not an event, naming the field at fault where there is
/// one: serde's own message says "invalid type: string, expected u64" but
/// not which field. Runs on the error path only, so reading stays fast.
fn not_utf8(bad: &std::str::Utf8Error) -> String {
    format!(
        "not UTF-8 text (first bad byte at byte {} of the line)",
        bad.valid_up_to()
    )
}

fn explain_bad_line(line: &str, error: &serde_json::Error) -> String {
    let fields = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(fields)) => fields,
        Ok(other) => {
            return format!(
                "not an event: {}, where an event is a JSON object",
                describe_json(&other)
            )
        }
        Err(_) => return format!("not JSON: {error}"),
    };
    const NUMBER: &str = "a non-negative integer";
    const TEXT: &str = "a string";
    for (field, expected) in [
        ("interaction", NUMBER),
        ("actor", TEXT),
        ("type", TEXT),
        ("content", TEXT),
        ("timestamp", TEXT),
        ("id", TEXT),
        ("term", NUMBER),
    ] {
        let optional = matches!(field, "id" | "term");
        let fits = match fields.get(field) {
            None => {
                if optional {
                    continue;
                }
                return format!(
                    "invalid {field}: missing (an event needs interaction, actor, type, \
                     content and timestamp)"
                );
            }
            Some(Value::Null) => optional,
            Some(Value::Number(n)) => expected == NUMBER && n.is_u64(),
            Some(Value::String(_)) => expected == TEXT,
            Some(_) => false,
        };
        if !fits {
            let shown = describe_json(&fields[field]);
            return format!("invalid {field}: must be {expected}, got {shown}");
        }
    }
    error.to_string()
}

/// A JSON value as an error message shows it: its kind and a short quote.
fn describe_json(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {}", shorten(&n.to_string())),
        Value::String(text) => format!("the string {:?}", shorten(text)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Interaction numbers and terms: at most [`MAX_NUMBER`].
pub fn validate_number(field: &'static str, number: u64) -> Result<(), ValidationError> {
    if number > MAX_NUMBER {
        return Err(ValidationError::new(
            field,
            format!(
                "is {number}, over the limit of {MAX_NUMBER} (2^53 - 1, the largest integer every JSON reader holds exactly)"
            ),
        ));
    }
    Ok(())
}

fn validate_content(content: &str, max_content_bytes: usize) -> Result<(), ValidationError> {
    if content.len() > max_content_bytes {
        return Err(ValidationError::new(
            "content",
            format!(
                "is {} bytes, over the limit of {max_content_bytes} bytes (log.max_content_bytes)",
                content.len()
            ),
        ));
    }
    if let Some(pos) = content.find('\0') {
        return Err(ValidationError::new(
            "content",
            format!("contains a NUL byte at byte {pos}"),
        ));
    }
    Ok(())
}

fn validate_timestamp(timestamp: &str) -> Result<(), ValidationError> {
    if chrono::DateTime::parse_from_rfc3339(timestamp).is_err() {
        return Err(ValidationError::new(
            "timestamp",
            format!(
                "must be an RFC 3339 date and time such as 2026-11-25T14:00:31Z, got {:?}",
                shorten(timestamp)
            ),
        ));
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ValidationError::new(
            "id",
            format!("must be 1 to {MAX_ID_BYTES} bytes, got {} bytes", id.len()),
        ));
    }
    if let Some(c) = id.chars().find(|c| is_invisible_control(*c)) {
        return Err(ValidationError::new(
            "id",
            format!("must not contain control characters, found {c:?}"),
        ));
    }
    Ok(())
}

/// Characters a name must not hold: controls (C0, DEL, C1), line and paragraph
/// separators (a line break to a CommonMark reader or an editor), and the
/// zero-width and bidirectional formatting characters that make a name look
/// like another or reorder the text shown after it.
pub fn is_invisible_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Cuts `content` to at most `max_bytes`, at a character boundary, ending in
/// "…" when it was cut and there is room for it.
pub fn cut_content(content: &mut String, max_bytes: usize) {
    const MARK: char = '…';
    if content.len() <= max_bytes {
        return;
    }
    let room = if max_bytes >= MARK.len_utf8() {
        max_bytes - MARK.len_utf8()
    } else {
        max_bytes
    };
    let mut end = room;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    content.truncate(end);
    if room < max_bytes {
        content.push(MARK);
    }
}

/// A value quoted in an error message, cut to a readable length.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 64;
    if text.len() <= SHOWN {
        return text.to_string();
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

pub fn validate_actor(actor: &str) -> Result<(), ValidationError> {
    if actor.trim().is_empty() {
        return Err(ValidationError::new("actor", "must not be empty"));
    }
    if actor.len() > MAX_ACTOR_BYTES {
        return Err(ValidationError::new(
            "actor",
            format!(
                "is {} bytes, over the limit of {MAX_ACTOR_BYTES} bytes",
                actor.len()
            ),
        ));
    }
    if let Some(c) = actor.chars().find(|c| is_invisible_control(*c)) {
        return Err(ValidationError::new(
            "actor",
            format!(
                "must not contain control, line-separator or bidi-override characters, found {c:?}"
            ),
        ));
    }
    Ok(())
}

pub fn validate_type(kind: &str) -> Result<(), ValidationError> {
    let mut bytes = kind.bytes();
    let well_formed = matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if !well_formed {
        return Err(ValidationError::new(
            "type",
            format!("must match [a-z][a-z0-9_-]*, got {:?}", shorten(kind)),
        ));
    }
    if kind.len() > MAX_TYPE_BYTES {
        return Err(ValidationError::new(
            "type",
            format!(
                "is {} bytes, over the limit of {MAX_TYPE_BYTES} bytes",
                kind.len()
            ),
        ));
    }
    Ok(())
}

/// Bad input: names the field and the rule it broke. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct ValidationError {
    pub field: &'static str,
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> ValidationError {
        ValidationError {
            field,
            problem: problem.into(),
        }
    }
}

/// Current time, RFC 3339 in UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A UUIDv7: unique across processes and machines, and sortable by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_interaction_refs() {
        assert_eq!("7".parse::<InteractionRef>(), Ok(InteractionRef::Number(7)));
        assert_eq!("next".parse::<InteractionRef>(), Ok(InteractionRef::Next));
        for bad in ["", "-1", "1.5", "abc", " 1", "99999999999999999999999"] {
            let err = bad.parse::<InteractionRef>().unwrap_err();
            assert_eq!(err.field, "interaction", "{bad:?}");
        }
    }

    #[test]
    fn keeps_unknown_fields() {
        let line = br#"{"interaction":1,"actor":"a","type":"note","content":"c","timestamp":"t","mood":"calm","n":[1,2]}"#;
        let event = Event::from_line(line).unwrap();
        assert_eq!(event.extra.get("mood"), Some(&Value::from("calm")));
        let again = Event::from_line(event.to_line().as_bytes()).unwrap();
        assert_eq!(again, event);
        assert!(event.to_line().contains(r#""n":[1,2]"#));
    }

    #[test]
    fn a_number_in_a_field_of_another_tool_reads_back_exactly_after_writing() {
        let line = br#"{"interaction":1,"actor":"a","type":"note","content":"c","timestamp":"t","n":555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555551}"#;
        let event = Event::from_line(line).unwrap();
        assert_eq!(Event::from_line(event.to_line().as_bytes()).unwrap(), event);
    }

    #[test]
    fn rejects_mistyped_fields() {
        for line in [
            &br#"{"interaction":"1","actor":"a","type":"t","content":"c","timestamp":"t"}"#[..],
            br#"{"interaction":-1,"actor":"a","type":"t","content":"c","timestamp":"t"}"#,
            br#"{"actor":"a","type":"t","content":"c","timestamp":"t"}"#,
            br#"{"interaction":1,"actor":"a","type":"t","content":5,"timestamp":"t"}"#,
            br#"not json"#,
        ] {
            assert!(
                Event::from_line(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn validates_new_events() {
        let ok = NewEvent::new(
            InteractionRef::Number(1),
            "Agent A",
            "question",
            "hi\nthere",
        );
        assert!(ok.validate(100).is_ok());
        let cases = [
            (NewEvent::new(InteractionRef::Next, "", "q", ""), "actor"),
            (
                NewEvent::new(InteractionRef::Next, "a\u{7}", "q", ""),
                "actor",
            ),
            (NewEvent::new(InteractionRef::Next, "a", "Q", ""), "type"),
            (NewEvent::new(InteractionRef::Next, "a", "q\n", ""), "type"),
            (
                NewEvent::new(InteractionRef::Next, "a", "q", "x".repeat(101)),
                "content",
            ),
        ];
        for (event, field) in cases {
            assert_eq!(event.validate(100).unwrap_err().field, field, "{event:?}");
        }
    }
}
