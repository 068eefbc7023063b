//! `equikern info`: what a spec builds to, and what it costs.

use crate::engine::{self, TensorProduct};
use crate::error::Result;
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Print a spec's irreps, instructions (final coefficient, path shape, weight slice, CG
/// nonzeros), weight_numel and cost per sample.
///
/// FLOPs per sample (OpenEquivariance's nominal counting, from equikern's cost model): for
/// each instruction with nnz CG nonzeros and s0, s1 the first two path_shape entries (1 when
/// absent), forward = 3·nnz·s0·s1, plus (2·l_out+1)·prod(path_shape) for weighted
/// instructions; backward = 9·nnz·s0·s1. Bytes per sample: every input, output and gradient
/// read or written once (forward: x, y, w, z; backward: x, y, w, grad_z, gx, gy, gw; double
/// backward adds hx, hy, hw and writes dx, dy, dw, dgz); shared weights count once per batch,
/// so they are left out of the per-sample figure.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Tensor-product spec (JSON).
    #[arg(long, value_name = "SPEC.json")]
    spec: PathBuf,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let tp = crate::tp::load_tp(&args.spec)?;
    print!("{}", describe(&tp));
    Ok(())
}

/// The whole report as text (kept separate from printing so tests and `suite` can reuse it).
pub fn describe(tp: &TensorProduct) -> String {
    let s = &tp.spec;
    let cost = engine::cost(tp);
    let mut o = String::new();
    let irreps_line = |o: &mut String, name: &str, irreps: &equikern::Irreps, dim: usize| {
        let _ = writeln!(o, "{name:<12} {irreps}  (dim {dim})");
    };
    irreps_line(&mut o, "irreps_in1", &s.irreps_in1, tp.dim_in1);
    irreps_line(&mut o, "irreps_in2", &s.irreps_in2, tp.dim_in2);
    irreps_line(&mut o, "irreps_out", &s.irreps_out, tp.dim_out);
    let _ = writeln!(
        o,
        "normalization irrep={} path={}; shared_weights={}",
        s.irrep_normalization.as_str(),
        s.path_normalization.as_str(),
        s.shared_weights
    );
    let _ = writeln!(o, "weight_numel {}", tp.weight_numel);
    let _ = writeln!(o, "instructions {}:", tp.paths.len());
    let _ = writeln!(
        o,
        "  {:>3}  {:<16} {:<7} {:>6}  {:>20}  {:<14} {:<16} {:>7}",
        "#", "in1 x in2 -> out", "mode", "weight", "coefficient", "path_shape", "weights", "cg_nnz"
    );
    for (k, p) in tp.paths.iter().enumerate() {
        let i = &p.instruction;
        let ir = |irreps: &equikern::Irreps, idx: usize| {
            irreps
                .0
                .get(idx)
                .map(|m| m.ir.to_string())
                .unwrap_or_default()
        };
        let triple = format!(
            "{} x {} -> {}",
            ir(&s.irreps_in1, i.i_in1),
            ir(&s.irreps_in2, i.i_in2),
            ir(&s.irreps_out, i.i_out)
        );
        let shape: Vec<String> = p.path_shape.iter().map(|d| d.to_string()).collect();
        let numel: usize = p.path_shape.iter().product();
        let slice = match p.weight_offset {
            Some(off) => format!("w[{}..{}]", off, off + numel),
            None => "-".to_string(),
        };
        let _ = writeln!(
            o,
            "  {:>3}  {:<16} {:<7} {:>6}  {:>20}  {:<14} {:<16} {:>7}",
            k,
            triple,
            i.mode.as_str(),
            if i.has_weight { "yes" } else { "no" },
            format!("{:.16}", p.coefficient),
            format!("({})", shape.join(", ")),
            slice,
            cost.cg_nnz[k]
        );
        if i.path_weight != 1.0 {
            let _ = writeln!(o, "       (path_weight {})", i.path_weight);
        }
    }
    let _ = writeln!(o, "cg_nonzeros_total {}", cost.cg_nnz.iter().sum::<usize>());
    let _ = writeln!(
        o,
        "flops_per_sample forward {} backward {}",
        cost.flops_forward, cost.flops_backward
    );
    // Per-sample bytes: a batch of 1 with shared weights left out (they are read once per batch).
    for (name, elem) in [("f32", 4usize), ("f64", 8usize)] {
        let (f, b, d) = per_sample_bytes(tp, elem);
        let _ = writeln!(
            o,
            "bytes_per_sample {name} forward {f} backward {b} double_backward {d}"
        );
    }
    o
}

fn per_sample_bytes(tp: &TensorProduct, elem: usize) -> (u64, u64, u64) {
    // traffic(batch) is affine in batch when shared weights are counted once: take the slope.
    let (f1, b1, d1) = engine::traffic(tp, 1, elem);
    let (f2, b2, d2) = engine::traffic(tp, 2, elem);
    (f2 - f1, b2 - b1, d2 - d1)
}
