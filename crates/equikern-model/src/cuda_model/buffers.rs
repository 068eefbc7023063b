//! Device buffers of the CUDA evaluator: grow-only, counted in one [`Mem`].

use crate::error::{ModelError, Result};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes held by the evaluator's own device buffers (parameters and workspace), and the
/// largest total seen.
#[derive(Debug, Default)]
pub struct Mem {
    pub live: AtomicU64,
    pub peak: AtomicU64,
    pub transfer_ns: AtomicU64,
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Mem {
    pub fn alloc(&self, bytes: u64, extra: u64) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now + extra, Ordering::Relaxed);
    }
    pub fn free(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
    pub fn bump(&self, extra: u64) {
        let now = self.live.load(Ordering::Relaxed) + extra;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

pub fn drv(e: impl std::fmt::Display) -> ModelError {
    ModelError::backend("cuda", e)
}

/// A device buffer that only grows: [`Buf::ensure`] reallocates when asked for more than it
/// holds, never otherwise, so a step on a structure no larger than a previous one allocates
/// nothing.
pub struct Buf<T> {
    pub s: CudaSlice<T>,
    mem: Arc<Mem>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Buf<T> {
    pub fn new(stream: &Arc<CudaStream>, mem: &Arc<Mem>) -> Result<Self> {
        let s = stream.alloc_zeros::<T>(1).map_err(drv)?;
        mem.alloc(std::mem::size_of::<T>() as u64, 0);
        Ok(Buf {
            s,
            mem: mem.clone(),
        })
    }

    /// A buffer holding `data` (parameters: uploaded once).
    pub fn from_host(stream: &Arc<CudaStream>, mem: &Arc<Mem>, data: &[T]) -> Result<Self> {
        let mut b = Self::new(stream, mem)?;
        b.ensure(stream, data.len())?;
        if !data.is_empty() {
            stream
                .memcpy_htod(data, &mut b.s.slice_mut(0..data.len()))
                .map_err(drv)?;
        }
        Ok(b)
    }

    /// At least `n` elements (contents undefined after a reallocation).
    pub fn ensure(&mut self, stream: &Arc<CudaStream>, n: usize) -> Result<()> {
        if self.s.len() >= n.max(1) {
            return Ok(());
        }
        let es = std::mem::size_of::<T>() as u64;
        let old = self.s.len() as u64 * es;
        // Free first, so the peak is old workspace + new, not both.
        self.s = stream.alloc_zeros::<T>(1).map_err(drv)?;
        self.mem.free(old);
        self.s = stream.alloc_zeros::<T>(n).map_err(|e| {
            ModelError::backend(
                "cuda",
                format!(
                    "allocating {n} elements ({:.1} MiB): {e}",
                    (n as u64 * es) as f64 / (1u64 << 20) as f64
                ),
            )
        })?;
        self.mem.alloc(n as u64 * es, 0);
        Ok(())
    }

    /// Gives the memory back (keeps one element).
    pub fn release(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        if self.s.len() > 1 {
            let old = self.bytes();
            self.s = stream.alloc_zeros::<T>(1).map_err(drv)?;
            self.mem.free(old);
            self.mem.alloc(std::mem::size_of::<T>() as u64, 0);
        }
        Ok(())
    }

    /// Elements held (≥ every size asked for so far).
    pub fn capacity(&self) -> usize {
        self.s.len()
    }

    pub fn bytes(&self) -> u64 {
        self.s.len() as u64 * std::mem::size_of::<T>() as u64
    }
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        self.mem
            .free(self.s.len() as u64 * std::mem::size_of::<T>() as u64);
    }
}
