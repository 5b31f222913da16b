//! The failure forecaster: the probability that an entity (a drive, a node) fails within
//! `horizon_days`, from its recent window of daily numeric features (e.g. SMART raw values).
//!
//! It owns labelling rows by future failure, the threshold-rule baseline, feature
//! construction (log values, presence indicators and changes over the window, scaled with
//! training statistics only) and the weights blob. It must not read files (`data`) nor
//! compute evaluation reports (`eval`).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::EntityTable;
use crate::error::{ForecastError, Result};
use crate::load::{pack_members, unpack_members};
use crate::metrics::partial_roc_auc;
use crate::nn::{Loss, Matrix, Mlp, MlpShape, TrainParams};

/// Columns of the threshold-rule baseline: a drive is flagged when any of these SMART raw
/// counters (reallocated, reported uncorrectable, command timeout, pending, offline
/// uncorrectable sectors) is above zero.
pub const RULE_COLUMNS: [&str; 5] = [
    "smart_5_raw",
    "smart_187_raw",
    "smart_188_raw",
    "smart_197_raw",
    "smart_198_raw",
];

/// Scaled features are clipped to this many training standard deviations.
const FEATURE_CLIP: f32 = 10.0;

/// Settings of [`FailureForecaster::fit`]. Defaults are generic, not tuned to a file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureConfig {
    /// A row is positive when its entity fails on this day or within the next
    /// `horizon_days - 1` days.
    pub horizon_days: i64,
    /// Days of history (including the current one) the change features look back.
    pub window_days: i64,
    /// Hidden layer widths of the network (empty: logistic regression).
    pub hidden: Vec<usize>,
    /// Training epochs.
    pub epochs: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of initialisation and minibatch order.
    pub seed: u64,
    /// Models averaged in the forecaster (differently seeded), at least 1.
    pub ensemble: usize,
    /// When set, `hidden` and `epochs` are chosen by cross-validation over entities of the
    /// training file among [`FailureConfig::candidates`] and `1..=epochs` epochs.
    pub select: bool,
    /// Entity folds used for that choice.
    pub folds: usize,
}

/// Validation score of the failure forecaster: mean recall over false-positive rates up to
/// this value, the low-alarm region where a placement policy would act.
pub const VALIDATION_FPR_MAX: f64 = 0.1;

impl FailureConfig {
    /// Network shapes compared when `select` is set: logistic regression and one small
    /// hidden layer.
    pub fn candidates() -> Vec<Vec<usize>> {
        vec![vec![], vec![16]]
    }
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            horizon_days: 10,
            window_days: 7,
            hidden: vec![16],
            epochs: 12,
            batch_size: 1024,
            learning_rate: 2e-3,
            weight_decay: 1e-2,
            seed: 0,
            ensemble: 5,
            select: true,
            folds: 3,
        }
    }
}

/// Labels each row: does its entity have a failure record `0..horizon_days` days later?
pub fn label_rows(table: &EntityTable, horizon_days: i64) -> Vec<bool> {
    let mut failure_days: HashMap<u32, Vec<i64>> = HashMap::new();
    for i in 0..table.len() {
        if table.failure[i] {
            failure_days.entry(table.entity[i]).or_default().push(table.day[i]);
        }
    }
    (0..table.len())
        .map(|i| {
            failure_days.get(&table.entity[i]).is_some_and(|days| {
                days.iter()
                    .any(|&f| f >= table.day[i] && f - table.day[i] < horizon_days)
            })
        })
        .collect()
}

/// The rule baseline's flags, or `None` when the table has none of [`RULE_COLUMNS`].
pub fn rule_flags(table: &EntityTable) -> Option<Vec<bool>> {
    let cols: Vec<usize> = RULE_COLUMNS.iter().filter_map(|c| table.column(c)).collect();
    if cols.is_empty() {
        return None;
    }
    Some(
        (0..table.len())
            .map(|i| {
                let row = table.row(i);
                cols.iter().any(|&c| row[c] > 0.0)
            })
            .collect(),
    )
}

