//! `adaptserve quantize`: F32 (or any float) weights → the F16 shipping form.
//!
//! Halving the bytes is only worth it if the answers barely move, so the report does
//! not just give sizes: it runs the original and the re-loaded F16 model on a seeded
//! probe set and gives the largest probability difference. The probes are drawn where
//! real inputs live — standard normal in the *standardised* space, mapped back to raw
//! features through `norm.mean`/`norm.var` — so a model with a standardiser is probed
//! on realistic inputs rather than on raw N(0,1) values that mean nothing to it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::store::{CONFIG_FILE, WEIGHTS_FILE};
use super::{Mlp, ModelError, SaveDtype};

/// Rows in the probe set: enough to find the worst case of a small model, fast enough
/// to run on every quantize.
pub const PROBE_ROWS: usize = 256;
/// The probe set's seed, fixed so two reports on the same files agree.
const PROBE_SEED: u64 = 0x0051_7A7E;

/// What [`quantize`] did, for the CLI to print.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// The weights file read.
    pub input: PathBuf,
    /// The F16 weights file written.
    pub output: PathBuf,
    /// Size of the input file.
    pub input_bytes: u64,
    /// Size of the output file.
    pub output_bytes: u64,
    /// `output_bytes / input_bytes`.
    pub ratio: f64,
    /// Rows in the probe set.
    pub probe_rows: usize,
    /// Largest `|p_in - p_out|` over every probe row and class.
    pub max_abs_prob_diff: f32,
}

impl fmt::Display for QuantizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quantized {} → {} (F16)",
            self.input.display(),
            self.output.display()
        )?;
        writeln!(
            f,
            "  size: {} → {} bytes ({:.1}% of the input)",
            self.input_bytes,
            self.output_bytes,
            self.ratio * 100.0
        )?;
        write!(
            f,
            "  max |Δ probability| over {} seeded probe rows: {:.3e}",
            self.probe_rows, self.max_abs_prob_diff
        )
    }
}

/// Converts the weights file `input` (F32, BF16, F16 or F64; its directory must hold
/// `config.json`) to F16 at `output`, copying `config.json` next to `output` if that
/// directory has none. `output` may also be a directory, which receives
/// `model.safetensors`. Metadata (including the version) is carried over.
pub fn quantize(input: &Path, output: &Path) -> Result<QuantizeReport, ModelError> {
    // Name the input itself when it is missing, not the config.json beside it.
    if !input.is_file() {
        return Err(ModelError::MissingFile {
            path: input.to_path_buf(),
        });
    }
    let config = input.parent().unwrap_or(Path::new(".")).join(CONFIG_FILE);
    let original = Mlp::load_files(&config, input)?;
    let output = if output.is_dir() {
        output.join(WEIGHTS_FILE)
    } else {
        output.to_path_buf()
    };
    let out_dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&out_dir).map_err(|e| ModelError::io(&out_dir, "create directory", e))?;
    let input_bytes = file_len(input)?;
    original.save_weights(&output, SaveDtype::F16, original.metadata())?;
    let out_config = out_dir.join(CONFIG_FILE);
    if !out_config.exists() {
        fs::copy(&config, &out_config)
            .map_err(|e| ModelError::io(&out_config, "copy config.json to", e))?;
    }
    let quantized = Mlp::load_files(&out_config, &output)?;
    let max_abs_prob_diff = max_prob_diff(&original, &quantized, PROBE_ROWS)?;
    let output_bytes = file_len(&output)?;
    Ok(QuantizeReport {
        input: input.to_path_buf(),
        output,
        input_bytes,
        output_bytes,
        ratio: output_bytes as f64 / input_bytes.max(1) as f64,
        probe_rows: PROBE_ROWS,
        max_abs_prob_diff,
    })
}

/// Largest absolute difference between the two models' probabilities on `rows`
/// seeded probe rows drawn for `a` (see the module docs).
pub(crate) fn max_prob_diff(a: &Mlp, b: &Mlp, rows: usize) -> Result<f32, ModelError> {
    let probes = probe_rows(a, rows)?;
    let (pa, pb) = (a.forward(&probes, rows)?, b.forward(&probes, rows)?);
    Ok(pa
        .probs
        .iter()
        .zip(&pb.probs)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max))
}

