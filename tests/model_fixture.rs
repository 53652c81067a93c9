//! The model loader against files it did not write itself.
//!
//! `tests/fixtures/numpy_mlp/` comes from `scripts/make_numpy_fixture.py`: an MLP
//! exported by numpy in PyTorch's layout, with the probabilities numpy computes for
//! it. Agreement with that independent implementation is the evidence that our
//! layout, standardiser, activation and softmax are the ones users expect. The other
//! tests write deliberately odd or broken files (BF16, F32, no standardiser, truncated,
//! random bytes, wrong shapes…) and check each gives the documented result, never a
//! panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adaptserve_core::model::{Mlp, ModelError};
use half::{bf16, f16};
use proptest::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpy_mlp")
}

#[derive(serde::Deserialize)]
struct Expected {
    version: u64,
    inputs: Vec<Vec<f32>>,
    probs: Vec<Vec<f64>>,
    embeddings: Vec<Vec<f64>>,
    probs_unrounded: Vec<Vec<f64>>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's tensors as f32: name → (shape, values).
fn fixture_tensors() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F16, "the fixture is an F16 file");
            let values = view
                .data()
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            (name.to_string(), (view.shape().to_vec(), values))
        })
        .collect()
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

fn encode(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, dtype: Dtype) -> Vec<Raw> {
    tensors
        .iter()
        .map(|(name, (shape, values))| {
            let bytes: Vec<u8> = match dtype {
                Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::BF16 => values
                    .iter()
                    .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                Dtype::F16 => values
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
                other => panic!("test helper does not encode {other:?}"),
            };
            (name.clone(), dtype, shape.clone(), bytes)
        })
        .collect()
}

/// Writes `config.json` (the fixture's, edited by `edit_config`) and
/// `model.safetensors` (from `tensors`) into a fresh directory.
fn write_model(
    tensors: &[Raw],
    metadata: Option<(&str, &str)>,
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap())
            .unwrap();
    edit_config(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = metadata.map(|(k, v)| [(k.to_string(), v.to_string())].into_iter().collect());
    let bytes = safetensors::serialize(views, meta).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    dir
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() <= tol,
            "{what}: {g} vs {w} (tolerance {tol})"
        );
    }
}

#[test]
fn the_numpy_export_loads_and_matches_numpy() {
    let model = Mlp::load(&fixture_dir()).unwrap();
    let exp = expected();
    assert_eq!(model.version(), exp.version);
    assert_eq!(
        (model.input_dim(), model.num_classes(), model.embed_dim()),
        (5, 3, 6)
    );
    assert_eq!(
        model.config().labels.as_deref(),
        Some(&["cat".to_string(), "dog".into(), "bird".into()][..])
    );
    let flat: Vec<f32> = exp.inputs.concat();
    let out = model.forward(&flat, exp.inputs.len()).unwrap();
    for i in 0..exp.inputs.len() {
        // Same F16 weights on both sides: only f32-vs-f64 arithmetic differs.
        assert_close(out.probs_row(i), &exp.probs[i], 1e-4, "probs");
        assert_close(out.embedding_row(i), &exp.embeddings[i], 1e-4, "embeddings");
        // Against the unrounded weights: the F16 storage error.
        assert_close(
            out.probs_row(i),
            &exp.probs_unrounded[i],
            2e-3,
            "probs vs unrounded weights",
        );
    }
}

#[test]
fn bf16_and_f32_files_load_to_the_same_network() {
    let exp = expected();
    let flat: Vec<f32> = exp.inputs.concat();
    for (dtype, tol) in [(Dtype::F32, 1e-4), (Dtype::BF16, 2e-2)] {
        let dir = write_model(&encode(&fixture_tensors(), dtype), None, |_| {});
        let model = Mlp::load(dir.path()).unwrap();
        assert_eq!(model.version(), 0, "no metadata means version 0");
        let out = model.forward(&flat, exp.inputs.len()).unwrap();
        for i in 0..exp.inputs.len() {
            assert_close(
                out.probs_row(i),
                &exp.probs[i],
                tol,
                &format!("{dtype:?} probs"),
            );
        }
    }
}

