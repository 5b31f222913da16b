//! The load forecaster: predicts the next `horizon` steps of one regularly sampled series
//! (a link's throughput, a node's CPU) from its last `window` steps, the values one day
//! earlier, and the time of day.
//!
//! It owns feature construction for series, the choice among a few model variants by
//! validation on the tail of the training part, and the weights blob. It must not read
//! files (that is `data`) nor compute evaluation reports (that is `eval`).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::baseline::Method;
use crate::error::{ForecastError, Result};
use crate::metrics::{ewma_levels, pick_ewma_alpha, EWMA_ALPHAS};
use crate::nn::{Loss, Matrix, Mlp, MlpShape, TrainParams};
use crate::prep::{median, steps_per_day, time_of_day, Normaliser};

/// Inputs are clipped to this many training standard deviations, so one extreme spike
/// cannot saturate the network.
const FEATURE_CLIP: f64 = 10.0;

/// A more complex variant must beat the simplest by more than this fraction of validation
/// MAE to be chosen.
const SIMPLER_TOLERANCE: f64 = 0.02;

/// Smoothing factors of the exponentially weighted levels given to the network.
const LEVEL_ALPHAS: [f64; 3] = [0.05, 0.2, 0.5];

/// Settings of [`LoadForecaster::fit`]. Defaults are generic, not tuned to any series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadConfig {
    /// Steps to forecast.
    pub horizon: usize,
    /// Past steps given to the model.
    pub window: usize,
    /// Seed of initialisation and minibatch order.
    pub seed: u64,
    /// Upper bound on training epochs (early stopping usually ends sooner).
    pub epochs_max: usize,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Fraction of the training part (its most recent end) used to validate variants.
    pub validation_fraction: f64,
    /// Models averaged in the final forecaster (differently seeded), at least 1.
    pub ensemble: usize,
    /// At most this many (most recent) training examples are used per fit, which bounds a
    /// training round on long series.
    pub train_examples_max: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            horizon: 12,
            window: 36,
            seed: 0,
            epochs_max: 120,
            patience: 12,
            validation_fraction: 0.2,
            ensemble: 3,
            train_examples_max: 20_000,
        }
    }
}

/// A monotone transform applied to values before the network sees them. Because it is
/// monotone, a median forecast (L1 loss) in transformed units maps back to a median forecast
/// in raw units.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ValueTransform {
    /// Values as they are.
    Identity,
    /// `sign(u) * ln(1 + |u|)` with `u = (x - offset) / scale`: tames heavy-tailed spikes.
    SignedLog {
        /// Subtracted first (the training minimum).
        offset: f64,
        /// Divides next (the training mean distance from `offset`).
        scale: f64,
    },
}

impl ValueTransform {
    fn fit_log(train: &[f64]) -> Self {
        let offset = train.iter().copied().fold(f64::INFINITY, f64::min);
        let offset = if offset.is_finite() { offset } else { 0.0 };
        let mean_dist = train.iter().map(|x| (x - offset).abs()).sum::<f64>() / train.len().max(1) as f64;
        let scale = if mean_dist > 1e-12 { mean_dist } else { 1.0 };
        ValueTransform::SignedLog { offset, scale }
    }

    /// Raw to transformed units.
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            ValueTransform::Identity => x,
            ValueTransform::SignedLog { offset, scale } => {
                let u = (x - offset) / scale;
                u.signum() * u.abs().ln_1p()
            }
        }
    }

    /// Transformed to raw units.
    pub fn invert(&self, z: f64) -> f64 {
        match *self {
            ValueTransform::Identity => z,
            ValueTransform::SignedLog { offset, scale } => {
                // Bound the exponent so a wild network output cannot overflow to infinity.
                let z = z.clamp(-50.0, 50.0);
                z.signum() * z.abs().exp_m1() * scale + offset
            }
        }
    }
}

/// One candidate model family tried during fitting.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadVariant {
    /// Hidden layer widths (empty: linear).
    pub hidden: Vec<usize>,
    /// Whether values go through [`ValueTransform::SignedLog`].
    pub log_transform: bool,
}

