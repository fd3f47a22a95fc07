//! huddle's webhook alert sink (world `alert-sink`).
//!
//! POSTs one JSON request per batch of alerts through the host's `http`
//! import, which enforces the sink's allowlist and timeout:
//!
//! ```toml
//! [[alerts.sinks]]
//! plugin = "webhook"
//! url = "https://hooks.slack.com/services/..."
//! format = "slack"              # or "alertmanager"; default "slack"
//! allow = ["https://hooks.slack.com/"]
//! ```
//!
//! - `slack`: `{"text": ...}` with one line per alert, for Slack, Mattermost,
//!   Rocket.Chat and the many tools that accept that shape. Alert text is
//!   escaped as Slack documents (`&` `<` `>` become `&amp;` `&lt;` `&gt;`),
//!   so an event cannot ping `<!channel>` or forge a link `<https://x|text>`.
//! - `alertmanager`: a JSON list of alerts for Alertmanager's `/api/v2/alerts`.
//!   Values stay plain text (Alertmanager hands them to receivers of every
//!   kind; escaping for a chat is the receiver template's job), but `summary`
//!   is one bounded line and `description` the bounded content, control
//!   characters shown as escapes in both.

use std::cell::RefCell;

use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::http;
use huddle::plugin::types::{Alert, Settings};
use serde_json::json;

wit_bindgen::generate!({
    path: "../../wit/since_v0.2.0",
    world: "alert-sink",
});

/// Longest content quoted in a chat line; chat services cap message length and
/// a person needs the gist, not a 1 MiB log dump.
const MAX_SUMMARY_CHARS: usize = 500;
/// Longest content in an Alertmanager `description`.
const MAX_DESCRIPTION_CHARS: usize = 4000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Slack,
    Alertmanager,
}

#[derive(Debug)]
struct Config {
    url: String,
    format: Format,
}

impl Config {
    fn from_settings(settings: Settings) -> Result<Self, String> {
        let mut url = None;
        let mut format = Format::Slack;
        for (key, value) in settings {
            match key.as_str() {
                "url" => url = Some(value),
                "format" => {
                    format = match value.as_str() {
                        "slack" => Format::Slack,
                        "alertmanager" => Format::Alertmanager,
                        other => {
                            return Err(format!(
                                "webhook sink: format `{other}` is not supported \
                                 (expected \"slack\" or \"alertmanager\")"
                            ));
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "webhook sink: unknown setting `{key}` (expected `url` or `format`)"
                    ));
                }
            }
        }
        match url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Ok(Self { url, format })
            }
            Some(url) => Err(format!(
                "webhook sink: setting `url` must be an http:// or https:// URL, not {url:?}"
            )),
            None => Err("webhook sink: setting `url` is required".to_owned()),
        }
    }
}

/// The body of one request for the whole batch.
fn request_body(format: Format, alerts: &[Alert]) -> serde_json::Value {
    match format {
        Format::Slack => {
            let lines: Vec<String> = alerts.iter().map(summary_line).collect();
            json!({ "text": lines.join("\n") })
        }
        Format::Alertmanager => alerts.iter().map(alertmanager_alert).collect(),
    }
}

/// e.g. `huddle error in team-a from Agent A: Failed to acquire lock (x3)`
fn summary_line(alert: &Alert) -> String {
    let mut line = format!(
        "huddle error in {} from {}: {}",
        slack_escape(&one_line(&alert.source, MAX_SUMMARY_CHARS)),
        slack_escape(&one_line(&alert.event.actor, MAX_SUMMARY_CHARS)),
        slack_escape(&one_line(&alert.event.content, MAX_SUMMARY_CHARS))
    );
    if alert.count > 1 {
        line.push_str(&format!(" (x{})", alert.count));
    }
    line
}

/// Slack's escaping of message text
/// (<https://api.slack.com/reference/surfaces/formatting#escaping>): these
/// three characters are its control characters, everything else is text.
fn slack_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Collapses whitespace runs (newlines included) to single spaces, shows
/// other control characters as escapes (`\u{1b}`) and cuts long text at a
/// character boundary, marking the cut.
fn one_line(text: &str, max_chars: usize) -> String {
    let mut words = text.split_whitespace();
    let mut line = words.next().unwrap_or_default().to_owned();
    for word in words {
        line.push(' ');
        line.push_str(word);
    }
    cut(&visible_controls(&line, false), max_chars)
}

