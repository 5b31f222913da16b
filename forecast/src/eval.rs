//! Offline evaluation of both forecasters against naive baselines on a time split, producing
//! serialisable reports. It owns the split rules (first 70% in time to train, last 30% to
//! test; a separate test file for failures) and the baselines; it must not print (that is
//! `cli`) nor fit anything on test data.

use crate::baseline::Method;
use crate::error::{ForecastError, Result};
use crate::load::{LoadConfig, LoadFitReport, LoadForecaster};
use crate::metrics::{ewma_levels, pick_ewma_alpha, EWMA_ALPHAS};
use crate::prep::{prepare, steps_per_day};

// The failure evaluation lives in its own module; re-exported so `eval` stays the one
// place callers import reports from.
pub use crate::eval_failure::{eval_failure, FailureModelFigures, FailureReport, PerDriveFigures, RuleFigures};

/// Fraction of a series (in time) used for training in `eval-load`.
pub const LOAD_TRAIN_FRACTION: f64 = 0.7;

/// Errors of one forecaster over the test origins.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ForecastErrors {
    /// Method name.
    pub method: String,
    /// MAE averaged over horizons 1..=H.
    pub mae: f64,
    /// RMSE per horizon, averaged over horizons 1..=H.
    pub rmse: f64,
    /// MAE at each horizon 1..=H.
    pub mae_by_horizon: Vec<f64>,
}

/// Result of `eval-load`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// Input file.
    pub file: String,
    /// Grid step after resampling, seconds.
    pub step_s: i64,
    /// Grid points after resampling.
    pub points: usize,
    /// Points filled by interpolation (never used as targets).
    pub filled_points: usize,
    /// Points in the training part.
    pub train_points: usize,
    /// Forecast origins evaluated.
    pub test_origins: usize,
    /// Forecast horizon, steps.
    pub horizon: usize,
    /// EWMA alpha chosen on the training part.
    pub ewma_alpha: f64,
    /// The model's errors.
    pub model: ForecastErrors,
    /// Baselines' errors (persistence, seasonal naive when a day of history exists, EWMA).
    pub baselines: Vec<ForecastErrors>,
    /// Name of the baseline with the lowest MAE.
    pub best_baseline: String,
    /// Model MAE divided by the best baseline's MAE (below 1 is better).
    pub mae_ratio_to_best_baseline: f64,
    /// How the model was chosen.
    pub fit: LoadFitReport,
}

pub(crate) struct ErrorAccumulator {
    abs: Vec<f64>,
    sq: Vec<f64>,
    n: Vec<usize>,
}

impl ErrorAccumulator {
    pub(crate) fn new(h: usize) -> Self {
        Self {
            abs: vec![0.0; h],
            sq: vec![0.0; h],
            n: vec![0; h],
        }
    }

    pub(crate) fn add(&mut self, h: usize, pred: f64, actual: f64) {
        let e = pred - actual;
        self.abs[h] += e.abs();
        self.sq[h] += e * e;
        self.n[h] += 1;
    }

    pub(crate) fn finish(self, method: &str) -> ForecastErrors {
        let mae_by_horizon: Vec<f64> = self
            .abs
            .iter()
            .zip(&self.n)
            .map(|(s, &n)| s / n.max(1) as f64)
            .collect();
        let rmse_by_horizon: Vec<f64> = self
            .sq
            .iter()
            .zip(&self.n)
            .map(|(s, &n)| (s / n.max(1) as f64).sqrt())
            .collect();
        let h = mae_by_horizon.len().max(1) as f64;
        ForecastErrors {
            method: method.to_string(),
            mae: mae_by_horizon.iter().sum::<f64>() / h,
            rmse: rmse_by_horizon.iter().sum::<f64>() / h,
            mae_by_horizon,
        }
    }
}

