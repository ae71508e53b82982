//! `mesh-cni install` / `uninstall`, run by the agent DaemonSet's init container: the plugin
//! binary goes into the node's CNI bin dir and our entry into the network config the runtime
//! uses. Every file is replaced by rename, so a runtime reading the directory at any moment
//! sees either the old file or the new one, never a partial one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::conflist::{self, PLUGIN_TYPE};

/// Extensions runtimes load network configs from; they use the first file in name order.
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

pub struct Dirs<'a> {
    pub bin: &'a Path,
    pub conf: &'a Path,
}

/// Copies this binary to `<bin>/mesh-cni` and puts our entry last in the node's primary
/// network config. Running it again changes nothing.
pub fn install(dirs: &Dirs, state_dir: &str, self_exe: &Path) -> Result<PathBuf, String> {
    if !state_dir.starts_with('/') {
        return Err(format!("--state-dir {state_dir:?} is not an absolute path"));
    }
    let primary = primary_config(dirs.conf)?;
    let mut list = read_list(&primary)?;
    let changed = conflist::insert(&mut list, conflist::entry(state_dir));
    // The binary first: a runtime reading the new config must find the plugin it names.
    let binary = fs::read(self_exe)
        .map_err(|e| format!("reading this binary {}: {e}", self_exe.display()))?;
    write_atomically(&dirs.bin.join(PLUGIN_TYPE), &binary, 0o755)?;
    // A single-plugin `.conf` is rewritten as a `.conflist` of the same name, which sorts
    // right after it; removing the `.conf` then makes it the first file again.
    let target = primary.with_extension("conflist");
    if changed || target != primary {
        write_atomically(&target, &pretty(&list), mode_of(&primary))?;
    }
    if target != primary {
        fs::remove_file(&primary).map_err(|e| {
            format!(
                "removing {} (now {}): {e}",
                primary.display(),
                target.display()
            )
        })?;
    }
    Ok(target)
}

/// Takes our entry out of every network config in `conf` and removes `<bin>/mesh-cni`.
/// Returns the configs it changed. Running it again changes nothing.
pub fn uninstall(dirs: &Dirs) -> Result<Vec<PathBuf>, String> {
    let mut changed = Vec::new();
    for path in config_files(dirs.conf)? {
        let Ok(mut list) = read_list(&path) else {
            continue; // not a network config we could have written
        };
        if conflist::remove(&mut list) {
            write_atomically(&path, &pretty(&list), mode_of(&path))?;
            changed.push(path);
        }
    }
    let binary = dirs.bin.join(PLUGIN_TYPE);
    match fs::remove_file(&binary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", binary.display())),
    }
    Ok(changed)
}

/// The config the runtime uses: the first config file in name order.
fn primary_config(conf_dir: &Path) -> Result<PathBuf, String> {
    config_files(conf_dir)?.into_iter().next().ok_or_else(|| {
        format!(
            "no network config (*.conf, *.conflist, *.json) in {}: install the node's network plugin first, mesh-cni chains after it",
            conf_dir.display()
        )
    })
}

fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = fs::read_dir(conf_dir)
        .map_err(|e| format!("reading the CNI config dir {}: {e}", conf_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_list(path: &Path) -> Result<serde_json::Value, String> {
    let text = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    conflist::as_list(value).map_err(|e| format!("{}: {e}", path.display()))
}

fn pretty(list: &serde_json::Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(list).expect("JSON serializes");
    text.push(b'\n');
    text
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

/// Writes a hidden temporary file beside `path` (no config extension, so no runtime loads it)
/// and renames it over `path`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        // The rename itself survives a crash only once the directory is synced.
        fs::File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&temp);
        format!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        let conf = root.path().join("net.d");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let exe = root.path().join("self");
        fs::write(&exe, b"\x7fELF mesh-cni").unwrap();
        (root, bin, conf, exe)
    }

    fn read(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn installs_into_the_first_config_and_uninstalls() {
        let (_root, bin, conf, exe) = setup();
        let primary =
            json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge"}]});
        fs::write(conf.join("10-pods.conflist"), primary.to_string()).unwrap();
        fs::write(conf.join("99-other.conflist"), primary.to_string()).unwrap();
        let dirs = Dirs {
            bin: &bin,
            conf: &conf,
        };

        let target = install(&dirs, "/run/mesh", &exe).unwrap();
        assert_eq!(target, conf.join("10-pods.conflist"));
        assert_eq!(
            read(&target)["plugins"][1],
            json!({"type": "mesh-cni", "stateDir": "/run/mesh"})
        );
        assert_eq!(
            read(&conf.join("99-other.conflist")),
            primary,
            "only the primary changes"
        );
        assert_eq!(fs::read(bin.join("mesh-cni")).unwrap(), b"\x7fELF mesh-cni");
        assert_eq!(mode_of(&bin.join("mesh-cni")), 0o755);
        let once = fs::read(&target).unwrap();
        install(&dirs, "/run/mesh", &exe).unwrap();
        assert_eq!(
            fs::read(&target).unwrap(),
            once,
            "a second install changes nothing"
        );
        assert_eq!(
            names(&conf),
            ["10-pods.conflist", "99-other.conflist"],
            "no temporary file left"
        );

        assert_eq!(uninstall(&dirs).unwrap(), std::slice::from_ref(&target));
        assert_eq!(read(&target), primary);
        assert!(!bin.join("mesh-cni").exists());
        assert!(uninstall(&dirs).unwrap().is_empty());
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_conflist() {
        let (_root, bin, conf, exe) = setup();
        let single = json!({"cniVersion": "0.4.0", "name": "pods", "type": "bridge"});
        fs::write(conf.join("10-pods.conf"), single.to_string()).unwrap();
        fs::set_permissions(conf.join("10-pods.conf"), fs::Permissions::from_mode(0o600)).unwrap();
        let target = install(
            &Dirs {
                bin: &bin,
                conf: &conf,
            },
            "/s",
            &exe,
        )
        .unwrap();
        assert_eq!(names(&conf), ["10-pods.conflist"]);
        assert_eq!(
            read(&target),
            json!({"cniVersion": "0.4.0", "name": "pods",
                   "plugins": [{"type": "bridge"}, {"type": "mesh-cni", "stateDir": "/s"}]})
        );
        assert_eq!(mode_of(&target), 0o600, "the config keeps its permissions");
    }

    #[test]
    fn refuses_to_guess() {
        let (_root, bin, conf, exe) = setup();
        let dirs = Dirs {
            bin: &bin,
            conf: &conf,
        };
        let e = install(&dirs, "/s", &exe).unwrap_err();
        assert!(
            e.contains("no network config") && e.contains("net.d"),
            "{e}"
        );
        fs::write(conf.join("10-pods.conflist"), "{broken").unwrap();
        let e = install(&dirs, "/s", &exe).unwrap_err();
        assert!(e.contains("10-pods.conflist is not JSON"), "{e}");
        assert_eq!(fs::read(conf.join("10-pods.conflist")).unwrap(), b"{broken");
        assert!(install(&dirs, "relative", &exe)
            .unwrap_err()
            .contains("absolute"));
        assert!(
            names(&bin).is_empty(),
            "no binary without a config naming it"
        );
    }
}
