//! Test helpers: TensorProducts via `TpSpec::build`, an independent scatter-form reference of
//! the trilinear form (besides `equikern_core::oracle`), seeded inputs.
#![allow(dead_code)]

use equikern_core::{
    ConnectionMode, Instruction, IrrepNormalization, Irreps, Path, PathNormalization,
    TensorProduct, TpSpec,
};
use equikern_plan::{Direction, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

pub fn irreps(s: &str) -> Irreps {
    Irreps::parse(s).unwrap()
}

pub fn mode(s: &str) -> ConnectionMode {
    ConnectionMode::parse(s).unwrap_or_else(|| panic!("mode {s}"))
}

pub struct Ins(
    pub usize,
    pub usize,
    pub usize,
    pub &'static str,
    pub bool,
    pub f64,
);

pub fn build(
    in1: &str,
    in2: &str,
    out: &str,
    ins: &[Ins],
    shared: bool,
    irn: IrrepNormalization,
    pn: PathNormalization,
) -> TensorProduct {
    let instructions: Vec<Instruction> = ins
        .iter()
        .map(|i| Instruction {
            i_in1: i.0,
            i_in2: i.1,
            i_out: i.2,
            mode: mode(i.3),
            has_weight: i.4,
            path_weight: i.5,
        })
        .collect();
    let spec = TpSpec {
        irreps_in1: irreps(in1),
        irreps_in2: irreps(in2),
        irreps_out: irreps(out),
        instructions,
        shared_weights: shared,
        irrep_normalization: irn,
        path_normalization: pn,
    };
    build_spec(spec)
}

pub fn build_spec(spec: TpSpec) -> TensorProduct {
    spec.build().unwrap_or_else(|e| panic!("{e}"))
}

/// The paper-suite problems (real e3nn semantics via `TpSpec::build`).
pub fn paper_suite() -> Vec<(String, TensorProduct)> {
    equikern_core::spec::load_suite(include_str!("../data/paper_suite.json"))
        .unwrap()
        .into_iter()
        .map(|(l, s)| (l, build_spec(s)))
        .collect()
}

/// Every tuple `(x_row, y_row, z_row, w_idx)` of a path, straight from the modes table.
pub fn tuples(p: &Path) -> Vec<(usize, usize, usize, usize)> {
    use ConnectionMode::*;
    let (m1, m2, mo) = (p.m1, p.m2, p.mo);
    let mut v = vec![];
    let pairs: Vec<(usize, usize)> = (0..m1)
        .flat_map(|u| (u + 1..m1).map(move |w| (u, w)))
        .collect();
    match p.instruction.mode {
        Uvw => {
            for u in 0..m1 {
                for vv in 0..m2 {
                    for w in 0..mo {
                        v.push((u, vv, w, (u * m2 + vv) * mo + w));
                    }
                }
            }
        }
        Uvu | Uvv | Uvuv => {
            for u in 0..m1 {
                for vv in 0..m2 {
                    let z = match p.instruction.mode {
                        Uvu => u,
                        Uvv => vv,
                        _ => u * m2 + vv,
                    };
                    v.push((u, vv, z, u * m2 + vv));
                }
            }
        }
        Uuw => {
            for u in 0..m1 {
                for w in 0..mo {
                    v.push((u, u, w, u * mo + w));
                }
            }
        }
        Uuu => (0..m1).for_each(|u| v.push((u, u, u, u))),
        UvuLtV => pairs
            .iter()
            .enumerate()
            .for_each(|(q, &(a, b))| v.push((a, b, q, q))),
        ULtVw => {
            for (q, &(a, b)) in pairs.iter().enumerate() {
                for w in 0..mo {
                    v.push((a, b, w, q * mo + w));
                }
            }
        }
    }
    v
}

/// Which slot a reference call computes.
#[derive(Clone, Copy, PartialEq)]
pub enum Out {
    X,
    Y,
    Z,
    W,
}

/// Scatter-form reference of one sample: accumulate slot `out` from the other three
/// (`None` for the output slot; `w = None` also for unweighted TPs).
pub fn trilinear(
    tp: &TensorProduct,
    out: Out,
    x: &[f64],
    y: &[f64],
    z: &[f64],
    w: &[f64],
    acc: &mut [f64],
) {
    for p in &tp.paths {
        let (d1, d2, d3) = (
            2 * p.l1 as usize + 1,
            2 * p.l2 as usize + 1,
            2 * p.lo as usize + 1,
        );
        for (u, v, q, wi) in tuples(p) {
            let wv = p.weight_offset.map(|o| o + wi);
            if out == Out::W && wv.is_none() {
                continue;
            }
            for &(i, j, k, c) in &p.cg {
                let (i, j, k) = (i as usize, j as usize, k as usize);
                let xi = p.in1_offset + u * d1 + i;
                let yj = p.in2_offset + v * d2 + j;
                let zk = p.out_offset + q * d3 + k;
                let cc = c * p.coefficient;
                let wval = |w: &[f64]| wv.map_or(1.0, |o| w[o]);
                match out {
                    Out::Z => acc[zk] += cc * wval(w) * x[xi] * y[yj],
                    Out::X => acc[xi] += cc * wval(w) * z[zk] * y[yj],
                    Out::Y => acc[yj] += cc * wval(w) * x[xi] * z[zk],
                    Out::W => acc[wv.unwrap()] += cc * x[xi] * y[yj] * z[zk],
                }
            }
        }
    }
}

pub fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Seeded random inputs for every tensor a direction reads.
pub fn inputs(
    tp: &TensorProduct,
    dir: Direction,
    batch: usize,
    seed: u64,
) -> BTreeMap<Tensor, Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let wlen = if tp.spec.shared_weights {
        tp.weight_numel
    } else {
        batch * tp.weight_numel
    };
    let mut m = BTreeMap::new();
    m.insert(Tensor::X, random(&mut rng, batch * tp.dim_in1));
    m.insert(Tensor::Y, random(&mut rng, batch * tp.dim_in2));
    m.insert(Tensor::W, random(&mut rng, wlen));
    if dir != Direction::Forward {
        m.insert(Tensor::GZ, random(&mut rng, batch * tp.dim_out));
    }
    if dir == Direction::DoubleBackward {
        m.insert(Tensor::HX, random(&mut rng, batch * tp.dim_in1));
        m.insert(Tensor::HY, random(&mut rng, batch * tp.dim_in2));
        m.insert(Tensor::HW, random(&mut rng, wlen));
    }
    m
}

