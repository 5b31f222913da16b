//! The naive forecasting methods every model is compared with and may fall back to:
//! persistence, seasonal naive and an exponentially weighted level. Shared by the per-series
//! (`load`) and the global (`global`) forecasters and by the evaluations.

/// One of the forecasting methods [`GlobalLoadModel::select`] chooses among.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Method {
    /// The last value, for every step.
    Persistence,
    /// The value one day (whole days) before each target.
    SeasonalNaive {
        /// Steps per day.
        period: usize,
    },
    /// The exponentially weighted level at the origin, for every step.
    Ewma {
        /// Smoothing factor.
        alpha: f64,
    },
    /// The model (its median).
    Model,
    /// The model after fine-tuning on the series' own past (its median).
    Tuned,
    /// A per-series forecaster fitted on the series' own past alone.
    PerSeries,
    /// The mean of the tuned model's median and the per-series forecaster's point: two
    /// forecasters that err differently, averaged.
    Blend,
}

impl Method {
    /// The methods compared from origins at or after `first_origin`, simplest first and the
    /// model last (seasonal naive only when every origin has a day behind it).
    pub fn candidates(alpha: f64, period: usize, first_origin: usize, horizon: usize) -> Vec<Method> {
        let mut v = vec![Method::Persistence];
        if first_origin >= period * horizon.div_ceil(period) {
            v.push(Method::SeasonalNaive { period });
        }
        v.push(Method::Ewma { alpha });
        v.push(Method::Model);
        v
    }

    /// A readable name such as `ewma(alpha=0.2)`.
    pub fn name(&self) -> String {
        match self {
            Method::Persistence => "persistence".into(),
            Method::SeasonalNaive { .. } => "seasonal_naive".into(),
            Method::Ewma { alpha } => format!("ewma(alpha={alpha})"),
            Method::Model => "model".into(),
            Method::Tuned => "model_tuned".into(),
            Method::PerSeries => "per_series".into(),
            Method::Blend => "blend(model_tuned, per_series)".into(),
        }
    }

    /// Forecast of step `k + 1` after origin `t` of `x` (`levels`: EWMA levels of `x` with
    /// this method's alpha; `model`: the model's forecast of that step).
    pub fn point(&self, x: &[f64], levels: &[f64], t: usize, k: usize, model: f64) -> Option<f64> {
        match *self {
            Method::Persistence => Some(x[t]),
            Method::SeasonalNaive { period } => {
                let back = period * (k + 1).div_ceil(period);
                (t + 1 + k).checked_sub(back).map(|i| x[i])
            }
            Method::Ewma { .. } => Some(levels[t]),
            Method::Model | Method::Tuned | Method::PerSeries | Method::Blend => Some(model),
        }
    }
}
