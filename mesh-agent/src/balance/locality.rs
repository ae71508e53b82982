//! Which endpoints a pick chooses among: the healthy ones, or all of them in panic; with
//! `localityLb`, those of the client's zone first, then its region, then the rest, spilling
//! over as a tier's health drops (Envoy's priority levels with its overprovisioning factor).
//!
//! A tier whose endpoints are all healthy takes all the traffic its predecessors leave;
//! one with a fraction h healthy takes at most min(1, 1.4 h) of it, so the zone keeps all
//! traffic while at least 5 in 7 of its endpoints are healthy and spills the rest
//! proportionally below that. When fewer than half of all the endpoints are healthy, the
//! health checks are more likely wrong (or the service is overloaded) than most endpoints
//! dead: every endpoint is used, wherever it is (panic).

use mesh_api::Locality;
use rand::Rng;

use super::hash::{stable_hash, unit_fraction};
use super::Candidate;

/// Envoy's overprovisioning factor: a tier is treated as fully healthy down to 1/1.4 = 71 %
/// of its endpoints healthy.
const OVERPROVISIONING: f64 = 1.4;

/// What a pick chooses among.
pub struct Selection<'s> {
    /// Identifies how `members` was chosen (all, or which tier for which client locality),
    /// so the state built for one set is found again for the next pick of the same set.
    pub scope: u64,
    /// The endpoints the policy picks among, in config order.
    pub members: Vec<Candidate<'s>>,
    /// Endpoints to try after `members` (other tiers' healthy ones, preferred tier first).
    pub rest: Vec<Candidate<'s>>,
}

/// The scope of "every candidate" (no locality tiers).
const ALL: u64 = 0;

/// Chooses the endpoints for one pick. `roll` decides the tier where traffic is split
/// between tiers: derived from the request's hash key when it has one (so a key stays in
/// one tier), else random.
pub fn select<'s>(
    candidates: &[Candidate<'s>],
    locality_lb: bool,
    client: Option<&Locality>,
    hash: Option<u64>,
    rng: &mut impl Rng,
) -> Selection<'s> {
    let healthy = candidates.iter().filter(|c| c.healthy).count();
    let everything = |members: Vec<Candidate<'s>>| Selection {
        scope: ALL,
        members,
        rest: Vec::new(),
    };
    if healthy * 2 < candidates.len() {
        return everything(candidates.to_vec());
    }
    let healthy_only = || candidates.iter().filter(|c| c.healthy).copied().collect();
    let Some(client) = client.filter(|_| locality_lb) else {
        return everything(healthy_only());
    };
    let mut tiers: [Vec<Candidate<'s>>; 3] = Default::default();
    for c in candidates {
        tiers[tier_of(client, c.workload.spec.locality.as_ref())].push(*c);
    }
    let shares = shares(&tiers);
    let roll = match hash {
        Some(h) => unit_fraction(h),
        None => rng.random::<f64>(),
    };
    let mut chosen = None;
    let mut cumulative = 0.0;
    for (t, share) in shares.iter().enumerate() {
        cumulative += share;
        if *share > 0.0 {
            chosen = Some(t);
            if roll < cumulative {
                break;
            }
        }
    }
    let Some(chosen) = chosen else {
        return everything(healthy_only());
    };
    let healthy_of = |t: usize| tiers[t].iter().filter(|c| c.healthy).copied();
    Selection {
        scope: scope_of(chosen, client),
        members: healthy_of(chosen).collect(),
        rest: (0..3)
            .filter(|t| *t != chosen)
            .flat_map(healthy_of)
            .collect(),
    }
}

/// 0: the client's zone; 1: its region (another zone, or no zone known); 2: elsewhere or
/// unknown.
fn tier_of(client: &Locality, endpoint: Option<&Locality>) -> usize {
    match endpoint {
        Some(e) if e.region == client.region => {
            if e.zone.is_some() && e.zone == client.zone {
                0
            } else {
                1
            }
        }
        _ => 2,
    }
}

