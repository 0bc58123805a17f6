//! Calendar arithmetic for payload timestamps and `Retry-After` headers (UTC only, from 1970 on).

const MS_PER_DAY: u64 = 86_400_000;
const SECS_PER_DAY: u64 = 86_400;
/// Any 400 consecutive Gregorian years hold exactly this many days (97 of them leap years).
const DAYS_PER_400_YEARS: u64 = 146_097;
/// Longest delay a `Retry-After` may ask for; anything beyond is taken as this.
const MAX_RETRY_AFTER_MS: u64 = 30 * MS_PER_DAY;
/// Two-digit RFC 850 years below this are 20xx, the rest 19xx.
const TWO_DIGIT_YEAR_PIVOT: u64 = 70;

const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A Unix time in milliseconds as RFC 3339 UTC with milliseconds: `2026-11-27T10:00:00.123Z`.
pub fn format_rfc3339_millis(unix_ms: u64) -> String {
    let (year, month, day) = civil_from_days(unix_ms / MS_PER_DAY);
    let ms_of_day = unix_ms % MS_PER_DAY;
    let secs = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1000
    )
}

/// An RFC 3339 date-time (`2026-11-27T10:00:00Z`, `2026-11-27T11:00:00.5+01:00`) as Unix
/// milliseconds; fractions beyond milliseconds are cut. `T`/`Z` may be lower case, as RFC 3339
/// allows; a time before 1970 reads as 0. `Err` says what is wrong, for an API answer.
pub fn parse_rfc3339_millis(s: &str) -> Result<u64, &'static str> {
    const SHAPE: &str = "must be an RFC 3339 date-time such as 2026-11-27T10:00:00Z";
    let (date, rest) = s.split_at_checked(10).ok_or(SHAPE)?;
    let rest = rest.strip_prefix(['T', 't']).ok_or(SHAPE)?;
    let mut ymd = date.split('-');
    let mut part = |n| ymd.next().and_then(|p| digits(p, n, n)).ok_or(SHAPE);
    let (year, month, day) = (part(4)?, part(2)?, part(2)?);
    let (clock, rest) = rest.split_at_checked(8).ok_or(SHAPE)?;
    let secs = clock_secs(clock).ok_or(SHAPE)?;
    let (fraction, offset) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after.find(|c: char| !c.is_ascii_digit()).ok_or(SHAPE)?;
            after.split_at_checked(end).ok_or(SHAPE)?
        }
        None => ("", rest),
    };
    if rest.starts_with('.') && fraction.is_empty() {
        return Err(SHAPE);
    }
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |n, b| n * 10 + u64::from(b - b'0'));
    let offset_secs: i64 = match offset {
        "Z" | "z" => 0,
        _ => {
            let sign = match offset.get(..1) {
                Some("+") => 1,
                Some("-") => -1,
                _ => return Err(SHAPE),
            };
            let hm = offset.get(1..).ok_or(SHAPE)?;
            let (h, m) = hm.split_once(':').ok_or(SHAPE)?;
            let (h, m) = (digits(h, 2, 2).ok_or(SHAPE)?, digits(m, 2, 2).ok_or(SHAPE)?);
            if h > 23 || m > 59 {
                return Err(SHAPE);
            }
            sign * i64::try_from(h * 3600 + m * 60).map_err(|_| SHAPE)?
        }
    };
    let days = month_length(year, month).ok_or("must be a valid date")?;
    if day == 0 || day > days {
        return Err("must be a valid date");
    }
    // Before the epoch is before anything the plugin saw: the epoch itself.
    let Some(local) = unix_secs(year, month, day, secs) else {
        return Ok(0);
    };
    let utc = i64::try_from(local).map_err(|_| SHAPE)? - offset_secs;
    let Ok(utc) = u64::try_from(utc) else {
        return Ok(0);
    };
    Ok(utc.saturating_mul(1000).saturating_add(millis))
}

