//! [`AutoList`]: which builder a model evaluator uses for a structure's radius graph.

use crate::error::{ModelError, Result};
#[cfg(not(feature = "cuda"))]
#[allow(unused_imports)] // doc links
use crate::graph::Graph;
#[cfg(feature = "cuda")]
use crate::graph::{Graph, Structure};

/// Atoms from which the CUDA list is used on a CUDA evaluator when
/// `EQUIKERN_GPU_NL_MIN_ATOMS` is not set (below it, [`Graph::build`] on the host). A first
/// guess, to be replaced by the measured crossover (`tests/neighbours_cuda.rs` prints both
/// times; `equikern bench --model` reports `neighbour_list` ms either way): on the 2-core
/// development machine `Graph::build` takes about 8.5 µs per atom at 5 Å in Si (3.5 ms for
/// 512 atoms, 35 ms for 4 096, 400 ms for 32 768), while the device list costs about ten
/// launches, two small transfers and a download of 56 bytes per edge.
pub const GPU_MIN_ATOMS: usize = 1024;

/// The neighbour-list choice of an evaluator: the host [`Graph::build`], or on a CUDA device
/// [`super::CudaNeighbourList`] for systems of at least [`Self::min_atoms`] atoms (the
/// same graph, edge for edge). The device list is made on first use and reused (its
/// buffers only grow).
pub struct AutoList {
    min_atoms: Option<usize>,
    #[cfg(feature = "cuda")]
    list: std::sync::Mutex<Option<super::CudaNeighbourList>>,
}

impl Default for AutoList {
    fn default() -> Self {
        Self::with_min_atoms(Some(GPU_MIN_ATOMS))
    }
}

impl AutoList {
    /// `min_atoms`: from how many atoms the device list is used (`None`: never).
    pub fn with_min_atoms(min_atoms: Option<usize>) -> Self {
        AutoList {
            min_atoms,
            #[cfg(feature = "cuda")]
            list: std::sync::Mutex::new(None),
        }
    }

    /// From `EQUIKERN_GPU_NL_MIN_ATOMS`: a number of atoms, or `off`; unset: [`GPU_MIN_ATOMS`].
    pub fn from_env() -> Result<Self> {
        match std::env::var("EQUIKERN_GPU_NL_MIN_ATOMS") {
            Err(_) => Ok(Self::default()),
            Ok(v) if v.trim() == "off" => Ok(Self::with_min_atoms(None)),
            Ok(v) => v
                .trim()
                .parse()
                .map(|n| Self::with_min_atoms(Some(n)))
                .map_err(|_| {
                    ModelError::input(
                        "EQUIKERN_GPU_NL_MIN_ATOMS",
                        format!("{v:?}: expected a number of atoms or \"off\""),
                    )
                }),
        }
    }

    /// From how many atoms the device list is used (`None`: never).
    pub fn min_atoms(&self) -> Option<usize> {
        self.min_atoms
    }

    /// Device memory held by the device list's buffers (0 before its first use).
    pub fn device_bytes(&self) -> u64 {
        #[cfg(feature = "cuda")]
        if let Ok(g) = self.list.lock() {
            return g.as_ref().map_or(0, |l| l.device_bytes() as u64);
        }
        0
    }

    /// Whether a structure of `atoms` atoms gets the device list on a CUDA device.
    pub fn uses_device(&self, atoms: usize) -> bool {
        self.min_atoms.is_some_and(|m| atoms >= m)
    }

    /// The radius graph of `s` on `dev` ([`super::CudaNeighbourList`], made on first use).
    #[cfg(feature = "cuda")]
    pub fn build_on(
        &self,
        dev: &equikern::cuda_runtime::CudaDevice,
        s: &Structure,
        cutoff: f64,
    ) -> Result<Graph> {
        self.with_device_list(dev, s, cutoff, |list| list.download())
            .map(|r| r.0)
    }

    /// Builds the radius graph of `s` on `dev` and hands the list, still on the device, to
    /// `f`; returns `f`'s result and the seconds the build took (its edge count read back).
    #[cfg(feature = "cuda")]
    pub fn with_device_list<R>(
        &self,
        dev: &equikern::cuda_runtime::CudaDevice,
        s: &Structure,
        cutoff: f64,
        f: impl FnOnce(&super::CudaNeighbourList) -> Result<R>,
    ) -> Result<(R, f64)> {
        let t0 = std::time::Instant::now();
        let mut guard = self
            .list
            .lock()
            .map_err(|_| ModelError::backend("cuda neighbour list", "a previous build panicked"))?;
        if guard.is_none() {
            *guard = Some(super::CudaNeighbourList::new(dev)?);
        }
        let list = guard.as_mut().expect("made above");
        list.build(s, cutoff)?;
        let nl_s = t0.elapsed().as_secs_f64();
        Ok((f(list)?, nl_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<AutoList>();
    }

    #[test]
    fn threshold() {
        let a = AutoList::with_min_atoms(Some(100));
        assert!(!a.uses_device(99) && a.uses_device(100));
        assert!(!AutoList::with_min_atoms(None).uses_device(usize::MAX));
        assert_eq!(AutoList::default().min_atoms(), Some(GPU_MIN_ATOMS));
    }
}
