//! PyTorch checkpoint (`torch.save` zip format) reader, no Python needed.
//!
//! A `.pth` file is a zip archive (entries *stored*, not compressed) under one top-level
//! folder (`archive/`, or whatever name the writer chose, e.g. `tmp/`):
//! * `<top>/data.pkl` — a pickle (protocol 2) of the saved object. Tensors appear as
//!   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
//!   calls whose `storage` is a *persistent id* `('storage', torch.FloatStorage, key,
//!   location, numel)`;
//! * `<top>/data/<key>` — the raw little-endian bytes of storage `key`;
//! * `<top>/byteorder` — `little` (anything else is refused).
//!
//! The pickle is evaluated by a small stack machine ([`Value`] results) that knows the opcodes
//! `torch.save` emits (protocol 2, plus the protocol-4 framing opcodes) and a closed set of
//! globals (`collections.OrderedDict`, torch's tensor/parameter rebuilders, `torch.device`,
//! numpy's array reconstruction, `_codecs.encode`); any other global is kept as an opaque
//! [`Value::Object`], and an opcode outside the set is an error naming it.

use crate::error::{ModelError, Result};
use std::collections::HashMap;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Zip (stored entries only, as torch writes them)

/// A zip archive held in memory: entry name → byte range of its (stored) data.
pub struct ZipArchive {
    bytes: Vec<u8>,
    entries: Vec<(String, std::ops::Range<usize>, u32, u16)>,
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl ZipArchive {
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        let bad = |why: &str| ModelError::Zip(why.to_string());
        // End of central directory: last occurrence of PK\x05\x06 (comment ≤ 64 KiB).
        if bytes.len() < 22 {
            return Err(bad("file too short for a zip archive"));
        }
        let lo = bytes.len().saturating_sub(22 + 65_536);
        let eocd = (lo..=bytes.len() - 22)
            .rev()
            .find(|&i| rd_u32(&bytes, i) == Some(0x0605_4b50))
            .ok_or_else(|| bad("no end-of-central-directory record (not a zip file)"))?;
        let mut count = rd_u16(&bytes, eocd + 10).ok_or_else(|| bad("truncated EOCD"))? as u64;
        let mut cd_off = rd_u32(&bytes, eocd + 16).ok_or_else(|| bad("truncated EOCD"))? as u64;
        // Zip64: locator PK\x06\x07 just before the EOCD points at the zip64 EOCD.
        if eocd >= 20 && rd_u32(&bytes, eocd - 20) == Some(0x0706_4b50) {
            let z64 = rd_u64(&bytes, eocd - 12).ok_or_else(|| bad("truncated zip64 locator"))?;
            let z64 = usize::try_from(z64).map_err(|_| bad("zip64 offset overflow"))?;
            if rd_u32(&bytes, z64) != Some(0x0606_4b50) {
                return Err(bad("bad zip64 end-of-central-directory signature"));
            }
            count = rd_u64(&bytes, z64 + 32).ok_or_else(|| bad("truncated zip64 EOCD"))?;
            cd_off = rd_u64(&bytes, z64 + 48).ok_or_else(|| bad("truncated zip64 EOCD"))?;
        }
        let mut at = usize::try_from(cd_off).map_err(|_| bad("central directory offset"))?;
        let mut entries = Vec::new();
        for n in 0..count {
            let e = |why: &str| ModelError::Zip(format!("central directory entry {n}: {why}"));
            if rd_u32(&bytes, at) != Some(0x0201_4b50) {
                return Err(e("bad signature"));
            }
            let method = rd_u16(&bytes, at + 10).ok_or_else(|| e("truncated"))?;
            let crc = rd_u32(&bytes, at + 16).ok_or_else(|| e("truncated"))?;
            let mut csize = rd_u32(&bytes, at + 20).ok_or_else(|| e("truncated"))? as u64;
            let mut usize_ = rd_u32(&bytes, at + 24).ok_or_else(|| e("truncated"))? as u64;
            let nlen = rd_u16(&bytes, at + 28).ok_or_else(|| e("truncated"))? as usize;
            let xlen = rd_u16(&bytes, at + 30).ok_or_else(|| e("truncated"))? as usize;
            let clen = rd_u16(&bytes, at + 32).ok_or_else(|| e("truncated"))? as usize;
            let mut loff = rd_u32(&bytes, at + 42).ok_or_else(|| e("truncated"))? as u64;
            let name = bytes
                .get(at + 46..at + 46 + nlen)
                .ok_or_else(|| e("truncated name"))?;
            let name = String::from_utf8_lossy(name).into_owned();
            // Zip64 extra field (id 1): the 0xFFFFFFFF fields, in order.
            let extra = bytes
                .get(at + 46 + nlen..at + 46 + nlen + xlen)
                .ok_or_else(|| e("truncated extra field"))?;
            let mut x = 0;
            while x + 4 <= extra.len() {
                let id = rd_u16(extra, x).unwrap_or(0);
                let len = rd_u16(extra, x + 2).unwrap_or(0) as usize;
                if id == 1 {
                    let mut f = x + 4;
                    for v in [&mut usize_, &mut csize, &mut loff] {
                        if *v == 0xFFFF_FFFF {
                            *v = rd_u64(extra, f).ok_or_else(|| e("truncated zip64 field"))?;
                            f += 8;
                        }
                    }
                }
                x += 4 + len;
            }
            let loff = usize::try_from(loff).map_err(|_| e("offset overflow"))?;
            if rd_u32(&bytes, loff) != Some(0x0403_4b50) {
                return Err(e(&format!("{name}: bad local header signature")));
            }
            let ln = rd_u16(&bytes, loff + 26).ok_or_else(|| e("truncated"))? as usize;
            let lx = rd_u16(&bytes, loff + 28).ok_or_else(|| e("truncated"))? as usize;
            let start = loff + 30 + ln + lx;
            let len = usize::try_from(csize).map_err(|_| e("size overflow"))?;
            let range = start..start.checked_add(len).ok_or_else(|| e("size overflow"))?;
            if range.end > bytes.len() {
                return Err(e(&format!("{name}: data runs past the end of the file")));
            }
            if method == 0 && csize != usize_ {
                return Err(e(&format!("{name}: stored entry with differing sizes")));
            }
            // A compressed entry is only an error if somebody asks for it (see `get`).
            entries.push((name, range, crc, method));
            at += 46 + nlen + xlen + clen;
        }
        Ok(ZipArchive { bytes, entries })
    }

