//! An input tensor turned into the rows `Engine::infer_and_adapt` takes, and the
//! engine's predictions turned into the output tensors a client asked for.
//!
//! Everything here is checked before the engine is called, so a refused request
//! changes nothing. Each refusal names what was wrong and what was expected.

use serde_json::Value;

use super::types::{RequestInput, RequestOutput, ResponseOutput, TensorData};
use crate::engine::Prediction;

/// The model's one input.
pub const INPUT: &str = "input";
/// The class distribution of each row.
pub const PROBABILITIES: &str = "probabilities";
/// The answered class of each row.
pub const LABEL: &str = "label";

/// Parameters that ask for something this server does not do.
const UNSUPPORTED_PARAMETERS: [&str; 3] =
    ["shared_memory_region", "classification", "binary_data_size"];

/// The precision a client sent its numbers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    Fp32,
    Fp16,
}

impl Precision {
    fn parse(datatype: &str) -> Option<Self> {
        match datatype {
            "FP32" => Some(Self::Fp32),
            "FP16" => Some(Self::Fp16),
            _ => None,
        }
    }

    /// `value` rounded to this precision; `None` if it does not fit.
    fn round(self, value: f64) -> Option<f32> {
        let rounded = match self {
            Self::Fp32 => value as f32,
            Self::Fp16 => half::f16::from_f64(value).to_f32(),
        };
        rounded.is_finite().then_some(rounded)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "FP32",
            Self::Fp16 => "FP16",
        }
    }
}

/// The request's inputs as rows of `input_dim` features.
pub fn rows(inputs: &[RequestInput], input_dim: usize) -> Result<Vec<Vec<f32>>, String> {
    let input = match inputs {
        [one] => one,
        [] => return Err(format!("inputs is empty; send one tensor, \"{INPUT}\"")),
        _ => {
            return Err(format!(
                "{} input tensors sent; the model has one input, \"{INPUT}\"",
                inputs.len()
            ));
        }
    };
    if input.name != INPUT {
        return Err(format!(
            "unknown input \"{}\"; the model has one input, \"{INPUT}\"",
            input.name
        ));
    }
    refuse_unsupported(input.parameters.as_ref(), "input")?;
    let precision = Precision::parse(&input.datatype).ok_or_else(|| {
        format!(
            "input \"{INPUT}\" has datatype {}; this model takes FP32 or FP16",
            input.datatype
        )
    })?;
    let shape = shape(&input.shape, input_dim)?;
    let data = input.data.as_ref().ok_or_else(|| {
        format!("input \"{INPUT}\" has no \"data\"; send the values as JSON numbers")
    })?;
    let mut values = Vec::with_capacity(shape[0].saturating_mul(input_dim).min(1 << 20));
    match data {
        Value::Array(items) if items.first().is_some_and(Value::is_array) => {
            nested(
                data,
                &shape,
                &mut String::from("data"),
                precision,
                &mut values,
            )?;
        }
        Value::Array(items) => {
            let want = shape[0] * input_dim;
            if items.len() != want {
                return Err(format!(
                    "data has {} values, but shape {:?} holds {want}",
                    items.len(),
                    input.shape
                ));
            }
            for (i, item) in items.iter().enumerate() {
                values.push(number(item, &format!("data[{i}]"), precision)?);
            }
        }
        other => {
            return Err(format!(
                "data must be an array of numbers, not {}",
                kind(other)
            ));
        }
    }
    Ok(values.chunks(input_dim).map(<[f32]>::to_vec).collect())
}

/// `[N, input_dim]` checked, as sizes.
fn shape(shape: &[i64], input_dim: usize) -> Result<[usize; 2], String> {
    let wrong = || {
        format!(
            "input \"{INPUT}\" has shape {shape:?}; the model takes [N, {input_dim}] (N rows of {input_dim} features)"
        )
    };
    let [rows, cols] = shape else {
        return Err(wrong());
    };
    let rows = usize::try_from(*rows).map_err(|_| wrong())?;
    if usize::try_from(*cols).ok() != Some(input_dim) {
        return Err(wrong());
    }
    if rows.checked_mul(input_dim).is_none() {
        return Err(wrong());
    }
    Ok([rows, input_dim])
}

