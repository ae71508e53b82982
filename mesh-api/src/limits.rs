//! Bounds on resource text (YAML, or JSON read as YAML), checked before it is parsed for real,
//! so a hostile or broken file costs milliseconds and bounded memory, not minutes.
//!
//! Why each one exists:
//! - size: files are read whole; a file is resources an operator wrote, never gigabytes.
//! - nesting: libyaml's scanner does work proportional to the open flow collections for
//!   every token, so 100,000 nested `[` took 15 s of CPU before anything rejected it.
//! - nodes: an alias (`*name`) repeats a whole anchored node, so a few lines of nested aliases
//!   ("billion laughs") expand to billions of values. `serde_yaml_ng` stops expanding only
//!   after 100 jumps per event in the document, which padding the document defeats: 200 KB
//!   took 90 s and 14 GB. Counting each alias as the nodes it repeats bounds that exactly.
//!
//! The check reads the event stream of the same parser the real parse uses
//! ([`crate::yaml_events`]) and stops at the first crossing, so quoted brackets, comments and
//! block scalars count exactly as they parse, and a crossing costs only the events before it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::{ConfigError, Issue};
use crate::yaml_events::{Event, Events};

/// Largest resource or settings file (or stdin) read: 4 MiB.
pub const MAX_FILE_BYTES: usize = 4 << 20;

/// Deepest nesting of sequences and mappings in a document. Resources need fewer than ten;
/// `serde_yaml_ng` and `serde_json` stop at 128 anyway.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Most YAML nodes (scalars, sequences, mappings) in one text, counting each alias as every
/// node it repeats. Four MiB of resources written out hold fewer.
pub const MAX_NODES: u64 = 1_000_000;

/// Reads `path`, refusing more than [`MAX_FILE_BYTES`] (without reading further) and text
/// that is not UTF-8. Errors name the file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    read_bounded(&path.display().to_string(), file)
}

/// Reads all of `reader` (stdin, say) as UTF-8 text, refusing more than [`MAX_FILE_BYTES`].
/// `source_name` names it in errors.
pub fn read_bounded(source_name: &str, reader: impl Read) -> Result<String, ConfigError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigError::Read {
            path: source_name.into(),
            source,
        })?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(issue(source_name, too_big()));
    }
    String::from_utf8(bytes).map_err(|e| {
        issue(
            source_name,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Checks `text` against [`MAX_FILE_BYTES`], [`MAX_NESTING_DEPTH`] and [`MAX_NODES`]; the
/// error names `source_name`, the limit, and where in the text it was crossed. Syntax errors
/// are left to the real parse, which reports them with a message.
pub fn check_yaml(source_name: &str, text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(issue(source_name, too_big()));
    }
    check_events(text).map_err(|message| issue(source_name, message))
}

fn check_events(text: &str) -> Result<(), String> {
    let mut depth = 0;
    let mut nodes: u64 = 0;
    let mut anchors = Anchors::default();
    // Open collections: their anchor (if any) and `nodes` at their start.
    let mut open: Vec<(Option<usize>, u64)> = Vec::new();
    for event in Events::new(text.as_bytes()) {
        let Ok((event, mark)) = event else {
            return Ok(());
        };
        let at = || format!("line {} column {}", mark.line, mark.column);
        match event {
            Event::DocumentStart => anchors = Anchors::default(),
            Event::CollectionStart { anchor } => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Err(format!(
                        "sequences and mappings nest deeper than the limit of {MAX_NESTING_DEPTH} levels (at {})",
                        at()
                    ));
                }
                nodes += 1;
                open.push((anchors.define(anchor, None), nodes));
            }
            Event::CollectionEnd => {
                depth -= 1;
                if let Some((Some(id), first)) = open.pop() {
                    anchors.sizes[id] = Some(nodes - first + 1);
                }
            }
            Event::Scalar { anchor } => {
                nodes += 1;
                anchors.define(anchor, Some(1));
            }
            Event::Alias { anchor } => match anchors.size(&anchor) {
                // An unknown anchor is a syntax error the real parse reports.
                None => return Ok(()),
                Some(None) => {
                    return Err(format!(
                        "alias *{} refers to a node that contains it (at {})",
                        String::from_utf8_lossy(&anchor),
                        at()
                    ))
                }
                Some(Some(size)) => nodes = nodes.saturating_add(size),
            },
            Event::Other => {}
        }
        if nodes > MAX_NODES {
            return Err(format!(
                "more than the limit of {MAX_NODES} YAML nodes, counting the nodes each alias repeats (at {})",
                at()
            ));
        }
    }
    Ok(())
}

/// The anchors of one document as `serde_yaml_ng` resolves them: a name means the node most
/// recently anchored with it, from where that node starts.
#[derive(Default)]
struct Anchors {
    by_name: HashMap<Vec<u8>, usize>,
    /// Nodes in each anchored node, aliases expanded; `None` while a collection is still open
    /// (an alias to it from inside would be a cycle).
    sizes: Vec<Option<u64>>,
}

impl Anchors {
    fn define(&mut self, name: Option<Vec<u8>>, size: Option<u64>) -> Option<usize> {
        let name = name?;
        self.sizes.push(size);
        self.by_name.insert(name, self.sizes.len() - 1);
        Some(self.sizes.len() - 1)
    }

    fn size(&self, name: &[u8]) -> Option<Option<u64>> {
        self.by_name.get(name).map(|&id| self.sizes[id])
    }
}

fn too_big() -> String {
    format!(
        "larger than the limit of {} MiB ({MAX_FILE_BYTES} bytes)",
        MAX_FILE_BYTES >> 20
    )
}

fn issue(source_name: &str, message: String) -> ConfigError {
    ConfigError::Invalid(vec![Issue {
        file: Some(source_name.to_owned()),
        ..Issue::new(message)
    }])
}