    /// Entry names in archive order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_str())
    }

    /// The bytes of entry `name` (CRC-checked).
    pub fn get(&self, name: &str) -> Result<&[u8]> {
        let (_, range, crc, method) = self
            .entries
            .iter()
            .find(|e| e.0 == name)
            .ok_or_else(|| ModelError::Zip(format!("no entry {name:?}")))?;
        if *method != 0 {
            return Err(ModelError::Zip(format!(
                "entry {name:?} is compressed (method {method}); torch checkpoints store entries uncompressed"
            )));
        }
        let data = &self.bytes[range.clone()];
        if crc32fast::hash(data) != *crc {
            return Err(ModelError::Zip(format!("entry {name:?}: CRC mismatch")));
        }
        Ok(data)
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// Element type of a tensor storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    fn from_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
}

/// Element data of a tensor, contiguous row-major (strides already applied).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Integer/bool/half storages, widened losslessly to f64 for inspection.
    Other(Vec<f64>),
}

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    /// Strides as saved (elements); `data` is already contiguous row-major.
    pub strides: Vec<usize>,
    pub dtype: DType,
    pub data: TensorData,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The elements as f64 (exact for f32/f64 storages).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F64(v) | TensorData::Other(v) => v.clone(),
        }
    }
}

/// A pickled value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Insertion-ordered (covers dict and OrderedDict).
    Dict(Vec<(Value, Value)>),
    Tensor(Box<Tensor>),
    /// A numpy array (`numpy.core.multiarray._reconstruct` + state).
    NdArray {
        shape: Vec<usize>,
        dtype: String,
        data: Vec<f64>,
    },
    /// A global not interpreted by the reader (`module.name`), as a callable or the result
    /// of calling it with `args`; `state` from BUILD.
    Object {
        global: String,
        args: Option<Box<Value>>,
        state: Option<Box<Value>>,
    },
    /// A persistent id that was not a storage.
    Persistent(Box<Value>),
    /// Internal: an unresolved storage reference `(dtype, key, numel)`.
    Storage(DType, String, usize),
}