/// `sign(v) * ln(1 + |v|)`: counters spanning many orders of magnitude become comparable.
fn slog(v: f32) -> f32 {
    v.signum() * v.abs().ln_1p()
}

/// Unscaled features for every row: per column, presence, log value and the change of the
/// log value since the entity's earliest row within the window. Columns are looked up by
/// name so a table missing some of them still yields the same layout.
pub fn raw_features(table: &EntityTable, columns: &[String], window_days: i64) -> Matrix {
    let per_col = 3;
    let mut x = Matrix::new(columns.len() * per_col + 1);
    x.data = vec![0.0; table.len() * x.cols];
    let values: Vec<Vec<f32>> = columns.iter().map(|c| table.column_values(c)).collect();
    // Rows of each entity in date order, to find the start of each row's window.
    let mut order: Vec<usize> = (0..table.len()).collect();
    order.sort_by_key(|&i| (table.entity[i], table.day[i]));
    let mut group_start = 0;
    while group_start < order.len() {
        let entity = table.entity[order[group_start]];
        let group_end = order[group_start..]
            .iter()
            .position(|&i| table.entity[i] != entity)
            .map_or(order.len(), |p| group_start + p);
        let group = &order[group_start..group_end];
        let mut first = 0;
        for (pos, &i) in group.iter().enumerate() {
            while first < pos && table.day[group[first]] <= table.day[i] - window_days {
                first += 1;
            }
            let j = group[first];
            let row = &mut x.data[i * x.cols..(i + 1) * x.cols];
            for (c, col) in values.iter().enumerate() {
                let (v, v0) = (col[i], col[j]);
                if v.is_nan() {
                    continue;
                }
                row[c * per_col] = 1.0;
                row[c * per_col + 1] = slog(v);
                if !v0.is_nan() {
                    row[c * per_col + 2] = slog(v) - slog(v0);
                }
            }
            // Days of history seen in the window, a proxy for how much the deltas can say.
            row[x.cols - 1] = (table.day[i] - table.day[j]) as f32 / window_days.max(1) as f32;
        }
        group_start = group_end;
    }
    x
}

/// Per-feature mean and standard deviation from training rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureScaler {
    /// Feature means.
    pub mean: Vec<f32>,
    /// Feature standard deviations (1 where constant).
    pub std: Vec<f32>,
}

impl FeatureScaler {
    /// Fits on the rows of `x` (training rows only).
    pub fn fit(x: &Matrix) -> Self {
        let (rows, cols) = (x.rows().max(1) as f64, x.cols);
        let mut mean = vec![0.0f64; cols];
        let mut sq = vec![0.0f64; cols];
        for r in 0..x.rows() {
            for (c, &v) in x.row(r).iter().enumerate() {
                mean[c] += f64::from(v);
                sq[c] += f64::from(v) * f64::from(v);
            }
        }
        let mut m32 = Vec::with_capacity(cols);
        let mut s32 = Vec::with_capacity(cols);
        for c in 0..cols {
            let m = mean[c] / rows;
            let var = (sq[c] / rows - m * m).max(0.0);
            m32.push(m as f32);
            s32.push(if var > 1e-12 { var.sqrt() as f32 } else { 1.0 });
        }
        Self { mean: m32, std: s32 }
    }

    /// Scales `x` in place and clips outliers.
    pub fn apply(&self, x: &mut Matrix) {
        let cols = x.cols;
        for (k, v) in x.data.iter_mut().enumerate() {
            let c = k % cols;
            *v = ((*v - self.mean[c]) / self.std[c]).clamp(-FEATURE_CLIP, FEATURE_CLIP);
        }
    }
}

