//! Attaching the programs to one pod: the socket hooks to its cgroup, `sk_lookup` to its
//! network namespace. Each attachment is a BPF link pinned at `<bpffs>/pods/<uid>/<program>`,
//! which keeps it alive without the agent; re-attaching finds the pin and adopts it.

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
    /// The cgroup directory or network namespace file it is attached to.
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
    /// Attaches every program to the pod, adopting links already pinned for it. On error,
    /// whatever this call attached is detached again. The targets come opened (and checked)
    /// by the caller: opening a path here could block on whatever it turned out to be.
    pub fn attach_pod(
        &self,
        uid: &str,
        cgroup: AttachTarget,
        netns: AttachTarget,
    ) -> Result<PodAttachments> {
        let dir = self.pod_link_dir(uid);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut done = Vec::new();
        let result = (|| {
            for name in CGROUP_PROGRAMS {
                done.push(self.attach_one(name, &dir, cgroup)?);
            }
            done.push(self.attach_one(prog::SK_LOOKUP, &dir, netns)?);
            Ok(())
        })();
        if let Err(e) = result {
            for attachment in done.iter().filter(|a| !a.adopted) {
                unpin(&attachment.pin);
            }
            return Err(e);
        }
        Ok(done)
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

    /// Removes every link of the pod; the kernel detaches each when its pin goes.
    pub fn detach_pod(&self, uid: &str) {
        let dir = self.pod_link_dir(uid);
        for name in CGROUP_PROGRAMS.iter().chain([prog::SK_LOOKUP].iter()) {
            unpin(&dir.join(name));
        }
        let _ = std::fs::remove_dir(&dir);
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
