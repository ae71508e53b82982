//! A test pod: a network namespace wired to a [`Bridge`] plus a cgroup v2 directory — the two
//! things a container runtime gives a real pod and the agent hooks into.

use crate::cgroup;
use crate::cmd::{ip, ip_logged, link_exists};
use crate::net::{pod_v4, pod_v6, Bridge};
use crate::process::{check_success, command_in, PodProcess};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// How long teardown waits for the pod's processes to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A pod: netns `/run/netns/<name>` with `eth0` (10.<200+i>.0.<o>/24, fd00:<200+i>::<o>/64) on
/// the bridge, `lo` up, and cgroup `<cgroup2>/mesh-tests/<name>`.
///
/// `<name>` is `<prefix>-<short name>` (see [`crate::prefix`]) so concurrent harness runs never
/// collide. Drop kills every process in the cgroup, then removes the cgroup, the veth and the
/// netns, logging (not panicking on) failures.
#[derive(Debug)]
pub struct Pod {
    name: String,
    short_name: String,
    ip: IpAddr,
    ip6: IpAddr,
    host_veth: String,
    netns_path: PathBuf,
    cgroup_path: PathBuf,
}

impl Pod {
    /// Creates pod `name` (letters, digits, `-`) with host number `host_octet` (2..=254) on
    /// `bridge`.
    pub fn new(bridge: &Bridge, name: &str, host_octet: u8) -> Result<Pod> {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "pod name {name:?}: use 1-32 letters, digits and '-'"
        );
        anyhow::ensure!(
            (2..=254).contains(&host_octet),
            "host_octet {host_octet} not in 2..=254"
        );
        crate::janitor::sweep_once();
        let full = format!("{}-{}", crate::prefix(), name);
        let idx = bridge.index();
        let pod = Pod {
            // <= 2+4+1+2+1+3 = 13 bytes: fits IFNAMSIZ (15).
            host_veth: format!("{}v{}x{}", crate::prefix(), idx, host_octet),
            netns_path: Path::new("/run/netns").join(&full),
            cgroup_path: cgroup::parent_dir()?.join(&full),
            ip: IpAddr::V4(pod_v4(idx, host_octet)),
            ip6: IpAddr::V6(pod_v6(idx, host_octet)),
            short_name: name.to_string(),
            name: full,
        };
        // Anything with these names now is a leftover of a crashed run with our prefix; the
        // same teardown as Drop removes it.
        pod.teardown();
        // From here on `pod` owns whatever exists, so an error (`?`) still cleans up via Drop.
        pod.setup_net(bridge)
            .with_context(|| format!("setting up network of pod {}", pod.name))?;
        std::fs::create_dir(&pod.cgroup_path)
            .with_context(|| format!("creating cgroup {}", pod.cgroup_path.display()))?;
        Ok(pod)
    }

    fn setup_net(&self, bridge: &Bridge) -> Result<()> {
        let ns = self.name.as_str();
        ip(&["netns", "add", ns])?;
        // Before eth0 exists, so it inherits these: no 1-2 s wait for IPv6 duplicate address
        // detection; TIME_WAIT reuse and a wide port range so connect-rate benchmarks don't
        // run out of ephemeral ports.
        self.in_netns(|| -> Result<()> {
            sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            sysctl("net/ipv6/conf/default/accept_dad", "0")?;
            sysctl("net/ipv4/tcp_tw_reuse", "1")?;
            sysctl("net/ipv4/ip_local_port_range", "1024 65000")
        })??;
        // Create the peer directly inside the netns as eth0: no temporary name in the root ns.
        ip(&[
            "link",
            "add",
            &self.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ])?;
        let _ = sysctl(&format!("net/ipv6/conf/{}/accept_dad", self.host_veth), "0");
        ip(&[
            "link",
            "set",
            &self.host_veth,
            "master",
            bridge.name(),
            "up",
        ])?;
        let v4 = format!("{}/24", self.ip);
        let v6 = format!("{}/64", self.ip6);
        let gw4 = bridge.gateway_v4().to_string();
        let gw6 = bridge.gateway_v6().to_string();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "addr", "add", &v4, "dev", "eth0"])?;
        ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", "eth0", "nodad"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &gw4])?;
        ip(&["-n", ns, "-6", "route", "add", "default", "via", &gw6])?;
        Ok(())
    }

    /// Full name: netns name and cgroup directory name (`<prefix>-<short name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name the test gave to [`Pod::new`].
    pub fn short_name(&self) -> &str {
        &self.short_name
    }

    /// IPv4 address of eth0.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// IPv6 (ULA) address of eth0.
    pub fn ip6(&self) -> IpAddr {
        self.ip6
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        self.netns_path.clone()
    }

    /// `<cgroup2 root>/mesh-tests/<name>`.
    pub fn cgroup_path(&self) -> PathBuf {
        self.cgroup_path.clone()
    }

    /// Root-namespace end of the pod's veth pair (attached to the bridge).
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// A [`Command`] that runs `program` inside this pod (cgroup + netns); add args, env, ...
    /// then start it with [`PodProcess::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        command_in(&self.netns_path, &self.cgroup_path, program)
    }

    /// Starts `program args...` inside the pod. The process is killed when the returned
    /// [`PodProcess`] drops (and, at the latest, when the pod drops).
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<PodProcess> {
        let mut cmd = self.command(program)?;
        cmd.args(args);
        PodProcess::spawn(cmd)
    }

    /// Runs `program args...` inside the pod to completion and returns its output; fails with
    /// the command's stderr if it exits non-zero, and kills it after `timeout`.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
        timeout: Duration,
    ) -> Result<Output> {
        let mut p = self.spawn(program, args)?;
        let out = p.wait_output(timeout)?;
        check_success(&format!("{} (in pod {})", p.description(), self.name), out)
    }

    /// Runs `f` on a helper thread that has joined the pod's network namespace (not its
    /// cgroup), e.g. to open a socket from the pod's point of view. The calling thread's
    /// namespace is untouched. Sockets and /proc/sys/net follow the thread's netns, but /sys
    /// (e.g. /sys/class/net) still shows the root namespace: it is bound at mount time.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = std::fs::File::open(&self.netns_path)
            .with_context(|| format!("opening {}", self.netns_path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscall on an fd we own; affects only this helper thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "setns {}: {}",
                        self.netns_path.display(),
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("in_netns closure panicked"))?
        })
    }

    /// PIDs currently in the pod's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        cgroup::procs(&self.cgroup_path)
    }

    /// Removes everything, in an order that lets each step succeed: processes (they pin the
    /// netns and keep the cgroup busy), cgroup, veth (deleted explicitly because sockets the
    /// agent opened in the netns can keep the namespace, and so eth0 and its peer, alive after
    /// the netns file is gone), then the netns itself.
    fn teardown(&self) {
        if let Err(e) = cgroup::remove(&self.cgroup_path, KILL_TIMEOUT) {
            eprintln!("mesh-tests cleanup of pod {}: {e:#}", self.name);
        }
        if link_exists(&self.host_veth) {
            ip_logged(&["link", "del", &self.host_veth]);
        }
        if self.netns_path.exists() {
            ip_logged(&["netns", "del", &self.name]);
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Writes /proc/sys/<key>; /proc/sys/net resolves to the calling thread's netns.
fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
}
