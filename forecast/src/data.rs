//! Reading the two input layouts from disk: single series (`timestamp,value`, the NAB
//! layout) and per-entity daily tables (`entity,date,failure`, then numeric features, the
//! Backblaze layout), plain or gzip-compressed. Also splits a table file by date.
//!
//! Columns are found by header name, never by position; this module must not interpret the
//! values beyond parsing them (features are built in `failure`, series prepared in `prep`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::error::{ForecastError, Result};
use crate::prep::{parse_day, parse_timestamp};

/// Opens a file, transparently decompressing it when it starts with the gzip magic bytes.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let io_err = |source| ForecastError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io_err)?;
    let file = File::open(path).map_err(io_err)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(MultiGzDecoder::new(BufReader::new(file)))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

fn csv_err(path: &Path, message: impl Into<String>) -> ForecastError {
    ForecastError::Csv {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn find_column(headers: &csv::StringRecord, name: &str) -> Option<usize> {
    headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name))
}

/// Reads `(timestamp_s, value)` samples from a CSV with `timestamp` and `value` columns.
/// Rows whose value is empty or not a number are kept as missing (`NaN`) so that the
/// resampler treats them as gaps; a row with a bad timestamp is an error.
pub fn read_series_csv(path: &Path) -> Result<Vec<(i64, f64)>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(open_maybe_gz(path)?);
    let headers = reader
        .headers()
        .map_err(|e| csv_err(path, format!("cannot read the header: {e}")))?
        .clone();
    let (Some(ts_col), Some(val_col)) = (find_column(&headers, "timestamp"), find_column(&headers, "value")) else {
        return Err(csv_err(path, "expected a header with `timestamp` and `value` columns"));
    };
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_err(path, format!("row {}: {e}", i + 2)))?;
        let ts = record.get(ts_col).unwrap_or("");
        let t = parse_timestamp(ts).map_err(|e| csv_err(path, format!("row {}: {e}", i + 2)))?;
        let v = record
            .get(val_col)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        out.push((t, v));
    }
    if out.is_empty() {
        return Err(csv_err(path, "no data rows"));
    }
    Ok(out)
}

/// A per-entity daily table: one row per entity and day, with numeric feature columns.
#[derive(Debug, Clone, Default)]
pub struct EntityTable {
    /// Names of the numeric feature columns, in file order.
    pub feature_names: Vec<String>,
    /// Distinct entity names; rows refer to them by index.
    pub entity_names: Vec<String>,
    /// Entity index of each row.
    pub entity: Vec<u32>,
    /// Day number (days since the epoch) of each row.
    pub day: Vec<i64>,
    /// Whether the row is the entity's failure record.
    pub failure: Vec<bool>,
    /// Row-major features, `feature_names.len()` per row; `NaN` where the cell was empty.
    pub features: Vec<f32>,
}

impl EntityTable {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.day.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.day.is_empty()
    }

    /// Feature values of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let f = self.feature_names.len();
        &self.features[i * f..(i + 1) * f]
    }

    /// Index of a feature column by exact name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.feature_names.iter().position(|n| n == name)
    }

    /// Values of column `name` for every row (all `NaN` when the column is absent), so that
    /// a model fitted on one file can be applied to a file lacking some of its columns.
    pub fn column_values(&self, name: &str) -> Vec<f32> {
        match self.column(name) {
            Some(c) => (0..self.len()).map(|i| self.row(i)[c]).collect(),
            None => vec![f32::NAN; self.len()],
        }
    }
}