#[test]
fn without_norm_tensors_the_inputs_are_used_as_they_are() {
    let mut tensors = fixture_tensors();
    let (_, mean) = tensors.remove("norm.mean").unwrap();
    let (_, var) = tensors.remove("norm.var").unwrap();
    let plain = write_model(&encode(&tensors, Dtype::F32), None, |_| {});
    let plain = Mlp::load(plain.path()).unwrap();
    let normed = Mlp::load(&fixture_dir()).unwrap();
    assert!(!plain.has_norm() && normed.has_norm());
    let raw: Vec<f32> = expected().inputs.concat();
    let standardised: Vec<f32> = raw
        .iter()
        .enumerate()
        .map(|(i, x)| (x - mean[i % 5]) / (var[i % 5] + 1e-8).sqrt())
        .collect();
    let (a, b) = (
        plain.forward(&standardised, 20).unwrap(),
        normed.forward(&raw, 20).unwrap(),
    );
    let b64: Vec<f64> = b.probs.iter().map(|&p| f64::from(p)).collect();
    assert_close(&a.probs, &b64, 1e-5, "identity standardiser");
}

#[test]
fn missing_files_and_bad_configs_are_distinct_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Mlp::load(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path } if path.ends_with("config.json")),
        "{err}"
    );

    std::fs::copy(
        fixture_dir().join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let err = Mlp::load(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path } if path.ends_with("model.safetensors")),
        "{err}"
    );

    let tensors = encode(&fixture_tensors(), Dtype::F16);
    type Edit = fn(&mut serde_json::Value);
    type Check = fn(&ModelError) -> bool;
    let cases: [(Edit, Check); 4] = [
        (
            |c| c["architecture"] = "transformer".into(),
            |e| matches!(e, ModelError::UnknownArchitecture { .. }),
        ),
        (
            |c| c["activation"] = "swish".into(),
            |e| matches!(e, ModelError::UnknownActivation { .. }),
        ),
        (
            |c| c["hidden"][0] = 0.into(),
            |e| matches!(e, ModelError::ZeroDimension { field, .. } if field == "hidden[0]"),
        ),
        (
            |c| c["labels"] = serde_json::json!(["only-one"]),
            |e| matches!(e, ModelError::InvalidLabels { .. }),
        ),
    ];
    for (edit, check) in cases {
        let dir = write_model(&tensors, None, edit);
        let err = Mlp::load(dir.path()).unwrap_err();
        assert!(check(&err), "unexpected error: {err}");
    }
    let dir = write_model(&tensors, None, |_| {});
    std::fs::write(
        dir.path().join("config.json"),
        "{\"architecture\": \"mlp\",",
    )
    .unwrap();
    assert!(matches!(
        Mlp::load(dir.path()),
        Err(ModelError::ConfigParse { .. })
    ));
}

#[test]
fn tensors_that_disagree_with_the_config_name_the_tensor() {
    let base = fixture_tensors();

    let mut t = base.clone();
    t.remove("layers.1.bias");
    let err = Mlp::load(write_model(&encode(&t, Dtype::F16), None, |_| {}).path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "layers.1.bias"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("tensor \"layers.1.bias\" is missing"),
        "{err}"
    );

    // The config says hidden [8, 16]; the file still has [8, 6].
    let dir = write_model(&encode(&base, Dtype::F16), None, |c| {
        c["hidden"][1] = 16.into()
    });
    let err = Mlp::load(dir.path()).unwrap_err();
    let weights = dir.path().join("model.safetensors");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: tensor \"layers.1.weight\" has shape [6, 8], config.json expects [16, 8]",
            weights.display()
        )
    );
    assert!(matches!(err, ModelError::ShapeMismatch { .. }));

    let mut t = base.clone();
    t.insert("layers.3.weight".into(), (vec![2, 3], vec![0.0; 6]));
    let err = Mlp::load(write_model(&encode(&t, Dtype::F16), None, |_| {}).path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { tensor, .. } if tensor == "layers.3.weight"),
        "{err}"
    );

    let mut t = base.clone();
    t.remove("norm.var");
    let err = Mlp::load(write_model(&encode(&t, Dtype::F16), None, |_| {}).path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "norm.var"),
        "{err}"
    );

    // A file with harmless extra tensors (say, an exporter's bookkeeping) still loads.
    let mut t = base.clone();
    t.insert("training.step".into(), (vec![1], vec![1000.0]));
    assert!(Mlp::load(write_model(&encode(&t, Dtype::F32), None, |_| {}).path()).is_ok());
}

