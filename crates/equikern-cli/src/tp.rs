//! `equikern tp`: evaluate one tensor product (and optionally its gradients) on .npy arrays.

use crate::engine::{Backend, Elem, Runner, TensorProduct};
use crate::error::{CliError, Result};
use crate::npy::{self, shape_str, Array, Dtype};
use clap::Args;
use std::path::{Path, PathBuf};

/// Evaluate z = TP(x, y; w), its backward and double backward, on .npy arrays.
///
/// Arrays are C-order little-endian float64 or float32, shape [batch, dim]; weights are
/// [batch, weight_numel], or [weight_numel] when the spec has "shared_weights": true (--w may be
/// omitted only when weight_numel is 0). Inputs of the other float type are converted to the
/// compute dtype. Backward: given dL/dz (--grad-out), writes dL/dx, dL/dy, dL/dw. Double
/// backward: given also hx, hy, hw, writes the gradients of
/// S = <dL/dx, hx> + <dL/dy, hy> + <dL/dw, hw> with respect to x, y, w and dL/dz.
#[derive(Args, Debug)]
pub struct TpArgs {
    /// Tensor-product spec (JSON: irreps_in1, irreps_in2, irreps_out, instructions, ...).
    #[arg(long, value_name = "SPEC.json")]
    spec: PathBuf,
    /// First input, [batch, dim(irreps_in1)].
    #[arg(long, value_name = "X.npy")]
    x: PathBuf,
    /// Second input, [batch, dim(irreps_in2)].
    #[arg(long, value_name = "Y.npy")]
    y: PathBuf,
    /// Weights, [batch, weight_numel] or [weight_numel] when shared.
    #[arg(long, value_name = "W.npy")]
    w: Option<PathBuf>,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Compute and output dtype [default: the dtype of --x].
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Output z, [batch, dim(irreps_out)].
    #[arg(long, value_name = "Z.npy")]
    out: PathBuf,

    /// Upstream gradient dL/dz, [batch, dim(irreps_out)] (backward and double backward).
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

    /// Direction hx for the double backward, shaped like --x.
    #[arg(long, value_name = "HX.npy", help_heading = "Double backward")]
    hx: Option<PathBuf>,
    /// Direction hy, shaped like --y.
    #[arg(long, value_name = "HY.npy", help_heading = "Double backward")]
    hy: Option<PathBuf>,
    /// Direction hw, shaped like --w (omit when weight_numel is 0).
    #[arg(long, value_name = "HW.npy", help_heading = "Double backward")]
    hw: Option<PathBuf>,
    /// Write dS/dx here.
    #[arg(long, value_name = "DX.npy", help_heading = "Double backward")]
    dd_x: Option<PathBuf>,
    /// Write dS/dy here.
    #[arg(long, value_name = "DY.npy", help_heading = "Double backward")]
    dd_y: Option<PathBuf>,
    /// Write dS/dw here.
    #[arg(long, value_name = "DW.npy", help_heading = "Double backward")]
    dd_w: Option<PathBuf>,
    /// Write dS/d(grad_out) here.
    #[arg(long, value_name = "DG.npy", help_heading = "Double backward")]
    dd_g: Option<PathBuf>,
}

impl TpArgs {
    fn wants_backward(&self) -> bool {
        self.grad_x.is_some() || self.grad_y.is_some() || self.grad_w.is_some()
    }

    fn wants_double(&self) -> bool {
        self.dd_x.is_some() || self.dd_y.is_some() || self.dd_w.is_some() || self.dd_g.is_some()
    }

