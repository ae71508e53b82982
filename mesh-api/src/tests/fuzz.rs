//! Loading must never panic, whatever the bytes: every input ends in `Ok` or a `ConfigError`.
//! Both fixtures are mangled, so every kind's parsing, validation and snapshot checks are
//! reached.

use std::net::IpAddr;

use proptest::prelude::*;

use super::{FIXTURE, MESH_FIXTURE};
use crate::fuzzing::{exercise, query, FuzzRequest};
use crate::{load_str, Cidr, Resource, Snapshot};

#[test]
fn every_truncation_and_dropped_line_is_handled() {
    // Cutting the big fixture at every point would be quadratic in its size; cutting each of
    // its documents covers every kind's cut points, and dropped lines cover the whole file.
    let mut cuts: Vec<&str> = vec![FIXTURE];
    cuts.extend(MESH_FIXTURE.split("\n---\n"));
    for text in cuts {
        for (i, _) in text.char_indices() {
            exercise(&text[..i]);
        }
    }
    for fixture in [FIXTURE, MESH_FIXTURE] {
        let lines: Vec<&str> = fixture.lines().collect();
        for skip in 0..lines.len() {
            let text: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            exercise(&text.join("\n"));
        }
    }
}

#[test]
fn the_fixtures_exercise_every_lookup() {
    // `exercise` only queries what loads; make sure the fixtures themselves do.
    for fixture in [FIXTURE, MESH_FIXTURE] {
        let snap = Snapshot::from_resources(load_str("f.yaml", fixture).unwrap()).unwrap();
        query(
            &snap,
            &FuzzRequest::from_text("GET /api/v2?q=1\nx-canary: true"),
        );
        exercise(fixture);
    }
}