impl Value {
    /// `dict[key]` for a string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// Elements of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }
    /// A list/tuple of numbers, a numpy array or a tensor, as f64.
    pub fn as_f64_vec(&self) -> Option<Vec<f64>> {
        match self {
            Value::List(v) | Value::Tuple(v) => v.iter().map(Value::as_f64).collect(),
            Value::NdArray { data, .. } => Some(data.clone()),
            Value::Tensor(t) => Some(t.to_f64()),
            Value::Float(x) => Some(vec![*x]),
            _ => None,
        }
    }

    /// A JSON view (dict keys stringified; tensors as `{"shape", "dtype"}` summaries; numpy
    /// arrays as lists; opaque objects as `{"global": ...}`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Bytes(b) => J::String(format!("<{} bytes>", b.len())),
            Value::List(v) | Value::Tuple(v) => J::Array(v.iter().map(Value::to_json).collect()),
            Value::Dict(items) => J::Object(
                items
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Value::Str(s) => s.clone(),
                            other => other.to_json().to_string(),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
            Value::Tensor(t) => {
                serde_json::json!({"shape": t.shape, "dtype": format!("{:?}", t.dtype)})
            }
            Value::NdArray { data, .. } => J::Array(
                data.iter()
                    .map(|&x| serde_json::Number::from_f64(x).map_or(J::Null, J::Number))
                    .collect(),
            ),
            Value::Object { global, args, .. } => serde_json::json!({
                "global": global,
                "args": args.as_ref().map(|a| a.to_json()),
            }),
            Value::Persistent(v) => serde_json::json!({"persistent_id": v.to_json()}),
            Value::Storage(_, key, _) => serde_json::json!({"storage": key}),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pickle VM

/// Storage bytes by key (from the zip) used to resolve tensors.
pub trait StorageSource {
    fn storage(&self, key: &str) -> Result<&[u8]>;
}

struct ZipStorages<'a> {
    zip: &'a ZipArchive,
    prefix: String,
}

impl StorageSource for ZipStorages<'_> {
    fn storage(&self, key: &str) -> Result<&[u8]> {
        self.zip.get(&format!("{}data/{key}", self.prefix))
    }
}

/// Storages held in a map (tests, hand-built pickles).
impl StorageSource for HashMap<String, Vec<u8>> {
    fn storage(&self, key: &str) -> Result<&[u8]> {
        self.get(key)
            .map(|v| v.as_slice())
            .ok_or_else(|| ModelError::Zip(format!("no storage {key:?}")))
    }
}

enum Slot {
    V(Value),
    Mark,
}

struct Vm<'a, S: StorageSource> {
    data: &'a [u8],
    pos: usize,
    entry: &'a str,
    stack: Vec<Slot>,
    memo: HashMap<u64, Value>,
    storages: &'a S,
}

