//! The calendar of allowance periods: for an instant, which period of a recurring schedule — a
//! day, a week or a month in an IANA time zone — is current, and when it ends.
//!
//! Why a crate of its own: allowances are granted lazily and exactly on read (a hold at
//! 00:00:00.000 Asia/Seoul sees the new day's allowance without a sweeper having run), so whoever
//! loads an account computes the current period for an instant. That is pure calendar
//! arithmetic, and it needs a maintained time-zone database; keeping it here keeps `ledger` free
//! of dependencies and gives the rules below one home and one set of tests. No I/O, no clock:
//! the caller passes the instant.
//!
//! Units: instants in and out are microseconds since the Unix epoch (`i64`), like the ledger's
//! `Timestamp`; this crate does not depend on the ledger, the caller converts.
//!
//! The rules:
//! - **Time zones** come from the IANA database bundled into the binary by `jiff` (never the
//!   host's `/usr/share/zoneinfo`, never a fixed offset), so every machine computes the same
//!   periods. Names are matched without regard to ASCII case; [`Schedule::time_zone_name`] is
//!   the canonical spelling. `Etc/Unknown` is refused.
//! - **Anchors** fix where periods start, in the zone's local civil time: a day starts at the
//!   anchor's local time of day (default 00:00); a week on the anchor's weekday at its time
//!   (default Monday 00:00); a month on the anchor's day of month at its time (default the 1st,
//!   00:00). The schedule extends both ways from the anchor: an anchor in the future still
//!   defines the current period. Only the anchor's local civil time counts: an anchor instant
//!   in the second pass of a fold (the repeated hour) starts its period at the first pass.
//! - **Month ends clamp**: period `k` starts at the anchor plus `k` months, computed from the
//!   anchor each time, so a month anchored on the 31st starts on the last day of shorter months
//!   and returns to the 31st (31 Jan → 28 Feb → 31 Mar → 30 Apr) — it never drifts. A month
//!   anchored on 29 Feb 2028 starts on the 29th of every month (28 Feb in common years).
//! - **DST and other offset changes** resolve by jiff's `compatible` disambiguation (RFC 5545's
//!   and Temporal's rule): a local start time that does not exist (a gap) is moved forward by
//!   the gap's length (02:30 on a spring-forward night in New York starts at 03:30 EDT), and a
//!   local start time that exists twice (a fold) takes the earlier instant. A period therefore
//!   lasts as long as the wall clock says: a New York day is 23 h in March and 25 h in November.
//!   Where a zone skipped a whole day (Pacific/Apia on 2011-12-30), that day's period would be
//!   empty and does not exist: the previous period ends where the next one starts.
//! - **Limits**: instants and anchors must lie in [`INSTANT_MICROS_MIN`]..=
//!   [`INSTANT_MICROS_MAX`] (1970-01-01T00:00:00Z up to the end of 9998 UTC), so every period
//!   touching them is inside jiff's range; anything else is a [`CalendarError`], never a
//!   panic. The current period is found arithmetically (from the number of whole periods
//!   between the anchor and the instant in local civil time), then corrected by at most
//!   [`CORRECTION_STEPS_MAX`] steps for offset changes near the boundary: no loop walks the
//!   calendar.

use std::sync::LazyLock;

use jiff::civil::DateTime;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{Timestamp, Unit};

/// The earliest instant accepted, as an instant to look up or an anchor: 1970-01-01T00:00:00Z.
pub const INSTANT_MICROS_MIN: i64 = 0;

/// The latest instant accepted: 9998-12-31T23:59:59.999999Z. A month containing it ends in
/// 9999, inside jiff's range (civil years up to 9999), with room for any time-zone offset.
pub const INSTANT_MICROS_MAX: i64 = 253_370_764_800_000_000 - 1;

/// Time-zone names longer than this are refused before any lookup (the longest IANA name is
/// about 30 bytes); error messages quote at most this many bytes of a rejected input.
pub const TEXT_BYTES_MAX: usize = 64;

