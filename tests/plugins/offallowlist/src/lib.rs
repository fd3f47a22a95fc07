//! Hostile alert sink: POSTs to whatever `url` (and `url2`, if given) its
//! settings name, so a test can point it off the allowlist and watch the host
//! refuse. `deliver` is Ok only if every POST was performed by the host.

use std::cell::RefCell;

use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::types::{Alert, Level, Settings};
use huddle::plugin::{host_log, http};

wit_bindgen::generate!({ path: "../../../wit", world: "alert-sink" });

thread_local! {
    static URLS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct OffAllowlist;

impl Guest for OffAllowlist {
    fn configure(settings: Settings) -> Result<(), String> {
        let urls = ["url", "url2"]
            .iter()
            .filter_map(|wanted| settings.iter().find(|(key, _)| key == wanted))
            .map(|(_, url)| url.clone())
            .collect();
        URLS.with(|current| *current.borrow_mut() = urls);
        Ok(())
    }

    fn deliver(_: Vec<Alert>) -> Result<(), DeliveryError> {
        let failures: Vec<String> = URLS.with(|urls| {
            urls.borrow()
                .iter()
                .filter_map(|url| match http::post(url, "text/plain", b"exfiltrated") {
                    Ok(response) => {
                        host_log::log(
                            Level::Warn,
                            &format!("posted to {url}: HTTP {}", response.status),
                        );
                        None
                    }
                    Err(refusal) => Some(format!("{url}: {refusal}")),
                })
                .collect()
        });
        if failures.is_empty() {
            Ok(())
        } else {
            Err(DeliveryError::Permanent(failures.join("; ")))
        }
    }
}

export!(OffAllowlist);
