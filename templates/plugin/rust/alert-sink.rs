//! {{name}}: a huddle alert sink (world `alert-sink` of huddle:plugin@0.2.0).
//!
//! POSTs each batch of alerts as one JSON document to a URL:
//! `{"alerts": [{"source", "count", "interaction", "actor", "type",
//! "content", "timestamp"}]}`.
//!
//! Settings (beside `plugin` and `allow` in its `[[alerts.sinks]]` table):
//! - `url` (required): where to POST; it must be on the sink's `allow` list.

use std::cell::RefCell;

// The generated bindings: `exports::...::sink::Guest` is the trait to
// implement, `huddle::plugin::http` is the host's HTTP, `huddle::plugin::types`
// holds the records the host passes in.
use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::types::{Alert, Level, Settings};
use huddle::plugin::{host_log, http};
use serde_json::json;

wit_bindgen::generate!({
    // Relative to Cargo.toml: the WIT `huddle plugins new` copied in.
    path: "wit",
    world: "alert-sink",
});

const PLUGIN: &str = "{{name}}";

thread_local! {
    // The host calls configure() once per instance, before any deliver().
    static URL: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn request_body(alerts: &[Alert]) -> String {
    let alerts: Vec<serde_json::Value> = alerts
        .iter()
        .map(|alert| {
            json!({
                "source": alert.source,
                "count": alert.count,
                "interaction": alert.event.interaction,
                "actor": alert.event.actor,
                "type": alert.event.type_,
                "content": alert.event.content,
                "timestamp": alert.event.timestamp,
            })
        })
        .collect();
    json!({ "alerts": alerts }).to_string()
}

/// 2xx is delivered; 408, 429 and 5xx may pass later (retried with backoff);
/// any other answer will not change by retrying the same request.
fn classify_status(url: &str, status: u16) -> Result<(), DeliveryError> {
    let reason = || format!("{PLUGIN}: {url} answered HTTP {status}");
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(DeliveryError::Transient(reason())),
        _ => Err(DeliveryError::Permanent(reason())),
    }
}

/// The host's refusals (allowlist, headers, the per-call request limit) are
/// configuration mistakes: retrying cannot help. A timeout or a failed
/// connection may pass later.
fn classify_http_error(error: http::HttpError) -> DeliveryError {
    use http::HttpError as E;
    match error {
        E::NotAllowed(reason) => {
            DeliveryError::Permanent(format!("{PLUGIN}: not allowed: {reason}"))
        }
        E::HeaderNotAllowed(name) => {
            DeliveryError::Permanent(format!("{PLUGIN}: request header not allowed: {name}"))
        }
        E::TooManyRequests => {
            DeliveryError::Permanent(format!("{PLUGIN}: too many requests in one call"))
        }
        E::Timeout(message) => DeliveryError::Transient(format!("{PLUGIN}: {message}")),
        E::ConnectionFailed(reason) => DeliveryError::Transient(format!("{PLUGIN}: {reason}")),
        // Handled by the caller: the request was made and has a status.
        E::ResponseTooLarge(response) => DeliveryError::Transient(format!(
            "{PLUGIN}: HTTP {} with a body over the limit",
            response.status
        )),
    }
}

struct Sink;

impl Guest for Sink {
    fn configure(settings: Settings) -> Result<(), String> {
        let mut url = None;
        for (key, value) in settings {
            match key.as_str() {
                "url" if value.starts_with("http://") || value.starts_with("https://") => {
                    url = Some(value)
                }
                "url" => {
                    return Err(format!(
                        "{PLUGIN}: `url` must be an http:// or https:// URL, not {value:?}"
                    ));
                }
                // Refusing unknown keys turns a typo in huddle.toml into a clear error.
                _ => return Err(format!("{PLUGIN}: unknown setting `{key}`")),
            }
        }
        let Some(url) = url else {
            return Err(format!("{PLUGIN}: the `url` setting is required"));
        };
        URL.set(Some(url));
        Ok(())
    }

    fn deliver(alerts: Vec<Alert>) -> Result<(), DeliveryError> {
        let Some(url) = URL.with_borrow(Clone::clone) else {
            return Err(DeliveryError::Permanent(format!(
                "{PLUGIN}: deliver called before configure"
            )));
        };
        let body = request_body(&alerts);
        let status = match http::post(&url, "application/json", &[], body.as_bytes()) {
            Ok(response) => response.status,
            // The body was cut at the host's limit; the status still tells.
            Err(http::HttpError::ResponseTooLarge(response)) => response.status,
            Err(error) => {
                let failure = classify_http_error(error);
                let (DeliveryError::Transient(reason) | DeliveryError::Permanent(reason)) =
                    &failure;
                host_log::log(Level::Warn, reason);
                return Err(failure);
            }
        };
        classify_status(&url, status)?;
        host_log::log(
            Level::Debug,
            &format!("{PLUGIN}: delivered {} alert(s) to {url}", alerts.len()),
        );
        Ok(())
    }
}

export!(Sink);
