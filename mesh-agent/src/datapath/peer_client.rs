//! `MESH_PEER_CLIENT`, the socket storage in which the proxy leaves the real client on each of
//! its delivery sockets (read by the getpeername hook, `mesh-ebpf/src/delivered.rs`).
//!
//! The kernel creates socket storage maps only with BTF types for their key and value, and the
//! eBPF object carries no BTF (the toolchain's BTF output is not loadable). So the agent
//! creates this one map itself, from the small BTF below, and pins it where the loader looks;
//! the loader then adopts the pin like any other pinned map. A pin that is not this map (left
//! by another version, or anything else) is replaced: entries only matter for live
//! connections of the running agent.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{MapInfo, MapType};
use mesh_common::{maps as names, SockAddr};

use crate::sys::bpf::{create_pinned_map, MapSpec};

const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
const BPF_F_NO_PREALLOC: u32 = 1;
const KEY_SIZE: u32 = 4; // socket storage is keyed by a socket fd (an int)
const VALUE_SIZE: u32 = std::mem::size_of::<SockAddr>() as u32;

/// Makes sure `<map_dir>/MESH_PEER_CLIENT` is the socket storage map the programs expect.
pub fn ensure_pinned(map_dir: &Path) -> Result<()> {
    let pin = map_dir.join(names::PEER_CLIENT);
    if pin.exists() {
        match MapInfo::from_pin(&pin) {
            Ok(info) if fits(&info) => return Ok(()),
            _ => std::fs::remove_file(&pin).with_context(|| {
                format!(
                    "replacing {}: it is not the socket storage map this agent uses",
                    pin.display()
                )
            })?,
        }
    }
    let btf = btf();
    let spec = MapSpec {
        name: names::PEER_CLIENT,
        map_type: BPF_MAP_TYPE_SK_STORAGE,
        key_size: KEY_SIZE,
        value_size: VALUE_SIZE,
        max_entries: 0,
        flags: BPF_F_NO_PREALLOC,
        btf: &btf,
        btf_key_type: TYPE_INT,
        btf_value_type: TYPE_SOCK_ADDR,
    };
    create_pinned_map(&spec, &pin)
        .with_context(|| format!("creating the socket storage map at {}", pin.display()))?;
    Ok(())
}

/// The map's shape, for the layout check (`layout.rs`).
pub fn shape() -> super::layout::MapShape {
    super::layout::MapShape {
        map_type: BPF_MAP_TYPE_SK_STORAGE,
        key_size: KEY_SIZE,
        value_size: VALUE_SIZE,
        flags: BPF_F_NO_PREALLOC,
    }
}

fn fits(info: &MapInfo) -> bool {
    matches!(info.map_type(), Ok(MapType::SkStorage))
        && info.key_size() == KEY_SIZE
        && info.value_size() == VALUE_SIZE
}

// BTF type ids (1-based, in the order written below).
const TYPE_INT: u32 = 1;
const TYPE_U32: u32 = 2;
const TYPE_U16: u32 = 3;
const TYPE_ADDR_WORDS: u32 = 4;
const TYPE_SOCK_ADDR: u32 = 5;

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_INT_SIGNED: u32 = 1;

/// BTF for `int` (the key) and `mesh_common::SockAddr` (the value):
/// `struct mesh_sock_addr { __u32 addr[4]; __u16 port; __u16 family; }`.
fn btf() -> Vec<u8> {
    let mut strings = Strings(vec![0]);
    let mut types = Vec::new();
    let mut push = |words: &[u32]| {
        for w in words {
            types.extend_from_slice(&w.to_ne_bytes());
        }
    };
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    // [1] int: 4 bytes, signed, 32 bits.
    push(&[strings.add("int"), info(BTF_KIND_INT, 0), 4]);
    push(&[(BTF_INT_SIGNED << 24) | 32]);
    // [2] __u32, [3] __u16.
    push(&[strings.add("__u32"), info(BTF_KIND_INT, 0), 4, 32]);
    push(&[strings.add("__u16"), info(BTF_KIND_INT, 0), 2, 16]);
    // [4] __u32[4]: element type, index type, count.
    push(&[0, info(BTF_KIND_ARRAY, 0), 0, TYPE_U32, TYPE_U32, 4]);
    // [5] the struct: members are (name, type, bit offset).
    push(&[
        strings.add("mesh_sock_addr"),
        info(BTF_KIND_STRUCT, 3),
        VALUE_SIZE,
    ]);
    push(&[strings.add("addr"), TYPE_ADDR_WORDS, 0]);
    push(&[strings.add("port"), TYPE_U16, 128]);
    push(&[strings.add("family"), TYPE_U16, 144]);

    const HEADER_LEN: u32 = 24;
    let mut blob = Vec::with_capacity(HEADER_LEN as usize + types.len() + strings.0.len());
    blob.extend_from_slice(&0xeb9f_u16.to_ne_bytes()); // magic
    blob.push(1); // version
    blob.push(0); // flags
    for word in [
        HEADER_LEN,
        0,                      // type section offset (after the header)
        types.len() as u32,     // type section length
        types.len() as u32,     // string section offset
        strings.0.len() as u32, // string section length
    ] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings.0);
    blob
}

/// The BTF string section: offsets of NUL-terminated names.
struct Strings(Vec<u8>);

impl Strings {
    fn add(&mut self, name: &str) -> u32 {
        let offset = self.0.len() as u32;
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_layout_matches_the_btf() {
        // addr at 0 (16 bytes), port at 16, family at 18: the member offsets written above.
        assert_eq!(VALUE_SIZE, 20);
        let sa = SockAddr::default();
        let base = &sa as *const SockAddr as usize;
        assert_eq!(&sa.port as *const u16 as usize - base, 16);
        assert_eq!(&sa.family as *const u16 as usize - base, 18);
    }

    #[test]
    fn btf_sections_add_up() {
        let blob = btf();
        let word = |at: usize| u32::from_ne_bytes(blob[at..at + 4].try_into().unwrap());
        let (types_len, strings_off, strings_len) = (word(12), word(16), word(20));
        assert_eq!(strings_off, types_len);
        assert_eq!(blob.len() as u32, 24 + types_len + strings_len);
        assert!(blob.ends_with(b"family\0"));
    }
}