impl LoadVariant {
    /// The variants compared on validation, simplest first: linear or one hidden layer, raw
    /// or log values.
    pub fn candidates() -> Vec<LoadVariant> {
        let mut out = Vec::new();
        for log_transform in [false, true] {
            for hidden in [vec![], vec![64]] {
                out.push(LoadVariant { hidden, log_transform });
            }
        }
        out
    }

    /// A short name such as `mlp64-log`.
    pub fn name(&self) -> String {
        let arch = if self.hidden.is_empty() {
            "linear".to_string()
        } else {
            format!(
                "mlp{}",
                self.hidden
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("x")
            )
        };
        format!("{arch}-{}", if self.log_transform { "log" } else { "raw" })
    }
}

/// Everything needed to turn raw history into network inputs and outputs back into values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadScaling {
    /// Value transform fitted on the training part.
    pub transform: ValueTransform,
    /// Normalisation of transformed values, fitted on the training part.
    pub norm_mean: f64,
    /// See `norm_mean`.
    pub norm_std: f64,
    /// Grid step, seconds.
    pub step_s: i64,
    /// Past steps used.
    pub window: usize,
    /// Steps forecast.
    pub horizon: usize,
    /// Steps per day; `Some` when the values one day earlier are inputs.
    pub seasonal_period: Option<usize>,
}

impl LoadScaling {
    fn norm(&self) -> Normaliser {
        Normaliser {
            mean: self.norm_mean,
            std: self.norm_std,
        }
    }

    /// Checks the invariants feature construction relies on (a decoded blob may be corrupt).
    pub fn validate(&self) -> Result<()> {
        let ok = self.window >= 2
            && self.horizon >= 1
            && self.step_s > 0
            && self.seasonal_period.is_none_or(|p| p >= 1)
            && self.norm_mean.is_finite()
            && self.norm_std.is_finite()
            && self.norm_std > 0.0
            && match self.transform {
                ValueTransform::Identity => true,
                ValueTransform::SignedLog { offset, scale } => offset.is_finite() && scale.is_finite() && scale > 0.0,
            };
        if ok {
            Ok(())
        } else {
            Err(ForecastError::Weights(format!(
                "invalid load forecaster scaling {self:?}"
            )))
        }
    }

    /// Number of network inputs.
    pub fn inputs(&self) -> usize {
        // past deltas (window - 1), smoothed levels, seasonal deltas, time of day.
        (self.window - 1) + LEVEL_ALPHAS.len() + 3 + self.seasonal_period.map_or(0, |_| self.horizon) + 4
    }

    /// History length (steps up to and including the origin) needed for one forecast.
    pub fn history_len(&self) -> usize {
        // The seasonal differences reach back to `origin - period * ceil(horizon / period)`.
        let seasonal = self.seasonal_period.map_or(0, |p| p * self.horizon.div_ceil(p) + 1);
        self.window.max(seasonal)
    }

    /// Transformed, normalised values.
    fn normalise(&self, raw: &[f64]) -> Vec<f64> {
        let n = self.norm();
        raw.iter().map(|&x| n.apply(self.transform.apply(x))).collect()
    }

    /// Network inputs for origin `t` of normalised series `z`, whose point `t` is at
    /// `origin_time_s`. Requires `t + 1 >= history_len()`.
    fn features(&self, z: &[f64], t: usize, origin_time_s: i64, out: &mut Vec<f32>) {
        let clip = |v: f64| v.clamp(-FEATURE_CLIP, FEATURE_CLIP) as f32;
        let start = out.len();
        let last = z[t];
        for &v in &z[t + 1 - self.window..t] {
            out.push(clip(v - last));
        }
        // Robust and smoothed levels relative to the last value: what the EWMA and median
        // baselines would say, so the network starts from their information.
        let hist = &z[t + 1 - self.history_len()..=t];
        for alpha in LEVEL_ALPHAS {
            let level = hist.iter().skip(1).fold(hist[0], |l, &x| alpha * x + (1.0 - alpha) * l);
            out.push(clip(level - last));
        }
        let recent = &z[t + 1 - self.window.min(12)..=t];
        for part in [recent, &z[t + 1 - self.window..=t], hist] {
            out.push(clip(median(part).unwrap_or(last) - last));
        }
        if let Some(period) = self.seasonal_period {
            for h in 1..=self.horizon {
                // How the series moved from the origin's time to the target's time one day
                // earlier (whole days back for horizons beyond a day). Differences, not
                // levels, so that a level shift does not pull forecasts back to old levels.
                let back = period * h.div_ceil(period);
                out.push(clip(z[t + h - back] - z[t - back]));
            }
        }
        let [s, c] = time_of_day(origin_time_s + self.step_s);
        // Two harmonics of the daily cycle: a linear model can then follow a cycle with
        // one peak and one trough that are not half a day apart.
        out.extend([s as f32, c as f32, (2.0 * s * c) as f32, (c * c - s * s) as f32]);
        assert_eq!(out.len() - start, self.inputs(), "feature layout and inputs() disagree");
    }

