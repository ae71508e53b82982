//! Removes leftovers of harness runs that died without running their `Drop`s (SIGKILL, abort,
//! a CI timeout), so a crashed run never breaks the next one.
//!
//! Every object the harness creates is named `mt<digits><rest>` (see [`crate::prefix`]). A
//! process registers its prefix in `/run/mesh-tests/<prefix>` with its PID and start time before
//! creating anything; objects whose prefix has no live owner are stale. Our own prefix is swept
//! too (before registering): a PID can be reused, and anything carrying our prefix before we
//! created it belongs to a dead run.

use crate::cgroup;
use crate::cmd::{ip, ip_logged};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Once;
use std::time::Duration;

const OWNERS_DIR: &str = "/run/mesh-tests";
const NETNS_DIR: &str = "/run/netns";
/// `<OWNERS_DIR>/<prefix>-pids` lists daemons started by that run, `pid starttime` per line.
const PIDS_SUFFIX: &str = "-pids";

/// Sweeps stale objects once per process, then registers this process as an owner.
pub fn sweep_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        sweep();
        register();
    });
}

/// Removes every harness object (daemons, cgroups, links, netns) whose prefix has no live
/// owner. Safe to call at any time: this process counts as live once registered (before
/// that, its own prefix can only belong to a dead run that had the same PID modulo 10000).
pub fn sweep() {
    let live: BTreeSet<String> = list_dir(Path::new(OWNERS_DIR))
        .into_iter()
        .filter(|p| prefix_of(p) == Some(p))
        .filter(|p| owner_alive(&Path::new(OWNERS_DIR).join(p)))
        .collect();
    let stale = |name: &str| prefix_of(name).is_some_and(|p| !live.contains(p));

    // Daemons (agents) of dead runs: they hold ports, bpffs pins and pod namespaces.
    for name in list_dir(Path::new(OWNERS_DIR))
        .into_iter()
        .filter(|n| stale(n))
    {
        if let Some(p) = name.strip_suffix(PIDS_SUFFIX) {
            kill_tracked(&Path::new(OWNERS_DIR).join(&name), p);
        }
    }

    // Cgroups first: killing the pods' processes releases their namespaces.
    if let Ok(parent) = cgroup::cgroup2_root().map(|r| r.join(cgroup::PARENT)) {
        for name in list_dir(&parent).into_iter().filter(|n| stale(n)) {
            eprintln!("mesh-tests: removing stale cgroup {name}");
            if let Err(e) = cgroup::remove(&parent.join(&name), Duration::from_secs(5)) {
                eprintln!("mesh-tests cleanup: {e:#}");
            }
        }
    }
    for name in list_dir(Path::new("/sys/class/net"))
        .into_iter()
        .filter(|n| stale(n))
    {
        eprintln!("mesh-tests: removing stale link {name}");
        ip_logged(&["link", "del", &name]);
    }
    for name in list_dir(Path::new(NETNS_DIR))
        .into_iter()
        .filter(|n| stale(n))
    {
        eprintln!("mesh-tests: removing stale netns {name}");
        ip_logged(&["netns", "del", &name]);
    }
    for name in list_dir(Path::new(OWNERS_DIR))
        .into_iter()
        .filter(|n| stale(n))
    {
        let _ = std::fs::remove_file(Path::new(OWNERS_DIR).join(name));
    }
}

/// Fails if an interface other than `except` holds `addr`: after the sweep that can only be a
/// live run (or something else on the host) using the same subnet, which would steal our
/// pods' routes.
pub(crate) fn ensure_addr_free(addr: &str, except: &str) -> anyhow::Result<()> {
    let out = ip(&["-o", "addr", "show"])?;
    for line in out.lines() {
        // "5: mt12br0    inet 10.200.0.1/24 scope global mt12br0 ..."
        let mut f = line.split_whitespace();
        let name = f
            .nth(1)
            .unwrap_or_default()
            .split('@')
            .next()
            .unwrap_or_default();
        let holds = f.nth(1).and_then(|a| a.split('/').next()) == Some(addr);
        if holds && name != except {
            anyhow::bail!(
                "{addr} is already on interface {name} (another mesh-tests run using the same \
                 subnet index?); pick another index or delete that interface"
            );
        }
    }
    Ok(())
}

/// `mt<digits>` at the start of a harness object name, if it is one.
pub fn prefix_of(name: &str) -> Option<&str> {
    let digits = name.strip_prefix("mt")?;
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    // Bridges are `<p>br<i>`, veths `<p>v<i>x<o>`, netns/cgroups `<p>-<name>`, owners `<p>`.
    match digits.as_bytes().get(n) {
        None | Some(b'-') | Some(b'b') | Some(b'v') => Some(&name[..2 + n]),
        _ => None,
    }
}

fn register() {
    let me = std::process::id();
    let Some(start) = start_time(me) else { return };
    let _ = std::fs::create_dir_all(OWNERS_DIR);
    let path = Path::new(OWNERS_DIR).join(crate::prefix());
    if let Err(e) = std::fs::write(&path, format!("{me} {start}\n")) {
        eprintln!("mesh-tests: cannot register {}: {e}", path.display());
    }
}

/// Records a daemon started by this run, so a later run can kill it if we crash.
pub(crate) fn track_pid(pid: u32) {
    use std::io::Write;
    let Some(start) = start_time(pid) else { return };
    let path = Path::new(OWNERS_DIR).join(format!("{}{PIDS_SUFFIX}", crate::prefix()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    if let Err(e) = file.and_then(|mut f| writeln!(f, "{pid} {start}")) {
        eprintln!("mesh-tests: cannot record pid in {}: {e}", path.display());
    }
}

fn kill_tracked(pids_file: &Path, prefix: &str) {
    let text = std::fs::read_to_string(pids_file).unwrap_or_default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(Ok(pid)), Some(start)) = (f.next().map(str::parse::<u32>), f.next()) else {
            continue;
        };
        // Only if the PID still belongs to the same process (not reused since).
        if start_time(pid).is_some_and(|s| s.to_string() == start) {
            eprintln!("mesh-tests: killing process {pid} left by run {prefix}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// An owner file names a live process if that PID exists with the same start time.
fn owner_alive(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut f = text.split_whitespace();
    let (Some(pid), Some(start)) = (f.next(), f.next()) else {
        return false;
    };
    pid.parse()
        .ok()
        .and_then(start_time)
        .is_some_and(|s| s.to_string() == start)
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), which tells a reused
/// PID from the original process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_harness_names_only() {
        assert_eq!(prefix_of("mt42br0"), Some("mt42"));
        assert_eq!(prefix_of("mt42v0x3"), Some("mt42"));
        assert_eq!(prefix_of("mt42-a"), Some("mt42"));
        assert_eq!(prefix_of("mt42"), Some("mt42"));
        assert_eq!(prefix_of("mtu0"), None);
        assert_eq!(prefix_of("mt42x"), None);
        assert_eq!(prefix_of("eth0"), None);
    }

    #[test]
    fn our_own_process_is_alive() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("owner");
        std::fs::write(&f, format!("{me} {}\n", start_time(me).unwrap())).unwrap();
        assert!(owner_alive(&f));
        std::fs::write(&f, format!("{me} 1\n")).unwrap();
        assert!(!owner_alive(&f));
    }
}