/// The share of traffic of each tier: each takes up to min(1, 1.4 × its healthy fraction)
/// of what is left; if that leaves some over (every tier degraded), the shares are scaled up
/// to sum to 1.
fn shares(tiers: &[Vec<Candidate<'_>>; 3]) -> [f64; 3] {
    let mut shares = [0.0; 3];
    let mut left = 1.0f64;
    for (t, members) in tiers.iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        let healthy = members.iter().filter(|c| c.healthy).count() as f64;
        let capacity = (OVERPROVISIONING * healthy / members.len() as f64).min(1.0);
        shares[t] = capacity.min(left);
        left -= shares[t];
    }
    let sum: f64 = shares.iter().sum();
    if sum > 0.0 && sum < 1.0 {
        for s in &mut shares {
            *s /= sum;
        }
    }
    shares
}

fn scope_of(tier: usize, client: &Locality) -> u64 {
    let zone = client.zone.as_deref().unwrap_or("");
    // Never ALL (0): the hash is of a tier and a locality.
    stable_hash(&[&[tier as u8], client.region.as_bytes(), zone.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::stats::{chi_square, CHI_SQUARE_0_001};
    use mesh_api::Workload;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Workloads named after their locality: `r1-a-0` is in region r1, zone a.
    fn workloads(spec: &[(&str, &str, usize)]) -> Vec<Workload> {
        let mut out = Vec::new();
        for (region, zone, count) in spec {
            for i in 0..*count {
                let yaml = format!(
                    "metadata: {{name: {region}-{zone}-{i}}}\nspec: {{uid: u-{region}-{zone}-{i}, ips: [\"10.0.0.{}\"], node: n, locality: {{region: {region}, zone: {zone}}}}}",
                    out.len() + 1
                );
                out.push(serde_yaml_ng::from_str(&yaml).unwrap());
            }
        }
        out
    }

    fn candidates<'s>(ws: &'s [Workload], unhealthy: &[&str]) -> Vec<Candidate<'s>> {
        ws.iter()
            .map(|w| Candidate {
                workload: w,
                addr: std::net::SocketAddr::new(w.spec.ips[0], 80),
                healthy: !unhealthy.contains(&w.metadata.name.as_str()),
            })
            .collect()
    }

    fn client() -> Locality {
        Locality {
            region: "r1".into(),
            zone: Some("a".into()),
        }
    }

    fn names(cs: &[Candidate<'_>]) -> Vec<String> {
        cs.iter()
            .map(|c| c.workload.metadata.name.clone())
            .collect()
    }

    /// How often each tier (by the zone of the first member) is chosen over `picks` picks.
    fn tier_counts(cs: &[Candidate<'_>], picks: usize) -> [u64; 3] {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0u64; 3];
        for _ in 0..picks {
            let s = select(cs, true, Some(&client()), None, &mut rng);
            counts[tier_of(&client(), s.members[0].workload.spec.locality.as_ref())] += 1;
        }
        counts
    }

    #[test]
    fn healthy_local_endpoints_take_everything_and_the_rest_is_the_fallback() {
        let ws = workloads(&[("r1", "a", 2), ("r1", "b", 2), ("r2", "c", 1)]);
        let cs = candidates(&ws, &[]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let s = select(&cs, true, Some(&client()), None, &mut rng);
            assert_eq!(names(&s.members), ["r1-a-0", "r1-a-1"]);
            assert_eq!(names(&s.rest), ["r1-b-0", "r1-b-1", "r2-c-0"]);
        }
        // Without localityLb, or without a client locality: every healthy endpoint.
        for s in [
            select(&cs, false, Some(&client()), None, &mut rng),
            select(&cs, true, None, None, &mut rng),
        ] {
            assert_eq!(s.members.len(), 5);
            assert_eq!(s.scope, ALL);
        }
    }

    /// 1 of 2 zone endpoints down: the zone keeps 1.4 × 50 % = 70 % of the traffic, the
    /// region 30 %. Chi-square at the 0.1 % level over 20,000 picks (seeded).
    #[test]
    fn a_degraded_zone_spills_the_missing_share_to_the_region() {
        let ws = workloads(&[("r1", "a", 2), ("r1", "b", 2), ("r2", "c", 2)]);
        let cs = candidates(&ws, &["r1-a-0"]);
        let counts = tier_counts(&cs, 20_000);
        assert_eq!(counts[2], 0);
        let stat = chi_square(&counts[..2], &[0.7, 0.3]);
        assert!(stat < CHI_SQUARE_0_001[1], "chi-square {stat}: {counts:?}");
        // The zone's members are its healthy endpoints only.
        let mut rng = StdRng::seed_from_u64(1);
        let s = (0..100)
            .map(|_| select(&cs, true, Some(&client()), None, &mut rng))
            .find(|s| s.members[0].workload.metadata.name.starts_with("r1-a"))
            .unwrap();
        assert_eq!(names(&s.members), ["r1-a-1"]);
        assert_eq!(names(&s.rest), ["r1-b-0", "r1-b-1", "r2-c-0", "r2-c-1"]);
    }

    /// Zone down entirely: its share goes to the region; region also half down: the region
    /// takes 70 % of it and the rest spills to the other region.
    #[test]
    fn spill_over_continues_tier_by_tier() {
        let ws = workloads(&[("r1", "a", 2), ("r1", "b", 2), ("r2", "c", 4)]);
        let down = candidates(&ws, &["r1-a-0", "r1-a-1"]);
        assert_eq!(tier_counts(&down, 1000), [0, 1000, 0]);
        let worse = candidates(&ws, &["r1-a-0", "r1-a-1", "r1-b-0"]);
        let counts = tier_counts(&worse, 20_000);
        assert_eq!(counts[0], 0);
        let stat = chi_square(&counts[1..], &[0.7, 0.3]);
        assert!(stat < CHI_SQUARE_0_001[1], "chi-square {stat}: {counts:?}");
    }

    #[test]
    fn below_half_healthy_every_endpoint_is_used_in_panic() {
        let ws = workloads(&[("r1", "a", 2), ("r1", "b", 2)]);
        let mut rng = StdRng::seed_from_u64(1);
        // Exactly half healthy: not panic; the zone is down, so the region takes all.
        let half = candidates(&ws, &["r1-a-0", "r1-a-1"]);
        let s = select(&half, true, Some(&client()), None, &mut rng);
        assert_eq!(names(&s.members), ["r1-b-0", "r1-b-1"]);
        // One in four healthy: every endpoint, unhealthy ones too, locality or not.
        let most_down = candidates(&ws, &["r1-a-0", "r1-a-1", "r1-b-0"]);
        for lb in [true, false] {
            let s = select(&most_down, lb, Some(&client()), None, &mut rng);
            assert_eq!(s.members.len(), 4);
            assert_eq!(s.scope, ALL);
        }
        // Without locality, half healthy uses only the healthy ones.
        let s = select(&half, false, None, None, &mut rng);
        assert_eq!(names(&s.members), ["r1-b-0", "r1-b-1"]);
    }

    #[test]
    fn a_hash_key_stays_in_one_tier() {
        let ws = workloads(&[("r1", "a", 2), ("r1", "b", 2)]);
        let cs = candidates(&ws, &["r1-a-0"]);
        let mut rng = StdRng::seed_from_u64(1);
        for key in 0u64..200 {
            let h = stable_hash(&[&key.to_le_bytes()]);
            let first = select(&cs, true, Some(&client()), Some(h), &mut rng).scope;
            for _ in 0..5 {
                assert_eq!(
                    select(&cs, true, Some(&client()), Some(h), &mut rng).scope,
                    first
                );
            }
        }
    }

    #[test]
    fn endpoints_without_a_locality_are_elsewhere_and_a_client_without_a_zone_prefers_its_region() {
        let mut ws = workloads(&[("r1", "a", 1), ("r2", "c", 1)]);
        let mut unknown = ws[0].clone();
        unknown.metadata.name = "unknown".into();
        unknown.spec.locality = None;
        ws.push(unknown);
        let cs = candidates(&ws, &[]);
        let regional = Locality {
            region: "r1".into(),
            zone: None,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let s = select(&cs, true, Some(&regional), None, &mut rng);
        assert_eq!(names(&s.members), ["r1-a-0"]);
        assert_eq!(names(&s.rest), ["r2-c-0", "unknown"]);
    }
}