/// Nested data: each level an array as long as its dimension, numbers at the bottom.
fn nested(
    value: &Value,
    shape: &[usize],
    path: &mut String,
    precision: Precision,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    let Some((&len, rest)) = shape.split_first() else {
        out.push(number(value, path, precision)?);
        return Ok(());
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{path} is {}, but the shape wants an array of {len} there",
            kind(value)
        ));
    };
    if items.len() != len {
        return Err(format!(
            "{path} has {} elements, but the shape wants {len}",
            items.len()
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let before = path.len();
        path.push_str(&format!("[{i}]"));
        nested(item, rest, path, precision, out)?;
        path.truncate(before);
    }
    Ok(())
}

/// One JSON number at `path`, in the declared precision.
fn number(value: &Value, path: &str, precision: Precision) -> Result<f32, String> {
    let Some(v) = value.as_f64() else {
        return Err(format!("{path} is {}, not a number", kind(value)));
    };
    precision.round(v).ok_or_else(|| {
        format!(
            "{path} = {value} does not fit in {} (not a finite number)",
            precision.name()
        )
    })
}

/// What a JSON value is, for an error message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn refuse_unsupported(
    parameters: Option<&serde_json::Map<String, Value>>,
    what: &str,
) -> Result<(), String> {
    for key in UNSUPPORTED_PARAMETERS {
        if parameters.is_some_and(|p| p.contains_key(key)) {
            return Err(format!(
                "{what} parameter \"{key}\" is not supported: tensors travel as JSON, without shared memory or classification"
            ));
        }
    }
    Ok(())
}

/// An output the model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Probabilities,
    Label,
}

/// The outputs asked for, in order; all of them when none are named.
pub fn outputs(requested: Option<&[RequestOutput]>) -> Result<Vec<Output>, String> {
    let requested = match requested {
        None | Some([]) => return Ok(vec![Output::Probabilities, Output::Label]),
        Some(r) => r,
    };
    let mut chosen = Vec::with_capacity(requested.len());
    for output in requested {
        let which = match output.name.as_str() {
            PROBABILITIES => Output::Probabilities,
            LABEL => Output::Label,
            other => {
                return Err(format!(
                    "unknown output \"{other}\"; the model's outputs are \"{PROBABILITIES}\" and \"{LABEL}\""
                ));
            }
        };
        refuse_unsupported(output.parameters.as_ref(), "output")?;
        if chosen.contains(&which) {
            return Err(format!("output \"{}\" is requested twice", output.name));
        }
        chosen.push(which);
    }
    Ok(chosen)
}

