//! Errors from loading and validating resources. One [`Issue`] per problem, so a user fixing a
//! file sees every mistake at once instead of one per run.

use std::fmt;
use std::path::PathBuf;

use crate::meta::ObjectKey;

/// One problem, with as much of "where" as is known: file, document, kind, object, field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The file (or other source name) the resource came from.
    pub file: Option<String>,
    /// 1-based index of the YAML document in its file; shown only when the object's name is
    /// not known, since then it is the only way to find the document.
    pub document: Option<usize>,
    pub kind: Option<String>,
    pub object: Option<ObjectKey>,
    /// Path of the offending field, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl Issue {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Issue {
            file: None,
            document: None,
            kind: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match (&self.kind, &self.object, self.document) {
            (Some(k), Some(o), _) => write!(f, "{k} {o}: ")?,
            (Some(k), None, Some(d)) => write!(f, "{k} in document {d}: ")?,
            (Some(k), None, None) => write!(f, "{k}: ")?,
            (None, Some(o), Some(d)) => write!(f, "document {d} ({o}): ")?,
            (None, Some(o), None) => write!(f, "{o}: ")?,
            (None, None, Some(d)) => write!(f, "document {d}: ")?,
            (None, None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, one per line when displayed.
    #[error("{}", Lines(.0))]
    Invalid(Vec<Issue>),
}

impl ConfigError {
    /// The individual problems, for callers that report them one by one (e.g. a NACK).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            ConfigError::Read { .. } => &[],
        }
    }
}

struct Lines<'a>(&'a [Issue]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}
