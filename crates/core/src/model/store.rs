//! Model directories on disk: `config.json` + `model.safetensors`.
//!
//! Loading parses the file with the `safetensors` crate directly rather than through
//! candle, for two reasons: every check (missing tensor, shape, dtype, NaN) can name
//! the tensor and the config it disagrees with, and the conversion to f32 handles any
//! float dtype a PyTorch or numpy export produces. Parsing never trusts the file: a
//! truncated or random file is a [`ModelError::CorruptWeights`], not a panic.
//!
//! Saving is atomic per file (temp file, fsync, rename, fsync of the directory), so a
//! reader — the server hot-reloading weights the update worker just wrote — sees the
//! old file or the new one, never half of one. The standardiser (`norm.*`) is always
//! written as F32, even in an F16 file: raw feature means and variances reach 1e12,
//! far beyond F16's 65504.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::dtype::{decode, dtype_of, encode};
use super::params::{LinearParams, NormParams, Params};
use super::{Mlp, ModelConfig, ModelError};

/// The config file inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The `__metadata__` key holding the weights' version (a decimal u64).
pub const VERSION_KEY: &str = "version";
/// Metadata marking weights that were never trained (written by `init-model`): the
/// engine then votes with its neighbours from the first experience instead of letting
/// a random model answer alone (`engine.fresh_model`).
pub const FRESH_KEY: &str = "fresh";

/// The float format weights are written in. Loading accepts more (BF16, F64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// Half precision: the shipped form, half the bytes of F32, probabilities within
    /// ~1e-3 of the F32 model's.
    F16,
    /// Single precision: exact, for checkpoints that will be trained further.
    F32,
}

