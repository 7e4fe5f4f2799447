//! Property tests of the calendar: random zones, periods, anchors and instants against the
//! invariants every schedule must keep (the period contains the instant, periods tile time
//! without gaps or overlaps, starts keep the anchor's local time unless it does not exist,
//! lengths stay within an offset change of the period's) and against a model that walks the
//! periods one by one from the anchor instead of computing the index.

use calendar::{Period, Schedule, Span, INSTANT_MICROS_MAX, INSTANT_MICROS_MIN};
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use jiff::Timestamp;
use proptest::prelude::*;

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Zones with the awkward cases: no DST, 1-hour DST both hemispheres, 30-minute DST
/// (Lord Howe), a +05:45 offset that changed by 15 minutes in 1986 (Kathmandu), DST at
/// midnight (Santiago).
const ZONES: [&str; 7] = [
    "UTC",
    "Asia/Seoul",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "America/Santiago",
];

/// 2100-01-01T00:00:00Z: where the interesting (DST-rule) instants end.
const YEAR_2100_MICROS: i64 = 4_102_444_800_000_000;

fn zone(name: &str) -> TimeZone {
    TimeZoneDatabase::bundled().get(name).expect("a zone of the bundled database")
}

fn civil_at(time_zone: &TimeZone, micros: i64) -> DateTime {
    time_zone.to_datetime(Timestamp::from_microsecond(micros).expect("in range"))
}

fn is_gap(time_zone: &TimeZone, civil: DateTime) -> bool {
    matches!(time_zone.to_ambiguous_timestamp(civil).offset(), AmbiguousOffset::Gap { .. })
}

/// The local civil time of period 0's start, as the crate documents its defaults.
fn anchor_civil(time_zone: &TimeZone, period: Period, anchor_micros: Option<i64>) -> DateTime {
    match (anchor_micros, period) {
        (Some(micros), _) => civil_at(time_zone, micros),
        (None, Period::Week) => jiff::civil::date(1970, 1, 5).at(0, 0, 0, 0),
        (None, Period::Day | Period::Month) => jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0),
    }
}

fn period() -> impl Strategy<Value = Period> {
    prop::sample::select(Period::ALL.to_vec())
}

/// Mostly instants where the DST rules are, sometimes anywhere in the range.
fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => INSTANT_MICROS_MIN..YEAR_2100_MICROS,
        1 => INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX,
    ]
}

fn anchor() -> impl Strategy<Value = Option<i64>> {
    prop::option::of(instant())
}

fn hours(micros: i64) -> f64 {
    micros as f64 / HOUR_MICROS as f64
}

/// The invariants of one span `period_at(at)` of `schedule`.
fn check_span(
    schedule: &Schedule,
    time_zone: &TimeZone,
    anchor: DateTime,
    at: i64,
    span: Span,
) -> Result<(), TestCaseError> {
    prop_assert!(span.start_micros <= at && at < span.end_micros, "{span:?} misses {at}");
    if span.end_micros <= INSTANT_MICROS_MAX {
        let next = schedule.period_at(span.end_micros).expect("in range");
        prop_assert_eq!(next.start_micros, span.end_micros, "a gap or an overlap after {:?}", span);
        prop_assert_eq!(schedule.next(span).expect("in range"), next);
    }
    if span.start_micros >= INSTANT_MICROS_MIN {
        prop_assert_eq!(schedule.period_at(span.start_micros).expect("in range"), span);
    }
    prop_assert_eq!(schedule.period_at(span.end_micros - 1).expect("in range"), span);

    // The start keeps the anchor's local time (and weekday or day of month) unless that local
    // time does not exist on the day, in which case it is moved forward past the gap.
    let start = civil_at(time_zone, span.start_micros);
    let length = span.end_micros - span.start_micros;
    let intended_date = match schedule.period() {
        Period::Day => start.date(),
        Period::Week => {
            let offset = i32::from(start.weekday().since(anchor.weekday()));
            start.date().checked_sub(jiff::Span::new().days(offset)).expect("in range")
        }
        Period::Month => {
            let day = anchor.day().min(start.date().days_in_month());
            start.date().with().day(day).build().expect("a day of the month")
        }
    };
    let keeps_anchor = start.date() == intended_date && start.time() == anchor.time();
    let moved_by_a_gap = [0, 1].iter().any(|back| {
        let date = start.date().checked_sub(jiff::Span::new().days(*back)).expect("in range");
        is_gap(time_zone, date.to_datetime(anchor.time()))
    });
    prop_assert!(
        keeps_anchor || moved_by_a_gap,
        "the start {} does not keep the anchor {} and no gap moved it",
        start,
        anchor
    );

    let (low_micros, high_micros) = match schedule.period() {
        Period::Day => (22 * HOUR_MICROS, 26 * HOUR_MICROS),
        Period::Week => (167 * HOUR_MICROS, 169 * HOUR_MICROS),
        Period::Month => (28 * DAY_MICROS - HOUR_MICROS, 31 * DAY_MICROS + HOUR_MICROS),
    };
    prop_assert!(
        (low_micros..=high_micros).contains(&length),
        "a {} of {} h starting {}",
        schedule.period().as_str(),
        hours(length),
        start
    );
    Ok(())
}