/// An HTTP date as Unix seconds. Accepts IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the
/// obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`)
/// forms that HTTP recipients must still understand. Dates before 1970 are `None`.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut tokens = s.split_ascii_whitespace();
    let first = tokens.next()?;
    let parsed = match first.strip_suffix(',') {
        Some(weekday) if is_word(weekday) => {
            let date = tokens.next()?;
            if date.contains('-') {
                parse_rfc850(date, &mut tokens)
            } else {
                parse_imf_fixdate(date, &mut tokens)
            }
        }
        Some(_) => None,
        None if is_word(first) => parse_asctime(&mut tokens),
        None => None,
    };
    // Trailing garbage means the value is not a date at all.
    parsed.filter(|_| tokens.next().is_none())
}

/// The delay a `Retry-After` value asks for, in ms from `now_unix_ms`: delta seconds or an HTTP
/// date. `None` when unparseable; a date in the past gives `Some(0)`; capped at 30 days.
pub fn parse_retry_after(value: &str, now_unix_ms: u64) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only overflow can fail here, and a number that large is simply "very long".
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(secs.saturating_mul(1000).min(MAX_RETRY_AFTER_MS));
    }
    let at_ms = parse_http_date(value)?.saturating_mul(1000);
    Some(at_ms.saturating_sub(now_unix_ms).min(MAX_RETRY_AFTER_MS))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, after the weekday.
