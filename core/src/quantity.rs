//! Kubernetes resource quantities (`resource.Quantity`: `500m`, `2`, `1.5Gi`, `2e3`): parsing with
//! `ParseQuantity`'s grammar, quirks and error wording, the canonical string form (`String()`),
//! comparison, sums and differences, and the rounded integer accessors `Value()` and
//! `MilliValue()`.
//!
//! A quantity is held as an exact number of milli-units plus whether it was written with a binary
//! suffix. Kubernetes keeps nano precision; here a finer value is rounded away from zero to the
//! next milli-unit when parsed, which leaves `Value()` and `MilliValue()` exactly as in
//! Kubernetes (nested roundings away from zero compose) but prints `100u` as `1m`. The format
//! `DecimalExponent` (`2e3`) is not remembered: such a quantity prints in `DecimalSI` (`2k`).

use std::cmp::Ordering;
use std::fmt;

/// Kubernetes' `splitREString`, quoted by `ErrFormatWrong`.
const SPLIT_RE: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// `ParseQuantity`'s errors, printed with Kubernetes' messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantityError {
    /// `ErrFormatWrong`: the string is not of the quantity grammar.
    FormatWrong,
    /// `ErrNumeric`: the numeric part cannot be read.
    Numeric,
    /// `ErrSuffix`: the suffix is none of Kubernetes' suffixes.
    Suffix,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityError::FormatWrong => {
                write!(
                    f,
                    "quantities must match the regular expression '{SPLIT_RE}'"
                )
            }
            QuantityError::Numeric => f.write_str("unable to parse numeric part of quantity"),
            QuantityError::Suffix => f.write_str("unable to parse quantity's suffix"),
        }
    }
}

impl std::error::Error for QuantityError {}

/// A quantity: its value in milli-units and whether it prints with a binary suffix.
///
/// The derived equality and order compare the format too; [`Quantity::cmp_value`] compares
/// values only, as Kubernetes' `Cmp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    /// The value × 1000.
    pub milli: i128,
    /// Format `BinarySI` (written with Ki, Mi, ..., Ei), printed the same way.
    pub binary: bool,
}

/// Kubernetes' parsing cap of a `BinarySI` quantity (2^63 − 1), in milli-units.
const BINARY_CAP_MILLI: u128 = i64::MAX as u128 * 1000;

/// The three formats a suffix selects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSI,
    BinarySI,
    DecimalExponent,
}

/// The parts of a quantity string as `parseQuantityString` splits them.
struct Scanned<'a> {
    positive: bool,
    /// Sign and number (`-1.5` of `-1.5Gi`).
    value: &'a str,
    /// Integer digits without leading zeros (`"0"` when none are left).
    num: &'a str,
    /// Fraction digits.
    denom: &'a str,
    suffix: &'a str,
}

