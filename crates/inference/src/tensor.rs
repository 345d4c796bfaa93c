//! Tensors as the Open Inference Protocol carries them: a datatype, a shape and raw
//! little-endian bytes in row-major order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::InferenceError;

/// Tensor element types, named as in the Open Inference Protocol (`"FP32"`, `"INT64"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP16")]
    Fp16,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    /// Every datatype, for parsing and listing.
    pub const ALL: [DataType; 13] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
        Self::Bytes,
    ];

    /// The protocol's name of this datatype.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Parses a protocol datatype name; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element; `None` for variable-size `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => Some(1),
            Self::Uint16 | Self::Int16 | Self::Fp16 => Some(2),
            Self::Uint32 | Self::Int32 | Self::Fp32 => Some(4),
            Self::Uint64 | Self::Int64 | Self::Fp64 => Some(8),
            Self::Bytes => None,
        }
    }

    /// The number of this type in Triton's `model_config.proto` `DataType` enum.
    pub fn triton_type(self) -> i32 {
        match self {
            Self::Bool => 1,
            Self::Uint8 => 2,
            Self::Uint16 => 3,
            Self::Uint32 => 4,
            Self::Uint64 => 5,
            Self::Int8 => 6,
            Self::Int16 => 7,
            Self::Int32 => 8,
            Self::Int64 => 9,
            Self::Fp16 => 10,
            Self::Fp32 => 11,
            Self::Fp64 => 12,
            Self::Bytes => 13,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dense tensor with raw little-endian contents. The contents are shared, not copied, when a
/// tensor is cloned or an item sliced out of a batch's output (`Bytes`): a speech decoder hands
/// its whole key/value cache to every step, a shadow gets the primary's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl Tensor {
    /// An FP32 tensor written from `values` straight into its little-endian bytes (no
    /// intermediate `Vec<f32>`).
    pub fn from_f32_iter(shape: Vec<i64>, values: impl ExactSizeIterator<Item = f32>) -> Self {
        let mut data = vec![0u8; values.len() * 4];
        for (bytes, v) in data.chunks_exact_mut(4).zip(values) {
            bytes.copy_from_slice(&v.to_le_bytes());
        }
        Self { datatype: DataType::Fp32, shape, data: data.into() }
    }

    /// A tensor of `f32` values.
    pub fn from_f32(shape: Vec<i64>, values: &[f32]) -> Self {
        Self { datatype: DataType::Fp32, shape, data: le_bytes(values, f32::to_le_bytes).into() }
    }

    /// Number of elements the shape describes.
    pub fn element_count(&self) -> usize {
        element_count(&self.shape)
    }

    /// Decodes the contents as `f32` (only for `FP32` tensors).
    pub fn to_f32(&self) -> Result<Vec<f32>, InferenceError> {
        if self.datatype != DataType::Fp32 {
            return Err(InferenceError::invalid(format!("expected FP32 tensor, got {}", self.datatype)));
        }
        Ok(self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// The values as `f64`, for the numeric datatypes (None for BOOL, BYTES and FP16 / BF16).
    pub fn to_f64_values(&self) -> Option<Vec<f64>> {
        let (width, read) = self.f64_reader()?;
        Some(self.data.chunks_exact(width).map(read).collect())
    }

    /// How to read the values one at a time as `f64` without a copy of them all: the bytes of
    /// an element, and the reader of one element's bytes (None as for [`Tensor::to_f64_values`]).
    pub fn f64_reader(&self) -> Option<(usize, ReadF64)> {
        fn le<const N: usize>(b: &[u8]) -> [u8; N] {
            b.try_into().expect("an element's bytes")
        }
        Some(match self.datatype {
            DataType::Fp32 => (4, |b| f64::from(f32::from_le_bytes(le(b)))),
            DataType::Fp64 => (8, |b| f64::from_le_bytes(le(b))),
            DataType::Int8 => (1, |b| f64::from(b[0] as i8)),
            DataType::Int16 => (2, |b| f64::from(i16::from_le_bytes(le(b)))),
            DataType::Int32 => (4, |b| f64::from(i32::from_le_bytes(le(b)))),
            DataType::Int64 => (8, |b| i64::from_le_bytes(le(b)) as f64),
            DataType::Uint8 => (1, |b| f64::from(b[0])),
            DataType::Uint16 => (2, |b| f64::from(u16::from_le_bytes(le(b)))),
            DataType::Uint32 => (4, |b| f64::from(u32::from_le_bytes(le(b)))),
            DataType::Uint64 => (8, |b| u64::from_le_bytes(le(b)) as f64),
            _ => return None,
        })
    }
}

/// Reads one element's little-endian bytes as `f64`.
pub type ReadF64 = fn(&[u8]) -> f64;

/// `values` as little-endian bytes: one copy on a little-endian machine, `to` value by value on
/// any other.
pub(crate) fn le_bytes<T: bytemuck::Pod, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|&v| to(v)).collect()
    }
}

