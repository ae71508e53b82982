//! `mesh-cni install` / `uninstall` against a node's existing network config.

use serde_json::{json, Value};

use crate::runtime::{parse_output, run_plugin};
use crate::support::mesh_cni;

fn read(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// install puts the entry last in the first conflist only, twice changes nothing, and copies
/// the binary, which answers VERSION as a runtime asks it; uninstall restores the conflist
/// and removes the binary, twice too.
#[test]
fn install_into_an_existing_conflist_and_uninstall() {
    let dir = mesh_tests::temp_dir().unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&conf).unwrap();
    let primary = json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.85.0.0/16"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
    ]});
    let (first, other) = (
        conf.join("10-pods.conflist"),
        conf.join("20-other.conflist"),
    );
    std::fs::write(&first, primary.to_string()).unwrap();
    std::fs::write(&other, primary.to_string()).unwrap();
    let dirs = |cmd: &'static str| {
        vec![
            cmd.to_string(),
            "--cni-bin-dir".into(),
            bin.display().to_string(),
            "--cni-conf-dir".into(),
            conf.display().to_string(),
        ]
    };
    let run =
        |args: Vec<String>| mesh_cni(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();

    let mut install = dirs("install");
    install.extend(["--state-dir".into(), "/run/mesh-agent-test".into()]);
    run(install.clone());
    let installed = read(&first);
    assert_eq!(
        installed["plugins"][2],
        json!({"type": "mesh-cni", "stateDir": "/run/mesh-agent-test"})
    );
    assert_eq!(installed["plugins"].as_array().unwrap().len(), 3);
    assert_eq!(
        read(&other),
        primary,
        "only the runtime's (first) config changes"
    );
    let bytes = std::fs::read(&first).unwrap();
    run(install);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        bytes,
        "a second install changes nothing"
    );

    let plugin = bin.join("mesh-cni");
    let env = [("CNI_COMMAND", "VERSION".to_string())];
    let out = run_plugin(&plugin, &env, r#"{"cniVersion":"1.0.0"}"#).unwrap();
    let version = parse_output("mesh-cni", &out).unwrap();
    assert_eq!(version["cniVersion"], "1.0.0");
    assert_eq!(
        version["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );

    run(dirs("uninstall"));
    assert_eq!(read(&first), primary);
    assert!(!plugin.exists());
    run(dirs("uninstall"));
    let mut left: Vec<String> = std::fs::read_dir(&conf)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["10-pods.conflist", "20-other.conflist"],
        "no temporary files left"
    );
}
