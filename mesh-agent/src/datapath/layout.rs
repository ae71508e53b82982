//! The layout of the pinned maps: what a second agent must share with the running one to take
//! over from it, and what an agent must find in `<bpffs>/maps/` to adopt what an earlier one
//! pinned.
//!
//! Pinned maps outlive the agent on purpose (capture keeps running, and failing closed,
//! without it). A new version whose programs read a map with another key or value layout
//! would misread every entry, so an agent compares, before it changes anything in the kernel,
//! each pin it would adopt with what its own programs declare: type, key size, value size and
//! flags (not the size: capture tries are sized by `--capture-capacity` when created). The
//! same description, exchanged over the handover socket, is how a successor sees that it
//! cannot take over from a running agent. A mismatch is refused with both layouts named; the
//! running agent is left as it was. Layouts are not migrated: a node whose map layout changed
//! is upgraded by draining it (docs/OPERATIONS.md, "Upgrading the agent").
//!
//! `REVISION` covers what sizes cannot show (the meaning of a field, the order of two of the
//! same size): bump it with any such change to `mesh_common`'s map types.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::MapInfo;
use mesh_common::maps as names;

/// Raised by hand when a map's meaning changes without its sizes changing.
pub const REVISION: u32 = 1;

/// One map as the programs use it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.flags
        )
    }
}

/// The layout of every pinned map this agent's programs use, by map name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub revision: u32,
    pub maps: BTreeMap<String, MapShape>,
}

impl Layout {
    /// This binary's layout: the maps its embedded object declares, and the socket storage map
    /// the agent creates itself.
    pub fn of_this_agent() -> Result<Layout> {
        let object = aya_obj::Object::parse(super::EBPF_OBJECT)
            .context("parsing the embedded eBPF object")?;
        let mut maps: BTreeMap<String, MapShape> = object
            .maps
            .iter()
            // Sections such as .rodata are not pinned and not shared between agents.
            .filter(|(name, _)| name.starts_with("MESH_"))
            .map(|(name, map)| {
                let shape = MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    flags: map.map_flags(),
                };
                (name.clone(), shape)
            })
            .collect();
        maps.insert(names::PEER_CLIENT.into(), super::peer_client::shape());
        Ok(Layout {
            revision: REVISION,
            maps,
        })
    }

    /// Whether an agent with this layout can take over from one with `running`'s: every map
    /// both use has the same shape, and the revision is the same. (Maps only one of them uses
    /// are fine: they are not shared.) The error names each difference.
    pub fn check_against(&self, running: &Layout) -> Result<()> {
        let mut differences = Vec::new();
        if self.revision != running.revision {
            differences.push(format!(
                "layout revision {} here, {} in the running agent",
                self.revision, running.revision
            ));
        }
        for (name, mine) in &self.maps {
            if let Some(theirs) = running.maps.get(name) {
                if mine != theirs {
                    differences.push(format!(
                        "{name}: {mine} here, {theirs} in the running agent"
                    ));
                }
            }
        }
        if differences.is_empty() {
            return Ok(());
        }
        bail!(
            "the map layout changed: {}; this agent cannot share the running agent's maps",
            differences.join("; ")
        )
    }

    /// Checks the maps pinned in `map_dir` (by an earlier agent, maybe running) against this
    /// layout, before anything is adopted or replaced.
    pub fn check_pins(&self, map_dir: &Path) -> Result<()> {
        let mut differences = Vec::new();
        for (name, mine) in &self.maps {
            let pin = map_dir.join(name);
            if !pin.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&pin)
                .with_context(|| format!("reading the pinned map {}", pin.display()))?;
            let pinned = MapShape {
                map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
                key_size: info.key_size(),
                value_size: info.value_size(),
                flags: info.map_flags(),
            };
            if &pinned != mine {
                differences.push(format!("{name}: pinned {pinned}, this agent needs {mine}"));
            }
        }
        if differences.is_empty() {
            return Ok(());
        }
        bail!(
            "the maps pinned in {} have another layout ({}); they belong to another version of \
             the agent. Nothing was changed. To move this node to this version, drain it and \
             remove the pins (see docs/OPERATIONS.md, \"Upgrading the agent\")",
            map_dir.display(),
            differences.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(value_size: u32) -> MapShape {
        MapShape {
            map_type: 1,
            key_size: 8,
            value_size,
            flags: 0,
        }
    }

    fn layout(revision: u32, maps: &[(&str, MapShape)]) -> Layout {
        Layout {
            revision,
            maps: maps
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
        }
    }

    #[test]
    fn this_agents_layout_lists_the_pinned_maps() {
        let layout = Layout::of_this_agent().unwrap();
        for name in [names::POD_NETNS, names::POD_BY_IP, names::PEER_CLIENT] {
            assert!(layout.maps.contains_key(name), "{name} missing: {layout:?}");
        }
        layout.check_against(&layout).unwrap();
    }

    #[test]
    fn a_changed_value_size_or_revision_is_refused_naming_it() {
        let old = layout(1, &[("MESH_A", shape(4)), ("MESH_GONE", shape(4))]);
        let new = layout(1, &[("MESH_A", shape(8)), ("MESH_NEW", shape(4))]);
        let error = format!("{:#}", new.check_against(&old).unwrap_err());
        assert!(
            error.contains("MESH_A: type 1 key 8 B value 8 B"),
            "{error}"
        );
        assert!(
            !error.contains("MESH_GONE") && !error.contains("MESH_NEW"),
            "{error}"
        );
        let bumped = layout(2, &[("MESH_A", shape(4))]);
        let error = format!("{:#}", bumped.check_against(&old).unwrap_err());
        assert!(error.contains("layout revision 2 here, 1"), "{error}");
        // Maps only one side has do not matter.
        let fewer = layout(1, &[("MESH_A", shape(4))]);
        fewer.check_against(&old).unwrap();
    }
}