/// What [`FailureForecaster::fit`] saw.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailureFitReport {
    /// Training rows.
    pub rows: usize,
    /// Positive training rows.
    pub positives: usize,
    /// Feature columns used.
    pub columns: Vec<String>,
    /// Mean training loss of the last epoch of each member.
    pub train_loss: Vec<f64>,
    /// Chosen hidden layer widths (empty: logistic regression).
    pub hidden: Vec<usize>,
    /// Chosen number of epochs.
    pub epochs: usize,
    /// Cross-validated score of each candidate at its best epoch: `(shape, epochs, score)`.
    pub validation: Vec<(String, usize, f64)>,
}

fn shape_name(hidden: &[usize]) -> String {
    if hidden.is_empty() {
        "logistic".into()
    } else {
        format!("mlp{hidden:?}")
    }
}

fn class_weights(labels: &[bool]) -> Vec<f32> {
    let positives = labels.iter().filter(|&&l| l).count().max(1);
    let negatives = (labels.len() - positives.min(labels.len())).max(1);
    let n = labels.len() as f32;
    let w_pos = n / (2.0 * positives as f32);
    let w_neg = n / (2.0 * negatives as f32);
    labels.iter().map(|&l| if l { w_pos } else { w_neg }).collect()
}

fn train_params(config: &FailureConfig, seed: u64, epochs: usize) -> TrainParams {
    TrainParams {
        epochs,
        batch_size: config.batch_size,
        learning_rate: config.learning_rate,
        weight_decay: config.weight_decay,
        loss: Loss::WeightedBce,
        seed,
        patience: usize::MAX,
    }
}

/// Splits entities into `folds` groups, dealing failing and healthy entities separately so
/// each fold gets its share of the rare failures. Returns the fold of every row.
fn entity_folds(table: &EntityTable, labels: &[bool], folds: usize, seed: u64) -> Vec<usize> {
    let mut failing = vec![false; table.entity_names.len()];
    for (i, &l) in labels.iter().enumerate() {
        if l {
            failing[table.entity[i] as usize] = true;
        }
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf01d);
    let mut fold_of = vec![0usize; failing.len()];
    for want in [true, false] {
        let mut ids: Vec<usize> = (0..failing.len()).filter(|&e| failing[e] == want).collect();
        ids.shuffle(&mut rng);
        for (k, e) in ids.into_iter().enumerate() {
            fold_of[e] = k % folds.max(1);
        }
    }
    table.entity.iter().map(|&e| fold_of[e as usize]).collect()
}

/// Outcome of [`select_shape`]: hidden widths, epochs, and `(shape, epochs, score)` per
/// candidate.
type Selection = (Vec<usize>, usize, Vec<(String, usize, f64)>);

/// Cross-validates each candidate shape over entity folds, scoring every epoch; returns the
/// best `(hidden, epochs)` and the per-candidate summary.
fn select_shape(x_raw: &Matrix, labels: &[bool], table: &EntityTable, config: &FailureConfig) -> Result<Selection> {
    let folds = config.folds.max(2);
    let fold = entity_folds(table, labels, folds, config.seed);
    let epochs_max = config.epochs.max(1);
    let mut summary = Vec::new();
    let mut best: Option<(f64, Vec<usize>, usize)> = None;
    for hidden in FailureConfig::candidates() {
        let mut sums = vec![0.0f64; epochs_max];
        let mut used = 0usize;
        for f in 0..folds {
            let fit_rows: Vec<usize> = (0..labels.len()).filter(|&i| fold[i] != f).collect();
            let val_rows: Vec<usize> = (0..labels.len()).filter(|&i| fold[i] == f).collect();
            let fit_labels: Vec<bool> = fit_rows.iter().map(|&i| labels[i]).collect();
            let val_labels: Vec<bool> = val_rows.iter().map(|&i| labels[i]).collect();
            if !fit_labels.contains(&true) || !val_labels.contains(&true) {
                continue;
            }
            let mut x_fit = x_raw.select(&fit_rows);
            let mut x_val = x_raw.select(&val_rows);
            let scaler = FeatureScaler::fit(&x_fit);
            scaler.apply(&mut x_fit);
            scaler.apply(&mut x_val);
            let y_fit = Matrix {
                cols: 1,
                data: fit_labels.iter().map(|&l| f32::from(u8::from(l))).collect(),
            };
            let mlp = Mlp::new(
                MlpShape {
                    inputs: x_fit.cols,
                    hidden: hidden.clone(),
                    outputs: 1,
                },
                &mut StdRng::seed_from_u64(config.seed),
            )?;
            let mut epoch = 0usize;
            let mut validate = |m: &Mlp| -> Result<f64> {
                let scores: Vec<f64> = m.predict(&x_val)?.data.into_iter().map(f64::from).collect();
                let score = partial_roc_auc(&scores, &val_labels, VALIDATION_FPR_MAX);
                sums[epoch] += score;
                epoch += 1;
                Ok(-score)
            };
            mlp.train(
                &x_fit,
                &y_fit,
                Some(&class_weights(&fit_labels)),
                &train_params(config, config.seed, epochs_max),
                Some(&mut validate),
            )?;
            used += 1;
        }
        if used == 0 {
            continue;
        }
        let (best_epoch, best_sum) =
            sums.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |b, (e, &s)| if s > b.1 { (e, s) } else { b });
        let score = best_sum / used as f64;
        summary.push((shape_name(&hidden), best_epoch + 1, score));
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, hidden, best_epoch + 1));
        }
    }
    match best {
        Some((_, hidden, epochs)) => Ok((hidden, epochs, summary)),
        None => Ok((config.hidden.clone(), config.epochs, summary)),
    }
}

