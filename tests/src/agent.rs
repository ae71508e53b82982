//! Running the agent (or any other daemon under test) from a test: output to a log file,
//! readiness via its admin API, and a log tail printed whenever something goes wrong.

use crate::http::http_get_timeout;
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of the log shown on failure.
const TAIL_LINES: usize = 50;

/// Path of binary `name` built by cargo in the same target directory and profile as the
/// running test (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`), falling back to
/// `$CARGO_TARGET_DIR/<debug|release>/<name>` and the workspace's `target/`.
///
/// Returns the first candidate that exists, or the most likely one (so the error when it is
/// spawned names a sensible path). Cargo builds only this package's binaries for
/// `cargo test -p mesh-tests`; build others (`cargo build -p mesh-agent`) first.
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe_name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // deps/ for test executables, the profile dir itself for binaries and examples' parent.
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(&exe_name));
        }
    }
    let target_dirs = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")]);
    for dir in target_dirs {
        for profile in ["debug", "release"] {
            candidates.push(dir.join(profile).join(&exe_name));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or(&candidates[0])
        .clone()
}

/// A daemon under test, with stdout+stderr in `<tempdir>/<binary>.log`.
///
/// Killed on drop; if the test is panicking at that point, the last 50 log lines are printed
/// so a failing CI run shows what the agent was doing. Its PID is registered with the
/// [`janitor`](crate::janitor) so a crashed test run doesn't leave it holding ports and pins.
/// Set `MESH_TESTS_KEEP_LOGS=1` to keep the log directory after the test.
pub struct AgentProcess {
    child: Child,
    what: String,
    log_path: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
    status: Option<ExitStatus>,
}

impl AgentProcess {
    /// Starts `binary args...` in the root namespaces (the agent is not a pod).
    pub fn spawn<S: AsRef<OsStr>>(
        binary: impl AsRef<Path>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<AgentProcess> {
        let mut cmd = Command::new(binary.as_ref());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Starts a prepared command (for env vars, working dir, ...); stdio is replaced.
    pub fn spawn_command(mut cmd: Command) -> Result<AgentProcess> {
        let program = Path::new(cmd.get_program()).to_path_buf();
        let what = std::iter::once(program.display().to_string())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        anyhow::ensure!(
            program.components().count() <= 1 || program.is_file(),
            "{} does not exist (build it first, e.g. `cargo build -p mesh-agent`)",
            program.display()
        );
        let dir = crate::temp_dir()?;
        let stem = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let log_path = dir
            .path()
            .join(format!("{}.log", stem.as_deref().unwrap_or("agent")));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        crate::janitor::sweep_once();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {what}"))?;
        crate::janitor::track_pid(child.id());
        let keep = std::env::var_os("MESH_TESTS_KEEP_LOGS").is_some_and(|v| v != "0");
        let log_dir = if keep {
            eprintln!("mesh-tests: keeping log {}", log_path.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(AgentProcess {
            child,
            what,
            log_path,
            _log_dir: log_dir,
            status: None,
        })
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Prints the last 50 log lines to stderr (shown by the test runner on failure).
    pub fn print_log_tail(&self) {
        eprintln!(
            "---- last {TAIL_LINES} lines of {} ({}) ----\n{}\n---- end of log ----",
            self.what,
            self.log_path.display(),
            self.log_tail(TAIL_LINES)
        );
    }

    /// Exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waitpid")?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Polls `GET http://<admin_addr>/healthz/ready` until it answers 200. Fails early if the
    /// process exits, and on failure prints and returns the log tail.
    pub fn wait_ready(&mut self, admin_addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_readiness(admin_addr, timeout, |code, _| code == 200)
    }

    /// Like [`wait_ready`](Self::wait_ready), until the agent takes pods: programs attached and
    /// saved pods resumed (`acceptsPods` in the 503 body), whether or not its config has
    /// arrived or its pods' certificates are issued yet (a test may have stopped the control
    /// plane on purpose).
    pub fn wait_accepting_pods(&mut self, admin_addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_readiness(admin_addr, timeout, |code, body| {
            code == 200
                || serde_json::from_str::<serde_json::Value>(body)
                    .is_ok_and(|v| v["acceptsPods"] == true)
        })
    }

    fn wait_readiness(
        &mut self,
        admin_addr: SocketAddr,
        timeout: Duration,
        done: impl Fn(u16, &str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return self.fail(format!(
                    "{} exited ({status}) before becoming ready",
                    self.what
                ));
            }
            let last = match http_get_timeout(admin_addr, "/healthz/ready", Duration::from_secs(1))
            {
                Ok((code, body)) if done(code, &body) => return Ok(()),
                Ok((code, body)) => format!("status {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                return self.fail(format!(
                    "{} not ready at http://{admin_addr}/healthz/ready after {timeout:?}; last: {last}",
                    self.what
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&self, msg: String) -> Result<()> {
        self.print_log_tail();
        bail!("{msg}\n{}", self.log_tail(TAIL_LINES))
    }

    /// SIGKILL and reap (simulates a crash: no cleanup runs in the agent).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// SIGTERM, then wait up to 10 s for a clean exit (SIGKILL after that, returning an error).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_timeout(Duration::from_secs(10))
    }

    /// Like [`stop`](Self::stop) with a custom grace period.
    pub fn stop_timeout(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("SIGTERM {}", self.what))?;
        if crate::wait_until(grace, || !self.is_running()) {
            return self.try_wait()?.context("exited but no status");
        }
        self.kill();
        self.print_log_tail();
        bail!("{} ignored SIGTERM for {grace:?}; killed", self.what)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tail();
        }
        self.kill();
    }
}