    /// Converts network outputs (normalised deltas from the origin) into raw forecasts.
    fn decode(&self, z_last: f64, outputs: &[f32]) -> Vec<f64> {
        let n = self.norm();
        outputs
            .iter()
            .map(|&d| self.transform.invert(n.invert(z_last + f64::from(d))))
            .collect()
    }
}

/// How [`LoadForecaster::fit`] chose its model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadFitReport {
    /// Validation MAE (raw units) of each network variant, then of each naive method, by name.
    pub validation_mae: Vec<(String, f64)>,
    /// The method in use: the chosen variant, or the naive method that beat it.
    pub chosen: String,
    /// Epochs used when retraining on the whole training part.
    pub epochs: usize,
    /// Training examples used in the final fit.
    pub train_examples: usize,
}

/// A trained load forecaster.
#[derive(Debug, Clone)]
pub struct LoadForecaster {
    scaling: LoadScaling,
    variant: LoadVariant,
    /// Ensemble members; forecasts are their mean.
    members: Vec<Mlp>,
    /// The naive method that beat the network on validation, which then forecasts instead.
    fallback: Option<Method>,
}

/// Origins whose targets end before `horizon_end`, at most `max` of them (the latest).
fn origins(scaling: &LoadScaling, len: usize, horizon_end: usize, max: usize) -> std::ops::Range<usize> {
    let first = scaling.history_len() - 1;
    let end = horizon_end.min(len).saturating_sub(scaling.horizon).max(first);
    end.saturating_sub(max.max(1)).max(first)..end
}

fn dataset(scaling: &LoadScaling, z: &[f64], start_s: i64, origins: std::ops::Range<usize>) -> (Matrix, Matrix) {
    let mut x = Matrix::new(scaling.inputs());
    let mut y = Matrix::new(scaling.horizon);
    let mut row = Vec::with_capacity(scaling.inputs());
    for t in origins {
        row.clear();
        scaling.features(z, t, start_s + t as i64 * scaling.step_s, &mut row);
        x.push_row(&row);
        let target: Vec<f32> = (1..=scaling.horizon).map(|h| (z[t + h] - z[t]) as f32).collect();
        y.push_row(&target);
    }
    (x, y)
}

fn train_params(config: &LoadConfig, seed: u64, epochs: usize) -> TrainParams {
    TrainParams {
        epochs,
        batch_size: 64,
        learning_rate: 2e-3,
        weight_decay: 1e-4,
        loss: Loss::L1,
        seed,
        patience: config.patience,
    }
}