/// A trained failure forecaster.
#[derive(Debug, Clone)]
pub struct FailureForecaster {
    columns: Vec<String>,
    window_days: i64,
    horizon_days: i64,
    scaler: FeatureScaler,
    members: Vec<Mlp>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FailureMeta {
    columns: Vec<String>,
    window_days: i64,
    horizon_days: i64,
    scaler: FeatureScaler,
}

impl FailureForecaster {
    /// Trains on every row of `train`, with classes weighted to equal total weight so the
    /// rare failures are not ignored. With `config.select`, the network shape and epoch
    /// count are first chosen by cross-validation over the training file's entities.
    pub fn fit(train: &EntityTable, config: &FailureConfig) -> Result<(Self, FailureFitReport)> {
        if config.horizon_days < 1 || config.window_days < 1 {
            return Err(ForecastError::InvalidArgument(format!(
                "horizon and window must be at least one day, got {} and {}",
                config.horizon_days, config.window_days
            )));
        }
        let labels = label_rows(train, config.horizon_days);
        let positives = labels.iter().filter(|&&l| l).count();
        if positives == 0 || positives == labels.len() {
            return Err(ForecastError::NotEnoughData(format!(
                "training needs both failing and healthy rows; {positives} of {} rows fail within {} days",
                labels.len(),
                config.horizon_days
            )));
        }
        let columns = train.feature_names.clone();
        let mut x = raw_features(train, &columns, config.window_days);
        let (hidden, epochs, validation) = if config.select {
            select_shape(&x, &labels, train, config)?
        } else {
            (config.hidden.clone(), config.epochs, Vec::new())
        };
        let scaler = FeatureScaler::fit(&x);
        scaler.apply(&mut x);
        let y = Matrix {
            cols: 1,
            data: labels.iter().map(|&l| f32::from(u8::from(l))).collect(),
        };
        let weights = class_weights(&labels);
        let mut members = Vec::new();
        let mut train_loss = Vec::new();
        for k in 0..config.ensemble.max(1) as u64 {
            let seed = config.seed.wrapping_add(k.wrapping_mul(0x9e37_79b9));
            let mlp = Mlp::new(
                MlpShape {
                    inputs: x.cols,
                    hidden: hidden.clone(),
                    outputs: 1,
                },
                &mut StdRng::seed_from_u64(seed),
            )?;
            let out = mlp.train(&x, &y, Some(&weights), &train_params(config, seed, epochs), None)?;
            train_loss.push(out.train_loss);
            members.push(mlp);
        }
        let report = FailureFitReport {
            rows: labels.len(),
            positives,
            columns: columns.clone(),
            train_loss,
            hidden,
            epochs,
            validation,
        };
        Ok((
            Self {
                columns,
                window_days: config.window_days,
                horizon_days: config.horizon_days,
                scaler,
                members,
            },
            report,
        ))
    }

