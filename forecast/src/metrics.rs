//! Evaluation metrics: point-forecast errors (MAE, RMSE), the EWMA level and its alpha pick,
//! and ranking metrics for failure scores (PR-AUC, recall at a false-positive rate, and
//! false-positive rate at a recall). Pure functions only; no model or file knowledge.

/// Mean absolute error; `NaN` for empty input.
pub fn mae(pred: &[f64], actual: &[f64]) -> f64 {
    debug_assert_eq!(pred.len(), actual.len());
    let n = pred.len().min(actual.len());
    if n == 0 {
        return f64::NAN;
    }
    pred.iter().zip(actual).map(|(p, a)| (p - a).abs()).sum::<f64>() / n as f64
}

/// Root mean squared error; `NaN` for empty input.
pub fn rmse(pred: &[f64], actual: &[f64]) -> f64 {
    debug_assert_eq!(pred.len(), actual.len());
    let n = pred.len().min(actual.len());
    if n == 0 {
        return f64::NAN;
    }
    (pred.iter().zip(actual).map(|(p, a)| (p - a) * (p - a)).sum::<f64>() / n as f64).sqrt()
}

/// The EWMA level after each point: `level[t] = alpha * x[t] + (1 - alpha) * level[t - 1]`,
/// starting from `level[0] = x[0]`. `level[t]` uses only `x[..=t]`.
pub fn ewma_levels(series: &[f64], alpha: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(series.len());
    let mut level = match series.first() {
        Some(&x) => x,
        None => return out,
    };
    for &x in series {
        level = alpha * x + (1.0 - alpha) * level;
        out.push(level);
    }
    out
}

/// One-step-ahead MAE of the EWMA level as a forecast of the next point.
pub fn ewma_one_step_mae(series: &[f64], alpha: f64) -> f64 {
    if series.len() < 2 {
        return f64::NAN;
    }
    let levels = ewma_levels(series, alpha);
    let n = series.len() - 1;
    (1..series.len())
        .map(|t| (series[t] - levels[t - 1]).abs())
        .sum::<f64>()
        / n as f64
}

/// Candidate smoothing factors for the EWMA baseline.
pub const EWMA_ALPHAS: [f64; 7] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9];

/// Picks the alpha from `candidates` with the lowest one-step MAE on `train` (ties go to
/// the first candidate). Returns the first candidate when `train` is too short to judge.
pub fn pick_ewma_alpha(train: &[f64], candidates: &[f64]) -> f64 {
    let mut best = (f64::INFINITY, candidates.first().copied().unwrap_or(0.5));
    for &alpha in candidates {
        let err = ewma_one_step_mae(train, alpha);
        if err < best.0 {
            best = (err, alpha);
        }
    }
    best.1
}

/// Groups of tied scores in descending order, as `(positives, negatives, score)` per group.
fn ranked_groups(scores: &[f64], labels: &[bool]) -> Vec<(usize, usize, f64)> {
    let mut idx: Vec<usize> = (0..scores.len().min(labels.len())).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut groups: Vec<(usize, usize, f64)> = Vec::new();
    for i in idx {
        let (p, n) = if labels[i] { (1, 0) } else { (0, 1) };
        match groups.last_mut() {
            Some(g) if g.2 == scores[i] => {
                g.0 += p;
                g.1 += n;
            }
            _ => groups.push((p, n, scores[i])),
        }
    }
    groups
}

/// Area under the precision-recall curve, computed as average precision (the step-wise sum
/// of precision times recall increment over thresholds, ties handled as one threshold).
/// `NaN` when there is no positive.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let total_pos = labels.iter().filter(|&&l| l).count();
    if total_pos == 0 {
        return f64::NAN;
    }
    let (mut tp, mut fp, mut ap) = (0usize, 0usize, 0.0f64);
    for (p, n, _) in ranked_groups(scores, labels) {
        tp += p;
        fp += n;
        if p > 0 {
            ap += (p as f64 / total_pos as f64) * (tp as f64 / (tp + fp) as f64);
        }
    }
    ap
}

/// One operating point of a score threshold: flag rows whose score is at least `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OperatingPoint {
    /// Score threshold (flag when `score >= threshold`).
    pub threshold: f64,
    /// Fraction of positives flagged.
    pub recall: f64,
    /// Fraction of negatives flagged.
    pub false_positive_rate: f64,
}

fn operating_points(scores: &[f64], labels: &[bool]) -> Vec<OperatingPoint> {
    let pos = labels.iter().filter(|&&l| l).count().max(1) as f64;
    let neg = labels.iter().filter(|&&l| !l).count().max(1) as f64;
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut out = vec![OperatingPoint {
        threshold: f64::INFINITY,
        recall: 0.0,
        false_positive_rate: 0.0,
    }];
    for (p, n, s) in ranked_groups(scores, labels) {
        tp += p;
        fp += n;
        out.push(OperatingPoint {
            threshold: s,
            recall: tp as f64 / pos,
            false_positive_rate: fp as f64 / neg,
        });
    }
    out
}

/// The highest recall reachable by a threshold whose false-positive rate is at most
/// `fpr_max`.
pub fn recall_at_fpr(scores: &[f64], labels: &[bool], fpr_max: f64) -> OperatingPoint {
    operating_points(scores, labels)
        .into_iter()
        .take_while(|op| op.false_positive_rate <= fpr_max)
        .last()
        .unwrap_or(OperatingPoint {
            threshold: f64::INFINITY,
            recall: 0.0,
            false_positive_rate: 0.0,
        })
}

