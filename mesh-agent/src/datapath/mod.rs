//! The kernel side of the agent: loading the eBPF object, its maps, and attaching programs to
//! pods.
//!
//! Maps are pinned under `<bpffs>/maps` and links under `<bpffs>/pods/<uid>/`, so capture keeps
//! running (and fails closed) while the agent is down, and a restarted agent re-adopts both.

mod attach;
mod layout;
mod maps;
mod peer_client;

pub use attach::{own_cgroup_id, AttachTarget, Attachment, PodAttachments};
pub use layout::Layout;
pub use maps::{CaptureSet, KernelStats, MapFill, Maps};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use aya::programs::{CgroupSockAddr, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};
use mesh_common::programs as prog;
use parking_lot::Mutex;

use crate::sys::fs::prepare_bpffs;

/// The embedded object produced by `cargo xtask build-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("MESH_EBPF_OBJECT"));

/// Loaded programs and their maps.
pub struct Datapath {
    programs: Mutex<Ebpf>,
    pub maps: Arc<Maps>,
    bpffs: PathBuf,
}

impl Datapath {
    /// Loads every program and opens (or creates and pins) every map.
    /// `capture_capacity` sizes the capture tries when they are first created; pinned ones
    /// from an earlier run keep their size.
    pub fn load(bpffs: &Path, capture_capacity: u32) -> Result<Datapath> {
        prepare_bpffs(bpffs)?;
        let map_dir = bpffs.join("maps");
        std::fs::create_dir_all(&map_dir)
            .with_context(|| format!("creating {}", map_dir.display()))?;
        // Before any pin is adopted, replaced or removed: pins of another layout belong to
        // another version, maybe still running.
        Layout::of_this_agent()?.check_pins(&map_dir)?;
        maps::remove_retired_pins(&map_dir);
        peer_client::ensure_pinned(&map_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .map_max_entries(mesh_common::maps::CAPTURE_V4, capture_capacity)
            .map_max_entries(mesh_common::maps::CAPTURE_V6, capture_capacity)
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;
        for name in [
            prog::CONNECT4,
            prog::CONNECT6,
            prog::GETPEERNAME4,
            prog::GETPEERNAME6,
        ] {
            program::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        program::<SockOps>(&mut ebpf, prog::SOCK_OPS)?
            .load()
            .context("loading sock_ops (verifier)")?;
        program::<SkLookup>(&mut ebpf, prog::SK_LOOKUP)?
            .load()
            .context("loading sk_lookup (verifier)")?;
        let maps = Arc::new(Maps::take(&mut ebpf)?);
        Ok(Datapath {
            programs: Mutex::new(ebpf),
            maps,
            bpffs: bpffs.to_owned(),
        })
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    fn pod_link_dir(&self, uid: &str) -> PathBuf {
        self.bpffs.join("pods").join(uid)
    }
}

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the eBPF object"))?;
    program
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Turns the kernel's EPERM into a sentence that says what is missing.
fn explain_load_error(e: aya::EbpfError) -> anyhow::Error {
    let e = anyhow::Error::new(e);
    let text = format!("{e:#}");
    let hint = if text.contains("Operation not permitted") || text.contains("EPERM") {
        " (no BPF permission: the agent needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN; run it as root)"
    } else {
        ""
    };
    e.context(format!("loading the eBPF object failed{hint}"))
}
