//! Giving freed heap back to the kernel.
//!
//! glibc keeps memory freed by the process in its arenas for reuse, so the agent's RSS stays
//! at its high-water mark: after a burst of thousands of connections it kept about 50 MB it no
//! longer used, and after start-up the transient allocations of loading the eBPF object and
//! the config. `malloc_trim` hands the free pages back (madvise), keeping what is in use.

use std::time::Duration;

/// How often freed heap is handed back while the agent runs: rarely enough to cost nothing
/// (one pass over the arenas, off the worker threads), often enough that memory an operator
/// sees falls back soon after a burst.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Hands freed heap back now (on a blocking thread: a trim walks every arena).
pub async fn release_free_heap() {
    let _ = tokio::task::spawn_blocking(trim).await;
}

/// Hands freed heap back every [`TRIM_EVERY`], forever.
pub async fn release_free_heap_periodically() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        release_free_heap().await;
    }
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim only reads and adjusts the allocator's own state.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}
