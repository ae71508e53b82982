//! `round_robin`: each endpoint in turn, ignoring weights.

/// Where the rotation continues, for one set of endpoints.
#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// The index of the endpoint to use first, of `n`.
    pub fn pick(&mut self, n: usize) -> usize {
        let i = self.next % n.max(1);
        self.next = i + 1;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_in_turn() {
        let mut rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        // A smaller set keeps rotating without skipping past its end.
        assert_eq!(rr.pick(2), 1);
        assert_eq!(rr.pick(2), 0);
    }
}
