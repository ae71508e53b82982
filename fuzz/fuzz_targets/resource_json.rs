//! One resource as JSON, as the agent receives it from the control plane and meshctl reads
//! it back: `Resource::from_json`, and a round trip of whatever it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_api::Resource;

fuzz_target!(|data: &[u8]| {
    if let Ok(resource) = Resource::from_json(data) {
        let again = Resource::from_json(resource.to_json().as_bytes());
        assert_eq!(again.ok().as_ref(), Some(&resource));
    }
});