    /// The feature columns the forecaster reads (e.g. `smart_5_raw`).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The horizon the forecaster was trained for, days.
    pub fn horizon_days(&self) -> i64 {
        self.horizon_days
    }

    /// Network inputs for every row of `table` (history comes from `table` itself).
    pub fn features(&self, table: &EntityTable) -> Matrix {
        let mut x = raw_features(table, &self.columns, self.window_days);
        self.scaler.apply(&mut x);
        x
    }

    /// Failure probability for already-built feature rows (see [`Self::features`]).
    pub fn predict_features(&self, x: &Matrix) -> Result<Vec<f64>> {
        let mut logits = vec![0.0f64; x.rows()];
        for m in &self.members {
            for (acc, v) in logits.iter_mut().zip(m.predict(x)?.data) {
                *acc += f64::from(v);
            }
        }
        let k = self.members.len().max(1) as f64;
        Ok(logits.into_iter().map(|l| 1.0 / (1.0 + (-l / k).exp())).collect())
    }

    /// Probability that each row's entity fails within the horizon.
    pub fn predict(&self, table: &EntityTable) -> Result<Vec<f64>> {
        self.predict_features(&self.features(table))
    }

    /// Encodes the forecaster as one safetensors blob.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let blobs: Vec<Vec<u8>> = self
            .members
            .iter()
            .map(|m| m.to_safetensors(HashMap::new()))
            .collect::<Result<_>>()?;
        let meta = serde_json::to_string(&FailureMeta {
            columns: self.columns.clone(),
            window_days: self.window_days,
            horizon_days: self.horizon_days,
            scaler: self.scaler.clone(),
        })
        .map_err(|e| ForecastError::Weights(format!("cannot encode metadata: {e}")))?;
        pack_members("ark.failure", &meta, &blobs)
    }

