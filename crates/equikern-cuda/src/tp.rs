//! `CudaTensorProduct`: the three directions of one tensor product, in one dtype, on one device.

use crate::compile::{self, CompileInfo, Loaded};
use crate::device::CudaDevice;
use crate::exec::{self, Ptrs};
use crate::{CudaError, Real, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use equikern_emit::cuda::{CudaOptions, Target};
use equikern_plan::{Dims, Direction, Dtype, KernelPlan, Tensor};
use std::sync::{Arc, Mutex};

const DIRS: [Direction; 3] = [
    Direction::Forward,
    Direction::Backward,
    Direction::DoubleBackward,
];

fn slot(d: Direction) -> usize {
    match d {
        Direction::Forward => 0,
        Direction::Backward => 1,
        Direction::DoubleBackward => 2,
    }
}

/// One tensor product ready to run on a [`CudaDevice`]. Modules are compiled (or fetched from
/// the caches) the first time a direction runs, or by [`CudaTensorProduct::prepare`].
pub struct CudaTensorProduct {
    dev: CudaDevice,
    dims: Dims,
    dtype: Dtype,
    plans: [Option<KernelPlan>; 3],
    loaded: [Mutex<Option<Arc<Loaded>>>; 3],
    opts: CudaOptions,
    /// `WPartial` scratch (bytes), grown on demand; its lock also serialises launches.
    scratch: Mutex<Option<CudaSlice<u8>>>,
}

impl std::fmt::Debug for CudaTensorProduct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTensorProduct")
            .field("device", &self.dev)
            .field("dims", &self.dims)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl CudaTensorProduct {
    /// Lowers forward, backward and double backward of `tp` for this device's capabilities.
    pub fn new(dev: &CudaDevice, tp: &TensorProduct, dtype: Dtype) -> Result<Self> {
        let caps = dev.capabilities();
        let plans = DIRS
            .iter()
            .map(|&d| {
                equikern_plan::lower(tp, d, dtype, &caps)
                    .map_err(|e| CudaError::Plan(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_plans(dev, plans)
    }

    /// From already-lowered plans (any subset of the directions, same dims and dtype).
    pub fn from_plans(dev: &CudaDevice, plans: Vec<KernelPlan>) -> Result<Self> {
        let first = plans
            .first()
            .ok_or_else(|| CudaError::Plan("no plans given".into()))?;
        // The tensor product's dims; a plan's own scratch length may differ per direction.
        let bare = |d: Dims| Dims { scratch: 0, ..d };
        let (dims, dtype) = (bare(first.dims), first.dtype);
        let mut slots: [Option<KernelPlan>; 3] = [None, None, None];
        for p in plans {
            if bare(p.dims) != dims || p.dtype != dtype {
                return Err(CudaError::Plan("plans disagree on dims or dtype".into()));
            }
            let i = slot(p.direction);
            if slots[i].is_some() {
                return Err(CudaError::Plan(format!("two {:?} plans", p.direction)));
            }
            slots[i] = Some(p);
        }
        Ok(CudaTensorProduct {
            dev: dev.clone(),
            dims,
            dtype,
            plans: slots,
            loaded: Default::default(),
            opts: CudaOptions::default(),
            scratch: Mutex::new(None),
        })
    }

    /// Printing options for the kernels (before the first run; resets compiled modules).
    pub fn with_options(mut self, opts: CudaOptions) -> Self {
        self.opts = opts;
        self.loaded = Default::default();
        self
    }

    pub fn options(&self) -> CudaOptions {
        self.opts
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn plan(&self, d: Direction) -> Option<&KernelPlan> {
        self.plans[slot(d)].as_ref()
    }

    /// Compiles (or loads from a cache) the module of direction `d` now; repeated calls are
    /// memory hits. Returns how the module was obtained.
    pub fn prepare(&self, d: Direction) -> Result<CompileInfo> {
        let was_loaded = self.loaded[slot(d)]
            .lock()
            .map(|l| l.is_some())
            .unwrap_or(false);
        let info = self.loaded(d)?.info.clone();
        Ok(if was_loaded {
            CompileInfo {
                level: crate::CacheLevel::Memory,
                emit_ms: 0.0,
                nvrtc_ms: 0.0,
                load_ms: 0.0,
                total_ms: 0.0,
                ..info
            }
        } else {
            info
        })
    }

    /// The CUDA source of direction `d` (what NVRTC compiles).
    pub fn source(&self, d: Direction) -> Result<String> {
        let plan = self.plan(d).ok_or(CudaError::MissingPlan(d))?;
        Ok(equikern_emit::cuda::emit_with(plan, Target::Cuda, self.opts)?.source)
    }

    fn loaded(&self, d: Direction) -> Result<Arc<Loaded>> {
        let plan = self.plan(d).ok_or(CudaError::MissingPlan(d))?;
        let mut slot = self.loaded[slot(d)]
            .lock()
            .map_err(|_| CudaError::Driver("poisoned lock".into()))?;
        if let Some(l) = slot.as_ref() {
            return Ok(l.clone());
        }
        let l = Arc::new(compile::load(&self.dev, plan, self.opts)?);
        *slot = Some(l.clone());
        Ok(l)
    }

    /// Elements buffer `t` must hold for `batch` samples.
    fn need(&self, t: Tensor, batch: u64) -> u64 {
        match self.dims.per_sample_len(t) {
            0 => self.dims.weight_numel as u64,
            len => batch * len as u64,
        }
    }

    /// Checks lengths, resolves pointers and runs direction `d`.
    fn run<T: Real>(
        &self,
        d: Direction,
        batch: usize,
        ins: &[(Tensor, &'static str, &CudaSlice<T>)],
        outs: &mut [(Tensor, &'static str, &mut CudaSlice<T>)],
    ) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(CudaError::Dtype {
                plan: self.dtype,
                data: T::DTYPE,
            });
        }
        let plan = self.plan(d).ok_or(CudaError::MissingPlan(d))?;
        let loaded = self.loaded(d)?;
        let batch = batch as u64;
        let used: Vec<Tensor> = plan
            .kernels
            .iter()
            .flat_map(|k| k.inputs.iter().chain(&k.outputs).copied())
            .collect();
        let check = |t: Tensor, arg: &'static str, len: usize| -> Result<()> {
            let expected = self.need(t, batch);
            if used.contains(&t) && (len as u64) < expected {
                return Err(CudaError::Length {
                    arg,
                    expected: expected as usize,
                    actual: len,
                });
            }
            Ok(())
        };
        let stream = self.dev.stream().clone();
        let mut ptrs: Ptrs = Vec::new();
        let mut guards = Vec::new();
        for (t, arg, s) in ins {
            check(*t, arg, s.len())?;
            let (p, g) = s.device_ptr(&stream);
            ptrs.push((*t, p));
            guards.push(g);
        }
        for (t, arg, s) in outs.iter_mut() {
            check(*t, arg, s.len())?;
            let (p, g) = s.device_ptr_mut(&stream);
            ptrs.push((*t, p));
            guards.push(g);
        }
        let mut scratch = self
            .scratch
            .lock()
            .map_err(|_| CudaError::Driver("poisoned lock".into()))?;
        // One runtime-owned buffer: `WPartial`, then the per-sample `Scratch` of split
        // gathers (whole batch; rebased per dispatch like any per-sample tensor).
        let es = std::mem::size_of::<T>() as u64;
        let wp_bytes = exec::wpartial_len(plan, batch).max(1) * es;
        let wp_bytes = wp_bytes.div_ceil(256) * 256;
        let bytes = (wp_bytes + batch * plan.dims.scratch as u64 * es) as usize;
        if scratch.as_ref().is_none_or(|s| s.len() < bytes) {
            *scratch = None;
            *scratch = Some(stream.alloc_zeros::<u8>(bytes)?);
        }
        let sbuf = scratch
            .as_mut()
            .ok_or_else(|| CudaError::Driver("scratch".into()))?;
        let (sp, sg) = sbuf.device_ptr_mut(&stream);
        ptrs.push((Tensor::WPartial, sp));
        ptrs.push((Tensor::Scratch, sp + wp_bytes));
        let r = exec::run(&self.dev, plan, &loaded, batch, &ptrs);
        drop(sg);
        drop(guards);
        r
    }

    // ---- device buffers -------------------------------------------------------------------

    /// `z = TP(x, y; w)` on device buffers (`z` needs `batch * dim_out` elements).
    pub fn forward_device<T: Real>(
        &self,
        batch: usize,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        w: &CudaSlice<T>,
        z: &mut CudaSlice<T>,
    ) -> Result<()> {
        use Tensor::*;
        self.run(
            Direction::Forward,
            batch,
            &[(X, "x", x), (Y, "y", y), (W, "w", w)],
            &mut [(Z, "z", z)],
        )
    }

    /// Gradients of `<gz, z>` w.r.t. x, y and w (summed over the batch for shared weights).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_device<T: Real>(
        &self,
        batch: usize,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        w: &CudaSlice<T>,
        gz: &CudaSlice<T>,
        gx: &mut CudaSlice<T>,
        gy: &mut CudaSlice<T>,
        gw: &mut CudaSlice<T>,
    ) -> Result<()> {
        use Tensor::*;
        self.run(
            Direction::Backward,
            batch,
            &[(X, "x", x), (Y, "y", y), (W, "w", w), (GZ, "gz", gz)],
            &mut [(GX, "gx", gx), (GY, "gy", gy), (GW, "gw", gw)],
        )
    }

    /// Double backward: tangents `hx, hy, hw` of the backward's outputs; writes `dx, dy, dw`
    /// (gradients w.r.t. x, y, w) and `dgz` (w.r.t. gz).
    #[allow(clippy::too_many_arguments)]
    pub fn double_backward_device<T: Real>(
        &self,
        batch: usize,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        w: &CudaSlice<T>,
        gz: &CudaSlice<T>,
        hx: &CudaSlice<T>,
        hy: &CudaSlice<T>,
        hw: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
        dy: &mut CudaSlice<T>,
        dw: &mut CudaSlice<T>,
        dgz: &mut CudaSlice<T>,
    ) -> Result<()> {
        use Tensor::*;
        self.run(
            Direction::DoubleBackward,
            batch,
            &[
                (X, "x", x),
                (Y, "y", y),
                (W, "w", w),
                (GZ, "gz", gz),
                (HX, "hx", hx),
                (HY, "hy", hy),
                (HW, "hw", hw),
            ],
            &mut [
                (DX, "dx", dx),
                (DY, "dy", dy),
                (DW, "dw", dw),
                (DGZ, "dgz", dgz),
            ],
        )
    }

    // ---- host slices ----------------------------------------------------------------------

    fn host_len(&self, t: Tensor, batch: usize) -> usize {
        self.need(t, batch as u64) as usize
    }

    fn check_host<T: Real>(
        &self,
        t: Tensor,
        arg: &'static str,
        s: &[T],
        batch: usize,
    ) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(CudaError::Dtype {
                plan: self.dtype,
                data: T::DTYPE,
            });
        }
        let expected = self.host_len(t, batch);
        if s.len() != expected {
            return Err(CudaError::Length {
                arg,
                expected,
                actual: s.len(),
            });
        }
        Ok(())
    }

    /// `z = TP(x, y; w)`: `x [batch, dim_in1]`, `y [batch, dim_in2]`, `w [batch, weight_numel]`
    /// or `[weight_numel]` (shared); returns `z [batch, dim_out]`.
    pub fn forward<T: Real>(&self, batch: usize, x: &[T], y: &[T], w: &[T]) -> Result<Vec<T>> {
        use Tensor::*;
        self.check_host(X, "x", x, batch)?;
        self.check_host(Y, "y", y, batch)?;
        self.check_host(W, "w", w, batch)?;
        let d = &self.dev;
        let (dx, dy, dw) = (d.upload(x)?, d.upload(y)?, d.upload(w)?);
        let mut z = d.zeros::<T>(self.host_len(Z, batch))?;
        self.forward_device(batch, &dx, &dy, &dw, &mut z)?;
        d.download(&z, self.host_len(Z, batch))
    }

    pub fn backward<T: Real>(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        gz: &[T],
    ) -> Result<Grads<T>> {
        use Tensor::*;
        self.check_host(X, "x", x, batch)?;
        self.check_host(Y, "y", y, batch)?;
        self.check_host(W, "w", w, batch)?;
        self.check_host(GZ, "grad_z", gz, batch)?;
        let d = &self.dev;
        let (dx, dy, dw, dgz) = (d.upload(x)?, d.upload(y)?, d.upload(w)?, d.upload(gz)?);
        let (nx, ny, nw) = (
            self.host_len(GX, batch),
            self.host_len(GY, batch),
            self.host_len(GW, batch),
        );
        let (mut gx, mut gy, mut gw) = (d.zeros(nx)?, d.zeros(ny)?, d.zeros(nw)?);
        self.backward_device(batch, &dx, &dy, &dw, &dgz, &mut gx, &mut gy, &mut gw)?;
        Ok(Grads {
            gx: d.download(&gx, nx)?,
            gy: d.download(&gy, ny)?,
            gw: d.download(&gw, nw)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn double_backward<T: Real>(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        gz: &[T],
        hx: &[T],
        hy: &[T],
        hw: &[T],
    ) -> Result<DoubleGrads<T>> {
        use Tensor::*;
        for (t, a, s) in [
            (X, "x", x),
            (Y, "y", y),
            (W, "w", w),
            (GZ, "grad_z", gz),
            (HX, "hx", hx),
            (HY, "hy", hy),
            (HW, "hw", hw),
        ] {
            self.check_host(t, a, s, batch)?;
        }
        let d = &self.dev;
        let up = |s: &[T]| d.upload(s);
        let (bx, by, bw, bgz) = (up(x)?, up(y)?, up(w)?, up(gz)?);
        let (bhx, bhy, bhw) = (up(hx)?, up(hy)?, up(hw)?);
        let n = |t| self.host_len(t, batch);
        let (mut dx, mut dy, mut dw, mut dgz) = (
            d.zeros(n(DX))?,
            d.zeros(n(DY))?,
            d.zeros(n(DW))?,
            d.zeros(n(DGZ))?,
        );
        self.double_backward_device(
            batch, &bx, &by, &bw, &bgz, &bhx, &bhy, &bhw, &mut dx, &mut dy, &mut dw, &mut dgz,
        )?;
        Ok(DoubleGrads {
            dx: d.download(&dx, n(DX))?,
            dy: d.download(&dy, n(DY))?,
            dw: d.download(&dw, n(DW))?,
            dgz: d.download(&dgz, n(DGZ))?,
        })
    }

    /// Device time of direction `d` at `batch` (inputs filled with fixed pseudo-random values):
    /// `warmup` untimed runs, then `reps` runs each timed with CUDA events.
    pub fn time<T: Real + From<f32>>(
        &self,
        d: Direction,
        batch: usize,
        warmup: usize,
        reps: usize,
    ) -> Result<crate::Timing> {
        use Tensor::*;
        let dev = &self.dev;
        let plan = self.plan(d).ok_or(CudaError::MissingPlan(d))?;
        let used: Vec<Tensor> = plan
            .kernels
            .iter()
            .flat_map(|k| k.inputs.iter().chain(&k.outputs).copied())
            .collect();
        // Tensors the plan never touches get a one-element placeholder.
        let len = |t: Tensor| match used.contains(&t) {
            true => self.host_len(t, batch),
            false => 1,
        };
        let fill = |t: Tensor, seed: u32| -> Result<CudaSlice<T>> {
            let n = len(t);
            let mut s = seed.wrapping_mul(2_654_435_761).max(1);
            let v: Vec<T> = (0..n)
                .map(|_| {
                    // xorshift: reproducible inputs without a dependency.
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    T::from((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
                })
                .collect();
            dev.upload(&v)
        };
        let ins: Vec<(Tensor, CudaSlice<T>)> = [X, Y, W, GZ, HX, HY, HW]
            .iter()
            .enumerate()
            .map(|(i, &t)| Ok((t, fill(t, i as u32 + 1)?)))
            .collect::<Result<_>>()?;
        let mut outs: Vec<(Tensor, CudaSlice<T>)> = [Z, GX, GY, GW, DX, DY, DW, DGZ]
            .iter()
            .map(|&t| Ok((t, dev.zeros(len(t))?)))
            .collect::<Result<_>>()?;
        let names = |t: Tensor| -> &'static str {
            match t {
                X => "x",
                Y => "y",
                W => "w",
                GZ => "gz",
                HX => "hx",
                HY => "hy",
                HW => "hw",
                _ => "out",
            }
        };
        let mut once = || -> Result<()> {
            let i: Vec<(Tensor, &'static str, &CudaSlice<T>)> =
                ins.iter().map(|(t, s)| (*t, names(*t), s)).collect();
            let mut o: Vec<(Tensor, &'static str, &mut CudaSlice<T>)> =
                outs.iter_mut().map(|(t, s)| (*t, "out", s)).collect();
            self.run(d, batch, &i, &mut o)
        };
        crate::timing::measure(dev, warmup, reps, &mut once)
    }
}
