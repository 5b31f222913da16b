//! One entity's daily history: extracted from an entity table (to replay a real drive's SMART
//! record as a node's telemetry in drills and experiments), read back, and scored by the
//! failure forecaster from a live node's telemetry.
//!
//! A history file is a CSV with a `date` column (`YYYY-MM-DD`) and one column per feature,
//! in date order, empty where the feature was not reported that day.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{open_maybe_gz, EntityTable};
use crate::error::{ForecastError, Result};
use crate::failure::FailureForecaster;
use crate::prep::{format_day, parse_day};

/// One day of an entity's features: `(column, value)` for every column reported that day.
pub type DayRow = (i64, Vec<(String, f32)>);

/// Entities of `table` that have at least `min_rows` rows and (when `failed`) a failure
/// record or (otherwise) none, in name order.
pub fn entities_with(table: &EntityTable, failed: bool, min_rows: usize) -> Vec<String> {
    let mut rows = vec![0usize; table.entity_names.len()];
    let mut fails = vec![false; table.entity_names.len()];
    for i in 0..table.len() {
        rows[table.entity[i] as usize] += 1;
        fails[table.entity[i] as usize] |= table.failure[i];
    }
    let mut out: Vec<String> = (0..table.entity_names.len())
        .filter(|&e| rows[e] >= min_rows && fails[e] == failed)
        .map(|e| table.entity_names[e].clone())
        .collect();
    out.sort();
    out
}

/// `count` entities drawn without replacement from `candidates` with `seed`.
pub fn sample_entities(candidates: &[String], count: usize, seed: u64) -> Vec<String> {
    let mut v = candidates.to_vec();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    v.truncate(count);
    v
}

