//! The failure forecaster: the calibrated probability that an entity (a drive, a node) fails
//! within `horizon_days`, from a summary of its recent daily history of numeric attributes
//! (e.g. SMART raw values) over `history_days`.
//!
//! It owns labelling rows by future failure, the threshold-rule baseline, the sequence
//! features (per attribute by name: last value, presence, changes over several lags, the
//! largest one-day rise, the number of rising days and the fraction missing), their
//! scaling with training statistics only, the choice of model by cross-validation over
//! entities, the calibration map fitted on out-of-fold predictions, and the weights blob.
//! It must not read files (`data`) nor compute evaluation reports (`eval_failure`).

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

/// Lags of the change features, days; the change over the whole history is added to them.
pub const LAGS_DAYS: [i64; 3] = [1, 3, 7];

/// Features per attribute: present today, last value, one change per lag plus the change
/// over the whole history, largest one-day rise, fraction of rising days, fraction missing.
pub const FEATURES_PER_COLUMN: usize = 2 + LAGS_DAYS.len() + 1 + 3;

/// Longest history the features may look back, days: bounds the work per row, and the
/// leader keeps this many days of each node's telemetry to score it.
pub const HISTORY_DAYS_MAX: i64 = 31;

/// Number of network inputs for `columns` attributes (plus the days-of-history feature).
pub fn feature_count(columns: usize) -> usize {
    columns * FEATURES_PER_COLUMN + 1
}

/// One model compared by cross-validation: hidden widths (empty: logistic regression) and
/// AdamW weight decay.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// Hidden layer widths (empty: logistic regression).
    pub hidden: Vec<usize>,
    /// AdamW weight decay.
    pub weight_decay: f64,
}

impl Candidate {
    /// A short name for reports, e.g. `logistic(wd=0.01)`.
    pub fn name(&self) -> String {
        if self.hidden.is_empty() {
            format!("logistic(wd={})", self.weight_decay)
        } else {
            format!("mlp{:?}(wd={})", self.hidden, self.weight_decay)
        }
    }
}

/// Settings of [`FailureForecaster::fit`]. Defaults are generic, not tuned to a file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureConfig {
    /// A row is positive when its entity fails on this day or within the next
    /// `horizon_days - 1` days.
    pub horizon_days: i64,
    /// Days of history (including the current one) the sequence features summarise, at
    /// most [`HISTORY_DAYS_MAX`].
    pub history_days: i64,
    /// Hidden layer widths of the network when `select` is off (empty: logistic).
    pub hidden: Vec<usize>,
    /// Training epochs (with `select`: the most that cross-validation may pick).
    pub epochs: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay when `select` is off.
    pub weight_decay: f64,
    /// Seed of folds, initialisation and minibatch order.
    pub seed: u64,
    /// Models averaged in the forecaster (differently seeded), at least 1.
    pub ensemble: usize,
    /// When set, the model (shape and weight decay) and the epoch count are chosen by
    /// cross-validation over entities among [`FailureConfig::candidates`] and
    /// `1..=epochs` epochs.
    pub select: bool,
    /// Entity folds of the cross-validation (also the source of the out-of-fold
    /// predictions the calibration is fitted on), at least 2.
    pub folds: usize,
}

/// Validation score of the failure forecaster: mean recall over false-positive rates up to
/// this value, the low-alarm region where a placement policy would act.
pub const VALIDATION_FPR_MAX: f64 = 0.1;

impl FailureConfig {
    /// Models compared when `select` is set: logistic regression with light and strong
    /// weight decay, and one small hidden layer. Few parameters on purpose: failures are
    /// rare (a few hundred positive rows), so larger models overfit the training period.
    pub fn candidates() -> Vec<Candidate> {
        vec![
            Candidate {
                hidden: vec![],
                weight_decay: 1e-2,
            },
            Candidate {
                hidden: vec![],
                weight_decay: 1.0,
            },
            Candidate {
                hidden: vec![8],
                weight_decay: 1e-1,
            },
        ]
    }
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            horizon_days: 10,
            history_days: 20,
            hidden: vec![],
            epochs: 10,
            batch_size: 1024,
            learning_rate: 2e-3,
            weight_decay: 1e-2,
            seed: 0,
            ensemble: 3,
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

/// Rows of every entity in date order, as `(start, end)` ranges into the returned order.
fn entity_groups(table: &EntityTable) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut order: Vec<usize> = (0..table.len()).collect();
    order.sort_by_key(|&i| (table.entity[i], table.day[i]));
    let mut groups = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let entity = table.entity[order[start]];
        let end = order[start..]
            .iter()
            .position(|&i| table.entity[i] != entity)
            .map_or(order.len(), |p| start + p);
        groups.push((start, end));
        start = end;
    }
    (order, groups)
}

