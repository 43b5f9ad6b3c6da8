//! CronJob schedules as Kubernetes reads them.
//!
//! Kubernetes parses `spec.schedule` with robfig/cron's `ParseStandard`: five fields (minute,
//! hour, day of month, month, day of week) with `*`, `?`, lists, ranges, steps and month/day
//! names, the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly` and `@every <duration>`, and an optional `TZ=`/`CRON_TZ=` prefix. [`parse_standard`]
//! accepts exactly that language and words its errors as robfig/cron does (the apiserver quotes
//! them in `spec.schedule: Invalid value: ...`). The calendar search itself (months of
//! different lengths, weekdays, time zones and their offset changes) is croner's: the parsed
//! fields are handed to it in a canonical form (value lists, `*` only where robfig/cron keeps
//! its star bit, which decides how day-of-month and day-of-week combine).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// A schedule that cannot be parsed; the text is robfig/cron's error message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    fn new(msg: impl Into<String>) -> Self {
        ParseError(msg.into())
    }
}

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The zone of a `TZ=`/`CRON_TZ=` prefix, which overrides the caller's zone.
    location: Option<TimeZone>,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Calendar fields; `None` when a field selects no value at all (it never fires).
    Fields(Option<Box<croner::Cron>>),
    /// `@every <duration>`: a constant delay in whole seconds (at least one).
    Every(i64),
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// One parsed field: the selected values and robfig/cron's star bit (set by `*` or `?` without
/// a step greater than one).
#[derive(Debug, Default, PartialEq)]
struct Field {
    values: std::collections::BTreeSet<u32>,
    star: bool,
}

impl Field {
    fn canonical(&self) -> String {
        if self.star {
            "*".to_string()
        } else {
            self.values
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

/// Parses a schedule as robfig/cron's `ParseStandard` (the parser Kubernetes validates and runs
/// CronJob schedules with).
pub fn parse_standard(spec: &str) -> Result<Schedule, ParseError> {
    if spec.is_empty() {
        return Err(ParseError::new("empty spec string"));
    }
    let mut spec = spec;
    let mut location = None;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let eq = spec.find('=').unwrap_or(0);
        let Some(space) = spec.find(' ') else {
            return Err(ParseError::new(format!(
                "provided bad location {}: missing schedule",
                &spec[eq + 1..]
            )));
        };
        let name = &spec[eq + 1..space];
        location = Some(
            load_location(name)
                .map_err(|e| ParseError::new(format!("provided bad location {name}: {e}")))?,
        );
        spec = spec[space..].trim();
    }
    if spec.starts_with('@') {
        return parse_descriptor(spec).map(|kind| Schedule { location, kind });
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(ParseError::new(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        )));
    }
    let parsed = [
        parse_field(fields[0], &MINUTES)?,
        parse_field(fields[1], &HOURS)?,
        parse_field(fields[2], &DOM)?,
        parse_field(fields[3], &MONTHS)?,
        parse_field(fields[4], &DOW)?,
    ];
    let kind = if parsed.iter().any(|f| f.values.is_empty()) {
        Kind::Fields(None)
    } else {
        Kind::Fields(Some(Box::new(to_croner(&parsed)?)))
    };
    Ok(Schedule { location, kind })
}

/// `time.LoadLocation`: "UTC" (and "") is UTC, "Local" the process's zone, anything else an
/// IANA name; the error text is Go's.
pub fn load_location(name: &str) -> Result<TimeZone, ParseError> {
    match name {
        "" | "UTC" => Ok(TimeZone::UTC),
        "Local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name).map_err(|_| ParseError::new(format!("unknown time zone {name}"))),
    }
}

fn to_croner(fields: &[Field; 5]) -> Result<croner::Cron, ParseError> {
    let pattern = fields
        .iter()
        .map(Field::canonical)
        .collect::<Vec<_>>()
        .join(" ");
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&pattern)
        .map_err(|e| ParseError::new(e.to_string()))
}

fn parse_descriptor(spec: &str) -> Result<Kind, ParseError> {
    let fields = match spec {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            if let Some(d) = spec.strip_prefix("@every ") {
                let dur = parse_go_duration(d).map_err(|e| {
                    ParseError::new(format!("failed to parse duration {spec}: {e}"))
                })?;
                // robfig/cron's Every: at least one second, whole seconds.
                return Ok(Kind::Every(dur.as_secs().max(1)));
            }
            return Err(ParseError::new(format!("unrecognized descriptor: {spec}")));
        }
    };
    match parse_standard(fields)?.kind {
        k @ Kind::Fields(_) => Ok(k),
        Kind::Every(_) => Err(ParseError::new("unreachable descriptor")),
    }
}

