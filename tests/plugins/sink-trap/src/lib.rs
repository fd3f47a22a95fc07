//! Hostile alert sink: `deliver` panics (a trap) when an alert's content
//! contains "trap"; otherwise it POSTs the batch's contents, one a line, to
//! its `url`. A test can trap it once and watch later alerts still arrive.

use std::cell::RefCell;

use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::http;
use huddle::plugin::types::{Alert, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "alert-sink" });

thread_local! {
    static URL: RefCell<String> = const { RefCell::new(String::new()) };
}

struct SinkTrap;

impl Guest for SinkTrap {
    fn configure(settings: Settings) -> Result<(), String> {
        let url = settings
            .into_iter()
            .find(|(key, _)| key == "url")
            .map(|(_, url)| url)
            .ok_or("setting `url` is required")?;
        URL.with(|current| *current.borrow_mut() = url);
        Ok(())
    }

    fn deliver(alerts: Vec<Alert>) -> Result<(), DeliveryError> {
        if alerts.iter().any(|a| a.event.content.contains("trap")) {
            panic!("hostile sink panicked on purpose");
        }
        let body: Vec<&str> = alerts.iter().map(|a| a.event.content.as_str()).collect();
        let url = URL.with(|url| url.borrow().clone());
        match http::post(&url, "text/plain", body.join("\n").as_bytes()) {
            Ok(response) if response.status < 300 => Ok(()),
            Ok(response) => Err(DeliveryError::Transient(format!("HTTP {}", response.status))),
            Err(error) => Err(DeliveryError::Transient(error)),
        }
    }
}

export!(SinkTrap);
