//! The `forecast` command family (`arkd forecast ...`): clap
//! argument types, and printing of the evaluation reports as JSON or a readable table.
//! It owns only argument parsing and output; the work is done by `eval` and `data`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::data::{read_entity_table, read_series_csv, split_by_day, SplitAt};
use crate::eval::{eval_failure, eval_load, FailureReport, LoadReport};
use crate::eval_cross::{eval_load_cross, eval_load_folds, eval_load_with, CrossReport, NamedPoints};
use crate::failure::FailureConfig;
use crate::failure::{label_rows, FailureForecaster};
use crate::global::{GlobalConfig, GlobalLoadModel, Series};
use crate::history::{entities_with, entity_history, sample_entities, write_history};
use crate::load::LoadConfig;
use crate::metrics::recall_at_fpr;
use crate::nn::cap_compute_threads;
use crate::prep::{parse_day, prepare};

/// Offline evaluation of the forecasters on public traces.
#[derive(Debug, clap::Subcommand)]
pub enum ForecastCmd {
    /// Load forecaster vs persistence, seasonal naive and EWMA on a `timestamp,value` CSV:
    /// trains on the first 70% in time, reports MAE and RMSE on the last 30%.
    EvalLoad(EvalLoadArgs),
    /// Failure forecaster vs the SMART threshold rule on `entity,date,failure,...` CSVs
    /// (plain or gzip): trains on one file, reports PR-AUC and rule-matched operating points
    /// on the other.
    EvalFailure(EvalFailureArgs),
    /// Splits an `entity,date,...` CSV by date into two files, so a train/test split can be
    /// reproduced from commands alone.
    SplitDays(SplitDaysArgs),
    /// Trains the global load forecaster across every series of a directory and writes it
    /// (safetensors): `eval-load --csv F --model FILE` scores it on any series.
    FitLoad(FitLoadArgs),
    /// Trains the failure forecaster on an `entity,date,failure,...` CSV and writes its
    /// weights (safetensors) for the cluster: `ark put _ark/failure-model FILE` makes every
    /// leader score its nodes with it.
    FitFailure(FitFailureArgs),
    /// Writes the daily history of entities of an `entity,date,failure,...` CSV, one
    /// `date,<features>` CSV per entity, e.g. to replay a real drive's SMART record as a
    /// node's telemetry (`[telemetry] smart_replay`).
    ExtractHistory(ExtractHistoryArgs),
    /// Scores a daily history (`date,<features>`) with failure forecaster weights: the
    /// probability judged on each day from the days up to it, as the leader would.
    ScoreHistory(ScoreHistoryArgs),
}