/// `rows` raw inputs `mean + z * sqrt(var)` with `z ~ N(0, 1)` (plain `z` without a
/// standardiser).
fn probe_rows(model: &Mlp, rows: usize) -> Result<Vec<f32>, ModelError> {
    let norm = model.params()?.norm;
    let d = model.input_dim();
    let mut rng = ChaCha8Rng::seed_from_u64(PROBE_SEED);
    let mut out = Vec::with_capacity(rows * d);
    for _ in 0..rows {
        for j in 0..d {
            let z: f64 = rng.sample(StandardNormal);
            out.push(match &norm {
                Some(n) => (f64::from(n.mean[j]) + z * f64::from(n.var[j]).sqrt()) as f32,
                None => z as f32,
            });
        }
    }
    Ok(out)
}

fn file_len(path: &Path) -> Result<u64, ModelError> {
    fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| ModelError::io(path, "stat", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::init_params;
    use crate::model::params::NormParams;
    use crate::model::{Activation, ModelConfig};
    use std::collections::BTreeMap;

    fn f32_model(dir: &Path) -> Mlp {
        let config = ModelConfig::mlp(16, &[64, 32], 4, Activation::Relu);
        let mut params = init_params(&config, 3);
        params.norm = Some(NormParams {
            mean: (0..16).map(|j| j as f32 * 1000.0).collect(),
            var: (0..16).map(|j| 10f32.powi(j % 7)).collect(),
        });
        let m = Mlp::from_params(config, params, 0, BTreeMap::new()).unwrap();
        let meta = BTreeMap::from([("version".to_string(), "5".to_string())]);
        m.save(dir, SaveDtype::F32, &meta).unwrap();
        Mlp::load(dir).unwrap()
    }

    #[test]
    fn halves_the_file_keeps_answers_and_copies_the_config() {
        let tmp = tempfile::tempdir().unwrap();
        let original = f32_model(&tmp.path().join("f32"));
        let out = tmp.path().join("f16").join("weights.safetensors");
        let report = quantize(&tmp.path().join("f32").join(WEIGHTS_FILE), &out).unwrap();
        assert_eq!(report.output, out);
        assert!(
            (0.45..0.56).contains(&report.ratio),
            "ratio {}",
            report.ratio
        );
        assert!(report.max_abs_prob_diff > 0.0, "F16 rounding must show up");
        assert!(
            report.max_abs_prob_diff < 2e-3,
            "{}",
            report.max_abs_prob_diff
        );
        let q = Mlp::load_files(&tmp.path().join("f16").join(CONFIG_FILE), &out).unwrap();
        assert_eq!((q.version(), q.config()), (5, original.config()));
        let text = report.to_string();
        assert!(
            text.contains("(F16)") && text.contains("256 seeded probe rows"),
            "{text}"
        );
    }

    #[test]
    fn an_output_directory_receives_model_safetensors_and_requantizing_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        f32_model(tmp.path());
        let out_dir = tmp.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        let first = quantize(&tmp.path().join(WEIGHTS_FILE), &out_dir).unwrap();
        assert_eq!(first.output, out_dir.join(WEIGHTS_FILE));
        let again = quantize(&first.output, &tmp.path().join("again.safetensors")).unwrap();
        assert_eq!(again.max_abs_prob_diff, 0.0);
        assert_eq!(again.input_bytes, again.output_bytes);
    }

    #[test]
    fn a_missing_input_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        f32_model(tmp.path());
        let err =
            quantize(&tmp.path().join("nope.safetensors"), &tmp.path().join("o")).unwrap_err();
        assert!(
            matches!(&err, ModelError::MissingFile { path } if path.ends_with("nope.safetensors")),
            "{err}"
        );
        // Also where no config.json stands beside it: the input is what is missing.
        let empty = tempfile::tempdir().unwrap();
        let err = quantize(
            &empty.path().join("gone.safetensors"),
            &empty.path().join("o"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ModelError::MissingFile { path } if path.ends_with("gone.safetensors")),
            "{err}"
        );
    }
}
