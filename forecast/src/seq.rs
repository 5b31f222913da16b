//! The sequence network of the global load forecaster: a dilated temporal convolution over
//! the recent history, joined with a few summary inputs, predicting several quantiles of the
//! next steps.
//!
//! The convolution is a stack of width-2 kernels whose dilation doubles at every level and
//! whose stride equals the dilation (WaveNet's tree without the overlap): level `k` combines
//! neighbouring outputs of level `k - 1`, so `log2(context)` levels cover the whole context and
//! each is one batched matmul. A linear skip from the summary inputs to the outputs lets the
//! network start from what a linear model over those inputs would say.
//!
//! This module knows tensors and shapes only; `global` builds the inputs from series.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;

use crate::error::{ForecastError, Result};
use crate::nn::{dense, dense_layer, encode_safetensors, load_var, safetensors_metadata, Network};

/// Shape of a [`SeqNet`]. Inputs are `context` sequence values, then `statics` summary values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeqShape {
    /// Sequence steps fed to the convolution, a power of two, at least 2.
    pub context: usize,
    /// Channels of every convolution level.
    pub channels: usize,
    /// Summary inputs after the sequence.
    pub statics: usize,
    /// Width of the hidden layer of the head.
    pub hidden: usize,
    /// Outputs.
    pub outputs: usize,
}

impl SeqShape {
    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.context + self.statics
    }

    fn levels(&self) -> usize {
        self.context.trailing_zeros() as usize
    }

    fn validate(&self) -> Result<()> {
        if self.context < 2
            || !self.context.is_power_of_two()
            || self.context > 4096
            || self.channels == 0
            || self.hidden == 0
            || self.outputs == 0
        {
            return Err(ForecastError::InvalidArgument(format!(
                "invalid sequence network shape {self:?}"
            )));
        }
        Ok(())
    }
}

/// Dilated temporal convolution plus a small head; see the module doc.
#[derive(Debug, Clone)]
pub struct SeqNet {
    shape: SeqShape,
    /// One dense layer per convolution level (`2 * channels_in -> channels`).
    conv: Vec<(Var, Var)>,
    /// Head: `[channels + statics] -> hidden -> outputs`.
    hidden: (Var, Var),
    out: (Var, Var),
    /// Linear skip `statics -> outputs`.
    skip: (Var, Var),
}

impl SeqNet {
    /// A network with weights drawn from `rng` (same seed, same network).
    pub fn new(shape: SeqShape, rng: &mut StdRng) -> Result<Self> {
        let net = Self::build(shape, |_, fan_in, fan_out| dense_layer(fan_in, fan_out, rng))?;
        // The skip starts at zero: the head learns first, the skip adds a linear correction.
        net.skip.0.set(&net.skip.0.as_tensor().zeros_like()?)?;
        Ok(net)
    }

    /// Lays out the layers of `shape`, each made by `layer(name, fan_in, fan_out)`: the one
    /// place that knows which layers a network has, for a fresh one and a decoded one alike.
    fn build(shape: SeqShape, mut layer: impl FnMut(&str, usize, usize) -> Result<(Var, Var)>) -> Result<Self> {
        shape.validate()?;
        let mut conv = Vec::with_capacity(shape.levels());
        let mut channels_in = 1;
        for i in 0..shape.levels() {
            conv.push(layer(&format!("conv{i}"), 2 * channels_in, shape.channels)?);
            channels_in = shape.channels;
        }
        let hidden = layer("hidden", shape.channels + shape.statics, shape.hidden)?;
        let out = layer("out", shape.hidden, shape.outputs)?;
        let skip = layer("skip", shape.statics.max(1), shape.outputs)?;
        Ok(Self {
            shape,
            conv,
            hidden,
            out,
            skip,
        })
    }

    /// The network's shape.
    pub fn shape(&self) -> &SeqShape {
        &self.shape
    }

    /// Every parameter by name, in [`Network::vars`] order.
    pub(crate) fn named(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (i, (w, b)) in self.conv.iter().enumerate() {
            out.push((format!("conv{i}.weight"), w));
            out.push((format!("conv{i}.bias"), b));
        }
        for (name, (w, b)) in [("hidden", &self.hidden), ("out", &self.out), ("skip", &self.skip)] {
            out.push((format!("{name}.weight"), w));
            out.push((format!("{name}.bias"), b));
        }
        out
    }

    /// Encodes weights and shape (plus `metadata`) as one safetensors blob.
    pub fn to_safetensors(&self, mut metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let shape = serde_json::to_string(&self.shape)
            .map_err(|e| ForecastError::Weights(format!("cannot encode the shape: {e}")))?;
        metadata.insert("ark.seq_shape".into(), shape);
        encode_safetensors(&self.named(), metadata)
    }

