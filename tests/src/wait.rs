//! Polling helpers: end-to-end tests wait for state (a listener, a config push), never sleep.

use anyhow::{anyhow, Result};
use std::time::{Duration, Instant};

/// Polls `cond` until it returns true (-> `true`) or `timeout` passes (-> `false`).
/// Starts polling fast (5 ms) and backs off to 100 ms, so quick conditions cost little.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_until_ok(timeout, || {
        if cond() {
            Ok(())
        } else {
            Err(anyhow!("not yet"))
        }
    })
    .is_ok()
}

/// Polls `f` until it returns `Ok` or `timeout` passes; then returns the last error, with the
/// timeout added, so a test failure says what was still wrong.
pub fn wait_until_ok<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_and_times_out() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(2), || {
            n += 1;
            n == 3
        }));
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(start.elapsed() < Duration::from_secs(1));
        let err =
            wait_until_ok::<()>(Duration::from_millis(20), || Err(anyhow!("boom"))).unwrap_err();
        assert!(format!("{err:#}").contains("boom"), "{err:#}");
    }
}