fn decode_storage(dtype: DType, bytes: &[u8]) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::F64 => TensorData::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        DType::I64 => TensorData::Other(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
                .collect(),
        ),
        DType::I32 => TensorData::Other(
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        DType::I16 => TensorData::Other(
            bytes
                .chunks_exact(2)
                .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        DType::F16 => TensorData::Other(
            bytes
                .chunks_exact(2)
                .map(|c| half_to_f64(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        DType::BF16 => TensorData::Other(
            bytes
                .chunks_exact(2)
                .map(|c| {
                    f64::from(f32::from_bits(
                        u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
                    ))
                })
                .collect(),
        ),
        DType::I8 => TensorData::Other(bytes.iter().map(|&b| f64::from(b as i8)).collect()),
        DType::U8 | DType::Bool => TensorData::Other(bytes.iter().map(|&b| f64::from(b)).collect()),
    }
}

fn half_to_f64(h: u16) -> f64 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

impl<'a, S: StorageSource> Vm<'a, S> {
    fn err(&self, why: impl Into<String>) -> ModelError {
        ModelError::Pickle {
            entry: self.entry.to_string(),
            pos: self.pos,
            why: why.into(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.err("unexpected end of pickle"))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated text argument"))?;
        self.pos += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }
    fn utf8(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("invalid UTF-8 string"))?;
        Ok(Value::Str(s.to_string()))
    }
    fn push(&mut self, v: Value) {
        self.stack.push(Slot::V(v));
    }
    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Slot::V(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.err("expected a value, found a MARK")),
            None => Err(self.err("stack underflow")),
        }
    }
    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        let entry = self.entry.to_string();
        match self.stack.last_mut() {
            Some(Slot::V(v)) => Ok(v),
            _ => Err(ModelError::Pickle {
                entry,
                pos,
                why: "expected a value on the stack".into(),
            }),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::V(v)) => items.push(v),
                Some(Slot::Mark) => break,
                None => return Err(self.err("MARK not found")),
            }
        }
        items.reverse();
        Ok(items)
    }
    fn memo_get(&self, k: u64) -> Result<Value> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {k} not set")))
    }
    fn memo_put(&mut self, k: u64) -> Result<()> {
        let v = match self.stack.last() {
            Some(Slot::V(v)) => v.clone(),
            _ => return Err(self.err("PUT with no value on the stack")),
        };
        self.memo.insert(k, v);
        Ok(())
    }

    fn persistent(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = &pid else {
            return Ok(Value::Persistent(Box::new(pid)));
        };
        if items.first().and_then(Value::as_str) != Some("storage") || items.len() < 5 {
            return Ok(Value::Persistent(Box::new(pid)));
        }
        let ty = match &items[1] {
            Value::Object { global, .. } => global.rsplit('.').next().unwrap_or("").to_string(),
            Value::Str(s) => s.clone(),
            other => return Err(self.err(format!("storage type {other:?} not understood"))),
        };
        let dtype = DType::from_storage(&ty)
            .ok_or_else(|| self.err(format!("unsupported storage type {ty}")))?;
        let key = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => return Err(self.err(format!("storage key {other:?} not understood"))),
        };
        let numel = items[4]
            .as_i64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.err("storage numel not an integer"))?;
        Ok(Value::Storage(dtype, key, numel))
    }

    fn usize_seq(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        v.as_seq()
            .and_then(|s| {
                s.iter()
                    .map(|x| x.as_i64().and_then(|i| usize::try_from(i).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.err(format!("{what} is not a tuple of non-negative integers")))
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(self.err("_rebuild_tensor_v2 with fewer than 4 arguments"));
        };
        let Value::Storage(dtype, key, numel) = storage else {
            return Err(self.err("_rebuild_tensor_v2: first argument is not a storage"));
        };
        let offset = offset
            .as_i64()
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| self.err("tensor offset"))?;
        let shape = self.usize_seq(size, "tensor size")?;
        let strides = self.usize_seq(stride, "tensor stride")?;
        if shape.len() != strides.len() {
            return Err(self.err("tensor size and stride lengths differ"));
        }
        let bytes = self.storages.storage(key)?;
        if bytes.len() != numel * dtype.size() {
            return Err(self.err(format!(
                "storage {key}: {} bytes, expected {numel} x {} bytes",
                bytes.len(),
                dtype.size()
            )));
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err("tensor size overflows"))?;
        if count > 0 {
            // the last element a view touches must lie inside the storage
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(offset, |acc, (&d, &st)| {
                    (d - 1).checked_mul(st).and_then(|x| acc.checked_add(x))
                });
            if last.is_none_or(|l| l >= *numel) {
                return Err(self.err(format!("tensor view runs past storage {key}")));
            }
            if count > numel.saturating_mul(64).max(1 << 20) {
                return Err(self.err(format!(
                    "tensor view of {count} elements over storage {key} of {numel}"
                )));
            }
        }
        let all = decode_storage(*dtype, bytes);
        // Gather row-major with the saved strides.
        let mut index = Vec::with_capacity(count);
        if count > 0 {
            let mut idx = vec![0usize; shape.len()];
            for _ in 0..count {
                let flat = offset + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
                if flat >= *numel {
                    return Err(self.err(format!("tensor view runs past storage {key}")));
                }
                index.push(flat);
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        let data = match all {
            TensorData::F32(v) => TensorData::F32(index.iter().map(|&i| v[i]).collect()),
            TensorData::F64(v) => TensorData::F64(index.iter().map(|&i| v[i]).collect()),
            TensorData::Other(v) => TensorData::Other(index.iter().map(|&i| v[i]).collect()),
        };
        Ok(Value::Tensor(Box::new(Tensor {
            shape,
            strides,
            dtype: *dtype,
            data,
        })))
    }

    fn call(&mut self, func: Value, args: Value) -> Result<Value> {
        let Value::Object {
            global, args: None, ..
        } = &func
        else {
            return Err(self.err(format!("REDUCE on a non-callable {func:?}")));
        };
        let a = args.as_seq().map(<[Value]>::to_vec).unwrap_or_default();
        Ok(match global.as_str() {
            "collections.OrderedDict" | "builtins.dict" => Value::Dict(Vec::new()),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                self.rebuild_tensor(&a)?
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => a
                .into_iter()
                .next()
                .ok_or_else(|| self.err("_rebuild_parameter without arguments"))?,
            "torch.device" => Value::Str(
                a.iter()
                    .map(|v| match v {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        _ => String::new(),
                    })
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            "_codecs.encode" => match a.first() {
                // protocol-2 bytes: `encode(str, 'latin1')`
                Some(Value::Str(s)) => Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()),
                _ => return Err(self.err("_codecs.encode expects a string")),
            },
            "builtins.set" | "builtins.frozenset" | "builtins.list" | "builtins.tuple" => {
                Value::List(
                    a.first()
                        .and_then(Value::as_seq)
                        .map(<[Value]>::to_vec)
                        .unwrap_or_default(),
                )
            }
            _ => Value::Object {
                global: global.clone(),
                args: Some(Box::new(args)),
                state: None,
            },
        })
    }

    fn build(&mut self, obj: Value, state: Value) -> Result<Value> {
        match obj {
            Value::Object { global, args, .. }
                if global == "numpy.core.multiarray._reconstruct"
                    || global == "numpy._core.multiarray._reconstruct" =>
            {
                // state = (version, shape, dtype, is_fortran, raw)
                let s = state.as_seq().unwrap_or(&[]);
                if s.len() < 5 {
                    return Ok(Value::Object {
                        global,
                        args,
                        state: Some(Box::new(state)),
                    });
                }
                let shape = self.usize_seq(&s[1], "ndarray shape")?;
                let (code, little) = match &s[2] {
                    Value::Object {
                        args: Some(a),
                        state: st,
                        ..
                    } => {
                        let code = a
                            .as_seq()
                            .and_then(|x| x.first())
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let order = st
                            .as_ref()
                            .and_then(|st| st.as_seq())
                            .and_then(|x| x.get(1))
                            .and_then(Value::as_str)
                            .unwrap_or("<")
                            .to_string();
                        (code, order != ">")
                    }
                    _ => (String::new(), true),
                };
                let raw = match &s[4] {
                    Value::Bytes(b) => b.clone(),
                    Value::Str(st) => st.chars().map(|c| c as u32 as u8).collect(),
                    _ => Vec::new(),
                };
                let dt = match code.as_str() {
                    "f4" => Some(DType::F32),
                    "f8" => Some(DType::F64),
                    "i8" => Some(DType::I64),
                    "i4" => Some(DType::I32),
                    _ => None,
                };
                match dt {
                    Some(dt)
                        if little && raw.len() == shape.iter().product::<usize>() * dt.size() =>
                    {
                        let data = match decode_storage(dt, &raw) {
                            TensorData::F32(v) => v.into_iter().map(f64::from).collect(),
                            TensorData::F64(v) | TensorData::Other(v) => v,
                        };
                        Ok(Value::NdArray {
                            shape,
                            dtype: code,
                            data,
                        })
                    }
                    _ => Ok(Value::Object {
                        global,
                        args,
                        state: Some(Box::new(state)),
                    }),
                }
            }
            Value::Object { global, args, .. } => Ok(Value::Object {
                global,
                args,
                state: Some(Box::new(state)),
            }),
            // dict/OrderedDict: the state is the instance `__dict__` (e.g. torch's
            // `_metadata` on a state dict), not items.
            Value::Dict(items) => Ok(Value::Dict(items)),
            // Tensors/parameters: BUILD carries python attributes only.
            other => Ok(other),
        }
    }

    fn set_items(&mut self, pairs: Vec<Value>) -> Result<()> {
        if pairs.len() & 1 == 1 {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let err = self.err("SETITEM(S) on a non-dict");
        let Value::Dict(items) = self.top()? else {
            return Err(err);
        };
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let Some(slot) = items.iter_mut().find(|(kk, _)| *kk == k) {
                slot.1 = v;
            } else {
                items.push((k, v));
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto} not supported")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: length only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("LONG1 integer wider than 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(
                        b.try_into().unwrap_or([0; 8]),
                    )));
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.trim() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        t => Value::Int(t.parse().map_err(|_| self.err("bad INT"))?),
                    };
                    self.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push(Value::Str(b.iter().map(|&c| c as char).collect()));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.push(Value::Str(b.iter().map(|&c| c as char).collect()));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Object {
                        global: format!("{module}.{name}"),
                        args: None,
                        state: None,
                    });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Object {
                            global: format!("{m}.{n}"),
                            args: None,
                            state: None,
                        }),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(u64::from(k))?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(u64::from(k))?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    let v = self.memo_get(u64::from(k))?;
                    self.push(v);
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(u64::from(k))?;
                    self.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Value::Tuple(vec![a, b, c]));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let err = self.err("APPEND on a non-list");
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(err),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let err = self.err("APPENDS on a non-list");
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(err),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    let v = self.build(obj, state)?;
                    self.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v);
                }
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.pop()?;
                    self.push(v.clone());
                    self.push(v);
                }
                _ => {
                    self.pos = at;
                    return Err(self.err(format!("unsupported pickle opcode 0x{op:02x}")));
                }
            }
        }
    }
}