/// Reads an entity table. `entity`, `date` and `failure` are required; every other column
/// whose non-empty cells all parse as numbers becomes a feature; others (e.g. a model name)
/// are ignored.
pub fn read_entity_table(path: &Path) -> Result<EntityTable> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(open_maybe_gz(path)?);
    let headers = reader
        .headers()
        .map_err(|e| csv_err(path, format!("cannot read the header: {e}")))?
        .clone();
    let (Some(ent_col), Some(date_col), Some(fail_col)) = (
        find_column(&headers, "entity"),
        find_column(&headers, "date"),
        find_column(&headers, "failure"),
    ) else {
        return Err(csv_err(
            path,
            "expected a header with `entity`, `date` and `failure` columns",
        ));
    };
    let candidates: Vec<usize> = (0..headers.len())
        .filter(|c| ![ent_col, date_col, fail_col].contains(c))
        .collect();
    let mut numeric = vec![true; candidates.len()];
    let mut raw: Vec<f32> = Vec::new();
    let mut table = EntityTable::default();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut record = csv::StringRecord::new();
    let mut line = 1usize;
    loop {
        line += 1;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(path, format!("row {line}: {e}"))),
        }
        let name = record.get(ent_col).unwrap_or("").trim();
        if name.is_empty() {
            return Err(csv_err(path, format!("row {line}: empty entity")));
        }
        let next_id = ids.len() as u32;
        let id = *ids.entry(name.to_string()).or_insert_with(|| {
            table.entity_names.push(name.to_string());
            next_id
        });
        let day =
            parse_day(record.get(date_col).unwrap_or("")).map_err(|e| csv_err(path, format!("row {line}: {e}")))?;
        let failure = match record.get(fail_col).unwrap_or("").trim() {
            "" | "0" | "0.0" | "false" => false,
            "1" | "1.0" | "true" => true,
            other => {
                return Err(csv_err(
                    path,
                    format!("row {line}: failure must be 0 or 1, got {other:?}"),
                ))
            }
        };
        table.entity.push(id);
        table.day.push(day);
        table.failure.push(failure);
        for (k, &c) in candidates.iter().enumerate() {
            let cell = record.get(c).unwrap_or("").trim();
            let v = if cell.is_empty() {
                f32::NAN
            } else {
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => v as f32,
                    _ => {
                        numeric[k] = false;
                        f32::NAN
                    }
                }
            };
            raw.push(v);
        }
    }
    if table.is_empty() {
        return Err(csv_err(path, "no data rows"));
    }
    let keep: Vec<usize> = (0..candidates.len()).filter(|&k| numeric[k]).collect();
    table.feature_names = keep
        .iter()
        .map(|&k| headers.get(candidates[k]).unwrap_or("").trim().to_string())
        .collect();
    table.features = Vec::with_capacity(table.len() * keep.len());
    for row in raw.chunks(candidates.len().max(1)) {
        table.features.extend(keep.iter().map(|&k| row[k]));
    }
    Ok(table)
}

/// Counts of a [`split_by_day`] run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitSummary {
    /// First day that went to the second file, `YYYY-MM-DD`.
    pub split_date: String,
    /// Rows written before the split date.
    pub rows_before: usize,
    /// Rows written on or after the split date.
    pub rows_after: usize,
}

