//! What the outbound HTTP proxy reads from an app's request beyond hyper's own parsing: the
//! `auto` port sniffer on the first bytes, and the header handling on the way through
//! (hop-by-hop removal by the `Connection` list, upgrade detection, `te`, request targets
//! rebuilt for the upstream's HTTP version, request and trace ids from `x-request-id`,
//! `traceparent` and B3). Headers come from the input as `name: value` lines; the request
//! target is the first line.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use libfuzzer_sys::fuzz_target;
use mesh_agent::proxy::http::{headers, sniff};

fuzz_target!(|data: &[u8]| {
    let _ = sniff::classify(data);
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or_default();
    let mut map = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            map.append(name, value);
        }
    }
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let _ = headers::is_upgrade(version, &map);
        let mut map = map.clone();
        let (request_id, _) = headers::ensure_ids(&mut map, Some(0.5));
        assert!(!request_id.is_empty());
        headers::strip_hop_by_hop(&mut map);
        assert!(!map.contains_key(http::header::CONNECTION));
        assert!(!map.contains_key(http::header::TRANSFER_ENCODING));
        if let Ok(mut uri) = target.parse::<Uri>() {
            headers::fit_request_target(&mut uri, &mut map, version, "10.96.0.1:80");
            if version == Version::HTTP_2 {
                assert!(!map.contains_key(http::header::HOST));
            }
        }
    }
});