impl LoadForecaster {
    /// Fits on `train`, a gap-free series on a grid of `step_s` seconds whose first point is
    /// at `start_s`. Every statistic and choice comes from `train` alone: the candidates
    /// are trained on its first part and compared on its last `validation_fraction`; the
    /// winner is retrained on all of `train` for the validated number of epochs.
    pub fn fit(train: &[f64], start_s: i64, step_s: i64, config: &LoadConfig) -> Result<(Self, LoadFitReport)> {
        if config.horizon == 0 || config.window < 2 {
            return Err(ForecastError::InvalidArgument(format!(
                "horizon must be at least 1 and window at least 2, got {} and {}",
                config.horizon, config.window
            )));
        }
        if !(0.05..=0.5).contains(&config.validation_fraction) {
            return Err(ForecastError::InvalidArgument(format!(
                "validation fraction must be within 0.05..=0.5, got {}",
                config.validation_fraction
            )));
        }
        let period = steps_per_day(step_s);
        // Day-earlier inputs only when the training part holds enough days to learn them.
        let seasonal_period = (train.len() >= 3 * period && period > 1).then_some(period);
        let history = config
            .window
            .max(seasonal_period.map_or(0, |p| p * config.horizon.div_ceil(p) + 1));
        let needed = history + config.horizon + 20;
        if train.len() < needed * 2 {
            return Err(ForecastError::NotEnoughData(format!(
                "load forecaster needs at least {} training points for window {}, horizon {}; got {}",
                needed * 2,
                config.window,
                config.horizon,
                train.len()
            )));
        }
        let split = train.len() - (train.len() as f64 * config.validation_fraction).round() as usize;
        let mut validation_mae = Vec::new();
        let mut scored: Vec<(f64, LoadVariant, usize)> = Vec::new();
        for variant in LoadVariant::candidates() {
            let scaling = Self::scaling_for(&variant, train, step_s, config, seasonal_period)?;
            let z = scaling.normalise(train);
            let (x_fit, y_fit) = dataset(
                &scaling,
                &z,
                start_s,
                origins(&scaling, train.len(), split, config.train_examples_max),
            );
            // Validation origins forecast targets inside the tail only.
            let val_origins = (split.max(scaling.history_len()) - 1)..(train.len() - config.horizon);
            let (x_val, _) = dataset(&scaling, &z, start_s, val_origins.clone());
            if x_fit.rows() == 0 || x_val.rows() == 0 {
                continue;
            }
            let mlp = Mlp::new(
                MlpShape {
                    inputs: scaling.inputs(),
                    hidden: variant.hidden.clone(),
                    outputs: config.horizon,
                },
                &mut StdRng::seed_from_u64(config.seed),
            )?;
            let mut validate = |m: &Mlp| -> Result<f64> {
                let out = m.predict(&x_val)?;
                let mut sum = 0.0;
                for (r, t) in val_origins.clone().enumerate() {
                    let pred = scaling.decode(z[t], out.row(r));
                    for (h, p) in pred.iter().enumerate() {
                        sum += (p - train[t + 1 + h]).abs();
                    }
                }
                Ok(sum / (out.rows() * config.horizon) as f64)
            };
            let outcome = mlp.train(
                &x_fit,
                &y_fit,
                None,
                &train_params(config, config.seed, config.epochs_max),
                Some(&mut validate),
            )?;
            let score = outcome.best_validation.unwrap_or(f64::INFINITY);
            tracing::debug!(variant = %variant.name(), score, epochs = outcome.epochs_used, "load variant validated");
            validation_mae.push((variant.name(), score));
            scored.push((score, variant, outcome.epochs_used));
        }
        // The simplest candidate within SIMPLER_TOLERANCE of the best validation score:
        // small validation gains rarely survive a change of regime, and the log transform
        // amplifies errors when the level moves far above the training range.
        let best_score = scored.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
        let best = scored
            .into_iter()
            .find(|c| c.0 <= best_score * (1.0 + SIMPLER_TOLERANCE));
        let Some((variant_score, variant, epochs)) = best else {
            return Err(ForecastError::NotEnoughData(
                "no model variant could be validated on this training part".into(),
            ));
        };
        // The guard: a naive method that beats the chosen variant on the same validation
        // origins forecasts this series instead, so the forecaster is never worse than naive
        // on what it has seen.
        let history = Self::scaling_for(&variant, train, step_s, config, seasonal_period)?.history_len();
        let first = split.max(history) - 1;
        let alpha = pick_ewma_alpha(&train[..split], &EWMA_ALPHAS);
        let levels = ewma_levels(train, alpha);
        let mut fallback = None;
        let mut fallback_score = variant_score;
        for m in Method::candidates(alpha, period, first, config.horizon) {
            if m == Method::Model {
                continue;
            }
            let (mut sum, mut n) = (0.0, 0usize);
            for t in first..train.len() - config.horizon {
                for k in 0..config.horizon {
                    if let Some(p) = m.point(train, &levels, t, k, f64::NAN) {
                        sum += (p - train[t + 1 + k]).abs();
                        n += 1;
                    }
                }
            }
            let score = sum / n.max(1) as f64;
            validation_mae.push((m.name(), score));
            if n > 0 && score < fallback_score {
                (fallback, fallback_score) = (Some(m), score);
            }
        }
        let scaling = Self::scaling_for(&variant, train, step_s, config, seasonal_period)?;
        let z = scaling.normalise(train);
        let (x, y) = dataset(
            &scaling,
            &z,
            start_s,
            origins(&scaling, train.len(), train.len(), config.train_examples_max),
        );
        let mut members = Vec::with_capacity(config.ensemble.max(1));
        for k in 0..config.ensemble.max(1) as u64 {
            let seed = config.seed.wrapping_add(k.wrapping_mul(0x9e37_79b9));
            let mlp = Mlp::new(
                MlpShape {
                    inputs: scaling.inputs(),
                    hidden: variant.hidden.clone(),
                    outputs: config.horizon,
                },
                &mut StdRng::seed_from_u64(seed),
            )?;
            mlp.train(&x, &y, None, &train_params(config, seed, epochs), None)?;
            members.push(mlp);
        }
        let report = LoadFitReport {
            validation_mae,
            chosen: fallback.map_or_else(|| variant.name(), |m| m.name()),
            epochs,
            train_examples: x.rows(),
        };
        Ok((
            Self {
                scaling,
                variant,
                members,
                fallback,
            },
            report,
        ))
    }