/// Reference outputs of a direction (scatter form, per sample, f64).
pub fn reference(
    tp: &TensorProduct,
    dir: Direction,
    batch: usize,
    inp: &BTreeMap<Tensor, Vec<f64>>,
) -> BTreeMap<Tensor, Vec<f64>> {
    let (d1, d2, d3, wn) = (tp.dim_in1, tp.dim_in2, tp.dim_out, tp.weight_numel);
    let shared = tp.spec.shared_weights;
    let get = |t: Tensor, s: usize, len: usize| -> &[f64] {
        let v = &inp[&t];
        if matches!(t, Tensor::W | Tensor::HW) && shared {
            &v[..]
        } else {
            &v[s * len..(s + 1) * len]
        }
    };
    let wlen = if shared { wn } else { batch * wn };
    let wsl = |s: usize| if shared { 0..wn } else { s * wn..(s + 1) * wn };
    let mut out = BTreeMap::new();
    let e: Vec<f64> = vec![];
    use Tensor::*;
    match dir {
        Direction::Forward => {
            let mut z = vec![0.0; batch * d3];
            for s in 0..batch {
                let (x, y, w) = (get(X, s, d1), get(Y, s, d2), get(W, s, wn));
                trilinear(tp, Out::Z, x, y, &e, w, &mut z[s * d3..(s + 1) * d3]);
            }
            out.insert(Z, z);
        }
        Direction::Backward => {
            let (mut gx, mut gy, mut gw) = (
                vec![0.0; batch * d1],
                vec![0.0; batch * d2],
                vec![0.0; wlen],
            );
            for s in 0..batch {
                let (x, y, w, gz) = (get(X, s, d1), get(Y, s, d2), get(W, s, wn), get(GZ, s, d3));
                trilinear(tp, Out::X, &e, y, gz, w, &mut gx[s * d1..(s + 1) * d1]);
                trilinear(tp, Out::Y, x, &e, gz, w, &mut gy[s * d2..(s + 1) * d2]);
                trilinear(tp, Out::W, x, y, gz, &e, &mut gw[wsl(s)]);
            }
            out.insert(GX, gx);
            out.insert(GY, gy);
            if wn > 0 {
                out.insert(GW, gw);
            }
        }
        Direction::DoubleBackward => {
            let (mut dx, mut dy, mut dw, mut dgz) = (
                vec![0.0; batch * d1],
                vec![0.0; batch * d2],
                vec![0.0; wlen],
                vec![0.0; batch * d3],
            );
            for s in 0..batch {
                let (x, y, w, gz) = (get(X, s, d1), get(Y, s, d2), get(W, s, wn), get(GZ, s, d3));
                let (hx, hy, hw) = (get(HX, s, d1), get(HY, s, d2), get(HW, s, wn));
                let z = &mut dgz[s * d3..(s + 1) * d3];
                trilinear(tp, Out::Z, hx, y, &e, w, z);
                trilinear(tp, Out::Z, x, hy, &e, w, z);
                if wn > 0 {
                    // Unweighted paths must not see the weight tangent: only weighted ones.
                    trilinear_weighted_only(tp, Out::Z, x, y, &e, hw, z);
                }
                let gxs = &mut dx[s * d1..(s + 1) * d1];
                trilinear(tp, Out::X, &e, hy, gz, w, gxs);
                if wn > 0 {
                    trilinear_weighted_only(tp, Out::X, &e, y, gz, hw, gxs);
                }
                let gys = &mut dy[s * d2..(s + 1) * d2];
                trilinear(tp, Out::Y, hx, &e, gz, w, gys);
                if wn > 0 {
                    trilinear_weighted_only(tp, Out::Y, x, &e, gz, hw, gys);
                }
                trilinear(tp, Out::W, hx, y, gz, &e, &mut dw[wsl(s)]);
                trilinear(tp, Out::W, x, hy, gz, &e, &mut dw[wsl(s)]);
            }
            out.insert(DX, dx);
            out.insert(DY, dy);
            out.insert(DGZ, dgz);
            if wn > 0 {
                out.insert(DW, dw);
            }
        }
    }
    out
}