#[test]
fn bad_values_dtypes_and_metadata_are_refused() {
    let base = fixture_tensors();

    let mut raw = encode(&base, Dtype::F16);
    let i = raw.iter().position(|(n, ..)| n == "layers.0.bias").unwrap();
    raw[i] = ("layers.0.bias".into(), Dtype::I32, vec![8], vec![0; 32]);
    let err = Mlp::load(write_model(&raw, None, |_| {}).path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedDtype { tensor, dtype, .. } if tensor == "layers.0.bias" && dtype == "I32"),
        "{err}"
    );

    let mut t = base.clone();
    t.get_mut("layers.2.weight").unwrap().1[4] = f32::NAN;
    let err = Mlp::load(write_model(&encode(&t, Dtype::F32), None, |_| {}).path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidValue { tensor, index: 4, .. } if tensor == "layers.2.weight"),
        "{err}"
    );

    let mut t = base.clone();
    t.get_mut("norm.var").unwrap().1[1] = -1.0;
    let err = Mlp::load(write_model(&encode(&t, Dtype::F32), None, |_| {}).path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidValue { tensor, index: 1, .. } if tensor == "norm.var"),
        "{err}"
    );

    let dir = write_model(
        &encode(&base, Dtype::F16),
        Some(("version", "seven")),
        |_| {},
    );
    let err = Mlp::load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidMetadata { value, .. } if value == "seven"),
        "{err}"
    );
}

/// Errors a damaged weights file may legitimately produce; anything else (or a panic)
/// means a damaged byte reached code that trusts the file.
fn is_file_error(e: &ModelError) -> bool {
    matches!(
        e,
        ModelError::CorruptWeights { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::UnexpectedTensor { .. }
            | ModelError::ShapeMismatch { .. }
            | ModelError::UnsupportedDtype { .. }
            | ModelError::InvalidValue { .. }
            | ModelError::InvalidMetadata { .. }
    )
}

fn load_bytes(bytes: &[u8]) -> Result<Mlp, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    Mlp::load(dir.path())
}

#[test]
fn every_truncation_of_the_file_is_a_corrupt_weights_error() {
    let good = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    for len in 0..good.len() {
        let err = load_bytes(&good[..len]).unwrap_err();
        assert!(
            matches!(err, ModelError::CorruptWeights { .. }),
            "truncated to {len}: {err}"
        );
    }
    let mut longer = good.clone();
    longer.extend_from_slice(b"trailing");
    assert!(matches!(
        load_bytes(&longer),
        Err(ModelError::CorruptWeights { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_are_a_corrupt_weights_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let result = load_bytes(&bytes);
        prop_assert!(matches!(result, Err(ModelError::CorruptWeights { .. })), "{:?}", result.err());
    }

    #[test]
    fn a_header_length_prefix_with_garbage_after_it_is_refused(len in 0u64..4096, tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend(tail);
        let result = load_bytes(&bytes);
        prop_assert!(matches!(result, Err(ModelError::CorruptWeights { .. })), "{:?}", result.err());
    }

    #[test]
    fn a_damaged_byte_is_either_harmless_or_a_file_error(pos in 0usize..858, value in any::<u8>()) {
        let mut bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
        let pos = pos % bytes.len();
        bytes[pos] = value;
        match load_bytes(&bytes) {
            Ok(model) => prop_assert_eq!(model.input_dim(), 5),
            Err(e) => prop_assert!(is_file_error(&e), "unexpected error kind: {}", e),
        }
    }
}