/// The rows of `entity` in date order.
pub fn entity_history(table: &EntityTable, entity: &str) -> Result<Vec<DayRow>> {
    let id = table
        .entity_names
        .iter()
        .position(|n| n == entity)
        .ok_or_else(|| ForecastError::InvalidArgument(format!("no entity {entity:?} in the table")))?;
    let mut rows: Vec<DayRow> = (0..table.len())
        .filter(|&i| table.entity[i] as usize == id)
        .map(|i| {
            let vals = table
                .feature_names
                .iter()
                .zip(table.row(i))
                .filter(|(_, v)| !v.is_nan())
                .map(|(n, v)| (n.clone(), *v))
                .collect();
            (table.day[i], vals)
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    Ok(rows)
}

/// Writes a history as CSV (`date`, then `columns`).
pub fn write_history(path: &Path, columns: &[String], rows: &[DayRow]) -> Result<()> {
    let io_err = |source| ForecastError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = String::from("date");
    for c in columns {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    for (day, vals) in rows {
        out.push_str(&format_day(*day));
        let by_name: HashMap<&str, f32> = vals.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        for c in columns {
            out.push(',');
            if let Some(v) = by_name.get(c.as_str()) {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    let mut f = std::fs::File::create(path).map_err(io_err)?;
    f.write_all(out.as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// Reads a history written by [`write_history`] (or by hand in that layout).
pub fn read_history(path: &Path) -> Result<Vec<DayRow>> {
    let err = |message: String| ForecastError::Csv {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(open_maybe_gz(path)?);
    let headers = reader
        .headers()
        .map_err(|e| err(format!("cannot read the header: {e}")))?
        .clone();
    let date_col = headers
        .iter()
        .position(|h| h.trim() == "date")
        .ok_or_else(|| err("expected a `date` column".into()))?;
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| err(format!("row {}: {e}", i + 2)))?;
        let day = parse_day(rec.get(date_col).unwrap_or("")).map_err(|e| err(format!("row {}: {e}", i + 2)))?;
        let mut vals = Vec::new();
        for (c, h) in headers.iter().enumerate() {
            let cell = rec.get(c).unwrap_or("").trim();
            if c == date_col || cell.is_empty() {
                continue;
            }
            let v: f32 = cell
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| err(format!("row {}: column {h}: {cell:?} is not a number", i + 2)))?;
            vals.push((h.trim().to_string(), v));
        }
        rows.push((day, vals));
    }
    if rows.is_empty() {
        return Err(err("no data rows".into()));
    }
    if rows.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(err("dates must be strictly increasing".into()));
    }
    Ok(rows)
}

impl FailureForecaster {
    /// Probability that the entity whose daily history is `rows` (date order, the last row
    /// being today) fails within the horizon, judged at its last row. `None` for an empty
    /// history.
    pub fn predict_history(&self, rows: &[DayRow]) -> Result<Option<f64>> {
        let Some(last_day) = rows.last().map(|r| r.0) else {
            return Ok(None);
        };
        // Only the days the features look back matter; a longer history is cut so the work
        // per call stays bounded.
        let rows: Vec<&DayRow> = rows.iter().filter(|r| r.0 > last_day - self.history_days()).collect();
        let last = rows.len().saturating_sub(1);
        let columns = self.columns().to_vec();
        let mut t = EntityTable {
            feature_names: columns.clone(),
            entity_names: vec!["node".into()],
            ..EntityTable::default()
        };
        for (day, vals) in rows {
            t.entity.push(0);
            t.day.push(*day);
            t.failure.push(false);
            let by_name: HashMap<&str, f32> = vals.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            t.features.extend(
                columns
                    .iter()
                    .map(|c| by_name.get(c.as_str()).copied().unwrap_or(f32::NAN)),
            );
        }
        let p = self.predict(&t)?;
        Ok(p.get(last).copied())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    fn table() -> EntityTable {
        let mut t = EntityTable {
            feature_names: vec!["smart_5_raw".into(), "smart_9_raw".into()],
            entity_names: vec!["a".into(), "b".into(), "c".into()],
            ..EntityTable::default()
        };
        // a: 3 days, fails on the last; b: 3 days healthy, smart_9 missing on day 2; c: 1 day.
        for (e, d, f, s5, s9) in [
            (0u32, 12i64, false, 0.0f32, 10.0f32),
            (0, 10, false, 0.0, 8.0),
            (0, 11, true, 7.0, 9.0),
            (1, 10, false, 1.0, 5.0),
            (1, 11, false, 1.0, f32::NAN),
            (1, 12, false, 2.0, 7.0),
            (2, 10, false, 0.0, 1.0),
        ] {
            t.entity.push(e);
            t.day.push(d);
            t.failure.push(f);
            t.features.extend([s5, s9]);
        }
        t
    }

    #[test]
    fn picks_entities_by_outcome_and_length() {
        let t = table();
        assert_eq!(entities_with(&t, true, 1), vec!["a".to_string()]);
        assert_eq!(entities_with(&t, false, 2), vec!["b".to_string()]);
        assert_eq!(entities_with(&t, false, 1), vec!["b".to_string(), "c".to_string()]);
        let all = vec!["x".to_string(), "y".to_string(), "z".to_string()];
        assert_eq!(sample_entities(&all, 2, 3), sample_entities(&all, 2, 3));
        assert_eq!(sample_entities(&all, 5, 3).len(), 3);
    }

    #[test]
    fn a_history_round_trips_in_date_order_with_gaps_kept() {
        let t = table();
        let h = entity_history(&t, "b").unwrap();
        assert_eq!(h.iter().map(|r| r.0).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(h[1].1, vec![("smart_5_raw".to_string(), 1.0)]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.csv");
        write_history(&p, &t.feature_names, &h).unwrap();
        assert_eq!(read_history(&p).unwrap(), h);
        let a = entity_history(&t, "a").unwrap();
        assert_eq!(a.iter().map(|r| r.0).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert!(entity_history(&t, "nobody").is_err());
    }

    #[test]
    fn bad_history_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("nodate.csv", "day,smart_5_raw\n2013-04-10,1\n"),
            ("nan.csv", "date,smart_5_raw\n2013-04-10,abc\n"),
            ("order.csv", "date,smart_5_raw\n2013-04-11,1\n2013-04-10,2\n"),
            ("empty.csv", "date,smart_5_raw\n"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            assert!(read_history(&p).is_err(), "{name} was accepted");
        }
    }
}
