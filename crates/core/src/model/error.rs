//! The one error type of the model subsystem.
//!
//! A model is loaded at startup from files a user may have produced with PyTorch,
//! numpy or a text editor, so every failure must say *which file* and *which tensor*
//! without a backtrace: an operator reads the message and fixes the file. Each kind of
//! failure is its own variant so callers (and tests) can tell them apart, and each
//! variant carries its context as named fields.

use std::path::PathBuf;

/// Everything that can go wrong loading, running, saving or training a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file the model needs does not exist.
    #[error("{}: no such file", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },

    /// Reading or writing a file failed for a reason other than its absence.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done ("read", "write", "rename", …).
        op: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// `config.json` is not valid JSON or lacks a required field.
    #[error("{}: malformed model config: {source}", path.display())]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// serde_json's description, with line and column.
        source: serde_json::Error,
    },

    /// `config.json` names an architecture this build cannot run.
    #[error("{}: unknown architecture {found:?} (supported: \"mlp\")", path.display())]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// The architecture it names.
        found: String,
    },

    /// `config.json` names an activation this build does not implement.
    #[error(
        "{}: unknown activation {found:?} (supported: \"relu\", \"tanh\", \"gelu\", \"sigmoid\")",
        path.display()
    )]
    UnknownActivation {
        /// The config file.
        path: PathBuf,
        /// The activation it names.
        found: String,
    },

    /// A dimension in the config is zero, which leaves a layer with no units.
    #[error("{}: {field} must be at least 1, found 0", path.display())]
    ZeroDimension {
        /// The config file (or the caller's name for the source of the dimensions).
        path: PathBuf,
        /// Which dimension: `input_dim`, `num_classes` or `hidden[i]`.
        field: String,
    },

    /// The optional `labels` list does not name each class exactly once.
    #[error("{}: invalid labels: {reason}", path.display())]
    InvalidLabels {
        /// The config file.
        path: PathBuf,
        /// What is wrong with them.
        reason: String,
    },

    /// The weights file is not a well-formed safetensors file (truncated, garbage,
    /// inconsistent header).
    #[error("{}: not a valid safetensors file: {source}", path.display())]
    CorruptWeights {
        /// The weights file.
        path: PathBuf,
        /// The safetensors parser's description.
        source: safetensors::SafeTensorError,
    },

    /// A tensor the config requires is absent from the weights file.
    #[error("{}: tensor {tensor:?} is missing (required by {})", path.display(), config.display())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The config file that requires the tensor.
        config: PathBuf,
        /// The tensor's name.
        tensor: String,
    },

    /// The weights file holds a `layers.*` or `norm.*` tensor the config has no place
    /// for, which means the config and the weights describe different networks.
    #[error("{}: tensor {tensor:?} is not part of the network described by {}", path.display(), config.display())]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The config file.
        config: PathBuf,
        /// The tensor's name.
        tensor: String,
    },

    /// A tensor's shape disagrees with the config.
    #[error(
        "{}: tensor {tensor:?} has shape {found:?}, {} expects {expected:?}",
        path.display(),
        config.file_name().map_or_else(|| config.display().to_string(), |n| n.to_string_lossy().into_owned())
    )]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The config file.
        config: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the config implies.
        expected: Box<[usize]>,
        /// The shape stored in the file.
        found: Box<[usize]>,
    },

    /// A tensor is stored in a dtype that is not a float format we convert
    /// (F16, BF16, F32, F64).
    #[error("{}: tensor {tensor:?} has dtype {dtype}; supported: F16, BF16, F32, F64", path.display())]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype found, as safetensors spells it.
        dtype: String,
    },

    /// A tensor holds a value the network cannot use (NaN, infinity, a negative
    /// variance).
    #[error("{}: tensor {tensor:?}, element {index}: {reason}", path.display())]
    InvalidValue {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The flat index of the first offending element.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The safetensors `__metadata__` has a value we cannot interpret.
    #[error("{}: metadata {key:?} = {value:?}: {reason}", path.display())]
    InvalidMetadata {
        /// The weights file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// Its value.
        value: String,
        /// What was expected instead.
        reason: &'static str,
    },

    /// A weight does not fit the dtype it is being saved as (e.g. above 65504 in F16).
    #[error("tensor {tensor:?}, element {index}: {value} is not representable in {dtype}")]
    NotRepresentable {
        /// The tensor's name.
        tensor: String,
        /// The flat index of the offending element.
        index: usize,
        /// The value.
        value: f32,
        /// The target dtype.
        dtype: &'static str,
    },

    /// A state directory belongs to another model, or its records are unreadable.
    #[error("state {path} cannot be used: {reason}")]
    StateMismatch {
        /// The file that disagrees.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Sample weights of a training step are missing, negative, non-finite or all zero.
    #[error(
        "sample weights must be {rows} finite values >= 0 with a positive sum (got {found} values)"
    )]
    BadSampleWeights {
        /// Rows in the batch.
        rows: usize,
        /// Weights given.
        found: usize,
    },
    /// A standardiser update has the wrong length or a non-finite or negative value.
    #[error("a standardiser needs {input_dim} finite means and {input_dim} finite variances >= 0")]
    BadStandardiser {
        /// The model's input dimension.
        input_dim: usize,
    },
    /// The input slice of a forward pass or training step is not `rows * input_dim` long.
    #[error("expected {rows} rows × {input_dim} features = {expected} values, got {found}")]
    InputLength {
        /// Rows requested.
        rows: usize,
        /// The model's input dimension.
        input_dim: usize,
        /// `rows * input_dim`.
        expected: usize,
        /// The slice's length.
        found: usize,
    },

    /// A training label is not a class of the model.
    #[error("label {label} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// The label.
        label: u32,
        /// The model's class count.
        num_classes: usize,
    },

    /// A candle tensor operation failed; with validated shapes this points to a bug or
    /// to memory exhaustion.
    #[error("tensor operation failed during {context}: {source}")]
    Candle {
        /// What was being computed.
        context: &'static str,
        /// candle's error.
        source: candle_core::Error,
    },

    /// Writing a safetensors file failed while serialising.
    #[error("cannot serialise weights for {}: {source}", path.display())]
    Serialize {
        /// The file being written.
        path: PathBuf,
        /// The safetensors serialiser's description.
        source: safetensors::SafeTensorError,
    },
}

impl ModelError {
    /// Wraps an I/O error, turning "not found" into [`ModelError::MissingFile`].
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::MissingFile { path }
        } else {
            Self::Io { path, op, source }
        }
    }

    /// A closure that wraps a candle error with what was being computed.
    pub(crate) fn candle(context: &'static str) -> impl Fn(candle_core::Error) -> Self {
        move |source| Self::Candle { context, source }
    }
}
