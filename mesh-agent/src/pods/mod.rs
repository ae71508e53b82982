//! Enrolled pods: what a pod is to the agent, how it is enrolled, resumed after a restart and
//! unenrolled, and how enrollments persist.

mod enroll;
mod request;
mod state;

pub use enroll::EnrolledPod;
pub use request::EnrollRequest;
pub use state::StateStore;
