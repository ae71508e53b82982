//! `mesh-agent`: the node agent of the mesh. See docs/ARCHITECTURE.md for the life of a
//! connection through these modules.
//!
//! A library so that fuzz targets (fuzz/ at the workspace root) reach the parsers of what the
//! agent reads from outside: the enroll request, the settings file, the admin routes, the HTTP
//! proxy's sniffer and header handling (`proxy::http::{sniff, headers}`). The
//! binary (src/main.rs) is only the command line. Modules are public only where the binary
//! or a fuzz target needs them.

pub mod admin;
mod agent;
mod balance;
pub mod cli;
mod control;
mod datapath;
mod handover;
mod health;
mod identity;
pub mod logging;
mod metrics;
pub mod pods;
pub mod proxy;
mod registry;
pub mod run;
pub mod settings;
pub mod status;
mod sys;