/// How many single-period steps may correct the arithmetic estimate of the current period.
/// The estimate is exact in local civil time; it is off only when an offset change lies
/// between the instant and a period boundary, and then by one period (the property tests, run
/// with a bound of one over every bundled zone near its transitions, never needed more). The
/// second step is a margin, not a loop: exceeding it is a broken invariant and panics.
pub const CORRECTION_STEPS_MAX: u32 = 2;

/// The bundled copy of the IANA time-zone database, and no other: even when another crate in
/// the build turns on jiff's system-database features, schedules read this one.
static TIME_ZONES: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

/// How long an allowance period lasts, in the local calendar of its time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    /// Parses the wire spelling: `day`, `week` or `month` (exactly, lower case).
    pub fn parse(text: &str) -> Result<Period, CalendarError> {
        match text {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ => Err(CalendarError::UnknownPeriod { text: bounded(text) }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// One period of a schedule: `start_micros <= at < end_micros` for every instant `at` in it,
/// and `end_micros` is the next period's `start_micros`. Never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub start_micros: i64,
    pub end_micros: i64,
}

impl Span {
    pub fn contains(self, at_micros: i64) -> bool {
        self.start_micros <= at_micros && at_micros < self.end_micros
    }
}

/// Why a schedule could not be built or a period not computed. [`CalendarError::code`] is a
/// stable name for API errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("unknown period {text:?}: expected \"day\", \"week\" or \"month\"")]
    UnknownPeriod { text: String },
    #[error("unknown time zone {name:?}: expected an IANA time zone name such as \"Asia/Seoul\"")]
    UnknownTimeZone { name: String },
    #[error(
        "anchor {micros} µs since the Unix epoch is outside the supported range \
         (1970-01-01T00:00:00Z up to the end of 9998 UTC)"
    )]
    AnchorOutOfRange { micros: i64 },
    #[error(
        "instant {micros} µs since the Unix epoch is outside the supported range \
         (1970-01-01T00:00:00Z up to the end of 9998 UTC)"
    )]
    InstantOutOfRange { micros: i64 },
}

impl CalendarError {
    pub fn code(&self) -> &'static str {
        match self {
            CalendarError::UnknownPeriod { .. } => "unknown_period",
            CalendarError::UnknownTimeZone { .. } => "unknown_time_zone",
            CalendarError::AnchorOutOfRange { .. } => "anchor_out_of_range",
            CalendarError::InstantOutOfRange { .. } => "instant_out_of_range",
        }
    }
}

/// A recurring schedule of periods in one time zone, anchored at a local civil time.
#[derive(Clone, Debug)]
pub struct Schedule {
    period: Period,
    time_zone: TimeZone,
    /// The local civil start of period 0, before month-end clamping and DST resolution. Every
    /// other period's civil start is this plus a whole number of periods.
    anchor: DateTime,
}

