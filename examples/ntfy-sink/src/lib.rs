//! Example alert sink: POSTs a plain-text message per batch of alerts, one line
//! per alert, the way ntfy (`https://ntfy.sh/<topic>`) and many chat bridges
//! accept it:
//!
//! ```text
//! [huddle] Agent A: Failed to acquire lock on events.log (x3)
//! ```
//!
//! Settings (every key of the `[[alerts.sinks]]` table except plugin, allow,
//! timeout_ms and memory_mb): `url`, required. The host only lets the POST
//! through if `url` is on the sink's `allow` list.

use std::cell::RefCell;

use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::http;
use huddle::plugin::types::{Alert, Settings};

wit_bindgen::generate!({
    // The WIT package of huddle; adjust the path if you copy this crate elsewhere.
    path: "../../wit",
    world: "alert-sink",
});

thread_local! {
    // The host calls configure() once per instance, before any deliver().
    static URL: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn message_line(alert: &Alert) -> String {
    // One line per alert: a newline inside content would read as a second alert.
    let content = alert.event.content.replace(['\r', '\n'], " ");
    let mut line = format!("[huddle] {}: {content}", alert.event.actor);
    if alert.count > 1 {
        line.push_str(&format!(" (x{})", alert.count));
    }
    line
}

struct NtfySink;

impl Guest for NtfySink {
    fn configure(settings: Settings) -> Result<(), String> {
        let mut url = None;
        for (key, value) in settings {
            match key.as_str() {
                "url" => url = Some(value),
                _ => return Err(format!("ntfy-sink: unknown setting `{key}`")),
            }
        }
        let url = url.ok_or("ntfy-sink: setting `url` is required")?;
        URL.with(|current| *current.borrow_mut() = Some(url));
        Ok(())
    }

    fn deliver(alerts: Vec<Alert>) -> Result<(), DeliveryError> {
        let Some(url) = URL.with(|url| url.borrow().clone()) else {
            return Err(DeliveryError::Permanent(
                "ntfy-sink: not configured".to_owned(),
            ));
        };
        let body: Vec<String> = alerts.iter().map(message_line).collect();
        match http::post(
            &url,
            "text/plain; charset=utf-8",
            body.join("\n").as_bytes(),
        ) {
            Ok(response) => match response.status {
                200..=299 => Ok(()),
                // The service is having trouble: the host retries with backoff.
                500..=599 => Err(DeliveryError::Transient(format!(
                    "HTTP {}",
                    response.status
                ))),
                // The request itself is wrong (bad topic, auth): retrying will not help.
                status => Err(DeliveryError::Permanent(format!(
                    "HTTP {status}: {}",
                    response.body
                ))),
            },
            // The host did not send it. Its refusals (off the allowlist, no
            // HTTP capability) are final; a timeout or a refused connection
            // may pass next time.
            Err(reason) if reason.contains("allowlist") || reason.contains("not allowed") => {
                Err(DeliveryError::Permanent(reason))
            }
            Err(reason) => Err(DeliveryError::Transient(reason)),
        }
    }
}

export!(NtfySink);
