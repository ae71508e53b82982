//! `localityLb`: the client's zone first; when the zone's endpoints fail their health checks,
//! traffic spills over to the region, in proportion to what the zone lost.

use super::support::*;

/// Client in r1/a; a-0 and a-1 in its zone, b-0 and b-1 in zone b of the same region.
/// 1. All healthy: every request to zone a (round robin over a-0, a-1), none to zone b.
/// 2. a-0's app dies: zone a is 50 % healthy, so it keeps 1.4 x 50 % = 70 % of the traffic
///    (all on a-1) and 30 % spills to zone b. Over 1000 requests, a-1's share must pass a
///    chi-square test against 70/30 at the 10^-6 level (i.e. 630..770: the agent's draws
///    cannot be seeded, so the bound is what a correct split misses once in a million runs;
///    without spill-over a-1 gets 1000, with none of the zone preference 333); a-0 gets none.
/// 3. a-1's app dies too: the zone is down, half the endpoints are still healthy (no
///    panic): every request to zone b.
#[test]
fn the_clients_zone_first_then_spill_over_to_the_region() {
    let webs = [
        web("a-0").zone("r1", "a"),
        web("a-1").zone("r1", "a"),
        web("b-0").zone("r1", "b"),
        web("b-1").zone("r1", "b"),
    ];
    let mut mesh = Backends::new(
        &webs,
        Some(("r1", "a")),
        &(service("http", "{policy: round_robin, localityLb: true}", "") + FAST_HEALTH),
    );
    mesh.wait_for_health(&[
        ("a-0", "healthy"),
        ("a-1", "healthy"),
        ("b-0", "healthy"),
        ("b-1", "healthy"),
    ]);
    let local = load(&mesh.client, 200, &[]);
    assert_eq!(
        (count(&local, "a-0"), count(&local, "a-1")),
        (100, 100),
        "{local}"
    );

    mesh.servers[0].kill();
    mesh.wait_for_health(&[("a-0", "unhealthy")]);
    let spilled = load(&mesh.client, 1000, &[]);
    let (a0, a1) = (count(&spilled, "a-0"), count(&spilled, "a-1"));
    let zone_b = count(&spilled, "b-0") + count(&spilled, "b-1");
    eprintln!("zone a half down: a-1 {a1}, zone b {zone_b} of 1000");
    assert_eq!(a0, 0, "{spilled}");
    assert_eq!(a1 + zone_b, 1000, "{spilled}");
    // Chi-square with 1 degree of freedom under 23.93 <=> |a1 - 700| < 70.9.
    assert!((630..=770).contains(&a1), "{spilled}");
    assert!(
        count(&spilled, "b-0") > 0 && count(&spilled, "b-1") > 0,
        "{spilled}"
    );

    mesh.servers[1].kill();
    mesh.wait_for_health(&[("a-1", "unhealthy")]);
    let region = load(&mesh.client, 100, &[]);
    assert_eq!(
        (count(&region, "b-0"), count(&region, "b-1")),
        (50, 50),
        "{region}"
    );
}
