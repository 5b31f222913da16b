//! The global load forecaster: one sequence network ([`SeqNet`]) trained across many series,
//! each origin scaled by its own recent history, so that it learns shapes rather than one
//! host's levels and can forecast a series it has never seen. It predicts the 10th, 50th and
//! 90th percentiles of the next `horizon` steps.
//!
//! It also owns the per-series guard: [`GlobalLoadModel::select`] compares the model with
//! persistence, seasonal naive and EWMA on a slice of the series' own past and returns a
//! [`SeriesForecaster`] that uses whichever was best there, so a series on which a naive
//! method wins is forecast by that method.
//!
//! It must not read files (that is `data`) nor compute evaluation reports (that is `eval`).

use std::collections::HashMap;
use std::ops::Range;

use candle_core::Var;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::baseline::Method;
use crate::error::{ForecastError, Result};
use crate::load::{LoadConfig, LoadForecaster};
use crate::metrics::{ewma_levels, pick_ewma_alpha, EWMA_ALPHAS};
use crate::nn::{encode_safetensors, load_var, predict_network, safetensors_metadata, train_network};
use crate::nn::{Loss, Matrix, Network, TrainParams};
use crate::prep::{median, steps_per_day, time_of_day};
use crate::seq::{SeqNet, SeqShape};

/// Quantiles the network predicts, in output-block order.
pub const QUANTILES: [f32; 3] = [0.1, 0.5, 0.9];

/// Inputs and targets are clipped to this (they are `asinh` of scaled deltas, so 12 is a
/// change of about e^12 / 2 typical steps).
const CLIP: f64 = 12.0;

/// Smoothing factors of the EWMA levels given to the network.
const LEVEL_ALPHAS: [f64; 3] = [0.05, 0.2, 0.5];

/// Settings of [`GlobalLoadModel::fit`]. Defaults are generic, not tuned to any series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GlobalConfig {
    /// Steps to forecast.
    pub horizon: usize,
    /// Past steps the convolution sees (a power of two).
    pub context: usize,
    /// Past steps (at most) behind the scale, medians and levels of one origin.
    pub stats_steps: usize,
    /// Channels of each convolution level.
    pub channels: usize,
    /// Width of the head's hidden layer.
    pub hidden: usize,
    /// Seed of initialisation and minibatch order.
    pub seed: u64,
    /// Upper bound on epochs (early stopping usually ends sooner).
    pub epochs_max: usize,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of every training series (its most recent end) used for early stopping.
    pub validation_fraction: f64,
    /// At most this many origins per series (evenly spaced), so that long series do not
    /// dominate and a fit stays bounded.
    pub origins_per_series_max: usize,
    /// Networks averaged (differently seeded), at least 1.
    pub ensemble: usize,
    /// Epochs of fine-tuning on a series' own past before [`GlobalLoadModel::select`]
    /// compares methods (0: none). The tuned model is one more candidate there.
    pub tune_epochs: usize,
    /// Learning rate of that fine-tuning (lower than training's, so it adapts, not forgets).
    pub tune_learning_rate: f64,
    /// Whether [`GlobalLoadModel::select`] also fits a per-series [`LoadForecaster`] on the
    /// series' own past as one more candidate.
    pub per_series_candidate: bool,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            horizon: 12,
            context: 64,
            stats_steps: 256,
            channels: 16,
            hidden: 64,
            seed: 0,
            epochs_max: 60,
            patience: 6,
            batch_size: 128,
            learning_rate: 2e-3,
            weight_decay: 1e-4,
            validation_fraction: 0.2,
            origins_per_series_max: 4000,
            ensemble: 1,
            tune_epochs: 10,
            tune_learning_rate: 5e-4,
            per_series_candidate: true,
        }
    }
}

impl GlobalConfig {
    fn validate(&self) -> Result<()> {
        if self.horizon == 0
            || self.horizon > 1024
            || self.context < 2
            || !self.context.is_power_of_two()
            || self.stats_steps < 2
            || self.ensemble == 0
            || self.ensemble > 16
            || !(0.05..=0.5).contains(&self.validation_fraction)
        {
            return Err(ForecastError::InvalidArgument(format!(
                "invalid global load configuration {self:?}"
            )));
        }
        Ok(())
    }

    /// Summary inputs per origin (after the `context` sequence values).
    fn statics(&self) -> usize {
        LEVEL_ALPHAS.len() + 3 + 1 + self.horizon + 2 + 2
    }

    /// The network these settings build.
    fn shape(&self) -> SeqShape {
        SeqShape {
            context: self.context,
            channels: self.channels,
            statics: self.statics(),
            hidden: self.hidden,
            outputs: self.horizon * QUANTILES.len(),
        }
    }

