//! The CUDA backend (feature `cuda`): `equikern-cuda` on device buffers, f32 and f64.
//! Output buffers are uploaded full of NaN, so an element the kernels fail to write cannot
//! pass. Batch splitting: the lowered plans' `max_samples_per_dispatch` is clamped before the
//! tensor product is built from them (the runtime splits by the plan's value).

use std::sync::Arc;

use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use equikern_cuda::{CudaDevice, CudaSlice, CudaTensorProduct};
use equikern_plan::{lower, Direction, Dtype};

use super::{backend_err, clamp_dispatch, BoundOp, ConformanceBackend};
use crate::{Error, Prec, Result};

pub struct CudaBackend {
    dev: CudaDevice,
}

impl CudaBackend {
    /// Device 0, or why CUDA is not usable here.
    pub fn open() -> Result<Self> {
        let unavailable = |e: equikern_cuda::CudaError| Error::Unavailable {
            backend: "cuda".into(),
            why: e.to_string(),
        };
        equikern_cuda::availability().map_err(unavailable)?;
        let dev = CudaDevice::new(0).map_err(unavailable)?;
        Ok(CudaBackend { dev })
    }
}

impl ConformanceBackend for CudaBackend {
    fn name(&self) -> &str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!("cuda: {} ({})", self.dev.name(), self.dev.arch())
    }

    fn precisions(&self) -> Vec<Prec> {
        if self.dev.capabilities().f64 {
            vec![Prec::F32, Prec::F64]
        } else {
            vec![Prec::F32]
        }
    }

    fn deterministic(&self) -> bool {
        true
    }

    fn splits(&self, _prec: Prec) -> bool {
        true
    }

    fn bind(
        &self,
        tp: &Arc<TensorProduct>,
        prec: Prec,
        max_samples_per_dispatch: Option<u32>,
    ) -> Result<Box<dyn BoundOp + '_>> {
        let dtype = match prec {
            Prec::F32 => Dtype::F32,
            Prec::F64 => Dtype::F64,
        };
        let caps = self.dev.capabilities();
        let mut plans = Vec::new();
        for d in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            let mut p = lower(tp, d, dtype, &caps).map_err(|e| backend_err("cuda", e))?;
            clamp_dispatch(&mut p, max_samples_per_dispatch);
            plans.push(p);
        }
        let op =
            CudaTensorProduct::from_plans(&self.dev, plans).map_err(|e| backend_err("cuda", e))?;
        Ok(Box::new(CudaOp {
            op,
            tp: tp.clone(),
            prec,
        }))
    }
}

struct CudaOp {
    op: CudaTensorProduct,
    tp: Arc<TensorProduct>,
    prec: Prec,
}

trait Elem: equikern_cuda::Real + equikern_core::Real {}
impl Elem for f32 {}
impl Elem for f64 {}

fn err(e: equikern_cuda::CudaError) -> Error {
    backend_err("cuda", e)
}

impl CudaOp {
    fn up<T: Elem>(&self, v: &[f64]) -> Result<CudaSlice<T>> {
        let h: Vec<T> = v.iter().map(|&x| T::from_f64(x)).collect();
        self.op.device().upload(&h).map_err(err)
    }

    fn poisoned<T: Elem>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.op
            .device()
            .upload(&vec![T::from_f64(f64::NAN); n])
            .map_err(err)
    }

    fn down<T: Elem>(&self, s: &CudaSlice<T>, n: usize) -> Result<Vec<f64>> {
        let h = self.op.device().download(s, n).map_err(err)?;
        Ok(h.into_iter().map(|x| x.to_f64()).collect())
    }

    fn wlen(&self, batch: usize) -> usize {
        self.tp.weight_len(batch).unwrap_or(0)
    }

    fn forward_t<T: Elem>(&self, b: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        let (x, y, w) = (self.up::<T>(x)?, self.up::<T>(y)?, self.up::<T>(w)?);
        let n = b * self.tp.dim_out;
        let mut z = self.poisoned::<T>(n)?;
        self.op.forward_device(b, &x, &y, &w, &mut z).map_err(err)?;
        self.down(&z, n)
    }

    fn backward_t<T: Elem>(&self, b: usize, a: [&[f64]; 4]) -> Result<Grads<f64>> {
        let [x, y, w, gz] = a;
        let (x, y, w, gz) = (
            self.up::<T>(x)?,
            self.up::<T>(y)?,
            self.up::<T>(w)?,
            self.up::<T>(gz)?,
        );
        let (nx, ny, nw) = (b * self.tp.dim_in1, b * self.tp.dim_in2, self.wlen(b));
        let mut gx = self.poisoned::<T>(nx)?;
        let mut gy = self.poisoned::<T>(ny)?;
        let mut gw = self.poisoned::<T>(nw)?;
        self.op
            .backward_device(b, &x, &y, &w, &gz, &mut gx, &mut gy, &mut gw)
            .map_err(err)?;
        Ok(Grads {
            gx: self.down(&gx, nx)?,
            gy: self.down(&gy, ny)?,
            gw: self.down(&gw, nw)?,
        })
    }

    fn double_backward_t<T: Elem>(&self, b: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>> {
        let [x, y, w, gz, hx, hy, hw] = a;
        let (x, y, w, gz) = (
            self.up::<T>(x)?,
            self.up::<T>(y)?,
            self.up::<T>(w)?,
            self.up::<T>(gz)?,
        );
        let (hx, hy, hw) = (self.up::<T>(hx)?, self.up::<T>(hy)?, self.up::<T>(hw)?);
        let (nx, ny, nw, nz) = (
            b * self.tp.dim_in1,
            b * self.tp.dim_in2,
            self.wlen(b),
            b * self.tp.dim_out,
        );
        let mut dx = self.poisoned::<T>(nx)?;
        let mut dy = self.poisoned::<T>(ny)?;
        let mut dw = self.poisoned::<T>(nw)?;
        let mut dgz = self.poisoned::<T>(nz)?;
        self.op
            .double_backward_device(
                b, &x, &y, &w, &gz, &hx, &hy, &hw, &mut dx, &mut dy, &mut dw, &mut dgz,
            )
            .map_err(err)?;
        Ok(DoubleGrads {
            dx: self.down(&dx, nx)?,
            dy: self.down(&dy, ny)?,
            dw: self.down(&dw, nw)?,
            dgz: self.down(&dgz, nz)?,
        })
    }
}

impl BoundOp for CudaOp {
    fn forward(&self, batch: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        match self.prec {
            Prec::F32 => self.forward_t::<f32>(batch, x, y, w),
            Prec::F64 => self.forward_t::<f64>(batch, x, y, w),
        }
    }

    fn backward(
        &self,
        batch: usize,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        gz: &[f64],
    ) -> Result<Grads<f64>> {
        match self.prec {
            Prec::F32 => self.backward_t::<f32>(batch, [x, y, w, gz]),
            Prec::F64 => self.backward_t::<f64>(batch, [x, y, w, gz]),
        }
    }

    fn double_backward(&self, batch: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>> {
        match self.prec {
            Prec::F32 => self.double_backward_t::<f32>(batch, a),
            Prec::F64 => self.double_backward_t::<f64>(batch, a),
        }
    }
}