#[test]
fn hostile_inputs_are_handled() {
    let deep = "[".repeat(10_000);
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    for text in [
        deep.as_str(),
        laughs,
        "\u{0}",
        "\u{feff}apiVersion: mesh/v1",
        "!!binary aGVsbG8=",
        "? [a, b]\n: c\n",
        "apiVersion: !tag mesh/v1\nkind: Service\n",
        "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: [a]}\nspec: 1\n",
        "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: a, namespace: ~}\nspec: {vips: [], ports: [{port: -1}], selector: {}}\n",
        "*unknown_alias",
        "{{{{",
        "---\n...\n---\n...",
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: ~}\n",
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: ~\n",
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {healthCheck: ~}\n",
        "apiVersion: mesh/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {selector: {a: b}, mode: STRICT, portLevelMtls: {[1]: DISABLE, ~: STRICT, -1: STRICT, 1.5: STRICT, \"\": STRICT, \"+1\": STRICT}}\n",
        "apiVersion: mesh/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {selector: {a: b}, mode: STRICT, portLevelMtls: [1, 2]}\n",
        "apiVersion: mesh/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: ALLOW, rules: [{from: {ipBlocks: [\"::/0\", \"0.0.0.0/0\", 1, \"/\", \"1.2.3.4/\", \"1.2.3.4/-0\"]}}]}\n",
        "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: s, rules: [{match: ~, backends: [{service: s, weight: 4294967296}]}]}\n",
        "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: s, rules: [{match: {headers: {\"\": \"\"}}, backends: [{service: s}]}], timeoutMs: 18446744073709551615}\n",
        "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: s, rules: [{match: {path: {regex: \"(((a{100}){100}){100})\"}, headers: {a: {regex: ~}, b: {present: 1}, c: [x]}}, backends: [{service: s}]}]}\n",
        "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: s, rules: [{fault: {delay: {ms: 1, percent: .nan}, abort: {status: 70000, percent: 1e309}}, backends: [{service: s}]}]}\n",
        "apiVersion: mesh/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: s, rules: [{retries: {attempts: 1, retryOn: [5xx, 5xx, ~]}, headers: {request: {set: {\":path\": \"\\r\\n\"}}}, backends: [{service: s}]}]}\n",
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {observability: {tracing: {samplingPercent: -0.0}, accessLog: {path: \"/\\u0000\"}}}\n",
    ] {
        exercise(text);
    }
    for query in ["%", "%%", "%f", "=&=", "a=%ff&a=1", "&&&", "+=+", "%00=%00"] {
        let _ = crate::parse_query(query);
        exercise(&format!("GET /api?{query}\nx-a: 1"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        exercise(&text);
    }

    /// Query strings made of the characters that steer the parser, and any text at all:
    /// never a panic, and the first occurrence of a name always wins.
    #[test]
    fn arbitrary_queries_never_panic(query in "([a-c%+=&]|%[0-9a-fA-F]{0,2}|\\PC){0,40}") {
        let params = crate::parse_query(&query);
        if let Some(first) = query.split('&').next().filter(|p| p.starts_with("a=") && !p[2..].contains(['%', '+'])) {
            prop_assert_eq!(params.get("a").map(String::as_str), Some(&first[2..]));
        }
    }

    /// Mutations of a valid file reach far deeper than random text: into typed parsing,
    /// validation and snapshot building.
    #[test]
    fn mangled_fixture_never_panics(
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0usize..4, prop::sample::select(vec![
                "", "-", ":", " ", "\n", "[", "]", "{", "}", ",", "'", "\"", "#", "&a", "*a",
                "0", "70000", "-1", "::", "10.0.0.1", "---", "x", "\t", "~", "!", "*", "/",
                "/8", "ALLOW", "DENY", "STRICT", "DISABLE", "mesh", "bookinfo", "reviews",
            ])),
            1..6,
        ),
        mesh in any::<bool>(),
    ) {
        let mut text = if mesh { MESH_FIXTURE } else { FIXTURE }.to_owned();
        for (at, delete, insert) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut end = (i + delete).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(i..end, insert);
        }
        exercise(&text);
    }
    /// Whatever the bytes, `from_json` answers with a resource or an error.
    #[test]
    fn arbitrary_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Resource::from_json(&bytes);
    }

    /// JSON of every fixture resource, mangled: reaches typed decoding of every kind.
    #[test]
    fn mangled_json_never_panics(
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        delete in 0usize..4,
        insert in prop::sample::select(vec![
            "", "0", "-1", "\"\"", "\"x\"", "[]", "{}", "null", ",", ":", "\"*\"", "70000",
        ]),
    ) {
        let resources = load_str("mesh.yaml", MESH_FIXTURE).unwrap();
        let mut json = resources[which.index(resources.len())].to_json();
        // The fixture is ASCII, so every index is a char boundary.
        let i = at.index(json.len() + 1);
        let end = (i + delete).min(json.len());
        json.replace_range(i..end, insert);
        if let Ok(r) = Resource::from_json(json.as_bytes()) {
            prop_assert_eq!(Resource::from_json(r.to_json().as_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn arbitrary_cidr_text_never_panics(text in "[0-9a-f:./]{0,45}") {
        if let Ok(c) = text.parse::<Cidr>() {
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
            prop_assert!(c.contains(c.addr()));
        }
    }

    /// Any address and length: the network form is accepted and round-trips, anything with
    /// bits after the prefix is refused, and `contains` agrees with comparing the top bits.
    #[test]
    fn cidr_contains_agrees_with_bits(a in any::<u32>(), b in any::<u32>(), len in 0u8..=32) {
        let shift = 32 - u32::from(len);
        let network = a.checked_shr(shift).unwrap_or(0).checked_shl(shift).unwrap_or(0);
        let c = Cidr::new(IpAddr::from(network.to_be_bytes()), len).unwrap();
        prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        prop_assert_eq!(Cidr::new(IpAddr::from(a.to_be_bytes()), len).is_ok(), a == network);
        let same = a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0);
        prop_assert_eq!(c.contains(IpAddr::from(b.to_be_bytes())), same);
        prop_assert!(c.contains(IpAddr::from(a.to_be_bytes())));
        prop_assert!(Cidr::new(c.addr(), 33).is_err());
    }

    #[test]
    fn ipv6_cidrs_round_trip(a in any::<u128>(), len in 0u8..=128) {
        let shift = 128 - u32::from(len);
        let network = a.checked_shr(shift).unwrap_or(0).checked_shl(shift).unwrap_or(0);
        let ip = IpAddr::from(network.to_be_bytes());
        if let Ok(c) = Cidr::new(ip, len) {
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
            prop_assert!(c.contains(IpAddr::from(a.to_be_bytes())));
        } else {
            // Only IPv4-mapped networks are refused.
            prop_assert!(network >> 32 == 0xffff);
        }
    }
}