impl Mlp {
    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path) -> Result<Mlp, ModelError> {
        Self::load_files(&dir.join(CONFIG_FILE), &dir.join(WEIGHTS_FILE))
    }

    /// Loads a model from an explicit config file and weights file, checking every
    /// tensor against the config. F16, BF16, F32 and F64 tensors are converted to f32.
    pub fn load_files(config: &Path, weights: &Path) -> Result<Mlp, ModelError> {
        let cfg = ModelConfig::from_file(config)?;
        let bytes = fs::read(weights).map_err(|e| ModelError::io(weights, "read", e))?;
        Self::from_safetensors(cfg, &bytes, config, weights)
    }

    /// A model from the bytes of a safetensors file under `cfg`, checked as
    /// [`Mlp::load_files`] checks a file; `config` and `weights` name where they came
    /// from in errors (a cluster replica's bytes come from Redis, not a file).
    pub fn from_safetensors(
        cfg: ModelConfig,
        bytes: &[u8],
        config: &Path,
        weights: &Path,
    ) -> Result<Mlp, ModelError> {
        let corrupt = |source| ModelError::CorruptWeights {
            path: weights.to_path_buf(),
            source,
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
        let file = SafeTensors::deserialize(bytes).map_err(corrupt)?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let version = parse_version(metadata.get(VERSION_KEY).map(String::as_str), weights)?;
        let reader = Reader {
            file: &file,
            path: weights,
            config,
        };

        let dims = cfg.dims();
        let mut expected = Vec::new();
        let mut layers = Vec::with_capacity(dims.len() - 1);
        for (i, io) in dims.windows(2).enumerate() {
            let (w, b) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
            layers.push(LinearParams {
                weight: reader.read(&w, &[io[1], io[0]])?,
                bias: reader.read(&b, &[io[1]])?,
            });
            expected.extend([w, b]);
        }
        let names = file.names();
        let norm = if names.contains(&"norm.mean") || names.contains(&"norm.var") {
            let mean = reader.read("norm.mean", &[cfg.input_dim])?;
            let var = reader.read("norm.var", &[cfg.input_dim])?;
            if let Some(index) = var.iter().position(|&v| v < 0.0) {
                return Err(ModelError::InvalidValue {
                    path: weights.to_path_buf(),
                    tensor: "norm.var".into(),
                    index,
                    reason: format!("variance {} is negative", var[index]),
                });
            }
            expected.extend(["norm.mean".to_string(), "norm.var".to_string()]);
            Some(NormParams { mean, var })
        } else {
            None
        };
        for name in names {
            if expected.iter().any(|e| e == name) {
                continue;
            }
            if name.starts_with("layers.") || name.starts_with("norm.") {
                return Err(ModelError::UnexpectedTensor {
                    path: weights.to_path_buf(),
                    config: config.to_path_buf(),
                    tensor: name.to_string(),
                });
            }
            tracing::warn!(file = %weights.display(), tensor = name, "ignoring a tensor the MLP does not use");
        }
        Mlp::from_params(cfg, Params { layers, norm }, version, metadata)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors`, each atomically, creating
    /// `dir` if needed. Weights go first: a reader that sees the new config also finds
    /// the new weights.
    ///
    /// `metadata` becomes the safetensors `__metadata__`. Without a `"version"` key the
    /// model's own [`version`](Mlp::version) is written, so a plain re-save keeps it.
    pub fn save(
        &self,
        dir: &Path,
        dtype: SaveDtype,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), ModelError> {
        fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, "create directory", e))?;
        self.save_weights(&dir.join(WEIGHTS_FILE), dtype, metadata)?;
        let mut json = self.config().to_json();
        json.push('\n');
        write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
    }

    /// Writes only the weights file, atomically; see [`Mlp::save`] for `metadata`.
    pub fn save_weights(
        &self,
        path: &Path,
        dtype: SaveDtype,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), ModelError> {
        write_atomic(path, &self.to_safetensors(path, dtype, metadata)?)
    }

    /// The bytes [`Mlp::save_weights`] writes; `path` names them in errors.
    pub fn to_safetensors(
        &self,
        path: &Path,
        dtype: SaveDtype,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, ModelError> {
        let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
        meta.entry(VERSION_KEY.into())
            .or_insert_with(|| self.version().to_string());
        parse_version(meta.get(VERSION_KEY).map(String::as_str), path)?;

        let params = self.params()?;
        let dims = self.config().dims();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, (layer, io)) in params.layers.iter().zip(dims.windows(2)).enumerate() {
            let name = format!("layers.{i}.weight");
            let bytes = encode(&name, &layer.weight, dtype)?;
            tensors.push((name, dtype_of(dtype), vec![io[1], io[0]], bytes));
            let name = format!("layers.{i}.bias");
            let bytes = encode(&name, &layer.bias, dtype)?;
            tensors.push((name, dtype_of(dtype), vec![io[1]], bytes));
        }
        if let Some(norm) = &params.norm {
            for (name, values) in [("norm.mean", &norm.mean), ("norm.var", &norm.var)] {
                let bytes = encode(name, values, SaveDtype::F32)?;
                tensors.push((name.into(), Dtype::F32, vec![values.len()], bytes));
            }
        }
        let serialize_err = |source| ModelError::Serialize {
            path: path.to_path_buf(),
            source,
        };
        let views = tensors
            .iter()
            .map(|(name, dt, shape, bytes)| {
                Ok((name.as_str(), TensorView::new(*dt, shape.clone(), bytes)?))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(serialize_err)?;
        let bytes = safetensors::serialize(views, Some(meta)).map_err(serialize_err)?;
        Ok(sorted_header(bytes))
    }
}

/// The same file with the JSON header's keys in sorted order. safetensors writes the
/// metadata from a `HashMap`, so with two or more keys its order (and the file's
/// bytes) would change from run to run; the same model must give the same file.
/// Reordering keeps the header's length, so the padding and the offsets still hold.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| u64::from_le_bytes(b) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + len) else {
        return bytes;
    };
    // serde_json's map is ordered by key unless its preserve_order feature is on.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    let Ok(mut sorted) = serde_json::to_vec(&value) else {
        return bytes;
    };
    if sorted.len() > len {
        return bytes;
    }
    sorted.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&sorted);
    bytes
}

/// The parsed file plus the names errors need.
struct Reader<'a> {
    file: &'a SafeTensors<'a>,
    path: &'a Path,
    config: &'a Path,
}

impl Reader<'_> {
    /// Reads tensor `name`, checks its shape and values, converts it to f32.
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let path = || self.path.to_path_buf();
        let view = self
            .file
            .tensor(name)
            .map_err(|_| ModelError::MissingTensor {
                path: path(),
                config: self.config.to_path_buf(),
                tensor: name.into(),
            })?;
        if view.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                path: path(),
                config: self.config.to_path_buf(),
                tensor: name.into(),
                expected: shape.into(),
                found: view.shape().into(),
            });
        }
        let values =
            decode(view.dtype(), view.data()).ok_or_else(|| ModelError::UnsupportedDtype {
                path: path(),
                tensor: name.into(),
                dtype: format!("{:?}", view.dtype()),
            })?;
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidValue {
                path: path(),
                tensor: name.into(),
                index,
                reason: format!("{} is not finite (in f32)", values[index]),
            });
        }
        Ok(values)
    }
}

/// The `"version"` metadata as a u64; 0 when absent.
fn parse_version(value: Option<&str>, path: &Path) -> Result<u64, ModelError> {
    match value {
        None => Ok(0),
        Some(v) => v.trim().parse().map_err(|_| ModelError::InvalidMetadata {
            path: path.to_path_buf(),
            key: VERSION_KEY.into(),
            value: v.to_string(),
            reason: "expected a non-negative integer",
        }),
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new contents only:
/// write a sibling temp file, fsync it, rename it over `path`, fsync the directory so
/// the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| ModelError::io(&tmp, "create", e))?;
        file.write_all(bytes)
            .map_err(|e| ModelError::io(&tmp, "write", e))?;
        file.sync_all()
            .map_err(|e| ModelError::io(&tmp, "fsync", e))?;
        fs::rename(&tmp, path).map_err(|e| ModelError::io(path, "rename into place", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Directory fsync makes the rename durable; a filesystem that refuses it (some
    // network mounts) still has the new contents visible, so this is best effort.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;
    use crate::model::mlp::tests::tiny;

    #[test]
    fn f32_round_trip_is_exact_and_keeps_version_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let norm = NormParams {
            mean: vec![3.0e8, -2.0],
            var: vec![4.0e12, 0.5],
        };
        let m = tiny(Activation::Tanh, Some(norm));
        let meta = BTreeMap::from([("trainer".to_string(), "unit".to_string())]);
        m.save(dir.path(), SaveDtype::F32, &meta).unwrap();
        let back = Mlp::load(dir.path()).unwrap();
        assert_eq!(back.params().unwrap(), m.params().unwrap());
        assert_eq!(
            back.version(),
            7,
            "the model's version is kept when metadata lacks one"
        );
        assert_eq!(back.metadata()["trainer"], "unit");
        assert_eq!(back.config(), m.config());
    }

    #[test]
    fn f16_files_are_smaller_and_keep_the_standardiser_in_f32() {
        let dir = tempfile::tempdir().unwrap();
        let norm = NormParams {
            mean: vec![3.0e8, -2.0],
            var: vec![4.0e12, 0.5],
        };
        let m = tiny(Activation::Relu, Some(norm.clone()));
        let meta = BTreeMap::from([(VERSION_KEY.to_string(), "12".to_string())]);
        m.save(dir.path(), SaveDtype::F16, &meta).unwrap();
        let bytes = fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("layers.0.weight").unwrap().dtype(), Dtype::F16);
        assert_eq!(st.tensor("norm.var").unwrap().dtype(), Dtype::F32);
        let back = Mlp::load(dir.path()).unwrap();
        assert_eq!(back.version(), 12);
        assert_eq!(back.params().unwrap().norm.unwrap(), norm);
        let x = [3.0e8 + 2.0e6, -1.0];
        let (a, b) = (m.forward(&x, 1).unwrap(), back.forward(&x, 1).unwrap());
        for (p, q) in a.probs.iter().zip(&b.probs) {
            assert!((p - q).abs() < 2e-3, "{p} vs {q}");
        }
    }

    #[test]
    fn saving_a_weight_beyond_f16_range_is_refused() {
        let mut p = tiny(Activation::Relu, None).params().unwrap();
        p.layers[1].weight[4] = 1.0e5;
        let m = Mlp::from_params(
            ModelConfig::mlp(2, &[3], 2, Activation::Relu),
            p,
            0,
            BTreeMap::new(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = m
            .save(dir.path(), SaveDtype::F16, &BTreeMap::new())
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::NotRepresentable { tensor, index: 4, .. } if tensor == "layers.1.weight"),
            "{err}"
        );
        assert!(
            !dir.path().join(WEIGHTS_FILE).exists(),
            "nothing half-written is left"
        );
    }

    #[test]
    fn a_non_numeric_version_is_refused_on_save() {
        let dir = tempfile::tempdir().unwrap();
        let meta = BTreeMap::from([(VERSION_KEY.to_string(), "v2".to_string())]);
        let err = tiny(Activation::Relu, None)
            .save(dir.path(), SaveDtype::F32, &meta)
            .unwrap_err();
        assert!(matches!(err, ModelError::InvalidMetadata { .. }), "{err}");
    }

    #[test]
    fn write_atomic_replaces_contents_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
