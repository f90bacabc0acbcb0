//! A validated cron expression in an IANA time zone, and its next fire time across DST changes.
//!
//! Expressions have five fields (minute granularity) or a nickname (`@daily`, `@hourly`, …);
//! croner matches them against wall-clock time. Wall-clock time is not a line, though:
//! - a time skipped by a spring-forward change (02:30 in New York on the second Sunday of March)
//!   fires once, at the first instant after the gap (03:00 EDT), like Vixie cron;
//! - a time repeated by an autumn change (01:30 on the first Sunday of November) fires once, at
//!   its first occurrence, for schedules with a fixed hour ("daily at 01:30" must not run twice);
//!   schedules whose hour field is `*` ("every 15 minutes") follow elapsed time and fire in both
//!   occurrences, also like Vixie cron.

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::time::Timestamp;

/// Why an expression or zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid cron expression `{expression}`: {reason}")]
    Cron { expression: String, reason: String },
    #[error("unknown time zone `{0}`: expected an IANA name such as `Europe/Berlin`")]
    TimeZone(String),
}

#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    zone: Tz,
    /// The hour field is `*`: the schedule is about elapsed time (see the module docs).
    every_hour: bool,
}

/// No zone has two offset changes within this window, and no change is longer than it.
const WINDOW_HOURS: i64 = 3;

impl CronSpec {
    pub fn parse(expression: &str, time_zone: &str) -> Result<CronSpec, SpecError> {
        let expression = expression.trim();
        let invalid = |reason: String| SpecError::Cron {
            expression: expression.to_owned(),
            reason,
        };
        let zone: Tz = time_zone
            .parse()
            .map_err(|_| SpecError::TimeZone(time_zone.to_owned()))?;
        let cron = Cron::new(expression)
            .parse()
            .map_err(|e| invalid(e.to_string()))?;
        let every_hour = match expression.strip_prefix('@') {
            Some(nickname) => nickname.eq_ignore_ascii_case("hourly"),
            None => expression
                .split_whitespace()
                .nth(1)
                .is_some_and(|hours| hours.starts_with('*')),
        };
        let spec = CronSpec {
            cron,
            zone,
            every_hour,
        };
        if spec.next_after(Timestamp::now()).is_none() {
            return Err(invalid("it never fires".to_owned()));
        }
        Ok(spec)
    }

