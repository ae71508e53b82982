//! The bpf(2) commands aya does not expose for what we need:
//!
//! - opening a pinned link and swapping the program inside it. Swapping is how a restarted
//!   (possibly upgraded) agent puts its freshly loaded programs into the links that kept
//!   capture running while it was away, atomically, with no moment where a pod is not captured.
//! - loading a BTF blob and creating a map described by it, then pinning the map: socket
//!   storage maps need BTF, which the eBPF object does not carry.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    btf_log_true_size: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

/// A map to create: its kind, sizes and the BTF types (in `btf`) of its key and value.
pub struct MapSpec<'a> {
    pub name: &'a str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    pub btf: &'a [u8],
    pub btf_key_type: u32,
    pub btf_value_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reads and removes `key`'s entry of a hash map in one syscall (Linux 5.14+ for hash maps),
/// where aya's get + remove take two; None if there is none. `V` must be the map's value type
/// (plain data of the map's value size).
pub fn lookup_and_delete<K: Copy, V: Copy>(map: BorrowedFd<'_>, key: &K) -> io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel filled the value (the map's value size is `V`'s, checked when
        // the maps were opened against their layout).
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a properly sized, zero-initialised bpf_attr prefix for this command.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Opens the BPF object pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c_path = c_path(path)?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of an existing link.
pub fn link_update(link: BorrowedFd<'_>, new_program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_program.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Creates the map `spec` describes (loading its BTF first) and pins it at `path`. The map
/// lives on in the pin; the returned descriptor may be dropped.
pub fn create_pinned_map(spec: &MapSpec, path: &Path) -> io::Result<OwnedFd> {
    let mut log = vec![0u8; 4096];
    let mut btf_attr = BtfLoadAttr {
        btf: spec.btf.as_ptr() as u64,
        btf_size: spec.btf.len() as u32,
        btf_log_buf: log.as_mut_ptr() as u64,
        btf_log_size: log.len() as u32,
        btf_log_level: 1,
        ..Default::default()
    };
    let btf = bpf(BPF_BTF_LOAD, &mut btf_attr).map_err(|e| {
        let text = String::from_utf8_lossy(&log);
        io::Error::new(
            e.kind(),
            format!("loading BTF: {e}: {}", text.trim_end_matches('\0').trim()),
        )
    })?;
    // SAFETY: the kernel returned a new fd that we now own.
    let btf = unsafe { OwnedFd::from_raw_fd(btf as i32) };
    let mut map_name = [0u8; 16];
    for (to, from) in map_name.iter_mut().zip(spec.name.bytes().take(15)) {
        *to = from;
    }
    let mut attr = MapCreateAttr {
        map_type: spec.map_type,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries: spec.max_entries,
        map_flags: spec.flags,
        map_name,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: spec.btf_key_type,
        btf_value_type_id: spec.btf_value_type,
        ..Default::default()
    };
    let map = bpf(BPF_MAP_CREATE, &mut attr)
        .map_err(|e| io::Error::new(e.kind(), format!("creating map {}: {e}", spec.name)))?;
    // SAFETY: the kernel returned a new fd that we now own.
    let map = unsafe { OwnedFd::from_raw_fd(map as i32) };
    let c_path = c_path(path)?;
    let mut pin = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut pin)
        .map_err(|e| io::Error::new(e.kind(), format!("pinning at {}: {e}", path.display())))?;
    Ok(map)
}