fn parse_field(field: &str, bounds: &Bounds) -> Result<Field, ParseError> {
    let mut out = Field::default();
    for range in field.split(',').filter(|r| !r.is_empty()) {
        parse_range(range, bounds, &mut out)?;
    }
    Ok(out)
}

fn parse_range(expr: &str, b: &Bounds, out: &mut Field) -> Result<(), ParseError> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut star) = if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (b.min, b.max, true)
    } else {
        let start = parse_int_or_name(low_and_high[0], b)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => parse_int_or_name(low_and_high[1], b)?,
            _ => return Err(ParseError::new(format!("too many hyphens: {expr}"))),
        };
        (start, end, false)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = must_parse_int(range_and_step[1])?;
            // "N/step" means "N-max/step".
            if single {
                end = b.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
        _ => return Err(ParseError::new(format!("too many slashes: {expr}"))),
    };
    if start < b.min {
        return Err(ParseError::new(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        )));
    }
    if end > b.max {
        return Err(ParseError::new(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        )));
    }
    if start > end {
        return Err(ParseError::new(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(ParseError::new(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    out.values
        .extend((start..=end).step_by(step.try_into().unwrap_or(usize::MAX)));
    out.star |= star;
    Ok(())
}

fn parse_int_or_name(expr: &str, b: &Bounds) -> Result<u32, ParseError> {
    let lower = expr.to_ascii_lowercase();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    must_parse_int(expr)
}

/// robfig/cron's `mustParseInt` over Go's `strconv.Atoi`.
fn must_parse_int(expr: &str) -> Result<u32, ParseError> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    let well_formed = !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit());
    let num: i64 = match expr.parse::<i64>() {
        Ok(n) if well_formed => n,
        Err(_) if well_formed => {
            return Err(ParseError::new(format!(
                "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": value out of range"
            )));
        }
        _ => {
            return Err(ParseError::new(format!(
                "failed to parse int from {expr}: strconv.Atoi: parsing \"{expr}\": invalid syntax"
            )));
        }
    };
    if num < 0 {
        return Err(ParseError::new(format!(
            "negative number ({num}) not allowed: {expr}"
        )));
    }
    // Values beyond u32 are out of every field's bounds anyway.
    Ok(u32::try_from(num).unwrap_or(u32::MAX))
}

/// Go's `time.ParseDuration` (`1h30m`, `90s`, `1.5h`, `300ms`), with Go's error wording.
fn parse_go_duration(s: &str) -> Result<SignedDuration, String> {
    let invalid = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(SignedDuration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(invalid());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| invalid())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration \"{s}\""));
        }
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            u => return Err(format!("time: unknown unit \"{u}\" in duration \"{s}\"")),
        };
        total += value * nanos_per;
        rest = &rest[unit_len..];
    }
    if total > i64::MAX as f64 {
        return Err(invalid());
    }
    let nanos = total as i64;
    Ok(SignedDuration::from_nanos(if neg { -nanos } else { nanos }))
}