    fn scaling_for(
        variant: &LoadVariant,
        train: &[f64],
        step_s: i64,
        config: &LoadConfig,
        seasonal_period: Option<usize>,
    ) -> Result<LoadScaling> {
        let transform = if variant.log_transform {
            ValueTransform::fit_log(train)
        } else {
            ValueTransform::Identity
        };
        let transformed: Vec<f64> = train.iter().map(|&x| transform.apply(x)).collect();
        let norm = Normaliser::fit(&transformed)?;
        Ok(LoadScaling {
            transform,
            norm_mean: norm.mean,
            norm_std: norm.std,
            step_s,
            window: config.window,
            horizon: config.horizon,
            seasonal_period,
        })
    }

    /// Feature scaling and shape of inputs.
    pub fn scaling(&self) -> &LoadScaling {
        &self.scaling
    }

    /// Name of the method in use: the network's variant, or the naive method that beat it
    /// on validation.
    pub fn variant_name(&self) -> String {
        self.fallback.map_or_else(|| self.variant.name(), |m| m.name())
    }

    /// Replaces the network's forecasts by the fallback method's, if there is one.
    fn apply_fallback(&self, series: &[f64], origins: &[usize], rows: &mut [Vec<f64>]) {
        let Some(m) = self.fallback else { return };
        let alpha = match m {
            Method::Ewma { alpha } => alpha,
            _ => 1.0,
        };
        let levels = ewma_levels(series, alpha);
        for (&t, row) in origins.iter().zip(rows.iter_mut()) {
            for (k, v) in row.iter_mut().enumerate() {
                *v = m.point(series, &levels, t, k, *v).unwrap_or(series[t]);
            }
        }
    }

    /// Forecasts for every origin in `origins` of a gap-free `series` starting at `start_s`
    /// (one row of `horizon` raw values per origin). An origin needs
    /// [`LoadScaling::history_len`] points up to and including it.
    pub fn forecast_at(&self, series: &[f64], start_s: i64, origins: &[usize]) -> Result<Vec<Vec<f64>>> {
        let s = &self.scaling;
        if let Some(&bad) = origins.iter().find(|&&t| t + 1 < s.history_len() || t >= series.len()) {
            return Err(ForecastError::NotEnoughData(format!(
                "origin {bad} needs {} points of history within a series of {}",
                s.history_len(),
                series.len()
            )));
        }
        let z = s.normalise(series);
        let mut x = Matrix::new(s.inputs());
        let mut row = Vec::with_capacity(s.inputs());
        for &t in origins {
            row.clear();
            s.features(&z, t, start_s + t as i64 * s.step_s, &mut row);
            x.push_row(&row);
        }
        let mut rows = self.decode_rows(&x, &z, origins)?;
        self.apply_fallback(series, origins, &mut rows);
        Ok(rows)
    }

