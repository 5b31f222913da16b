//! Offline evaluation of the failure forecaster against the SMART threshold rule on a later
//! period than it was trained on (`arkd forecast eval-failure`): ranking figures at the
//! rule's operating point, per-drive recall, and the reliability of the calibrated
//! probabilities. It owns these figures; it must not print (that is `cli`) nor fit
//! anything on the test file.

use std::time::Instant;

use crate::data::EntityTable;
use crate::error::Result;
use crate::failure::{label_rows, rule_flags, FailureConfig, FailureFitReport, FailureForecaster, RULE_COLUMNS};
use crate::metrics::{brier_score, flag_rates, fpr_at_recall, pr_auc, recall_at_fpr, OperatingPoint};

/// Upper edges of the reliability bins of predicted probability. Log-spaced because the
/// base rate of a failure within ten days is a few in ten thousand drive-days: uniform
/// bins would put nearly every row in the first one.
pub const RELIABILITY_EDGES: [f64; 7] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0];

/// Model figures of `eval-failure`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailureModelFigures {
    /// Area under the precision-recall curve (average precision) over test rows.
    pub pr_auc: f64,
    /// Best operating point whose false-positive rate does not exceed the rule's.
    pub at_rule_fpr: Option<OperatingPoint>,
    /// Best operating point whose recall reaches the rule's.
    pub at_rule_recall: Option<OperatingPoint>,
    /// Mean squared error of the probabilities against the labels.
    pub brier_score: f64,
    /// Brier score of predicting the training base rate for every row (a model that
    /// knows nothing but the prevalence).
    pub brier_base_rate: f64,
}

/// Rule baseline figures of `eval-failure`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleFigures {
    /// Rule columns found in the test file.
    pub columns: Vec<String>,
    /// Fraction of positive rows flagged.
    pub recall: f64,
    /// Fraction of negative rows flagged.
    pub false_positive_rate: f64,
    /// Fraction of flagged rows that are positive.
    pub precision: f64,
}

/// Drive-level reading of the same operating points: a failing drive (one with at least
/// one positive test row) is caught when any of its positive rows is flagged. The
/// false-positive rate stays per healthy drive-day.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PerDriveFigures {
    /// Drives with at least one positive test row.
    pub failing_drives: usize,
    /// Of those, caught by the rule.
    pub rule_caught: usize,
    /// Of those, caught by the model at the rule's false-positive rate.
    pub model_caught: usize,
    /// `rule_caught / failing_drives`.
    pub rule_recall: f64,
    /// `model_caught / failing_drives`.
    pub model_recall: f64,
    /// `model_recall / rule_recall`, when the rule catches any.
    pub gain: Option<f64>,
}

/// One bin of the reliability table: predicted probability in `[lo, hi)` (the last bin
/// includes 1).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Test rows in the bin.
    pub rows: usize,
    /// Positive rows among them.
    pub positives: usize,
    /// Mean predicted probability (`NaN` for an empty bin).
    pub mean_predicted: f64,
    /// Observed positive rate (`NaN` for an empty bin).
    pub observed_rate: f64,
}

/// Result of `eval-failure`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailureReport {
    /// Training file.
    pub train_file: String,
    /// Test file.
    pub test_file: String,
    /// Horizon, days.
    pub horizon_days: i64,
    /// Test rows.
    pub test_rows: usize,
    /// Positive test rows (entity fails within the horizon).
    pub test_positives: usize,
    /// Distinct failing entities in the test file.
    pub test_failures: usize,
    /// Model attributes absent from the test file (scored as missing).
    pub absent_columns: Vec<String>,
    /// Test-file attributes the model does not know (ignored).
    pub ignored_columns: Vec<String>,
    /// Model figures.
    pub model: FailureModelFigures,
    /// Rule figures, when the rule columns exist.
    pub rule: Option<RuleFigures>,
    /// Model recall at the rule's false-positive rate divided by the rule's recall.
    pub recall_gain_at_rule_fpr: Option<f64>,
    /// Model false-positive rate at the rule's recall divided by the rule's.
    pub fpr_ratio_at_rule_recall: Option<f64>,
    /// Model PR-AUC divided by the rule's precision.
    pub pr_auc_over_rule_precision: Option<f64>,
    /// Per-drive recall at the rule's false-positive rate.
    pub per_drive: Option<PerDriveFigures>,
    /// Predicted probability bins vs observed positive rate on the test file.
    pub reliability: Vec<ReliabilityBin>,
    /// Wall time of the fit, seconds (informative; depends on the machine).
    pub fit_seconds: f64,
    /// Wall time of scoring every test row, seconds.
    pub score_seconds: f64,
    /// What the model was trained on.
    pub fit: FailureFitReport,
}

