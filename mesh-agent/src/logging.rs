//! The agent's log filter, which an operator can change while the agent runs (`PUT /logging`
//! on the root-only admin socket, `mesh-agent log-level`): turning on debug lines for one
//! module while a problem is happening is worth more than a restart that makes it go away.
//!
//! The filter is process-wide, like the subscriber it belongs to, so it lives here rather than
//! in the `Agent`.

use std::sync::OnceLock;

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

/// Longer than any sensible filter; bounds what a request can make the agent parse.
pub const MAX_DIRECTIVES_LEN: usize = 4096;

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); the filter can be replaced later
/// with [`set`].
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    let _ = FILTER.set(handle);
}

/// The filter in force, as directives; `None` if [`init`] did not set up logging.
pub fn current() -> Option<String> {
    FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Replaces the filter with `directives` and returns it as now in force. A bad filter changes
/// nothing; the error names what is wrong.
pub fn set(directives: &str) -> Result<String, String> {
    let filter = parse(directives)?;
    let handle = FILTER
        .get()
        .ok_or("this process's logging cannot be changed at run time")?;
    handle
        .reload(filter)
        .map_err(|e| format!("changing the log filter failed: {e}"))?;
    let now = current().unwrap_or_default();
    tracing::info!(filter = %now, "log filter changed");
    Ok(now)
}

/// Checks and parses `RUST_LOG`-style directives: `LEVEL` or `TARGET=LEVEL` (also
/// `TARGET[SPAN]=LEVEL`), comma-separated, e.g. `info,mesh_agent::proxy=debug`.
///
/// A bare word that is not a level is refused although `EnvFilter` would take it as a target
/// to log at every level: `{"level": "verbose"}` would otherwise turn on trace logging for a
/// target named `verbose` and change nothing the operator wanted.
pub fn parse(directives: &str) -> Result<EnvFilter, String> {
    let directives = directives.trim();
    if directives.is_empty() {
        return Err(
            "the log filter is empty (e.g. `info` or `info,mesh_agent::proxy=debug`)".into(),
        );
    }
    if directives.len() > MAX_DIRECTIVES_LEN {
        return Err(format!(
            "the log filter is {} bytes long; at most {MAX_DIRECTIVES_LEN}",
            directives.len()
        ));
    }
    let directives: Vec<&str> = directives.split(',').map(str::trim).collect();
    let directives = directives.join(",");
    for directive in directives.split(',') {
        if directive.is_empty() {
            return Err(format!(
                "the log filter {directives:?} has an empty directive"
            ));
        }
        let bare = !directive.contains(['=', '[']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a log level ({}) nor TARGET=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| format!("bad log filter {directives:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_levels_and_per_target_levels() {
        for good in [
            "debug",
            "INFO",
            "info,mesh_agent::proxy=debug",
            " warn , mesh_agent=trace ",
            "mesh_agent[enroll]=debug",
        ] {
            parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn refuses_naming_what_is_wrong() {
        let err = |s: &str| parse(s).unwrap_err();
        assert!(err("verbose").contains("\"verbose\" is not a log level"));
        assert!(err("info,loud").contains("\"loud\" is not a log level"));
        assert!(err("mesh_agent=loud").contains("bad log filter \"mesh_agent=loud\""));
        assert!(err("").contains("empty"));
        assert!(err("info,,debug").contains("empty directive"));
        assert!(err(&"a=debug,".repeat(1000)).contains("at most 4096"));
    }
}
