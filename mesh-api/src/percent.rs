//! [`Percent`]: a share of requests from 0 to 100 (fault injection, trace sampling), written
//! as a YAML number with decimals allowed (`0.5`).

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Steps per percent: a percentage is kept to four decimals (one request in a million), as an
/// integer, so resources stay `Eq` and a value round-trips through YAML and JSON exactly.
const STEPS_PER_PERCENT: u32 = 10_000;
const HUNDRED_STEPS: u32 = 100 * STEPS_PER_PERCENT;

/// A percentage from 0 to 100. Out-of-range values cannot be built: YAML or JSON outside
/// 0..=100 fails to load, naming the field. Decimals past the fourth are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u32);

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const HUNDRED: Percent = Percent(HUNDRED_STEPS);
    pub const ONE: Percent = Percent(STEPS_PER_PERCENT);

    /// `percent` (0 to 100, decimals allowed), or why it is not a percentage.
    pub fn new(percent: f64) -> Result<Percent, String> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("{percent} is not a percentage (0 to 100)"));
        }
        // In range, so the product fits a u32 (at most 1,000,000).
        Ok(Percent(
            (percent * f64::from(STEPS_PER_PERCENT)).round() as u32
        ))
    }

    /// The share as a fraction, 0.0 to 1.0: compare with a uniform random number in [0, 1).
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(HUNDRED_STEPS)
    }

    /// The value as written in YAML, e.g. `12.5`.
    pub fn as_percent(self) -> f64 {
        f64::from(self.0) / f64::from(STEPS_PER_PERCENT)
    }

    /// Serde default for fields that apply to every request when omitted.
    pub(crate) fn hundred() -> Percent {
        Percent::HUNDRED
    }
}

impl fmt::Display for Percent {
    /// `10%`, `0.5%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.as_percent())
    }
}

impl Serialize for Percent {
    /// A whole number when the value is one (`10`, not `10.0`), so files read back as written.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(STEPS_PER_PERCENT) {
            s.serialize_u32(self.0 / STEPS_PER_PERCENT)
        } else {
            s.serialize_f64(self.as_percent())
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Percent::new(f64::deserialize(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(text: &str) -> Result<Percent, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_and_decimal_values_round_trip() {
        for (text, fraction) in [("0", 0.0), ("100", 1.0), ("10", 0.1), ("0.5", 0.005)] {
            let p = from_json(text).unwrap();
            assert_eq!(p.fraction(), fraction, "{text}");
            assert_eq!(serde_json::to_string(&p).unwrap(), text);
        }
        let fine = from_json("0.0001").unwrap();
        assert_eq!(fine.fraction(), 0.000001);
        assert_eq!(from_json(&serde_json::to_string(&fine).unwrap()), Ok(fine));
        assert_eq!(Percent::new(12.5).unwrap().to_string(), "12.5%");
        assert_eq!(Percent::HUNDRED.fraction(), 1.0);
        assert_eq!(Percent::ONE.fraction(), 0.01);
    }

    #[test]
    fn out_of_range_is_refused() {
        assert_eq!(
            from_json("100.5").unwrap_err(),
            "100.5 is not a percentage (0 to 100)"
        );
        assert!(from_json("-1").is_err());
        assert!(from_json("1e400").is_err());
        assert!(from_json("\"10%\"").is_err());
        assert!(Percent::new(f64::NAN).is_err());
        assert!(Percent::new(f64::INFINITY).is_err());
    }
}