    /// Forecasts the next `horizon` steps after the last point of `history` (raw values on
    /// the grid, oldest first, the last one at `last_time_s`). Only the final
    /// [`LoadScaling::history_len`] points are used.
    pub fn forecast(&self, history: &[f64], last_time_s: i64) -> Result<Vec<f64>> {
        self.forecast_batch(&[history], &[last_time_s])?
            .pop()
            .ok_or_else(|| ForecastError::NotEnoughData("no forecast produced".into()))
    }

    /// Forecasts for several series at once (e.g. every node's link), in one pass through
    /// the network: `histories[i]` ends at `last_times_s[i]`.
    pub fn forecast_batch(&self, histories: &[&[f64]], last_times_s: &[i64]) -> Result<Vec<Vec<f64>>> {
        if histories.len() != last_times_s.len() {
            return Err(ForecastError::InvalidArgument(format!(
                "{} histories but {} end times",
                histories.len(),
                last_times_s.len()
            )));
        }
        let need = self.scaling.history_len();
        // Concatenate the tails so one matrix holds every origin; each origin only looks at
        // its own tail, which is exactly `need` long.
        let mut joined = Vec::with_capacity(need * histories.len());
        let mut origins = Vec::with_capacity(histories.len());
        for h in histories {
            if h.len() < need {
                return Err(ForecastError::NotEnoughData(format!(
                    "forecast needs {need} points of history, got {}",
                    h.len()
                )));
            }
            joined.extend_from_slice(&h[h.len() - need..]);
            origins.push(joined.len() - 1);
        }
        let z = self.scaling.normalise(&joined);
        let mut x = Matrix::new(self.scaling.inputs());
        let mut row = Vec::with_capacity(self.scaling.inputs());
        for (&t, &last_s) in origins.iter().zip(last_times_s) {
            row.clear();
            self.scaling.features(&z, t, last_s, &mut row);
            x.push_row(&row);
        }
        let mut rows = self.decode_rows(&x, &z, &origins)?;
        if self.fallback.is_some() {
            // Each history on its own: the EWMA level runs over the whole history given.
            for (i, h) in histories.iter().enumerate() {
                let mut one = vec![rows[i].clone()];
                self.apply_fallback(h, &[h.len() - 1], &mut one);
                rows[i] = one.swap_remove(0);
            }
        }
        Ok(rows)
    }

    fn decode_rows(&self, x: &Matrix, z: &[f64], origins: &[usize]) -> Result<Vec<Vec<f64>>> {
        let h = self.scaling.horizon;
        let mut sum = vec![0.0f32; x.rows() * h];
        for m in &self.members {
            for (acc, v) in sum.iter_mut().zip(m.predict(x)?.data) {
                *acc += v;
            }
        }
        let k = self.members.len().max(1) as f32;
        Ok(origins
            .iter()
            .enumerate()
            .map(|(r, &t)| {
                let mean: Vec<f32> = sum[r * h..(r + 1) * h].iter().map(|v| v / k).collect();
                self.scaling.decode(z[t], &mean)
            })
            .collect())
    }

    /// Encodes the forecaster (every ensemble member and the scaling) as one safetensors
    /// blob, e.g. to store it as an object in the cluster.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let blobs: Vec<Vec<u8>> = self
            .members
            .iter()
            .map(|m| m.to_safetensors(HashMap::new()))
            .collect::<Result<_>>()?;
        let meta = serde_json::json!({
            "scaling": self.scaling,
            "variant": self.variant,
            "fallback": self.fallback,
        })
        .to_string();
        pack_members("ark.load", &meta, &blobs)
    }

    /// Decodes a blob written by [`LoadForecaster::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (meta, members) = unpack_members("ark.load", bytes)?;
        #[derive(serde::Deserialize)]
        struct Meta {
            scaling: LoadScaling,
            variant: LoadVariant,
            #[serde(default)]
            fallback: Option<Method>,
        }
        let meta: Meta = serde_json::from_str(&meta)
            .map_err(|e| ForecastError::Weights(format!("bad load forecaster metadata: {e}")))?;
        meta.scaling.validate()?;
        if members
            .iter()
            .any(|m| m.shape().inputs != meta.scaling.inputs() || m.shape().outputs != meta.scaling.horizon)
        {
            return Err(ForecastError::Weights(
                "network shape does not match the stored scaling".into(),
            ));
        }
        Ok(Self {
            scaling: meta.scaling,
            variant: meta.variant,
            members,
            fallback: meta.fallback,
        })
    }
}