    /// Decodes a blob written by [`FailureForecaster::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (meta, members) = unpack_members("ark.failure", bytes)?;
        let meta: FailureMeta = serde_json::from_str(&meta)
            .map_err(|e| ForecastError::Weights(format!("bad failure forecaster metadata: {e}")))?;
        let inputs = meta.columns.len() * 3 + 1;
        if meta.window_days < 1
            || meta.horizon_days < 1
            || meta.scaler.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || meta.scaler.mean.iter().any(|m| !m.is_finite())
            || meta.scaler.mean.len() != inputs
            || meta.scaler.std.len() != inputs
            || members
                .iter()
                .any(|m| m.shape().inputs != inputs || m.shape().outputs != 1)
        {
            return Err(ForecastError::Weights(
                "network shape does not match the stored feature layout".into(),
            ));
        }
        Ok(Self {
            columns: meta.columns,
            window_days: meta.window_days,
            horizon_days: meta.horizon_days,
            scaler: meta.scaler,
            members,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    /// Entities 0..n over `days` days; entities with id % 10 == 0 fail on the last day and
    /// their smart_5_raw grows beforehand.
    fn table(n: u32, days: i64) -> EntityTable {
        let mut t = EntityTable {
            feature_names: vec!["smart_5_raw".into(), "smart_9_raw".into()],
            ..EntityTable::default()
        };
        for e in 0..n {
            t.entity_names.push(format!("e{e}"));
            for d in 0..days {
                let failing = e % 10 == 0;
                t.entity.push(e);
                t.day.push(d);
                t.failure.push(failing && d == days - 1);
                let s5 = if failing {
                    (d * d) as f32
                } else {
                    (e % 3 == 0) as u8 as f32
                };
                t.features.extend([s5, 1000.0 + e as f32]);
            }
        }
        t
    }

    fn tiny(seed: u64) -> FailureConfig {
        FailureConfig {
            horizon_days: 3,
            window_days: 3,
            hidden: vec![4],
            epochs: 20,
            batch_size: 32,
            learning_rate: 1e-2,
            seed,
            ensemble: 2,
            select: true,
            folds: 2,
            ..FailureConfig::default()
        }
    }

    #[test]
    fn labels_cover_the_horizon_before_failure() {
        let t = table(10, 6);
        let l = label_rows(&t, 3);
        // Entity 0 fails on day 5: days 3, 4, 5 are positive.
        assert_eq!(&l[..6], &[false, false, false, true, true, true]);
        assert!(l[6..].iter().all(|&x| !x));
    }

    #[test]
    fn rule_uses_present_columns_only() {
        let t = table(4, 2);
        let flags = rule_flags(&t).unwrap();
        // e0 fails (s5 = d*d: 0 then 1), e3 has s5 = 1.
        assert_eq!(flags, vec![false, true, false, false, false, false, true, true]);
        let mut none = t.clone();
        none.feature_names = vec!["a".into(), "b".into()];
        assert!(rule_flags(&none).is_none());
    }

    #[test]
    fn features_capture_change_within_the_window() {
        let t = table(1, 5);
        let x = raw_features(&t, &t.feature_names, 3);
        // Day 4: value 16, window starts at day 2 (value 4).
        let row = x.row(4);
        assert_eq!(row[0], 1.0);
        assert!((row[1] - 16f32.ln_1p()).abs() < 1e-6);
        assert!((row[2] - (16f32.ln_1p() - 4f32.ln_1p())).abs() < 1e-6);
        assert!((row[6] - 2.0 / 3.0).abs() < 1e-6);
        // A column missing from the table is all absent, not an error.
        let x = raw_features(&t, &["smart_199_raw".to_string()], 3);
        assert!(x.row(4)[..3].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn scaler_is_fitted_on_given_rows() {
        let mut x = Matrix {
            cols: 2,
            data: vec![1.0, 5.0, 3.0, 5.0],
        };
        let s = FeatureScaler::fit(&x);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
        s.apply(&mut x);
        assert_eq!(x.data, vec![-1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn fit_is_deterministic_ranks_failures_and_round_trips() {
        let t = table(40, 6);
        let (a, report) = FailureForecaster::fit(&t, &tiny(2)).unwrap();
        let (b, _) = FailureForecaster::fit(&t, &tiny(2)).unwrap();
        assert!(report.positives > 0);
        let pa = a.predict(&t).unwrap();
        assert_eq!(pa, b.predict(&t).unwrap());
        let labels = label_rows(&t, 3);
        assert!(crate::metrics::pr_auc(&pa, &labels) > 0.5);
        let back = FailureForecaster::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(back.predict(&t).unwrap(), pa);
        assert!(FailureForecaster::from_bytes(b"junk").is_err());
    }

    #[test]
    fn a_single_history_scores_like_its_rows_in_a_table() {
        let t = table(40, 6);
        let (f, _) = FailureForecaster::fit(&t, &tiny(2)).unwrap();
        let all = f.predict(&t).unwrap();
        // Entity 0 (failing) and 1 (healthy): rows 0..6 and 6..12; the last row is judged.
        for (e, last_row) in [("e0", 5usize), ("e1", 11)] {
            let h = crate::history::entity_history(&t, e).unwrap();
            let p = f.predict_history(&h).unwrap().unwrap();
            assert!((p - all[last_row]).abs() < 1e-6, "{e}: {p} vs {}", all[last_row]);
        }
        let failing = f
            .predict_history(&crate::history::entity_history(&t, "e0").unwrap())
            .unwrap();
        let healthy = f
            .predict_history(&crate::history::entity_history(&t, "e1").unwrap())
            .unwrap();
        assert!(failing > healthy);
        assert_eq!(f.predict_history(&[]).unwrap(), None);
    }
}