/// `parseQuantityString`: sign, leading zeros, integer digits, `.` and fraction digits, suffix
/// letters, an optional exponent sign and digits. Anything after that is `ErrFormatWrong`.
fn scan(s: &str) -> Result<Scanned<'_>, QuantityError> {
    let b = s.as_bytes();
    let end = b.len();
    let mut pos = 0;
    let mut positive = true;
    match b.first() {
        Some(b'-') => {
            positive = false;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    while pos < end && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= end {
        // Only a sign and zeros ("-", "+", "000"): zero.
        return Ok(Scanned {
            positive,
            value: "0",
            num: "0",
            denom: "",
            suffix: "",
        });
    }
    let num_start = pos;
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos >= end {
        return Ok(Scanned {
            positive,
            value: s,
            num: &s[num_start..],
            denom: "",
            suffix: "",
        });
    }
    let num = match &s[num_start..pos] {
        "" => "0",
        n => n,
    };
    let mut denom = "";
    if b[pos] == b'.' {
        pos += 1;
        let denom_start = pos;
        while pos < end && b[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos >= end {
            return Ok(Scanned {
                positive,
                value: s,
                num,
                denom: &s[denom_start..],
                suffix: "",
            });
        }
        denom = &s[denom_start..pos];
    }
    let value = &s[..pos];
    let suffix_start = pos;
    while pos < end && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < end && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < end && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return Err(QuantityError::FormatWrong);
    }
    Ok(Scanned {
        positive,
        value,
        num,
        denom,
        suffix: &s[suffix_start..],
    })
}

/// `quantitySuffixer.interpret`: the suffix's base-10 or base-2 exponent and format.
fn interpret(suffix: &str) -> Option<(i32, Format)> {
    let decimal = |e| Some((e, Format::DecimalSI));
    let binary = |e| Some((e, Format::BinarySI));
    match suffix {
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            // strconv.ParseInt(s[1:], 10, 64), then int32(...): Go's conversion wraps.
            let e: i64 = s[1..].parse().ok()?;
            Some((e as i32, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// A little-endian unsigned big integer: enough to read any digit string exactly.
struct Big(Vec<u32>);

impl Big {
    fn mul_add(&mut self, m: u32, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    /// Divides in place; returns the remainder.
    fn div_rem(&mut self, d: u32) -> u32 {
        let mut rem = 0u64;
        for limb in self.0.iter_mut().rev() {
            let v = (rem << 32) | u64::from(*limb);
            *limb = (v / u64::from(d)) as u32;
            rem = v % u64::from(d);
        }
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        rem as u32
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&l| l == 0)
    }

    /// The value, None beyond u128.
    fn to_u128(&self) -> Option<u128> {
        let mut out: u128 = 0;
        for (i, &limb) in self.0.iter().enumerate() {
            if limb == 0 {
                continue;
            }
            if i >= 4 {
                return None;
            }
            out |= u128::from(limb) << (32 * i);
        }
        Some(out)
    }
}

/// `digits × 10^exp10 × 2^exp2` in milli-units, rounded up (the magnitude), saturating at
/// u128; with whether it was rounded.
fn milli_magnitude(digits: impl Iterator<Item = u8>, exp10: i64, exp2: u32) -> (u128, bool) {
    let mut big = Big(Vec::new());
    for d in digits {
        big.mul_add(10, u32::from(d - b'0'));
    }
    for _ in 0..exp2 {
        big.mul_add(2, 0);
    }
    let e = exp10.saturating_add(3);
    let mut inexact = false;
    if e >= 0 {
        for _ in 0..e {
            // Past 2^160 the value saturates anyway.
            if big.is_zero() || big.0.len() > 5 {
                break;
            }
            big.mul_add(10, 0);
        }
    } else {
        for _ in 0..e.unsigned_abs() {
            if big.is_zero() {
                break;
            }
            inexact |= big.div_rem(10) != 0;
        }
    }
    let whole = big.to_u128().unwrap_or(u128::MAX);
    (whole.saturating_add(u128::from(inexact)), inexact)
}

impl Quantity {
    /// Parses a quantity as Kubernetes decodes one (`UnmarshalJSON`: surrounding whitespace
    /// trimmed, then `ParseQuantity`). As there, `.`, `-` and `1.` are well formed (zero, zero,
    /// one), a `BinarySI` value is capped at 2^63 − 1 and a value finer than the precision kept
    /// is rounded away from zero.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(QuantityError::FormatWrong);
        }
        let sc = scan(s)?;
        let (exponent, format) = interpret(sc.suffix).ok_or(QuantityError::Suffix)?;
        let (num_len, denom_len) = (sc.num.len() as i64, sc.denom.len() as i64);
        let exponent = i64::from(exponent);
        // Kubernetes reads the number with inf.Dec (which needs a digit) unless the int64 fast
        // path applies; only that decides whether a number without digits is an error.
        let slow_path = match format {
            Format::DecimalSI | Format::DecimalExponent => {
                18 - (num_len + denom_len) < 0 || exponent - denom_len < -9
            }
            Format::BinarySI => denom_len > 0 || 15 - num_len - exponent * 3 / 10 - 1 < 0,
        };
        if slow_path && !sc.value.bytes().any(|c| c.is_ascii_digit()) {
            return Err(QuantityError::Numeric);
        }
        let (exp10, exp2) = match format {
            Format::BinarySI => (-denom_len, exponent as u32),
            _ => (exponent - denom_len, 0),
        };
        let digits = sc.num.bytes().chain(sc.denom.bytes());
        let (mut magnitude, inexact) = milli_magnitude(digits, exp10, exp2);
        let mut binary = format == Format::BinarySI;
        if binary && magnitude > BINARY_CAP_MILLI {
            magnitude = BINARY_CAP_MILLI;
        }
        // A binary value strictly between 0 and 1 becomes DecimalSI.
        if binary && magnitude > 0 && (magnitude < 1000 || (magnitude == 1000 && inexact)) {
            binary = false;
        }
        let milli = i128::try_from(magnitude).unwrap_or(i128::MAX);
        Ok(Quantity {
            milli: if sc.positive { milli } else { -milli },
            binary,
        })
    }

    /// From a JSON value: a string, or a number (both decode into a Kubernetes quantity); None
    /// when malformed.
    pub fn from_json(v: &serde_json::Value) -> Option<Quantity> {
        match v {
            serde_json::Value::String(s) => Quantity::parse(s).ok(),
            serde_json::Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
            _ => None,
        }
    }

    /// `Value()`: the value rounded away from zero to an integer; saturates at the i64 bounds
    /// (where Kubernetes overflows).
    pub fn value(&self) -> i64 {
        let (q, r) = (self.milli / 1000, self.milli % 1000);
        saturate(q + r.signum())
    }

    /// `MilliValue()`: the value in milli-units (already rounded when parsed); saturates at the
    /// i64 bounds.
    pub fn milli_value(&self) -> i64 {
        saturate(self.milli)
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.milli == 0
    }

    /// `Cmp`: compares the values, whatever their formats.
    pub fn cmp_value(&self, other: &Quantity) -> Ordering {
        self.milli.cmp(&other.milli)
    }

    /// The sum (`Add`). The result is binary when the left operand is, or when it is zero and
    /// the right one is. (Kubernetes gives a zero left operand the right one's format, also a
    /// decimal one; Lotse's quota usage starts from a zero in the hard limit's format and keeps
    /// it.)
    pub fn plus(self, o: Quantity) -> Quantity {
        Quantity {
            milli: self.milli.saturating_add(o.milli),
            binary: self.binary || (self.milli == 0 && o.binary),
        }
    }

    /// The difference (`Sub`), formatted as [`Quantity::plus`].
    pub fn minus(self, o: Quantity) -> Quantity {
        Quantity {
            milli: self.milli.saturating_sub(o.milli),
            binary: self.binary || (self.milli == 0 && o.binary),
        }
    }
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Kubernetes' canonical form (`CanonicalizeBytes`): no fractional digits, the largest suffix
/// that loses no precision; a binary quantity below 1024 in magnitude or not a whole number
/// prints in `DecimalSI`; past `E` the exponent is written out (`1e21`).
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli == 0 {
            return f.write_str("0");
        }
        if self.binary && self.milli.unsigned_abs() >= 1024 * 1000 && self.milli % 1000 == 0 {
            let mut v = self.milli / 1000;
            let mut exp = 0;
            while exp < 6 && v % 1024 == 0 {
                v /= 1024;
                exp += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][exp];
            return write!(f, "{v}{suffix}");
        }
        let (mut m, mut exp) = (self.milli, -3i32);
        while m % 10 == 0 {
            m /= 10;
            exp += 1;
        }
        // The exponent down to a multiple of 3 (m was divided by at least as much).
        match exp.rem_euclid(3) {
            1 => {
                m *= 10;
                exp -= 1;
            }
            2 => {
                m *= 100;
                exp -= 2;
            }
            _ => {}
        }
        let suffix = match exp {
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => return write!(f, "{m}e{exp}"),
        };
        write!(f, "{m}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }
    fn v(s: &str) -> i64 {
        q(s).value()
    }
    fn m(s: &str) -> i64 {
        q(s).milli_value()
    }
    fn canonical(s: &str) -> String {
        q(s).to_string()
    }

    // The scheduler's former suite.
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
        assert_eq!(v("8Ei"), i64::MAX); // capped at 2^63 - 1, as Kubernetes parses it
        assert_eq!(v("7Ei"), 7 * (1i64 << 60));
        assert_eq!(v("1E"), 1_000_000_000_000_000_000);
        assert_eq!(v("10E"), i64::MAX); // saturates (Kubernetes overflows)
        assert_eq!(m("123456n"), 1);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "", " ", "abc", "1.2.3", "1Qi", "1e", "--1", "1 Gi", "1Kii", "1e3.5",
        ] {
            assert!(Quantity::parse(s).is_err(), "{s}");
        }
    }

    // The apiserver's former suite.
    #[test]
    fn parses_and_prints() {
        assert_eq!(q("500m").milli, 500);
        assert_eq!(q("2").milli, 2000);
        assert_eq!(q("0.5").milli, 500);
        assert_eq!(q("128Mi").milli, 128 * 1024 * 1024 * 1000);
        assert_eq!(q("1e3").milli, 1_000_000);
        assert_eq!(q("1").plus(q("1")).to_string(), "2");
        assert_eq!(q("1500m").to_string(), "1500m");
        assert_eq!(q("128Mi").plus(q("128Mi")).to_string(), "256Mi");
        assert_eq!(q("1G").to_string(), "1G");
        assert!(Quantity::parse("abc").is_err());
    }

    #[test]
    fn kubernetes_errors() {
        let err = |s: &str| Quantity::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("1Qi"),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(err(""), err("abc"));
        assert_eq!(err("1e"), "unable to parse quantity's suffix");
        assert_eq!(err("1Kii"), "unable to parse quantity's suffix");
        assert_eq!(err("--1"), "unable to parse quantity's suffix");
        // No digit, and a suffix that takes Kubernetes off its int64 fast path.
        assert_eq!(err(".Ei"), "unable to parse numeric part of quantity");
        assert_eq!(err("-e-12"), "unable to parse numeric part of quantity");
    }

    #[test]
    fn kubernetes_quirks() {
        // Well formed in Kubernetes: a lone sign or dot is zero, a trailing dot is allowed.
        for s in [".", "-", "+", "-.", ".m", "000"] {
            assert_eq!(Quantity::parse(s).map(|q| q.milli), Ok(0), "{s}");
        }
        assert_eq!(m("1."), 1000);
        assert_eq!(m("1.G"), 1_000_000_000_000);
        assert_eq!(m(".5"), 500);
        assert_eq!(m("  2 "), 2000);
        assert_eq!(v("1e+3"), 1000);
        assert_eq!(m("5e-3"), 5);
        // Binary values below one are DecimalSI.
        assert!(q("1Ki").binary);
        assert!(!q("0.0005Ki").binary);
        assert!(!q("1e3").binary);
    }

    #[test]
    fn rounds_away_from_zero() {
        assert_eq!(v("-1.5"), -2);
        assert_eq!(m("-1.5m"), -2);
        assert_eq!(v("-1n"), -1);
        assert_eq!(m("0.9n"), 1);
        assert_eq!(v("1.0000000000000000000000000000000000000000001"), 2);
        assert_eq!(m("0.000000000000000000000000000000000000001"), 1);
        assert_eq!(m("1e-40"), 1);
        assert_eq!(v("123456789012345678901234567890e-20"), 1_234_567_891);
    }

    #[test]
    fn canonical_form() {
        for (input, want) in [
            ("0", "0"),
            ("0Ki", "0"),
            ("1.5", "1500m"),
            ("1.5Gi", "1536Mi"),
            ("1024Ki", "1Mi"),
            ("1000Ki", "1000Ki"),
            ("1Ei", "1Ei"),
            ("1000", "1k"),
            ("1100", "1100"),
            ("10000", "10k"),
            ("0.1", "100m"),
            ("0.01", "10m"),
            ("1E", "1E"),
            ("1000E", "1e21"),
            ("0.5Ki", "512"),
            ("1.1Ki", "1126400m"),
            ("1025Ki", "1025Ki"),
            ("-2Ki", "-2Ki"),
            ("-1500m", "-1500m"),
            ("-2000", "-2k"),
            ("8Ei", "9223372036854775807"),
            ("100Mi", "100Mi"),
            ("12e6", "12M"),
        ] {
            assert_eq!(canonical(input), want, "{input}");
        }
        // A binary quantity below 1024 prints in DecimalSI.
        let b = Quantity {
            milli: 1_000_000,
            binary: true,
        };
        assert_eq!(b.to_string(), "1k");
    }

    #[test]
    fn arithmetic_and_comparison() {
        assert_eq!(q("1Gi").minus(q("512Mi")).to_string(), "512Mi");
        assert_eq!(q("500m").plus(q("500m")).to_string(), "1");
        assert_eq!(Quantity::default().plus(q("1Ki")).to_string(), "1Ki");
        assert_eq!(q("1").minus(q("2")).value(), -1);
        assert_eq!(q("1Ki").cmp_value(&q("1024")), Ordering::Equal);
        assert_eq!(q("1").cmp_value(&q("1001m")), Ordering::Less);
        assert_ne!(q("1Ki"), q("1024"));
        assert!(Quantity::default().is_zero());
    }

    #[test]
    fn from_json() {
        assert_eq!(
            Quantity::from_json(&json!("250m")).map(|q| q.milli),
            Some(250)
        );
        assert_eq!(Quantity::from_json(&json!(2)).map(|q| q.milli), Some(2000));
        assert_eq!(Quantity::from_json(&json!(0.5)).map(|q| q.milli), Some(500));
        assert_eq!(Quantity::from_json(&json!(true)), None);
        assert_eq!(Quantity::from_json(&json!("1x")), None);
    }
}