/// Arguments of `score-history`.
#[derive(Debug, clap::Args)]
pub struct ScoreHistoryArgs {
    /// Weights written by `fit-failure`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// History written by `extract-history`.
    #[arg(long, value_name = "FILE")]
    pub history: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `fit-failure`.
#[derive(Debug, clap::Args)]
pub struct FitFailureArgs {
    /// Training CSV: `entity,date,failure`, then numeric feature columns (plain or gzip).
    #[arg(long, value_name = "FILE")]
    pub train: PathBuf,
    /// Where to write the weights (one safetensors blob).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A row is positive when its entity fails within this many days (its own day included).
    #[arg(long, default_value_t = 10)]
    pub horizon_days: i64,
    /// Days of history the sequence features summarise (1..=31, what the leader keeps).
    #[arg(long, default_value_t = FailureConfig::default().history_days)]
    pub history_days: i64,
    /// Seed of initialisation and minibatch order (same seed, same weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for tensor maths (ignored when RAYON_NUM_THREADS is set).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `extract-history`.
#[derive(Debug, clap::Args)]
pub struct ExtractHistoryArgs {
    /// `entity,date,failure,...` CSV, plain or gzip.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Entities to write, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub entity: Vec<String>,
    /// Also write this many entities drawn with `--seed` among those that never fail and
    /// have at least `--min-days` rows.
    #[arg(long, default_value_t = 0)]
    pub healthy: usize,
    /// Also write this many entities drawn with `--seed` among those that fail and have at
    /// least `--min-days` rows.
    #[arg(long, default_value_t = 0)]
    pub failed: usize,
    /// Shortest history drawn by `--healthy` / `--failed`.
    #[arg(long, default_value_t = 1)]
    pub min_days: usize,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory for `<entity>.csv` files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `fit-failure` prints.
#[derive(Debug, serde::Serialize)]
struct FitFailureSummary {
    weights: String,
    weights_bytes: usize,
    fit: crate::failure::FailureFitReport,
    /// Training-set operating points, to choose `risk.at_risk_probability`.
    train_operating_points: Vec<crate::metrics::OperatingPoint>,
}

/// Arguments of `eval-load`.
#[derive(Debug, clap::Args)]
pub struct EvalLoadArgs {
    /// CSV with `timestamp` and `value` columns (the NAB layout), plain or gzip: trains on
    /// its first 70% in time (or uses `--model`) and scores the last 30%.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["train", "test", "folds"])]
    pub csv: Option<PathBuf>,
    /// With `--csv`: a global model written by `fit-load`, chosen against the baselines on the
    /// file's own history instead of a model fitted on it.
    #[arg(long, value_name = "FILE", requires = "csv")]
    pub model: Option<PathBuf>,
    /// Leave-series-out: fit the global model on every `*.csv`/`*.csv.gz` file of this
    /// directory, then score `--test` (or `--folds`).
    #[arg(long, value_name = "DIR")]
    pub train: Option<PathBuf>,
    /// Directory of series the model never saw, scored after fitting on `--train`.
    #[arg(long, value_name = "DIR", requires = "train", conflicts_with = "folds")]
    pub test: Option<PathBuf>,
    /// Leave-series-out within `--train`: deal its files into this many folds and score each
    /// fold with a model fitted on the others (the number of files: leave one out).
    #[arg(long, requires = "train")]
    pub folds: Option<usize>,
    /// Steps to forecast; errors are averaged over horizons 1..=H.
    #[arg(long, default_value_t = 12)]
    pub horizon: usize,
    /// Past steps the per-series model sees (`--csv` without `--model`).
    #[arg(long, default_value_t = 36)]
    pub window: usize,
    /// Global model: networks averaged, differently seeded.
    #[arg(long, default_value_t = GlobalConfig::default().ensemble)]
    pub ensemble: usize,
    /// Global model: epochs of fine-tuning on each series' own past before choosing
    /// (0: choose among the global model and the baselines only).
    #[arg(long, default_value_t = GlobalConfig::default().tune_epochs)]
    pub tune_epochs: usize,
    /// Global model: leave the per-series forecaster (fitted on each series' own past) out
    /// of the per-series choice.
    #[arg(long)]
    pub no_per_series: bool,
    /// Seed of initialisation and minibatch order (same seed, same figures).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for tensor maths (ignored when RAYON_NUM_THREADS is set).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `fit-load`.
#[derive(Debug, clap::Args)]
pub struct FitLoadArgs {
    /// Directory of `timestamp,value` series (`*.csv`, `*.csv.gz`): the training corpus.
    #[arg(long, value_name = "DIR")]
    pub train: PathBuf,
    /// Where to write the model (one safetensors blob).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Steps to forecast.
    #[arg(long, default_value_t = 12)]
    pub horizon: usize,
    /// Global model: networks averaged, differently seeded.
    #[arg(long, default_value_t = GlobalConfig::default().ensemble)]
    pub ensemble: usize,
    /// Seed of initialisation and minibatch order (same seed, same weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for tensor maths (ignored when RAYON_NUM_THREADS is set).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the fit report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `eval-failure`.
#[derive(Debug, clap::Args)]
pub struct EvalFailureArgs {
    /// Training CSV: `entity,date,failure`, then numeric feature columns.
    #[arg(long, value_name = "FILE")]
    pub train: PathBuf,
    /// Test CSV, same layout.
    #[arg(long, value_name = "FILE")]
    pub test: PathBuf,
    /// A row is positive when its entity fails within this many days (its own day included).
    #[arg(long, default_value_t = 10)]
    pub horizon_days: i64,
    /// Seed of initialisation and minibatch order (same seed, same figures).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use `--hidden`, `--weight-decay` and `--epochs` as given instead of choosing the
    /// model and the epoch count by cross-validation over the training file's entities.
    #[arg(long)]
    pub fixed: bool,
    /// Hidden layer widths with `--fixed`, comma-separated; none (or 0) for logistic
    /// regression.
    #[arg(long, value_delimiter = ',')]
    pub hidden: Vec<usize>,
    /// Training epochs with `--fixed`; otherwise the most epochs cross-validation may pick.
    #[arg(long, default_value_t = FailureConfig::default().epochs)]
    pub epochs: usize,
    /// Differently seeded networks averaged.
    #[arg(long, default_value_t = FailureConfig::default().ensemble)]
    pub ensemble: usize,
    /// AdamW weight decay with `--fixed`.
    #[arg(long, default_value_t = FailureConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Days of history the sequence features summarise (1..=31).
    #[arg(long, default_value_t = FailureConfig::default().history_days)]
    pub history_days: i64,
    /// Threads for tensor maths (ignored when RAYON_NUM_THREADS is set).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `split-days`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("at").required(true).args(["first_days", "split_date"])))]
pub struct SplitDaysArgs {
    /// CSV (plain or gzip) with a `date` column.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Put the first N distinct dates in `--before`, the rest in `--after`.
    #[arg(long, value_name = "N")]
    pub first_days: Option<usize>,
    /// Put rows dated before this day (YYYY-MM-DD) in `--before`, the rest in `--after`.
    #[arg(long, value_name = "DATE")]
    pub split_date: Option<String>,
    /// Output for the earlier rows (gzip when it ends in .gz).
    #[arg(long, value_name = "FILE")]
    pub before: PathBuf,
    /// Output for the later rows (gzip when it ends in .gz).
    #[arg(long, value_name = "FILE")]
    pub after: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ForecastCmd {
    /// Runs the command and prints its report on stdout.
    pub fn run(self) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        match self {
            ForecastCmd::EvalLoad(a) => {
                cap_compute_threads(a.threads);
                let config = GlobalConfig {
                    horizon: a.horizon,
                    seed: a.seed,
                    ensemble: a.ensemble,
                    tune_epochs: a.tune_epochs,
                    per_series_candidate: !a.no_per_series,
                    ..GlobalConfig::default()
                };
                match (&a.csv, &a.train) {
                    (Some(csv), _) => {
                        let points =
                            read_series_csv(csv).with_context(|| format!("reading series {}", csv.display()))?;
                        let name = csv.display().to_string();
                        if let Some(path) = &a.model {
                            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                            let mut model = GlobalLoadModel::from_bytes(&bytes)
                                .with_context(|| format!("decoding the load model {}", path.display()))?;
                            model.set_candidates(a.tune_epochs, !a.no_per_series);
                            let report = eval_load_with(&model, &name, &points)
                                .with_context(|| format!("evaluating {} on {name}", path.display()))?;
                            print_cross(&mut out, &report, a.json)?;
                        } else {
                            let config = LoadConfig {
                                horizon: a.horizon,
                                window: a.window,
                                seed: a.seed,
                                ..LoadConfig::default()
                            };
                            let report = eval_load(&name, &points, &config)
                                .with_context(|| format!("evaluating the load forecaster on {name}"))?;
                            if a.json {
                                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                            } else {
                                print_load(&mut out, &report)?;
                            }
                        }
                    }
                    (None, Some(train_dir)) => {
                        let train = read_series_dir(train_dir)?;
                        let report = match (&a.test, a.folds) {
                            (Some(test_dir), _) => eval_load_cross(&train, &read_series_dir(test_dir)?, &config)?,
                            (None, Some(folds)) => eval_load_folds(&train, folds, &config)?,
                            (None, None) => anyhow::bail!("--train needs --test DIR or --folds K"),
                        };
                        print_cross(&mut out, &report, a.json)?;
                    }
                    (None, None) => {
                        anyhow::bail!("eval-load needs --csv FILE, or --train DIR with --test DIR or --folds K")
                    }
                }
            }
            ForecastCmd::FitLoad(a) => {
                cap_compute_threads(a.threads);
                let config = GlobalConfig {
                    horizon: a.horizon,
                    seed: a.seed,
                    ensemble: a.ensemble,
                    ..GlobalConfig::default()
                };
                let train = read_series_dir(&a.train)?;
                let series = train
                    .iter()
                    .map(|(name, pts)| {
                        let p = prepare(pts).with_context(|| format!("preparing {name}"))?;
                        Ok(Series {
                            name: name.clone(),
                            values: p.values,
                            start_s: p.start_s,
                            step_s: p.step_s,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let (model, fit) = GlobalLoadModel::fit(&series, &config).context("fitting the global load model")?;
                let bytes = model.to_bytes()?;
                write_file_durably(&a.out, &bytes)?;
                if a.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&fit)?)?;
                } else {
                    writeln!(
                        out,
                        "global load model: {} series, {} training rows, {} validation rows, {} parameters, epochs {:?}, validation scaled MAE {:?}, {:.1} s; wrote {} ({} bytes)",
                        fit.series.len(),
                        fit.train_rows,
                        fit.validation_rows,
                        fit.parameters,
                        fit.epochs,
                        fit.validation_scaled_mae,
                        fit.fit_seconds,
                        a.out.display(),
                        bytes.len()
                    )?;
                }
            }
            ForecastCmd::EvalFailure(a) => {
                cap_compute_threads(a.threads);
                let train = read_entity_table(&a.train)
                    .with_context(|| format!("reading training table {}", a.train.display()))?;
                let test =
                    read_entity_table(&a.test).with_context(|| format!("reading test table {}", a.test.display()))?;
                let config = FailureConfig {
                    horizon_days: a.horizon_days,
                    seed: a.seed,
                    hidden: a.hidden.into_iter().filter(|&h| h > 0).collect(),
                    epochs: a.epochs,
                    ensemble: a.ensemble,
                    weight_decay: a.weight_decay,
                    history_days: a.history_days,
                    select: !a.fixed,
                    ..FailureConfig::default()
                };
                let report = eval_failure(
                    &a.train.display().to_string(),
                    &train,
                    &a.test.display().to_string(),
                    &test,
                    &config,
                )
                .context("evaluating the failure forecaster")?;
                if a.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                } else {
                    print_failure(&mut out, &report)?;
                }
            }
            ForecastCmd::FitFailure(a) => {
                cap_compute_threads(a.threads);
                let train = read_entity_table(&a.train)
                    .with_context(|| format!("reading training table {}", a.train.display()))?;
                let config = FailureConfig {
                    horizon_days: a.horizon_days,
                    history_days: a.history_days,
                    seed: a.seed,
                    ..FailureConfig::default()
                };
                let (model, fit) =
                    FailureForecaster::fit(&train, &config).context("training the failure forecaster")?;
                let bytes = model.to_bytes().context("encoding the weights")?;
                std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
                let scores = model.predict(&train).context("scoring the training rows")?;
                let labels = label_rows(&train, a.horizon_days);
                let summary = FitFailureSummary {
                    weights: a.out.display().to_string(),
                    weights_bytes: bytes.len(),
                    fit,
                    train_operating_points: [0.001, 0.01, 0.05]
                        .iter()
                        .map(|&f| recall_at_fpr(&scores, &labels, f))
                        .collect(),
                };
                if a.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
                } else {
                    writeln!(
                        out,
                        "wrote {} ({} bytes): {} rows ({} positive), {} days of history, {} at {} epochs, \
                         calibration p = sigmoid({:.4} z {:+.4})",
                        summary.weights,
                        summary.weights_bytes,
                        summary.fit.rows,
                        summary.fit.positives,
                        summary.fit.history_days,
                        summary.fit.chosen,
                        summary.fit.epochs,
                        summary.fit.calibration.slope,
                        summary.fit.calibration.intercept,
                    )?;
                    for op in &summary.train_operating_points {
                        writeln!(
                            out,
                            "  on training rows: probability >= {:.4} flags {:.1}% of failing rows at {:.2}% false positives",
                            op.threshold,
                            op.recall * 100.0,
                            op.false_positive_rate * 100.0
                        )?;
                    }
                }
            }
            ForecastCmd::ExtractHistory(a) => {
                let table = read_entity_table(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
                let mut names = a.entity.clone();
                for (failed, count) in [(true, a.failed), (false, a.healthy)] {
                    if count > 0 {
                        let pool = entities_with(&table, failed, a.min_days);
                        if pool.len() < count {
                            anyhow::bail!(
                                "only {} {} entities have {} or more days; asked for {count}",
                                pool.len(),
                                if failed { "failing" } else { "healthy" },
                                a.min_days
                            );
                        }
                        names.extend(sample_entities(&pool, count, a.seed));
                    }
                }
                std::fs::create_dir_all(&a.out_dir).with_context(|| format!("creating {}", a.out_dir.display()))?;
                let mut written = Vec::new();
                for name in &names {
                    if name.contains(['/', '\\']) || name.starts_with('.') {
                        anyhow::bail!("entity {name:?} cannot be a file name");
                    }
                    let rows = entity_history(&table, name)?;
                    let path = a.out_dir.join(format!("{name}.csv"));
                    write_history(&path, &table.feature_names, &rows)
                        .with_context(|| format!("writing {}", path.display()))?;
                    let failed =
                        table.entity_names.iter().position(|n| n == name).is_some_and(|id| {
                            (0..table.len()).any(|i| table.entity[i] as usize == id && table.failure[i])
                        });
                    written.push(serde_json::json!({
                        "entity": name, "file": path.display().to_string(), "days": rows.len(), "failed": failed,
                    }));
                }
                if a.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&written)?)?;
                } else {
                    for w in &written {
                        writeln!(
                            out,
                            "{} {} days, failed {} -> {}",
                            w["entity"], w["days"], w["failed"], w["file"]
                        )?;
                    }
                }
            }
            ForecastCmd::ScoreHistory(a) => {
                let bytes = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
                let model = FailureForecaster::from_bytes(&bytes).context("decoding the weights")?;
                let rows = crate::history::read_history(&a.history)?;
                let mut scored = Vec::new();
                for end in 1..=rows.len() {
                    let p = model.predict_history(&rows[..end])?.unwrap_or(f64::NAN);
                    scored
                        .push(serde_json::json!({"date": crate::prep::format_day(rows[end - 1].0), "probability": p}));
                }
                if a.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&scored)?)?;
                } else {
                    for s in &scored {
                        writeln!(
                            out,
                            "{} {:.4}",
                            s["date"].as_str().unwrap_or(""),
                            s["probability"].as_f64().unwrap_or(f64::NAN)
                        )?;
                    }
                }
            }
            ForecastCmd::SplitDays(a) => {
                let at = match (a.first_days, &a.split_date) {
                    (Some(n), _) => SplitAt::FirstDays(n),
                    (None, Some(d)) => {
                        SplitAt::Day(parse_day(d).with_context(|| format!("parsing --split-date {d:?}"))?)
                    }
                    (None, None) => anyhow::bail!("give --first-days or --split-date"),
                };
                let summary = split_by_day(&a.input, at, &a.before, &a.after)
                    .with_context(|| format!("splitting {}", a.input.display()))?;
                if a.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
                } else {
                    writeln!(
                        out,
                        "{} rows before {} -> {}\n{} rows from {} on -> {}",
                        summary.rows_before,
                        summary.split_date,
                        a.before.display(),
                        summary.rows_after,
                        summary.split_date,
                        a.after.display()
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Every `*.csv` / `*.csv.gz` file of `dir` (not recursive), sorted by name, read as a series.
fn read_series_dir(dir: &std::path::Path) -> anyhow::Result<Vec<NamedPoints>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_file() && (name.ends_with(".csv") || name.ends_with(".csv.gz")) {
            files.push((name, path));
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!("{} holds no *.csv or *.csv.gz file", dir.display());
    }
    files
        .into_iter()
        .map(|(name, path)| {
            let points = read_series_csv(&path).with_context(|| format!("reading series {}", path.display()))?;
            Ok((name, points))
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file, fsynced and renamed, so a crash never
/// leaves a half-written model behind.
fn write_file_durably(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn print_cross(out: &mut impl Write, r: &CrossReport, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    writeln!(out, "leave-series-out load evaluation, horizon {}", r.horizon)?;
    for f in &r.fits {
        writeln!(
            out,
            "  fit: {} series, {} rows, epochs {:?}, validation scaled MAE {:?}, {:.1} s",
            f.series.len(),
            f.train_rows,
            f.epochs,
            f.validation_scaled_mae,
            f.fit_seconds
        )?;
    }
    writeln!(
        out,
        "  {:<40} {:>4} {:<22} {:>12} {:>12} {:<22} {:>7} {:>7} {:>6}",
        "series", "fold", "chosen", "MAE", "best base", "(which)", "ratio", "model", "p10-90"
    )?;
    for s in &r.series {
        writeln!(
            out,
            "  {:<40} {:>4} {:<22} {:>12.5} {:>12.5} {:<22} {:>7.3} {:>7.3} {:>6.2}",
            s.file,
            s.fold,
            s.chosen,
            s.forecaster.mae,
            s.baselines.iter().map(|b| b.mae).fold(f64::INFINITY, f64::min),
            s.best_baseline,
            s.ratio,
            s.model_ratio,
            s.p10_p90_coverage
        )?;
    }
    writeln!(
        out,
        "  median ratio {:.3} (model alone {:.3}); {} of {} at most 0.9; {} above 1.0",
        r.median_ratio,
        r.median_model_ratio,
        r.at_most_0_9,
        r.series.len(),
        r.above_1
    )?;
    Ok(())
}

fn print_load(out: &mut impl Write, r: &LoadReport) -> std::io::Result<()> {
    writeln!(out, "load forecast evaluation: {}", r.file)?;
    writeln!(
        out,
        "  {} points at {} s ({} filled), train {} points, {} test origins, horizon {}",
        r.points, r.step_s, r.filled_points, r.train_points, r.test_origins, r.horizon
    )?;
    writeln!(out, "  {:<28} {:>14} {:>14}", "method", "MAE", "RMSE")?;
    for e in std::iter::once(&r.model).chain(&r.baselines) {
        writeln!(out, "  {:<28} {:>14.6} {:>14.6}", e.method, e.mae, e.rmse)?;
    }
    writeln!(
        out,
        "  model MAE / best baseline ({}) = {:.3}",
        r.best_baseline, r.mae_ratio_to_best_baseline
    )?;
    let val: Vec<String> = r
        .fit
        .validation_mae
        .iter()
        .map(|(n, v)| format!("{n}={v:.4}"))
        .collect();
    writeln!(
        out,
        "  chosen on validation: {} ({} epochs); candidates {}",
        r.fit.chosen,
        r.fit.epochs,
        val.join(", ")
    )
}

fn print_failure(out: &mut impl Write, r: &FailureReport) -> std::io::Result<()> {
    let ratio = |g: Option<f64>| g.map_or("n/a".to_string(), |g| format!("{g:.2}"));
    writeln!(
        out,
        "failure forecast evaluation: train {}, test {}",
        r.train_file, r.test_file
    )?;
    writeln!(
        out,
        "  train {} rows ({} positive); test {} rows, {} positive, {} failing entities; horizon {} days",
        r.fit.rows, r.fit.positives, r.test_rows, r.test_positives, r.test_failures, r.horizon_days
    )?;
    if !r.absent_columns.is_empty() || !r.ignored_columns.is_empty() {
        writeln!(
            out,
            "  attributes absent from the test file (scored as missing): {}; unknown (ignored): {}",
            if r.absent_columns.is_empty() {
                "none".to_string()
            } else {
                r.absent_columns.join(" ")
            },
            if r.ignored_columns.is_empty() {
                "none".to_string()
            } else {
                r.ignored_columns.join(" ")
            },
        )?;
    }
    let val: Vec<String> = r
        .fit
        .validation
        .iter()
        .map(|(n, e, s)| format!("{n}@{e}={s:.3}"))
        .collect();
    writeln!(
        out,
        "  model: {} inputs over {} days of history; {} at {} epochs (cross-validated over drives, mean recall at FPR<=0.1: {})",
        r.fit.inputs,
        r.fit.history_days,
        r.fit.chosen,
        r.fit.epochs,
        if val.is_empty() { "not run".to_string() } else { val.join(", ") }
    )?;
    writeln!(
        out,
        "  calibration (Platt, on {} out-of-fold rows): p = sigmoid({:.4} z {:+.4}); fit {:.1} s, scoring {:.2} s",
        r.fit.calibration_rows, r.fit.calibration.slope, r.fit.calibration.intercept, r.fit_seconds, r.score_seconds
    )?;
    writeln!(out, "  model PR-AUC {:.4}", r.model.pr_auc)?;
    match &r.rule {
        Some(rule) => {
            writeln!(
                out,
                "  rule ({}): recall {:.4}, false-positive rate {:.5}, precision {:.5}",
                rule.columns.join(" | "),
                rule.recall,
                rule.false_positive_rate,
                rule.precision
            )?;
            if let Some(op) = r.model.at_rule_fpr {
                writeln!(
                    out,
                    "  model at the rule's FPR:    recall {:.4} (FPR {:.5}), gain x{}",
                    op.recall,
                    op.false_positive_rate,
                    ratio(r.recall_gain_at_rule_fpr)
                )?;
            }
            if let Some(op) = r.model.at_rule_recall {
                writeln!(
                    out,
                    "  model at the rule's recall: FPR {:.5} (recall {:.4}), ratio x{}",
                    op.false_positive_rate,
                    op.recall,
                    ratio(r.fpr_ratio_at_rule_recall)
                )?;
            }
            writeln!(
                out,
                "  model PR-AUC / rule precision: x{}",
                ratio(r.pr_auc_over_rule_precision)
            )?;
            if let Some(d) = &r.per_drive {
                writeln!(
                    out,
                    "  per drive (caught if any positive row is flagged; FPR per healthy drive-day as above): \
                     rule {}/{} ({:.4}), model at the rule's FPR {}/{} ({:.4}), gain x{}",
                    d.rule_caught,
                    d.failing_drives,
                    d.rule_recall,
                    d.model_caught,
                    d.failing_drives,
                    d.model_recall,
                    ratio(d.gain)
                )?;
            }
        }
        None => writeln!(out, "  rule: no SMART 5/187/188/197/198 column in the test file")?,
    }
    writeln!(
        out,
        "  reliability on the test file (Brier {:.6}; base rate alone {:.6}):",
        r.model.brier_score, r.model.brier_base_rate
    )?;
    writeln!(
        out,
        "    predicted        rows  positives  mean predicted  observed rate"
    )?;
    for b in &r.reliability {
        writeln!(
            out,
            "    [{:.3}, {:.3}) {:>9} {:>10}  {:>14.5}  {:>13.5}",
            b.lo, b.hi, b.rows, b.positives, b.mean_predicted, b.observed_rate
        )?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(subcommand)]
        cmd: ForecastCmd,
    }

    #[test]
    fn commands_parse_with_documented_defaults() {
        Wrapper::command().debug_assert();
        let w = Wrapper::try_parse_from(["arkd", "eval-load", "--csv", "f.csv"]).unwrap();
        match w.cmd {
            ForecastCmd::EvalLoad(a) => assert_eq!((a.horizon, a.seed, a.json), (12, 0, false)),
            other => panic!("parsed as {other:?}"),
        }
        // Leave-series-out: a training directory with a test directory or folds, never both,
        // and never together with a single file.
        let w = Wrapper::try_parse_from(["arkd", "eval-load", "--train", "d", "--folds", "13"]).unwrap();
        match w.cmd {
            ForecastCmd::EvalLoad(a) => assert_eq!((a.folds, a.csv, a.ensemble), (Some(13), None, 1)),
            other => panic!("parsed as {other:?}"),
        }
        assert!(Wrapper::try_parse_from(["arkd", "eval-load", "--train", "d", "--test", "e"]).is_ok());
        assert!(Wrapper::try_parse_from(["arkd", "eval-load", "--train", "d", "--test", "e", "--folds", "2"]).is_err());
        assert!(Wrapper::try_parse_from(["arkd", "eval-load", "--csv", "f", "--train", "d"]).is_err());
        assert!(Wrapper::try_parse_from(["arkd", "eval-load", "--model", "m"]).is_err());
        assert!(Wrapper::try_parse_from(["arkd", "eval-load", "--csv", "f", "--model", "m"]).is_ok());
        assert!(Wrapper::try_parse_from(["arkd", "fit-load", "--train", "d", "--out", "m"]).is_ok());
        let w = Wrapper::try_parse_from(["arkd", "eval-failure", "--train", "a", "--test", "b", "--json"]).unwrap();
        match w.cmd {
            ForecastCmd::EvalFailure(a) => assert_eq!((a.horizon_days, a.json, a.fixed), (10, true, false)),
            other => panic!("parsed as {other:?}"),
        }
        // split-days needs exactly one way to split.
        assert!(
            Wrapper::try_parse_from(["arkd", "split-days", "--input", "a", "--before", "b", "--after", "c"]).is_err()
        );
        assert!(Wrapper::try_parse_from([
            "arkd",
            "split-days",
            "--input",
            "a",
            "--before",
            "b",
            "--after",
            "c",
            "--split-date",
            "2013-04-20"
        ])
        .is_ok());
    }
}