    /// Points a series needs before its first origin.
    pub fn history_min(&self) -> usize {
        self.context
    }
}

/// One training series: gap-free values on a grid of `step_s` seconds from `start_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// A name for reports (the file name).
    pub name: String,
    /// Values, oldest first.
    pub values: Vec<f64>,
    /// Time of `values[0]`, seconds since the epoch.
    pub start_s: i64,
    /// Grid step, seconds.
    pub step_s: i64,
}

/// How one origin is scaled: `u(v) = asinh((v - last) / scale)`.
#[derive(Debug, Clone, Copy)]
struct Origin {
    last: f64,
    scale: f64,
}

impl Origin {
    fn of(history: &[f64]) -> Self {
        let last = history[history.len() - 1];
        let diffs = history.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (history.len() - 1).max(1) as f64;
        let level = history.iter().map(|v| v.abs()).sum::<f64>() / history.len() as f64;
        // A flat history has no step size; fall back to a small share of its level so a
        // later move still maps to a large but finite input.
        let scale = diffs.max(1e-3 * level).max(1e-9);
        Self { last, scale }
    }

    fn u(&self, v: f64) -> f64 {
        ((v - self.last) / self.scale).asinh().clamp(-CLIP, CLIP)
    }

    fn value(&self, u: f64) -> f64 {
        self.last + self.scale * u.sinh()
    }
}

/// Network inputs for origin `t` of `x` (point `t` at `time_s`, grid `step_s`): `context`
/// scaled past values, then the summaries. Requires `t + 1 >= context`.
fn features(cfg: &GlobalConfig, x: &[f64], t: usize, time_s: i64, step_s: i64, out: &mut Vec<f32>) -> Origin {
    let hist = &x[(t + 1).saturating_sub(cfg.stats_steps)..=t];
    let o = Origin::of(hist);
    let start = out.len();
    out.extend(x[t + 1 - cfg.context..=t].iter().map(|&v| o.u(v) as f32));
    for alpha in LEVEL_ALPHAS {
        let level = hist.iter().skip(1).fold(hist[0], |l, &v| alpha * v + (1.0 - alpha) * l);
        out.push(o.u(level) as f32);
    }
    let recent = &x[(t + 1).saturating_sub(12)..=t];
    for part in [recent, &x[t + 1 - cfg.context..=t], hist] {
        out.push(o.u(median(part).unwrap_or(o.last)) as f32);
    }
    out.push(o.u(hist.iter().sum::<f64>() / hist.len() as f64) as f32);
    // One day earlier: how the series moved from the origin's time to each target's time,
    // and where it stood. Differences, so a level shift since then does not pull back.
    let period = steps_per_day(step_s);
    let reach = period * cfg.horizon.div_ceil(period);
    if t >= reach {
        for h in 1..=cfg.horizon {
            let back = period * h.div_ceil(period);
            out.push((o.u(x[t + h - back]) - o.u(x[t - back])).clamp(-CLIP, CLIP) as f32);
        }
        out.push(o.u(x[t - period]) as f32);
        out.push(1.0);
    } else {
        out.extend(std::iter::repeat_n(0.0, cfg.horizon + 2));
    }
    let [s, c] = time_of_day(time_s + step_s);
    out.extend([s as f32, c as f32]);
    debug_assert_eq!(out.len() - start, cfg.context + cfg.statics());
    o
}

/// A forecast of the next steps: three quantiles per step, raw units, `p10 <= p50 <= p90`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuantileForecast {
    /// 10th percentile per step.
    pub p10: Vec<f64>,
    /// Median per step (the point forecast).
    pub p50: Vec<f64>,
    /// 90th percentile per step.
    pub p90: Vec<f64>,
}

/// How [`GlobalLoadModel::fit`] went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GlobalFitReport {
    /// Series trained on, by name.
    pub series: Vec<String>,
    /// Training rows (origins) and validation rows.
    pub train_rows: usize,
    /// See `train_rows`.
    pub validation_rows: usize,
    /// Epochs kept per ensemble member.
    pub epochs: Vec<usize>,
    /// Validation error per member: mean |p50 − actual| in scaled (`asinh`) units.
    pub validation_scaled_mae: Vec<f64>,
    /// Parameters per member.
    pub parameters: usize,
    /// Wall time of the fit, seconds.
    pub fit_seconds: f64,
}

/// The trained network(s) and the settings that build their inputs.
#[derive(Debug, Clone)]
pub struct GlobalLoadModel {
    config: GlobalConfig,
    members: Vec<SeqNet>,
}

/// Rows of a dataset plus each row's scaling (to turn outputs back into values).
struct Rows {
    x: Matrix,
    y: Matrix,
}

