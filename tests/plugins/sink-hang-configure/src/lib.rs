//! Hostile alert sink: `configure` never returns, so no delivery through it
//! can succeed. The host's CPU deadline must stop it, and only it.

use exports::huddle::plugin::sink::{DeliveryError, Guest};
use huddle::plugin::types::{Alert, Settings};

wit_bindgen::generate!({ path: "../../../wit", world: "alert-sink" });

struct SinkHangConfigure;

impl Guest for SinkHangConfigure {
    fn configure(_: Settings) -> Result<(), String> {
        // black_box keeps the optimiser from proving anything about the loop.
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }

    fn deliver(_: Vec<Alert>) -> Result<(), DeliveryError> {
        Ok(())
    }
}

export!(SinkHangConfigure);