/// Errors of the naive methods (persistence; seasonal naive when every origin has a day
/// behind it; EWMA with `alpha`) forecasting from `origins` of `series`, scored on observed
/// targets only, and the one with the lowest MAE. Shared by every load evaluation, so they
/// all judge against the same baselines.
pub(crate) fn baseline_errors(
    series: &[f64],
    observed: &[bool],
    origins: &[usize],
    horizon: usize,
    alpha: f64,
    step_s: i64,
) -> Result<(Vec<ForecastErrors>, ForecastErrors)> {
    let first = origins.first().copied().unwrap_or(0);
    let methods: Vec<Method> = Method::candidates(alpha, steps_per_day(step_s), first, horizon)
        .into_iter()
        .filter(|m| *m != Method::Model)
        .collect();
    let levels = ewma_levels(series, alpha);
    let mut acc: Vec<ErrorAccumulator> = methods.iter().map(|_| ErrorAccumulator::new(horizon)).collect();
    for &t in origins {
        for k in 0..horizon {
            let target = t + 1 + k;
            if !observed[target] {
                continue;
            }
            for (m, a) in methods.iter().zip(acc.iter_mut()) {
                if let Some(p) = m.point(series, &levels, t, k, f64::NAN) {
                    a.add(k, p, series[target]);
                }
            }
        }
    }
    let baselines: Vec<ForecastErrors> = methods.iter().zip(acc).map(|(m, a)| a.finish(&m.name())).collect();
    let best = baselines
        .iter()
        .min_by(|a, b| a.mae.total_cmp(&b.mae))
        .cloned()
        .ok_or_else(|| ForecastError::NotEnoughData("no baseline".into()))?;
    Ok((baselines, best))
}

/// Evaluates the load forecaster on `(timestamp_s, value)` samples: resample to the median
/// step, fill gaps, train on the first 70% in time, forecast from every origin whose
/// targets lie in the last 30%, and score against observed (not filled) targets only.
pub fn eval_load(file: &str, points: &[(i64, f64)], config: &LoadConfig) -> Result<LoadReport> {
    let grid = prepare(points)?;
    let (step_s, observed, series) = (grid.step_s, grid.observed, grid.values);
    let n = series.len();
    let n_train = (n as f64 * LOAD_TRAIN_FRACTION).floor() as usize;
    let h = config.horizon;
    if n_train + h >= n {
        return Err(ForecastError::NotEnoughData(format!(
            "{n} points leave no test origin for horizon {h}"
        )));
    }
    let train = &series[..n_train];
    let (model, fit) = LoadForecaster::fit(train, grid.start_s, step_s, config)?;

    // Origins: the last training point up to the last point with a full horizon after it.
    let origins: Vec<usize> = (n_train - 1..n - h).collect();
    let model_pred = model.forecast_at(&series, grid.start_s, &origins)?;
    let alpha = pick_ewma_alpha(train, &EWMA_ALPHAS);
    let (baselines, best) = baseline_errors(&series, &observed, &origins, h, alpha, step_s)?;
    let mut acc_model = ErrorAccumulator::new(h);
    for (&t, pred) in origins.iter().zip(&model_pred) {
        for (k, &p) in pred.iter().enumerate().take(h) {
            let target = t + 1 + k;
            if observed[target] {
                acc_model.add(k, p, series[target]);
            }
        }
    }
    let model_errors = acc_model.finish(&format!("model({})", model.variant_name()));
    Ok(LoadReport {
        file: file.to_string(),
        step_s,
        points: n,
        filled_points: observed.iter().filter(|&&o| !o).count(),
        train_points: n_train,
        test_origins: origins.len(),
        horizon: h,
        ewma_alpha: alpha,
        mae_ratio_to_best_baseline: model_errors.mae / best.mae,
        best_baseline: best.method,
        model: model_errors,
        baselines,
        fit,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn eval_load_reports_model_and_three_baselines() {
        // Ten days at one-hour steps with a daily cycle and a gap.
        let mut points: Vec<(i64, f64)> = (0..240)
            .map(|i| {
                let day = std::f64::consts::TAU * f64::from(i) / 24.0;
                (i64::from(i) * 3600, 50.0 + 20.0 * day.sin() + f64::from(i % 5))
            })
            .collect();
        points.remove(200);
        let config = LoadConfig {
            horizon: 4,
            window: 8,
            epochs_max: 10,
            ensemble: 1,
            ..LoadConfig::default()
        };
        let r = eval_load("synthetic", &points, &config).unwrap();
        assert_eq!(r.step_s, 3600);
        assert_eq!(r.points, 240);
        assert_eq!(r.filled_points, 1);
        assert_eq!(r.train_points, 168);
        assert_eq!(r.test_origins, 240 - 4 - 167);
        let names: Vec<&str> = r.baselines.iter().map(|b| b.method.as_str()).collect();
        assert_eq!(names[..2], ["persistence", "seasonal_naive"]);
        assert!(names[2].starts_with("ewma"));
        assert!(r.model.mae.is_finite() && r.model.mae_by_horizon.len() == 4);
        // A pure daily cycle: the seasonal baseline is nearly exact, persistence is not.
        assert!(r.baselines[1].mae < r.baselines[0].mae);
    }
}