fn dataset(cfg: &GlobalConfig, s: &Series, origins: impl Iterator<Item = usize>) -> Rows {
    let inputs = cfg.context + cfg.statics();
    let (mut x, mut y) = (Matrix::new(inputs), Matrix::new(cfg.horizon));
    let mut row = Vec::with_capacity(inputs);
    for t in origins {
        row.clear();
        let o = features(cfg, &s.values, t, s.start_s + t as i64 * s.step_s, s.step_s, &mut row);
        x.push_row(&row);
        let target: Vec<f32> = (1..=cfg.horizon).map(|h| o.u(s.values[t + h]) as f32).collect();
        y.push_row(&target);
    }
    Rows { x, y }
}

/// Evenly spaced origins from `range`, at most `max` of them (the last one always kept).
fn spaced(range: Range<usize>, max: usize) -> Vec<usize> {
    let n = range.len();
    if n <= max {
        return range.collect();
    }
    let stride = n.div_ceil(max.max(1));
    let mut v: Vec<usize> = range.clone().rev().step_by(stride).collect();
    v.reverse();
    v
}

impl GlobalLoadModel {
    /// Trains on every series of `train`: origins from the first `1 - validation_fraction`
    /// of each series train, the rest stops training early (the best epoch is kept).
    pub fn fit(train: &[Series], config: &GlobalConfig) -> Result<(Self, GlobalFitReport)> {
        config.validate()?;
        let started = std::time::Instant::now();
        let inputs = config.context + config.statics();
        let (mut tx, mut ty) = (Matrix::new(inputs), Matrix::new(config.horizon));
        let (mut vx, mut vy) = (Matrix::new(inputs), Matrix::new(config.horizon));
        let mut names = Vec::new();
        for s in train {
            if s.step_s <= 0 || s.values.iter().any(|v| !v.is_finite()) {
                return Err(ForecastError::InvalidArgument(format!(
                    "series {} must be finite on a positive step",
                    s.name
                )));
            }
            let n = s.values.len();
            let first = config.context - 1;
            let needed = config.context + 4 * config.horizon + 20;
            if n < needed {
                tracing::debug!(series = %s.name, points = n, needed, "series too short to train on; skipped");
                continue;
            }
            let split = first + ((n - first) as f64 * (1.0 - config.validation_fraction)) as usize;
            // Training targets end before the validation part begins.
            let train_origins = spaced(
                first..split.saturating_sub(config.horizon).max(first),
                config.origins_per_series_max,
            );
            let val_origins = spaced(split..n - config.horizon, config.origins_per_series_max / 4 + 1);
            let r = dataset(config, s, train_origins.into_iter());
            tx.data.extend(r.x.data);
            ty.data.extend(r.y.data);
            let r = dataset(config, s, val_origins.into_iter());
            vx.data.extend(r.x.data);
            vy.data.extend(r.y.data);
            names.push(s.name.clone());
        }
        if tx.rows() == 0 || vx.rows() == 0 {
            return Err(ForecastError::NotEnoughData(format!(
                "no series long enough to train on (each needs at least {} points)",
                config.context + 4 * config.horizon + 20
            )));
        }
        let shape = config.shape();
        let mut members = Vec::new();
        let (mut epochs, mut scores) = (Vec::new(), Vec::new());
        for m in 0..config.ensemble {
            let seed = config.seed.wrapping_add(m as u64 * 7919);
            let net = SeqNet::new(shape.clone(), &mut StdRng::seed_from_u64(seed))?;
            let params = TrainParams {
                epochs: config.epochs_max,
                batch_size: config.batch_size,
                learning_rate: config.learning_rate,
                weight_decay: config.weight_decay,
                loss: Loss::Pinball(QUANTILES),
                seed,
                patience: config.patience,
            };
            let h = config.horizon;
            // Early stopping on the median's error in scaled units (what training sees), so
            // a series with a jump far outside its own scale cannot dominate the choice.
            let mut validate = |net: &SeqNet| -> Result<f64> {
                let out = predict_network(net, &vx)?;
                let mut sum = 0.0;
                for i in 0..vx.rows() {
                    let (p, a) = (&out.row(i)[h..2 * h], vy.row(i));
                    sum += p.iter().zip(a).map(|(&p, &a)| f64::from((p - a).abs())).sum::<f64>();
                }
                Ok(sum / (vx.rows() * h) as f64)
            };
            let outcome = train_network(&net, &tx, &ty, None, &params, Some(&mut validate))?;
            epochs.push(outcome.epochs_used);
            scores.push(outcome.best_validation.unwrap_or(f64::NAN));
            members.push(net);
        }
        let parameters = members
            .first()
            .map(|n| n.vars().iter().map(|v| v.as_tensor().elem_count()).sum())
            .unwrap_or(0);
        let report = GlobalFitReport {
            series: names,
            train_rows: tx.rows(),
            validation_rows: vx.rows(),
            epochs,
            validation_scaled_mae: scores,
            parameters,
            fit_seconds: started.elapsed().as_secs_f64(),
        };
        Ok((
            Self {
                config: config.clone(),
                members,
            },
            report,
        ))
    }

