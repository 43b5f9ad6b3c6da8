//! Exact parsing of Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`, `1Ki`).
//!
//! Values are kept as exact rationals while parsing and rounded up at the end, as
//! `resource.Quantity.Value()` / `MilliValue()` do in Kubernetes.

/// A quantity string that does not follow the Kubernetes grammar.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
)]
pub struct QuantityError(pub String);

/// A parsed quantity: `mantissa * 10^exp10 * 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    /// Parses a quantity in Kubernetes' canonical or non-canonical syntax.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let err = || QuantityError(s.to_string());
        let t = s.trim();
        if t.is_empty() {
            return Err(err());
        }
        let (negative, rest) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let mut mantissa: u128 = 0;
        let mut exp10: i32 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            let d = u128::from(c - b'0');
            match mantissa.checked_mul(10).and_then(|m| m.checked_add(d)) {
                Some(m) => mantissa = m,
                // Too many significant digits: drop precision on the right (still rounds up later).
                None => exp10 += 1,
            }
        }
        exp10 -= i32::try_from(frac_part.len()).map_err(|_| err())?;
        let (add10, exp2) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            other => {
                let exp = other.strip_prefix(['e', 'E']).ok_or_else(err)?;
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                (exp.parse::<i32>().map_err(|_| err())?, 0)
            }
        };
        Ok(Quantity {
            negative,
            mantissa,
            exp10: exp10 + add10,
            exp2,
        })
    }

    /// The value scaled by `10^scale` (e.g. 3 for milli-units), rounded up; saturates at i64 bounds.
    pub fn scaled_ceil(&self, scale: i32) -> i64 {
        if self.mantissa == 0 {
            return 0;
        }
        let mut num: u128 = self.mantissa;
        let mut den: u128 = 1;
        let e = self.exp10 + scale;
        let saturate = if self.negative { i64::MIN } else { i64::MAX };
        if e >= 0 {
            for _ in 0..e {
                match num.checked_mul(10) {
                    Some(n) => num = n,
                    None => return saturate,
                }
            }
        } else {
            for _ in 0..(-e) {
                den = match den.checked_mul(10) {
                    Some(d) => d,
                    // Denominator beyond 10^38: the value is below one unit.
                    None => return if self.negative { 0 } else { 1 },
                };
            }
        }
        for _ in 0..self.exp2 {
            match num.checked_mul(2) {
                Some(n) => num = n,
                None => return saturate,
            }
        }
        let q = num / den;
        let r = num % den;
        if self.negative {
            // Ceiling of a negative value truncates toward zero.
            i64::try_from(q).map(|v| -v).unwrap_or(i64::MIN)
        } else {
            let v = if r == 0 { q } else { q + 1 };
            i64::try_from(v).unwrap_or(i64::MAX)
        }
    }

    /// Integer value rounded up (`Quantity.Value()`).
    pub fn value(&self) -> i64 {
        self.scaled_ceil(0)
    }

    /// Milli-value rounded up (`Quantity.MilliValue()`).
    pub fn milli_value(&self) -> i64 {
        self.scaled_ceil(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> i64 {
        Quantity::parse(s).unwrap().value()
    }
    fn m(s: &str) -> i64 {
        Quantity::parse(s).unwrap().milli_value()
    }

    #[test]
    fn parses_suffixes_exactly() {
        assert_eq!(m("100m"), 100);
        assert_eq!(m("1"), 1000);
        assert_eq!(m("0.5"), 500);
        assert_eq!(m("1.5"), 1500);
        assert_eq!(m("250u"), 1); // rounds up
        assert_eq!(m("1n"), 1);
        assert_eq!(v("1Ki"), 1024);
        assert_eq!(v("1.5Gi"), 1_610_612_736);
        assert_eq!(v("128Mi"), 134_217_728);
        assert_eq!(v("1k"), 1000);
        assert_eq!(v("1M"), 1_000_000);
        assert_eq!(v("2e3"), 2000);
        assert_eq!(v("2E-1"), 1);
        assert_eq!(v("1.1"), 2);
        assert_eq!(v("110"), 110);
        assert_eq!(v("+5"), 5);
        assert_eq!(v("-5"), -5);
        assert_eq!(v("0"), 0);
        assert_eq!(v("8Ei"), i64::MAX); // 2^63 does not fit
        assert_eq!(v("7Ei"), 7 * (1i64 << 60));
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "abc", "1.2.3", "1Qi", "1e", "--1", ".", "1 Gi"] {
            assert!(Quantity::parse(s).is_err(), "{s}");
        }
    }
}