/// Unscaled sequence features for every row, judged from the entity's rows within the last
/// `history_days` days (the row's own day included). Per column of `columns`, looked up by
/// name so a table missing some of them (or carrying others) yields the same layout:
///
/// 0. present today (1/0);
/// 1. last value seen in the history, `slog`;
/// 2. the change of `slog` value since the earliest value within each of [`LAGS_DAYS`],
///    then since the earliest value of the whole history;
/// 3. the largest rise between consecutive observations;
/// 4. the fraction of consecutive observations that rose;
/// 5. the fraction of the history's rows where the column was missing.
///
/// and finally the span of the history in days divided by `history_days`. A feature that
/// cannot be computed (no value, or no earlier value) is `NaN`; the scaler maps it to the
/// training mean, so absence speaks only through the presence and missing features.
pub fn raw_features(table: &EntityTable, columns: &[String], history_days: i64) -> Matrix {
    let history_days = history_days.clamp(1, HISTORY_DAYS_MAX);
    let mut x = Matrix::new(feature_count(columns.len()));
    x.data = vec![f32::NAN; table.len() * x.cols];
    let values: Vec<Vec<f32>> = columns.iter().map(|c| table.column_values(c)).collect();
    let (order, groups) = entity_groups(table);
    // Reused per row: the column's (day, slog value) observations within the history.
    let mut seen: Vec<(i64, f32)> = Vec::with_capacity(history_days as usize);
    for (start, end) in groups {
        let group = &order[start..end];
        let mut first = 0;
        for (pos, &i) in group.iter().enumerate() {
            let today = table.day[i];
            while first < pos && table.day[group[first]] <= today - history_days {
                first += 1;
            }
            let window = &group[first..=pos];
            let row = &mut x.data[i * x.cols..(i + 1) * x.cols];
            for (c, col) in values.iter().enumerate() {
                let f = &mut row[c * FEATURES_PER_COLUMN..(c + 1) * FEATURES_PER_COLUMN];
                seen.clear();
                seen.extend(
                    window
                        .iter()
                        .filter(|&&j| !col[j].is_nan())
                        .map(|&j| (table.day[j], slog(col[j]))),
                );
                f[0] = f32::from(u8::from(!col[i].is_nan()));
                f[FEATURES_PER_COLUMN - 1] = 1.0 - seen.len() as f32 / window.len() as f32;
                let Some(&(last_day, last)) = seen.last() else {
                    continue;
                };
                f[1] = last;
                for (k, lag) in LAGS_DAYS.iter().chain(std::iter::once(&history_days)).enumerate() {
                    if let Some(&(_, v0)) = seen.iter().find(|(d, _)| *d >= today - lag && *d < last_day) {
                        f[2 + k] = last - v0;
                    }
                }
                if seen.len() >= 2 {
                    let steps = seen.windows(2).map(|w| w[1].1 - w[0].1);
                    let (mut max_rise, mut rises) = (0.0f32, 0usize);
                    for s in steps {
                        max_rise = max_rise.max(s);
                        rises += usize::from(s > 0.0);
                    }
                    f[2 + LAGS_DAYS.len() + 1] = max_rise;
                    f[2 + LAGS_DAYS.len() + 2] = rises as f32 / (seen.len() - 1) as f32;
                }
            }
            // Days of history seen, a proxy for how much the changes can say.
            row[x.cols - 1] = (today - table.day[window[0]]) as f32 / history_days as f32;
        }
    }
    x
}

