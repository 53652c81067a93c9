//! Conversions between f32 and the byte layouts of safetensors float dtypes.
//!
//! Every model is computed in f32, whatever it was stored as; these are the only
//! places bytes become numbers and back. Decoding is total (any byte string of the
//! right length is some float; NaNs are caught by the loader), and encoding refuses a
//! value the target dtype would silently turn into infinity.

use half::{bf16, f16};
use safetensors::Dtype;

use super::ModelError;
use super::store::SaveDtype;

impl SaveDtype {
    fn name(self) -> &'static str {
        match self {
            Self::F16 => "F16",
            Self::F32 => "F32",
        }
    }
}

/// Little-endian tensor bytes → f32; `None` for a dtype that is not a float format.
pub(crate) fn decode(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks_exact(8)")) as f32)
            .collect(),
        _ => return None,
    })
}

/// f32 values → little-endian bytes in `dtype`, refusing values the dtype would turn
/// into infinity.
pub(crate) fn encode(name: &str, values: &[f32], dtype: SaveDtype) -> Result<Vec<u8>, ModelError> {
    match dtype {
        SaveDtype::F32 => Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        SaveDtype::F16 => {
            let mut out = Vec::with_capacity(values.len() * 2);
            for (index, &value) in values.iter().enumerate() {
                let h = f16::from_f32(value);
                if h.is_infinite() && value.is_finite() {
                    return Err(ModelError::NotRepresentable {
                        tensor: name.into(),
                        index,
                        value,
                        dtype: dtype.name(),
                    });
                }
                out.extend(h.to_le_bytes());
            }
            Ok(out)
        }
    }
}

pub(crate) fn dtype_of(dtype: SaveDtype) -> Dtype {
    match dtype {
        SaveDtype::F16 => Dtype::F16,
        SaveDtype::F32 => Dtype::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_handles_every_float_dtype_and_rejects_integers() {
        let v = [1.5f32, -2.25];
        let f16b: Vec<u8> = v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        let f64b: Vec<u8> = v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect();
        assert_eq!(decode(Dtype::F16, &f16b).unwrap(), v);
        assert_eq!(decode(Dtype::BF16, &bf16b).unwrap(), v);
        assert_eq!(decode(Dtype::F64, &f64b).unwrap(), v);
        assert!(decode(Dtype::I32, &[0; 8]).is_none());
    }

    #[test]
    fn f16_encoding_refuses_overflow_but_keeps_infinities_that_were_there() {
        let err = encode("w", &[1.0, 70000.0], SaveDtype::F16).unwrap_err();
        assert!(
            matches!(err, ModelError::NotRepresentable { index: 1, .. }),
            "{err}"
        );
        let ok = encode("w", &[65504.0, -1.5], SaveDtype::F16).unwrap();
        assert_eq!(decode(Dtype::F16, &ok).unwrap(), vec![65504.0, -1.5]);
    }
}