/// Evaluates a pickle whose storages come from `storages`.
pub fn unpickle<S: StorageSource>(entry: &str, data: &[u8], storages: &S) -> Result<Value> {
    let mut vm = Vm {
        data,
        pos: 0,
        entry,
        stack: Vec::new(),
        memo: HashMap::new(),
        storages,
    };
    let v = vm.run()?;
    resolve_storages(v, entry)
}

/// A bare storage left in the tree (not wrapped in a tensor) is an error.
fn resolve_storages(v: Value, entry: &str) -> Result<Value> {
    Ok(match v {
        Value::Storage(_, key, _) => {
            return Err(ModelError::Pickle {
                entry: entry.to_string(),
                pos: 0,
                why: format!("storage {key} not wrapped in a tensor"),
            })
        }
        Value::List(v) => Value::List(
            v.into_iter()
                .map(|x| resolve_storages(x, entry))
                .collect::<Result<_>>()?,
        ),
        Value::Tuple(v) => Value::Tuple(
            v.into_iter()
                .map(|x| resolve_storages(x, entry))
                .collect::<Result<_>>()?,
        ),
        Value::Dict(v) => Value::Dict(
            v.into_iter()
                .map(|(k, x)| Ok((k, resolve_storages(x, entry)?)))
                .collect::<Result<_>>()?,
        ),
        other => other,
    })
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// A loaded checkpoint: the model's state dict (name → tensor, in saved order) and `config`.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub state_dict: Vec<(String, Tensor)>,
    pub config: Value,
    /// The whole unpickled object (optimizer state etc. included).
    pub root: Value,
}