/// Per-feature mean and standard deviation from training rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureScaler {
    /// Feature means over the rows where the feature is defined (0 where it never is).
    pub mean: Vec<f32>,
    /// Feature standard deviations (1 where constant).
    pub std: Vec<f32>,
}

impl FeatureScaler {
    /// Fits on the rows of `x` (training rows only), skipping `NaN` cells.
    pub fn fit(x: &Matrix) -> Self {
        let cols = x.cols;
        let mut n = vec![0usize; cols];
        let mut mean = vec![0.0f64; cols];
        let mut sq = vec![0.0f64; cols];
        for r in 0..x.rows() {
            for (c, &v) in x.row(r).iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                n[c] += 1;
                mean[c] += f64::from(v);
                sq[c] += f64::from(v) * f64::from(v);
            }
        }
        let mut m32 = Vec::with_capacity(cols);
        let mut s32 = Vec::with_capacity(cols);
        for c in 0..cols {
            let k = n[c].max(1) as f64;
            let m = mean[c] / k;
            let var = (sq[c] / k - m * m).max(0.0);
            m32.push(m as f32);
            s32.push(if var > 1e-12 { var.sqrt() as f32 } else { 1.0 });
        }
        Self { mean: m32, std: s32 }
    }

    /// Scales `x` in place, clips outliers, and puts undefined (`NaN`) cells at the mean.
    pub fn apply(&self, x: &mut Matrix) {
        let cols = x.cols;
        for (k, v) in x.data.iter_mut().enumerate() {
            let c = k % cols;
            *v = if v.is_nan() {
                0.0
            } else {
                ((*v - self.mean[c]) / self.std[c]).clamp(-FEATURE_CLIP, FEATURE_CLIP)
            };
        }
    }
}

/// Platt scaling: `p = sigmoid(slope * z + intercept)` of the ensemble's mean logit `z`.
/// Fitted on out-of-fold predictions, so it corrects both the class weighting of training
/// (which inflates the logits) and the models' over-confidence.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Multiplier of the logit, never negative (so the map is monotone non-decreasing).
    /// Single precision, like the weights: it round-trips exactly through the JSON
    /// metadata of the blob, so a decoded forecaster scores bit for bit like the original.
    pub slope: f32,
    /// Added after the multiplication.
    pub intercept: f32,
}

impl Calibration {
    /// Maps a logit to a probability in `[0, 1]`.
    pub fn apply(&self, logit: f64) -> f64 {
        let p = 1.0 / (1.0 + (-(f64::from(self.slope) * logit + f64::from(self.intercept))).exp());
        if p.is_nan() {
            0.0
        } else {
            p
        }
    }

