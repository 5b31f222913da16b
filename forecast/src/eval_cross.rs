//! Leave-series-out evaluation of the global load forecaster: fitted on some series, scored
//! on others it never saw, against the same naive baselines as `eval-load`.
//!
//! For every test series: its first 70% in time is the history the forecaster may look at
//! (the last 30% of that history is the validation slice on which the model or a baseline is
//! chosen, see [`GlobalLoadModel::select`]); forecasts are scored from every origin whose
//! targets lie in the last 30%, on observed targets only. It must not print (that is `cli`).

use crate::error::{ForecastError, Result};
use crate::eval::{baseline_errors, ErrorAccumulator, ForecastErrors, LOAD_TRAIN_FRACTION};
use crate::global::{GlobalConfig, GlobalFitReport, GlobalLoadModel, Series};
use crate::metrics::{pick_ewma_alpha, EWMA_ALPHAS};
use crate::prep::{prepare, Prepared};

/// Fraction of a test series' history (its most recent end) on which the method is chosen.
pub const SELECTION_FRACTION: f64 = 0.3;

/// One held-out series' figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeldOutReport {
    /// Input file.
    pub file: String,
    /// Fold whose model scored it.
    pub fold: usize,
    /// Grid step, seconds.
    pub step_s: i64,
    /// Grid points.
    pub points: usize,
    /// Points of history before the test part.
    pub history_points: usize,
    /// Forecast origins scored.
    pub test_origins: usize,
    /// Method chosen on the validation slice of the history.
    pub chosen: String,
    /// Validation MAE of every method compared.
    pub validation_mae: Vec<(String, f64)>,
    /// Errors of the chosen method on the test part: the forecaster's figures.
    pub forecaster: ForecastErrors,
    /// Errors of the global model's median alone.
    pub model: ForecastErrors,
    /// Baselines (EWMA's alpha picked on the whole history).
    pub baselines: Vec<ForecastErrors>,
    /// The baseline with the lowest test MAE.
    pub best_baseline: String,
    /// Forecaster MAE / best baseline MAE.
    pub ratio: f64,
    /// Model MAE / best baseline MAE.
    pub model_ratio: f64,
    /// Share of observed targets inside the model's p10–p90 band (0.8 when calibrated).
    pub p10_p90_coverage: f64,
}

/// Result of a leave-series-out evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CrossReport {
    /// Forecast horizon, steps.
    pub horizon: usize,
    /// How each fold's model was fitted (one fold for `--train/--test`).
    pub fits: Vec<GlobalFitReport>,
    /// Every held-out series.
    pub series: Vec<HeldOutReport>,
    /// Median of the forecaster's ratios.
    pub median_ratio: f64,
    /// Median of the model-alone ratios.
    pub median_model_ratio: f64,
    /// Series with ratio ≤ 0.9.
    pub at_most_0_9: usize,
    /// Series with ratio > 1.
    pub above_1: usize,
}

/// A named series as read from a file.
pub type NamedPoints = (String, Vec<(i64, f64)>);

fn to_series(name: &str, p: &Prepared) -> Series {
    Series {
        name: name.to_string(),
        values: p.values.clone(),
        start_s: p.start_s,
        step_s: p.step_s,
    }
}

