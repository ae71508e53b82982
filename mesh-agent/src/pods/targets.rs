//! What an enrollment points at, the pod's network namespace and cgroup: opened without
//! blocking the agent and checked to be a pod's, not the node's.
//!
//! A wrong path here is no small mistake. sk_lookup in the node's own namespace would steer
//! every connection to the node's addresses into the mesh (STRICT refuses them), connect4 on
//! the cgroup root would capture every process of the node, and both stay pinned after the
//! agent stops. So the namespace must be a network namespace other than the init one and the
//! agent's, holding at least one of the pod's IPs, and the cgroup a cgroup v2 directory that is
//! neither the root nor one the agent itself runs in. The namespace checks and the cgroup
//! checks do not depend on each other.
//!
//! Paths are opened `O_PATH` first (a FIFO or a device is never opened for real), off the
//! async runtime, and the whole preparation is bounded in time: a path on a stuck mount costs
//! that one enrollment its time bound, never the node's data path.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, NSFS_MAGIC};

use super::EnrollRequest;
use crate::sys::fs::{filesystem_of, kind_of, open_path_only, reopen_for_reading};
use crate::sys::netns::{namespace_type, NetnsSockets};

/// Upper bound for opening and checking one pod's namespace and cgroup.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(5);

/// The inode number the kernel gives the init network namespace (`PROC_NET_INIT_INO`). Other
/// namespaces get numbers from 0xF0000000 up, so this never names another one.
const INIT_NETNS_INODE: u64 = 0xEFFF_FFF9;

/// A pod's namespace or cgroup is unfit for reasons of its own (not a passing I/O error or a
/// timeout). On resume such a saved pod is cleaned up instead of being attached again.
#[derive(Debug)]
pub enum Unfit {
    /// The path does not exist (any more): the pod was deleted.
    Gone(String),
    /// The path exists but must never be enrolled.
    Refused(String),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Gone(why) | Unfit::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Unfit {}

/// The pod's namespace, opened and checked (and its cgroup checked, if the request names
/// one), with a helper thread in the namespace.
pub struct PreparedPod {
    pub netns: File,
    pub sockets: NetnsSockets,
}

/// Opens and checks the request's namespace and cgroup, within [`PREPARE_TIMEOUT`].
/// `cgroup_root` is the agent's `--cgroup-root`.
pub async fn prepare(request: &EnrollRequest, cgroup_root: &Path) -> Result<PreparedPod> {
    let context = format!("enroll {}", request.uid);
    match tokio::time::timeout(PREPARE_TIMEOUT, prepare_unbounded(request, cgroup_root)).await {
        Ok(prepared) => prepared.context(context),
        Err(_) => anyhow::bail!(
            "{context}: opening and checking --netns {}{} did not finish within \
             {PREPARE_TIMEOUT:?} (a path on a stuck mount?)",
            request.netns.display(),
            request
                .cgroup
                .as_ref()
                .map(|c| format!(" and --cgroup {}", c.display()))
                .unwrap_or_default()
        ),
    }
}

async fn prepare_unbounded(request: &EnrollRequest, cgroup_root: &Path) -> Result<PreparedPod> {
    let netns_path = request.netns.clone();
    let cgroup_path = request.cgroup.clone();
    let root = cgroup_root.to_owned();
    // Path lookups can block (a stuck mount): on a blocking thread, so the runtime's workers
    // never wait. If the time bound above gives up, that thread is left to finish alone.
    // A cgroup, if named, is only checked: capture follows the namespace (an old enroll
    // command naming the cgroup root or the agent's own cgroup is still refused).
    let netns = tokio::task::spawn_blocking(move || -> Result<File> {
        if let Some(cgroup) = &cgroup_path {
            open_pod_cgroup(cgroup, &root)?;
        }
        open_pod_netns(&netns_path)
    })
    .await
    .context("opening the pod's netns and cgroup")??;
    let sockets = NetnsSockets::enter(netns.try_clone()?, &request.netns).await?;
    let held = sockets
        .routable_addresses()
        .await
        .with_context(|| format!("listing the addresses in {}", request.netns.display()))?;
    check_holds_pod_ip(request, &held)?;
    Ok(PreparedPod { netns, sockets })
}

/// Opens `path` if it is a network namespace other than the node's and the agent's.
fn open_pod_netns(path: &Path) -> Result<File> {
    let shown = path.display();
    let handle = open_path_only(path).map_err(|e| open_failed("netns", path, e))?;
    let metadata = handle.metadata()?;
    if filesystem_of(&handle)? != NSFS_MAGIC {
        return Err(refused(format!(
            "netns {shown} is not a namespace file (it is {})",
            kind_of(&metadata)
        )));
    }
    let file = reopen_for_reading(&handle, false)
        .with_context(|| format!("netns {shown} cannot be opened"))?;
    let kind = namespace_type(&file).with_context(|| format!("netns {shown}: NS_GET_NSTYPE"))?;
    if kind != libc::CLONE_NEWNET {
        return Err(refused(format!(
            "netns {shown} is a {} namespace, not a network namespace",
            namespace_name(kind)
        )));
    }
    let id = (metadata.dev(), metadata.ino());
    let steers_everything = "enrolling it would steer every connection to the node's own \
                             addresses into the mesh";
    if id.1 == INIT_NETNS_INODE || file_id("/proc/1/ns/net") == Some(id) {
        return Err(refused(format!(
            "netns {shown} is the node's init network namespace; {steers_everything}"
        )));
    }
    if file_id("/proc/self/ns/net") == Some(id) {
        return Err(refused(format!(
            "netns {shown} is the agent's own network namespace; {steers_everything}"
        )));
    }
    Ok(file)
}

/// Opens `path` if it is a cgroup v2 directory that is neither the root nor one holding the
/// agent.
fn open_pod_cgroup(path: &Path, root: &Path) -> Result<File> {
    let shown = path.display();
    let handle = open_path_only(path).map_err(|e| open_failed("cgroup", path, e))?;
    let metadata = handle.metadata()?;
    if !metadata.is_dir() {
        return Err(refused(format!(
            "cgroup {shown} is not a directory (it is {})",
            kind_of(&metadata)
        )));
    }
    if filesystem_of(&handle)? != CGROUP2_SUPER_MAGIC {
        return Err(refused(format!("{shown} is not a cgroup v2 directory")));
    }
    let id = (metadata.dev(), metadata.ino());
    if file_id(root) == Some(id) {
        return Err(refused(format!(
            "cgroup {shown} is the cgroup root ({}); capture there would take in every \
             process of the node",
            root.display()
        )));
    }
    if let Some(agents) = agent_cgroup(root) {
        let mut holding = agents.ancestors().take_while(|dir| dir.starts_with(root));
        if holding.any(|dir| file_id(dir) == Some(id)) {
            return Err(refused(format!(
                "cgroup {shown} contains the agent's own process (the agent runs in {}); \
                 capture there would take in the agent and what runs beside it",
                agents.display()
            )));
        }
    }
    reopen_for_reading(&handle, true).with_context(|| format!("cgroup {shown} cannot be opened"))
}

/// Refuses a namespace that holds none of the pod's IPs: it is not this pod's.
fn check_holds_pod_ip(request: &EnrollRequest, held: &[IpAddr]) -> Result<()> {
    if request.ips.iter().any(|ip| held.contains(ip)) {
        return Ok(());
    }
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let holds = if held.is_empty() {
        "no routable address".to_string()
    } else {
        list(held)
    };
    Err(refused(format!(
        "netns {} holds none of the pod's IPs ({}); it holds {holds}",
        request.netns.display(),
        list(&request.ips)
    )))
}

/// The agent's cgroup v2 directory under `root`, from `/proc/self/cgroup` (read each time:
/// the agent can be moved).
fn agent_cgroup(root: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(root.join(relative.trim_start_matches('/')))
}

/// (device, inode): the same file whatever the path to it.
fn file_id(path: impl AsRef<Path>) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.dev(), metadata.ino()))
}

