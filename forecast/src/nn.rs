//! The one network both forecasters use: a small multilayer perceptron on candle's CPU
//! device, its seeded initialisation, its training loop (AdamW, minibatches, optional
//! early stopping on a validation score) and its safetensors encoding to and from bytes.
//!
//! Only plain differentiable ops are used (matmul, add, relu, abs, exp, log), never fused
//! kernels without a backward pass, so every parameter receives a gradient. This module
//! knows nothing about series or drives; features are built by `load` and `failure`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::error::{ForecastError, Result};

/// Environment variable read by candle's CPU matmul (and rayon) for its thread count.
pub const THREADS_ENV: &str = "RAYON_NUM_THREADS";

/// Caps the threads candle uses for tensor maths in this process at `threads` (at least 1),
/// unless the operator already set `RAYON_NUM_THREADS`.
///
/// candle 0.9 reads that variable on every matmul and has no setter, so call this once at
/// start-up, before spawning other threads (the node does it before starting its runtime)
/// so that training never takes the cores heartbeats need. With 1, candle's gemm runs on the
/// calling thread only; run training on its own thread (e.g. `spawn_blocking`).
pub fn cap_compute_threads(threads: usize) {
    if std::env::var_os(THREADS_ENV).is_none() {
        std::env::set_var(THREADS_ENV, threads.max(1).to_string());
    }
}

/// Runs a training closure on a dedicated, named OS thread so that the caller (an async
/// runtime serving heartbeats) is never blocked by it; join the handle to get the model.
/// Together with [`cap_compute_threads`] this bounds training to one extra busy thread.
pub fn spawn_training<T, F>(f: F) -> std::io::Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    std::thread::Builder::new().name("ark-forecast-train".into()).spawn(f)
}

/// Shape of a multilayer perceptron.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MlpShape {
    /// Number of input features.
    pub inputs: usize,
    /// Widths of the hidden layers (empty for a linear model).
    pub hidden: Vec<usize>,
    /// Number of outputs.
    pub outputs: usize,
}

/// A multilayer perceptron with ReLU activations and a linear output layer.
#[derive(Debug, Clone)]
pub struct Mlp {
    shape: MlpShape,
    /// `(weight [out, in], bias [out])` per layer.
    layers: Vec<(Var, Var)>,
}

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Loss {
    /// Mean absolute error: fits the conditional median, matching an MAE metric.
    L1,
    /// Mean squared error.
    Mse,
    /// Binary cross-entropy on logits, each row weighted by its sample weight.
    WeightedBce,
    /// Pinball (quantile) loss: the outputs are `quantiles.len()` blocks of `targets`
    /// columns each, block `k` fitting quantile `quantiles[k]` of every target column.
    Pinball([f32; 3]),
}

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainParams {
    /// Passes over the training rows (an upper bound when validating).
    pub epochs: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Objective.
    pub loss: Loss,
    /// Seed of the initialisation and of the minibatch order.
    pub seed: u64,
    /// Stop after this many validation checks without improvement.
    pub patience: usize,
}

/// A dense row-major matrix of `f32` features or targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// An empty matrix of `cols` columns.
    pub fn new(cols: usize) -> Self {
        Self { cols, data: Vec::new() }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Appends one row; its length must equal `cols`.
    pub fn push_row(&mut self, row: &[f32]) {
        debug_assert_eq!(row.len(), self.cols);
        self.data.extend_from_slice(row);
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows with the given indices, in that order.
    pub fn select(&self, rows: &[usize]) -> Matrix {
        let mut out = Matrix::new(self.cols);
        out.data.reserve(rows.len() * self.cols);
        for &r in rows {
            out.push_row(self.row(r));
        }
        out
    }

    fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.data, (self.rows(), self.cols), &Device::Cpu)?)
    }
}

/// A validation callback: scores the network after an epoch, lower is better.
pub type Validator<'a, N = Mlp> = dyn FnMut(&N) -> Result<f64> + 'a;

/// A trainable network: its parameters and a differentiable forward pass over a
/// `[rows, inputs]` batch. [`train_network`] trains any of them.
pub trait Network {
    /// Every trainable parameter.
    fn vars(&self) -> Vec<Var>;
    /// Outputs for a `[rows, inputs]` batch.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Number of outputs per row.
    fn outputs(&self) -> usize;
}

