//! The hashes consistent hashing relies on, and the request key they hash.
//!
//! They must be the same in every agent and across restarts (a client's key should reach the
//! same endpoint from any node, and after an upgrade), so they are not std's randomly seeded
//! hashers: FNV-1a over the bytes, then a 64-bit finaliser (MurmurHash3's), because FNV alone
//! spreads keys that differ only in their last bytes poorly over a ring or a table.

use std::net::IpAddr;

use http::HeaderMap;
use mesh_api::{HashKey, LoadBalancer};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// A stable 64-bit hash of `parts` taken in order (a separator between parts keeps
/// `["ab", "c"]` and `["a", "bc"]` apart).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for b in part.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        h ^= 0xff;
        h = h.wrapping_mul(FNV_PRIME);
    }
    finalise(h)
}

/// MurmurHash3's fmix64: every input bit affects every output bit.
fn finalise(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A number in [0, 1) derived from `hash`, independent of where `hash` falls on a ring (so a
/// key's locality roll and its endpoint are not correlated).
pub fn unit_fraction(hash: u64) -> f64 {
    let mixed = finalise(hash ^ 0x9e37_79b9_7f4a_7c15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

/// The hash of what the service's `hashOn` names, for a request with `headers` (None on a
/// TCP port) from a client at `source`. None when the policy does not hash or the request
/// has no such key (the caller then balances at random).
pub fn request_hash(lb: &LoadBalancer, source: IpAddr, headers: Option<&HeaderMap>) -> Option<u64> {
    match lb.hash_key()? {
        HashKey::SourceIp => Some(match source.to_canonical() {
            IpAddr::V4(ip) => stable_hash(&[&ip.octets()]),
            IpAddr::V6(ip) => stable_hash(&[&ip.octets()]),
        }),
        HashKey::Header(name) => headers?
            .get(name)
            .map(|value| stable_hash(&[value.as_bytes()])),
        HashKey::Cookie(name) => cookie(headers?, name).map(|value| stable_hash(&[value])),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (the first one by that name).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(yaml: &str) -> LoadBalancer {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn hashes_are_fixed_values_so_every_agent_agrees() {
        // Pinned: changing the hash would move every key of every consistent-hash service
        // at the next upgrade.
        assert_eq!(stable_hash(&[b"user-1"]), stable_hash(&[b"user-1"]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[]), finalise(FNV_OFFSET));
        // Computed independently (a few lines of Python) from the algorithm's definition.
        assert_eq!(stable_hash(&[b"user-1"]), 0xa299_24b8_7e5d_9430);
    }

    #[test]
    fn the_key_is_the_header_the_cookie_or_the_source_ip() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let by_header = lb("{policy: maglev, hashOn: {header: x-user}}");
        let h = headers(&[("x-user", "alice"), ("cookie", "a=1; session=s1")]);
        assert_eq!(
            request_hash(&by_header, ip, Some(&h)),
            Some(stable_hash(&[b"alice"]))
        );
        assert_eq!(request_hash(&by_header, ip, Some(&HeaderMap::new())), None);
        // A TCP port has no headers: no key.
        assert_eq!(request_hash(&by_header, ip, None), None);

        let by_cookie = lb("{policy: ring_hash, hashOn: {cookie: session}}");
        assert_eq!(
            request_hash(&by_cookie, ip, Some(&h)),
            Some(stable_hash(&[b"s1"]))
        );
        let split = headers(&[("cookie", "a=1"), ("cookie", " session = s2 ;b=2")]);
        assert_eq!(
            request_hash(&by_cookie, ip, Some(&split)),
            Some(stable_hash(&[b"s2"]))
        );
        let other = headers(&[("cookie", "sessionx=1; xsession=2")]);
        assert_eq!(request_hash(&by_cookie, ip, Some(&other)), None);

        let by_ip = lb("{policy: ring_hash}");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(
            request_hash(&by_ip, ip, None),
            request_hash(&by_ip, mapped, Some(&h))
        );
        assert!(request_hash(&by_ip, ip, None).is_some());
        assert_eq!(request_hash(&lb("{policy: random}"), ip, Some(&h)), None);
    }

    #[test]
    fn unit_fractions_are_in_range_and_spread() {
        let mut below_half = 0;
        for i in 0u64..10_000 {
            let f = unit_fraction(stable_hash(&[&i.to_le_bytes()]));
            assert!((0.0..1.0).contains(&f));
            below_half += u32::from(f < 0.5);
        }
        // Binomial(10000, 0.5): sd 50; 4 sd either side.
        assert!((4800..=5200).contains(&below_half), "{below_half}");
    }
}