/// `shift_micros` from the first offset change of `time_zone` after `seed_micros` (or the seed
/// itself in a zone without one, like UTC).
fn near_a_transition(time_zone: &TimeZone, seed_micros: i64, shift_micros: i64) -> i64 {
    let seed = Timestamp::from_microsecond(seed_micros).expect("in range");
    let transition = time_zone.following(seed).next().map(|transition| transition.timestamp());
    transition.map_or(seed_micros, |at| at.as_microsecond()) + shift_micros
}

/// The model: civil starts walked one period at a time from the anchor (days by `tomorrow`,
/// months by a year/month counter clamping the day), resolved by the `compatible` rule, for
/// indexes `-steps..=steps`. The crate computes the same starts by index arithmetic.
fn walked_starts(time_zone: &TimeZone, period: Period, anchor: DateTime, steps: usize) -> Vec<i64> {
    let walk = |forward: bool| -> Vec<DateTime> {
        let mut civil = Vec::with_capacity(steps);
        let mut date = anchor.date();
        let (mut year, mut month) = (i32::from(anchor.year()), i32::from(anchor.month()));
        for _ in 0..steps {
            match period {
                Period::Day | Period::Week => {
                    let days = if period == Period::Day { 1 } else { 7 };
                    for _ in 0..days {
                        date = if forward { date.tomorrow() } else { date.yesterday() }.expect("in range");
                    }
                }
                Period::Month => {
                    let index = year * 12 + (month - 1) + if forward { 1 } else { -1 };
                    (year, month) = (index.div_euclid(12), index.rem_euclid(12) + 1);
                    let first = Date::new(year as i16, month as i8, 1).expect("a month in range");
                    let day = anchor.day().min(first.days_in_month());
                    date = Date::new(year as i16, month as i8, day).expect("a clamped day");
                }
            }
            civil.push(date.to_datetime(anchor.time()));
        }
        civil
    };
    let mut civil: Vec<DateTime> = walk(false).into_iter().rev().collect();
    civil.push(anchor);
    civil.extend(walk(true));
    civil
        .into_iter()
        .map(|start| time_zone.to_ambiguous_timestamp(start).compatible().expect("in range").as_microsecond())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn periods_contain_the_instant_tile_time_and_keep_the_anchor(
        zone_name in prop::sample::select(ZONES.to_vec()),
        period in period(),
        anchor_micros in anchor(),
        anchor_near_a_transition in any::<bool>(),
        anchor_shift_micros in -2 * HOUR_MICROS..=2 * HOUR_MICROS,
        at in instant(),
    ) {
        let time_zone = zone(zone_name);
        let anchor_micros = match anchor_micros {
            Some(seed) if anchor_near_a_transition => {
                Some(near_a_transition(&time_zone, seed, anchor_shift_micros))
            }
            other => other,
        };
        prop_assume!(anchor_micros
            .is_none_or(|micros| (INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX).contains(&micros)));
        let schedule = Schedule::new(period, zone_name, anchor_micros).expect("valid");
        let anchor = anchor_civil(&time_zone, period, anchor_micros);
        let span = schedule.period_at(at).expect("in range");
        check_span(&schedule, &time_zone, anchor, at, span)?;
    }

    #[test]
    fn later_instants_never_have_earlier_periods(
        zone_name in prop::sample::select(ZONES.to_vec()),
        period in period(),
        anchor_micros in anchor(),
        at in INSTANT_MICROS_MIN..YEAR_2100_MICROS,
        later_micros in prop_oneof![0..DAY_MICROS, 0..40 * DAY_MICROS, 0..400 * DAY_MICROS],
    ) {
        let schedule = Schedule::new(period, zone_name, anchor_micros).expect("valid");
        let first = schedule.period_at(at).expect("in range");
        let second = schedule.period_at(at + later_micros).expect("in range");
        prop_assert!(first.start_micros <= second.start_micros, "{first:?} then {second:?}");
        if at + later_micros < first.end_micros {
            prop_assert_eq!(first, second);
        } else {
            prop_assert!(first.end_micros <= second.start_micros);
        }
    }

    #[test]
    fn the_arithmetic_period_is_the_one_found_by_walking_from_the_anchor(
        zone_name in prop::sample::select(ZONES.to_vec()),
        period in period(),
        anchor_seed_micros in INSTANT_MICROS_MIN..YEAR_2100_MICROS,
        anchor_near_a_transition in any::<bool>(),
        anchor_shift_micros in -2 * HOUR_MICROS..=2 * HOUR_MICROS,
        periods_away in -300i64..=300,
        within in 0.0f64..1.0,
        at_near_a_transition in any::<bool>(),
        at_shift_micros in -2 * HOUR_MICROS..=2 * HOUR_MICROS,
    ) {
        const STEPS: usize = 320;
        let time_zone = zone(zone_name);
        // Half the anchors and instants sit within two hours of an offset change, where the
        // estimate needs its correction steps and starts fall into gaps and folds.
        let anchor_micros = if anchor_near_a_transition {
            near_a_transition(&time_zone, anchor_seed_micros, anchor_shift_micros)
        } else {
            anchor_seed_micros
        };
        prop_assume!((INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX).contains(&anchor_micros));
        let schedule = Schedule::new(period, zone_name, Some(anchor_micros)).expect("valid");
        let anchor = anchor_civil(&time_zone, period, Some(anchor_micros));
        let nominal_micros = match period {
            Period::Day => DAY_MICROS,
            Period::Week => 7 * DAY_MICROS,
            Period::Month => 30 * DAY_MICROS,
        };
        let mut at = anchor_micros + periods_away * nominal_micros + (within * nominal_micros as f64) as i64;
        if at_near_a_transition {
            let near = near_a_transition(&time_zone, at.max(INSTANT_MICROS_MIN), at_shift_micros);
            if (near - anchor_micros).abs() <= 300 * nominal_micros {
                at = near;
            }
        }
        prop_assume!((INSTANT_MICROS_MIN..=INSTANT_MICROS_MAX).contains(&at));

        let starts = walked_starts(&time_zone, period, anchor, STEPS);
        prop_assert!(starts.windows(2).all(|pair| pair[0] <= pair[1]), "walked starts go back");
        prop_assert!(starts[0] <= at && at < starts[starts.len() - 1], "the walk is too short");
        let index = starts.iter().rposition(|start| *start <= at).expect("the first start is before at");
        let end = starts[index + 1..].iter().find(|start| **start > at).expect("the last start is after at");
        prop_assert_eq!(
            schedule.period_at(at).expect("in range"),
            Span { start_micros: starts[index], end_micros: *end }
        );
    }
}

