//! The forward pass of a small dense model in plain Rust, with no tensor per step.
//!
//! A request's forward pass through the default model is about 3 200
//! multiply-adds. Through candle it made some 45 heap allocations (a tensor, its
//! storage and its id per op, and an environment lookup per matmul), more time than
//! the arithmetic. Here the weights are laid out once, at load, as `[in, out]` rows,
//! so each layer is `out = bias + Σ_i x[i] · W[i, ..]`: the inner loop runs over
//! contiguous outputs and the compiler vectorises it. The forward pass allocates
//! only its outputs and one scratch buffer.
//!
//! It serves models up to [`MAX_MULTIPLY_ADDS`] per row with an activation it has
//! (ReLU, tanh, sigmoid); a larger one, or the erf GELU, stays on candle, whose gemm
//! wins once a matrix no longer fits a core's cache. Its results match candle's to
//! float rounding (the order of the sums differs): tested in `tests.rs`.

use super::Activation;

/// Largest model (multiply-adds per row) run here rather than through candle.
pub const MAX_MULTIPLY_ADDS: usize = 1 << 16;

/// One layer: `weight_t[i * fan_out + j]` is input `i`'s weight to output `j`.
struct Layer {
    weight_t: Vec<f32>,
    bias: Vec<f32>,
    fan_in: usize,
    fan_out: usize,
}

/// A model laid out for [`Dense::forward`].
pub(super) struct Dense {
    layers: Vec<Layer>,
    activation: Activation,
    /// The widest layer's output: the scratch buffers' size.
    widest: usize,
}

impl Dense {
    /// Lays out `layers` (each `[out, in]` row-major weights and its bias, as
    /// stored), or `None` when the model is not one this path serves.
    pub(super) fn new(
        layers: &[(&[f32], &[f32])],
        dims: &[usize],
        activation: Activation,
    ) -> Option<Self> {
        if !matches!(
            activation,
            Activation::Relu | Activation::Tanh | Activation::Sigmoid
        ) {
            return None;
        }
        let work: usize = dims.windows(2).map(|io| io[0] * io[1]).sum();
        if work > MAX_MULTIPLY_ADDS {
            return None;
        }
        let layers = layers
            .iter()
            .zip(dims.windows(2))
            .map(|(&(weight, bias), io)| {
                let (fan_in, fan_out) = (io[0], io[1]);
                let mut weight_t = vec![0.0; fan_in * fan_out];
                for (o, row) in weight.chunks_exact(fan_in).enumerate() {
                    for (i, &w) in row.iter().enumerate() {
                        weight_t[i * fan_out + o] = w;
                    }
                }
                Layer {
                    weight_t,
                    bias: bias.to_vec(),
                    fan_in,
                    fan_out,
                }
            })
            .collect();
        Some(Self {
            layers,
            activation,
            widest: dims.iter().copied().max().unwrap_or(0),
        })
    }

    /// Runs the standardised rows `x` (`rows * fan_in`): appends each row's softmax
    /// probabilities to `probs` and, if `hidden` is given, its last hidden layer's
    /// activations to it.
    pub(super) fn forward(
        &self,
        x: &[f32],
        rows: usize,
        probs: &mut Vec<f32>,
        mut hidden: Option<&mut Vec<f32>>,
    ) {
        let (last, inner) = self
            .layers
            .split_last()
            .expect("an MLP has at least its logits layer: this is a bug");
        let fan_in = self.layers[0].fan_in;
        let mut scratch = vec![0.0f32; 2 * self.widest];
        let (a, b) = scratch.split_at_mut(self.widest);
        for row in x.chunks_exact(fan_in).take(rows) {
            let (mut cur, mut next) = (&mut *a, &mut *b);
            cur[..fan_in].copy_from_slice(row);
            let mut width = fan_in;
            for layer in inner {
                affine(layer, &cur[..width], &mut next[..layer.fan_out]);
                activate(self.activation, &mut next[..layer.fan_out]);
                std::mem::swap(&mut cur, &mut next);
                width = layer.fan_out;
            }
            if let Some(hidden) = hidden.as_deref_mut() {
                hidden.extend_from_slice(&cur[..width]);
            }
            let logits = &mut next[..last.fan_out];
            affine(last, &cur[..width], logits);
            softmax(logits);
            probs.extend_from_slice(logits);
        }
    }
}

/// `out = layer.bias + x · layer.weight_t`.
#[inline]
fn affine(layer: &Layer, x: &[f32], out: &mut [f32]) {
    out.copy_from_slice(&layer.bias);
    for (&xi, weights) in x.iter().zip(layer.weight_t.chunks_exact(layer.fan_out)) {
        if xi == 0.0 {
            // After a ReLU about half the inputs are zero: their row adds nothing.
            continue;
        }
        for (o, &w) in out.iter_mut().zip(weights) {
            *o += xi * w;
        }
    }
}

fn activate(activation: Activation, z: &mut [f32]) {
    match activation {
        Activation::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => z.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Sigmoid => z.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Gelu => unreachable!("Dense::new refuses GELU models: this is a bug"),
    }
}

/// In place, shifted by the maximum so no exponential overflows.
fn softmax(logits: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    logits.iter_mut().for_each(|v| *v /= sum);
}
