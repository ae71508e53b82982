//! The limits on resource text: each crossing is refused fast with the file, the limit and
//! the place named; nothing short of a limit is refused, however it is quoted or commented.

use std::time::{Duration, Instant};

use crate::limits::{check_yaml, read_bounded, MAX_FILE_BYTES, MAX_NESTING_DEPTH, MAX_NODES};
use crate::{load_reader, load_str};

/// The one message of a refused `text`, and that refusing it was fast (the old code took
/// 15 s of CPU on 100,000 nested brackets, 90 s on padded billion laughs).
fn refused(text: &str) -> String {
    let started = Instant::now();
    let err = load_str("deep.yaml", text).expect_err("should be refused");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    let message = err.to_string();
    assert!(message.starts_with("deep.yaml: "), "{message}");
    message
}

#[test]
fn deep_flow_nesting_is_refused_at_the_limit() {
    for open in ["[", "{a: ", "{\"a\": "] {
        let message = refused(&open.repeat(100_000));
        assert!(
            message.contains(&format!(
                "deeper than the limit of {MAX_NESTING_DEPTH} levels"
            )),
            "{message}"
        );
    }
    let message = refused(&"[".repeat(100_000));
    assert!(message.ends_with("(at line 1 column 65)"), "{message}");
}

#[test]
fn deep_block_nesting_is_refused_too() {
    let message = refused(&"- ".repeat(100_000));
    assert!(
        message.contains("deeper than the limit of 64 levels"),
        "{message}"
    );
    let mut indented = String::new();
    for level in 0..100 {
        indented.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
    }
    let message = refused(&indented);
    assert!(message.contains("(at line 65 column 65)"), "{message}");
}

/// Exactly the limit passes, and brackets that are not nesting (quoted, commented, in a
/// block scalar or a plain scalar) never count.
#[test]
fn only_real_nesting_counts() {
    let at_limit = format!(
        "{}{}",
        "[".repeat(MAX_NESTING_DEPTH),
        "]".repeat(MAX_NESTING_DEPTH)
    );
    check_yaml("ok.yaml", &at_limit).unwrap();
    let brackets = "[".repeat(10_000);
    let text = format!(
        "# {brackets}\na: '{brackets}'\nb: \"{brackets}\\\"{brackets}\"\nc: |\n  {brackets}\n  {{{{{{'\"\nd: x{brackets}\ne: [\"{brackets}\", '{brackets}']  # {brackets}\n"
    );
    check_yaml("ok.yaml", &text).unwrap();
}

/// An anchor used a few times is fine; nested aliases that would repeat past the node limit
/// are refused before anything is expanded, however much padding raises serde_yaml_ng's own
/// (relative) repetition limit.
#[test]
fn alias_expansion_is_bounded() {
    let text = "apiVersion: mesh/v1\nkind: Service\nmetadata: {name: web, labels: &app {app: web}}\nspec:\n  vips: [\"10.96.0.1\"]\n  ports: [{port: 80}]\n  selector: *app\n";
    let loaded = load_str("anchors.yaml", text).unwrap();
    assert_eq!(loaded.len(), 1);

    let mut laughs = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for (prev, next) in ('a'..='h').zip('b'..='i') {
        let refs = vec![format!("*{prev}"); 10].join(",");
        laughs.push_str(&format!("{next}: &{next} [{refs}]\n"));
    }
    laughs.push_str(&format!("pad: [{}0]\n", "0,".repeat(100_000)));
    let message = refused(&laughs);
    assert!(
        message.contains(&format!("more than the limit of {MAX_NODES} YAML nodes")),
        "{message}"
    );
    assert!(message.contains("(at line 6 column"), "{message}");

    let message = refused("a: &a [x, *a]\n");
    assert!(
        message.contains("alias *a refers to a node that contains it (at line 1 column 11)"),
        "{message}"
    );
    // Anchors are per document, as the parser resolves them.
    let message = load_str("x.yaml", "a: &a x\n---\nb: *a\n")
        .unwrap_err()
        .to_string();
    assert!(message.contains("unknown anchor"), "{message}");
}

#[test]
fn size_is_bounded_without_reading_past_the_limit() {
    let message = refused(&" ".repeat(MAX_FILE_BYTES + 1));
    assert_eq!(
        message,
        "deep.yaml: larger than the limit of 4 MiB (4194304 bytes)"
    );
    // An endless stream is not read to its end.
    let err = load_reader("<stdin>", std::io::repeat(b' ')).unwrap_err();
    assert_eq!(
        err.to_string(),
        "<stdin>: larger than the limit of 4 MiB (4194304 bytes)"
    );
    assert!(read_bounded("x", &b" "[..]).is_ok());
    let err = read_bounded("bin.yaml", &b"a: \xff"[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bin.yaml: not UTF-8 text (invalid byte at offset 3)"
    );
}

#[test]
fn syntax_errors_are_still_reported_by_the_parser() {
    let message = load_str("x.yaml", "a: [1, 2\n").unwrap_err().to_string();
    assert!(message.starts_with("x.yaml: document 1: "), "{message}");
    assert!(message.contains("line"), "{message}");
}