fn open_failed(what: &str, path: &Path, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound {
        Unfit::Gone(format!("{what} {} does not exist", path.display())).into()
    } else {
        anyhow::Error::new(e).context(format!("{what} {} cannot be opened", path.display()))
    }
}

fn refused(why: String) -> anyhow::Error {
    Unfit::Refused(why).into()
}

fn namespace_name(kind: libc::c_int) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWCGROUP => "cgroup",
        0x80 => "time",
        _ => "non-network",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: Result<File>) -> String {
        let e = result.expect_err("expected a refusal");
        assert!(
            matches!(e.downcast_ref::<Unfit>(), Some(Unfit::Refused(_))),
            "{e:#}"
        );
        e.to_string()
    }

    #[test]
    fn the_agents_own_namespace_is_refused() {
        // These unit tests run in the agent's place: our own namespace is the agent's.
        let e = refusal(open_pod_netns(Path::new("/proc/self/ns/net")));
        assert!(
            e.contains("is the agent's own network namespace")
                || e.contains("is the node's init network namespace"),
            "{e}"
        );
    }

    #[test]
    fn files_that_are_not_network_namespaces_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A plain open() of a FIFO without a writer would block this test forever.
        assert!(refusal(open_pod_netns(&fifo)).contains("(it is a FIFO)"));
        assert!(refusal(open_pod_cgroup(&fifo, Path::new("/sys/fs/cgroup")))
            .contains("is not a directory (it is a FIFO)"));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(refusal(open_pod_netns(&file)).contains("(it is a regular file)"));
        assert!(refusal(open_pod_netns(Path::new("/proc/self/ns/uts")))
            .contains("is a UTS namespace, not a network namespace"));
        let missing = open_pod_netns(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(
            missing.downcast_ref::<Unfit>(),
            Some(Unfit::Gone(_))
        ));
    }

    #[test]
    fn a_cgroup_root_and_non_cgroup_directories_are_refused() {
        let Ok(root) = crate::sys::fs::detect_cgroup2_root() else {
            return; // no cgroup v2 here: nothing to check against
        };
        assert!(refusal(open_pod_cgroup(&root, &root)).contains("is the cgroup root"));
        // Also through another path to the same directory.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("root");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert!(refusal(open_pod_cgroup(&link, &root)).contains("is the cgroup root"));
        assert!(refusal(open_pod_cgroup(dir.path(), &root)).contains("not a cgroup v2"));
    }

    #[test]
    fn a_namespace_without_the_pods_ips_is_refused_naming_what_it_holds() {
        let request = EnrollRequest::for_test("u1", "10.0.0.1");
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let e = check_holds_pod_ip(&request, &[other])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds none of the pod's IPs (10.0.0.1); it holds 10.0.0.2"),
            "{e}"
        );
        let e = check_holds_pod_ip(&request, &[]).unwrap_err().to_string();
        assert!(e.contains("it holds no routable address"), "{e}");
        check_holds_pod_ip(&request, &[other, request.ips[0]]).unwrap();
    }
}
