//! The agent's settings file (`mesh-agent run --config`): YAML of its own schema, read before
//! anything else at start-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_agent::settings::SettingsFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SettingsFile::parse("fuzz.yaml", text);
    }
});