impl Schedule {
    /// robfig/cron's `Schedule.Next`: the first activation strictly after `after` (whole seconds),
    /// reading the fields in `zone` unless the schedule names its own (`TZ=`). `None` when the
    /// schedule never fires again (e.g. `0 0 30 2 *`).
    pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(secs) => {
                let whole = Timestamp::from_second(after.as_second()).ok()?;
                whole.checked_add(SignedDuration::from_secs(*secs)).ok()
            }
            Kind::Fields(None) => None,
            Kind::Fields(Some(cron)) => {
                let zone = self.location.as_ref().unwrap_or(zone);
                let start = after.to_zoned(zone.clone());
                cron.find_next_occurrence(&start, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }

    /// The zone a `TZ=`/`CRON_TZ=` prefix named, if any.
    pub fn location(&self) -> Option<&TimeZone> {
        self.location.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn next(spec: &str, after: &str) -> String {
        parse_standard(spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .next(ts(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn err(spec: &str) -> String {
        match parse_standard(spec) {
            Ok(_) => panic!("{spec} parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn robfig_error_messages() {
        assert_eq!(err(""), "empty spec string");
        assert_eq!(err("foo"), "expected exactly 5 fields, found 1: [foo]");
        assert_eq!(
            err("* * * * * *"),
            "expected exactly 5 fields, found 6: [* * * * * *]"
        );
        assert_eq!(
            err("61 * * * *"),
            "end of range (61) above maximum (59): 61"
        );
        assert_eq!(
            err("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(err("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            err("5-2 * * * *"),
            "beginning of range (5) beyond end of range (2): 5-2"
        );
        assert_eq!(err("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(err("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(
            err("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(
            err("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            err("-1 * * * *"),
            "failed to parse int from : strconv.Atoi: parsing \"\": invalid syntax"
        );
        assert_eq!(err("@fortnightly"), "unrecognized descriptor: @fortnightly");
        assert_eq!(
            err("@every 5x"),
            "failed to parse duration @every 5x: time: unknown unit \"x\" in duration \"5x\""
        );
        assert_eq!(
            err("TZ=Mars/Olympus * * * * *"),
            "provided bad location Mars/Olympus: unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn accepts_the_standard_language() {
        for ok in [
            "*/1 * * * *",
            "0 * * * *",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@every 1h30m",
            "0 9-17/2 * JAN-mar mon-FRI",
            "5/15 ? * * ?",
            "1,2,,3 * * * *",
            "CRON_TZ=UTC 0 3 * * *",
        ] {
            assert!(parse_standard(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn next_activation_times() {
        assert_eq!(
            next("*/1 * * * *", "2026-12-05T10:01:20Z"),
            "2026-12-05T10:02:00Z"
        );
        assert_eq!(
            next("*/1 * * * *", "2026-12-05T16:30:00Z"),
            "2026-12-05T16:31:00Z"
        );
        assert_eq!(
            next("*/1 * * * *", "2026-12-05T16:30:59.5Z"),
            "2026-12-05T16:31:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-05T16:30:00Z"),
            "2026-12-05T16:45:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-12-05T16:30:00Z"),
            "2026-12-05T16:45:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-12-05T16:30:00Z"),
            "2026-12-05T17:00:00Z"
        );
        assert_eq!(
            next("@daily", "2026-12-05T16:30:00Z"),
            "2026-12-06T00:00:00Z"
        );
        // 2026-12-05 is a Saturday.
        assert_eq!(
            next("@weekly", "2026-12-05T16:30:00Z"),
            "2026-12-06T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-12-05T16:30:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-12-05T16:30:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 9 * * mon-fri", "2026-12-05T16:30:00Z"),
            "2026-12-07T09:00:00Z"
        );
        assert_eq!(
            next("0 0 31 * *", "2027-02-01T00:00:00Z"),
            "2027-03-31T00:00:00Z"
        );
        assert_eq!(
            next("@every 90s", "2026-12-05T16:30:00.7Z"),
            "2026-12-05T16:31:30Z"
        );
        // Never fires: February has no 30th.
        assert_eq!(next("0 0 30 2 *", "2026-12-05T16:30:00Z"), "");
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_as_robfig() {
        // Neither is `*`: either matches (the 13th, or any Friday).
        assert_eq!(
            next("0 0 13 * 5", "2026-12-05T00:00:00Z"),
            "2026-12-11T00:00:00Z"
        );
        // Day of month is `*`: only the weekday counts.
        assert_eq!(
            next("0 0 * * 5", "2026-12-05T00:00:00Z"),
            "2026-12-11T00:00:00Z"
        );
        // A stepped star is no star: `*/2` days OR Mondays.
        assert_eq!(
            next("0 0 */10 * 1", "2026-12-05T00:00:00Z"),
            "2026-12-07T00:00:00Z"
        );
        assert_eq!(
            next("0 0 */10 * 1", "2026-12-07T00:00:00Z"),
            "2026-12-11T00:00:00Z"
        );
    }

    #[test]
    fn time_zones() {
        let berlin = load_location("Europe/Berlin").expect("tzdb");
        let s = parse_standard("0 3 * * *").expect("parse");
        // 03:00 in Berlin in winter is 02:00 UTC, in summer 01:00 UTC.
        assert_eq!(
            s.next(ts("2026-12-05T16:30:00Z"), &berlin)
                .map(|t| t.to_string()),
            Some("2026-12-06T02:00:00Z".into())
        );
        assert_eq!(
            s.next(ts("2026-07-05T16:30:00Z"), &berlin)
                .map(|t| t.to_string()),
            Some("2026-07-06T01:00:00Z".into())
        );
        let prefixed = parse_standard("TZ=Europe/Berlin 0 3 * * *").expect("parse");
        assert_eq!(
            prefixed
                .next(ts("2026-12-05T16:30:00Z"), &TimeZone::UTC)
                .map(|t| t.to_string()),
            Some("2026-12-06T02:00:00Z".into())
        );
        assert_eq!(
            load_location("Europe/Pariss")
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "unknown time zone Europe/Pariss"
        );
    }
}
