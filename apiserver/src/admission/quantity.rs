//! Resource quantities (`500m`, `2`, `128Mi`, `1G`) as exact milli-units, printed in
//! Kubernetes' canonical form for quota and limit messages.

use std::fmt;

/// A quantity in milli-units, remembering whether it was written with binary suffixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    /// Value × 1000.
    pub milli: i128,
    /// Written with Ki/Mi/Gi/... (printed the same way).
    pub binary: bool,
}

impl Quantity {
    /// Parses a Kubernetes quantity string; None when malformed.
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(split);
        if num.is_empty() {
            return None;
        }
        let (mult_num, mult_den, binary): (i128, i128, bool) = match suffix {
            "" => (1000, 1, false),
            "m" => (1, 1, false),
            "u" => (1, 1000, false),
            "n" => (1, 1_000_000, false),
            "k" => (1_000_000, 1, false),
            "M" => (1_000_000_000, 1, false),
            "G" => (1_000_000_000_000, 1, false),
            "T" => (1_000_000_000_000_000, 1, false),
            "P" => (1_000_000_000_000_000_000, 1, false),
            "Ki" => (1000 << 10, 1, true),
            "Mi" => (1000 << 20, 1, true),
            "Gi" => (1000 << 30, 1, true),
            "Ti" => (1000 << 40, 1, true),
            "Pi" => (1000 << 50, 1, true),
            s if s.starts_with('e') || s.starts_with('E') => {
                let exp: u32 = s[1..].parse().ok()?;
                (1000 * 10i128.checked_pow(exp)?, 1, false)
            }
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let neg = int.starts_with('-');
        let int = int.trim_start_matches(['+', '-']);
        let int_v: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut milli = int_v * mult_num;
        if !frac.is_empty() {
            let digits = frac.len() as u32;
            let frac_v: i128 = frac.parse().ok()?;
            let scale = 10i128.checked_pow(digits)?;
            // Round up fractions below the milli-unit, as Kubernetes rounds requests up.
            milli += (frac_v * mult_num + scale - 1) / scale;
        }
        milli = (milli + mult_den - 1) / mult_den;
        Some(Quantity {
            milli: if neg { -milli } else { milli },
            binary,
        })
    }

    /// From a JSON value (string or number).
    pub fn from_json(v: &serde_json::Value) -> Option<Quantity> {
        match v {
            serde_json::Value::String(s) => Quantity::parse(s),
            serde_json::Value::Number(n) => Quantity::parse(&n.to_string()),
            _ => None,
        }
    }

    /// Sum keeping the left operand's format (as Kubernetes' `Add`).
    pub fn plus(self, o: Quantity) -> Quantity {
        Quantity {
            milli: self.milli + o.milli,
            binary: self.binary || (self.milli == 0 && o.binary),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 != 0 {
            return write!(f, "{}m", self.milli);
        }
        let v = self.milli / 1000;
        if v == 0 {
            return write!(f, "0");
        }
        if self.binary {
            for (suffix, shift) in [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
                if v % (1i128 << shift) == 0 {
                    return write!(f, "{}{suffix}", v >> shift);
                }
            }
            return write!(f, "{v}");
        }
        for (suffix, p) in [("P", 15u32), ("T", 12), ("G", 9), ("M", 6), ("k", 3)] {
            let d = 10i128.pow(p);
            if v % d == 0 {
                return write!(f, "{}{suffix}", v / d);
            }
        }
        write!(f, "{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let q = |s| Quantity::parse(s).unwrap();
        assert_eq!(q("500m").milli, 500);
        assert_eq!(q("2").milli, 2000);
        assert_eq!(q("0.5").milli, 500);
        assert_eq!(q("128Mi").milli, 128 * 1024 * 1024 * 1000);
        assert_eq!(q("1e3").milli, 1_000_000);
        assert_eq!(q("1").plus(q("1")).to_string(), "2");
        assert_eq!(q("1500m").to_string(), "1500m");
        assert_eq!(q("128Mi").plus(q("128Mi")).to_string(), "256Mi");
        assert_eq!(q("1G").to_string(), "1G");
        assert!(Quantity::parse("abc").is_none());
    }
}
