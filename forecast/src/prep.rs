//! Pure preparation of telemetry series: timestamp parsing, resampling to a fixed step, gap
//! filling, normalisation fitted on a training part, windowing and time-of-day features.
//!
//! Everything here is free of I/O and of randomness so it can be unit-tested exactly; it
//! must not read files (that is `data`) nor know about models (that is `load`/`failure`).

use crate::error::{ForecastError, Result};

/// Seconds in a day, the period of the time-of-day features and of the seasonal baseline.
pub const DAY_S: i64 = 86_400;

/// Upper bound on the number of grid points [`resample`] will allocate, so that one bogus
/// timestamp far in the future cannot exhaust memory.
pub const RESAMPLE_POINTS_MAX: usize = 50_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_uint(s: &str, raw: &str) -> Result<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ForecastError::Timestamp(raw.to_string()));
    }
    s.parse::<i64>().map_err(|_| ForecastError::Timestamp(raw.to_string()))
}

/// Parses a timestamp into seconds since the Unix epoch (UTC).
///
/// Accepts `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS[.fff]` (a `T` may replace
/// the space, a trailing `Z` is ignored) and plain epoch seconds.
pub fn parse_timestamp(raw: &str) -> Result<i64> {
    let s = raw.trim().trim_end_matches('Z');
    let err = || ForecastError::Timestamp(raw.to_string());
    if !s.contains('-') || s.starts_with('-') {
        // Epoch seconds, possibly fractional or negative.
        let v: f64 = s.parse().map_err(|_| err())?;
        if !v.is_finite() {
            return Err(err());
        }
        return Ok(v.floor() as i64);
    }
    let (date, time) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], Some(s[i + 1..].trim())),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(err());
    };
    let (y, m, d) = (parse_uint(y, raw)?, parse_uint(m, raw)?, parse_uint(d, raw)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(err());
    }
    let mut secs = days_from_civil(y, m, d) * DAY_S;
    if let Some(time) = time.filter(|t| !t.is_empty()) {
        let mut hms = time.split(':');
        let h = parse_uint(hms.next().unwrap_or(""), raw)?;
        let mi = parse_uint(hms.next().unwrap_or(""), raw)?;
        let sec = match hms.next() {
            Some(sec) => {
                let whole = sec.split('.').next().unwrap_or("");
                parse_uint(whole, raw)?
            }
            None => 0,
        };
        if hms.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return Err(err());
        }
        secs += h * 3600 + mi * 60 + sec;
    }
    Ok(secs)
}

/// Day number (days since the Unix epoch) of a date or timestamp cell.
pub fn parse_day(raw: &str) -> Result<i64> {
    Ok(parse_timestamp(raw)?.div_euclid(DAY_S))
}

/// Formats a day number as `YYYY-MM-DD` (inverse of [`parse_day`]).
pub fn format_day(day: i64) -> String {
    // Inverse of days_from_civil (Hinnant's civil_from_days).
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The typical sampling step of a series: the median of the positive differences between
/// consecutive sorted timestamps.
pub fn infer_step_s(timestamps_s: &[i64]) -> Result<i64> {
    let mut ts = timestamps_s.to_vec();
    ts.sort_unstable();
    let mut diffs: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).collect();
    if diffs.is_empty() {
        return Err(ForecastError::NotEnoughData(
            "need at least two distinct timestamps to infer the sampling step".into(),
        ));
    }
    diffs.sort_unstable();
    Ok(diffs[diffs.len() / 2])
}

/// A series on a regular grid: point `i` stands for time `start_s + i * step_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resampled {
    /// Time of the first grid point, seconds since the epoch.
    pub start_s: i64,
    /// Grid step in seconds.
    pub step_s: i64,
    /// Mean of the samples nearest to each grid point; `None` where there were none.
    pub values: Vec<Option<f64>>,
}

impl Resampled {
    /// Time of grid point `i`, seconds since the epoch.
    pub fn time_s(&self, i: usize) -> i64 {
        self.start_s + i as i64 * self.step_s
    }
}

