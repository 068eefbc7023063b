//! `.npy` I/O through `npyz`: little-endian float32/float64, C order only.

use crate::error::{CliError, Result};
use npyz::WriterBuilder;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A dense row-major array as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Array {
    pub fn dtype(&self) -> Dtype {
        match self.data {
            Data::F32(_) => Dtype::F32,
            Data::F64(_) => Dtype::F64,
        }
    }

    /// The values converted to `T` (exact for f32 -> f64; rounds for f64 -> f32).
    pub fn to_vec<T: crate::engine::Elem>(&self) -> Vec<T> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&a| T::from_f64(a as f64)).collect(),
            Data::F64(v) => v.iter().map(|&a| T::from_f64(a)).collect(),
        }
    }
}

pub fn shape_str(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Reads `path`; `what` names the flag (`--x`) for error messages.
pub fn read(what: &str, path: &Path) -> Result<Array> {
    let ctx = |why: String| CliError::input(format!("{what} {}: {why}", path.display()));
    let f = File::open(path).map_err(|e| ctx(format!("cannot open: {e}")))?;
    check_header_shape(path).map_err(ctx)?;
    let npy = npyz::NpyFile::new(BufReader::new(f))
        .map_err(|e| ctx(format!("not a valid .npy file: {e}")))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(ctx(
            "Fortran-order array: save it in C order (numpy.ascontiguousarray)".into(),
        ));
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data = match descr.as_str() {
        "<f8" => Data::F64(
            npy.into_vec::<f64>()
                .map_err(|e| ctx(format!("cannot read data: {e}")))?,
        ),
        "<f4" => Data::F32(
            npy.into_vec::<f32>()
                .map_err(|e| ctx(format!("cannot read data: {e}")))?,
        ),
        other => {
            return Err(ctx(format!(
                "unsupported dtype {other}: expected little-endian float64 (<f8) or float32 (<f4)"
            )))
        }
    };
    Ok(Array { shape, data })
}

/// Reads a 1-D integer index array (`<i4`, `<i8`, `<u4`, `<u8`) as `i128` values (never
/// truncated, so a bad index is reported as stored).
pub fn read_index(what: &str, path: &Path) -> Result<Vec<i128>> {
    let ctx = |why: String| CliError::input(format!("{what} {}: {why}", path.display()));
    let f = File::open(path).map_err(|e| ctx(format!("cannot open: {e}")))?;
    check_header_shape(path).map_err(ctx)?;
    let npy = npyz::NpyFile::new(BufReader::new(f))
        .map_err(|e| ctx(format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape.len() != 1 {
        return Err(ctx(format!(
            "expected a 1-D index array [edges], got shape {}",
            shape_str(&shape)
        )));
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    let bad = |e: std::io::Error| ctx(format!("cannot read data: {e}"));
    Ok(match descr.as_str() {
        "<i4" => npy
            .into_vec::<i32>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        "<i8" => npy
            .into_vec::<i64>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        "<u4" => npy
            .into_vec::<u32>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        "<u8" => npy
            .into_vec::<u64>()
            .map_err(bad)?
            .into_iter()
            .map(i128::from)
            .collect(),
        other => {
            return Err(ctx(format!(
                "unsupported index dtype {other}: expected int32, int64, uint32 or uint64"
            )))
        }
    })
}

/// Rejects a header whose shape overflows or asks for more data than the file holds, before
/// `npyz` sees it (it would overflow computing the element count, or allocate for it).
fn check_header_shape(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let file_len = std::fs::metadata(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .len();
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut pre = [0u8; 12];
    if f.read_exact(&mut pre[..10]).is_err() || &pre[..6] != b"\x93NUMPY" {
        return Err("not a valid .npy file: bad magic string".into());
    }
    let (hlen, start) = if pre[6] == 1 {
        (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10u64)
    } else {
        f.read_exact(&mut pre[10..12])
            .map_err(|_| "not a valid .npy file: truncated header".to_string())?;
        (
            u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
            12u64,
        )
    };
    if start + hlen > file_len {
        return Err("not a valid .npy file: truncated header".into());
    }
    let mut header = vec![0u8; hlen as usize];
    f.read_exact(&mut header)
        .map_err(|_| "not a valid .npy file: truncated header".to_string())?;
    let header = String::from_utf8_lossy(&header);
    // The shape is a tuple of integers: "'shape': (3, 12), ".
    let Some(dims) = header
        .split_once("'shape':")
        .and_then(|(_, rest)| rest.split_once('('))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside)
    else {
        return Ok(()); // let npyz report the malformed header
    };
    let mut count: u64 = 1;
    let mut shape = Vec::new();
    for d in dims.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let d: u64 = d
            .parse()
            .map_err(|_| format!("not a valid .npy file: shape ({dims})"))?;
        shape.push(d as usize);
        count = count
            .checked_mul(d)
            .ok_or_else(|| format!("shape {} is too large", shape_str(&shape)))?;
    }
    // Item size from the type string ('<f8' -> 8); 1 when it has no size (checked on read).
    let item: u64 = header
        .split_once("'descr':")
        .and_then(|(_, rest)| rest.split('\'').nth(1))
        .map(|d| d.trim_start_matches(|c: char| !c.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let need = count.saturating_mul(item);
    let have = file_len - start - hlen;
    if need > have {
        return Err(format!(
            "truncated: shape ({dims}) needs {need} data bytes, the file has {have}"
        ));
    }
    Ok(())
}

/// Writes a C-order little-endian array of `T` with the given shape.
pub fn write<T: crate::engine::Elem>(
    what: &str,
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<()> {
    let ctx = |why: String| CliError::input(format!("{what} {}: {why}", path.display()));
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let f = File::create(path).map_err(|e| ctx(format!("cannot create: {e}")))?;
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let dtype = npyz::DType::Plain(T::NPY_DESCR.parse().expect("static type string"));
    let mut w = npyz::WriteOptions::new()
        .dtype(dtype)
        .shape(&dims)
        .writer(BufWriter::new(f))
        .begin_nd()
        .map_err(|e| ctx(format!("cannot write: {e}")))?;
    w.extend(data.iter().copied())
        .map_err(|e| ctx(format!("cannot write: {e}")))?;
    w.finish().map_err(|e| ctx(format!("cannot write: {e}")))
}
