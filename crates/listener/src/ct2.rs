//! Reading CTranslate2's `model.bin`.
//!
//! The layout, as written by `ctranslate2/specs/model_spec.py` (binary version 6), all integers
//! little-endian:
//!
//! ```text
//! u32 binary_version             (6 here; 5 lacks the per-variable dtype byte)
//! str spec_name                  ("WhisperSpec")
//! u32 spec_revision              (3 here)
//! u32 variable_count
//! variable_count times:
//!     str  name                  ("encoder/layer_0/self_attention/linear_0/weight")
//!     u8   rank, then rank × u32 dims
//!     u8   dtype                 (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
//!     u32  byte_count, then byte_count bytes of row-major data
//! u32 alias_count
//! alias_count times: str alias, str target   ("decoder/projection/weight" → "decoder/embeddings/weight")
//! ```
//!
//! where `str` is a `u16` length that counts a trailing NUL, then that many bytes.

use std::collections::HashMap;

use crate::Error;

/// The element types CTranslate2 stores, with their on-disk codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Dtype {
    fn from_code(code: u8) -> Result<Self, Error> {
        Ok(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            other => return Err(Error::Format(format!("unknown dtype code {other}"))),
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One stored variable: its shape, element type and raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct Variable {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<u8>,
}

impl Variable {
    /// The value of a scalar integer variable (CTranslate2 stores flags and head counts this way).
    pub fn scalar_int(&self) -> Option<i64> {
        if !self.shape.is_empty() {
            return None;
        }
        let d = &self.data;
        Some(match self.dtype {
            Dtype::I8 => i64::from(*d.first()? as i8),
            Dtype::I16 => i64::from(i16::from_le_bytes(d.get(..2)?.try_into().ok()?)),
            Dtype::I32 => i64::from(i32::from_le_bytes(d.get(..4)?.try_into().ok()?)),
            _ => return None,
        })
    }
}

/// A parsed `model.bin`: the spec's name and revision, and every variable by name, aliases
/// resolved (an alias maps to a copy of its target's bytes, so lookups need not know about them).
#[derive(Debug, Clone)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: HashMap<String, Variable>,
    pub aliases: HashMap<String, String>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                Error::Format(format!(
                    "model.bin ends early: wanted {n} bytes at offset {}",
                    self.pos
                ))
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, Error> {
        let len = usize::from(self.u16()?);
        let raw = self.take(len)?;
        // The stored length counts a trailing NUL.
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec())
            .map_err(|_| Error::Format("a variable name is not UTF-8".into()))
    }
}

impl Ct2Model {
    /// Parses the bytes of a `model.bin`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u32()?;
        if !(5..=6).contains(&version) {
            return Err(Error::Format(format!(
                "CTranslate2 binary version {version} is not supported (5 or 6 expected)"
            )));
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()? as usize;
        let mut variables = HashMap::with_capacity(count);
        for _ in 0..count {
            let name = r.string()?;
            let rank = usize::from(r.u8()?);
            let shape = (0..rank)
                .map(|_| r.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            // Version 5 files hold only f32 weights and have no dtype byte.
            let dtype = if version >= 6 {
                Dtype::from_code(r.u8()?)?
            } else {
                Dtype::F32
            };
            let byte_count = r.u32()? as usize;
            let elements: usize = shape.iter().product();
            if elements * dtype.size() != byte_count {
                return Err(Error::Format(format!(
                    "{name}: shape {shape:?} of {dtype:?} needs {} bytes, the file has {byte_count}",
                    elements * dtype.size()
                )));
            }
            let data = r.take(byte_count)?.to_vec();
            variables.insert(name, Variable { shape, dtype, data });
        }
        let mut aliases = HashMap::new();
        // Files written before aliases existed simply end here.
        if r.pos < bytes.len() {
            let alias_count = r.u32()?;
            for _ in 0..alias_count {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        if r.pos != bytes.len() {
            return Err(Error::Format(format!(
                "{} unexpected bytes after the alias table",
                bytes.len() - r.pos
            )));
        }
        for (alias, target) in &aliases {
            let value = variables.get(target).cloned().ok_or_else(|| {
                Error::Format(format!("alias {alias} points at missing {target}"))
            })?;
            variables.entry(alias.clone()).or_insert(value);
        }
        Ok(Self {
            spec,
            revision,
            variables,
            aliases,
        })
    }

    /// The variable called `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Variable, Error> {
        self.variables
            .get(name)
            .ok_or_else(|| Error::Format(format!("model.bin has no variable {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tiny_file() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        // A 2×1 f16 matrix holding 1.0 and -2.0.
        string(&mut out, "w");
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.push(4);
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&[0x00, 0x3c, 0x00, 0xc0]);
        // A scalar i16 head count.
        string(&mut out, "num_heads");
        out.push(0);
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&6i16.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        string(&mut out, "alias");
        string(&mut out, "w");
        out
    }

    #[test]
    fn parses_variables_scalars_and_aliases() {
        let m = Ct2Model::parse(&tiny_file()).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(m.revision, 3);
        let w = m.get("w").unwrap();
        assert_eq!(w.shape, vec![2, 1]);
        assert_eq!(w.dtype, Dtype::F16);
        assert_eq!(m.get("num_heads").unwrap().scalar_int(), Some(6));
        assert_eq!(m.get("alias").unwrap().data, w.data);
    }

    #[test]
    fn rejects_truncated_and_inconsistent_files() {
        let file = tiny_file();
        assert!(Ct2Model::parse(&file[..file.len() - 3]).is_err());
        let mut bad = file.clone();
        // The byte count of "w" (4) is at offset 4 + (2+12) + 4 + 4 + (2+2) + 1 + 8 + 1 = 40.
        assert_eq!(bad[40], 4);
        bad[40] = 6;
        assert!(Ct2Model::parse(&bad).is_err());
        let mut version = file;
        version[0] = 7;
        assert!(Ct2Model::parse(&version).is_err());
    }
}
