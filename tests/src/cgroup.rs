//! cgroup v2 helpers: find the unified hierarchy, create pod cgroups, empty and remove them.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directory under the cgroup2 root that holds every pod cgroup the harness creates.
pub const PARENT: &str = "mesh-tests";

/// Mount point of the cgroup v2 (unified) hierarchy.
///
/// Found from `/proc/self/mountinfo` (fstype `cgroup2`) rather than assumed, because hybrid
/// hosts mount it at `/sys/fs/cgroup/unified` and unified hosts at `/sys/fs/cgroup`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&info)
        .context("no cgroup2 filesystem is mounted (see /proc/self/mountinfo)")
}

/// Parses mountinfo text: `id parent maj:min root mountpoint opts [optional...] - fstype src ...`.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `<cgroup2 root>/mesh-tests`, created if missing. Never removed: other harness processes
/// may be using it at the same time.
pub fn parent_dir() -> Result<PathBuf> {
    let dir = cgroup2_root()?.join(PARENT);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// PIDs currently in the cgroup (empty if the cgroup is gone).
pub fn procs(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in the cgroup and waits until it is empty.
///
/// Prefers `cgroup.kill` (atomic, also catches processes forking while we kill); falls back to
/// SIGKILLing each PID from `cgroup.procs` on kernels older than 5.14.
pub fn kill_all(cgroup: &Path, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let kill_file = cgroup.join("cgroup.kill");
    loop {
        let pids = procs(cgroup);
        if pids.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "processes {pids:?} still in {} after SIGKILL",
                cgroup.display()
            );
        }
        if kill_file.exists() {
            let _ = std::fs::write(&kill_file, "1");
        } else {
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Empties and removes a cgroup directory (and any child cgroups a process created in it).
pub fn remove(cgroup: &Path, timeout: Duration) -> Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    // Children first: rmdir only works on a cgroup without sub-cgroups.
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove(&e.path(), timeout)?;
            }
        }
    }
    kill_all(cgroup, timeout)?;
    // rmdir can briefly fail with EBUSY right after the last task exits; retry.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e).with_context(|| format!("rmdir {}", cgroup.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_and_unified_mountinfo() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      35 30 0:30 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
    }
}