fn parse_imf_fixdate<'a>(day: &str, rest: &mut impl Iterator<Item = &'a str>) -> Option<u64> {
    let day = digits(day, 2, 2)?;
    let month = month_number(rest.next()?)?;
    let year = digits(rest.next()?, 4, 4)?;
    let clock = clock_secs(rest.next()?)?;
    expect_gmt(rest.next()?)?;
    unix_secs(year, month, day, clock)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`, after the weekday.
fn parse_rfc850<'a>(date: &str, rest: &mut impl Iterator<Item = &'a str>) -> Option<u64> {
    let mut parts = date.split('-');
    let day = digits(parts.next()?, 2, 2)?;
    let month = month_number(parts.next()?)?;
    let short_year = digits(parts.next()?, 2, 2)?;
    if parts.next().is_some() {
        return None;
    }
    let century = if short_year < TWO_DIGIT_YEAR_PIVOT {
        2000
    } else {
        1900
    };
    let clock = clock_secs(rest.next()?)?;
    expect_gmt(rest.next()?)?;
    unix_secs(century + short_year, month, day, clock)
}

/// `Sun Nov  6 08:49:37 1994`, after the weekday.
fn parse_asctime<'a>(rest: &mut impl Iterator<Item = &'a str>) -> Option<u64> {
    let month = month_number(rest.next()?)?;
    let day = digits(rest.next()?, 1, 2)?;
    let clock = clock_secs(rest.next()?)?;
    let year = digits(rest.next()?, 4, 4)?;
    unix_secs(year, month, day, clock)
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic())
}

fn expect_gmt(s: &str) -> Option<()> {
    (s == "GMT").then_some(())
}

/// A decimal number written with `min..=max` digits and nothing else.
fn digits(s: &str, min: usize, max: usize) -> Option<u64> {
    let ok = (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.bytes().fold(0, |n, b| n * 10 + u64::from(b - b'0')))
}

/// `Jan`..`Dec` (any case) → 1..=12.
fn month_number(s: &str) -> Option<u64> {
    let index = MONTH_NAMES.iter().position(|m| m.eq_ignore_ascii_case(s))?;
    Some(index as u64 + 1)
}

/// `HH:MM:SS` → seconds into the day. A leap second (`:60`) is accepted.
fn clock_secs(s: &str) -> Option<u64> {
    let mut parts = s.split(':');
    let hour = digits(parts.next()?, 2, 2)?;
    let minute = digits(parts.next()?, 2, 2)?;
    let second = digits(parts.next()?, 2, 2)?;
    let valid = parts.next().is_none() && hour < 24 && minute < 60 && second <= 60;
    valid.then_some(hour * 3600 + minute * 60 + second)
}

/// Seconds since the epoch of a validated civil date and time of day.
fn unix_secs(year: u64, month: u64, day: u64, secs_of_day: u64) -> Option<u64> {
    if year < 1970 || day == 0 || day > month_length(year, month)? {
        return None;
    }
    let days_in_year: u64 = (1..month).filter_map(|m| month_length(year, m)).sum();
    let days = days_before_year(year) + days_in_year + day - 1;
    Some(days * SECS_PER_DAY + secs_of_day)
}

fn is_leap_year(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1..=12) of `year`; `None` for a month out of range.
fn month_length(year: u64, month: u64) -> Option<u64> {
    match month {
        2 if is_leap_year(year) => Some(29),
        2 => Some(28),
        4 | 6 | 9 | 11 => Some(30),
        1..=12 => Some(31),
        _ => None,
    }
}

/// Leap years among the years 1..=`year`.
fn leap_years_through(year: u64) -> u64 {
    year / 4 - year / 100 + year / 400
}

/// Days from 1970-01-01 to January 1st of `year` (which is at least 1970).
fn days_before_year(year: u64) -> u64 {
    365 * (year - 1970) + leap_years_through(year - 1) - leap_years_through(1969)
}

/// (year, month, day) of the day `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // The mean year length gives a guess within a year of the truth; the loops settle it.
    let mut year = 1970 + days * 400 / DAYS_PER_400_YEARS;
    while days_before_year(year) > days {
        year -= 1;
    }
    while days_before_year(year + 1) <= days {
        year += 1;
    }
    let mut day_of_year = days - days_before_year(year);
    let mut month = 1;
    while let Some(length) = month_length(year, month).filter(|&l| day_of_year >= l) {
        day_of_year -= length;
        month += 1;
    }
    (year, month, day_of_year + 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_reads_offsets_fractions_and_refuses_the_rest() {
        use super::{format_rfc3339_millis, parse_rfc3339_millis as parse};
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0));
        let ms = parse("2026-11-27T10:00:00.123Z").unwrap();
        assert_eq!(format_rfc3339_millis(ms), "2026-11-27T10:00:00.123Z");
        assert_eq!(parse("2026-11-27T11:00:00.1239+01:00"), Ok(ms));
        assert_eq!(parse("2026-11-27T10:00:00.1Z"), Ok(ms - 23));
        assert_eq!(parse("2026-11-27t08:30:00.123-01:30"), Ok(ms));
        assert_eq!(parse("2026-11-27t10:00:00.123z"), Ok(ms));
        assert_eq!(parse("1969-12-31T23:59:59Z"), Ok(0));
        assert_eq!(parse("0000-02-29T00:00:00Z"), Ok(0));
        assert_eq!(parse("1970-01-01T00:00:00+00:01"), Ok(0));
        for bad in [
            "",
            "2026-11-27",
            "2026-11-27 10:00:00Z",
            "2026-11-27T10:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:00:00.Z",
            "2026-11-27T10:00:00+0100",
            "2026-11-27T10:00:00+24:00",
            "2026-11-27T10:00:00Zjunk",
            "２026-11-27T10:00:00Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    const DAY: u64 = SECS_PER_DAY;

    fn date(s: &str) -> u64 {
        parse_http_date(s).unwrap()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_millis(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(
            format_rfc3339_millis(1_614_265_330_000),
            "2021-02-25T15:02:10.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(1_795_773_600_123),
            "2026-11-27T10:00:00.123Z"
        );
        assert_eq!(
            format_rfc3339_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_millis(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn far_future_does_not_overflow() {
        assert!(format_rfc3339_millis(u64::MAX).ends_with(".615Z"));
    }

    #[test]
    fn formats_year_boundaries() {
        assert_eq!(
            format_rfc3339_millis(946_684_799_999),
            "1999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339_millis(946_684_800_000),
            "2000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(1_704_067_199_000),
            "2023-12-31T23:59:59.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(1_735_603_200_000),
            "2024-12-31T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_millis(1_735_689_600_000),
            "2025-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn leap_years() {
        assert!(is_leap_year(2000) && is_leap_year(2024) && is_leap_year(2400));
        assert!(!is_leap_year(1900) && !is_leap_year(2100) && !is_leap_year(2023));
        assert_eq!(civil_from_days(days_before_year(2024) + 59), (2024, 2, 29));
        assert_eq!(civil_from_days(days_before_year(2023) + 59), (2023, 3, 1));
        assert_eq!(civil_from_days(days_before_year(2100) + 59), (2100, 3, 1));
        assert_eq!(
            civil_from_days(days_before_year(2000) + 365),
            (2000, 12, 31)
        );
    }

    #[test]
    fn every_day_round_trips() {
        // Consecutive days over several 400-year cycles map to consecutive civil dates.
        let mut previous = civil_from_days(0);
        assert_eq!(previous, (1970, 1, 1));
        for days in 1..(3 * DAYS_PER_400_YEARS) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(unix_secs(y, m, d, 0), Some(days * DAY), "{y}-{m}-{d}");
            let (py, pm, pd) = previous;
            let next_of_previous = (d == pd + 1 && m == pm && y == py)
                || (d == 1 && m == pm + 1 && y == py)
                || (d == 1 && m == 1 && pm == 12 && y == py + 1);
            assert!(next_of_previous, "{previous:?} -> {:?}", (y, m, d));
            previous = (y, m, d);
        }
    }

    #[test]
    fn parses_the_three_http_date_forms() {
        let expected = 784_111_777;
        assert_eq!(date("Sun, 06 Nov 1994 08:49:37 GMT"), expected);
        assert_eq!(date("Sunday, 06-Nov-94 08:49:37 GMT"), expected);
        assert_eq!(date("Sun Nov  6 08:49:37 1994"), expected);
        assert_eq!(date("  Sun, 06 Nov 1994 08:49:37 GMT "), expected);
        assert_eq!(date("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
        assert_eq!(date("Thursday, 01-Jan-70 00:00:00 GMT"), 0);
        assert_eq!(date("Friday, 27-Nov-26 10:00:00 GMT"), 1_795_773_600);
        assert_eq!(date("Wed, 29 Feb 2024 12:00:00 GMT"), 1_709_208_000);
        assert_eq!(date("Fri, 31 Dec 2100 23:59:59 GMT"), 4_133_980_799);
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Thu, 29 Feb 2100 00:00:00 GMT",
            "Thu, 31 Apr 2026 00:00:00 GMT",
            "Thu, 00 Apr 2026 00:00:00 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sunday, 06-Nov-94-1 08:49:37 GMT",
            "Sun Nov 6 08:49:37",
            "Sun Nov 106 08:49:37 1994",
            "1, 06 Nov 1994 08:49:37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "120",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_and_format_agree() {
        for secs in [0, 784_111_777, 951_782_400, 1_614_265_330, 4_107_542_399] {
            let text = format_rfc3339_millis(secs * 1000);
            let (y, rest) = text.split_once('-').unwrap();
            let (m, rest) = rest.split_once('-').unwrap();
            let d = &rest[..2];
            let hms = &rest[3..11];
            let month = MONTH_NAMES[m.parse::<usize>().unwrap() - 1];
            let http = format!("Xxx, {d} {month} {y} {hms} GMT");
            assert_eq!(parse_http_date(&http), Some(secs), "{http}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("120", 5), Some(120_000));
        assert_eq!(parse_retry_after(" 0 ", 5), Some(0));
        assert_eq!(
            parse_retry_after("99999999999", 0),
            Some(MAX_RETRY_AFTER_MS)
        );
        assert_eq!(
            parse_retry_after("999999999999999999999999", 0),
            Some(MAX_RETRY_AFTER_MS)
        );
        assert_eq!(parse_retry_after("2592000", 0), Some(MAX_RETRY_AFTER_MS));
    }

    #[test]
    fn retry_after_dates() {
        let now = 784_111_777_000;
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(60_000)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 500),
            Some(0)
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 2100 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER_MS)
        );
    }

    #[test]
    fn retry_after_rejects_garbage() {
        for bad in ["", "  ", "-5", "1.5", "soon", "12 s", "+3"] {
            assert_eq!(parse_retry_after(bad, 0), None, "{bad}");
        }
    }
}