/// Bins `probabilities` by [`RELIABILITY_EDGES`] and compares with the labels.
pub fn reliability_table(probabilities: &[f64], labels: &[bool]) -> Vec<ReliabilityBin> {
    let mut sums = [(0usize, 0usize, 0.0f64); RELIABILITY_EDGES.len()];
    for (&p, &l) in probabilities.iter().zip(labels) {
        let k = RELIABILITY_EDGES
            .iter()
            .position(|&hi| p < hi)
            .unwrap_or(RELIABILITY_EDGES.len() - 1);
        sums[k].0 += 1;
        sums[k].1 += usize::from(l);
        sums[k].2 += p;
    }
    let mut lo = 0.0;
    RELIABILITY_EDGES
        .iter()
        .zip(sums)
        .map(|(&hi, (rows, positives, sum))| {
            let n = rows as f64;
            let bin = ReliabilityBin {
                lo,
                hi,
                rows,
                positives,
                mean_predicted: if rows == 0 { f64::NAN } else { sum / n },
                observed_rate: if rows == 0 { f64::NAN } else { positives as f64 / n },
            };
            lo = hi;
            bin
        })
        .collect()
}

/// Failing drives (entities with a positive row) and how many of them have a positive row
/// that `flagged` marks.
pub fn drives_caught(table: &EntityTable, labels: &[bool], flagged: impl Fn(usize) -> bool) -> (usize, usize) {
    let mut failing = vec![false; table.entity_names.len()];
    let mut caught = vec![false; table.entity_names.len()];
    for (i, &l) in labels.iter().enumerate() {
        if l {
            let e = table.entity[i] as usize;
            failing[e] = true;
            caught[e] |= flagged(i);
        }
    }
    (
        failing.iter().filter(|&&f| f).count(),
        caught.iter().filter(|&&c| c).count(),
    )
}