    /// The settings the model was trained with.
    pub fn config(&self) -> &GlobalConfig {
        &self.config
    }

    /// Sets the candidates [`GlobalLoadModel::select`] adds to the model and the baselines:
    /// epochs of fine-tuning (0: no tuned copy) and the per-series forecaster, e.g. to
    /// override what a stored model was saved with.
    pub fn set_candidates(&mut self, tune_epochs: usize, per_series: bool) {
        self.config.tune_epochs = tune_epochs;
        self.config.per_series_candidate = per_series;
    }

    /// Steps forecast.
    pub fn horizon(&self) -> usize {
        self.config.horizon
    }

    /// Forecasts from each origin `t` of `series` (gap-free, `step_s` grid from `start_s`),
    /// using only `series[..=t]`. Every origin needs `t + 1 >= context`.
    pub fn forecast_at(
        &self,
        series: &[f64],
        start_s: i64,
        step_s: i64,
        origins: &[usize],
    ) -> Result<Vec<QuantileForecast>> {
        let cfg = &self.config;
        if step_s <= 0 {
            return Err(ForecastError::InvalidArgument(format!(
                "step must be positive, got {step_s}"
            )));
        }
        if let Some(&t) = origins.iter().find(|&&t| t + 1 < cfg.context || t >= series.len()) {
            return Err(ForecastError::NotEnoughData(format!(
                "origin {t} needs {} points of history within a series of {}",
                cfg.context,
                series.len()
            )));
        }
        if series.iter().any(|v| !v.is_finite()) {
            return Err(ForecastError::InvalidArgument("series holds a non-finite value".into()));
        }
        let mut x = Matrix::new(cfg.context + cfg.statics());
        let mut scalings = Vec::with_capacity(origins.len());
        let mut row = Vec::new();
        for &t in origins {
            row.clear();
            scalings.push(features(cfg, series, t, start_s + t as i64 * step_s, step_s, &mut row));
            x.push_row(&row);
        }
        let mut sum = vec![0.0f64; x.rows() * cfg.horizon * QUANTILES.len()];
        for m in &self.members {
            let out = predict_network(m, &x)?;
            for (s, &v) in sum.iter_mut().zip(&out.data) {
                *s += f64::from(v);
            }
        }
        let k = self.members.len().max(1) as f64;
        let h = cfg.horizon;
        Ok(scalings
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let row = &sum[i * 3 * h..(i + 1) * 3 * h];
                let mut fc = QuantileForecast {
                    p10: Vec::with_capacity(h),
                    p50: Vec::with_capacity(h),
                    p90: Vec::with_capacity(h),
                };
                for j in 0..h {
                    let mut q = [row[j] / k, row[h + j] / k, row[2 * h + j] / k];
                    // Quantile heads are trained separately and may cross; sorting keeps the
                    // set of predicted values and restores the order.
                    q.sort_by(f64::total_cmp);
                    fc.p10.push(o.value(q[0]));
                    fc.p50.push(o.value(q[1]));
                    fc.p90.push(o.value(q[2]));
                }
                fc
            })
            .collect())
    }

    /// Chooses, on `series`' own past, between this model and the naive baselines: every
    /// method forecasts from each origin whose targets lie in the last `validation_fraction`
    /// of `series`; the lowest mean absolute error (over observed targets, when `observed` is
    /// given) wins. EWMA's alpha is picked on the part before that slice. The chosen method
    /// is then fitted again on the whole of `series` (the fine-tuned copy, the per-series
    /// forecaster, EWMA's alpha).
    pub fn select(
        &self,
        series: &[f64],
        observed: Option<&[bool]>,
        start_s: i64,
        step_s: i64,
        validation_fraction: f64,
    ) -> Result<SeriesForecaster> {
        let h = self.config.horizon;
        let n = series.len();
        let val_len = (n as f64 * validation_fraction.clamp(0.05, 0.9)) as usize;
        let val_start = n.saturating_sub(val_len);
        let first_origin = val_start.saturating_sub(1).max(self.config.context - 1);
        if first_origin + h >= n {
            return Err(ForecastError::NotEnoughData(format!(
                "{n} points leave no validation origin (needs more than {} + {h})",
                first_origin + 1
            )));
        }
        let alpha = pick_ewma_alpha(&series[..val_start.max(2)], &EWMA_ALPHAS);
        let origins: Vec<usize> = (first_origin..n - h).collect();
        let model = self.forecast_at(series, start_s, step_s, &origins)?;
        let tuned = self.tuned_on(&series[..val_start], start_s, step_s)?;
        let tuned_fc = match &tuned {
            Some(t) => Some(t.forecast_at(series, start_s, step_s, &origins)?),
            None => None,
        };
        let local = self.per_series_on(&series[..val_start], start_s, step_s);
        let local_fc = match &local {
            Some(l) => l.forecast_at(series, start_s, &origins).ok(),
            None => None,
        };
        let mut methods = Method::candidates(alpha, steps_per_day(step_s), first_origin, h);
        if tuned.is_some() {
            methods.push(Method::Tuned);
        }
        if local_fc.is_some() {
            methods.push(Method::PerSeries);
            if tuned.is_some() {
                methods.push(Method::Blend);
            }
        }
        let mut errors = vec![(0.0f64, 0usize); methods.len()];
        let levels = ewma_levels(series, alpha);
        for (i, (&t, fc)) in origins.iter().zip(&model).enumerate() {
            for k in 0..h {
                let target = t + 1 + k;
                if observed.is_some_and(|o| !o.get(target).copied().unwrap_or(false)) {
                    continue;
                }
                let actual = series[target];
                for (m, e) in methods.iter().zip(errors.iter_mut()) {
                    let model_point = match (m, &tuned_fc, &local_fc) {
                        (Method::Tuned, Some(tf), _) => tf[i].p50[k],
                        (Method::PerSeries, _, Some(lf)) => lf[i][k],
                        (Method::Blend, Some(tf), Some(lf)) => (tf[i].p50[k] + lf[i][k]) / 2.0,
                        _ => fc.p50[k],
                    };
                    if let Some(p) = m.point(series, &levels, t, k, model_point) {
                        e.0 += (p - actual).abs();
                        e.1 += 1;
                    }
                }
            }
        }
        let validation_mae: Vec<(String, f64)> = methods
            .iter()
            .zip(&errors)
            .filter(|(_, e)| e.1 > 0)
            .map(|(m, e)| (m.name(), e.0 / e.1 as f64))
            .collect();
        // Ties go to the earlier (simpler) method; the models are listed last.
        let chosen = methods
            .iter()
            .zip(&errors)
            .filter(|(_, e)| e.1 > 0)
            .min_by(|a, b| (a.1 .0 / a.1 .1 as f64).total_cmp(&(b.1 .0 / b.1 .1 as f64)))
            .map(|(m, _)| *m)
            .ok_or_else(|| ForecastError::NotEnoughData("no observed validation target".into()))?;
        // Chosen on the validation slice, then fitted again on the whole past, that slice
        // included: the forecasts start where the past ends, so its most recent part is the
        // most telling, and the comparison above only had to rank the methods.
        let model = match chosen {
            Method::Tuned | Method::Blend => self.tuned_on(series, start_s, step_s)?.or(tuned),
            _ => None,
        };
        let local = match chosen {
            Method::PerSeries | Method::Blend => self.per_series_on(series, start_s, step_s).or(local),
            _ => None,
        };
        let method = match chosen {
            Method::Ewma { .. } => Method::Ewma {
                alpha: pick_ewma_alpha(series, &EWMA_ALPHAS),
            },
            m => m,
        };
        let model = model.unwrap_or_else(|| self.clone());
        Ok(SeriesForecaster {
            model,
            local,
            method,
            validation_mae,
            step_s,
        })
    }

    /// A per-series forecaster fitted on `past` alone, when that candidate is on and `past`
    /// is long enough for one.
    fn per_series_on(&self, past: &[f64], start_s: i64, step_s: i64) -> Option<LoadForecaster> {
        if !self.config.per_series_candidate {
            return None;
        }
        let config = LoadConfig {
            horizon: self.config.horizon,
            seed: self.config.seed,
            ..LoadConfig::default()
        };
        match LoadForecaster::fit(past, start_s, step_s, &config) {
            Ok((m, _)) => Some(m),
            Err(e) => {
                tracing::debug!(error = %e, "no per-series candidate");
                None
            }
        }
    }

    /// A copy fine-tuned on `past` for `tune_epochs` (every origin of it, pinball loss, no
    /// early stopping: the caller judges it on data after `past`). `None` when tuning is off
    /// or `past` is too short to tune on.
    fn tuned_on(&self, past: &[f64], start_s: i64, step_s: i64) -> Result<Option<GlobalLoadModel>> {
        let cfg = &self.config;
        if cfg.tune_epochs == 0 || past.len() < cfg.context + 4 * cfg.horizon + 20 {
            return Ok(None);
        }
        let series = Series {
            name: String::new(),
            values: past.to_vec(),
            start_s,
            step_s,
        };
        let origins = spaced(cfg.context - 1..past.len() - cfg.horizon, cfg.origins_per_series_max);
        let rows = dataset(cfg, &series, origins.into_iter());
        // A deep copy: the tuned weights must not alias the shared model's.
        let copy = Self::from_bytes(&self.to_bytes()?)?;
        for (m, net) in copy.members.iter().enumerate() {
            let params = TrainParams {
                epochs: cfg.tune_epochs,
                batch_size: cfg.batch_size,
                learning_rate: cfg.tune_learning_rate,
                weight_decay: cfg.weight_decay,
                loss: Loss::Pinball(QUANTILES),
                seed: cfg.seed.wrapping_add(0x7u64.wrapping_mul(m as u64 + 1)),
                patience: cfg.tune_epochs,
            };
            train_network(net, &rows.x, &rows.y, None, &params, None)?;
        }
        Ok(Some(copy))
    }

    /// Encodes the configuration and every member's weights as one safetensors blob.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let named: Vec<(String, &Var)> = self
            .members
            .iter()
            .enumerate()
            .flat_map(|(m, net)| {
                net.named()
                    .into_iter()
                    .map(move |(name, var)| (format!("m{m}.{name}"), var))
            })
            .collect();
        let mut meta = HashMap::new();
        let config = serde_json::to_string(&self.config)
            .map_err(|e| ForecastError::Weights(format!("cannot encode the configuration: {e}")))?;
        meta.insert("ark.global_load_config".into(), config);
        meta.insert("ark.members".into(), self.members.len().to_string());
        encode_safetensors(&named, meta)
    }

    /// Decodes a blob written by [`GlobalLoadModel::to_bytes`]; shapes and configuration are
    /// checked, so a corrupt or foreign blob is an error, not a silent misforecast.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| ForecastError::Weights(m);
        let meta = safetensors_metadata(bytes)?;
        let config: GlobalConfig = serde_json::from_str(
            meta.get("ark.global_load_config")
                .ok_or_else(|| bad("not a global load model: no ark.global_load_config".into()))?,
        )
        .map_err(|e| bad(format!("bad ark.global_load_config: {e}")))?;
        config.validate().map_err(|e| bad(e.to_string()))?;
        let members: usize = meta
            .get("ark.members")
            .and_then(|m| m.parse().ok())
            .filter(|m| (1..=16).contains(m))
            .ok_or_else(|| bad("missing or invalid ark.members".into()))?;
        let tensors =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("cannot parse tensors: {e}")))?;
        let shape = config.shape();
        let mut nets = Vec::with_capacity(members);
        for m in 0..members {
            nets.push(SeqNet::load(shape.clone(), |name, dims| {
                load_var(&tensors, &format!("m{m}.{name}"), dims)
            })?);
        }
        Ok(Self { config, members: nets })
    }
}