/// Every zone of the bundled database, for the structural invariants: whatever history a zone
/// has (Pacific/Apia skipping a day, Kwajalein's date-line crossing), periods tile time.
#[test]
fn every_bundled_zone_tiles_time_with_non_empty_periods() {
    let names: Vec<String> = TimeZoneDatabase::bundled().available().map(|name| name.as_str().to_owned()).collect();
    assert!(names.len() > 300, "the bundled database has {} zones", names.len());
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 2048, ..ProptestConfig::default() });
    let strategy = (
        prop::sample::select(names),
        period(),
        prop::option::of((INSTANT_MICROS_MIN..YEAR_2100_MICROS, any::<bool>())),
        (INSTANT_MICROS_MIN..YEAR_2100_MICROS, any::<bool>()),
        (-2 * HOUR_MICROS..=2 * HOUR_MICROS, -2 * HOUR_MICROS..=2 * HOUR_MICROS),
    );
    runner
        .run(&strategy, |(zone_name, period, anchor, (at, at_near), (anchor_shift, at_shift))| {
            // Half the anchors and instants sit within two hours of one of the zone's changes.
            let time_zone = zone(&zone_name);
            let place = |seed: i64, near: bool, shift: i64| {
                let micros = if near { near_a_transition(&time_zone, seed, shift) } else { seed };
                micros.clamp(INSTANT_MICROS_MIN, INSTANT_MICROS_MAX)
            };
            let anchor_micros = anchor.map(|(seed, near)| place(seed, near, anchor_shift));
            let at = place(at, at_near, at_shift);
            let schedule = Schedule::new(period, &zone_name, anchor_micros).expect("a bundled zone");
            let span = schedule.period_at(at).expect("in range");
            prop_assert!(span.start_micros <= at && at < span.end_micros, "{span:?} misses {at}");
            let next = schedule.next(span).expect("in range");
            prop_assert_eq!(next.start_micros, span.end_micros);
            prop_assert!(next.start_micros < next.end_micros);
            if span.start_micros >= INSTANT_MICROS_MIN {
                prop_assert_eq!(schedule.period_at(span.start_micros).expect("in range"), span);
            }
            let length_max_micros = match period {
                Period::Day => 2 * DAY_MICROS,
                Period::Week => 8 * DAY_MICROS,
                Period::Month => 32 * DAY_MICROS,
            };
            prop_assert!(span.end_micros - span.start_micros <= length_max_micros, "{span:?}");
            Ok(())
        })
        .expect("every bundled zone tiles time");
}
