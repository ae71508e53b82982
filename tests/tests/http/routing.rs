//! Route rules applied per request.

use mesh_tests::observe::get;

use super::support::*;

/// Every request goes to the subset the route's catch-all rule names, although the
/// service's round robin alone would alternate between both versions.
#[test]
fn a_catch_all_rule_sends_every_request_to_its_subset() {
    let route = "---\napiVersion: mesh/v1\nkind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules:\n  - backends: [{service: web, subset: v2}]\n";
    let mesh = Versions::new(&["v1", "v2"], &(web_service("http", &["v1", "v2"]) + route));
    for _ in 0..6 {
        let r = get(&mesh.client, &format!("http://{VIP}/"));
        assert_eq!(r.name, "web-v2", "{r:?}");
    }
}