/// The forecaster for one series: the global model or the baseline that was better on the
/// series' own validation slice.
#[derive(Debug, Clone)]
pub struct SeriesForecaster {
    model: GlobalLoadModel,
    /// The per-series forecaster, when it was chosen.
    local: Option<LoadForecaster>,
    method: Method,
    validation_mae: Vec<(String, f64)>,
    step_s: i64,
}

impl SeriesForecaster {
    /// The method in use.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Validation MAE of every method compared, by name.
    pub fn validation_mae(&self) -> &[(String, f64)] {
        &self.validation_mae
    }

    /// Forecasts from each origin of `series` (gap-free, from `start_s`). A baseline or the
    /// per-series forecaster gives a point; the global model's p10/p90 are shifted to centre
    /// on it, so the spread still comes from the model.
    pub fn forecast_at(&self, series: &[f64], start_s: i64, origins: &[usize]) -> Result<Vec<QuantileForecast>> {
        let model = self.model.forecast_at(series, start_s, self.step_s, origins)?;
        if matches!(self.method, Method::Model | Method::Tuned) {
            return Ok(model);
        }
        let alpha = match self.method {
            Method::Ewma { alpha } => alpha,
            _ => 1.0,
        };
        let levels = ewma_levels(series, alpha);
        let local = match &self.local {
            Some(l) => Some(l.forecast_at(series, start_s, origins)?),
            None => None,
        };
        Ok(origins
            .iter()
            .zip(model)
            .enumerate()
            .map(|(i, (&t, fc))| {
                let mut out = fc.clone();
                for k in 0..fc.p50.len() {
                    let point = match (&local, self.method) {
                        (Some(l), Method::Blend) => (fc.p50[k] + l[i][k]) / 2.0,
                        (Some(l), _) => l[i][k],
                        (None, _) => fc.p50[k],
                    };
                    let p = self.method.point(series, &levels, t, k, point).unwrap_or(series[t]);
                    let shift = p - fc.p50[k];
                    out.p10[k] = fc.p10[k] + shift;
                    out.p50[k] = p;
                    out.p90[k] = fc.p90[k] + shift;
                }
                out
            })
            .collect())
    }