/// Packs several networks into one safetensors blob, prefixing each member's tensors with
/// `mK.` and storing `meta` (JSON) under `kind`.
pub(crate) fn pack_members(kind: &str, meta: &str, members: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut names_shapes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut header = HashMap::new();
    header.insert(kind.to_string(), meta.to_string());
    header.insert("ark.members".to_string(), members.len().to_string());
    for (k, blob) in members.iter().enumerate() {
        let st = safetensors::SafeTensors::deserialize(blob)
            .map_err(|e| ForecastError::Weights(format!("member {k}: {e}")))?;
        let (_, m) = safetensors::SafeTensors::read_metadata(blob)
            .map_err(|e| ForecastError::Weights(format!("member {k}: {e}")))?;
        if let Some(shape) = m.metadata().as_ref().and_then(|m| m.get("ark.mlp_shape")) {
            header.insert(format!("m{k}.ark.mlp_shape"), shape.clone());
        }
        for (name, view) in st.tensors() {
            names_shapes.push((format!("m{k}.{name}"), view.shape().to_vec(), view.data().to_vec()));
        }
    }
    let mut views = Vec::new();
    for (name, shape, data) in &names_shapes {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
            .map_err(|e| ForecastError::Weights(format!("tensor {name}: {e}")))?;
        views.push((name.clone(), v));
    }
    safetensors::serialize(views, &Some(header)).map_err(|e| ForecastError::Weights(format!("cannot serialise: {e}")))
}

