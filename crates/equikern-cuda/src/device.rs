//! One CUDA device: context, stream, capabilities, in-memory module cache.

use crate::{CudaError, Result};
use cudarc::driver::sys::CUdevice_attribute as A;
use cudarc::driver::{CudaContext, CudaModule, CudaStream};
use equikern_plan::Capabilities;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// `Ok` when libcuda and libnvrtc load and at least one device exists; otherwise the reason.
/// Cheap to call repeatedly; never panics (cudarc panics if used without the libraries).
pub fn availability() -> Result<()> {
    // SAFETY: only tries to dlopen the libraries by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NotAvailable("libcuda not found".into()));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NotAvailable("libnvrtc not found".into()));
    }
    guard(|| {
        cudarc::driver::result::init()?;
        Ok(CudaContext::device_count()?)
    })
    .map_err(|e| CudaError::NotAvailable(e.to_string()))
    .and_then(|n| match n {
        0 => Err(CudaError::NotAvailable("no CUDA device".into())),
        _ => Ok(()),
    })
}

/// Runs a driver call, turning an unexpected panic inside cudarc (a symbol missing from an old
/// driver, say) into an error.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(CudaError::Driver("the CUDA library panicked".into())))
}

pub(crate) struct Inner {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    pub cc: (i32, i32),
    pub caps: Capabilities,
    /// Max grid dimensions `[x, y]` of the device.
    pub max_grid: [u32; 2],
    pub modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    pub cache_dir: Option<PathBuf>,
}

/// A CUDA device with one stream. Cheap to clone (shared).
#[derive(Clone)]
pub struct CudaDevice {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("name", &self.inner.name)
            .field("arch", &self.arch())
            .finish()
    }
}

/// Disk cache directory: `$EQUIKERN_CACHE_DIR`, else `~/.cache/equikern/cuda`.
fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("EQUIKERN_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/equikern/cuda"))
}

impl CudaDevice {
    /// Opens device `ordinal` (0 for the first GPU).
    pub fn new(ordinal: usize) -> Result<Self> {
        availability()?;
        guard(|| Self::open(ordinal))
    }

    fn open(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal)?;
        // All of this device's work goes to one stream of its own, not the legacy default
        // stream, which cannot be captured into a CUDA graph (a recorded model step). With
        // one stream, cudarc's per-buffer events (cross-stream ordering) are dead weight.
        // SAFETY: every buffer made through this device is used on `stream` only (the one
        // stream this crate and its users are handed), so no cross-stream ordering is lost.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let at = |a: A| -> Result<u32> { Ok(ctx.attribute(a)?.max(0) as u32) };
        let cc = ctx.compute_capability()?;
        let max_grid = [
            at(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?,
            at(A::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?,
        ];
        let caps = Capabilities {
            subgroup_size: at(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?,
            subgroups: true,
            warp_shuffles: true,
            max_invocations_per_workgroup: at(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            max_workgroup_size_x: at(A::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?,
            workgroup_memory_bytes: at(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            // Pointers are 64-bit: a "binding" is as large as device memory.
            max_storage_binding_bytes: ctx.total_mem()? as u64,
            // The plan's 2-D grid uses one limit for both dimensions.
            max_workgroups_per_dim: max_grid[0].min(max_grid[1]),
            // Kernel parameters are pointers in 4 KiB of parameter space.
            max_storage_buffers_per_stage: 256,
            f64: true,
            float_atomics: true,
        };
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                name: ctx.name()?,
                ctx,
                stream,
                cc,
                caps,
                max_grid,
                modules: Mutex::new(HashMap::new()),
                cache_dir: default_cache_dir(),
            }),
        })
    }

    /// Same device, with the on-disk module cache in `dir` (`None`: memory cache only).
    pub fn with_cache_dir(self, dir: Option<PathBuf>) -> Self {
        let i = &self.inner;
        CudaDevice {
            inner: Arc::new(Inner {
                ctx: i.ctx.clone(),
                stream: i.stream.clone(),
                name: i.name.clone(),
                cc: i.cc,
                caps: i.caps,
                max_grid: i.max_grid,
                modules: Mutex::new(HashMap::new()),
                cache_dir: dir,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.cc
    }

    /// NVRTC architecture of this device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.inner.cc.0, self.inner.cc.1)
    }

    /// What the lowering may assume about this device.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    pub fn cache_dir(&self) -> Option<&PathBuf> {
        self.inner.cache_dir.as_ref()
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The stream every launch of this crate goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: crate::Real>(&self, data: &[T]) -> Result<cudarc::driver::CudaSlice<T>> {
        // Zero-length allocations are invalid in CUDA: keep at least one element.
        let mut d = self.inner.stream.alloc_zeros::<T>(data.len().max(1))?;
        if !data.is_empty() {
            self.inner
                .stream
                .memcpy_htod(data, &mut d.slice_mut(0..data.len()))?;
        }
        Ok(d)
    }

    /// A zeroed device buffer of `len` elements (at least one is allocated).
    pub fn zeros<T: crate::Real>(&self, len: usize) -> Result<cudarc::driver::CudaSlice<T>> {
        Ok(self.inner.stream.alloc_zeros::<T>(len.max(1))?)
    }

    /// Copies the first `len` elements of a device buffer back to the host.
    pub fn download<T: crate::Real>(
        &self,
        d: &cudarc::driver::CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        if d.len() < len {
            return Err(CudaError::Length {
                arg: "download",
                expected: len,
                actual: d.len(),
            });
        }
        Ok(self.inner.stream.clone_dtoh(&d.slice(0..len))?)
    }

    pub fn synchronize(&self) -> Result<()> {
        Ok(self.inner.stream.synchronize()?)
    }
}
