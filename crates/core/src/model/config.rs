//! `config.json`: the shape of the network, kept apart from the weights.
//!
//! The config is the contract the weights are checked against: it says how many
//! layers there are and how wide each is, so a weights file from another network is
//! rejected with the tensor that disagrees instead of producing garbage. Parsing goes
//! through a string-typed mirror of the file so that an unknown architecture or
//! activation gets its own error variant rather than a generic serde message.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;

/// The network family. Only the multi-layer perceptron exists today; the field is
/// there so a future family is a new variant rather than a silent misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Fully connected layers with one activation between them.
    Mlp,
}

/// The non-linearity applied after every hidden layer (never after the logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// The exact (erf) GELU, PyTorch's `nn.GELU()` default, so exported models match.
    Gelu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "relu" => Some(Self::Relu),
            "tanh" => Some(Self::Tanh),
            "gelu" => Some(Self::Gelu),
            "sigmoid" => Some(Self::Sigmoid),
            _ => None,
        }
    }

    /// The name used in `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Tanh => "tanh",
            Self::Gelu => "gelu",
            Self::Sigmoid => "sigmoid",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The contents of a model's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Always [`Architecture::Mlp`] today.
    pub architecture: Architecture,
    /// Raw features per input row.
    pub input_dim: usize,
    /// Widths of the hidden layers, input side first; empty means a linear model.
    pub hidden: Vec<usize>,
    /// Output classes (width of the logits layer).
    pub num_classes: usize,
    /// The non-linearity after each hidden layer.
    pub activation: Activation,
    /// Optional class names, one per class, so clients can send and receive names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// The file as written, with the enums still strings so that unknown values can be
/// reported as their own errors. Unknown extra fields are ignored, as exporters like
/// to add their own.
#[derive(Deserialize)]
struct RawConfig {
    architecture: String,
    input_dim: usize,
    hidden: Vec<usize>,
    num_classes: usize,
    activation: String,
    #[serde(default)]
    labels: Option<Vec<String>>,
}