    /// Flag combinations that cannot be satisfied, checked before any file is read.
    fn check_flags(&self) -> Result<()> {
        let need = |present: bool, flag: &str, other: &str, why: &str| {
            if present {
                Err(CliError::input(format!("{flag} requires {other} ({why})")))
            } else {
                Ok(())
            }
        };
        let no_g = self.grad_out.is_none();
        for (p, flag) in [
            (&self.grad_x, "--grad-x"),
            (&self.grad_y, "--grad-y"),
            (&self.grad_w, "--grad-w"),
            (&self.dd_x, "--dd-x"),
            (&self.dd_y, "--dd-y"),
            (&self.dd_w, "--dd-w"),
            (&self.dd_g, "--dd-g"),
        ] {
            need(
                p.is_some() && no_g,
                flag,
                "--grad-out",
                "the upstream gradient dL/dz",
            )?;
        }
        if !no_g && !self.wants_backward() && !self.wants_double() {
            return Err(CliError::input(
                "--grad-out given but no gradient output requested (--grad-x/--grad-y/--grad-w or --dd-*)",
            ));
        }
        if self.wants_double() {
            need(
                self.hx.is_none(),
                "--dd-*",
                "--hx",
                "the double-backward direction for x",
            )?;
            need(
                self.hy.is_none(),
                "--dd-*",
                "--hy",
                "the double-backward direction for y",
            )?;
        } else {
            for (p, flag) in [(&self.hx, "--hx"), (&self.hy, "--hy"), (&self.hw, "--hw")] {
                if p.is_some() {
                    return Err(CliError::input(format!(
                        "{flag} given but no double-backward output requested (--dd-x/--dd-y/--dd-w/--dd-g)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Expected-shape checks, with messages that name the flag, file and irreps.
struct Shapes<'a> {
    tp: &'a TensorProduct,
    batch: usize,
}

impl Shapes<'_> {
    fn feature(&self, flag: &str, path: &Path, a: &Array, dim: usize, field: &str) -> Result<()> {
        let irreps = match field {
            "irreps_in1" => &self.tp.spec.irreps_in1,
            "irreps_in2" => &self.tp.spec.irreps_in2,
            _ => &self.tp.spec.irreps_out,
        };
        if a.shape.len() != 2 || a.shape[1] != dim {
            return Err(CliError::input(format!(
                "{flag} {}: expected shape [batch, {dim}] for {field} \"{irreps}\", got {}",
                path.display(),
                shape_str(&a.shape)
            )));
        }
        if a.shape[0] != self.batch {
            return Err(CliError::input(format!(
                "{flag} {}: batch {} does not match --x batch {} (shape {})",
                path.display(),
                a.shape[0],
                self.batch,
                shape_str(&a.shape)
            )));
        }
        Ok(())
    }

    fn weights(&self, flag: &str, path: &Path, a: &Array) -> Result<()> {
        let n = self.tp.weight_numel;
        let (want, why) = if self.tp.spec.shared_weights {
            (vec![n], "shared_weights is true")
        } else {
            (
                vec![self.batch, n],
                "per-sample weights: shared_weights is false",
            )
        };
        if a.shape != want {
            return Err(CliError::input(format!(
                "{flag} {}: expected shape {} ({why}, weight_numel {n}), got {}",
                path.display(),
                shape_str(&want),
                shape_str(&a.shape)
            )));
        }
        Ok(())
    }

    fn weight_shape(&self) -> Vec<usize> {
        if self.tp.spec.shared_weights {
            vec![self.tp.weight_numel]
        } else {
            vec![self.batch, self.tp.weight_numel]
        }
    }
}

/// Reads the spec file and builds the tensor product (exit 2 on any problem, naming the file).
pub fn load_tp(path: &Path) -> Result<TensorProduct> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("--spec {}: cannot read: {e}", path.display())))?;
    crate::engine::build_spec(&text)
        .map_err(|e| CliError::input(format!("--spec {}: {e}", path.display())))
}

pub fn run(args: &TpArgs) -> Result<()> {
    args.check_flags()?;
    args.backend
        .check_available()
        .map_err(|e| CliError::input(format!("--backend {}: {e}", args.backend.name())))?;
    let tp = load_tp(&args.spec)?;

    let x = npy::read("--x", &args.x)?;
    let batch = match x.shape.as_slice() {
        [b, d] if *d == tp.dim_in1 => *b,
        _ => {
            return Err(CliError::input(format!(
                "--x {}: expected shape [batch, {}] for irreps_in1 \"{}\", got {}",
                args.x.display(),
                tp.dim_in1,
                tp.spec.irreps_in1,
                shape_str(&x.shape)
            )))
        }
    };
    let shapes = Shapes { tp: &tp, batch };
    let y = npy::read("--y", &args.y)?;
    shapes.feature("--y", &args.y, &y, tp.dim_in2, "irreps_in2")?;
    let w = match &args.w {
        Some(p) => {
            let w = npy::read("--w", p)?;
            shapes.weights("--w", p, &w)?;
            Some(w)
        }
        None if tp.weight_numel > 0 => {
            return Err(CliError::input(format!(
                "--w is required: the spec has weight_numel {} ({} weights)",
                tp.weight_numel,
                if tp.spec.shared_weights {
                    "shared"
                } else {
                    "per-sample"
                }
            )))
        }
        None => None,
    };
    let grad_out = match &args.grad_out {
        Some(p) => {
            let g = npy::read("--grad-out", p)?;
            shapes.feature("--grad-out", p, &g, tp.dim_out, "irreps_out")?;
            Some(g)
        }
        None => None,
    };
    let mut h = Vec::new();
    if args.wants_double() {
        let hx = npy::read("--hx", args.hx.as_ref().expect("checked"))?;
        shapes.feature(
            "--hx",
            args.hx.as_ref().expect("checked"),
            &hx,
            tp.dim_in1,
            "irreps_in1",
        )?;
        let hy = npy::read("--hy", args.hy.as_ref().expect("checked"))?;
        shapes.feature(
            "--hy",
            args.hy.as_ref().expect("checked"),
            &hy,
            tp.dim_in2,
            "irreps_in2",
        )?;
        let hw = match &args.hw {
            Some(p) => {
                let hw = npy::read("--hw", p)?;
                shapes.weights("--hw", p, &hw)?;
                Some(hw)
            }
            None if tp.weight_numel > 0 => {
                return Err(CliError::input(format!(
                "--dd-* requires --hw (the double-backward direction for w): weight_numel is {}",
                tp.weight_numel
            )))
            }
            None => None,
        };
        h = vec![Some(hx), Some(hy), hw];
    }

    let inputs = Inputs {
        x,
        y,
        w,
        grad_out,
        h,
    };
    match args.dtype.unwrap_or(inputs.x.dtype()) {
        Dtype::F32 => compute::<f32>(args, &tp, &shapes, &inputs),
        Dtype::F64 => compute::<f64>(args, &tp, &shapes, &inputs),
    }
}

struct Inputs {
    x: Array,
    y: Array,
    w: Option<Array>,
    grad_out: Option<Array>,
    /// hx, hy, hw (empty unless a double backward was asked for).
    h: Vec<Option<Array>>,
}

fn vec_or_empty<T: Elem>(a: &Option<Array>) -> Vec<T> {
    a.as_ref().map(|a| a.to_vec()).unwrap_or_default()
}

fn compute<T: Elem>(
    args: &TpArgs,
    tp: &TensorProduct,
    shapes: &Shapes,
    inp: &Inputs,
) -> Result<()> {
    let batch = shapes.batch;
    let runner = Runner::<T>::new(args.backend, tp)
        .map_err(|e| CliError::input(format!("--backend {}: {e}", args.backend.name())))?;
    let x: Vec<T> = inp.x.to_vec();
    let y: Vec<T> = inp.y.to_vec();
    let w: Vec<T> = vec_or_empty(&inp.w);
    let z = runner
        .forward(batch, &x, &y, &w)
        .map_err(CliError::runtime)?;
    npy::write("--out", &args.out, &[batch, tp.dim_out], &z)?;

    let wshape = shapes.weight_shape();
    if args.wants_backward() {
        let gz: Vec<T> = vec_or_empty(&inp.grad_out);
        let g = runner
            .backward(batch, &x, &y, &w, &gz)
            .map_err(CliError::runtime)?;
        write_opt("--grad-x", &args.grad_x, &[batch, tp.dim_in1], &g.gx)?;
        write_opt("--grad-y", &args.grad_y, &[batch, tp.dim_in2], &g.gy)?;
        write_opt("--grad-w", &args.grad_w, &wshape, &g.gw)?;
    }
    if args.wants_double() {
        let gz: Vec<T> = vec_or_empty(&inp.grad_out);
        let hx: Vec<T> = vec_or_empty(&inp.h[0]);
        let hy: Vec<T> = vec_or_empty(&inp.h[1]);
        let hw: Vec<T> = vec_or_empty(&inp.h[2]);
        let d = runner
            .double_backward(batch, &x, &y, &w, &gz, &hx, &hy, &hw)
            .map_err(CliError::runtime)?;
        write_opt("--dd-x", &args.dd_x, &[batch, tp.dim_in1], &d.dx)?;
        write_opt("--dd-y", &args.dd_y, &[batch, tp.dim_in2], &d.dy)?;
        write_opt("--dd-w", &args.dd_w, &wshape, &d.dw)?;
        write_opt("--dd-g", &args.dd_g, &[batch, tp.dim_out], &d.dgz)?;
    }
    Ok(())
}

fn write_opt<T: Elem>(
    flag: &str,
    path: &Option<PathBuf>,
    shape: &[usize],
    data: &[T],
) -> Result<()> {
    match path {
        Some(p) => npy::write(flag, p, shape, data),
        None => Ok(()),
    }
}
