//! Config reload (SIGHUP): the agent follows a changed file at once, and keeps serving the
//! last good config when the new file is broken.

use std::time::Duration;

use mesh_tests::mesh::{service_yaml, workload_yaml, MeshNode};
use mesh_tests::{require_root, wait_until, Bridge, Pod};

use crate::support::*;

#[test]
fn reload_follows_endpoint_changes_and_keeps_the_last_good_config() {
    require_root();
    let bridge = Bridge::new(20).unwrap();
    let client = Pod::new(&bridge, "client", 2).unwrap();
    let blue = Pod::new(&bridge, "blue", 3).unwrap();
    let green = Pod::new(&bridge, "green", 4).unwrap();
    let _blue_server = http_server(&blue, "blue");
    let _green_server = http_server(&green, "green");
    // The Service selects `app: <selected>`; blue and green carry app=blue / app=green.
    let config = |selected: &str| {
        [
            service_yaml("web", &[vip()], 80, APP_PORT, selected),
            workload_yaml("client", "client-uid", &[client.ip()], &[("app", "client")]),
            workload_yaml("blue", "blue-uid", &[blue.ip()], &[("app", "blue")]),
            workload_yaml("green", "green-uid", &[green.ip()], &[("app", "green")]),
        ]
        .concat()
    };
    let mut node = MeshNode::start(&config("blue")).unwrap();
    node.enroll(&client, "client-uid", "client").unwrap();
    node.enroll(&blue, "blue-uid", "blue").unwrap();
    node.enroll(&green, "green-uid", "green").unwrap();
    let vip_url = url(vip(), 80);
    for _ in 0..2 {
        assert_eq!(get(&client, &vip_url).name, "blue");
    }
    let version = Status::of(&node).config_version();

    // Switch the service to green: followed within a second, and only green answers then.
    node.reload_config(&config("green")).unwrap();
    let followed = wait_until(Duration::from_secs(1), || {
        get(&client, &vip_url).name == "green"
    });
    assert!(followed, "the VIP still goes to blue a second after SIGHUP");
    for _ in 0..3 {
        assert_eq!(get(&client, &vip_url).name, "green");
    }
    let status = Status::of(&node);
    assert_eq!(status.config_version(), version + 1);
    let endpoints = &status.0["services"][0]["endpoints"];
    assert_eq!(endpoints.as_array().unwrap().len(), 1, "{endpoints}");
    assert_eq!(endpoints[0]["workload"], "default/green", "{endpoints}");

    // A broken file is rejected; the last good config (green) keeps serving.
    let broken = config("blue").replace("targetPort: 8080", "targetPort: eighty");
    node.reload_config(&broken).unwrap();
    let agent = node.agent().unwrap();
    let rejected = wait_until(T, || agent.log().contains("reload rejected"));
    let log = agent.log();
    assert!(rejected, "no rejection in the agent log:\n{log}");
    let config_path = node.config_path().display().to_string();
    let rejection = log
        .lines()
        .rfind(|l| l.contains("reload rejected"))
        .unwrap();
    for part in [config_path.as_str(), "Service default/web", "targetPort"] {
        assert!(rejection.contains(part), "{part:?} not in: {rejection}");
    }
    assert!(node.agent().unwrap().is_running());
    for _ in 0..3 {
        assert_eq!(get(&client, &vip_url).name, "green");
    }
    assert_eq!(Status::of(&node).config_version(), version + 1);

    // And a good file after the broken one is taken again.
    node.reload_config(&config("blue")).unwrap();
    let followed = wait_until(Duration::from_secs(1), || {
        get(&client, &vip_url).name == "blue"
    });
    assert!(
        followed,
        "the VIP did not go back to blue after a good reload"
    );
    assert_eq!(Status::of(&node).config_version(), version + 2);

    // The captured destinations follow too: a moved VIP is captured at its new address and
    // no longer at the old one.
    let moved: std::net::IpAddr = "10.96.0.21".parse().unwrap();
    node.reload_config(&config("blue").replace(VIP, &moved.to_string()))
        .unwrap();
    let followed = wait_until(Duration::from_secs(1), || {
        try_get(&client, &url(moved, 80), 200).is_ok_and(|b| Response::parse(&b).name == "blue")
    });
    assert!(
        followed,
        "the new VIP {moved} is not served a second after SIGHUP"
    );
    let before = Status::of(&node);
    assert!(
        !before.0["capture"].to_string().contains(VIP),
        "{}",
        before.0["capture"]
    );
    let (err, _) = get_fails(&client, &vip_url, 300);
    assert!(
        err.contains("timed out") || err.contains("unreachable"),
        "{err}"
    );
    let after = Status::of(&node);
    assert_eq!(
        after.kernel("connect_direct"),
        before.kernel("connect_direct") + 1
    );
    assert_eq!(
        after.kernel("connect_captured"),
        before.kernel("connect_captured")
    );
}
