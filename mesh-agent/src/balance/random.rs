//! `random`: uniformly at random (also what the hash policies do for a request without a
//! key).

use rand::Rng;

/// The index of the endpoint to use first, of `n` (n > 0).
pub fn pick(n: usize, rng: &mut impl Rng) -> usize {
    rng.random_range(0..n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::stats::{chi_square, CHI_SQUARE_0_001};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// 40,000 picks over 4 endpoints: uniform at the 0.1 % significance level (the seed is
    /// fixed, so the test is deterministic; the bound is what a fair draw passes 99.9 % of
    /// the time).
    #[test]
    fn picks_are_uniform() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = [0u64; 4];
        for _ in 0..40_000 {
            counts[pick(4, &mut rng)] += 1;
        }
        let stat = chi_square(&counts, &[1.0; 4]);
        assert!(
            stat < CHI_SQUARE_0_001[3],
            "chi-square {stat} for {counts:?}"
        );
    }
}
