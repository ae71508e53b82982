//! Editing a network configuration list (`*.conflist`): our entry goes last in `plugins`, so
//! the runtime runs it after the plugins that create the pod's interface and assign its IPs,
//! and hands it their result.

use serde_json::{Map, Value};

/// The `type` of our entry: the runtime runs `<bin dir>/mesh-cni`.
pub const PLUGIN_TYPE: &str = "mesh-cni";

/// Our entry in a conflist.
pub fn entry(state_dir: &str) -> Value {
    serde_json::json!({"type": PLUGIN_TYPE, "stateDir": state_dir})
}

/// The config as a list. A single-plugin config (`*.conf`: one object with a `type`) becomes
/// a list of that one plugin, its `cniVersion` and `name` moved to the list, as runtimes do
/// when they load it.
pub fn as_list(config: Value) -> Result<Value, String> {
    let Value::Object(mut object) = config else {
        return Err("not a JSON object".to_string());
    };
    match object.get("plugins") {
        Some(Value::Array(_)) => return Ok(Value::Object(object)),
        Some(_) => return Err("\"plugins\" is not a list".to_string()),
        None => {}
    }
    if !object.get("type").is_some_and(Value::is_string) {
        return Err("neither a list (\"plugins\") nor a plugin config (\"type\")".to_string());
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = object.remove(key) {
            list.insert(key.to_string(), value);
        }
    }
    list.insert(
        "plugins".to_string(),
        Value::Array(vec![Value::Object(object)]),
    );
    Ok(Value::Object(list))
}

/// Puts `entry` last in the list's plugins, replacing any entry of ours. Returns whether the
/// list changed (false: it already ends with this very entry).
pub fn insert(list: &mut Value, entry: Value) -> bool {
    let plugins = plugins(list);
    if plugins.last() == Some(&entry) && count_ours(plugins) == 1 {
        return false;
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry);
    true
}

/// Takes our entries out of the list. Returns whether there were any.
pub fn remove(list: &mut Value) -> bool {
    let plugins = plugins(list);
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    plugins.len() != before
}

/// The `plugins` array of a value [`as_list`] returned.
fn plugins(list: &mut Value) -> &mut Vec<Value> {
    list.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .expect("as_list returns a list with plugins")
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn count_ours(plugins: &[Value]) -> usize {
    plugins.iter().filter(|p| is_ours(p)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge_list() -> Value {
        json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]})
    }

    #[test]
    fn inserts_last_once() {
        let mut list = as_list(bridge_list()).unwrap();
        assert!(insert(&mut list, entry("/var/run/mesh-agent")));
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "mesh-cni"]);
        assert_eq!(list["plugins"][2]["stateDir"], "/var/run/mesh-agent");
        let again = list.clone();
        assert!(!insert(&mut list, entry("/var/run/mesh-agent")));
        assert_eq!(list, again);
    }

    #[test]
    fn a_changed_state_dir_or_misplaced_entry_is_replaced() {
        let mut list = as_list(bridge_list()).unwrap();
        insert(&mut list, entry("/old"));
        assert!(insert(&mut list, entry("/new")));
        assert_eq!(list["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(list["plugins"][2]["stateDir"], "/new");
        // Ours first (someone else appended after it): moved back to the end.
        let mut list = json!({"plugins": [entry("/s"), {"type": "bridge"}]});
        assert!(insert(&mut list, entry("/s")));
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(list["plugins"][1], entry("/s"));
    }

    #[test]
    fn remove_leaves_the_other_plugins_as_they_were() {
        let mut list = as_list(bridge_list()).unwrap();
        insert(&mut list, entry("/s"));
        assert!(remove(&mut list));
        assert_eq!(list, bridge_list());
        assert!(!remove(&mut list));
    }

    #[test]
    fn a_single_plugin_config_becomes_a_list() {
        let conf = json!({"cniVersion": "0.4.0", "name": "pods", "type": "bridge", "ipam": {}});
        let list = as_list(conf).unwrap();
        assert_eq!(
            list,
            json!({"cniVersion": "0.4.0", "name": "pods", "plugins": [{"type": "bridge", "ipam": {}}]})
        );
    }

    #[test]
    fn refuses_what_is_not_a_network_config() {
        assert!(as_list(json!([1]))
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(as_list(json!({"plugins": {}}))
            .unwrap_err()
            .contains("not a list"));
        assert!(as_list(json!({"name": "x"}))
            .unwrap_err()
            .contains("neither"));
    }
}