    /// The zone's canonical IANA name.
    pub fn time_zone(&self) -> &'static str {
        self.zone.name()
    }

    /// The first fire time strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let after = after.as_datetime();
        // Near an autumn change, wall-clock times earlier than `after`'s come round again, and
        // a later wall-clock time can be an earlier instant; look a window back and keep the
        // earliest instant. Away from any change, wall-clock order is time order.
        let mut cursor = after.with_timezone(&self.zone).naive_local();
        if self.near_change(after) {
            cursor -= Duration::hours(WINDOW_HOURS);
        }
        let mut best: Option<(DateTime<Utc>, NaiveDateTime)> = None;
        // Bounds the scan for expressions that rarely match; a minute-level expression needs
        // about 2 · WINDOW_HOURS · 60 steps in the worst case.
        for _ in 0..2_000 {
            let wall = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&cursor), false)
                .ok()?
                .naive_utc();
            if let Some((instant, best_wall)) = best
                && (!self.near_change(instant) || wall > best_wall + Duration::hours(WINDOW_HOURS))
            {
                break;
            }
            for instant in self.instants(wall) {
                if instant > after && best.is_none_or(|(b, _)| instant < b) {
                    best = Some((instant, wall));
                }
            }
            cursor = wall;
        }
        best.map(|(instant, _)| Timestamp::from(instant))
    }

    /// The instants at which wall-clock time `wall` fires.
    fn instants(&self, wall: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match self.zone.from_local_datetime(&wall) {
            chrono::LocalResult::Single(t) => vec![t.to_utc()],
            chrono::LocalResult::Ambiguous(first, second) if self.every_hour => {
                vec![first.to_utc(), second.to_utc()]
            }
            chrono::LocalResult::Ambiguous(first, _) => vec![first.to_utc()],
            chrono::LocalResult::None => vec![self.end_of_gap(wall)],
        }
    }

    /// The first instant after the spring-forward gap that swallowed `wall`: the smallest
    /// instant whose wall-clock time is past `wall`, found by bisection (offsets lie within
    /// -12 h..+14 h, so that instant is within these bounds).
    fn end_of_gap(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        let wall_at = |secs: i64| {
            DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&self.zone).naive_local())
        };
        let base = wall.and_utc().timestamp();
        let (mut lo, mut hi) = (base - 15 * 3600, base + 13 * 3600);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if wall_at(mid).is_some_and(|w| w > wall) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        DateTime::from_timestamp(hi, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether the zone's offset changes within the window around `t`.
    fn near_change(&self, t: DateTime<Utc>) -> bool {
        let offset = |t: DateTime<Utc>| self.zone.offset_from_utc_datetime(&t.naive_utc()).fix();
        let window = Duration::hours(WINDOW_HOURS);
        offset(t - window) != offset(t + window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::from(
            DateTime::parse_from_rfc3339(text)
                .expect("test time")
                .to_utc(),
        )
    }

    /// The next `n` fire times after `from`, as UTC RFC 3339 seconds.
    fn fires(spec: &CronSpec, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = spec.next_after(t).expect("a next fire time");
                t.as_datetime().format("%Y-%m-%dT%H:%M:%SZ").to_string()
            })
            .collect()
    }

    #[test]
    fn refuses_bad_expressions_and_zones_clearly() {
        let err = CronSpec::parse("61 * * * *", "UTC").expect_err("refused");
        assert!(matches!(err, SpecError::Cron { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("invalid cron expression `61 * * * *`")
        );
        let err = CronSpec::parse("0 0 30 2 *", "UTC").expect_err("refused");
        assert!(err.to_string().contains("never fires"), "{err}");
        let err = CronSpec::parse("* * * * *", "Mars/Olympus").expect_err("refused");
        assert_eq!(err, SpecError::TimeZone("Mars/Olympus".into()));
        assert!(CronSpec::parse("@daily", "Europe/Berlin").is_ok());
        assert!(
            CronSpec::parse("0 0 * * * *", "UTC").is_err(),
            "seconds are not allowed"
        );
    }

    #[test]
    fn plain_schedules_follow_the_zone() {
        let spec = CronSpec::parse("0 9 * * 1-5", "Europe/Berlin").expect("valid spec");
        // Friday 2026-07-03 after 09:00 CEST: next is Monday 09:00 CEST = 07:00Z.
        assert_eq!(
            fires(&spec, "2026-07-03T08:00:00Z", 1),
            ["2026-07-06T07:00:00Z"]
        );
    }

    #[test]
    fn spring_forward_gap_fires_once_at_the_end_of_the_gap() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let daily = CronSpec::parse("30 2 * * *", "America/New_York").expect("valid spec");
        assert_eq!(
            fires(&daily, "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
        let quarterly = CronSpec::parse("*/15 * * * *", "America/New_York").expect("valid spec");
        assert_eq!(
            fires(&quarterly, "2026-03-08T06:40:00Z", 3),
            [
                "2026-03-08T06:45:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:15:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_runs_fixed_times_once_and_intervals_in_both_passes() {
        // New York, 2026-11-01: 02:00 EDT (06:00Z) falls back to 01:00 EST; 01:xx happens twice.
        let daily = CronSpec::parse("30 1 * * *", "America/New_York").expect("valid spec");
        assert_eq!(
            fires(&daily, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        // From inside the second pass, the already-fired first 01:30 is not fired again.
        assert_eq!(
            fires(&daily, "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
        let half_hourly = CronSpec::parse("*/30 * * * *", "America/New_York").expect("valid spec");
        assert_eq!(
            fires(&half_hourly, "2026-11-01T04:50:00Z", 5),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:00:00Z",
            ]
        );
    }
}
