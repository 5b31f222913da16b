//! Criterion benches of the forecaster's two budgets: inference for 9 nodes' windows per
//! interval (target under 5 ms) and one training round (target under 60 s), on synthetic
//! data of the size of the public traces so the bench needs no data files.
//!
//! Run with one compute thread, as the node trains:
//! `RAYON_NUM_THREADS=1 cargo bench -p ark-bench --bench forecast`.

use std::time::Duration;

use ark_forecast::data::EntityTable;
use ark_forecast::global::Series;
use ark_forecast::{FailureConfig, FailureForecaster, GlobalConfig, GlobalLoadModel, LoadConfig, LoadForecaster};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const STEP_S: i64 = 300;
const NODES: usize = 9;

/// Deterministic pseudo-noise in [-0.5, 0.5) (no RNG dependency needed).
fn noise(i: u64) -> f64 {
    let x = i
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// A 5-minute CPU-like series: daily cycle, noise and occasional spikes.
fn series(len: usize, salt: u64) -> Vec<f64> {
    (0..len)
        .map(|i| {
            let day = std::f64::consts::TAU * i as f64 / 288.0;
            let spike = if noise(i as u64 * 31 + salt) > 0.48 { 30.0 } else { 0.0 };
            40.0 + 15.0 * day.sin() + 5.0 * noise(i as u64 + salt) + spike
        })
        .collect()
}

/// `count` series of `len` points, the shape of the NAB CloudWatch corpus.
fn corpus(count: u64, len: usize) -> Vec<Series> {
    (0..count)
        .map(|k| Series {
            name: format!("s{k}"),
            values: series(len, 100 + k),
            start_s: 0,
            step_s: STEP_S,
        })
        .collect()
}

/// A Backblaze-sized table: `drives` entities over `days` days, 11 counters, 1 in 500
/// drives failing on its last day with growing sector counts beforehand.
fn drives_table(drives: u32, days: i64) -> EntityTable {
    let names: Vec<String> = [1, 5, 7, 9, 12, 187, 188, 194, 197, 198, 199]
        .iter()
        .map(|a| format!("smart_{a}_raw"))
        .collect();
    let mut t = EntityTable {
        feature_names: names,
        ..EntityTable::default()
    };
    for e in 0..drives {
        t.entity_names.push(format!("d{e}"));
        let failing = e % 500 == 0;
        for d in 0..days {
            t.entity.push(e);
            t.day.push(15_800 + d);
            t.failure.push(failing && d == days - 1);
            let r = noise(u64::from(e) * 100 + d as u64);
            let sectors = if failing { (d * d) as f32 } else { f32::from(r > 0.45) };
            t.features.extend([
                (r * 1e8) as f32,
                sectors,
                (r.abs() * 1e9) as f32,
                (1000 + e % 20_000 + d as u32 * 24) as f32,
                (e % 50) as f32,
                sectors,
                0.0,
                (25.0 + 10.0 * r) as f32,
                sectors / 2.0,
                sectors / 2.0,
                f32::NAN,
            ]);
        }
    }
    t
}

fn inference(c: &mut Criterion) {
    let train = series(2822, 0);
    let (load, _) = LoadForecaster::fit(&train, 0, STEP_S, &LoadConfig::default()).expect("training on synthetic data");
    let histories: Vec<Vec<f64>> = (0..NODES as u64).map(|n| series(600, n + 1)).collect();
    let refs: Vec<&[f64]> = histories.iter().map(Vec::as_slice).collect();
    let ends = vec![599 * STEP_S; NODES];
    c.bench_function("load_forecast_9_nodes", |b| {
        b.iter(|| {
            load.forecast_batch(black_box(&refs), black_box(&ends))
                .expect("forecast")
        })
    });

    // The global model: fitted once on a synthetic corpus; per interval the leader forecasts
    // every node with its chosen method; per retrain interval it chooses (and fine-tunes)
    // again for one node.
    let (global, _) =
        GlobalLoadModel::fit(&corpus(4, 2000), &GlobalConfig::default()).expect("training on synthetic data");
    let chosen: Vec<_> = histories
        .iter()
        .map(|h| global.select(h, None, 0, STEP_S, 0.3).expect("select"))
        .collect();
    c.bench_function("global_forecast_9_nodes", |b| {
        b.iter(|| {
            for (f, h) in chosen.iter().zip(&histories) {
                black_box(f.forecast(black_box(h), 0).expect("forecast"));
            }
        })
    });
    let mut group = c.benchmark_group("global_select");
    group.sample_size(10);
    group.bench_function("global_select_one_node_600_points", |b| {
        b.iter(|| {
            global
                .select(black_box(&histories[0]), None, 0, STEP_S, 0.3)
                .expect("select")
        })
    });
    group.finish();
    let bytes = global.to_bytes().expect("encode");
    eprintln!("global load model: {} bytes", bytes.len());

    let table = drives_table(2_000, 10);
    let (failure, _) = FailureForecaster::fit(&table, &FailureConfig::default()).expect("training on synthetic data");
    // Nine nodes, each with a week of daily rows.
    let mut window = drives_table(NODES as u32, 7);
    window.failure.iter_mut().for_each(|f| *f = false);
    c.bench_function("failure_probability_9_nodes", |b| {
        b.iter(|| failure.predict(black_box(&window)).expect("predict"))
    });
}

fn training(c: &mut Criterion) {
    let mut group = c.benchmark_group("training_round");
    group.sample_size(10).measurement_time(Duration::from_secs(30));
    let train = series(2822, 0);
    group.bench_function("load_fit_2822_points", |b| {
        b.iter(|| LoadForecaster::fit(black_box(&train), 0, STEP_S, &LoadConfig::default()).expect("fit"))
    });
    let corpus = corpus(13, 4032);
    group.bench_function("global_fit_13_series_4032_points", |b| {
        b.iter(|| GlobalLoadModel::fit(black_box(&corpus), &GlobalConfig::default()).expect("fit"))
    });
    let table = drives_table(21_000, 10);
    group.bench_function("failure_fit_210k_rows", |b| {
        b.iter(|| FailureForecaster::fit(black_box(&table), &FailureConfig::default()).expect("fit"))
    });
    group.finish();
}

criterion_group!(benches, inference, training);
criterion_main!(benches);