/// Control characters as escapes; newlines and tabs kept if `keep_lines`.
fn visible_controls(text: &str, keep_lines: bool) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_lines && matches!(c, '\n' | '\t')) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => {
            let mut cut = text[..end].to_owned();
            cut.push('…');
            cut
        }
        None => text.to_owned(),
    }
}

fn alertmanager_alert(alert: &Alert) -> serde_json::Value {
    json!({
        "labels": {
            "alertname": "HuddleError",
            "actor": alert.event.actor,
            "source": alert.source,
            "severity": "error",
        },
        // Alertmanager wants every annotation value as a string.
        "annotations": {
            "summary": one_line(&alert.event.content, MAX_SUMMARY_CHARS),
            "description": cut(&visible_controls(&alert.event.content, true), MAX_DESCRIPTION_CHARS),
            "count": alert.count.to_string(),
        },
        "startsAt": alert.event.timestamp,
    })
}

/// 2xx delivered; 5xx, 408 and 429 are worth retrying; any other answer means
/// this request will never be accepted as it is.
fn classify_status(status: u16, body: &str) -> Result<(), DeliveryError> {
    let reason = || format!("webhook answered HTTP {status}: {}", one_line(body, 200));
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(DeliveryError::Transient(reason())),
        _ => Err(DeliveryError::Permanent(reason())),
    }
}

/// Phrases of the host's refusals (off the allowlist, no HTTP capability, not
/// a URL): retrying cannot help. Anything else it reports (timeout, connection
/// refused, DNS) may pass later.
const REFUSAL_PHRASES: &[&str] = &["allowlist", "not allowed", "not a url"];

/// The host's typed refusal or failure, in words; refusals say "not allowed".
fn describe_http_error(error: http::HttpError) -> String {
    use http::HttpError as E;
    match error {
        E::NotAllowed(reason) => format!("not allowed: {reason}"),
        E::HeaderNotAllowed(name) => format!("not allowed: request header {name}"),
        E::TooManyRequests => "too many requests in one call".to_owned(),
        E::Timeout(message) => message,
        E::ConnectionFailed(reason) => reason,
        E::ResponseTooLarge(response) => {
            format!("HTTP {} with a body over the limit", response.status)
        }
    }
}

fn classify_host_error(error: String) -> DeliveryError {
    let lowercase = error.to_lowercase();
    if REFUSAL_PHRASES
        .iter()
        .any(|phrase| lowercase.contains(phrase))
    {
        DeliveryError::Permanent(error)
    } else {
        DeliveryError::Transient(error)
    }
}

