//! Backends under test. Every backend takes and returns host data as `f64` slices whose
//! values are f32-representable on input (so the f32 and f64 runs of one case see the same
//! numbers); an f32 backend rounds nothing on the way in and widens its results exactly.

#[cfg(feature = "browser")]
pub mod browser;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod mutant;
#[cfg(feature = "wgpu")]
pub mod wgpu;
#[cfg(feature = "wgpu")]
pub mod wgpu_plan;

use std::sync::Arc;

use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;

use crate::{Error, Prec, Result};

/// One tensor product bound to one backend in one precision.
pub trait BoundOp {
    fn forward(&self, batch: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>>;
    fn backward(
        &self,
        batch: usize,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        gz: &[f64],
    ) -> Result<Grads<f64>>;
    /// `a = [x, y, w, gz, hx, hy, hw]`.
    fn double_backward(&self, batch: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>>;
}

/// A backend the suite can judge.
pub trait ConformanceBackend {
    /// Short name used in reports and `--backends` (`cpu`, `wgpu`, `cuda`, …).
    fn name(&self) -> &str;
    /// What it runs on (adapter, GPU name), for the report header.
    fn describe(&self) -> String;
    /// Precisions it supports, in report order.
    fn precisions(&self) -> Vec<Prec>;
    /// Whether two runs on the same inputs are promised to be bit-identical.
    fn deterministic(&self) -> bool;
    /// Bind `tp` in `prec`. `max_samples_per_dispatch` forces batch splitting where the
    /// backend has dispatches (ignored by backends that have none: see [`Self::splits`]).
    fn bind(
        &self,
        tp: &Arc<TensorProduct>,
        prec: Prec,
        max_samples_per_dispatch: Option<u32>,
    ) -> Result<Box<dyn BoundOp + '_>>;
    /// Whether `prec` runs through dispatches that a split override affects.
    fn splits(&self, prec: Prec) -> bool;
}

/// The backends the suite knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
    /// wgpu with capabilities clamped to WebGPU's minimums (browser-shaped plans); opt-in.
    WgpuWebgpu,
    /// Headless Chromium's WebGPU through the wasm package (`web/pkg`); opt-in.
    Browser,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
            BackendKind::WgpuWebgpu => "wgpu-webgpu",
            BackendKind::Browser => "browser",
        }
    }

    pub fn parse(s: &str) -> Result<BackendKind> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .chain([BackendKind::WgpuWebgpu, BackendKind::Browser])
            .find(|k| k.name() == s)
            .ok_or(Error::UnknownBackend(s))
    }

    /// Parse a comma-separated list (`cpu,wgpu`), keeping order, dropping repeats.
    pub fn parse_list(s: &str) -> Result<Vec<BackendKind>> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let k = Self::parse(part)?;
            if !v.contains(&k) {
                v.push(k);
            }
        }
        if v.is_empty() {
            return Err(Error::UnknownBackend(s.to_string()));
        }
        Ok(v)
    }

    /// Open this backend, or say why it is not present.
    pub fn open(self) -> Result<Box<dyn ConformanceBackend>> {
        match self {
            BackendKind::Cpu => Ok(Box::new(cpu::CpuBackend)),
            BackendKind::Wgpu => open_wgpu(false),
            BackendKind::WgpuWebgpu => open_wgpu(true),
            BackendKind::Cuda => open_cuda(),
            BackendKind::Browser => open_browser(),
        }
    }

    /// Whether `EQUIKERN_CONFORMANCE_REQUIRE_<NAME>=1` (`-` as `_`) makes this backend's
    /// absence an error rather than a skip (CI sets it for the backends it must run).
    pub fn required(self) -> bool {
        let var = format!(
            "EQUIKERN_CONFORMANCE_REQUIRE_{}",
            self.name().to_ascii_uppercase().replace('-', "_")
        );
        std::env::var(var).is_ok_and(|v| v == "1")
    }
}

#[cfg(feature = "browser")]
fn open_browser() -> Result<Box<dyn ConformanceBackend>> {
    Ok(Box::new(browser::BrowserBackend::open()?))
}

#[cfg(not(feature = "browser"))]
fn open_browser() -> Result<Box<dyn ConformanceBackend>> {
    Err(Error::Unavailable {
        backend: "browser".into(),
        why: "built without the `browser` feature".into(),
    })
}

#[cfg(feature = "wgpu")]
fn open_wgpu(webgpu_shaped: bool) -> Result<Box<dyn ConformanceBackend>> {
    Ok(Box::new(if webgpu_shaped {
        wgpu::WgpuBackend::open_webgpu_shaped()?
    } else {
        wgpu::WgpuBackend::open()?
    }))
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu(_webgpu_shaped: bool) -> Result<Box<dyn ConformanceBackend>> {
    Err(Error::Unavailable {
        backend: "wgpu".into(),
        why: "built without the `wgpu` feature".into(),
    })
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Box<dyn ConformanceBackend>> {
    Ok(Box::new(cuda::CudaBackend::open()?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Box<dyn ConformanceBackend>> {
    Err(Error::Unavailable {
        backend: "cuda".into(),
        why: "built without the `cuda` feature (cargo build --features cuda)".into(),
    })
}

/// Backends opened, and those skipped with the reason.
pub type Opened = (Vec<Box<dyn ConformanceBackend>>, Vec<(BackendKind, String)>);

/// Open every requested backend that is present; the others come back with the reason.
pub fn available_backends(kinds: &[BackendKind]) -> Opened {
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for &k in kinds {
        match k.open() {
            Ok(b) => ok.push(b),
            Err(e) => skipped.push((k, e.to_string())),
        }
    }
    (ok, skipped)
}

pub(crate) fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub(crate) fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub(crate) fn grads64(g: Grads<f32>) -> Grads<f64> {
    Grads {
        gx: to_f64(&g.gx),
        gy: to_f64(&g.gy),
        gw: to_f64(&g.gw),
    }
}

pub(crate) fn dgrads64(g: DoubleGrads<f32>) -> DoubleGrads<f64> {
    DoubleGrads {
        dx: to_f64(&g.dx),
        dy: to_f64(&g.dy),
        dw: to_f64(&g.dw),
        dgz: to_f64(&g.dgz),
    }
}

pub(crate) fn backend_err(backend: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: backend.to_string(),
        why: e.to_string(),
    }
}

/// Limit a lowered plan's dispatch size to `n` samples (rounded up to a whole number of
/// chunks when the plan has chunk kernels, as the lowering itself guarantees).
pub fn clamp_dispatch(plan: &mut equikern_plan::KernelPlan, n: Option<u32>) {
    if let Some(n) = n {
        let mut n = n.max(1);
        if let Some(c) = plan.chunk_size() {
            n = n.div_ceil(c).max(1) * c;
        }
        plan.max_samples_per_dispatch = plan.max_samples_per_dispatch.min(n);
    }
}
