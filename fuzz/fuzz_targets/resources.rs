//! Resource files as `meshctl apply -f` and `mesh-agent run --local-config` (and its SIGHUP
//! reload) read them: YAML or JSON text through `mesh_api::load_str`, its limits, validation,
//! a round trip, and the snapshot the agent builds and queries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        mesh_api::fuzzing::exercise(text);
    }
});
