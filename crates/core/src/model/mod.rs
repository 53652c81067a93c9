//! Models: the classifier the server runs, on disk and in memory.
//!
//! A model is a directory with `config.json` (the network's shape) and
//! `model.safetensors` (tensors in PyTorch's `Linear` layout, `layers.{i}.weight`
//! `[out, in]` and `layers.{i}.bias`, plus optional `norm.mean`/`norm.var`). Keeping
//! to PyTorch's convention means a model exported from PyTorch or numpy with the
//! `safetensors` library loads as it is; keeping the shape in a separate config means
//! every tensor can be checked, so a mismatched file fails at startup with the tensor's
//! name rather than serving garbage.
//!
//! - [`config`]: `config.json`, parsed and validated.
//! - [`error`]: [`ModelError`], one variant per way a file can be wrong.
//! - [`mlp`]: the in-memory model and its forward pass (f32 on the CPU).
//! - `params`: plain f32 parameters and the input standardiser shared by serving and
//!   training.
//! - [`store`]: loading any float dtype, atomic saving in F16 or F32.
//! - `dtype`: bytes ↔ f32 for each safetensors float dtype.
//! - [`init`]: seeded fresh weights (`adaptserve init-model`).
//! - [`kl`]: how far a new version moved from the serving one, on a probe set.
//! - [`quantize`](mod@quantize): F32 → F16 with a measured output difference (`adaptserve quantize`).
//! - [`trainer`]: mini-batch AdamW over a model's parameters.

pub mod config;
mod dtype;
pub mod error;
pub mod init;
pub mod kl;
pub mod mlp;
pub mod params;
pub mod quantize;
pub mod store;
pub mod trainer;

pub use config::{Activation, Architecture, ModelConfig};
pub use error::ModelError;
pub use init::init_model;
pub use mlp::{Forward, KeySpace, Mlp};
pub use quantize::{QuantizeReport, quantize};
pub use store::SaveDtype;
pub use trainer::{Trainer, TrainerSettings};

/// Index and value of the largest probability.
#[inline]
pub fn argmax(p: &[f32]) -> (usize, f32) {
    p.iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
            if v > best.1 { (i, v) } else { best }
        })
}
