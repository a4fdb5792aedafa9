//! Schedule triggers of kiln pipelines, as EC2 Image Builder and EventBridge
//! write them.
//!
//! Three forms are accepted:
//!
//! * `cron(MIN HOUR DOM MONTH DOW YEAR)`: the AWS six-field form. Exactly one
//!   of day-of-month and day-of-week must be `?`. Day-of-week is numbered
//!   1-7 = SUN-SAT. Day-of-month takes `L`, `LW` and `nW`; day-of-week takes
//!   `L` (Saturday, the last day of the week), `nL` (last such weekday of the
//!   month) and `n#k` (the k-th such weekday of the month, alone in the field).
//!   Years run 1970-2199.
//! * `rate(N minute[s]|hour[s]|day[s])`: every N units after the given instant;
//!   as in AWS, the unit is singular when N is 1 and plural otherwise.
//! * `MIN HOUR DOM MONTH DOW`: the classic five-field form. Day-of-week is
//!   numbered 0-7 with 0 and 7 both Sunday, and as in Vixie cron, when neither
//!   day field starts with `*` a day matches if either field matches.
//!
//! All times are evaluated in UTC, as AWS evaluates these expressions.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// The first year a cron expression can name.
pub const MIN_YEAR: i16 = 1970;
/// The last year a cron expression can name.
pub const MAX_YEAR: i16 = 2199;

/// Why a schedule expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is none of the accepted forms.
    #[error("schedule {expr:?}: expected cron(...), rate(...) or five cron fields")]
    Syntax {
        /// The expression as given.
        expr: String,
    },
    /// Wrong number of whitespace-separated fields.
    #[error("schedule {expr:?}: expected {expected} fields, found {found}")]
    FieldCount {
        /// The expression as given.
        expr: String,
        /// How many fields the form needs.
        expected: usize,
        /// How many were given.
        found: usize,
    },
    /// One field (or one item of a field) is invalid.
    #[error("{field} {value:?}: {reason}")]
    Field {
        /// The field name, e.g. `day-of-week`.
        field: &'static str,
        /// The offending text.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

fn field_err(field: &'static str, value: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::Field {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A parsed schedule trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expr: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Rate(SignedDuration),
    Cron(Box<Cron>),
}

/// A set of small integers `lo..=hi`, stored relative to `lo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Set {
    lo: u32,
    hi: u32,
    bits: [u64; 4],
}

