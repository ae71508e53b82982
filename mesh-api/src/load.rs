//! Reading multi-document YAML files into resources, for `--local-config` and `meshctl apply`.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::error::{ConfigError, Issue};
use crate::limits;
use crate::resource::{decode, Resource};

/// Reads and parses `path`, naming it in every message. See [`load_str`].
pub fn load_file(path: &Path) -> Result<Vec<Resource>, ConfigError> {
    let text = limits::read_file(path)?;
    load_str(&path.display().to_string(), &text)
}

/// Reads `reader` (stdin, say) to its end and parses it. See [`load_str`].
pub fn load_reader(source_name: &str, reader: impl Read) -> Result<Vec<Resource>, ConfigError> {
    let text = limits::read_bounded(source_name, reader)?;
    load_str(source_name, &text)
}

/// Parses every `---`-separated document in `text` (skipping empty ones) and runs the
/// per-resource checks of [`Resource::validate`], so a file that loads holds only
/// individually valid resources. Cross-resource checks need the whole set: see
/// [`crate::Snapshot::from_resources`].
///
/// Reports every problem in every document, not just the first; `source_name` (usually the
/// file name) prefixes each message.
///
/// Text past the [`limits`] (size, nesting, alias expansion) is refused before it is parsed.
pub fn load_str(source_name: &str, text: &str) -> Result<Vec<Resource>, ConfigError> {
    limits::check_yaml(source_name, text)?;
    let mut resources = Vec::new();
    let mut issues = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // A syntax error leaves the rest of the stream unreadable.
                issues.push(Issue {
                    document: Some(number),
                    ..Issue::new(e.to_string())
                });
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match decode(value) {
            Ok(resource) => {
                issues.extend(resource.issues().into_iter().map(|issue| Issue {
                    document: Some(number),
                    ..issue
                }));
                resources.push(resource);
            }
            Err(issue) => issues.push(Issue {
                document: Some(number),
                ..*issue
            }),
        }
    }
    if issues.is_empty() {
        Ok(resources)
    } else {
        for issue in &mut issues {
            issue.file = Some(source_name.to_owned());
        }
        Err(ConfigError::Invalid(issues))
    }
}
