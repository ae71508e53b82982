//! Filesystem checks: is this path on bpffs / cgroup2, where is cgroup v2 mounted, and opening
//! a path for a check without opening whatever it is for real.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::statfs::{fstatfs, statfs, BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC};

/// Finds the cgroup v2 mount: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones, or wherever /proc/self/mounts says.
pub fn detect_cgroup2_root() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    cgroup2_root_from_mounts(&mounts).ok_or_else(|| {
        anyhow::anyhow!(
            "no cgroup v2 filesystem is mounted (looked for type cgroup2 in /proc/self/mounts); \
             mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass --cgroup-root"
        )
    })
}

fn cgroup2_root_from_mounts(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

pub fn is_cgroup2(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

pub fn require_cgroup2(path: &Path) -> Result<()> {
    if !path.is_dir() {
        bail!("cgroup {} does not exist", path.display());
    }
    if !is_cgroup2(path) {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(())
}

/// Opens `path` with `O_PATH`: a handle to the inode that reads nothing, so it cannot block or
/// have side effects whatever the file is (a FIFO without a writer, a device), yet can be
/// checked with `fstat`/`fstatfs` before anything opens it for real. Path lookup itself can
/// still block on a stuck mount: callers run this off the async runtime, with a time bound.
pub fn open_path_only(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
}

/// Opens the very inode `handle` (from [`open_path_only`]) refers to for reading, through
/// `/proc/self/fd`, so there is no window where the path could be swapped for another file.
/// Only call it once the handle was checked to be what the caller expects.
pub fn reopen_for_reading(handle: &File, directory: bool) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | if directory { libc::O_DIRECTORY } else { 0 };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// The filesystem `file` is on.
pub fn filesystem_of(file: &File) -> std::io::Result<nix::sys::statfs::FsType> {
    Ok(fstatfs(file)?.filesystem_type())
}

/// What kind of file this is, for error messages ("a FIFO", "a regular file", ...).
pub fn kind_of(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = metadata.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "an unusual file"
    }
}

/// Makes sure `dir` is on a BPF filesystem, mounting bpffs on its mount point's usual place
/// (`/sys/fs/bpf`) if nothing is mounted there yet, then creates `dir`.
pub fn prepare_bpffs(dir: &Path) -> Result<()> {
    let on_bpffs = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    let mount_point = Path::new("/sys/fs/bpf");
    if dir.starts_with(mount_point) && !on_bpffs(mount_point) {
        std::fs::create_dir_all(mount_point).ok();
        nix::mount::mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mounting bpffs on {} (needs CAP_SYS_ADMIN)",
                mount_point.display()
            )
        })?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !on_bpffs(dir) {
        bail!(
            "{} is not on a BPF filesystem; mount one (mount -t bpf bpf /sys/fs/bpf) or pass \
             --bpffs with a directory on bpffs",
            dir.display()
        );
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically (write a temp file, fsync, rename), readable by the
/// owner only: state files hold what the agent must not lose or leak.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_cgroup2() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root_from_mounts(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_root_from_mounts(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_root_from_mounts("proc /proc proc rw 0 0\n"), None);
    }
}
