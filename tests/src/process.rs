//! Processes inside a pod: joined to the pod's cgroup and network namespace before `exec`, with
//! their output captured without ever blocking them.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A [`Command`] that, between `fork` and `exec`, moves the child into `cgroup` and then into
/// the network namespace `netns`.
///
/// Cgroup first, so the process is already captured by the cgroup's eBPF hooks when it opens
/// its first socket. We `setns` ourselves instead of using `ip netns exec`, which also remounts
/// /sys and would give the child a different view than a real container runtime does. Both
/// files are opened here, before the fork: only async-signal-safe syscalls run in the child.
pub fn command_in(netns: &Path, cgroup: &Path, program: impl AsRef<OsStr>) -> Result<Command> {
    let procs_path = cgroup.join("cgroup.procs");
    let procs: OwnedFd = File::options()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?
        .into();
    let ns: OwnedFd = File::open(netns)
        .with_context(|| format!("opening netns {}", netns.display()))?
        .into();
    let mut cmd = Command::new(program);
    // SAFETY: the closure only calls write(2) and setns(2) on fds it owns (opened O_CLOEXEC by
    // std, so they vanish at exec); both are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // "0" means "the writing process".
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// A running child process; SIGKILLed (and reaped) on drop.
///
/// stdout and stderr are drained by background threads into memory, so a chatty server never
/// blocks on a full pipe, and a test can look at what it printed so far.
pub struct PodProcess {
    child: Child,
    what: String,
    stdout: Capture,
    stderr: Capture,
    status: Option<ExitStatus>,
}

impl PodProcess {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr captured.
    pub fn spawn(mut cmd: Command) -> Result<PodProcess> {
        let what = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {what}"))?;
        let stdout = Capture::start(child.stdout.take());
        let stderr = Capture::start(child.stderr.take());
        Ok(PodProcess {
            child,
            what,
            stdout,
            stderr,
            status: None,
        })
    }

    /// The child's PID (in the root PID namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// What the process printed to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// What the process printed to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .with_context(|| format!("kill -{signal} {}", self.pid()))
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits for the process to exit and returns its status and complete output. After
    /// `timeout` the process is killed and an error with its output so far is returned.
    pub fn wait_output(&mut self, timeout: Duration) -> Result<Output> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} did not exit within {timeout:?}; stdout: {:?} stderr: {:?}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The pipes reach EOF when the last holder closes them. A background grandchild that
        // inherited them (`sh -c 'server &'`) could keep them open forever, so after the exit
        // give the reader threads only a short grace period to collect what is left.
        let grace = Instant::now() + Duration::from_secs(2);
        self.stdout.wait_eof(grace);
        self.stderr.wait_eof(grace);
        Ok(Output {
            status,
            stdout: self.stdout.bytes(),
            stderr: self.stderr.bytes(),
        })
    }

    /// Like [`wait_output`](Self::wait_output) but fails (with stderr in the message) unless
    /// the process exited with status 0.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<Output> {
        let out = self.wait_output(timeout)?;
        check_success(&self.what, out)
    }

    /// Human-readable command line, for messages.
    pub fn description(&self) -> &str {
        &self.what
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        // A failing test usually wants to know what its servers complained about.
        if std::thread::panicking() {
            let err = self.stderr();
            if !err.trim().is_empty() {
                let lines: Vec<&str> = err.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                eprintln!("---- stderr of {} (last 20 lines) ----\n{tail}", self.what);
            }
        }
        self.kill();
    }
}

/// Turns a non-zero exit into an error that shows the command, the status and the output.
pub(crate) fn check_success(what: &str, out: Output) -> Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    let how = match (out.status.code(), out.status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => out.status.to_string(),
    };
    bail!(
        "{what} failed ({how}); stderr: {}; stdout: {}",
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// One pipe drained by a thread into a shared buffer.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    eof: Option<Receiver<()>>,
}

impl Capture {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Capture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let Some(mut pipe) = pipe else {
            return Capture { buf, eof: None };
        };
        let (tx, rx) = mpsc::channel();
        let sink = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(());
        });
        Capture { buf, eof: Some(rx) }
    }

    fn wait_eof(&mut self, until: Instant) {
        if let Some(rx) = &self.eof {
            // Either a message or a disconnect means the reader thread is done.
            if rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                != Err(mpsc::RecvTimeoutError::Timeout)
            {
                self.eof = None;
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}
