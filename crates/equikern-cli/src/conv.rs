//! `equikern conv`: the fused graph convolution z[i] = Σ_{e: receiver[e]=i} TP(x[sender[e]],
//! y[e], w[e]) (and its backward) on .npy arrays.

use crate::engine::{Backend, Elem, TensorProduct};
use crate::error::{CliError, Result};
use crate::npy::{self, shape_str, Array, Dtype};
use crate::tp::load_tp;
use clap::Args;
use equikern::core::conv::Csr;
use equikern::{ConvGraph, ConvOp, ConvOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fused graph convolution: for every edge e, TP(x[sender[e]], y[e], w[e]) summed into
/// z[receiver[e]]. Node features x [nodes, dim1]; edge features y [edges, dim2]; weights
/// [edges, weight_numel] or [weight_numel] when shared; receiver/sender: 1-D int32/int64/uint32
/// arrays [edges]. Deterministic (edges reduced in a fixed order) unless --atomic. Every index
/// is checked before anything runs.
#[derive(Args, Debug)]
pub struct ConvArgs {
    /// Tensor-product spec (JSON).
    #[arg(long, value_name = "SPEC.json")]
    spec: PathBuf,
    /// Node features, [nodes, dim(irreps_in1)].
    #[arg(long, value_name = "X.npy")]
    x: PathBuf,
    /// Edge features, [edges, dim(irreps_in2)].
    #[arg(long, value_name = "Y.npy")]
    y: PathBuf,
    /// Weights, [edges, weight_numel] or [weight_numel] when shared.
    #[arg(long, value_name = "W.npy")]
    w: Option<PathBuf>,
    /// Receiving node of each edge, [edges].
    #[arg(long, value_name = "R.npy")]
    receiver: PathBuf,
    /// Sending node of each edge, [edges].
    #[arg(long, value_name = "S.npy")]
    sender: PathBuf,
    /// Output z, [nodes, dim(irreps_out)].
    #[arg(long, value_name = "Z.npy")]
    out: PathBuf,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Float atomics for the node sums (per-edge atomic adds; not bit-reproducible; CUDA
    /// only). Default: deterministic CSR sums, bit-identical run to run.
    #[arg(long)]
    atomic: bool,
    /// Upstream gradient dL/dz, [nodes, dim(irreps_out)].
    #[arg(long, value_name = "G.npy", help_heading = "Backward")]
    grad_out: Option<PathBuf>,
    /// Write dL/dx here.
    #[arg(long, value_name = "GX.npy", help_heading = "Backward")]
    grad_x: Option<PathBuf>,
    /// Write dL/dy here.
    #[arg(long, value_name = "GY.npy", help_heading = "Backward")]
    grad_y: Option<PathBuf>,
    /// Write dL/dw here (shaped like --w).
    #[arg(long, value_name = "GW.npy", help_heading = "Backward")]
    grad_w: Option<PathBuf>,
}

fn shape_err(flag: &str, path: &Path, want: &[usize], what: &str, a: &Array) -> CliError {
    CliError::input(format!(
        "{flag} {}: expected shape {} ({what}), got {}",
        path.display(),
        shape_str(want),
        shape_str(&a.shape)
    ))
}

pub fn run(args: &ConvArgs) -> Result<()> {
    let wants_bwd = args.grad_x.is_some() || args.grad_y.is_some() || args.grad_w.is_some();
    if wants_bwd != args.grad_out.is_some() {
        return Err(CliError::input(
            "--grad-out and at least one of --grad-x/--grad-y/--grad-w go together",
        ));
    }
    if args.atomic && args.backend != Backend::Cuda {
        return Err(CliError::input(format!(
            "--atomic needs float atomics: backend {} has none (use the default deterministic mode)",
            args.backend.name()
        )));
    }
    args.backend
        .check_available()
        .map_err(|e| CliError::input(format!("--backend {}: {e}", args.backend.name())))?;
    let tp = load_tp(&args.spec)?;
    let x = npy::read("--x", &args.x)?;
    let nodes = match x.shape.as_slice() {
        [n, d] if *d == tp.dim_in1 => *n,
        _ => {
            return Err(shape_err(
                "--x",
                &args.x,
                &[0, tp.dim_in1],
                "[nodes, dim(irreps_in1)]",
                &x,
            ))
        }
    };
    let r = npy::read_index("--receiver", &args.receiver)?;
    let s = npy::read_index("--sender", &args.sender)?;
    let csr = Csr::build(nodes, &r, &s).map_err(|e| {
        let (flag, path) = match &e {
            equikern::core::conv::ConvError::Index {
                array: "sender", ..
            } => ("--sender", &args.sender),
            _ => ("--receiver", &args.receiver),
        };
        CliError::input(format!("{flag} {}: {e}", path.display()))
    })?;
    let edges = csr.edges();
    let y = npy::read("--y", &args.y)?;
    if y.shape != [edges, tp.dim_in2] {
        return Err(shape_err(
            "--y",
            &args.y,
            &[edges, tp.dim_in2],
            "[edges, dim(irreps_in2)]",
            &y,
        ));
    }
    let wshape = if tp.spec.shared_weights {
        vec![tp.weight_numel]
    } else {
        vec![edges, tp.weight_numel]
    };
    let w = match &args.w {
        Some(p) => {
            let w = npy::read("--w", p)?;
            if w.shape != wshape {
                return Err(shape_err("--w", p, &wshape, "weights", &w));
            }
            Some(w)
        }
        None if tp.weight_numel > 0 => {
            return Err(CliError::input(format!(
                "--w is required: the spec has weight_numel {}",
                tp.weight_numel
            )))
        }
        None => None,
    };
    let g = match &args.grad_out {
        Some(p) => {
            let g = npy::read("--grad-out", p)?;
            if g.shape != [nodes, tp.dim_out] {
                return Err(shape_err(
                    "--grad-out",
                    p,
                    &[nodes, tp.dim_out],
                    "[nodes, dim(irreps_out)]",
                    &g,
                ));
            }
            Some(g)
        }
        None => None,
    };
    let inp = Inputs { x, y, w, g };
    // f64 in → f64 compute where the backend has it (cpu, cuda); f32 otherwise.
    let use_f64 = inp.x.dtype() == Dtype::F64 && args.backend.has_f64();
    let csr = Arc::new(csr);
    if use_f64 {
        compute::<f64>(args, &tp, csr, &inp, &wshape)
    } else {
        compute::<f32>(args, &tp, csr, &inp, &wshape)
    }
}

struct Inputs {
    x: Array,
    y: Array,
    w: Option<Array>,
    g: Option<Array>,
}

/// The facade's host calls in `T` (f32 everywhere; f64 on cpu and cuda).
trait ConvElem: Elem {
    fn forward(
        op: &ConvOp,
        g: &ConvGraph,
        x: &[Self],
        y: &[Self],
        w: &[Self],
    ) -> equikern::Result<Vec<Self>>;
    fn backward(
        op: &ConvOp,
        g: &ConvGraph,
        a: [&[Self]; 4],
    ) -> equikern::Result<equikern::Grads<Self>>;
}

impl ConvElem for f32 {
    fn forward(
        op: &ConvOp,
        g: &ConvGraph,
        x: &[f32],
        y: &[f32],
        w: &[f32],
    ) -> equikern::Result<Vec<f32>> {
        op.forward(g, x, y, w)
    }
    fn backward(
        op: &ConvOp,
        g: &ConvGraph,
        a: [&[f32]; 4],
    ) -> equikern::Result<equikern::Grads<f32>> {
        op.backward(g, a[0], a[1], a[2], a[3])
    }
}

impl ConvElem for f64 {
    fn forward(
        op: &ConvOp,
        g: &ConvGraph,
        x: &[f64],
        y: &[f64],
        w: &[f64],
    ) -> equikern::Result<Vec<f64>> {
        op.forward_f64(g, x, y, w)
    }
    fn backward(
        op: &ConvOp,
        g: &ConvGraph,
        a: [&[f64]; 4],
    ) -> equikern::Result<equikern::Grads<f64>> {
        op.backward_f64(g, a[0], a[1], a[2], a[3])
    }
}

fn compute<T: ConvElem>(
    args: &ConvArgs,
    tp: &TensorProduct,
    csr: Arc<Csr>,
    inp: &Inputs,
    wshape: &[usize],
) -> Result<()> {
    let x: Vec<T> = inp.x.to_vec();
    let y: Vec<T> = inp.y.to_vec();
    let w: Vec<T> = inp.w.as_ref().map(|a| a.to_vec()).unwrap_or_default();
    let gz: Option<Vec<T>> = inp.g.as_ref().map(|a| a.to_vec());
    let (n, e) = (csr.nodes, csr.edges());
    let flag = format!("--backend {}", args.backend.name());
    let dev = args
        .backend
        .facade_device()
        .map_err(|e| CliError::input(format!("{flag}: {e}")))?;
    let opts = ConvOptions {
        atomic: args.atomic,
        max_piece_edges: None,
    };
    let op = ConvOp::from_tensor_product(tp.clone(), dev, opts)
        .map_err(|e| {
            let f = if args.atomic { "--atomic" } else { &flag };
            CliError::input(format!("{f}: {e}"))
        })?
        // Deterministic default: pieces on graphs with a hub.
        .with_auto_pieces(!args.atomic);
    let g = ConvGraph::from_csr(dev, csr);
    let rt = |e: equikern::Error| CliError::runtime(format!("{flag}: {e}"));
    let z = T::forward(&op, &g, &x, &y, &w).map_err(rt)?;
    let grads = match &gz {
        Some(gz) => Some(T::backward(&op, &g, [&x, &y, &w, gz]).map_err(rt)?),
        None => None,
    };
    npy::write("--out", &args.out, &[n, tp.dim_out], &z)?;
    if let Some(b) = grads {
        let opt = |flag: &str, p: &Option<PathBuf>, shape: &[usize], v: &[T]| match p {
            Some(p) => npy::write(flag, p, shape, v),
            None => Ok(()),
        };
        opt("--grad-x", &args.grad_x, &[n, tp.dim_in1], &b.gx)?;
        opt("--grad-y", &args.grad_y, &[e, tp.dim_in2], &b.gy)?;
        opt("--grad-w", &args.grad_w, wshape, &b.gw)?;
    }
    Ok(())
}