    /// Fits by Newton's method on the log loss of `(logit, label)` pairs, with Platt's
    /// smoothed targets (`(n₊+1)/(n₊+2)`, `1/(n₋+2)`) so a separable fold does not push the
    /// slope to infinity. A negative slope (scores ranking backwards) is clamped to 0: the
    /// map then says the base rate for everyone rather than inverting the ranking.
    pub fn fit(logits: &[f64], labels: &[bool]) -> Self {
        let pos = labels.iter().filter(|&&l| l).count() as f64;
        let neg = labels.len() as f64 - pos;
        let (t_pos, t_neg) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
        let base = ((pos + 1.0) / (neg + 1.0)).ln();
        let mut a = 1.0f64;
        let mut b = base;
        let loss = |a: f64, b: f64| -> f64 {
            logits
                .iter()
                .zip(labels)
                .map(|(&z, &l)| {
                    let t = if l { t_pos } else { t_neg };
                    let s = a * z + b;
                    // log(1 + e^s) - t s, stable for large |s|.
                    s.max(0.0) + (-s.abs()).exp().ln_1p() - t * s
                })
                .sum()
        };
        let mut current = loss(a, b);
        // Bounded: Newton converges in a handful of steps on this convex problem.
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (&z, &l) in logits.iter().zip(labels) {
                let t = if l { t_pos } else { t_neg };
                let p = 1.0 / (1.0 + (-(a * z + b)).exp());
                let d = p - t;
                let w = (p * (1.0 - p)).max(1e-12);
                ga += d * z;
                gb += d;
                haa += w * z * z;
                hab += w * z;
                hbb += w;
            }
            // Levenberg-style damping keeps the 2x2 system solvable.
            let (haa, hbb) = (haa + 1e-9, hbb + 1e-9);
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            let mut step = 1.0;
            let mut improved = false;
            // Backtracking line search, bounded.
            for _ in 0..30 {
                let (na, nb) = (a - step * da, b - step * db);
                let l = loss(na, nb);
                if l <= current {
                    improved = (current - l) > 1e-12 * current.abs().max(1.0);
                    a = na;
                    b = nb;
                    current = l;
                    break;
                }
                step /= 2.0;
            }
            if !improved {
                break;
            }
        }
        if !a.is_finite() || !b.is_finite() {
            return Self {
                slope: 0.0,
                intercept: base as f32,
            };
        }
        if a < 0.0 {
            return Self {
                slope: 0.0,
                intercept: base as f32,
            };
        }
        Self {
            slope: a as f32,
            intercept: b as f32,
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
    /// Attribute columns used.
    pub columns: Vec<String>,
    /// Network inputs (sequence features).
    pub inputs: usize,
    /// Days of history summarised.
    pub history_days: i64,
    /// Mean training loss of the last epoch of each member.
    pub train_loss: Vec<f64>,
    /// Chosen model.
    pub chosen: String,
    /// Chosen hidden layer widths (empty: logistic regression).
    pub hidden: Vec<usize>,
    /// Chosen weight decay.
    pub weight_decay: f64,
    /// Chosen number of epochs.
    pub epochs: usize,
    /// Cross-validated score of each candidate at its best epoch: `(model, epochs, score)`.
    pub validation: Vec<(String, usize, f64)>,
    /// Calibration map fitted on out-of-fold predictions.
    pub calibration: Calibration,
    /// Rows whose out-of-fold prediction the calibration was fitted on (0: none, the
    /// identity-like default was kept).
    pub calibration_rows: usize,
}

fn class_weights(labels: &[bool]) -> Vec<f32> {
    let positives = labels.iter().filter(|&&l| l).count().max(1);
    let negatives = (labels.len() - positives.min(labels.len())).max(1);
    let n = labels.len() as f32;
    let w_pos = n / (2.0 * positives as f32);
    let w_neg = n / (2.0 * negatives as f32);
    labels.iter().map(|&l| if l { w_pos } else { w_neg }).collect()
}

fn train_params(config: &FailureConfig, weight_decay: f64, seed: u64, epochs: usize) -> TrainParams {
    TrainParams {
        epochs,
        batch_size: config.batch_size,
        learning_rate: config.learning_rate,
        weight_decay,
        loss: Loss::WeightedBce,
        seed,
        patience: usize::MAX,
    }
}

/// Splits entities into `folds` groups, dealing failing and healthy entities separately so
/// each fold gets its share of the rare failures. Returns the fold of every row; all rows
/// of an entity share a fold, so no entity is both fitted and validated on.
pub fn entity_folds(table: &EntityTable, labels: &[bool], folds: usize, seed: u64) -> Vec<usize> {
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

/// Outcome of [`cross_validate`].
struct Selection {
    candidate: Candidate,
    epochs: usize,
    summary: Vec<(String, usize, f64)>,
    /// Out-of-fold logits of the chosen candidate at the chosen epoch (`NaN` for rows of
    /// folds that could not be validated).
    oof_logits: Vec<f64>,
}

/// Cross-validates each candidate over entity folds, scoring every epoch, and keeps the
/// out-of-fold logits of every epoch so the calibration can be fitted on the winner's.
fn cross_validate(
    x_raw: &Matrix,
    labels: &[bool],
    table: &EntityTable,
    candidates: &[Candidate],
    config: &FailureConfig,
) -> Result<Option<Selection>> {
    let folds = config.folds.max(2);
    let fold = entity_folds(table, labels, folds, config.seed);
    let epochs_max = config.epochs.max(1);
    let mut summary = Vec::new();
    let mut best: Option<(f64, Selection)> = None;
    for candidate in candidates {
        let mut sums = vec![0.0f64; epochs_max];
        let mut oof = vec![vec![f64::NAN; labels.len()]; epochs_max];
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
                    hidden: candidate.hidden.clone(),
                    outputs: 1,
                },
                &mut StdRng::seed_from_u64(config.seed),
            )?;
            let mut epoch = 0usize;
            let mut validate = |m: &Mlp| -> Result<f64> {
                let scores: Vec<f64> = m.predict(&x_val)?.data.into_iter().map(f64::from).collect();
                let score = partial_roc_auc(&scores, &val_labels, VALIDATION_FPR_MAX);
                sums[epoch] += score;
                for (&r, &s) in val_rows.iter().zip(&scores) {
                    oof[epoch][r] = s;
                }
                epoch += 1;
                Ok(-score)
            };
            mlp.train(
                &x_fit,
                &y_fit,
                Some(&class_weights(&fit_labels)),
                &train_params(config, candidate.weight_decay, config.seed, epochs_max),
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
        summary.push((candidate.name(), best_epoch + 1, score));
        if best.as_ref().is_none_or(|b| score > b.0) {
            let oof_logits = oof.swap_remove(best_epoch);
            best = Some((
                score,
                Selection {
                    candidate: candidate.clone(),
                    epochs: best_epoch + 1,
                    summary: Vec::new(),
                    oof_logits,
                },
            ));
        }
    }
    Ok(best.map(|(_, mut s)| {
        s.summary = summary;
        s
    }))
}

/// A trained failure forecaster.
#[derive(Debug, Clone)]
pub struct FailureForecaster {
    columns: Vec<String>,
    history_days: i64,
    horizon_days: i64,
    scaler: FeatureScaler,
    calibration: Calibration,
    members: Vec<Mlp>,
}

/// Metadata stored in the weights blob next to the networks.
#[derive(serde::Serialize, serde::Deserialize)]
struct FailureMeta {
    /// Attribute names the forecaster was trained on, in feature order.
    columns: Vec<String>,
    history_days: i64,
    horizon_days: i64,
    scaler: FeatureScaler,
    calibration: Calibration,
}

/// Kind tag of the blob; a new tag because the feature layout changed (older blobs are
/// refused with a clear message instead of being misread).
const BLOB_KIND: &str = "ark.failure.seq";

impl FailureForecaster {
    /// Trains on every row of `train`, with classes weighted to equal total weight so the
    /// rare failures are not ignored. With `config.select`, the model and epoch count are
    /// first chosen by cross-validation over the training file's entities; the calibration
    /// map is fitted on the out-of-fold predictions of that cross-validation (with `select`
    /// off, the given model alone is cross-validated for it).
    pub fn fit(train: &EntityTable, config: &FailureConfig) -> Result<(Self, FailureFitReport)> {
        if config.horizon_days < 1 || config.history_days < 1 || config.history_days > HISTORY_DAYS_MAX {
            return Err(ForecastError::InvalidArgument(format!(
                "horizon must be at least one day and history 1..={HISTORY_DAYS_MAX} days, got {} and {}",
                config.horizon_days, config.history_days
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
        let mut x = raw_features(train, &columns, config.history_days);
        let given = Candidate {
            hidden: config.hidden.clone(),
            weight_decay: config.weight_decay,
        };
        let candidates = if config.select {
            FailureConfig::candidates()
        } else {
            vec![given.clone()]
        };
        let selection = cross_validate(&x, &labels, train, &candidates, config)?;
        let (candidate, epochs, validation) = match &selection {
            Some(s) if config.select => (s.candidate.clone(), s.epochs, s.summary.clone()),
            Some(s) => (given, config.epochs.max(1), s.summary.clone()),
            None => (given, config.epochs.max(1), Vec::new()),
        };
        let (calibration, calibration_rows) = match &selection {
            Some(s) => {
                let (z, l): (Vec<f64>, Vec<bool>) = s
                    .oof_logits
                    .iter()
                    .zip(&labels)
                    .filter(|(z, _)| z.is_finite())
                    .map(|(&z, &l)| (z, l))
                    .unzip();
                (Calibration::fit(&z, &l), z.len())
            }
            // Too few entities to hold any out: the logits of a class-weighted model are
            // centred on even odds, so shift them by the training log-odds.
            None => (
                Calibration {
                    slope: 1.0,
                    intercept: (positives as f64 / (labels.len() - positives) as f64).ln() as f32,
                },
                0,
            ),
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
                    hidden: candidate.hidden.clone(),
                    outputs: 1,
                },
                &mut StdRng::seed_from_u64(seed),
            )?;
            let out = mlp.train(
                &x,
                &y,
                Some(&weights),
                &train_params(config, candidate.weight_decay, seed, epochs),
                None,
            )?;
            train_loss.push(out.train_loss);
            members.push(mlp);
        }
        let report = FailureFitReport {
            rows: labels.len(),
            positives,
            columns: columns.clone(),
            inputs: x.cols,
            history_days: config.history_days,
            train_loss,
            chosen: candidate.name(),
            hidden: candidate.hidden.clone(),
            weight_decay: candidate.weight_decay,
            epochs,
            validation,
            calibration,
            calibration_rows,
        };
        Ok((
            Self {
                columns,
                history_days: config.history_days,
                horizon_days: config.horizon_days,
                scaler,
                calibration,
                members,
            },
            report,
        ))
    }

    /// The attribute columns the forecaster reads (e.g. `smart_5_raw`); others are ignored
    /// and missing ones are marked absent.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The horizon the forecaster was trained for, days.
    pub fn horizon_days(&self) -> i64 {
        self.horizon_days
    }

    /// Days of history the features summarise: a caller scoring one entity needs at most
    /// this many of its latest days.
    pub fn history_days(&self) -> i64 {
        self.history_days
    }

    /// The calibration map from mean logit to probability.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// Network inputs for every row of `table` (history comes from `table` itself).
    pub fn features(&self, table: &EntityTable) -> Matrix {
        let mut x = raw_features(table, &self.columns, self.history_days);
        self.scaler.apply(&mut x);
        x
    }

    /// Mean logit of the ensemble for already-built feature rows (a ranking score).
    pub fn logits(&self, x: &Matrix) -> Result<Vec<f64>> {
        let mut logits = vec![0.0f64; x.rows()];
        for m in &self.members {
            for (acc, v) in logits.iter_mut().zip(m.predict(x)?.data) {
                *acc += f64::from(v);
            }
        }
        let k = self.members.len().max(1) as f64;
        Ok(logits.into_iter().map(|l| l / k).collect())
    }

    /// Calibrated failure probability for already-built feature rows (see
    /// [`Self::features`]).
    pub fn predict_features(&self, x: &Matrix) -> Result<Vec<f64>> {
        Ok(self.logits(x)?.into_iter().map(|z| self.calibration.apply(z)).collect())
    }

    /// Calibrated probability that each row's entity fails within the horizon.
    pub fn predict(&self, table: &EntityTable) -> Result<Vec<f64>> {
        self.predict_features(&self.features(table))
    }

    /// Encodes the forecaster as one safetensors blob (networks, attribute names, scaling
    /// and calibration).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let blobs: Vec<Vec<u8>> = self
            .members
            .iter()
            .map(|m| m.to_safetensors(HashMap::new()))
            .collect::<Result<_>>()?;
        let meta = serde_json::to_string(&FailureMeta {
            columns: self.columns.clone(),
            history_days: self.history_days,
            horizon_days: self.horizon_days,
            scaler: self.scaler.clone(),
            calibration: self.calibration,
        })
        .map_err(|e| ForecastError::Weights(format!("cannot encode metadata: {e}")))?;
        pack_members(BLOB_KIND, &meta, &blobs)
    }

    /// Decodes a blob written by [`FailureForecaster::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (meta, members) = unpack_members(BLOB_KIND, bytes).map_err(|e| {
            ForecastError::Weights(format!(
                "{e} (weights from before the sequence features must be refitted with `arkd forecast fit-failure`)"
            ))
        })?;
        let meta: FailureMeta = serde_json::from_str(&meta)
            .map_err(|e| ForecastError::Weights(format!("bad failure forecaster metadata: {e}")))?;
        let inputs = feature_count(meta.columns.len());
        if meta.history_days < 1
            || meta.history_days > HISTORY_DAYS_MAX
            || meta.horizon_days < 1
            || members.is_empty()
            || meta.scaler.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || meta.scaler.mean.iter().any(|m| !m.is_finite())
            || meta.scaler.mean.len() != inputs
            || meta.scaler.std.len() != inputs
            || !meta.calibration.slope.is_finite()
            || meta.calibration.slope < 0.0
            || !meta.calibration.intercept.is_finite()
            || members
                .iter()
                .any(|m| m.shape().inputs != inputs || m.shape().outputs != 1)
        {
            return Err(ForecastError::Weights(
                "network shape, scaling or calibration does not match the stored feature layout".into(),
            ));
        }
        Ok(Self {
            columns: meta.columns,
            history_days: meta.history_days,
            horizon_days: meta.horizon_days,
            scaler: meta.scaler,
            calibration: meta.calibration,
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
            history_days: 3,
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
    fn sequence_features_summarise_the_history() {
        let mut t = table(1, 6);
        // Day 5 of smart_9 is missing.
        t.features[5 * 2 + 1] = f32::NAN;
        let x = raw_features(&t, &t.feature_names, 3);
        let s = |v: f32| v.ln_1p();
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        // Day 4 of smart_5 (values d*d): history days 2, 3, 4 hold 4, 9, 16.
        let row = x.row(4);
        assert_eq!(row[0], 1.0, "present");
        assert!(close(row[1], s(16.0)), "last");
        assert!(close(row[2], s(16.0) - s(9.0)), "change over 1 day");
        assert!(close(row[3], s(16.0) - s(4.0)), "change over 3 days");
        assert!(
            close(row[4], s(16.0) - s(4.0)),
            "change over 7 days, capped by the history"
        );
        assert!(close(row[5], s(16.0) - s(4.0)), "change over the history");
        assert!(close(row[6], (s(16.0) - s(9.0)).max(s(9.0) - s(4.0))), "largest rise");
        assert!(close(row[7], 1.0), "every step rose");
        assert!(close(row[8], 0.0), "nothing missing");
        assert!(close(row[x.cols - 1], 2.0 / 3.0), "days of history");
        // smart_9 on day 5: absent today, last value from day 4, one third missing.
        let row = x.row(5);
        let f9 = &row[FEATURES_PER_COLUMN..2 * FEATURES_PER_COLUMN];
        assert_eq!(f9[0], 0.0);
        assert!(close(f9[1], s(1000.0)));
        assert!(close(f9[8], 1.0 / 3.0));
        // A constant counter never rises.
        assert!(close(f9[7], 0.0) && close(f9[6], 0.0));
        // The first day has no earlier value: changes are undefined, not zero.
        assert!(x.row(0)[2].is_nan() && x.row(0)[6].is_nan());
        // A column missing from the table is absent everywhere, not an error.
        let x = raw_features(&t, &["smart_199_raw".to_string()], 3);
        let row = x.row(4);
        assert_eq!(row[0], 0.0);
        assert_eq!(row[FEATURES_PER_COLUMN - 1], 1.0);
        assert!(row[1..FEATURES_PER_COLUMN - 1].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn scaler_skips_undefined_cells_and_puts_them_at_the_mean() {
        let mut x = Matrix {
            cols: 2,
            data: vec![1.0, 5.0, 3.0, 5.0, f32::NAN, f32::NAN],
        };
        let s = FeatureScaler::fit(&x);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
        s.apply(&mut x);
        assert_eq!(x.data, vec![-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn calibration_is_monotone_maps_into_the_unit_interval_and_matches_the_base_rate() {
        // Logits that rank well but are far too confident (as class weighting makes them):
        // 1 positive in 50 overall, rising with z.
        let mut z = Vec::new();
        let mut y = Vec::new();
        for i in 0..5000 {
            let v = f64::from(i % 100) / 10.0 - 5.0;
            z.push(v);
            y.push(i % 100 >= 80 && i % 5 == 0);
        }
        let c = Calibration::fit(&z, &y);
        assert!(c.slope > 0.0, "{c:?}");
        let grid: Vec<f64> = (-200..=200).map(|k| f64::from(k) / 2.0).collect();
        let p: Vec<f64> = grid.iter().map(|&g| c.apply(g)).collect();
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "not monotone");
        // Fitted by maximum likelihood with an intercept: the mean probability on the
        // fitting data is the observed rate (up to Platt's target smoothing).
        let mean = z.iter().map(|&v| c.apply(v)).sum::<f64>() / z.len() as f64;
        let rate = y.iter().filter(|&&l| l).count() as f64 / y.len() as f64;
        assert!((mean - rate).abs() < 0.1 * rate, "mean {mean} vs rate {rate}");
        // Scores that rank backwards are not inverted: a constant base rate instead.
        let rev: Vec<f64> = z.iter().map(|v| -v).collect();
        let c = Calibration::fit(&rev, &y);
        assert_eq!(c.slope, 0.0);
        assert!((c.apply(3.0) - rate).abs() < 0.01);
        assert!(Calibration::fit(&[], &[]).apply(1.0).is_finite());
    }

    #[test]
    fn grouped_folds_never_split_an_entity_and_share_the_failures() {
        let t = table(60, 5);
        let labels = label_rows(&t, 3);
        let fold = entity_folds(&t, &labels, 3, 7);
        let mut of_entity: HashMap<u32, usize> = HashMap::new();
        for (i, &f) in fold.iter().enumerate() {
            assert_eq!(
                *of_entity.entry(t.entity[i]).or_insert(f),
                f,
                "entity {} split",
                t.entity[i]
            );
        }
        for f in 0..3 {
            assert!(
                (0..t.len()).any(|i| fold[i] == f && labels[i]),
                "fold {f} has no failure"
            );
        }
        assert_eq!(fold, entity_folds(&t, &labels, 3, 7));
    }

    #[test]
    fn fit_is_deterministic_ranks_failures_and_round_trips() {
        let t = table(40, 6);
        let (a, report) = FailureForecaster::fit(&t, &tiny(2)).unwrap();
        let (b, _) = FailureForecaster::fit(&t, &tiny(2)).unwrap();
        assert!(report.positives > 0);
        assert_eq!(report.calibration_rows, t.len());
        let pa = a.predict(&t).unwrap();
        assert!(pa.iter().all(|p| (0.0..=1.0).contains(p)));
        assert_eq!(pa, b.predict(&t).unwrap());
        let labels = label_rows(&t, 3);
        assert!(crate::metrics::pr_auc(&pa, &labels) > 0.5);
        let back = FailureForecaster::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(back.predict(&t).unwrap(), pa);
        assert_eq!(back.columns(), a.columns());
        assert_eq!(back.calibration(), a.calibration());
        assert!(FailureForecaster::from_bytes(b"junk").is_err());
    }

    #[test]
    fn unseen_attribute_sets_are_handled_by_name() {
        // Trained with smart_187; scored on a file without it and with an unknown smart_240.
        let mut train = table(40, 6);
        train.feature_names.push("smart_187_raw".into());
        let mut features = Vec::new();
        for (i, row) in train.features.chunks(2).enumerate() {
            features.extend(row);
            features.push(if train.entity[i].is_multiple_of(10) { 1.0 } else { 0.0 });
        }
        train.features = features;
        let (f, _) = FailureForecaster::fit(&train, &tiny(1)).unwrap();
        assert_eq!(f.columns().len(), 3);

        let base = table(40, 6);
        let mut extra = base.clone();
        extra.feature_names = vec!["smart_240_raw".into(), "smart_9_raw".into(), "smart_5_raw".into()];
        extra.features = base.features.chunks(2).flat_map(|r| [12345.0, r[1], r[0]]).collect();
        let mut blank = base.clone();
        blank.feature_names.push("smart_187_raw".into());
        blank.features = base.features.chunks(2).flat_map(|r| [r[0], r[1], f32::NAN]).collect();

        let p_base = f.predict(&base).unwrap();
        assert!(p_base.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
        // A missing column is the same as a column with every cell empty.
        assert_eq!(p_base, f.predict(&blank).unwrap());
        // Unknown columns are ignored and column order does not matter.
        assert_eq!(p_base, f.predict(&extra).unwrap());
        // Without smart_187 the model still ranks by the attributes it has.
        let labels = label_rows(&base, 3);
        assert!(crate::metrics::pr_auc(&p_base, &labels) > 0.5);
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
