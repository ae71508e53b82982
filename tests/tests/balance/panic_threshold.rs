//! The panic threshold: an endpoint failing its health checks is avoided while at least half
//! of the service's endpoints are healthy; below that the checks are more likely wrong than
//! most endpoints dead, so every endpoint gets traffic again rather than a few taking all.

use mesh_tests::observe::start_server;
use mesh_tests::PodProcess;

use super::support::*;

/// The health-check port: a second port of `web`. The agent probes every target port of a
/// service and calls an endpoint unhealthy when one fails, so an endpoint whose pod listens
/// on [`APP_PORT`] but not here fails its checks while it still serves every request.
const CHECKED_PORT: u16 = 8081;

/// A listener on [`CHECKED_PORT`] in web pod `i`: its health checks pass.
fn pass_checks(mesh: &Backends, i: usize) -> PodProcess {
    let listen = format!("0.0.0.0:{CHECKED_PORT}");
    start_server(&mesh.webs[i], &["echo-serve", "--listen", &listen])
}

/// web-0, web-1, web-2 all serve HTTP.
/// 1. web-2 fails its checks (1 of 3 unhealthy, 2 of 3 healthy): 300 requests go to web-0
///    and web-1 in turn, none to web-2.
/// 2. web-1 fails them too (1 of 3 healthy, under half): panic, 300 requests go to all three
///    in turn, 100 each, the two unhealthy ones included and answering. Without the panic
///    threshold web-0 would take all 300 (or, refusing, the client would see failures).
#[test]
fn under_half_healthy_every_endpoint_takes_traffic_again() {
    let mesh = Backends::new(
        &[web("web-0"), web("web-1"), web("web-2")],
        None,
        // Port 80 (HTTP) to the app, port 81 (TCP) to the checked port.
        &(service_ports(
            &[(80, APP_PORT, "http"), (81, CHECKED_PORT, "tcp")],
            "{policy: round_robin}",
            "",
        ) + FAST_HEALTH),
    );
    let _web0_checks = pass_checks(&mesh, 0);
    let mut web1_checks = pass_checks(&mesh, 1);
    mesh.wait_for_health(&[
        ("web-0", "healthy"),
        ("web-1", "healthy"),
        ("web-2", "unhealthy"),
    ]);
    let avoided = load(&mesh.client, 300, &[]);
    assert_eq!(
        (
            count(&avoided, "web-0"),
            count(&avoided, "web-1"),
            count(&avoided, "web-2")
        ),
        (150, 150, 0),
        "one of three unhealthy: avoided: {avoided}"
    );

    web1_checks.kill();
    mesh.wait_for_health(&[
        ("web-0", "healthy"),
        ("web-1", "unhealthy"),
        ("web-2", "unhealthy"),
    ]);
    let panic = load(&mesh.client, 300, &[]);
    assert_eq!(
        (
            count(&panic, "web-0"),
            count(&panic, "web-1"),
            count(&panic, "web-2")
        ),
        (100, 100, 100),
        "two of three unhealthy: panic, all three in turn: {panic}"
    );
}