    /// Decodes a blob written by [`SeqNet::to_safetensors`]; every tensor's shape is checked.
    pub fn from_safetensors(bytes: &[u8]) -> Result<(Self, HashMap<String, String>)> {
        let bad = |m: String| ForecastError::Weights(m);
        let metadata = safetensors_metadata(bytes)?;
        let shape: SeqShape = serde_json::from_str(
            metadata
                .get("ark.seq_shape")
                .ok_or_else(|| bad("missing ark.seq_shape metadata".into()))?,
        )
        .map_err(|e| bad(format!("bad ark.seq_shape metadata: {e}")))?;
        shape.validate().map_err(|e| bad(e.to_string()))?;
        let tensors =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("cannot parse tensors: {e}")))?;
        let net = Self::load(shape, |name, dims| load_var(&tensors, name, dims))?;
        Ok((net, metadata))
    }

    /// Builds a network of `shape` from tensors fetched by name (`get` checks each shape).
    pub(crate) fn load(shape: SeqShape, mut get: impl FnMut(&str, &[usize]) -> Result<Var>) -> Result<Self> {
        Self::build(shape, |name, fan_in, fan_out| {
            Ok((
                get(&format!("{name}.weight"), &[fan_out, fan_in])?,
                get(&format!("{name}.bias"), &[fan_out])?,
            ))
        })
    }
}

impl Network for SeqNet {
    fn vars(&self) -> Vec<Var> {
        self.named().into_iter().map(|(_, v)| v.clone()).collect()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        if cols != self.shape.inputs() {
            return Err(ForecastError::InvalidArgument(format!(
                "sequence network expects {} inputs, got {cols}",
                self.shape.inputs()
            )));
        }
        let mut h = x.narrow(1, 0, self.shape.context)?.contiguous()?;
        let (mut steps, mut channels) = (self.shape.context, 1);
        for layer in &self.conv {
            // Pair neighbouring steps: [rows, steps, ch] -> [rows * steps/2, 2 ch].
            steps /= 2;
            let pairs = h.reshape((rows * steps, 2 * channels))?;
            h = dense(&pairs, layer)?.relu()?;
            channels = self.shape.channels;
        }
        let encoded = h.reshape((rows, channels))?;
        let statics = if self.shape.statics == 0 {
            Tensor::zeros((rows, 1), x.dtype(), x.device())?
        } else {
            x.narrow(1, self.shape.context, self.shape.statics)?.contiguous()?
        };
        let joined = if self.shape.statics == 0 {
            encoded
        } else {
            Tensor::cat(&[&encoded, &statics], 1)?
        };
        let head = dense(&dense(&joined, &self.hidden)?.relu()?, &self.out)?;
        Ok((head + dense(&statics, &self.skip)?)?)
    }

    fn outputs(&self) -> usize {
        self.shape.outputs
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::nn::{predict_network, train_network, Loss, Matrix, TrainParams};

    fn shape() -> SeqShape {
        SeqShape {
            context: 8,
            channels: 4,
            statics: 2,
            hidden: 8,
            outputs: 3,
        }
    }

    #[test]
    fn every_parameter_receives_a_gradient() {
        let net = SeqNet::new(shape(), &mut StdRng::seed_from_u64(1)).expect("net");
        // The skip starts at zero; give it a value so its input gradient is not the only test.
        let mut rng = StdRng::seed_from_u64(2);
        let x: Vec<f32> = (0..16 * 10).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let x = Tensor::from_vec(x, (16, 10), &candle_core::Device::Cpu).expect("x");
        let y: Vec<f32> = (0..16).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let y = Tensor::from_vec(y, (16, 1), &candle_core::Device::Cpu).expect("y");
        let pred = net.forward(&x).expect("forward");
        let loss = crate::nn::loss_of(&pred, &y, None, Loss::Pinball([0.1, 0.5, 0.9])).expect("loss");
        let grads = loss.backward().expect("backward");
        for (name, var) in net.named() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm = g
                .abs()
                .and_then(|a| a.sum_all())
                .and_then(|s| s.to_scalar::<f32>())
                .expect("norm");
            assert!(norm > 0.0, "{name} has a zero gradient");
        }
    }

    #[test]
    fn learns_a_sequence_rule_and_round_trips() {
        // Target: the mean of the sequence's last two values (the network must read the
        // sequence, the statics are noise). Loss must fall well below the target's spread.
        let mut rng = StdRng::seed_from_u64(3);
        let (mut x, mut y) = (Matrix::new(10), Matrix::new(1));
        for _ in 0..2000 {
            let row: Vec<f32> = (0..10).map(|_| rng.gen_range(-1.0..1.0)).collect();
            y.push_row(&[(row[6] + row[7]) / 2.0]);
            x.push_row(&row);
        }
        let net = SeqNet::new(SeqShape { outputs: 1, ..shape() }, &mut StdRng::seed_from_u64(4)).expect("net");
        let params = TrainParams {
            epochs: 60,
            batch_size: 64,
            learning_rate: 5e-3,
            weight_decay: 0.0,
            loss: Loss::L1,
            seed: 5,
            patience: 5,
        };
        let out = train_network(&net, &x, &y, None, &params, None).expect("train");
        // Predicting 0 gives about 0.33 (mean |(a+b)/2| for uniform a, b).
        assert!(out.train_loss < 0.08, "loss {}", out.train_loss);
        let bytes = net.to_safetensors(HashMap::new()).expect("encode");
        let (back, _) = SeqNet::from_safetensors(&bytes).expect("decode");
        let a = predict_network(&net, &x).expect("predict");
        let b = predict_network(&back, &x).expect("predict");
        assert_eq!(a, b);
        let mut corrupt = bytes.clone();
        let n = corrupt.len();
        corrupt.truncate(n - 8);
        assert!(SeqNet::from_safetensors(&corrupt).is_err());
    }
}