impl ModelConfig {
    /// An MLP config without label names.
    pub fn mlp(
        input_dim: usize,
        hidden: &[usize],
        num_classes: usize,
        activation: Activation,
    ) -> Self {
        Self {
            architecture: Architecture::Mlp,
            input_dim,
            hidden: hidden.to_vec(),
            num_classes,
            activation,
            labels: None,
        }
    }

    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, "read", e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config JSON; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|source| ModelError::ConfigParse {
                path: path.to_path_buf(),
                source,
            })?;
        if raw.architecture != "mlp" {
            return Err(ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                found: raw.architecture,
            });
        }
        let activation =
            Activation::parse(&raw.activation).ok_or_else(|| ModelError::UnknownActivation {
                path: path.to_path_buf(),
                found: raw.activation.clone(),
            })?;
        let config = Self {
            architecture: Architecture::Mlp,
            input_dim: raw.input_dim,
            hidden: raw.hidden,
            num_classes: raw.num_classes,
            activation,
            labels: raw.labels,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks that every dimension is non-zero and that `labels`, if present, names
    /// each class exactly once. `path` only names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let zero = |field: String| ModelError::ZeroDimension {
            path: path.to_path_buf(),
            field,
        };
        if self.input_dim == 0 {
            return Err(zero("input_dim".into()));
        }
        if let Some(i) = self.hidden.iter().position(|&w| w == 0) {
            return Err(zero(format!("hidden[{i}]")));
        }
        if self.num_classes == 0 {
            return Err(zero("num_classes".into()));
        }
        if let Some(labels) = &self.labels {
            let invalid = |reason: String| ModelError::InvalidLabels {
                path: path.to_path_buf(),
                reason,
            };
            if labels.len() != self.num_classes {
                return Err(invalid(format!(
                    "{} names for {} classes",
                    labels.len(),
                    self.num_classes
                )));
            }
            let mut seen = HashSet::new();
            if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
                return Err(invalid(format!("{dup:?} names two classes")));
            }
        }
        Ok(())
    }

    /// Layer widths from input to logits: `[input_dim, hidden.., num_classes]`.
    pub fn dims(&self) -> Vec<usize> {
        let mut dims = Vec::with_capacity(self.hidden.len() + 2);
        dims.push(self.input_dim);
        dims.extend_from_slice(&self.hidden);
        dims.push(self.num_classes);
        dims
    }

    /// Width of the embedding: the last hidden layer, or `input_dim` without one.
    pub fn embed_dim(&self) -> usize {
        self.hidden.last().copied().unwrap_or(self.input_dim)
    }

    /// The config as pretty JSON, the form written next to the weights.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ModelConfig always serialises: this is a bug")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json(text, Path::new("dir/config.json"))
    }

    const GOOD: &str = r#"{"architecture":"mlp","input_dim":16,"hidden":[64,32],
        "num_classes":4,"activation":"gelu","labels":["a","b","c","d"],"torch_version":"2.3"}"#;

    #[test]
    fn parses_a_full_config_and_ignores_extra_fields() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.dims(), vec![16, 64, 32, 4]);
        assert_eq!(c.activation, Activation::Gelu);
        assert_eq!(c.embed_dim(), 32);
        assert_eq!(c.labels.as_deref().unwrap()[3], "d");
    }

    #[test]
    fn round_trips_through_json() {
        let c = parse(GOOD).unwrap();
        assert_eq!(parse(&c.to_json()).unwrap(), c);
        let plain = ModelConfig::mlp(3, &[], 2, Activation::Tanh);
        assert!(!plain.to_json().contains("labels"));
        assert_eq!(plain.embed_dim(), 3);
    }

    #[test]
    fn unknown_architecture_and_activation_are_distinct_errors() {
        let arch = parse(&GOOD.replace("\"mlp\"", "\"cnn\"")).unwrap_err();
        assert!(matches!(&arch, ModelError::UnknownArchitecture { found, .. } if found == "cnn"));
        let act = parse(&GOOD.replace("gelu", "swish")).unwrap_err();
        assert!(matches!(&act, ModelError::UnknownActivation { found, .. } if found == "swish"));
        assert!(
            act.to_string()
                .starts_with("dir/config.json: unknown activation \"swish\"")
        );
    }

    #[test]
    fn malformed_json_and_missing_fields_are_parse_errors() {
        assert!(matches!(
            parse("{not json"),
            Err(ModelError::ConfigParse { .. })
        ));
        let missing = parse(r#"{"architecture":"mlp","input_dim":3}"#).unwrap_err();
        assert!(matches!(missing, ModelError::ConfigParse { .. }));
        assert!(missing.to_string().contains("hidden"), "{missing}");
    }

    #[test]
    fn zero_dimensions_name_the_field() {
        for (from, to, field) in [
            ("\"input_dim\":16", "\"input_dim\":0", "input_dim"),
            ("[64,32]", "[64,0]", "hidden[1]"),
            ("\"num_classes\":4", "\"num_classes\":0", "num_classes"),
        ] {
            let err = parse(
                &GOOD
                    .replace(from, to)
                    .replace(r#","labels":["a","b","c","d"]"#, ""),
            )
            .unwrap_err();
            assert!(
                matches!(&err, ModelError::ZeroDimension { field: f, .. } if f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn labels_must_name_each_class_once() {
        let short = parse(&GOOD.replace(r#","d"]"#, "]")).unwrap_err();
        assert!(matches!(short, ModelError::InvalidLabels { .. }), "{short}");
        let dup = parse(&GOOD.replace(r#""d"]"#, r#""a"]"#)).unwrap_err();
        assert!(dup.to_string().contains("\"a\" names two classes"), "{dup}");
    }

    #[test]
    fn a_missing_file_is_its_own_error() {
        let err = ModelConfig::from_file(Path::new("/nonexistent/config.json")).unwrap_err();
        assert!(matches!(err, ModelError::MissingFile { .. }));
        assert_eq!(err.to_string(), "/nonexistent/config.json: no such file");
    }
}