/// Resamples `(timestamp_s, value)` samples onto a grid of `step_s` starting at the earliest
/// timestamp. Each sample goes to its nearest grid point; several samples on one point are
/// averaged; non-finite values count as missing.
pub fn resample(points: &[(i64, f64)], step_s: i64) -> Result<Resampled> {
    if step_s <= 0 {
        return Err(ForecastError::InvalidArgument(format!(
            "resampling step must be positive, got {step_s} s"
        )));
    }
    let Some(start_s) = points.iter().map(|p| p.0).min() else {
        return Err(ForecastError::NotEnoughData("no samples to resample".into()));
    };
    let end_s = points.iter().map(|p| p.0).max().unwrap_or(start_s);
    let len = ((end_s - start_s + step_s / 2) / step_s) as u64 + 1;
    if len > RESAMPLE_POINTS_MAX as u64 {
        return Err(ForecastError::InvalidArgument(format!(
            "series spans {len} steps of {step_s} s, more than the limit of {RESAMPLE_POINTS_MAX}; check the timestamps"
        )));
    }
    let len = len as usize;
    let mut sums = vec![0.0f64; len];
    let mut counts = vec![0u32; len];
    for &(t, v) in points {
        if !v.is_finite() {
            continue;
        }
        let i = ((t - start_s + step_s / 2) / step_s) as usize;
        if i < len {
            sums[i] += v;
            counts[i] += 1;
        }
    }
    let values = sums
        .into_iter()
        .zip(counts)
        .map(|(s, c)| (c > 0).then(|| s / f64::from(c)))
        .collect();
    Ok(Resampled {
        start_s,
        step_s,
        values,
    })
}

/// Fills missing points by linear interpolation between the nearest known neighbours;
/// leading and trailing gaps take the nearest known value.
pub fn fill_gaps(values: &[Option<f64>]) -> Result<Vec<f64>> {
    let known: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.filter(|x| x.is_finite()).map(|x| (i, x)))
        .collect();
    let (Some(&(first_i, first_v)), Some(&(last_i, last_v))) = (known.first(), known.last()) else {
        return Err(ForecastError::NotEnoughData(
            "series has no finite value to fill gaps from".into(),
        ));
    };
    let mut out = vec![0.0; values.len()];
    out[..=first_i].fill(first_v);
    out[last_i..].fill(last_v);
    for pair in known.windows(2) {
        let ((i0, v0), (i1, v1)) = (pair[0], pair[1]);
        for (k, slot) in out[i0..=i1].iter_mut().enumerate() {
            *slot = v0 + (v1 - v0) * k as f64 / (i1 - i0) as f64;
        }
    }
    Ok(out)
}

/// Mean/standard-deviation normalisation whose statistics come from a training part only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normaliser {
    /// Mean of the training values.
    pub mean: f64,
    /// Standard deviation of the training values (1 if they were constant).
    pub std: f64,
}

impl Normaliser {
    /// Fits on `train` (which must not contain test data).
    pub fn fit(train: &[f64]) -> Result<Self> {
        let finite: Vec<f64> = train.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return Err(ForecastError::NotEnoughData(
                "cannot fit a normaliser on no finite values".into(),
            ));
        }
        let n = finite.len() as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let std = var.sqrt();
        // A constant training part would divide by zero; keep the scale of the data instead.
        let std = if std > 1e-12 * mean.abs().max(1.0) { std } else { 1.0 };
        Ok(Self { mean, std })
    }

    /// Maps a raw value to normalised units.
    pub fn apply(&self, x: f64) -> f64 {
        (x - self.mean) / self.std
    }

    /// Maps a normalised value back to raw units.
    pub fn invert(&self, z: f64) -> f64 {
        z * self.std + self.mean
    }
}

/// One training or evaluation example cut from a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window<'a> {
    /// Index of the last observed point (the forecast origin).
    pub origin: usize,
    /// The `window` points ending at `origin`, oldest first.
    pub past: &'a [f64],
    /// The `horizon` points after `origin`.
    pub future: &'a [f64],
}

/// All windows of `window` past points and `horizon` future points, by increasing origin.
pub fn windows(series: &[f64], window: usize, horizon: usize) -> impl Iterator<Item = Window<'_>> {
    let first = window.max(1) - 1;
    let end = series.len().saturating_sub(horizon);
    (first..end).map(move |origin| Window {
        origin,
        past: &series[origin + 1 - window.max(1)..=origin],
        future: &series[origin + 1..origin + 1 + horizon],
    })
}

/// A series ready for forecasting: gap-free values on a regular grid, and which grid points
/// were observed (the others were interpolated and are never scored).
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Time of `values[0]`, seconds since the epoch.
    pub start_s: i64,
    /// Grid step (the median sampling step), seconds.
    pub step_s: i64,
    /// Gap-free values.
    pub values: Vec<f64>,
    /// Whether each grid point had a sample.
    pub observed: Vec<bool>,
}

/// Resamples `(timestamp_s, value)` samples to their median step and fills the gaps.
pub fn prepare(points: &[(i64, f64)]) -> Result<Prepared> {
    let step_s = infer_step_s(&points.iter().map(|p| p.0).collect::<Vec<_>>())?;
    let grid = resample(points, step_s)?;
    let observed = grid.values.iter().map(Option::is_some).collect();
    let values = fill_gaps(&grid.values)?;
    Ok(Prepared {
        start_s: grid.start_s,
        step_s,
        values,
        observed,
    })
}

