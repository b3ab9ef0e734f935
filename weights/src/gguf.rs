//! GGUF v2/v3: header, metadata and tensor infos parsed from a byte slice (the file's mapping),
//! and a writer used to make fixture models.
//!
//! Every read is bounds-checked: a truncated or corrupted file gives a typed error, never a panic,
//! and counts read from the file never size an allocation beyond what the file could hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::dtype::{from_stored_id, stored_id, DType, Layout};
use crate::error::{Result, WeightsError};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value, of any of GGUF's value types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human description (arrays summarised by length).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.len() > 60 => {
                format!("{:?}… ({} bytes)", &s[..s.floor_char_boundary(60)], s.len())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} values]", a.len()),
            Value::Bool(b) => b.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

/// Where one tensor's bytes are inside the file, as declared by the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Block order (interleaved only in files written by `cascade repack`).
    pub layout: Layout,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

/// A parsed GGUF header: everything but the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(WeightsError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n as u64,
                len: self.bytes.len() as u64,
            }),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn corrupt(&self, reason: String) -> WeightsError {
        WeightsError::Corrupt {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// A count that sizes a list whose items take at least `min_item` bytes each.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.remaining() / min_item.max(1)) as u64;
        if n > fits {
            return Err(self.corrupt(format!(
                "{what} is {n} but only {} bytes remain at offset {}",
                self.remaining(),
                self.pos
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(WeightsError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: len,
                len: self.bytes.len() as u64,
            });
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.corrupt(format!("{what} at offset {} is not UTF-8", self.pos)))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("key '{key}': bool byte {b}"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(self.corrupt(format!("key '{key}': arrays nested too deep")));
                }
                let elem_ty = self.u32(key)?;
                let min = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => {
                        return Err(
                            self.corrupt(format!("key '{key}': unknown array element type {t}"))
                        )
                    }
                };
                let n = self.count(key, min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(self.corrupt(format!("key '{key}': unknown value type {t}"))),
        })
    }
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl GgufHeader {
    /// Parses the header of a GGUF file held in `bytes`, checking that every tensor lies inside it.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<GgufHeader> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            path,
        };
        let magic: [u8; 4] = c.array("magic")?;
        if magic != GGUF_MAGIC {
            return Err(WeightsError::BadMagic {
                path: path.to_path_buf(),
                magic,
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(WeightsError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.corrupt(format!("general.alignment is {}", v.describe()))),
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(c.corrupt(format!("tensor '{name}' has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty = c.u32(&name)?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let data_offset = align_up(c.pos as u64, alignment);
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, rel) in raw {
            let (dtype, layout) =
                from_stored_id(ty).map_err(|ty| WeightsError::UnsupportedTensorType {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    ty,
                })?;
            let group = layout.group_rows() as u64;
            if group > 1 && (dims.len() != 2 || dims[1] % group != 0) {
                return Err(c.corrupt(format!(
                    "tensor '{name}' is stored {layout:?} but has shape {dims:?} (a matrix with \
                     rows a multiple of {group} is needed)"
                )));
            }
            let n_elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    c.corrupt(format!("tensor '{name}' has an overflowing shape {dims:?}"))
                })?;
            if dims[0] % dtype.block_len() as u64 != 0 {
                return Err(WeightsError::BadTensorShape {
                    path: path.to_path_buf(),
                    name,
                    shape: dims,
                    block: dtype.block_len(),
                    ty: dtype.name(),
                });
            }
            let n_bytes =
                (n_elems / dtype.block_len() as u64).saturating_mul(dtype.block_bytes() as u64);
            let start = data_offset.checked_add(rel);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => {
                    if rel % alignment != 0 {
                        return Err(c.corrupt(format!(
                            "tensor '{name}' offset {rel} is not aligned to {alignment}"
                        )));
                    }
                    tensors.push(TensorInfo {
                        name,
                        dims,
                        dtype,
                        layout,
                        offset: start,
                        n_bytes,
                    });
                }
                _ => {
                    return Err(WeightsError::TensorOutOfBounds {
                        path: path.to_path_buf(),
                        name,
                        start: data_offset.saturating_add(rel),
                        end: data_offset.saturating_add(rel).saturating_add(n_bytes),
                        len: file_len,
                    })
                }
            }
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }
}

/// Builds a GGUF v3 file in memory: metadata and tensors given as raw (already quantized) bytes.
#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

/// A tensor waiting in a [`GgufWriter`]: name, GGML dims, type, layout and bytes.
type PendingTensor = (String, Vec<u64>, DType, Layout, TensorBytes);

/// A pending tensor's bytes: held, or asked for when the file is written.
#[derive(Debug, Clone)]
enum TensorBytes {
    Held(Vec<u8>),
    Later(usize),
}

impl TensorBytes {
    fn len(&self) -> usize {
        match self {
            TensorBytes::Held(v) => v.len(),
            TensorBytes::Later(n) => *n,
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor; `dims` in GGML order (innermost first), `data` in the type's block format.
    pub fn tensor(&mut self, name: &str, dims: &[u64], dtype: DType, data: Vec<u8>) -> &mut Self {
        self.tensor_in(name, dims, dtype, Layout::Rows, data)
    }

    /// [`GgufWriter::tensor`] with its blocks in `layout` (which must support `dtype`, with
    /// `dims` a matrix whose rows are a multiple of the layout's group).
    pub fn tensor_in(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: DType,
        layout: Layout,
        data: Vec<u8>,
    ) -> &mut Self {
        let n: u64 = dims.iter().product();
        assert_eq!(
            dtype.bytes_for(n as usize),
            data.len(),
            "tensor {name}: data length does not match shape {dims:?} of {dtype}"
        );
        self.push(name, dims, dtype, layout, TensorBytes::Held(data))
    }

    /// Declares a tensor whose bytes [`GgufWriter::write_with`] asks for as it writes them, so
    /// that a large file is never held in memory at once.
    pub fn tensor_later(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: DType,
        layout: Layout,
    ) -> &mut Self {
        let n: u64 = dims.iter().product();
        let len = dtype.bytes_for(n as usize);
        self.push(name, dims, dtype, layout, TensorBytes::Later(len))
    }

    fn push(
        &mut self,
        name: &str,
        dims: &[u64],
        dtype: DType,
        layout: Layout,
        data: TensorBytes,
    ) -> &mut Self {
        assert!(
            layout.supports(dtype)
                && (layout == Layout::Rows
                    || (dims.len() == 2 && dims[1].is_multiple_of(layout.group_rows() as u64))),
            "tensor {name}: {dtype} {dims:?} cannot be stored {layout:?}"
        );
        self.tensors
            .push((name.to_string(), dims.to_vec(), dtype, layout, data));
        self
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(a) => {
                let elem = a.first().map(Value::type_id).unwrap_or(4);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for x in a {
                    Self::put_value(out, x);
                }
            }
        }
    }

    /// The whole file's bytes (every tensor's bytes held: none declared with `tensor_later`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header_bytes();
        let base = out.len();
        for (off, (name, .., data)) in self.offsets().into_iter().zip(&self.tensors) {
            out.resize(base + off as usize, 0);
            match data {
                TensorBytes::Held(d) => out.extend_from_slice(d),
                TensorBytes::Later(_) => panic!("tensor {name}: bytes only given to write_with"),
            }
        }
        out
    }

    /// Each tensor's offset from the start of the data section.
    fn offsets(&self) -> Vec<u64> {
        let mut rel = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (.., data) in &self.tensors {
            offsets.push(rel);
            rel = align_up(rel + data.len() as u64, DEFAULT_ALIGNMENT);
        }
        offsets
    }

    /// Everything before the tensor data, padded to the alignment.
    fn header_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            Self::put_value(&mut out, &Value::String(k.clone()));
            out.extend_from_slice(&v.type_id().to_le_bytes());
            Self::put_value(&mut out, v);
        }
        for ((name, dims, dtype, layout, _), rel) in self.tensors.iter().zip(self.offsets()) {
            Self::put_value(&mut out, &Value::String(name.clone()));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&stored_id(*dtype, *layout).to_le_bytes());
            out.extend_from_slice(&rel.to_le_bytes());
        }
        out.resize(align_up(out.len() as u64, align) as usize, 0);
        out
    }

    /// Writes the file, streaming the tensors (no second copy of their bytes in memory).
    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_with(path, |i| {
            Err(std::io::Error::other(format!(
                "tensor {}: no bytes given (declared with tensor_later; use write_with)",
                self.tensors[i].0
            )))
        })
    }

    /// [`GgufWriter::write`], asking `bytes_of(i)` for the bytes of tensor `i` (in the order
    /// added) when it was declared with [`GgufWriter::tensor_later`]: one tensor in memory at a
    /// time. Bytes of the wrong length are an error.
    pub fn write_with<'a>(
        &self,
        path: &Path,
        mut bytes_of: impl FnMut(usize) -> std::io::Result<std::borrow::Cow<'a, [u8]>>,
    ) -> Result<()> {
        use std::io::Write;
        let io = |source| WeightsError::Io {
            path: PathBuf::from(path),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut out = std::io::BufWriter::new(file);
        let header = self.header_bytes();
        out.write_all(&header).map_err(io)?;
        let mut pos = 0u64;
        for (i, (off, (name, .., data))) in
            self.offsets().into_iter().zip(&self.tensors).enumerate()
        {
            let pad = vec![0u8; (off - pos) as usize];
            out.write_all(&pad).map_err(io)?;
            match data {
                TensorBytes::Held(d) => out.write_all(d).map_err(io)?,
                TensorBytes::Later(len) => {
                    let d = bytes_of(i).map_err(io)?;
                    if d.len() != *len {
                        return Err(io(std::io::Error::other(format!(
                            "tensor {name}: {} bytes given, {len} declared",
                            d.len()
                        ))));
                    }
                    out.write_all(&d).map_err(io)?;
                }
            }
            pos = off + data.len() as u64;
        }
        out.flush().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Value::String("llama".into()))
            .meta("a.u8", Value::U8(7))
            .meta("a.i8", Value::I8(-7))
            .meta("a.u16", Value::U16(700))
            .meta("a.i16", Value::I16(-700))
            .meta("a.u32", Value::U32(70000))
            .meta("a.i32", Value::I32(-70000))
            .meta("a.u64", Value::U64(1 << 40))
            .meta("a.i64", Value::I64(-(1 << 40)))
            .meta("a.f32", Value::F32(1.5))
            .meta("a.f64", Value::F64(-2.25))
            .meta("a.bool", Value::Bool(true))
            .meta(
                "a.arr",
                Value::Array(vec![Value::String("x".into()), Value::String("yz".into())]),
            )
            .meta(
                "a.nested",
                Value::Array(vec![
                    Value::Array(vec![Value::I32(1)]),
                    Value::Array(vec![Value::I32(2)]),
                ]),
            );
        w.tensor(
            "t0",
            &[4, 2],
            DType::F32,
            (0..32).map(|i| i as u8).collect(),
        );
        w.tensor("t1", &[32], DType::Q8_0, vec![1; 34]);
        w
    }

    #[test]
    fn interleaved_tensors_keep_their_layout_and_need_whole_groups() {
        let mut w = GgufWriter::new();
        w.tensor_in(
            "m",
            &[256, 8],
            DType::Q4K,
            Layout::Interleaved8,
            vec![5; 8 * 144],
        );
        w.tensor("v", &[256, 4], DType::Q4K, vec![6; 4 * 144]);
        let bytes = w.to_bytes();
        let h = GgufHeader::parse(Path::new("mem"), &bytes).unwrap();
        assert_eq!(h.tensors[0].layout, Layout::Interleaved8);
        assert_eq!(h.tensors[0].dtype, DType::Q4K);
        assert_eq!(h.tensors[1].layout, Layout::Rows);
        // Streamed to a file: the same bytes.
        let dir = std::env::temp_dir().join(format!("cascade-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.gguf");
        w.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_dir_all(&dir).unwrap();
        // The row-major tensor's type id patched to the interleaved one: 4 rows is not a whole
        // group, so the file is refused, naming the tensor.
        let id = stored_id(DType::Q4K, Layout::Rows).to_le_bytes();
        let il = stored_id(DType::Q4K, Layout::Interleaved8).to_le_bytes();
        let name = [1, 0, 0, 0, 0, 0, 0, 0, b'v'];
        let name_at = bytes.windows(9).position(|x| x == name).unwrap();
        let mut bad = bytes.clone();
        // After the name: the dimension count (4 bytes) and two dimensions (8 bytes each).
        let ty_at = name_at + 9 + 4 + 16;
        assert_eq!(bad[ty_at..ty_at + 4], id);
        bad[ty_at..ty_at + 4].copy_from_slice(&il);
        let err = GgufHeader::parse(Path::new("mem"), &bad).unwrap_err();
        assert!(err.to_string().contains("'v'"), "{err}");
    }

    #[test]
    fn tensors_given_at_write_time_make_the_same_file() {
        let data = |i: usize| vec![i as u8 + 1; 34 * 2];
        let mut held = GgufWriter::new();
        let mut later = GgufWriter::new();
        for (w, defer) in [(&mut held, false), (&mut later, true)] {
            w.meta("general.architecture", Value::String("llama".into()));
            for i in 0..3 {
                let name = format!("t{i}");
                if defer {
                    w.tensor_later(&name, &[64], DType::Q8_0, Layout::Rows);
                } else {
                    w.tensor(&name, &[64], DType::Q8_0, data(i));
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("cascade-later-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.gguf");
        later
            .write_with(&path, |i| Ok(std::borrow::Cow::Owned(data(i))))
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), held.to_bytes());
        // Bytes of the wrong length, or none at all, are errors naming the tensor.
        let err = later
            .write_with(&path, |_| Ok(std::borrow::Cow::Owned(vec![0; 3])))
            .unwrap_err();
        assert!(err.to_string().contains("t0"), "{err}");
        assert!(later.write(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_and_reads_every_value_type() {
        let w = sample();
        let bytes = w.to_bytes();
        let h = GgufHeader::parse(Path::new("mem"), &bytes).unwrap();
        assert_eq!(h.version, 3);
        for (k, v) in &w.metadata {
            assert_eq!(h.metadata.get(k), Some(v), "{k}");
        }
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].dims, vec![4, 2]);
        assert_eq!(h.tensors[1].dtype, DType::Q8_0);
        assert_eq!(h.tensors[0].offset % 32, 0);
        assert_eq!(h.tensors[1].offset % 32, 0);
        let t0 = &bytes[h.tensors[0].offset as usize..][..32];
        assert_eq!(t0[5], 5);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().to_bytes();
        // Under Miri (slow) every 7th length.
        for len in (0..bytes.len()).step_by(if cfg!(miri) { 7 } else { 1 }) {
            let r = GgufHeader::parse(Path::new("mem"), &bytes[..len]);
            assert!(r.is_err(), "truncated to {len} bytes parsed");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = sample().to_bytes();
        let data_start = GgufHeader::parse(Path::new("mem"), &bytes)
            .unwrap()
            .data_offset as usize;
        // Flip each header byte in turn to a few values; parsing must return, Ok or Err.
        for i in (0..data_start).step_by(if cfg!(miri) { 7 } else { 1 }) {
            for v in [0x00, 0xff, 0x7f, 0x80] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = GgufHeader::parse(Path::new("mem"), &b);
            }
        }
    }

    #[test]
    fn bad_magic_and_version() {
        let mut bytes = sample().to_bytes();
        bytes[0] = b'X';
        assert!(matches!(
            GgufHeader::parse(Path::new("m"), &bytes),
            Err(WeightsError::BadMagic { .. })
        ));
        let mut bytes = sample().to_bytes();
        bytes[4] = 9;
        assert!(matches!(
            GgufHeader::parse(Path::new("m"), &bytes),
            Err(WeightsError::UnsupportedVersion { version: 9, .. })
        ));
    }

    #[test]
    fn tensor_past_the_end_is_reported() {
        let mut w = GgufWriter::new();
        w.tensor("big", &[8], DType::F32, vec![0; 32]);
        let bytes = w.to_bytes();
        let cut = &bytes[..bytes.len() - 4];
        match GgufHeader::parse(Path::new("m"), cut) {
            Err(WeightsError::TensorOutOfBounds { name, .. }) => assert_eq!(name, "big"),
            other => panic!("expected TensorOutOfBounds, got {other:?}"),
        }
    }

    #[test]
    fn unsupported_tensor_type_is_named() {
        let mut w = GgufWriter::new();
        w.tensor("t", &[32], DType::Q8_0, vec![0; 34]);
        let mut bytes = w.to_bytes();
        // The type id sits 12 bytes before the end of the (only) tensor info: type u32, offset u64.
        let h = GgufHeader::parse(Path::new("m"), &bytes).unwrap();
        let info_end = (h.data_offset as usize..).next().unwrap();
        let pos = (0..info_end)
            .rev()
            .find(|&p| {
                bytes[p..p + 4] == 8u32.to_le_bytes() && bytes[p + 4..p + 12] == 0u64.to_le_bytes()
            })
            .unwrap();
        bytes[pos..pos + 4].copy_from_slice(&9u32.to_le_bytes());
        let err = GgufHeader::parse(Path::new("m"), &bytes).unwrap_err();
        assert!(err.to_string().contains("Q8_1"), "{err}");
    }
}
