//! The admin API.
//!
//! Two listeners, closed by default:
//! - HTTP on `--admin-addr` (loopback only): read-only `/healthz/ready` (200, or 503 with what
//!   is pending), `/healthz/live`, `/metrics`, `/config_dump`, `/status`.
//! - A unix socket `<state-dir>/agent.sock`, mode 0600 (root only): the same plus the
//!   mutating `/v1/pods` (enroll), `DELETE /v1/pods/{uid}` (unenroll) and `PUT /logging` (the
//!   log filter), which is what the `enroll`, `unenroll`, `status` and `log-level` commands
//!   use. Failed (un)enrollments answer `{"error": ..., "reason": ...}` (see
//!   `pods::refusal::Reason`).
//!
//! Both bound their connections (see `listen`): a request head within 10 s (so also at most
//! 10 s idle between requests), a body within 10 s, at most 128 connections each.

mod api;
pub mod client;
pub mod listen;
mod listeners;
mod readiness;
mod server;

pub use api::AdminApi;
pub use listeners::AdminListeners;
pub use readiness::Readiness;
pub use server::{serve_http, serve_unix, socket_path, socket_routes};