/// Time-of-day encoded as `[sin, cos]` of the angle of the day elapsed at `time_s` (UTC),
/// so that 23:59 and 00:00 are neighbours.
pub fn time_of_day(time_s: i64) -> [f64; 2] {
    let angle = std::f64::consts::TAU * time_s.rem_euclid(DAY_S) as f64 / DAY_S as f64;
    [angle.sin(), angle.cos()]
}

/// Number of grid steps in one day (at least 1).
pub fn steps_per_day(step_s: i64) -> usize {
    if step_s <= 0 {
        return 1;
    }
    ((DAY_S as f64 / step_s as f64).round() as usize).max(1)
}

/// Median of a slice (NaN-free input); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps_and_dates() {
        assert_eq!(parse_timestamp("1970-01-01").unwrap(), 0);
        assert_eq!(parse_timestamp("1970-01-02 00:00:01").unwrap(), 86_401);
        assert_eq!(parse_timestamp("2014-02-14 14:30:00").unwrap(), 1_392_388_200);
        assert_eq!(parse_timestamp("2014-02-14T14:30:00Z").unwrap(), 1_392_388_200);
        assert_eq!(parse_timestamp("2014-02-14 14:30").unwrap(), 1_392_388_200);
        assert_eq!(parse_timestamp("2014-02-14 14:30:00.75").unwrap(), 1_392_388_200);
        assert_eq!(parse_timestamp("1392388200").unwrap(), 1_392_388_200);
        assert_eq!(parse_day("2013-04-10").unwrap(), 15_805);
        assert_eq!(format_day(15_805), "2013-04-10");
        assert_eq!(format_day(parse_day("2000-02-29").unwrap()), "2000-02-29");
        for bad in [
            "",
            "2014-13-01",
            "2014-02-14 25:00:00",
            "abc",
            "2014-02",
            "2014-02-14 1:x",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn infers_median_step() {
        assert_eq!(infer_step_s(&[0, 300, 600, 1200, 1500]).unwrap(), 300);
        assert!(infer_step_s(&[5]).is_err());
    }

    #[test]
    fn resamples_to_nearest_grid_point_and_averages() {
        let pts = [(0, 1.0), (290, 3.0), (310, 5.0), (1200, 7.0), (1210, f64::NAN)];
        let r = resample(&pts, 300).unwrap();
        assert_eq!(r.start_s, 0);
        assert_eq!(r.values, vec![Some(1.0), Some(4.0), None, None, Some(7.0)]);
        assert_eq!(r.time_s(4), 1200);
        assert!(resample(&pts, 0).is_err());
        assert!(resample(&[], 300).is_err());
    }

    #[test]
    fn fills_gaps_linearly_and_at_edges() {
        let v = [None, Some(1.0), None, None, Some(4.0), None];
        assert_eq!(fill_gaps(&v).unwrap(), vec![1.0, 1.0, 2.0, 3.0, 4.0, 4.0]);
        assert!(fill_gaps(&[None, None]).is_err());
    }

    #[test]
    fn normaliser_uses_training_statistics_only() {
        let train = [1.0, 2.0, 3.0];
        let n = Normaliser::fit(&train).unwrap();
        assert!((n.mean - 2.0).abs() < 1e-12);
        assert!((n.std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        // A test value far away does not move the statistics.
        assert!((n.invert(n.apply(100.0)) - 100.0).abs() < 1e-9);
        let constant = Normaliser::fit(&[5.0, 5.0]).unwrap();
        assert_eq!(constant.std, 1.0);
        assert!(Normaliser::fit(&[]).is_err());
    }

    #[test]
    fn windows_cover_every_origin_once() {
        let s: Vec<f64> = (0..6).map(f64::from).collect();
        let w: Vec<_> = windows(&s, 2, 2).collect();
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].origin, 1);
        assert_eq!(w[0].past, &[0.0, 1.0]);
        assert_eq!(w[0].future, &[2.0, 3.0]);
        assert_eq!(w[2].past, &[2.0, 3.0]);
        assert_eq!(w[2].future, &[4.0, 5.0]);
        assert_eq!(windows(&s, 7, 1).count(), 0);
    }

    #[test]
    fn time_of_day_is_periodic() {
        let [s0, c0] = time_of_day(0);
        assert!(s0.abs() < 1e-12 && (c0 - 1.0).abs() < 1e-12);
        let [s6, c6] = time_of_day(6 * 3600 + 3 * DAY_S);
        assert!((s6 - 1.0).abs() < 1e-12 && c6.abs() < 1e-12);
        assert_eq!(time_of_day(-3600), time_of_day(DAY_S - 3600));
        assert_eq!(steps_per_day(300), 288);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
