//! `weighted`: endpoints in proportion to their Workload weights, interleaved. Smooth
//! weighted round robin: every pick, each endpoint's credit grows by its weight, the endpoint
//! with the most credit is picked and pays the total weight back. Over any run of picks
//! whose length is the total weight (reduced by the weights' greatest common divisor) each
//! endpoint is picked exactly its weight's share, and picks of a heavy endpoint are spread
//! out, not bunched: 1:3 gives B A B B, B A B B, ...

/// Credits of one set of endpoints.
pub struct Weighted {
    weights: Vec<i64>,
    credit: Vec<i64>,
    total: i64,
}

impl Weighted {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Weighted {
        let weights: Vec<i64> = weights.into_iter().map(|w| i64::from(w.max(1))).collect();
        Weighted {
            credit: vec![0; weights.len()],
            total: weights.iter().sum(),
            weights,
        }
    }

    /// The index of the endpoint to use first.
    pub fn pick(&mut self) -> usize {
        let mut best = 0;
        for i in 0..self.weights.len() {
            self.credit[i] += self.weights[i];
            if self.credit[i] > self.credit[best] {
                best = i;
            }
        }
        if let Some(c) = self.credit.get_mut(best) {
            *c -= self.total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_three_is_even_in_every_window_of_four() {
        let mut w = Weighted::new([100, 300]);
        let picks: Vec<usize> = (0..4000).map(|_| w.pick()).collect();
        // Exact, not statistical: every aligned window of 4 holds one pick of the light
        // endpoint and three of the heavy one...
        for window in picks.chunks(4) {
            assert_eq!(window.iter().filter(|i| **i == 0).count(), 1, "{window:?}");
        }
        // ...and no sliding window of 4 holds two of the light one either (never bunched).
        for window in picks.windows(4) {
            assert!(
                window.iter().filter(|i| **i == 0).count() <= 1,
                "{window:?}"
            );
        }
        assert_eq!(&picks[..8], [1, 0, 1, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn shares_follow_the_weights_exactly_per_period() {
        let weights = [5, 1, 1, 3];
        let mut w = Weighted::new(weights);
        let period: u32 = weights.iter().sum();
        for _ in 0..50 {
            let mut counts = [0u32; 4];
            for _ in 0..period {
                counts[w.pick()] += 1;
            }
            assert_eq!(counts, weights);
        }
        // The heavy endpoint's 5 picks of 10 are never three in a row.
        let picks: Vec<usize> = (0..1000).map(|_| w.pick()).collect();
        assert!(picks.windows(3).all(|p| p != [0, 0, 0]), "{picks:?}");
    }

    #[test]
    fn equal_weights_are_round_robin() {
        let mut w = Weighted::new([100, 100, 100]);
        let picks: Vec<usize> = (0..6).map(|_| w.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}
