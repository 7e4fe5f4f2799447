//! Worked examples of the calendar's rules, each against instants written out by hand: the
//! Seoul midnight, DST days in New York, month ends and leap years in Berlin, weeks across a DST
//! change, the `compatible` rule at a gap and a fold, and the limits.

use calendar::{CalendarError, Period, Schedule, Span, INSTANT_MICROS_MAX, INSTANT_MICROS_MIN};
use jiff::civil::{DateTime, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::Timestamp;

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

fn zone(name: &str) -> TimeZone {
    TimeZoneDatabase::bundled().get(name).expect("a zone of the bundled database")
}

/// `text` as an instant: RFC 3339 with an offset (`...Z`).
fn utc(text: &str) -> i64 {
    text.parse::<Timestamp>().expect("an RFC 3339 instant").as_microsecond()
}

/// The instant of an unambiguous local civil time (`2026-12-02T00:00`) in `zone_name`.
fn local(zone_name: &str, civil: &str) -> i64 {
    let civil: DateTime = civil.parse().expect("a civil datetime");
    zone(zone_name)
        .to_ambiguous_timestamp(civil)
        .unambiguous()
        .expect("the example's local time exists exactly once")
        .as_microsecond()
}

/// The local civil time of `micros` in `zone_name`.
fn civil_at(zone_name: &str, micros: i64) -> DateTime {
    zone(zone_name).to_datetime(Timestamp::from_microsecond(micros).expect("in range"))
}

fn schedule(period: Period, zone_name: &str, anchor_micros: Option<i64>) -> Schedule {
    Schedule::new(period, zone_name, anchor_micros).expect("a valid schedule")
}

/// `count` consecutive periods from the one containing `at_micros`.
fn periods(schedule: &Schedule, at_micros: i64, count: usize) -> Vec<Span> {
    let mut span = schedule.period_at(at_micros).expect("in range");
    let mut spans = vec![span];
    while spans.len() < count {
        span = schedule.next(span).expect("in range");
        spans.push(span);
    }
    spans
}

#[test]
fn a_seoul_day_starts_at_local_midnight_and_lasts_24_hours() {
    let days = schedule(Period::Day, "Asia/Seoul", None);
    let midnight = utc("2026-12-01T15:00:00Z");
    assert_eq!(midnight, local("Asia/Seoul", "2026-12-02T00:00"));

    assert_eq!(days.period_at(midnight), Ok(Span { start_micros: midnight, end_micros: midnight + DAY_MICROS }));
    assert_eq!(days.period_at(midnight - 1), Ok(Span { start_micros: midnight - DAY_MICROS, end_micros: midnight }));
    assert_eq!(days.period_at(midnight + DAY_MICROS - 1).map(|span| span.start_micros), Ok(midnight));

    for span in periods(&days, midnight, 800) {
        assert_eq!(span.end_micros - span.start_micros, DAY_MICROS, "{span:?}");
        assert_eq!(civil_at("Asia/Seoul", span.start_micros).time(), jiff::civil::time(0, 0, 0, 0));
    }
}

#[test]
fn a_new_york_day_is_23_hours_at_spring_forward_and_25_at_fall_back() {
    let days = schedule(Period::Day, "America/New_York", None);

    let spring = days.period_at(local("America/New_York", "2026-03-08T12:00")).expect("in range");
    assert_eq!(spring.start_micros, utc("2026-03-08T05:00:00Z"));
    assert_eq!(spring.end_micros, utc("2026-03-09T04:00:00Z"));
    assert_eq!(spring.end_micros - spring.start_micros, 23 * HOUR_MICROS);

    let fall = days.period_at(local("America/New_York", "2026-11-01T12:00")).expect("in range");
    assert_eq!(fall.start_micros, utc("2026-11-01T04:00:00Z"));
    assert_eq!(fall.end_micros, utc("2026-11-02T05:00:00Z"));
    assert_eq!(fall.end_micros - fall.start_micros, 25 * HOUR_MICROS);

    for span in periods(&days, local("America/New_York", "2026-03-01T00:00"), 280) {
        let start = civil_at("America/New_York", span.start_micros);
        assert_eq!(start.time(), jiff::civil::time(0, 0, 0, 0), "{span:?}");
        let hours = (span.end_micros - span.start_micros) / HOUR_MICROS;
        let expected = match start.date().to_string().as_str() {
            "2026-03-08" => 23,
            "2026-11-01" => 25,
            _ => 24,
        };
        assert_eq!(hours, expected, "the day starting {start}");
    }
}

#[test]
fn a_month_anchored_on_the_31st_clamps_to_shorter_months_without_drifting() {
    let anchor = local("Europe/Berlin", "2027-01-31T00:00");
    let months = schedule(Period::Month, "Europe/Berlin", Some(anchor));
    let starts: Vec<String> = periods(&months, anchor, 8)
        .iter()
        .map(|span| civil_at("Europe/Berlin", span.start_micros).to_string())
        .collect();
    assert_eq!(
        starts,
        [
            "2027-01-31T00:00:00",
            "2027-02-28T00:00:00",
            "2027-03-31T00:00:00",
            "2027-04-30T00:00:00",
            "2027-05-31T00:00:00",
            "2027-06-30T00:00:00",
            "2027-07-31T00:00:00",
            "2027-08-31T00:00:00",
        ]
    );
    // The period containing the last days of February 2027 starts on its clamped end...
    assert_eq!(
        months.period_at(local("Europe/Berlin", "2027-03-01T12:00")),
        Ok(Span {
            start_micros: local("Europe/Berlin", "2027-02-28T00:00"),
            end_micros: local("Europe/Berlin", "2027-03-31T00:00"),
        })
    );
    // ...and the day before it is still January's period; a leap February clamps to the 29th.
    assert_eq!(months.period_at(local("Europe/Berlin", "2027-02-27T23:59")).map(|span| span.start_micros), Ok(anchor));
    assert_eq!(
        months.period_at(local("Europe/Berlin", "2028-03-01T00:00")).map(|span| span.start_micros),
        Ok(local("Europe/Berlin", "2028-02-29T00:00"))
    );
}

#[test]
fn a_month_anchored_on_29_february_starts_on_the_29th_and_leap_februaries_have_29_days() {
    let anchor = local("Europe/Berlin", "2028-02-29T00:00");
    let months = schedule(Period::Month, "Europe/Berlin", Some(anchor));
    let starts: Vec<String> = periods(&months, local("Europe/Berlin", "2028-01-29T00:00"), 14)
        .iter()
        .map(|span| civil_at("Europe/Berlin", span.start_micros).date().to_string())
        .collect();
    assert_eq!(
        starts,
        [
            "2028-01-29",
            "2028-02-29",
            "2028-03-29",
            "2028-04-29",
            "2028-05-29",
            "2028-06-29",
            "2028-07-29",
            "2028-08-29",
            "2028-09-29",
            "2028-10-29",
            "2028-11-29",
            "2028-12-29",
            "2029-01-29",
            "2029-02-28",
        ]
    );
    assert_eq!(
        months.period_at(local("Europe/Berlin", "2032-03-15T00:00")).map(|span| span.start_micros),
        Ok(local("Europe/Berlin", "2032-02-29T00:00"))
    );

    let calendar_months = schedule(Period::Month, "Europe/Berlin", None);
    let leap = calendar_months.period_at(local("Europe/Berlin", "2028-02-15T00:00")).expect("in range");
    assert_eq!(leap.start_micros, local("Europe/Berlin", "2028-02-01T00:00"));
    assert_eq!(leap.end_micros - leap.start_micros, 29 * DAY_MICROS);
    let common = calendar_months.period_at(local("Europe/Berlin", "2027-02-15T00:00")).expect("in range");
    assert_eq!(common.end_micros - common.start_micros, 28 * DAY_MICROS);
}

#[test]
fn weeks_anchored_on_a_wednesday_at_0930_keep_it_across_dst_changes() {
    let anchor = local("America/New_York", "2026-10-21T09:30");
    assert_eq!(civil_at("America/New_York", anchor).weekday(), Weekday::Wednesday);
    let weeks = schedule(Period::Week, "America/New_York", Some(anchor));

    let spans = periods(&weeks, anchor, 30);
    for span in &spans {
        let start = civil_at("America/New_York", span.start_micros);
        assert_eq!(start.weekday(), Weekday::Wednesday, "{start}");
        assert_eq!(start.time(), jiff::civil::time(9, 30, 0, 0), "{start}");
    }
    // Fall back on 2026-11-01 lengthens that week by an hour; spring forward on 2027-03-14
    // shortens its week by one.
    assert_eq!(spans[1].start_micros, local("America/New_York", "2026-10-28T09:30"));
    assert_eq!(spans[1].end_micros - spans[1].start_micros, 169 * HOUR_MICROS);
    assert_eq!(spans[2].end_micros - spans[2].start_micros, 168 * HOUR_MICROS);
    assert_eq!(spans[20].start_micros, local("America/New_York", "2027-03-10T09:30"));
    assert_eq!(spans[20].end_micros - spans[20].start_micros, 167 * HOUR_MICROS);

    // Without an anchor a week starts on Monday at 00:00.
    let default = schedule(Period::Week, "Asia/Seoul", None);
    let week = default.period_at(utc("2026-12-02T03:00:00Z")).expect("in range");
    assert_eq!(civil_at("Asia/Seoul", week.start_micros).to_string(), "2026-11-30T00:00:00");
    assert_eq!(civil_at("Asia/Seoul", week.end_micros).to_string(), "2026-12-07T00:00:00");
}

#[test]
fn a_start_in_a_dst_gap_moves_forward_and_one_in_a_fold_takes_the_earlier_instant() {
    // Chile springs forward at midnight: 2026-09-06T00:00 does not exist in Santiago.
    let santiago = zone("America/Santiago");
    let missing: DateTime = "2026-09-06T00:00".parse().expect("civil");
    assert!(matches!(santiago.to_ambiguous_timestamp(missing).offset(), jiff::tz::AmbiguousOffset::Gap { .. }));
    let days = schedule(Period::Day, "America/Santiago", None);
    let gap_day = days.period_at(local("America/Santiago", "2026-09-06T12:00")).expect("in range");
    assert_eq!(civil_at("America/Santiago", gap_day.start_micros).to_string(), "2026-09-06T01:00:00");
    assert_eq!(gap_day.start_micros, local("America/Santiago", "2026-09-06T01:00"));
    let before = days.period_at(gap_day.start_micros - 1).expect("in range");
    assert_eq!(before.end_micros, gap_day.start_micros);
    assert_eq!(before.end_micros - before.start_micros, 24 * HOUR_MICROS);
    assert_eq!(gap_day.end_micros - gap_day.start_micros, 23 * HOUR_MICROS);

    // A day anchored at 02:30 starts at 03:30 EDT on 2026-03-08, so 03:15 EDT that morning
    // still belongs to the day before.
    let anchor = local("America/New_York", "2026-03-01T02:30");
    let days = schedule(Period::Day, "America/New_York", Some(anchor));
    let late_start = local("America/New_York", "2026-03-08T03:30");
    assert_eq!(
        days.period_at(local("America/New_York", "2026-03-08T03:15")),
        Ok(Span { start_micros: local("America/New_York", "2026-03-07T02:30"), end_micros: late_start })
    );
    assert_eq!(days.period_at(late_start).map(|span| span.start_micros), Ok(late_start));

    // 01:30 happens twice in New York on 2026-11-01; the day starts at the first (EDT).
    let anchor = local("America/New_York", "2026-10-01T01:30");
    let days = schedule(Period::Day, "America/New_York", Some(anchor));
    let fold_day = days.period_at(utc("2026-11-01T12:00:00Z")).expect("in range");
    assert_eq!(fold_day.start_micros, utc("2026-11-01T05:30:00Z"));
    assert_eq!(fold_day.end_micros, utc("2026-11-02T06:30:00Z"));
}

#[test]
fn a_day_a_zone_skipped_has_no_period() {
    // Samoa moved across the date line: 2011-12-30 never happened in Pacific/Apia.
    let days = schedule(Period::Day, "Pacific/Apia", None);
    let new_year_eve = days.period_at(local("Pacific/Apia", "2011-12-31T12:00")).expect("in range");
    assert_eq!(new_year_eve.start_micros, local("Pacific/Apia", "2011-12-31T00:00"));
    let before = days.period_at(new_year_eve.start_micros - 1).expect("in range");
    assert_eq!(before.start_micros, local("Pacific/Apia", "2011-12-29T00:00"));
    assert_eq!(before.end_micros, new_year_eve.start_micros);
    assert_eq!(days.next(before), Ok(new_year_eve));
}

#[test]
fn periods_parse_from_their_wire_names_only() {
    for period in Period::ALL {
        assert_eq!(Period::parse(period.as_str()), Ok(period));
    }
    for text in ["Day", "days", "", "year", " day"] {
        let error = Period::parse(text).expect_err("not a period");
        assert_eq!(error.code(), "unknown_period");
        assert!(error.to_string().contains(&format!("{text:?}")), "{error}");
    }
}

#[test]
fn time_zones_are_iana_names_matched_without_case() {
    let seoul = schedule(Period::Day, "asia/SEOUL", None);
    assert_eq!(seoul.time_zone_name(), "Asia/Seoul");
    assert_eq!(seoul.period(), Period::Day);

    let long = "Europe/".repeat(40);
    for name in ["Mars/Olympus_Mons", "", "Etc/Unknown", "+09:00", "KST", long.as_str()] {
        let error = Schedule::new(Period::Day, name, None).expect_err("not an IANA zone");
        assert_eq!(error.code(), "unknown_time_zone", "{name}");
        let shown = &name[..name.len().min(calendar::TEXT_BYTES_MAX)];
        assert!(error.to_string().contains(shown), "{error}");
        assert!(error.to_string().len() < 200, "{error}");
    }
    assert!(Schedule::new(Period::Day, "Mars/Olympus_Mons", None)
        .expect_err("unknown")
        .to_string()
        .starts_with("unknown time zone \"Mars/Olympus_Mons\""));
}

#[test]
fn instants_and_anchors_outside_the_range_are_errors() {
    assert_eq!(INSTANT_MICROS_MIN, utc("1970-01-01T00:00:00Z"));
    assert_eq!(INSTANT_MICROS_MAX + 1, utc("9999-01-01T00:00:00Z"));

    for micros in [INSTANT_MICROS_MIN - 1, INSTANT_MICROS_MAX + 1, i64::MIN, i64::MAX] {
        assert_eq!(
            Schedule::new(Period::Month, "UTC", Some(micros)).map(|_| ()),
            Err(CalendarError::AnchorOutOfRange { micros })
        );
        let days = schedule(Period::Day, "UTC", None);
        let error = days.period_at(micros).expect_err("out of range");
        assert_eq!(error, CalendarError::InstantOutOfRange { micros });
        assert_eq!(error.code(), "instant_out_of_range");
    }

    // The edges themselves work in zones at both extremes of the offsets, and the period after
    // the last one is an error, not a panic.
    for zone_name in ["Pacific/Kiritimati", "Pacific/Niue", "UTC", "America/Santiago"] {
        for period in Period::ALL {
            for anchor in [None, Some(INSTANT_MICROS_MIN), Some(INSTANT_MICROS_MAX)] {
                let schedule = schedule(period, zone_name, anchor);
                let first = schedule.period_at(INSTANT_MICROS_MIN).expect("the minimum is in range");
                assert!(first.contains(INSTANT_MICROS_MIN));
                let last = schedule.period_at(INSTANT_MICROS_MAX).expect("the maximum is in range");
                assert!(last.contains(INSTANT_MICROS_MAX));
                assert_eq!(schedule.next(last), Err(CalendarError::InstantOutOfRange { micros: last.end_micros }));
            }
        }
    }
}

/// A period's start is named in the zone's local time with its offset, as grant references
/// show it.
#[test]
fn local_rfc3339_shows_the_zones_offset() {
    let seoul = Schedule::new(Period::Day, "Asia/Seoul", None).expect("valid");
    let span = seoul.period_at(utc("2026-12-01T15:00:00Z")).expect("in range");
    assert_eq!(seoul.local_rfc3339(span.start_micros).expect("in range"), "2026-12-02T00:00:00+09:00");
    let new_york = Schedule::new(Period::Day, "America/New_York", None).expect("valid");
    assert_eq!(
        new_york.local_rfc3339(utc("2026-07-01T04:00:00.25Z")).expect("in range"),
        "2026-07-01T00:00:00.25-04:00"
    );
    assert!(new_york.local_rfc3339(-1).is_err());
}
