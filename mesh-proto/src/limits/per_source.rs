//! [`PerSourceLimit`]: at most N connections of one source IP at once, so that a single
//! client cannot take all of a shared limit's slots (e.g. the node's HBONE handshakes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// At most `max` slots held at once by any one source IP.
pub struct PerSourceLimit {
    max: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One source's slot; dropping it gives the slot back (and forgets a source with none left,
/// so the map holds only sources with open connections).
pub struct SourcePermit {
    source: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerSourceLimit {
    pub fn new(max: usize) -> PerSourceLimit {
        PerSourceLimit {
            max,
            held: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more connection from `source`, or `None` if it holds `max` already.
    pub fn admit(&self, source: IpAddr) -> Option<SourcePermit> {
        let mut held = self.held.lock();
        let count = held.entry(source).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourcePermit {
            source,
            held: self.held.clone(),
        })
    }
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PerSourceLimit;

    #[test]
    fn each_source_has_its_own_slots() {
        let limit = PerSourceLimit::new(2);
        let a = "10.0.0.1".parse().unwrap();
        let b = "10.0.0.2".parse().unwrap();
        let first = limit.admit(a).expect("first from a");
        let _second = limit.admit(a).expect("second from a");
        assert!(limit.admit(a).is_none(), "a third from a past 2");
        assert!(limit.admit(b).is_some(), "b is not held back by a");
        drop(first);
        assert!(limit.admit(a).is_some(), "a's slot is free again");
    }
}
