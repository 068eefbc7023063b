//! Everything the CLI asks of the engine, in one place: when a facade API changes or a
//! backend lands, this is the only file that has to follow.

use equikern::core::oracle::{self, DoubleGrads, Grads, Real};
use equikern::core::spec::cost;
pub use equikern::core::{TensorProduct, TpSpec};

/// Scalar types the CLI reads, computes in and writes.
pub trait Elem: Real + npyz::Serialize + npyz::Deserialize + npyz::AutoSerialize {
    const NPY_DESCR: &'static str;
}

impl Elem for f32 {
    const NPY_DESCR: &'static str = "<f4";
}

impl Elem for f64 {
    const NPY_DESCR: &'static str = "<f8";
}

/// Execution backends the CLI knows by name, best first within [`Backend::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Cuda,
    Wgpu,
    Cpu,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Cuda, Backend::Wgpu, Backend::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cuda => "cuda",
            Backend::Wgpu => "wgpu",
            Backend::Cpu => "cpu",
        }
    }

    /// `Ok` if the backend can run here; otherwise why not, in one line.
    pub fn check_available(self) -> Result<(), String> {
        match self {
            Backend::Cpu => Ok(()),
            Backend::Wgpu | Backend::Cuda => Err(format!(
                "backend {} not available in this build/machine (available: cpu)",
                self.name()
            )),
        }
    }

    /// The best backend that is available here.
    pub fn best() -> Backend {
        Backend::ALL
            .into_iter()
            .find(|b| b.check_available().is_ok())
            .unwrap_or(Backend::Cpu)
    }
}

/// Parses and validates a spec (`TpSpec::from_json` + `build`).
pub fn build_spec(json: &str) -> Result<TensorProduct, String> {
    let spec = TpSpec::from_json(json).map_err(|e| e.to_string())?;
    spec.build().map_err(|e| e.to_string())
}

/// Loads a `{"problems": [...]}` suite and builds every problem.
pub fn build_suite(json: &str) -> Result<Vec<(String, TensorProduct)>, String> {
    let problems = equikern::core::spec::load_suite(json).map_err(|e| e.to_string())?;
    problems
        .into_iter()
        .map(|(label, spec)| {
            let tp = spec.build().map_err(|e| format!("{label}: {e}"))?;
            Ok((label, tp))
        })
        .collect()
}

/// Per-sample FLOPs and CG nonzeros (the engine's cost model, `spec::cost`).
pub struct Cost {
    pub cg_nnz: Vec<usize>,
    pub flops_forward: u64,
    pub flops_backward: u64,
}

pub fn cost(tp: &TensorProduct) -> Cost {
    let c = cost::cost(tp);
    Cost {
        cg_nnz: c.cg_nnz,
        flops_forward: c.flops_forward,
        flops_backward: c.flops_backward,
    }
}

/// Bytes moved per batch: (forward, backward, double backward), each tensor read or written once.
pub fn traffic(tp: &TensorProduct, batch: usize, elem_bytes: usize) -> (u64, u64, u64) {
    let t = cost::traffic(tp, batch, elem_bytes, true);
    (t.forward, t.backward, t.double_backward)
}

/// A tensor product prepared for repeated evaluation on one backend.
pub struct Runner<T: Elem> {
    oracle: oracle::Oracle<T>,
}

impl<T: Elem> Runner<T> {
    pub fn new(backend: Backend, tp: &TensorProduct) -> Result<Self, String> {
        backend.check_available()?;
        let oracle = oracle::Oracle::new(tp).map_err(|e| e.to_string())?;
        Ok(Runner { oracle })
    }

    pub fn forward(&self, batch: usize, x: &[T], y: &[T], w: &[T]) -> Result<Vec<T>, String> {
        self.oracle
            .forward(batch, x, y, w)
            .map_err(|e| e.to_string())
    }

    pub fn backward(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        gz: &[T],
    ) -> Result<Grads<T>, String> {
        self.oracle
            .backward(batch, x, y, w, gz)
            .map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn double_backward(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        gz: &[T],
        hx: &[T],
        hy: &[T],
        hw: &[T],
    ) -> Result<DoubleGrads<T>, String> {
        self.oracle
            .double_backward(batch, x, y, w, gz, hx, hy, hw)
            .map_err(|e| e.to_string())
    }
}
