//! Long-lived connections for tests of what outlives what (an agent upgrade, a drain): opened
//! by `pod-tool hold` in a pod, each proved with a 1-byte round trip, kept idle, and checked
//! again with another round trip when the test asks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{cargo_bin, wait_until, Pod, PodProcess, TempDir};

pub struct Held {
    process: PodProcess,
    /// Created to make `hold` check its connections and exit.
    verify: PathBuf,
    _dir: TempDir,
}

impl Held {
    /// `count` connections from `pod` to the echo server at `addr`, all answered once.
    pub fn open(pod: &Pod, addr: SocketAddr, count: usize) -> Result<Held> {
        let dir = tempfile::tempdir()?;
        let verify = dir.path().join("verify");
        let args = [
            "hold".to_string(),
            "--connect".into(),
            addr.to_string(),
            "--count".into(),
            count.to_string(),
            "--verify-file".into(),
            verify.display().to_string(),
        ];
        let mut process = pod.spawn(cargo_bin("pod-tool"), &args)?;
        let opened = wait_until(Duration::from_secs(10), || {
            process.stdout().contains("\"held\"") || !process.is_running()
        });
        ensure!(
            opened && process.is_running(),
            "hold did not open its connections: {}",
            process.stderr()
        );
        Ok(Held {
            process,
            verify,
            _dir: dir,
        })
    }

    /// One more round trip on every connection: `{"alive": N, "dead": [errors]}`.
    pub fn check(mut self) -> Result<Value> {
        std::fs::write(&self.verify, b"now")?;
        let out = self.process.wait_output(Duration::from_secs(10))?;
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or_default())
            .with_context(|| format!("hold printed {text:?}"))
    }
}