/// Scores `model` on one held-out series.
fn score(model: &GlobalLoadModel, fold: usize, name: &str, p: &Prepared) -> Result<HeldOutReport> {
    let h = model.horizon();
    let n = p.values.len();
    let n_hist = (n as f64 * LOAD_TRAIN_FRACTION).floor() as usize;
    if n_hist + h >= n || n_hist < model.config().history_min() + h + 2 {
        return Err(ForecastError::NotEnoughData(format!(
            "{name}: {n} points are too few to choose on its history and score its last 30%"
        )));
    }
    let history = &p.values[..n_hist];
    let chooser = model.select(
        history,
        Some(&p.observed[..n_hist]),
        p.start_s,
        p.step_s,
        SELECTION_FRACTION,
    )?;
    let origins: Vec<usize> = (n_hist - 1..n - h).collect();
    let chosen = chooser.forecast_at(&p.values, p.start_s, &origins)?;
    let raw = model.forecast_at(&p.values, p.start_s, p.step_s, &origins)?;
    let alpha = pick_ewma_alpha(history, &EWMA_ALPHAS);
    let (baselines, best) = baseline_errors(&p.values, &p.observed, &origins, h, alpha, p.step_s)?;
    let (mut acc_chosen, mut acc_model) = (ErrorAccumulator::new(h), ErrorAccumulator::new(h));
    let (mut inside, mut scored) = (0usize, 0usize);
    for ((&t, c), m) in origins.iter().zip(&chosen).zip(&raw) {
        for k in 0..h {
            let target = t + 1 + k;
            if !p.observed[target] {
                continue;
            }
            let actual = p.values[target];
            acc_chosen.add(k, c.p50[k], actual);
            acc_model.add(k, m.p50[k], actual);
            scored += 1;
            if m.p10[k] <= actual && actual <= m.p90[k] {
                inside += 1;
            }
        }
    }
    let forecaster = acc_chosen.finish(&chooser.method().name());
    let model_errors = acc_model.finish("model");
    Ok(HeldOutReport {
        file: name.to_string(),
        fold,
        step_s: p.step_s,
        points: n,
        history_points: n_hist,
        test_origins: origins.len(),
        chosen: chooser.method().name(),
        validation_mae: chooser.validation_mae().to_vec(),
        ratio: forecaster.mae / best.mae,
        model_ratio: model_errors.mae / best.mae,
        forecaster,
        model: model_errors,
        best_baseline: best.method,
        baselines,
        p10_p90_coverage: inside as f64 / scored.max(1) as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    crate::prep::median(&{
        v.retain(|x| x.is_finite());
        v
    })
    .unwrap_or(f64::NAN)
}

fn summarise(horizon: usize, fits: Vec<GlobalFitReport>, mut series: Vec<HeldOutReport>) -> CrossReport {
    series.sort_by(|a, b| a.file.cmp(&b.file));
    CrossReport {
        horizon,
        median_ratio: median(series.iter().map(|s| s.ratio).collect()),
        median_model_ratio: median(series.iter().map(|s| s.model_ratio).collect()),
        at_most_0_9: series.iter().filter(|s| s.ratio <= 0.9).count(),
        above_1: series.iter().filter(|s| s.ratio > 1.0).count(),
        fits,
        series,
    }
}

fn prepared(all: &[NamedPoints]) -> Result<Vec<(String, Prepared)>> {
    all.iter()
        .map(|(name, pts)| {
            prepare(pts)
                .map(|p| (name.clone(), p))
                .map_err(|e| ForecastError::InvalidArgument(format!("{name}: {e}")))
        })
        .collect()
}

/// Fits one model on every series of `train` (whole files) and scores it on every series of
/// `test`. A name in both is refused: the point is to score series the model never saw.
pub fn eval_load_cross(train: &[NamedPoints], test: &[NamedPoints], config: &GlobalConfig) -> Result<CrossReport> {
    if let Some((name, _)) = test.iter().find(|(t, _)| train.iter().any(|(n, _)| n == t)) {
        return Err(ForecastError::InvalidArgument(format!(
            "{name} is in both the training and the test set"
        )));
    }
    let train = prepared(train)?;
    let test = prepared(test)?;
    let series: Vec<Series> = train.iter().map(|(n, p)| to_series(n, p)).collect();
    let (model, fit) = GlobalLoadModel::fit(&series, config)?;
    let scored = test
        .iter()
        .map(|(name, p)| score(&model, 0, name, p))
        .collect::<Result<Vec<_>>>()?;
    Ok(summarise(config.horizon, vec![fit], scored))
}

/// Leave-series-out over one set: the series are dealt into `folds` groups (by sorted name,
/// round robin); each group is scored by a model fitted on all the others.
pub fn eval_load_folds(all: &[NamedPoints], folds: usize, config: &GlobalConfig) -> Result<CrossReport> {
    if folds < 2 || folds > all.len() {
        return Err(ForecastError::InvalidArgument(format!(
            "folds must be between 2 and the number of series ({}), got {folds}",
            all.len()
        )));
    }
    let mut all = prepared(all)?;
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut fits = Vec::new();
    let mut scored = Vec::new();
    for fold in 0..folds {
        let train: Vec<Series> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds != fold)
            .map(|(_, (n, p))| to_series(n, p))
            .collect();
        let (model, fit) = GlobalLoadModel::fit(&train, config)?;
        tracing::info!(fold, seconds = fit.fit_seconds, epochs = ?fit.epochs, "fold fitted");
        fits.push(fit);
        for (_, (name, p)) in all.iter().enumerate().filter(|(i, _)| i % folds == fold) {
            scored.push(score(&model, fold, name, p)?);
        }
    }
    Ok(summarise(config.horizon, fits, scored))
}

/// Scores a fitted model on one series (as a held-out series: chosen on its history,
/// scored on its last 30%).
pub fn eval_load_with(model: &GlobalLoadModel, name: &str, points: &[(i64, f64)]) -> Result<CrossReport> {
    let p = prepare(points).map_err(|e| ForecastError::InvalidArgument(format!("{name}: {e}")))?;
    let scored = score(model, 0, name, &p)?;
    Ok(summarise(model.horizon(), Vec::new(), vec![scored]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    /// Hourly samples of a daily cycle with its own level and scale, 8 days.
    fn named(name: &str, level: f64, amplitude: f64) -> NamedPoints {
        let pts = (0..24 * 8)
            .map(|i| {
                let a = std::f64::consts::TAU * i as f64 / 24.0;
                (
                    i as i64 * 3600,
                    level + amplitude * (a.sin() + 0.1 * ((i * 7919) % 7) as f64 / 7.0),
                )
            })
            .collect();
        (name.to_string(), pts)
    }

    fn tiny() -> GlobalConfig {
        GlobalConfig {
            horizon: 3,
            context: 16,
            stats_steps: 48,
            channels: 4,
            hidden: 8,
            epochs_max: 5,
            tune_epochs: 1,
            per_series_candidate: false,
            ..GlobalConfig::default()
        }
    }

    #[test]
    fn folds_score_every_series_with_a_model_that_never_saw_it() {
        let all: Vec<NamedPoints> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, n)| named(n, 10.0 * (i + 1) as f64, 1.0 + i as f64))
            .collect();
        let r = eval_load_folds(&all, 2, &tiny()).unwrap();
        assert_eq!(r.series.len(), 4);
        assert_eq!(r.fits.len(), 2);
        for s in &r.series {
            assert!(
                !r.fits[s.fold].series.contains(&s.file),
                "{} scored by a model trained on it",
                s.file
            );
            assert!(s.ratio.is_finite() && s.model_ratio.is_finite());
            assert!(s.validation_mae.iter().any(|(m, _)| m == &s.chosen));
            assert!(s.test_origins > 0);
        }
        assert_eq!(r.at_most_0_9 + r.series.iter().filter(|s| s.ratio > 0.9).count(), 4);
        assert!(eval_load_folds(&all, 1, &tiny()).is_err());
        assert!(eval_load_folds(&all, 5, &tiny()).is_err());
    }

    #[test]
    fn a_series_in_both_sets_is_refused() {
        let a = named("a", 10.0, 1.0);
        let b = named("b", 20.0, 2.0);
        let err = eval_load_cross(&[a.clone(), b], &[a], &tiny()).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
    }
}
