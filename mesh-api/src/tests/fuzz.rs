//! Loading must never panic, whatever the bytes: every input ends in `Ok` or a `ConfigError`.

use proptest::prelude::*;

use super::FIXTURE;
use crate::{load_str, Resource, Snapshot};

/// Load, and when that works, build a snapshot and check the result serialises back to the
/// same resources.
fn exercise(text: &str) {
    let Ok(resources) = load_str("fuzz.yaml", text) else {
        return;
    };
    for r in &resources {
        let yaml = serde_yaml_ng::to_string(r).unwrap();
        assert_eq!(
            &serde_yaml_ng::from_str::<Resource>(&yaml).unwrap(),
            r,
            "{yaml}"
        );
    }
    if let Ok(snap) = Snapshot::from_resources(resources) {
        let _ = snap.capture_prefixes();
        for s in snap.services() {
            let _ = snap.endpoints(s);
        }
    }
}

#[test]
fn every_truncation_and_dropped_line_is_handled() {
    for (i, _) in FIXTURE.char_indices() {
        exercise(&FIXTURE[..i]);
    }
    let lines: Vec<&str> = FIXTURE.lines().collect();
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
    ] {
        exercise(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        exercise(&text);
    }

    /// Mutations of a valid file reach far deeper than random text: into typed parsing,
    /// validation and snapshot building.
    #[test]
    fn mangled_fixture_never_panics(
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0usize..4, prop::sample::select(vec![
                "", "-", ":", " ", "\n", "[", "]", "{", "}", ",", "'", "\"", "#", "&a", "*a",
                "0", "70000", "-1", "::", "10.0.0.1", "---", "x", "\t", "~", "!",
            ])),
            1..6,
        )
    ) {
        let mut text = FIXTURE.to_owned();
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
}
