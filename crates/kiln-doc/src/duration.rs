//! The one duration grammar of every document kiln reads (kiln.yaml,
//! recipes): `500ms`, `2s`, `10m`, `1h30m`, or a bare number of seconds.
//!
//! The sum is computed with checked arithmetic and bounded, so that no
//! document can name a duration that overflows when added to a clock.

use std::time::Duration;

/// The longest duration any document may name: kiln waits for nothing
/// longer, and anything up to it can be added to a clock reading.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a duration was refused; shown after the field's position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("expected a duration such as 500ms, 2s, 10m, 1h30m or a number of seconds")]
    Syntax,
    #[error("{shown} is longer than the {max} allowed")]
    TooLong { shown: String, max: String },
}

/// Parses `text` in the duration grammar, at most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_within(text, MAX)
}

/// Parses `text` in the duration grammar, at most `max` (itself at most
/// [`MAX`]).
pub fn parse_within(text: &str, max: Duration) -> Result<Duration, DurationError> {
    let max = max.min(MAX);
    let too_long = || DurationError::TooLong {
        shown: text.trim().chars().take(40).collect(),
        max: show(max),
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Syntax);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|_| too_long())?;
        let d = Duration::from_secs(secs);
        return if d <= max { Ok(d) } else { Err(too_long()) };
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::Syntax);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1u64, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b's') => (1_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b'h') => (3_600_000, 1),
                _ => return Err(DurationError::Syntax),
            }
        };
        rest = &rest[len..];
        let part = n
            .checked_mul(unit_ms)
            .map(Duration::from_millis)
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    if total > max {
        return Err(too_long());
    }
    Ok(total)
}

/// `max` as the grammar writes it, in its largest whole unit.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_of_kiln_yaml_and_recipes() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
        for bad in ["", "m", "10x", "5 minutes", "-1s", "1.5h", "ms", "10mss"] {
            assert_eq!(parse(bad), Err(DurationError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn absurd_durations_are_refused_not_overflowed() {
        for absurd in [
            "18446744073709551615",
            "18446744073709551616",
            "18446744073709551615h",
            "5124095576030431h",
            "9999999999999999999999h",
            "8761h",
        ] {
            assert!(
                matches!(parse(absurd), Err(DurationError::TooLong { .. })),
                "{absurd}"
            );
        }
        let many = "4294967295h".repeat(10_000);
        assert!(matches!(parse(&many), Err(DurationError::TooLong { .. })));
        assert_eq!(parse("8760h"), Ok(MAX));
    }

    #[test]
    fn a_tighter_bound_is_named_in_the_error() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(parse_within("24h", day), Ok(day));
        let err = parse_within("1441m", day).expect_err("over a day");
        assert_eq!(err.to_string(), "1441m is longer than the 24h allowed");
    }
}
