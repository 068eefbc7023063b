//! Everything the CLI asks of the engine, in one place: when a facade API changes or a
//! backend lands, this is the only file that has to follow.

use equikern::core::oracle::{self, DoubleGrads, Grads, Real};
use equikern::core::spec::cost;
pub use equikern::core::{TensorProduct, TpSpec};
use equikern::{Device, TensorProductOp};
use std::sync::OnceLock;

/// Scalar types the CLI reads, computes in and writes.
pub trait Elem: Real + npyz::Serialize + npyz::Deserialize + npyz::AutoSerialize {
    const NPY_DESCR: &'static str;
    const NAME: &'static str;
}

impl Elem for f32 {
    const NPY_DESCR: &'static str = "<f4";
    const NAME: &'static str = "f32";
}

impl Elem for f64 {
    const NPY_DESCR: &'static str = "<f8";
    const NAME: &'static str = "f64";
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
        self.device().map(drop)
    }

    /// The facade device for this backend, opened once per process (adapter search is slow).
    fn device(self) -> Result<&'static Device, String> {
        static WGPU: OnceLock<Result<Device, String>> = OnceLock::new();
        static CPU: OnceLock<Device> = OnceLock::new();
        match self {
            Backend::Cpu => Ok(CPU.get_or_init(Device::cpu)),
            Backend::Wgpu => WGPU
                .get_or_init(|| {
                    Device::new(equikern::Backend::Wgpu).map_err(|e| {
                        format!("backend wgpu not available in this build/machine: {e}")
                    })
                })
                .as_ref()
                .map_err(Clone::clone),
            Backend::Cuda => Err("backend cuda not available in this build/machine".into()),
        }
    }

    /// What runs the kernels, for reports: "cpu (f64 oracle)" or the adapter name.
    pub fn describe(self) -> String {
        match self {
            Backend::Cpu => "CPU oracle".into(),
            _ => self
                .device()
                .map(|d| d.name())
                .unwrap_or_else(|e| e.to_string()),
        }
    }

    /// True when the backend runs on a GPU (wgpu on a CPU adapter such as lavapipe is not).
    pub fn is_gpu(self) -> bool {
        match self {
            Backend::Cpu => false,
            // wgpu names an adapter "<name> (<api>, <device type>)"; lavapipe's type is Cpu.
            Backend::Wgpu => self.device().is_ok_and(|d| !d.name().ends_with(", Cpu)")),
            Backend::Cuda => true,
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

/// A tensor product prepared for repeated evaluation on one backend, computing in `T`.
pub enum Runner<T: Elem> {
    /// The CPU oracle in `T` itself.
    Oracle(oracle::Oracle<T>),
    /// A facade op (GPU backends compute in f32; `T` is f32 there).
    Op(TensorProductOp),
}

fn f32s<T: Elem>(v: &[T]) -> Vec<f32> {
    v.iter().map(|a| a.to_f64() as f32).collect()
}

fn ts<T: Elem>(v: Vec<f32>) -> Vec<T> {
    v.into_iter().map(|a| T::from_f64(f64::from(a))).collect()
}

impl<T: Elem> Runner<T> {
    pub fn new(backend: Backend, tp: &TensorProduct) -> Result<Self, String> {
        let device = backend.device()?;
        match backend {
            Backend::Cpu => Ok(Runner::Oracle(
                oracle::Oracle::new(tp).map_err(|e| e.to_string())?,
            )),
            _ if T::NAME != "f32" => Err(format!(
                "backend {} computes in f32 only: use --dtype f32",
                backend.name()
            )),
            _ => Ok(Runner::Op(
                TensorProductOp::from_tensor_product(tp.clone(), device)
                    .map_err(|e| e.to_string())?,
            )),
        }
    }

    pub fn forward(&self, batch: usize, x: &[T], y: &[T], w: &[T]) -> Result<Vec<T>, String> {
        match self {
            Runner::Oracle(o) => o.forward(batch, x, y, w).map_err(|e| e.to_string()),
            Runner::Op(op) => op
                .forward(batch, &f32s(x), &f32s(y), &f32s(w))
                .map(ts)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn backward(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        gz: &[T],
    ) -> Result<Grads<T>, String> {
        match self {
            Runner::Oracle(o) => o.backward(batch, x, y, w, gz).map_err(|e| e.to_string()),
            Runner::Op(op) => op
                .backward(batch, &f32s(x), &f32s(y), &f32s(w), &f32s(gz))
                .map(|g| Grads {
                    gx: ts(g.gx),
                    gy: ts(g.gy),
                    gw: ts(g.gw),
                })
                .map_err(|e| e.to_string()),
        }
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
        match self {
            Runner::Oracle(o) => o
                .double_backward(batch, x, y, w, gz, hx, hy, hw)
                .map_err(|e| e.to_string()),
            Runner::Op(op) => op
                .double_backward(
                    batch,
                    &f32s(x),
                    &f32s(y),
                    &f32s(w),
                    &f32s(gz),
                    &f32s(hx),
                    &f32s(hy),
                    &f32s(hw),
                )
                .map(|d| DoubleGrads {
                    dx: ts(d.dx),
                    dy: ts(d.dy),
                    dw: ts(d.dw),
                    dgz: ts(d.dgz),
                })
                .map_err(|e| e.to_string()),
        }
    }
}