    /// The forecast after the last point of `history`.
    pub fn forecast(&self, history: &[f64], start_s: i64) -> Result<QuantileForecast> {
        let t = history
            .len()
            .checked_sub(1)
            .ok_or_else(|| ForecastError::NotEnoughData("empty history".into()))?;
        self.forecast_at(history, start_s, &[t])?
            .pop()
            .ok_or_else(|| ForecastError::NotEnoughData("no forecast".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    const STEP_S: i64 = 3600;

    /// A daily cycle at hourly steps with its own level, amplitude and phase, plus a little
    /// deterministic noise: series that share a shape but not a scale.
    fn cyclic(name: &str, days: usize, level: f64, amplitude: f64, phase: f64) -> Series {
        let values = (0..days * 24)
            .map(|i| {
                let a = std::f64::consts::TAU * i as f64 / 24.0 + phase;
                level + amplitude * (a.sin() + 0.05 * ((i * 7919) % 11) as f64 / 11.0)
            })
            .collect();
        Series {
            name: name.into(),
            values,
            start_s: 0,
            step_s: STEP_S,
        }
    }

    fn tiny() -> GlobalConfig {
        GlobalConfig {
            horizon: 4,
            context: 16,
            stats_steps: 48,
            channels: 4,
            hidden: 16,
            epochs_max: 30,
            patience: 4,
            batch_size: 32,
            origins_per_series_max: 400,
            ..GlobalConfig::default()
        }
    }

    fn corpus() -> Vec<Series> {
        vec![
            cyclic("a", 10, 100.0, 20.0, 0.0),
            cyclic("b", 10, 5.0, 1.0, 1.0),
            cyclic("c", 10, 1e6, 3e5, 2.0),
        ]
    }

    #[test]
    fn forecasts_a_series_it_never_saw_better_than_persistence() {
        let (model, report) = GlobalLoadModel::fit(&corpus(), &tiny()).unwrap();
        assert_eq!(report.series.len(), 3);
        // Unseen: another level, scale and phase.
        let s = cyclic("unseen", 6, 4000.0, 700.0, 4.0).values;
        let origins: Vec<usize> = (48..s.len() - 4).collect();
        let fc = model.forecast_at(&s, 0, STEP_S, &origins).unwrap();
        let (mut model_err, mut persist_err) = (0.0, 0.0);
        for (&t, f) in origins.iter().zip(&fc) {
            for k in 0..4 {
                model_err += (f.p50[k] - s[t + 1 + k]).abs();
                persist_err += (s[t] - s[t + 1 + k]).abs();
                assert!(f.p10[k] <= f.p50[k] && f.p50[k] <= f.p90[k], "quantiles out of order");
            }
        }
        assert!(
            model_err < 0.5 * persist_err,
            "model {model_err} vs persistence {persist_err}"
        );
    }

    #[test]
    fn fit_is_deterministic_and_round_trips_through_bytes() {
        let (a, _) = GlobalLoadModel::fit(&corpus()[..2], &tiny()).unwrap();
        let (b, _) = GlobalLoadModel::fit(&corpus()[..2], &tiny()).unwrap();
        let s = cyclic("x", 3, 50.0, 10.0, 0.5).values;
        let fa = a.forecast_at(&s, 0, STEP_S, &[40, 60]).unwrap();
        assert_eq!(fa, b.forecast_at(&s, 0, STEP_S, &[40, 60]).unwrap());
        let bytes = a.to_bytes().unwrap();
        let back = GlobalLoadModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.forecast_at(&s, 0, STEP_S, &[40, 60]).unwrap(), fa);
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 4);
        assert!(GlobalLoadModel::from_bytes(&cut).is_err());
        assert!(GlobalLoadModel::from_bytes(b"junk").is_err());
    }

    #[test]
    fn a_baseline_that_wins_on_the_series_own_past_forecasts_it() {
        let (model, _) = GlobalLoadModel::fit(&corpus()[..2], &tiny()).unwrap();
        // An exact daily repeat with a sharp daily spike: the value one day earlier is never
        // wrong, so the guard must choose seasonal naive and forecast exactly that.
        let s: Vec<f64> = (0..24 * 6)
            .map(|i| if i % 24 == 7 { 90.0 } else { 10.0 + (i % 24) as f64 })
            .collect();
        let chooser = model.select(&s, None, 0, STEP_S, 0.3).unwrap();
        assert_eq!(chooser.method(), Method::SeasonalNaive { period: 24 });
        let fc = chooser.forecast(&s, 0).unwrap();
        let n = s.len();
        assert_eq!(fc.p50, s[n - 24..n - 20].to_vec());
        assert!(chooser.validation_mae().iter().any(|(m, _)| m == "model"));
    }

    #[test]
    fn fine_tuning_adapts_a_copy_and_it_and_a_per_series_fit_are_candidates() {
        let (model, _) = GlobalLoadModel::fit(&corpus()[..1], &tiny()).unwrap();
        // A shape the corpus never had: a weekly-free sawtooth with a slow trend.
        let s: Vec<f64> = (0..24 * 8).map(|i| (i % 9) as f64 * 3.0 + i as f64 * 0.2).collect();
        let before = model.forecast_at(&s, 0, STEP_S, &[100, 150]).unwrap();
        let chooser = model.select(&s, None, 0, STEP_S, 0.3).unwrap();
        let names: Vec<&str> = chooser.validation_mae().iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            ["model", "model_tuned", "per_series", "blend(model_tuned, per_series)"]
                .iter()
                .all(|m| names.contains(m)),
            "{names:?}"
        );
        // Tuning trained a copy: the shared model forecasts exactly as before.
        assert_eq!(model.forecast_at(&s, 0, STEP_S, &[100, 150]).unwrap(), before);
        let tuned = model.tuned_on(&s[..120], 0, STEP_S).unwrap().unwrap();
        assert_ne!(tuned.forecast_at(&s, 0, STEP_S, &[100, 150]).unwrap(), before);
        let off = GlobalLoadModel {
            config: GlobalConfig {
                tune_epochs: 0,
                per_series_candidate: false,
                ..model.config.clone()
            },
            members: model.members.clone(),
        };
        assert!(off.tuned_on(&s[..120], 0, STEP_S).unwrap().is_none());
        let names: Vec<String> = off
            .select(&s, None, 0, STEP_S, 0.3)
            .unwrap()
            .validation_mae()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        assert!(
            !names.iter().any(|n| n == "model_tuned" || n == "per_series"),
            "{names:?}"
        );
    }

