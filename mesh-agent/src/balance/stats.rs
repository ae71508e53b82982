//! Statistics for the balancing tests: Pearson's chi-square goodness of fit; and the keys and
//! endpoint names the hashing policies' tests share.

/// Critical values of the chi-square distribution at the 0.1 % significance level, by
/// degrees of freedom (index = df; index 0 unused): a fair draw exceeds them 0.1 % of the
/// time.
pub const CHI_SQUARE_0_001: [f64; 11] = [
    f64::NAN,
    10.828,
    13.816,
    16.266,
    18.467,
    20.515,
    22.458,
    24.322,
    26.124,
    27.877,
    29.588,
];

/// The chi-square statistic of `observed` counts against shares proportional to
/// `expected_weights` (degrees of freedom: categories - 1).
pub fn chi_square(observed: &[u64], expected_weights: &[f64]) -> f64 {
    let n: u64 = observed.iter().sum();
    let total: f64 = expected_weights.iter().sum();
    observed
        .iter()
        .zip(expected_weights)
        .map(|(&o, &w)| {
            let e = n as f64 * w / total;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// Critical values at the 10^-6 significance level for 2 and 3 degrees of freedom (index =
/// df), for tests that draw from the thread's RNG and so cannot be seeded: loose enough that
/// a correct balancer fails once in a million runs, far below what a biased one produces.
pub const CHI_SQUARE_1E_6: [f64; 4] = [f64::NAN, 23.928, 27.631, 30.665];

/// Endpoint ids `default/web-0` .. `default/web-<n-1>`.
pub fn endpoint_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("default/web-{i}")).collect()
}

/// The hash of user key number `i`.
pub fn user_key(i: u64) -> u64 {
    super::hash::stable_hash(&[b"user-", &i.to_le_bytes()])
}

/// A table that maps a key's hash to an endpoint index (ring hash, maglev).
pub trait PickByHash {
    fn pick_index(&self, hash: u64) -> usize;
}

/// The endpoint each of the first `keys` user keys reaches.
pub fn owners(table: &impl PickByHash, ids: &[String], keys: u64) -> Vec<String> {
    (0..keys)
        .map(|k| ids[table.pick_index(user_key(k))].clone())
        .collect()
}
