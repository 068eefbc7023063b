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
