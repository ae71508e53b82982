//! Finding: a Service with 10,000 VIPs made `meshctl get` panic ("Formatting argument out of
//! range": the SUMMARY cell was wider than the 65,535 width formatting allows), which took
//! down the listing of every Service. Tables now cut long cells and say how many items are
//! left out; `-o json` keeps everything.

use std::net::IpAddr;

use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::service_yaml;
use mesh_tests::require_root;
use serde_json::Value;

/// As many VIPs as validation and the control plane allow in one Service (neither limits
/// them), printed well over 65,535 characters wide.
const VIPS: usize = 10_000;

#[test]
fn meshctl_get_lists_a_service_with_10000_vips() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let vips: Vec<IpAddr> = (0..VIPS)
        .map(|i| {
            format!("10.96.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .unwrap()
        })
        .collect();
    let printed: usize = vips.iter().map(|v| v.to_string().len() + 1).sum();
    assert!(printed > 65_535, "only {printed} characters of VIPs");
    let wide = service_yaml("wide", &vips, 80, 8080, "wide");
    let narrow = service_yaml("web", &["10.97.0.1".parse().unwrap()], 80, 8080, "web");
    let applied = cp.apply(&format!("{wide}{narrow}")).unwrap();
    assert!(
        applied.contains("Service default/wide created"),
        "{applied}"
    );

    // The table: every Service listed, the wide one summarised, nothing near panic widths.
    let table = cp.meshctl_ok(&["get", "Service"]).unwrap();
    let wide_line = table
        .lines()
        .find(|l| l.contains(" wide "))
        .unwrap_or_else(|| panic!("no row for wide:\n{table}"));
    assert!(
        wide_line.contains("vips=10.96.0.1,10.96.0.2 (+9998 more, see -o yaml) ports=80->8080"),
        "{wide_line}"
    );
    assert!(table.lines().any(|l| l.contains(" web ")), "{table}");
    let longest = table.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest < 200, "a {longest}-character line:\n{table}");

    // -o json keeps all of them.
    let json: Value =
        serde_json::from_str(&cp.meshctl_ok(&["get", "Service", "-o", "json"]).unwrap()).unwrap();
    let listed = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "wide")
        .unwrap_or_else(|| panic!("no wide in {json}"));
    let listed: Vec<IpAddr> = listed["spec"]["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, vips);
}