thread_local! {
    // Set by configure(), which the host calls once before any delivery.
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct WebhookSink;

impl Guest for WebhookSink {
    fn configure(settings: Settings) -> Result<(), String> {
        let config = Config::from_settings(settings)?;
        CONFIG.with(|current| *current.borrow_mut() = Some(config));
        Ok(())
    }

    fn deliver(alerts: Vec<Alert>) -> Result<(), DeliveryError> {
        if alerts.is_empty() {
            return Ok(());
        }
        CONFIG.with(|config| {
            let config = config.borrow();
            let Some(config) = config.as_ref() else {
                return Err(DeliveryError::Permanent(
                    "webhook sink: deliver called before configure".to_owned(),
                ));
            };
            let body = request_body(config.format, &alerts).to_string();
            match http::post(&config.url, "application/json", &[], body.as_bytes()) {
                Ok(response) => classify_status(response.status, &response.body),
                // The body was cut at the host's limit: the status decides.
                Err(http::HttpError::ResponseTooLarge(response)) => {
                    classify_status(response.status, &response.body)
                }
                Err(error) => Err(classify_host_error(describe_http_error(error))),
            }
        })
    }
}

export!(WebhookSink);

#[cfg(test)]
mod tests {
    use super::*;
    use huddle::plugin::types::Event;

    fn alert(content: &str, count: u32) -> Alert {
        Alert {
            event: Event {
                interaction: 4,
                actor: "Agent A".to_owned(),
                type_: "error".to_owned(),
                content: content.to_owned(),
                timestamp: "2026-11-25T14:00:31Z".to_owned(),
                id: None,
                term: None,
            },
            count,
            source: "team-a".to_owned(),
        }
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    #[test]
    fn slack_body_has_one_line_per_alert() {
        let body = request_body(
            Format::Slack,
            &[alert("Failed to\nacquire lock", 3), alert("disk full", 1)],
        );
        assert_eq!(
            body,
            json!({"text": "huddle error in team-a from Agent A: Failed to acquire lock (x3)\n\
                            huddle error in team-a from Agent A: disk full"})
        );
    }

    #[test]
    fn slack_control_sequences_are_escaped() {
        let mut hostile = alert("<!channel> see <https://evil.example|the fix> & <@U123>", 1);
        hostile.event.actor = "<!here>".to_owned();
        hostile.source = "a&b".to_owned();
        let body = request_body(Format::Slack, &[hostile]);
        let text = body["text"].as_str().unwrap();
        assert_eq!(
            text,
            "huddle error in a&amp;b from &lt;!here&gt;: &lt;!channel&gt; see \
             &lt;https://evil.example|the fix&gt; &amp; &lt;@U123&gt;"
        );
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
    }

    #[test]
    fn alertmanager_values_are_bounded_and_show_controls() {
        let content = format!("first line\n\u{1b}]52;c;aGk=\u{7}{}", "x".repeat(10_000));
        let body = request_body(Format::Alertmanager, &[alert(&content, 1)]);
        let summary = body[0]["annotations"]["summary"].as_str().unwrap();
        let description = body[0]["annotations"]["description"].as_str().unwrap();
        assert!(
            summary.starts_with("first line \\u{1b}]52;c;aGk=\\u{7}x"),
            "{summary}"
        );
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS + 1);
        assert!(
            description.starts_with("first line\n\\u{1b}]52"),
            "{description}"
        );
        assert_eq!(description.chars().count(), MAX_DESCRIPTION_CHARS + 1);
        for text in [summary, description] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
        }
    }

    #[test]
    fn long_content_is_cut_at_a_char_boundary() {
        let line = one_line(&"é".repeat(MAX_SUMMARY_CHARS + 10), MAX_SUMMARY_CHARS);
        assert_eq!(line.chars().count(), MAX_SUMMARY_CHARS + 1);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn alertmanager_body_is_a_list_of_alerts() {
        let body = request_body(Format::Alertmanager, &[alert("disk full", 2)]);
        assert_eq!(
            body,
            json!([{
                "labels": {"alertname": "HuddleError", "actor": "Agent A",
                           "source": "team-a", "severity": "error"},
                "annotations": {"summary": "disk full", "description": "disk full", "count": "2"},
                "startsAt": "2026-11-25T14:00:31Z",
            }])
        );
    }

    #[test]
    fn statuses_and_host_errors_are_classified() {
        assert!(classify_status(204, "").is_ok());
        for status in [500, 503, 429, 408] {
            assert!(matches!(
                classify_status(status, ""),
                Err(DeliveryError::Transient(_))
            ));
        }
        for status in [400, 404, 301] {
            assert!(matches!(
                classify_status(status, ""),
                Err(DeliveryError::Permanent(_))
            ));
        }
        assert!(matches!(
            classify_host_error("timed out after 5s".to_owned()),
            DeliveryError::Transient(_)
        ));
        for refusal in [
            "http://x/ is not on this sink's allowlist (http://y/)",
            "http://x/ is not allowed: this sink's allowlist is empty, which denies every URL",
            "http://x/ is not allowed: this plugin has no HTTP capability",
            "\"x\" is not a URL: relative URL without a base",
        ] {
            assert!(
                matches!(
                    classify_host_error(refusal.to_owned()),
                    DeliveryError::Permanent(_)
                ),
                "{refusal}"
            );
        }
        assert!(matches!(
            classify_host_error("POST http://x/ failed: Connection refused".to_owned()),
            DeliveryError::Transient(_)
        ));
    }

    #[test]
    fn configure_validates_settings() {
        assert!(
            Config::from_settings(settings(&[("url", "hooks.example/x")]))
                .unwrap_err()
                .contains("http://")
        );
        let config = Config::from_settings(settings(&[("url", "http://h/")])).unwrap();
        assert_eq!(config.format, Format::Slack);
        let config = Config::from_settings(settings(&[
            ("url", "http://h/"),
            ("format", "alertmanager"),
        ]))
        .unwrap();
        assert_eq!(config.format, Format::Alertmanager);
        assert!(
            Config::from_settings(Vec::new())
                .unwrap_err()
                .contains("`url`")
        );
        assert!(
            Config::from_settings(settings(&[("url", "http://h/"), ("format", "teams")]))
                .unwrap_err()
                .contains("`teams`")
        );
        assert!(
            Config::from_settings(settings(&[("url", "http://h/"), ("channel", "#ops")]))
                .unwrap_err()
                .contains("`channel`")
        );
    }
}