impl Schedule {
    /// A schedule of `period`s in the IANA zone `time_zone_name`. `anchor_micros`, if given,
    /// is an instant whose local time (and weekday, or day of month) every period starts at;
    /// without it a day starts at 00:00, a week on Monday 00:00, a month on the 1st at 00:00.
    pub fn new(period: Period, time_zone_name: &str, anchor_micros: Option<i64>) -> Result<Schedule, CalendarError> {
        let unknown = || CalendarError::UnknownTimeZone { name: bounded(time_zone_name) };
        if time_zone_name.len() > TEXT_BYTES_MAX {
            return Err(unknown());
        }
        let time_zone = TIME_ZONES.get(time_zone_name).map_err(|_| unknown())?;
        if time_zone.is_unknown() || time_zone.iana_name().is_none() {
            return Err(unknown());
        }
        let anchor = match anchor_micros {
            Some(micros) => {
                if !(INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX).contains(&micros) {
                    return Err(CalendarError::AnchorOutOfRange { micros });
                }
                time_zone.to_datetime(timestamp(micros))
            }
            // 1970-01-01 is a Thursday; 1970-01-05 the first Monday.
            None => match period {
                Period::Day | Period::Month => jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0),
                Period::Week => jiff::civil::date(1970, 1, 5).at(0, 0, 0, 0),
            },
        };
        Ok(Schedule { period, time_zone, anchor })
    }

    pub fn period(&self) -> Period {
        self.period
    }

    /// The canonical IANA name of the schedule's zone (as the bundled database spells it).
    pub fn time_zone_name(&self) -> &str {
        self.time_zone.iana_name().expect("Schedule::new refuses zones without an IANA name")
    }

    /// The period containing `at_micros`.
    pub fn period_at(&self, at_micros: i64) -> Result<Span, CalendarError> {
        if !(INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX).contains(&at_micros) {
            return Err(CalendarError::InstantOutOfRange { micros: at_micros });
        }
        let mut index = self.estimate_index(self.time_zone.to_datetime(timestamp(at_micros)));
        // Correct for offset changes between the instant and the boundary. Each step moves
        // towards the answer (down only while the start is after `at`, up only while the end
        // is at or before it), so the direction never reverses.
        for _ in 0..=CORRECTION_STEPS_MAX {
            let start_micros = self.start_micros(index);
            if start_micros > at_micros {
                index -= 1;
                continue;
            }
            let end_micros = self.start_micros(index + 1);
            if end_micros <= at_micros {
                index += 1;
                continue;
            }
            let span = Span { start_micros, end_micros };
            assert!(span.contains(at_micros));
            return Ok(span);
        }
        panic!(
            "period_at({at_micros}) in {} did not settle within {CORRECTION_STEPS_MAX} steps",
            self.time_zone_name()
        );
    }

    /// `at_micros` as the schedule's zone shows it, in RFC 3339 with the local offset
    /// (`2026-12-02T00:00:00+09:00`): how a period's start is named in its grant's reference.
    pub fn local_rfc3339(&self, at_micros: i64) -> Result<String, CalendarError> {
        if !(INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX).contains(&at_micros) {
            return Err(CalendarError::InstantOutOfRange { micros: at_micros });
        }
        Ok(timestamp(at_micros).to_zoned(self.time_zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string())
    }

    /// The period after `span`: the one containing `span.end_micros`, which for a span this
    /// schedule returned is the one starting there. Fails only when that instant is past
    /// [`INSTANT_MICROS_MAX`].
    pub fn next(&self, span: Span) -> Result<Span, CalendarError> {
        self.period_at(span.end_micros)
    }

    /// The index `k` of the last period whose local civil start is at or before `local`
    /// (period 0 starts at the anchor). Exact in civil time; the instant may differ by a step.
    fn estimate_index(&self, local: DateTime) -> i64 {
        let days = || -> i64 {
            let whole = self
                .anchor
                .date()
                .until((Unit::Day, local.date()))
                .expect("days between two dates in range are representable")
                .get_days();
            i64::from(whole) - i64::from(local.time() < self.anchor.time())
        };
        match self.period {
            Period::Day => days(),
            Period::Week => days().div_euclid(7),
            Period::Month => {
                let months = (i64::from(local.year()) - i64::from(self.anchor.year())) * 12
                    + (i64::from(local.month()) - i64::from(self.anchor.month()));
                months - i64::from(local < self.civil_start(months))
            }
        }
    }

    /// The local civil start of period `index`, computed from the anchor (never from another
    /// period, so month-end clamping cannot accumulate).
    fn civil_start(&self, index: i64) -> DateTime {
        let step = match self.period {
            Period::Day => jiff::Span::new().try_days(index),
            Period::Week => jiff::Span::new().try_weeks(index),
            Period::Month => jiff::Span::new().try_months(index),
        }
        .expect("periods between instants in range fit a jiff span");
        self.anchor.checked_add(step).expect("periods near instants in range are inside jiff's civil range")
    }

    /// The instant period `index` starts at: its civil start resolved by the `compatible` rule.
    fn start_micros(&self, index: i64) -> i64 {
        self.time_zone
            .to_ambiguous_timestamp(self.civil_start(index))
            .compatible()
            .expect("periods near instants in range are inside jiff's timestamp range")
            .as_microsecond()
    }
}

fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).expect("instants in range are valid jiff timestamps")
}

/// At most [`TEXT_BYTES_MAX`] bytes of `text` (cut at a character boundary), for messages.
fn bounded(text: &str) -> String {
    let mut end = text.len().min(TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