/// A dense layer `(weight [out, in], bias [out])` with uniform He initialisation drawn from
/// `rng` and zero bias.
pub fn dense_layer(fan_in: usize, fan_out: usize, rng: &mut StdRng) -> Result<(Var, Var)> {
    let bound = (6.0 / fan_in.max(1) as f64).sqrt() as f32;
    let w: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.gen_range(-bound..bound)).collect();
    let w = Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), &Device::Cpu)?)?;
    let b = Var::zeros(fan_out, DType::F32, &Device::Cpu)?;
    Ok((w, b))
}

/// `x · wᵀ + b` for a `[rows, in]` batch.
pub fn dense(x: &Tensor, (w, b): &(Var, Var)) -> Result<Tensor> {
    Ok(x.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?)
}

/// Outputs of `net` for every row of `x`, computed in batches of at most 4096 rows.
pub fn predict_network<N: Network>(net: &N, x: &Matrix) -> Result<Matrix> {
    let mut out = Matrix::new(net.outputs());
    out.data.reserve(x.rows() * net.outputs());
    const BATCH_ROWS_MAX: usize = 4096;
    let rows = x.rows();
    let mut start = 0;
    while start < rows {
        let end = (start + BATCH_ROWS_MAX).min(rows);
        let chunk = Tensor::from_slice(
            &x.data[start * x.cols..end * x.cols],
            (end - start, x.cols),
            &Device::Cpu,
        )?;
        let y = net.forward(&chunk)?.flatten_all()?.to_vec1::<f32>()?;
        out.data.extend(y);
        start = end;
    }
    Ok(out)
}

