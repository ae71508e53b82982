//! Attaching the programs: the socket hooks once per node, to the node-wide cgroup
//! (`--cgroup-root`), where they act only for sockets in enrolled pods' network namespaces
//! (`MESH_POD_NETNS`); `sk_lookup` to each pod's network namespace. Each attachment is a BPF
//! link pinned at `<bpffs>/node/<program>` or `<bpffs>/pods/<uid>/<program>`, which keeps it
//! alive without the agent; re-attaching finds the pin and adopts it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps};
use mesh_common::programs as prog;
use serde::Serialize;

use super::{program, Datapath};

/// One program attached to one pod.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub program: &'static str,
    /// The cgroup directory (node-wide) or network namespace file it is attached to.
    pub target: PathBuf,
    pub pin: PathBuf,
    /// True when the link survived from an earlier agent run and was re-adopted.
    pub adopted: bool,
}

pub type PodAttachments = Vec<Attachment>;

/// A cgroup directory or network namespace file, opened, and its path for status and errors.
#[derive(Clone, Copy)]
pub struct AttachTarget<'a> {
    pub path: &'a Path,
    pub file: &'a File,
}

const CGROUP_PROGRAMS: [&str; 5] = [
    prog::CONNECT4,
    prog::CONNECT6,
    prog::GETPEERNAME4,
    prog::GETPEERNAME6,
    prog::SOCK_OPS,
];

impl Datapath {
    /// Starts capture for the node: keeps the sockets of `agents` (this agent's cgroup v2 id,
    /// and during an upgrade the previous agent's) out of it, then attaches the socket hooks
    /// to the node-wide cgroup `root` (`--cgroup-root`).
    pub fn serve_node(&self, root: &Path, agents: &[u64]) -> Result<Vec<Attachment>> {
        self.maps.keep_agent_cgroups(agents)?;
        let file = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        self.attach_node(AttachTarget {
            path: root,
            file: &file,
        })
    }

    /// Attaches the socket hooks to the node-wide cgroup `root` (once per node; an agent
    /// started again adopts the pinned links and puts its programs in them, without a gap).
    fn attach_node(&self, root: AttachTarget) -> Result<Vec<Attachment>> {
        let dir = self.bpffs.join("node");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        CGROUP_PROGRAMS
            .iter()
            .map(|name| self.attach_one(name, &dir, root))
            .collect()
    }

    /// Attaches `sk_lookup` to the pod's network namespace and turns the node-wide socket
    /// hooks on for it (namespace `cookie`, the pod's `slot`). On error, whatever this call
    /// did is undone.
    pub fn attach_pod(
        &self,
        uid: &str,
        netns: AttachTarget,
        cookie: u64,
        slot: u32,
    ) -> Result<PodAttachments> {
        let dir = self.pod_link_dir(uid);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // An agent before capture by namespace attached the socket hooks to each pod's
        // cgroup; with the node-wide ones they would run twice.
        remove_per_pod_socket_hooks(&dir);
        let lookup = self.attach_one(prog::SK_LOOKUP, &dir, netns)?;
        if let Err(e) = self.maps.add_pod_netns(cookie, slot) {
            if !lookup.adopted {
                unpin(&lookup.pin);
            }
            return Err(e);
        }
        Ok(vec![lookup])
    }

    fn attach_one(
        &self,
        name: &'static str,
        dir: &Path,
        target: AttachTarget,
    ) -> Result<Attachment> {
        let pin = dir.join(name);
        let adopted = match crate::sys::bpf::open_pinned(&pin) {
            Ok(link) => {
                // Our programs replace the previous agent's inside the same link: no gap.
                self.update_link(name, &link)
                    .with_context(|| format!("updating the program in {}", pin.display()))?;
                true
            }
            Err(_) => false,
        };
        if !adopted {
            let _ = std::fs::remove_file(&pin); // a stale non-link file would block the pin
            let link = self
                .attach_link(name, target.file)
                .with_context(|| format!("attaching {name} to {}", target.path.display()))?;
            link.pin(&pin)
                .with_context(|| format!("pinning the {name} link at {}", pin.display()))?;
        }
        Ok(Attachment {
            program: name,
            target: target.path.to_owned(),
            pin,
            adopted,
        })
    }

    fn update_link(&self, name: &str, link: &OwnedFd) -> Result<()> {
        let mut ebpf = self.programs.lock();
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing"))?;
        let fd = program.fd()?;
        crate::sys::bpf::link_update(link.as_fd(), fd.as_fd())?;
        Ok(())
    }

    fn attach_link(&self, name: &str, target: &File) -> Result<FdLink> {
        let mut ebpf = self.programs.lock();
        // Link-based cgroup attachments always coexist with other programs on the cgroup (the
        // kernel treats them as multi-attach) and reject explicit flags, hence the 0 of Single.
        let mode = CgroupAttachMode::Single;
        let link: FdLink = if name == prog::SK_LOOKUP {
            let p = program::<SkLookup>(&mut ebpf, name)?;
            let id = p.attach(target)?;
            p.take_link(id)?.into()
        } else if name == prog::SOCK_OPS {
            let p = program::<SockOps>(&mut ebpf, name)?;
            let id = p.attach(target, mode)?;
            p.take_link(id)?.try_into()?
        } else {
            let p = program::<CgroupSockAddr>(&mut ebpf, name)?;
            let id = p.attach(target, mode)?;
            p.take_link(id)?.try_into()?
        };
        Ok(link)
    }

    /// Turns capture off for the pod in `slot` and removes its links; the kernel detaches
    /// each when its pin goes.
    pub fn detach_pod(&self, uid: &str, slot: u32) {
        self.maps.remove_pod_netns_of(slot);
        let dir = self.pod_link_dir(uid);
        remove_per_pod_socket_hooks(&dir);
        unpin(&dir.join(prog::SK_LOOKUP));
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The cgroup v2 id of this process: the inode of its cgroup directory, which is what
/// `bpf_get_current_cgroup_id` reports.
pub fn own_cgroup_id() -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mount = crate::sys::fs::detect_cgroup2_root()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .context("/proc/self/cgroup has no cgroup v2 entry")?;
    let dir = mount.join(relative.trim_start_matches('/'));
    Ok(std::fs::metadata(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .ino())
}

fn remove_per_pod_socket_hooks(dir: &Path) {
    for name in CGROUP_PROGRAMS {
        let pin = dir.join(name);
        if pin.exists() {
            unpin(&pin);
        }
    }
}

fn unpin(pin: &Path) {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            if let Err(e) = link.unpin() {
                tracing::warn!(pin = %pin.display(), error = %e, "unpinning link failed");
            }
        }
        Err(_) => {
            let _ = std::fs::remove_file(pin);
        }
    }
}