/// Inverse of [`pack_members`]: the `kind` metadata and the networks.
pub(crate) fn unpack_members(kind: &str, bytes: &[u8]) -> Result<(String, Vec<Mlp>)> {
    let bad = |m: String| ForecastError::Weights(m);
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let body = meta
        .get(kind)
        .ok_or_else(|| bad(format!("not a {kind} blob (missing {kind} metadata)")))?
        .clone();
    let count: usize = meta
        .get("ark.members")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("missing ark.members metadata".into()))?;
    const MEMBERS_MAX: usize = 64;
    if count == 0 || count > MEMBERS_MAX {
        return Err(bad(format!("member count {count} outside 1..={MEMBERS_MAX}")));
    }
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("cannot parse tensors: {e}")))?;
    let mut members = Vec::with_capacity(count);
    for k in 0..count {
        let prefix = format!("m{k}.");
        let shape = meta
            .get(&format!("m{k}.ark.mlp_shape"))
            .ok_or_else(|| bad(format!("member {k} has no shape")))?;
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in st.tensors() {
            if let Some(rest) = name.strip_prefix(&prefix) {
                owned.push((rest.to_string(), view.shape().to_vec(), view.data().to_vec()));
            }
        }
        let mut views = Vec::new();
        for (name, shape, data) in &owned {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            views.push((name.clone(), v));
        }
        let sub_meta = HashMap::from([("ark.mlp_shape".to_string(), shape.clone())]);
        let blob = safetensors::serialize(views, &Some(sub_meta))
            .map_err(|e| bad(format!("cannot re-serialise member {k}: {e}")))?;
        members.push(Mlp::from_safetensors(&blob)?.0);
    }
    Ok((body, members))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    /// A daily sine with a little deterministic noise, at 1-hour steps.
    fn synthetic(len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| {
                let day = std::f64::consts::TAU * i as f64 / 24.0;
                10.0 + 5.0 * day.sin() + ((i * 7919) % 13) as f64 * 0.05
            })
            .collect()
    }

    fn tiny_config(seed: u64) -> LoadConfig {
        LoadConfig {
            horizon: 3,
            window: 6,
            seed,
            epochs_max: 8,
            patience: 3,
            validation_fraction: 0.2,
            ensemble: 2,
            train_examples_max: 1_000,
        }
    }

    #[test]
    fn transforms_round_trip() {
        let t = ValueTransform::fit_log(&[0.0, 10.0, 1000.0]);
        for x in [-5.0, 0.0, 3.0, 1e6] {
            assert!((t.invert(t.apply(x)) - x).abs() < 1e-6 * x.abs().max(1.0));
        }
        assert_eq!(ValueTransform::Identity.apply(2.5), 2.5);
    }

    #[test]
    fn fit_is_deterministic_and_round_trips_through_bytes() {
        let s = synthetic(24 * 8);
        let (a, report) = LoadForecaster::fit(&s, 0, 3600, &tiny_config(1)).unwrap();
        let (b, _) = LoadForecaster::fit(&s, 0, 3600, &tiny_config(1)).unwrap();
        // Every variant, then the naive methods it was guarded against.
        let names: Vec<&str> = report.validation_mae.iter().map(|(n, _)| n.as_str()).collect();
        let variants = LoadVariant::candidates().len();
        assert!(LoadVariant::candidates()
            .iter()
            .zip(&names)
            .all(|(v, n)| v.name() == *n));
        assert_eq!(&names[variants..variants + 2], &["persistence", "seasonal_naive"]);
        assert_eq!(a.scaling().seasonal_period, Some(24));
        let fa = a.forecast(&s, 3600 * (s.len() as i64 - 1)).unwrap();
        let fb = b.forecast(&s, 3600 * (s.len() as i64 - 1)).unwrap();
        assert_eq!(fa, fb);
        assert_eq!(fa.len(), 3);
        let end_s = 3600 * (s.len() as i64 - 1);
        let batch = a
            .forecast_batch(&[&s, &s[..s.len() - 1]], &[end_s, end_s - 3600])
            .unwrap();
        assert_eq!(batch[0], fa);
        assert_eq!(batch[1], a.forecast(&s[..s.len() - 1], end_s - 3600).unwrap());
        let back = LoadForecaster::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(back.forecast(&s, 3600 * (s.len() as i64 - 1)).unwrap(), fa);
        assert!(LoadForecaster::from_bytes(b"junk").is_err());
    }

    #[test]
    fn features_use_only_the_past_and_one_day_earlier() {
        let scaling = LoadScaling {
            transform: ValueTransform::Identity,
            norm_mean: 0.0,
            norm_std: 1.0,
            step_s: 3600,
            window: 3,
            horizon: 2,
            seasonal_period: Some(4),
        };
        let z = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut row = Vec::new();
        scaling.features(&z, 4, 4 * 3600, &mut row);
        // past deltas (2.0-4.0, 3.0-4.0), day-earlier moves (z[1]-z[0], z[2]-z[0]), tod.
        assert_eq!(&row[..2], &[-2.0, -1.0]);
        // Medians of the last 3 points (2, 3, 4) relative to 4.
        assert_eq!(&row[5..7], &[-1.0, -1.0]);
        assert_eq!(&row[8..10], &[1.0, 2.0]);
        assert_eq!(row.len(), scaling.inputs());
        assert_eq!(scaling.history_len(), 5);
    }

    #[test]
    fn a_naive_method_that_wins_on_validation_forecasts_instead() {
        // An exact daily repeat: the value one day earlier is never wrong, a network always
        // is a little, so the guard must hand the series to seasonal naive.
        let s: Vec<f64> = (0..24 * 8)
            .map(|i| {
                10.0 + 5.0 * (std::f64::consts::TAU * (i % 24) as f64 / 24.0).sin() + (i % 24 == 5) as u8 as f64 * 4.0
            })
            .collect();
        let (m, report) = LoadForecaster::fit(&s, 0, 3600, &tiny_config(0)).unwrap();
        assert_eq!(report.chosen, "seasonal_naive");
        assert_eq!(m.variant_name(), "seasonal_naive");
        let end_s = 3600 * (s.len() as i64 - 1);
        let fc = m.forecast(&s, end_s).unwrap();
        let n = s.len();
        assert_eq!(fc, vec![s[n - 24], s[n - 23], s[n - 22]]);
        // The choice survives the trip through bytes (a new leader forecasts the same).
        let back = LoadForecaster::from_bytes(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(back.forecast(&s, end_s).unwrap(), fc);
    }

    #[test]
    fn rejects_series_too_short() {
        assert!(matches!(
            LoadForecaster::fit(&[1.0; 10], 0, 300, &tiny_config(0)),
            Err(ForecastError::NotEnoughData(_))
        ));
    }
}