/// The output tensors for `predictions`.
pub fn tensors(
    wanted: &[Output],
    predictions: &[Prediction],
    num_classes: usize,
) -> Vec<ResponseOutput> {
    let rows = predictions.len();
    wanted
        .iter()
        .map(|output| match output {
            Output::Probabilities => ResponseOutput {
                name: PROBABILITIES,
                datatype: "FP32",
                shape: vec![rows, num_classes],
                data: TensorData::Fp32(
                    predictions
                        .iter()
                        .flat_map(|p| p.probabilities.iter().copied())
                        .collect(),
                ),
            },
            Output::Label => ResponseOutput {
                name: LABEL,
                datatype: "INT64",
                shape: vec![rows],
                data: TensorData::Int64(predictions.iter().map(|p| i64::from(p.label)).collect()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(body: Value) -> RequestInput {
        serde_json::from_value(body).unwrap()
    }

    fn decode(body: Value) -> Result<Vec<Vec<f32>>, String> {
        rows(&[input(body)], 2)
    }

    #[test]
    fn flat_and_nested_data_give_the_same_rows() {
        let flat =
            json!({"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4.5]});
        let nested = json!({"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]});
        let want = vec![vec![1.0, 2.0], vec![3.0, 4.5]];
        assert_eq!(decode(flat).unwrap(), want);
        assert_eq!(decode(nested).unwrap(), want);
    }

    #[test]
    fn fp16_values_are_rounded_to_half_precision() {
        let body =
            json!({"name": "input", "shape": [1, 2], "datatype": "FP16", "data": [0.1, 1.0001]});
        let rows = decode(body).unwrap();
        assert_eq!(rows[0][0], half::f16::from_f32(0.1).to_f32());
        assert_ne!(rows[0][0], 0.1_f32, "0.1 is not exact in FP16");
        assert_eq!(rows[0][1], 1.0, "1.0001 rounds to 1 in FP16");
    }

    #[test]
    fn values_beyond_the_precision_are_refused() {
        let fp16 =
            json!({"name": "input", "shape": [1, 2], "datatype": "FP16", "data": [1, 70000]});
        let err = decode(fp16).unwrap_err();
        assert!(
            err.contains("data[1] = 70000 does not fit in FP16"),
            "{err}"
        );
        let fp32 =
            json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [[1e39, 1]]});
        let err = decode(fp32).unwrap_err();
        assert!(
            err.contains("data[0][0] = 1e+39 does not fit in FP32"),
            "{err}"
        );
    }

    #[test]
    fn each_malformed_tensor_names_its_fault() {
        let cases = [
            (
                json!({"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}),
                "unknown input \"x\"",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "INT8", "data": [1, 2]}),
                "datatype INT8",
            ),
            (
                json!({"name": "input", "shape": [2], "datatype": "FP32", "data": [1, 2]}),
                "shape [2]",
            ),
            (
                json!({"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}),
                "takes [N, 2]",
            ),
            (
                json!({"name": "input", "shape": [-1, 2], "datatype": "FP32", "data": [1, 2]}),
                "shape [-1, 2]",
            ),
            (
                json!({"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}),
                "data has 3 values, but shape [2, 2] holds 4",
            ),
            (
                json!({"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}),
                "data[1] has 1 elements",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [[1, [2]]]}),
                "data[0][1] is an array, not a number",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, "NaN"]}),
                "data[1] is a string, not a number",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, null]}),
                "data[1] is null",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": 1}),
                "must be an array",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "FP32"}),
                "has no \"data\"",
            ),
            (
                json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}, "data": [1, 2]}),
                "shared_memory_region",
            ),
        ];
        for (body, needle) in cases {
            let err = decode(body.clone()).unwrap_err();
            assert!(err.contains(needle), "{body}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn one_input_tensor_exactly() {
        let one = json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]});
        assert!(rows(&[], 2).unwrap_err().contains("inputs is empty"));
        let two = [input(one.clone()), input(one)];
        assert!(rows(&two, 2).unwrap_err().contains("2 input tensors"));
    }

    #[test]
    fn outputs_default_to_all_and_follow_the_request() {
        let ask = |names: &[&str]| -> Vec<RequestOutput> {
            names
                .iter()
                .map(|n| serde_json::from_value(json!({"name": n})).unwrap())
                .collect()
        };
        assert_eq!(
            outputs(None).unwrap(),
            [Output::Probabilities, Output::Label]
        );
        assert_eq!(
            outputs(Some(&[])).unwrap(),
            [Output::Probabilities, Output::Label]
        );
        assert_eq!(outputs(Some(&ask(&["label"]))).unwrap(), [Output::Label]);
        assert!(
            outputs(Some(&ask(&["logits"])))
                .unwrap_err()
                .contains("unknown output \"logits\"")
        );
        assert!(
            outputs(Some(&ask(&["label", "label"])))
                .unwrap_err()
                .contains("twice")
        );
        let classify: RequestOutput =
            serde_json::from_value(json!({"name": "label", "parameters": {"classification": 2}}))
                .unwrap();
        assert!(
            outputs(Some(&[classify]))
                .unwrap_err()
                .contains("classification")
        );
    }
}