    #[test]
    fn the_chosen_forecaster_is_fitted_again_on_the_whole_past() {
        let (model, _) = GlobalLoadModel::fit(&corpus()[..1], &tiny()).unwrap();
        // The sawtooth with a trend, which the baselines forecast badly.
        let s: Vec<f64> = (0..24 * 8).map(|i| (i % 9) as f64 * 3.0 + i as f64 * 0.2).collect();
        let chooser = model.select(&s, None, 0, STEP_S, 0.3).unwrap();
        let n = s.len();
        let val_start = n - (n as f64 * 0.3) as usize;
        let last = [n - 1];
        // What the chosen method forecasts after the last point when fitted on `past`.
        let point = |past: &[f64]| -> Vec<f64> {
            let tuned = model
                .tuned_on(past, 0, STEP_S)
                .unwrap()
                .map(|t| t.forecast_at(&s, 0, STEP_S, &last).unwrap()[0].p50.clone());
            let local = model
                .per_series_on(past, 0, STEP_S)
                .map(|l| l.forecast_at(&s, 0, &last).unwrap()[0].clone());
            match chooser.method() {
                Method::Tuned => tuned.unwrap(),
                Method::PerSeries => local.unwrap(),
                Method::Blend => tuned
                    .unwrap()
                    .iter()
                    .zip(local.unwrap())
                    .map(|(t, l)| (t + l) / 2.0)
                    .collect(),
                other => panic!("a fitted method should win on this series, not {other:?}"),
            }
        };
        let whole = point(&s);
        assert_ne!(whole, point(&s[..val_start]), "refitting changed nothing to check");
        assert_eq!(chooser.forecast(&s, 0).unwrap().p50, whole);
    }

    #[test]
    fn refuses_bad_input() {
        let (model, _) = GlobalLoadModel::fit(&corpus()[..1], &tiny()).unwrap();
        let s = cyclic("x", 2, 50.0, 10.0, 0.5).values;
        // Too little history for the context.
        assert!(model.forecast_at(&s, 0, STEP_S, &[3]).is_err());
        let mut bad = s.clone();
        bad[20] = f64::NAN;
        assert!(model.forecast_at(&bad, 0, STEP_S, &[30]).is_err());
        assert!(model.forecast_at(&s, 0, 0, &[30]).is_err());
        assert!(GlobalLoadModel::fit(&[cyclic("short", 1, 1.0, 1.0, 0.0)], &tiny()).is_err());
    }
}