fn trilinear_weighted_only(
    tp: &TensorProduct,
    out: Out,
    x: &[f64],
    y: &[f64],
    z: &[f64],
    w: &[f64],
    acc: &mut [f64],
) {
    let mut t = tp.clone();
    t.paths.retain(|p| p.weight_offset.is_some());
    trilinear(&t, out, x, y, z, w, acc);
}

/// Relative L2 error; NaN (an unwritten element) counts as infinite.
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// The same outputs from `equikern_core::oracle` (keys as the plan names them).
pub fn oracle(
    tp: &TensorProduct,
    dir: Direction,
    batch: usize,
    inp: &BTreeMap<Tensor, Vec<f64>>,
) -> BTreeMap<Tensor, Vec<f64>> {
    use equikern_core::oracle as o;
    use Tensor::*;
    let g = |t| &inp[&t][..];
    let mut m = BTreeMap::new();
    let wn = tp.weight_numel > 0;
    match dir {
        Direction::Forward => {
            m.insert(Z, o::forward(tp, batch, g(X), g(Y), g(W)).unwrap());
        }
        Direction::Backward => {
            let r = o::backward(tp, batch, g(X), g(Y), g(W), g(GZ)).unwrap();
            m.insert(GX, r.gx);
            m.insert(GY, r.gy);
            if wn {
                m.insert(GW, r.gw);
            }
        }
        Direction::DoubleBackward => {
            let r = o::double_backward(tp, batch, g(X), g(Y), g(W), g(GZ), g(HX), g(HY), g(HW))
                .unwrap();
            m.insert(DX, r.dx);
            m.insert(DY, r.dy);
            m.insert(DGZ, r.dgz);
            if wn {
                m.insert(DW, r.dw);
            }
        }
    }
    m
}