impl Checkpoint {
    /// Reads a `.pth` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(bytes)
    }

    /// Reads a `.pth` file from memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let zip = ZipArchive::new(bytes)?;
        let pkl = zip
            .names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .ok_or_else(|| ModelError::Zip("no <top>/data.pkl entry: not a torch.save zip".into()))?
            .to_string();
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        if let Ok(order) = zip.get(&format!("{prefix}byteorder")) {
            if order != b"little" {
                return Err(ModelError::Zip(format!(
                    "byteorder {:?}: only little-endian checkpoints are supported",
                    String::from_utf8_lossy(order)
                )));
            }
        }
        let storages = ZipStorages {
            zip: &zip,
            prefix: prefix.clone(),
        };
        let root = unpickle(&pkl, zip.get(&pkl)?, &storages)?;
        Self::from_value(root)
    }

    /// Splits an unpickled checkpoint dict into state dict and config.
    pub fn from_value(root: Value) -> Result<Self> {
        let sd = root
            .get("model_state_dict")
            .ok_or_else(|| ModelError::key("model_state_dict", "missing from the checkpoint"))?;
        let Value::Dict(items) = sd else {
            return Err(ModelError::key("model_state_dict", "is not a dict"));
        };
        let mut state_dict = Vec::with_capacity(items.len());
        for (k, v) in items {
            let name = k.as_str().ok_or_else(|| {
                ModelError::key(format!("{k:?}"), "state-dict key is not a string")
            })?;
            match v {
                Value::Tensor(t) => state_dict.push((name.to_string(), (**t).clone())),
                other => {
                    return Err(ModelError::key(
                        name,
                        format!("expected a tensor, found {}", short(other)),
                    ))
                }
            }
        }
        let config = root
            .get("config")
            .cloned()
            .ok_or_else(|| ModelError::key("config", "missing from the checkpoint"))?;
        Ok(Checkpoint {
            state_dict,
            config,
            root,
        })
    }

    /// A state-dict tensor by name.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.state_dict
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t)
            .ok_or_else(|| ModelError::key(name, "missing from model_state_dict"))
    }

    /// A tensor by name, checked to have `shape`, as f64.
    pub fn tensor_f64(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let t = self.tensor(name)?;
        if t.shape != shape {
            return Err(ModelError::key(
                name,
                format!("shape {:?}, expected {:?}", t.shape, shape),
            ));
        }
        if !matches!(t.dtype, DType::F32 | DType::F64) {
            return Err(ModelError::key(
                name,
                format!("dtype {:?} is not f32/f64", t.dtype),
            ));
        }
        Ok(t.to_f64())
    }

    /// Trainable-parameter count as torch reports it for SevenNet: every state-dict entry
    /// except e3nn's buffers (`output_mask`, the compiled TP's `_w3j_*` tables).
    pub fn parameter_count(&self) -> usize {
        self.state_dict
            .iter()
            .filter(|(k, _)| {
                !k.ends_with("output_mask")
                    && !k.rsplit('.').next().unwrap_or("").starts_with("_w3j")
            })
            .map(|(_, t)| t.numel())
            .sum()
    }

    /// A config field.
    pub fn config_field(&self, field: &str) -> Result<&Value> {
        self.config
            .get(field)
            .ok_or_else(|| ModelError::config(field, "missing from the checkpoint config"))
    }
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 60 {
        format!("{}…", &s[..60])
    } else {
        s
    }
}