/// An output file, plain or gzip, that reports errors when finished instead of on drop.
enum Sink {
    Plain(BufWriter<File>),
    Gz(GzEncoder<BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gz(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gz(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> std::io::Result<()> {
        let mut inner = match self {
            Sink::Plain(w) => w,
            Sink::Gz(w) => w.finish()?,
        };
        inner.flush()?;
        inner.get_ref().sync_all()
    }
}

fn create_writer(path: &Path) -> Result<csv::Writer<Sink>> {
    let file = File::create(path).map_err(|source| ForecastError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let gz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let sink = if gz {
        Sink::Gz(GzEncoder::new(BufWriter::new(file), flate2::Compression::default()))
    } else {
        Sink::Plain(BufWriter::new(file))
    };
    Ok(csv::Writer::from_writer(sink))
}

/// Where to split a table file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitAt {
    /// Rows dated before this day go first, the rest second.
    Day(i64),
    /// The first N distinct dates of the file go first, the rest second.
    FirstDays(usize),
}

/// Copies the rows of `input` into `before` (dates before the split) and `after` (the rest),
/// keeping the header and every column verbatim. Outputs ending in `.gz` are compressed.
pub fn split_by_day(input: &Path, at: SplitAt, before: &Path, after: &Path) -> Result<SplitSummary> {
    let split_day = match at {
        SplitAt::Day(d) => d,
        SplitAt::FirstDays(n) => {
            // First pass: find the distinct dates so the split does not depend on row order.
            let mut reader = csv::Reader::from_reader(open_maybe_gz(input)?);
            let headers = reader
                .headers()
                .map_err(|e| csv_err(input, format!("cannot read the header: {e}")))?
                .clone();
            let date_col = find_column(&headers, "date").ok_or_else(|| csv_err(input, "expected a `date` column"))?;
            let mut days = std::collections::BTreeSet::new();
            for (i, r) in reader.records().enumerate() {
                let r = r.map_err(|e| csv_err(input, format!("row {}: {e}", i + 2)))?;
                days.insert(
                    parse_day(r.get(date_col).unwrap_or(""))
                        .map_err(|e| csv_err(input, format!("row {}: {e}", i + 2)))?,
                );
            }
            match days.iter().nth(n) {
                Some(&d) => d,
                None => {
                    return Err(ForecastError::InvalidArgument(format!(
                        "{} has only {} distinct dates; cannot put the first {n} in the first file",
                        input.display(),
                        days.len()
                    )))
                }
            }
        }
    };
    let mut reader = csv::Reader::from_reader(open_maybe_gz(input)?);
    let headers = reader
        .byte_headers()
        .map_err(|e| csv_err(input, format!("cannot read the header: {e}")))?
        .clone();
    let date_col = headers
        .iter()
        .position(|h| String::from_utf8_lossy(h).trim().eq_ignore_ascii_case("date"))
        .ok_or_else(|| csv_err(input, "expected a `date` column"))?;
    let mut w_before = create_writer(before)?;
    let mut w_after = create_writer(after)?;
    let write_err = |path: &Path, e: csv::Error| csv_err(path, format!("cannot write: {e}"));
    w_before.write_byte_record(&headers).map_err(|e| write_err(before, e))?;
    w_after.write_byte_record(&headers).map_err(|e| write_err(after, e))?;
    let (mut n_before, mut n_after) = (0usize, 0usize);
    let mut record = csv::ByteRecord::new();
    let mut line = 1usize;
    loop {
        line += 1;
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(input, format!("row {line}: {e}"))),
        }
        let cell = String::from_utf8_lossy(record.get(date_col).unwrap_or(b""));
        let day = parse_day(&cell).map_err(|e| csv_err(input, format!("row {line}: {e}")))?;
        if day < split_day {
            w_before.write_byte_record(&record).map_err(|e| write_err(before, e))?;
            n_before += 1;
        } else {
            w_after.write_byte_record(&record).map_err(|e| write_err(after, e))?;
            n_after += 1;
        }
    }
    for (w, path) in [(w_before, before), (w_after, after)] {
        let sink = w
            .into_inner()
            .map_err(|e| csv_err(path, format!("cannot flush: {}", e.error())))?;
        sink.finish().map_err(|source| ForecastError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(SplitSummary {
        split_date: crate::prep::format_day(split_day),
        rows_before: n_before,
        rows_after: n_after,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn reads_series_and_entity_tables_by_header_name() {
        let dir = tempfile::tempdir().unwrap();
        let series = dir.path().join("s.csv");
        std::fs::write(
            &series,
            "value,timestamp\n1.5,1970-01-01 00:05:00\n,1970-01-01 00:10:00\n",
        )
        .unwrap();
        let s = read_series_csv(&series).unwrap();
        assert_eq!(s[0], (300, 1.5));
        assert!(s[1].1.is_nan());

        let table = dir.path().join("t.csv.gz");
        let mut gz = GzEncoder::new(File::create(&table).unwrap(), flate2::Compression::fast());
        gz.write_all(
            b"entity,date,failure,model,smart_5_raw,smart_9_raw\n\
              a,2013-04-10,0,X,0,10\nb,2013-04-10,0,Y,,20\na,2013-04-11,1,X,3,11\n",
        )
        .unwrap();
        gz.finish().unwrap();
        let t = read_entity_table(&table).unwrap();
        assert_eq!(t.feature_names, vec!["smart_5_raw", "smart_9_raw"]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.entity, vec![0, 1, 0]);
        assert_eq!(t.failure, vec![false, false, true]);
        assert!(t.row(1)[0].is_nan());
        assert_eq!(t.row(2), &[3.0, 11.0]);
        assert!(t.column_values("smart_197_raw").iter().all(|v| v.is_nan()));

        let before = dir.path().join("a.csv");
        let after = dir.path().join("b.csv.gz");
        let sum = split_by_day(&table, SplitAt::FirstDays(1), &before, &after).unwrap();
        assert_eq!((sum.rows_before, sum.rows_after), (2, 1));
        assert_eq!(sum.split_date, "2013-04-11");
        assert_eq!(read_entity_table(&before).unwrap().len(), 2);
        assert_eq!(read_entity_table(&after).unwrap().failure, vec![true]);
        assert!(split_by_day(&table, SplitAt::FirstDays(5), &before, &after).is_err());
    }

    #[test]
    fn missing_columns_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.csv");
        std::fs::write(&p, "time,val\n1,2\n").unwrap();
        assert!(matches!(read_series_csv(&p), Err(ForecastError::Csv { .. })));
        assert!(matches!(read_entity_table(&p), Err(ForecastError::Csv { .. })));
    }
}