/// `BYTES` tensors hold their elements as the protocol's raw contents do: each element is a
/// 4-byte little-endian length followed by that many bytes, in row-major order.
impl Tensor {
    /// A `BYTES` tensor of the given elements (e.g. UTF-8 texts).
    pub fn from_bytes_elements<T: AsRef<[u8]>>(shape: Vec<i64>, elements: &[T]) -> Self {
        Self { datatype: DataType::Bytes, shape, data: serialize_bytes_elements(elements).into() }
    }

    /// The elements of a `BYTES` tensor, checked against its shape.
    pub fn bytes_elements(&self) -> Result<Vec<&[u8]>, InferenceError> {
        if self.datatype != DataType::Bytes {
            return Err(InferenceError::invalid(format!("expected a BYTES tensor, got {}", self.datatype)));
        }
        let elements = parse_bytes_elements(&self.data)?;
        if elements.len() != self.element_count() {
            return Err(InferenceError::invalid(format!(
                "{} BYTES elements, but shape {:?} needs {}",
                elements.len(),
                self.shape,
                self.element_count()
            )));
        }
        Ok(elements)
    }

    /// The elements of a `BYTES` tensor as UTF-8 text (what ONNX string tensors hold).
    pub fn texts(&self) -> Result<Vec<&str>, InferenceError> {
        self.bytes_elements()?
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                std::str::from_utf8(e).map_err(|err| {
                    InferenceError::invalid(format!(
                        "BYTES element {i} is not valid UTF-8 ({err}); strings must be UTF-8"
                    ))
                })
            })
            .collect()
    }
}

/// Length-prefixed serialisation of `BYTES` elements (see [`Tensor::bytes_elements`]).
pub fn serialize_bytes_elements<T: AsRef<[u8]>>(elements: &[T]) -> Vec<u8> {
    let mut data = Vec::with_capacity(elements.iter().map(|e| 4 + e.as_ref().len()).sum());
    for e in elements {
        let e = e.as_ref();
        data.extend_from_slice(&(e.len() as u32).to_le_bytes());
        data.extend_from_slice(e);
    }
    data
}

/// Splits length-prefixed `BYTES` contents into their elements; refuses a truncated length or element.
pub fn parse_bytes_elements(mut data: &[u8]) -> Result<Vec<&[u8]>, InferenceError> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let Some((prefix, rest)) = data.split_first_chunk::<4>() else {
            return Err(InferenceError::invalid(format!(
                "BYTES element {}: {} bytes left where a 4-byte length prefix belongs",
                elements.len(),
                data.len()
            )));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if rest.len() < len {
            return Err(InferenceError::invalid(format!(
                "BYTES element {}: its length prefix says {len} bytes but only {} follow",
                elements.len(),
                rest.len()
            )));
        }
        let (element, rest) = rest.split_at(len);
        elements.push(element);
        data = rest;
    }
    Ok(elements)
}

/// Product of the dimensions (1 for a scalar); negative dimensions count as 0.
pub fn element_count(shape: &[i64]) -> usize {
    // Saturating: a shape whose product overflows (a request claiming 2^50 items) must not wrap
    // around to a small count that some data length would then match.
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(0) as usize)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_shape_counts_as_too_many_elements() {
        assert_eq!(element_count(&[1 << 50, 1, 128, 128]), usize::MAX);
        assert_eq!(element_count(&[4, 1, 128, 128]), 65_536);
        assert_eq!(element_count(&[]), 1);
    }

    #[test]
    fn bytes_elements_round_trip_and_refuse_truncation() {
        let t = Tensor::from_bytes_elements(vec![3, 1], &["", "ça va", "spam"]);
        assert_eq!(t.data.len(), 3 * 4 + "ça va".len() + 4);
        assert_eq!(t.texts().unwrap(), ["", "ça va", "spam"]);
        let wrong_shape = Tensor { shape: vec![2, 1], ..t.clone() };
        assert!(wrong_shape.bytes_elements().unwrap_err().to_string().contains("needs 2"));
        let mut truncated = t.data.to_vec();
        truncated.pop();
        assert!(parse_bytes_elements(&truncated).unwrap_err().to_string().contains("only 3 follow"));
        assert!(parse_bytes_elements(&t.data[..t.data.len() - 6]).unwrap_err().to_string().contains("length prefix"));
        let bad = Tensor::from_bytes_elements(vec![1], &[&[0xff_u8, 0xfe][..]]);
        assert!(bad.texts().unwrap_err().to_string().contains("UTF-8"));
        assert!(Tensor::from_f32(vec![1], &[1.0]).bytes_elements().is_err());
    }
}
