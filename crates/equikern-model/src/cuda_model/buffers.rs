//! Device buffers of the CUDA evaluator: grow-only, counted in one [`Mem`].

use super::exec::{Memory, Pod};
use crate::error::{ModelError, Result};
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
    /// Allocations and frees so far: a buffer that may have moved changes it (the key of a
    /// recorded step includes it).
    pub generation: AtomicU64,
}

impl Mem {
    pub fn alloc(&self, bytes: u64, extra: u64) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now + extra, Ordering::Relaxed);
    }
    pub fn free(&self, bytes: u64) {
        self.generation.fetch_add(1, Ordering::Relaxed);
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
pub struct Buf<E: Pod, D: Memory> {
    pub s: D::Buf<E>,
    mem: Arc<Mem>,
}

impl<E: Pod, D: Memory> Buf<E, D> {
    pub fn new(d: &D, mem: &Arc<Mem>) -> Result<Self> {
        let s = d.alloc::<E>(1)?;
        mem.alloc(std::mem::size_of::<E>() as u64, 0);
        Ok(Buf {
            s,
            mem: mem.clone(),
        })
    }

    /// A buffer holding `data` (parameters: uploaded once).
    pub fn from_host(d: &D, mem: &Arc<Mem>, data: &[E]) -> Result<Self> {
        let mut b = Self::new(d, mem)?;
        b.ensure(d, data.len())?;
        if !data.is_empty() {
            d.upload(data, &mut b.s)?;
        }
        Ok(b)
    }

    /// At least `n` elements (contents undefined after a reallocation).
    pub fn ensure(&mut self, d: &D, n: usize) -> Result<()> {
        if self.capacity() >= n.max(1) {
            return Ok(());
        }
        let es = std::mem::size_of::<E>() as u64;
        let old = self.bytes();
        // Free first, so the peak is old workspace + new, not both.
        self.s = d.alloc::<E>(1)?;
        self.mem.free(old);
        self.s = d.alloc::<E>(n).map_err(|e| {
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
    pub fn release(&mut self, d: &D) -> Result<()> {
        if self.capacity() > 1 {
            let old = self.bytes();
            self.s = d.alloc::<E>(1)?;
            self.mem.free(old);
            self.mem.alloc(std::mem::size_of::<E>() as u64, 0);
        }
        Ok(())
    }

    /// Elements held (≥ every size asked for so far).
    pub fn capacity(&self) -> usize {
        D::capacity(&self.s)
    }

    pub fn bytes(&self) -> u64 {
        self.capacity() as u64 * std::mem::size_of::<E>() as u64
    }
}

impl<E: Pod, D: Memory> Drop for Buf<E, D> {
    fn drop(&mut self) {
        self.mem.free(self.bytes());
    }
}
