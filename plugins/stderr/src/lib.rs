//! huddle's simplest alert sink (world `alert-sink`): each alert becomes one
//! line of huddle's own log at level `error`, which reaches standard error.
//! Plugins have no stdio of their own, so the `host-log` import is the way out.
//!
//! ```toml
//! [[alerts.sinks]]
//! plugin = "stderr"
//! ```

use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::host_log;
use huddle::plugin::types::{Alert, Level, Settings};

wit_bindgen::generate!({
    path: "../../wit/since_v0.2.0",
    world: "alert-sink",
});

/// e.g. `alert from team-a: Agent A at 2026-11-25T14:00:31Z: disk full (x3)`
fn alert_line(alert: &Alert) -> String {
    let mut line = format!(
        "alert from {}: {} at {}: {}",
        escape_controls(&alert.source),
        escape_controls(&alert.event.actor),
        alert.event.timestamp,
        escape_controls(&alert.event.content)
    );
    if alert.count > 1 {
        line.push_str(&format!(" (x{})", alert.count));
    }
    line
}

/// Keeps an alert on one line: newlines and other control characters are shown
/// as escapes (`\n`) instead of breaking the log into pieces.
fn escape_controls(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

struct StderrSink;

impl Guest for StderrSink {
    fn configure(settings: Settings) -> Result<(), String> {
        match settings.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!(
                "stderr sink: unknown setting `{key}` (this sink takes no settings)"
            )),
        }
    }

    fn deliver(alerts: Vec<Alert>) -> Result<(), DeliveryError> {
        for alert in &alerts {
            host_log::log(Level::Error, &alert_line(alert));
        }
        Ok(())
    }
}

export!(StderrSink);

#[cfg(test)]
mod tests {
    use super::*;
    use huddle::plugin::types::Event;

    #[test]
    fn an_alert_is_one_line() {
        let alert = Alert {
            event: Event {
                interaction: 4,
                actor: "Agent A".to_owned(),
                type_: "error".to_owned(),
                content: "disk full\nat /var".to_owned(),
                timestamp: "2026-11-25T14:00:31Z".to_owned(),
                id: None,
                term: None,
            },
            count: 3,
            source: "team-a".to_owned(),
        };
        assert_eq!(
            alert_line(&alert),
            "alert from team-a: Agent A at 2026-11-25T14:00:31Z: disk full\\nat /var (x3)"
        );
    }

    #[test]
    fn settings_are_refused() {
        assert!(StderrSink::configure(Vec::new()).is_ok());
        let err = StderrSink::configure(vec![("url".to_owned(), "x".to_owned())]).unwrap_err();
        assert!(err.contains("`url`"), "{err}");
    }
}
