//! Generated bindings, one module per released WIT version.
//!
//! Every released version of the WIT package is frozen; a new version gets a
//! folder of its own under `wit/` and a module here. Interfaces shared by the
//! worlds (`types`, `host-log`, `http`) are generated once per version and
//! reused by the other worlds with `with:`, so each host function is written once
//! per version (the 0.1.0 ones forward to the 0.2.0 ones where they differ).

pub mod v0_1_0 {
    pub mod renderer {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "huddle:plugin/renderer@0.1.0",
        });
    }

    pub mod heading_mapper {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "huddle:plugin/heading-mapper@0.1.0",
            with: {
                "huddle:plugin/types@0.1.0": super::renderer::huddle::plugin::types,
                "huddle:plugin/host-log@0.1.0": super::renderer::huddle::plugin::host_log,
            },
        });
    }

    pub mod alert_sink {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "huddle:plugin/alert-sink@0.1.0",
            with: {
                "huddle:plugin/types@0.1.0": super::renderer::huddle::plugin::types,
                "huddle:plugin/host-log@0.1.0": super::renderer::huddle::plugin::host_log,
            },
        });
    }

    pub use alert_sink::huddle::plugin::http;
    pub use renderer::huddle::plugin::{host_log, types};
}

pub mod v0_2_0 {
    pub mod renderer {
        wasmtime::component::bindgen!({
            path: "wit/since_v0.2.0",
            world: "huddle:plugin/renderer@0.2.0",
        });
    }

    pub mod heading_mapper {
        wasmtime::component::bindgen!({
            path: "wit/since_v0.2.0",
            world: "huddle:plugin/heading-mapper@0.2.0",
            with: {
                "huddle:plugin/types@0.2.0": super::renderer::huddle::plugin::types,
                "huddle:plugin/host-log@0.2.0": super::renderer::huddle::plugin::host_log,
            },
        });
    }

    pub mod alert_sink {
        wasmtime::component::bindgen!({
            path: "wit/since_v0.2.0",
            world: "huddle:plugin/alert-sink@0.2.0",
            with: {
                "huddle:plugin/types@0.2.0": super::renderer::huddle::plugin::types,
                "huddle:plugin/host-log@0.2.0": super::renderer::huddle::plugin::host_log,
            },
        });
    }

    pub use alert_sink::huddle::plugin::http;
    pub use renderer::huddle::plugin::{host_log, types};
}