/// The lowest false-positive rate of a threshold whose recall is at least `recall_min`
/// (flagging everything if nothing less does).
pub fn fpr_at_recall(scores: &[f64], labels: &[bool], recall_min: f64) -> OperatingPoint {
    let points = operating_points(scores, labels);
    let fallback = points.last().copied().unwrap_or(OperatingPoint {
        threshold: f64::NEG_INFINITY,
        recall: 1.0,
        false_positive_rate: 1.0,
    });
    points
        .into_iter()
        .find(|op| op.recall >= recall_min)
        .unwrap_or(fallback)
}

/// Mean recall over false-positive rates `0..=fpr_max` (the area under the ROC curve up
/// to `fpr_max`, divided by `fpr_max`, ties interpolated linearly): 1 is a perfect ranking.
pub fn partial_roc_auc(scores: &[f64], labels: &[bool], fpr_max: f64) -> f64 {
    if fpr_max <= 0.0 {
        return f64::NAN;
    }
    let points = operating_points(scores, labels);
    let mut area = 0.0;
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.false_positive_rate >= fpr_max {
            break;
        }
        let width = b.false_positive_rate - a.false_positive_rate;
        if width <= 0.0 {
            continue;
        }
        let right = b.false_positive_rate.min(fpr_max);
        let frac = (right - a.false_positive_rate) / width;
        let recall_right = a.recall + (b.recall - a.recall) * frac;
        area += (right - a.false_positive_rate) * (a.recall + recall_right) / 2.0;
    }
    area / fpr_max
}

/// Recall and false-positive rate of fixed binary flags.
pub fn flag_rates(flags: &[bool], labels: &[bool]) -> (f64, f64) {
    let (mut tp, mut fp, mut pos, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (&f, &l) in flags.iter().zip(labels) {
        if l {
            pos += 1;
            tp += usize::from(f);
        } else {
            neg += 1;
            fp += usize::from(f);
        }
    }
    (tp as f64 / pos.max(1) as f64, fp as f64 / neg.max(1) as f64)
}

/// Brier score: mean squared difference between probabilities and 0/1 outcomes (lower is
/// better); `NaN` for empty input.
pub fn brier_score(probabilities: &[f64], labels: &[bool]) -> f64 {
    let n = probabilities.len().min(labels.len());
    if n == 0 {
        return f64::NAN;
    }
    probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &l)| (p - f64::from(u8::from(l))).powi(2))
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn mae_and_rmse() {
        let p = [1.0, 2.0, 3.0, 4.0];
        let a = [2.0, 2.0, 1.0, 4.0];
        assert!((mae(&p, &a) - 0.75).abs() < 1e-12);
        assert!((rmse(&p, &a) - (5.0f64 / 4.0).sqrt()).abs() < 1e-12);
        assert!(mae(&[], &[]).is_nan());
    }

    #[test]
    fn ewma_levels_and_alpha_pick() {
        let l = ewma_levels(&[0.0, 10.0, 10.0], 0.5);
        assert_eq!(l, vec![0.0, 5.0, 7.5]);
        // A random walk is best followed closely; white noise around a constant is best
        // smoothed heavily.
        let walk: Vec<f64> = (0..200).map(|i| f64::from(i) * 1.5).collect();
        assert_eq!(pick_ewma_alpha(&walk, &EWMA_ALPHAS), 0.9);
        let noise: Vec<f64> = (0..200).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        assert_eq!(pick_ewma_alpha(&noise, &EWMA_ALPHAS), 0.05);
        assert!((ewma_one_step_mae(&[0.0, 1.0], 0.3) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn pr_auc_matches_hand_computation() {
        // Ranking: P N P N -> precisions at the positives 1 and 2/3.
        let s = [0.9, 0.8, 0.7, 0.1];
        let l = [true, false, true, false];
        assert!((pr_auc(&s, &l) - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
        // Perfect ranking scores 1.
        assert!((pr_auc(&[0.9, 0.1], &[true, false]) - 1.0).abs() < 1e-12);
        // All tied: precision equals the prevalence.
        assert!((pr_auc(&[0.5; 4], &[true, false, false, false]) - 0.25).abs() < 1e-12);
        assert!(pr_auc(&[0.5], &[false]).is_nan());
    }

    #[test]
    fn operating_points_against_a_rule() {
        let s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
        let l = [true, false, true, false, true, false];
        let op = recall_at_fpr(&s, &l, 1.0 / 3.0);
        assert!((op.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((op.false_positive_rate - 1.0 / 3.0).abs() < 1e-12);
        let op = fpr_at_recall(&s, &l, 1.0);
        assert!((op.false_positive_rate - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(op.threshold, 0.5);
        let op = recall_at_fpr(&s, &l, 0.0);
        assert!((op.recall - 1.0 / 3.0).abs() < 1e-12);
        // Perfect ranking: recall 1 from FPR 0; reversed ranking: recall 0 until FPR 1.
        assert!((partial_roc_auc(&[0.9, 0.1], &[true, false], 0.1) - 1.0).abs() < 1e-12);
        assert!(partial_roc_auc(&[0.1, 0.9], &[true, false], 0.1).abs() < 1e-12);
        // All tied: the diagonal, mean recall over [0, 0.5] is 0.25.
        assert!((partial_roc_auc(&[0.5, 0.5], &[true, false], 0.5) - 0.25).abs() < 1e-12);
        let (r, f) = flag_rates(&[true, true, false, false], &[true, false, true, false]);
        assert!((r - 0.5).abs() < 1e-12 && (f - 0.5).abs() < 1e-12);
    }

    #[test]
    fn brier_score_by_hand() {
        assert!((brier_score(&[1.0, 0.0], &[true, false])).abs() < 1e-12);
        assert!((brier_score(&[0.5, 0.2], &[true, false]) - (0.25 + 0.04) / 2.0).abs() < 1e-12);
        assert!(brier_score(&[], &[]).is_nan());
    }
}