/// Trains the failure forecaster on `train`, then scores every row of `test`.
pub fn eval_failure(
    train_file: &str,
    train: &EntityTable,
    test_file: &str,
    test: &EntityTable,
    config: &FailureConfig,
) -> Result<FailureReport> {
    let started = Instant::now();
    let (model, fit) = FailureForecaster::fit(train, config)?;
    let fit_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let scores = model.predict(test)?;
    let score_seconds = started.elapsed().as_secs_f64();
    let labels = label_rows(test, config.horizon_days);
    let positives = labels.iter().filter(|&&l| l).count();
    let mut failing: Vec<u32> = (0..test.len())
        .filter(|&i| test.failure[i])
        .map(|i| test.entity[i])
        .collect();
    failing.sort_unstable();
    failing.dedup();
    let flags = rule_flags(test);
    let rule = flags.as_ref().map(|flags| {
        let (recall, fpr) = flag_rates(flags, &labels);
        let flagged = flags.iter().filter(|&&f| f).count();
        let hits = flags.iter().zip(&labels).filter(|(&f, &l)| f && l).count();
        RuleFigures {
            columns: RULE_COLUMNS
                .iter()
                .filter(|c| test.column(c).is_some())
                .map(ToString::to_string)
                .collect(),
            recall,
            false_positive_rate: fpr,
            precision: hits as f64 / flagged.max(1) as f64,
        }
    });
    let at_rule_fpr = rule
        .as_ref()
        .map(|r| recall_at_fpr(&scores, &labels, r.false_positive_rate));
    let at_rule_recall = rule.as_ref().map(|r| fpr_at_recall(&scores, &labels, r.recall));
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let per_drive = flags.as_ref().zip(at_rule_fpr).map(|(flags, op)| {
        let (drives, rule_caught) = drives_caught(test, &labels, |i| flags[i]);
        let (_, model_caught) = drives_caught(test, &labels, |i| scores[i] >= op.threshold);
        let rule_recall = rule_caught as f64 / drives.max(1) as f64;
        let model_recall = model_caught as f64 / drives.max(1) as f64;
        PerDriveFigures {
            failing_drives: drives,
            rule_caught,
            model_caught,
            rule_recall,
            model_recall,
            gain: ratio(model_recall, rule_recall),
        }
    });
    let model_pr_auc = pr_auc(&scores, &labels);
    let base_rate = fit.positives as f64 / fit.rows.max(1) as f64;
    Ok(FailureReport {
        train_file: train_file.to_string(),
        test_file: test_file.to_string(),
        horizon_days: config.horizon_days,
        test_rows: test.len(),
        test_positives: positives,
        test_failures: failing.len(),
        absent_columns: model
            .columns()
            .iter()
            .filter(|c| test.column(c).is_none())
            .cloned()
            .collect(),
        ignored_columns: test
            .feature_names
            .iter()
            .filter(|c| !model.columns().contains(c))
            .cloned()
            .collect(),
        recall_gain_at_rule_fpr: rule
            .as_ref()
            .zip(at_rule_fpr)
            .and_then(|(r, op)| ratio(op.recall, r.recall)),
        fpr_ratio_at_rule_recall: rule
            .as_ref()
            .zip(at_rule_recall)
            .and_then(|(r, op)| ratio(op.false_positive_rate, r.false_positive_rate)),
        pr_auc_over_rule_precision: rule.as_ref().and_then(|r| ratio(model_pr_auc, r.precision)),
        per_drive,
        reliability: reliability_table(&scores, &labels),
        model: FailureModelFigures {
            pr_auc: model_pr_auc,
            at_rule_fpr,
            at_rule_recall,
            brier_score: brier_score(&scores, &labels),
            brier_base_rate: brier_score(&vec![base_rate; labels.len()], &labels),
        },
        rule,
        fit_seconds,
        score_seconds,
        fit,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    fn fleet() -> EntityTable {
        let mut t = EntityTable {
            feature_names: vec!["smart_5_raw".into(), "smart_9_raw".into()],
            ..EntityTable::default()
        };
        for e in 0..60u32 {
            t.entity_names.push(format!("e{e}"));
            for d in 0..8i64 {
                let failing = e % 6 == 0;
                t.entity.push(e);
                t.day.push(d);
                t.failure.push(failing && d == 7);
                let s5 = if failing {
                    (d * 3) as f32
                } else {
                    f32::from(u8::from(e % 4 == 1))
                };
                t.features.extend([s5, 100.0 + e as f32]);
            }
        }
        t
    }

    #[test]
    fn eval_failure_compares_with_the_rule() {
        let t = fleet();
        let config = FailureConfig {
            horizon_days: 3,
            history_days: 3,
            epochs: 4,
            batch_size: 64,
            ensemble: 1,
            folds: 2,
            ..FailureConfig::default()
        };
        let r = eval_failure("a", &t, "b", &t, &config).unwrap();
        assert_eq!(r.test_failures, 10);
        assert_eq!(r.test_positives, 30);
        let rule = r.rule.as_ref().unwrap();
        assert_eq!(rule.columns, vec!["smart_5_raw"]);
        assert!(rule.recall > 0.0 && rule.false_positive_rate > 0.0);
        assert!(rule.precision > 0.0 && rule.precision < 1.0);
        assert!(r.model.at_rule_fpr.is_some() && r.model.at_rule_recall.is_some());
        assert!(r.model.pr_auc.is_finite());
        let d = r.per_drive.as_ref().unwrap();
        assert_eq!(d.failing_drives, 10);
        // A failing drive's s5 is 0 on day 0 only, and its positive rows are days 5..=7.
        assert_eq!(d.rule_caught, 10);
        assert_eq!(r.reliability.iter().map(|b| b.rows).sum::<usize>(), t.len());
        assert_eq!(r.reliability.iter().map(|b| b.positives).sum::<usize>(), 30);
        assert!(r.model.brier_score >= 0.0 && r.model.brier_score <= 1.0);
        assert!(r.absent_columns.is_empty() && r.ignored_columns.is_empty());
    }

    #[test]
    fn reliability_bins_and_drive_recall_by_hand() {
        // 0.001 sits on an edge: it belongs to the bin it opens.
        let p = [0.0005, 0.001, 0.002, 0.5, 1.0];
        let l = [false, true, false, true, true];
        let bins = reliability_table(&p, &l);
        assert_eq!(bins.len(), RELIABILITY_EDGES.len());
        assert_eq!((bins[0].rows, bins[0].positives), (1, 0));
        assert_eq!((bins[1].rows, bins[1].positives), (2, 1));
        assert!((bins[1].mean_predicted - 0.0015).abs() < 1e-12);
        assert!((bins[1].observed_rate - 0.5).abs() < 1e-12);
        // 0.5 and 1.0 both land in the last bin, which includes 1.
        assert_eq!((bins[6].rows, bins[6].positives), (2, 2));
        assert!(bins[2].mean_predicted.is_nan());

        // Drive 0: positive rows 0, 1; drive 1: positive row 3; drive 2 healthy.
        let t = EntityTable {
            entity_names: vec!["a".into(), "b".into(), "c".into()],
            entity: vec![0, 0, 1, 1, 2],
            day: vec![0, 1, 0, 1, 0],
            failure: vec![false, true, false, true, false],
            ..EntityTable::default()
        };
        let labels = [true, true, false, true, false];
        // Only row 0 (drive 0's first positive row) and row 4 (healthy) flagged: one of two
        // drives caught, although drive 0's later positive row is not flagged.
        assert_eq!(drives_caught(&t, &labels, |i| i == 0 || i == 4), (2, 1));
        // A flag on a negative row of a failing drive does not count.
        assert_eq!(drives_caught(&t, &labels, |i| i == 2), (2, 0));
    }
}
