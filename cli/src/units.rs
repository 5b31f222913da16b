//! Parsing and printing of the units the CLI speaks: durations (`30s`, `5m`, `1h30m`),
//! points in time (RFC 3339 or Unix milliseconds), byte counts and hex digests.
//!
//! Pure functions with no I/O; the calendar arithmetic is the proleptic Gregorian calendar
//! in UTC (no time zone database: an RFC 3339 time carries its own offset).

/// Milliseconds per unit suffix a duration may use.
const DURATION_UNITS_MS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h` or `1h30m` into milliseconds.
/// Every number needs a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let usage = || format!("{s:?} is not a duration; use a number with a unit, e.g. 500ms, 30s, 5m, 1h or 1h30m");
    let s = s.trim();
    if s.is_empty() {
        return Err(usage());
    }
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(usage());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| usage())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let per = DURATION_UNITS_MS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, ms)| *ms)
            .ok_or_else(usage)?;
        total = n
            .checked_mul(per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long a duration"))?;
    }
    Ok(total)
}

/// Prints milliseconds the way [`parse_duration_ms`] reads them, largest units first
/// (`1h30m`, `45s`, `250ms`, `0s`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, per) in DURATION_UNITS_MS.iter().rev() {
        if *per < 1_000 {
            break;
        }
        let n = rest / per;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            rest -= n * per;
        }
    }
    if rest > 0 && ms < 60_000 {
        // Sub-second detail only matters for short durations.
        out = format!("{:.1}s", ms as f64 / 1_000.0);
    }
    out
}

/// Parses a point in time: an RFC 3339 timestamp (`2026-11-25T10:00:00Z`,
/// `2026-11-25T11:00:00.250+01:00`) or Unix milliseconds (`1795600800000`), into Unix
/// milliseconds.
pub fn parse_time_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s:?} is too large for Unix milliseconds"));
    }
    parse_rfc3339_ms(s)
        .ok_or_else(|| format!("{s:?} is not a time; use RFC 3339 (e.g. 2026-11-25T10:00:00Z) or Unix milliseconds"))
}

fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year as i64, month) {
        return None;
    }
    // 60 is a leap second: it is counted as the last second of the minute.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis: u64 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in b[at..at + digits].iter().take(3).enumerate() {
            millis += u64::from(c - b'0') * 10u64.pow(2 - i as u32);
        }
        at += digits;
    }
    let offset_minutes: i64 = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = i64::from(oh * 60 + om);
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second.min(59))
        - offset_minutes * 60;
    let ms = secs.checked_mul(1_000)?.checked_add(millis as i64)?;
    u64::try_from(ms).ok()
}

/// Prints Unix milliseconds as an RFC 3339 UTC timestamp with second precision.
pub fn format_time_ms(ms: u64) -> String {
    let secs = (ms / 1_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        (rem % 3_600) / 60,
        rem % 60
    )
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A byte count for humans, in IEC units (`512 B`, `1.5 MiB`).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Lower-case hex of bytes: the SDK's, so a digest the CLI prints is spelled as the SDK
/// reports it.
pub use ark_client::objects::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_compounds() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms(" 0s "), Ok(0));
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        for bad in ["", "30", "s", "5 m", "1.5s", "-1s", "10x", "1h30", "m5"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_duration_ms("99999999999999999999d").is_err());
        assert!(
            parse_duration_ms("9999999999999999d").is_err(),
            "overflow must be caught"
        );
    }

    #[test]
    fn durations_print_back_parseably() {
        for ms in [0, 250, 30_000, 300_000, 3_600_000, 5_400_000, 90_061_000] {
            let s = format_duration_ms(ms);
            assert_eq!(parse_duration_ms(&s), Ok(ms), "{ms} printed as {s}");
        }
        assert_eq!(format_duration_ms(1_500), "1.5s");
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_ms() {
        // date -u -d 2026-11-25T10:00:00Z +%s => 1795600800
        assert_eq!(parse_time_ms("2026-11-25T10:00:00Z"), Ok(1_795_600_800_000));
        assert_eq!(parse_time_ms("2026-11-25t10:00:00z"), Ok(1_795_600_800_000));
        assert_eq!(parse_time_ms("2026-11-25 10:00:00Z"), Ok(1_795_600_800_000));
        assert_eq!(parse_time_ms("2026-11-25T11:00:00+01:00"), Ok(1_795_600_800_000));
        assert_eq!(parse_time_ms("2026-11-25T05:30:00-04:30"), Ok(1_795_600_800_000));
        assert_eq!(parse_time_ms("2026-11-25T10:00:00.25Z"), Ok(1_795_600_800_250));
        assert_eq!(parse_time_ms("2026-11-25T10:00:00.123456Z"), Ok(1_795_600_800_123));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert_eq!(parse_time_ms("1795600800000"), Ok(1_795_600_800_000));
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-11-25T10:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:00.Z",
            "2026-11-25T10:00:00+0100",
            "2026-11-25T10:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "-5",
            "99999999999999999999999",
        ] {
            assert!(parse_time_ms(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn times_print_as_rfc3339_utc_and_round_trip() {
        assert_eq!(format_time_ms(1_795_600_800_999), "2026-11-25T10:00:00Z");
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00Z");
        for ms in [0u64, 951_782_400_000, 1_709_164_800_000, 4_102_444_800_000] {
            assert_eq!(parse_time_ms(&format_time_ms(ms)), Ok(ms));
        }
    }

    #[test]
    fn bytes_and_hex_print() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