impl Set {
    fn new(lo: u32, hi: u32) -> Self {
        Set {
            lo,
            hi,
            bits: [0; 4],
        }
    }
    fn insert(&mut self, v: u32) {
        let i = (v - self.lo) as usize;
        self.bits[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, v: u32) -> bool {
        if v < self.lo || v > self.hi {
            return false;
        }
        let i = (v - self.lo) as usize;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
    /// The smallest member `>= v`.
    fn next_from(&self, v: u32) -> Option<u32> {
        (v.max(self.lo)..=self.hi).find(|&x| self.contains(x))
    }
    fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DomSpec {
    days: Set,
    last: bool,
    last_weekday: bool,
    nearest_weekday: Set,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DowSpec {
    /// Weekdays, 0 = Sunday.
    days: Set,
    /// `nL`: the last such weekday of the month.
    last_of: Set,
    /// `n#k`: the k-th such weekday of the month.
    nth: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Combine {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cron {
    minutes: Set,
    hours: Set,
    dom: DomSpec,
    months: Set,
    dow: DowSpec,
    years: Set,
    combine: Combine,
}

struct FieldDef {
    name: &'static str,
    lo: u32,
    hi: u32,
    /// Names for `name_base`, `name_base + 1`, ...
    names: &'static [&'static str],
    name_base: u32,
}

const MINUTE: FieldDef = FieldDef {
    name: "minutes",
    lo: 0,
    hi: 59,
    names: &[],
    name_base: 0,
};
const HOUR: FieldDef = FieldDef {
    name: "hours",
    lo: 0,
    hi: 23,
    names: &[],
    name_base: 0,
};
const DOM: FieldDef = FieldDef {
    name: "day-of-month",
    lo: 1,
    hi: 31,
    names: &[],
    name_base: 0,
};
const MONTH: FieldDef = FieldDef {
    name: "month",
    lo: 1,
    hi: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    name_base: 1,
};
const DAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const DOW_AWS: FieldDef = FieldDef {
    name: "day-of-week",
    lo: 1,
    hi: 7,
    names: DAY_NAMES,
    name_base: 1,
};
const DOW_CLASSIC: FieldDef = FieldDef {
    name: "day-of-week",
    lo: 0,
    hi: 7,
    names: DAY_NAMES,
    name_base: 0,
};
const YEAR: FieldDef = FieldDef {
    name: "year",
    lo: MIN_YEAR as u32,
    hi: MAX_YEAR as u32,
    names: &[],
    name_base: 0,
};

impl FieldDef {
    fn value(&self, s: &str) -> Result<u32, ScheduleError> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(self.name_base + i as u32);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            let reason = if self.names.is_empty() {
                format!("not a number in {}-{}", self.lo, self.hi)
            } else {
                format!(
                    "not a number in {}-{} or a name {}-{}",
                    self.lo,
                    self.hi,
                    self.names[0],
                    self.names[self.names.len() - 1]
                )
            };
            return Err(field_err(self.name, s, reason));
        }
        match s.parse::<u32>() {
            Ok(v) if (self.lo..=self.hi).contains(&v) => Ok(v),
            _ => Err(field_err(
                self.name,
                s,
                format!("out of range {}-{}", self.lo, self.hi),
            )),
        }
    }

    /// Parses one list item made of `*`, a value, a range and an optional step.
    fn item(&self, item: &str, allow_step: bool, out: &mut Set) -> Result<(), ScheduleError> {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                if !allow_step {
                    return Err(field_err(self.name, item, "\"/\" is not allowed here"));
                }
                let step = match s.parse::<u32>() {
                    Ok(n) if n >= 1 && s.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => {
                        return Err(field_err(
                            self.name,
                            item,
                            "step after \"/\" must be a positive number",
                        ));
                    }
                };
                (r, Some(step))
            }
            None => (item, None),
        };
        let (a, b) = if range == "*" {
            (self.lo, self.hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (self.value(a)?, self.value(b)?);
            if a > b {
                return Err(field_err(self.name, item, "range start is after its end"));
            }
            (a, b)
        } else {
            let a = self.value(range)?;
            // `a/s` runs from a to the end of the field.
            (a, if step.is_some() { self.hi } else { a })
        };
        let step = step.unwrap_or(1) as usize;
        for v in (a..=b).step_by(step) {
            out.insert(v);
        }
        Ok(())
    }

    fn simple(&self, field: &str) -> Result<Set, ScheduleError> {
        let mut set = Set::new(self.lo, self.hi);
        for item in field.split(',') {
            self.item(item, true, &mut set)?;
        }
        Ok(set)
    }
}

fn parse_dom(field: &str) -> Result<DomSpec, ScheduleError> {
    let mut spec = DomSpec {
        days: Set::new(1, 31),
        last: false,
        last_weekday: false,
        nearest_weekday: Set::new(1, 31),
    };
    if field == "?" {
        spec.days.insert_all();
        return Ok(spec);
    }
    for item in field.split(',') {
        let up = item.to_ascii_uppercase();
        if up == "L" {
            spec.last = true;
        } else if up == "LW" {
            spec.last_weekday = true;
        } else if let Some(n) = up.strip_suffix('W') {
            let n = DOM.value(n)?;
            spec.nearest_weekday.insert(n);
        } else if item == "?" {
            return Err(field_err(DOM.name, field, "\"?\" must be the whole field"));
        } else {
            DOM.item(item, true, &mut spec.days)?;
        }
    }
    Ok(spec)
}

fn parse_dow(field: &str, def: &FieldDef) -> Result<DowSpec, ScheduleError> {
    let mut spec = DowSpec {
        days: Set::new(0, 6),
        last_of: Set::new(0, 6),
        nth: None,
    };
    if field == "?" {
        spec.days.insert_all();
        return Ok(spec);
    }
    // Normalises a value of `def` to 0 = Sunday.
    let norm = |v: u32| (v + 7 - def.name_base) % 7;
    let items: Vec<&str> = field.split(',').collect();
    for item in &items {
        let up = item.to_ascii_uppercase();
        if let Some((d, k)) = up.split_once('#') {
            if items.len() > 1 {
                return Err(field_err(
                    def.name,
                    field,
                    "a \"#\" expression must be alone in the field",
                ));
            }
            let d = norm(def.value(d)?);
            let k = match k.parse::<u32>() {
                Ok(n) if (1..=5).contains(&n) && k.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(field_err(
                        def.name,
                        item,
                        "the number after \"#\" must be 1-5",
                    ));
                }
            };
            spec.nth = Some((d, k));
        } else if up == "L" {
            spec.days.insert(6);
        } else if let Some(d) = up.strip_suffix('L') {
            spec.last_of.insert(norm(def.value(d)?));
        } else if *item == "?" {
            return Err(field_err(def.name, field, "\"?\" must be the whole field"));
        } else {
            let mut raw = Set::new(def.lo, def.hi);
            // The AWS documentation lists no "/" for day-of-week.
            def.item(item, def.name_base == 0, &mut raw)?;
            for v in def.lo..=def.hi {
                if raw.contains(v) {
                    spec.days.insert(norm(v));
                }
            }
        }
    }
    Ok(spec)
}

impl Set {
    fn insert_all(&mut self) {
        for v in self.lo..=self.hi {
            self.insert(v);
        }
    }
}

fn parse_cron(fields: &[&str], aws: bool) -> Result<Cron, ScheduleError> {
    let minutes = MINUTE.simple(fields[0])?;
    let hours = HOUR.simple(fields[1])?;
    let (dom_f, dow_f) = (fields[2], fields[4]);
    let months = MONTH.simple(fields[3])?;
    let combine = if aws {
        match (dom_f == "?", dow_f == "?") {
            (true, false) | (false, true) => Combine::And,
            (true, true) => {
                return Err(field_err(
                    "day-of-month",
                    dom_f,
                    "day-of-month and day-of-week cannot both be \"?\"",
                ));
            }
            (false, false) => {
                return Err(field_err(
                    "day-of-week",
                    dow_f,
                    format!(
                        "one of day-of-month ({dom_f:?}) and day-of-week must be \"?\" in cron(...)"
                    ),
                ));
            }
        }
    } else if dom_f.starts_with('*') || dom_f == "?" || dow_f.starts_with('*') || dow_f == "?" {
        Combine::And
    } else {
        Combine::Or
    };
    let dom = parse_dom(dom_f)?;
    let dow = parse_dow(dow_f, if aws { &DOW_AWS } else { &DOW_CLASSIC })?;
    let years = if aws {
        YEAR.simple(fields[5])?
    } else {
        let mut all = Set::new(YEAR.lo, YEAR.hi);
        all.insert_all();
        all
    };
    for (set, def, text) in [
        (&minutes, &MINUTE, fields[0]),
        (&hours, &HOUR, fields[1]),
        (&months, &MONTH, fields[3]),
    ] {
        if set.is_empty() {
            return Err(field_err(def.name, text, "matches no value"));
        }
    }
    Ok(Cron {
        minutes,
        hours,
        dom,
        months,
        dow,
        years,
        combine,
    })
}

fn parse_rate(expr: &str, inner: &str) -> Result<SignedDuration, ScheduleError> {
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err(ScheduleError::FieldCount {
            expr: expr.to_owned(),
            expected: 2,
            found: parts.len(),
        });
    };
    let n = match value.parse::<i64>() {
        Ok(n) if n >= 1 && value.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(field_err("rate value", value, "not a positive number")),
    };
    let (singular, secs) = match unit {
        "minute" | "minutes" => ("minute", 60),
        "hour" | "hours" => ("hour", 3600),
        "day" | "days" => ("day", 86_400),
        _ => {
            return Err(field_err(
                "rate unit",
                unit,
                "expected minute(s), hour(s) or day(s)",
            ));
        }
    };
    if (n == 1) != (unit == singular) {
        return Err(field_err(
            "rate unit",
            unit,
            format!("must be {singular:?} for 1 and plural otherwise"),
        ));
    }
    n.checked_mul(secs)
        .filter(|s| *s <= 200 * 366 * 86_400)
        .map(SignedDuration::from_secs)
        .ok_or_else(|| field_err("rate value", value, "too large"))
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(expr: &str) -> Result<Self, Self::Err> {
        let s = expr.trim();
        let kind = if let Some(inner) = s.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            Kind::Rate(parse_rate(expr, inner)?)
        } else if let Some(inner) = s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
            let fields: Vec<&str> = inner.split_whitespace().collect();
            if fields.len() != 6 {
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_owned(),
                    expected: 6,
                    found: fields.len(),
                });
            }
            Kind::Cron(Box::new(parse_cron(&fields, true)?))
        } else if s.contains('(') || s.contains(')') || s.is_empty() {
            return Err(ScheduleError::Syntax {
                expr: expr.to_owned(),
            });
        } else {
            let fields: Vec<&str> = s.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_owned(),
                    expected: 5,
                    found: fields.len(),
                });
            }
            Kind::Cron(Box::new(parse_cron(&fields, false)?))
        };
        Ok(Schedule {
            expr: expr.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for Schedule {
    /// The expression exactly as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

fn date(y: i32, m: u32, d: u32) -> Option<Date> {
    Date::new(
        i16::try_from(y).ok()?,
        i8::try_from(m).ok()?,
        i8::try_from(d).ok()?,
    )
    .ok()
}

fn days_in_month(y: i32, m: u32) -> u32 {
    date(y, m, 1).map_or(28, |d| d.days_in_month() as u32)
}

fn weekday(y: i32, m: u32, d: u32) -> u32 {
    date(y, m, d).map_or(0, |d| d.weekday().to_sunday_zero_offset() as u32)
}

fn is_weekend(y: i32, m: u32, d: u32) -> bool {
    matches!(weekday(y, m, d), 0 | 6)
}

/// The weekday (Mon-Fri) nearest to day `n`, not leaving the month.
fn nearest_weekday(y: i32, m: u32, n: u32, dim: u32) -> Option<u32> {
    if n > dim {
        return None;
    }
    Some(match weekday(y, m, n) {
        6 if n == 1 => 3,
        6 => n - 1,
        0 if n == dim => n - 2,
        0 => n + 1,
        _ => n,
    })
}

impl DomSpec {
    fn matches(&self, y: i32, m: u32, d: u32, dim: u32) -> bool {
        if self.days.contains(d) || (self.last && d == dim) {
            return true;
        }
        if self.last_weekday {
            let mut lw = dim;
            while is_weekend(y, m, lw) {
                lw -= 1;
            }
            if d == lw {
                return true;
            }
        }
        // `nW` can only land within two days of n.
        (d.saturating_sub(2)..=d + 2)
            .any(|n| self.nearest_weekday.contains(n) && nearest_weekday(y, m, n, dim) == Some(d))
    }
}

impl DowSpec {
    fn matches(&self, y: i32, m: u32, d: u32, dim: u32) -> bool {
        let wd = weekday(y, m, d);
        if self.days.contains(wd) || (self.last_of.contains(wd) && d + 7 > dim) {
            return true;
        }
        matches!(self.nth, Some((w, k)) if w == wd && (d - 1) / 7 + 1 == k)
    }
}

impl Cron {
    fn day_matches(&self, y: i32, m: u32, d: u32) -> bool {
        let dim = days_in_month(y, m);
        if d > dim {
            return false;
        }
        let a = self.dom.matches(y, m, d, dim);
        let b = self.dow.matches(y, m, d, dim);
        match self.combine {
            Combine::And => a && b,
            Combine::Or => a || b,
        }
    }

    /// The first matching minute at or after the given civil minute.
    fn first_at_or_after(&self, start: [u32; 5], year: i32) -> Option<Timestamp> {
        let [mut mo, mut d, mut h, mut mi, _] = start;
        let mut y = year.max(i32::from(MIN_YEAR));
        if y > year {
            (mo, d, h, mi) = (1, 1, 0, 0);
        }
        // Each pass moves at least one field forward and resets the smaller
        // ones, so this ends after at most a few passes per month in range.
        loop {
            let ny = i32::try_from(self.years.next_from(u32::try_from(y).ok()?)?).ok()?;
            if ny != y {
                (y, mo, d, h, mi) = (ny, 1, 1, 0, 0);
            }
            let Some(nmo) = self.months.next_from(mo) else {
                (y, mo, d, h, mi) = (y + 1, 1, 1, 0, 0);
                continue;
            };
            if nmo != mo {
                (mo, d, h, mi) = (nmo, 1, 0, 0);
            }
            let dim = days_in_month(y, mo);
            let Some(nd) = (d..=dim).find(|&d| self.day_matches(y, mo, d)) else {
                (mo, d, h, mi) = (mo + 1, 1, 0, 0);
                if mo > 12 {
                    (y, mo) = (y + 1, 1);
                }
                continue;
            };
            if nd != d {
                (d, h, mi) = (nd, 0, 0);
            }
            let Some(nh) = self.hours.next_from(h) else {
                (d, h, mi) = (d + 1, 0, 0);
                continue;
            };
            if nh != h {
                (h, mi) = (nh, 0);
            }
            let Some(nmi) = self.minutes.next_from(mi) else {
                (h, mi) = (h + 1, 0);
                continue;
            };
            let dt = date(y, mo, d)?.at(h as i8, nmi as i8, 0, 0);
            return TimeZone::UTC.to_timestamp(dt).ok();
        }
    }
}

impl Schedule {
    /// The expression exactly as given.
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// Whether this is a `rate(...)` expression, which has no fixed times.
    pub fn is_rate(&self) -> bool {
        matches!(self.kind, Kind::Rate(_))
    }

    /// The first trigger time strictly after `after`, in UTC.
    ///
    /// For `rate(...)` this is `after` plus the rate. For cron expressions it
    /// is the next whole minute that matches; `None` when nothing matches
    /// before the end of 2199 (for example `cron(0 0 30 FEB ? *)`).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Rate(step) => after.checked_add(*step).ok(),
            Kind::Cron(cron) => {
                let next_minute = after.as_second().div_euclid(60).checked_add(1)? * 60;
                let start = Timestamp::from_second(next_minute).ok()?;
                let dt = TimeZone::UTC.to_datetime(start);
                let start = [
                    dt.month() as u32,
                    dt.day() as u32,
                    dt.hour() as u32,
                    dt.minute() as u32,
                    0,
                ];
                cron.first_at_or_after(start, i32::from(dt.year()))
            }
        }
    }

    /// Whether `at` (truncated to its minute) is a trigger time of a cron
    /// expression. Always `false` for `rate(...)`.
    pub fn matches(&self, at: Timestamp) -> bool {
        let Kind::Cron(cron) = &self.kind else {
            return false;
        };
        let dt = TimeZone::UTC.to_datetime(at);
        let (y, mo, d) = (i32::from(dt.year()), dt.month() as u32, dt.day() as u32);
        u32::try_from(y).is_ok_and(|y| cron.years.contains(y))
            && cron.months.contains(mo)
            && cron.day_matches(y, mo, d)
            && cron.hours.contains(dt.hour() as u32)
            && cron.minutes.contains(dt.minute() as u32)
    }
}

#[cfg(test)]
mod tests;
