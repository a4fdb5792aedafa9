use super::*;
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn sched(expr: &str) -> Schedule {
    expr.parse()
        .unwrap_or_else(|e| panic!("{expr:?} should parse: {e}"))
}

fn next(expr: &str, after: &str) -> Option<String> {
    sched(expr).next_after(ts(after)).map(|t| t.to_string())
}

/// Follows the schedule `n` times from `after`.
fn chain(expr: &str, after: &str, n: usize) -> Vec<String> {
    let s = sched(expr);
    let mut t = ts(after);
    (0..n)
        .map(|_| {
            t = s.next_after(t).unwrap();
            t.to_string()
        })
        .collect()
}

fn err(expr: &str) -> String {
    match expr.parse::<Schedule>() {
        Ok(_) => panic!("{expr:?} should be rejected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn image_builder_daily_at_nine() {
    let e = "cron(0 9 * * ? *)";
    assert_eq!(
        next(e, "2026-03-02T08:59:59Z").unwrap(),
        "2026-03-02T09:00:00Z"
    );
    // Strictly after: exactly 09:00 moves to the next day.
    assert_eq!(
        next(e, "2026-03-02T09:00:00Z").unwrap(),
        "2026-03-03T09:00:00Z"
    );
    assert_eq!(
        next(e, "2026-12-31T10:00:00Z").unwrap(),
        "2027-01-01T09:00:00Z"
    );
    assert_eq!(sched(e).to_string(), e);
}

#[test]
fn every_fifteen_minutes() {
    let e = "cron(0/15 * * * ? *)";
    assert_eq!(
        chain(e, "2026-03-02T23:07:30Z", 4),
        [
            "2026-03-02T23:15:00Z",
            "2026-03-02T23:30:00Z",
            "2026-03-02T23:45:00Z",
            "2026-03-03T00:00:00Z"
        ]
    );
}

#[test]
fn weekdays_at_ten() {
    // 2026-03-06 is a Friday.
    assert_eq!(
        chain("cron(0 10 ? * MON-FRI *)", "2026-03-06T09:00:00Z", 3),
        [
            "2026-03-06T10:00:00Z",
            "2026-03-09T10:00:00Z",
            "2026-03-10T10:00:00Z"
        ]
    );
}

#[test]
fn first_of_month() {
    assert_eq!(
        chain("cron(0 8 1 * ? *)", "2026-11-15T00:00:00Z", 3),
        [
            "2026-12-01T08:00:00Z",
            "2027-01-01T08:00:00Z",
            "2027-02-01T08:00:00Z"
        ]
    );
}

#[test]
fn last_friday_of_2026() {
    let e = "cron(0 18 ? * 6L 2026)";
    assert_eq!(
        chain(e, "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-30T18:00:00Z",
            "2026-02-27T18:00:00Z",
            "2026-03-27T18:00:00Z"
        ]
    );
    assert_eq!(
        next(e, "2026-07-01T00:00:00Z").unwrap(),
        "2026-07-31T18:00:00Z"
    );
    assert_eq!(
        next(e, "2026-12-24T00:00:00Z").unwrap(),
        "2026-12-25T18:00:00Z"
    );
    // The year field ends the schedule.
    assert_eq!(next(e, "2026-12-25T18:00:00Z"), None);
    assert_eq!(
        next("cron(0 18 ? * FRIL 2026)", "2026-01-01T00:00:00Z").unwrap(),
        "2026-01-30T18:00:00Z"
    );
}

#[test]
fn nearest_weekday_around_weekends() {
    let e = "cron(0 12 15W * ? *)";
    // 2026-02-15 is a Sunday: Monday the 16th.
    assert_eq!(
        next(e, "2026-02-01T00:00:00Z").unwrap(),
        "2026-02-16T12:00:00Z"
    );
    // 2026-08-15 is a Saturday: Friday the 14th.
    assert_eq!(
        next(e, "2026-08-01T00:00:00Z").unwrap(),
        "2026-08-14T12:00:00Z"
    );
    // 2026-04-15 is a Wednesday.
    assert_eq!(
        next(e, "2026-04-01T00:00:00Z").unwrap(),
        "2026-04-15T12:00:00Z"
    );
    // 2026-08-01 is a Saturday: 1W does not go back into July.
    assert_eq!(
        next("cron(0 12 1W 8 ? *)", "2026-07-01T00:00:00Z").unwrap(),
        "2026-08-03T12:00:00Z"
    );
    // 2026-11-30 is a Monday; 2026-05-31 is a Sunday: 31W is Friday the 29th.
    assert_eq!(
        next("cron(0 12 31W 5 ? *)", "2026-01-01T00:00:00Z").unwrap(),
        "2026-05-29T12:00:00Z"
    );
    // LW: 2026-01-31 is a Saturday.
    assert_eq!(
        next("cron(0 12 LW * ? *)", "2026-01-01T00:00:00Z").unwrap(),
        "2026-01-30T12:00:00Z"
    );
}

#[test]
fn first_monday() {
    assert_eq!(
        chain("cron(0 9 ? * 2#1 *)", "2026-01-01T00:00:00Z", 6),
        [
            "2026-01-05T09:00:00Z",
            "2026-02-02T09:00:00Z",
            "2026-03-02T09:00:00Z",
            "2026-04-06T09:00:00Z",
            "2026-05-04T09:00:00Z",
            "2026-06-01T09:00:00Z"
        ]
    );
    assert_eq!(
        next("cron(0 9 ? * MON#1 *)", "2026-01-01T00:00:00Z").unwrap(),
        "2026-01-05T09:00:00Z"
    );
}

#[test]
fn last_day_of_month_across_february() {
    let e = "cron(0 0 L * ? *)";
    assert_eq!(
        chain(e, "2024-02-01T00:00:00Z", 2),
        ["2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"]
    );
    assert_eq!(
        chain(e, "2026-02-01T00:00:00Z", 2),
        ["2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"]
    );
    assert_eq!(
        next(e, "2100-02-01T00:00:00Z").unwrap(),
        "2100-02-28T00:00:00Z"
    );
}

#[test]
fn rate_is_relative_to_the_instant() {
    assert_eq!(
        next("rate(5 minutes)", "2026-03-02T10:07:13Z").unwrap(),
        "2026-03-02T10:12:13Z"
    );
    assert_eq!(
        next("rate(1 hour)", "2026-03-02T10:07:13Z").unwrap(),
        "2026-03-02T11:07:13Z"
    );
    assert_eq!(
        next("rate(2 days)", "2026-03-02T10:07:13Z").unwrap(),
        "2026-03-04T10:07:13Z"
    );
    assert!(sched("rate(1 minute)").is_rate());
    assert_eq!(
        err("rate(1 minutes)"),
        "rate unit \"minutes\": must be \"minute\" for 1 and plural otherwise"
    );
    assert!(err("rate(5 minute)").starts_with("rate unit \"minute\""));
    assert!(err("rate(0 minutes)").starts_with("rate value \"0\""));
    assert!(err("rate(5 weeks)").starts_with("rate unit \"weeks\""));
    assert!(err("rate(5)").contains("expected 2 fields, found 1"));
}

#[test]
fn five_field_classic() {
    let e = "0 9 * * 1-5";
    assert_eq!(
        chain(e, "2026-03-06T09:00:00Z", 2),
        ["2026-03-09T09:00:00Z", "2026-03-10T09:00:00Z"]
    );
    assert_eq!(sched(e).to_string(), e);
    // 0 and 7 are both Sunday; 2026-03-08 is a Sunday.
    for e in ["30 6 * * 0", "30 6 * * 7", "30 6 * * SUN"] {
        assert_eq!(
            next(e, "2026-03-06T00:00:00Z").unwrap(),
            "2026-03-08T06:30:00Z"
        );
    }
    // Both day fields restricted: either matches (Vixie cron).
    assert_eq!(
        chain("0 0 13 * 5", "2026-03-01T00:00:00Z", 3),
        [
            "2026-03-06T00:00:00Z",
            "2026-03-13T00:00:00Z",
            "2026-03-20T00:00:00Z"
        ]
    );
    assert!(err("0 9 * * 8").starts_with("day-of-week \"8\": out of range 0-7"));
}

#[test]
fn impossible_schedules_end() {
    for e in [
        "cron(0 0 30 FEB ? *)",
        "cron(0 0 31 4,6,9,11 ? *)",
        "0 0 30 2 *",
        "cron(0 0 29 2 ? 2101-2103)",
    ] {
        assert_eq!(next(e, "2026-01-01T00:00:00Z"), None, "{e}");
    }
    assert_eq!(next("cron(0 9 * * ? *)", "2199-12-31T09:00:00Z"), None);
    assert_eq!(
        next("cron(0 9 * * ? *)", "1900-01-01T00:00:00Z").unwrap(),
        "1970-01-01T09:00:00Z"
    );
    assert_eq!(next("cron(0 0 29 2 ? *)", "2197-01-01T00:00:00Z"), None);
}

#[test]
fn errors_name_the_field() {
    assert_eq!(
        err("cron(0 9 * * * *)"),
        "day-of-week \"*\": one of day-of-month (\"*\") and day-of-week must be \"?\" in cron(...)"
    );
    assert!(err("cron(0 9 ? * ? *)").contains("cannot both be"));
    assert_eq!(
        err("cron(0 9 ? * 8 *)"),
        "day-of-week \"8\": out of range 1-7"
    );
    assert_eq!(
        err("cron(60 9 * * ? *)"),
        "minutes \"60\": out of range 0-59"
    );
    assert_eq!(err("cron(0 24 * * ? *)"), "hours \"24\": out of range 0-23");
    assert_eq!(
        err("cron(0 9 32 * ? *)"),
        "day-of-month \"32\": out of range 1-31"
    );
    assert_eq!(err("cron(0 9 * 13 ? *)"), "month \"13\": out of range 1-12");
    assert_eq!(
        err("cron(0 9 * * ? 2200)"),
        "year \"2200\": out of range 1970-2199"
    );
    assert_eq!(
        err("cron(0 9 * FOO ? *)"),
        "month \"FOO\": not a number in 1-12 or a name JAN-DEC"
    );
    assert_eq!(
        err("cron(0 9 ? * FUN *)"),
        "day-of-week \"FUN\": not a number in 1-7 or a name SUN-SAT"
    );
    assert_eq!(
        err("cron(0 9 * * ?)"),
        "schedule \"cron(0 9 * * ?)\": expected 6 fields, found 5"
    );
    assert_eq!(
        err("0 9 * *"),
        "schedule \"0 9 * *\": expected 5 fields, found 4"
    );
    assert!(err("cron(0 9 * * ? * *)").contains("expected 6 fields, found 7"));
    assert!(err("every(5 minutes)").starts_with("schedule"));
    assert!(err("").starts_with("schedule"));
    assert!(err("cron(0 9 ? * 3#1,6#3 *)").contains("must be alone"));
    assert!(err("cron(0 9 ? * 3#6 *)").contains("1-5"));
    assert!(err("cron(0 9 ? * */2 *)").contains("\"/\" is not allowed"));
    assert!(err("cron(0/0 9 * * ? *)").contains("step"));
    assert!(err("cron(30-10 9 * * ? *)").contains("range start is after its end"));
    assert!(err("cron(0 9 1? * ? *)").starts_with("day-of-month"));
}

#[test]
fn names_are_case_insensitive_and_lists_mix() {
    assert_eq!(
        next("cron(0 9 ? jan,Mar sun *)", "2026-02-01T00:00:00Z").unwrap(),
        "2026-03-01T09:00:00Z"
    );
    assert_eq!(
        chain("cron(10-30/10 9 1,L 2 ? 2026)", "2026-01-01T00:00:00Z", 4),
        [
            "2026-02-01T09:10:00Z",
            "2026-02-01T09:20:00Z",
            "2026-02-01T09:30:00Z",
            "2026-02-28T09:10:00Z"
        ]
    );
}

#[test]
fn matches_agrees_with_next_after() {
    let s = sched("cron(0 9 ? * 2#1 *)");
    assert!(s.matches(ts("2026-01-05T09:00:30Z")));
    assert!(!s.matches(ts("2026-01-12T09:00:00Z")));
    assert!(!sched("rate(1 minute)").matches(ts("2026-01-05T09:00:00Z")));
}

// ---- property tests: an independent oracle per field ----

/// A generated field: its text and the values it must match (indexed by value).
type Field = (String, Vec<bool>);

fn numeric(lo: u32, hi: u32, steps: bool) -> BoxedStrategy<Field> {
    let n = (hi + 1) as usize;
    let set = move |f: &dyn Fn(u32) -> bool| -> Vec<bool> {
        (0..n as u32).map(|v| v >= lo && v <= hi && f(v)).collect()
    };
    let mut options: Vec<BoxedStrategy<Field>> = vec![
        Just(("*".to_owned(), set(&|_| true))).boxed(),
        (lo..=hi)
            .prop_map(move |a| (a.to_string(), set(&|v| v == a)))
            .boxed(),
        (lo..=hi, lo..=hi)
            .prop_map(move |(a, b)| {
                let (a, b) = (a.min(b), a.max(b));
                (format!("{a}-{b}"), set(&|v| (a..=b).contains(&v)))
            })
            .boxed(),
        (lo..=hi, lo..=hi)
            .prop_map(move |(a, b)| (format!("{a},{b}"), set(&|v| v == a || v == b)))
            .boxed(),
    ];
    if steps {
        options.push(
            (1..=hi.max(2) / 2)
                .prop_map(move |s| (format!("*/{s}"), set(&|v| (v - lo) % s == 0)))
                .boxed(),
        );
        options.push(
            (lo..=hi, 1..=10u32)
                .prop_map(move |(a, s)| (format!("{a}/{s}"), set(&|v| v >= a && (v - a) % s == 0)))
                .boxed(),
        );
        options.push(
            (lo..=hi, lo..=hi, 1..=10u32)
                .prop_map(move |(a, b, s)| {
                    let (a, b) = (a.min(b), a.max(b));
                    (
                        format!("{a}-{b}/{s}"),
                        set(&|v| (a..=b).contains(&v) && (v - a) % s == 0),
                    )
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

#[derive(Debug, Clone)]
enum Day {
    Dom(Vec<bool>),
    Last,
    LastWeekday,
    Nearest(u32),
    /// AWS numbering 1-7 = SUN-SAT.
    Dow(Vec<bool>),
    LastOf(u32),
    Nth(u32, u32),
}

fn day_field() -> BoxedStrategy<((String, String), Day)> {
    prop_oneof![
        numeric(1, 31, true).prop_map(|(t, s)| ((t, "?".to_owned()), Day::Dom(s))),
        Just((("L".to_owned(), "?".to_owned()), Day::Last)),
        Just((("LW".to_owned(), "?".to_owned()), Day::LastWeekday)),
        (1..=31u32).prop_map(|n| ((format!("{n}W"), "?".to_owned()), Day::Nearest(n))),
        numeric(1, 7, false).prop_map(|(t, s)| (("?".to_owned(), t), Day::Dow(s))),
        (1..=7u32).prop_map(|d| (("?".to_owned(), format!("{d}L")), Day::LastOf(d))),
        (1..=7u32, 1..=5u32)
            .prop_map(|(d, k)| (("?".to_owned(), format!("{d}#{k}")), Day::Nth(d, k))),
    ]
    .boxed()
}

fn civil(t: Timestamp) -> jiff::civil::DateTime {
    TimeZone::UTC.to_datetime(t)
}

fn oracle_day(day: &Day, date: Date) -> bool {
    let (d, dim) = (date.day() as u32, date.days_in_month() as u32);
    // AWS numbering: 1 = Sunday.
    let aws_wd = |x: Date| x.weekday().to_sunday_one_offset() as u32;
    let weekday_in_month = |x: u32| {
        let x = date.with().day(x as i8).build().unwrap();
        !matches!(aws_wd(x), 1 | 7)
    };
    match day {
        Day::Dom(s) => s[d as usize],
        Day::Last => d == dim,
        Day::LastWeekday => (1..=dim).rev().find(|&x| weekday_in_month(x)) == Some(d),
        Day::Nearest(n) => {
            *n <= dim
                && (1..=dim)
                    .filter(|&x| weekday_in_month(x))
                    .min_by_key(|&x| x.abs_diff(*n))
                    == Some(d)
        }
        Day::Dow(s) => s[aws_wd(date) as usize],
        Day::LastOf(w) => aws_wd(date) == *w && d + 7 > dim,
        Day::Nth(w, k) => {
            aws_wd(date) == *w
                && (1..=d)
                    .filter(|&x| aws_wd(date.with().day(x as i8).build().unwrap()) == *w)
                    .count() as u32
                    == *k
        }
    }
}

#[derive(Debug, Clone)]
struct Expr {
    text: String,
    minutes: Vec<bool>,
    hours: Vec<bool>,
    months: Vec<bool>,
    years: (i16, i16),
    day: Day,
}

impl Expr {
    fn matches(&self, t: Timestamp) -> bool {
        let c = civil(t);
        c.second() == 0
            && c.subsec_nanosecond() == 0
            && (self.years.0..=self.years.1).contains(&c.year())
            && self.months[c.month() as usize]
            && self.hours[c.hour() as usize]
            && self.minutes[c.minute() as usize]
            && oracle_day(&self.day, c.date())
    }
}

fn expr() -> impl Strategy<Value = Expr> {
    let years = prop_oneof![
        Just(("*".to_owned(), (MIN_YEAR, MAX_YEAR))),
        (2024..=2032i16).prop_map(|y| (y.to_string(), (y, y))),
        (2024..=2032i16, 0..=3i16).prop_map(|(y, n)| (format!("{y}-{}", y + n), (y, y + n))),
    ];
    (
        numeric(0, 59, true),
        numeric(0, 23, true),
        day_field(),
        numeric(1, 12, true),
        years,
    )
        .prop_map(|(mi, h, ((dom, dow), day), mo, (yt, years))| {
            let text = format!("cron({} {} {dom} {} {dow} {yt})", mi.0, h.0, mo.0);
            Expr {
                text,
                minutes: mi.1,
                hours: h.1,
                months: mo.1,
                years,
                day,
            }
        })
}

fn instant() -> impl Strategy<Value = Timestamp> {
    // 2024-01-01 .. 2031-01-01, to the second.
    (1_704_067_200i64..1_924_992_000).prop_map(|s| Timestamp::from_second(s).unwrap())
}

proptest! {
    #[test]
    fn next_after_is_the_first_match(e in expr(), t in instant()) {
        let s: Schedule = e.text.parse().map_err(|err| TestCaseError::fail(format!("{}: {err}", e.text)))?;
        prop_assert_eq!(s.to_string(), e.text.clone());
        let first = t.as_second().div_euclid(60) * 60 + 60;
        let scan_end = first + 3 * 86_400;
        match s.next_after(t) {
            Some(r) => {
                prop_assert!(r > t);
                prop_assert!(e.matches(r), "{} after {t}: {r} does not match", e.text);
                prop_assert!(s.matches(r));
                let end = r.as_second().min(scan_end);
                for m in (first..end).step_by(60) {
                    let m = Timestamp::from_second(m).unwrap();
                    prop_assert!(!e.matches(m), "{} after {t}: {m} matches before {r}", e.text);
                }
            }
            None => {
                for m in (first..scan_end).step_by(60) {
                    let m = Timestamp::from_second(m).unwrap();
                    prop_assert!(!e.matches(m), "{} after {t}: None but {m} matches", e.text);
                }
            }
        }
    }

    #[test]
    fn rate_adds_its_interval(n in 1i64..1000, unit in 0usize..3, t in instant()) {
        let (name, secs) = [("minute", 60), ("hour", 3600), ("day", 86_400)][unit];
        let text = if n == 1 { format!("rate(1 {name})") } else { format!("rate({n} {name}s)") };
        let s: Schedule = text.parse().unwrap();
        prop_assert_eq!(s.next_after(t), Some(Timestamp::from_second(t.as_second() + n * secs).unwrap()));
    }

    #[test]
    fn parse_never_panics(text in "(cron\\()?[0-9*?/,LW#A-Z -]{0,30}\\)?") {
        let _ = text.parse::<Schedule>();
    }
}