/// Encodes named parameters as one safetensors blob with `metadata` in its header.
pub fn encode_safetensors(named: &[(String, &Var)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in named {
        let values = t.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), t.as_tensor().dims().to_vec(), bytes));
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, shape, bytes) in &buffers {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
            .map_err(|e| ForecastError::Weights(format!("tensor {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, &Some(metadata)).map_err(|e| ForecastError::Weights(format!("cannot serialise: {e}")))
}

/// Header metadata of a safetensors blob.
pub fn safetensors_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ForecastError::Weights(format!("cannot read the header: {e}")))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// One f32 tensor of a parsed safetensors blob, checked against the expected shape.
pub fn load_var(tensors: &safetensors::SafeTensors<'_>, name: &str, want: &[usize]) -> Result<Var> {
    let bad = |m: String| ForecastError::Weights(m);
    let view = tensors.tensor(name).map_err(|e| bad(format!("tensor {name}: {e}")))?;
    if view.dtype() != safetensors::Dtype::F32 || view.shape() != want {
        return Err(bad(format!(
            "tensor {name}: expected f32 {want:?}, found {:?} {:?}",
            view.dtype(),
            view.shape()
        )));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(values, want, &Device::Cpu)?)?)
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainOutcome {
    /// Epochs whose weights were kept (the best validated epoch, or all of them).
    pub epochs_used: usize,
    /// Training loss of the last epoch run.
    pub train_loss: f64,
    /// Best validation score (lower is better), if a validator was given.
    pub best_validation: Option<f64>,
}

impl Network for Mlp {
    fn vars(&self) -> Vec<Var> {
        Mlp::vars(self)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Mlp::forward(self, x)
    }

    fn outputs(&self) -> usize {
        self.shape.outputs
    }
}

/// Loss of predictions `pred` against `target` (`[rows, outputs]`), with optional per-row
/// weights `[rows, 1]` (used by [`Loss::WeightedBce`]).
pub fn loss_of(pred: &Tensor, target: &Tensor, weight: Option<&Tensor>, loss: Loss) -> Result<Tensor> {
    Ok(match loss {
        Loss::L1 => (pred - target)?.abs()?.mean_all()?,
        Loss::Mse => (pred - target)?.sqr()?.mean_all()?,
        Loss::WeightedBce => {
            // softplus(z) - y z, written with abs/exp/log so it is stable and every op
            // has a backward pass.
            let softplus = (pred.relu()? + ((pred.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
            let per_row = (softplus - (target * pred)?)?;
            match weight {
                Some(w) => {
                    let total = w.sum_all()?;
                    (per_row.broadcast_mul(w)?.sum_all()? / total)?
                }
                None => per_row.mean_all()?,
            }
        }
        Loss::Pinball(qs) => {
            // q·relu(y − ŷ) + (1 − q)·relu(ŷ − y) per quantile block.
            let cols = target.dim(1)?;
            let repeated = Tensor::cat(&vec![target; qs.len()], 1)?;
            let q: Vec<f32> = qs.iter().flat_map(|&q| std::iter::repeat_n(q, cols)).collect();
            let q = Tensor::from_vec(q, (1, qs.len() * cols), &Device::Cpu)?;
            let r = (repeated - pred)?;
            let over = r.relu()?.broadcast_mul(&q)?;
            let under = r.neg()?.relu()?.broadcast_mul(&(q.neg()? + 1.0)?)?;
            (over + under)?.mean_all()?
        }
    })
}

fn snapshot(vars: &[Var]) -> Result<Vec<Tensor>> {
    Ok(vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

fn restore(vars: &[Var], snapshot: &[Tensor]) -> Result<()> {
    for (v, t) in vars.iter().zip(snapshot) {
        v.set(t)?;
    }
    Ok(())
}

/// Trains `net` in place on the calling thread. With a `validate` closure (lower is
/// better), it is called after every epoch, training stops after `patience` epochs without
/// improvement, and the best epoch's weights are kept.
pub fn train_network<N: Network>(
    net: &N,
    x: &Matrix,
    y: &Matrix,
    weights: Option<&[f32]>,
    params: &TrainParams,
    mut validate: Option<&mut Validator<'_, N>>,
) -> Result<TrainOutcome> {
    let rows = x.rows();
    if rows == 0 || y.rows() != rows || weights.is_some_and(|w| w.len() != rows) {
        return Err(ForecastError::NotEnoughData(format!(
            "training needs matching non-empty inputs and targets, got {rows} and {} rows",
            y.rows()
        )));
    }
    let vars = net.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: params.learning_rate,
            weight_decay: params.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(params.seed ^ 0x05ee_d0fb_a7c4);
    let mut order: Vec<usize> = (0..rows).collect();
    let batch = params.batch_size.clamp(1, rows);
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut since_best = 0usize;
    let mut train_loss = f64::NAN;
    let mut epochs_run = 0usize;
    for epoch in 0..params.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut n) = (0.0f64, 0usize);
        for idx in order.chunks(batch) {
            let xb = x.select(idx).to_tensor()?;
            let yb = y.select(idx).to_tensor()?;
            let wb = match weights {
                Some(w) => {
                    let v: Vec<f32> = idx.iter().map(|&i| w[i]).collect();
                    Some(Tensor::from_vec(v, (idx.len(), 1), &Device::Cpu)?)
                }
                None => None,
            };
            let pred = net.forward(&xb)?;
            let loss = loss_of(&pred, &yb, wb.as_ref(), params.loss)?;
            opt.backward_step(&loss)?;
            sum += f64::from(loss.to_scalar::<f32>()?);
            n += 1;
        }
        train_loss = sum / n.max(1) as f64;
        epochs_run = epoch + 1;
        if let Some(validate) = validate.as_mut() {
            let score = validate(net)?;
            let improved = best.as_ref().is_none_or(|b| score < b.0);
            if improved {
                best = Some((score, epochs_run, snapshot(&vars)?));
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= params.patience.max(1) {
                    break;
                }
            }
        }
    }
    Ok(match best {
        Some((score, epochs_used, weights)) => {
            restore(&vars, &weights)?;
            TrainOutcome {
                epochs_used,
                train_loss,
                best_validation: Some(score),
            }
        }
        None => TrainOutcome {
            epochs_used: epochs_run,
            train_loss,
            best_validation: None,
        },
    })
}

impl Mlp {
    /// Creates a network with weights drawn from `rng` (uniform He initialisation, zero
    /// biases), so the same seed always gives the same network.
    pub fn new(shape: MlpShape, rng: &mut StdRng) -> Result<Self> {
        if shape.inputs == 0 || shape.outputs == 0 || shape.hidden.contains(&0) {
            return Err(ForecastError::InvalidArgument(format!(
                "network layers must be non-empty, got {shape:?}"
            )));
        }
        let mut dims = vec![shape.inputs];
        dims.extend(&shape.hidden);
        dims.push(shape.outputs);
        let mut layers = Vec::with_capacity(dims.len() - 1);
        for pair in dims.windows(2) {
            layers.push(dense_layer(pair[0], pair[1], rng)?);
        }
        Ok(Self { shape, layers })
    }

    /// The network's shape.
    pub fn shape(&self) -> &MlpShape {
        &self.shape
    }

    /// Every trainable parameter, weights and biases of each layer in order.
    pub fn vars(&self) -> Vec<Var> {
        self.layers.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect()
    }

    /// Outputs for a `[rows, inputs]` batch, as a `[rows, outputs]` tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = dense(&h, layer)?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Outputs for every row of `x`, computed in batches of at most 4096 rows.
    pub fn predict(&self, x: &Matrix) -> Result<Matrix> {
        if x.cols != self.shape.inputs {
            return Err(ForecastError::InvalidArgument(format!(
                "network expects {} inputs, got {}",
                self.shape.inputs, x.cols
            )));
        }
        predict_network(self, x)
    }

    /// Loss of predictions `pred` against `target` (`[rows, outputs]`), with optional
    /// per-row weights `[rows, 1]` (used by [`Loss::WeightedBce`]).
    pub fn loss(pred: &Tensor, target: &Tensor, weight: Option<&Tensor>, loss: Loss) -> Result<Tensor> {
        loss_of(pred, target, weight, loss)
    }

    /// Trains in place on the calling thread (see [`train_network`]).
    pub fn train(
        &self,
        x: &Matrix,
        y: &Matrix,
        weights: Option<&[f32]>,
        params: &TrainParams,
        validate: Option<&mut Validator<'_>>,
    ) -> Result<TrainOutcome> {
        train_network(self, x, y, weights, params, validate)
    }

    /// Encodes the weights as a safetensors blob; `metadata` is stored in its header (the
    /// forecasters put their feature scaling and configuration there).
    pub fn to_safetensors(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let mut metadata = metadata;
        let shape = serde_json::to_string(&self.shape)
            .map_err(|e| ForecastError::Weights(format!("cannot encode the shape: {e}")))?;
        metadata.insert("ark.mlp_shape".into(), shape);
        let mut named = Vec::new();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            named.push((format!("layer{i}.weight"), w));
            named.push((format!("layer{i}.bias"), b));
        }
        encode_safetensors(&named, metadata)
    }

    /// Decodes a blob written by [`Mlp::to_safetensors`], returning the network and the
    /// header metadata.
    pub fn from_safetensors(bytes: &[u8]) -> Result<(Self, HashMap<String, String>)> {
        let bad = |m: String| ForecastError::Weights(m);
        let metadata = safetensors_metadata(bytes)?;
        let shape: MlpShape = serde_json::from_str(
            metadata
                .get("ark.mlp_shape")
                .ok_or_else(|| bad("missing ark.mlp_shape metadata".into()))?,
        )
        .map_err(|e| bad(format!("bad ark.mlp_shape metadata: {e}")))?;
        let tensors =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("cannot parse tensors: {e}")))?;
        let mut dims = vec![shape.inputs];
        dims.extend(&shape.hidden);
        dims.push(shape.outputs);
        let mut layers = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            let w = load_var(&tensors, &format!("layer{i}.weight"), &[pair[1], pair[0]])?;
            let b = load_var(&tensors, &format!("layer{i}.bias"), &[pair[1]])?;
            layers.push((w, b));
        }
        Ok((Self { shape, layers }, metadata))
    }

    /// All parameters flattened, in [`Mlp::vars`] order (for comparisons in tests and
    /// determinism checks).
    pub fn flat_weights(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for v in self.vars() {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.
mod tests {
    use super::*;

    fn toy(rows: usize) -> (Matrix, Matrix) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut x = Matrix::new(3);
        let mut y = Matrix::new(2);
        for _ in 0..rows {
            let r: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
            x.push_row(&r);
            y.push_row(&[r[0] - 2.0 * r[1], (r[2] > 0.5) as u8 as f32]);
        }
        (x, y)
    }

    fn params(loss: Loss, seed: u64) -> TrainParams {
        TrainParams {
            epochs: 5,
            batch_size: 16,
            learning_rate: 0.01,
            weight_decay: 1e-4,
            loss,
            seed,
            patience: 3,
        }
    }

    #[test]
    fn every_parameter_receives_a_gradient() {
        let (x, y) = toy(32);
        let shape = MlpShape {
            inputs: 3,
            hidden: vec![8, 4],
            outputs: 2,
        };
        let mlp = Mlp::new(shape, &mut StdRng::seed_from_u64(1)).unwrap();
        let w = Tensor::ones((32, 1), DType::F32, &Device::Cpu).unwrap();
        for loss in [Loss::L1, Loss::Mse, Loss::WeightedBce] {
            let pred = mlp.forward(&x.to_tensor().unwrap()).unwrap();
            let l = Mlp::loss(&pred, &y.to_tensor().unwrap(), Some(&w), loss).unwrap();
            let grads = l.backward().unwrap();
            for (i, v) in mlp.vars().iter().enumerate() {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{loss:?}: parameter {i} has no gradient"));
                let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(norm > 0.0, "{loss:?}: parameter {i} has a zero gradient");
            }
        }
    }

    #[test]
    fn same_seed_same_weights_and_loss() {
        let (x, y) = toy(64);
        let shape = MlpShape {
            inputs: 3,
            hidden: vec![8],
            outputs: 2,
        };
        let run = |seed: u64| {
            let mlp = Mlp::new(shape.clone(), &mut StdRng::seed_from_u64(seed)).unwrap();
            let out = mlp.train(&x, &y, None, &params(Loss::L1, seed), None).unwrap();
            (mlp.flat_weights().unwrap(), out.train_loss)
        };
        let (w1, l1) = run(3);
        let (w2, l2) = run(3);
        let (w3, _) = run(4);
        assert_eq!(w1, w2);
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert_ne!(w1, w3);
    }

    #[test]
    fn training_reduces_loss_and_early_stopping_keeps_best() {
        let (x, y) = toy(128);
        let shape = MlpShape {
            inputs: 3,
            hidden: vec![16],
            outputs: 2,
        };
        let mlp = Mlp::new(shape, &mut StdRng::seed_from_u64(5)).unwrap();
        let before = crate::metrics::mae(
            &mlp.predict(&x)
                .unwrap()
                .data
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>(),
            &y.data.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        );
        let (xv, yv) = (x.clone(), y.clone());
        let mut validate = move |m: &Mlp| -> Result<f64> {
            let p = m.predict(&xv)?;
            Ok(p.data.iter().zip(&yv.data).map(|(a, b)| f64::from((a - b).abs())).sum())
        };
        let mut p = params(Loss::L1, 5);
        p.epochs = 30;
        let out = mlp.train(&x, &y, None, &p, Some(&mut validate)).unwrap();
        let after = crate::metrics::mae(
            &mlp.predict(&x)
                .unwrap()
                .data
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>(),
            &y.data.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        );
        assert!(after < before * 0.8, "before {before}, after {after}");
        assert!(out.epochs_used >= 1 && out.epochs_used <= 30);
        // The kept weights are the best validated ones.
        let kept = validate(&mlp).unwrap();
        assert!((kept - out.best_validation.unwrap()).abs() < 1e-3);
    }

    #[test]
    fn background_training_matches_foreground() {
        let (x, y) = toy(32);
        let shape = MlpShape {
            inputs: 3,
            hidden: vec![4],
            outputs: 2,
        };
        let train = move |x: Matrix, y: Matrix| -> Result<Vec<f32>> {
            let mlp = Mlp::new(shape, &mut StdRng::seed_from_u64(11))?;
            mlp.train(&x, &y, None, &params(Loss::Mse, 11), None)?;
            mlp.flat_weights()
        };
        let fg = train.clone()(x.clone(), y.clone()).unwrap();
        let handle = spawn_training(move || train(x, y)).unwrap();
        assert_eq!(handle.join().unwrap().unwrap(), fg);
    }

    #[test]
    fn safetensors_round_trip_keeps_weights_and_metadata() {
        let shape = MlpShape {
            inputs: 4,
            hidden: vec![5],
            outputs: 3,
        };
        let mlp = Mlp::new(shape.clone(), &mut StdRng::seed_from_u64(9)).unwrap();
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        let bytes = mlp.to_safetensors(meta).unwrap();
        let (back, meta) = Mlp::from_safetensors(&bytes).unwrap();
        assert_eq!(back.shape(), &shape);
        assert_eq!(meta.get("k").map(String::as_str), Some("v"));
        assert_eq!(back.flat_weights().unwrap(), mlp.flat_weights().unwrap());
        let x = Matrix {
            cols: 4,
            data: vec![0.5, -1.0, 2.0, 0.0],
        };
        assert_eq!(back.predict(&x).unwrap(), mlp.predict(&x).unwrap());
        assert!(Mlp::from_safetensors(&bytes[..bytes.len() / 2]).is_err());
        assert!(Mlp::from_safetensors(b"not a blob").is_err());
    }
}
