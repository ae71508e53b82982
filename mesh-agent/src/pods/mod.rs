//! Enrolled pods: what a pod is to the agent, how it is enrolled, resumed after a restart and
//! unenrolled, and how enrollments persist.

mod addresses;
mod enroll;
pub mod refusal;
mod request;
mod reserve;
mod state;
mod targets;

pub use addresses::save_on_changes;
pub use enroll::EnrolledPod;
pub use request::EnrollRequest;
pub use reserve::Reservations;
pub use state::{SavedPod, StateStore};
pub use targets::PREPARE_TIMEOUT;
