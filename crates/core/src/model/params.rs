//! Model parameters as plain f32 vectors, and the input standardiser.
//!
//! Files, the initialiser and the optimiser exchange parameters in PyTorch's layout
//! (`weight` `[out, in]`); only the serving [`Mlp`](super::Mlp) converts them to its
//! own transposed tensors. The standardiser lives here because serving and training
//! must apply exactly the same `(x-mean)/sqrt(var+eps)`.

/// Added to the variance before the square root, as in `(x-mean)/sqrt(var+1e-8)`, so a
/// constant feature maps to 0 instead of dividing by zero.
pub(crate) const NORM_EPS: f64 = 1e-8;

/// Plain f32 parameters in PyTorch's layout, the form files and optimisers exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// One entry per `layers.{i}`, input side first.
    pub layers: Vec<LinearParams>,
    /// `norm.mean` / `norm.var`, if the model standardises its inputs.
    pub norm: Option<NormParams>,
}

/// One `Linear` layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearParams {
    /// `[out, in]`, row-major.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// The input standardiser.
#[derive(Debug, Clone, PartialEq)]
pub struct NormParams {
    /// Per-feature mean, `[input_dim]`.
    pub mean: Vec<f32>,
    /// Per-feature variance, `[input_dim]`, non-negative.
    pub var: Vec<f32>,
}

/// The standardiser prepared for use: the stored parameters plus `1/sqrt(var+eps)`.
#[derive(Debug, Clone)]
pub(crate) struct Standardiser {
    pub params: NormParams,
    /// Computed in f64 so tiny variances keep their precision.
    inv_std: Vec<f32>,
}

impl Standardiser {
    pub fn new(params: NormParams) -> Self {
        let inv_std = params
            .var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + NORM_EPS).sqrt()) as f32)
            .collect();
        Self { params, inv_std }
    }

    /// `(x-mean)/sqrt(var+eps)` for every row of `inputs` (whose length the caller
    /// has checked is a multiple of `input_dim`), into a new buffer.
    pub fn apply(&self, inputs: &[f32]) -> Vec<f32> {
        let d = self.inv_std.len();
        let mut out = Vec::with_capacity(inputs.len());
        for row in inputs.chunks_exact(d) {
            for ((x, m), s) in row.iter().zip(&self.params.mean).zip(&self.inv_std) {
                out.push((x - m) * s);
            }
        }
        out
    }
}

/// Copies `inputs`, standardised if there is a standardiser.
pub(crate) fn standardise(norm: Option<&Standardiser>, inputs: &[f32]) -> Vec<f32> {
    norm.map_or_else(|| inputs.to_vec(), |n| n.apply(inputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardises_each_feature_and_maps_constant_features_to_zero() {
        let s = Standardiser::new(NormParams {
            mean: vec![1.0e8, 0.0, 5.0],
            var: vec![1.0e12, 1.0e-4, 0.0],
        });
        let out = standardise(Some(&s), &[1.0e8 + 2.0e6, 1.0e-2, 5.0, 1.0e8, 0.0, 5.0]);
        let want = [2.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        for (got, want) in out.iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        assert_eq!(standardise(None, &[3.0, -4.0]), vec![3.0, -4.0]);
    }
}
